//! Alerts: what a rule's findings become, and the store that makes them raised once.
//!
//! A rule's result rows are findings. Rows with the same rule, entity (the rule's entity columns)
//! and day (UTC date of `first_seen`) are one alert; its fingerprint is the SHA-256 of those
//! three (the entity as [`fingerprint_key`] writes it, unambiguously), so re-running a window, or running an overlapping or later window after late data,
//! finds the same fingerprint and raises nothing new.
//!
//! The store lives in the state directory (the warehouse directory of a local warehouse) under
//! `_alerts/`:
//! - `alerts.jsonl`: every alert ever raised (or suppressed), one JSON object per line, in the
//!   order raised, each with its sequence number `seq`. It is the outbox for the sinks and the
//!   dedup index. Appends are fsynced; a torn last line (a crash mid-write) is cut on open.
//! - `cursors/<sink>`: how many lines of `alerts.jsonl` a sink has received.
//! - `lock`: an exclusive flock held while a run or a delivery uses the store.
//! - `store_id`: this store's random identity, which names its rows in the `alerts` table.
//!
//! The `alerts` table, a Delta table in the warehouse, is written from the outbox by
//! [`crate::alerts_table::sync`], so SQL (on any machine, local or `s3://`) sees the same alerts.
//!
//! Unknown is a value: a finding whose entity column is NULL (a destination the GeoIP database
//! does not know, a run without GeoIP) is an alert like any other. Its entity keeps the JSON
//! `null`; its entity key, fingerprint, summary and suppression matching read it as `unknown`
//! ([`finding_text`]), so the same finding has the same fingerprint in every run. No value of one
//! finding can stop the others of its rule from being raised.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::rules::Rule;

/// Version of the alert JSON.
pub const ALERT_SCHEMA: &str = "flowaudit.alert/1";
/// Most evidence rows kept in one alert (the total is kept in `evidence_total`).
pub const MAX_EVIDENCE: usize = 20;

/// Errors of the alert store.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("suppressions: {0}")]
    Suppression(String),
    #[error("rule {rule}: {msg}")]
    Finding { rule: String, msg: String },
    #[error("writing the alerts table: {0}")]
    Table(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AlertError + 'a {
    move |source| AlertError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The suppression that silenced an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    pub rule_id: String,
    /// `*`, or `column=value` pairs separated by `;`, all of which must match the entity.
    pub entity: String,
    pub reason: String,
    pub who: String,
    /// Last day (UTC, inclusive) the suppression is in force.
    pub expires: chrono::NaiveDate,
}

impl Suppression {
    /// Does this suppression cover `entity` of a finding of `rule_id` on `day`? (Ignores expiry.)
    pub fn matches(&self, rule_id: &str, entity: &BTreeMap<String, Value>) -> bool {
        if self.rule_id != rule_id {
            return false;
        }
        let e = self.entity.trim();
        e == "*"
            || e.split(';').filter(|p| !p.trim().is_empty()).all(|pair| {
                pair.split_once('=').is_some_and(|(k, v)| {
                    entity
                        .get(k.trim())
                        .is_some_and(|x| finding_text(x) == v.trim())
                })
            })
    }
}

