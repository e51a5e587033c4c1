//! `flowaudit verify` over a warehouse ingested by the demo: clean in one line, and each kind of
//! tampering caught with a message naming the file or the commit.
use std::path::Path;
use std::process::Command;

use crate::support::*;

fn verify(wh: &Path) -> (bool, String) {
    let out = Command::new(bin())
        .arg("verify")
        .arg("--warehouse")
        .arg(wh)
        .env_remove("FLOWAUDIT_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The shape of a JSON document with its values masked: one line per key path and type
/// (array elements merged), sorted.
fn json_structure(v: &serde_json::Value) -> String {
    fn walk(v: &serde_json::Value, path: String, out: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                out.insert(format!("{path}: object"));
                for (k, x) in m {
                    // Evidence rows and entities are each rule's own columns.
                    if [
                        "evidence",
                        "entity",
                        "decided_by",
                        "policy_versions",
                        "files",
                        "policy_files",
                    ]
                    .contains(&k.as_str())
                    {
                        out.insert(format!("{path}.{k}: (per rule or input)"));
                        continue;
                    }
                    walk(x, format!("{path}.{k}"), out);
                }
            }
            serde_json::Value::Array(a) => {
                out.insert(format!("{path}: array"));
                for x in a {
                    walk(x, format!("{path}[]"), out);
                }
            }
            serde_json::Value::Null => {}
            serde_json::Value::Bool(_) => {
                out.insert(format!("{path}: bool"));
            }
            serde_json::Value::Number(_) => {
                out.insert(format!("{path}: number"));
            }
            serde_json::Value::String(_) => {
                out.insert(format!("{path}: string"));
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(v, "$".into(), &mut out);
    out.into_iter().collect::<Vec<_>>().join("\n") + "\n"
}

/// The skeleton of the HTML report: sections, headings (finding headings masked) and table
/// headers, in document order; values are not part of it.
fn html_structure(html: &str) -> String {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        rest = &rest[i..];
        let end = rest.find('>').unwrap_or(rest.len() - 1);
        let tag = &rest[1..end];
        let text_end = rest[end + 1..]
            .find('<')
            .map_or(rest.len(), |j| end + 1 + j);
        let text = rest[end + 1..text_end].trim();
        if let Some(id) = tag.strip_prefix("section id=\"") {
            out.push(format!("section {}", id.trim_end_matches('"')));
        } else if tag == "h1" || tag == "h2" || tag == "th" {
            out.push(format!(
                "{tag} {}",
                if tag == "h1" { "<title>" } else { text }
            ));
        } else if tag == "h3" {
            out.push("h3 ".to_string() + if text.is_empty() { "<finding>" } else { text });
        } else if tag.starts_with("svg") {
            out.push("svg".into());
        }
        rest = &rest[end + 1..];
    }
    out.dedup();
    out.join("\n") + "\n"
}

/// Compare with the committed snapshot (`UPDATE_SNAPSHOTS=1` rewrites it).
fn snapshot(name: &str, got: &str) {
    let p = repo("analytics/tests/it/snapshots").join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (write it with UPDATE_SNAPSHOTS=1)", p.display()));
    assert_eq!(
        got,
        want,
        "{name} differs from its snapshot {}",
        p.display()
    );
}

pub(crate) fn demo_warehouse(dir: &Path) -> std::path::PathBuf {
    let mut c = Command::new(bin());
    c.current_dir(repo(""))
        .args(["demo", "--out"])
        .arg(dir)
        .env("FLOWAUDIT_LOG", "warn")
        .env_remove("FLOWAUDIT_CONFIG");
    run_ok(c);
    dir.join("warehouse")
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

/// Replace the `add` of `rel` (a path relative to the warehouse) in every commit file of its
/// table's log with `edit` applied, as someone who can write the log would.
pub(crate) fn rewrite_add(wh: &Path, rel: &str, edit: impl Fn(&mut serde_json::Value)) {
    let (table, in_table) = rel.split_once('/').unwrap();
    let log = wh.join(table).join("_delta_log");
    for e in std::fs::read_dir(&log).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let mut changed = false;
        let lines: Vec<String> = text
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                if v["add"]["path"] == in_table {
                    edit(&mut v["add"]);
                    changed = true;
                }
                serde_json::to_string(&v).unwrap()
            })
            .collect();
        if changed {
            std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        }
    }
}

/// Rewrite a Parquet file without its first row; its new SHA-256, size and rows.
pub(crate) fn drop_first_row(path: &Path) -> (String, u64, u64) {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ArrowWriter;
    let f = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
    let schema = reader.schema().clone();
    let batches: Vec<_> = reader.build().unwrap().map(|b| b.unwrap()).collect();
    let all = arrow::compute::concat_batches(&schema, &batches).unwrap();
    let rest = all.slice(1, all.num_rows() - 1);
    let out = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(out, schema, None).unwrap();
    w.write(&rest).unwrap();
    w.close().unwrap();
    let sha = flowaudit_ingest::writer::sha256_file(path).unwrap();
    (
        sha,
        std::fs::metadata(path).unwrap().len(),
        rest.num_rows() as u64,
    )
}

