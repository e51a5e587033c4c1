//! Gaps are evidence, never silence: a range of a partition that Kafka no longer holds when ingest
//! reads it (retention, an offset reset) is recorded in the warehouse as a gap, and reading goes
//! on from the earliest offset Kafka holds. The broker is librdkafka's in-process mock cluster,
//! which keeps at most 5 MiB per partition and drops the oldest data beyond that by moving the
//! partition's low watermark, as retention does.
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use flowaudit_ingest::config::IngestSettings;
use flowaudit_ingest::generate::Message;
use flowaudit_ingest::warehouse::{self, Location};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::ClientConfig;

/// `n` messages of 1 KiB that do not compress (they are quarantined: not JSON).
fn noise(from: u64, n: u64) -> Vec<Message> {
    (from..from + n)
        .map(|i| Message {
            key: format!("k{i}"),
            payload: (0..1024).map(|_| rand::random::<u8>()).collect(),
            ts_us: 1_795_255_200_000_000 + i as i64,
        })
        .collect()
}

fn low_watermark(brokers: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    c.fetch_watermarks(topic, 0, std::time::Duration::from_secs(5))
        .unwrap()
        .0
}

/// One `--until-caught-up` ingest of the topics `gw` and `fl` at `brokers` into `warehouse`.
fn ingest(
    brokers: &str,
    warehouse: &std::path::Path,
    group: &str,
    idle_ms: u64,
) -> flowaudit_ingest::Result<flowaudit_ingest::consumer::IngestSummary> {
    let cfg = IngestSettings {
        brokers: Some(brokers.to_string()),
        group: Some(group.into()),
        gateway_topic: Some("gw".into()),
        flow_topic: Some("fl".into()),
        warehouse: Some(warehouse.to_path_buf()),
        policy: Some(crate::repo("fixtures/policy")),
        until_caught_up: Some(true),
        session_timeout_ms: Some(6000),
        idle_ms: Some(idle_ms),
        flush_interval_ms: Some(1000),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    flowaudit_ingest::consumer::run(&cfg, Arc::new(AtomicBool::new(false)))
}

#[test]
fn a_range_lost_to_retention_is_recorded_as_a_gap_and_reading_goes_on() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    for t in ["gw", "fl"] {
        cluster.create_topic(t, 1, 1).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let run = || ingest(&brokers, dir.path(), "gaps", 3000).unwrap();
    flowaudit_ingest::produce::produce(&brokers, "gw", &noise(0, 100)).unwrap();
    let first = run();
    assert_eq!(first.consumed, 100);
    assert_eq!(first.gaps, 0);
    // More than the partition keeps: the oldest data goes, past what the warehouse recorded.
    flowaudit_ingest::produce::produce(&brokers, "gw", &noise(100, 7000)).unwrap();
    let low = low_watermark(&brokers, "gw");
    assert!(low > 100, "the mock cluster moved the low watermark: {low}");
    let second = run();
    assert_eq!(second.gaps, 1, "{second:?}");
    assert_eq!(second.gap_offsets, (low - 100) as u64);
    assert_eq!(second.consumed, (7100 - low) as u64);

    let log = warehouse::read_log_blocking(&Location::Local(dir.path().to_path_buf())).unwrap();
    let gaps = log.gaps();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let g = &gaps[0];
    assert_eq!(
        (g.table.as_str(), g.topic.as_str(), g.partition),
        ("gateway_events", "gw", 0)
    );
    assert_eq!((g.first_offset, g.last_offset), (100, low - 1));
    assert_eq!(g.reason, "not_in_kafka");
    // The gap's commit moved the partition's position over the range, with no files.
    let c = log
        .commits
        .iter()
        .find(|c| c.table == "gateway_events" && c.version == g.version)
        .unwrap();
    assert_eq!(c.adds, 0);
    assert_eq!(
        c.txns,
        vec![("flowaudit:gateway_events:gw:0".to_string(), low - 1)]
    );
    // Every offset is in a row or in the gap, once.
    let rows: u64 = log.files.iter().map(|f| f.rows).sum();
    assert_eq!(rows, 100 + (7100 - low) as u64);
    // A third run finds nothing new and records no second gap.
    let third = run();
    assert_eq!((third.consumed, third.gaps), (0, 0));
}

/// Issue 11: a topic deleted and created again (here: the same topic names on a new cluster)
/// holds fewer offsets than the warehouse recorded. Kafka answers the recorded position with
/// "offset out of range", librdkafka resets to the earliest offset, and the new messages, below
/// the position, were skipped as already recorded: nothing written, no error. Their offsets are
/// the recorded rows' offsets, so ingest stops and says why, and writes nothing of them.
#[test]
fn a_recreated_topic_with_fewer_offsets_stops_ingest_instead_of_skipping_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = |brokers: &str| ingest(brokers, dir.path(), "recreated", 5000);
    let cluster = |n: u64| {
        let c = MockCluster::new(1).unwrap();
        for t in ["gw", "fl"] {
            c.create_topic(t, 1, 1).unwrap();
        }
        flowaudit_ingest::produce::produce(&c.bootstrap_servers(), "gw", &noise(0, n)).unwrap();
        c
    };
    let first = cluster(100);
    assert_eq!(run(&first.bootstrap_servers()).unwrap().consumed, 100);
    drop(first);

    let second = cluster(10);
    let err = run(&second.bootstrap_servers())
        .expect_err("the recreated topic's messages were taken for recorded ones")
        .to_string();
    assert!(
        err.contains("gw/0") && err.contains("recreated") && err.contains("100"),
        "the error names the partition, the position and the cause: {err}"
    );
    let log = warehouse::read_log_blocking(&Location::Local(dir.path().to_path_buf())).unwrap();
    let rows: u64 = log.files.iter().map(|f| f.rows).sum();
    assert_eq!(rows, 100, "nothing of the new topic is written");
    assert!(log.gaps().is_empty(), "and it is not a gap");
}

