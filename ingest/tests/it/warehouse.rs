//! The warehouse protocol on Delta tables: offsets in the same commit as the files, a zombie's
//! commit refused, racing writers of one range, and a range that yields rows in two tables landing
//! exactly once in each when a writer stopped between its two commits.
use std::collections::BTreeMap;
use std::sync::mpsc::{channel, sync_channel};
use std::sync::{Arc, Mutex};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use flowaudit_ingest::batch::{buffer_message, Enricher, HourFiles, MessageLimits, Provenance};
use flowaudit_ingest::committer::{self, Counts, Job, Outcome};
use flowaudit_ingest::networks::Networks;
use flowaudit_ingest::schema::Table;
use flowaudit_ingest::warehouse::{self, Location, Warehouse};
use flowaudit_ingest::writer::ParquetSettings;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const TOPIC: &str = "gw";

fn event(offset: i64) -> String {
    format!(
        r#"{{"event_id":"ev-{offset}","ts":"2026-11-21T10:00:00Z","gateway_id":"gw-fra-1","employee_id":"e1","employee_country":"DE","role":"analyst","data_category":"public","action":"read","decision":"allow","session_id":"s","records":1,"bytes":1}}"#
    )
}

/// A job of offsets `first..=last` of partition 0; offsets for which `bad` holds are not JSON
/// (quarantined).
fn job(first: i64, last: i64, bad: impl Fn(i64) -> bool, epoch: u64) -> Job {
    let enricher = Enricher {
        geoip: None,
        networks: Networks::load(&crate::repo("fixtures/policy")).unwrap(),
    };
    let mut files: HourFiles = BTreeMap::new();
    let mut counts = Counts::default();
    for o in first..=last {
        let payload = if bad(o) {
            format!("not json {o}")
        } else {
            event(o)
        };
        let prov = Provenance {
            topic: TOPIC,
            partition: 0,
            offset: o,
            timestamp_ms: Some(1_795_255_200_000),
        };
        let mut new_bytes = 0;
        let r = buffer_message(
            &mut files,
            Table::GatewayEvents,
            payload.as_bytes(),
            &prov,
            MessageLimits {
                max_message_bytes: 1 << 20,
                quarantine_raw_max_bytes: 1 << 20,
            },
            &enricher,
            || 1_795_255_200_000_000,
            &mut new_bytes,
        );
        counts.msgs += 1;
        match r {
            None => counts.gateway += 1,
            Some(r) => {
                counts.quarantined += 1;
                *counts.reasons.entry(r.code.as_str()).or_default() += 1;
            }
        }
    }
    Job {
        primary: Table::GatewayEvents,
        topic: TOPIC.into(),
        partition: 0,
        epoch,
        files,
        first_offset: first,
        last_offset: last,
        counts,
        gap: None,
        last_message: None,
    }
}

/// A fresh warehouse: a temporary directory, or a new prefix in the test bucket of the S3 server
/// `make test` starts (scripts/with-s3.sh).
struct Wh {
    loc: Location,
    _dir: Option<tempfile::TempDir>,
}

