//! Fuzz target `sql_check`: see docs/fuzzing.md.
fn main() {
    afl::fuzz!(|data: &[u8]| flowaudit_analytics::fuzz::sql_check(data));
}
