//! Running rules over a window: each rule's query, its findings grouped into alerts, the alerts
//! recorded once, and a run record appended to `_runs/runs.jsonl` in the state directory
//! ([`crate::site::Site`]: the warehouse itself when it is local).
//!
//! A run record names everything the result depends on: the window, every rule's id and
//! SHA-256, the policy files' SHA-256, the GeoIP database, each ingest table's Delta log head
//! (version and chain hash) at the start of the run, and flowaudit's version; and what came out: per rule the
//! rows, alerts, new, already-raised and suppressed counts, time taken and any error; and what
//! each rule covered (the coverage ledger): how much of the window it evaluated, on complete
//! data or not, over which tables and positions ([`crate::watermark`], [`crate::ledger`]).
use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use tracing::{info, warn};

use crate::alerts::{self, Alert, AlertStore, RunContext, Suppression};
use crate::catalog::Catalog;
use crate::rules::{self, Rule};

/// Errors that stop a run (a failing rule does not: it is recorded and the others run).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Alerts(#[from] alerts::AlertError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the warehouse's logs: {0}")]
    Log(#[from] flowaudit_ingest::Error),
    #[error("{0}")]
    NoState(String),
    #[error("computing the watermarks: {0}")]
    Watermark(String),
}

/// What one rule did in a run.
#[derive(Debug, Clone, Serialize)]
pub struct RuleOutcome {
    pub id: String,
    pub sha256: String,
    pub severity: String,
    pub rows: usize,
    pub alerts: usize,
    pub new: usize,
    pub already_raised: usize,
    pub suppressed: usize,
    pub millis: u64,
    pub error: Option<String>,
    /// The coverage this evaluation gives (docs/rules.md, "Watermarks and late data"):
    /// `complete` (the watermarks of what it reads passed the window's end plus the lateness),
    /// `partial` (evaluated up to `evaluated_to`, where the data is complete; the rest is due),
    /// `incomplete` (evaluated with `--force` before the data was complete), `due` (not
    /// evaluated: not complete yet) or `failed`.
    pub coverage: String,
    /// The part of the window evaluated (`None` when it was not).
    pub evaluated_from: Option<String>,
    pub evaluated_to: Option<String>,
    pub lateness_s: u64,
    /// The tables the rule's query reads.
    pub tables: Vec<String>,
    /// What was not complete up to the window's end: each source or partition, complete up to when.
    pub lagging: Vec<crate::watermark::Lagging>,
    /// Alerts this evaluation closed: it no longer found them and no evaluation that still
    /// stands did ([`crate::lifecycle`]).
    pub closed: usize,
    /// The fingerprints of every finding of this evaluation (raised, already raised or
    /// suppressed), sorted: what later evaluations weigh before closing an alert.
    pub found: Vec<String>,
}

/// A partition's position in one table at the start of a run: every offset below `next_offset`
/// was recorded (written, quarantined or a recorded gap).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Position {
    pub table: String,
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
}

/// Each (table, topic, partition)'s recorded position in `log`.
pub fn positions(log: &flowaudit_ingest::warehouse::WarehouseLog) -> Vec<Position> {
    let mut m: BTreeMap<(String, String, i32), i64> = BTreeMap::new();
    for c in &log.commits {
        if let Some(meta) = &c.meta {
            let e = m
                .entry((c.table.clone(), meta.topic.clone(), meta.partition))
                .or_insert(0);
            *e = (*e).max(meta.covers_last_offset.saturating_add(1));
        }
    }
    m.into_iter()
        .map(|((table, topic, partition), next_offset)| Position {
            table,
            topic,
            partition,
            next_offset,
        })
        .collect()
}

/// The record of one run, as appended to `_runs/runs.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub run_id: String,
    /// `manual`, `schedule` or `catch-up`.
    pub trigger: String,
    pub window_from: String,
    pub window_to: String,
    pub started_at: String,
    pub finished_at: String,
    pub millis: u64,
    pub flowaudit_version: String,
    /// Each ingest table's Delta log head (version and chain hash) when the run started.
    pub log_heads: Vec<flowaudit_ingest::warehouse::TableHead>,
    /// Every partition's recorded position when the run started: what the evaluations saw
    /// (a later commit past it with event times in the window is late data).
    pub positions: Vec<Position>,
    /// `complete-only` (serve), `what-is-complete` (rules run) or `forced`.
    pub evaluate: String,
    pub policy_versions: BTreeMap<String, String>,
    pub geoip: Option<BTreeMap<String, String>>,
    /// Where the queries ran: `embedded`, or `ballista://HOST:PORT` (docs/scale.md).
    #[serde(default)]
    pub engine: String,
    pub rules: Vec<RuleOutcome>,
    /// Fingerprints of the alerts this run raised (sent to the sinks).
    pub raised: Vec<String>,
    /// Fingerprints of findings silenced by a suppression.
    pub suppressed: Vec<String>,
    /// Fingerprints of alerts this run closed.
    #[serde(default)]
    pub closed: Vec<String>,
    /// Suppressions that matched a finding after their expiry (so did not silence it).
    pub expired_suppressions: Vec<Suppression>,
}