/// Issue 11: a topic deleted, created again and refilled *past* the recorded position (here: the
/// same topic names on a new cluster, with more messages) puts no offset out of range, so
/// nothing above catches it: its messages below the position were skipped as already recorded,
/// silently. Each commit records a witness of its last message (timestamp, length, SHA-256),
/// and on assignment ingest reads the message at that offset again: another message there stops
/// ingest, naming the offset and both messages; the same message there (the topic as it was)
/// lets it go on from the position.
#[test]
fn a_recreated_topic_refilled_past_the_position_stops_ingest_naming_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let loc = Location::Local(dir.path().to_path_buf());
    let run = |brokers: &str| ingest(brokers, dir.path(), "refilled", 5000);
    let cluster = |msgs: &[Message]| {
        let c = MockCluster::new(1).unwrap();
        for t in ["gw", "fl"] {
            c.create_topic(t, 1, 1).unwrap();
        }
        flowaudit_ingest::produce::produce(&c.bootstrap_servers(), "gw", msgs).unwrap();
        c
    };
    let mut kept = noise(0, 100);
    let first = cluster(&kept);
    assert_eq!(run(&first.bootstrap_servers()).unwrap().consumed, 100);
    drop(first);
    let last = warehouse::read_log_blocking(&loc)
        .unwrap()
        .commits
        .into_iter()
        .filter(|c| c.table == "gateway_events")
        .filter_map(|c| c.meta)
        .next_back()
        .expect("a commit of gateway_events");
    let w = last
        .last_message
        .expect("the commit records its last message");
    assert_eq!((w.offset, w.bytes), (99, 1024));
    assert_eq!(w.timestamp_ms, Some(kept[99].ts_us / 1000));
    assert_eq!(
        w.sha256,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&kept[99].payload))
    );

    // The same messages, then more: the message at offset 99 is the one recorded.
    kept.extend(noise(100, 50));
    let second = cluster(&kept);
    let s = run(&second.bootstrap_servers()).unwrap();
    assert_eq!((s.consumed, s.gaps), (50, 0), "{s:?}");
    drop(second);

    // Other messages, past the position: offset 149 holds another message.
    let third = cluster(&noise(1000, 200));
    let err = run(&third.bootstrap_servers())
        .expect_err("the refilled topic's messages were taken for recorded ones")
        .to_string();
    assert!(
        err.contains("gw/0")
            && err.contains("offset 149 is not the one the warehouse recorded")
            && err.contains(&hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                &kept[149].payload
            ))),
        "the error names the partition, the offset and the recorded message: {err}"
    );
    let log = warehouse::read_log_blocking(&loc).unwrap();
    let rows: u64 = log.files.iter().map(|f| f.rows).sum();
    assert_eq!(rows, 150, "nothing of the new topic is written");
    assert!(log.gaps().is_empty(), "and it is not a gap");
}
