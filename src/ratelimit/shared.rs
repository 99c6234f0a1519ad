//! Rate limits shared by every replica through Redis or Valkey
//! (`rate_limit.backend = "redis"`, docs/scaling.md).
//!
//! Each check is one `EVALSHA` of [`GCRA`]: the script reads the server's
//! clock, tests every bucket the request draws on (the tenant's and, when
//! configured, the client's) and takes a token from each only if all allow
//! it, so a refused request costs nothing. Keys expire when their bucket is
//! full again, so Redis holds only active tenants and needs no sweeping.
//!
//! The connection is the `redis` crate's multiplexed `ConnectionManager`:
//! one socket per replica carrying every in-flight check (pipelined), which
//! reconnects by itself. Every call is bounded by `timeout_ms`; after a
//! failure the backend is left alone for [`COOL_DOWN`] so that a dead or
//! stalled Redis costs each request one branch, not one timeout. While it is
//! unusable, `on_error` decides: the in-process limiter, or 503.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

use crate::config::RateLimit;

/// After a backend error, checks skip the backend for this long.
pub const COOL_DOWN: Duration = Duration::from_millis(500);

pub const DEFAULT_KEY_PREFIX: &str = "credgate:rl:";
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1000;
pub const DEFAULT_TIMEOUT_MS: u64 = 250;

/// GCRA over N buckets, all or nothing.
///
/// `KEYS[i]`: bucket i; `ARGV[2i-1]`: its emission interval in µs
/// (1 s / per_second); `ARGV[2i]`: its burst. The stored value is the
/// bucket's theoretical arrival time (µs, server clock). Returns
/// `{1, 0, remaining}` when allowed (remaining in the first bucket), or
/// `{0, i, wait_µs}` when bucket i refused.
const GCRA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local remaining = 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local stored = redis.call('GET', KEYS[i])
  local tat = now
  if stored then tat = math.max(tonumber(stored), now) end
  local new_tat = tat + interval
  local wait = new_tat - interval * burst - now
  if wait > 0 then return {0, i, wait} end
  tats[i] = new_tat
  if i == 1 then remaining = math.floor(-wait / interval) end
end
for i = 1, #KEYS do
  local ttl_ms = math.ceil((tats[i] - now) / 1000) + 1
  redis.call('SET', KEYS[i], string.format('%d', tats[i]), 'PX', ttl_ms)
end
return {1, 0, remaining}
";

/// What a request does when the backend cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Each replica limits alone with the in-process buckets.
    #[default]
    Local,
    /// 503 `RATE_LIMIT_UNAVAILABLE`.
    Deny,
}

/// `[rate_limit.redis]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (or `valkey://`, `unix://`);
    /// `REDIS_URL` when unset. Printed with the password redacted.
    pub url: Option<RedisUrl>,
    pub on_error: OnError,
    /// Prepended to every key (`<prefix>t:<tenant>`, `<prefix>c:<client>`),
    /// so deployments can share a Redis.
    pub key_prefix: String,
    pub connect_timeout_ms: u64,
    /// Bound on one check, the round trip included.
    pub timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            on_error: OnError::Local,
            key_prefix: DEFAULT_KEY_PREFIX.into(),
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }
}

impl RedisConfig {
    /// Checks the section when the Redis backend is selected.
    pub fn validate(&self) -> Result<(), String> {
        let Some(url) = &self.url else {
            return Err(
                "rate_limit.backend = \"redis\" needs rate_limit.redis.url or REDIS_URL".into(),
            );
        };
        redis::Client::open(url.0.as_str())
            .map_err(|e| format!("rate_limit.redis.url `{url}`: {e}"))?;
        if self.timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return Err("rate_limit.redis timeouts must be at least 1 ms".into());
        }
        Ok(())
    }
}

/// A Redis URL whose password never reaches a log or `check-config`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(String);

impl From<String> for RedisUrl {
    fn from(s: String) -> Self {
        RedisUrl(s)
    }
}