/// Read `suppressions.csv`: `rule_id,entity,reason,who,expires`; every row needs a reason, who
/// and an expiry date.
pub fn load_suppressions(path: &Path) -> Result<Vec<Suppression>, AlertError> {
    let text = std::fs::read_to_string(path).map_err(io("read", path))?;
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim() == "rule_id,entity,reason,who,expires" => {}
        _ => {
            return Err(AlertError::Suppression(format!(
                "{}:1: the header must be rule_id,entity,reason,who,expires",
                path.display()
            )))
        }
    }
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f = split_csv(line);
        let err =
            |msg: String| AlertError::Suppression(format!("{}:{}: {msg}", path.display(), i + 1));
        if f.len() != 5 {
            return Err(err(format!("expected 5 fields, found {}", f.len())));
        }
        for (n, name) in [(0, "rule_id"), (1, "entity"), (2, "reason"), (3, "who")] {
            if f[n].trim().is_empty() {
                return Err(err(format!("{name} is empty")));
            }
        }
        if f[4].trim().is_empty() {
            return Err(err(
                "no expiry: every suppression needs an expires date".into()
            ));
        }
        let expires = f[4]
            .trim()
            .parse()
            .map_err(|_| err(format!("expires \"{}\" is not a date (YYYY-MM-DD)", f[4])))?;
        out.push(Suppression {
            rule_id: f[0].trim().into(),
            entity: f[1].trim().into(),
            reason: f[2].trim().into(),
            who: f[3].trim().into(),
            expires,
        });
    }
    Ok(out)
}

/// Split one CSV line (fields may be double-quoted, with `""` for a quote).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().expect("one").push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().expect("one").push(c),
        }
    }
    out
}

/// One alert: a rule's findings about one entity on one day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub schema: String,
    /// Position in the outbox (1, 2, …).
    pub seq: u64,
    pub fingerprint: String,
    /// `new` (sent to the sinks), `suppressed` (recorded, not sent) or `closed` (an update of an
    /// earlier line with the same fingerprint: a re-evaluation of its window with more data no
    /// longer supports it; sent to the sinks).
    pub status: String,
    pub rule_id: String,
    pub rule_title: String,
    /// SHA-256 of the rule file that raised it.
    pub rule_sha256: String,
    pub severity: String,
    pub entity: BTreeMap<String, Value>,
    /// The entity as `column=value` pairs, for people and for suppressions.
    pub entity_key: String,
    /// The UTC day the finding belongs to (part of the fingerprint).
    pub day: String,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub summary: String,
    pub description: String,
    /// The rule's result rows for this entity and day (at most [`MAX_EVIDENCE`]).
    pub evidence: Vec<Map<String, Value>>,
    pub evidence_total: usize,
    /// Policy values that decided it (the rule's `policy_*` columns, from the first row).
    pub decided_by: Map<String, Value>,
    /// The policy files the rule decides with, and their SHA-256.
    pub policy_versions: BTreeMap<String, String>,
    /// The run window that raised it.
    pub window_from: String,
    pub window_to: String,
    pub run_id: String,
    pub raised_at: String,
    pub suppression: Option<Suppression>,
    /// For `status = "closed"`: why (which run, over which table versions, no longer found it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_reason: Option<String>,
    /// For a raise of a fingerprint that was closed before: the `seq` of that closing line (the
    /// alert is reopened; sinks see an update of the same finding, not a duplicate raise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reopens: Option<u64>,
}

/// A JSON value as plain text (strings without quotes).
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        v => v.to_string(),
    }
}

/// A finding's value as people read it, and as entity keys, fingerprints and suppressions use
/// it: a SQL NULL (no value: a country GeoIP does not know, an event without a destination) is
/// `unknown`; other values as [`value_text`].
pub fn finding_text(v: &Value) -> String {
    match v {
        Value::Null => UNKNOWN.into(),
        v => value_text(v),
    }
}

/// How a finding's missing value reads.
pub const UNKNOWN: &str = "unknown";

