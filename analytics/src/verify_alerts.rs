//! `verify` of the `alerts` Delta table against the outbox it is written from.
//!
//! The outbox (`_alerts/alerts.jsonl` in the state directory) is the record of every alert, and
//! checkpoints chain it (docs/evidence.md); the `alerts` table is the copy analysts query. Whoever
//! can write the warehouse can edit that copy, so it is checked row by row: the table's log is
//! read from its JSON commits (as verify reads the ingest tables), every live file of this
//! store must be in place with the SHA-256 its `add` recorded, and its rows must be, column by
//! column, what the outbox's lines give ([`crate::alerts::table_batch`]): each line up to the
//! table's `txn` for the store exactly once, in the partition of its day, and no row the outbox
//! does not hold. Lines after the `txn` are not written yet (the next rule run writes them): a
//! note. Rows of another store (another state directory) cannot be checked here: a note.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use arrow::array::{Array, Int64Array};
use arrow::record_batch::RecordBatch;
use arrow::util::display::array_value_to_string;
use flowaudit_ingest::warehouse::{self, Location};
use object_store::path::Path as ObjectPath;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::alerts::{table_batch, Alert};
use crate::alerts_table::{app_id, TABLE};

/// What the check found.
#[derive(Debug, Default)]
pub struct AlertsCheck {
    /// The store whose outbox was read.
    pub store: String,
    /// Rows of this store checked against the outbox.
    pub checked: u64,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

impl AlertsCheck {
    /// One phrase for verify's summary line.
    pub fn summary(&self) -> String {
        format!(
            "alerts table: {} alert(s) of store {} match its outbox",
            self.checked, self.store
        )
    }
}

/// Check the `alerts` table of the warehouse at `location` against the outbox in the state
/// directory `state`. `None` when that directory has no outbox.
pub async fn check(location: &Location, state: &Path) -> Option<AlertsCheck> {
    let dir = state.join("_alerts");
    let outbox_path = dir.join("alerts.jsonl");
    let text = std::fs::read_to_string(&outbox_path).ok()?;
    let mut c = AlertsCheck {
        store: std::fs::read_to_string(dir.join("store_id"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        ..Default::default()
    };
    let mut outbox: Vec<Alert> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match serde_json::from_str::<Alert>(line) {
            Ok(a) if a.seq == i as u64 + 1 => outbox.push(a),
            Ok(a) => {
                c.problems.push(format!(
                    "{} line {}: sequence {} where {} was expected",
                    outbox_path.display(),
                    i + 1,
                    a.seq,
                    i + 1
                ));
                return Some(c);
            }
            // A torn last line (a crash while raising) is cut by the next open of the store.
            Err(_) if i + 1 == text.lines().count() && !text.ends_with('\n') => break,
            Err(e) => {
                c.problems
                    .push(format!("{} line {}: {e}", outbox_path.display(), i + 1));
                return Some(c);
            }
        }
    }
    if let Err(e) = check_table(location, &outbox, &mut c).await {
        c.problems.push(format!("alerts table: {e}"));
    }
    Some(c)
}

/// One live file of the table: its path under the table, recorded SHA-256 and partition.
struct Live {
    sha256: String,
    date: Option<String>,
}

async fn check_table(
    location: &Location,
    outbox: &[Alert],
    c: &mut AlertsCheck,
) -> Result<(), String> {
    let (store, prefix) = location.store().map_err(|e| e.to_string())?;
    let listing = warehouse::list_commits(store.as_ref(), &prefix, TABLE)
        .await
        .map_err(|e| e.to_string())?;
    let app = app_id(&c.store);
    let mut live: BTreeMap<String, Live> = BTreeMap::new();
    let mut txn: BTreeMap<String, i64> = BTreeMap::new();
    let mut last = -1i64;
    for (v, path) in &listing.commits {
        if *v != last + 1 {
            return Err(format!(
                "the log jumps from version {last} to {v} (a commit file is missing)"
            ));
        }
        last = *v;
        let bytes = warehouse::get_bytes(store.as_ref(), path)
            .await
            .map_err(|e| e.to_string())?;
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let action: Value =
                serde_json::from_slice(line).map_err(|e| format!("{path} line {}: {e}", i + 1))?;
            if let Some(a) = action.get("add") {
                let rel = warehouse::decode_path(a["path"].as_str().unwrap_or_default());
                let tag = |k: &str| {
                    a["tags"][format!("flowaudit.{k}")]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                };
                live.insert(
                    rel,
                    Live {
                        sha256: tag("sha256"),
                        date: a["partitionValues"]["date"].as_str().map(String::from),
                    },
                );
            } else if let Some(r) = action.get("remove") {
                let rel = warehouse::decode_path(r["path"].as_str().unwrap_or_default());
                if live.remove(&rel).is_none() {
                    c.problems.push(format!(
                        "alerts table: {path} line {}: removes {rel}, which is not a live file (the table is append-only)",
                        i + 1
                    ));
                }
            } else if let Some(t) = action.get("txn") {
                if let (Some(id), Some(v)) = (t["appId"].as_str(), t["version"].as_i64()) {
                    txn.insert(id.to_string(), v);
                }
            }
        }
    }
    let held = txn.get(&app).copied().unwrap_or(0).max(0) as u64;
    if held > outbox.len() as u64 {
        c.problems.push(format!(
            "alerts table: its txn {app} says it holds lines 1..={held}, but the outbox holds {}: lines were dropped from the outbox or the txn was forged",
            outbox.len()
        ));
    }
    let mine = format!("alerts-{}-", c.store);
    let mut others: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen: HashMap<u64, String> = HashMap::new();
    for (rel, f) in &live {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let at = format!("{TABLE}/{rel}");
        let obj = rel
            .split('/')
            .filter(|s| !s.is_empty())
            .fold(prefix.clone().join(TABLE), |p: ObjectPath, s| p.join(s));
        let bytes = match warehouse::get_bytes(store.as_ref(), &obj).await {
            Ok(b) => b,
            Err(e) => {
                c.problems
                    .push(format!("alerts table: file {at} is missing: {e}"));
                continue;
            }
        };
        let sha = hex::encode(Sha256::digest(&bytes));
        if sha != f.sha256 {
            c.problems.push(format!(
                "alerts table: file {at} was changed: its SHA-256 is {sha}, its add recorded {}",
                f.sha256
            ));
        }
        let batch = match read_batch(bytes) {
            Ok(b) => b,
            Err(e) => {
                c.problems
                    .push(format!("alerts table: file {at} cannot be read: {e}"));
                continue;
            }
        };
        if !name.starts_with(&mine) {
            // `alerts-<store id>-<first>-<last>.parquet`
            let store = name
                .strip_prefix("alerts-")
                .and_then(|r| r.split('-').next())
                .unwrap_or("?");
            *others.entry(store.to_string()).or_default() += batch.num_rows() as u64;
            continue;
        }
        let Some(seqs) = batch
            .column_by_name("seq")
            .and_then(|a| a.as_any().downcast_ref::<Int64Array>())
        else {
            c.problems
                .push(format!("alerts table: file {at} has no seq column"));
            continue;
        };
        for row in 0..batch.num_rows() {
            let seq = seqs.value(row).max(0) as u64;
            if let Some(first) = seen.insert(seq, at.clone()) {
                c.problems.push(format!(
                    "alerts table: alert {seq} of store {} is in it twice ({first} and {at})",
                    c.store
                ));
                continue;
            }
            let Some(want) = seq.checked_sub(1).and_then(|i| outbox.get(i as usize)) else {
                c.problems.push(format!(
                    "alerts table: file {at} holds alert {seq}, which the outbox of store {} does not hold (it has {})",
                    c.store,
                    outbox.len()
                ));
                continue;
            };
            if seq > held {
                c.problems.push(format!(
                    "alerts table: file {at} holds alert {seq}, past the {held} its txn {app} records"
                ));
            }
            if f.date.as_deref() != Some(want.day.as_str()) {
                c.problems.push(format!(
                    "alerts table: alert {seq} is in partition date={} but its day is {}",
                    f.date.as_deref().unwrap_or("(none)"),
                    want.day
                ));
            }
            match differs(&batch, row, want) {
                Ok(None) => c.checked += 1,
                Ok(Some(col)) => c.problems.push(format!(
                    "alerts table: alert {seq} ({} {}) in {at} differs from the outbox in column {col}",
                    want.rule_id, want.entity_key
                )),
                Err(e) => c.problems.push(format!("alerts table: file {at}: {e}")),
            }
        }
    }
    let missing: Vec<u64> = (1..=held.min(outbox.len() as u64))
        .filter(|s| !seen.contains_key(s))
        .collect();
    if let Some(first) = missing.first() {
        c.problems.push(format!(
            "alerts table: {} alert(s) of store {} that its txn says it holds are not in it (first: {first}, {} {})",
            missing.len(),
            c.store,
            outbox[*first as usize - 1].rule_id,
            outbox[*first as usize - 1].entity_key
        ));
    }
    if held < outbox.len() as u64 {
        c.notes.push(format!(
            "alerts table: alerts {}..={} of store {} are not written yet (the next rule run writes them)",
            held + 1,
            outbox.len(),
            c.store
        ));
    }
    if !others.is_empty() {
        let list = others
            .iter()
            .map(|(s, n)| format!("{n} of store {s}"))
            .collect::<Vec<_>>()
            .join(", ");
        c.notes.push(format!(
            "alerts table: rows of other stores not checked ({list}): their outboxes are in other state directories; a store you do not run is not yours"
        ));
    }
    Ok(())
}

fn read_batch(bytes: bytes::Bytes) -> Result<RecordBatch, String> {
    let b = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| e.to_string())?;
    let schema = b.schema().clone();
    let r = b.build().map_err(|e| e.to_string())?;
    let batches: Vec<RecordBatch> = r.collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    arrow::compute::concat_batches(&schema, &batches).map_err(|e| e.to_string())
}

/// The first column in which row `row` of `batch` differs from what the outbox line `want`
/// gives; `None` when none does.
fn differs(batch: &RecordBatch, row: usize, want: &Alert) -> Result<Option<String>, String> {
    let expected = table_batch(&[want]).map_err(|e| e.to_string())?;
    for (i, field) in expected.schema().fields().iter().enumerate() {
        let Some(got) = batch.column_by_name(field.name()) else {
            return Ok(Some(format!("{} (missing)", field.name())));
        };
        let cell = |a: &dyn Array, r: usize| -> Result<String, String> {
            if a.is_null(r) {
                return Ok("NULL".into());
            }
            array_value_to_string(a, r).map_err(|e| e.to_string())
        };
        if cell(got.as_ref(), row)? != cell(expected.column(i).as_ref(), 0)? {
            return Ok(Some(field.name().clone()));
        }
    }
    Ok(None)
}
