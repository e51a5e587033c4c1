//! The warehouse on an S3-API server (moto, a real HTTP server process that `make test` starts):
//! two ingest processes of one group write the Delta tables there, an independent reader
//! (pyarrow's own S3 client over the JSON log) sees every event exactly once with the offsets
//! in the tables' transactions, the SQL shell reads the tables from the bucket, and `verify`
//! checks the warehouse and catches a deleted file.
use std::collections::BTreeSet;
use std::time::Duration;

use flowaudit_ingest::generate::Message;
use flowaudit_ingest::warehouse::{self, Location};

use crate::support::*;

fn s3_warehouse(name: &str) -> String {
    let bucket = std::env::var("FLOWAUDIT_TEST_S3").expect(
        "FLOWAUDIT_TEST_S3 is not set: run the tests with `make test` (it starts the S3 server)",
    );
    let n: u64 = rand::random();
    format!("{bucket}/{name}-{n:016x}")
}

fn event(i: u64) -> Message {
    let ts_us = 1_795_255_200_000_000 + (i as i64) * 61_000_000;
    let payload = serde_json::json!({
        "event_id": format!("s3-{i:06}"), "ts": flowaudit_ingest::decode::fmt_us(ts_us),
        "gateway_id": "gw-fra-1", "employee_id": format!("e{}", 1000 + i % 40),
        "employee_country": "DE", "role": "analyst", "data_category": "public", "action": "read",
        "decision": "allow", "session_id": format!("s-{}", i / 5), "records": 1, "bytes": 10
    });
    Message {
        key: format!("k{}", i % 7),
        payload: if i % 50 == 49 {
            b"not json".to_vec()
        } else {
            serde_json::to_vec(&payload).unwrap()
        },
        ts_us,
    }
}

fn verify(wh: &str) -> (bool, String) {
    let out = std::process::Command::new(bin())
        .args(["verify", "--warehouse", wh])
        .env_remove("FLOWAUDIT_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn two_ingest_processes_write_delta_tables_to_s3_exactly_once_and_verify_checks_them() {
    let s = Setup::new(4);
    let wh = s3_warehouse("e2e");
    const N: u64 = 2000;
    let msgs: Vec<Message> = (0..N).map(event).collect();
    s.produce_gateway(&msgs);
    let ingest = || {
        let mut c = std::process::Command::new(bin());
        c.args(["ingest", "--brokers", &brokers(), "--group", &s.group])
            .args([
                "--gateway-topic",
                &s.gateway_topic,
                "--flow-topic",
                &s.flow_topic,
            ])
            .args([
                "--warehouse",
                &wh,
                "--until-caught-up",
                "--max-file-rows",
                "150",
            ])
            .arg("--policy")
            .arg(repo("fixtures/policy"))
            .args(["--session-timeout-ms", "6000", "--idle-ms", "4000"])
            .env("FLOWAUDIT_LOG", "info,librdkafka=warn")
            .env_remove("FLOWAUDIT_CONFIG");
        c
    };
    let mut a = Running::spawn(ingest());
    let mut b = Running::spawn(ingest());
    assert!(a.wait(Duration::from_secs(120)).success(), "{}", a.log());
    assert!(b.wait(Duration::from_secs(120)).success(), "{}", b.log());
    // Anything either left for the other (a rebalance at the end): a last run completes it.
    let mut last = Running::spawn(ingest());
    assert!(
        last.wait(Duration::from_secs(120)).success(),
        "{}",
        last.log()
    );

    let loc = Location::parse(&wh).unwrap();
    let log = warehouse::read_log_blocking(&loc).unwrap();
    let writers: BTreeSet<_> = log
        .commits
        .iter()
        .filter_map(|c| c.meta.as_ref())
        .map(|m| m.writer.clone())
        .collect();
    assert!(writers.len() >= 2, "both processes committed: {writers:?}");
    let rows: u64 = log.files.iter().map(|f| f.rows).sum();
    assert_eq!(rows, N, "every message is one row");

    // The independent reader: pyarrow's S3 client, the JSON log replayed by the script.
    let facts = pyarrow_at(&wh);
    let ids: Vec<String> =
        serde_json::from_value(facts["gateway_events"]["event_ids"].clone()).unwrap();
    let unique: BTreeSet<_> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "no duplicates");
    let expected: BTreeSet<String> = (0..N)
        .filter(|i| i % 50 != 49)
        .map(|i| format!("s3-{i:06}"))
        .collect();
    assert_eq!(unique, expected);
    assert_eq!(facts["quarantine"]["rows"], N / 50);
    assert_eq!(facts["gateway_events"]["provenance_unique"], true);
    // The tables' transactions hold the offsets: each partition's position is its last offset.
    let txns = &facts["txns"]["gateway_events"];
    let mut total = 0;
    for p in 0..4 {
        let id = format!("flowaudit:gateway_events:{}:{p}", s.gateway_topic);
        if let Some(v) = txns[&id].as_i64() {
            total += v + 1;
        }
    }
    assert_eq!(total as u64, N, "the positions cover every message: {txns}");
    // The Python deltalake package (an analyst's reader) sees the same, positions included.
    let d = deltalake_at(&wh);
    let dl: BTreeSet<String> =
        serde_json::from_value(d["gateway_events"]["event_ids"].clone()).unwrap();
    assert_eq!(dl, expected);
    assert_eq!(
        d["gateway_events"]["rows"].as_u64(),
        Some(expected.len() as u64)
    );
    assert_eq!(d["gateway_events"]["txns"], *txns, "{d}");

    let (ok, out) = verify(&wh);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{} files", log.files.len())), "{out}");

    // The SQL shell reads the same tables from the bucket, through delta-rs's provider.
    let out = std::process::Command::new(bin())
        .args(["sql", "--warehouse", &wh, "--format", "csv", "-c"])
        .arg(
            "SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM gateway_events; \
              SELECT count(*) AS q FROM quarantine WHERE date >= '2020-01-01'",
        )
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .env_remove("FLOWAUDIT_CONFIG")
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{so}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let good = N - N / 50;
    assert!(so.contains(&format!("n,ids\n{good},{good}\n")), "{so}");
    assert!(so.contains(&format!("q\n{}\n", N / 50)), "{so}");

    // A data file deleted from the bucket is named.
    let victim = &log.files[0].path;
    let (store, prefix) = loc.store().unwrap();
    let path = victim.split('/').fold(prefix, |p, x| p.join(x));
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(object_store::ObjectStoreExt::delete(store.as_ref(), &path))
        .unwrap();
    let (ok, out) = verify(&wh);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("deleted: {victim}")), "{out}");
}