#[test]
fn a_clean_warehouse_verifies_in_one_line_and_every_tampering_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let wh = demo_warehouse(&dir.path().join("demo"));
    let (ok, out) = verify(&wh);
    assert!(ok, "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let entries = crate::support::log(&wh).files;
    assert!(out.contains(&format!("{} files", entries.len())), "{out}");

    let fresh = |name: &str| {
        let w = dir.path().join(name);
        copy_dir(&wh, &w);
        w
    };
    let gw: Vec<_> = entries
        .iter()
        .filter(|e| e.table == "gateway_events" && e.rows >= 2)
        .collect();
    let first = &gw[0].path;
    let second = &gw[1].path;
    let at =
        |e: &flowaudit_ingest::warehouse::FileEntry| format!("{} version {}", e.table, e.version);

    // One byte of a Parquet file changed.
    let w = fresh("modified");
    let f = w.join(first);
    let mut bytes = std::fs::read(&f).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&f, bytes).unwrap();
    let (ok, out) = verify(&w);
    assert!(!ok);
    assert!(
        out.contains(&format!(
            "modified: {first} (SHA-256 recorded at {}",
            at(gw[0])
        )),
        "{out}"
    );

    // A file deleted.
    let w = fresh("deleted");
    std::fs::remove_file(w.join(second)).unwrap();
    let (ok, out) = verify(&w);
    assert!(!ok);
    assert!(
        out.contains(&format!("deleted: {second} (added at {})", at(gw[1]))),
        "{out}"
    );

    // A file added that no commit lists: no reader sees it, so it is a note, not a problem.
    let w = fresh("added");
    let stray = Path::new(first).parent().unwrap().join("stray.parquet");
    std::fs::copy(w.join(first), w.join(&stray)).unwrap();
    let (ok, out) = verify(&w);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "not in the log (no reader sees it; a stopped writer's leftover or an addition): {}",
            stray.display()
        )),
        "{out}"
    );

    // A commit's recorded row count rewritten.
    let w = fresh("rewritten");
    rewrite_add(&w, first, |a| {
        let n: u64 = a["tags"]["flowaudit.rows"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        a["tags"]["flowaudit.rows"] = serde_json::json!((n + 1).to_string());
    });
    let (ok, out) = verify(&w);
    assert!(!ok);
    assert!(out.contains(&format!("row count: {first} has")), "{out}");

    // A row deleted from a file, and the file's add rewritten to match (as someone who can write
    // both the files and the log would): every hash and count agrees, but the commit consumed
    // more messages than the tables now hold.
    let w = fresh("row-deleted");
    let (sha, size, rows) = drop_first_row(&w.join(first));
    rewrite_add(&w, first, |a| {
        a["size"] = serde_json::json!(size);
        a["tags"]["flowaudit.sha256"] = serde_json::json!(sha);
        a["tags"]["flowaudit.rows"] = serde_json::json!(rows.to_string());
        a["stats"] = serde_json::json!(format!("{{\"numRecords\":{rows}}}"));
    });
    let (ok, out) = verify(&w);
    assert!(!ok, "{out}");
    assert!(out.contains("rows deleted or added"), "{out}");
    assert!(
        !out.contains("modified:") && !out.contains("row count:"),
        "{out}"
    );

    // A commit file removed from the log.
    let w = fresh("commit-removed");
    std::fs::remove_file(w.join("gateway_events/_delta_log/00000000000000000001.json")).unwrap();
    let (ok, out) = verify(&w);
    assert!(!ok);
    assert!(
        out.contains("gateway_events: the log jumps from version 0 to 2"),
        "{out}"
    );

    // Commits appended after the last one (a signed head still matches its prefix):
    let append = |w: &Path, table: &str, lines: &[serde_json::Value]| {
        let log = w.join(table).join("_delta_log");
        let next = std::fs::read_dir(&log)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "json")
            })
            .count();
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(log.join(format!("{next:020}.json")), text).unwrap();
        next
    };
    let meta_of = |w: &Path, table: &str| {
        let log = crate::support::log(w);
        log.commits
            .iter()
            .rev()
            .find(|c| c.table == table && c.meta.is_some())
            .map(|c| (c.meta.clone().unwrap(), c.txns.clone()))
            .unwrap()
    };
    // … one that moves a partition's position far ahead with no flowaudit record of why (ingest
    // would then skip everything below it);
    let w = fresh("txn-forward");
    let (m, txns) = meta_of(&w, "flows");
    let v = append(
        &w,
        "flows",
        &[
            serde_json::json!({"txn": {"appId": txns[0].0, "version": m.covers_last_offset + 1_000_000}}),
        ],
    );
    let (ok, out) = verify(&w);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("flows version {v} has no flowaudit commit info")),
        "{out}"
    );
    // … one that removes a file and adds it again with other content, its range empty and far
    // away (every count still agrees);
    let w = fresh("swap");
    let (mut m, txns) = meta_of(&w, "gateway_events");
    let in_table = first.strip_prefix("gateway_events/").unwrap();
    let add = crate::support::log(&w)
        .files
        .iter()
        .find(|e| e.path == *first)
        .cloned()
        .unwrap();
    m.covers_first_offset = m.covers_last_offset + 1000;
    m.covers_last_offset += 1001;
    m.messages = 0;
    let v = append(
        &w,
        "gateway_events",
        &[
            serde_json::json!({"commitInfo": {"timestamp": 1, "flowaudit": m}}),
            serde_json::json!({"txn": {"appId": txns[0].0, "version": m.covers_last_offset}}),
            serde_json::json!({"remove": {"path": in_table, "dataChange": true}}),
            serde_json::json!({"add": {"path": in_table, "partitionValues": {"date": add.date, "hour": add.hour},
                "size": add.bytes, "modificationTime": 1, "dataChange": true,
                "tags": {"flowaudit.sha256": add.sha256, "flowaudit.rows": add.rows.to_string(),
                         "flowaudit.first_offset": add.first_offset.to_string(),
                         "flowaudit.last_offset": add.last_offset.to_string()}}}),
        ],
    );
    let (ok, out) = verify(&w);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("gateway_events version {v} removes 1 files")),
        "{out}"
    );
    // … one that adds a live path again (new content and evidence without a remove);
    let add_of = |w: &Path, rel: &str| {
        let e = crate::support::log(w)
            .files
            .iter()
            .find(|e| e.path == rel)
            .cloned()
            .unwrap();
        serde_json::json!({"add": {"path": rel.split_once('/').unwrap().1,
            "partitionValues": {"date": e.date, "hour": e.hour}, "size": e.bytes,
            "modificationTime": 1, "dataChange": true,
            "tags": {"flowaudit.sha256": e.sha256, "flowaudit.rows": e.rows.to_string(),
                     "flowaudit.first_offset": e.first_offset.to_string(),
                     "flowaudit.last_offset": e.last_offset.to_string()}}})
    };
    let next_range = |w: &Path, table: &str| {
        let (mut m, txns) = meta_of(w, table);
        m.covers_first_offset = m.covers_last_offset + 1000;
        m.covers_last_offset += 1001;
        m.messages = 0;
        (m, txns)
    };
    let w = fresh("re-add");
    let (m, txns) = next_range(&w, "gateway_events");
    let v = append(
        &w,
        "gateway_events",
        &[
            serde_json::json!({"commitInfo": {"timestamp": 1, "flowaudit": m}}),
            serde_json::json!({"txn": {"appId": txns[0].0, "version": m.covers_last_offset}}),
            add_of(&w, first),
        ],
    );
    let (ok, out) = verify(&w);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "{v:020}.json: adds {} again while it is live",
            first.split_once('/').unwrap().1
        )),
        "{out}"
    );
    // … one whose add points outside its table;
    let w = fresh("outside");
    let (m, txns) = next_range(&w, "gateway_events");
    let mut a = add_of(&w, first);
    a["add"]["path"] = format!("../flows/{}", first.split_once('/').unwrap().1).into();
    append(
        &w,
        "gateway_events",
        &[
            serde_json::json!({"commitInfo": {"timestamp": 1, "flowaudit": m}}),
            serde_json::json!({"txn": {"appId": txns[0].0, "version": m.covers_last_offset}}),
            a,
        ],
    );
    let (ok, out) = verify(&w);
    assert!(!ok, "{out}");
    assert!(out.contains("the path leaves the table"), "{out}");
    // … one that changes the schema after version 0;
    let w = fresh("schema");
    let (m, txns) = next_range(&w, "flows");
    let v = append(
        &w,
        "flows",
        &[
            serde_json::json!({"commitInfo": {"timestamp": 1, "flowaudit": m}}),
            serde_json::json!({"txn": {"appId": txns[0].0, "version": m.covers_last_offset}}),
            serde_json::json!({"metaData": {"id": "x", "format": {"provider": "parquet", "options": {}},
                "schemaString": "{\"type\":\"struct\",\"fields\":[]}", "partitionColumns": [],
                "configuration": {}}}),
        ],
    );
    let (ok, out) = verify(&w);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "{v:020}.json line 3: changes the table's schema or protocol"
        )),
        "{out}"
    );
    // … one that records a range of one partition but moves another's position;
    let w = fresh("txn-other");
    let (m, _) = next_range(&w, "flows");
    let v = append(
        &w,
        "flows",
        &[
            serde_json::json!({"commitInfo": {"timestamp": 1, "flowaudit": m}}),
            serde_json::json!({"txn": {"appId": "flowaudit:flows:network.flows:99", "version": m.covers_last_offset}}),
        ],
    );
    let (ok, out) = verify(&w);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("flows version {v} sets the positions")),
        "{out}"
    );
    // … a "compaction" that removes a file and adds nothing in its place (its rows vanish);
    let w = fresh("fake-compaction");
    let in_table = second.split_once('/').unwrap().1;
    let e = crate::support::log(&w)
        .files
        .iter()
        .find(|e| e.path == *second)
        .cloned()
        .unwrap();
    let v = append(
        &w,
        "gateway_events",
        &[
            serde_json::json!({"commitInfo": {"timestamp": 1, "flowaudit_compaction": {
                "writer": "w", "commit_id": "c", "groups": [{"topic": e.topic, "partition": e.partition,
                "added": {"path": "gateway_events/date=2026-11-21/hour=00/merged.parquet", "sha256": "00", "rows": e.rows},
                "replaced": [{"path": second, "sha256": e.sha256, "rows": e.rows}]}]}}}),
            serde_json::json!({"remove": {"path": in_table, "dataChange": false}}),
        ],
    );
    let (ok, out) = verify(&w);
    assert!(!ok, "{out}");
    assert!(
        out.contains("the compaction names gateway_events/date=2026-11-21/hour=00/merged.parquet but does not add it")
            && out.contains(&format!("gateway_events version {v} is a compaction of 1 files into 1 that adds 0 and removes 1")),
        "{out}"
    );
    assert!(out.contains("rows deleted or added"), "{out}");
    // … and a checkpoint, which delta-rs readers would trust over the commits.
    let w = fresh("checkpoint");
    std::fs::write(
        w.join("flows/_delta_log/_last_checkpoint"),
        b"{\"version\":1,\"size\":1}",
    )
    .unwrap();
    let (ok, out) = verify(&w);
    assert!(!ok, "{out}");
    assert!(out.contains("_last_checkpoint: not a commit file"), "{out}");
}

