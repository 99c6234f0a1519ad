//! The cross-replica refresh lease: a record under the store's internal
//! prefix, taken with check-and-set, so at most one replica calls the
//! provider for a credential at a time. A holder that dies loses it after
//! [`LEASE_TTL_SECS`].

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::store::{Cas, INTERNAL_PREFIX, Store, StoreError};

/// How long a refresh lease holds before another replica may take over.
pub const LEASE_TTL_SECS: i64 = 30;

fn path(tenant: &str, integration: &str) -> String {
    format!("{INTERNAL_PREFIX}/leases/{tenant}/{integration}")
}

/// Takes the lease for `holder`; `None` when another live holder has it.
/// Returns the lease record's version, for [`release`].
pub async fn acquire(
    store: &dyn Store,
    tenant: &str,
    integration: &str,
    holder: &str,
) -> Result<Option<u64>, StoreError> {
    let path = path(tenant, integration);
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let current = store.read(&path).await?;
    let cas = match &current {
        Some(r) => {
            let until = r.data.get("expiresAt").and_then(Value::as_i64).unwrap_or(0);
            let by = r.data.get("holder").and_then(Value::as_str).unwrap_or("");
            if until > now && by != holder {
                return Ok(None);
            }
            Cas::Version(r.version)
        }
        None => Cas::Absent,
    };
    let mut data = Map::new();
    data.insert("holder".into(), json!(holder));
    data.insert("expiresAt".into(), json!(now + LEASE_TTL_SECS));
    match store.write(&path, data, BTreeMap::new(), cas).await {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::Conflict) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Gives the lease back; losing this write only means it runs out by itself.
pub async fn release(store: &dyn Store, tenant: &str, integration: &str, version: u64) {
    let path = path(tenant, integration);
    let mut data = Map::new();
    data.insert("holder".into(), json!(""));
    data.insert("expiresAt".into(), json!(0));
    if let Err(e) = store
        .write(&path, data, BTreeMap::new(), Cas::Version(version))
        .await
    {
        tracing::debug!(error = %e, "refresh lease release failed");
    }
}
