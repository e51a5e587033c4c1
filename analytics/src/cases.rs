//! Rule test cases (`flowaudit rules test`): every rule in `queries/` has a folder
//! `<cases>/<rule_id>/` with the events it is run over and what it must find:
//!
//! - `gateway_events.jsonl`, `flows.jsonl` (either may be absent): records in flowaudit's JSON
//!   format. They are put through ingest's own decoders and enrichment (the policy's
//!   `networks.toml`, the GeoIP database) into a temporary warehouse, split by the hour of `ts`.
//! - `case.toml`: the window (`from`, `to`), the findings that must fire (`[[fire]]`, each with
//!   the entity it is about and `why`) and near misses that must not (`[[quiet]]`). The rule must
//!   find exactly the `fire` entities: a missing one and any extra one both fail. An entity
//!   column with no value (SQL NULL, e.g. a country GeoIP does not know) is written `"unknown"`.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::alerts::{self, finding_text, RunContext};
use crate::catalog::Catalog;
use crate::rules::Rule;
use flowaudit_ingest::batch::Enricher;
use flowaudit_ingest::schema::Table;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    #[serde(default)]
    fire: Vec<Expect>,
    #[serde(default)]
    quiet: Vec<Expect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    why: String,
    entity: BTreeMap<String, toml::Value>,
}

type Entity = BTreeMap<String, String>;

fn entity_of(e: &BTreeMap<String, toml::Value>) -> Entity {
    e.iter()
        .map(|(k, v)| {
            let s = match v {
                toml::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            (k.clone(), s)
        })
        .collect()
}

/// The outcome of one rule's cases.
#[derive(Debug)]
pub struct CaseReport {
    pub rule: String,
    pub fired: usize,
    pub expected: usize,
    pub quiet: usize,
    /// Empty when the rule passed.
    pub problems: Vec<String>,
}

impl CaseReport {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Put a case's JSONL files into a fresh warehouse at `wh` (one file per table and hour, one
/// Delta commit per table, as ingest would record them).
pub fn build_warehouse(case_dir: &Path, wh: &Path, enricher: &Enricher) -> Result<(), String> {
    let location = flowaudit_ingest::warehouse::Location::Local(wh.to_path_buf());
    let mut warehouse = flowaudit_ingest::warehouse::Warehouse::open(&location)
        .map_err(|e| format!("{}: {e}", wh.display()))?;
    for table in [Table::GatewayEvents, Table::Flows] {
        let mut written = Vec::new();
        let path = case_dir.join(format!("{}.jsonl", table.name()));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut by_hour: BTreeMap<(String, String), String> = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.trim_start().starts_with("//") {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
            let ts = v["ts"].as_str().filter(|t| t.len() >= 13).ok_or_else(|| {
                format!(
                    "{}:{}: `ts` must be an RFC 3339 string in case files",
                    path.display(),
                    i + 1
                )
            })?;
            let key = (ts[..10].to_string(), ts[11..13].to_string());
            let buf = by_hour.entry(key).or_default();
            buf.push_str(line);
            buf.push('\n');
        }
        for ((date, hour), lines) in by_hour {
            let dir = warehouse.staging_dir().join(format!("case-{date}-{hour}"));
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let input = dir.join("case.jsonl.in");
            std::fs::write(&input, lines).map_err(|e| format!("{}: {e}", input.display()))?;
            let s = flowaudit_ingest::convert::convert_jsonl(
                &input,
                table,
                enricher,
                &dir.join("case.parquet"),
                &Default::default(),
                1,
            )
            .map_err(|e| format!("{}: {e}", path.display()))?;
            std::fs::remove_file(&input).ok();
            if !s.rejected.is_empty() {
                return Err(format!(
                    "{}: lines for {date} {hour}h were rejected by ingest: {:?}",
                    path.display(),
                    s.rejected
                ));
            }
            written.push((dir.join("case.parquet"), date, hour));
        }
        warehouse
            .import_files(table, "rules-test-case", &written)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        for (f, _, _) in &written {
            if let Some(d) = f.parent() {
                std::fs::remove_dir_all(d).ok();
            }
        }
    }
    // Ranges ingest found missing: {"topic", "partition", "first_offset", "last_offset",
    // "reason", "detected_at", "table" (default flows)}.
    let path = case_dir.join("ingest_gaps.jsonl");
    if let Ok(text) = std::fs::read_to_string(&path) {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.trim_start().starts_with("//") {
                continue;
            }
            let at = |e: &dyn std::fmt::Display| format!("{}:{}: {e}", path.display(), i + 1);
            let g: CaseGap = serde_json::from_str(line).map_err(|e| at(&e))?;
            let table = match g.table.as_deref() {
                None | Some("flows") => Table::Flows,
                Some("gateway_events") => Table::GatewayEvents,
                Some(other) => return Err(at(&format!("no table {other}"))),
            };
            warehouse
                .record_gap(
                    table,
                    &g.topic,
                    g.partition,
                    g.first_offset,
                    g.last_offset,
                    &g.reason,
                    Some(g.detected_at),
                )
                .map_err(|e| at(&e))?;
        }
    }
    Ok(())
}

/// A gap line of a case's `ingest_gaps.jsonl`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseGap {
    topic: String,
    partition: i32,
    first_offset: i64,
    last_offset: i64,
    reason: String,
    detected_at: String,
    table: Option<String>,
}

