//! Fuzz target `geoip_mmdb`: see docs/fuzzing.md.
fn main() {
    afl::fuzz!(|data: &[u8]| flowaudit_ingest::fuzz::geoip_mmdb(data));
}
