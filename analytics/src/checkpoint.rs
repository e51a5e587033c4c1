//! Checkpoints: the warehouse's head and the rule runner's records, signed by the auditor and
//! time-stamped by a Time-Stamping Authority, kept in a witness location the platform cannot
//! write (docs/evidence.md).
//!
//! A checkpoint is three objects under `<witness>/checkpoints/`, named by its sequence number:
//! - `NNNNNNNNNNNN.json`: the statement, exactly the bytes signed (JSON, sorted keys, no
//!   whitespace): the log version and chain hash, files and rows of every table; the last offset
//!   recorded per table, topic and partition; the recorded gaps; the line count and chain hash of
//!   the alert outbox and of the run records; the SHA-256 and rows of `suppressions.csv`; the
//!   time; and the SHA-256 of the previous checkpoint's statement, so the checkpoints form a
//!   chain of their own and one deleted from the middle is seen.
//! - `NNNNNNNNNNNN.sig`: the raw 64-byte Ed25519 signature of the statement by the auditor's key
//!   (`openssl pkeyutl -verify -rawin` checks it).
//! - `NNNNNNNNNNNN.tsr`: the TSA's RFC 3161 response over the statement (`openssl ts -verify`).
//!   A TSA that is down delays only this object: the next checkpoint asks again for every
//!   statement without one.
//!
//! Objects are written with create-only puts: nothing in the witness is ever overwritten.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use flowaudit_ingest::warehouse::{self, Location, WarehouseLog, GENESIS_HASH};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

/// Version of the statement JSON.
pub const CHECKPOINT_SCHEMA: &str = "flowaudit.checkpoint/1";
/// The witness's folder of checkpoints.
const DIR: &str = "checkpoints";

/// Errors of writing or reading checkpoints, each naming what and where.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{0}")]
    Config(String),
    #[error("warehouse: {0}")]
    Warehouse(#[from] flowaudit_ingest::Error),
    #[error("witness {at}: {source}")]
    Witness {
        at: String,
        source: object_store::Error,
    },
    #[error("{path}: {msg}")]
    State { path: PathBuf, msg: String },
    #[error(
        "checkpoint {seq} already exists in the witness: another checkpointer wrote it; run again"
    )]
    Raced { seq: u64 },
}

type Result<T> = std::result::Result<T, CheckpointError>;

/// Where the rule runner's records are: the state directory (alert outbox and run records) and
/// the policy folder (`suppressions.csv`). Either may be absent (a warehouse without rules).
#[derive(Debug, Clone, Default)]
pub struct StatePaths {
    pub state_dir: Option<PathBuf>,
    pub policy: Option<PathBuf>,
}

impl StatePaths {
    fn alerts(&self) -> Option<PathBuf> {
        self.state_dir
            .as_ref()
            .map(|d| d.join("_alerts").join("alerts.jsonl"))
    }
    fn runs(&self) -> Option<PathBuf> {
        self.state_dir
            .as_ref()
            .map(|d| d.join("_runs").join("runs.jsonl"))
    }
    fn suppressions(&self) -> Option<PathBuf> {
        self.policy.as_ref().map(|d| d.join("suppressions.csv"))
    }
}

/// An append-only JSON-lines file as a chain: `lines` complete lines, and the chain hash over
/// them (`warehouse::chain` of each line's SHA-256, from the genesis hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineChain {
    pub lines: u64,
    pub hash: String,
}

/// The chain over the complete lines of `path` (a missing file has none), and the chain hash
/// after each line count in `at`.
fn line_chain(
    path: &Path,
    at: &std::collections::BTreeSet<u64>,
) -> Result<(LineChain, BTreeMap<u64, String>)> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(CheckpointError::State {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })
        }
    };
    let mut hash = GENESIS_HASH.to_string();
    let mut found = BTreeMap::new();
    if at.contains(&0) {
        found.insert(0, hash.clone());
    }
    // A torn last line (no newline) is not yet a record: the store cuts it on open.
    let complete = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(i) => &bytes[..=i],
        None => &[][..],
    };
    let mut lines = 0u64;
    for line in complete.split_inclusive(|b| *b == b'\n') {
        hash = warehouse::chain(&hash, &hex::encode(Sha256::digest(line)));
        lines += 1;
        if at.contains(&lines) {
            found.insert(lines, hash.clone());
        }
    }
    Ok((LineChain { lines, hash }, found))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The statement of checkpoint `seq` for the warehouse `log` and the runner's records.