#[test]
fn the_report_is_self_contained_complete_and_byte_identical_when_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let wh = demo_warehouse(&dir.path().join("demo"));
    let report = |out: &Path| {
        let mut c = Command::new(bin());
        c.args(["report", "--date", "2026-11-21", "--reproducible", "--out"])
            .arg(out)
            .arg("--warehouse")
            .arg(&wh)
            .arg("--policy")
            .arg(repo("fixtures/policy"))
            .arg("--geoip")
            .arg(repo("fixtures/geoip/ranges.csv"))
            .arg("--rules-dir")
            .arg(repo("queries"))
            .env_remove("FLOWAUDIT_CONFIG");
        run_ok(c)
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    report(&a);
    report(&b);
    for f in [
        "report.json",
        "report.html",
        "findings.csv",
        "egress.csv",
        "coverage.csv",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs between two runs"
        );
    }
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("report.json")).unwrap()).unwrap();
    let alerts = std::fs::read_to_string(dir.path().join("demo/alerts.jsonl")).unwrap();
    assert_eq!(
        r["findings"].as_array().unwrap().len(),
        alerts.lines().count()
    );
    assert_eq!(r["summary"]["verdict"], "violations found");
    assert_eq!(r["generated_at"], "2026-11-22T00:00:00Z");
    assert_eq!(r["summary"]["totals"]["quarantined"], 24);
    let log = crate::support::log(&wh);
    assert_eq!(
        r["appendix"]["files"].as_array().unwrap().len(),
        log.files.len()
    );
    assert_eq!(
        r["appendix"]["log_heads"],
        serde_json::to_value(&log.heads).unwrap()
    );
    assert_eq!(r["appendix"]["rules"].as_array().unwrap().len(), 13);
    assert!(r["egress"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["country"] == "RU" && e["basis"] == "none"));
    assert_eq!(r["coverage"]["silent_periods"].as_array().unwrap().len(), 1);
    let html = std::fs::read_to_string(a.join("report.html")).unwrap();
    let order = [
        "id=\"summary\"",
        "id=\"coverage\"",
        "id=\"egress\"",
        "id=\"findings\"",
        "id=\"suppressions\"",
        "id=\"appendix\"",
    ];
    let pos: Vec<usize> = order
        .iter()
        .map(|s| html.find(s).unwrap_or_else(|| panic!("{s} missing")))
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "sections out of order");
    assert!(html.matches("<svg").count() >= 3, "charts are inline SVG");
    for external in ["http://", "https://", "<script", "<link", "<img"] {
        assert!(
            !html.contains(external),
            "the report must not fetch anything: found {external}"
        );
    }
    let csv = std::fs::read_to_string(a.join("findings.csv")).unwrap();
    assert_eq!(csv.lines().count(), alerts.lines().count() + 1);
    assert!(r["summary"]["changes"].is_null());
    snapshot("report.json.structure", &json_structure(&r));
    snapshot("report.html.structure", &html_structure(&html));

    // The next report, after the auditor edited a policy file, says what changed since.
    let policy = dir.path().join("policy");
    copy_dir(&repo("fixtures/policy"), &policy);
    std::fs::write(
        policy.join("suppressions.csv"),
        "rule_id,entity,reason,who,expires\nrepeated_denials,*,noise,auditor,2026-12-31\n",
    )
    .unwrap();
    let c_dir = dir.path().join("c");
    let mut c = Command::new(bin());
    c.args(["report", "--date", "2026-11-21", "--reproducible", "--out"])
        .arg(&c_dir)
        .arg("--warehouse")
        .arg(&wh)
        .arg("--policy")
        .arg(&policy)
        .arg("--rules-dir")
        .arg(repo("queries"))
        .arg("--previous")
        .arg(a.join("report.json"))
        .env_remove("FLOWAUDIT_CONFIG");
    run_ok(c);
    let r2: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c_dir.join("report.json")).unwrap()).unwrap();
    let ch = &r2["summary"]["changes"];
    assert_eq!(
        ch["policy_files"],
        serde_json::json!(["suppressions.csv changed"]),
        "{ch}"
    );
    assert_eq!(ch["rules"], serde_json::json!([]));
    assert_eq!(ch["previous_verdict"], "violations found");
    assert_eq!(r2["suppressions"].as_array().unwrap().len(), 1);
    let html = std::fs::read_to_string(c_dir.join("report.html")).unwrap();
    assert!(
        html.contains("policy files: suppressions.csv changed"),
        "since-previous list"
    );
}

