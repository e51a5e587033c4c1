//! Analysts' SQL: the shell (`flowaudit sql`) and the Flight SQL endpoint (`serve --flight`),
//! checked against DuckDB over the same files and with real Flight SQL clients (ADBC,
//! pyarrow.flight).
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::rules::{day_warehouse, free_port};
use crate::support::{bin, python_script, repo, Running};

fn policy() -> PathBuf {
    repo("fixtures/policy")
}

fn sql(wh: &Path) -> Command {
    let mut c = Command::new(bin());
    c.arg("sql")
        .arg("--warehouse")
        .arg(wh)
        .arg("--policy")
        .arg(policy())
        .arg("--geoip")
        .arg(repo("fixtures/geoip/ranges.csv"))
        .env("FLOWAUDIT_LOG", "warn")
        .env_remove("FLOWAUDIT_CONFIG");
    c
}

/// `flowaudit sql` over `wh` with `args`: (success, stdout, stderr).
fn run(wh: &Path, args: &[&str]) -> (bool, String, String) {
    let mut c = sql(wh);
    c.args(args);
    output(c)
}

/// Run and return (success, stdout, stderr).
fn output(mut c: Command) -> (bool, String, String) {
    let out = c.output().expect("spawn flowaudit sql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn duckdb(wh: &Path, query: &str) -> Value {
    let out = python_script(
        "duckdb_query.py",
        &[wh.as_os_str(), policy().as_os_str(), query.as_ref()],
    );
    serde_json::from_slice(&out).expect("json from duckdb_query.py")
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

const BY_COUNTRY: &str = "SELECT dst_country, count(*) AS n, sum(bytes) AS bytes FROM flows \
     WHERE dst_country IS NOT NULL GROUP BY dst_country ORDER BY n DESC, dst_country";

#[test]
fn the_shell_answers_like_duckdb_in_every_format_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 11);
    let expected = duckdb(&wh, BY_COUNTRY);
    assert!(expected.as_array().unwrap().len() > 3, "{expected}");

    // -c, ndjson: the same rows as DuckDB.
    let (ok, so, se) = run(&wh, &["-c", BY_COUNTRY, "--format", "ndjson"]);
    assert!(ok, "{se}");
    assert_eq!(Value::Array(ndjson(&so)), expected);

    // json and csv carry the same rows.
    let (ok, so, se) = run(&wh, &["-c", BY_COUNTRY, "--format", "json"]);
    assert!(ok, "{se}");
    assert_eq!(serde_json::from_str::<Value>(&so).unwrap(), expected);
    let (ok, so, _) = run(&wh, &["-c", BY_COUNTRY, "--format", "csv"]);
    assert!(ok);
    let lines: Vec<&str> = so.lines().collect();
    assert_eq!(lines[0], "dst_country,n,bytes");
    let first = &expected[0];
    assert_eq!(
        lines[1],
        format!(
            "{},{},{}",
            first["dst_country"].as_str().unwrap(),
            first["n"],
            first["bytes"]
        )
    );
    assert_eq!(lines.len(), expected.as_array().unwrap().len() + 1);

    // table: aligned, with a row count.
    let (ok, so, se) = run(&wh, &["-c", BY_COUNTRY, "--timing"]);
    assert!(ok, "{se}");
    assert!(
        so.starts_with("+-") && so.contains("| dst_country |"),
        "{so}"
    );
    let n = expected.as_array().unwrap().len();
    assert!(so.ends_with(&format!("({n} rows)\n")), "{so}");
    assert!(se.contains(&format!("{n} rows in ")), "{se}");

    // parquet to a file, read back by DuckDB.
    let pq = dir.path().join("by_country.parquet");
    let pq_arg = pq.to_string_lossy();
    let (ok, _, se) = run(
        &wh,
        &["-c", BY_COUNTRY, "--format", "parquet", "--output", &pq_arg],
    );
    assert!(ok, "{se}");
    let back = duckdb(
        &wh,
        &format!(
            "SELECT * FROM read_parquet('{}') ORDER BY n DESC, dst_country",
            pq.display()
        ),
    );
    assert_eq!(back, expected);

    // -f: several statements, the UDFs and policy tables, results in order to --output.
    let script = dir.path().join("q.sql");
    std::fs::write(
        &script,
        "-- a script\nSELECT count(*) AS n FROM gateway_events;\n\
         SELECT code FROM countries WHERE eea AND code < 'C'\n  ORDER BY code;\n\
         SELECT in_cidr('10.1.2.3', '10.0.0.0/8') AS inside;\n",
    )
    .unwrap();
    let out = dir.path().join("out.ndjson");
    let mut c = sql(&wh);
    c.arg("-f")
        .arg(&script)
        .args(["--format", "ndjson", "-o"])
        .arg(&out);
    let (ok, so, se) = output(c);
    assert!(ok, "{se}");
    assert!(so.is_empty(), "{so}");
    let rows = ndjson(&std::fs::read_to_string(&out).unwrap());
    let events = duckdb(&wh, "SELECT count(*) AS n FROM gateway_events");
    let eea_a_b = duckdb(
        &wh,
        "SELECT code FROM countries WHERE eea AND code < 'C' ORDER BY code",
    );
    let mut want: Vec<Value> = vec![events[0].clone()];
    want.extend(eea_a_b.as_array().unwrap().iter().cloned());
    want.push(serde_json::json!({"inside": true}));
    assert_eq!(rows, want);

    // SHOW and DESCRIBE go through information_schema.
    let (ok, so, se) = run(
        &wh,
        &["-c", "SHOW TABLES; DESCRIBE countries", "--format", "csv"],
    );
    assert!(ok, "{se}");
    assert!(so.contains(",public,flows,BASE TABLE"), "{so}");
    assert!(so.contains("eea,Boolean,NO"), "{so}");

    // Writes, path registration and session changes are refused, naming what was refused.
    for (stmt, what) in [
        ("DROP TABLE flows", "DROP TABLE is not allowed"),
        (
            "INSERT INTO countries VALUES ('XX', 'x', true)",
            "INSERT INTO is not allowed",
        ),
        ("DELETE FROM flows", "DELETE FROM is not allowed"),
        ("CREATE TABLE t AS SELECT 1", "CREATE TABLE is not allowed"),
        ("CREATE VIEW v AS SELECT 1", "CREATE VIEW is not allowed"),
        (
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "CREATE EXTERNAL TABLE (registering a path) is not allowed",
        ),
        (
            "SET datafusion.execution.batch_size = 1",
            "SET is not allowed",
        ),
        ("SELECT 1; DROP TABLE flows", "DROP TABLE is not allowed"),
    ] {
        let (ok, so, se) = run(&wh, &["-c", stmt]);
        assert!(!ok, "{stmt} was run:\n{so}");
        assert!(
            se.contains(what) && se.contains("read-only"),
            "{stmt}: {se}"
        );
        assert!(so.is_empty(), "{stmt} printed a result: {so}");
    }
    let copied = dir.path().join("copied.csv");
    let (ok, _, se) = run(
        &wh,
        &[
            "-c",
            &format!("COPY (SELECT * FROM flows) TO '{}'", copied.display()),
        ],
    );
    assert!(!ok && se.contains("COPY is not allowed"), "{se}");
    assert!(!copied.exists(), "COPY wrote a file");
    let (ok, _, se) = run(&wh, &["-c", "SELECT * INTO copy_of_flows FROM flows"]);
    assert!(!ok && se.contains("not allowed"), "{se}");

    // Errors name what was wrong.
    let (ok, _, se) = run(&wh, &["-c", "SELECT no_such_column FROM flows"]);
    assert!(!ok && se.contains("no_such_column"), "{se}");
    let (ok, _, se) = run(&wh, &["-c", "SELECT 1; SELEC 2"]);
    assert!(!ok && se.contains("SQL syntax"), "{se}");
}

