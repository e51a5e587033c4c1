//! `flowaudit compact`: the small files of closed hours become large ones in one commit that
//! changes no data; every reader (the independent one, SQL, verify) sees the same rows, on a
//! local and on an S3 warehouse; and a compacted file whose rows were changed is caught.
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use flowaudit_ingest::generate::Message;
use flowaudit_ingest::warehouse;

use crate::support::*;

pub(crate) fn event(i: u64) -> Message {
    // 2026-11-21T10:00Z onwards, 3 s apart: two hours and a half.
    let ts_us = 1_795_255_200_000_000 + (i as i64) * 3_000_000;
    let payload = serde_json::json!({
        "event_id": format!("c-{i:06}"), "ts": flowaudit_ingest::decode::fmt_us(ts_us),
        "gateway_id": format!("gw-{}", i % 3), "employee_id": format!("e{}", 1000 + i % 40),
        "employee_country": "DE", "role": "analyst", "data_category": "public", "action": "read",
        "decision": "allow", "session_id": format!("s-{}", i / 5), "records": i % 100, "bytes": i * 10
    });
    Message {
        key: format!("k{}", i % 5),
        payload: if i % 97 == 96 {
            b"{\"event_id\": 1}".to_vec()
        } else {
            serde_json::to_vec(&payload).unwrap()
        },
        ts_us,
    }
}

fn flowaudit(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env("FLOWAUDIT_LOG", "warn")
        .env_remove("FLOWAUDIT_CONFIG");
    c
}

/// Live files per (table, date, hour, topic, partition).
fn layout(s: &Setup) -> BTreeMap<(String, String, String, i32), usize> {
    let mut m = BTreeMap::new();
    for f in warehouse::read_log_blocking(&s.location()).unwrap().files {
        *m.entry((f.table, f.date, f.hour, f.partition)).or_default() += 1;
    }
    m
}

/// Three backlogs, each ingested in files of at most 120 rows: many small files per hour.
fn small_files(s: &Setup) {
    const N: u64 = 2700;
    for part in 0..3 {
        let msgs: Vec<Message> = (part * N / 3..(part + 1) * N / 3).map(event).collect();
        s.produce_gateway(&msgs);
        let mut c = s.ingest();
        c.args(["--until-caught-up", "--max-file-rows", "120"]);
        run_ok(c);
    }
}

