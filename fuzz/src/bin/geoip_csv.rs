//! Fuzz target `geoip_csv`: see docs/fuzzing.md.
fn main() {
    afl::fuzz!(|data: &[u8]| flowaudit_ingest::fuzz::geoip_csv(data));
}