#[test]
fn limits_stop_a_query_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 12);
    // Sorting every flow needs more than 1 MiB, and nothing may spill.
    let (ok, so, se) = run(
        &wh,
        &[
            "--memory-limit",
            "1MiB",
            "-c",
            "SELECT * FROM flows ORDER BY bytes, ts",
        ],
    );
    assert!(!ok, "{so}");
    assert!(
        se.contains("memory limit of 1.0 MiB"),
        "no memory-limit error: {se}"
    );
    // Without the sort, every flow streams through the same 1 MiB limit (several MB of
    // output): results are never collected in memory.
    let (ok, so, se) = run(
        &wh,
        &[
            "--memory-limit",
            "1MiB",
            "-c",
            "SELECT * FROM flows",
            "--format",
            "ndjson",
        ],
    );
    assert!(ok, "{se}");
    assert_eq!(so.lines().count(), 20000);
    assert!(so.len() > 4 << 20, "only {} bytes", so.len());
    // The sort within the default limit works.
    let (ok, so, se) = run(
        &wh,
        &[
            "-c",
            "SELECT count(*) AS n FROM (SELECT * FROM flows ORDER BY bytes, ts)",
            "--format",
            "csv",
        ],
    );
    assert!(ok, "{se}");
    assert_eq!(so, "n\n20000\n");

    // 20000³ pairs never finish in a second.
    let (ok, _, se) = run(
        &wh,
        &[
            "--timeout",
            "1s",
            "-c",
            "SELECT count(*) FROM flows a, flows b, flows c WHERE a.bytes + b.bytes + c.bytes < 0",
        ],
    );
    assert!(!ok);
    assert!(
        se.contains("time limit of 1 s"),
        "no time-limit error: {se}"
    );
}

#[test]
fn the_shell_reads_statements_line_by_line_describes_tables_and_ctrl_c_cancels_only_the_query() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 13);
    let mut c = sql(&wh);
    c.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = Running::spawn_with_stdout(c);
    let mut stdin = child.child.stdin.take().unwrap();
    writeln!(stdin, "\\d").unwrap();
    writeln!(stdin, "\\d flows").unwrap();
    writeln!(stdin, "SELECT\n  41 + 1\n  AS answer;").unwrap();
    // A query that never ends; Ctrl-C must stop it and leave the shell running.
    writeln!(
        stdin,
        "SELECT count(*) FROM flows a, flows b, flows c WHERE a.bytes + b.bytes + c.bytes < 0;"
    )
    .unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    child.signal(libc::SIGINT);
    child.wait_for("error: cancelled", Duration::from_secs(30));
    writeln!(stdin, "SELECT 'still here' AS status;").unwrap();
    writeln!(stdin, "\\d no_such_table").unwrap();
    drop(stdin);
    let st = child.wait(Duration::from_secs(60));
    assert!(st.success(), "{}", child.log());
    let so = child.stdout();
    for table in [
        "gateway_events",
        "flows",
        "quarantine",
        "alerts",
        "countries",
        "employees",
    ] {
        assert!(
            so.contains(&format!("| {table} ")),
            "\\d lacks {table}:\n{so}"
        );
    }
    assert!(
        so.contains("| warehouse ") && so.contains("| policy "),
        "{so}"
    );
    assert!(
        so.contains("| src_ip ") && so.contains("| Utf8 ") && so.contains("| dst_country "),
        "\\d flows:\n{so}"
    );
    assert!(so.contains("| answer |") && so.contains("| 42 "), "{so}");
    assert!(
        so.contains("| still here |"),
        "the shell did not go on:\n{so}"
    );
    let log = child.log();
    assert!(log.contains("no table \"no_such_table\""), "{log}");
}