fn compaction_keeps_every_row(s: Setup) {
    small_files(&s);
    let wh = s.warehouse_arg();
    let before = s.facts();
    let files_before = layout(&s);
    assert!(
        files_before.values().any(|n| *n > 3),
        "small files to compact: {files_before:?}"
    );

    let (out, _) = run_ok(flowaudit(&[
        "compact",
        "--warehouse",
        &wh,
        "--closed-after",
        "0s",
    ]));
    assert!(out.contains("gateway_events: replaced "), "{out}");
    let after_layout = layout(&s);
    assert_eq!(
        after_layout.keys().collect::<Vec<_>>(),
        files_before.keys().collect::<Vec<_>>(),
        "the same partitions"
    );
    for (k, n) in &after_layout {
        assert_eq!(*n, 1, "one file for {k:?}: {after_layout:?}");
    }

    // The independent reader (the JSON log replayed, removes included) sees the same rows.
    let after = s.facts();
    let ids = |f: &serde_json::Value| -> BTreeSet<String> {
        serde_json::from_value(f["gateway_events"]["event_ids"].clone()).unwrap()
    };
    assert_eq!(ids(&after), ids(&before));
    assert_eq!(
        after["gateway_events"]["rows"],
        before["gateway_events"]["rows"]
    );
    assert_eq!(after["gateway_events"]["provenance_unique"], true);
    assert_eq!(
        after["quarantine"]["by_offset"],
        before["quarantine"]["by_offset"]
    );
    // The positions did not move.
    assert_eq!(after["txns"], before["txns"]);
    // The Python deltalake package reads the compacted tables the same (adds and removes
    // replayed by another reader), with the positions in their transactions.
    let d = deltalake_at(&wh);
    let g = &d["gateway_events"];
    let dl_ids: BTreeSet<String> = serde_json::from_value(g["event_ids"].clone()).unwrap();
    assert_eq!(dl_ids, ids(&before));
    assert_eq!(g["rows"], before["gateway_events"]["rows"]);
    assert_eq!(g["provenance_unique"], true);
    assert_eq!(
        g["files"].as_u64().unwrap() as usize,
        after_layout
            .keys()
            .filter(|k| k.0 == "gateway_events")
            .count()
    );
    for (app, v) in g["txns"].as_object().unwrap() {
        assert_eq!(*v, after["txns"]["gateway_events"][app], "{app}");
    }
    assert_eq!(d["quarantine"]["rows"], before["quarantine"]["rows"]);

    // delta-rs's provider (the SQL shell) reads the compacted snapshot.
    let (csv, _) = run_ok({
        let mut c = flowaudit(&["sql", "--warehouse", &wh, "--format", "csv", "-c"]);
        c.arg("SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM gateway_events")
            .arg("--policy")
            .arg(repo("fixtures/policy"));
        c
    });
    let n = before["gateway_events"]["rows"].as_u64().unwrap();
    assert!(csv.contains(&format!("n,ids\n{n},{n}\n")), "{csv}");

    // verify accepts the compaction and compares the rows with the replaced files'.
    let (v, _) = run_ok(flowaudit(&["verify", "--warehouse", &wh]));
    assert!(v.contains("verified"), "{v}");
    assert!(
        !v.contains("not in the log"),
        "replaced files are not strays: {v}"
    );

    // Nothing left to do.
    let (again, _) = run_ok(flowaudit(&[
        "compact",
        "--warehouse",
        &wh,
        "--closed-after",
        "0s",
    ]));
    assert_eq!(again.matches("nothing to compact").count(), 3, "{again}");

    // vacuum: nothing is old enough yet; a retention below an hour needs saying so.
    let replaced: Vec<String> = warehouse::read_log_blocking(&s.location())
        .unwrap()
        .commits
        .iter()
        .filter_map(|c| c.compaction.clone())
        .flat_map(|k| k.groups)
        .flat_map(|g| g.replaced)
        .map(|r| r.path)
        .collect();
    let (out, _) = run_ok(flowaudit(&["vacuum", "--warehouse", &wh, "--retain", "1h"]));
    assert!(out.contains("deleted 0 files"), "{out}");
    let refused = flowaudit(&["vacuum", "--warehouse", &wh, "--retain", "0s"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("below 1h"));
    // A file no commit added (a stopped writer's upload), and an immediate vacuum.
    let (store, prefix) = s.location().store().unwrap();
    let stray = "gateway_events/date=2026-11-21/hour=10/stray.parquet";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let at = stray.split('/').fold(prefix, |p, x| p.join(x));
    rt.block_on(object_store::ObjectStoreExt::put(
        store.as_ref(),
        &at,
        b"x".to_vec().into(),
    ))
    .unwrap();
    let (out, _) = run_ok(flowaudit(&[
        "vacuum",
        "--warehouse",
        &wh,
        "--retain",
        "0s",
        "--no-retention-check",
    ]));
    assert!(
        out.contains(&format!("deleted {} files", replaced.len() + 1))
            && out.contains(&format!(
                "{} replaced by compactions, 1 never committed",
                replaced.len()
            )),
        "{out}"
    );
    for p in replaced.iter().chain([&stray.to_string()]) {
        assert!(out.contains(&format!("deleted {p}\n")), "{p}: {out}");
    }
    // Every live file and row is still there; verify says what it can no longer compare.
    let vacuumed = s.facts();
    assert_eq!(ids(&vacuumed), ids(&before));
    let (v, _) = run_ok(flowaudit(&["verify", "--warehouse", &wh]));
    assert!(v.contains("checked by their offsets only"), "{v}");
}

#[test]
fn compact_rewrites_small_files_into_one_per_hour_and_partition_keeping_every_row() {
    compaction_keeps_every_row(Setup::new(2));
}

#[test]
fn compact_on_an_s3_warehouse_keeps_every_row() {
    compaction_keeps_every_row(Setup::on_s3(2));
}

/// Open hours are left alone (late data may still come).
#[test]
fn hours_that_have_not_closed_are_not_compacted() {
    let s = Setup::new(1);
    small_files(&s);
    let (out, _) = run_ok(flowaudit(&[
        "compact",
        "--warehouse",
        &s.warehouse_arg(),
        "--closed-after",
        "36500d",
    ]));
    assert_eq!(out.matches("nothing to compact").count(), 3, "{out}");
}

/// The operator compacts, then changes a value in the compacted file and rewrites the log to
/// match: verify names the file while the replaced files are kept; once they are gone (a
/// vacuum) it says the file is checked by its offsets only.
#[test]
fn a_compacted_file_with_a_changed_value_is_caught() {
    use arrow::array::{ArrayRef, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let s = Setup::new(1);
    small_files(&s);
    let wh = s.warehouse();
    run_ok(flowaudit(&[
        "compact",
        "--warehouse",
        wh.to_str().unwrap(),
        "--closed-after",
        "0s",
    ]));
    let log = warehouse::read_log_blocking(&s.location()).unwrap();
    let (commit, group) = log
        .commits
        .iter()
        .filter(|c| c.table == "gateway_events")
        .find_map(|c| Some((c.version, c.compaction.as_ref()?.groups[0].clone())))
        .expect("a compaction of gateway_events");

    // Change one employee id in the compacted file, keep everything else.
    let path = wh.join(&group.added.path);
    let file = std::fs::File::open(&path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let batches: Vec<_> = reader.build().unwrap().map(Result::unwrap).collect();
    let schema = batches[0].schema();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        schema.clone(),
        None,
    )
    .unwrap();
    for (i, b) in batches.iter().enumerate() {
        let idx = schema.index_of("employee_id").unwrap();
        let col: Vec<Option<String>> = b
            .column(idx)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(r, v)| {
                if i == 0 && r == 0 {
                    Some("e-innocent".into())
                } else {
                    v.map(str::to_string)
                }
            })
            .collect();
        let mut cols: Vec<ArrayRef> = b.columns().to_vec();
        cols[idx] = std::sync::Arc::new(StringArray::from(col));
        w.write(&arrow::record_batch::RecordBatch::try_new(schema.clone(), cols).unwrap())
            .unwrap();
    }
    w.close().unwrap();
    let new_sha = flowaudit_ingest::writer::sha256_file(&path).unwrap();
    let commit_file = wh.join(format!("gateway_events/_delta_log/{commit:020}.json"));
    let text = std::fs::read_to_string(&commit_file).unwrap();
    assert!(text.contains(&group.added.sha256));
    let size = std::fs::metadata(&path).unwrap().len();
    let text = text.replace(&group.added.sha256, &new_sha);
    let text = regex_lite_replace_size(&text, &group.added.path, size);
    std::fs::write(&commit_file, text).unwrap();

    let v = flowaudit_analytics::verify::verify(&s.location());
    let all = v.problems.join("\n");
    assert!(
        all.contains(&format!("compacted: {}", group.added.path))
            && all.contains("column employee_id differs"),
        "{all}"
    );

    // The replaced files vacuumed: the change can no longer be seen, and verify says what it
    // could not check.
    for r in &group.replaced {
        std::fs::remove_file(wh.join(&r.path)).unwrap();
    }
    let v = flowaudit_analytics::verify::verify(&s.location());
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert!(
        v.notes
            .iter()
            .any(|n| n.contains("checked by their offsets only")),
        "{:?}",
        v.notes
    );
}

/// Set the `size` of the `add` of `path` (relative to the warehouse) in a commit's text.
fn regex_lite_replace_size(text: &str, path: &str, size: u64) -> String {
    let rel = path.split_once('/').unwrap().1;
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if v["add"]["path"].as_str() == Some(rel) {
                v["add"]["size"] = size.into();
            }
            serde_json::to_string(&v).unwrap()
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// `serve` with `[compact] schedule` compacts at its firing, beside the scheduler.
#[test]
fn serve_compacts_on_its_schedule() {
    let s = Setup::new(1);
    small_files(&s);
    let before = layout(&s);
    assert!(before.values().any(|n| *n > 1), "{before:?}");
    let cfg = s.dir.path().join("flowaudit.toml");
    std::fs::write(
        &cfg,
        "[compact]\nschedule = \"* * * * *\"\nclosed_after = \"0s\"\n",
    )
    .unwrap();
    let mut c = flowaudit(&["--config", cfg.to_str().unwrap(), "serve", "--tick-s", "1"]);
    c.args([
        "--warehouse",
        &s.warehouse_arg(),
        "--rule",
        "unknown_gateway",
    ])
    .arg("--policy")
    .arg(repo("fixtures/policy"))
    .arg("--rules-dir")
    .arg(repo("queries"))
    .env("FLOWAUDIT_LOG", "info");
    let mut server = Running::spawn(c);
    // The first tick records the schedule; the next minute's firing compacts.
    server.wait_for("compacted", std::time::Duration::from_secs(150));
    server.signal(libc::SIGTERM);
    assert!(
        server.wait(std::time::Duration::from_secs(30)).success(),
        "{}",
        server.log()
    );
    let after = layout(&s);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    assert!(after.values().all(|n| *n == 1), "{after:?}");
    let v = flowaudit_analytics::verify::verify(&s.location());
    assert!(v.problems.is_empty(), "{:?}", v.problems);
}

/// A file removed by a commit that is not a compaction is evidence of tampering: vacuum keeps
/// it, however old, and verify reports the removal.
#[test]
fn vacuum_keeps_a_file_removed_outside_a_compaction() {
    let s = Setup::new(1);
    small_files(&s);
    let wh = s.warehouse();
    let log = warehouse::read_log_blocking(&s.location()).unwrap();
    let victim = log
        .files
        .iter()
        .find(|f| f.table == "gateway_events")
        .unwrap()
        .clone();
    let head = log
        .heads
        .iter()
        .find(|h| h.table == "gateway_events")
        .unwrap()
        .version;
    let rel = victim.path.split_once('/').unwrap().1;
    let forged = serde_json::json!({"remove": {"path": rel, "dataChange": true}});
    std::fs::write(
        wh.join(format!("gateway_events/_delta_log/{:020}.json", head + 1)),
        format!("{forged}\n"),
    )
    .unwrap();
    let (out, _) = run_ok(flowaudit(&[
        "vacuum",
        "--warehouse",
        wh.to_str().unwrap(),
        "--retain",
        "0s",
        "--no-retention-check",
    ]));
    assert!(out.contains("deleted 0 files"), "{out}");
    assert!(wh.join(&victim.path).is_file(), "the removed file is kept");
    let v = flowaudit_analytics::verify::verify(&s.location());
    let all = v.problems.join("\n");
    assert!(
        all.contains(&format!(
            "gateway_events version {} removes 1 files",
            head + 1
        )),
        "{all}"
    );
}
