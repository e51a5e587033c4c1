//! Issue 15: summaries. `first_seen_destination` reads its 30 days of history from `egress_daily`
//! and `volume_spike` its hours from `allowed_events_hourly`, kept per day in the process and
//! computed again for a day whose files changed. Their rows stay those of the rules as they were
//! over the raw tables (`fixtures/raw_rules/`, run by DuckDB).
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::rules::{canonical, convert_into, flow};
use crate::support::*;

/// DuckDB's rows for the rule `id` over the window: the rule as it was before it read a summary
/// (`fixtures/raw_rules/`), as `duckdb_rules.py` gives them.
fn duckdb_rows(wh: &Path, id: &str, from: &str, to: &str) -> Vec<Value> {
    let rule = repo(&format!("fixtures/raw_rules/{id}.sql"));
    let args: Vec<std::ffi::OsString> = vec![
        wh.into(),
        repo("fixtures/policy").into(),
        from.into(),
        to.into(),
        rule.into(),
    ];
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let out: Value = serde_json::from_slice(&python_script("duckdb_rules.py", &refs)).unwrap();
    out[id]["rows"].as_array().unwrap().clone()
}

/// The catalog over `wh` with the fixtures' policy and GeoIP ranges.
fn open_catalog(rt: &tokio::runtime::Runtime, wh: &Path) -> flowaudit_analytics::catalog::Catalog {
    rt.block_on(flowaudit_analytics::catalog::Catalog::open(
        wh,
        &repo("fixtures/policy"),
        Some(&repo("fixtures/geoip/ranges.csv")),
    ))
    .unwrap()
}

/// `(dimension, value, flows)` of each row, sorted.
fn found(rows: &[Value]) -> Vec<(String, String, i64)> {
    let mut v: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["dimension"].as_str().unwrap().to_string(),
                r["value"].as_str().unwrap().to_string(),
                r["flows"].as_i64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn first_seen_reads_history_from_the_summary_and_a_changed_day_is_computed_again() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    // History: the enclave sends to DE (31.10/16, AS64601) on the 19th and 20th. The 21st: DE
    // again, FR (31.11/16, AS64602) twice, and NL (31.12/16, AS64603) once.
    convert_into(
        &wh,
        "flows",
        "2026-11-19",
        &[flow("2026-11-19T08:00:00Z", "10.20.5.1", "31.10.0.1", 100)],
        true,
    );
    convert_into(
        &wh,
        "flows",
        "2026-11-20",
        &[flow("2026-11-20T23:59:59Z", "10.20.5.1", "31.10.0.2", 100)],
        true,
    );
    let today = [
        flow("2026-11-21T09:00:00Z", "10.20.5.1", "31.10.0.3", 100),
        flow("2026-11-21T10:00:00Z", "10.20.5.1", "31.11.0.1", 200),
        flow("2026-11-21T10:05:00Z", "10.20.5.2", "31.11.0.2", 300),
        flow("2026-11-21T11:00:00Z", "10.20.5.1", "31.12.0.1", 400),
    ];
    convert_into(&wh, "flows", "2026-11-21", &today, true);

    let rules = flowaudit_analytics::rules::load_rules(&repo("queries")).unwrap();
    let rule = rules
        .iter()
        .find(|r| r.id == "first_seen_destination")
        .unwrap();
    let (from, to) = ("2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // One catalog for the whole test, as `serve` keeps one process: the cache is per process.
    let cat = open_catalog(&rt, &wh);
    let url = flowaudit_ingest::warehouse::Location::Local(wh.clone())
        .table_url("flows")
        .unwrap()
        .to_string();
    let computed = || {
        rt.block_on(flowaudit_analytics::summaries::days_computed(
            "egress_daily",
            &url,
        ))
    };
    let ours = || -> Vec<Value> {
        rt.block_on(flowaudit_analytics::runner::query_rows(
            &cat,
            rule,
            from.parse().unwrap(),
            to.parse().unwrap(),
        ))
        .unwrap()
        .into_iter()
        .map(Value::Object)
        .collect()
    };
    let new = |flows_fr: i64| {
        vec![
            ("ASN".to_string(), "64602".to_string(), flows_fr),
            ("ASN".to_string(), "64603".to_string(), 1),
            ("country".to_string(), "FR".to_string(), flows_fr),
            ("country".to_string(), "NL".to_string(), 1),
        ]
    };

    // The first evaluation computes the summary's days it reads (the 20th back to 30 days
    // before: the 19th, the 20th and the 21st up to the window), the second none.
    assert_eq!(computed(), 0);
    let first = ours();
    assert_eq!(found(&first), new(2));
    assert_eq!(computed(), 3);
    assert_eq!(found(&ours()), new(2));
    assert_eq!(computed(), 3, "nothing changed: every day is reused");
    assert_eq!(
        found(&duckdb_rows(&wh, "first_seen_destination", from, to)),
        found(&first),
        "DuckDB, the rule over the raw flows"
    );

    // Late data for the 19th: a flow to FR. FR has history now; only the 19th is computed again.
    convert_into(
        &wh,
        "flows",
        "2026-11-19",
        &[flow("2026-11-19T12:00:00Z", "10.20.5.9", "31.11.9.9", 1)],
        true,
    );
    let after = ours();
    assert_eq!(
        found(&after),
        vec![
            ("ASN".to_string(), "64603".to_string(), 1),
            ("country".to_string(), "NL".to_string(), 1),
        ]
    );
    assert_eq!(computed(), 4, "the changed day, and only it");
    assert_eq!(
        found(&duckdb_rows(&wh, "first_seen_destination", from, to)),
        found(&after)
    );

    // The summary itself is its definition over the flows as they are now.
    let rows = |sql: &str| -> Vec<BTreeMap<String, String>> {
        let batches =
            rt.block_on(async { cat.ctx.sql(sql).await.unwrap().collect().await.unwrap() });
        flowaudit_analytics::runner::batches_to_json(&batches)
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(|(k, v)| (k, v.to_string())).collect())
            .collect()
    };
    let order = "ORDER BY date, dimension, value";
    let summary = flowaudit_analytics::summaries::SUMMARIES[0];
    let definition = rows(&format!("SELECT * FROM ({}) s {order}", summary.sql));
    assert_eq!(
        rows(&format!("SELECT * FROM egress_daily {order}")),
        definition
    );
    // The 19th: DE and FR; the 20th: DE; the 21st: DE, FR and NL; each a country and an ASN.
    assert_eq!(definition.len(), 12, "{definition:?}");
    assert_eq!(computed(), 4);
}