impl RunRecord {
    pub fn failed_rules(&self) -> Vec<&RuleOutcome> {
        self.rules.iter().filter(|r| r.error.is_some()).collect()
    }
}

/// A run's record and the alerts it raised or suppressed.
pub struct RunResult {
    pub record: RunRecord,
    pub raised: Vec<Alert>,
    pub suppressed: Vec<Alert>,
    pub closed: Vec<Alert>,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// How much of a window a run evaluates, given the watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluate {
    /// The whole window once the data is complete, else nothing (`serve`).
    CompleteOnly,
    /// The whole window once complete, else the part that is (`rules run`).
    WhatIsComplete,
    /// The whole window, marked `incomplete` where the data is not complete (`--force`).
    Forced,
}

impl Evaluate {
    pub fn as_str(self) -> &'static str {
        match self {
            Evaluate::CompleteOnly => "complete-only",
            Evaluate::WhatIsComplete => "what-is-complete",
            Evaluate::Forced => "forced",
        }
    }
}

/// The window of a run, and what started it (`manual`, `schedule`, `catch-up`, `late-data`).
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub trigger: &'a str,
    pub evaluate: Evaluate,
    /// The lateness of a rule that names none.
    pub lateness: std::time::Duration,
}

/// Run `rules` over the window `[from, to)`, record the alerts and append the run record.
pub async fn run_window(
    catalog: &Catalog,
    site: &crate::site::Site,
    rules: &[Rule],
    store: &mut AlertStore,
    suppressions: &[Suppression],
    window: Window<'_>,
) -> Result<RunResult, RunError> {
    let Window {
        from,
        to,
        trigger,
        evaluate,
        lateness,
    } = window;
    let state = site.state_dir().map_err(RunError::NoState)?;
    let started = Utc::now();
    let clock = Instant::now();
    let run_id = format!(
        "{}-{:04x}",
        started.format("%Y%m%dT%H%M%S%.6fZ"),
        std::process::id() & 0xffff
    );
    let log = flowaudit_ingest::warehouse::read_log(&site.tables).await?;
    tracing::debug!(ms = clock.elapsed().as_millis() as u64, "log read");
    let marks = flowaudit_ingest::warehouse::read_caught_up(&site.tables).await?;
    tracing::debug!(
        ms = clock.elapsed().as_millis() as u64,
        "caught-up marks read"
    );
    let log_heads = log.heads.clone();
    let positions = positions(&log);
    let watermarks = crate::watermark::Watermarks::compute(
        catalog,
        &log,
        &marks,
        from.date_naive(),
        to.date_naive() + chrono::Duration::days(1),
    )
    .await
    .map_err(|e| RunError::Watermark(e.to_string()))?;
    tracing::debug!(
        ms = clock.elapsed().as_millis() as u64,
        "watermarks computed"
    );
    let raised_at = ts(started);
    let mut outcomes = Vec::new();
    let (mut raised, mut suppressed, mut expired, mut closed) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // The earlier evaluations, read once a rule has open alerts its evaluation did not find.
    let mut prior: Option<Vec<crate::ledger::Evaluation>> = None;
    for rule in rules {
        let t = Instant::now();
        let lateness = rule.lateness.unwrap_or(lateness);
        let mut outcome = RuleOutcome {
            id: rule.id.clone(),
            sha256: rule.sha256.clone(),
            severity: rule.severity.as_str().into(),
            rows: 0,
            alerts: 0,
            new: 0,
            already_raised: 0,
            suppressed: 0,
            millis: 0,
            error: None,
            coverage: "due".into(),
            evaluated_from: None,
            evaluated_to: None,
            lateness_s: lateness.as_secs(),
            tables: Vec::new(),
            lagging: Vec::new(),
            closed: 0,
            found: Vec::new(),
        };
        let tables = crate::watermark::tables_read(catalog, &rules::render(rule, from, to)).await;
        let tables = match tables {
            Ok(t) => t,
            Err(e) => {
                let e = format!("{}: {e}", rule.path.display());
                warn!(rule = %rule.id, error = %e, "rule failed");
                outcome.error = Some(e);
                outcome.coverage = "failed".into();
                outcomes.push(outcome);
                continue;
            }
        };
        let (through, lagging) = watermarks.complete_through(&tables, lateness, to);
        outcome.tables = tables;
        outcome.lagging = lagging;
        let complete = through.is_some_and(|t| t >= to);
        let upto = match (evaluate, complete) {
            (_, true) => {
                outcome.coverage = "complete".into();
                Some(to)
            }
            (Evaluate::Forced, false) => {
                outcome.coverage = "incomplete".into();
                Some(to)
            }
            (Evaluate::WhatIsComplete, false) => match through {
                Some(t) if t > from => {
                    outcome.coverage = "partial".into();
                    Some(t)
                }
                _ => None,
            },
            (Evaluate::CompleteOnly, false) => None,
        };
        let Some(upto) = upto else {
            info!(rule = %rule.id, lagging = ?outcome.lagging, "not evaluated: the data is not complete up to the window's end");
            outcome.millis = t.elapsed().as_millis() as u64;
            outcomes.push(outcome);
            continue;
        };
        let (from_s, to_s) = (ts(from), ts(upto));
        outcome.evaluated_from = Some(from_s.clone());
        outcome.evaluated_to = Some(to_s.clone());
        let ctx = RunContext {
            run_id: &run_id,
            window_from: &from_s,
            window_to: &to_s,
            raised_at: &raised_at,
            policy_versions: &catalog.policy_versions,
        };
        let found = query_rows(catalog, rule, from, upto)
            .await
            .and_then(|rows| {
                let n = rows.len();
                alerts::group_findings(rule, rows, &ctx)
                    .map(|g| (n, g))
                    .map_err(|e| e.to_string())
            });
        match found {
            Ok((rows, grouped)) => {
                outcome.rows = rows;
                outcome.alerts = grouped.len();
                let fingerprints: HashSet<String> =
                    grouped.iter().map(|a| a.fingerprint.clone()).collect();
                let rec = store.record(grouped, suppressions)?;
                outcome.new = rec.new.len();
                outcome.already_raised = rec.duplicates;
                outcome.suppressed = rec.suppressed.len();
                raised.extend(rec.new);
                suppressed.extend(rec.suppressed);
                for s in rec.expired_suppressions {
                    if !expired.contains(&s) {
                        expired.push(s);
                    }
                }
                let versions = log_heads
                    .iter()
                    .filter(|h| outcome.tables.contains(&h.table))
                    .map(|h| format!("{}@{}", h.table, h.version))
                    .collect::<Vec<_>>()
                    .join(", ");
                // Open alerts of a day this evaluation overlaps that it did not find.
                let missing: Vec<(String, String)> = store
                    .open_alerts(&rule.id)
                    .into_iter()
                    .filter(|(fp, day)| {
                        !fingerprints.contains(fp)
                            && crate::lifecycle::overlaps_day((from, upto), day)
                    })
                    .collect();
                if !missing.is_empty() {
                    if prior.is_none() {
                        // Evaluations that may overlap those days ran after they began (a day
                        // before, for clocks that disagree).
                        let since = missing
                            .iter()
                            .filter_map(|(_, day)| crate::lifecycle::day_start(day))
                            .min()
                            .unwrap_or(from)
                            - chrono::Duration::days(1);
                        prior = Some(crate::ledger::evaluations(&read_runs_since(state, since)?));
                    }
                    let earlier: Vec<crate::lifecycle::Found<'_>> = prior
                        .iter()
                        .flatten()
                        .filter(|e| e.rule_id == rule.id)
                        .filter_map(crate::lifecycle::Found::of)
                        .collect();
                    let current = crate::lifecycle::Found {
                        range: (from, upto),
                        found: Some(&fingerprints),
                    };
                    let gone = crate::lifecycle::unsupported(&missing, &earlier, current);
                    if !gone.is_empty() {
                        let reason = format!(
                            "no longer found when run {run_id} evaluated [{from_s}, {to_s}) with rule version {} over {versions}{}, and no other evaluation that still stands found it",
                            &rule.sha256[..12],
                            if outcome.coverage == "incomplete" { " (forced, on incomplete data)" } else { "" }
                        );
                        let gone = store.close(&gone, &ctx, &reason)?;
                        outcome.closed = gone.len();
                        closed.extend(gone);
                    }
                }
                let mut found: Vec<String> = fingerprints.into_iter().collect();
                found.sort_unstable();
                outcome.found = found;
            }
            Err(e) => {
                warn!(rule = %rule.id, error = %e, "rule failed");
                outcome.error = Some(e);
                outcome.coverage = "failed".into();
            }
        }
        outcome.millis = t.elapsed().as_millis() as u64;
        info!(rule = %rule.id, coverage = %outcome.coverage, rows = outcome.rows, new = outcome.new, already_raised = outcome.already_raised,
              suppressed = outcome.suppressed, closed = outcome.closed, ms = outcome.millis, "rule ran");
        outcomes.push(outcome);
    }
    // Counted before the alerts table's sync: the alerts are in the store either way.
    count_run(&outcomes, &raised, &closed);
    tracing::debug!(ms = clock.elapsed().as_millis() as u64, "rules evaluated");
    crate::alerts_table::sync(&site.tables, store).await?;
    tracing::debug!(
        ms = clock.elapsed().as_millis() as u64,
        "alerts table synced"
    );
    let finished = Utc::now();
    let record = RunRecord {
        run_id,
        trigger: trigger.into(),
        window_from: ts(from),
        window_to: ts(to),
        started_at: raised_at.clone(),
        finished_at: ts(finished),
        millis: clock.elapsed().as_millis() as u64,
        flowaudit_version: env!("CARGO_PKG_VERSION").into(),
        log_heads,
        positions,
        evaluate: evaluate.as_str().into(),
        policy_versions: catalog.policy_versions.clone(),
        geoip: catalog.geoip.clone(),
        engine: site.engine.to_string(),
        rules: outcomes,
        raised: raised
            .iter()
            .map(|a: &Alert| a.fingerprint.clone())
            .collect(),
        suppressed: suppressed
            .iter()
            .map(|a: &Alert| a.fingerprint.clone())
            .collect(),
        expired_suppressions: expired,
        closed: closed
            .iter()
            .map(|a: &Alert| a.fingerprint.clone())
            .collect(),
    };
    // A scheduled window still waiting for its data is not a run: nothing is recorded.
    if evaluate != Evaluate::CompleteOnly || record.rules.iter().any(|o| o.coverage != "due") {
        append_run(state, &record)?;
    }
    Ok(RunResult {
        record,
        raised,
        suppressed,
        closed,
    })
}

