//! The auditor's report for a range of days: `report.json`, CSV files of the findings, egress and
//! coverage, and one self-contained `report.html` (inline CSS, charts as inline SVG, no network
//! fetches). The same inputs give the same bytes: every list is sorted, and the only wall-clock
//! value, `generated_at`, is pinned to the end of the window by `--reproducible`.
//!
//! Every value in the report may come from an event, that is from outside. In the HTML each one
//! is escaped (`&`, `<`, `>`, `"`, `'`), with control and bidirectional characters shown as
//! visible escapes, and class names are chosen from a fixed list. In the CSV files a text cell
//! that a spreadsheet would read as a formula (starting with `=`, `+`, `-`, `@`, tab or carriage
//! return) gets a leading `'`, as OWASP recommends; numbers stay numbers, negative ones included.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use crate::alerts::{load_suppressions, Alert};
use crate::catalog::Catalog;
use crate::runner::batches_to_json;

/// What to report on.
pub struct ReportOptions {
    pub site: crate::site::Site,
    pub policy: PathBuf,
    pub geoip: Option<PathBuf>,
    pub rules_dir: PathBuf,
    /// First and last day (inclusive, UTC).
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub reproducible: bool,
    /// The previous report (its report.json), for "what changed".
    pub previous: Option<PathBuf>,
    /// The auditor's witness: the report names the checkpoints that cover its window.
    pub witness: Option<flowaudit_ingest::warehouse::Location>,
}

