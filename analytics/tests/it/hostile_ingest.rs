//! Hostile and awkward Kafka input, through the real broker: Kafka timestamps in nanoseconds,
//! a backfill spread over 2,000 hours under a memory bound, Kafka that cannot be used (missing
//! topic, unknown host, refused authentication, a broker that goes away), and transactional
//! topics with `--until-caught-up`. Results are read back with pyarrow.
use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use flowaudit_ingest::generate::Message;
use serde_json::{json, Value};

use crate::support::*;

const EVENT: &str = r#"{"event_id":"ID","ts":"TS","gateway_id":"gw-fra-1","employee_id":"e1001","employee_country":"DE","role":"analyst","data_category":"allowable","action":"read","decision":"allow","approval_ticket":null,"session_id":"s-1","records":10,"bytes":100,"dst_ip":"31.10.0.1"}"#;

/// 2026-11-21T10:00:00Z in microseconds.
const BASE_US: i64 = 1_795_255_200_000_000;

fn event(id: &str, ts_us: i64) -> String {
    let ts = chrono::DateTime::from_timestamp_micros(ts_us)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    EVENT.replace("ID", id).replace("TS", &ts)
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut f = std::fs::File::create(path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

/// `flowaudit ingest` for `s`'s topics, like [`Setup::ingest`] but with the group, warehouse
/// and idle timeout given.
fn ingest_with(s: &Setup, group: &str, warehouse: &Path, idle_ms: &str) -> Command {
    let mut c = Command::new(bin());
    c.args(["ingest", "--brokers", &brokers(), "--group", group])
        .args([
            "--gateway-topic",
            &s.gateway_topic,
            "--flow-topic",
            &s.flow_topic,
        ])
        .arg("--warehouse")
        .arg(warehouse)
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .arg("--geoip")
        .arg(repo("fixtures/geoip/ranges.csv"))
        .args(["--session-timeout-ms", "6000", "--idle-ms", idle_ms])
        .env("FLOWAUDIT_LOG", "info,librdkafka=warn")
        .env_remove("FLOWAUDIT_CONFIG");
    c
}

fn hostile(args: &[&OsStr]) -> Vec<u8> {
    python_script("hostile_ingest.py", args)
}

fn quarantine_rows(warehouse: &Path) -> Value {
    serde_json::from_slice(&hostile(&["quarantine".as_ref(), warehouse.as_os_str()])).unwrap()
}

/// Produce `(kafka timestamp ms, payload)` pairs with confluent-kafka, timestamps as given.
fn produce_with_timestamps(s: &Setup, topic: &str, msgs: &[(Option<i64>, String)]) {
    let file = s.dir.path().join(format!("{topic}.ts.jsonl"));
    let lines: Vec<String> = msgs
        .iter()
        .map(|(ts, v)| json!({"ts_ms": ts, "value": v}).to_string())
        .collect();
    write_lines(&file, &lines);
    let b = brokers();
    hostile(&[
        "produce-ts".as_ref(),
        b.as_ref(),
        topic.as_ref(),
        file.as_os_str(),
    ]);
}

/// A producer that sets nanoseconds (or anything else out of range) as the Kafka timestamp:
/// the message is quarantined with reason `bad_kafka_timestamp`, valid or not, nothing panics,
/// and the counts reconcile.
#[test]
fn kafka_timestamps_in_nanoseconds_are_quarantined_with_their_reason() {
    let s = Setup::new(1);
    let ms = BASE_US / 1000;
    let ns = BASE_US * 1000;
    let gw = vec![
        (Some(ms), event("good-ms", BASE_US)),        // 0: accepted
        (Some(ns), event("good-ns", BASE_US)),        // 1: bad_kafka_timestamp
        (Some(ns), "not json at all".to_string()),    // 2: bad_kafka_timestamp
        (Some(i64::MAX), event("good-max", BASE_US)), // 3: bad_kafka_timestamp
        (Some(ms), "still not json".to_string()),     // 4: not_json, kafka_timestamp kept
        (Some(ms + 1), event("good-ms-2", BASE_US + 1000)), // 5: accepted
    ];
    produce_with_timestamps(&s, &s.gateway_topic, &gw);
    let flow = r#"{"ts":"2026-11-21T10:00:00Z","src_ip":"10.20.0.1","dst_ip":"31.10.0.1","protocol":"tcp","bytes":1,"exporter":"x"}"#;
    produce_with_timestamps(&s, &s.flow_topic, &[(Some(ns), flow.to_string())]);

    let mut c = s.ingest();
    c.arg("--until-caught-up");
    let (stdout, _) = run_ok(c);
    assert!(
        stdout.contains("consumed 7 = gateway_events 2 + flows 0 + quarantined 5"),
        "{stdout}"
    );
    assert!(stdout.contains("4  bad_kafka_timestamp"), "{stdout}");

    let q = quarantine_rows(&s.warehouse());
    for (topic, offset, raw_ts) in [
        (&s.gateway_topic, 1, ns),
        (&s.gateway_topic, 2, ns),
        (&s.gateway_topic, 3, i64::MAX),
        (&s.flow_topic, 0, ns),
    ] {
        let row = &q[format!("{topic}/0/{offset}")];
        assert_eq!(row["code"], "bad_kafka_timestamp", "{row}");
        assert_eq!(row["field"], "kafka_timestamp", "{row}");
        assert!(
            row["reason"]
                .as_str()
                .unwrap()
                .contains(&raw_ts.to_string()),
            "the reason gives the value: {row}"
        );
        // No Kafka time can be stored; the partition is the ingest date (not 1970, not 2262).
        assert!(row["kafka_timestamp_us"].is_null(), "{row}");
        assert!(row["date"].as_str().unwrap() >= "2026-01-01", "{row}");
    }
    let row = &q[format!("{}/0/4", s.gateway_topic)];
    assert_eq!(row["code"], "not_json", "{row}");
    assert_eq!(row["kafka_timestamp_us"], BASE_US, "{row}");
    assert_eq!(
        (row["date"].as_str(), row["hour"].as_i64()),
        (Some("2026-11-21"), Some(10)),
        "{row}"
    );
    let facts = pyarrow(&s.warehouse());
    let mut ids: Vec<String> =
        serde_json::from_value(facts["gateway_events"]["event_ids"].clone()).unwrap();
    ids.sort();
    assert_eq!(ids, ["good-ms", "good-ms-2"]);
}

/// Peak RSS (VmHWM) of a process run to completion, with its exit status and output.
fn run_measured(c: Command, dir: &Path) -> (i32, u64, String, String) {
    // Not wait4 on a child of this process: Linux carries the high-water RSS of the address
    // space a process leaves at exec into the new program's `ru_maxrss`, and a child spawned
    // from here (vfork or fork) leaves this test process's — which other tests running in it
    // grow to hundreds of MiB. A small Python process spawns the command instead and reports
    // its children's peak (overstated by at most that Python process's own RSS).
    const SPAWN: &str = "import resource, subprocess, sys\n\
        r = subprocess.run(sys.argv[2:])\n\
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n\
        open(sys.argv[1], 'w').write(f'{r.returncode} {peak}')\n";
    let py = std::env::var("FLOWAUDIT_PYTHON").expect("FLOWAUDIT_PYTHON: run with make test");
    let out = dir.join("stdout.txt");
    let err = dir.join("stderr.txt");
    let measured = dir.join("measured.txt");
    let mut w = Command::new(py);
    w.arg("-c")
        .arg(SPAWN)
        .arg(&measured)
        .arg(c.get_program())
        .args(c.get_args())
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()));
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => w.env(k, v),
            None => w.env_remove(k),
        };
    }
    if let Some(d) = c.get_current_dir() {
        w.current_dir(d);
    }
    let st = w.status().expect("spawn the measuring Python");
    assert!(st.success(), "the measuring Python failed: {st:?}");
    let m = std::fs::read_to_string(&measured).unwrap();
    let (code, kib) = m.split_once(' ').expect("code and peak");
    let code: i32 = code.parse().unwrap();
    (
        if code < 0 { -1 } else { code },
        kib.parse::<u64>().unwrap() * 1024,
        std::fs::read_to_string(out).unwrap(),
        std::fs::read_to_string(err).unwrap(),
    )
}