#[test]
fn a_signed_report_verifies_and_edits_or_the_wrong_key_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let wh = demo_warehouse(&dir.path().join("demo"));
    // The auditor's key, made the way docs/operations.md says.
    let key = dir.path().join("auditor.pem");
    let public = dir.path().join("auditor.pub.pem");
    let other = dir.path().join("other.pem");
    let other_pub = dir.path().join("other.pub.pem");
    for (k, p) in [(&key, &public), (&other, &other_pub)] {
        let mut c = Command::new("openssl");
        c.args(["genpkey", "-algorithm", "ed25519", "-out"]).arg(k);
        run_ok(c);
        let mut c = Command::new("openssl");
        c.args(["pkey", "-pubout", "-in"]).arg(k).arg("-out").arg(p);
        run_ok(c);
    }
    let out = dir.path().join("report");
    let mut c = Command::new(bin());
    c.args(["report", "--date", "2026-11-21", "--out"])
        .arg(&out)
        .arg("--warehouse")
        .arg(&wh)
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .arg("--rules-dir")
        .arg(repo("queries"))
        .arg("--sign-key")
        .arg(&key)
        .env_remove("FLOWAUDIT_CONFIG");
    run_ok(c);
    // A regulator with openssl alone: the signature over the statement's exact bytes, and each
    // report file's SHA-256 as the statement records it.
    let openssl_verify = |key: &Path| {
        let mut c = Command::new("openssl");
        c.current_dir(&out)
            .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
            .arg(key)
            .args(["-rawin", "-in", "report.statement.json"])
            .args(["-sigfile", "report.sig"]);
        c.output().unwrap()
    };
    let ok = openssl_verify(&public);
    assert!(
        ok.status.success()
            && String::from_utf8_lossy(&ok.stdout).contains("Signature Verified Successfully")
    );
    let statement: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.statement.json")).unwrap()).unwrap();
    let mut c = Command::new("openssl");
    c.current_dir(&out)
        .args(["dgst", "-sha256", "-r", "report.html"]);
    let (digest, _) = run_ok(c);
    assert_eq!(
        digest.split_whitespace().next(),
        statement["files"]["report.html"].as_str()
    );
    assert!(!openssl_verify(&other_pub).status.success());
    let check = |report: &Path, key: &Path| {
        let out = Command::new(bin())
            .arg("verify")
            .arg("--warehouse")
            .arg(&wh)
            .arg("--report")
            .arg(report)
            .arg("--public-key")
            .arg(key)
            .env_remove("FLOWAUDIT_CONFIG")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = check(&out, &public);
    assert!(ok, "{text}");
    assert!(text.contains("report signature valid"), "{text}");

    let (ok, text) = check(&out.join("report.json"), &other_pub);
    assert!(!ok);
    assert!(text.contains("does not match this public key"), "{text}");

    let csv = out.join("findings.csv");
    let mut body = std::fs::read_to_string(&csv).unwrap();
    body.push_str("forged,line\n");
    std::fs::write(&csv, body).unwrap();
    let (ok, text) = check(&out, &public);
    assert!(!ok);
    assert!(
        text.contains("findings.csv: modified after signing"),
        "{text}"
    );

    // Editing the signed statement itself (e.g. to match the forged file) breaks the signature.
    let sig = out.join("report.sig.json");
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&sig).unwrap()).unwrap();
    doc["statement"]["files"]["findings.csv"] =
        serde_json::json!(flowaudit_ingest::writer::sha256_file(&csv).unwrap());
    std::fs::write(&sig, serde_json::to_vec(&doc).unwrap()).unwrap();
    let (ok, text) = check(&out, &public);
    assert!(!ok);
    assert!(
        text.contains("does not match this public key and statement"),
        "{text}"
    );

    // A forger's small-order key, whose one "signature" fits any statement, vouches for nothing.
    let weak = forge_with_a_weak_key(&out, dir.path());
    let (ok, text) = check(&out, &weak);
    assert!(!ok, "a weak key's universal signature was accepted: {text}");
    assert!(text.contains("weak public key"), "{text}");
}

