//! What an operator watches: `/metrics` scraped during an ingest run by the Prometheus project's
//! own parser, reconciled with the tables; `/readyz` following the broker down and back;
//! `/healthz`.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flowaudit_ingest::generate::{self, GenerateOptions};
use serde_json::Value;

use crate::support::*;

/// One scrape: samples by (name, sorted labels).
pub struct Scrape {
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
    families: BTreeMap<String, String>,
    content_type: String,
}

impl Scrape {
    pub fn of(addr: &str) -> Self {
        let out = python_script(
            "scrape_metrics.py",
            &[format!("http://{addr}/metrics").as_ref()],
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        Self {
            samples: v["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s[0].as_str().unwrap().to_string(),
                        serde_json::from_value(s[1].clone()).unwrap(),
                        s[2].as_f64().unwrap(),
                    )
                })
                .collect(),
            families: serde_json::from_value(v["families"].clone()).unwrap(),
            content_type: v["content_type"].as_str().unwrap().to_string(),
        }
    }

    /// The sum of a sample over the series whose labels include `with`.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && with
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|s| s.2)
            .sum()
    }

    fn series(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, v)| (l.clone(), *v))
            .collect()
    }
}

/// The endpoint's address, from the line the binary logs when it is listening.
pub fn endpoint(p: &mut Running) -> String {
    p.wait_for("metrics on http://", Duration::from_secs(60));
    let log = p.log();
    let at = log.find("metrics on http://").unwrap() + "metrics on http://".len();
    log[at..].split('/').next().unwrap().to_string()
}