/// What changed since the previous report: verdict and counts, and which rule files, policy
/// files and GeoIP database differ.
fn changes(prev: &Value, cur: &Value) -> Value {
    let map_diff = |a: &Value, b: &Value| -> Vec<String> {
        let (a, b) = (
            a.as_object().cloned().unwrap_or_default(),
            b.as_object().cloned().unwrap_or_default(),
        );
        let mut out: Vec<String> = Vec::new();
        for (k, v) in &b {
            match a.get(k) {
                None => out.push(format!("{k} added")),
                Some(x) if x != v => out.push(format!("{k} changed")),
                _ => {}
            }
        }
        for k in a.keys().filter(|k| !b.contains_key(*k)) {
            out.push(format!("{k} removed"));
        }
        out
    };
    let rules = |r: &Value| -> Value {
        Value::Object(
            r["appendix"]["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| (crate::alerts::value_text(&x["id"]), x["sha256"].clone()))
                .collect(),
        )
    };
    json!({
        "previous_window": prev["window"],
        "previous_verdict": prev["summary"]["verdict"],
        "previous_findings_by_severity": prev["summary"]["findings_by_severity"],
        "rules": map_diff(&rules(prev), &rules(cur)),
        "policy_files": map_diff(&prev["appendix"]["policy_files"], &cur["appendix"]["policy_files"]),
        "geoip_changed": prev["appendix"]["geoip"] != cur["appendix"]["geoip"],
    })
}

async fn rows(c: &Catalog, sql: &str) -> Result<Vec<Map<String, Value>>, String> {
    let df = c.ctx.sql(sql).await.map_err(|e| format!("{sql}: {e}"))?;
    batches_to_json(&df.collect().await.map_err(|e| format!("{sql}: {e}"))?)
}

/// Build the report document.
pub async fn build(o: &ReportOptions) -> Result<Value, String> {
    // The catalog and the window's five scans; the rest reads the state directory.
    let progress =
        flowaudit_ingest::progress::bar(6, &format!("report {}..{}", o.from, o.to), "steps");
    let c = Catalog::open_at(&o.site, &o.policy, o.geoip.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    progress.inc(1);
    let (f, t) = (o.from.to_string(), o.to.to_string());
    let window = format!("date BETWEEN '{f}' AND '{t}'");
    let gateways = rows(&c, &format!("SELECT gateway_id AS source, hour, count(*) AS records FROM gateway_events WHERE {window} GROUP BY gateway_id, hour ORDER BY source, hour")).await?;
    progress.inc(1);
    let exporters = rows(&c, &format!("SELECT exporter AS source, hour, count(*) AS records FROM flows WHERE {window} AND exporter IS NOT NULL GROUP BY exporter, hour ORDER BY source, hour")).await?;
    progress.inc(1);
    let quarantine = rows(&c, &format!("SELECT target_table, reason_code, count(*) AS messages FROM quarantine WHERE {window} GROUP BY target_table, reason_code ORDER BY target_table, reason_code")).await?;
    progress.inc(1);
    let egress = rows(&c, &format!(
        "SELECT coalesce(dst_country, 'unknown') AS country, coalesce(basis_for(dst_country, ts), 'none') AS basis, \
         count(*) AS flows, sum(bytes) AS bytes FROM flows WHERE {window} AND src_zone = 'enclave' AND dst_zone = 'external' \
         GROUP BY 1, 2 ORDER BY bytes DESC, country, basis")).await?;
    progress.inc(1);
    let totals = rows(
        &c,
        &format!(
            "SELECT (SELECT count(*) FROM gateway_events WHERE {window}) AS gateway_events, \
                (SELECT count(*) FROM flows WHERE {window}) AS flows, \
                (SELECT count(*) FROM quarantine WHERE {window}) AS quarantined"
        ),
    )
    .await?;
    progress.finish_and_clear();

    // Findings: the alerts whose day is in the window, most severe first.
    // Each alert's latest line: a closed alert is listed apart, with why.
    let mut latest: BTreeMap<String, Alert> = BTreeMap::new();
    for a in read_alerts(o.site.state_dir()?)?
        .into_iter()
        .filter(|a| a.day.as_str() >= f.as_str() && a.day.as_str() <= t.as_str())
    {
        latest.insert(a.fingerprint.clone(), a);
    }
    let (closed, mut findings): (Vec<Alert>, Vec<Alert>) =
        latest.into_values().partition(|a| a.status == "closed");
    let rank = |s: &str| match s {
        "critical" => 0,
        "high" => 1,
        "medium" => 2,
        _ => 3,
    };
    findings.sort_by(|a, b| {
        (rank(&a.severity), &a.rule_id, &a.day, &a.entity_key).cmp(&(
            rank(&b.severity),
            &b.rule_id,
            &b.day,
            &b.entity_key,
        ))
    });
    let mut by_severity: BTreeMap<&str, u64> = BTreeMap::new();
    for a in findings.iter().filter(|a| a.status == "new") {
        *by_severity.entry(a.severity.as_str()).or_default() += 1;
    }
    let verdict = if findings
        .iter()
        .any(|a| a.status == "new" && rank(&a.severity) <= 1)
    {
        "violations found"
    } else if findings.iter().any(|a| a.status == "new") {
        "findings to review"
    } else {
        "no findings"
    };
    let log = flowaudit_ingest::warehouse::read_log(&o.site.tables)
        .await
        .map_err(|e| e.to_string())?;
    let rule_files = crate::rules::load_rules(&o.rules_dir).map_err(|e| e.to_string())?;
    let runs = crate::runner::read_runs(o.site.state_dir()?).map_err(|e| e.to_string())?;
    let day_start = |d: chrono::NaiveDate| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    let evaluation = crate::ledger::statement(
        &runs,
        &rule_files,
        &log,
        day_start(o.from),
        day_start(o.to + chrono::Duration::days(1)),
    );
    let evaluated_all = evaluation["complete"].as_bool().unwrap_or(false);
    // "No findings" means nothing was found in everything: otherwise it says what it covers.
    let verdict = if verdict == "no findings" && !evaluated_all {
        "no findings in what was evaluated; evaluation incomplete"
    } else {
        verdict
    };
    let silent: Vec<&Alert> = findings
        .iter()
        .filter(|a| a.rule_id == "telemetry_silent")
        .collect();
    let gaps: Vec<&Alert> = findings
        .iter()
        .filter(|a| a.rule_id == "flow_sequence_gap")
        .collect();
    let suppressions: Vec<Value> = load_suppressions(&o.policy.join("suppressions.csv"))
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|s| s.expires >= o.from)
        .map(|s| serde_json::to_value(s).expect("json"))
        .collect();
    // Ranges ingest recorded as missing (no longer in Kafka when read) during the window.
    let ingest_gaps: Vec<Value> = log
        .gaps()
        .into_iter()
        .filter(|g| {
            let day = g.recorded_at.get(..10).unwrap_or_default();
            day >= f.as_str() && day <= t.as_str()
        })
        .map(|g| serde_json::to_value(g).expect("json"))
        .collect();
    let files: Vec<Value> = log
        .files
        .iter()
        .filter(|e| e.date.as_str() >= f.as_str() && e.date.as_str() <= t.as_str())
        .map(|e| json!({"path": e.path, "sha256": e.sha256, "rows": e.rows, "table": e.table, "version": e.version}))
        .collect();
    let rules: Vec<Value> = rule_files
        .iter()
        .map(|r| json!({"id": r.id, "severity": r.severity.as_str(), "sha256": r.sha256}))
        .collect();
    let generated_at = if o.reproducible {
        (o.to + chrono::Duration::days(1))
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
    } else {
        Utc::now()
    };
    let alert_json = |a: &Alert| serde_json::to_value(a).expect("json");
    let mut report = json!({
        "schema": "flowaudit.report/1",
        "window": {"from": f, "to": t},
        "generated_at": generated_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "reproducible": o.reproducible,
        "summary": {
            "verdict": verdict,
            "findings_by_severity": by_severity,
            "suppressed": findings.iter().filter(|a| a.status == "suppressed").count(),
            "closed": closed.len(),
            "evaluation_complete": evaluated_all,
            "totals": totals.first().cloned().unwrap_or_default(),
        },
        "coverage": {
            "gateways": gateways,
            "exporters": exporters,
            "silent_periods": silent.iter().map(|a| alert_json(a)).collect::<Vec<_>>(),
            "sequence_gaps": gaps.iter().map(|a| alert_json(a)).collect::<Vec<_>>(),
            "ingest_gaps": ingest_gaps,
            "quarantine": quarantine,
        },
        "egress": egress,
        "findings": findings.iter().map(alert_json).collect::<Vec<_>>(),
        "closed_findings": closed.iter().map(alert_json).collect::<Vec<_>>(),
        "evaluation": evaluation,
        "suppressions": suppressions,
        "appendix": {
            "log_heads": log.heads,
            "files": files,
            "rules": rules,
            "policy_files": c.policy_versions,
            "geoip": c.geoip,
            "flowaudit_version": env!("CARGO_PKG_VERSION"),
        },
    });
    if let Some(w) = &o.witness {
        report["checkpoints"] = crate::checkpoint::report_section(w, &log, f.as_str(), t.as_str())
            .await
            .map_err(|e| e.to_string())?;
    }
    let prev = match &o.previous {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            Some(
                serde_json::from_str::<Value>(&text)
                    .map_err(|e| format!("{}: {e}", p.display()))?,
            )
        }
        None => None,
    };
    report["summary"]["changes"] = prev.map_or(Value::Null, |p| changes(&p, &report));
    Ok(report)
}

