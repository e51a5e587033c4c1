//! The committer: a thread beside the consumer loop that turns a partition's buffered rows into
//! Parquet files in staging and records them in the manifest, so that decoding, Parquet encoding
//! and the fsyncs overlap.
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

use chrono::NaiveDate;
use tracing::info;

use crate::batch::Rows;
use crate::error::Result;
use crate::manifest::{CommitOutcome, Covers, Manifest};
use crate::schema::{Table, SCHEMA_VERSION};
use crate::writer::{write_parquet_batches, ParquetSettings, StagedFile};

/// Per-commit counts, added to the run's summary once recorded.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub msgs: u64,
    pub gateway: u64,
    pub flows: u64,
    pub quarantined: u64,
    pub reasons: BTreeMap<&'static str, u64>,
}

/// One partition's buffer, to be written and recorded as one commit.
pub struct Job {
    pub topic: String,
    pub partition: i32,
    pub epoch: u64,
    pub files: BTreeMap<(Table, NaiveDate, u8), Rows>,
    pub first_offset: i64,
    pub last_offset: i64,
    pub counts: Counts,
}

/// What became of a job.
pub enum Outcome {
    Committed {
        topic: String,
        partition: i32,
        last_offset: i64,
        counts: Counts,
        files: usize,
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
    manifest: Arc<Mutex<Manifest>>,
    settings: ParquetSettings,
    geoip_sha: Option<String>,
) {
    let staging = manifest
        .lock()
        .expect("manifest lock")
        .staging_dir()
        .to_path_buf();
    let mut stale: HashMap<(String, i32), u64> = HashMap::new();
    for job in jobs {
        let key = (job.topic.clone(), job.partition);
        if stale.get(&key).is_some_and(|e| job.epoch <= *e) {
            if outcomes.send(Ok(Outcome::Discarded)).is_err() {
                return;
            }
            continue;
        }
        let out = commit(job, &staging, &manifest, &settings, geoip_sha.as_deref());
        if let Ok(Outcome::Stale { epoch, .. }) = &out {
            stale.insert(key, *epoch);
        }
        let failed = out.is_err();
        if outcomes.send(out).is_err() || failed {
            return;
        }
    }
}

fn commit(
    mut job: Job,
    staging: &std::path::Path,
    manifest: &Mutex<Manifest>,
    settings: &ParquetSettings,
    geoip_sha: Option<&str>,
) -> Result<Outcome> {
    let started = Instant::now();
    let (topic, partition) = (job.topic.as_str(), job.partition);
    let mut staged = Vec::with_capacity(job.files.len());
    for ((table, date, hour), rows) in job.files.iter_mut() {
        let batches = rows.finish_batches()?;
        let name = format!(
            "{}-{date}-{hour:02}-{topic}-{partition}-{}.parquet",
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
            (
                "flowaudit.first_offset".to_string(),
                rows.min_offset.to_string(),
            ),
            (
                "flowaudit.last_offset".to_string(),
                rows.max_offset.to_string(),
            ),
            (
                "flowaudit.geoip_sha256".to_string(),
                geoip_sha.unwrap_or_default().to_string(),
            ),
        ];
        let (sha256, bytes) =
            write_parquet_batches(&staging_path, table.schema(), &batches, settings, meta)?;
        drop(batches);
        staged.push(StagedFile {
            rel_path: format!("{}/date={date}/hour={hour:02}/{name}", table.name()),
            staging_path,
            table: table.name(),
            sha256,
            bytes,
            rows: rows.rows as u64,
            first_offset: rows.min_offset,
            last_offset: rows.max_offset,
            min_ts_us: rows.min_ts_us,
            max_ts_us: rows.max_ts_us,
        });
    }
    drop(std::mem::take(&mut job.files));
    let covers = Covers {
        topic: topic.to_string(),
        partition,
        first_offset: job.first_offset,
        last_offset: job.last_offset,
    };
    let outcome = manifest.lock().expect("manifest lock").commit(
        &staged,
        &covers,
        geoip_sha,
        SCHEMA_VERSION,
    )?;
    Ok(match outcome {
        CommitOutcome::Committed { last_seq, .. } => {
            info!(
                topic,
                partition,
                first_offset = job.first_offset,
                last_offset = job.last_offset,
                messages = job.counts.msgs,
                files = staged.len(),
                seq = last_seq,
                ms = started.elapsed().as_millis() as u64,
                "committed"
            );
            Outcome::Committed {
                topic: job.topic,
                partition,
                last_offset: job.last_offset,
                counts: job.counts,
                files: staged.len(),
            }
        }
        CommitOutcome::Stale { recorded_last } => Outcome::Stale {
            topic: job.topic,
            partition,
            epoch: job.epoch,
            recorded_last,
        },
    })
}
