//! credgate's own OAuth clients: the stored record, the compact form kept in
//! memory, secrets and allow lists. [`super::registry::ClientRegistry`] keeps
//! them in memory and in the store (`_credgate/clients/{clientId}`, camelCase
//! JSON).

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ipnet::IpNet;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use super::Tenants;
use crate::client_addr::ClientAddr;

/// Client ids credgate generates: `cg-` and 20 lowercase hex digits (80
/// random bits). They are valid identifiers (`ids::validate`) and path
/// segments.
pub fn is_client_id(s: &str) -> bool {
    s.len() == 23
        && s.starts_with("cg-")
        && s[3..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .expect("the OS random number generator failed");
    b
}

pub(crate) fn new_client_id() -> String {
    let b: [u8; 10] = random();
    format!(
        "cg-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// A new client secret: 256 bits from the OS RNG, base64url without padding
/// (alphabet `A-Za-z0-9-_`, safe unencoded in a Basic header).
pub(crate) fn new_secret() -> SecretString {
    let b: [u8; 32] = random();
    SecretString::from(B64.encode(b))
}

/// SHA-256 of a client secret.
///
/// A fast hash is the right tool here, not a slow password hash (argon2,
/// bcrypt): slow hashes exist to make guessing *low-entropy, human-chosen*
/// passwords expensive after a leak. credgate's secrets are 256 uniformly
/// random bits, so a preimage search is infeasible at any hash speed, while a
/// slow hash would make every token request cost tens of milliseconds of CPU
/// and hand attackers a cheap denial of service.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SecretHash([u8; 32]);

impl SecretHash {
    pub(crate) fn of(secret: &SecretString) -> Self {
        let d = digest::digest(&digest::SHA256, secret.expose_secret().as_bytes());
        SecretHash(d.as_ref().try_into().expect("SHA-256 is 32 bytes"))
    }

    /// Constant-time comparison.
    pub(crate) fn matches(&self, other: &SecretHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(…)")
    }
}

impl Serialize for SecretHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("sha256:{}", B64.encode(self.0)))
    }
}

impl<'de> Deserialize<'de> for SecretHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.strip_prefix("sha256:")
            .and_then(|b| B64.decode(b).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(SecretHash)
            .ok_or_else(|| serde::de::Error::custom("bad secret hash"))
    }
}

/// An allowed source network: a CIDR (`10.0.0.0/8`) or a single address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpAllow(pub IpNet);

impl FromStr for IpAllow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<IpNet>()
            .map(|n| n.trunc())
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map(IpAllow)
            .map_err(|_| format!("`{s}` is not an IP address or CIDR"))
    }
}

impl Serialize for IpAllow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for IpAllow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

mod rfc3339_opt {
    pub(crate) use time::serde::rfc3339::option::{deserialize, serialize};
}

/// A client as stored (`_credgate/clients/{clientId}`, camelCase JSON), and
/// as the admin operations edit it. In memory clients are kept as
/// [`Client`]; this form exists only while a record is read or written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClientRecord {
    pub(crate) client_id: Arc<str>,
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) description: String,
    #[serde(flatten)]
    pub(crate) tenants: Tenants,
    #[serde(default)]
    pub(crate) scopes: Vec<Arc<str>>,
    #[serde(default)]
    pub(crate) allowed_integrations: Vec<String>,
    #[serde(default)]
    pub(crate) allowed_tools: Vec<String>,
    #[serde(default)]
    pub(crate) allowed_ips: Vec<IpAllow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) token_expiration_minutes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) jwks: Option<Value>,
    pub(crate) active: bool,
    pub(crate) secret_hash: SecretHash,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) previous_secret_hash: Option<SecretHash>,
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub(crate) previous_secret_valid_until: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) updated_at: OffsetDateTime,
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub(crate) suspended_at: Option<OffsetDateTime>,
}

