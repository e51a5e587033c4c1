//! `flowaudit verify`: check a warehouse against its Delta logs.
//!
//! Each ingest table's log is read from its JSON commits (not delta-rs, not a checkpoint) and
//! chained from the genesis hash ([`flowaudit_ingest::warehouse::read_log`]); a missing or
//! unreadable commit is a problem. Then every live data file must be in place with the SHA-256
//! and row count its `add` recorded; and every Kafka offset must be in exactly one place: each
//! row's `kafka_offset` in at most one row of all tables, inside a range a commit of the
//! partition's table recorded, and each such range holding exactly as many rows (in its table
//! and `quarantine` together) as the messages its commit consumed, so a row deleted from a file
//! is caught even when the file's recorded hash and row count were rewritten around it. Files in
//! a table's directory that no commit lists are invisible to every reader (a stopped writer's
//! leftover, or an addition): they are listed as notes, not problems. The `alerts` table is
//! written by the rule runner, not ingest: it is checked against the outbox it is written from
//! ([`crate::verify_alerts`]) when verify knows the state directory.
use std::collections::{BTreeMap, BTreeSet};

use flowaudit_ingest::schema::Table;
use flowaudit_ingest::warehouse::{self, Location, TableHead, LOG_DIR};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt as _;

/// What verification found.
#[derive(Debug, Default)]
pub struct Verification {
    pub files: usize,
    pub rows: u64,
    pub commits: usize,
    pub heads: Vec<TableHead>,
    /// Empty when the warehouse verifies.
    pub problems: Vec<String>,
    /// Observations that do not make the evidence wrong (files no reader sees).
    pub notes: Vec<String>,
}

