//! Fuzz target `flow_zeek`: see docs/fuzzing.md.
fn main() {
    afl::fuzz!(|data: &[u8]| flowaudit_ingest::fuzz::flows(data));
}
