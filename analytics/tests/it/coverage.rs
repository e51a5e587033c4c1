//! Rules on complete data (issue 13): watermarks, late data, the alert lifecycle and the
//! coverage ledger, through a real broker.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use flowaudit_analytics::alerts::Alert;
use flowaudit_ingest::generate::{self, GenerateOptions, Generated, Message};

use crate::support::*;

const DATE: &str = "2026-11-22";

fn day(seed: u64) -> Generated {
    generate::generate(&GenerateOptions {
        date: DATE.parse().unwrap(),
        seed,
        policy: repo("fixtures/policy"),
        geoip_csv: repo("fixtures/geoip/ranges.csv"),
        events: 3000,
        flows: 20000,
        malformed: 0,
        flow_format: None,
    })
    .unwrap()
}

fn at(hour: u32) -> i64 {
    chrono::NaiveDate::parse_from_str(DATE, "%Y-%m-%d")
        .unwrap()
        .and_hms_opt(hour, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros()
}

fn split(msgs: &[Message], before: i64) -> (Vec<Message>, Vec<Message>) {
    let (a, b): (Vec<&Message>, Vec<&Message>) = msgs.iter().partition(|m| m.ts_us < before);
    (
        a.into_iter().cloned().collect(),
        b.into_iter().cloned().collect(),
    )
}

fn produce(s: &Setup, gateway: &[Message], flows: &[Message]) {
    flowaudit_ingest::produce::produce(&brokers(), &s.gateway_topic, gateway).unwrap();
    flowaudit_ingest::produce::produce(&brokers(), &s.flow_topic, flows).unwrap();
}

fn rules_run(s: &Setup, alerts: &Path) -> Command {
    let mut c = Command::new(bin());
    c.args(["rules", "run", "--date", DATE, "--warehouse"])
        .arg(s.warehouse_arg())
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .arg("--geoip")
        .arg(repo("fixtures/geoip/ranges.csv"))
        .arg("--alerts-file")
        .arg(alerts)
        .env("FLOWAUDIT_RULES_DIR", repo("queries"))
        .env("FLOWAUDIT_LOG", "warn")
        .env_remove("FLOWAUDIT_CONFIG")
        .env_remove("FLOWAUDIT_BROKERS");
    c
}

fn report(s: &Setup, out: &Path) -> serde_json::Value {
    let mut c = Command::new(bin());
    c.args(["report", "--date", DATE, "--reproducible", "--out"])
        .arg(out)
        .arg("--warehouse")
        .arg(s.warehouse_arg())
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .arg("--geoip")
        .arg(repo("fixtures/geoip/ranges.csv"))
        .arg("--rules-dir")
        .arg(repo("queries"))
        .env_remove("FLOWAUDIT_CONFIG");
    run_ok(c);
    serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap()
}

fn verify(s: &Setup) -> (bool, String) {
    let out = Command::new(bin())
        .arg("verify")
        .arg("--warehouse")
        .arg(s.warehouse_arg())
        .env_remove("FLOWAUDIT_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn lines(path: &Path) -> Vec<Alert> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Each fingerprint's latest line.
fn latest(all: &[Alert]) -> BTreeMap<String, Alert> {
    all.iter()
        .map(|a| (a.fingerprint.clone(), a.clone()))
        .collect()
}

/// Half a day ingested (ingest caught up) and evaluated: every source is silent from noon, and
/// since ingest shows it had everything, the silences are raised. The rest arrives later: the
/// same window evaluated again finds the violations of the afternoon, closes every silence the
/// data filled (with its reason, on the file sink too) and keeps the one exporter that really
/// went silent. Nothing is deleted and nothing is raised twice.
#[test]
fn half_a_day_then_the_rest_finds_the_late_violations_and_closes_the_filled_silences() {
    let s = Setup::new(2);
    let gen = day(11);
    let (gw_am, gw_pm) = split(&gen.gateway, at(12));
    let (fl_am, fl_pm) = split(&gen.flows, at(12));
    produce(&s, &gw_am, &fl_am);
    let mut c = s.ingest();
    c.arg("--until-caught-up");
    run_ok(c);
    let file = s.dir.path().join("alerts.jsonl");
    let (out, _) = run_ok(rules_run(&s, &file));
    assert!(out.contains("complete"), "{out}");
    let first = lines(&file);
    let silences: BTreeSet<String> = first
        .iter()
        .filter(|a| a.rule_id == "telemetry_silent")
        .map(|a| a.entity_key.clone())
        .collect();
    let planted = serde_json::to_value(&gen.planted).unwrap();
    let silent_exporter = planted["violations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "exporter_silent")
        .map(|p| format!("source={}", p["entity"]["source"].as_str().unwrap()))
        .unwrap();
    assert!(
        silences.len() >= 3 && silences.contains(&silent_exporter),
        "every source is silent after noon: {silences:?}"
    );

    produce(&s, &gw_pm, &fl_pm);
    let mut c = s.ingest();
    c.arg("--until-caught-up");
    run_ok(c);
    // Before the rules see it, the afternoon is late data the report names: its "findings"
    // cover only what was evaluated.
    let r = report(&s, &s.dir.path().join("report-before"));
    assert_eq!(r["evaluation"]["complete"], false);
    let flows_rule = r["evaluation"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["rule_id"] == "gateway_bypass")
        .unwrap();
    assert_eq!(flows_rule["complete"], false, "{flows_rule}");
    assert!(
        !flows_rule["late_data"][0]["files"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{flows_rule}"
    );
    assert!(flows_rule["statement"]
        .as_str()
        .unwrap()
        .contains("not evaluated yet"));
    let (out, _) = run_ok(rules_run(&s, &file));
    let all = lines(&file);
    let now = latest(&all);
    let open: Vec<Alert> = now
        .values()
        .filter(|a| a.status != "closed")
        .cloned()
        .collect();
    let cov = flowaudit_analytics::planted::check(&planted, &open);
    assert!(cov.missed.is_empty(), "missed {:?}\n{out}", cov.missed);
    assert!(
        cov.unexpected_high.is_empty(),
        "still open: {:?}",
        cov.unexpected_high
            .iter()
            .map(|a| &a.summary)
            .collect::<Vec<_>>()
    );
    // The afternoon's violations were raised by the second run.
    let afternoon: Vec<&Alert> = all[first.len()..]
        .iter()
        .filter(|a| a.status == "new")
        .collect();
    assert!(
        afternoon.iter().any(|a| a
            .first_seen
            .as_deref()
            .is_some_and(|t| t >= "2026-11-22T12")),
        "{out}"
    );
    // Each filled silence is closed, once, with its reason; the real one stays open.
    let closed: BTreeSet<String> = all
        .iter()
        .filter(|a| a.status == "closed")
        .map(|a| a.entity_key.clone())
        .collect();
    let filled: BTreeSet<String> = silences
        .iter()
        .filter(|k| **k != silent_exporter)
        .cloned()
        .collect();
    assert_eq!(closed, filled, "{out}");
    for a in all.iter().filter(|a| a.status == "closed") {
        let why = a.close_reason.as_deref().unwrap();
        assert!(
            why.contains("no longer found") && why.contains("flows@"),
            "{why}"
        );
        assert_eq!(
            all.iter()
                .filter(|b| b.fingerprint == a.fingerprint)
                .count(),
            2
        );
    }
    assert_eq!(
        now[&first
            .iter()
            .find(|a| a.entity_key == silent_exporter)
            .unwrap()
            .fingerprint]
            .status,
        "new"
    );
    assert!(out.contains("closed"), "{out}");

    // Now every rule covered the whole day, up to the heads: the report says so, per rule.
    let r = report(&s, &s.dir.path().join("report-after"));
    assert_eq!(r["evaluation"]["complete"], true, "{}", r["evaluation"]);
    assert_eq!(r["summary"]["closed"], closed.len());
    for e in r["evaluation"]["rules"].as_array().unwrap() {
        let text = e["statement"].as_str().unwrap();
        assert!(
            text.starts_with("every record committed for [2026-11-22T00:00:00.000000Z, 2026-11-23T00:00:00.000000Z) up to ")
                && text.contains("flows@"),
            "{text}"
        );
    }
    assert!(r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["status"] != "closed"));
    let html = std::fs::read_to_string(s.dir.path().join("report-after/report.html")).unwrap();
    assert!(html.contains("Evaluation coverage"));

    // The ledger is checked against the log by verify; a run record that claims a table version
    // the log does not hold (or holds with another chain hash) is named.
    let (ok, out) = verify(&s);
    assert!(
        ok && out.contains(
            "coverage ledger: the table versions and positions of 2 rule runs are in the log"
        ),
        "{out}"
    );
    let runs_path = s.warehouse().join("_runs/runs.jsonl");
    let text = std::fs::read_to_string(&runs_path).unwrap();
    let mut first_run: serde_json::Value =
        serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let heads = first_run["log_heads"].as_array_mut().unwrap();
    let flows = heads.iter_mut().find(|h| h["table"] == "flows").unwrap();
    let claimed = flows["version"].as_i64().unwrap() + 1;
    flows["hash"] = "0".repeat(64).into();
    let forged = format!("{}\n{}\n", first_run, text.lines().nth(1).unwrap());
    std::fs::write(&runs_path, &forged).unwrap();
    let (ok, out) = verify(&s);
    assert!(!ok, "{out}");
    assert!(
        out.contains("runs.jsonl line 1: run ")
            && out.contains("the log was rewritten after the run"),
        "{out}"
    );
    let flows = first_run["log_heads"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|h| h["table"] == "flows")
        .unwrap();
    flows["version"] = claimed.into();
    flows["hash"] = "0".repeat(64).into();
    let _ = claimed;
    std::fs::write(
        &runs_path,
        format!("{}\n{}\n", first_run, text.lines().nth(1).unwrap()),
    )
    .unwrap();
    let (ok, out) = verify(&s);
    assert!(!ok, "{out}");
    std::fs::write(&runs_path, &text).unwrap();

    // The run records are the coverage ledger: both runs evaluated the whole day, complete.
    let runs = flowaudit_analytics::runner::read_runs(&s.warehouse()).unwrap();
    assert_eq!(runs.len(), 2);
    for r in &runs {
        for o in r["rules"].as_array().unwrap() {
            assert_eq!(o["coverage"], "complete", "{o}");
            assert_eq!(o["evaluated_to"], "2026-11-23T00:00:00.000000Z");
        }
    }
}

/// The morning of a generated day ingested, then the caught-up marks removed: what an ingest
/// that is still behind (or stopped for good) leaves. The setup and the alerts file.
fn morning_without_marks(seed: u64) -> (Setup, std::path::PathBuf) {
    let s = Setup::new(1);
    let gen = day(seed);
    let (gw_am, _) = split(&gen.gateway, at(12));
    let (fl_am, _) = split(&gen.flows, at(12));
    produce(&s, &gw_am, &fl_am);
    let mut c = s.ingest();
    c.arg("--until-caught-up");
    run_ok(c);
    std::fs::remove_dir_all(s.warehouse().join("_ingest")).unwrap();
    let file = s.dir.path().join("alerts.jsonl");
    (s, file)
}

/// Without the ingest marks (ingest still behind), half a day is complete only up to noon less
/// the lateness: `rules run` evaluates that part, says which sources hold the rest back, raises
/// no silence; `--force` evaluates the whole day and marks it incomplete.
#[test]
fn a_warehouse_behind_is_evaluated_as_far_as_it_is_complete_or_forced_and_marked() {
    let (s, file) = morning_without_marks(23);
    let (out, _) = run_ok(rules_run(&s, &file));
    assert!(out.contains("partial"), "{out}");
    assert!(out.contains("complete up to 2026-11-22T11:5"), "{out}");
    let alerts = lines(&file);
    assert!(
        alerts.iter().all(|a| a.rule_id != "telemetry_silent"),
        "no source is judged silent while ingest is behind: {:?}",
        alerts.iter().map(|a| &a.summary).collect::<Vec<_>>()
    );
    let runs = flowaudit_analytics::runner::read_runs(&s.warehouse()).unwrap();
    let o = &runs[0]["rules"][0];
    assert_eq!(o["coverage"], "partial", "{o}");
    assert!(
        o["evaluated_to"].as_str().unwrap() < "2026-11-22T12:00:00",
        "{o}"
    );
    assert!(!o["lagging"].as_array().unwrap().is_empty());

    let mut c = rules_run(&s, &file);
    c.arg("--force");
    let (out, _) = run_ok(c);
    assert!(out.contains("incomplete"), "{out}");
    let runs = flowaudit_analytics::runner::read_runs(&s.warehouse()).unwrap();
    assert_eq!(runs[1]["evaluate"], "forced");
    for o in runs[1]["rules"].as_array().unwrap() {
        let reads_ingest = o["tables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "flows" || t == "gateway_events");
        let want = if reads_ingest {
            "incomplete"
        } else {
            "complete"
        };
        assert_eq!(o["coverage"], want, "{o}");
    }
}

/// A topic retired half way through the day: with no ingest to mark it caught up, its
/// partitions hold their tables back for good, until the operator closes them; then the day is
/// complete with what was recorded (and a source silent since is judged silent).
#[test]
fn closing_a_retired_partition_makes_its_table_complete_with_what_was_recorded() {
    // Its ingest stopped before it caught up, and never ran again.
    let (s, file) = morning_without_marks(29);
    let (out, _) = run_ok(rules_run(&s, &file));
    assert!(out.contains("partial"), "{out}");

    let close = |table: &str, topic: &str, partition: &str| {
        let mut c = Command::new(bin());
        c.args(["close-partition", "--warehouse"])
            .arg(s.warehouse_arg())
            .args(["--table", table, "--topic", topic, "--partition", partition])
            .env_remove("FLOWAUDIT_CONFIG");
        c.output().unwrap()
    };
    // A partition the table never recorded is refused, naming it.
    let o = close("flows", &s.gateway_topic, "0");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("has never recorded or marked"),
        "{err}"
    );
    for (table, topic) in [
        ("flows", &s.flow_topic),
        ("gateway_events", &s.gateway_topic),
    ] {
        let o = close(table, topic, "0");
        let so = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(so.contains("complete for all time"), "{so}");
    }
    let (out, _) = run_ok(rules_run(&s, &file));
    let runs = flowaudit_analytics::runner::read_runs(&s.warehouse()).unwrap();
    for o in runs.last().unwrap()["rules"].as_array().unwrap() {
        assert_eq!(o["coverage"], "complete", "{o}\n{out}");
    }
    // The sources that stopped at noon are now judged silent: that is what closing says.
    assert!(
        lines(&file).iter().any(|a| a.rule_id == "telemetry_silent"),
        "{out}"
    );
}

/// `serve` with ingest alongside, started on a day of backlog (all of yesterday waiting in
/// Kafka): the nightly window waits until the watermarks pass its end, so it raises exactly the
/// planted alerts and the one exporter that really stopped, and no silence for a source that was
/// merely behind.
#[test]
fn serve_started_on_a_backlog_waits_for_complete_data_and_raises_only_what_is_real() {
    use std::time::Duration;
    let s = Setup::new(2);
    let today = chrono::Utc::now().date_naive();
    let day = today - chrono::Duration::days(1);
    let gen = generate::generate(&GenerateOptions {
        date: day,
        seed: 11,
        policy: repo("fixtures/policy"),
        geoip_csv: repo("fixtures/geoip/ranges.csv"),
        events: 3000,
        flows: 20000,
        malformed: 0,
        flow_format: None,
    })
    .unwrap();
    // Exporter 10.20.255.2 stops for good at 18:00.
    let stop = day
        .and_hms_opt(18, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros();
    let stopper = "10.20.255.2";
    let flows: Vec<Message> = gen
        .flows
        .iter()
        .filter(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            let who = v["sampler_address"].as_str().or(v["exporter"].as_str());
            !(who == Some(stopper) && m.ts_us >= stop)
        })
        .cloned()
        .collect();
    assert!(flows.len() < gen.flows.len());
    produce(&s, &gen.gateway, &flows);

    // Every rule once a night over the day before (the pack's own schedules fire every few
    // minutes over the last hour or day).
    let rules = s.dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    let mut last = BTreeMap::new();
    for e in std::fs::read_dir(repo("queries")).unwrap() {
        let e = e.unwrap();
        // The rule files (not queries/summaries/).
        if e.path().extension().is_none_or(|x| x != "sql") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("-- schedule:") {
                    "-- schedule: 0 0 * * *".to_string()
                } else if l.starts_with("-- lookback:") {
                    "-- lookback: 1d".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("-- id: "))
            .unwrap()
            .trim()
            .to_string();
        std::fs::write(rules.join(e.file_name()), text + "\n").unwrap();
        last.insert(
            id,
            (today.and_hms_opt(0, 0, 0).unwrap().and_utc() - chrono::Duration::minutes(1))
                .to_rfc3339(),
        );
    }
    let wh = s.warehouse();
    std::fs::create_dir_all(wh.join("_runs")).unwrap();
    std::fs::write(
        wh.join("_runs/schedule.json"),
        serde_json::to_vec(&last).unwrap(),
    )
    .unwrap();
    let file = s.dir.path().join("alerts.jsonl");
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
        .args(["--brokers", &brokers()])
        .arg("--warehouse")
        .arg(&wh)
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .arg("--geoip")
        .arg(repo("fixtures/geoip/ranges.csv"))
        .arg("--rules-dir")
        .arg(&rules)
        .arg("--alerts-file")
        .arg(&file)
        .args(["--metrics", "127.0.0.1:0"])
        .env("FLOWAUDIT_LOG", "info,librdkafka=warn")
        .env_remove("FLOWAUDIT_CONFIG");
    let mut p = Running::spawn(c);
    let metrics_at = crate::ops::endpoint(&mut p);
    // Each rule's window is evaluated once what that rule reads is complete.
    let evaluated = || -> Vec<serde_json::Value> {
        flowaudit_analytics::runner::read_runs(&wh)
            .unwrap()
            .iter()
            .flat_map(|r| r["rules"].as_array().cloned().unwrap_or_default())
            .filter(|o| o["coverage"] != "due")
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while evaluated().len() < last.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "not every rule was evaluated: {:?}\n{}",
            evaluated(),
            p.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let planted = serde_json::to_value(&gen.planted).unwrap();
    let check = |alerts: &[Alert]| {
        let cov = flowaudit_analytics::planted::check(&planted, alerts);
        assert!(cov.missed.is_empty(), "missed {:?}", cov.missed);
        let unexpected: Vec<String> = cov
            .unexpected_high
            .iter()
            .map(|a| format!("{} {}", a.rule_id, a.entity_key))
            .collect();
        unexpected
    };
    // Delivery to the file follows each run's record.
    while !flowaudit_analytics::planted::check(&planted, &lines(&file))
        .missed
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "{}", p.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        check(&lines(&file)),
        vec![format!("telemetry_silent source={stopper}")]
    );
    // What the incident desk got, the operator sees counted: alerts raised by rule and
    // severity, delivered to the file with nothing left behind, the sources' watermark ages.
    let t = std::time::Instant::now();
    loop {
        let m = crate::ops::Scrape::of(&metrics_at);
        let delivered = lines(&file);
        let mut want: BTreeMap<(String, String), f64> = BTreeMap::new();
        for a in delivered.iter().filter(|a| a.status == "new") {
            *want
                .entry((a.rule_id.clone(), a.severity.clone()))
                .or_default() += 1.0;
        }
        let got: BTreeMap<(String, String), f64> = m
            .samples
            .iter()
            .filter(|(n, _, _)| n == "flowaudit_alerts_raised_total")
            .map(|(_, l, v)| ((l["rule"].clone(), l["severity"].clone()), *v))
            .collect();
        let sent = m.sum("flowaudit_sink_delivered_total", &[("sink", "file")]);
        if got == want
            && sent == delivered.len() as f64
            && m.sum("flowaudit_sink_backlog", &[("sink", "file")]) == 0.0
        {
            assert!(
                m.samples
                    .iter()
                    .any(|(n, l, v)| n == "flowaudit_watermark_age_seconds"
                        && l["source"] == "table:flows"
                        && *v >= 0.0),
                "{:?}",
                m.samples
            );
            assert_eq!(
                m.sum("flowaudit_rule_runs_total", &[("outcome", "failed")]),
                0.0
            );
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "metrics {got:?}, {sent} delivered; the file has {want:?}, {} lines",
            delivered.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Late data while serve runs: a transfer to China at 23:11 yesterday, recorded now. The
    // windows it falls in are due again; their re-evaluation raises it, and only it.
    let before = lines(&file).len();
    let late = format!(
        r#"{{"ts":"{day}T23:11:00Z","src_ip":"10.20.0.10","dst_ip":"45.37.0.9","protocol":"tcp","bytes":999,"exporter":"zeek-enclave-1"}}"#
    );
    flowaudit_ingest::produce::produce(
        &brokers(),
        &s.flow_topic,
        &[Message {
            key: "late".into(),
            payload: late.into_bytes(),
            ts_us: day
                .and_hms_opt(23, 11, 0)
                .unwrap()
                .and_utc()
                .timestamp_micros(),
        }],
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let new = loop {
        let all = lines(&file);
        let new: BTreeSet<(String, String)> = all[before..]
            .iter()
            .map(|a| (a.rule_id.clone(), a.entity_key.clone()))
            .collect();
        if new.len() >= 2 {
            break new;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the late transfer was not raised\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    std::thread::sleep(Duration::from_secs(2));
    p.signal(libc::SIGTERM);
    let st = p.wait(Duration::from_secs(60));
    assert!(st.success(), "{st:?}\n{}", p.log());
    let cn = "src_ip=10.20.0.10, dst_ip=45.37.0.9, dst_country=CN".to_string();
    assert_eq!(
        new,
        BTreeSet::from([
            ("gateway_bypass".to_string(), cn.clone()),
            ("transfer_no_legal_basis".to_string(), cn),
        ]),
        "only the late transfer is new"
    );
    let runs = flowaudit_analytics::runner::read_runs(&wh).unwrap();
    assert!(
        runs.iter().any(|r| r["trigger"] == "late-data"),
        "{}",
        p.log()
    );

    let done: Vec<serde_json::Value> = runs
        .iter()
        .filter(|r| r["trigger"] != "late-data")
        .flat_map(|r| r["rules"].as_array().cloned().unwrap_or_default())
        .filter(|o| o["coverage"] != "due")
        .collect();
    assert_eq!(done.len(), last.len(), "each rule once\n{}", p.log());
    for o in &done {
        assert_eq!(o["coverage"], "complete", "{o}");
        assert_eq!(o["evaluated_to"].as_str().unwrap()[..10], today.to_string());
    }
    assert_eq!(
        crate::support::table_rows(&wh, "flows") as usize,
        flows.len() + 1,
        "every record of the day and the late one"
    );
}

/// Sliding windows, as `serve` evaluates them (the last hour, every half hour), that each found
/// an exporter silent: late data that fills the silence closes the alert only once the last
/// window that found it has been evaluated again without it; a silence found afterwards reopens
/// it. Both sinks, a file and a webhook, get the closing and the reopening, each under its own
/// Idempotency-Key.
#[test]
fn sliding_windows_close_a_filled_silence_only_when_none_still_finds_it_and_reopen_it() {
    use flowaudit_analytics::runner::{run_window, Evaluate, Window};
    use flowaudit_analytics::sinks::{deliver_all, Sink};
    let s = Setup::new(2);
    let gen = day(11);
    // Exporter 10.20.255.2 (expected every 300 s) is withheld from 10:00 to 13:00: 10:00–11:30
    // arrives late, 11:30–12:00 later still, 12:00–13:00 never.
    let stopper = "10.20.255.2";
    let minute = |h: u32, m: u32| at(h) + i64::from(m) * 60_000_000;
    let (mut on_time, mut late1, mut late2) = (Vec::new(), Vec::new(), Vec::new());
    for m in &gen.flows {
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        let who = v["sampler_address"].as_str().or(v["exporter"].as_str());
        if who != Some(stopper) || m.ts_us < at(10) || m.ts_us >= at(13) {
            on_time.push(m.clone());
        } else if m.ts_us < minute(11, 30) {
            late1.push(m.clone());
        } else if m.ts_us < at(12) {
            late2.push(m.clone());
        }
    }
    assert!(!late1.is_empty() && !late2.is_empty());
    let ingest = |gateway: &[Message], flows: &[Message]| {
        produce(&s, gateway, flows);
        let mut c = s.ingest();
        c.arg("--until-caught-up");
        run_ok(c);
    };
    ingest(&gen.gateway, &on_time);

    let wh = s.warehouse();
    let site = flowaudit_analytics::site::Site::local(&wh);
    let rule: Vec<_> = flowaudit_analytics::rules::load_rules(&repo("queries"))
        .unwrap()
        .into_iter()
        .filter(|r| r.id == "telemetry_silent")
        .collect();
    let port = crate::rules::free_port();
    let hook = s.dir.path().join("hook.jsonl");
    let mut receiver = crate::rules::receiver(port, &hook, 0);
    let file = s.dir.path().join("alerts.jsonl");
    let sinks = [
        Sink::File(file.clone()),
        Sink::Webhook {
            url: format!("http://127.0.0.1:{port}/alerts"),
            attempts: 3,
            backoff: std::time::Duration::from_millis(100),
            timeout: std::time::Duration::from_secs(5),
        },
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Evaluate the window [from, from + 1h) as serve does, and deliver; that run's record.
    let evaluate = |from: i64| -> serde_json::Value {
        rt.block_on(async {
            let catalog = flowaudit_analytics::catalog::Catalog::open_at(
                &site,
                &repo("fixtures/policy"),
                Some(&repo("fixtures/geoip/ranges.csv")),
            )
            .await
            .unwrap();
            let mut store = flowaudit_analytics::alerts::AlertStore::open(&wh).unwrap();
            let before = store.len();
            let from = chrono::DateTime::from_timestamp_micros(from).unwrap();
            let res = run_window(
                &catalog,
                &site,
                &rule,
                &mut store,
                &[],
                Window {
                    from,
                    to: from + chrono::Duration::hours(1),
                    trigger: "late-data",
                    evaluate: Evaluate::CompleteOnly,
                    lateness: std::time::Duration::from_secs(0),
                },
            )
            .await
            .unwrap();
            assert_eq!(
                res.record.rules[0].coverage, "complete",
                "{:?}",
                res.record.rules
            );
            for d in deliver_all(&store, &sinks, before) {
                assert!(d.error.is_none(), "{d:?}");
            }
            serde_json::to_value(&res.record).unwrap()
        })
    };
    let silence_of = |alerts: &[Alert]| -> Vec<(String, String)> {
        alerts
            .iter()
            .filter(|a| a.entity_key == format!("source={stopper}"))
            .map(|a| (a.status.clone(), a.close_reason.clone().unwrap_or_default()))
            .collect()
    };
    let (w1, w2, w3) = (at(10), minute(10, 30), at(11));
    for w in [w1, w2, w3] {
        let r = evaluate(w);
        assert_eq!(r["rules"][0]["found"].as_array().unwrap().len(), 1, "{r}");
    }
    assert_eq!(
        silence_of(&lines(&file)),
        vec![("new".into(), String::new())]
    );

    // 10:00–11:30 arrives: the first two windows, evaluated again, no longer find it, but the
    // third (11:00–12:00, silent from 11:30) still stands with it: it stays open.
    ingest(&[], &late1);
    for w in [w1, w2] {
        let r = evaluate(w);
        assert_eq!(r["rules"][0]["found"], serde_json::json!([]), "{r}");
        assert_eq!(r["rules"][0]["closed"], 0, "{r}");
    }
    assert_eq!(silence_of(&lines(&file)).len(), 1);

    // 11:30–12:00 arrives: the third window evaluated again closes it, with its reason; the
    // operator's metrics count the closing.
    let closed_count = || {
        flowaudit_ingest::metrics::metrics()
            .alerts_closed
            .get_or_create(&flowaudit_ingest::metrics::AlertLabels {
                rule: "telemetry_silent".into(),
                severity: "high".into(),
            })
            .get()
    };
    let before = closed_count();
    ingest(&[], &late2);
    let r = evaluate(w3);
    assert_eq!(r["rules"][0]["closed"], 1, "{r}");
    assert!(closed_count() > before);
    let after = silence_of(&lines(&file));
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[1].0, "closed");
    assert!(
        after[1].1.contains("no longer found when run")
            && after[1].1.contains("T11:00:00")
            && after[1]
                .1
                .contains("no other evaluation that still stands found it"),
        "{}",
        after[1].1
    );

    // 12:00–13:00 never comes: the window 11:30–12:30 finds the silence again and reopens the
    // alert, which names the closing it follows.
    evaluate(minute(11, 30));
    let all = lines(&file);
    let mine: Vec<&Alert> = all
        .iter()
        .filter(|a| a.entity_key == format!("source={stopper}"))
        .collect();
    assert_eq!(
        mine.iter().map(|a| a.status.as_str()).collect::<Vec<_>>(),
        ["new", "closed", "new"]
    );
    assert_eq!(mine[2].reopens, Some(mine[1].seq));
    assert_eq!(mine[0].fingerprint, mine[2].fingerprint);

    // The webhook got every line of the file, each under its own key: the first raise, the
    // closing and the reopening of the same fingerprint are three deliveries, not one.
    receiver.kill().unwrap();
    receiver.wait().unwrap();
    let keys: Vec<String> = std::fs::read_to_string(hook.with_extension("jsonl.keys"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(keys.len(), all.len());
    assert_eq!(
        keys.iter().collect::<BTreeSet<_>>().len(),
        keys.len(),
        "{keys:?}"
    );
    let fp = &mine[0].fingerprint;
    for k in [
        fp.clone(),
        format!("{fp}:closed:{}", mine[1].seq),
        format!("{fp}:reopened:{}", mine[2].seq),
    ] {
        assert!(keys.contains(&k), "{k} not in {keys:?}");
    }
}