impl Verification {
    /// The heads as `table@version:hash`.
    pub fn heads_summary(&self) -> String {
        if self.heads.is_empty() {
            return "no tables".into();
        }
        self.heads
            .iter()
            .map(|h| format!("{}@{}:{}", h.table, h.version, h.hash))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Verify the warehouse at `location` (from a thread that is not inside a tokio runtime).
pub fn verify(location: &Location) -> Verification {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(verify_async(location)),
        Err(e) => Verification {
            problems: vec![format!("cannot start the runtime: {e}")],
            ..Default::default()
        },
    }
}

/// A commit's recorded range of one partition, and the messages it consumed.
struct Range {
    first: i64,
    last: i64,
    messages: u64,
    table: String,
    version: i64,
}

async fn verify_async(location: &Location) -> Verification {
    let mut v = Verification::default();
    if let Some(dir) = location.local() {
        if !dir.is_dir() {
            v.problems
                .push(format!("{}: no such directory", dir.display()));
            return v;
        }
    }
    let (store, prefix) = match location.store() {
        Ok(s) => s,
        Err(e) => {
            v.problems.push(format!("{location}: {e}"));
            return v;
        }
    };
    let log = match warehouse::read_log_from(store.as_ref(), &prefix).await {
        Ok(l) => l,
        Err(e) => {
            v.problems.push(format!("the log cannot be read: {e}"));
            return v;
        }
    };
    v.heads = log.heads.clone();
    v.commits = log.commits.len();
    v.problems.extend(log.anomalies.iter().cloned());
    check_commits(&log, &mut v.problems);
    for g in log.gaps() {
        v.notes.push(format!(
            "gap: {}/{} offsets {}..={} were no longer in Kafka when read ({}; recorded at {} version {})",
            g.topic, g.partition, g.first_offset, g.last_offset, g.reason, g.table, g.version
        ));
    }
    let obj = |rel: &str| {
        rel.split('/')
            .filter(|s| !s.is_empty())
            .fold(prefix.clone(), |p, s| p.join(s))
    };
    // Every live file: in place, unchanged, its rows as recorded; collect its offsets.
    let mut offsets: BTreeMap<(String, i32), Vec<i64>> = BTreeMap::new();
    let mut live = BTreeSet::new();
    let progress = flowaudit_ingest::progress::bar(
        log.files.iter().map(|f| f.bytes).sum(),
        "verifying",
        "bytes",
    );
    for f in &log.files {
        progress.inc(f.bytes);
        live.insert(f.path.clone());
        let at = format!("{} version {}", f.table, f.version);
        let bytes = match store.get(&obj(&f.path)).await {
            Ok(r) => match r.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    v.problems.push(format!("unreadable: {}: {e}", f.path));
                    continue;
                }
            },
            Err(object_store::Error::NotFound { .. }) => {
                v.problems
                    .push(format!("deleted: {} (added at {at})", f.path));
                continue;
            }
            Err(e) => {
                v.problems.push(format!("unreadable: {}: {e}", f.path));
                continue;
            }
        };
        v.files += 1;
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        if sha != f.sha256 {
            v.problems.push(format!(
                "modified: {} (SHA-256 recorded at {at} is {}, the file's is {sha})",
                f.path, f.sha256
            ));
            continue;
        }
        match file_offsets(bytes) {
            Ok((rows, offs)) => {
                if rows != f.rows {
                    v.problems.push(format!(
                        "row count: {} has {rows} rows, its add at {at} says {}",
                        f.path, f.rows
                    ));
                }
                v.rows += rows;
                offsets
                    .entry((f.topic.clone(), f.partition))
                    .or_default()
                    .extend(offs);
            }
            Err(e) => v
                .problems
                .push(format!("not readable as Parquet: {}: {e}", f.path)),
        }
    }
    progress.finish_and_clear();
    let replaced = verify_compactions(&log, store.as_ref(), &obj, &mut v).await;
    // Files in the tables' directories that no commit lists (those compactions replaced are
    // kept for older versions until a vacuum).
    for t in Table::ALL {
        let dir = prefix.clone().join(t.name());
        let listed: Result<Vec<_>, _> = store.list(Some(&dir)).try_collect().await;
        let listed = match listed {
            Ok(l) => l,
            Err(e) => {
                v.problems.push(format!("cannot list {dir}: {e}"));
                continue;
            }
        };
        for m in listed {
            let rel = relative(&m.location, &prefix);
            if rel.split('/').nth(1) == Some(LOG_DIR)
                || live.contains(&rel)
                || replaced.contains(&rel)
            {
                continue;
            }
            v.notes.push(format!(
                "not in the log (no reader sees it; a stopped writer's leftover or an addition): {rel}"
            ));
        }
    }
    // Every offset in exactly one place.
    let mut ranges: BTreeMap<(String, i32), Vec<Range>> = BTreeMap::new();
    for c in &log.commits {
        let Some(m) = &c.meta else { continue };
        if c.table == Table::Quarantine.name() {
            continue;
        }
        ranges
            .entry((m.topic.clone(), m.partition))
            .or_default()
            .push(Range {
                first: m.covers_first_offset,
                last: m.covers_last_offset,
                messages: m.messages,
                table: c.table.clone(),
                version: c.version,
            });
    }
    for (key, offs) in offsets.iter_mut() {
        offs.sort_unstable();
        let (topic, partition) = key;
        let mut dups = 0usize;
        for w in offs.windows(2) {
            if w[0] == w[1] {
                dups += 1;
                if dups <= 5 {
                    v.problems.push(format!(
                        "offset {} of {topic}/{partition} is in more than one row",
                        w[0]
                    ));
                }
            }
        }
        if dups > 5 {
            v.problems.push(format!(
                "{topic}/{partition}: {dups} offsets are in more than one row"
            ));
        }
        offs.dedup();
    }
    for (key, rs) in &mut ranges {
        rs.sort_by_key(|r| r.first);
        let (topic, partition) = key;
        for w in rs.windows(2) {
            if w[1].first <= w[0].last {
                v.problems.push(format!(
                    "{topic}/{partition}: {} version {} records offsets {}..={} that {} version {} already recorded",
                    w[1].table, w[1].version, w[1].first, w[1].last, w[0].table, w[0].version
                ));
            }
        }
        let offs = offsets.get(key).map(Vec::as_slice).unwrap_or(&[]);
        for r in rs.iter() {
            let lo = offs.partition_point(|o| *o < r.first);
            let hi = offs.partition_point(|o| *o <= r.last);
            let n = hi.saturating_sub(lo) as u64;
            if n != r.messages {
                v.problems.push(format!(
                    "{topic}/{partition} offsets {}..={}: {} version {} consumed {} messages, the tables hold {n} rows of them (rows deleted or added)",
                    r.first, r.last, r.table, r.version, r.messages
                ));
            }
        }
    }
    for (key, offs) in &offsets {
        let (topic, partition) = key;
        // `rs` is sorted by first offset; `reach[i]` is the highest offset ranges 0..=i cover, so
        // an offset is in some range iff the ranges starting at or below it reach it.
        let rs = ranges.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let reach: Vec<i64> = rs
            .iter()
            .scan(i64::MIN, |m, r| {
                *m = (*m).max(r.last);
                Some(*m)
            })
            .collect();
        let last = reach.last().copied();
        let mut outside = Vec::new();
        let mut pending = 0usize;
        for o in offs {
            let i = rs.partition_point(|r| r.first <= *o);
            if i > 0 && reach[i - 1] >= *o {
                continue;
            }
            if last.is_none_or(|l| *o > l) {
                pending += 1;
            } else {
                outside.push(*o);
            }
        }
        if !outside.is_empty() {
            v.problems.push(format!(
                "{topic}/{partition}: {} rows have offsets no commit recorded (first {})",
                outside.len(),
                outside[0]
            ));
        }
        if pending > 0 {
            v.notes.push(format!(
                "{topic}/{partition}: {pending} quarantine rows beyond the recorded position (a commit whose table commit did not follow yet; ingest completes it)"
            ));
        }
    }
    v
}