#[test]
fn at_a_terminal_the_shell_edits_lines_recalls_history_and_ctrl_c_cancels_only_the_query() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 16);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let args: Vec<std::ffi::OsString> = vec![
        home.clone().into(),
        bin().into(),
        "sql".into(),
        "--warehouse".into(),
        wh.into(),
        "--policy".into(),
        policy().into(),
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let t: Value = serde_json::from_slice(&python_script("pty_shell.py", &args)).unwrap();
    let screen = |k: &str| t[k].as_str().unwrap().to_string();
    assert!(screen("first").contains("| 42 "), "{}", screen("first"));
    assert!(screen("first").contains("(1 row)"), "{}", screen("first"));
    // The up arrow brought the statement back; the left arrow and typing edited it.
    assert!(
        screen("recalled").contains("| answer_again |"),
        "{}",
        screen("recalled")
    );
    assert!(
        screen("multi_line").contains("| multi_line |"),
        "{}",
        screen("multi_line")
    );
    // The script waited for "error: cancelled"; the shell then ran the next statement, and the
    // line cleared by Ctrl-C at the prompt never ran.
    assert!(
        screen("after").contains("| still here |"),
        "{}",
        screen("after")
    );
    assert!(
        !screen("screen").contains("| typed but not run"),
        "{}",
        screen("screen")
    );
    assert_eq!(t["exit"], 0);
    let history = screen("history");
    for stmt in [
        "SELECT 40 + 2 AS answer;",
        "SELECT 40 + 2 AS answer_again;",
        "SELECT 'still here' AS status;",
    ] {
        assert!(history.contains(stmt), "history lacks {stmt}:\n{history}");
    }
}

const CONFIG: &str = r#"
[flight]
session_ttl = "1h"

[[flight.users]]
name = "alice"
password = "correct horse"

[[flight.users]]
name = "bob"
# printf %s hunter2 | sha256sum
sha256 = "f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7"

[[flight.tokens]]
name = "dbeaver-carol"
token = "tok-3f9a1c"
"#;