/// Add a run's rule outcomes and the alerts it raised and closed to the metrics.
fn count_run(outcomes: &[RuleOutcome], raised: &[Alert], closed: &[Alert]) {
    use flowaudit_ingest::metrics::{metrics, AlertLabels, RuleLabels, RuleOutcomeLabels};
    let m = metrics();
    for o in outcomes {
        m.rule_runs
            .get_or_create(&RuleOutcomeLabels {
                rule: o.id.clone(),
                outcome: o.coverage.clone(),
            })
            .inc();
        if o.coverage != "due" {
            m.rule_seconds
                .get_or_create(&RuleLabels { rule: o.id.clone() })
                .observe(o.millis as f64 / 1000.0);
        }
    }
    let labels = |a: &Alert| AlertLabels {
        rule: a.rule_id.clone(),
        severity: a.severity.clone(),
    };
    for a in raised {
        m.alerts_raised.get_or_create(&labels(a)).inc();
    }
    for a in closed {
        m.alerts_closed.get_or_create(&labels(a)).inc();
    }
}

/// Append a run record to `_runs/runs.jsonl` (fsynced).
fn append_run(state: &Path, record: &RunRecord) -> Result<(), RunError> {
    let dir = state.join("_runs");
    let path = dir.join("runs.jsonl");
    let err = |what: &'static str| {
        let path = path.clone();
        move |source| RunError::Io { what, path, source }
    };
    std::fs::create_dir_all(&dir).map_err(err("create"))?;
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(err("open"))?;
    let mut line = serde_json::to_string(record).expect("json");
    line.push('\n');
    f.write_all(line.as_bytes()).map_err(err("append to"))?;
    f.sync_data().map_err(err("fsync"))?;
    Ok(())
}

