//! The store contract on OpenBao (or the Vault in `VAULT_ADDR`), in fresh
//! KV and Transit mounts per case.

use super::*;
use crate::contract::contract_tests;

/// The store and the server and mounts behind it.
pub(crate) struct OnBao {
    store: VaultStore,
    _mounts: Mounts,
    _bao: Bao,
}

impl std::ops::Deref for OnBao {
    type Target = VaultStore;
    fn deref(&self) -> &VaultStore {
        &self.store
    }
}

async fn open() -> OnBao {
    let (bao, m, store) = setup().await;
    assert_eq!(store.backend(), "vault");
    OnBao {
        store,
        _mounts: m,
        _bao: bao,
    }
}

contract_tests!(open);