/// Events spread over 2,000 distinct hours, interleaved so that every hour stays open in the
/// partition's buffer: with a bound that holds them, one commit writes one file per hour and
/// the process stays near the bound (builders are not preallocated per hour); a bound below the
/// least ingest can keep is refused; rows larger than the bound's share force more commits, and
/// each hour's rows still land exactly once.
#[test]
fn messages_over_2000_hours_respect_the_memory_bound() {
    const HOURS: i64 = 2000;
    const N: i64 = 2 * HOURS;
    let s = Setup::new(1);
    let msgs: Vec<Message> = (0..N)
        .map(|i| {
            let ts = BASE_US - (i % HOURS) * 3_600_000_000;
            Message {
                key: "k".into(),
                payload: event(&format!("ev-{i}"), ts).into_bytes(),
                ts_us: ts,
            }
        })
        .collect();
    s.produce_gateway(&msgs);

    // 1. The least bound accepted (128 MiB) holds the rows as they really are.
    let bound: u64 = 128 << 20;
    let mut c = s.ingest();
    c.args(["--until-caught-up", "--flush-interval-ms", "600000"])
        .args(["--max-buffer-bytes", &bound.to_string()]);
    let (code, peak, stdout, stderr) = run_measured(c, s.dir.path());
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("consumed {N} = gateway_events {N} + flows 0 + quarantined 0; {HOURS} files in 1 commits")),
        "one commit, one file per hour: {stdout}"
    );
    // The debug binary with its libraries and librdkafka's threads stays under ~100 MiB here;
    // with builders preallocated per hour it needed several hundred MiB.
    let allowance: u64 = 128 << 20;
    eprintln!("peak RSS of ingest: {} MiB", peak >> 20);
    assert!(
        peak > 8 << 20,
        "{peak} bytes is not the peak of a running ingest"
    );
    assert!(
        peak <= bound + allowance,
        "peak RSS {} MiB > bound {} MiB + {} MiB",
        peak >> 20,
        bound >> 20,
        allowance >> 20
    );
    let facts = pyarrow(&s.warehouse());
    let ids: Vec<String> =
        serde_json::from_value(facts["gateway_events"]["event_ids"].clone()).unwrap();
    assert_eq!(ids.len() as i64, N);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len() as i64, N);
    let dates: HashSet<String> = msgs
        .iter()
        .map(|m| {
            chrono::DateTime::from_timestamp_micros(m.ts_us)
                .unwrap()
                .date_naive()
                .to_string()
        })
        .collect();
    assert_eq!(
        facts["gateway_events"]["dates"].as_array().unwrap().len(),
        dates.len()
    );

    // 2. A bound below the least ingest can keep is refused at start, naming both; nothing is
    // read or written.
    let wh2 = s.dir.path().join("warehouse-small-bound");
    let mut c = ingest_with(&s, &unique("grp-small"), &wh2, "4000");
    c.args(["--until-caught-up", "--max-buffer-bytes", "1048576"]);
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("max_buffer_bytes 1 MiB is below 128 MiB, the least ingest can keep to"),
        "{stderr}"
    );
    assert!(!wh2.join("gateway_events").exists());

    // 3. At that least bound, rows larger than its share (48 MiB reserved, 45 MiB of the rest
    // for rows): 24,000 events of ~3 KiB over 200 hours, interleaved. The bound forces
    // commits, each writes at most one file per hour it holds, and every event lands once.
    const WIDE_HOURS: i64 = 200;
    const WIDE: i64 = 24_000;
    let s3 = Setup::new(1);
    let long = |c: char| std::iter::repeat_n(c, 1000).collect::<String>();
    let (x, y) = (long('x'), long('y'));
    let wide: Vec<Message> = (0..WIDE)
        .map(|i| {
            let ts = BASE_US - (i % WIDE_HOURS) * 3_600_000_000;
            let e = event(&format!("ev-{i}-{x}"), ts)
                .replace("\"s-1\"", &format!("\"s-{i}-{y}\""))
                .replace(
                    "\"approval_ticket\":null",
                    &format!("\"approval_ticket\":\"t-{i}-{x}\""),
                );
            Message {
                key: "k".into(),
                payload: e.into_bytes(),
                ts_us: ts,
            }
        })
        .collect();
    s3.produce_gateway(&wide);
    let wh3 = s3.dir.path().join("warehouse-wide");
    let mut c = ingest_with(&s3, &unique("grp-wide"), &wh3, "4000");
    c.args(["--until-caught-up", "--flush-interval-ms", "600000"])
        .args(["--max-buffer-bytes", &bound.to_string()]);
    let (code, _, stdout, stderr) = run_measured(c, s3.dir.path());
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "consumed {WIDE} = gateway_events {WIDE} + flows 0 + quarantined 0"
        )),
        "{stdout}"
    );
    let (files, commits) = files_and_commits(&stdout).expect("summary line");
    assert!(commits >= 2, "the bound forced commits: {stdout}");
    assert!(
        files <= commits * WIDE_HOURS as u64 && files > WIDE_HOURS as u64,
        "at most one file per hour per commit, and hours written more than once: {stdout}"
    );
    let entries = crate::support::log(&wh3).files;
    assert_eq!(entries.len() as u64, files);
    let facts = pyarrow(&wh3);
    let ids: Vec<String> =
        serde_json::from_value(facts["gateway_events"]["event_ids"].clone()).unwrap();
    assert_eq!(ids.len() as i64, WIDE);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len() as i64, WIDE);
}

