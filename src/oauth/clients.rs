//! credgate's own OAuth clients: the record, secrets, and [`ClientRegistry`],
//! the in-memory map every request reads (no store I/O) that is written
//! through to the store with check-and-set and reloaded by the sync loop.
//!
//! Records live at `_credgate/clients/{clientId}` as camelCase JSON.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

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
use super::sync::Changes;
use crate::store::{Cas, Store, StoreError};

pub(crate) const CLIENTS_PREFIX: &str = "_credgate/clients";

fn client_path(id: &str) -> String {
    format!("{CLIENTS_PREFIX}/{id}")
}

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
    fn matches(&self, other: &SecretHash) -> bool {
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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// A client record. The secret hashes never leave this module except into
/// the store; [`Client::view`] is what the admin API shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Client {
    pub client_id: Arc<str>,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(flatten)]
    pub tenants: Tenants,
    #[serde(default)]
    pub scopes: Vec<Arc<str>>,
    /// Integrations this client may reach; empty means no restriction.
    #[serde(default)]
    pub allowed_integrations: Vec<String>,
    /// MCP tools this client may call; empty means no restriction.
    #[serde(default)]
    pub allowed_tools: Vec<String>,
    /// Source networks; empty means any address.
    #[serde(default)]
    pub allowed_ips: Vec<IpAllow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expiration_minutes: Option<u64>,
    /// Public keys for `private_key_jwt` (`{"keys": [...]}`), if registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    pub active: bool,
    pub(crate) secret_hash: SecretHash,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) previous_secret_hash: Option<SecretHash>,
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub previous_secret_valid_until: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The last suspension. Kept after reactivation: tokens issued before it
    /// stay invalid.
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub suspended_at: Option<OffsetDateTime>,
    /// Store version this copy was read or written at (check-and-set).
    #[serde(skip)]
    pub(crate) version: u64,
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
    allowed_integrations: &'a [String],
    allowed_tools: &'a [String],
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
            jwks: self.jwks.as_ref(),
            active: self.active,
            created_at: self.created_at,
            updated_at: self.updated_at,
            suspended_at: self.suspended_at,
            previous_secret_valid_until: self.previous_secret_valid_until,
        }
    }

    pub fn allows_integration(&self, integration: &str) -> bool {
        self.allowed_integrations.is_empty()
            || self.allowed_integrations.iter().any(|i| i == integration)
    }

    pub fn allows_tool(&self, tool: &str) -> bool {
        self.allowed_tools.is_empty() || self.allowed_tools.iter().any(|t| t == tool)
    }

    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allowed_ips.is_empty() || self.allowed_ips.iter().any(|n| n.0.contains(&ip))
    }

    /// Unix second of the last suspension; tokens with `iat` at or before it
    /// are refused (a token issued in the very second of a suspension may
    /// predate it, so the boundary second counts as "before").
    pub fn suspended_at_unix(&self) -> Option<u64> {
        self.suspended_at
            .map(|t| u64::try_from(t.unix_timestamp()).unwrap_or(0))
    }

    /// Whether `secret` is the current secret, or the previous one within its
    /// grace period.
    fn secret_matches(&self, presented: &SecretHash, now: OffsetDateTime) -> bool {
        let current = self.secret_hash.matches(presented);
        let previous = match (&self.previous_secret_hash, self.previous_secret_valid_until) {
            (Some(h), Some(until)) => h.matches(presented) & (now < until),
            _ => false,
        };
        current | previous
    }

    fn to_data(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => unreachable!("a client serializes to an object"),
        }
    }
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The input is not acceptable; the text is safe to show.
    #[error("{0}")]
    Invalid(String),
    #[error("client not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The in-memory client map plus write-through to the store.
pub struct ClientRegistry {
    store: Arc<dyn Store>,
    clients: RwLock<HashMap<Arc<str>, Arc<Client>>>,
    /// Serializes this replica's writes with reloads, so a reload that read
    /// the store before a local write cannot undo it in memory.
    gate: tokio::sync::Mutex<()>,
    changes: Arc<Changes>,
    /// Hash of a random secret, compared against when the client id is
    /// unknown so that timing does not tell which ids exist.
    decoy: SecretHash,
}

impl ClientRegistry {
    pub(crate) fn new(store: Arc<dyn Store>, changes: Arc<Changes>) -> Self {
        ClientRegistry {
            store,
            clients: RwLock::default(),
            gate: tokio::sync::Mutex::new(()),
            changes,
            decoy: SecretHash::of(&new_secret()),
        }
    }

