//! Replays the committed fuzz corpus: every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` through the harness the fuzzer runs (`flowaudit_ingest::fuzz`).
//! A panic in any of them fails the test and names the files (docs/fuzzing.md).
use flowaudit_ingest::fuzz;

fn run(target: &str, harness: fn(&[u8])) {
    fuzz::replay(&crate::repo(""), target, harness)
}

#[test]
fn gateway() {
    run("gateway", fuzz::gateway);
}

#[test]
fn flow_flowaudit() {
    run("flow_flowaudit", fuzz::flows);
}

#[test]
fn flow_goflow2() {
    run("flow_goflow2", fuzz::flows);
}

#[test]
fn flow_zeek() {
    run("flow_zeek", fuzz::flows);
}

#[test]
fn geoip_csv() {
    run("geoip_csv", fuzz::geoip_csv);
}

#[test]
fn geoip_mmdb() {
    run("geoip_mmdb", fuzz::geoip_mmdb);
}

#[test]
fn delta_log() {
    run("delta_log", fuzz::delta_log);
}
