//! Fuzz target `flow_flowaudit`: see docs/fuzzing.md.
fn main() {
    afl::fuzz!(|data: &[u8]| flowaudit_ingest::fuzz::flows(data));
}