    /// The current record, from memory.
    pub fn get(&self, client_id: &str) -> Option<Arc<Client>> {
        self.read_map().get(client_id).cloned()
    }

    /// All clients, oldest first.
    pub fn list(&self) -> Vec<Arc<Client>> {
        let mut all: Vec<Arc<Client>> = self.read_map().values().cloned().collect();
        all.sort_by(|a, b| (a.created_at, &a.client_id).cmp(&(b.created_at, &b.client_id)));
        all
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Arc<Client>>> {
        self.clients.read().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, client: Client) -> Arc<Client> {
        let client = Arc::new(client);
        self.clients
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client.client_id.clone(), client.clone());
        client
    }

    /// Checks a client's secret. `Err(true)` when the id names a registered
    /// client (the throttle counts those), `Err(false)` otherwise. Suspension
    /// is the caller's concern: it is reported only after authentication.
    pub(crate) fn authenticate(
        &self,
        client_id: &str,
        secret: &SecretString,
        now: OffsetDateTime,
    ) -> Result<Arc<Client>, bool> {
        let presented = SecretHash::of(secret);
        match self.get(client_id) {
            Some(c) if c.secret_matches(&presented, now) => Ok(c),
            Some(_) => Err(true),
            None => {
                let _ = self.decoy.matches(&presented);
                Err(false)
            }
        }
    }

    /// Stores a new client; returns it and its secret (shown once).
    pub(crate) async fn create(
        &self,
        build: impl FnOnce(Arc<str>, SecretHash) -> Client,
    ) -> Result<(Arc<Client>, SecretString), ClientError> {
        let secret = new_secret();
        let mut client = build(new_client_id().into(), SecretHash::of(&secret));
        let _gate = self.gate.lock().await;
        let path = client_path(&client.client_id);
        client.version = self
            .store
            .write(&path, client.to_data(), BTreeMap::new(), Cas::Absent)
            .await?;
        let client = self.put(client);
        self.changes.announce(&*self.store).await;
        Ok((client, secret))
    }