pub fn get(url: &str) -> (u16, String) {
    match ureq::get(url).timeout(Duration::from_secs(15)).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

fn day(seed: u64, events: usize, flows: usize, malformed: usize) -> generate::Generated {
    generate::generate(&GenerateOptions {
        date: "2026-11-21".parse().unwrap(),
        seed,
        policy: repo("fixtures/policy"),
        geoip_csv: repo("fixtures/geoip/ranges.csv"),
        events,
        flows,
        malformed,
        flow_format: None,
    })
    .unwrap()
}

/// Wait until the tables hold `rows` rows in all (gateway_events + flows + quarantine).
fn wait_rows(s: &Setup, rows: u64, p: &Running) {
    let t = Instant::now();
    loop {
        let n = s.rows("gateway_events") + s.rows("flows") + s.rows("quarantine");
        if n >= rows {
            assert_eq!(n, rows, "more rows than produced:\n{}", p.log());
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{n} of {rows} rows after 120 s:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_scraped_during_ingest_move_and_reconcile_with_the_tables() {
    let s = Setup::new(2);
    let mut c = s.ingest();
    c.args(["--metrics", "127.0.0.1:0", "--flush-interval-ms", "300"]);
    let mut p = Running::spawn(c);
    let addr = endpoint(&mut p);
    p.wait_for("subscribed", Duration::from_secs(60));

    let before = Scrape::of(&addr);
    assert!(
        before
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        before.content_type
    );
    // Nothing consumed yet: no series of the counter (a family without series has no samples).
    assert_eq!(
        before.sum("flowaudit_ingest_messages_consumed_total", &[]),
        0.0
    );

    // Two rounds: the counters move with each, and reconcile with the tables after each.
    let mut produced = 0u64;
    let mut malformed = 0u64;
    let mut last_consumed = 0.0;
    for (round, seed) in [(1, 7u64), (2, 8)] {
        let gen = day(seed, 300, 900, 6);
        s.produce_gateway(&gen.gateway);
        flowaudit_ingest::produce::produce(&brokers(), &s.flow_topic, &gen.flows).unwrap();
        produced += (gen.gateway.len() + gen.flows.len()) as u64;
        malformed += (gen.planted.malformed_gateway + gen.planted.malformed_flows) as u64;
        wait_rows(&s, produced, &p);
        // The counters follow the commit they count; the lag follows within a second.
        let t = Instant::now();
        let m = loop {
            let m = Scrape::of(&addr);
            let lag: f64 = m
                .series("flowaudit_ingest_consumer_lag")
                .iter()
                .map(|x| x.1)
                .sum();
            // Lag and recorded offsets are refreshed together once a second: a scrape right after
            // the commit can still show the previous round's (both stale, the lag 0).
            if m.sum("flowaudit_ingest_messages_consumed_total", &[]) == produced as f64
                && lag == 0.0
                && m.series("flowaudit_ingest_consumer_lag").len() == 4
                && m.sum("flowaudit_ingest_recorded_offset", &[]) == produced as f64
            {
                break m;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "round {round}: the metrics do not show {produced} consumed with no lag:\n{:?}\n{}",
                m.samples,
                p.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        };
        assert_eq!(m.families["flowaudit_ingest_messages_consumed"], "counter");
        assert_eq!(
            m.families["flowaudit_ingest_commit_duration_seconds"],
            "histogram"
        );
        assert_eq!(m.families["flowaudit_ingest_consumer_lag"], "gauge");
        let consumed = m.sum("flowaudit_ingest_messages_consumed_total", &[]);
        assert!(
            consumed > last_consumed,
            "round {round}: the counter did not move"
        );
        last_consumed = consumed;
        let gw = m.sum(
            "flowaudit_ingest_rows_written_total",
            &[("table", "gateway_events")],
        );
        let fl = m.sum("flowaudit_ingest_rows_written_total", &[("table", "flows")]);
        let q = m.sum("flowaudit_ingest_rows_quarantined_total", &[]);
        // consumed = written + quarantined, and each equals what the tables hold.
        assert_eq!(consumed, gw + fl + q, "round {round}: {:?}", m.samples);
        assert_eq!(gw as u64, s.rows("gateway_events"), "round {round}");
        assert_eq!(fl as u64, s.rows("flows"), "round {round}");
        assert_eq!(q as u64, s.rows("quarantine"), "round {round}");
        assert_eq!(q as u64, malformed, "round {round}: the malformed messages");
        // Quarantined rows say what they were for and why.
        for (labels, _) in m.series("flowaudit_ingest_rows_quarantined_total") {
            assert!(
                ["gateway_events", "flows"].contains(&labels["table"].as_str())
                    && !labels["reason"].is_empty(),
                "{labels:?}"
            );
        }
        // Commits were timed and sized; recorded offsets per partition add up to the messages.
        assert!(m.sum("flowaudit_ingest_commit_duration_seconds_count", &[]) >= 2.0);
        assert!(m.sum("flowaudit_ingest_commit_bytes_sum", &[("table", "flows")]) > 0.0);
        assert_eq!(
            m.sum("flowaudit_ingest_recorded_offset", &[]),
            produced as f64,
            "each partition's next offset, from the table log"
        );
        assert_eq!(m.sum("flowaudit_ingest_partitions_assigned", &[]), 4.0);
    }

    // Health: alive and ready (the broker answers, the warehouse takes a write, the policy is
    // loaded).
    let (code, body) = get(&format!("http://{addr}/healthz"));
    assert_eq!(code, 200, "{body}");
    let (code, body) = get(&format!("http://{addr}/readyz"));
    assert_eq!(code, 200, "{body}");
    for check in ["broker: ok", "warehouse: ok", "policy: ok"] {
        assert!(body.contains(check), "{body}");
    }
    // The probe write leaves nothing behind in the warehouse.
    let ops = s.warehouse().join("_ops");
    assert!(
        !ops.exists() || std::fs::read_dir(&ops).unwrap().next().is_none(),
        "probe objects left in {}",
        ops.display()
    );
    p.signal(libc::SIGTERM);
    assert!(p.wait(Duration::from_secs(60)).success(), "{}", p.log());
}

/// A free local port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn readyz_fails_while_the_broker_is_down_and_recovers() {
    let broker = format!("127.0.0.1:{}", free_port());
    let mut tansu = start_tansu(&broker);
    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().join("warehouse");
    let mut c = std::process::Command::new(bin());
    c.args(["ingest", "--brokers", &broker, "--group", "readyz"])
        .args(["--gateway-topic", "gw.readyz", "--flow-topic", "fl.readyz"])
        .arg("--warehouse")
        .arg(&warehouse)
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .args(["--metrics", "127.0.0.1:0", "--give-up-after-ms", "600000"]);
    let mut p = Running::spawn(c);
    let addr = endpoint(&mut p);
    let ready = format!("http://{addr}/readyz");
    let wait_status = |want: u16, needle: &str, p: &Running| -> String {
        let t = Instant::now();
        loop {
            let (code, body) = get(&ready);
            if code == want && body.contains(needle) {
                return body;
            }
            assert!(
                t.elapsed() < Duration::from_secs(90),
                "/readyz is {code}, not {want} with {needle:?}:\n{body}\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let body = wait_status(200, "broker: ok", &p);
    assert!(body.contains("policy: ok"), "{body}");

    // The broker goes away: not ready, and the body says which check failed; still alive.
    tansu.kill().unwrap();
    tansu.wait().unwrap();
    let body = wait_status(503, "broker: FAIL", &p);
    assert!(
        body.contains("warehouse: ok") && body.contains("policy: ok"),
        "{body}"
    );
    let (code, _) = get(&format!("http://{addr}/healthz"));
    assert_eq!(code, 200, "alive while the broker is down");

    // It comes back on the same address: ready again.
    let mut tansu = start_tansu(&broker);
    wait_status(200, "broker: ok", &p);

    p.signal(libc::SIGTERM);
    assert!(p.wait(Duration::from_secs(60)).success(), "{}", p.log());
    tansu.kill().unwrap();
    let _ = tansu.wait();
}

fn config_check(file: &std::path::Path) -> (bool, String, String) {
    config_check_with(file, &[])
}

fn config_check_with(file: &std::path::Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = std::process::Command::new(bin());
    c.args(["config", "check", "--config"]).arg(file);
    // Only the file: no variable of the test's environment overrides a key.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FLOWAUDIT_")) {
        c.env_remove(k);
    }
    c.envs(env.iter().copied());
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn config_check_passes_the_shipped_file_and_names_file_line_and_key_of_each_problem() {
    // The file the systemd units use passes, and its secrets are not printed.
    let (ok, out, err) = config_check(&repo("deploy/flowaudit.toml"));
    assert!(ok, "{err}");
    assert!(out.contains("metrics = \"127.0.0.1:9464\""), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "brokers = \"127.0.0.1:9092\"\n\n[ingest.kafka]\n\"sasl.password\" = \"hunter2\"\n\n\
         [alerts]\nwebhook = \"https://hooks.example/services/T0/s3cr3tpath?token=s3cr3t\"\n\n\
         [[flight.users]]\nname = \"ana\"\npassword = \"open-sesame\"\n",
    )
    .unwrap();
    let (ok, out, err) = config_check(&good);
    assert!(ok, "{err}");
    for secret in ["hunter2", "s3cr3t", "open-sesame", "s3cr3tpath"] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
    assert!(
        out.contains("name = \"ana\"") && out.contains("brokers = \"127.0.0.1:9092\""),
        "{out}"
    );
    // The environment's overrides are applied, named, and checked like the file's values.
    let (ok, out, err) = config_check_with(&good, &[("FLOWAUDIT_TICK_S", "20")]);
    assert!(ok, "{err}");
    assert!(
        out.contains("tick_s = 20")
            && out.contains("serve.tick_s: from the environment (FLOWAUDIT_TICK_S)"),
        "{out}"
    );
    // A variable is read as the key's type: a numeric group stays a string, a size may be bare.
    let (ok, out, err) = config_check_with(
        &good,
        &[
            ("FLOWAUDIT_GROUP", "42"),
            ("FLOWAUDIT_SQL_MEMORY_LIMIT", "2147483648"),
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("group = \"42\"") && out.contains("memory_limit = \"2147483648\""),
        "{out}"
    );
    let (ok, _, err) = config_check_with(&good, &[("FLOWAUDIT_SQL_TIMEOUT", "soon")]);
    assert!(
        !ok && err.contains(
            "FLOWAUDIT_SQL_TIMEOUT (environment): sql.timeout: \"soon\" is not a duration"
        ),
        "{err}"
    );

    // A bad key and bad values, each named by file:line:column and key; all of them reported.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "brokers = \"127.0.0.1:9092\"\n\n[serve]\ntick_s = 10\ntick = 5\n\n[sql]\ntimeout = \"5 minutes\"\n\n\
         [ingest]\nzstd_level = \"high\"\nmax_buffer_bytes = 1048576\n\n[report]\nschedule = \"61 2 * * *\"\n",
    )
    .unwrap();
    let (ok, _, err) = config_check(&bad);
    assert!(!ok, "{err}");
    let at = bad.display().to_string();
    for (line, key, what) in [
        (5, "serve.tick", "unknown field `tick`"),
        (8, "sql.timeout", "\"5 minutes\" is not a duration"),
        (11, "ingest.zstd_level", "invalid type: string \"high\""),
        (
            12,
            "ingest.max_buffer_bytes",
            "1048576 is below 134217728 (128 MiB), the least ingest can keep to",
        ),
        (15, "report.schedule", "`61` is not a number from 0 to 59"),
    ] {
        let want = format!("{at}:{line}:");
        assert!(
            err.lines().any(|l| l.starts_with(&want)
                && l.contains(&format!(": {key}: "))
                && l.contains(what)),
            "no {want}…: {key}: …{what}… in:\n{err}"
        );
    }
    assert!(err.contains("5 problem(s)"), "{err}");

    // A syntax error: where it is.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "brokers = \"a\"\n[serve\n").unwrap();
    let (ok, _, err) = config_check(&broken);
    assert!(
        !ok && err.contains(&format!("{}:2:", broken.display())),
        "{err}"
    );
}

#[test]
fn the_systemd_units_and_the_container_run_commands_the_binary_accepts() {
    use clap::Parser;
    let mut seen = 0;
    for unit in [
        "deploy/systemd/flowaudit.service",
        "deploy/systemd/flowaudit-checkpoint.service",
    ] {
        let text = std::fs::read_to_string(repo(unit)).unwrap();
        for line in text.lines() {
            let Some(cmd) = line
                .strip_prefix("ExecStart=")
                .or_else(|| line.strip_prefix("ExecStartPre="))
            else {
                continue;
            };
            let args: Vec<&str> = cmd.split_whitespace().collect();
            assert_eq!(args[0], "/usr/local/bin/flowaudit", "{unit}: {line}");
            if let Err(e) = flowaudit_analytics::cli::Cli::try_parse_from(&args) {
                panic!("{unit}: {line}: {e}");
            }
            seen += 1;
        }
        assert!(
            text.contains("NoNewPrivileges=yes") && text.contains("ProtectSystem=strict"),
            "{unit}"
        );
    }
    assert_eq!(seen, 3);
    let container = std::fs::read_to_string(repo("deploy/Containerfile")).unwrap();
    let cmd = container
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("a CMD");
    let mut args: Vec<String> = serde_json::from_str(cmd).unwrap();
    args.insert(0, "flowaudit".into());
    if let Err(e) = flowaudit_analytics::cli::Cli::try_parse_from(&args) {
        panic!("Containerfile CMD {cmd}: {e}");
    }
}

#[test]
fn long_work_shows_progress_on_a_terminal_and_nothing_in_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let gen = day(3, 100, 30_000, 0);
    generate::write_jsonl(&gen, dir.path()).unwrap();
    let convert = |out: &str| -> Vec<String> {
        vec![
            bin().to_string(),
            "convert".into(),
            "--table".into(),
            "flows".into(),
            "--input".into(),
            dir.path().join("flows.jsonl").display().to_string(),
            "--out".into(),
            dir.path().join(out).display().to_string(),
            "--policy".into(),
            repo("fixtures/policy").display().to_string(),
        ]
    };
    // On a terminal: a bar with the bytes done and the total.
    let args = convert("tty.parquet");
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    let on_tty = String::from_utf8_lossy(&python_script("pty_run.py", &args)).into_owned();
    assert!(
        on_tty.contains("converting [") && on_tty.contains("MiB"),
        "no progress bar on a terminal:\n{on_tty}"
    );
    // In a pipe: the log only.
    let args = convert("pipe.parquet");
    let out = std::process::Command::new(&args[0])
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("converting ["),
        "a bar in a pipe:\n{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "terminal escapes in a pipe:\n{stderr}"
    );
}
