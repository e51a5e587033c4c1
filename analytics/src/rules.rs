//! Rule files: one `.sql` file per rule in `queries/`, with a header of `-- key: value` comment
//! lines before the query:
//!
//! ```sql
//! -- id: transfer_no_legal_basis
//! -- title: Transfer to a country with no legal basis at event time
//! -- severity: high
//! -- schedule: */15 * * * *
//! -- lookback: 1h
//! -- entity: src_ip, dst_country
//! -- description: Data left the enclave for a country with no adequacy decision,
//! --   no EEA membership and no other transfer basis on the day it was sent.
//! SELECT …
//! ```
//!
//! A line starting with `--` followed by two or more spaces continues the previous key. The
//! query may use the window placeholders `{{from}}`, `{{to}}` (UTC timestamp literals) and
//! `{{from_date}}`, `{{to_date}}` (`YYYY-MM-DD`, for partition pruning), and, for rules with a
//! `history` key, `{{history_from}}` and `{{history_from_date}}` (the window's start minus the
//! history). Optional keys: `summary` (a template with `{column}` placeholders), `policy` (the
//! policy files that decide the rule), `history` and `lateness` (how late data may arrive before
//! a window is evaluated without it; docs/rules.md, "Watermarks and late data") and `settings`
//! (DataFusion options for the rule's query, e.g. `datafusion.execution.parquet.pushdown_filters
//! = true`, where measured faster; docs/rules.md). Every problem is reported with the file and
//! line.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// A rule file that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Invalid {
        path: PathBuf,
        line: usize,
        msg: String,
    },
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// A parsed rule file.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub title: String,
    pub severity: Severity,
    /// Cron expression, five fields (minute hour day-of-month month day-of-week).
    pub schedule: String,
    /// How far back each run looks.
    pub lookback: Duration,
    /// Columns of the result that identify the entity a finding is about.
    pub entity: Vec<String>,
    pub description: String,
    /// Optional summary template: `{column}` is replaced by that column of the finding's first
    /// evidence row.
    pub summary: Option<String>,
    /// Policy files the rule decides with (their SHA-256 go into each alert).
    pub policy: Vec<String>,
    /// How far before the window the query may look for a baseline (`{{history_from}}`).
    pub history: Duration,
    /// How late data may arrive before a window is evaluated without it (`lateness`; `None`:
    /// the configured default).
    pub lateness: Option<Duration>,
    /// DataFusion settings for this rule's query in the embedded engine (`settings`:
    /// `datafusion.… = value, …`), each checked against DataFusion's options when the rule loads.
    pub settings: Vec<(String, String)>,
    /// The query, header removed.
    pub sql: String,
    pub path: PathBuf,
    /// SHA-256 of the whole file: the rule's version.
    pub sha256: String,
}

const KEYS: &[&str] = &[
    "id",
    "title",
    "severity",
    "schedule",
    "lookback",
    "entity",
    "description",
    "summary",
    "policy",
    "history",
    "lateness",
    "settings",
];

/// Keys a header may leave out.
const OPTIONAL: &[&str] = &["summary", "policy", "history", "lateness", "settings"];

/// How late data may arrive, by default, before a window is evaluated without it
/// (`[rules] lateness` in flowaudit.toml overrides it; a rule's `lateness` key overrides both).
pub const DEFAULT_LATENESS: Duration = Duration::from_secs(300);

/// Parse a duration like `90s`, `15m`, `1h`, `7d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok().filter(|n| *n > 0)?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(secs).map(Duration::from_secs)
}

/// The longest lookback or history a rule may have: a century (a window must stay subtractable
/// from any date the runner works with).
pub const MAX_WINDOW: Duration = Duration::from_secs(36_500 * 86_400);