/// The run records that started at or after `since`, oldest first. Records are appended in the
/// order runs start and each line begins with its `run_id`, whose first 15 characters are the
/// start (`YYYYMMDDTHHMMSS`): the file is read from its end and only those lines are parsed.
pub fn read_runs_since(state: &Path, since: DateTime<Utc>) -> Result<Vec<Value>, RunError> {
    let text = runs_text(state)?;
    let cutoff = since.format("%Y%m%dT%H%M%S").to_string();
    let mut out: Vec<Value> = text
        .lines()
        .rev()
        .take_while(|l| {
            l.strip_prefix("{\"run_id\":\"")
                .and_then(|r| r.get(..15))
                .is_none_or(|started| started >= cutoff.as_str())
        })
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    out.reverse();
    Ok(out)
}

/// Every run record kept in the state directory `state` (a local warehouse's own), oldest first.
pub fn read_runs(state: &Path) -> Result<Vec<Value>, RunError> {
    Ok(runs_text(state)?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The text of `_runs/runs.jsonl` (empty when there is none yet).
fn runs_text(state: &Path) -> Result<String, RunError> {
    let path = state.join("_runs").join("runs.jsonl");
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(RunError::Io {
            what: "read",
            path,
            source,
        }),
    }
}

/// Run one rule's query for a window; its rows as JSON objects (timestamps as RFC 3339 text).
pub async fn query_rows(
    catalog: &Catalog,
    rule: &Rule,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Map<String, Value>>, String> {
    let sql = rules::render(rule, from, to);
    let ctx = with_settings(&catalog.ctx, &rule.settings)
        .map_err(|e| format!("{}: {e}", rule.path.display()))?;
    let df = ctx
        .sql(&sql)
        .await
        .map_err(|e| format!("{}: {e}", rule.path.display()))?;
    let batches = df
        .collect()
        .await
        .map_err(|e| format!("{}: {e}", rule.path.display()))?;
    batches_to_json(&batches).map_err(|e| format!("{}: {e}", rule.path.display()))
}

/// `ctx`, or a session over the same tables and functions with `settings` (a rule's `settings`
/// key) on top of its own.
pub fn with_settings<'a>(
    ctx: &'a datafusion::prelude::SessionContext,
    settings: &[(String, String)],
) -> datafusion::error::Result<std::borrow::Cow<'a, datafusion::prelude::SessionContext>> {
    if settings.is_empty() {
        return Ok(std::borrow::Cow::Borrowed(ctx));
    }
    let mut state = ctx.state();
    for (k, v) in settings {
        state.config_mut().options_mut().set(k, v)?;
    }
    Ok(std::borrow::Cow::Owned(
        datafusion::prelude::SessionContext::new_with_state(state),
    ))
}

