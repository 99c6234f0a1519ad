//! The store contract on the in-memory test store, so the unit tests that
//! use it (oauth, refresh) stand on the same ground as production.

use credgate::store::memory::MemStore;

use crate::contract::contract_tests;

async fn open() -> Box<MemStore> {
    Box::new(MemStore::new())
}

contract_tests!(open);