impl ClientRecord {
    pub(crate) fn to_data(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => unreachable!("a client serializes to an object"),
        }
    }
}

/// A client as every request sees it, built from its stored record and
/// kept small: the registry holds one per client, however many there are.
/// Lists (scopes, allow lists) are shared between clients with equal ones
/// (an interner in the registry); rarely set fields are boxed. The secret hashes never
/// leave this module except into the store; [`Client::view`] is what the
/// admin API shows.
#[derive(Debug, Clone)]
pub struct Client {
    pub client_id: Arc<str>,
    pub name: Box<str>,
    pub description: Box<str>,
    pub tenants: Tenants,
    pub scopes: Arc<[Arc<str>]>,
    /// Integrations this client may reach; empty means no restriction.
    pub allowed_integrations: Arc<[Arc<str>]>,
    /// MCP tools this client may call; empty means no restriction.
    pub allowed_tools: Arc<[Arc<str>]>,
    /// Source networks; empty means any address.
    pub allowed_ips: Arc<[IpAllow]>,
    pub token_expiration_minutes: Option<u64>,
    /// Public keys for `private_key_jwt` (`{"keys": [...]}`), if registered.
    pub jwks: Option<Box<Value>>,
    pub active: bool,
    pub(crate) secret_hash: SecretHash,
    /// The secret before the last rotation, during its grace period.
    pub(crate) previous_secret: Option<Box<PreviousSecret>>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// The last suspension. Kept after reactivation: tokens issued before it
    /// stay invalid.
    pub suspended_at: Option<OffsetDateTime>,
    /// Store version this copy was read or written at: a reload keeps the
    /// copy it has when the version did not move.
    pub(crate) version: u64,
}

/// A rotated-out secret and the end of its grace period.
#[derive(Debug, Clone)]
pub(crate) struct PreviousSecret {
    pub(crate) hash: Option<SecretHash>,
    pub(crate) valid_until: Option<OffsetDateTime>,
}

/// Shares equal lists and strings between the clients built through it.
/// The registry keeps one for good and prunes it after each full reload, so
/// values nothing uses any more do not pile up.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    strs: HashSet<Arc<str>>,
    lists: HashSet<Arc<[Arc<str>]>>,
    ips: HashSet<Arc<[IpAllow]>>,
}

impl Interner {
    fn str(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strs.get(s) {
            return a.clone();
        }
        let a: Arc<str> = s.into();
        self.strs.insert(a.clone());
        a
    }

    fn list<S: AsRef<str>>(&mut self, items: &[S]) -> Arc<[Arc<str>]> {
        let items: Vec<Arc<str>> = items.iter().map(|s| self.str(s.as_ref())).collect();
        if let Some(a) = self.lists.get(items.as_slice()) {
            return a.clone();
        }
        let a: Arc<[Arc<str>]> = items.into();
        self.lists.insert(a.clone());
        a
    }

    fn ips(&mut self, items: Vec<IpAllow>) -> Arc<[IpAllow]> {
        if let Some(a) = self.ips.get(items.as_slice()) {
            return a.clone();
        }
        let a: Arc<[IpAllow]> = items.into();
        self.ips.insert(a.clone());
        a
    }

    /// Forgets what only the interner still holds: no client (and no cached
    /// token verification) uses it any more.
    pub(crate) fn prune(&mut self) {
        self.lists.retain(|l| Arc::strong_count(l) > 1);
        self.ips.retain(|l| Arc::strong_count(l) > 1);
        // After the lists: theirs were the only other holders of most strings.
        self.strs.retain(|s| Arc::strong_count(s) > 1);
    }

