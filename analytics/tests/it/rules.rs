//! The rule pack end to end: cases, planted violations, dedup and late data, suppressions, the
//! sinks against the real broker and a local HTTP receiver, the scheduler's catch-up, and a
//! differential check against DuckDB.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flowaudit_analytics::alerts::Alert;
use serde_json::Value;

use crate::support::{bin, brokers, python_script, repo, run_ok, unique, Running};

pub const DATE: &str = "2026-11-22";

/// A generated day (seed `seed`) put into a warehouse through ingest's decoders and writer
/// (`convert`, no Kafka: the Kafka path is covered by the ingest tests). Returns the warehouse
/// and planted.json.
pub fn day_warehouse(dir: &Path, seed: u64) -> (PathBuf, Value) {
    use flowaudit_ingest::generate::{generate, write_jsonl, GenerateOptions};
    let gen = generate(&GenerateOptions {
        date: DATE.parse().unwrap(),
        seed,
        policy: repo("fixtures/policy"),
        geoip_csv: repo("fixtures/geoip/ranges.csv"),
        events: 3000,
        flows: 20000,
        malformed: 0,
        flow_format: None,
    })
    .unwrap();
    let input = dir.join("input");
    write_jsonl(&gen, &input).unwrap();
    let wh = dir.join("warehouse");
    for (table, file) in [
        ("gateway_events", "gateway.jsonl"),
        ("flows", "flows.jsonl"),
    ] {
        let mut c = Command::new(bin());
        c.args(["convert", "--table", table])
            .arg("--input")
            .arg(input.join(file))
            .arg("--out")
            .arg(input.join(format!("{table}.parquet")))
            .arg("--into-warehouse")
            .arg(&wh)
            .args(["--partition", &format!("{DATE}/00")])
            .arg("--policy")
            .arg(repo("fixtures/policy"))
            .arg("--geoip")
            .arg(repo("fixtures/geoip/ranges.csv"));
        run_ok(c);
    }
    let planted =
        serde_json::from_slice(&std::fs::read(input.join("planted.json")).unwrap()).unwrap();
    (wh, planted)
}

fn rules_run(wh: &Path, policy: &Path) -> Command {
    let mut c = Command::new(bin());
    c.args(["rules", "run", "--date", DATE])
        .arg("--warehouse")
        .arg(wh)
        .arg("--policy")
        .arg(policy)
        .arg("--geoip")
        .arg(repo("fixtures/geoip/ranges.csv"))
        .env("FLOWAUDIT_RULES_DIR", repo("queries"))
        .env("FLOWAUDIT_LOG", "warn")
        .env_remove("FLOWAUDIT_CONFIG")
        .env_remove("FLOWAUDIT_BROKERS");
    c
}

fn read_alerts(path: &Path) -> Vec<Alert> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_rule_passes_its_cases_and_a_wrong_case_fails() {
    let mut c = Command::new(bin());
    c.current_dir(repo("")).args(["rules", "test"]);
    let (out, _) = run_ok(c);
    assert!(out.contains("all 13 rules pass their cases"), "{out}");

    // Expecting less than the rule finds, or a near miss it does fire for, fails.
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases");
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    };
    for e in std::fs::read_dir(repo("fixtures/rules")).unwrap() {
        let e = e.unwrap();
        copy(&e.path(), &cases.join(e.file_name()));
    }
    let p = cases.join("unknown_employee/case.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let text = text.replacen(
        "[[fire]]\nwhy = \"e1020's roster entry ended on 2026-06-30\"\nentity = { employee_id = \"e1020\" }\n",
        "[[quiet]]\nwhy = \"pretend e1020 is fine\"\nentity = { employee_id = \"e1020\" }\n",
        1,
    );
    std::fs::write(&p, text).unwrap();
    let out = Command::new(bin())
        .current_dir(repo(""))
        .args(["rules", "test", "--cases"])
        .arg(&cases)
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{so}");
    assert!(so.contains("FAIL  unknown_employee"), "{so}");
    assert!(
        so.contains("fired for the near miss {\"employee_id\": \"e1020\"}"),
        "{so}"
    );
    assert!(so.contains("ok    transfer_no_legal_basis"), "{so}");
}