///
/// `since` holds each table's version at the previous checkpoint: the statement names every
/// commit after it (version and SHA-256 of the commit file) and every live file those commits
/// added (path, SHA-256, rows), so that `verify` names the commit or file a rewrite changed.
pub fn statement(
    seq: u64,
    previous: &str,
    created_at: DateTime<Utc>,
    location: &Location,
    log: &WarehouseLog,
    state: &StatePaths,
    since: &BTreeMap<String, i64>,
) -> Result<Value> {
    let mut tables = Vec::new();
    for h in &log.heads {
        let (mut files, mut rows) = (0u64, 0u64);
        for f in log.files.iter().filter(|f| f.table == h.table) {
            files += 1;
            rows += f.rows;
        }
        let after = since.get(&h.table).copied().unwrap_or(-1);
        let commits: Vec<Value> = log
            .commits
            .iter()
            .filter(|c| c.table == h.table && c.version > after)
            .map(|c| json!([c.version, c.file_sha256]))
            .collect();
        let added: Vec<Value> = log
            .files
            .iter()
            .filter(|f| f.table == h.table && f.version > after)
            .map(|f| json!({"path": f.path, "sha256": f.sha256, "rows": f.rows, "version": f.version}))
            .collect();
        tables.push(
            json!({"table": h.table, "version": h.version, "hash": h.hash,
            "files": files, "rows": rows, "commits": commits, "added": added}),
        );
    }
    let positions: Vec<Value> = crate::runner::positions(log)
        .into_iter()
        .map(|p| {
            json!({"table": p.table, "topic": p.topic, "partition": p.partition,
                "last_offset": p.next_offset - 1})
        })
        .collect();
    let gaps: Vec<Value> = log
        .gaps()
        .into_iter()
        .map(|g| {
            json!({"table": g.table, "version": g.version, "topic": g.topic,
                "partition": g.partition, "first_offset": g.first_offset,
                "last_offset": g.last_offset, "reason": g.reason})
        })
        .collect();
    let mut records = serde_json::Map::new();
    for (name, path) in [("alerts", state.alerts()), ("runs", state.runs())] {
        if let Some(path) = path {
            let (c, _) = line_chain(&path, &Default::default())?;
            records.insert(name.into(), json!({"lines": c.lines, "hash": c.hash}));
        }
    }
    if let Some(path) = state.suppressions() {
        let text = std::fs::read(&path).unwrap_or_default();
        records.insert(
            "suppressions".into(),
            json!({"sha256": sha256_hex(&text), "text": String::from_utf8_lossy(&text)}),
        );
    }
    Ok(json!({
        "schema": CHECKPOINT_SCHEMA,
        "seq": seq,
        "previous": previous,
        "created_at": created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "warehouse": location.to_string(),
        "tables": tables,
        "positions": positions,
        "gaps": gaps,
        "records": records,
    }))
}

/// The witness: a store and the folder of checkpoints in it.
pub struct Witness {
    store: std::sync::Arc<dyn ObjectStore>,
    dir: ObjectPath,
    name: String,
}

/// What the witness holds for one sequence number: which of its three objects exist.
#[derive(Debug, Default, Clone, Copy)]
pub struct Present {
    pub statement: bool,
    pub signature: bool,
    pub token: bool,
}

/// The objects of one sequence number, read.
#[derive(Debug, Default, Clone)]
pub struct Entry {
    pub statement: Option<Vec<u8>>,
    pub signature: Option<Vec<u8>>,
    pub token: Option<Vec<u8>>,
}