    /// The in-memory form of a record written at `version`. The strings of
    /// `previous` (this client before the change) are kept where equal, so
    /// what still shares them (cached token verifications) is not doubled.
    pub(crate) fn client(
        &mut self,
        r: ClientRecord,
        version: u64,
        previous: Option<&Client>,
    ) -> Client {
        let previous_secret = (r.previous_secret_hash.is_some()
            || r.previous_secret_valid_until.is_some())
        .then(|| {
            Box::new(PreviousSecret {
                hash: r.previous_secret_hash,
                valid_until: r.previous_secret_valid_until,
            })
        });
        let (client_id, tenants) = match previous {
            Some(p) => (
                if p.client_id == r.client_id {
                    p.client_id.clone()
                } else {
                    r.client_id
                },
                if p.tenants == r.tenants {
                    p.tenants.clone()
                } else {
                    r.tenants
                },
            ),
            None => (r.client_id, r.tenants),
        };
        Client {
            client_id,
            name: r.name.into(),
            description: r.description.into(),
            tenants,
            scopes: self.list(&r.scopes),
            allowed_integrations: self.list(&r.allowed_integrations),
            allowed_tools: self.list(&r.allowed_tools),
            allowed_ips: self.ips(r.allowed_ips),
            token_expiration_minutes: r.token_expiration_minutes,
            jwks: r.jwks.map(Box::new),
            active: r.active,
            secret_hash: r.secret_hash,
            previous_secret,
            created_at: r.created_at,
            updated_at: r.updated_at,
            suspended_at: r.suspended_at,
            version,
        }
    }
}

/// The admin API's view of a client: every field except secret material.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientView<'a> {
    client_id: &'a str,
    name: &'a str,
    description: &'a str,
    #[serde(flatten)]
    tenants: &'a Tenants,
    scopes: &'a [Arc<str>],
    allowed_integrations: &'a [Arc<str>],
    allowed_tools: &'a [Arc<str>],
    allowed_ips: &'a [IpAllow],
    #[serde(skip_serializing_if = "Option::is_none")]
    token_expiration_minutes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jwks: Option<&'a Value>,
    active: bool,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
    #[serde(with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    suspended_at: Option<OffsetDateTime>,
    #[serde(with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    previous_secret_valid_until: Option<OffsetDateTime>,
}