#[test]
fn planted_violations_are_all_found_and_nothing_else_is_high() {
    for seed in [11, 23] {
        let dir = tempfile::tempdir().unwrap();
        let (wh, planted) = day_warehouse(dir.path(), seed);
        let file = dir.path().join("alerts.jsonl");
        if seed == 11 {
            let mut c = rules_run(&wh, &repo("fixtures/policy"));
            c.arg("--alerts-file").arg(&file);
            run_ok(c);
        } else {
            // Everything from flowaudit.toml this time.
            let cfg = dir.path().join("flowaudit.toml");
            std::fs::write(
                &cfg,
                format!(
                    "warehouse = {:?}\npolicy = {:?}\ngeoip = {:?}\n[rules]\ndir = {:?}\n[alerts]\nfile = {:?}\n",
                    wh,
                    repo("fixtures/policy"),
                    repo("fixtures/geoip/ranges.csv"),
                    repo("queries"),
                    file
                ),
            )
            .unwrap();
            let mut c = Command::new(bin());
            c.args(["rules", "run", "--date", DATE, "--config"])
                .arg(&cfg)
                .env("FLOWAUDIT_LOG", "warn")
                .env_remove("FLOWAUDIT_BROKERS");
            run_ok(c);
        }
        let alerts = read_alerts(&file);
        let cov = flowaudit_analytics::planted::check(&planted, &alerts);
        assert!(
            cov.missed.is_empty(),
            "seed {seed}: missed {:?}",
            cov.missed
        );
        assert!(
            cov.unexpected_high.is_empty(),
            "seed {seed}: unexpected {:?}",
            cov.unexpected_high
                .iter()
                .map(|a| &a.summary)
                .collect::<Vec<_>>()
        );
        assert_eq!(cov.found.len(), 12);
        // Every alert explains itself and carries its evidence and policy versions.
        for a in &alerts {
            assert!(!a.summary.contains('{'), "unfilled summary {}", a.summary);
            assert!(a.evidence_total >= 1 && !a.evidence.is_empty());
            assert_eq!(a.fingerprint.len(), 32);
            for (f, h) in &a.policy_versions {
                assert_eq!(h.len(), 64, "{} has no version for {f}", a.rule_id);
            }
        }
        // The run record names its inputs.
        let runs = flowaudit_analytics::runner::read_runs(&wh).unwrap();
        let r = &runs[0];
        assert_eq!(r["rules"].as_array().unwrap().len(), 13);
        assert_eq!(r["policy_versions"].as_object().unwrap().len(), 6);
        assert_eq!(r["raised"].as_array().unwrap().len(), alerts.len());
        assert!(r["geoip"]["sha256"].as_str().unwrap().len() == 64);
    }
}