/// An allowed gateway event of `employee` at `ts` to 31.10.0.1 (DE).
fn event(id: &str, ts: &str, employee: &str, action: &str, bytes: u64) -> String {
    serde_json::json!({"event_id": id, "ts": ts, "gateway_id": "gw-fra-1", "employee_id": employee,
        "employee_country": "DE", "role": "analyst", "data_category": "allowable", "action": action,
        "decision": "allow", "approval_ticket": null, "session_id": "s-1", "records": 10,
        "bytes": bytes, "dst_ip": "31.10.0.1"})
    .to_string()
}

/// Rows as sorted maps of canonical values, for comparing two engines' rows.
fn canonical_rows(rows: &[Value]) -> Vec<BTreeMap<String, String>> {
    let mut v: Vec<BTreeMap<String, String>> = rows
        .iter()
        .map(|r| {
            r.as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), canonical(v)))
                .collect()
        })
        .collect();
    v.sort();
    v
}

/// `volume_spike` over a window whose edges cut hours: the hours wholly inside come from the
/// summary, the cut ones from the events, and an event of a cut hour outside the window (which
/// the summary's hour holds) counts nowhere.
#[test]
fn volume_spike_reads_whole_hours_from_the_summary_and_cut_hours_from_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    // The window is [10:30, 12:30) on the 21st; its history starts at 10:30 on the 14th.
    convert_into(
        &wh,
        "gateway_events",
        "2026-11-14",
        &[
            // Before the history: not in e1003's baseline, though its hour is.
            event("a1", "2026-11-14T10:10:00Z", "e1003", "read", 7_000_000),
            event("a2", "2026-11-14T10:50:00Z", "e1003", "read", 1_000_000),
        ],
        true,
    );
    convert_into(
        &wh,
        "gateway_events",
        "2026-11-20",
        &[event(
            "b1",
            "2026-11-20T09:00:00Z",
            "e1001",
            "read",
            1_000_000,
        )],
        true,
    );
    convert_into(
        &wh,
        "gateway_events",
        "2026-11-21",
        &[
            event("c1", "2026-11-21T10:45:00Z", "e1003", "read", 2_000_000_000),
            event(
                "c2",
                "2026-11-21T11:15:00Z",
                "e1002",
                "export",
                2_000_000_000,
            ),
            event("c3", "2026-11-21T12:10:00Z", "e1001", "read", 3_000_000_000),
            // After the window, in the hour it cuts: not in e1001's 12:00.
            event("c4", "2026-11-21T12:40:00Z", "e1001", "read", 5_000_000_000),
        ],
        true,
    );
    let rules = flowaudit_analytics::rules::load_rules(&repo("queries")).unwrap();
    let rule = rules.iter().find(|r| r.id == "volume_spike").unwrap();
    let (from, to) = ("2026-11-21T10:30:00Z", "2026-11-21T12:30:00Z");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cat = open_catalog(&rt, &wh);
    let ours: Vec<Value> = rt
        .block_on(flowaudit_analytics::runner::query_rows(
            &cat,
            rule,
            from.parse().unwrap(),
            to.parse().unwrap(),
        ))
        .unwrap()
        .into_iter()
        .map(Value::Object)
        .collect();
    let got: Vec<(String, String, String, i64, i64, i64)> = ours
        .iter()
        .map(|r| {
            (
                r["scope"].as_str().unwrap().to_string(),
                r["subject"].as_str().unwrap_or("unknown").to_string(),
                r["hour"].as_str().unwrap().to_string(),
                r["bytes"].as_i64().unwrap(),
                r["baseline_bytes"].as_i64().unwrap(),
                r["baseline_hours"].as_i64().unwrap(),
            )
        })
        .collect();
    let row = |scope: &str, subject: &str, hour: &str, bytes: i64, base: i64, hours: i64| {
        let hour = format!("2026-11-21T{hour}:00:00Z");
        (scope.into(), subject.into(), hour, bytes, base, hours)
    };
    let mut want = vec![
        // A whole hour whose baseline is the cut hour at the history's start: 1 MB, not 8.
        row("employee", "e1003", "10", 2_000_000_000, 1_000_000, 1),
        row("employee", "e1002", "11", 2_000_000_000, 0, 0),
        row("destination country", "DE", "11", 2_000_000_000, 0, 0),
        // The cut hour at the window's end: 3 GB, not 8.
        row("employee", "e1001", "12", 3_000_000_000, 1_000_000, 1),
    ];
    let mut got_sorted = got;
    got_sorted.sort();
    want.sort();
    let normalise = |v: Vec<(String, String, String, i64, i64, i64)>| -> Vec<_> {
        v.into_iter()
            .map(|(a, b, h, c, d, e)| {
                let h = chrono::DateTime::parse_from_rfc3339(&h)
                    .unwrap()
                    .timestamp();
                (a, b, h, c, d, e)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(normalise(got_sorted), normalise(want));
    let url = flowaudit_ingest::warehouse::Location::Local(wh.clone())
        .table_url("gateway_events")
        .unwrap()
        .to_string();
    assert_eq!(
        rt.block_on(flowaudit_analytics::summaries::days_computed(
            "allowed_events_hourly",
            &url
        )),
        3,
        "the 14th, the 20th and the 21st"
    );
    // The rule as it was, every event from the table, in DuckDB: the same rows.
    assert_eq!(
        canonical_rows(&duckdb_rows(&wh, "volume_spike", from, to)),
        canonical_rows(&ours)
    );
}

/// The watermarks read each source's newest record per day from `exporter_clocks_daily`: runs
/// over adjacent windows in one process read each day once, a day with new files again, and the
/// newest is the flows' own (a flow after the others, late, moves it).
#[test]
fn watermarks_read_each_days_exporter_clock_once_and_a_changed_day_again() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    for (day, ts) in [
        ("2026-11-19", "2026-11-19T08:00:00Z"),
        ("2026-11-20", "2026-11-20T09:00:00Z"),
        ("2026-11-21", "2026-11-21T07:00:00Z"),
        ("2026-11-22", "2026-11-22T06:00:00Z"),
    ] {
        convert_into(
            &wh,
            "flows",
            day,
            &[flow(ts, "10.20.5.1", "31.10.0.1", 100)],
            true,
        );
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let location = flowaudit_ingest::warehouse::Location::Local(wh.clone());
    let cat = open_catalog(&rt, &wh);
    let url = location.table_url("flows").unwrap().to_string();
    let day = |d: &str| d.parse::<chrono::NaiveDate>().unwrap();
    // The newest flow of exporter 10.20.255.1 (every `flow`'s) the watermarks see over the days.
    let newest = |since: &str, until: &str| {
        rt.block_on(async {
            let log = flowaudit_ingest::warehouse::read_log(&location)
                .await
                .unwrap();
            let marks = flowaudit_ingest::warehouse::read_caught_up(&location)
                .await
                .unwrap();
            let w = flowaudit_analytics::watermark::Watermarks::compute(
                &cat,
                &log,
                &marks,
                day(since),
                day(until),
            )
            .await
            .unwrap();
            w.sources
                .iter()
                .find(|s| s.source == "10.20.255.1")
                .and_then(|s| s.newest)
                .map(|t| t.to_rfc3339())
        })
    };
    let computed = || {
        rt.block_on(flowaudit_analytics::summaries::days_computed(
            "exporter_clocks_daily",
            &url,
        ))
    };
    assert_eq!(
        newest("2026-11-19", "2026-11-21").as_deref(),
        Some("2026-11-21T07:00:00+00:00")
    );
    assert_eq!(computed(), 3);
    assert_eq!(
        newest("2026-11-20", "2026-11-22").as_deref(),
        Some("2026-11-22T06:00:00+00:00"),
        "the next window: one new day"
    );
    assert_eq!(computed(), 4);
    assert_eq!(
        newest("2026-11-19", "2026-11-20").as_deref(),
        Some("2026-11-20T09:00:00+00:00")
    );
    assert_eq!(computed(), 4, "every day reused");
    // Late data for the 20th, later than anything else that day: read again, and the clock moves.
    convert_into(
        &wh,
        "flows",
        "2026-11-20",
        &[flow("2026-11-20T23:00:00Z", "10.20.5.1", "31.10.0.1", 1)],
        true,
    );
    assert_eq!(
        newest("2026-11-19", "2026-11-20").as_deref(),
        Some("2026-11-20T23:00:00+00:00")
    );
    assert_eq!(computed(), 5, "the changed day, and only it");
}