/// Format a duration the way rule headers write it (`90s`, `15m`, `1h`, `7d`).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Parse one rule file.
pub fn parse_rule(path: &Path, text: &str) -> Result<Rule, RuleError> {
    let err = |line: usize, msg: String| RuleError::Invalid {
        path: path.to_path_buf(),
        line,
        msg,
    };
    let mut header: BTreeMap<&str, (usize, String)> = BTreeMap::new();
    let mut last: Option<&str> = None;
    let mut sql_start = text.len();
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let n = i + 1;
        let trimmed = line.trim_end();
        if let Some(rest) = trimmed.strip_prefix("--") {
            if rest.starts_with("  ") {
                let Some(key) = last else {
                    return Err(err(n, "continuation line before any key".into()));
                };
                let v = &mut header.get_mut(key).expect("key seen").1;
                v.push(' ');
                v.push_str(rest.trim());
            } else if let Some((k, v)) = rest.split_once(':') {
                let k = k.trim();
                let Some(key) = KEYS.iter().copied().find(|x| *x == k) else {
                    return Err(err(
                        n,
                        format!(
                            "unknown header key `{k}` (expected one of {})",
                            KEYS.join(", ")
                        ),
                    ));
                };
                if header.insert(key, (n, v.trim().to_string())).is_some() {
                    return Err(err(n, format!("`{key}` given twice")));
                }
                last = Some(key);
            } else if !rest.trim().is_empty() {
                return Err(err(n, "header lines are `-- key: value`".into()));
            }
        } else if trimmed.is_empty() && sql_start == text.len() && header.is_empty() {
            // blank lines before the header
        } else {
            sql_start = offset;
            break;
        }
        offset += line.len();
    }
    for k in KEYS {
        if !header.contains_key(k) && !OPTIONAL.contains(k) {
            return Err(err(1, format!("header key `{k}` is missing")));
        }
    }
    let get = |k: &str| header[k].clone();
    let (line, id) = get("id");
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(err(line, format!("id `{id}` must be lower_snake_case")));
    }
    if id != stem {
        return Err(err(
            line,
            format!("id `{id}` differs from the file name `{stem}.sql`"),
        ));
    }
    let (line, sev) = get("severity");
    let severity = match sev.as_str() {
        "low" => Severity::Low,
        "medium" => Severity::Medium,
        "high" => Severity::High,
        "critical" => Severity::Critical,
        _ => {
            return Err(err(
                line,
                format!("severity `{sev}` is not one of low, medium, high, critical"),
            ))
        }
    };
    let (line, schedule) = get("schedule");
    if let Err(e) = schedule.parse::<crate::cron::Cron>() {
        return Err(err(line, format!("schedule: {e}")));
    }
    let (line, lb) = get("lookback");
    let lookback = parse_duration(&lb).ok_or_else(|| {
        err(
            line,
            format!("lookback `{lb}` is not a duration like 15m, 1h or 7d"),
        )
    })?;
    if lookback > MAX_WINDOW {
        return Err(err(line, format!("lookback `{lb}` is longer than 36500d")));
    }
    let (line, entity) = get("entity");
    let entity: Vec<String> = entity
        .split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if entity.is_empty() {
        return Err(err(line, "entity names no column".into()));
    }
    let history = match header.get("history") {
        None => Duration::ZERO,
        Some((line, h)) => match parse_duration(h) {
            None => {
                return Err(err(
                    *line,
                    format!("history `{h}` is not a duration like 7d or 30d"),
                ))
            }
            Some(d) if d > MAX_WINDOW => {
                return Err(err(*line, format!("history `{h}` is longer than 36500d")))
            }
            Some(d) => d,
        },
    };
    let lateness = match header.get("lateness") {
        None => None,
        Some((line, l)) => match parse_duration(l) {
            Some(d) if d <= MAX_WINDOW => Some(d),
            _ => {
                return Err(err(
                    *line,
                    format!("lateness `{l}` is not a duration like 5m or 1h (at most 36500d)"),
                ))
            }
        },
    };
    let mut settings = Vec::new();
    if let Some((line, text)) = header.get("settings") {
        let mut check = datafusion::common::config::ConfigOptions::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(err(*line, format!("setting `{pair}` is not `key = value`")));
            };
            let (k, v) = (k.trim(), v.trim());
            if !k.starts_with("datafusion.") {
                return Err(err(
                    *line,
                    format!("setting `{k}` is not a DataFusion option (datafusion.…)"),
                ));
            }
            if let Err(e) = check.set(k, v) {
                return Err(err(*line, format!("setting `{k} = {v}`: {e}")));
            }
            settings.push((k.to_string(), v.to_string()));
        }
    }
    let policy: Vec<String> = header
        .get("policy")
        .map(|(_, p)| {
            p.split(',')
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let sql = text[sql_start..].trim().to_string();
    if sql.is_empty() {
        return Err(err(
            text.lines().count().max(1),
            "the file has no query after its header".into(),
        ));
    }
    Ok(Rule {
        id,
        title: get("title").1,
        severity,
        schedule,
        lookback,
        entity,
        description: get("description").1,
        summary: header.get("summary").map(|s| s.1.clone()),
        policy,
        history,
        lateness,
        settings,
        sql,
        path: path.to_path_buf(),
        sha256: hex::encode(Sha256::digest(text.as_bytes())),
    })
}

/// Load every `*.sql` file of `dir`, sorted by id; ids must be unique.
pub fn load_rules(dir: &Path) -> Result<Vec<Rule>, RuleError> {
    let io = |source| RuleError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut rules = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "sql") {
            let text = std::fs::read_to_string(&path).map_err(|source| RuleError::Io {
                path: path.clone(),
                source,
            })?;
            rules.push(parse_rule(&path, &text)?);
        }
    }
    rules.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(rules)
}

