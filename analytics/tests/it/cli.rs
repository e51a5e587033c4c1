//! The command line: help, configuration errors, and the generator's output.
use std::process::Command;

use crate::support::*;

#[test]
fn help_names_every_ingest_setting_with_its_environment_variable() {
    let (out, _) = run_ok({
        let mut c = Command::new(bin());
        c.args(["ingest", "--help"]);
        c
    });
    for flag in [
        "--brokers",
        "--warehouse",
        "--policy",
        "--geoip",
        "--group",
        "--until-caught-up",
        "FLOWAUDIT_BROKERS",
        "FLOWAUDIT_WAREHOUSE",
    ] {
        assert!(out.contains(flag), "{flag} missing from --help:\n{out}");
    }
}

#[test]
fn missing_settings_and_unknown_config_keys_are_clear_errors() {
    let out = Command::new(bin())
        .args(["ingest", "--warehouse", "/tmp/x", "--policy", "/tmp/y"])
        .env_remove("FLOWAUDIT_BROKERS")
        .env_remove("FLOWAUDIT_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("brokers are required") && err.contains("FLOWAUDIT_BROKERS"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("flowaudit.toml");
    std::fs::write(&cfg, "[ingest]\nbrokerz = \"x\"\n").unwrap();
    let out = Command::new(bin())
        .arg("--config")
        .arg(&cfg)
        .args(["ingest"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("unknown field `brokerz`")
            && err.contains("flowaudit.toml"),
        "{err}"
    );

    // The environment supplies what the flags do not.
    let out = Command::new(bin())
        .args(["ingest", "--brokers", "127.0.0.1:1"])
        .env("FLOWAUDIT_WAREHOUSE", dir.path().join("wh"))
        .env("FLOWAUDIT_POLICY", dir.path().join("no-such-policy"))
        .env_remove("FLOWAUDIT_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no-such-policy/networks.toml"),
        "{err}"
    );

    // A DataFusion setting from the environment that DataFusion cannot parse names the variable.
    std::fs::create_dir(dir.path().join("wh")).unwrap();
    let out = Command::new(bin())
        .args(["rules", "run", "--date", "2026-11-21"])
        .arg("--warehouse")
        .arg(dir.path().join("wh"))
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .arg("--rules-dir")
        .arg(repo("queries"))
        .env("DATAFUSION_EXECUTION_BATCH_SIZE", "abc")
        .env_remove("FLOWAUDIT_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("DataFusion settings from the environment")
            && err.contains("DATAFUSION_EXECUTION_BATCH_SIZE=\"abc\""),
        "{err}"
    );
}

#[test]
fn generate_is_deterministic_and_lists_the_planted_violations() {
    let dir = tempfile::tempdir().unwrap();
    for run in ["a", "b"] {
        let mut c = Command::new(bin());
        c.args([
            "generate",
            "--date",
            "2026-11-21",
            "--seed",
            "7",
            "--events",
            "800",
            "--flows",
            "3000",
        ])
        .arg("--out")
        .arg(dir.path().join(run))
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .arg("--geoip")
        .arg(repo("fixtures/geoip/ranges.csv"));
        run_ok(c);
    }
    for f in ["gateway.jsonl", "flows.jsonl", "planted.json"] {
        assert_eq!(
            std::fs::read(dir.path().join("a").join(f)).unwrap(),
            std::fs::read(dir.path().join("b").join(f)).unwrap(),
            "{f} differs"
        );
    }
    let planted: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("a/planted.json")).unwrap()).unwrap();
    let kinds: Vec<&str> = planted["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap())
        .collect();
    for k in [
        "transfer_no_legal_basis",
        "access_from_unapproved_location",
        "gateway_bypass",
        "export_without_approval",
        "volume_spike",
        "repeated_denials",
        "exporter_silent",
    ] {
        assert!(kinds.contains(&k), "{k} not planted: {kinds:?}");
    }
    let gw = std::fs::read_to_string(dir.path().join("a/gateway.jsonl")).unwrap();
    assert!(gw.lines().count() >= 800);
    assert!(gw
        .lines()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
}

#[test]
fn generate_takes_its_settings_from_flowaudit_toml() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("flowaudit.toml");
    let policy = repo("fixtures/policy");
    let geo = repo("fixtures/geoip/ranges.csv");
    std::fs::write(
        &cfg,
        format!("policy = {policy:?}\n[generate]\nevents = 300\nflows = 700\nmalformed = 3\ngeoip_csv = {geo:?}\nflow_format = \"zeek\"\n"),
    )
    .unwrap();
    let mut c = Command::new(bin());
    c.arg("--config")
        .arg(&cfg)
        .args(["generate", "--date", "2026-11-21"])
        .arg("--out")
        .arg(dir.path().join("out"))
        .current_dir(dir.path());
    run_ok(c);
    let planted: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/planted.json")).unwrap())
            .unwrap();
    assert_eq!(
        planted["malformed_gateway"].as_u64().unwrap()
            + planted["malformed_flows"].as_u64().unwrap(),
        3
    );
    let flows = std::fs::read_to_string(dir.path().join("out/flows.jsonl")).unwrap();
    assert!(
        flows.lines().filter(|l| l.contains("\"uid\"")).count() >= 700,
        "every flow in Zeek format"
    );

    let out = Command::new(bin())
        .args(["generate", "--date", "2026-11-21"])
        .env_remove("FLOWAUDIT_BROKERS")
        .env_remove("FLOWAUDIT_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("nothing to do"),
        "{err}"
    );
}