fn serve_flight(wh: &Path, config: &Path, port: u16) -> Running {
    let mut c = Command::new(bin());
    c.arg("--config")
        .arg(config)
        .args(["serve", "--no-scheduler", "--flight"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--warehouse")
        .arg(wh)
        .arg("--policy")
        .arg(policy())
        .arg("--geoip")
        .arg(repo("fixtures/geoip/ranges.csv"))
        .args(["--metrics", "127.0.0.1:0"])
        .env("FLOWAUDIT_LOG", "info");
    let mut r = Running::spawn(c);
    r.wait_for("Flight SQL listening", Duration::from_secs(30));
    r
}

fn events_by_gateway(wh: &Path) -> Value {
    duckdb(
        wh,
        "SELECT gateway_id, count(*) AS n FROM gateway_events GROUP BY gateway_id ORDER BY gateway_id",
    )
}

/// SIGTERM, and a clean exit.
fn stop(server: &mut Running) {
    server.signal(libc::SIGTERM);
    let st = server.wait(Duration::from_secs(30));
    assert!(st.success(), "{}", server.log());
}

fn flight_client(args: &[&str]) -> Value {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    serde_json::from_slice(&python_script("flight_client.py", &args)).expect("json")
}

#[test]
fn flight_sql_serves_adbc_and_pyarrow_with_auth_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 14);
    let config = dir.path().join("flowaudit.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let port = free_port();
    let mut server = serve_flight(&wh, &config, port);
    let uri = format!("grpc://127.0.0.1:{port}");

    let a = flight_client(&[
        "adbc",
        &uri,
        "alice",
        "correct horse",
        "--token",
        "tok-3f9a1c",
    ]);
    let flows = duckdb(&wh, "SELECT count(*) AS n FROM flows");
    assert_eq!(a["flows"], flows, "{a}");
    let by_country = duckdb(
        &wh,
        "SELECT dst_country, count(*) AS n FROM flows WHERE dst_country IS NOT NULL \
         GROUP BY dst_country ORDER BY n DESC, dst_country",
    );
    assert_eq!(a["by_country"], by_country);
    assert_eq!(
        a["prepared"],
        serde_json::json!([{"code": "DE", "name": "Germany", "eea": true}])
    );
    assert_eq!(
        a["prepared2"],
        duckdb(
            &wh,
            "SELECT code FROM countries WHERE eea AND code < 'C' ORDER BY code"
        )
    );
    assert_eq!(a["catalogs"], serde_json::json!(["datafusion"]));
    let tables: Vec<&str> = a["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for t in [
        "alerts",
        "countries",
        "flows",
        "gateway_events",
        "transfer_bases",
    ] {
        assert!(tables.contains(&t), "GetTables lacks {t}: {tables:?}");
    }
    let cols = a["flows_columns"].as_array().unwrap();
    assert!(
        cols.contains(&"src_ip".into()) && cols.contains(&"date".into()),
        "{cols:?}"
    );
    assert_eq!(a["info"]["vendor_name"], "flowaudit", "{}", a["info"]);
    for k in ["write_error", "insert_error", "copy_error"] {
        let e = a[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k}: the write was run: {a}"));
        assert!(
            e.contains("not allowed") && e.contains("read-only"),
            "{k}: {e}"
        );
    }
    assert!(!Path::new("/tmp/flowaudit-copy.csv").exists());
    let e = a["bad_password"]
        .as_str()
        .expect("a bad password was accepted");
    assert!(e.contains("invalid user name or password"), "{e}");
    assert_eq!(a["token_query"], serde_json::json!([{"one": 1}]));
    let e = a["bad_token"].as_str().expect("a bad token was accepted");
    assert!(e.contains("invalid or expired bearer token"), "{e}");

    // pyarrow.flight: basic-auth handshake (bob's password is configured as a digest).
    let p = flight_client(&["pyarrow", &uri, "bob", "hunter2"]);
    assert_eq!(p["by_gateway"], events_by_gateway(&wh));
    assert_eq!(
        p["schema"],
        serde_json::json!(["gateway_id:string", "n:int64"])
    );
    let e = p["write_error"].as_str().expect("DELETE was run");
    assert!(e.contains("DELETE FROM is not allowed"), "{e}");
    for k in ["bad_password", "bad_token", "no_auth"] {
        let e = p[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} was accepted: {p}"));
        assert!(
            e.contains("Unauthenticated") || e.contains("nauthenticated"),
            "{k}: {e}"
        );
    }

    // Each query is logged with the analyst's name.
    let log = server.log();
    for who in ["alice", "bob", "dbeaver-carol"] {
        assert!(
            log.lines()
                .any(|l| l.contains("flight query done") && l.contains(who)),
            "no query of {who} in the log:\n{log}"
        );
    }
    assert!(
        log.contains("flight query refused or failed") || log.contains("flight statement refused")
    );
    assert!(
        log.contains("flight authentication failed")
            && log.contains("invalid user name or password")
            && log.contains("invalid or expired bearer token"),
        "{log}"
    );
    // The operator sees the queries by user and outcome, timed.
    let addr = crate::ops::endpoint(&mut server);
    let m = crate::ops::Scrape::of(&addr);
    for who in ["alice", "bob", "dbeaver-carol"] {
        let ok = m.sum(
            "flowaudit_flight_queries_total",
            &[("user", who), ("outcome", "ok")],
        );
        assert!(ok >= 1.0, "no query of {who} counted: {:?}", m.samples);
        assert_eq!(
            m.sum(
                "flowaudit_flight_query_duration_seconds_count",
                &[("user", who), ("outcome", "ok")]
            ),
            ok
        );
    }
    // Statements' physical plans were made while their DoGet travelled, and ran.
    assert!(
        m.sum("flowaudit_flight_plans_ahead_run_total", &[]) >= 1.0,
        "{:?}",
        m.samples
    );
    stop(&mut server);
}

#[test]
fn flight_sql_over_tls_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 15);
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=flowaudit-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let config = dir.path().join("flowaudit.toml");
    std::fs::write(
        &config,
        format!("{CONFIG}\n",).replace(
            "[flight]\n",
            &format!(
                "[flight]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                cert.display(),
                key.display()
            ),
        ),
    )
    .unwrap();
    let port = free_port();
    let mut server = serve_flight(&wh, &config, port);
    assert!(server.log().contains("tls=true"), "{}", server.log());
    let cert_s = cert.to_string_lossy().into_owned();
    let uri = format!("grpc+tls://127.0.0.1:{port}");
    let p = flight_client(&[
        "pyarrow",
        &uri,
        "alice",
        "correct horse",
        "--tls-root",
        &cert_s,
    ]);
    assert_eq!(p["by_gateway"], events_by_gateway(&wh));
    stop(&mut server);
}

#[test]
fn flight_refuses_to_start_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flowaudit.toml");
    std::fs::write(&config, "[flight]\n").unwrap();
    std::fs::create_dir_all(dir.path().join("wh")).unwrap();
    let mut c = Command::new(bin());
    c.arg("--config")
        .arg(&config)
        .args([
            "serve",
            "--no-scheduler",
            "--flight",
            "127.0.0.1:0",
            "--warehouse",
        ])
        .arg(dir.path().join("wh"))
        .arg("--policy")
        .arg(policy());
    let (ok, _, se) = output(c);
    assert!(!ok);
    assert!(se.contains("Flight SQL needs credentials"), "{se}");
}

// ---------------------------------------------------------------------------------------------
// Hostile analysts and clients (issue 10, items 7 and 8).