#[test]
fn serve_writes_the_nightly_reports_it_missed_each_compared_with_the_day_before() {
    use chrono::Timelike;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    std::fs::create_dir_all(wh.join("_runs")).unwrap();
    let now = chrono::Utc::now();
    let fire = now - chrono::Duration::minutes(10);
    let schedule = format!("{} {} * * *", fire.minute(), fire.hour());
    // Down for 25 hours: yesterday's and today's firings are due.
    let last = now - chrono::Duration::hours(25);
    std::fs::write(
        wh.join("_runs/schedule.json"),
        serde_json::json!({"nightly-report": last.to_rfc3339()}).to_string(),
    )
    .unwrap();
    let reports = dir.path().join("reports");
    let mut c = Command::new(bin());
    c.args(["serve", "--tick-s", "1", "--rule", "unknown_employee"])
        .args(["--report-schedule", &schedule])
        .arg("--report-out")
        .arg(&reports)
        .arg("--warehouse")
        .arg(&wh)
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .arg("--rules-dir")
        .arg(repo("queries"))
        .env("FLOWAUDIT_LOG", "info")
        .env_remove("FLOWAUDIT_CONFIG")
        .env_remove("FLOWAUDIT_BROKERS");
    let mut p = Running::spawn(c);
    let day2 = fire.date_naive() - chrono::Duration::days(1);
    let day1 = day2 - chrono::Duration::days(1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !reports.join(day2.to_string()).join("report.json").is_file() {
        assert!(std::time::Instant::now() < deadline, "{}", p.log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    p.signal(libc::SIGTERM);
    assert!(
        p.wait(std::time::Duration::from_secs(30)).success(),
        "{}",
        p.log()
    );
    assert!(
        reports.join(day1.to_string()).join("report.html").is_file(),
        "{}",
        p.log()
    );
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(reports.join(day2.to_string()).join("report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(r["window"]["from"], day2.to_string());
    assert_eq!(
        r["summary"]["changes"]["previous_window"]["from"],
        day1.to_string(),
        "compared with the day before"
    );
}

#[test]
fn the_demo_report_renders_in_headless_chromium_with_its_sections_and_charts() {
    let dir = tempfile::tempdir().unwrap();
    demo_warehouse(&dir.path().join("demo"));
    let html = dir.path().join("demo/report/report.html");
    let url = format!("file://{}", html.display());
    let chromium = |args: &[&str]| {
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args(["--enable-logging=stderr", "--v=0"])
            .args(args)
            .arg(&url)
            .output()
            .expect("chromium (Debian package `chromium`; `make test` installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (dom, log) = chromium(&["--dump-dom"]);
    for id in [
        "summary",
        "coverage",
        "egress",
        "findings",
        "suppressions",
        "appendix",
    ] {
        assert!(
            dom.contains(&format!("<section id=\"{id}\">")),
            "section {id} not rendered"
        );
    }
    assert!(dom.matches("<svg").count() >= 3, "charts not rendered");
    assert!(dom.contains("violations found"));
    for bad in ["Uncaught", "CONSOLE(", "Failed to load resource"] {
        assert!(!log.contains(bad), "the page logged an error: {log}");
    }
    let shot = dir.path().join("report.png");
    chromium(&[
        "--window-size=1100,2200",
        &format!("--screenshot={}", shot.display()),
    ]);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a blank screenshot"
    );
}

/// A minimal CSV reader (quoted fields, `""` for a quote) for checking report cells.
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut cell) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => row.push(std::mem::take(&mut cell)),
            '\n' if !quoted => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            c => cell.push(c),
        }
    }
    rows
}

/// Issue 10, item 9: event values carrying terminal escapes, a spreadsheet formula and HTML go
/// through ingest into a finding, and reach no terminal, spreadsheet cell or HTML page raw.
#[test]
fn hostile_event_values_reach_no_terminal_spreadsheet_or_page_raw() {
    let hostile = "=cmd|' /C calc'!A0\u{1b}]0;owned\u{7}\u{1b}[2J\r'\"><script>alert(1)</script>";
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let date = "2026-11-21";
    let event = serde_json::json!({"event_id": "hostile-1", "ts": "2026-11-21T10:00:00Z",
        "gateway_id": "gw-fra-1", "employee_id": hostile, "employee_country": "DE", "role": hostile,
        "data_category": "public", "action": "read", "decision": "allow", "approval_ticket": null,
        "session_id": hostile, "records": 5, "bytes": 500, "dst_ip": "31.10.0.1"});
    crate::rules::convert_into(&wh, "gateway_events", date, &[event.to_string()], true);

    // `rules run` prints each new alert's summary: the unknown employee's starts with the value.
    let out = crate::rules::rules_run_day(&wh, date, true)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("=cmd|"), "{stdout}");
    for b in [0x1b, 0x07, b'\r'] {
        assert!(
            !out.stdout.contains(&b),
            "rules run printed byte {b:#x}: {stdout:?}"
        );
    }

    // The shell, in every text format.
    let query = "SELECT employee_id, role, session_id FROM gateway_events";
    for format in ["table", "csv", "json", "ndjson"] {
        let out = Command::new(bin())
            .args(["sql", "--format", format, "-c", query])
            .arg("--warehouse")
            .arg(&wh)
            .arg("--policy")
            .arg(repo("fixtures/policy"))
            .env("FLOWAUDIT_LOG", "warn")
            .env_remove("FLOWAUDIT_CONFIG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for b in [0x1b, 0x07, b'\r'] {
            assert!(
                !out.stdout.contains(&b),
                "{format} printed byte {b:#x}: {text:?}"
            );
        }
        assert!(text.contains("owned"), "{format}: {text}");
        if format == "json" {
            // JSON's escapes lose nothing: the value read back is the value stored.
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v[0]["employee_id"], hostile);
        }
    }

    // An error that quotes a value (a failed cast) reaches the terminal inert too.
    let out = Command::new(bin())
        .args([
            "sql",
            "-c",
            "SELECT CAST(employee_id AS INT) FROM gateway_events",
        ])
        .arg("--warehouse")
        .arg(&wh)
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .env("FLOWAUDIT_LOG", "warn")
        .env_remove("FLOWAUDIT_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("owned"), "the error quotes the value: {err}");
    for b in [0x1b, 0x07, b'\r'] {
        assert!(
            !out.stderr.contains(&b),
            "the error printed byte {b:#x}: {err:?}"
        );
    }

    // The report: CSV cells defused, HTML escaped.
    let rep = dir.path().join("report");
    let mut c = Command::new(bin());
    c.args(["report", "--date", date, "--out"])
        .arg(&rep)
        .arg("--warehouse")
        .arg(&wh)
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .arg("--rules-dir")
        .arg(repo("queries"))
        .env_remove("FLOWAUDIT_CONFIG");
    run_ok(c);
    let rows = csv_rows(&std::fs::read_to_string(rep.join("findings.csv")).unwrap());
    let col = |name: &str| rows[0].iter().position(|c| c == name).unwrap();
    let (rule, summary) = (col("rule_id"), col("summary"));
    let row = rows
        .iter()
        .find(|r| r[rule] == "unknown_employee")
        .expect("the unknown employee's finding");
    assert!(
        row[summary].starts_with("'=cmd|"),
        "the summary cell: {:?}",
        row[summary]
    );
    for r in &rows {
        for cell in r {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "a cell a spreadsheet would run: {cell:?}"
            );
        }
    }
    let html = std::fs::read_to_string(rep.join("report.html")).unwrap();
    assert!(
        !html.contains("<script"),
        "a script from the data in the page"
    );
    assert!(
        !html.contains('\''),
        "a single quote from the data in the page"
    );
    assert!(!html.contains('\u{1b}'), "ESC from the data in the page");
    assert!(
        html.contains("&#39;&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"),
        "the value is shown, escaped"
    );
}