fn read_alerts(state: &Path) -> Result<Vec<Alert>, String> {
    let p = state.join("_alerts").join("alerts.jsonl");
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", p.display())),
    };
    text.lines()
        .filter(|l| l.ends_with('}'))
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", p.display(), i + 1))
        })
        .collect()
}

/// One CSV cell: JSON numbers and booleans as they are, text defused against formula injection
/// (a leading `'` when it starts with `=`, `+`, `-`, `@`, tab or CR) with control characters
/// other than newline and tab made visible (`\x1b`), null as an empty cell; quoted when it holds
/// a comma, quote or line break.
fn csv_field(v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::String(raw) => {
            let s = crate::sqlout::neutralise_keeping_layout(raw);
            if raw.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                format!("'{s}")
            } else {
                s.into_owned()
            }
        }
        v => crate::alerts::value_text(v),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn csv(rows: &[Value], cols: &[&str]) -> String {
    let mut out = cols.join(",");
    out.push('\n');
    for r in rows {
        let line: Vec<String> = cols.iter().map(|c| csv_field(&r[*c])).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// Text for HTML, in element content and in quoted attributes alike.
fn esc(s: &str) -> String {
    crate::sqlout::neutralise_keeping_layout(s)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The CSS class of a severity: one of the four the stylesheet knows, whatever the alert says.
fn severity_class(sev: &str) -> &'static str {
    match sev {
        "critical" => "sev-critical",
        "high" => "sev-high",
        "medium" => "sev-medium",
        "low" => "sev-low",
        _ => "sev-other",
    }
}

fn text(v: &Value) -> String {
    esc(&crate::alerts::value_text(v))
}

/// Horizontal bars: (label, value, colour class).
fn bar_chart(title: &str, bars: &[(String, f64, String)]) -> String {
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1.0);
    let h = 22 * bars.len() + 10;
    let mut s = format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"{}\" width=\"640\" height=\"{h}\" viewBox=\"0 0 640 {h}\">",
        esc(title)
    );
    for (i, (label, v, class)) in bars.iter().enumerate() {
        let y = 5 + i * 22;
        let w = (v / max * 420.0).max(1.0);
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{}\" class=\"lbl\">{}</text><rect x=\"150\" y=\"{y}\" width=\"{w:.1}\" height=\"16\" class=\"{class}\"/><text x=\"{:.1}\" y=\"{}\" class=\"val\">{}</text>",
            y + 12,
            esc(label),
            155.0 + w,
            y + 12,
            human_bytes(*v)
        );
    }
    s.push_str("</svg>");
    s
}

