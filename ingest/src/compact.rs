//! `flowaudit compact`: the small files of closed hours rewritten into large ones.
//!
//! Ingest writes one file per (table, date, hour) per Kafka partition at every flush, so a busy
//! hour ends as many small files. Compaction replaces the live files of one (date, hour, topic,
//! partition) by one file holding the same rows in offset order (up to `max_rows` rows per
//! file), all groups of a table in one Delta commit that changes no data: `add` and `remove`
//! actions with `dataChange: false`, no `txn`, and a record of which files replaced which with
//! both SHA-256s ([`crate::warehouse::CompactionMeta`]). A group is compacted only once its hour
//! is closed (its end plus `closed_after` is past) and only from files whose SHA-256 is still
//! the one their commit recorded, so compaction never launders a changed file. The replaced
//! files stay in the store (older table versions still read them) until a vacuum removes them.
use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, NaiveDate, Utc};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::error::{Error, Result};
use crate::schema::Table;
use crate::warehouse::{self, FileEntry, Location, Warehouse};
use crate::writer::{write_parquet_batches, ParquetSettings, StagedFile};

/// What to compact.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    pub tables: Vec<Table>,
    /// An hour is closed this long after its end.
    pub closed_after: Duration,
    /// Most rows in one written file.
    pub max_rows: u64,
    pub settings: ParquetSettings,
    /// Plan only: say what would be rewritten.
    pub dry_run: bool,
}

/// What compaction did to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableCompaction {
    pub table: &'static str,
    /// Files written, and the files they replaced.
    pub written: usize,
    pub replaced: usize,
    pub rows: u64,
    /// The commit's version (`None`: nothing to do, a dry run, or lost to a concurrent
    /// compaction of the same files).
    pub version: Option<i64>,
}

/// The groups worth compacting among `files` (the live files of one table): files of one date,
/// hour, topic and partition whose hour closed before `now - closed_after`, in offset order,
/// cut into runs of at most `max_rows` rows; only runs of two files or more.
pub fn plan(
    files: &[FileEntry],
    now: DateTime<Utc>,
    closed_after: Duration,
    max_rows: u64,
) -> Vec<Vec<FileEntry>> {
    // Files written with another schema version or GeoIP database are never merged: a file's
    // evidence names one of each.
    type Key = (String, String, String, i32, u32, Option<String>);
    let mut by_key: BTreeMap<Key, Vec<FileEntry>> = BTreeMap::new();
    for f in files {
        let Some(end) = hour_end(&f.date, &f.hour) else {
            continue;
        };
        let closed = chrono::Duration::from_std(closed_after)
            .ok()
            .and_then(|d| end.checked_add_signed(d))
            .is_some_and(|t| t <= now);
        if closed {
            by_key
                .entry((
                    f.date.clone(),
                    f.hour.clone(),
                    f.topic.clone(),
                    f.partition,
                    f.schema_version,
                    f.geoip_sha256.clone(),
                ))
                .or_default()
                .push(f.clone());
        }
    }
    let mut out = Vec::new();
    for (_, mut fs) in by_key {
        fs.sort_by_key(|f| f.first_offset);
        let mut run: Vec<FileEntry> = Vec::new();
        let mut rows = 0u64;
        for f in fs {
            if !run.is_empty() && rows + f.rows > max_rows {
                if run.len() > 1 {
                    out.push(std::mem::take(&mut run));
                }
                run.clear();
                rows = 0;
            }
            rows += f.rows;
            run.push(f);
        }
        if run.len() > 1 {
            out.push(run);
        }
    }
    out
}

/// The end of partition `date`/`hour` (UTC), if they are a date and an hour.
fn hour_end(date: &str, hour: &str) -> Option<DateTime<Utc>> {
    let d = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let h: u32 = hour.parse().ok().filter(|h| *h < 24)?;
    Some(d.and_hms_opt(h, 0, 0)?.and_utc() + chrono::Duration::hours(1))
}

