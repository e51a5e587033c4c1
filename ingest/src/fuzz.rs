//! Fuzz targets of the ingest library, as plain functions of the fuzzer's bytes.
//!
//! The same functions run in two places: the `afl` binaries of `fuzz/` (coverage-guided, `make
//! fuzz`) and the corpus replay in `tests/it/fuzz_corpus.rs` (every file of
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`, on every `make test`). Each function
//! returns normally for any input, accepted or not; it panics only when an invariant is broken,
//! and a panic is what both the fuzzer and the replay report. docs/fuzzing.md has the method.
//!
//! [`flows`] first checks that the flow decoder's fast path reads each message as serde does,
//! wherever it reads it ([`crate::flow::check_fast_path`]).
//!
//! The message targets ([`gateway`], [`flows`]) push their input through the function the Kafka
//! consumer calls for each message ([`crate::batch::buffer_message`]: size check, Kafka
//! timestamp check, decoder, then one row in the buffer of its table and hour, or a quarantine
//! row with its reason), and finish the buffers into record batches of the tables' schemas. They
//! check that every message became exactly one row (rows + quarantined = messages), each in the
//! file of its own date and hour, that accepted rows keep the decoders' promises, and that every
//! quarantine row carries a reason code and a non-empty reason.
use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};

use crate::batch::{buffer_message, Enricher, HourFiles, MessageLimits, Provenance};
use crate::decode::{self, MAX_EVENT_TIME_US, MIN_EVENT_TIME_US};
use crate::geoip::GeoIp;
use crate::networks::Networks;
use crate::schema::Table;
use crate::warehouse;

/// The consumer's default `max_message_bytes` and `quarantine_raw_max_bytes`.
const MAX_MESSAGE_BYTES: usize = 1 << 20;
const QUARANTINE_RAW_MAX_BYTES: usize = 1 << 20;

/// Kafka message timestamps given to the messages of one input in turn. A producer sets
/// CreateTime to anything it likes, so besides "none" and a plausible time in milliseconds they
/// include one in nanoseconds and the extremes.
pub const KAFKA_TIMESTAMPS_MS: [Option<i64>; 6] = [
    None,
    Some(1_795_255_200_000),
    Some(1_795_255_200_000_000_000),
    Some(i64::MAX),
    Some(i64::MIN),
    Some(-1),
];

/// The partition time of a quarantined message when its Kafka timestamp is unusable (the consumer
/// uses the wall clock; a fixed time keeps the harness deterministic).
const NOW_US: i64 = 1_795_255_200_000_000;

/// Enrichment as in the tests and the demo: the fixtures' networks and CSV GeoIP ranges.
fn enricher() -> &'static Enricher {
    static E: OnceLock<Enricher> = OnceLock::new();
    E.get_or_init(|| {
        let networks: Networks = toml::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/policy/networks.toml"
        )))
        .expect("fixtures/policy/networks.toml parses");
        let geoip = GeoIp::from_bytes(
            Path::new("fixtures/geoip/ranges.csv"),
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../fixtures/geoip/ranges.csv"
            ))
            .to_vec(),
        )
        .expect("fixtures/geoip/ranges.csv loads");
        Enricher {
            geoip: Some(geoip),
            networks,
        }
    })
}

/// The messages of one input: the whole input as one message and, when it has several lines,
/// each line as a message of its own (so JSON-lines files are corpus entries as they are, and a
/// message may still contain newlines).
fn messages(data: &[u8]) -> Vec<&[u8]> {
    let mut out = vec![data];
    if data.contains(&b'\n') {
        out.extend(data.split(|b| *b == b'\n'));
    }
    out
}

/// A gateway event topic's messages, as the consumer handles them.
pub fn gateway(data: &[u8]) {
    consume(Table::GatewayEvents, data)
}

/// A flow topic's messages (flowaudit, goflow2 and Zeek conn.log JSON), as the consumer handles
/// them.
pub fn flows(data: &[u8]) {
    for payload in messages(data) {
        crate::flow::check_fast_path(payload);
    }
    consume(Table::Flows, data)
}

fn consume(target: Table, data: &[u8]) {
    let enr = enricher();
    let msgs = messages(data);
    let limits = MessageLimits {
        max_message_bytes: MAX_MESSAGE_BYTES,
        quarantine_raw_max_bytes: QUARANTINE_RAW_MAX_BYTES,
    };
    let mut files = HourFiles::new();
    let mut rejected = 0usize;
    for (i, payload) in msgs.iter().enumerate() {
        let prov = Provenance {
            topic: target.name(),
            partition: 0,
            offset: i as i64,
            timestamp_ms: KAFKA_TIMESTAMPS_MS[i % KAFKA_TIMESTAMPS_MS.len()],
        };
        let mut new_bytes = 0;
        let before: usize = files.values().map(|r| r.rows).sum();
        let reject = buffer_message(
            &mut files,
            target,
            payload,
            &prov,
            limits,
            enr,
            || NOW_US,
            &mut new_bytes,
        );
        assert_eq!(
            files.values().map(|r| r.rows).sum::<usize>(),
            before + 1,
            "a message did not become exactly one row"
        );
        if let Some(r) = reject {
            rejected += 1;
            assert!(
                !r.detail.trim().is_empty(),
                "a reject without a reason: {r:?}"
            );
        }
    }
    let (mut good, mut bad) = (0, 0);
    for ((table, date, hour), mut rows) in files {
        let batch = rows.finish().expect("buffered rows finish into a batch");
        // Every row is in the file of its own date and hour.
        let ts = batch
            .column_by_name("ts")
            .expect("ts column")
            .as_primitive::<TimestampMicrosecondType>();
        for t in ts.iter() {
            assert_eq!(decode::date_hour(t.expect("ts is not null")), (date, hour));
        }
        if table == Table::Quarantine {
            check_quarantine(&batch, target, &msgs);
            bad += batch.num_rows();
        } else {
            assert_eq!(table, target);
            check_times(&batch);
            check_rows(&batch, table);
            good += batch.num_rows();
        }
    }
    assert_eq!(good + bad, msgs.len(), "rows + quarantined != messages");
    assert_eq!(bad, rejected);
}

/// What the decoders promise about an accepted row: required strings are present, non-empty
/// and bounded; counts are not negative; ports are ports; a country is two capital letters.
fn check_rows(batch: &RecordBatch, table: Table) {
    let strings = |name: &str| {
        batch
            .column_by_name(name)
            .expect(name)
            .as_string::<i32>()
            .clone()
    };
    let ints = |name: &str| {
        batch
            .column_by_name(name)
            .expect(name)
            .as_primitive::<Int64Type>()
            .clone()
    };
    let (required, counts): (&[&str], &[&str]) = match table {
        Table::GatewayEvents => (
            &[
                "event_id",
                "gateway_id",
                "employee_id",
                "role",
                "session_id",
            ],
            &["records", "bytes"],
        ),
        _ => (&["protocol"], &["bytes", "packets"]),
    };
    for name in required {
        for v in strings(name).iter() {
            let v = v.expect("a required string is not null");
            assert!(
                !v.trim().is_empty() && v.len() <= decode::MAX_STRING_BYTES,
                "{name}"
            );
        }
    }
    for name in counts {
        assert!(ints(name).iter().flatten().all(|n| n >= 0), "{name}");
    }
    if table == Table::GatewayEvents {
        for c in strings("employee_country").iter().flatten() {
            assert!(
                c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()),
                "{c}"
            );
        }
    } else {
        for name in ["src_port", "dst_port"] {
            let ports = batch
                .column_by_name(name)
                .expect(name)
                .as_primitive::<arrow::datatypes::Int32Type>();
            assert!(
                ports.iter().flatten().all(|p| (0..=65535).contains(&p)),
                "{name}"
            );
        }
    }
}

/// Every accepted row's event time lies in the accepted range (it decides the partition).
fn check_times(batch: &RecordBatch) {
    let ts = batch
        .column_by_name("ts")
        .expect("ts column")
        .as_primitive::<TimestampMicrosecondType>();
    for t in ts.iter() {
        let t = t.expect("ts is not null");
        assert!(
            (MIN_EVENT_TIME_US..MAX_EVENT_TIME_US).contains(&t),
            "ts {t}"
        );
    }
}

/// Every quarantine row names its target table, a reason code, a non-empty reason, and the raw
/// message's size and digest.
fn check_quarantine(batch: &RecordBatch, target: Table, msgs: &[&[u8]]) {
    let col = |name: &str| batch.column_by_name(name).expect(name).clone();
    let codes = col("reason_code");
    let reasons = col("reason");
    let tables = col("target_table");
    let sizes = col("raw_bytes");
    let digests = col("raw_sha256");
    let (codes, reasons, tables, digests) = (
        codes.as_string::<i32>(),
        reasons.as_string::<i32>(),
        tables.as_string::<i32>(),
        digests.as_string::<i32>(),
    );
    let sizes = sizes.as_primitive::<Int64Type>();
    let offsets = col("kafka_offset");
    let offsets = offsets.as_primitive::<Int64Type>();
    for i in 0..batch.num_rows() {
        assert!(!codes.is_null(i) && !codes.value(i).is_empty());
        assert!(!reasons.is_null(i) && !reasons.value(i).trim().is_empty());
        assert_eq!(tables.value(i), target.name());
        let msg = msgs[offsets.value(i) as usize];
        assert_eq!(sizes.value(i), msg.len() as i64);
        assert_eq!(digests.value(i).len(), 64);
    }
}

/// A CSV range database (`start_ip,end_ip,country[,asn]`): loads or fails with an error, and
/// looks addresses up.
pub fn geoip_csv(data: &[u8]) {
    geoip(Path::new("fuzz.csv"), data)
}

/// An MMDB database: loads or fails with an error, and looks addresses up.
pub fn geoip_mmdb(data: &[u8]) {
    geoip(Path::new("fuzz.mmdb"), data)
}

fn geoip(path: &Path, data: &[u8]) {
    let Ok(db) = GeoIp::from_bytes(path, data.to_vec()) else {
        return;
    };
    let mut probes: Vec<IpAddr> = [
        "0.0.0.0",
        "1.0.0.1",
        "31.10.0.1",
        "127.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::ffff:31.10.0.1",
        "2001:db8::1",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ]
    .iter()
    .map(|s| s.parse().expect("probe address"))
    .collect();
    // Addresses the input itself names, so lookups land inside its ranges.
    if let Ok(text) = std::str::from_utf8(data) {
        probes.extend(
            text.split(|c: char| c == ',' || c.is_whitespace())
                .take(64)
                .filter_map(|t| t.trim_matches('"').parse::<IpAddr>().ok()),
        );
    }
    for ip in probes {
        let info = db.lookup(ip);
        if let Some(c) = info.country {
            assert!(
                c.iter().all(u8::is_ascii_uppercase),
                "country {c:?} for {ip}"
            );
        }
    }
}

/// A Delta log commit file (`gateway_events/_delta_log/00000000000000000000.json`) read by
/// [`warehouse::read_log_from`], the evidence path of `verify` and the report: an error naming
/// the file, or a log whose chain is the SHA-256 chain of the bytes given and whose live files
/// are all in the table, each once, with the partition values of their path.
pub fn delta_log(data: &[u8]) {
    use object_store::{memory::InMemory, path::Path as ObjectPath, ObjectStoreExt as _};
    use sha2::{Digest, Sha256};
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("fuzz runtime");
    }
    let store = InMemory::new();
    let prefix = ObjectPath::from("wh");
    let path = prefix
        .clone()
        .join("gateway_events")
        .join(warehouse::LOG_DIR)
        .join("00000000000000000000.json");
    let read = RT.with(|rt| {
        rt.block_on(async {
            store
                .put(&path, bytes::Bytes::copy_from_slice(data).into())
                .await
                .expect("in-memory put");
            warehouse::read_log_from(&store, &prefix).await
        })
    });
    let Ok(log) = read else {
        return;
    };
    assert_eq!(log.heads.len(), 1, "one table has a log");
    let want = warehouse::chain(warehouse::GENESIS_HASH, &hex::encode(Sha256::digest(data)));
    assert_eq!(log.heads[0].hash, want, "chain of the commit's bytes");
    assert_eq!(log.heads[0].version, 0);
    let mut seen = std::collections::HashSet::new();
    for f in &log.files {
        assert_eq!(f.table, "gateway_events");
        assert!(f.path.starts_with("gateway_events/"), "{}", f.path);
        assert!(seen.insert(f.path.clone()), "{} listed twice", f.path);
        assert_eq!(f.version, 0);
    }
}

/// Run `harness` on every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` under
/// the repository `root`, as the corpus replay tests do. Panics, naming the files, if any input
/// makes the harness panic or if the corpus is empty.
pub fn replay(root: &std::path::Path, target: &str, harness: fn(&[u8])) {
    let mut files = Vec::new();
    for dir in ["fuzz/corpus", "fuzz/regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.expect("read corpus directory").path();
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if path.is_file() && !hidden {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(
        files
            .iter()
            .any(|p| p.starts_with(root.join("fuzz/corpus"))),
        "no corpus for fuzz target `{target}` under {}",
        root.join("fuzz/corpus").display()
    );
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        if std::panic::catch_unwind(|| harness(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs of fuzz target `{target}` panicked:\n  {}",
        failed.len(),
        files.len(),
        failed.join("\n  ")
    );
}