/// Records per source and hour as a grid of cells.
fn heatmap(title: &str, rows: &[Value]) -> String {
    let mut by_source: BTreeMap<String, [u64; 24]> = BTreeMap::new();
    for r in rows {
        let src = crate::alerts::value_text(&r["source"]);
        let h: usize = crate::alerts::value_text(&r["hour"]).parse().unwrap_or(0);
        by_source.entry(src).or_insert([0; 24])[h.min(23)] += r["records"].as_u64().unwrap_or(0);
    }
    let max = by_source
        .values()
        .flat_map(|a| a.iter())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let h = 20 * by_source.len() + 24;
    let mut s = format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"{}\" width=\"640\" height=\"{h}\" viewBox=\"0 0 640 {h}\">",
        esc(title)
    );
    for hour in (0..24).step_by(3) {
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" class=\"val\">{hour:02}h</text>",
            150 + hour * 20,
            h - 4
        );
    }
    for (i, (src, hours)) in by_source.iter().enumerate() {
        let y = i * 20;
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{}\" class=\"lbl\">{}</text>",
            y + 14,
            esc(src)
        );
        for (hour, n) in hours.iter().enumerate() {
            let class = if *n == 0 { "cell empty" } else { "cell" };
            let _ = write!(
                s,
                "<rect x=\"{}\" y=\"{y}\" width=\"18\" height=\"18\" class=\"{class}\" fill-opacity=\"{:.2}\"><title>{} {hour:02}h: {n}</title></rect>",
                150 + hour * 20,
                if *n == 0 { 1.0 } else { 0.15 + 0.85 * (*n as f64 / max) },
                esc(src)
            );
        }
    }
    s.push_str("</svg>");
    s
}

