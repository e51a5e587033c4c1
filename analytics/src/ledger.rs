//! The coverage ledger: which rule version evaluated which window over which table versions,
//! as the run records (`_runs/runs.jsonl`) keep it, read back for the report's coverage statement
//! and checked against the tables' logs by `verify`.
//!
//! Per rule and report window, the statement is either that every record committed for the
//! window, up to the log heads now, was evaluated on complete data (by the rule versions named),
//! or the list of what was not: parts of the window no complete evaluation covered, windows
//! evaluated on incomplete data (`--force`), failed evaluations, and records committed after an
//! evaluation with event times inside it (late data not evaluated yet).
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use flowaudit_ingest::warehouse::WarehouseLog;
use serde_json::{json, Value};

use crate::rules::Rule;
use crate::runner::Position;
use crate::watermark::rfc3339;

/// One evaluation of a rule, as a run record holds it.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub rule_id: String,
    pub run_id: String,
    pub sha256: String,
    /// `complete`, `partial`, `incomplete`, `due`, `failed`, or `unknown` (a record written
    /// before the ledger existed).
    pub coverage: String,
    /// The run's window, and the part of it evaluated.
    pub window: (DateTime<Utc>, DateTime<Utc>),
    pub evaluated: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub tables: Vec<String>,
    pub positions: Vec<Position>,
    /// The fingerprints of every finding of this evaluation (raised, already raised or
    /// suppressed); `None` in a record written before they were kept.
    pub found: Option<std::collections::HashSet<String>>,
    heads: Vec<String>,
    error: Option<String>,
}

fn time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()?.parse().ok()
}

/// Every rule's evaluations in the run records `runs`, oldest first.
pub fn evaluations(runs: &[Value]) -> Vec<Evaluation> {
    let mut out = Vec::new();
    for r in runs {
        let (Some(wf), Some(wt)) = (time(&r["window_from"]), time(&r["window_to"])) else {
            continue;
        };
        let positions: Vec<Position> =
            serde_json::from_value(r["positions"].clone()).unwrap_or_default();
        for o in r["rules"].as_array().into_iter().flatten() {
            let tables: Vec<String> = o["tables"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(String::from))
                .collect();
            let heads = r["log_heads"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|h| {
                    h["table"]
                        .as_str()
                        .is_some_and(|t| tables.iter().any(|x| x == t))
                })
                .map(|h| format!("{}@{}", h["table"].as_str().unwrap_or(""), h["version"]))
                .collect();
            out.push(Evaluation {
                rule_id: o["id"].as_str().unwrap_or_default().into(),
                run_id: r["run_id"].as_str().unwrap_or_default().into(),
                sha256: o["sha256"].as_str().unwrap_or_default().into(),
                // Run records written before the ledger existed never checked completeness.
                coverage: o["coverage"]
                    .as_str()
                    .unwrap_or(if o["error"].is_null() {
                        "unknown"
                    } else {
                        "failed"
                    })
                    .into(),
                window: (wf, wt),
                evaluated: match (time(&o["evaluated_from"]), time(&o["evaluated_to"])) {
                    (Some(f), Some(t)) => Some((f, t)),
                    _ => None,
                },
                tables,
                positions: positions.clone(),
                found: o["found"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|f| f.as_str().map(String::from))
                        .collect()
                }),
                heads,
                error: o["error"].as_str().map(String::from),
            });
        }
    }
    out
}