/// `N files in M commits` from the summary line.
fn files_and_commits(stdout: &str) -> Option<(u64, u64)> {
    let line = stdout.lines().find(|l| l.starts_with("ingest: consumed"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "files")?;
    let files = words
        .get(i.checked_sub(1)?)?
        .trim_start_matches(';')
        .parse()
        .ok()?;
    let commits = words.get(i + 2)?.parse().ok()?;
    Some((files, commits))
}

/// Run a command expected to give up: it exits non-zero (within the test's generous limit,
/// not a timing assertion) and its stderr names the problem.
fn expect_give_up(c: Command, needles: &[&str]) -> String {
    let mut p = Running::spawn(c);
    let st = p.wait(Duration::from_secs(120));
    let log = p.log();
    assert!(!st.success(), "exited {st:?}:\n{log}");
    for n in needles {
        assert!(log.contains(n), "no {n:?} in:\n{log}");
    }
    log
}

#[test]
fn a_topic_that_does_not_exist_ends_ingest_with_the_topic_named() {
    let dir = tempfile::tempdir().unwrap();
    let gw = unique("missing-gw");
    let fl = unique("missing-fl");
    let mut c = Command::new(bin());
    c.args(["ingest", "--brokers", &brokers(), "--group", &unique("grp")])
        .args(["--gateway-topic", &gw, "--flow-topic", &fl])
        .arg("--warehouse")
        .arg(dir.path().join("wh"))
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .args(["--session-timeout-ms", "6000", "--give-up-after-ms", "3000"])
        .env("FLOWAUDIT_LOG", "info,librdkafka=warn")
        .env_remove("FLOWAUDIT_CONFIG");
    let log = expect_give_up(c, &["does not exist", "give_up_after_ms = 3000"]);
    assert!(log.contains(&gw) || log.contains(&fl), "{log}");
}

#[test]
fn an_unknown_broker_host_ends_ingest_with_the_host_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(bin());
    c.args(["ingest", "--brokers", "kafka.flowaudit.invalid:9092"])
        .args(["--group", "g", "--until-caught-up"])
        .arg("--warehouse")
        .arg(dir.path().join("wh"))
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .args(["--give-up-after-ms", "3000"])
        .env("FLOWAUDIT_LOG", "info,librdkafka=off")
        .env_remove("FLOWAUDIT_CONFIG");
    expect_give_up(
        c,
        &[
            "kafka cannot be used",
            "does not resolve",
            "kafka.flowaudit.invalid",
        ],
    );
}

