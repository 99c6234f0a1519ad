//! Placeholder: being written.
use super::*;
pub struct EmbeddedStore;
impl EmbeddedStore {
    pub fn open(_c: &StoreConfig) -> Result<Self, StoreError> {
        Err(StoreError::Refused("not yet".into()))
    }
}
#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str { "embedded" }
    async fn read(&self, _p: &str) -> Result<Option<Record>, StoreError> { Ok(None) }
    async fn write(&self, _p: &str, _d: Map<String, Value>, _m: BTreeMap<String, String>, _c: Cas) -> Result<u64, StoreError> { Ok(1) }
    async fn delete(&self, _p: &str) -> Result<(), StoreError> { Ok(()) }
    async fn list(&self, _p: &str) -> Result<Vec<String>, StoreError> { Ok(vec![]) }
    async fn encrypt(&self, _k: &str, _c: &str, _p: &[&[u8]]) -> Result<Vec<String>, StoreError> { Ok(vec![]) }
    async fn decrypt(&self, _k: &str, _c: &str, _p: &[&str]) -> Result<Vec<Plaintext>, StoreError> { Ok(vec![]) }
    async fn health(&self) -> Result<(), StoreError> { Ok(()) }
}