/// The entity key a fingerprint is made of: `col=value, col=value` as [`finding_text`] reads
/// the values (so fingerprints of ordinary values are what they were before), except that a
/// value that could be mistaken for another is written quoted and escaped as JSON: the string
/// `unknown` (not the same as no value), and any value containing `,`, `=`, `"`, `\\` or a
/// control character (which could otherwise forge another column's part of the key). A value
/// that came from an event can then never give another finding's fingerprint.
pub fn fingerprint_key(entity: &[(&str, &Value)]) -> String {
    entity
        .iter()
        .map(|(col, v)| {
            let text = finding_text(v);
            let plain = match v {
                Value::Null => true,
                _ => {
                    text != UNKNOWN
                        && !text
                            .chars()
                            .any(|c| matches!(c, ',' | '=' | '"' | '\\') || c.is_control())
                }
            };
            if plain {
                format!("{col}={text}")
            } else {
                format!("{col}={}", Value::String(text))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fingerprint of a finding: rule, entity (its [`fingerprint_key`]) and day.
pub fn fingerprint(rule_id: &str, entity_key: &str, day: &str) -> String {
    let mut h = Sha256::new();
    for part in [rule_id, entity_key, day] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

/// Fill a summary template: `{column}` becomes that column of `row` (`unknown` when it is NULL),
/// with control characters made visible (a summary is printed to terminals and chat tools; see
/// [`crate::sqlout::neutralise`]). A `{name}` that is not a column stays as written.
fn fill(template: &str, row: &Map<String, Value>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) if row.contains_key(&after[..end]) => {
                out.push_str(&crate::sqlout::neutralise(&finding_text(
                    &row[&after[..end]],
                )));
                rest = &after[end + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// What the runner knows about the run that found something.
pub struct RunContext<'a> {
    pub run_id: &'a str,
    pub window_from: &'a str,
    pub window_to: &'a str,
    pub raised_at: &'a str,
    pub policy_versions: &'a BTreeMap<String, String>,
}

/// Group a rule's result rows (as JSON objects) into alerts, in the order first found.
/// `seq` and `status` are set when the store records them.
///
/// A NULL in an entity column is the value `unknown` (see the module docs). The only error is a
/// rule whose `entity` header names a column its query does not return: that is a mistake in
/// the rule, the same for every row, and `flowaudit rules test` reports it.
pub fn group_findings(
    rule: &Rule,
    rows: Vec<Map<String, Value>>,
    run: &RunContext<'_>,
) -> Result<Vec<Alert>, AlertError> {
    let mut order: Vec<String> = Vec::new();
    let mut by_fp: BTreeMap<String, Alert> = BTreeMap::new();
    let window_day = run.window_from.get(..10).unwrap_or_default().to_string();
    for row in rows {
        let mut entity = BTreeMap::new();
        for col in &rule.entity {
            let Some(v) = row.get(col) else {
                return Err(AlertError::Finding {
                    rule: rule.id.clone(),
                    msg: format!(
                        "the query returns no column `{col}`, which the rule's `entity` header names"
                    ),
                });
            };
            entity.insert(col.clone(), v.clone());
        }
        let entity_key = rule
            .entity
            .iter()
            .map(|c| format!("{c}={}", finding_text(&entity[c])))
            .collect::<Vec<_>>()
            .join(", ");
        let first_seen = row
            .get("first_seen")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let last_seen = row
            .get("last_seen")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let day = first_seen
            .as_deref()
            .and_then(|s| s.get(..10))
            .map_or(window_day.clone(), str::to_string);
        let fp_key = fingerprint_key(
            &rule
                .entity
                .iter()
                .map(|c| (c.as_str(), &entity[c]))
                .collect::<Vec<_>>(),
        );
        let fp = fingerprint(&rule.id, &fp_key, &day);
        match by_fp.get_mut(&fp) {
            Some(a) => {
                a.evidence_total += 1;
                if a.evidence.len() < MAX_EVIDENCE {
                    a.evidence.push(row);
                }
                if last_seen > a.last_seen {
                    a.last_seen = last_seen;
                }
                if first_seen.is_some() && (a.first_seen.is_none() || first_seen < a.first_seen) {
                    a.first_seen = first_seen;
                }
            }
            None => {
                let decided_by: Map<String, Value> = row
                    .iter()
                    .filter(|(k, _)| k.starts_with("policy_"))
                    .map(|(k, v)| (k["policy_".len()..].to_string(), v.clone()))
                    .collect();
                let summary = match &rule.summary {
                    Some(t) => fill(t, &row),
                    None => format!("{}: {entity_key}", rule.title),
                };
                let policy_versions = rule
                    .policy
                    .iter()
                    .map(|f| {
                        (
                            f.clone(),
                            run.policy_versions.get(f).cloned().unwrap_or_default(),
                        )
                    })
                    .collect();
                order.push(fp.clone());
                by_fp.insert(
                    fp.clone(),
                    Alert {
                        schema: ALERT_SCHEMA.into(),
                        seq: 0,
                        fingerprint: fp,
                        status: "new".into(),
                        rule_id: rule.id.clone(),
                        rule_title: rule.title.clone(),
                        rule_sha256: rule.sha256.clone(),
                        severity: rule.severity.as_str().into(),
                        entity,
                        entity_key,
                        day,
                        first_seen,
                        last_seen,
                        summary,
                        description: rule.description.clone(),
                        evidence: vec![row],
                        evidence_total: 1,
                        decided_by,
                        policy_versions,
                        window_from: run.window_from.into(),
                        window_to: run.window_to.into(),
                        run_id: run.run_id.into(),
                        raised_at: run.raised_at.into(),
                        suppression: None,
                        close_reason: None,
                        reopens: None,
                    },
                );
            }
        }
    }
    Ok(order
        .into_iter()
        .map(|fp| by_fp.remove(&fp).expect("grouped"))
        .collect())
}

/// How a run's findings were recorded.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Recorded {
    pub new: Vec<Alert>,
    pub suppressed: Vec<Alert>,
    /// Fingerprints already raised before (not raised again).
    pub duplicates: usize,
    /// Suppressions that matched a finding but had expired on its day.
    pub expired_suppressions: Vec<Suppression>,
}

/// The latest line of a fingerprint in the outbox.
#[derive(Debug, Clone)]
struct Latest {
    seq: u64,
    status: String,
    rule_id: String,
    day: String,
}

/// The alert store of a state directory (see the module docs). Holding it holds the store's lock.
pub struct AlertStore {
    dir: PathBuf,
    id: String,
    log: File,
    /// Each fingerprint's latest line: (seq, status, rule, day).
    seen: HashMap<String, Latest>,
    next_seq: u64,
    _lock: File,
}

impl AlertStore {
    /// Open (and lock) the store in the state directory `state`, creating it if needed.
    pub fn open(state: &Path) -> Result<Self, AlertError> {
        let dir = state.join("_alerts");
        std::fs::create_dir_all(dir.join("cursors")).map_err(io("create", &dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            return Err(io("lock", &lock_path)(std::io::Error::last_os_error()));
        }
        let path = dir.join("alerts.jsonl");
        let mut log = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io("open", &path))?;
        let mut seen = HashMap::new();
        let mut next_seq = 1;
        let mut good_len = 0u64;
        let mut reader = BufReader::new(&log);
        let mut line = String::new();
        let mut n = 0;
        loop {
            line.clear();
            let read = reader.read_line(&mut line).map_err(io("read", &path))?;
            if read == 0 {
                break;
            }
            n += 1;
            if !line.ends_with('\n') {
                warn!(path = %path.display(), line = n, "cutting a torn last line (a crash while raising alerts)");
                break;
            }
            let a: Alert = serde_json::from_str(&line).map_err(|e| AlertError::Corrupt {
                path: path.clone(),
                line: n,
                msg: e.to_string(),
            })?;
            if a.seq != next_seq {
                return Err(AlertError::Corrupt {
                    path: path.clone(),
                    line: n,
                    msg: format!("sequence {} where {next_seq} was expected", a.seq),
                });
            }
            seen.insert(
                a.fingerprint,
                Latest {
                    seq: a.seq,
                    status: a.status,
                    rule_id: a.rule_id,
                    day: a.day,
                },
            );
            next_seq += 1;
            good_len += read as u64;
        }
        drop(reader);
        if log.metadata().map_err(io("stat", &path))?.len() != good_len {
            log.set_len(good_len).map_err(io("truncate", &path))?;
            log.sync_all().map_err(io("fsync", &path))?;
        }
        log.seek(SeekFrom::End(0)).map_err(io("seek", &path))?;
        let id = store_id(&dir)?;
        Ok(Self {
            dir,
            id,
            log,
            seen,
            next_seq,
            _lock: lock,
        })
    }

    /// This store's identity (16 hex digits, random, made when the store was first opened).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The number of alerts recorded.
    pub fn len(&self) -> u64 {
        self.next_seq - 1
    }

    pub fn is_empty(&self) -> bool {
        self.next_seq == 1
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Record the alerts of one rule's run: those already raised are counted and dropped; new
    /// ones are checked against the suppressions and appended (fsynced) in order.
    pub fn record(
        &mut self,
        alerts: Vec<Alert>,
        suppressions: &[Suppression],
    ) -> Result<Recorded, AlertError> {
        let mut out = Recorded::default();
        let mut lines = String::new();
        let mut added = Vec::new();
        for mut a in alerts {
            match self.seen.get(&a.fingerprint) {
                Some(l) if l.status != "closed" => {
                    out.duplicates += 1;
                    continue;
                }
                Some(l) => a.reopens = Some(l.seq),
                None => {}
            }
            let day: Option<chrono::NaiveDate> = a.day.parse().ok();
            for s in suppressions
                .iter()
                .filter(|s| s.matches(&a.rule_id, &a.entity))
            {
                if day.is_some_and(|d| d <= s.expires) {
                    a.suppression = Some(s.clone());
                    break;
                }
                if !out.expired_suppressions.contains(s) {
                    out.expired_suppressions.push(s.clone());
                }
            }
            a.status = if a.suppression.is_some() {
                "suppressed".into()
            } else {
                "new".into()
            };
            a.seq = self.next_seq;
            self.next_seq += 1;
            lines.push_str(&serde_json::to_string(&a).expect("alert json"));
            lines.push('\n');
            self.note(&a);
            added.push(a);
        }
        self.append(&lines)?;
        for a in added {
            if a.suppression.is_some() {
                out.suppressed.push(a);
            } else {
                out.new.push(a);
            }
        }
        Ok(out)
    }

    fn note(&mut self, a: &Alert) {
        self.seen.insert(
            a.fingerprint.clone(),
            Latest {
                seq: a.seq,
                status: a.status.clone(),
                rule_id: a.rule_id.clone(),
                day: a.day.clone(),
            },
        );
    }

    fn append(&mut self, lines: &str) -> Result<(), AlertError> {
        if !lines.is_empty() {
            let path = self.dir.join("alerts.jsonl");
            self.log
                .write_all(lines.as_bytes())
                .map_err(io("append to", &path))?;
            self.log.sync_data().map_err(io("fsync", &path))?;
        }
        Ok(())
    }

    /// The open alerts (`new`, not suppressed) of `rule_id`: (fingerprint, day).
    pub fn open_alerts(&self, rule_id: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .seen
            .iter()
            .filter(|(_, l)| l.status == "new" && l.rule_id == rule_id)
            .map(|(fp, l)| (fp.clone(), l.day.clone()))
            .collect();
        out.sort();
        out
    }

    /// Close the open alerts among `fingerprints` (those a re-evaluation left without support:
    /// [`crate::lifecycle`]). Each gets a `closed` line (a copy with `reason`, the closing run
    /// and its time), sent to the sinks like any line; nothing is deleted. Returns those lines.
    pub fn close(
        &mut self,
        fingerprints: &HashSet<String>,
        run: &RunContext<'_>,
        reason: &str,
    ) -> Result<Vec<Alert>, AlertError> {
        let mut seqs: Vec<u64> = self
            .seen
            .iter()
            .filter(|(fp, l)| l.status == "new" && fingerprints.contains(*fp))
            .map(|(_, l)| l.seq)
            .collect();
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        seqs.sort_unstable();
        let wanted: HashSet<u64> = seqs.iter().copied().collect();
        let mut lines = String::new();
        let mut out = Vec::new();
        for mut a in self.read_from(seqs[0])? {
            if !wanted.contains(&a.seq) {
                continue;
            }
            a.status = "closed".into();
            a.seq = self.next_seq;
            self.next_seq += 1;
            a.run_id = run.run_id.into();
            a.raised_at = run.raised_at.into();
            a.close_reason = Some(reason.to_string());
            a.reopens = None;
            lines.push_str(&serde_json::to_string(&a).expect("alert json"));
            lines.push('\n');
            self.note(&a);
            out.push(a);
        }
        self.append(&lines)?;
        Ok(out)
    }

    /// All alerts from sequence `from` (1-based) on.
    pub fn read_from(&self, from: u64) -> Result<Vec<Alert>, AlertError> {
        let path = self.dir.join("alerts.jsonl");
        let f = File::open(&path).map_err(io("open", &path))?;
        let mut out = Vec::new();
        for (i, line) in BufReader::new(f).lines().enumerate() {
            let line = line.map_err(io("read", &path))?;
            if (i as u64) + 1 < from {
                continue;
            }
            if (i as u64) + 1 >= self.next_seq {
                break;
            }
            out.push(
                serde_json::from_str(&line).map_err(|e| AlertError::Corrupt {
                    path: path.clone(),
                    line: i + 1,
                    msg: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }

    fn cursor_path(&self, sink: &str) -> PathBuf {
        let name: String = sink
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let h = hex::encode(&Sha256::digest(sink.as_bytes())[..4]);
        self.dir.join("cursors").join(format!("{name}-{h}"))
    }

    /// How many alerts `sink` has received; a sink seen for the first time starts at `start`.
    pub fn cursor(&self, sink: &str, start: u64) -> Result<u64, AlertError> {
        let path = self.cursor_path(sink);
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                let first = s.lines().next().unwrap_or_default().trim();
                first.parse().map_err(|_| AlertError::Corrupt {
                    path,
                    line: 1,
                    msg: format!("\"{first}\" is not a count"),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.set_cursor(sink, start)?;
                Ok(start)
            }
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    /// Record that `sink` has received the first `n` alerts (written atomically, fsynced).
    pub fn set_cursor(&self, sink: &str, n: u64) -> Result<(), AlertError> {
        let path = self.cursor_path(sink);
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
        writeln!(f, "{n}\n{sink}").map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
        Ok(())
    }
}

/// The identity in `dir/store_id`, made (random, fsynced) when there is none. The caller holds
/// the store's lock.
fn store_id(dir: &Path) -> Result<String, AlertError> {
    let path = dir.join("store_id");
    match std::fs::read_to_string(&path) {
        Ok(s) if is_store_id(s.trim()) => return Ok(s.trim().to_string()),
        Ok(s) if !s.trim().is_empty() => {
            return Err(AlertError::Corrupt {
                path,
                line: 1,
                msg: format!("\"{}\" is not a store id (16 hex digits)", s.trim()),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", &path)(e)),
    }
    let id = format!("{:016x}", rand_u64());
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    writeln!(f, "{id}").map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))?;
    Ok(id)
}

fn is_store_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// 64 random bits from the kernel.
fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // No entropy source answered: the clock and the process still tell stores apart.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32);
    }
    u64::from_ne_bytes(b)
}

/// The columns of the `alerts` table (`date` is its partition directory).
pub fn table_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let s = |n: &str, null| Field::new(n, DataType::Utf8, null);
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        s("fingerprint", false),
        s("status", false),
        s("rule_id", false),
        s("severity", false),
        s("entity", false),
        Field::new("first_seen", ts(), true),
        Field::new("last_seen", ts(), true),
        s("summary", false),
        Field::new("evidence_total", DataType::Int64, false),
        s("suppressed_by", true),
        s("run_id", false),
        Field::new("raised_at", ts(), false),
        s("alert", false),
    ]))
}

fn micros(s: Option<&str>) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s?)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// The rows of `alerts` (all of one day) in the `alerts` table's columns.
pub fn table_batch(alerts: &[&Alert]) -> Result<RecordBatch, AlertError> {
    let list = alerts;
    let col = |f: &dyn Fn(&Alert) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(list.iter().map(|a| f(a))))
    };
    let tcol = |f: &dyn Fn(&Alert) -> Option<i64>| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from(list.iter().map(|a| f(a)).collect::<Vec<_>>())
                .with_timezone("UTC"),
        )
    };
    RecordBatch::try_new(
        table_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(
                list.iter().map(|a| a.seq as i64),
            )),
            col(&|a| a.fingerprint.clone()),
            col(&|a| a.status.clone()),
            col(&|a| a.rule_id.clone()),
            col(&|a| a.severity.clone()),
            col(&|a| a.entity_key.clone()),
            tcol(&|a| micros(a.first_seen.as_deref())),
            tcol(&|a| micros(a.last_seen.as_deref())),
            col(&|a| a.summary.clone()),
            Arc::new(Int64Array::from_iter_values(
                list.iter().map(|a| a.evidence_total as i64),
            )),
            Arc::new(StringArray::from(
                list.iter()
                    .map(|a| {
                        a.suppression
                            .as_ref()
                            .map(|s| format!("{} until {}: {}", s.who, s.expires, s.reason))
                    })
                    .collect::<Vec<_>>(),
            )),
            col(&|a| a.run_id.clone()),
            tcol(&|a| micros(Some(&a.raised_at))),
            col(&|a| serde_json::to_string(a).expect("json")),
        ],
    )
    .map_err(|e| AlertError::Table(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule() -> Rule {
        crate::rules::parse_rule(
            Path::new("queries/gateway_bypass.sql"),
            "-- id: gateway_bypass\n-- title: Bypass\n-- severity: high\n-- schedule: */15 * * * *\n\
             -- lookback: 1h\n-- entity: src_ip, dst_ip, dst_country\n-- description: d\n\
             -- summary: {src_ip} to {dst_ip} (country {dst_country}) as {who}, {nothing}\nSELECT 1\n",
        )
        .unwrap()
    }

    fn row(dst: &str, country: Value, who: &str) -> Map<String, Value> {
        json!({"src_ip": "10.20.5.77", "dst_ip": dst, "dst_country": country, "who": who,
               "first_seen": "2026-11-21T10:00:00Z", "policy_gateway": null})
        .as_object()
        .unwrap()
        .clone()
    }

    fn ctx() -> RunContext<'static> {
        static VERSIONS: BTreeMap<String, String> = BTreeMap::new();
        RunContext {
            run_id: "r",
            window_from: "2026-11-21T00:00:00Z",
            window_to: "2026-11-22T00:00:00Z",
            raised_at: "2026-11-22T00:00:00Z",
            policy_versions: &VERSIONS,
        }
    }

    #[test]
    fn an_unknown_entity_value_is_a_value_and_keeps_its_siblings() {
        let rows = vec![
            row("31.12.0.8", json!("NL"), "a"),
            row("203.0.113.9", Value::Null, "b"),
            row("31.12.0.9", json!("NL"), "c"),
        ];
        let alerts = group_findings(&rule(), rows.clone(), &ctx()).unwrap();
        assert_eq!(alerts.len(), 3, "one unknown value drops nothing");
        let a = &alerts[1];
        assert_eq!(a.entity["dst_country"], Value::Null);
        assert_eq!(
            a.entity_key,
            "src_ip=10.20.5.77, dst_ip=203.0.113.9, dst_country=unknown"
        );
        assert_eq!(
            a.summary,
            "10.20.5.77 to 203.0.113.9 (country unknown) as b, {nothing}"
        );
        assert_eq!(a.decided_by["gateway"], Value::Null);
        assert_eq!(
            a.fingerprint,
            fingerprint("gateway_bypass", &a.entity_key, "2026-11-21")
        );
        // The same finding in another run has the same fingerprint.
        let again = group_findings(&rule(), rows, &ctx()).unwrap();
        assert_eq!(again[1].fingerprint, a.fingerprint);
        // And a suppression can name it.
        let s = Suppression {
            rule_id: "gateway_bypass".into(),
            entity: "dst_country=unknown".into(),
            reason: "r".into(),
            who: "w".into(),
            expires: "2026-12-31".parse().unwrap(),
        };
        assert!(s.matches("gateway_bypass", &a.entity));
        assert!(!s.matches("gateway_bypass", &alerts[0].entity));
    }

    /// Values from events cannot forge another finding's fingerprint: the string `unknown` is
    /// not a missing value, and a value holding the key's separators cannot stand for two
    /// columns. Ordinary values keep the fingerprint they always had.
    #[test]
    fn a_crafted_value_cannot_take_another_findings_fingerprint() {
        let r = crate::rules::parse_rule(
            Path::new("queries/x.sql"),
            "-- id: x\n-- title: X\n-- severity: high\n-- schedule: */15 * * * *\n\
             -- lookback: 1h\n-- entity: who, dst_country\n-- description: d\n\
             -- summary: s\nSELECT 1\n",
        )
        .unwrap();
        let finding = |who: Value, country: Value| {
            json!({"who": who, "dst_country": country, "first_seen": "2026-11-21T10:00:00Z"})
                .as_object()
                .unwrap()
                .clone()
        };
        let alerts = group_findings(
            &r,
            vec![
                finding(json!("alice"), Value::Null),
                finding(json!("alice"), json!("unknown")),
                finding(json!("alice, dst_country=NL"), json!("x")),
                finding(json!("alice"), json!("NL, dst_country=x")),
                finding(json!("alice\u{1b}"), json!("NL")),
                finding(json!("alice"), json!("NL")),
            ],
            &ctx(),
        )
        .unwrap();
        let fps: std::collections::BTreeSet<_> =
            alerts.iter().map(|a| a.fingerprint.clone()).collect();
        assert_eq!((alerts.len(), fps.len()), (6, 6), "{alerts:?}");
        // Plain values and a missing one: the fingerprint of their readable key, as before.
        assert_eq!(
            alerts[0].fingerprint,
            fingerprint("x", "who=alice, dst_country=unknown", "2026-11-21")
        );
        assert_eq!(
            alerts[5].fingerprint,
            fingerprint("x", "who=alice, dst_country=NL", "2026-11-21")
        );
    }

    #[test]
    fn a_rule_whose_entity_is_not_among_its_columns_is_an_error() {
        let mut r = row("31.12.0.8", json!("NL"), "a");
        r.remove("dst_country");
        let e = group_findings(&rule(), vec![r], &ctx()).unwrap_err();
        assert!(e.to_string().contains("no column `dst_country`"), "{e}");
    }

    #[test]
    fn summaries_show_control_characters_instead_of_sending_them() {
        let rows = vec![row(
            "31.12.0.8",
            json!("NL"),
            "\u{1b}]0;owned\u{7}\u{1b}[2J\r",
        )];
        let a = &group_findings(&rule(), rows, &ctx()).unwrap()[0];
        assert!(
            a.summary
                .ends_with("as \\x1b]0;owned\\x07\\x1b[2J\\x0d, {nothing}"),
            "{}",
            a.summary
        );
        assert_eq!(a.evidence[0]["who"], "\u{1b}]0;owned\u{7}\u{1b}[2J\r");
    }
}
