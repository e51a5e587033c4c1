//! A real IP→country database (ip-location-db, fetched by `make test`) through the binary: flows
//! to addresses inside nested ranges get the most specific range's country, read back by pyarrow.
use crate::support::{bin, python_script, repo, run_ok};
use std::process::Command;

#[test]
fn convert_with_the_real_database_resolves_nested_ranges() {
    let db = std::env::var_os("FLOWAUDIT_REAL_GEOIP").expect(
        "FLOWAUDIT_REAL_GEOIP is not set: run the tests with `make test`, which fetches the database",
    );
    let dir = tempfile::tempdir().unwrap();
    let sample = std::fs::read_to_string(repo("fixtures/samples/goflow2.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(sample.lines().next().unwrap()).unwrap();
    let want = [
        ("2.58.197.15", "BE"),
        ("2.58.197.14", "DE"),
        ("3.2.35.41", "TR"),
        ("3.2.35.50", "GR"),
        ("2001:420:4000::1", "GB"),
        ("2001:420:4480::1", "IL"),
    ];
    let lines: Vec<String> = want
        .iter()
        .map(|(ip, _)| {
            let mut v = first.clone();
            v["dst_addr"] = (*ip).into();
            v["etype"] = if ip.contains(':') { "IPv6" } else { "IPv4" }.into();
            v["src_addr"] = if ip.contains(':') {
                "fd01::1"
            } else {
                "10.1.0.5"
            }
            .into();
            v.to_string()
        })
        .collect();
    let input = dir.path().join("flows.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = dir.path().join("flows.parquet");
    let mut c = Command::new(bin());
    c.args(["convert", "--table", "flows", "--threads", "1"])
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .arg("--geoip")
        .arg(&db);
    let (_, stderr) = run_ok(c);
    assert!(!stderr.contains("ranges overlap"), "{stderr}");
    let read = python_script(
        "check_parquet.py",
        &[
            "--columns".as_ref(),
            "dst_ip,dst_country".as_ref(),
            out.as_os_str(),
        ],
    );
    let got: Vec<(String, Option<String>)> = serde_json::from_slice(&read).unwrap();
    let want: Vec<(String, Option<String>)> = want
        .iter()
        .map(|(ip, cc)| (ip.to_string(), Some(cc.to_string())))
        .collect();
    assert_eq!(got, want);
}

/// `flowaudit geoip` loads the real database, states what it found and looks addresses up.
#[test]
fn geoip_command_reports_the_database_and_looks_up() {
    let db = std::env::var_os("FLOWAUDIT_REAL_GEOIP").expect(
        "FLOWAUDIT_REAL_GEOIP is not set: run the tests with `make test`, which fetches the database",
    );
    let mut c = Command::new(bin());
    c.arg("geoip")
        .arg("--geoip")
        .arg(&db)
        .args(["2.58.197.15", "2001:420:4000::1", "192.0.2.1"]);
    let (out, _) = run_ok(c);
    assert!(out.contains("2.58.197.15\tBE\n"), "{out}");
    assert!(out.contains("2001:420:4000::1\tGB\n"), "{out}");
    assert!(out.contains("192.0.2.1\tunknown\n"), "{out}");
    let nested: usize = out
        .split_once(" nested")
        .and_then(|(head, _)| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no nested count in {out}"));
    assert!(nested > 500, "{out}");

    // True conflicts are counted and named, never a refusal.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("conflict.csv");
    std::fs::write(&csv, "5.0.0.0,5.0.0.255,FR\n5.0.0.0,5.0.0.255,IT\n").unwrap();
    let mut c = Command::new(bin());
    c.arg("geoip").arg("--geoip").arg(&csv).arg("5.0.0.1");
    let (out, err) = run_ok(c);
    assert!(
        out.contains("1 conflicting") && out.contains("5.0.0.1\tFR\n"),
        "{out}"
    );
    assert!(
        out.contains("conflict  line 1: 5.0.0.0-5.0.0.255 is FR, line 2 says IT"),
        "{out}"
    );
    assert!(
        err.contains("conflicts=1"),
        "the log counts conflicts: {err}"
    );
}
