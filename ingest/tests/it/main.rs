//! Integration tests of the ingest library (one test binary; modules by topic).
mod convert;
mod formats;
mod fuzz_corpus;
mod gaps;
mod geoip;
mod kafka_config;
mod warehouse;

use std::path::PathBuf;

/// A path under the repository root.
pub fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}