#[test]
fn convert_writes_the_same_parquet_with_any_thread_count_and_counts_rejects() {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(bin());
    c.args([
        "generate",
        "--date",
        "2026-11-21",
        "--events",
        "200",
        "--flows",
        "5000",
        "--malformed",
        "9",
    ])
    .arg("--out")
    .arg(dir.path())
    .arg("--policy")
    .arg(repo("fixtures/policy"))
    .arg("--geoip")
    .arg(repo("fixtures/geoip/ranges.csv"));
    run_ok(c);
    let lines = std::fs::read_to_string(dir.path().join("flows.jsonl"))
        .unwrap()
        .lines()
        .count();
    let planted: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("planted.json")).unwrap()).unwrap();
    let bad = planted["malformed_flows"].as_u64().unwrap() as usize;
    assert!(bad > 0);
    let mut shas = Vec::new();
    for threads in ["1", "3"] {
        let out = dir.path().join(format!("flows-{threads}.parquet"));
        let mut c = Command::new(bin());
        c.args(["convert", "--table", "flows", "--threads", threads])
            .arg("--input")
            .arg(dir.path().join("flows.jsonl"))
            .arg("--out")
            .arg(&out)
            .arg("--policy")
            .arg(repo("fixtures/policy"))
            .arg("--geoip")
            .arg(repo("fixtures/geoip/ranges.csv"));
        let (stdout, _) = run_ok(c);
        assert!(
            stdout.contains(&format!("{lines} lines -> {} rows", lines - bad)),
            "{stdout}"
        );
        shas.push(stdout.split("sha256 ").nth(1).unwrap()[..64].to_string());
        let f = std::fs::File::open(&out).unwrap();
        let rows: usize = ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum();
        assert_eq!(rows, lines - bad);
    }
    assert_eq!(shas[0], shas[1], "output independent of the thread count");
}

#[test]
fn demo_runs_end_to_end_and_finds_exactly_what_was_planted() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(bin());
    c.current_dir(repo(""))
        .args(["demo", "--out"])
        .arg(dir.path())
        .env("FLOWAUDIT_LOG", "warn")
        .env_remove("FLOWAUDIT_CONFIG");
    let (out, _) = run_ok(c);
    assert!(
        out.contains("planted violations found: 12 of 12; unexpected high-severity alerts: 0"),
        "{out}"
    );
    assert!(out.contains("to kafka:"), "{out}");
    let alerts = std::fs::read_to_string(dir.path().join("alerts.jsonl")).unwrap();
    let n = alerts.lines().count();
    assert!(
        out.contains(&format!("delivered {n} alert(s) to file:")),
        "{out}"
    );
    // Grouped by rule, each with its summary.
    assert!(
        out.contains("transfer_no_legal_basis (1 new, high)"),
        "{out}"
    );
    // And it ends with the report and what the rules covered: the whole day, complete.
    let html = dir.path().join("report/report.html");
    assert!(
        out.contains(&format!("report: {} (violations found)\n", html.display())),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with(
            "evaluation coverage: every record committed for 2026-11-21 was evaluated by every rule on complete data"
        ),
        "{out}"
    );
    assert!(html.is_file());
    // The checkpoint it wrote verifies with the command it prints, and the report names it.
    let cmd = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("flowaudit verify --warehouse"))
        .unwrap_or_else(|| panic!("no verify command in:\n{out}"));
    assert!(out.contains("checkpoint 1 in "), "{out}");
    let mut v = Command::new(bin());
    v.current_dir(repo(""))
        .args(cmd.split(' ').skip(1))
        .env_remove("FLOWAUDIT_CONFIG");
    let (vo, _) = run_ok(v);
    assert!(
        vo.contains("exposure: the last checkpoint is 1 (") && vo.contains("verified "),
        "{vo}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report/report.json")).unwrap())
            .unwrap();
    assert_eq!(report["checkpoints"]["latest"]["seq"], 1, "{report:#}");
    assert_eq!(
        report["checkpoints"]["not_yet_checkpointed"],
        serde_json::json!([]),
        "{report:#}"
    );
}