/// The `alerts` table is a Delta table any reader sees; alerts recorded in the outbox whose table
/// commit was lost (a crash between the two) are written by the next run, once.
#[test]
fn the_alerts_table_holds_the_outbox_once_and_catches_up_after_a_lost_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 11);
    let wh_s = wh.to_str().unwrap();
    run_ok(rules_run(&wh, &repo("fixtures/policy")));
    let outbox = read_alerts(&wh.join("_alerts/alerts.jsonl"));
    assert!(outbox.len() >= 12, "{} alerts", outbox.len());
    let mut want: Vec<&str> = outbox.iter().map(|a| a.fingerprint.as_str()).collect();
    want.sort();
    let seqs: Vec<u64> = (1..=outbox.len() as u64).collect();
    let check = |t: &Value| {
        assert_eq!(t["rows"].as_u64().unwrap() as usize, outbox.len(), "{t}");
        let got: Vec<&str> = t["fingerprints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert_eq!(got, want, "the table's alerts are the outbox's, once each");
        let got: Vec<u64> = t["seqs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap())
            .collect();
        assert_eq!(got, seqs);
        assert_eq!(t["txn"].as_u64().unwrap() as usize, outbox.len(), "{t}");
    };
    let t = crate::support::deltalake_alerts(wh_s, &wh);
    check(&t);
    assert_eq!(t["version"], 1, "created, then one commit: {t}");

    // The commit is lost (a crash after the files were uploaded, before the log entry): the
    // files stay in the table's directory, unreferenced, and the table holds no alert.
    let log = wh.join("alerts/_delta_log/00000000000000000001.json");
    std::fs::remove_file(&log).unwrap();
    let t = crate::support::deltalake_alerts(wh_s, &wh);
    assert_eq!(
        (t["rows"].as_u64(), t["txn"].as_u64()),
        (Some(0), None),
        "{t}"
    );

    // The next run raises nothing new and writes the outbox into the table, once.
    run_ok(rules_run(&wh, &repo("fixtures/policy")));
    assert_eq!(
        read_alerts(&wh.join("_alerts/alerts.jsonl")).len(),
        outbox.len()
    );
    let t = crate::support::deltalake_alerts(wh_s, &wh);
    check(&t);
    assert_eq!(t["version"], 1, "{t}");
    // And a run with nothing new to write makes no commit.
    run_ok(rules_run(&wh, &repo("fixtures/policy")));
    let t = crate::support::deltalake_alerts(wh_s, &wh);
    check(&t);
    assert_eq!(t["version"], 1, "{t}");
}

#[test]
fn reruns_and_late_data_raise_nothing_twice_and_suppressions_silence_until_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 11);
    let policy = dir.path().join("policy");
    std::fs::create_dir_all(&policy).unwrap();
    for e in std::fs::read_dir(repo("fixtures/policy")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), policy.join(e.file_name())).unwrap();
    }
    std::fs::write(
        policy.join("suppressions.csv"),
        "rule_id,entity,reason,who,expires\n\
         unknown_employee,employee_id=e9999,\"contractor onboarding, ticket HR-77\",auditor@example.eu,2026-12-31\n\
         repeated_denials,*,old noise,auditor@example.eu,2026-11-01\n",
    )
    .unwrap();
    let file = dir.path().join("alerts.jsonl");
    let mut c = rules_run(&wh, &policy);
    c.arg("--alerts-file").arg(&file);
    let (out, _) = run_ok(c);
    assert!(
        out.contains("suppressed unknown_employee [employee_id=e9999]: by auditor@example.eu until 2026-12-31: contractor onboarding, ticket HR-77"),
        "{out}"
    );
    assert!(
        out.contains("expired suppression did not apply: repeated_denials"),
        "{out}"
    );
    let first = read_alerts(&file);
    assert!(
        first.iter().all(|a| a.rule_id != "unknown_employee"),
        "suppressed alerts are not sent"
    );
    assert!(first.iter().any(|a| a.rule_id == "repeated_denials"));
    let n = first.len();

    // The same window again: nothing new, nothing sent again.
    let mut c = rules_run(&wh, &policy);
    c.arg("--alerts-file").arg(&file);
    let (out, _) = run_ok(c);
    assert!(out.contains("no new alerts"), "{out}");
    assert_eq!(read_alerts(&file).len(), n);

    // Late data: another flow of the same transfer (same entity and day, inside its gateway
    // session), and a transfer to China nobody saw before.
    let late = dir.path().join("late.jsonl");
    let ru = first
        .iter()
        .find(|a| a.rule_id == "transfer_no_legal_basis")
        .unwrap();
    let dst = ru.entity["dst_ip"].as_str().unwrap();
    let src = ru.entity["src_ip"].as_str().unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(ru.first_seen.as_deref().unwrap()).unwrap()
        + chrono::Duration::seconds(20);
    std::fs::write(
        &late,
        format!(
            "{{\"ts\":\"{}\",\"src_ip\":\"{src}\",\"dst_ip\":\"{dst}\",\"protocol\":\"tcp\",\"bytes\":999,\"exporter\":\"zeek-enclave-1\"}}\n\
             {{\"ts\":\"{DATE}T23:11:00Z\",\"src_ip\":\"10.20.0.10\",\"dst_ip\":\"45.37.0.9\",\"protocol\":\"tcp\",\"bytes\":999,\"exporter\":\"zeek-enclave-1\"}}\n",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    )
    .unwrap();
    let mut c = Command::new(bin());
    c.args(["convert", "--table", "flows", "--input"])
        .arg(&late)
        .arg("--out")
        .arg(late.with_extension("parquet"))
        .arg("--into-warehouse")
        .arg(&wh)
        .args(["--partition", &format!("{DATE}/23")])
        .arg("--policy")
        .arg(&policy)
        .arg("--geoip")
        .arg(repo("fixtures/geoip/ranges.csv"));
    run_ok(c);
    let mut c = rules_run(&wh, &policy);
    c.arg("--alerts-file").arg(&file);
    run_ok(c);
    let all = read_alerts(&file);
    let new: BTreeSet<(&str, String)> = all[n..]
        .iter()
        .map(|a| (a.rule_id.as_str(), a.entity_key.clone()))
        .collect();
    let want: BTreeSet<(&str, String)> = [
        (
            "transfer_no_legal_basis",
            "src_ip=10.20.0.10, dst_ip=45.37.0.9, dst_country=CN".to_string(),
        ),
        (
            "gateway_bypass",
            "src_ip=10.20.0.10, dst_ip=45.37.0.9, dst_country=CN".to_string(),
        ),
    ]
    .into();
    assert_eq!(
        new, want,
        "only the new transfer is raised (and the bypass it is)"
    );
    let fps: BTreeSet<&str> = all.iter().map(|a| a.fingerprint.as_str()).collect();
    assert_eq!(fps.len(), all.len(), "no fingerprint twice");

    // The alerts table shows the same alerts, suppressed ones included.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cat = rt
        .block_on(flowaudit_analytics::catalog::Catalog::open(
            &wh, &policy, None,
        ))
        .unwrap();
    let rows = rt
        .block_on(async {
            let df = cat
                .ctx
                .sql("SELECT status, count(*) AS n FROM alerts GROUP BY status ORDER BY status")
                .await
                .unwrap();
            flowaudit_analytics::runner::batches_to_json(&df.collect().await.unwrap())
        })
        .unwrap();
    assert_eq!(rows[0]["status"], "new");
    assert_eq!(rows[0]["n"].as_i64().unwrap() as usize, all.len());
    assert_eq!(rows[1]["status"], "suppressed");

    // A mistyped warehouse is an error, not an empty result.
    let out = rules_run(&dir.path().join("no-such-warehouse"), &policy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-warehouse does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A suppression without an expiry is refused, naming the line.
    std::fs::write(
        policy.join("suppressions.csv"),
        "rule_id,entity,reason,who,expires\nunknown_employee,*,forever,someone,\n",
    )
    .unwrap();
    let out = rules_run(&wh, &policy).output().unwrap();
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(se.contains("suppressions.csv:2: no expiry"), "{se}");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn receiver(port: u16, out: &Path, fail: u32) -> std::process::Child {
    let py = std::env::var("FLOWAUDIT_PYTHON").expect("FLOWAUDIT_PYTHON: run with make test");
    let mut child = Command::new(py)
        .arg(repo("scripts/webhook_receiver.py"))
        .arg(port.to_string())
        .arg(out)
        .arg(fail.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "listening");
    child
}

#[test]
fn webhook_down_then_flaky_then_up_gets_every_alert_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 11);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/alerts");
    let got = dir.path().join("received.jsonl");
    let hook = |c: &mut Command| {
        c.args([
            "--webhook",
            &url,
            "--webhook-attempts",
            "3",
            "--webhook-backoff-ms",
            "20",
        ]);
    };
    // Down: nothing listens. The run records its alerts and says they are not delivered.
    let mut c = rules_run(&wh, &repo("fixtures/policy"));
    hook(&mut c);
    let out = c.output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{so}");
    assert!(se.contains("not delivered to every sink"), "{se}");
    assert!(so.contains("failed 3 times"), "{so}");
    let raised = flowaudit_analytics::alerts::AlertStore::open(&wh)
        .unwrap()
        .len();
    assert!(raised >= 12);

    // Back, but failing its first two requests: retries with back-off get through.
    let mut rx = receiver(port, &got, 2);
    let mut c = rules_run(&wh, &repo("fixtures/policy"));
    hook(&mut c);
    let (so, _) = run_ok(c);
    assert!(
        so.contains(&format!("delivered {raised} alert(s) to webhook:{url}")),
        "{so}"
    );
    let received = read_alerts(&got);
    assert_eq!(received.len() as u64, raised);
    let fps: BTreeSet<&str> = received.iter().map(|a| a.fingerprint.as_str()).collect();
    assert_eq!(fps.len() as u64, raised, "each alert once");
    assert!(received.windows(2).all(|w| w[0].seq < w[1].seq), "in order");

    // Nothing pending: another run sends nothing.
    let mut c = rules_run(&wh, &repo("fixtures/policy"));
    hook(&mut c);
    run_ok(c);
    assert_eq!(read_alerts(&got).len() as u64, raised);
    rx.kill().ok();
    rx.wait().ok();
}

