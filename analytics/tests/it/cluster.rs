//! The cluster engine (Ballista): a scheduler and two executors as processes on 127.0.0.1,
//! over a warehouse on the S3-API server. Every rule gives the same rows as the embedded engine,
//! the report the same JSON, `rules run` the same alerts even with an executor killed during
//! the run, and Flight SQL answers from the cluster.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use flowaudit_analytics::catalog::Catalog;
use flowaudit_analytics::cluster::Engine;
use flowaudit_analytics::site::Site;
use flowaudit_ingest::warehouse::Location;

use crate::rules::free_port;
use crate::support::*;

const DAY: &str = "2026-11-21";

/// A port whose next port is free too (an executor's Flight and gRPC services).
fn free_pair() -> u16 {
    loop {
        let p = free_port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// `flowaudit` from the repository root with the demo's policy and GeoIP, no config file.
fn fa(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .current_dir(repo(""))
        .env("FLOWAUDIT_LOG", "info,librdkafka=warn")
        .env_remove("FLOWAUDIT_CONFIG")
        .env_remove("FLOWAUDIT_ENGINE");
    c
}

fn member_flags(c: &mut Command, wh: &str) {
    c.args(["--warehouse", wh, "--policy", "fixtures/policy"])
        .args(["--geoip", "fixtures/geoip/ranges.csv"]);
}

/// A scheduler and its executors, stopped when dropped.
struct Cluster {
    engine: String,
    scheduler: Running,
    executors: Vec<Running>,
}

impl Cluster {
    fn start(wh: &str, executors: usize, work: &Path) -> Self {
        Self::start_with(wh, wh, executors, work)
    }

    /// A cluster whose executors are given `executor_wh` as their warehouse.
    fn start_with(wh: &str, executor_wh: &str, executors: usize, work: &Path) -> Self {
        let port = free_port();
        let mut c = fa(&["cluster", "scheduler", "--bind"]);
        c.arg(format!("127.0.0.1:{port}"))
            .args(["--executor-timeout-s", "6"]);
        member_flags(&mut c, wh);
        let mut scheduler = Running::spawn(c);
        scheduler.wait_for("cluster scheduler listening", Duration::from_secs(60));
        let mut cluster = Self {
            engine: format!("ballista://127.0.0.1:{port}"),
            scheduler,
            executors: Vec::new(),
        };
        for i in 0..executors {
            // A free pair of ports can be taken by another test before the executor binds it:
            // an executor that exits before registering is started again on another pair.
            let mut attempt = 0;
            let e = loop {
                attempt += 1;
                let p = free_pair();
                let mut c = fa(&["cluster", "executor", "--scheduler"]);
                c.arg(format!("127.0.0.1:{port}"))
                    .arg("--bind")
                    .arg(format!("127.0.0.1:{p}"))
                    .args(["--slots", "2", "--heartbeat-s", "1", "--work-dir"])
                    .arg(work.join(format!("executor-{i}")));
                member_flags(&mut c, executor_wh);
                let mut e = Running::spawn(c);
                let t = std::time::Instant::now();
                let exited = loop {
                    if e.log().contains("Executor registration succeed") {
                        break None;
                    }
                    if let Ok(Some(st)) = e.child.try_wait() {
                        break Some(st);
                    }
                    assert!(
                        t.elapsed() < Duration::from_secs(60),
                        "executor {i} did not register:\n{}",
                        e.log()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                };
                match exited {
                    None => break e,
                    Some(st) if attempt < 3 => {
                        eprintln!(
                            "executor {i} exited {st:?} before registering; again:\n{}",
                            e.log()
                        )
                    }
                    Some(st) => panic!("executor {i} exited {st:?}:\n{}", e.log()),
                }
            };
            cluster.executors.push(e);
        }
        cluster
    }

    /// Tasks the executors have started so far.
    fn tasks(&self) -> usize {
        self.executors
            .iter()
            .map(|e| e.log().matches("Execute task").count())
            .sum()
    }

    fn logs(&self) -> String {
        let mut s = format!("scheduler:\n{}", self.scheduler.log());
        for (i, e) in self.executors.iter().enumerate() {
            s += &format!("\nexecutor {i}:\n{}", e.log());
        }
        s
    }
}

/// The rows of `sql` in `catalog`, each as a CSV line, sorted.
async fn rows(catalog: &Catalog, sql: &str) -> Vec<String> {
    let batches: Vec<RecordBatch> = catalog
        .ctx
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut out = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(false)
            .build(&mut out);
        for b in &batches {
            w.write(b).unwrap();
        }
    }
    let mut lines: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// The demo's day on the S3 server: its warehouse URL and its local state directory.
fn demo_on_s3(dir: &Path, name: &str) -> (String, PathBuf) {
    let bucket = std::env::var("FLOWAUDIT_TEST_S3").expect(
        "FLOWAUDIT_TEST_S3 is not set: run the tests with `make test` (it starts the S3 server)",
    );
    let n: u64 = rand::random();
    let wh = format!("{bucket}/{name}-{n:016x}");
    let out = dir.join("demo");
    let (so, _) = run_ok(fa(&[
        "demo",
        "--out",
        out.to_str().unwrap(),
        "--warehouse",
        &wh,
    ]));
    assert!(so.contains("planted violations found: 12 of 12"), "{so}");
    (wh, out.join("state"))
}

/// The alerts a state directory holds: (fingerprint, rule, entity), sorted, and whether any
/// fingerprint is there twice.
fn alerts(state: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(state.join("_alerts/alerts.jsonl")).unwrap_or_default();
    let mut v: Vec<(String, String, String)> = text
        .lines()
        .map(|l| {
            let a: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                a["fingerprint"].as_str().unwrap().to_string(),
                a["rule_id"].as_str().unwrap().to_string(),
                a["entity"].to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn rules_run(wh: &str, state: &Path, engine: Option<&str>) -> Command {
    let mut c = fa(&[
        "rules",
        "run",
        "--date",
        DAY,
        "--rules-dir",
        "queries",
        "--force",
    ]);
    member_flags(&mut c, wh);
    c.arg("--state-dir").arg(state);
    if let Some(e) = engine {
        c.args(["--engine", e]);
    }
    c
}

#[test]
fn the_rules_and_the_report_give_the_embedded_engines_rows_on_a_cluster_of_two_executors() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, state) = demo_on_s3(dir.path(), "cluster");
    let cluster = Cluster::start(&wh, 2, dir.path());

    // Every rule, row for row, through the library: one catalog per engine over the bucket.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let site = Site::reader(Location::parse(&wh).unwrap(), Some(state.clone()));
    let open = |site: &Site| {
        rt.block_on(Catalog::open_at(
            site,
            &repo("fixtures/policy"),
            Some(&repo("fixtures/geoip/ranges.csv")),
        ))
        .unwrap()
    };
    let embedded = open(&site);
    let remote = open(
        &site
            .clone()
            .with_engine(Engine::parse(&cluster.engine).unwrap()),
    );
    let from = format!("{DAY}T00:00:00Z").parse().unwrap();
    let to = from + chrono::Duration::days(1);
    let mut found = 0;
    for rule in flowaudit_analytics::rules::load_rules(&repo("queries")).unwrap() {
        let sql = flowaudit_analytics::rules::render(&rule, from, to);
        let want = rt.block_on(rows(&embedded, &sql));
        let got = rt.block_on(rows(&remote, &sql));
        assert_eq!(
            got,
            want,
            "{}: the cluster's rows differ\n{}",
            rule.id,
            cluster.logs()
        );
        found += want.len();
    }
    assert!(
        found >= 12,
        "the demo's day has its planted findings: {found}"
    );
    // A table of the policy and one of the warehouse, joined, with flowaudit's functions.
    let sql =
        "SELECT f.dst_country, country_of(f.dst_ip) AS c, c2.eea, count(*) AS n FROM flows f \
               LEFT JOIN countries c2 ON c2.code = f.dst_country WHERE f.date = '2026-11-21' \
               AND NOT in_cidr(f.dst_ip, '10.0.0.0/8') GROUP BY 1, 2, 3";
    let want = rt.block_on(rows(&embedded, sql));
    assert!(want.len() > 3, "{want:?}");
    assert_eq!(rt.block_on(rows(&remote, sql)), want);

    // The scheduler planned and the executors ran the stages: both took tasks.
    for (i, e) in cluster.executors.iter().enumerate() {
        assert!(
            e.log().contains("Execute task"),
            "executor {i} ran nothing:\n{}",
            cluster.logs()
        );
    }

    // The SQL shell's -c: the same answer.
    let sql = |engine: Option<&str>| {
        let mut c = fa(&["sql", "--format", "csv", "-c"]);
        c.arg("SELECT gateway_id, count(*) AS n, count(DISTINCT employee_id) AS e FROM gateway_events GROUP BY gateway_id ORDER BY gateway_id");
        member_flags(&mut c, &wh);
        if let Some(e) = engine {
            c.args(["--engine", e]);
        }
        run_ok(c).0
    };
    let want = sql(None);
    assert!(want.lines().count() > 2, "{want}");
    let before = cluster.tasks();
    assert_eq!(sql(Some(&cluster.engine)), want);
    assert!(cluster.tasks() > before, "sql ran nothing on the cluster");

    // The report: the same JSON from both engines.
    let report = |out: &Path, engine: Option<&str>| {
        let mut c = fa(&[
            "report",
            "--date",
            DAY,
            "--reproducible",
            "--rules-dir",
            "queries",
        ]);
        c.arg("--out").arg(out).arg("--state-dir").arg(&state);
        member_flags(&mut c, &wh);
        if let Some(e) = engine {
            c.args(["--engine", e]);
        }
        run_ok(c);
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        j
    };
    let a = report(&dir.path().join("report-embedded"), None);
    let before = cluster.tasks();
    let b = report(&dir.path().join("report-cluster"), Some(&cluster.engine));
    assert!(
        cluster.tasks() > before,
        "the report ran nothing on the cluster"
    );
    assert!(a["findings"].as_array().unwrap().len() >= 12, "{a}");
    assert_eq!(a, b, "the cluster's report differs");
}

#[test]
fn an_executor_killed_during_a_run_loses_no_alert_and_duplicates_none() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = demo_on_s3(dir.path(), "cluster-kill");
    // The embedded engine's alerts for the day, in a fresh state directory.
    let embedded = dir.path().join("state-embedded");
    run_ok(rules_run(&wh, &embedded, None));
    let want = alerts(&embedded);
    assert!(want.len() >= 12, "{want:?}");

    let cluster = Cluster::start(&wh, 2, dir.path());
    let state = dir.path().join("state-cluster");
    let mut run = Running::spawn_with_stdout(rules_run(&wh, &state, Some(&cluster.engine)));
    // The first task started on either executor: kill that one.
    let t = std::time::Instant::now();
    let victim = loop {
        if let Some(i) = cluster
            .executors
            .iter()
            .position(|e| e.log().contains("Execute task"))
        {
            break i;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no executor took a task:\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    cluster.executors[victim].signal(libc::SIGKILL);
    let status = run.wait(Duration::from_secs(300));
    let first = format!("{}{}", run.stdout(), run.log());
    eprintln!(
        "executor {victim} killed; the run {}",
        if status.success() {
            "completed"
        } else {
            "failed"
        }
    );
    if !status.success() {
        // A failed run says why, and running it again on the survivor completes it.
        assert!(
            first.contains("rule run(s) failed"),
            "an unclear failure:\n{first}"
        );
        run_ok(rules_run(&wh, &state, Some(&cluster.engine)));
    }
    let got = alerts(&state);
    let mut unique = got.clone();
    unique.dedup_by(|a, b| a.0 == b.0);
    assert_eq!(
        unique.len(),
        got.len(),
        "an alert was raised twice: {got:?}"
    );
    assert_eq!(got, want, "first run:\n{first}\n{}", cluster.logs());
}

#[test]
fn flight_sql_queries_are_answered_by_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, state) = demo_on_s3(dir.path(), "cluster-flight");
    let cluster = Cluster::start(&wh, 2, dir.path());
    let config = dir.path().join("flowaudit.toml");
    std::fs::write(
        &config,
        "[[flight.users]]\nname = \"bob\"\npassword = \"hunter2\"\n",
    )
    .unwrap();
    let serve = |engine: Option<&str>| {
        let port = free_port();
        let mut c = fa(&[
            "--config",
            config.to_str().unwrap(),
            "serve",
            "--no-scheduler",
        ]);
        c.arg("--flight").arg(format!("127.0.0.1:{port}"));
        c.arg("--state-dir").arg(&state);
        member_flags(&mut c, &wh);
        if let Some(e) = engine {
            c.args(["--engine", e]);
        }
        let mut r = Running::spawn(c);
        r.wait_for("Flight SQL listening", Duration::from_secs(60));
        (r, format!("grpc://127.0.0.1:{port}"))
    };
    let query = |uri: &str| {
        let argv = ["pyarrow", uri, "bob", "hunter2"];
        let args: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_ref()).collect();
        let v: serde_json::Value =
            serde_json::from_slice(&python_script("flight_client.py", &args)).unwrap();
        v["by_gateway"].clone()
    };
    let (_embedded, uri) = serve(None);
    let want = query(&uri);
    assert!(want.as_array().is_some_and(|a| a.len() > 1), "{want}");
    let tasks_before = cluster.tasks();
    let (_remote, uri) = serve(Some(&cluster.engine));
    assert_eq!(query(&uri), want, "{}", cluster.logs());
    assert!(
        cluster.tasks() > tasks_before,
        "the executors ran no task:\n{}",
        cluster.logs()
    );
}

#[test]
fn without_an_executor_or_with_one_on_another_warehouse_the_client_is_told_why() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = demo_on_s3(dir.path(), "cluster-other");
    let bucket = std::env::var("FLOWAUDIT_TEST_S3").unwrap();
    let other = format!("{bucket}/elsewhere-{:016x}", rand::random::<u64>());
    // A query's stderr, on the cluster at `engine`; it must fail.
    let refused = |engine: &str| -> String {
        let mut c = fa(&[
            "sql",
            "--format",
            "csv",
            "-c",
            "SELECT sum(bytes) AS b FROM flows",
        ]);
        member_flags(&mut c, &wh);
        c.args(["--engine", engine]);
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "answered:\n{err}");
        err
    };
    // No executor at all: the client does not wait forever for one.
    let empty = Cluster::start(&wh, 0, dir.path());
    let err = refused(&empty.engine);
    assert!(
        err.contains("has no live executor") && err.contains("flowaudit cluster executor"),
        "{err}"
    );
    drop(empty);
    // The client and the scheduler agree; the executor was started on another warehouse.
    let cluster = Cluster::start_with(&wh, &other, 1, dir.path());
    let err = refused(&cluster.engine);
    assert!(
        err.contains("not a table of this executor's warehouse")
            && err.contains(&other)
            && err.contains("--warehouse"),
        "{err}\n{}",
        cluster.logs()
    );
}