impl Client {
    pub fn view(&self) -> ClientView<'_> {
        ClientView {
            client_id: &self.client_id,
            name: &self.name,
            description: &self.description,
            tenants: &self.tenants,
            scopes: &self.scopes,
            allowed_integrations: &self.allowed_integrations,
            allowed_tools: &self.allowed_tools,
            allowed_ips: &self.allowed_ips,
            token_expiration_minutes: self.token_expiration_minutes,
            jwks: self.jwks.as_deref(),
            active: self.active,
            created_at: self.created_at,
            updated_at: self.updated_at,
            suspended_at: self.suspended_at,
            previous_secret_valid_until: self.previous_secret_valid_until(),
        }
    }

    /// End of the previous secret's grace period, if a rotation left one.
    pub fn previous_secret_valid_until(&self) -> Option<OffsetDateTime> {
        self.previous_secret.as_ref().and_then(|p| p.valid_until)
    }

    pub fn allows_integration(&self, integration: &str) -> bool {
        self.allowed_integrations.is_empty()
            || self
                .allowed_integrations
                .iter()
                .any(|i| **i == *integration)
    }

    /// Whether the client may call `tool` on a route of `integration`
    /// (`allowedTools` globs and prefixes: docs/policy.md).
    pub fn allows_tool(&self, integration: &str, tool: &str) -> bool {
        crate::mcp::tools::allows(&self.allowed_tools, integration, tool)
    }

    /// Whether `allowedIps` admits the caller. An unknown address (see
    /// [`crate::client_addr`]) is admitted only by a client without a list.
    pub fn allows_ip(&self, addr: ClientAddr) -> bool {
        if self.allowed_ips.is_empty() {
            return true;
        }
        let Some(ip) = addr.ip().map(crate::client_addr::canonical) else {
            return false;
        };
        self.allowed_ips.iter().any(|n| n.0.contains(&ip))
    }

    /// Unix second of the last suspension; tokens with `iat` at or before it
    /// are refused (a token issued in the very second of a suspension may
    /// predate it, so the boundary second counts as "before").
    pub fn suspended_at_unix(&self) -> Option<u64> {
        self.suspended_at
            .map(|t| u64::try_from(t.unix_timestamp()).unwrap_or(0))
    }

    /// Whether `secret` is the current secret, or the previous one within its
    /// grace period. Never for a client registered with a public key: it
    /// authenticates with signed assertions only, so no shared secret works.
    pub(crate) fn secret_matches(&self, presented: &SecretHash, now: OffsetDateTime) -> bool {
        if self.jwks.is_some() {
            return false;
        }
        let current = self.secret_hash.matches(presented);
        let previous = match self.previous_secret.as_deref() {
            Some(PreviousSecret {
                hash: Some(h),
                valid_until: Some(until),
            }) => h.matches(presented) & (now < *until),
            _ => false,
        };
        current | previous
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(id: Arc<str>, hash: SecretHash) -> ClientRecord {
        let now = OffsetDateTime::now_utc();
        ClientRecord {
            client_id: id,
            name: "agent".into(),
            description: String::new(),
            tenants: Tenants::One("tenant-1".into()),
            scopes: vec!["mcp".into(), "admin".into()],
            allowed_integrations: vec![],
            allowed_tools: vec![],
            allowed_ips: vec![],
            token_expiration_minutes: None,
            jwks: None,
            active: true,
            secret_hash: hash,
            previous_secret_hash: None,
            previous_secret_valid_until: None,
            created_at: now,
            updated_at: now,
            suspended_at: None,
        }
    }

    fn compact(r: &ClientRecord) -> Client {
        Interner::default().client(r.clone(), 1, None)
    }

    #[test]
    fn ids_and_secrets_have_the_promised_shape() {
        let id = new_client_id();
        assert!(
            is_client_id(&id) && crate::ids::validate(&id).is_ok(),
            "{id}"
        );
        let s = new_secret();
        assert_eq!(s.expose_secret().len(), 43);
        assert!(
            s.expose_secret()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        );
        assert!(!is_client_id("cg-../../etc") && !is_client_id("cg-ABCDEF0123456789abcd"));
    }

    #[test]
    fn a_key_registered_client_has_no_working_secret() {
        let secret = new_secret();
        let now = OffsetDateTime::now_utc();
        let mut c = sample("cg-00000000000000000002".into(), SecretHash::of(&secret));
        assert!(compact(&c).secret_matches(&SecretHash::of(&secret), now));
        c.jwks = Some(serde_json::json!({ "keys": [] }));
        assert!(!compact(&c).secret_matches(&SecretHash::of(&secret), now));
    }

    #[test]
    fn previous_secret_only_within_grace() {
        let old = new_secret();
        let new = new_secret();
        let now = OffsetDateTime::now_utc();
        let mut r = sample("cg-00000000000000000001".into(), SecretHash::of(&new));
        r.previous_secret_hash = Some(SecretHash::of(&old));
        r.previous_secret_valid_until = Some(now + time::Duration::minutes(5));
        let c = compact(&r);
        assert!(c.secret_matches(&SecretHash::of(&old), now));
        assert!(!c.secret_matches(&SecretHash::of(&old), now + time::Duration::minutes(6)));
        assert!(c.secret_matches(&SecretHash::of(&new), now + time::Duration::minutes(6)));
    }

    #[test]
    fn allow_lists() {
        let mut r = sample(
            "cg-00000000000000000001".into(),
            SecretHash::of(&new_secret()),
        );
        let known = |s: &str| ClientAddr::Known(s.parse().unwrap());
        let c = compact(&r);
        assert!(c.allows_ip(known("192.0.2.1")) && c.allows_integration("x"));
        assert!(c.allows_ip(ClientAddr::Unknown), "no list: any address");
        r.allowed_ips = vec!["10.0.0.0/8".parse().unwrap(), "192.0.2.7".parse().unwrap()];
        r.allowed_integrations = vec!["github".into()];
        r.allowed_tools = vec!["search".into()];
        let c = compact(&r);
        assert!(c.allows_ip(known("10.1.2.3")));
        assert!(c.allows_ip(known("::ffff:192.0.2.7")));
        assert!(!c.allows_ip(known("192.0.2.8")));
        assert!(
            !c.allows_ip(ClientAddr::Unknown),
            "a list refuses an unknown address"
        );
        assert!(c.allows_integration("github") && !c.allows_integration("slack"));
        assert!(c.allows_tool("github", "search") && !c.allows_tool("github", "delete"));
        assert!("nonsense".parse::<IpAllow>().is_err());
    }

    #[test]
    fn the_view_shows_the_record_without_its_secret_hashes() {
        let now = OffsetDateTime::now_utc();
        let mut r = sample(
            "cg-00000000000000000003".into(),
            SecretHash::of(&new_secret()),
        );
        r.description = "d".into();
        r.allowed_integrations = vec!["github".into()];
        r.allowed_ips = vec!["10.0.0.0/8".parse().unwrap()];
        r.token_expiration_minutes = Some(5);
        r.previous_secret_hash = Some(SecretHash::of(&new_secret()));
        r.previous_secret_valid_until = Some(now);
        r.suspended_at = Some(now);
        let mut stored = Value::Object(r.to_data());
        let fields = stored.as_object_mut().unwrap();
        assert!(fields.remove("secretHash").is_some());
        assert!(fields.remove("previousSecretHash").is_some());
        let view = serde_json::to_value(compact(&r).view()).unwrap();
        assert_eq!(view, stored);
    }

    #[test]
    fn equal_lists_are_shared_between_clients() {
        let mut interner = Interner::default();
        let mut r = sample(
            "cg-00000000000000000001".into(),
            SecretHash::of(&new_secret()),
        );
        r.allowed_integrations = vec!["github".into(), "slack".into()];
        let a = interner.client(r.clone(), 1, None);
        r.client_id = "cg-00000000000000000002".into();
        let b = interner.client(r.clone(), 1, None);
        assert!(Arc::ptr_eq(&a.scopes, &b.scopes));
        assert!(Arc::ptr_eq(
            &a.allowed_integrations,
            &b.allowed_integrations
        ));
        assert!(Arc::ptr_eq(&a.allowed_tools, &b.allowed_tools));
        assert!(Arc::ptr_eq(&a.allowed_ips, &b.allowed_ips));
        r.scopes = vec!["mcp".into()];
        let c = interner.client(r.clone(), 1, None);
        assert!(!Arc::ptr_eq(&a.scopes, &c.scopes));
        assert!(Arc::ptr_eq(&a.scopes[0], &c.scopes[0]));
        assert!(a.previous_secret.is_none() && a.jwks.is_none());

        // A changed client keeps the strings it had.
        r.name = "renamed".into();
        let d = interner.client(r.clone(), 2, Some(&c));
        assert!(Arc::ptr_eq(&c.client_id, &d.client_id));
        let (Tenants::One(before), Tenants::One(after)) = (&c.tenants, &d.tenants) else {
            panic!("one tenant");
        };
        assert!(Arc::ptr_eq(before, after));
        assert!(Arc::ptr_eq(&c.scopes, &d.scopes));

        // Pruning forgets only what no client holds any more.
        let lists = |i: &Interner| (i.lists.len(), i.strs.len());
        drop((a, b));
        interner.prune();
        // [mcp], [github, slack], [] and their strings; not [mcp, admin], admin.
        assert_eq!(lists(&interner), (3, 3));
        drop((c, d));
        interner.prune();
        assert_eq!(lists(&interner), (0, 0));
        assert!(interner.ips.is_empty());
    }
}
