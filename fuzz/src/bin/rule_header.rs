//! Fuzz target `rule_header`: see docs/fuzzing.md.
fn main() {
    afl::fuzz!(|data: &[u8]| flowaudit_analytics::fuzz::rule_header(data));
}
