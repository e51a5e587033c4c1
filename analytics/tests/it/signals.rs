//! SIGTERM flushes and records what is buffered and exits 0; a broker that is not there yet is
//! retried (and said so in the log) until it comes.
use std::time::Duration;

use flowaudit_ingest::generate::Message;

use crate::support::*;

fn events(n: usize, prefix: &str) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let p = format!(
                r#"{{"event_id":"{prefix}-{i}","ts":"2026-11-21T12:00:00Z","gateway_id":"gw-fra-1","employee_id":"e1001","employee_country":"DE","role":"analyst","data_category":"public","action":"query","decision":"allow","session_id":"s","records":1,"bytes":1}}"#
            );
            Message { key: format!("{}", i % 7), payload: p.into_bytes(), ts_us: 1_795_262_400_000_000 }
        })
        .collect()
}

#[test]
fn sigterm_writes_and_records_the_buffer_then_exits_zero() {
    sigterm(Setup::new(2));
}

#[test]
fn sigterm_on_an_s3_warehouse_writes_and_records_the_buffer_then_exits_zero() {
    sigterm(Setup::on_s3(2));
}

fn sigterm(s: Setup) {
    s.produce_gateway(&events(1000, "term"));
    // Configured through flowaudit.toml: nothing is written by age, progress every second.
    let cfg = s.dir.path().join("flowaudit.toml");
    std::fs::write(
        &cfg,
        "[ingest]\nflush_interval_ms = 600000\nprogress_interval_s = 1\n",
    )
    .unwrap();
    let mut c = s.ingest();
    c.arg("--config").arg(&cfg);
    let mut p = Running::spawn(c);
    p.wait_for("buffered=1000 ", Duration::from_secs(60));
    // The tables exist from the start (created empty); no row is recorded before the signal.
    assert_eq!(
        s.rows("gateway_events"),
        0,
        "nothing written before the signal"
    );
    p.signal(libc::SIGTERM);
    let st = p.wait(Duration::from_secs(30));
    assert!(st.success(), "exit status {st:?}\n{}", p.log());
    assert!(p.log().contains("shutdown requested"), "{}", p.log());
    let facts = s.facts();
    assert_eq!(facts["gateway_events"]["rows"], 1000);
    assert_eq!(facts["gateway_events"]["provenance_unique"], true);
}

#[test]
fn ingest_retries_until_the_broker_comes_up() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let mut c = std::process::Command::new(bin());
    c.args([
        "ingest",
        "--brokers",
        &addr,
        "--group",
        "g",
        "--gateway-topic",
        "late.gw",
        "--flow-topic",
        "late.fl",
    ])
    .arg("--warehouse")
    .arg(dir.path().join("wh"))
    .arg("--policy")
    .arg(repo("fixtures/policy"))
    .args([
        "--until-caught-up",
        "--session-timeout-ms",
        "6000",
        "--idle-ms",
        "4000",
    ])
    .env("FLOWAUDIT_LOG", "info");
    let mut p = Running::spawn(c);
    p.wait_for("kafka client error", Duration::from_secs(30));
    assert!(p.log().contains("retrying"), "{}", p.log());
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "ingest keeps running while the broker is down"
    );

    let mut broker = start_tansu(&addr);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        std::thread::sleep(Duration::from_millis(500));
        flowaudit_ingest::produce::ensure_topics(&addr, &["late.gw", "late.fl"], 1).unwrap();
        flowaudit_ingest::produce::produce(&addr, "late.gw", &events(50, "late")).unwrap();
        let st = p.wait(Duration::from_secs(120));
        assert!(st.success(), "{}", p.log());
        assert_eq!(
            pyarrow(&dir.path().join("wh"))["gateway_events"]["rows"],
            50
        );
    }));
    let _ = broker.kill();
    let _ = broker.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
