//! The store: one contract (`contract`) run against every backend (the
//! embedded store, OpenBao, the in-memory test store), then what only one
//! backend does. The embedded store's file format, compaction and crash
//! tests live beside it (src/store/embedded/tests.rs).

#[path = "../support/openbao.rs"]
mod openbao;
#[path = "../support/tokenreview.rs"]
mod tokenreview;

mod contract;
mod embedded;
mod memory;
mod vault;
