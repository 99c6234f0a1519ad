//! Test doubles for the oauth module: the in-memory store
//! ([`crate::store::memory::MemStore`]) and a ready [`Authority`] on it (two
//! routes: `/github` needing `mcp`, `/slack`).

use std::sync::Arc;

use crate::audit::Audit;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::oauth::Authority;
pub(crate) use crate::store::memory::MemStore;

pub(crate) const PUBLIC: &str = "http://127.0.0.1:8080";
pub(crate) const GITHUB: &str = "http://127.0.0.1:8080/github";

pub(crate) fn config(extra: &str) -> Config {
    let text = format!(
        r#"
        [oauth]
        max_failures_per_client = 3
        max_failures_per_address = 5
        {extra}
        [[routes]]
        integration = "github"
        path_prefix = "/github"
        upstream = "http://127.0.0.1:1"
        required_scopes = ["mcp"]
        [[routes]]
        integration = "slack"
        path_prefix = "/slack"
        upstream = "http://127.0.0.1:1"
        "#
    );
    Config::from_toml_with_env(&text, Vec::new()).unwrap()
}

pub(crate) async fn authority_on(store: Arc<MemStore>, extra: &str) -> Authority {
    Authority::new(
        &config(extra),
        store,
        Arc::new(Metrics::new()),
        Arc::new(Audit::discard()),
    )
    .await
    .unwrap()
}

pub(crate) async fn authority() -> (Authority, Arc<MemStore>) {
    let store = Arc::new(MemStore::new());
    (authority_on(store.clone(), "").await, store)
}