#[test]
fn alerts_reach_the_kafka_topic_keyed_by_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 23);
    let topic = unique("alerts");
    flowaudit_ingest::produce::ensure_topics(&brokers(), &[&topic], 1).unwrap();
    let mut c = rules_run(&wh, &repo("fixtures/policy"));
    c.args(["--brokers", &brokers(), "--alerts-topic", &topic]);
    let (so, _) = run_ok(c);
    let raised = flowaudit_analytics::alerts::AlertStore::open(&wh)
        .unwrap()
        .len();
    assert!(
        so.contains(&format!("delivered {raised} alert(s) to kafka:")),
        "{so}"
    );
    let b = brokers();
    let out = python_script(
        "kafka_client.py",
        &["dump".as_ref(), b.as_ref(), topic.as_ref(), "4".as_ref()],
    );
    let msgs: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(msgs.len() as u64, raised);
    for m in &msgs {
        assert_eq!(m["key"], m["value"]["fingerprint"]);
        assert_eq!(m["value"]["schema"], "flowaudit.alert/1");
    }
}

#[test]
fn serve_catches_up_the_firings_it_missed_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // Imported data: complete when recorded, so every window is evaluated as it comes due.
    let (wh, _) = day_warehouse(dir.path(), 11);
    std::fs::create_dir_all(wh.join("_runs")).unwrap();
    // Down since 47 minutes ago: the firings at the quarter hours since then are due.
    let now = chrono::Utc::now();
    let last = now - chrono::Duration::minutes(47);
    let last = last - chrono::Duration::seconds(last.timestamp() % 60);
    std::fs::write(
        wh.join("_runs/schedule.json"),
        serde_json::to_vec(&BTreeMap::from([(
            "transfer_no_legal_basis",
            last.to_rfc3339(),
        )]))
        .unwrap(),
    )
    .unwrap();
    let mut c = Command::new(bin());
    c.args([
        "serve",
        "--tick-s",
        "1",
        "--rule",
        "transfer_no_legal_basis,unknown_employee",
        "--metrics",
        "127.0.0.1:0",
    ])
    .arg("--warehouse")
    .arg(&wh)
    .arg("--policy")
    .arg(repo("fixtures/policy"))
    .arg("--rules-dir")
    .arg(repo("queries"))
    .env("FLOWAUDIT_LOG", "info")
    .env_remove("FLOWAUDIT_CONFIG")
    .env_remove("FLOWAUDIT_BROKERS");
    let mut s = Running::spawn(c);
    let addr = crate::ops::endpoint(&mut s);
    s.wait_for("run recorded", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    // The operator sees the runs: by rule and outcome, timed; ready with the policy loaded.
    // (A scrape may fall between a run's two counters: scraped again until they agree.)
    let t = std::time::Instant::now();
    let runs_seen = loop {
        let m = crate::ops::Scrape::of(&addr);
        let rule = [("rule", "transfer_no_legal_basis")];
        let evaluated = m.sum("flowaudit_rule_runs_total", &rule)
            - m.sum(
                "flowaudit_rule_runs_total",
                &[("rule", "transfer_no_legal_basis"), ("outcome", "due")],
            );
        let complete = m.sum(
            "flowaudit_rule_runs_total",
            &[("rule", "transfer_no_legal_basis"), ("outcome", "complete")],
        );
        if complete >= 1.0 && m.sum("flowaudit_rule_run_duration_seconds_count", &rule) == evaluated
        {
            break complete;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", m.samples);
        std::thread::sleep(Duration::from_millis(200));
    };
    let (code, body) = crate::ops::get(&format!("http://{addr}/readyz"));
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("policy: ok") && !body.contains("broker"),
        "{body}"
    );
    s.signal(libc::SIGTERM);
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.log());
    let runs = flowaudit_analytics::runner::read_runs(&wh).unwrap();
    let windows: Vec<(String, String, String)> = runs
        .iter()
        .map(|r| {
            (
                r["window_to"].as_str().unwrap().to_string(),
                r["trigger"].as_str().unwrap().to_string(),
                r["rules"][0]["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut expected = Vec::new();
    let mut t = last;
    let cron: flowaudit_analytics::cron::Cron = "*/15 * * * *".parse().unwrap();
    while let Some(n) = cron.next_after(t).filter(|n| *n <= now) {
        expected.push(n);
        t = n;
    }
    assert!(expected.len() >= 3, "{expected:?}");
    assert_eq!(windows.len(), expected.len(), "{windows:?}\n{}", s.log());
    assert!(runs_seen as usize <= windows.len());
    for (i, (w, (to, trigger, rule))) in expected.iter().zip(&windows).enumerate() {
        let got: chrono::DateTime<chrono::Utc> = to.parse().unwrap();
        assert_eq!(got, *w);
        assert_eq!(
            rule, "transfer_no_legal_basis",
            "the new rule waits for its next firing"
        );
        let want = if i + 1 == expected.len() {
            "schedule"
        } else {
            "catch-up"
        };
        assert_eq!(trigger, want);
    }
    // What it covered is remembered; the new rule is now known too.
    let state: BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(wh.join("_runs/schedule.json")).unwrap()).unwrap();
    assert!(state.contains_key("unknown_employee"));
    let covered: chrono::DateTime<chrono::Utc> = state["transfer_no_legal_basis"].parse().unwrap();
    assert_eq!(covered, *expected.last().unwrap());
}

/// Numbers and instants in one canonical text form, so that both engines' rows compare.
pub fn canonical(v: &Value) -> String {
    match v {
        Value::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => format!("t{}", t.timestamp_micros()),
            Err(_) => s.clone(),
        },
        Value::Number(n) => {
            let f = n.as_f64().unwrap();
            if f.fract() == 0.0 {
                format!("{}", f as i64)
            } else {
                format!("{f:.6}")
            }
        }
        v => v.to_string(),
    }
}

#[test]
fn duckdb_gives_the_same_rows_for_every_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 11);
    let policy = repo("fixtures/policy");
    let rules = flowaudit_analytics::rules::load_rules(&repo("queries")).unwrap();
    let (from, to) = (
        format!("{DATE}T00:00:00Z").parse().unwrap(),
        format!("{DATE}T00:00:00Z")
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
            + chrono::Duration::days(1),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cat = rt
        .block_on(flowaudit_analytics::catalog::Catalog::open(
            &wh, &policy, None,
        ))
        .unwrap();
    let mut args: Vec<std::ffi::OsString> = vec![
        wh.clone().into(),
        policy.clone().into(),
        format!("{DATE}T00:00:00Z").into(),
        to.to_rfc3339().into(),
    ];
    args.extend(rules.iter().map(|r| r.path.clone().into_os_string()));
    let arg_refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let duck: Value = serde_json::from_slice(&python_script("duckdb_rules.py", &arg_refs)).unwrap();
    let mut nonempty = 0;
    for r in &rules {
        let ours = rt
            .block_on(flowaudit_analytics::runner::query_rows(&cat, r, from, to))
            .unwrap();
        let theirs = duck[&r.id]["rows"].as_array().unwrap();
        let norm = |rows: Vec<&serde_json::Map<String, Value>>| -> Vec<BTreeMap<String, String>> {
            let mut v: Vec<BTreeMap<String, String>> = rows
                .into_iter()
                .map(|row| row.iter().map(|(k, v)| (k.clone(), canonical(v))).collect())
                .collect();
            v.sort();
            v
        };
        let a = norm(ours.iter().collect());
        let b = norm(theirs.iter().map(|v| v.as_object().unwrap()).collect());
        assert_eq!(a, b, "rule {}: flowaudit and DuckDB disagree", r.id);
        if !a.is_empty() {
            nonempty += 1;
        }
    }
    assert!(
        nonempty >= 9,
        "the comparison must cover rules that find something"
    );
}