/// Compare each compaction's written file with the files it replaced, while they are all still
/// in the store: the same rows (every column), in offset order. The log's record of both
/// files' SHA-256 and rows is checked by `read_log`; this proves the rows were not changed on
/// the way. A group whose replaced files are gone (vacuumed) is checked by its offsets only,
/// and said so in a note. Returns the paths of the replaced files.
async fn verify_compactions(
    log: &warehouse::WarehouseLog,
    store: &dyn object_store::ObjectStore,
    obj: &dyn Fn(&str) -> ObjectPath,
    v: &mut Verification,
) -> BTreeSet<String> {
    let mut replaced = BTreeSet::new();
    let mut gone = 0usize;
    for c in &log.commits {
        let Some(k) = &c.compaction else { continue };
        for g in &k.groups {
            replaced.extend(g.replaced.iter().map(|r| r.path.clone()));
            let at = format!("{} version {}", c.table, c.version);
            let read = |r: &warehouse::FileRef| {
                let path = obj(&r.path);
                async move {
                    match store.get(&path).await {
                        Ok(x) => x.bytes().await.map(Some).map_err(|e| e.to_string()),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e.to_string()),
                    }
                }
            };
            let mut old = Vec::new();
            let mut complete = true;
            for r in &g.replaced {
                match read(r).await {
                    Ok(Some(b)) => {
                        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&b));
                        if sha != r.sha256 {
                            v.problems.push(format!(
                                "modified: {} (replaced at {at}; SHA-256 recorded {}, the file's is {sha})",
                                r.path, r.sha256
                            ));
                            complete = false;
                        } else {
                            old.push(b);
                        }
                    }
                    Ok(None) => complete = false,
                    Err(e) => {
                        v.problems.push(format!("unreadable: {}: {e}", r.path));
                        complete = false;
                    }
                }
            }
            let new = match read(&g.added).await {
                Ok(Some(b)) => b,
                // A missing or unreadable added file is reported where it is live.
                _ => continue,
            };
            if !complete {
                gone += 1;
                continue;
            }
            match same_rows(&old, new) {
                Ok(None) => {}
                Ok(Some(diff)) => v.problems.push(format!(
                    "compacted: {} (written at {at}) does not hold the rows of the {} files it replaced: {diff}",
                    g.added.path,
                    g.replaced.len()
                )),
                Err(e) => v.problems.push(format!(
                    "compacted: {} (written at {at}) cannot be compared with the files it replaced: {e}",
                    g.added.path
                )),
            }
        }
    }
    if gone > 0 {
        v.notes.push(format!(
            "{gone} compacted files are checked by their offsets only: files they replaced are no longer in the store (vacuumed)"
        ));
    }
    replaced
}

/// `None` when `new` holds exactly the rows of `old` (each sorted by `kafka_offset`), else what
/// differs.
fn same_rows(old: &[bytes::Bytes], new: bytes::Bytes) -> Result<Option<String>, String> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let read = |b: bytes::Bytes| -> Result<Vec<arrow::record_batch::RecordBatch>, String> {
        ParquetRecordBatchReaderBuilder::try_new(b)
            .and_then(|r| r.build())
            .map_err(|e| e.to_string())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    };
    let sorted = |batches: Vec<arrow::record_batch::RecordBatch>| {
        let Some(first) = batches.first() else {
            return Ok(None);
        };
        let all =
            arrow::compute::concat_batches(&first.schema(), &batches).map_err(|e| e.to_string())?;
        let off = all
            .column_by_name("kafka_offset")
            .ok_or("no kafka_offset column")?;
        let order = arrow::compute::sort_to_indices(off, None, None).map_err(|e| e.to_string())?;
        arrow::compute::take_record_batch(&all, &order)
            .map(Some)
            .map_err(|e| e.to_string())
    };
    let mut before = Vec::new();
    for b in old {
        before.extend(read(b.clone())?);
    }
    let (a, b) = (sorted(before)?, sorted(read(new)?)?);
    let (Some(a), Some(b)) = (a, b) else {
        return Ok(Some("one side has no rows".into()));
    };
    if a.num_rows() != b.num_rows() {
        return Ok(Some(format!(
            "{} rows against {}",
            b.num_rows(),
            a.num_rows()
        )));
    }
    if a.schema().fields() != b.schema().fields() {
        return Ok(Some("the columns differ".into()));
    }
    for (i, f) in a.schema().fields().iter().enumerate() {
        if a.column(i).to_data() != b.column(i).to_data() {
            return Ok(Some(format!("column {} differs", f.name())));
        }
    }
    Ok(None)
}