impl Wh {
    fn local() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            loc: Location::Local(dir.path().to_path_buf()),
            _dir: Some(dir),
        }
    }

    fn s3(name: &str) -> Self {
        let bucket = std::env::var("FLOWAUDIT_TEST_S3")
            .expect("FLOWAUDIT_TEST_S3 is not set: run the tests with `make test` (it starts the S3 server)");
        let n: u64 = rand::random();
        Self {
            loc: Location::parse(&format!("{bucket}/{name}-{n:016x}")).unwrap(),
            _dir: None,
        }
    }

    fn both(name: &str) -> [Self; 2] {
        [Self::local(), Self::s3(name)]
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The bytes of `rel` (relative to the warehouse).
fn read(loc: &Location, rel: &str) -> bytes::Bytes {
    use object_store::ObjectStoreExt as _;
    let (store, prefix) = loc.store().unwrap();
    let path = rel.split('/').fold(prefix, |p, s| p.join(s));
    rt().block_on(async { store.get(&path).await.unwrap().bytes().await.unwrap() })
}

/// Every object under `rel` (relative to the warehouse), relative to the warehouse.
fn list(loc: &Location, rel: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let (store, prefix) = loc.store().unwrap();
    let path = rel.split('/').fold(prefix.clone(), |p, s| p.join(s));
    let metas: Vec<_> = rt()
        .block_on(store.list(Some(&path)).try_collect())
        .unwrap();
    metas
        .into_iter()
        .map(|m| {
            m.location
                .prefix_match(&prefix)
                .unwrap()
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect()
}

/// Delete `rel` (relative to the warehouse).
fn delete(loc: &Location, rel: &str) {
    use object_store::ObjectStoreExt as _;
    let (store, prefix) = loc.store().unwrap();
    let path = rel.split('/').fold(prefix, |p, s| p.join(s));
    rt().block_on(store.delete(&path)).unwrap();
}

/// Run the committer over `jobs` on `loc` (a new writer, as a new process would be).
fn commit_all(loc: &Location, jobs: Vec<Job>) -> Vec<Outcome> {
    let w = Warehouse::open(loc).unwrap();
    let w = Arc::new(Mutex::new(w));
    let (job_tx, job_rx) = sync_channel(jobs.len());
    let (out_tx, out_rx) = channel();
    for j in jobs {
        job_tx.send(j).unwrap();
    }
    drop(job_tx);
    committer::run(job_rx, out_tx, w, ParquetSettings::default(), None);
    out_rx.into_iter().map(|o| o.unwrap()).collect()
}

/// Run the committer over one job on `loc` (a new writer): its outcome, or why it refused.
fn commit_one(loc: &Location, j: Job) -> Result<Outcome, flowaudit_ingest::Error> {
    let w = Arc::new(Mutex::new(Warehouse::open(loc).unwrap()));
    let (job_tx, job_rx) = sync_channel(1);
    let (out_tx, out_rx) = channel();
    job_tx.send(j).unwrap();
    drop(job_tx);
    committer::run(job_rx, out_tx, w, ParquetSettings::default(), None);
    out_rx.into_iter().next().unwrap()
}

/// Every `kafka_offset` of `table`'s live files (as the log lists them), with its multiplicity.
fn offsets(loc: &Location, table: &str) -> BTreeMap<i64, usize> {
    let log = warehouse::read_log_blocking(loc).unwrap();
    let mut out = BTreeMap::new();
    for f in log.files.iter().filter(|f| f.table == table) {
        for b in ParquetRecordBatchReaderBuilder::try_new(read(loc, &f.path))
            .unwrap()
            .build()
            .unwrap()
        {
            let b = b.unwrap();
            let o = b
                .column_by_name("kafka_offset")
                .unwrap()
                .as_primitive::<Int64Type>();
            for v in o.values() {
                *out.entry(*v).or_default() += 1;
            }
        }
    }
    out
}

fn once(range: impl Iterator<Item = i64>) -> BTreeMap<i64, usize> {
    range.map(|o| (o, 1)).collect()
}

#[test]
fn commits_carry_their_offsets_evidence_and_a_chain() {
    for wh in Wh::both("chain") {
        let loc = &wh.loc;
        let out = commit_all(
            loc,
            vec![job(0, 9, |o| o % 5 == 0, 1), job(10, 19, |_| false, 1)],
        );
        assert!(
            out.iter().all(|o| matches!(o, Outcome::Committed { .. })),
            "both committed ({loc})"
        );
        let mut w = Warehouse::open(loc).unwrap();
        assert_eq!(
            w.next_offset(Table::GatewayEvents, TOPIC, 0).unwrap(),
            Some(20)
        );
        assert_eq!(w.recorded(Table::Quarantine, TOPIC, 0).unwrap(), Some(9));
        assert_eq!(w.next_offset(Table::GatewayEvents, TOPIC, 1).unwrap(), None);

        let log = warehouse::read_log_blocking(loc).unwrap();
        // Versions 0 (create) and the commits: gateway_events 1, 2; quarantine 1.
        let heads: BTreeMap<_, _> = log
            .heads
            .iter()
            .map(|h| (h.table.as_str(), h.version))
            .collect();
        assert_eq!(heads["gateway_events"], 2);
        assert_eq!(heads["quarantine"], 1);
        assert_eq!(heads["flows"], 0);
        for f in &log.files {
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(read(loc, &f.path)));
            assert_eq!(sha, f.sha256, "{}", f.path);
            assert_eq!((f.date.as_str(), f.hour.as_str()), ("2026-11-21", "10"));
            assert!(f.path.contains("/date=2026-11-21/hour=10/"), "{}", f.path);
        }
        let txns: Vec<_> = log
            .commits
            .iter()
            .filter(|c| c.table == "gateway_events")
            .flat_map(|c| c.txns.clone())
            .collect();
        assert_eq!(
            txns,
            vec![
                ("flowaudit:gateway_events:gw:0".to_string(), 9),
                ("flowaudit:gateway_events:gw:0".to_string(), 19)
            ]
        );
        assert_eq!(
            offsets(loc, "gateway_events"),
            once((1..20).filter(|o| o % 5 != 0 || *o >= 10))
        );
        assert_eq!(offsets(loc, "quarantine"), once([0, 5].into_iter()));

        // The chain covers the bytes of every commit file: rewriting one changes the head.
        if let Location::Local(dir) = loc {
            let before = log.heads_summary();
            let f = dir.join("gateway_events/_delta_log/00000000000000000001.json");
            let text = std::fs::read_to_string(&f).unwrap();
            // `stats` is JSON inside a JSON string: its quotes are escaped in the file.
            let edited = text.replace(r#"numRecords\":8"#, r#"numRecords\":9"#);
            assert_ne!(edited, text, "the edit applies");
            std::fs::write(&f, edited).unwrap();
            let after = warehouse::read_log_blocking(loc).unwrap().heads_summary();
            assert_ne!(before, after);
        }
    }
}

#[test]
fn a_zombie_writer_of_a_recorded_range_is_refused() {
    for wh in Wh::both("zombie") {
        let loc = &wh.loc;
        // The zombie opened the warehouse (and read its state) before the owner committed.
        let zombie = Warehouse::open(loc).unwrap();
        let out = commit_all(loc, vec![job(0, 9, |_| false, 1)]);
        assert!(matches!(out[0], Outcome::Committed { .. }));
        let zombie = Arc::new(Mutex::new(zombie));
        let (job_tx, job_rx) = sync_channel(2);
        let (out_tx, out_rx) = channel();
        job_tx.send(job(0, 14, |_| false, 7)).unwrap();
        job_tx.send(job(15, 19, |_| false, 7)).unwrap();
        drop(job_tx);
        committer::run(job_rx, out_tx, zombie, ParquetSettings::default(), None);
        let outs: Vec<_> = out_rx.into_iter().map(|o| o.unwrap()).collect();
        assert!(
            matches!(
                outs[0],
                Outcome::Stale {
                    recorded_last: 9,
                    ..
                }
            ),
            "the zombie's first commit is stale ({loc})"
        );
        assert!(
            matches!(outs[1], Outcome::Discarded),
            "the rest of its incarnation is discarded"
        );
        assert_eq!(offsets(loc, "gateway_events"), once(0..10));
        // Only committed files remain in the table's directory.
        let log = warehouse::read_log_blocking(loc).unwrap();
        let on_disk: Vec<_> = list(loc, "gateway_events")
            .into_iter()
            .filter(|p| !p.contains("_delta_log"))
            .collect();
        assert_eq!(on_disk.len(), log.files.len(), "{on_disk:?}");
    }
}

#[test]
fn racing_writers_of_one_range_commit_it_once() {
    // Eight writers commit the same range at once, ten times over: each time exactly one wins and
    // the range is in the table once (Delta's conflict check on the partition's txn app id, over
    // an exclusive create of the commit file: a hard link locally, If-None-Match on S3).
    for wh in Wh::both("race") {
        let loc = &wh.loc;
        let writers: Vec<_> = (0..8)
            .map(|_| Arc::new(Mutex::new(Warehouse::open(loc).unwrap())))
            .collect();
        for round in 0..10i64 {
            let (first, last) = (round * 10, round * 10 + 9);
            let barrier = Arc::new(std::sync::Barrier::new(writers.len()));
            let handles: Vec<_> = writers
                .iter()
                .map(|w| {
                    let w = w.clone();
                    let barrier = barrier.clone();
                    let j = job(first, last, |o| o % 7 == 0, round as u64 + 1);
                    std::thread::spawn(move || {
                        let (job_tx, job_rx) = sync_channel(1);
                        let (out_tx, out_rx) = channel();
                        job_tx.send(j).unwrap();
                        drop(job_tx);
                        barrier.wait();
                        committer::run(job_rx, out_tx, w, ParquetSettings::default(), None);
                        out_rx.recv().unwrap().unwrap()
                    })
                })
                .collect();
            let outs: Vec<Outcome> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let won = outs
                .iter()
                .filter(|o| matches!(o, Outcome::Committed { .. }))
                .count();
            assert_eq!(won, 1, "round {round} ({loc}): exactly one writer commits");
        }
        assert_eq!(
            offsets(loc, "gateway_events"),
            once((0..100).filter(|o| o % 7 != 0))
        );
        assert_eq!(
            offsets(loc, "quarantine"),
            once((0..100).filter(|o| o % 7 == 0))
        );
    }
}

#[test]
fn the_s3_server_refuses_a_second_create_of_one_key() {
    // The warehouse's commits depend on it: two writers creating the same log version.
    use object_store::{ObjectStoreExt as _, PutMode, PutOptions};
    let wh = Wh::s3("create");
    let (store, prefix) = wh.loc.store().unwrap();
    let key = prefix
        .join("t")
        .join("_delta_log")
        .join("00000000000000000000.json");
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    rt().block_on(async {
        store
            .put_opts(&key, bytes::Bytes::from_static(b"first").into(), create())
            .await
            .unwrap();
        let second = store
            .put_opts(&key, bytes::Bytes::from_static(b"second").into(), create())
            .await;
        assert!(
            matches!(second, Err(object_store::Error::AlreadyExists { .. })),
            "{second:?}"
        );
        let kept = store.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(&kept[..], b"first");
    });
}

#[test]
fn a_range_in_two_tables_lands_once_in_each_after_a_stop_between_its_commits() {
    for wh in Wh::both("two-tables") {
        let loc = &wh.loc;
        let bad = |o: i64| o % 3 == 0;
        let out = commit_all(loc, vec![job(0, 9, bad, 1)]);
        assert!(matches!(out[0], Outcome::Committed { .. }));
        // A writer killed after its quarantine commit and before its primary commit leaves
        // exactly this: remove the primary commit (and its files) as if it had never been made.
        delete(loc, "gateway_events/_delta_log/00000000000000000001.json");
        for f in list(loc, "gateway_events/date=2026-11-21") {
            delete(loc, &f);
        }
        let mut w = Warehouse::open(loc).unwrap();
        assert_eq!(w.next_offset(Table::GatewayEvents, TOPIC, 0).unwrap(), None);
        assert_eq!(w.recorded(Table::Quarantine, TOPIC, 0).unwrap(), Some(9));
        drop(w);
        // The next writer reads the partition again from the start, in a range that goes further.
        let out = commit_all(loc, vec![job(0, 14, bad, 1)]);
        let Outcome::Committed { counts, .. } = &out[0] else {
            panic!("committed ({loc})");
        };
        // 0, 3, 6, 9 were quarantined and recorded before: not written again, and counted.
        assert_eq!(counts.already_recorded, 4);
        assert_eq!(counts.quarantined, 1, "only 12 is new in quarantine");
        assert_eq!(counts.msgs, 11);
        assert_eq!(counts.gateway + counts.quarantined, counts.msgs);
        assert_eq!(
            offsets(loc, "gateway_events"),
            once((0..15).filter(|o| !bad(*o)))
        );
        assert_eq!(
            offsets(loc, "quarantine"),
            once((0..15).filter(|o| bad(*o)))
        );
    }
}

/// The same stop between the two commits, then a writer that classifies the range otherwise
/// (other quarantine limits, another version): dropping what the earlier commit quarantined
/// would put an offset in two tables or in none, so it refuses, naming the offsets, and writes
/// nothing.
#[test]
fn a_writer_that_classifies_a_half_committed_range_otherwise_refuses_it() {
    let wh = Wh::local();
    let loc = &wh.loc;
    let out = commit_all(loc, vec![job(0, 9, |o| o % 3 == 0, 1)]);
    assert!(matches!(out[0], Outcome::Committed { .. }));
    delete(loc, "gateway_events/_delta_log/00000000000000000001.json");
    for f in list(loc, "gateway_events/date=2026-11-21") {
        delete(loc, &f);
    }
    let e = commit_one(loc, job(0, 14, |o| o % 2 == 0, 1))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("offsets 0..=9: an interrupted earlier commit put 4 of them in quarantine and this writer would put 5 there (only the earlier: [3, 9]; only this one: [2, 4, 8])")
            && e.contains("must classify messages alike"),
        "{e}"
    );
    // A writer that quarantines nothing of the range (a larger limit) is refused too.
    let e = commit_one(loc, job(0, 14, |_| false, 1))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("put 4 of them in quarantine and this writer would put 0 there (only the earlier: [0, 3, 6, 9]; only this one: [])"),
        "{e}"
    );
    // Nothing was written: quarantine as the earlier commit left it, gateway_events empty.
    assert_eq!(offsets(loc, "quarantine"), once([0, 3, 6, 9].into_iter()));
    assert!(offsets(loc, "gateway_events").is_empty());
}

/// The stop between the two commits, then retention removes the range before the restart: the
/// gap recorded over it counts the rows the interrupted commit quarantined inside it, so every
/// offset there is still in exactly one place (the rows in the range = the messages recorded).
#[test]
fn a_gap_over_a_half_committed_range_counts_what_was_quarantined_in_it() {
    let wh = Wh::local();
    let loc = &wh.loc;
    commit_all(loc, vec![job(0, 9, |o| o % 3 == 0, 1)]);
    delete(loc, "gateway_events/_delta_log/00000000000000000001.json");
    for f in list(loc, "gateway_events/date=2026-11-21") {
        delete(loc, &f);
    }
    let gap = Job {
        primary: Table::GatewayEvents,
        topic: TOPIC.into(),
        partition: 0,
        epoch: 1,
        files: BTreeMap::new(),
        first_offset: 0,
        last_offset: 19,
        counts: Counts::default(),
        gap: Some("offsets no longer in Kafka".into()),
        last_message: None,
    };
    let out = commit_all(loc, vec![gap]);
    assert!(matches!(out[0], Outcome::Committed { .. }));
    let log = warehouse::read_log_blocking(loc).unwrap();
    let g = log
        .commits
        .iter()
        .filter(|c| c.table == "gateway_events")
        .filter_map(|c| c.meta.clone())
        .find(|m| m.gap.is_some())
        .expect("the gap's commit");
    assert_eq!((g.covers_first_offset, g.covers_last_offset), (0, 19));
    assert_eq!(
        g.messages, 4,
        "0, 3, 6 and 9, quarantined before the offsets left Kafka"
    );
    assert_eq!(offsets(loc, "quarantine"), once([0, 3, 6, 9].into_iter()));
}

#[test]
fn warehouse_locations_parse_or_are_refused() {
    assert_eq!(
        Location::parse("/tmp/wh").unwrap(),
        Location::Local("/tmp/wh".into())
    );
    assert_eq!(
        Location::parse("file:///tmp/wh").unwrap(),
        Location::Local("/tmp/wh".into())
    );
    match Location::parse("s3://bucket/a/b").unwrap() {
        Location::S3(u) => assert_eq!(u.as_str(), "s3://bucket/a/b/"),
        other => panic!("{other:?}"),
    }
    for bad in ["gs://bucket/x", "s3:///nobucket", "http://x/y"] {
        let e = Location::parse(bad).unwrap_err().to_string();
        assert!(e.contains(bad), "{e}");
    }
}