/// SASL against the test broker's plaintext listener: the broker refuses the handshake.
#[test]
fn refused_authentication_ends_ingest_with_the_reason() {
    let s = Setup::new(1);
    let cfg = s.dir.path().join("flowaudit.toml");
    std::fs::write(
        &cfg,
        "[ingest.kafka]\n\"security.protocol\" = \"sasl_plaintext\"\n\"sasl.mechanism\" = \"PLAIN\"\n\"sasl.username\" = \"auditor\"\n\"sasl.password\" = \"wrong\"\n",
    )
    .unwrap();
    let mut c = s.ingest();
    c.args(["--give-up-after-ms", "3000"])
        .env("FLOWAUDIT_CONFIG", &cfg)
        .env("FLOWAUDIT_LOG", "info,librdkafka=off");
    expect_give_up(c, &["kafka cannot be used", "refused authentication"]);
}

/// The broker goes away while ingest holds unwritten messages: after the grace period it writes
/// and records them, then exits non-zero saying so.
#[test]
fn a_broker_that_goes_away_ends_ingest_after_writing_what_it_holds() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut broker = start_tansu(&addr);
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        std::thread::sleep(Duration::from_millis(500));
        flowaudit_ingest::produce::ensure_topics(&addr, &["gone.gw", "gone.fl"], 1).unwrap();
        let msgs: Vec<Message> = (0..50)
            .map(|i| Message {
                key: "k".into(),
                payload: event(&format!("gone-{i}"), BASE_US).into_bytes(),
                ts_us: BASE_US,
            })
            .collect();
        flowaudit_ingest::produce::produce(&addr, "gone.gw", &msgs).unwrap();
        let cfg = dir.path().join("flowaudit.toml");
        std::fs::write(&cfg, "[ingest]\nprogress_interval_s = 1\n").unwrap();
        let mut c = Command::new(bin());
        c.args(["ingest", "--brokers", &addr, "--group", "g"])
            .args(["--gateway-topic", "gone.gw", "--flow-topic", "gone.fl"])
            .arg("--warehouse")
            .arg(&wh)
            .arg("--policy")
            .arg(repo("fixtures/policy"))
            .args([
                "--session-timeout-ms",
                "6000",
                "--flush-interval-ms",
                "600000",
            ])
            .args(["--give-up-after-ms", "3000"])
            .env("FLOWAUDIT_CONFIG", &cfg)
            .env("FLOWAUDIT_LOG", "info,librdkafka=off");
        let mut p = Running::spawn(c);
        p.wait_for("buffered=50", Duration::from_secs(60));
        let _ = broker.kill();
        let _ = broker.wait();
        let st = p.wait(Duration::from_secs(120));
        let log = p.log();
        assert!(!st.success(), "{log}");
        assert!(log.contains("kafka cannot be used"), "{log}");
        assert!(
            log.contains("the 50 messages consumed before were written and recorded"),
            "{log}"
        );
        assert_eq!(pyarrow(&wh)["gateway_events"]["rows"], 50);
        assert_eq!(table_rows(&wh, "gateway_events"), 50);
        assert_log_matches_files(&wh);
    }));
    let _ = broker.kill();
    let _ = broker.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// A topic written by a transactional producer (a commit marker after each transaction, the
