//! [`ClientRegistry`]: the in-memory client map every request reads (no
//! store I/O), written through to the store with check-and-set and reloaded
//! by the sync loop.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use secrecy::SecretString;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::clients::{
    Client, ClientRecord, Interner, SecretHash, is_client_id, new_client_id, new_secret,
};
use super::sync::Changes;
use crate::store::{Cas, Store, StoreError};

pub(crate) const CLIENTS_PREFIX: &str = "_credgate/clients";

fn client_path(id: &str) -> String {
    format!("{CLIENTS_PREFIX}/{id}")
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
    /// Shares equal lists between the clients in the map; pruned after
    /// each full reload.
    interner: Mutex<Interner>,
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
            interner: Mutex::default(),
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

    fn interner(&self) -> std::sync::MutexGuard<'_, Interner> {
        self.interner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Arc<Client>>> {
        self.clients.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `record`, written at `version`, in memory.
    fn put(&self, record: ClientRecord, version: u64) -> Arc<Client> {
        let previous = self.get(&record.client_id);
        let client = Arc::new(self.interner().client(record, version, previous.as_deref()));
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
        build: impl FnOnce(Arc<str>, SecretHash) -> ClientRecord,
    ) -> Result<(Arc<Client>, SecretString), ClientError> {
        let secret = new_secret();
        let record = build(new_client_id().into(), SecretHash::of(&secret));
        let _gate = self.gate.lock().await;
        let path = client_path(&record.client_id);
        let version = self
            .store
            .write(&path, record.to_data(), BTreeMap::new(), Cas::Absent)
            .await?;
        let client = self.put(record, version);
        self.changes.announce(&*self.store).await;
        Ok((client, secret))
    }

    /// Read-modify-write of one client with check-and-set, retried on
    /// conflict. `change` may run more than once.
    pub(crate) async fn update(
        &self,
        client_id: &str,
        mut change: impl FnMut(&mut ClientRecord) -> Result<(), ClientError>,
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
            let mut client = parse(rec.data)?;
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
                    let client = self.put(client, v);
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
    /// parse is left out (its client cannot authenticate: fail closed). A
    /// client whose version did not move keeps its copy (nothing parsed or
    /// allocated again; cached token verifications keep sharing it).
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
            let previous = self.get(&name);
            if let Some(same) = previous.as_ref().filter(|c| c.version == rec.version) {
                next.insert(same.client_id.clone(), same.clone());
                continue;
            }
            match parse(rec.data) {
                Ok(c) if *c.client_id == *name => {
                    let c = self.interner().client(c, rec.version, previous.as_deref());
                    next.insert(c.client_id.clone(), Arc::new(c));
                }
                _ => tracing::error!(client_id = %name, "client record unreadable; skipped"),
            }
        }
        // The clients replaced (or deleted) are dropped here, then what only
        // they used is forgotten.
        *self.clients.write().unwrap_or_else(|p| p.into_inner()) = next;
        self.interner().prune();
        Ok(())
    }
}

fn parse(data: Map<String, Value>) -> Result<ClientRecord, StoreError> {
    serde_json::from_value(Value::Object(data))
        .map_err(|e| StoreError::Corrupt(format!("client record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::clients::tests::sample;
    use crate::oauth::testing::MemStore;
    use secrecy::ExposeSecret;

    fn registry(store: Arc<MemStore>) -> ClientRegistry {
        ClientRegistry::new(store, Arc::new(Changes::default()))
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
        assert_eq!(&*other.get(&c.client_id).unwrap().name, "agent");
    }

    #[tokio::test]
    async fn a_reload_keeps_unchanged_clients_and_reads_changed_ones() {
        let store = Arc::new(MemStore::new());
        let (a, b) = (registry(store.clone()), registry(store.clone()));
        let (one, _) = a.create(sample).await.unwrap();
        let (two, _) = a.create(sample).await.unwrap();
        b.reload().await.unwrap();
        let (b_one, b_two) = (
            b.get(&one.client_id).unwrap(),
            b.get(&two.client_id).unwrap(),
        );
        a.update(&two.client_id, |c| {
            c.name = "changed".into();
            Ok(())
        })
        .await
        .unwrap();
        b.reload().await.unwrap();
        assert!(Arc::ptr_eq(&b.get(&one.client_id).unwrap(), &b_one));
        let changed = b.get(&two.client_id).unwrap();
        assert_eq!((&*changed.name, changed.version), ("changed", 2));
        // Its id string stays the one cached verifications already share.
        assert!(Arc::ptr_eq(&changed.client_id, &b_two.client_id));
        assert!(Arc::ptr_eq(&changed.scopes, &b_one.scopes));
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
        assert_eq!((&*after.name, &*after.description), ("one", "two"));
        assert_eq!((c.version, after.version), (1, 3));
        b.delete(&c.client_id).await.unwrap();
        assert!(b.get(&c.client_id).is_none());
        assert!(matches!(
            a.delete(&c.client_id).await,
            Err(ClientError::NotFound)
        ));
    }
}