/// The measured runaway query and its siblings stop at once with an error naming the limit, and
/// ordinary uses of the same functions still work.
#[test]
fn hostile_queries_in_the_shell_stop_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 17);
    // The query of the issue: it peaked at 6.2 GB, panicked and ran past its time limit.
    let (ok, so, se) = run(
        &wh,
        &[
            "--memory-limit",
            "256MiB",
            "-c",
            "select repeat('x', 400000000) || repeat('y', 400000000) from flows limit 3",
        ],
    );
    assert!(!ok, "{so}");
    assert!(
        se.contains("query stopped: repeat would make a value of 381.5 MiB, more than the limit of 16.0 MiB for one value (sql.max_value_bytes)"),
        "{se}"
    );
    assert!(!se.contains("panicked"), "{se}");
    // Each value under the value limit, a batch of them over the memory limit.
    let (ok, _, se) = run(
        &wh,
        &[
            "--memory-limit",
            "256MiB",
            "-c",
            "SELECT length(repeat(src_ip, 400000)) AS n FROM flows",
        ],
    );
    assert!(!ok);
    assert!(
        se.contains("query stopped: it needs more than the memory limit of 256.0 MiB")
            && se.contains("repeat"),
        "{se}"
    );
    for (sql, what) in [
        // Doubling through CTEs with ||: 4, 8, 16 MB, then 32 MB.
        (
            "WITH a AS (SELECT repeat('ab', 2000000) AS s), b AS (SELECT s || s AS s FROM a), \
             c AS (SELECT s || s AS s FROM b) SELECT length(s || s) FROM c",
            "|| would make a value of 30.5 MiB",
        ),
        (
            "SELECT length(lpad('x', 100000000, 'ab'))",
            "lpad would make a value of",
        ),
        (
            "SELECT length(replace(repeat('x', 10000), 'x', repeat('y', 10000)))",
            "replace would make a value of",
        ),
        (
            "SELECT cardinality(range(1, 1000000000))",
            "range would make a value of",
        ),
        (
            "SELECT cardinality(array_repeat(src_ip, 100000000)) FROM flows",
            "array_repeat would make a value of",
        ),
    ] {
        let (ok, so, se) = run(&wh, &["-c", sql]);
        assert!(!ok, "{sql}: {so}");
        assert!(
            se.contains(what) && se.contains("sql.max_value_bytes"),
            "{sql}: {se}"
        );
    }
    // The same functions within their limits.
    let (ok, so, se) = run(
        &wh,
        &[
            "-c",
            "SELECT repeat('ab', 3) || lpad('7', 3, '0') AS s, 'x' || NULL AS n, \
             replace('a-b', '-', '+') AS r, cardinality(range(1, 11)) AS c, \
             length(repeat('z', 1000000)) AS big",
            "--format",
            "ndjson",
        ],
    );
    assert!(ok, "{se}");
    assert_eq!(
        ndjson(&so),
        vec![serde_json::json!({"s": "ababab007", "n": null, "r": "a+b", "c": 10, "big": 1000000})]
    );
    // The value limit is a setting.
    let config = dir.path().join("flowaudit.toml");
    std::fs::write(
        &config,
        "[sql]\nmax_value_bytes = \"1KiB\"\nmax_result_rows = 100\n",
    )
    .unwrap();
    let mut c = sql(&wh);
    c.arg("--config")
        .arg(&config)
        .args(["-c", "SELECT repeat('ab', 1000) AS s"]);
    let (ok, _, se) = output(c);
    assert!(
        !ok && se.contains("repeat would make a value of 2.0 KiB, more than the limit of 1.0 KiB"),
        "{se}"
    );
    // So is the result's size.
    let mut c = sql(&wh);
    c.arg("--config")
        .arg(&config)
        .args(["-c", "SELECT * FROM flows", "--format", "csv"]);
    let (ok, _, se) = output(c);
    assert!(
        !ok && se.contains(
            "query stopped: the result passed the limit of 100 rows (sql.max_result_rows)"
        ),
        "{se}"
    );
}

/// A duration setting is at most a century: a longer one would overflow the clock it is added
/// to (a panic at every query) instead of meaning "for ever".
#[test]
fn a_duration_setting_past_a_century_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 21);
    for t in ["36501d", "200000000000000d"] {
        let (ok, so, se) = run(&wh, &["--timeout", t, "-c", "SELECT 1 AS n"]);
        assert!(!ok, "{so}");
        assert!(
            se.contains(&format!("timeout \"{t}\" is longer than 36500d")),
            "{se}"
        );
        assert!(!se.contains("panicked"), "{se}");
    }
    let (ok, so, se) = run(&wh, &["--timeout", "36500d", "-c", "SELECT 1 AS n"]);
    assert!(ok && so.contains('1'), "{so}{se}");
}

const HOSTILE_CONFIG: &str = r#"
[sql]
timeout = "4s"
threads = 1

[flight]
max_queries = 2
max_queries_per_user = 1
max_prepared_per_user = 3
max_parameter_bytes = "64KiB"

[[flight.users]]
name = "alice"
password = "a-pass"

[[flight.users]]
name = "bob"
password = "b-pass"

[[flight.users]]
name = "carol"
password = "c-pass"
"#;