/// Compact the warehouse at `location` as `opts` says.
pub fn compact(location: &Location, opts: &CompactOptions) -> Result<Vec<TableCompaction>> {
    let log = warehouse::read_log_blocking(location)?;
    let now = Utc::now();
    let mut wh = if opts.dry_run {
        None
    } else {
        Some(Warehouse::open(location)?)
    };
    let mut out = Vec::new();
    for &table in &opts.tables {
        let files: Vec<FileEntry> = log
            .files
            .iter()
            .filter(|f| f.table == table.name())
            .cloned()
            .collect();
        let groups = plan(&files, now, opts.closed_after, opts.max_rows);
        let mut done = TableCompaction {
            table: table.name(),
            replaced: groups.iter().map(Vec::len).sum(),
            written: groups.len(),
            rows: groups.iter().flatten().map(|f| f.rows).sum(),
            version: None,
        };
        let Some(wh) = wh.as_mut().filter(|_| !groups.is_empty()) else {
            out.push(done);
            continue;
        };
        let mut staged = Vec::with_capacity(groups.len());
        let progress = crate::progress::bar(
            done.written as u64,
            &format!("compacting {}", table.name()),
            "groups",
        );
        for (i, g) in groups.into_iter().enumerate() {
            let f = merge(wh, table, &g, &opts.settings)?;
            progress.inc(1);
            info!(table = table.name(), group = i + 1, of = done.written, replaced = g.len(), rows = f.rows, file = %f.rel_path, "compacted");
            staged.push((g, f));
        }
        progress.finish_and_clear();
        done.version = wh.commit_compaction(table, &staged)?;
        if done.version.is_none() {
            tracing::warn!(
                table = table.name(),
                "a concurrent commit removed some of these files first: nothing recorded"
            );
        }
        out.push(done);
    }
    Ok(out)
}

/// Read the files of one group (each checked against its recorded SHA-256), and write their
/// rows, in offset order, as one staged file.
fn merge(
    wh: &Warehouse,
    table: Table,
    group: &[FileEntry],
    settings: &ParquetSettings,
) -> Result<StagedFile> {
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut kv: Vec<(String, String)> = Vec::new();
    for f in group {
        let bytes = wh.read_file(&f.path)?;
        let sha = hex::encode(Sha256::digest(&bytes));
        if sha != f.sha256 {
            return Err(Error::Warehouse(format!(
                "{}: its SHA-256 is {sha}, its commit (version {}) recorded {}: not compacted (run verify)",
                f.path, f.version, f.sha256
            )));
        }
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
        if kv.is_empty() {
            kv = reader
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .map(|m| {
                    m.iter()
                        .filter_map(|e| Some((e.key.clone(), e.value.clone()?)))
                        .collect()
                })
                .unwrap_or_default();
        }
        for b in reader.build()? {
            batches.push(b?);
        }
    }
    let schema = table.schema();
    let all = arrow::compute::concat_batches(&schema, &batches)?;
    drop(batches);
    let offsets = all
        .column_by_name("kafka_offset")
        .ok_or_else(|| Error::Warehouse(format!("{}: no kafka_offset column", table.name())))?;
    let order = arrow::compute::sort_to_indices(offsets, None, None)?;
    let sorted = arrow::compute::take_record_batch(&all, &order)?;
    drop(all);
    let col = sorted
        .column_by_name("kafka_offset")
        .expect("checked")
        .as_primitive::<Int64Type>();
    let (lo, hi) = (col.value(0), col.value(col.len() - 1));
    for (k, v) in kv.iter_mut() {
        match k.as_str() {
            "flowaudit.first_offset" => *v = lo.to_string(),
            "flowaudit.last_offset" => *v = hi.to_string(),
            _ => {}
        }
    }
    let first = &group[0];
    let name = format!(
        "{}-{}-{}-{}-{}-{lo}-compacted-{:016x}.parquet",
        table.name(),
        first.date,
        first.hour,
        first.topic,
        first.partition,
        rand::random::<u64>()
    );
    let staging_path = wh.staging_dir().join(&name);
    let batches: Vec<RecordBatch> = (0..sorted.num_rows())
        .step_by(settings.row_group_rows.max(1))
        .map(|o| sorted.slice(o, settings.row_group_rows.max(1).min(sorted.num_rows() - o)))
        .collect();
    write_parquet_batches(&staging_path, schema, &batches, settings, kv)?;
    let ext = warehouse::parquet_extent(&staging_path)?;
    let rel_path = format!(
        "{}/date={}/hour={}/{name}",
        table.name(),
        first.date,
        first.hour
    );
    Ok(ext.staged(staging_path, rel_path, table))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(date: &str, hour: &str, partition: i32, first: i64, rows: u64) -> FileEntry {
        FileEntry {
            table: "flows".into(),
            version: 1,
            path: format!("flows/date={date}/hour={hour}/f-{partition}-{first}.parquet"),
            date: date.into(),
            hour: hour.into(),
            sha256: String::new(),
            bytes: 0,
            rows,
            topic: "t".into(),
            partition,
            first_offset: first,
            last_offset: first + rows as i64 - 1,
            covers_first_offset: first,
            covers_last_offset: first + rows as i64 - 1,
            min_event_time: String::new(),
            max_event_time: String::new(),
            schema_version: 1,
            geoip_sha256: None,
            writer: String::new(),
            committed_at: String::new(),
        }
    }

    #[test]
    fn only_closed_hours_of_one_partition_are_grouped_and_runs_respect_the_row_cap() {
        let now = "2026-11-21T12:30:00Z".parse::<DateTime<Utc>>().unwrap();
        let files = vec![
            entry("2026-11-21", "10", 0, 0, 10),
            entry("2026-11-21", "10", 0, 10, 10),
            entry("2026-11-21", "10", 1, 0, 10), // alone in its partition: left
            entry("2026-11-21", "11", 0, 20, 10), // closed at 12:00 + 1h: not yet
            entry("2026-11-21", "11", 0, 30, 10),
            entry("2026-11-21", "09", 0, 100, 30),
            entry("2026-11-21", "09", 0, 130, 30),
            entry("2026-11-21", "09", 0, 160, 30),
        ];
        let mut other_geoip = entry("2026-11-21", "10", 0, 5, 10);
        other_geoip.geoip_sha256 = Some("another database".into());
        let g = plan(&files, now, Duration::from_secs(3600), 60);
        let keys: Vec<Vec<i64>> = g
            .iter()
            .map(|r| r.iter().map(|f| f.first_offset).collect())
            .collect();
        // Hour 09: 30+30 fit the cap of 60, the third starts a run of one (left alone).
        assert_eq!(keys, vec![vec![100, 130], vec![0, 10]]);
        let g = plan(&files, now, Duration::ZERO, 1000);
        assert_eq!(g.len(), 3, "{g:?}");
        // A file enriched with another GeoIP database joins no group of the others.
        let mut with_other = files.clone();
        with_other.push(other_geoip);
        let g = plan(&with_other, now, Duration::from_secs(3600), 60);
        assert!(
            g.iter().flatten().all(|f| f.geoip_sha256.is_none()),
            "{g:?}"
        );
        assert_eq!(g.len(), 2);
    }
}