/// The live files of `log`, in `tables`, that commits made after a run that saw `positions`
/// added with event times inside `[from, to)` (late data for that run), as their paths.
pub fn late_files(
    log: &WarehouseLog,
    tables: &[String],
    positions: &[Position],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<String> {
    let parse = |s: &str| s.parse::<DateTime<Utc>>().ok();
    log.files
        .iter()
        .filter(|f| tables.contains(&f.table))
        .filter(|f| {
            let seen = positions
                .iter()
                .find(|p| p.table == f.table && p.topic == f.topic && p.partition == f.partition)
                .map_or(0, |p| p.next_offset);
            f.last_offset >= seen
        })
        .filter(
            |f| match (parse(&f.min_event_time), parse(&f.max_event_time)) {
                (Some(lo), Some(hi)) => lo < to && hi >= from,
                _ => true,
            },
        )
        .map(|f| f.path.clone())
        .collect()
}

/// `[from, to)` less the union of `covered`.
fn uncovered(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    mut covered: Vec<(DateTime<Utc>, DateTime<Utc>)>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    covered.sort();
    let mut out = Vec::new();
    let mut at = from;
    for (f, t) in covered {
        if t <= at || f >= to {
            continue;
        }
        if f > at {
            out.push((at, f.min(to)));
        }
        at = at.max(t);
        if at >= to {
            break;
        }
    }
    if at < to {
        out.push((at, to));
    }
    out
}

/// The coverage statement of every rule in `rules` over `[from, to)`.
pub fn statement(
    runs: &[Value],
    rules: &[Rule],
    log: &WarehouseLog,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Value {
    let heads_now: Vec<String> = log
        .heads
        .iter()
        .map(|h| format!("{}@{}", h.table, h.version))
        .collect();
    let all = evaluations(runs);
    let mut per_rule = Vec::new();
    let mut all_complete = true;
    for rule in rules {
        let evs: Vec<&Evaluation> = all
            .iter()
            .filter(|e| e.rule_id == rule.id && e.window.0 < to && e.window.1 > from)
            .collect();
        let good: Vec<&Evaluation> = evs
            .iter()
            .copied()
            .filter(|e| matches!(e.coverage.as_str(), "complete" | "partial"))
            .collect();
        let gaps = uncovered(from, to, good.iter().filter_map(|e| e.evaluated).collect());
        // Late data: records committed after a complete evaluation with event times inside
        // what it evaluated (and inside the report's window); only the latest evaluation of
        // each window counts.
        let mut latest: BTreeMap<(DateTime<Utc>, DateTime<Utc>), &Evaluation> = BTreeMap::new();
        for e in &good {
            if let Some(w) = e.evaluated {
                latest.insert(w, e);
            }
        }
        let mut late = Vec::new();
        for ((f, t), e) in &latest {
            let files = late_files(log, &e.tables, &e.positions, (*f).max(from), (*t).min(to));
            if !files.is_empty() {
                late.push(json!({
                    "run_id": e.run_id,
                    "evaluated_from": rfc3339(*f),
                    "evaluated_to": rfc3339(*t),
                    "files": files,
                }));
            }
        }
        let incomplete: Vec<Value> = evs
            .iter()
            .filter(|e| e.coverage == "incomplete")
            .map(|e| json!({"run_id": e.run_id, "from": rfc3339(e.window.0), "to": rfc3339(e.window.1)}))
            .collect();
        let failed: Vec<Value> = evs
            .iter()
            .filter(|e| e.coverage == "failed")
            .map(|e| json!({"run_id": e.run_id, "from": rfc3339(e.window.0), "to": rfc3339(e.window.1), "error": e.error}))
            .collect();
        let versions: BTreeSet<String> = good.iter().map(|e| e.sha256.clone()).collect();
        let complete = gaps.is_empty() && late.is_empty();
        all_complete &= complete;
        let names: Vec<String> = versions
            .iter()
            .map(|v| v.chars().take(12).collect())
            .collect();
        let text = if complete {
            format!(
                "every record committed for [{}, {}) up to {} was evaluated on complete data by {} version {}",
                rfc3339(from),
                rfc3339(to),
                heads_now.join(", "),
                rule.id,
                names.join(", ")
            )
        } else {
            let mut why = Vec::new();
            if !gaps.is_empty() {
                why.push(format!(
                    "not evaluated on complete data: {}",
                    gaps.iter()
                        .map(|(f, t)| format!("[{}, {})", rfc3339(*f), rfc3339(*t)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if !late.is_empty() {
                why.push(format!(
                    "records committed after {} evaluation(s) fall inside them and are not evaluated yet",
                    late.len()
                ));
            }
            format!("{}: {}", rule.id, why.join("; "))
        };
        per_rule.push(json!({
            "rule_id": rule.id,
            "current_version": rule.sha256,
            "versions": versions,
            "complete": complete,
            "statement": text,
            "not_evaluated": gaps.iter().map(|(f, t)| json!({"from": rfc3339(*f), "to": rfc3339(*t)})).collect::<Vec<_>>(),
            "evaluated_on_incomplete_data": incomplete,
            "failed": failed,
            "late_data": late,
            "evaluations": good.iter().map(|e| json!({
                "run_id": e.run_id,
                "sha256": e.sha256,
                "coverage": e.coverage,
                "from": e.evaluated.map(|w| rfc3339(w.0)),
                "to": e.evaluated.map(|w| rfc3339(w.1)),
                "table_versions": e.heads,
            })).collect::<Vec<_>>(),
        }));
    }
    json!({"complete": all_complete, "log_heads": heads_now, "rules": per_rule})
}

/// Check the ledger against the log: each run record's table versions must still be in the log
/// with the chain hash it recorded, and each position it recorded must be where the log put the
/// partition at that version. Returns one problem per line that disagrees.
pub fn check(runs: &[Value], log: &WarehouseLog) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let run = r["run_id"].as_str().unwrap_or("?");
        let mut versions: BTreeMap<String, i64> = BTreeMap::new();
        for h in r["log_heads"].as_array().into_iter().flatten() {
            let table = h["table"].as_str().unwrap_or_default();
            let version = h["version"].as_i64().unwrap_or(-1);
            let hash = h["hash"].as_str().unwrap_or_default();
            versions.insert(table.to_string(), version);
            let found = log
                .commits
                .iter()
                .find(|c| c.table == table && c.version == version);
            if found.is_none_or(|c| c.hash != hash) {
                // Its positions cannot be checked against a version the log does not hold.
                versions.remove(table);
            }
            match found {
                None => problems.push(format!(
                    "runs.jsonl line {}: run {run} evaluated {table}@{version}, which the log no longer holds",
                    i + 1
                )),
                Some(c) if c.hash != hash => problems.push(format!(
                    "runs.jsonl line {}: run {run} evaluated {table}@{version} with chain hash {hash}; the log's is now {}: the log was rewritten after the run",
                    i + 1,
                    c.hash
                )),
                Some(_) => {}
            }
        }
        let positions: Vec<Position> = match serde_json::from_value(r["positions"].clone()) {
            Ok(p) => p,
            Err(_) => continue,
        };
        for p in positions {
            let Some(v) = versions.get(&p.table) else {
                continue;
            };
            let at = log
                .commits
                .iter()
                .filter(|c| c.table == p.table && c.version <= *v)
                .filter_map(|c| c.meta.as_ref())
                .filter(|m| m.topic == p.topic && m.partition == p.partition)
                .map(|m| m.covers_last_offset.saturating_add(1))
                .max()
                .unwrap_or(0);
            if at != p.next_offset {
                problems.push(format!(
                    "runs.jsonl line {}: run {run} recorded {}/{}/{} at offset {}; the log at {}@{v} has it at {at}",
                    i + 1,
                    p.table,
                    p.topic,
                    p.partition,
                    p.next_offset,
                    p.table
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncovered_parts_are_what_no_interval_covers() {
        let t = |h: u32| {
            chrono::NaiveDate::from_ymd_opt(2026, 11, 22)
                .unwrap()
                .and_hms_opt(h, 0, 0)
                .unwrap()
                .and_utc()
        };
        assert_eq!(uncovered(t(0), t(23), vec![]), vec![(t(0), t(23))]);
        assert_eq!(
            uncovered(
                t(0),
                t(23),
                vec![(t(5), t(8)), (t(0), t(6)), (t(10), t(23))]
            ),
            vec![(t(8), t(10))]
        );
        assert!(uncovered(t(2), t(4), vec![(t(0), t(23))]).is_empty());
    }
}