#[test]
fn serve_runs_ingest_alongside_and_both_stop_on_sigterm() {
    let s = crate::support::Setup::new(2);
    let msgs: Vec<flowaudit_ingest::generate::Message> = (0..50)
        .map(|i| {
            let p = format!(
                r#"{{"event_id":"srv-{i}","ts":"2026-11-21T12:00:00Z","gateway_id":"gw-fra-1","employee_id":"e1001","employee_country":"DE","role":"analyst","data_category":"public","action":"query","decision":"allow","session_id":"s","records":1,"bytes":1}}"#
            );
            flowaudit_ingest::generate::Message {
                key: format!("{}", i % 5),
                payload: p.into_bytes(),
                ts_us: 1_795_262_400_000_000,
            }
        })
        .collect();
    s.produce_gateway(&msgs);
    let cfg = s.dir.path().join("flowaudit.toml");
    std::fs::write(
        &cfg,
        format!(
            "[ingest]\ngroup = \"{}\"\ngateway_topic = \"{}\"\nflow_topic = \"{}\"\nflush_interval_ms = 500\nsession_timeout_ms = 6000\n\n[serve]\ningest = true\ntick_s = 1\n",
            s.group, s.gateway_topic, s.flow_topic
        ),
    )
    .unwrap();
    let mut c = Command::new(bin());
    c.args(["serve", "--config"])
        .arg(&cfg)
        .args(["--brokers", &brokers(), "--rule", "unknown_employee"])
        .arg("--warehouse")
        .arg(s.warehouse())
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .arg("--geoip")
        .arg(repo("fixtures/geoip/ranges.csv"))
        .arg("--rules-dir")
        .arg(repo("queries"))
        .env("FLOWAUDIT_LOG", "info,librdkafka=warn")
        .env_remove("FLOWAUDIT_CONFIG");
    let mut p = Running::spawn(c);
    p.wait_for(
        "ingest runs alongside the scheduler",
        Duration::from_secs(30),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while crate::support::table_rows(&s.warehouse(), "gateway_events") < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "not ingested:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    p.signal(libc::SIGTERM);
    let st = p.wait(Duration::from_secs(30));
    assert!(st.success(), "{st:?}\n{}", p.log());
    assert_eq!(
        crate::support::table_rows(&s.warehouse(), "gateway_events"),
        50
    );
    assert!(
        s.warehouse().join("_runs/schedule.json").is_file(),
        "{}",
        p.log()
    );
}

#[test]
fn a_failing_rule_is_recorded_and_the_others_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 11);
    let rules = dir.path().join("queries");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::copy(
        repo("queries/transfer_no_legal_basis.sql"),
        rules.join("transfer_no_legal_basis.sql"),
    )
    .unwrap();
    let header = |id: &str| {
        format!("-- id: {id}\n-- title: t\n-- severity: low\n-- schedule: 0 * * * *\n-- lookback: 1h\n-- entity: who\n-- description: d\n")
    };
    std::fs::write(
        rules.join("bad_column.sql"),
        header("bad_column") + "SELECT no_such_column AS who FROM flows\n",
    )
    .unwrap();
    // A rule whose entity column is missing from its query is a broken rule …
    std::fs::write(
        rules.join("missing_entity.sql"),
        header("missing_entity")
            + "SELECT 'x' AS other, TIMESTAMP '2026-11-22T01:00:00Z' AS first_seen\n",
    )
    .unwrap();
    // … while a NULL entity value is a finding like any other: `unknown`.
    std::fs::write(
        rules.join("null_entity.sql"),
        header("null_entity") + "SELECT CAST(NULL AS VARCHAR) AS who, TIMESTAMP '2026-11-22T01:00:00Z' AS first_seen\n",
    )
    .unwrap();
    let file = dir.path().join("alerts.jsonl");
    let mut c = rules_run(&wh, &repo("fixtures/policy"));
    c.arg("--rules-dir")
        .arg(&rules)
        .arg("--alerts-file")
        .arg(&file);
    let out = c.output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success());
    assert!(se.contains("2 rule run(s) failed"), "{se}");
    assert!(
        se.contains("bad_column.sql") && se.contains("no_such_column"),
        "{se}"
    );
    assert!(
        se.contains("missing_entity: the query returns no column `who`"),
        "{se}"
    );
    assert!(so.contains("transfer_no_legal_basis (1 new, high)"), "{so}");
    assert!(so.contains("null_entity (1 new, low)"), "{so}");
    let alerts = read_alerts(&file);
    assert_eq!(alerts.len(), 2);
    assert!(
        alerts
            .iter()
            .any(|a| a.rule_id == "null_entity" && a.entity_key == "who=unknown"),
        "{:?}",
        alerts.iter().map(|a| &a.entity_key).collect::<Vec<_>>()
    );
    let runs = flowaudit_analytics::runner::read_runs(&wh).unwrap();
    let failed: Vec<&str> = runs[0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["error"].is_null())
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["bad_column", "missing_entity"]);
}

