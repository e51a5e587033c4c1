//! `flowaudit verify`: check a warehouse against its manifest.
//!
//! The manifest's hash chain is walked from the genesis hash; then every recorded file must be
//! in place with its recorded SHA-256 and row count, and every Parquet file of the ingest tables
//! (`gateway_events`, `flows`, `quarantine`) must be recorded. Each discrepancy is one problem,
//! naming the file (and the manifest line where it applies). Writers' staging areas are not
//! checked (files there are not yet part of the warehouse); the `alerts` table is written by the
//! rule runner from `_alerts/alerts.jsonl`, not recorded in the manifest, and is not checked.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use flowaudit_ingest::manifest::{ManifestEntry, GENESIS_HASH};
use flowaudit_ingest::schema::Table;

/// What verification found.
#[derive(Debug, Default)]
pub struct Verification {
    pub files: usize,
    pub rows: u64,
    pub head_seq: u64,
    pub head_hash: String,
    /// Empty when the warehouse verifies.
    pub problems: Vec<String>,
}

/// Verify `warehouse`.
pub fn verify(warehouse: &Path) -> Verification {
    let mut v = Verification {
        head_hash: GENESIS_HASH.into(),
        ..Default::default()
    };
    let path = warehouse.join("_manifest").join("manifest.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            v.problems
                .push(format!("{}: cannot be read: {e}", path.display()));
            return v;
        }
    };
    let mut entries: Vec<ManifestEntry> = Vec::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let n = i + 1;
        if !line.ends_with('\n') {
            v.problems.push(format!(
                "manifest line {n}: incomplete last line (an append in progress or a truncation)"
            ));
            break;
        }
        let e: ManifestEntry = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(err) => {
                v.problems
                    .push(format!("manifest line {n}: not a manifest entry: {err}"));
                return v;
            }
        };
        if e.prev_hash != v.head_hash {
            v.problems.push(format!(
                "manifest line {n} (seq {}): hash chain broken: it follows {} but the previous line's hash is {}",
                e.seq, e.prev_hash, v.head_hash
            ));
            return v;
        }
        if e.compute_hash() != e.hash {
            v.problems.push(format!(
                "manifest line {n} (seq {}, {}): rewritten: its content does not match its hash",
                e.seq, e.path
            ));
            return v;
        }
        v.head_hash = e.hash.clone();
        v.head_seq = e.seq;
        entries.push(e);
    }
    let mut recorded = BTreeSet::new();
    for e in &entries {
        recorded.insert(PathBuf::from(&e.path));
        let file = warehouse.join(&e.path);
        if !file.is_file() {
            v.problems.push(format!(
                "deleted: {} (recorded at manifest seq {})",
                e.path, e.seq
            ));
            continue;
        }
        v.files += 1;
        match flowaudit_ingest::writer::sha256_file(&file) {
            Ok(h) if h == e.sha256 => {}
            Ok(h) => {
                v.problems.push(format!(
                    "modified: {} (SHA-256 recorded at seq {} is {}, the file's is {h})",
                    e.path, e.seq, e.sha256
                ));
                continue;
            }
            Err(err) => {
                v.problems.push(format!("unreadable: {}: {err}", e.path));
                continue;
            }
        }
        match parquet_rows(&file) {
            Ok(r) if r == e.rows => v.rows += r,
            Ok(r) => v.problems.push(format!(
                "row count: {} has {r} rows, the manifest (seq {}) says {}",
                e.path, e.seq, e.rows
            )),
            Err(err) => v
                .problems
                .push(format!("not readable as Parquet: {}: {err}", e.path)),
        }
    }
    for t in Table::ALL {
        let mut found = Vec::new();
        walk(&warehouse.join(t.name()), &mut found);
        for f in found {
            let rel = f.strip_prefix(warehouse).unwrap_or(&f).to_path_buf();
            if !recorded.contains(&rel) {
                v.problems
                    .push(format!("added outside the manifest: {}", rel.display()));
            }
        }
    }
    v
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn parquet_rows(path: &Path) -> Result<u64, String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let r = SerializedFileReader::new(f).map_err(|e| e.to_string())?;
    Ok(r.metadata().file_metadata().num_rows() as u64)
}
