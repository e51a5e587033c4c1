//! The committer: a thread beside the consumer loop that turns a partition's buffered rows into
//! Parquet files and commits them to the warehouse's Delta tables (see [`crate::warehouse`] for
//! the protocol), so that decoding, Parquet encoding and the uploads overlap.
//!
//! Jobs are processed in the order they were sent. A job whose offsets another writer already
//! recorded comes back [`Outcome::Stale`]; every later job of the same partition *incarnation*
//! (its epoch) is then discarded unrecorded, because the consumer rewinds that partition to the
//! recorded position and reads those messages again. Epochs are unique per process, so a new
//! incarnation of a partition (after a rebalance or a rewind) is never mistaken for an old one.
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use arrow::record_batch::RecordBatch;
use chrono::NaiveDate;
use tracing::{info, warn};

use crate::batch::Rows;
use crate::error::{Error, Result};
use crate::schema::{Table, SCHEMA_VERSION};
use crate::warehouse::{CommitMeta, MessageWitness, TableCommit, Warehouse};
use crate::writer::{write_parquet_batches, ParquetSettings, StagedFile};

/// Per-commit counts, added to the run's summary once recorded.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub msgs: u64,
    pub gateway: u64,
    pub flows: u64,
    pub quarantined: u64,
    pub reasons: BTreeMap<&'static str, u64>,
    /// Messages whose only row was already in its table (a range read again after a writer
    /// stopped between its commits to `quarantine` and to the primary table): not written again.
    pub already_recorded: u64,
}

/// One partition's buffer, to be written and recorded as one commit.
pub struct Job {
    /// The table the topic feeds (`gateway_events` or `flows`): its `txn` is the partition's
    /// recorded position.
    pub primary: Table,
    pub topic: String,
    pub partition: i32,
    pub epoch: u64,
    pub files: BTreeMap<(Table, NaiveDate, u8), Rows>,
    pub first_offset: i64,
    pub last_offset: i64,
    pub counts: Counts,
    /// A job with no rows that records `first_offset..=last_offset` as a gap, for this reason.
    pub gap: Option<String>,
    /// The message at `last_offset`, recorded in the commit as its witness
    /// ([`crate::warehouse::MessageWitness`]); `None` on a gap.
    pub last_message: Option<LastMessage>,
}

/// The last message of a job, as Kafka delivered it.
pub struct LastMessage {
    pub timestamp_ms: Option<i64>,
    pub payload: Vec<u8>,
}

/// What became of a job.
pub enum Outcome {
    Committed {
        topic: String,
        partition: i32,
        last_offset: i64,
        counts: Counts,
        files: usize,
        /// The primary table's version after the commit.
        version: i64,
    },
    Stale {
        topic: String,
        partition: i32,
        epoch: u64,
        recorded_last: i64,
    },
    Discarded,
}

/// Process jobs until the sender is dropped or an error is reported.
pub fn run(
    jobs: Receiver<Job>,
    outcomes: Sender<Result<Outcome>>,
    warehouse: Arc<Mutex<Warehouse>>,
    settings: ParquetSettings,
    geoip_sha: Option<String>,
) {
    let (staging, writer) = {
        let w = warehouse.lock().expect("warehouse lock");
        (w.staging_dir().to_path_buf(), w.writer_id().to_string())
    };
    let mut stale: HashMap<(String, i32), u64> = HashMap::new();
    for job in jobs {
        let key = (job.topic.clone(), job.partition);
        if stale.get(&key).is_some_and(|e| job.epoch <= *e) {
            if outcomes.send(Ok(Outcome::Discarded)).is_err() {
                return;
            }
            continue;
        }
        let out = commit(
            job,
            &staging,
            &writer,
            &warehouse,
            &settings,
            geoip_sha.as_deref(),
        );
        if let Ok(Outcome::Stale { epoch, .. }) = &out {
            stale.insert(key, *epoch);
        }
        let failed = out.is_err();
        if outcomes.send(out).is_err() || failed {
            return;
        }
    }
}