/// Several hostile Flight clients at once: those beyond the caps are refused with a message
/// naming the cap, the admitted ones are stopped by the time limit, the caps on prepared
/// statements and parameters hold, and the server answers an ordinary query afterwards.
#[test]
fn hostile_flight_clients_beyond_the_caps_get_clear_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 18);
    let config = dir.path().join("flowaudit.toml");
    std::fs::write(&config, HOSTILE_CONFIG).unwrap();
    let port = free_port();
    let mut server = serve_flight(&wh, &config, port);
    let uri = format!("grpc://127.0.0.1:{port}");

    // Seven clients at the same moment, each with a query that never ends.
    let clients =
        "alice:a-pass,alice:a-pass,alice:a-pass,bob:b-pass,bob:b-pass,carol:c-pass,carol:c-pass";
    let sql = "SELECT count(*) FROM generate_series(1, 1000000000000) a, countries b";
    let out = flight_client(&["attack", &uri, clients, "--sql", sql]);
    let outcomes = out.as_array().unwrap();
    assert_eq!(outcomes.len(), 7, "{out}");
    let (mut refused, mut stopped) = (0, 0);
    for o in outcomes {
        let e = o["error"]
            .as_str()
            .unwrap_or_else(|| panic!("a runaway query completed: {o}"));
        if e.contains("too many queries running") {
            assert!(
                e.contains("(flight.max_queries_per_user)") || e.contains("(flight.max_queries)"),
                "{e}"
            );
            refused += 1;
        } else {
            assert!(
                e.contains("query stopped: it ran longer than the time limit of 4 s"),
                "{e}"
            );
            stopped += 1;
        }
    }
    assert!(refused >= 5 && (1..=2).contains(&stopped), "{out}");

    // Prepared statements, parameters, the runaway query, then an ordinary one.
    let c = flight_client(&[
        "caps",
        &uri,
        "alice",
        "a-pass",
        "--prepared",
        "3",
        "--param-bytes",
        "100000",
    ]);
    assert_eq!(c["prepared_opened"], 3, "{c}");
    let e = c["prepared_errors"][0].as_str().unwrap();
    assert!(
        e.contains("too many open prepared statements for alice: 3 (flight.max_prepared_per_user)"),
        "{e}"
    );
    assert!(c["prepared_after_close"].is_null(), "{c}");
    let e = c["big_parameter"]
        .as_str()
        .expect("a 100 kB parameter was taken");
    assert!(
        e.contains("parameters: more than the limit of 64.0 KiB (flight.max_parameter_bytes)"),
        "{e}"
    );
    assert!(
        c["two_rows"].is_string(),
        "two rows of parameters were taken: {c}"
    );
    let e = c["runaway"].as_str().expect("the runaway query ran");
    assert!(
        e.contains("repeat would make a value of 381.5 MiB") && e.contains("sql.max_value_bytes"),
        "{e}"
    );
    assert_eq!(c["small_parameter"], serde_json::json!([{"n": 1000}]));
    let countries = duckdb(&wh, "SELECT count(*) AS n FROM countries");
    assert_eq!(c["ordinary"], countries);

    let log = server.log();
    assert!(log.contains("flight query refused"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    stop(&mut server);
}

/// A join whose filter keeps nothing loops inside one poll of its operator (each batch of one
/// side against every row of the other), where dropping the query's task cannot reach it: it
/// held the only query thread past its time limit, and the next query timed out waiting for it.
/// Now its filter sees the deadline: the join stops with the time-limit error and frees its
/// thread, so an ordinary query right after it runs.
#[test]
fn a_join_that_finds_nothing_stops_at_the_time_limit_and_frees_its_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 20);
    let config = dir.path().join("flowaudit.toml");
    std::fs::write(
        &config,
        "[sql]\ntimeout = \"3s\"\nthreads = 1\n\n[[flight.users]]\nname = \"alice\"\npassword = \"a-pass\"\n",
    )
    .unwrap();
    let port = free_port();
    let mut server = serve_flight(&wh, &config, port);
    let uri = format!("grpc://127.0.0.1:{port}");
    for sql in [
        // A nested-loop join (no equality), three ways: 8e12 triples, none kept.
        "SELECT count(*) AS n FROM flows a, flows b, flows c \
         WHERE a.bytes + b.bytes + c.bytes < 0",
        // A hash join on a key most rows share, with a filter that keeps nothing.
        "SELECT count(*) AS n FROM flows a JOIN flows b ON a.protocol = b.protocol \
         JOIN flows c ON b.protocol = c.protocol WHERE a.bytes + b.bytes + c.bytes < 0",
    ] {
        let out = flight_client(&["attack", &uri, "alice:a-pass", "--sql", sql]);
        let e = out[0]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("the join completed: {out}"));
        // The hash join may reach the memory limit before the time limit (how fast its build
        // side grows depends on how the scan splits the files): either way it stops.
        assert!(
            e.contains("query stopped: it ran longer than the time limit of 3 s")
                || e.contains("query stopped: it needs more than the memory limit"),
            "{sql}: {e}"
        );
        // The one query thread is free again: an ordinary query does not wait behind the join.
        let out = flight_client(&[
            "attack",
            &uri,
            "alice:a-pass",
            "--sql",
            "SELECT count(*) AS n FROM flows",
        ]);
        assert_eq!(out[0]["ok"], 1, "after {sql}: {out}");
    }
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
    stop(&mut server);
}