#[test]
fn alerts_wait_for_a_kafka_broker_that_is_down_and_go_out_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 11);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = dir.path().join("flowaudit.toml");
    std::fs::write(&cfg, "[alerts]\nkafka_timeout_ms = 3000\n").unwrap();
    let run = || {
        let mut c = rules_run(&wh, &repo("fixtures/policy"));
        c.arg("--config")
            .arg(&cfg)
            .args(["--brokers", &addr, "--alerts-topic", "desk.alerts"]);
        c.output().unwrap()
    };
    // Down: the alerts are recorded, the run says they were not delivered.
    let out = run();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{so}");
    assert!(
        so.contains("NOT delivered") && so.contains("kafka:"),
        "{so}"
    );
    let raised = flowaudit_analytics::alerts::AlertStore::open(&wh)
        .unwrap()
        .len();

    // Back: the next run (which finds nothing new) delivers them all.
    let mut broker = crate::support::start_tansu(&addr);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        std::thread::sleep(Duration::from_millis(500));
        flowaudit_ingest::produce::ensure_topics(&addr, &["desk.alerts"], 1).unwrap();
        let out = run();
        let so = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{so}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(so.contains("no new alerts"), "{so}");
        assert!(
            so.contains(&format!("delivered {raised} alert(s) to kafka:")),
            "{so}"
        );
        let msgs = python_script(
            "kafka_client.py",
            &[
                "dump".as_ref(),
                addr.as_ref(),
                "desk.alerts".as_ref(),
                "4".as_ref(),
            ],
        );
        let fps: BTreeSet<String> = String::from_utf8(msgs)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["key"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(fps.len() as u64, raised);
    }));
    broker.kill().ok();
    broker.wait().ok();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// Put JSON lines (flowaudit's formats) into `wh` through ingest's decoders and writer