/// Rows of a batch whose `kafka_offset` is above `recorded`; the reason codes of the others.
fn drop_recorded(
    batches: Vec<RecordBatch>,
    recorded: i64,
    dropped: &mut BTreeMap<String, u64>,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let offsets = b
            .column_by_name("kafka_offset")
            .expect("every table has kafka_offset")
            .as_primitive::<Int64Type>();
        let keep: BooleanArray = offsets
            .iter()
            .map(|o| Some(o.is_some_and(|o| o > recorded)))
            .collect();
        if let Some(codes) = b.column_by_name("reason_code") {
            let codes = codes.as_string::<i32>();
            for i in 0..b.num_rows() {
                if !keep.value(i) {
                    *dropped.entry(codes.value(i).to_string()).or_default() += 1;
                }
            }
        }
        let f = arrow::compute::filter_record_batch(&b, &keep)?;
        if f.num_rows() > 0 {
            out.push(f);
        }
    }
    Ok(out)
}

/// (rows, min offset, max offset, min ts, max ts) of filtered batches.
fn extent(batches: &[RecordBatch]) -> (usize, i64, i64, i64, i64) {
    let (mut rows, mut lo, mut hi, mut tlo, mut thi) = (0, i64::MAX, i64::MIN, i64::MAX, i64::MIN);
    for b in batches {
        rows += b.num_rows();
        let o = b
            .column_by_name("kafka_offset")
            .expect("kafka_offset")
            .as_primitive::<Int64Type>();
        let t = b
            .column_by_name("ts")
            .expect("ts")
            .as_primitive::<TimestampMicrosecondType>();
        for i in 0..b.num_rows() {
            lo = lo.min(o.value(i));
            hi = hi.max(o.value(i));
            if t.is_valid(i) {
                tlo = tlo.min(t.value(i));
                thi = thi.max(t.value(i));
            }
        }
    }
    (rows, lo, hi, tlo, thi)
}