fn human_bytes(v: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = v;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

const CSS: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:980px;color:#1b1f24}\
h1{font-size:1.6em}h2{border-bottom:2px solid #d0d7de;padding-bottom:.2em;margin-top:2em}\
table{border-collapse:collapse;width:100%;margin:.5em 0}th,td{border:1px solid #d0d7de;padding:3px 6px;text-align:left;vertical-align:top}\
th{background:#f6f8fa}.verdict{font-size:1.3em;font-weight:600;padding:.4em .8em;display:inline-block;border-radius:4px}\
.bad{background:#ffebe9;color:#a40e26}.warn{background:#fff8c5;color:#7d4e00}.good{background:#dafbe1;color:#116329}\
.sev-critical,.sev-high{color:#a40e26;font-weight:600}.sev-medium{color:#7d4e00}\
.chart .lbl,.chart .val{font-size:11px;fill:#1b1f24}.chart rect.eea{fill:#2da44e}.chart rect.adequacy{fill:#0969da}\
.chart rect.other{fill:#bf8700}.chart rect.none{fill:#cf222e}.chart rect.cell{fill:#0969da}.chart rect.empty{fill:#ffebe9}\
details{margin:.3em 0}code,pre{font-size:12px}pre{background:#f6f8fa;padding:.5em;overflow-x:auto}";

/// Render the HTML report.
pub fn html(r: &Value) -> String {
    let mut h = String::new();
    let w = &r["window"];
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>flowaudit report {} to {}</title><style>{CSS}</style></head><body>",
        text(&w["from"]),
        text(&w["to"])
    );
    let s = &r["summary"];
    let verdict = s["verdict"].as_str().unwrap_or_default();
    let class = match verdict {
        "violations found" => "bad",
        "findings to review" => "warn",
        "no findings" => "good",
        _ => "warn",
    };
    let _ = write!(
        h,
        "<h1>Data-flow audit: {} to {}</h1><p>Generated {} by flowaudit {}.</p>",
        text(&w["from"]),
        text(&w["to"]),
        text(&r["generated_at"]),
        text(&r["appendix"]["flowaudit_version"])
    );
    // 1. Summary
    let _ = write!(
        h,
        "<section id=\"summary\"><h2>Summary</h2><p class=\"verdict {class}\">{}</p><table><tr><th>severity</th><th>findings</th></tr>",
        esc(verdict)
    );
    for sev in ["critical", "high", "medium", "low"] {
        let _ = write!(
            h,
            "<tr><td class=\"sev-{sev}\">{sev}</td><td>{}</td></tr>",
            s["findings_by_severity"][sev].as_u64().unwrap_or(0)
        );
    }
    let t = &s["totals"];
    let _ = write!(
        h,
        "</table><p>{} gateway events and {} flow records examined; {} messages quarantined; {} findings suppressed.</p>",
        text(&t["gateway_events"]),
        text(&t["flows"]),
        text(&t["quarantined"]),
        text(&s["suppressed"])
    );
    let ch = &s["changes"];
    if ch.is_null() {
        h.push_str("<p>No previous report to compare with.</p>");
    } else {
        let _ = write!(
            h,
            "<h3>Since the previous report ({} to {})</h3><ul><li>verdict then: {}</li>",
            text(&ch["previous_window"]["from"]),
            text(&ch["previous_window"]["to"]),
            text(&ch["previous_verdict"])
        );
        for (what, key) in [("rule file", "rules"), ("policy file", "policy_files")] {
            let list: Vec<String> = ch[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| esc(&crate::alerts::value_text(x)))
                .collect();
            let _ = write!(
                h,
                "<li>{what}s: {}</li>",
                if list.is_empty() {
                    "unchanged".to_string()
                } else {
                    list.join(", ")
                }
            );
        }
        let _ = write!(
            h,
            "<li>GeoIP database: {}</li></ul>",
            if ch["geoip_changed"] == true {
                "changed"
            } else {
                "unchanged"
            }
        );
    }
    h.push_str("</section>");
    // 2. Coverage
    let c = &r["coverage"];
    h.push_str("<section id=\"coverage\"><h2>Coverage</h2><h3>Gateway events per hour</h3>");
    h.push_str(&heatmap(
        "gateway events per gateway and hour",
        c["gateways"].as_array().map_or(&[][..], |v| v),
    ));
    h.push_str("<h3>Flow records per exporter and hour</h3>");
    h.push_str(&heatmap(
        "flow records per exporter and hour",
        c["exporters"].as_array().map_or(&[][..], |v| v),
    ));
    h.push_str("<h3>Silent periods and sequence gaps</h3><ul>");
    for a in c["silent_periods"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(c["sequence_gaps"].as_array().into_iter().flatten())
    {
        let _ = write!(h, "<li>{}</li>", text(&a["summary"]));
    }
    for g in c["ingest_gaps"].as_array().into_iter().flatten() {
        let _ = write!(
            h,
            "<li>ingest gap: {}/{} offsets {} to {} were no longer in Kafka when read ({}, recorded {})</li>",
            text(&g["topic"]),
            text(&g["partition"]),
            text(&g["first_offset"]),
            text(&g["last_offset"]),
            text(&g["reason"]),
            text(&g["recorded_at"])
        );
    }
    h.push_str("</ul><h3>Quarantined messages</h3><table><tr><th>table</th><th>reason</th><th>messages</th></tr>");
    for q in c["quarantine"].as_array().into_iter().flatten() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            text(&q["target_table"]),
            text(&q["reason_code"]),
            text(&q["messages"])
        );
    }
    h.push_str("</table></section>");
    // 3. Egress
    h.push_str("<section id=\"egress\"><h2>Cross-border egress</h2>");
    let bars: Vec<(String, f64, String)> = r["egress"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let basis = crate::alerts::value_text(&e["basis"]);
            let class = match basis.as_str() {
                "eea" | "adequacy" | "none" => basis.clone(),
                _ => "other".into(),
            };
            (
                format!("{} ({basis})", crate::alerts::value_text(&e["country"])),
                e["bytes"].as_f64().unwrap_or(0.0),
                class,
            )
        })
        .collect();
    h.push_str(&bar_chart(
        "bytes leaving the enclave by destination country",
        &bars,
    ));
    h.push_str("<table><tr><th>country</th><th>legal basis</th><th>flows</th><th>bytes</th></tr>");
    for e in r["egress"].as_array().into_iter().flatten() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            text(&e["country"]),
            text(&e["basis"]),
            text(&e["flows"]),
            text(&e["bytes"])
        );
    }
    h.push_str("</table></section>");
    // 4. Findings
    // Which rule evaluated what: the coverage ledger's statement.
    h.push_str("<section id=\"evaluation\"><h2>Evaluation coverage</h2><table><tr><th>rule</th><th>complete</th><th>statement</th></tr>");
    for e in r["evaluation"]["rules"].as_array().into_iter().flatten() {
        let complete = e["complete"].as_bool().unwrap_or(false);
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
            text(&e["rule_id"]),
            if complete { "good" } else { "warn" },
            if complete { "yes" } else { "no" },
            text(&e["statement"])
        );
    }
    h.push_str("</table></section>");
    h.push_str("<section id=\"findings\"><h2>Findings</h2>");
    for a in r["findings"].as_array().into_iter().flatten() {
        let sev = crate::alerts::value_text(&a["severity"]);
        let _ = write!(
            h,
            "<article class=\"finding\"><h3><span class=\"{}\">{}</span> {} — {}{}</h3><p>{}</p><p><em>{}</em></p>",
            severity_class(&sev),
            esc(&sev),
            text(&a["rule_id"]),
            text(&a["entity_key"]),
            if a["status"] == "suppressed" { " (suppressed)" } else { "" },
            text(&a["summary"]),
            text(&a["description"])
        );
        let _ = write!(
            h,
            "<details><summary>evidence ({} of {} rows) and the policy that decided it</summary><pre>{}</pre><pre>{}</pre></details></article>",
            a["evidence"].as_array().map_or(0, |v| v.len()),
            text(&a["evidence_total"]),
            esc(&serde_json::to_string_pretty(&a["evidence"]).unwrap_or_default()),
            esc(&serde_json::to_string_pretty(&json!({"decided_by": a["decided_by"], "policy_versions": a["policy_versions"]})).unwrap_or_default())
        );
    }
    h.push_str("</section>");
    // 5. Suppressions
    h.push_str("<section id=\"suppressions\"><h2>Suppressions in force</h2><table><tr><th>rule</th><th>entity</th><th>reason</th><th>who</th><th>expires</th></tr>");
    for s in r["suppressions"].as_array().into_iter().flatten() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            text(&s["rule_id"]),
            text(&s["entity"]),
            text(&s["reason"]),
            text(&s["who"]),
            text(&s["expires"])
        );
    }
    h.push_str("</table></section>");
    // 6. Appendix
    let ap = &r["appendix"];
    let _ = write!(
        h,
        "<section id=\"appendix\"><h2>Appendix: inputs</h2><p>Delta log heads: {}. GeoIP: <code>{}</code>.</p>",
        ap["log_heads"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| format!(
                "{} version {} <code>{}</code>",
                text(&h["table"]),
                text(&h["version"]),
                text(&h["hash"])
            ))
            .collect::<Vec<_>>()
            .join(", "),
        esc(&serde_json::to_string(&ap["geoip"]).unwrap_or_default())
    );
    if let Some(c) = r["checkpoints"].as_object() {
        let _ = write!(
            h,
            "<h3>Checkpoints</h3><p>Witness <code>{}</code>. Written during the window: {}. Latest: {}. Not yet covered by a checkpoint: {}. Signatures and timestamp tokens are checked by <code>flowaudit verify --checkpoints</code> (docs/evidence.md).</p>",
            text(&c["witness"]),
            c["in_window"]
                .as_array()
                .filter(|v| !v.is_empty())
                .map_or("none".to_string(), |v| v
                    .iter()
                    .map(|x| format!("{} ({})", text(&x["seq"]), text(&x["created_at"])))
                    .collect::<Vec<_>>()
                    .join(", ")),
            match &c["latest"] {
                Value::Null => "none".to_string(),
                l => format!(
                    "{} ({}{})",
                    text(&l["seq"]),
                    text(&l["created_at"]),
                    if l["time_stamped"] == true { ", time-stamped" } else { ", no timestamp token yet" }
                ),
            },
            c["not_yet_checkpointed"]
                .as_array()
                .filter(|v| !v.is_empty())
                .map_or("nothing".to_string(), |v| v
                    .iter()
                    .map(|x| format!(
                        "{} versions {} to {}",
                        text(&x["table"]),
                        text(&x["from_version"]),
                        text(&x["to_version"])
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")),
        );
    }
    h.push_str("<h3>Rule files</h3><table><tr><th>rule</th><th>SHA-256</th></tr>");
    for x in ap["rules"].as_array().into_iter().flatten() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td></tr>",
            text(&x["id"]),
            text(&x["sha256"])
        );
    }
    h.push_str("</table><h3>Policy files</h3><table><tr><th>file</th><th>SHA-256</th></tr>");
    for (k, v) in ap["policy_files"].as_object().into_iter().flatten() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td></tr>",
            esc(k),
            text(v)
        );
    }
    h.push_str("</table><h3>Files covered</h3><table><tr><th>seq</th><th>path</th><th>rows</th><th>SHA-256</th></tr>");
    for x in ap["files"].as_array().into_iter().flatten() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            text(&x["seq"]),
            text(&x["path"]),
            text(&x["rows"]),
            text(&x["sha256"])
        );
    }
    h.push_str("</table></section></body></html>\n");
    h
}