impl RedisUrl {
    /// The URL with the password (or a lone user-info token) replaced.
    fn redacted(&self) -> String {
        let s = &self.0;
        let Some(start) = s.find("://").map(|i| i + 3) else {
            return s.clone();
        };
        let end = s[start..].find('/').map_or(s.len(), |i| start + i);
        let Some(at) = s[start..end].rfind('@').map(|i| start + i) else {
            return s.clone();
        };
        let user = match s[start..at].split_once(':') {
            Some((user, _)) => user,
            None => "",
        };
        format!("{}{user}:REDACTED{}", &s[..start], &s[at..])
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// The answer of one shared check.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Bucket `index` (0: tenant, 1: client) refused; `wait` until a token.
    Refused {
        index: usize,
        wait: Duration,
    },
}

pub struct Shared {
    conn: ConnectionManager,
    script: redis::Script,
    prefix: Box<str>,
    pub(super) on_error: OnError,
    timeout: Duration,
    /// Milliseconds since `epoch` before which the backend is not tried.
    skip_until_ms: AtomicU64,
    epoch: Instant,
    errors: IntCounter,
}

impl Shared {
    /// Builds the client without connecting: the first check connects, so a
    /// Redis that is down at start-up delays nothing. Needs a Tokio runtime.
    pub fn new(config: &RedisConfig, errors: IntCounter) -> Result<Self, String> {
        let url = config
            .url
            .as_ref()
            .ok_or("rate_limit.redis.url or REDIS_URL is required")?;
        let client = redis::Client::open(url.0.as_str())
            .map_err(|e| format!("rate_limit.redis.url `{url}`: {e}"))?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(COOL_DOWN);
        let conn = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| format!("rate_limit.redis: {e}"))?;
        Ok(Shared {
            conn,
            script: redis::Script::new(GCRA),
            prefix: config.key_prefix.as_str().into(),
            on_error: config.on_error,
            timeout,
            skip_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            errors,
        })
    }

    /// Takes a token from the tenant's bucket and, when given, the client's:
    /// both or neither. `None` when the backend could not answer (counted
    /// in `credgate_rate_limit_backend_errors_total`, logged without detail
    /// that could carry the URL).
    pub async fn check(
        &self,
        tenant: (&str, &RateLimit),
        client: Option<(&str, &RateLimit)>,
    ) -> Option<Verdict> {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        if now_ms < self.skip_until_ms.load(Ordering::Relaxed) {
            self.errors.inc();
            return None;
        }
        let mut call = self.script.prepare_invoke();
        call.key(format!("{}t:{}", self.prefix, tenant.0));
        push_limit(&mut call, tenant.1);
        if let Some((id, limit)) = client {
            call.key(format!("{}c:{id}", self.prefix));
            push_limit(&mut call, limit);
        }
        let mut conn = self.conn.clone();
        let answer = tokio::time::timeout(
            self.timeout,
            call.invoke_async::<(u8, usize, u64)>(&mut conn),
        )
        .await;
        match answer {
            Ok(Ok((1, _, _))) => Some(Verdict::Allowed),
            Ok(Ok((_, index, wait_us))) => Some(Verdict::Refused {
                index: index.saturating_sub(1),
                wait: Duration::from_micros(wait_us),
            }),
            Ok(Err(e)) => self.failed(&e.to_string()),
            Err(_) => self.failed("timed out"),
        }
    }

    fn failed(&self, why: &str) -> Option<Verdict> {
        self.errors.inc();
        let until = self.epoch.elapsed() + COOL_DOWN;
        let previous = self
            .skip_until_ms
            .swap(until.as_millis() as u64, Ordering::Relaxed);
        // One line per outage, not one per request.
        if previous <= self.epoch.elapsed().as_millis() as u64 {
            tracing::warn!(error = why, "rate limit backend unavailable");
        }
        None
    }
}

fn push_limit(call: &mut redis::ScriptInvocation<'_>, l: &RateLimit) {
    call.arg((1_000_000 / u64::from(l.per_second.max(1))).max(1));
    call.arg(l.burst.max(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_is_redacted() {
        let cases = [
            ("redis://:s3cret@h:6379/0", "redis://:REDACTED@h:6379/0"),
            ("redis://user:s3cret@h", "redis://user:REDACTED@h"),
            ("redis://s3cret@h", "redis://:REDACTED@h"),
            ("redis://h:6379", "redis://h:6379"),
            ("redis://h/0?x=a@b", "redis://h/0?x=a@b"),
        ];
        for (raw, shown) in cases {
            let url = RedisUrl(raw.into());
            assert_eq!(url.to_string(), shown);
            assert!(!format!("{url:?}").contains("s3cret"));
        }
    }

    #[test]
    fn validate_needs_a_url_and_timeouts() {
        let mut c = RedisConfig::default();
        assert!(c.validate().unwrap_err().contains("REDIS_URL"));
        c.url = Some(RedisUrl("nonsense".into()));
        assert!(c.validate().is_err());
        c.url = Some(RedisUrl("redis://127.0.0.1:6379".into()));
        c.validate().unwrap();
        c.timeout_ms = 0;
        assert!(c.validate().is_err());
    }
}