/// Record batches as JSON objects, nulls included.
pub fn batches_to_json(
    batches: &[arrow::record_batch::RecordBatch],
) -> Result<Vec<Map<String, Value>>, String> {
    use arrow::json::writer::{JsonArray, WriterBuilder};
    let mut buf = Vec::new();
    {
        let mut w = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, JsonArray>(&mut buf);
        for b in batches {
            w.write(b).map_err(|e| e.to_string())?;
        }
        w.finish().map_err(|e| e.to_string())?;
    }
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&buf).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule's settings are in the session its query is planned in, over the same tables, and
    /// not in the catalog's own session; without settings the catalog's session is used.
    #[tokio::test]
    async fn a_rules_settings_apply_to_its_query_only() {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.sql("CREATE TABLE t AS VALUES (1), (2)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let key = "datafusion.execution.parquet.pushdown_filters";
        let pushdown = |c: &datafusion::prelude::SessionContext| {
            c.state()
                .config()
                .options()
                .execution
                .parquet
                .pushdown_filters
        };
        let set = with_settings(&ctx, &[(key.to_string(), "true".to_string())]).unwrap();
        assert!(pushdown(&set));
        assert!(!pushdown(&ctx));
        let rows = set
            .sql("SELECT count(*) AS n FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(rows[0].num_rows(), 1);
        assert!(matches!(
            with_settings(&ctx, &[]).unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
        assert!(with_settings(&ctx, &[(key.to_string(), "maybe".to_string())]).is_err());
    }

    #[test]
    fn runs_since_a_time_are_read_from_the_end_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("_runs")).unwrap();
        let line = |id: &str| format!("{{\"run_id\":\"{id}\",\"window_from\":\"x\"}}\n");
        let text = [
            line("20261120T235959.000001Z-0001"),
            line("20261121T000000.000001Z-0002"),
            line("20261122T101500.000001Z-0003"),
        ]
        .concat();
        std::fs::write(dir.path().join("_runs/runs.jsonl"), text).unwrap();
        let ids = |since: &str| -> Vec<String> {
            read_runs_since(dir.path(), since.parse().unwrap())
                .unwrap()
                .iter()
                .map(|r| r["run_id"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            ids("2026-11-21T00:00:00Z"),
            [
                "20261121T000000.000001Z-0002",
                "20261122T101500.000001Z-0003"
            ]
        );
        assert_eq!(ids("2026-11-23T00:00:00Z"), Vec::<String>::new());
        assert_eq!(ids("2026-11-01T00:00:00Z").len(), 3);
        assert_eq!(read_runs(dir.path()).unwrap().len(), 3);
    }
}