/// Write `report.json`, `report.html`, `findings.csv`, `egress.csv`, `coverage.csv` into `out`.
pub fn write(r: &Value, out: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let findings: Vec<Value> = r["findings"].as_array().cloned().unwrap_or_default();
    let egress: Vec<Value> = r["egress"].as_array().cloned().unwrap_or_default();
    let mut coverage: Vec<Value> = Vec::new();
    for (kind, key) in [("gateway", "gateways"), ("exporter", "exporters")] {
        for x in r["coverage"][key].as_array().into_iter().flatten() {
            let mut x = x.clone();
            x["kind"] = json!(kind);
            coverage.push(x);
        }
    }
    let files = [
        (
            "report.json",
            serde_json::to_string_pretty(r).expect("json") + "\n",
        ),
        ("report.html", html(r)),
        (
            "findings.csv",
            csv(
                &findings,
                &[
                    "seq",
                    "fingerprint",
                    "rule_id",
                    "severity",
                    "status",
                    "entity_key",
                    "day",
                    "first_seen",
                    "last_seen",
                    "summary",
                ],
            ),
        ),
        (
            "egress.csv",
            csv(&egress, &["country", "basis", "flows", "bytes"]),
        ),
        (
            "coverage.csv",
            csv(&coverage, &["kind", "source", "hour", "records"]),
        ),
    ];
    let mut written = Vec::new();
    for (name, body) in files {
        let p = out.join(name);
        std::fs::write(&p, body).map_err(|e| format!("{}: {e}", p.display()))?;
        written.push(p);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_that_a_spreadsheet_would_run_are_defused() {
        let cases = [
            (json!("=cmd|' /C calc'!A0"), "'=cmd|' /C calc'!A0"),
            (json!("+1+1"), "'+1+1"),
            (json!("-2+3"), "'-2+3"),
            (json!("@SUM(A1)"), "'@SUM(A1)"),
            (json!("\tx"), "'\tx"),
            (json!("\r=1"), "'\\x0d=1"),
            (json!("=1\u{1b}[2J"), "'=1\\x1b[2J"),
            (json!("=1,2"), "\"'=1,2\""),
            (json!("a=1"), "a=1"),
            (json!(-5), "-5"),
            (json!(-1.5), "-1.5"),
            (json!(12), "12"),
            (json!("null"), "null"),
            (Value::Null, ""),
            (json!("say \"hi\""), "\"say \"\"hi\"\"\""),
        ];
        for (v, want) in cases {
            assert_eq!(csv_field(&v), want, "{v}");
        }
    }

    #[test]
    fn html_escapes_every_value_and_class() {
        let hostile = "'\"><script>alert(1)</script>\u{1b}[2J";
        let r = json!({
            "window": {"from": hostile, "to": "2026-11-21"},
            "summary": {"verdict": hostile, "findings_by_severity": {}, "totals": {}, "changes": null},
            "coverage": {"gateways": [{"source": hostile, "hour": "01", "records": 3}], "exporters": [],
                         "silent_periods": [{"summary": hostile}], "sequence_gaps": [],
                         "ingest_gaps": [{"topic": hostile, "partition": 0, "first_offset": 1, "last_offset": 2, "reason": hostile, "recorded_at": hostile}],
                         "quarantine": [{"target_table": hostile, "reason_code": hostile, "messages": 1}]},
            "egress": [{"country": hostile, "basis": hostile, "flows": 1, "bytes": 10}],
            "findings": [{"severity": "high\" onmouseover=\"alert(1)", "rule_id": hostile,
                          "entity_key": hostile, "status": "new", "summary": hostile,
                          "description": hostile, "evidence": [{"x": hostile}], "evidence_total": 1,
                          "decided_by": {"p": hostile}, "policy_versions": {}}],
            "suppressions": [{"rule_id": hostile, "entity": hostile, "reason": hostile, "who": hostile, "expires": hostile}],
            "appendix": {"log_heads": [{"table": hostile, "version": 1, "hash": hostile}], "geoip": hostile,
                         "rules": [{"id": hostile, "sha256": hostile}], "policy_files": {hostile: hostile},
                         "files": [{"seq": 1, "path": hostile, "rows": 1, "sha256": hostile}],
                         "flowaudit_version": hostile},
            "generated_at": hostile,
        });
        let h = html(&r);
        assert!(!h.contains("<script"), "{h}");
        assert!(!h.contains('\''), "a single quote from the data: {h}");
        assert!(!h.contains("onmouseover=\""), "{h}");
        assert!(!h.contains('\u{1b}'), "{h}");
        assert!(h.contains("class=\"sev-other\""), "{h}");
        assert!(h.contains("&#39;&quot;&gt;&lt;script&gt;"), "{h}");
        // Every double quote in the page belongs to the markup: attribute values are balanced.
        for tag in h.split('<').skip(1) {
            let tag = tag.split('>').next().unwrap_or_default();
            assert_eq!(
                tag.matches('"').count() % 2,
                0,
                "unbalanced quotes in <{tag}>"
            );
        }
    }
}