/// Run every rule against its cases in `cases_dir`.
pub async fn run_cases(
    rules: &[Rule],
    cases_dir: &Path,
    policy: &Path,
    geoip: &Path,
) -> Result<Vec<CaseReport>, String> {
    let networks = flowaudit_ingest::networks::Networks::load(policy).map_err(|e| e.to_string())?;
    let enricher = Enricher {
        geoip: Some(flowaudit_ingest::geoip::GeoIp::open(geoip).map_err(|e| e.to_string())?),
        networks,
    };
    let mut reports = Vec::new();
    for rule in rules {
        let dir = cases_dir.join(&rule.id);
        let mut report = CaseReport {
            rule: rule.id.clone(),
            fired: 0,
            expected: 0,
            quiet: 0,
            problems: Vec::new(),
        };
        match run_case(rule, &dir, policy, geoip, &enricher).await {
            Ok((fired, case)) => {
                report.fired = fired.len();
                report.expected = case.fire.len();
                report.quiet = case.quiet.len();
                let want: BTreeSet<Entity> =
                    case.fire.iter().map(|f| entity_of(&f.entity)).collect();
                for f in &case.fire {
                    if !fired.contains(&entity_of(&f.entity)) {
                        report.problems.push(format!(
                            "did not fire for {:?} ({})",
                            entity_of(&f.entity),
                            f.why
                        ));
                    }
                }
                for q in &case.quiet {
                    let e = entity_of(&q.entity);
                    if fired
                        .iter()
                        .any(|got| e.iter().all(|(k, v)| got.get(k) == Some(v)))
                    {
                        report
                            .problems
                            .push(format!("fired for the near miss {e:?} ({})", q.why));
                    }
                }
                for got in &fired {
                    if !want.contains(got) {
                        report
                            .problems
                            .push(format!("fired for {got:?}, which the case does not expect"));
                    }
                }
                if case.fire.is_empty() || case.quiet.is_empty() {
                    report.problems.push(
                        "a case needs at least one [[fire]] and one [[quiet]] (a near miss)".into(),
                    );
                }
            }
            Err(e) => report.problems.push(e),
        }
        reports.push(report);
    }
    Ok(reports)
}

async fn run_case(
    rule: &Rule,
    dir: &Path,
    policy: &Path,
    geoip: &Path,
    enricher: &Enricher,
) -> Result<(BTreeSet<Entity>, CaseFile), String> {
    let case_path = dir.join("case.toml");
    let text = std::fs::read_to_string(&case_path)
        .map_err(|e| format!("{}: {e} (every rule needs test cases)", case_path.display()))?;
    let case: CaseFile =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", case_path.display()))?;
    let wh = tempfile_dir()?;
    // The warehouse writer runs its own runtime: not on this task's.
    std::thread::scope(|s| s.spawn(|| build_warehouse(dir, &wh.0, enricher)).join())
        .map_err(|_| format!("{}: building the case's warehouse panicked", dir.display()))??;
    let catalog = Catalog::open(&wh.0, policy, Some(geoip))
        .await
        .map_err(|e| e.to_string())?;
    let rows = crate::runner::query_rows(&catalog, rule, case.from, case.to).await?;
    let (f, t) = (case.from.to_rfc3339(), case.to.to_rfc3339());
    let ctx = RunContext {
        run_id: "rules-test",
        window_from: &f,
        window_to: &t,
        raised_at: &f,
        policy_versions: &catalog.policy_versions,
    };
    let alerts = alerts::group_findings(rule, rows, &ctx).map_err(|e| e.to_string())?;
    let fired = alerts
        .iter()
        .map(|a| {
            a.entity
                .iter()
                .map(|(k, v)| (k.clone(), finding_text(v)))
                .collect()
        })
        .collect();
    Ok((fired, case))
}

/// A temporary directory removed on drop (no dev-dependency in library code).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn tempfile_dir() -> Result<TempDir, String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let p = std::env::temp_dir().join(format!(
        "flowaudit-case-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(TempDir(p))
}