    /// Read-modify-write of one client with check-and-set, retried on
    /// conflict. `change` may run more than once.
    pub(crate) async fn update(
        &self,
        client_id: &str,
        mut change: impl FnMut(&mut Client) -> Result<(), ClientError>,
    ) -> Result<Arc<Client>, ClientError> {
        if !is_client_id(client_id) {
            return Err(ClientError::NotFound);
        }
        let _gate = self.gate.lock().await;
        let path = client_path(client_id);
        for _ in 0..5 {
            let Some(rec) = self.store.read(&path).await? else {
                return Err(ClientError::NotFound);
            };
            let mut client = parse(&rec.data, rec.version)?;
            change(&mut client)?;
            client.updated_at = OffsetDateTime::now_utc();
            match self
                .store
                .write(
                    &path,
                    client.to_data(),
                    BTreeMap::new(),
                    Cas::Version(rec.version),
                )
                .await
            {
                Ok(v) => {
                    client.version = v;
                    let client = self.put(client);
                    self.changes.announce(&*self.store).await;
                    return Ok(client);
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict.into())
    }

    /// Deletes a client; its tokens stop working at once.
    pub(crate) async fn delete(&self, client_id: &str) -> Result<(), ClientError> {
        if !is_client_id(client_id) {
            return Err(ClientError::NotFound);
        }
        let _gate = self.gate.lock().await;
        let path = client_path(client_id);
        if self.store.read(&path).await?.is_none() {
            return Err(ClientError::NotFound);
        }
        self.store.delete(&path).await?;
        self.clients
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(client_id);
        self.changes.announce(&*self.store).await;
        Ok(())
    }

    /// Replaces the map with what the store holds. A record that does not
    /// parse is left out (its client cannot authenticate: fail closed).
    pub(crate) async fn reload(&self) -> Result<(), StoreError> {
        let _gate = self.gate.lock().await;
        let mut next = HashMap::new();
        for name in self.store.list(CLIENTS_PREFIX).await? {
            if !is_client_id(&name) {
                continue;
            }
            let Some(rec) = self.store.read(&client_path(&name)).await? else {
                continue;
            };
            match parse(&rec.data, rec.version) {
                Ok(c) if *c.client_id == *name => {
                    next.insert(c.client_id.clone(), Arc::new(c));
                }
                _ => tracing::error!(client_id = %name, "client record unreadable; skipped"),
            }
        }
        *self.clients.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }
}

fn parse(data: &Map<String, Value>, version: u64) -> Result<Client, StoreError> {
    let mut c: Client = serde_json::from_value(Value::Object(data.clone()))
        .map_err(|e| StoreError::Corrupt(format!("client record: {e}")))?;
    c.version = version;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::testing::MemStore;

    pub(crate) fn sample(id: Arc<str>, hash: SecretHash) -> Client {
        let now = OffsetDateTime::now_utc();
        Client {
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
            version: 0,
        }
    }

    fn registry(store: Arc<MemStore>) -> ClientRegistry {
        ClientRegistry::new(store, Arc::new(Changes::default()))
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

    #[tokio::test]
    async fn create_authenticate_reload_and_no_secret_in_views() {
        let store = Arc::new(MemStore::new());
        let reg = registry(store.clone());
        let (c, secret) = reg.create(sample).await.unwrap();
        let now = OffsetDateTime::now_utc();
        assert!(reg.authenticate(&c.client_id, &secret, now).is_ok());
        let wrong = SecretString::from("nope");
        assert!(reg.authenticate(&c.client_id, &wrong, now).unwrap_err());
        assert!(
            !reg.authenticate("cg-00000000000000000000", &secret, now)
                .unwrap_err()
        );

        let view = serde_json::to_string(&c.view()).unwrap();
        assert!(!view.contains("sha256") && !view.contains(secret.expose_secret()));
        assert!(view.contains(r#""tenant":"tenant-1""#), "{view}");
        assert!(!format!("{c:?}").contains("sha256"));
        // The stored record holds a hash, never the secret.
        let rec = store
            .read(&client_path(&c.client_id))
            .await
            .unwrap()
            .unwrap();
        let stored = serde_json::to_string(&rec.data).unwrap();
        assert!(stored.contains("sha256:") && !stored.contains(secret.expose_secret()));

        let other = registry(store);
        other.reload().await.unwrap();
        assert_eq!(other.get(&c.client_id).unwrap().name, "agent");
    }

    #[tokio::test]
    async fn update_uses_check_and_set_and_delete_removes() {
        let store = Arc::new(MemStore::new());
        let a = registry(store.clone());
        let b = registry(store.clone());
        let (c, _) = a.create(sample).await.unwrap();
        b.reload().await.unwrap();
        // Both replicas update; neither write is lost.
        a.update(&c.client_id, |c| {
            c.name = "one".into();
            Ok(())
        })
        .await
        .unwrap();
        let after = b
            .update(&c.client_id, |c| {
                c.description = "two".into();
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(
            (after.name.as_str(), after.description.as_str()),
            ("one", "two")
        );
        assert!(after.version > c.version);
        b.delete(&c.client_id).await.unwrap();
        assert!(b.get(&c.client_id).is_none());
        assert!(matches!(
            a.delete(&c.client_id).await,
            Err(ClientError::NotFound)
        ));
    }

    #[test]
    fn previous_secret_only_within_grace() {
        let old = new_secret();
        let new = new_secret();
        let now = OffsetDateTime::now_utc();
        let mut c = sample("cg-00000000000000000001".into(), SecretHash::of(&new));
        c.previous_secret_hash = Some(SecretHash::of(&old));
        c.previous_secret_valid_until = Some(now + time::Duration::minutes(5));
        assert!(c.secret_matches(&SecretHash::of(&old), now));
        assert!(!c.secret_matches(&SecretHash::of(&old), now + time::Duration::minutes(6)));
        assert!(c.secret_matches(&SecretHash::of(&new), now + time::Duration::minutes(6)));
    }

    #[test]
    fn allow_lists() {
        let mut c = sample(
            "cg-00000000000000000001".into(),
            SecretHash::of(&new_secret()),
        );
        assert!(c.allows_ip("192.0.2.1".parse().unwrap()) && c.allows_integration("x"));
        c.allowed_ips = vec!["10.0.0.0/8".parse().unwrap(), "192.0.2.7".parse().unwrap()];
        assert!(c.allows_ip("10.1.2.3".parse().unwrap()));
        assert!(c.allows_ip("::ffff:192.0.2.7".parse().unwrap()));
        assert!(!c.allows_ip("192.0.2.8".parse().unwrap()));
        c.allowed_integrations = vec!["github".into()];
        assert!(c.allows_integration("github") && !c.allows_integration("slack"));
        assert!("nonsense".parse::<IpAllow>().is_err());
    }
}