impl Witness {
    /// Open the witness at `location` (a directory, created if missing when `create`, or
    /// `s3://…`).
    pub fn open(location: &Location, create: bool) -> Result<Self> {
        if let Some(dir) = location.local().filter(|_| create) {
            std::fs::create_dir_all(dir.join(DIR)).map_err(|e| CheckpointError::State {
                path: dir.to_path_buf(),
                msg: e.to_string(),
            })?;
        }
        let (store, prefix) = location.store()?;
        Ok(Witness {
            store,
            dir: prefix.clone().join(DIR),
            name: location.to_string(),
        })
    }

    fn path(&self, seq: u64, ext: &str) -> ObjectPath {
        self.dir.clone().join(format!("{seq:012}.{ext}"))
    }

    fn err(&self, e: object_store::Error) -> CheckpointError {
        CheckpointError::Witness {
            at: self.name.clone(),
            source: e,
        }
    }

    /// Which objects the witness holds, by sequence number (names only, nothing is read);
    /// names that are not checkpoints are returned apart. A local witness directory that does
    /// not exist holds nothing.
    pub async fn index(&self) -> Result<(BTreeMap<u64, Present>, Vec<String>)> {
        let metas: Vec<_> = match self.store.list(Some(&self.dir)).try_collect().await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(self.err(e)),
        };
        let mut out: BTreeMap<u64, Present> = BTreeMap::new();
        let mut strays = Vec::new();
        for m in metas {
            let name = m.location.filename().unwrap_or_default().to_string();
            let parsed = name
                .split_once('.')
                .filter(|(n, ext)| n.len() == 12 && matches!(*ext, "json" | "sig" | "tsr"))
                .and_then(|(n, ext)| Some((n.parse::<u64>().ok()?, ext.to_string())))
                .filter(|(n, _)| *n > 0);
            let Some((seq, ext)) = parsed else {
                strays.push(name);
                continue;
            };
            let e = out.entry(seq).or_default();
            match ext.as_str() {
                "json" => e.statement = true,
                "sig" => e.signature = true,
                _ => e.token = true,
            }
        }
        Ok((out, strays))
    }

    /// One object's bytes.
    pub async fn get(&self, seq: u64, ext: &str) -> Result<Vec<u8>> {
        Ok(self
            .store
            .get(&self.path(seq, ext))
            .await
            .map_err(|e| self.err(e))?
            .bytes()
            .await
            .map_err(|e| self.err(e))?
            .to_vec())
    }

    /// The objects of `seq` that `p` says exist.
    pub async fn read(&self, seq: u64, p: Present) -> Result<Entry> {
        let mut e = Entry::default();
        if p.statement {
            e.statement = Some(self.get(seq, "json").await?);
        }
        if p.signature {
            e.signature = Some(self.get(seq, "sig").await?);
        }
        if p.token {
            e.token = Some(self.get(seq, "tsr").await?);
        }
        Ok(e)
    }

    async fn create(&self, seq: u64, ext: &str, bytes: Vec<u8>) -> Result<()> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(seq, ext), PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(CheckpointError::Raced { seq }),
            Err(e) => Err(self.err(e)),
        }
    }
}

/// How to write a checkpoint.
pub struct Settings {
    pub warehouse: Location,
    pub witness: Location,
    pub key: SigningKey,
    pub tsa_url: Option<String>,
    /// Attempts at the TSA per statement in one run, and the first wait between them (doubling).
    pub tsa_attempts: u32,
    pub tsa_backoff: Duration,
    pub state: StatePaths,
}

/// What one checkpoint run did.
#[derive(Debug, Default)]
pub struct Written {
    pub seq: u64,
    pub statement: Value,
    /// Sequence numbers that got their timestamp token in this run.
    pub stamped: Vec<u64>,
    /// Sequence numbers still without a token, and why.
    pub unstamped: Vec<(u64, String)>,
}