fn commit(
    mut job: Job,
    staging: &std::path::Path,
    writer: &str,
    warehouse: &Mutex<Warehouse>,
    settings: &ParquetSettings,
    geoip_sha: Option<&str>,
) -> Result<Outcome> {
    let started = Instant::now();
    let (topic, partition, primary) = (job.topic.clone(), job.partition, job.primary);
    // What each table of this job has recorded of the partition already.
    let mut recorded: BTreeMap<Table, Option<i64>> = BTreeMap::new();
    {
        let mut w = warehouse.lock().expect("warehouse lock");
        let mut tables: Vec<Table> = job.files.keys().map(|k| k.0).collect();
        tables.push(primary);
        // Also when this job quarantines nothing: an interrupted commit may have (below).
        tables.push(Table::Quarantine);
        for t in tables {
            if recorded.contains_key(&t) {
                continue;
            }
            recorded.insert(t, w.recorded(t, &topic, partition)?);
        }
    }
    if let Some(r) = recorded[&primary].filter(|r| *r >= job.first_offset) {
        return Ok(Outcome::Stale {
            topic: job.topic,
            partition,
            epoch: job.epoch,
            recorded_last: r,
        });
    }
    // A range an interrupted writer committed to a secondary table (`quarantine`) and not to the
    // primary one is read again: its rows already there are dropped below, which is exactly once
    // only if this writer classifies the range as that one did. Which offsets it put there.
    let pending: Option<(Table, i64, std::collections::BTreeSet<i64>)> = match recorded
        .iter()
        .find(|(t, r)| **t != primary && r.is_some_and(|r| r >= job.first_offset))
    {
        Some((t, r)) => {
            let r = r.expect("filtered").min(job.last_offset);
            let held = warehouse.lock().expect("warehouse lock").offsets_held(
                *t,
                &topic,
                partition,
                job.first_offset,
                r,
            )?;
            Some((*t, r, held))
        }
        None => None,
    };
    let mut mine: std::collections::BTreeSet<i64> = std::collections::BTreeSet::new();
    let mut staged: BTreeMap<Table, Vec<StagedFile>> = BTreeMap::new();
    let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
    for ((table, date, hour), rows) in job.files.iter_mut() {
        let mut batches = rows.finish_batches()?;
        let (mut n, mut lo, mut hi, mut tlo, mut thi) = (
            rows.rows,
            rows.min_offset,
            rows.max_offset,
            rows.min_ts_us,
            rows.max_ts_us,
        );
        if let Some(r) = recorded[table].filter(|r| *r >= job.first_offset) {
            // Already recorded in this table by a commit whose primary commit never happened.
            if pending.as_ref().is_some_and(|(t, _, _)| t == table) {
                for b in &batches {
                    let o = b
                        .column_by_name("kafka_offset")
                        .expect("kafka_offset")
                        .as_primitive::<Int64Type>();
                    mine.extend(o.iter().flatten().filter(|o| *o <= r));
                }
            }
            batches = drop_recorded(batches, r, &mut dropped)?;
            (n, lo, hi, tlo, thi) = extent(&batches);
            if batches.is_empty() {
                continue;
            }
        }
        let tag: u64 = rand::random();
        let name = format!(
            "{}-{date}-{hour:02}-{topic}-{partition}-{}-{tag:016x}.parquet",
            table.name(),
            job.first_offset
        );
        let staging_path: PathBuf = staging.join(&name);
        let meta = vec![
            ("flowaudit.table".to_string(), table.name().to_string()),
            (
                "flowaudit.schema_version".to_string(),
                SCHEMA_VERSION.to_string(),
            ),
            ("flowaudit.kafka_topic".to_string(), topic.to_string()),
            (
                "flowaudit.kafka_partition".to_string(),
                partition.to_string(),
            ),
            ("flowaudit.first_offset".to_string(), lo.to_string()),
            ("flowaudit.last_offset".to_string(), hi.to_string()),
            (
                "flowaudit.geoip_sha256".to_string(),
                geoip_sha.unwrap_or_default().to_string(),
            ),
        ];
        let (sha256, bytes) =
            write_parquet_batches(&staging_path, table.schema(), &batches, settings, meta)?;
        drop(batches);
        staged.entry(*table).or_default().push(StagedFile {
            rel_path: format!("{}/date={date}/hour={hour:02}/{name}", table.name()),
            staging_path,
            table: table.name(),
            sha256,
            bytes,
            rows: n as u64,
            first_offset: lo,
            last_offset: hi,
            min_ts_us: tlo,
            max_ts_us: thi,
        });
    }
    drop(std::mem::take(&mut job.files));
    // A gap job reads nothing: what the earlier commit quarantined in its range was read before
    // the offsets left Kafka, and its commit counts them (below).
    if let Some((t, r, held)) = pending.as_ref().filter(|_| job.gap.is_none()) {
        if *held != mine {
            for f in staged.values().flatten() {
                let _ = std::fs::remove_file(&f.staging_path);
            }
            let only = |a: &std::collections::BTreeSet<i64>,
                        b: &std::collections::BTreeSet<i64>| {
                a.difference(b)
                    .take(5)
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(Error::Warehouse(format!(
                "{topic}/{partition} offsets {}..={r}: an interrupted earlier commit put {} of them in {} and this writer would put {} there (only the earlier: [{}]; only this one: [{}]); writing them now would put an offset in two tables or in none. Writers of one consumer group must classify messages alike: the same max_message_bytes and quarantine limits, the same flowaudit version (docs/DESIGN.md, \"Exactly once in two tables\")",
                job.first_offset,
                held.len(),
                t.name(),
                mine.len(),
                only(held, &mine),
                only(&mine, held),
            )));
        }
    }
    // Messages of the range recorded by this commit: what this job consumed, and for a gap the
    // rows an interrupted earlier commit put in a secondary table inside it (read before the
    // offsets left Kafka), so every offset's row is still accounted for.
    let consumed = job.counts.msgs
        + pending
            .as_ref()
            .filter(|_| job.gap.is_some())
            .map_or(0, |(_, _, held)| held.len() as u64);
    let skipped: u64 = dropped.values().sum();
    if skipped > 0 {
        warn!(
            topic,
            partition,
            rows = skipped,
            "rows already recorded by an interrupted earlier commit were not written again"
        );
        job.counts.msgs -= skipped;
        job.counts.quarantined = job.counts.quarantined.saturating_sub(skipped);
        job.counts.already_recorded += skipped;
        for (code, n) in &dropped {
            if let Some(c) = job
                .counts
                .reasons
                .iter_mut()
                .find(|(k, _)| **k == code.as_str())
            {
                *c.1 = c.1.saturating_sub(*n);
            }
        }
        job.counts.reasons.retain(|_, n| *n > 0);
    }
    let meta = CommitMeta {
        writer: writer.to_string(),
        topic: topic.clone(),
        partition,
        covers_first_offset: job.first_offset,
        covers_last_offset: job.last_offset,
        messages: consumed,
        schema_version: SCHEMA_VERSION,
        geoip_sha256: geoip_sha.map(str::to_string),
        gap: job.gap.clone(),
        commit_id: format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        ),
        detected_at: job.gap.as_ref().map(|_| crate::warehouse::now_rfc3339()),
        last_message: job
            .last_message
            .as_ref()
            .map(|m| MessageWitness::of(job.last_offset, m.timestamp_ms, &m.payload)),
    };
    let mut w = warehouse.lock().expect("warehouse lock");
    let files: usize = staged.values().map(Vec::len).sum();
    for f in staged.values().flatten() {
        w.publish(f)?;
    }
    // The primary table last: its txn is the partition's position.
    let mut order: Vec<Table> = staged.keys().copied().filter(|t| *t != primary).collect();
    order.push(primary);
    let mut version = -1;
    let mut committed: Vec<&'static str> = Vec::new();
    for t in order {
        let fs = staged.get(&t).map(Vec::as_slice).unwrap_or(&[]);
        let expect_below = if t == primary {
            job.first_offset
        } else {
            recorded[&t].map_or(i64::MIN, |r| r.saturating_add(1))
        };
        match w.commit_table(t, fs, &meta, expect_below)? {
            TableCommit::Committed { version: v } => {
                version = v;
                committed.push(t.name());
            }
            TableCommit::Stale { .. } => {
                // Files of the tables not committed are referenced by nothing: remove them.
                for f in staged.values().flatten() {
                    if !committed.contains(&f.table) {
                        w.unpublish(f);
                    }
                }
                let recorded_last = w
                    .recorded(primary, &topic, partition)?
                    .unwrap_or(job.first_offset - 1);
                return Ok(Outcome::Stale {
                    topic: job.topic,
                    partition,
                    epoch: job.epoch,
                    recorded_last,
                });
            }
        }
    }
    let m = crate::metrics::metrics();
    let elapsed = started.elapsed().as_secs_f64();
    if job.gap.is_some() {
        // Counted once recorded: a gap job dropped on a rebalance is recorded by the next owner.
        m.gaps.get_or_create(&crate::metrics::topic(&topic)).inc();
        m.gap_offsets
            .get_or_create(&crate::metrics::topic(&topic))
            .inc_by((job.last_offset - job.first_offset + 1).max(0) as u64);
    }
    for (t, fs) in &staged {
        let l = crate::metrics::table(t.name());
        m.commit_bytes
            .get_or_create(&l)
            .observe(fs.iter().map(|f| f.bytes as f64).sum());
        m.commit_rows
            .get_or_create(&l)
            .observe(fs.iter().map(|f| f.rows as f64).sum());
        m.commits.get_or_create(&l).inc();
    }
    if !staged.contains_key(&primary) {
        // A commit of the primary table with no file (a gap, or only quarantined messages).
        m.commits
            .get_or_create(&crate::metrics::table(primary.name()))
            .inc();
    }
    m.commit_seconds
        .get_or_create(&crate::metrics::table(primary.name()))
        .observe(elapsed);
    info!(
        topic,
        partition,
        first_offset = job.first_offset,
        last_offset = job.last_offset,
        messages = job.counts.msgs,
        files,
        version,
        ms = started.elapsed().as_millis() as u64,
        "committed"
    );
    Ok(Outcome::Committed {
        topic: job.topic,
        partition,
        last_offset: job.last_offset,
        counts: job.counts,
        files,
        version,
    })
}
