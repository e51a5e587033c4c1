//! Issue 15: summaries. `first_seen_destination` reads its 30 days of history from `egress_daily`,
//! kept per day in the process and computed again for a day whose files changed; its rows stay
//! those of the same SQL over the raw flows (DuckDB, which reads the summary as a plain view).
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::rules::{convert_into, flow};
use crate::support::*;

/// DuckDB's rows for `rule` over the window, as `duckdb_rules.py` gives them.
fn duckdb_rows(wh: &Path, rule: &Path, from: &str, to: &str) -> Vec<Value> {
    let args: Vec<std::ffi::OsString> = vec![
        wh.into(),
        repo("fixtures/policy").into(),
        from.into(),
        to.into(),
        rule.into(),
    ];
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let out: Value = serde_json::from_slice(&python_script("duckdb_rules.py", &refs)).unwrap();
    out["first_seen_destination"]["rows"]
        .as_array()
        .unwrap()
        .clone()
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
    let cat = rt
        .block_on(flowaudit_analytics::catalog::Catalog::open(
            &wh,
            &repo("fixtures/policy"),
            Some(&repo("fixtures/geoip/ranges.csv")),
        ))
        .unwrap();
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
        found(&duckdb_rows(&wh, &rule.path, from, to)),
        found(&first),
        "DuckDB over the raw flows"
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
        found(&duckdb_rows(&wh, &rule.path, from, to)),
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
