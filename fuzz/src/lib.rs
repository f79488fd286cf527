//! Fuzz targets for shardgate: each takes arbitrary bytes, must never panic, and
//! asserts the invariants of what it exercises. The checks live in `checks.rs`,
//! which `tests/fuzz_corpora.rs` also runs over the committed corpora on every
//! `cargo test`.

mod checks;
pub use checks::*;