/// The identity point (a key of small order) with `R` = identity and `S` = 0 "signs" every
/// statement under plain `verify`; `flowaudit verify` checks with `verify_strict` and refuses it.
fn forge_with_a_weak_key(report: &Path, dir: &Path) -> std::path::PathBuf {
    use base64::Engine;
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let sig = report.join("report.sig.json");
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&sig).unwrap()).unwrap();
    let files = doc["statement"]["files"].clone();
    for name in files.as_object().unwrap().keys() {
        doc["statement"]["files"][name] =
            serde_json::json!(flowaudit_ingest::writer::sha256_file(&report.join(name)).unwrap());
    }
    doc["public_key"] = serde_json::json!(hex::encode(identity));
    doc["signature"] = serde_json::json!(hex::encode([identity.to_vec(), vec![0u8; 32]].concat()));
    std::fs::write(&sig, serde_json::to_vec(&doc).unwrap()).unwrap();
    let mut der = hex::decode("302a300506032b6570032100").unwrap();
    der.extend_from_slice(&identity);
    let pem = dir.join("weak.pub.pem");
    std::fs::write(
        &pem,
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        ),
    )
    .unwrap();
    pem
}

/// Rewrite the Parquet file at `path` with `edit` applied to its rows (as one batch); its new
/// SHA-256 and size.
fn edit_parquet(
    path: &Path,
    edit: impl Fn(arrow::record_batch::RecordBatch) -> arrow::record_batch::RecordBatch,
) -> (String, u64) {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ArrowWriter;
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    let schema = reader.schema().clone();
    let batches: Vec<_> = reader.build().unwrap().map(|b| b.unwrap()).collect();
    let all = edit(arrow::compute::concat_batches(&schema, &batches).unwrap());
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&all).unwrap();
    w.close().unwrap();
    (
        flowaudit_ingest::writer::sha256_file(path).unwrap(),
        std::fs::metadata(path).unwrap().len(),
    )
}