/// Write the next checkpoint: statement and signature, then a timestamp token for it and for
/// every earlier statement still without one. The TSA being down is reported in the result, not
/// an error: the signed statement is already in the witness.
pub async fn write(s: &Settings) -> Result<Written> {
    let witness = Witness::open(&s.witness, true)?;
    let (index, _) = witness.index().await?;
    let seq = index.keys().next_back().map_or(1, |n| n + 1);
    // The previous checkpoint is the newest statement signed with this key: one that is not (a
    // statement someone else put in the witness) is never chained to, let alone signed.
    let vk = s.key.verifying_key();
    let mut previous = GENESIS_HASH.to_string();
    let mut since: BTreeMap<String, i64> = BTreeMap::new();
    for (n, _) in index
        .iter()
        .rev()
        .filter(|(_, p)| p.statement && p.signature)
    {
        let (st, sig) = (
            witness.get(*n, "json").await?,
            witness.get(*n, "sig").await?,
        );
        if crate::signing::signed_by(&vk, &st, &sig) {
            previous = sha256_hex(&st);
            let prev: Value = serde_json::from_slice(&st).unwrap_or_default();
            for t in prev["tables"].as_array().into_iter().flatten() {
                if let (Some(table), Some(v)) = (t["table"].as_str(), t["version"].as_i64()) {
                    since.insert(table.to_string(), v);
                }
            }
            break;
        }
        warn!(
            seq = n,
            "a checkpoint in the witness is not signed with this key: not chained to"
        );
    }
    let log = warehouse::read_log(&s.warehouse).await?;
    let st = statement(
        seq,
        &previous,
        Utc::now(),
        &s.warehouse,
        &log,
        &s.state,
        &since,
    )?;
    let bytes = serde_json::to_vec(&st).expect("json");
    let sig = s.key.sign(&bytes);
    // The signature first: a checkpointer stopped between the two puts leaves a signature
    // without a statement, which verify notes and the next checkpoint skips; never an unsigned
    // statement.
    witness.create(seq, "sig", sig.to_bytes().to_vec()).await?;
    witness.create(seq, "json", bytes.clone()).await?;
    info!(seq, witness = %s.witness, heads = %log.heads_summary(), "checkpoint written");
    let mut out = Written {
        seq,
        statement: st,
        ..Default::default()
    };
    if let Some(url) = &s.tsa_url {
        let mut pending: Vec<(u64, Vec<u8>)> = Vec::new();
        for (n, _) in index.iter().filter(|(_, p)| p.statement && !p.token) {
            pending.push((*n, witness.get(*n, "json").await?));
        }
        pending.push((seq, bytes));
        for (n, data) in pending {
            match stamp_with_retries(url, &data, s.tsa_attempts, s.tsa_backoff).await {
                Ok(tsr) => {
                    witness.create(n, "tsr", tsr).await.or_else(|e| match e {
                        // Another checkpointer stamped it meanwhile.
                        CheckpointError::Raced { .. } => Ok(()),
                        e => Err(e),
                    })?;
                    out.stamped.push(n);
                }
                Err(e) => {
                    warn!(seq = n, tsa = %url, error = %e, "no timestamp token yet; the next checkpoint asks again");
                    out.unstamped.push((n, e.to_string()));
                }
            }
        }
    }
    Ok(out)
}