/// The commits themselves: after the table's creation, every commit is flowaudit's (its commit
/// info), adds only, and sets exactly its own partition's `txn` to the last offset it covers,
/// higher than before. A commit that moves a position without flowaudit's record of why, or
/// removes a file, is not one ingest makes.
fn check_commits(log: &warehouse::WarehouseLog, problems: &mut Vec<String>) {
    let mut positions: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for c in &log.commits {
        let at = format!("{} version {}", c.table, c.version);
        if let Some(k) = &c.compaction {
            // Files replaced by files with the same rows (read_log checked the record against
            // the actions; verify_compactions compares the rows): no data and no position moves.
            let replaced: usize = k.groups.iter().map(|g| g.replaced.len()).sum();
            if c.meta.is_some() || !c.txns.is_empty() {
                problems.push(format!(
                    "{at} is a compaction that also records offsets or sets positions {:?}",
                    c.txns
                ));
            }
            if c.adds != k.groups.len() || c.removes != replaced {
                problems.push(format!(
                    "{at} is a compaction of {replaced} files into {} that adds {} and removes {}",
                    k.groups.len(),
                    c.adds,
                    c.removes
                ));
            }
            continue;
        }
        if c.removes > 0 {
            problems.push(format!(
                "{at} removes {} files (the tables are append-only: a file leaves only with its rows, or in a compaction)",
                c.removes
            ));
        }
        let Some(m) = &c.meta else {
            if c.version > 0 || !c.txns.is_empty() || c.adds > 0 {
                problems.push(format!(
                    "{at} has no flowaudit commit info (not written by flowaudit ingest)"
                ));
            }
            continue;
        };
        if m.covers_first_offset > m.covers_last_offset {
            problems.push(format!(
                "{at} covers offsets {}..={} (first after last)",
                m.covers_first_offset, m.covers_last_offset
            ));
        }
        let Some(table) = Table::ALL.iter().find(|t| t.name() == c.table) else {
            continue;
        };
        let app = warehouse::app_id(*table, &m.topic, m.partition);
        match c.txns.as_slice() {
            [(id, version)] if *id == app && *version == m.covers_last_offset => {
                if let Some((prev, prev_v)) = positions.get(&app) {
                    if *version <= *prev {
                        problems.push(format!(
                            "{at} moves {app} back to {version} (version {prev_v} had set {prev})"
                        ));
                    }
                }
                positions.insert(app, (*version, c.version));
            }
            other => problems.push(format!(
                "{at} sets the positions {other:?}; a commit of {}/{} offsets {}..={} sets exactly {app} to {}",
                m.topic, m.partition, m.covers_first_offset, m.covers_last_offset, m.covers_last_offset
            )),
        }
    }
}

fn relative(p: &ObjectPath, prefix: &ObjectPath) -> String {
    match p.prefix_match(prefix) {
        Some(parts) => parts
            .map(|s| s.as_ref().to_string())
            .collect::<Vec<_>>()
            .join("/"),
        None => p.to_string(),
    }
}

/// A Parquet file's row count and `kafka_offset` values.
fn file_offsets(bytes: bytes::Bytes) -> Result<(u64, Vec<i64>), String> {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ProjectionMask;
    let b = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| e.to_string())?;
    let footer_rows = b.metadata().file_metadata().num_rows();
    let descr = b.metadata().file_metadata().schema_descr();
    let idx = (0..descr.num_columns())
        .find(|i| descr.column(*i).name() == "kafka_offset")
        .ok_or("no kafka_offset column")?;
    let mask = ProjectionMask::leaves(descr, [idx]);
    let reader = b.with_projection(mask).build().map_err(|e| e.to_string())?;
    // The footer's count sizes the buffer only within reason: it is data read from storage.
    let mut out = Vec::with_capacity(footer_rows.clamp(0, 1 << 20) as usize);
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        rows += batch.num_rows() as u64;
        let col = batch.column(0);
        let a = col
            .as_primitive_opt::<Int64Type>()
            .ok_or("kafka_offset is not an int64 column")?;
        out.extend(a.iter().flatten());
    }
    Ok((rows, out))
}
