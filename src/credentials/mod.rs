//! Upstream credentials: the stored record format ([`record`], which
//! `refresh` builds on) and the cache the hot path reads ([`cache`], above `refresh`).

mod cache;
mod record;

pub use cache::{Cached, Credentials};
pub use record::{
    API_KEY_TYPE, Credential, EXPIRY_SKEW_SECS, Status, Stored, Summary, load, load_summary,
    record_path, save, usable_at,
};