async fn stamp_with_retries(
    url: &str,
    data: &[u8],
    attempts: u32,
    backoff: Duration,
) -> std::result::Result<Vec<u8>, crate::tsa::TsaError> {
    let mut wait = backoff;
    let mut attempt = 1;
    loop {
        let (u, d) = (url.to_string(), data.to_vec());
        let r =
            tokio::task::spawn_blocking(move || crate::tsa::stamp(&u, &d, Duration::from_secs(10)))
                .await
                .unwrap_or_else(|e| {
                    Err(crate::tsa::TsaError::Request {
                        url: url.to_string(),
                        msg: e.to_string(),
                    })
                });
        match r {
            Ok(t) => return Ok(t),
            // A refusal or a bad token will not change by asking again.
            Err(e @ crate::tsa::TsaError::Request { .. }) if attempt < attempts => {
                warn!(tsa = %url, attempt, error = %e, retry_in_ms = wait.as_millis() as u64, "TSA unreachable; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// What checking the checkpoints against a warehouse found.
#[derive(Debug, Default)]
pub struct Checked {
    pub checkpoints: usize,
    /// Each a line naming what changed or what is wrong.
    pub problems: Vec<String>,
    pub notes: Vec<String>,
    /// The exposure after the last checkpoint, as a sentence.
    pub exposure: Option<String>,
}

/// Check every checkpoint in `witness` (signatures, tokens when `tsa_ca` is given, the chain of
/// statements) and that the warehouse and the runner's records still contain each checkpointed
/// head and extend it.
pub async fn check(
    witness: &Location,
    key: &VerifyingKey,
    tsa_ca: Option<&[u8]>,
    log: &WarehouseLog,
    state: &StatePaths,
) -> Result<Checked> {
    let w = Witness::open(witness, false)?;
    let (index, strays) = w.index().await?;
    let mut entries = BTreeMap::new();
    for (n, p) in index {
        entries.insert(n, w.read(n, p).await?);
    }
    let mut c = Checked::default();
    for s in strays {
        c.notes
            .push(format!("the witness holds {s}, which is not a checkpoint"));
    }
    if entries.is_empty() {
        c.problems
            .push(format!("the witness {witness} holds no checkpoint"));
        return Ok(c);
    }
    let mut statements: Vec<(u64, Value, Option<DateTime<Utc>>)> = Vec::new();
    let mut previous = (0u64, GENESIS_HASH.to_string());
    // The sequence number the next statement should have: one past the previous statement, and
    // past any signature left without its statement right after it.
    let mut expected = 1u64;
    for (&seq, e) in &entries {
        let Some(bytes) = &e.statement else {
            if e.signature.is_some() && seq == expected {
                c.notes.push(format!(
                    "checkpoint {seq}: a signature without its statement (a checkpointer stopped between its two writes); the next checkpoint follows {}",
                    previous.0
                ));
                expected += 1;
            } else {
                c.problems.push(format!(
                    "checkpoint {seq}: its statement is missing from the witness"
                ));
            }
            continue;
        };
        if seq != expected {
            c.problems.push(if previous.0 == 0 {
                format!(
                    "checkpoint 1..={} missing from the witness: it starts at {seq}",
                    seq - 1
                )
            } else {
                format!(
                    "checkpoint {}..={} missing from the witness: {} is followed by {seq}",
                    previous.0 + 1,
                    seq - 1,
                    previous.0
                )
            });
        }
        // A statement that does not verify still takes its number; it is not chained to.
        expected = seq + 1;
        let st: Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => {
                c.problems
                    .push(format!("checkpoint {seq}: the statement is not JSON: {e}"));
                continue;
            }
        };
        match &e.signature {
            None => {
                c.problems.push(format!(
                    "checkpoint {seq}: no signature in the witness (not written by a checkpointer: it signs first)"
                ));
                continue;
            }
            Some(sig) => {
                if !crate::signing::signed_by(key, bytes, sig) {
                    c.problems.push(format!(
                        "checkpoint {seq}: the signature does not verify with the auditor's public key (signed by another key, or the statement was edited)"
                    ));
                    continue;
                }
            }
        }
        if st["schema"] != CHECKPOINT_SCHEMA || st["seq"].as_u64() != Some(seq) {
            c.problems.push(format!(
                "checkpoint {seq}: the statement names schema {} and sequence number {}",
                st["schema"], st["seq"]
            ));
        }
        if st["previous"].as_str() != Some(previous.1.as_str()) {
            c.problems.push(if previous.0 == 0 {
                format!("checkpoint {seq}: it names a previous checkpoint, but none is in the witness before it")
            } else {
                format!(
                    "checkpoint {seq}: it does not follow checkpoint {} (its `previous` is not that statement's SHA-256)",
                    previous.0
                )
            });
        }
        previous = (seq, sha256_hex(bytes));
        let mut stamped = None;
        match (&e.token, tsa_ca) {
            (None, _) => c.notes.push(format!(
                "checkpoint {seq} has no timestamp token: its time rests on the auditor's signature alone"
            )),
            (Some(_), None) => {}
            (Some(t), Some(ca)) => match crate::tsa::verify(t, bytes, ca) {
                Ok(info) => stamped = Some(info.gen_time),
                Err(e) => c.problems.push(format!("checkpoint {seq}: {e}")),
            },
        }
        statements.push((seq, st, stamped));
    }
    if tsa_ca.is_none() && entries.values().any(|e| e.token.is_some()) {
        c.notes.push(
            "timestamp tokens not checked: pass --tsa-ca with the TSA's CA certificate".into(),
        );
    }
    c.checkpoints = statements.len();
    check_tables(&statements, log, &mut c.problems);
    check_records(&statements, state, &mut c.problems)?;
    if let Some((seq, st, _)) = statements.last() {
        let r = &st["records"];
        if state.state_dir.is_none() && (r.get("alerts").is_some() || r.get("runs").is_some()) {
            c.notes.push(format!(
                "checkpoint {seq} covers the alert outbox and the run records: pass --state-dir to check them"
            ));
        }
        if state.policy.is_none() && r.get("suppressions").is_some() {
            c.notes.push(format!(
                "checkpoint {seq} covers suppressions.csv: pass --policy to check it"
            ));
        }
    }
    if let Some((seq, st, stamped)) = statements.last() {
        let at = st["created_at"].as_str().unwrap_or_default();
        let mut after = Vec::new();
        for h in &log.heads {
            let was = st["tables"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["table"] == h.table.as_str())
                .and_then(|t| t["version"].as_i64())
                .unwrap_or(-1);
            if h.version > was {
                after.push(format!("{} versions {}..={}", h.table, was + 1, h.version));
            }
        }
        let time = match stamped {
            Some(t) => format!(
                "{at}, time-stamped {}",
                t.to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
            None => at.to_string(),
        };
        c.exposure = Some(if after.is_empty() {
            format!("the last checkpoint is {seq} ({time}); no commit since is outside it")
        } else {
            format!(
                "the last checkpoint is {seq} ({time}); not yet covered by a checkpoint: {}",
                after.join(", ")
            )
        });
    }
    Ok(c)
}

/// Each checkpointed table head must still be in its table's log, with the same chain hash.
/// One line per table, at the earliest checkpoint it fails.
fn check_tables(
    statements: &[(u64, Value, Option<DateTime<Utc>>)],
    log: &WarehouseLog,
    out: &mut Vec<String>,
) {
    let mut failed: BTreeMap<String, (String, usize)> = BTreeMap::new();
    // Per table, the newest checkpointed head the log still holds: a rewrite is after it.
    let mut held: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for (seq, st, _) in statements {
        let at = st["created_at"].as_str().unwrap_or_default();
        for t in st["tables"].as_array().into_iter().flatten() {
            let (Some(table), Some(version), Some(hash)) = (
                t["table"].as_str(),
                t["version"].as_i64(),
                t["hash"].as_str(),
            ) else {
                out.push(format!("checkpoint {seq}: a table head is malformed: {t}"));
                continue;
            };
            let head = log.heads.iter().find(|h| h.table == table);
            let problem = match head {
                None => Some(format!(
                    "{table}: the table is gone; checkpoint {seq} ({at}) recorded version {version}"
                )),
                Some(h) if h.version < version => Some(format!(
                    "{table}: truncated: its log ends at version {}, checkpoint {seq} ({at}) recorded version {version} ({} rows in {} files then)",
                    h.version, t["rows"], t["files"]
                )),
                Some(_) => match log
                    .commits
                    .iter()
                    .find(|c| c.table == table && c.version == version)
                {
                    Some(c) if c.hash == hash => {
                        held.insert(table.to_string(), (*seq, version));
                        None
                    }
                    Some(c) => Some(format!(
                        "{table}: rewritten: version {version} now has chain hash {}, checkpoint {seq} ({at}) recorded {hash}: {} was changed, replaced or re-chained (a file replaced, a row deleted and the log rewritten around it)",
                        c.hash,
                        match held.get(table) {
                            Some((m, v)) => format!(
                                "the log still holds version {v} of checkpoint {m}, so a commit of versions {}..={version}",
                                v + 1
                            ),
                            None => format!("a commit of versions 0..={version}"),
                        }
                    )),
                    None => Some(format!(
                        "{table}: version {version}, recorded by checkpoint {seq} ({at}), is missing from the log"
                    )),
                },
            };
            if let Some(p) = problem {
                failed
                    .entry(table.to_string())
                    .and_modify(|f| f.1 += 1)
                    .or_insert((p, 0));
            }
        }
    }
    // Which commit and which file changed: every commit and added file a checkpoint named,
    // against the log now (only for tables found rewritten; a file removed by a later commit,
    // a compaction, is not a change).
    let mut named = BTreeSet::new();
    for (seq, st, _) in statements {
        for t in st["tables"].as_array().into_iter().flatten() {
            let Some(table) = t["table"].as_str() else {
                continue;
            };
            if !failed.contains_key(table) {
                continue;
            }
            for c in t["commits"].as_array().into_iter().flatten() {
                let (Some(version), Some(sha)) = (c[0].as_i64(), c[1].as_str()) else {
                    continue;
                };
                if let Some(now) = log
                    .commits
                    .iter()
                    .find(|x| x.table == table && x.version == version)
                    .filter(|x| x.file_sha256 != sha)
                {
                    if named.insert(format!("{table}/{version}")) {
                        out.push(format!(
                            "{table}: commit {version} was changed: checkpoint {seq} recorded its file's SHA-256 {sha}, it is now {}",
                            now.file_sha256
                        ));
                    }
                }
            }
            for f in t["added"].as_array().into_iter().flatten() {
                let (Some(path), Some(sha)) = (f["path"].as_str(), f["sha256"].as_str()) else {
                    continue;
                };
                if !named.insert(path.to_string()) {
                    continue;
                }
                match log.files.iter().find(|x| x.path == path) {
                    Some(now) if now.sha256 != sha => out.push(format!(
                        "{table}: file {path} was replaced: checkpoint {seq} recorded SHA-256 {sha} ({} rows), the log now records {} ({} rows)",
                        f["rows"], now.sha256, now.rows
                    )),
                    None if !log.removed.iter().any(|r| r == path) => out.push(format!(
                        "{table}: file {path}, recorded by checkpoint {seq}, is no longer in the log and no commit removed it"
                    )),
                    _ => {}
                }
            }
        }
    }
    for (_, (p, later)) in failed {
        out.push(if later > 0 {
            format!("{p} (and {later} later checkpoint(s) likewise)")
        } else {
            p
        });
    }
}

/// The alert outbox and the run records must still hold every checkpointed line unchanged, and
/// `suppressions.csv` must be what the last checkpoint recorded.
fn check_records(
    statements: &[(u64, Value, Option<DateTime<Utc>>)],
    state: &StatePaths,
    out: &mut Vec<String>,
) -> Result<()> {
    for (name, path, what, one) in [
        ("alerts", state.alerts(), "alert", "an alert"),
        ("runs", state.runs(), "run record", "a run record"),
    ] {
        let Some(path) = path else { continue };
        let wanted = statements
            .iter()
            .filter_map(|(_, st, _)| st["records"][name]["lines"].as_u64())
            .collect();
        let (now, each) = line_chain(&path, &wanted)?;
        for (seq, st, _) in statements {
            let rec = &st["records"][name];
            let (Some(lines), Some(hash)) = (rec["lines"].as_u64(), rec["hash"].as_str()) else {
                continue;
            };
            let at = st["created_at"].as_str().unwrap_or_default();
            if now.lines < lines {
                out.push(format!(
                    "{}: {} {what}(s) dropped: it holds {} lines, checkpoint {seq} ({at}) recorded {lines}",
                    path.display(),
                    lines - now.lines,
                    now.lines
                ));
                break;
            }
            if each.get(&lines).map(String::as_str) != Some(hash) {
                out.push(format!(
                    "{}: {one} among its first {lines} lines was edited, inserted or removed after checkpoint {seq} ({at}) recorded them",
                    path.display()
                ));
                break;
            }
        }
    }
    if let (Some(path), Some((seq, st, _))) = (state.suppressions(), statements.last()) {
        if let Some(want) = st["records"]["suppressions"]["sha256"].as_str() {
            let text = std::fs::read(&path).unwrap_or_default();
            if sha256_hex(&text) != want {
                let then: std::collections::BTreeSet<&str> = st["records"]["suppressions"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .collect();
                let text = String::from_utf8_lossy(&text);
                let now: std::collections::BTreeSet<&str> = text.lines().collect();
                let mut diff = Vec::new();
                for l in then.difference(&now) {
                    diff.push(format!("removed \"{l}\""));
                }
                for l in now.difference(&then) {
                    diff.push(format!("added \"{l}\""));
                }
                out.push(format!(
                    "{}: changed since checkpoint {seq} recorded it: {}",
                    path.display(),
                    if diff.is_empty() {
                        "reordered or reformatted".to_string()
                    } else {
                        diff.join("; ")
                    }
                ));
            }
        }
    }
    Ok(())
}

/// The report's account of its checkpoints: those written during the window (days `from..=to`,
/// UTC), the latest, and what of the log heads the report read no checkpoint covers yet (the
/// exposure). Signatures and tokens are listed, not checked: `verify --checkpoints` checks them.
pub async fn report_section(
    witness: &Location,
    log: &WarehouseLog,
    from: &str,
    to: &str,
) -> Result<Value> {
    let w = Witness::open(witness, false)?;
    let (index, _) = w.index().await?;
    // Newest first, down to the first checkpoint written before the window.
    let mut in_window = Vec::new();
    let mut latest: Option<(u64, Value, bool)> = None;
    for (&seq, p) in index.iter().rev().filter(|(_, p)| p.statement) {
        let Ok(st) = serde_json::from_slice::<Value>(&w.get(seq, "json").await?) else {
            continue;
        };
        let day = st["created_at"]
            .as_str()
            .unwrap_or_default()
            .get(..10)
            .unwrap_or_default()
            .to_string();
        if day.as_str() >= from && day.as_str() <= to {
            in_window.push(json!({"seq": seq, "created_at": st["created_at"],
                "time_stamped": p.token,
                "tables": st["tables"].as_array().into_iter().flatten()
                    .map(|t| json!({"table": t["table"], "version": t["version"]})).collect::<Vec<_>>()}));
        }
        let before = day.as_str() < from;
        if latest.is_none() {
            latest = Some((seq, st, p.token));
        }
        if before {
            break;
        }
    }
    in_window.reverse();
    let mut uncovered = Vec::new();
    for h in &log.heads {
        let covered = latest
            .as_ref()
            .and_then(|(_, st, _)| {
                st["tables"]
                    .as_array()?
                    .iter()
                    .find(|t| t["table"] == h.table.as_str())?["version"]
                    .as_i64()
            })
            .unwrap_or(-1);
        if h.version > covered {
            uncovered.push(
                json!({"table": h.table, "from_version": covered + 1, "to_version": h.version}),
            );
        }
    }
    Ok(json!({
        "witness": witness.to_string(),
        "in_window": in_window,
        "latest": latest.map(|(seq, st, stamped)| json!({"seq": seq, "created_at": st["created_at"], "time_stamped": stamped})),
        "not_yet_checkpointed": uncovered,
    }))
}
