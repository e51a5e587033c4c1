//! Fuzz target `delta_log`: see docs/fuzzing.md.
fn main() {
    afl::fuzz!(|data: &[u8]| flowaudit_ingest::fuzz::delta_log(data));
}