/// last one just below the high watermark): `--until-caught-up` ends because it caught up, not
/// by the idle timeout, with every message ingested once. (Aborted transactions are left out:
/// Tansu delivers their records even to read_committed consumers.)
#[test]
fn until_caught_up_ends_on_a_transactional_topic() {
    let s = Setup::new(1);
    let lines: Vec<String> = (0..90)
        .map(|i| event(&format!("tx-{i}"), BASE_US))
        .collect();
    let file = s.dir.path().join("tx.jsonl");
    write_lines(&file, &lines);
    let b = brokers();
    let out = hostile(&[
        "produce-tx".as_ref(),
        b.as_ref(),
        s.gateway_topic.as_ref(),
        file.as_os_str(),
        "10".as_ref(),
    ]);
    let committed: usize = String::from_utf8(out).unwrap().trim().parse().unwrap();
    assert_eq!(committed, 90);

    // An idle timeout far longer than the test allows: only "caught up" can end the run.
    let mut c = ingest_with(&s, &s.group, &s.warehouse(), "600000");
    c.arg("--until-caught-up");
    let mut p = Running::spawn_with_stdout(c);
    let st = p.wait(Duration::from_secs(240));
    let log = p.log();
    assert!(st.success(), "{log}");
    // stdout is read by a thread: give it the summary's last line.
    for _ in 0..100 {
        if p.stdout().contains("table versions") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(log.contains("caught up with the topics"), "{log}");
    assert!(!log.contains("idle timeout"), "{log}");
    assert!(
        p.stdout()
            .contains("consumed 90 = gateway_events 90 + flows 0 + quarantined 0"),
        "{}",
        p.stdout()
    );
    let facts = pyarrow(&s.warehouse());
    let ids: HashSet<String> =
        serde_json::from_value(facts["gateway_events"]["event_ids"].clone()).unwrap();
    let expected: HashSet<String> = (0..90).map(|i| format!("tx-{i}")).collect();
    assert_eq!(ids, expected);
    assert_eq!(facts["gateway_events"]["rows"], 90);
}

/// The summary line's `consumed N` and `S already-recorded messages skipped`.
fn consumed_and_skipped(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("ingest: consumed"))
        .unwrap_or_else(|| panic!("no summary line: {stdout}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let consumed = words[2].parse().unwrap();
    let i = words.iter().position(|w| *w == "already-recorded").unwrap();
    (consumed, words[i - 1].parse().unwrap())
}

/// Issue 11: a consumer group that was used before (its Kafka offsets committed at the end of
/// the topic) with a fresh warehouse ingested nothing and exited 0. Each partition starts at the
/// warehouse's own position; with none, at the earliest offset Kafka holds.
#[test]
fn a_fresh_warehouse_with_a_used_group_ingests_the_whole_topic() {
    const N: i64 = 300;
    let s = Setup::new(3);
    let msgs: Vec<Message> = (0..N)
        .map(|i| {
            let ts = BASE_US + i * 1_000_000;
            Message {
                key: format!("k{}", i % 7),
                payload: event(&format!("ev-{i}"), ts).into_bytes(),
                ts_us: ts,
            }
        })
        .collect();
    s.produce_gateway(&msgs);
    let group = unique("grp-used");

    // The group is used with a first warehouse: Kafka's offsets end at the topic's end.
    let wh1 = s.dir.path().join("warehouse-1");
    let mut c = ingest_with(&s, &group, &wh1, "4000");
    c.arg("--until-caught-up");
    let (stdout, _) = run_ok(c);
    assert_eq!(consumed_and_skipped(&stdout), (N as u64, 0), "{stdout}");

    // The same group, a fresh warehouse: everything again, not nothing.
    let wh2 = s.dir.path().join("warehouse-2");
    let mut c = ingest_with(&s, &group, &wh2, "4000");
    c.arg("--until-caught-up");
    let (stdout, stderr) = run_ok(c);
    assert_eq!(
        consumed_and_skipped(&stdout),
        (N as u64, 0),
        "{stdout}\n{stderr}"
    );
    let facts = pyarrow(&wh2);
    let ids: HashSet<String> =
        serde_json::from_value(facts["gateway_events"]["event_ids"].clone()).unwrap();
    assert_eq!(ids.len() as i64, N);

    // A new group on the first warehouse starts at the warehouse's position: nothing is read
    // again (not read and skipped, either).
    let mut c = ingest_with(&s, &unique("grp-new"), &wh1, "4000");
    c.arg("--until-caught-up");
    let (stdout, _) = run_ok(c);
    assert_eq!(consumed_and_skipped(&stdout), (0, 0), "{stdout}");
    assert_eq!(table_rows(&wh1, "gateway_events"), N as u64);
}

/// Issue 11: `--warehouse s3://bucket/wh` was taken as a relative path and wrote a local
/// directory named `s3:`. A URL is refused, by every command, and nothing is created.
#[test]
fn a_warehouse_url_is_refused_not_written_locally() {
    let dir = tempfile::tempdir().unwrap();
    let policy = repo("fixtures/policy");
    let commands: Vec<Vec<&OsStr>> = vec![
        vec![
            "ingest".as_ref(),
            "--brokers".as_ref(),
            "127.0.0.1:9".as_ref(),
            "--policy".as_ref(),
            policy.as_os_str(),
            "--until-caught-up".as_ref(),
        ],
        vec!["verify".as_ref()],
        vec![
            "sql".as_ref(),
            "--policy".as_ref(),
            policy.as_os_str(),
            "-c".as_ref(),
            "SELECT 1".as_ref(),
        ],
        vec![
            "rules".as_ref(),
            "run".as_ref(),
            "--date".as_ref(),
            "2026-11-21".as_ref(),
            "--policy".as_ref(),
            policy.as_os_str(),
        ],
    ];
    for (i, args) in commands.into_iter().enumerate() {
        // Every command takes s3:// (tests in s3.rs) but no other scheme; the rule runner needs
        // a local state directory beside an S3 warehouse, and says so before touching anything.
        let (url, refusal) = if i < 3 {
            ("gs://bucket/wh", "the scheme \"gs\" is not supported")
        } else {
            ("s3://bucket/wh", "pass --state-dir DIR")
        };
        let out = Command::new(bin())
            .args(&args)
            .args(["--warehouse", url])
            .current_dir(dir.path())
            .env_remove("FLOWAUDIT_CONFIG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted a URL: {stderr}");
        assert!(stderr.contains(refusal), "{args:?}: {stderr}");
        let created: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(created.is_empty(), "{args:?} created {created:?}");
    }
}
