//! The store contract on the embedded store (a fresh file per case).

use credgate::config::StoreConfig;
use credgate::store::embedded::EmbeddedStore;
use tempfile::TempDir;

use crate::contract::contract_tests;

/// The store and the directory holding its file.
pub(crate) struct Embedded {
    store: EmbeddedStore,
    _dir: TempDir,
}

impl std::ops::Deref for Embedded {
    type Target = EmbeddedStore;
    fn deref(&self) -> &EmbeddedStore {
        &self.store
    }
}

async fn open() -> Embedded {
    let dir = TempDir::new().unwrap();
    let cfg = StoreConfig {
        path: dir.path().join("data").join("credgate.store"),
        ..StoreConfig::default()
    };
    let store = EmbeddedStore::open_with_master_key(&cfg, [7; 32]).expect("open store");
    assert_eq!(credgate::store::Store::backend(&store), "embedded");
    Embedded { store, _dir: dir }
}

contract_tests!(open);
