//! Replays the committed fuzz corpus of the analytics targets: every file of
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` through the harness the fuzzer runs
//! (`flowaudit_analytics::fuzz`). A panic fails the test and names the files (docs/fuzzing.md).
use flowaudit_analytics::fuzz;
use flowaudit_ingest::fuzz::replay;

fn run(target: &str, harness: fn(&[u8])) {
    replay(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        target,
        harness,
    );
}

#[test]
fn rule_header() {
    run("rule_header", fuzz::rule_header);
}

#[test]
fn sql_check() {
    run("sql_check", fuzz::sql_check);
}