/// (`flowaudit convert`), with or without the GeoIP fixture.
pub fn convert_into(wh: &Path, table: &str, date: &str, lines: &[String], geoip: bool) {
    let input = wh.with_file_name(format!("{table}-{}.jsonl", unique("in")));
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let mut c = Command::new(bin());
    c.args(["convert", "--table", table])
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(input.with_extension("parquet"))
        .arg("--into-warehouse")
        .arg(wh)
        .args(["--partition", &format!("{date}/00")])
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .env_remove("FLOWAUDIT_CONFIG");
    if geoip {
        c.arg("--geoip").arg(repo("fixtures/geoip/ranges.csv"));
    }
    run_ok(c);
}

/// `flowaudit rules run` for one day, every rule, no sink but the store.
pub fn rules_run_day(wh: &Path, date: &str, geoip: bool) -> Command {
    let mut c = Command::new(bin());
    c.args(["rules", "run", "--date", date])
        .arg("--warehouse")
        .arg(wh)
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .env("FLOWAUDIT_RULES_DIR", repo("queries"))
        .env("FLOWAUDIT_LOG", "warn")
        .env_remove("FLOWAUDIT_CONFIG")
        .env_remove("FLOWAUDIT_BROKERS");
    if geoip {
        c.arg("--geoip").arg(repo("fixtures/geoip/ranges.csv"));
    }
    c
}

pub fn flow(ts: &str, src: &str, dst: &str, bytes: u64) -> String {
    serde_json::json!({"ts": ts, "src_ip": src, "dst_ip": dst, "src_port": 40000, "dst_port": 443,
        "protocol": "tcp", "bytes": bytes, "packets": 4, "exporter": "10.20.255.1"})
    .to_string()
}

/// `n` flows of one host to one external address at 00:10 on `day`, of 100, 101, … bytes.
pub fn one_host_flows(day: &str, n: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            flow(
                &format!("{day}T00:10:00Z"),
                "10.20.0.10",
                "45.37.0.9",
                100 + i,
            )
        })
        .collect()
}

/// Issue 10, item 2: a NULL in an entity column (here `dst_country` of a destination GeoIP does
/// not know, or of every external address when ingest ran without GeoIP) used to fail the whole
/// rule, losing every other finding of it. Unknown is a value: the alert is raised, says so, and
/// keeps its fingerprint from run to run.
#[test]
fn a_bypass_to_an_unknown_country_is_raised_with_its_siblings_and_a_stable_fingerprint() {
    for geoip in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let wh = dir.path().join("warehouse");
        let date = "2026-11-21";
        convert_into(
            &wh,
            "flows",
            date,
            &[
                flow("2026-11-21T10:00:00Z", "10.20.5.77", "203.0.113.9", 64000),
                flow("2026-11-21T10:00:30Z", "10.20.5.77", "203.0.113.9", 1000),
                flow("2026-11-21T11:00:00Z", "10.20.5.77", "31.12.0.8", 5000),
            ],
            geoip,
        );
        let last_run = || -> Value {
            let runs = std::fs::read_to_string(wh.join("_runs/runs.jsonl")).unwrap();
            serde_json::from_str(runs.lines().last().unwrap()).unwrap()
        };
        let outcome = |run: &Value, id: &str| -> Value {
            run["rules"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["id"] == id)
                .unwrap()
                .clone()
        };
        // Only flows were imported: nothing says gateway_events is complete (a bypass is a flow
        // with no gateway session), so the day is evaluated with --force.
        let forced = || {
            let mut c = rules_run_day(&wh, date, geoip);
            c.arg("--force");
            c
        };
        let (stdout, _) = run_ok(forced());
        let run = last_run();
        let bypass = outcome(&run, "gateway_bypass");
        assert_eq!(bypass["error"], Value::Null, "geoip {geoip}: {bypass}");
        assert_eq!(bypass["new"], 2, "geoip {geoip}: {bypass}");
        let alerts: Vec<Alert> = read_alerts(&wh.join("_alerts/alerts.jsonl"))
            .into_iter()
            .filter(|a| a.rule_id == "gateway_bypass")
            .collect();
        assert_eq!(alerts.len(), 2, "geoip {geoip}: {alerts:?}");
        let unknown = alerts
            .iter()
            .find(|a| a.entity["dst_ip"] == "203.0.113.9")
            .unwrap();
        assert_eq!(unknown.entity["dst_country"], Value::Null);
        assert_eq!(
            unknown.entity_key,
            "src_ip=10.20.5.77, dst_ip=203.0.113.9, dst_country=unknown"
        );
        assert_eq!(
            unknown.fingerprint,
            flowaudit_analytics::alerts::fingerprint("gateway_bypass", &unknown.entity_key, date)
        );
        assert!(
            unknown.summary.starts_with(
                "10.20.5.77 sent 65000 bytes in 2 flows to 203.0.113.9 (country unknown) directly"
            ),
            "{}",
            unknown.summary
        );
        assert!(stdout.contains("(country unknown)"), "{stdout}");
        let sibling = alerts
            .iter()
            .find(|a| a.entity["dst_ip"] == "31.12.0.8")
            .unwrap();
        let want = if geoip {
            "(country NL)"
        } else {
            "(country unknown)"
        };
        assert!(sibling.summary.contains(want), "{}", sibling.summary);

        // A transfer to a country nobody can name has no basis that can be shown.
        let transfer = outcome(&run, "transfer_no_legal_basis");
        assert_eq!(transfer["error"], Value::Null, "{transfer}");
        assert_eq!(transfer["new"], if geoip { 1 } else { 2 }, "{transfer}");
        let t: Vec<Alert> = read_alerts(&wh.join("_alerts/alerts.jsonl"))
            .into_iter()
            .filter(|a| a.rule_id == "transfer_no_legal_basis")
            .collect();
        assert!(
            t.iter()
                .all(|a| a.summary.contains("in an unknown country")),
            "{t:?}"
        );

        // The same findings again: the same fingerprints, nothing raised twice.
        run_ok(forced());
        let again = outcome(&last_run(), "gateway_bypass");
        assert_eq!(
            (again["new"].clone(), again["already_raised"].clone()),
            (Value::from(0), Value::from(2)),
            "{again}"
        );
        assert_eq!(last_run()["raised"], serde_json::json!([]));
    }
}