/// The query of `rule` for the window `[from, to)`, placeholders filled in.
pub fn render(
    rule: &Rule,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> String {
    let ts = |t: chrono::DateTime<chrono::Utc>| {
        format!("TIMESTAMP '{}'", t.format("%Y-%m-%dT%H:%M:%S%.6fZ"))
    };
    let history_from = from - chrono::Duration::from_std(rule.history).unwrap_or_default();
    rule.sql
        .replace(
            "{{history_from_date}}",
            &history_from.date_naive().to_string(),
        )
        .replace("{{history_from}}", &ts(history_from))
        .replace("{{from_date}}", &from.date_naive().to_string())
        .replace("{{to_date}}", &to.date_naive().to_string())
        .replace("{{from}}", &ts(from))
        .replace("{{to}}", &ts(to))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "-- id: r1\n-- title: A rule\n-- severity: high\n-- schedule: */15 * * * *\n-- lookback: 1h\n-- entity: src_ip, dst_country\n-- description: First line\n--   and its continuation.\nSELECT 1 AS src_ip, 'RU' AS dst_country\n";

    #[test]
    fn parses_header_and_query() {
        let r = parse_rule(Path::new("queries/r1.sql"), GOOD).unwrap();
        assert_eq!(
            (r.id.as_str(), r.severity, r.lookback),
            ("r1", Severity::High, Duration::from_secs(3600))
        );
        assert_eq!(r.entity, ["src_ip", "dst_country"]);
        assert_eq!(r.description, "First line and its continuation.");
        assert_eq!(r.sql, "SELECT 1 AS src_ip, 'RU' AS dst_country");
        assert_eq!(r.sha256.len(), 64);
    }

    #[test]
    fn every_problem_names_the_file_and_line() {
        let p = Path::new("queries/r1.sql");
        let cases = [
            (
                GOOD.replace("severity: high", "severity: urgent"),
                "r1.sql:3: severity `urgent`",
            ),
            (
                GOOD.replace("*/15 * * * *", "every 15 minutes"),
                "r1.sql:4: schedule: `every 15 minutes` has 3 fields",
            ),
            (
                GOOD.replace("lookback: 1h", "lookback: an hour"),
                "r1.sql:5: lookback",
            ),
            (
                GOOD.replace("-- entity: src_ip, dst_country\n", ""),
                "header key `entity` is missing",
            ),
            (
                GOOD.replace("id: r1", "id: other"),
                "r1.sql:1: id `other` differs from the file name",
            ),
            (
                GOOD.replace("-- title: A rule\n", "-- title: A rule\n-- owner: me\n"),
                "r1.sql:3: unknown header key `owner`",
            ),
            (
                GOOD.replace("SELECT 1 AS src_ip, 'RU' AS dst_country\n", ""),
                "no query",
            ),
        ];
        for (text, want) in cases {
            let e = parse_rule(p, &text).unwrap_err().to_string();
            assert!(e.contains(want), "{e} does not contain {want}");
        }
    }

    #[test]
    fn render_fills_the_window() {
        let r = parse_rule(Path::new("r1.sql"), &GOOD.replace("SELECT 1", "SELECT 1 WHERE date BETWEEN '{{from_date}}' AND '{{to_date}}' AND ts >= {{from}} AND ts < {{to}} --")).unwrap();
        let from = "2026-11-21T00:00:00Z".parse().unwrap();
        let to = "2026-11-22T00:00:00Z".parse().unwrap();
        let sql = render(&r, from, to);
        assert!(
            sql.contains("BETWEEN '2026-11-21' AND '2026-11-22'")
                && sql.contains("ts >= TIMESTAMP '2026-11-21T00:00:00.000000Z'"),
            "{sql}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("0h"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("5w"), None);
        // A fuzz seed (fuzz/regressions/rule_header): the multiplication overflowed.
        assert_eq!(parse_duration("99999999999999999d"), None);
    }

    #[test]
    fn windows_beyond_a_century_are_refused_not_a_panic() {
        // A fuzz seed (fuzz/regressions/rule_header): a lookback or history that `serve` and
        // `render` cannot subtract from a date (chrono panics on overflow) was accepted.
        let p = Path::new("queries/r1.sql");
        let long = GOOD.replace("lookback: 1h", "lookback: 1000000000d");
        let e = parse_rule(p, &long).unwrap_err().to_string();
        assert!(
            e.contains("r1.sql:5: lookback `1000000000d` is longer than"),
            "{e}"
        );
        let long = GOOD.replace("lookback: 1h", "lookback: 1h\n-- history: 1000000000d");
        let e = parse_rule(p, &long).unwrap_err().to_string();
        assert!(
            e.contains("r1.sql:6: history `1000000000d` is longer than"),
            "{e}"
        );
        let ok = GOOD.replace("lookback: 1h", "lookback: 36500d\n-- history: 36500d");
        let r = parse_rule(p, &ok).unwrap();
        let to: chrono::DateTime<chrono::Utc> = "2026-11-21T00:00:00Z".parse().unwrap();
        let from = to - chrono::Duration::from_std(r.lookback).unwrap();
        assert!(render(&r, from, to).contains("SELECT 1"));
    }

    #[test]
    fn settings_are_datafusion_options_checked_at_load() {
        let p = Path::new("queries/r1.sql");
        let with =
            |v: &str| GOOD.replace("lookback: 1h", &format!("lookback: 1h\n-- settings: {v}"));
        let r = parse_rule(
            p,
            &with("datafusion.execution.parquet.pushdown_filters = true, datafusion.execution.batch_size=4096"),
        )
        .unwrap();
        assert_eq!(
            r.settings,
            [
                (
                    "datafusion.execution.parquet.pushdown_filters".to_string(),
                    "true".to_string()
                ),
                (
                    "datafusion.execution.batch_size".to_string(),
                    "4096".to_string()
                ),
            ]
        );
        assert!(parse_rule(p, GOOD).unwrap().settings.is_empty());
        for (v, want) in [
            (
                "pushdown_filters",
                "r1.sql:6: setting `pushdown_filters` is not `key = value`",
            ),
            (
                "threads = 4",
                "r1.sql:6: setting `threads` is not a DataFusion option",
            ),
            (
                "datafusion.execution.no_such_option = 1",
                "r1.sql:6: setting `datafusion.execution.no_such_option = 1`",
            ),
            (
                "datafusion.execution.batch_size = many",
                "r1.sql:6: setting `datafusion.execution.batch_size = many`",
            ),
        ] {
            let e = parse_rule(p, &with(v)).unwrap_err().to_string();
            assert!(e.contains(want), "{e} does not contain {want}");
        }
    }
}
