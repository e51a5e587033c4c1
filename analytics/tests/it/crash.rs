//! kill -9 at random moments while data flows; after a final run every event is present exactly
//! once.
//!
//! The moments are drawn from a seeded generator. The test prints its seed
//! (`kill -9 test: seed N (replay with FLOWAUDIT_CRASH_SEED=N)`, shown by cargo when the test
//! fails, or always with `-- --nocapture`) and takes one from `FLOWAUDIT_CRASH_SEED` to replay
//! the same kill delays:
//!
//! ```text
//! FLOWAUDIT_CRASH_SEED=1234 scripts/with-broker.sh PORT cargo test -p flowaudit-analytics --test it crash
//! ```
//!
//! The seed fixes the delays between a process starting to record and its kill; where in its
//! work each kill lands also depends on the broker's and the disk's timing, so a replay repeats
//! the schedule, not every instruction.
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowaudit_ingest::generate::Message;
use rand::{Rng, SeedableRng};

use crate::support::*;

fn event(id: &str, i: u64) -> Message {
    let ts_us = 1_795_255_200_000_000 + (i as i64) * 37_000_000; // 2026-11-21T10:00Z onwards, across hours
    let payload = serde_json::json!({
        "event_id": id, "ts": flowaudit_ingest::decode::fmt_us(ts_us), "gateway_id": format!("gw-{}", i % 3),
        "employee_id": format!("e{}", 1000 + i % 40), "employee_country": "DE", "role": "analyst",
        "data_category": "allowable", "action": "read", "decision": "allow", "approval_ticket": null,
        "session_id": format!("s-{}", i / 5), "records": i % 100, "bytes": i * 10, "dst_ip": "31.10.0.1"
    });
    Message {
        key: format!("gw-{}", i % 3),
        payload: serde_json::to_vec(&payload).unwrap(),
        ts_us,
    }
}

/// The seed of the kill schedule: `FLOWAUDIT_CRASH_SEED` when set (to replay a run), otherwise
/// a fresh one from the clock and the process id.
fn crash_seed() -> u64 {
    match std::env::var("FLOWAUDIT_CRASH_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("FLOWAUDIT_CRASH_SEED={s:?} is not an unsigned integer")),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ ((std::process::id() as u64) << 32)
        }
    }
}

#[test]
fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    kill_9_rounds(Setup::new(4));
}

/// The same with the warehouse on the S3 test server: commits are conditional PUTs, files are
/// uploaded before their commit, and a killed writer's staged and uploaded-but-uncommitted
/// files are left behind unreferenced.
#[test]
fn kill_9_on_an_s3_warehouse_loses_and_duplicates_nothing() {
    kill_9_rounds(Setup::on_s3(4));
}

fn kill_9_rounds(s: Setup) {
    let produced = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (topic, produced, stop) = (s.gateway_topic.clone(), produced.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<Message> = (i..i + 400)
                    .map(|n| event(&format!("crash-{n:07}"), n))
                    .collect();
                flowaudit_ingest::produce::produce(&brokers(), &topic, &batch).unwrap();
                produced
                    .lock()
                    .unwrap()
                    .extend((i..i + 400).map(|n| format!("crash-{n:07}")));
                i += 400;
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };

    let seed = crash_seed();
    eprintln!("kill -9 test: seed {seed} (replay with FLOWAUDIT_CRASH_SEED={seed})");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // Progress: commits in the gateway table's Delta log.
    let size = || s.commits("gateway_events");
    let mut kills_after_progress = 0;
    for round in 0..12 {
        let mut c = s.ingest();
        c.args(["--flush-interval-ms", "150", "--max-file-rows", "300"]);
        let mut p = Running::spawn(c);
        // Let it join and start recording, then kill it at a random moment of its work.
        let before = size();
        let t = Instant::now();
        while size() == before && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if size() > before {
            kills_after_progress += 1;
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..1200)));
        p.child.kill().unwrap(); // SIGKILL
        let st = p.wait(Duration::from_secs(10));
        assert!(
            !st.success(),
            "round {round} (seed {seed}): the process should have been killed"
        );
    }
    stop.store(true, Ordering::Relaxed);
    producer.join().unwrap();
    assert!(
        kills_after_progress >= 10,
        "only {kills_after_progress} kills landed while data was being recorded (seed {seed})"
    );

    let mut c = s.ingest();
    c.arg("--until-caught-up");
    run_ok(c);

    let expected: BTreeSet<String> = produced.lock().unwrap().iter().cloned().collect();
    let facts = s.facts();
    let ids: Vec<String> =
        serde_json::from_value(facts["gateway_events"]["event_ids"].clone()).unwrap();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(
        ids.len(),
        unique.len(),
        "{} duplicate rows (seed {seed})",
        ids.len() - unique.len()
    );
    let missing: Vec<_> = expected.difference(&unique).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} events lost, e.g. {missing:?} (seed {seed})",
        expected.len() - unique.len()
    );
    assert_eq!(unique, expected, "seed {seed}");
    assert_eq!(facts["gateway_events"]["provenance_unique"], true);
    // Every file's SHA-256 and rows, every offset in exactly one row, each commit's range whole.
    let v = flowaudit_analytics::verify::verify(&s.location());
    assert!(v.problems.is_empty(), "seed {seed}: {:?}", v.problems);
    let staging_root = match &s.s3 {
        None => {
            assert_log_matches_files(&s.warehouse());
            s.warehouse().join("_staging")
        }
        Some(_) => s.dir.path().join("flowaudit-staging"),
    };
    let staging = std::fs::read_dir(staging_root)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .count();
    assert!(
        staging <= 1,
        "dead writers' staging directories are cleaned up ({staging} left)"
    );
}