/// Passwords: an argon2id hash made by `flowaudit flight hash-password` works, an old SHA-256
/// entry works with a warning to rehash, brute force from one address is throttled (even the
/// right password is refused during the lockout, and works after it), and listening beyond
/// loopback without TLS is warned about.
#[test]
fn passwords_are_argon2id_and_brute_force_is_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, _) = day_warehouse(dir.path(), 19);
    let mut c = Command::new(bin());
    c.args(["flight", "hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse battery\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );

    let config = dir.path().join("flowaudit.toml");
    std::fs::write(
        &config,
        format!(
            "[flight]\nlogin_max_failures = 5\nlogin_window = \"1m\"\nlogin_lockout = \"3s\"\n\n\
             [[flight.users]]\nname = \"alice\"\nhash = \"{hash}\"\n\n\
             [[flight.users]]\nname = \"bob\"\n# printf %s hunter2 | sha256sum\n\
             sha256 = \"f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7\"\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let mut server = serve_flight(&wh, &config, port);
    let log = server.log();
    assert!(
        log.contains("flight user's password is stored as unsalted SHA-256: rehash it")
            && log.contains("bob"),
        "{log}"
    );
    assert!(!log.contains("WITHOUT TLS"), "{log}");
    let uri = format!("grpc://127.0.0.1:{port}");
    let b = flight_client(&[
        "brute",
        &uri,
        "alice",
        "correct horse battery",
        "--tries",
        "5",
        "--lockout",
        "4",
    ]);
    for (i, e) in b["wrong"].as_array().unwrap().iter().enumerate() {
        let e = e
            .as_str()
            .unwrap_or_else(|| panic!("wrong password {i} accepted: {b}"));
        assert!(e.contains("invalid user name or password"), "{i}: {e}");
    }
    let e = b["right_during_lockout"]
        .as_str()
        .expect("the right password got in during the lockout");
    assert!(
        e.contains("too many failed logins from 127.0.0.1: refused for"),
        "{e}"
    );
    assert!(b["right_after_lockout"].is_null(), "{b}");
    assert_eq!(b["query_after_lockout"], serde_json::json!([{"one": 1}]));
    // After the lockout, both kinds of entry log in (each pyarrow run also tries one wrong
    // password and one wrong token: four failures, under the five that lock out).
    let p = flight_client(&["pyarrow", &uri, "alice", "correct horse battery"]);
    assert_eq!(p["by_gateway"], events_by_gateway(&wh));
    let p = flight_client(&["pyarrow", &uri, "bob", "hunter2"]);
    assert_eq!(p["by_gateway"], events_by_gateway(&wh));
    let log = server.log();
    assert!(
        log.contains("flight logins from this address refused for a while"),
        "{log}"
    );
    stop(&mut server);

    // Beyond loopback without TLS: a loud warning.
    let mut c = Command::new(bin());
    c.arg("--config")
        .arg(&config)
        .args(["serve", "--no-scheduler", "--flight"])
        .arg(format!("0.0.0.0:{}", free_port()))
        .arg("--warehouse")
        .arg(&wh)
        .arg("--policy")
        .arg(policy())
        .env("FLOWAUDIT_LOG", "info");
    let mut open = Running::spawn(c);
    open.wait_for("Flight SQL listening", Duration::from_secs(30));
    assert!(
        open.log()
            .contains("Flight SQL listens beyond loopback WITHOUT TLS"),
        "{}",
        open.log()
    );
    stop(&mut open);
}

/// `serve --ingest --flight`: while rounds of hostile queries run over Flight SQL, ingest in the
/// same process goes on committing what is produced (rows in the warehouse, read by DuckDB).
#[test]
fn ingest_keeps_committing_while_hostile_queries_run() {
    use crate::support::{brokers, table_rows, Setup};
    let s = Setup::new(1);
    let events = |from: usize| -> Vec<flowaudit_ingest::generate::Message> {
        (from..from + 50)
            .map(|i| {
                let p = format!(
                    r#"{{"event_id":"siege-{i}","ts":"2026-11-21T12:00:00Z","gateway_id":"gw-fra-1","employee_id":"e1001","employee_country":"DE","role":"analyst","data_category":"public","action":"query","decision":"allow","session_id":"s","records":1,"bytes":1}}"#
                );
                flowaudit_ingest::generate::Message {
                    key: format!("{}", i % 5),
                    payload: p.into_bytes(),
                    ts_us: 1_795_262_400_000_000,
                }
            })
            .collect()
    };
    s.produce_gateway(&events(0));
    std::fs::create_dir_all(s.warehouse()).unwrap();
    let config = s.dir.path().join("flowaudit.toml");
    std::fs::write(
        &config,
        format!(
            "[ingest]\ngroup = \"{}\"\ngateway_topic = \"{}\"\nflow_topic = \"{}\"\n\
             flush_interval_ms = 500\nsession_timeout_ms = 6000\n\n\
             [sql]\ntimeout = \"3s\"\nthreads = 1\nmemory_limit = \"256MiB\"\n\n\
             [flight]\nmax_queries = 2\nmax_queries_per_user = 2\n\n\
             [[flight.users]]\nname = \"mallory\"\npassword = \"m-pass\"\n",
            s.group, s.gateway_topic, s.flow_topic
        ),
    )
    .unwrap();
    let port = free_port();
    let mut c = Command::new(bin());
    c.arg("--config")
        .arg(&config)
        .args([
            "serve",
            "--ingest",
            "--no-scheduler",
            "--brokers",
            &brokers(),
        ])
        .arg("--flight")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--warehouse")
        .arg(s.warehouse())
        .arg("--policy")
        .arg(policy())
        .arg("--geoip")
        .arg(repo("fixtures/geoip/ranges.csv"))
        .env("FLOWAUDIT_LOG", "info,librdkafka=warn")
        .env_remove("FLOWAUDIT_CONFIG");
    let mut server = Running::spawn(c);
    server.wait_for("Flight SQL listening", Duration::from_secs(30));
    let wait_rows = |server: &Running, n: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while table_rows(&s.warehouse(), "gateway_events") < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{n} rows not committed:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_rows(&server, 50);

    // The siege: rounds of four clients at once, each with a query that runs until its time
    // limit (the cap admits two, refuses two), until told to stop.
    let stop_file = s.dir.path().join("stop-siege");
    let py = std::env::var("FLOWAUDIT_PYTHON").expect("FLOWAUDIT_PYTHON: run with make test");
    let mut siege = Command::new(py);
    siege
        .arg(repo("scripts/flight_client.py"))
        .args([
            "siege",
            &format!("grpc://127.0.0.1:{port}"),
            "mallory",
            "m-pass",
        ])
        .args([
            "--sql",
            "SELECT count(*) FROM generate_series(1, 1000000000000) a, countries b",
            "--clients",
            "4",
            "--max-seconds",
            "240",
        ])
        .arg("--stop")
        .arg(&stop_file);
    let mut siege = Running::spawn_with_stdout(siege);
    server.wait_for("flight query started", Duration::from_secs(60));
    // Produced during the siege, committed during it.
    s.produce_gateway(&events(50));
    wait_rows(&server, 100);
    assert!(
        siege.child.try_wait().unwrap().is_none(),
        "the siege ended before the rows were committed"
    );
    std::fs::write(&stop_file, "").unwrap();
    let st = siege.wait(Duration::from_secs(120));
    assert!(st.success(), "{}", siege.log());
    let report: Value = serde_json::from_str(siege.stdout().trim()).unwrap();
    assert_eq!(report["stopped_by"], "file", "{report}");
    assert!(report["rounds"].as_u64().unwrap() >= 1, "{report}");
    for (what, n) in report["outcomes"].as_object().unwrap() {
        assert!(
            what.contains("time limit of 3 s") || what.contains("too many queries running"),
            "unexpected outcome ({n}×): {what}"
        );
    }
    let rows = duckdb(
        &s.warehouse(),
        "SELECT count(*) AS n FROM gateway_events WHERE event_id LIKE 'siege-%'",
    );
    assert_eq!(rows, serde_json::json!([{"n": 100}]));
    stop(&mut server);
}

/// A Flight statement's physical plan is made in the background once its FlightInfo is answered
/// (`Planned::plan_ahead`), and its DoGet runs that plan: the rows are those of the files listed
/// then. A statement run with parameters is planned again with them bound; dropping one that is
/// planning ahead and never run is harmless.
#[test]
fn a_plan_made_ahead_is_the_plan_that_runs() {
    use flowaudit_analytics::sql::{Limits, SqlEngine};
    use futures::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let flows = crate::rules::one_host_flows;
    crate::rules::convert_into(&wh, "flows", "2026-11-21", &flows("2026-11-21", 3), false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = rt
        .block_on(SqlEngine::open(
            &flowaudit_analytics::site::Site::local(&wh),
            &policy(),
            None,
            Limits::default(),
        ))
        .unwrap();
    let plan = |sql: &str| {
        rt.block_on(engine.plan(&SqlEngine::parse_one(sql).unwrap()))
            .unwrap()
    };
    let count = |p: flowaudit_analytics::sql::Planned, params| -> i64 {
        rt.block_on(async {
            let batches: Vec<_> = p
                .execute(params)
                .await
                .unwrap()
                .map(|b| b.unwrap())
                .collect()
                .await;
            let rows = flowaudit_analytics::runner::batches_to_json(&batches).unwrap();
            rows[0]["n"].as_i64().unwrap()
        })
    };
    let ready = |p: &flowaudit_analytics::sql::Planned| {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while !p.planned_ahead() {
            assert!(
                std::time::Instant::now() < until,
                "the plan made ahead never finished"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    let all = "SELECT count(*) AS n FROM flows";
    let mut ahead = plan(all);
    assert!(
        !ahead.planned_ahead(),
        "nothing is planned ahead unless asked"
    );
    ahead.plan_ahead();
    ready(&ahead);
    let at_run = plan(all);
    let mut with_params = plan("SELECT count(*) AS n FROM flows WHERE bytes >= $1");
    with_params.plan_ahead();
    ready(&with_params);
    let mut dropped = plan(all);
    dropped.plan_ahead();
    drop(dropped);

    // A commit after the plans were made: the plan made ahead had listed the files already.
    crate::rules::convert_into(&wh, "flows", "2026-11-22", &flows("2026-11-22", 2), false);
    assert_eq!(count(ahead, None), 3);
    assert_eq!(count(at_run, None), 5);
    assert_eq!(
        count(
            with_params,
            Some(vec![datafusion::scalar::ScalarValue::Int64(Some(101))])
        ),
        3,
        "planned again with $1 bound, over both commits: 101, 102 and the second day's 101"
    );
}