/// A long-lived session (the SQL shell, Flight SQL, `serve`) reads each Delta table at its latest
/// version at every scan, and a filter on a partition column reads only that partition's files.
#[test]
fn a_long_lived_catalog_sees_each_new_commit_and_prunes_by_partition() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let lines = one_host_flows;
    convert_into(&wh, "flows", "2026-11-21", &lines("2026-11-21", 3), false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cat = rt
        .block_on(flowaudit_analytics::catalog::Catalog::open(
            &wh,
            &repo("fixtures/policy"),
            None,
        ))
        .unwrap();
    let query = |sql: &str| -> Vec<Value> {
        rt.block_on(async {
            let df = cat.ctx.sql(sql).await.unwrap();
            flowaudit_analytics::runner::batches_to_json(&df.collect().await.unwrap())
        })
        .unwrap()
        .into_iter()
        .map(Value::Object)
        .collect()
    };
    let count = |sql: &str| query(sql)[0]["n"].as_i64().unwrap();
    assert_eq!(count("SELECT count(*) AS n FROM flows"), 3);

    // A commit made after the catalog opened is seen by its next scan.
    convert_into(&wh, "flows", "2026-11-22", &lines("2026-11-22", 2), false);
    assert_eq!(count("SELECT count(*) AS n FROM flows"), 5);
    assert_eq!(
        count("SELECT count(*) AS n, min(bytes) AS b FROM flows WHERE date = '2026-11-22'"),
        2
    );
    assert_eq!(
        query("SELECT date, hour, sum(bytes) AS b FROM flows GROUP BY date, hour ORDER BY date"),
        vec![
            serde_json::json!({"date": "2026-11-21", "hour": "00", "b": 303}),
            serde_json::json!({"date": "2026-11-22", "hour": "00", "b": 201}),
        ]
    );
    // Pruning: the plan of a one-day query names that day's file only.
    let plan = query("EXPLAIN SELECT src_ip FROM flows WHERE date = '2026-11-22'")
        .iter()
        .map(|r| r["plan"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains("date=2026-11-22"), "{plan}");
    assert!(!plan.contains("date=2026-11-21"), "{plan}");

    // The log is read again only when its directory changed: once it has been quiet for a
    // second, repeated scans reuse the snapshot; a new commit is still seen by the next scan.
    let log_reads = || {
        let table = rt
            .block_on(cat.ctx.table_provider("flows"))
            .expect("flows is registered");
        table
            .as_ref()
            .downcast_ref::<flowaudit_analytics::tables::DeltaWarehouseTable>()
            .expect("flows is a Delta table")
            .log_reads()
    };
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(count("SELECT count(*) AS n FROM flows"), 5);
    let settled = log_reads();
    assert_eq!(count("SELECT count(*) AS n FROM flows"), 5);
    assert_eq!(
        count("SELECT count(*) AS n FROM flows WHERE date = '2026-11-21'"),
        3
    );
    assert_eq!(
        log_reads(),
        settled,
        "an unchanged, quiet log is not read again"
    );
    convert_into(&wh, "flows", "2026-11-23", &lines("2026-11-23", 4), false);
    assert_eq!(count("SELECT count(*) AS n FROM flows"), 9);
    assert_eq!(
        log_reads(),
        settled + 1,
        "a commit is read at the next scan"
    );
    assert_eq!(count("SELECT count(*) AS n FROM flows"), 9);
    assert_eq!(
        log_reads(),
        settled + 2,
        "a log changed within the last second is read again"
    );
}