/// What `vacuum` removes, and what it would.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vacuumed {
    /// Files that compactions replaced before the retention period.
    pub replaced: Vec<String>,
    /// Files in a table's directory that no commit ever added (a stopped writer's uploads),
    /// last modified before the retention period.
    pub never_committed: Vec<String>,
    pub bytes: u64,
}

/// Delete from the warehouse's tables the files no live version needs that are older than
/// `retain`: files compactions replaced (by the time of the compaction's commit) and files no
/// commit ever added (by their modification time). Live files, the logs, and files a commit
/// removed for any other reason are never touched. `dry_run`: only say which.
pub fn vacuum(location: &Location, retain: Duration, dry_run: bool) -> Result<Vacuumed> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt as _;
    let log = warehouse::read_log_blocking(location)?;
    // A retention past the representable past keeps everything.
    let cutoff = chrono::Duration::from_std(retain)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let live: std::collections::HashSet<&str> = log.files.iter().map(|f| f.path.as_str()).collect();
    let mut replaced_at: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    let ever_removed: std::collections::HashSet<&str> =
        log.removed.iter().map(String::as_str).collect();
    for c in &log.commits {
        let Some(k) = &c.compaction else { continue };
        let at = DateTime::parse_from_rfc3339(&c.committed_at)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| {
                Error::Warehouse(format!(
                    "{} version {}: commit time {:?}: {e}",
                    c.table, c.version, c.committed_at
                ))
            })?;
        for g in &k.groups {
            for r in &g.replaced {
                replaced_at.insert(r.path.clone(), at);
            }
        }
    }
    let (store, prefix) = location.store()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Warehouse(format!("starting the storage runtime: {e}")))?;
    let mut out = Vacuumed::default();
    rt.block_on(async {
        for t in Table::ALL {
            let dir = prefix.clone().join(t.name());
            let listed: Vec<_> = store
                .list(Some(&dir))
                .try_collect()
                .await
                .map_err(|e| Error::Warehouse(format!("listing {dir}: {e}")))?;
            for m in listed {
                let rel: String = m
                    .location
                    .prefix_match(&prefix)
                    .map(|p| {
                        p.map(|s| s.as_ref().to_string())
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .unwrap_or_default();
                if rel.split('/').nth(1) == Some(warehouse::LOG_DIR) || live.contains(rel.as_str())
                {
                    continue;
                }
                let old = match replaced_at.get(&rel) {
                    Some(at) => *at < cutoff,
                    // Removed by a commit that is not a compaction: evidence, kept.
                    None if ever_removed.contains(rel.as_str()) => false,
                    None => m.last_modified < cutoff,
                };
                if !old {
                    continue;
                }
                if !dry_run {
                    store
                        .delete(&m.location)
                        .await
                        .map_err(|e| Error::Warehouse(format!("deleting {rel}: {e}")))?;
                }
                out.bytes += m.size;
                if replaced_at.contains_key(&rel) {
                    out.replaced.push(rel);
                } else {
                    out.never_committed.push(rel);
                }
            }
        }
        Ok::<_, Error>(())
    })?;
    Ok(out)
}