/// `flowaudit` with the demo's fixtures, from the repository root, without a config file.
fn fa(args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(bin());
    c.args(args)
        .current_dir(repo(""))
        .env("FLOWAUDIT_LOG", "info,librdkafka=warn")
        .env_remove("FLOWAUDIT_CONFIG");
    c
}

#[test]
fn the_demo_rules_report_and_flight_sql_run_on_an_s3_warehouse() {
    let dir = tempfile::tempdir().unwrap();
    let wh = s3_warehouse("demo");
    let out = dir.path().join("demo");
    let out_s = out.to_str().unwrap();
    let day = "2026-11-21";

    // The demo end to end on the bucket: ingest → rules → alerts → report, planted violations
    // found exactly (the demo fails otherwise); its state (the alert store, run records) is local.
    let (so, _) = run_ok(fa(&["demo", "--out", out_s, "--warehouse", &wh]));
    assert!(so.contains("planted violations found: 12 of 12"), "{so}");
    let state = out.join("state");
    let state_s = state.to_str().unwrap();
    assert!(state.join("_alerts/alerts.jsonl").is_file());
    assert!(
        !out.join("warehouse").exists(),
        "nothing of the tables is local"
    );
    let raised = std::fs::read_to_string(state.join("_alerts/alerts.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(raised >= 12, "{raised} alerts");
    // A second demo on the same prefix is refused, not mixed into the first one's tables.
    let again = fa(&["demo", "--out", out_s, "--warehouse", &wh])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let e = String::from_utf8_lossy(&again.stderr);
    assert!(e.contains("needs an empty prefix"), "{e}");

    // The independent reader (pyarrow's S3 client over the JSON log).
    let facts = pyarrow_at(&wh);
    // The alerts table is in the bucket: the Python `deltalake` package and `sql` without any
    // state directory see every raised alert once.
    let t = crate::support::deltalake_alerts(&wh, &state);
    assert_eq!(t["rows"].as_u64().unwrap() as usize, raised, "{t}");
    assert_eq!(t["txn"].as_u64().unwrap() as usize, raised, "{t}");
    let (so, _) = run_ok(fa(&[
        "sql",
        "--warehouse",
        &wh,
        "--policy",
        "fixtures/policy",
        "--format",
        "csv",
        "-c",
        "SELECT count(*) AS n, count(DISTINCT fingerprint) AS f FROM alerts",
    ]));
    assert_eq!(so.trim(), format!("n,f\n{raised},{raised}"), "{so}");
    let (ok, v) = verify(&wh);
    assert!(ok, "{v}");
    // A checkpoint of the bucket in a witness that is another bucket prefix (the auditor's),
    // with the demo's key; verify reads both over S3.
    let witness = s3_warehouse("witness");
    let key = out.join("auditor.pem");
    let public = out.join("auditor.pub.pem");
    let (so, _) = run_ok(fa(&[
        "checkpoint",
        "--warehouse",
        &wh,
        "--state-dir",
        state_s,
        "--policy",
        "fixtures/policy",
        "--sign-key",
        key.to_str().unwrap(),
        "--witness",
        &witness,
    ]));
    assert!(so.contains("checkpoint 1 written"), "{so}");
    let o = fa(&[
        "verify",
        "--warehouse",
        &wh,
        "--state-dir",
        state_s,
        "--policy",
        "fixtures/policy",
        "--checkpoints",
        &witness,
        "--public-key",
        public.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("exposure: the last checkpoint is 1 ("));

    // `rules run` over the bucket, with the demo's state: every finding is already raised.
    let reader = |c: &mut std::process::Command| {
        c.args(["--warehouse", &wh, "--state-dir", state_s]).args([
            "--policy",
            "fixtures/policy",
            "--geoip",
            "fixtures/geoip/ranges.csv",
        ]);
    };
    let mut c = fa(&["rules", "run", "--date", day, "--rules-dir", "queries"]);
    reader(&mut c);
    run_ok(c);
    let runs = flowaudit_analytics::runner::read_runs(&state).unwrap();
    assert_eq!(runs.len(), 2, "the demo's run and this one");
    assert_eq!(runs[1]["raised"], serde_json::json!([]), "{}", runs[1]);
    let repeated: u64 = runs[1]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["already_raised"].as_u64().unwrap())
        .sum();
    assert_eq!(repeated as usize, raised, "{}", runs[1]);
    assert_eq!(runs[1]["log_heads"], runs[0]["log_heads"]);
    // Without a state directory an S3 warehouse is refused with what to pass.
    let no_state = fa(&["rules", "run", "--date", day, "--warehouse", &wh])
        .args(["--policy", "fixtures/policy"])
        .output()
        .unwrap();
    assert!(!no_state.status.success());
    let e = String::from_utf8_lossy(&no_state.stderr);
    assert!(e.contains("--state-dir"), "{e}");

    // `report` over the bucket: its totals are the independent reader's rows, its findings the
    // state's alerts, its appendix the log's files.
    let rep = dir.path().join("report");
    let mut c = fa(&["report", "--date", day, "--reproducible", "--out"]);
    c.arg(&rep).args(["--rules-dir", "queries"]);
    reader(&mut c);
    run_ok(c);
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rep.join("report.json")).unwrap()).unwrap();
    let totals = &r["summary"]["totals"];
    assert_eq!(
        totals["gateway_events"], facts["gateway_events"]["rows"],
        "{r}"
    );
    assert_eq!(totals["flows"], facts["flows"]["rows"]);
    assert_eq!(totals["quarantined"], facts["quarantine"]["rows"]);
    assert_eq!(r["findings"].as_array().unwrap().len(), raised);
    let log = warehouse::read_log_blocking(&Location::parse(&wh).unwrap()).unwrap();
    assert_eq!(
        r["appendix"]["files"].as_array().unwrap().len(),
        log.files.len()
    );

    // Flight SQL (`serve --flight`) answers from the bucket.
    let config = dir.path().join("flowaudit.toml");
    std::fs::write(
        &config,
        "[[flight.users]]\nname = \"bob\"\npassword = \"hunter2\"\n",
    )
    .unwrap();
    let port = crate::rules::free_port();
    let mut c = fa(&["--config", config.to_str().unwrap()]);
    c.args([
        "serve",
        "--no-scheduler",
        "--flight",
        &format!("127.0.0.1:{port}"),
    ]);
    reader(&mut c);
    let mut server = Running::spawn(c);
    server.wait_for("Flight SQL listening", Duration::from_secs(60));
    let p: serde_json::Value = serde_json::from_slice(&python_script(
        "flight_client.py",
        &[
            "pyarrow".as_ref(),
            format!("grpc://127.0.0.1:{port}").as_ref(),
            "bob".as_ref(),
            "hunter2".as_ref(),
        ],
    ))
    .unwrap();
    assert_eq!(
        p["by_gateway"], facts["gateway_events"]["by_gateway"],
        "{p}"
    );
    server.signal(libc::SIGTERM);
    assert!(
        server.wait(Duration::from_secs(30)).success(),
        "{}",
        server.log()
    );
}
