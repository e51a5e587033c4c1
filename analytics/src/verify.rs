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
//! written by the rule runner, not ingest, and is not checked here.
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
    for f in &log.files {
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
    // Files in the tables' directories that no commit lists.
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
            if rel.split('/').nth(1) == Some(LOG_DIR) || live.contains(&rel) {
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

/// The commits themselves: after the table's creation, every commit is flowaudit's (its commit
/// info), adds only, and sets exactly its own partition's `txn` to the last offset it covers,
/// higher than before. A commit that moves a position without flowaudit's record of why, or
/// removes a file, is not one ingest makes.
fn check_commits(log: &warehouse::WarehouseLog, problems: &mut Vec<String>) {
    let mut positions: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for c in &log.commits {
        let at = format!("{} version {}", c.table, c.version);
        if c.removes > 0 {
            problems.push(format!(
                "{at} removes {} files (the tables are append-only: a file leaves only with its rows)",
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