/// The string column `name` of `b` with row `row` set to `value`.
fn set_cell(
    b: &arrow::record_batch::RecordBatch,
    name: &str,
    row: usize,
    value: &str,
) -> arrow::record_batch::RecordBatch {
    use arrow::array::{Array, StringArray};
    let i = b.schema().index_of(name).unwrap();
    let col = b.column(i).as_any().downcast_ref::<StringArray>().unwrap();
    let new: StringArray = (0..col.len())
        .map(|r| {
            Some(if r == row {
                value.to_string()
            } else {
                col.value(r).to_string()
            })
        })
        .collect();
    let mut cols = b.columns().to_vec();
    cols[i] = std::sync::Arc::new(new);
    arrow::record_batch::RecordBatch::try_new(b.schema(), cols).unwrap()
}

/// Verify `w` and expect it to fail with output that `named` accepts.
fn caught(w: &Path, named: impl Fn(&str) -> bool) {
    let (ok, out) = verify(w);
    assert!(!ok && named(&out), "{out}");
}

/// The `alerts` table is the analysts' copy of the outbox: verify checks it row by row against
/// the outbox, and names an alert edited, dropped or forged in it even when the table's log was
/// rewritten around the change.
#[test]
fn the_alerts_table_is_checked_row_by_row_against_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let wh = demo_warehouse(&dir.path().join("demo"));
    let outbox = std::fs::read_to_string(wh.join("_alerts/alerts.jsonl")).unwrap();
    let n = outbox.lines().count();
    let store = std::fs::read_to_string(wh.join("_alerts/store_id")).unwrap();
    let store = store.trim();
    let (ok, out) = verify(&wh);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "alerts table: {n} alert(s) of store {store} match its outbox"
        )),
        "{out}"
    );
    let files: Vec<String> = std::fs::read_dir(wh.join("alerts"))
        .unwrap()
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("date="))
        .flat_map(|d| {
            let date = d.file_name().to_string_lossy().into_owned();
            std::fs::read_dir(d.path())
                .unwrap()
                .flatten()
                .map(move |f| format!("alerts/{date}/{}", f.file_name().to_string_lossy()))
        })
        .filter(|p| p.ends_with(".parquet"))
        .collect();
    assert!(!files.is_empty());
    let rel = &files[0];
    let fresh = |name: &str| {
        let w = dir.path().join(name);
        copy_dir(&wh, &w);
        w
    };
    let first_seq = |w: &Path| -> i64 {
        use arrow::array::Int64Array;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let f = std::fs::File::open(w.join(rel)).unwrap();
        let b = ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        b.column_by_name("seq")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    };

    // An alert closed in the table (status and its JSON), the log rewritten around the file.
    let w = fresh("status");
    let seq = first_seq(&w);
    let (sha, size) = edit_parquet(&w.join(rel), |b| {
        use arrow::array::{Array, StringArray};
        let alert = b
            .column_by_name("alert")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(0)
            .replace("\"status\":\"new\"", "\"status\":\"closed\"");
        set_cell(&set_cell(&b, "status", 0, "closed"), "alert", 0, &alert)
    });
    rewrite_add(&w, rel, |add| {
        add["size"] = size.into();
        add["tags"]["flowaudit.sha256"] = sha.clone().into();
    });
    caught(&w, |out| {
        out.contains(&format!("alerts table: alert {seq} ("))
            && out.contains("differs from the outbox in column status")
    });

    // An alert dropped from the table, the log rewritten (hash, size, rows).
    let w = fresh("dropped");
    let seq = first_seq(&w);
    let (sha, size, rows) = drop_first_row(&w.join(rel));
    rewrite_add(&w, rel, |add| {
        add["size"] = size.into();
        add["tags"]["flowaudit.sha256"] = sha.clone().into();
        add["tags"]["flowaudit.rows"] = rows.to_string().into();
    });
    caught(&w, |out| {
        out.contains(&format!("alerts table: 1 alert(s) of store {store} that its txn says it holds are not in it (first: {seq}, "))
    });

    // A forged alert: a row whose seq the outbox does not hold.
    let w = fresh("forged");
    let forged = (n + 1).to_string();
    let (sha, size) = edit_parquet(&w.join(rel), |b| {
        use arrow::array::{Array, Int64Array};
        let i = b.schema().index_of("seq").unwrap();
        let seqs = b.column(i).as_any().downcast_ref::<Int64Array>().unwrap();
        let new: Int64Array = (0..seqs.len())
            .map(|r| {
                Some(if r == 0 {
                    (n + 1) as i64
                } else {
                    seqs.value(r)
                })
            })
            .collect();
        let mut cols = b.columns().to_vec();
        cols[i] = std::sync::Arc::new(new);
        arrow::record_batch::RecordBatch::try_new(b.schema(), cols).unwrap()
    });
    rewrite_add(&w, rel, |add| {
        add["size"] = size.into();
        add["tags"]["flowaudit.sha256"] = sha.clone().into();
    });
    caught(&w, |out| {
        out.contains(&format!(
            "holds alert {forged}, which the outbox of store {store} does not hold (it has {n})"
        ))
    });

    // Rows under another store's name (another state directory, or a forger): not checkable
    // here, so they are named by store, not passed over in silence.
    let w = fresh("other-store");
    let (dir, name) = rel.rsplit_once('/').unwrap();
    let other = format!(
        "{dir}/{}",
        name.replacen(&format!("alerts-{store}-"), "alerts-00000000000000aa-", 1)
    );
    std::fs::copy(w.join(rel), w.join(&other)).unwrap();
    // Its add beside the copied file's own, in the same commit (as a writer of the log would).
    let in_table = rel.trim_start_matches("alerts/");
    for e in std::fs::read_dir(w.join("alerts/_delta_log"))
        .unwrap()
        .flatten()
    {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let Some(line) = text.lines().find(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["add"]["path"] == in_table
        }) else {
            continue;
        };
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["add"]["path"] = other.trim_start_matches("alerts/").into();
        let add = serde_json::to_string(&v).unwrap();
        std::fs::write(&p, format!("{}\n{add}\n", text.trim_end())).unwrap();
    }
    let (ok, out) = verify(&w);
    assert!(ok, "{out}");
    assert!(
        out.contains("note: alerts table: rows of other stores not checked (")
            && out.contains(" of store 00000000000000aa)"),
        "{out}"
    );

    // A file changed and the log left as it was.
    let w = fresh("changed");
    drop_first_row(&w.join(rel));
    caught(&w, |out| {
        out.contains(&format!(
            "alerts table: file {rel} was changed: its SHA-256 is "
        ))
    });
}
