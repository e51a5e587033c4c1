//! Shared test plumbing: the real broker `make test` starts, unique names, the flowaudit binary,
//! and the independent Parquet reader (pyarrow).
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The Kafka-protocol broker started by `make test` (scripts/with-broker.sh).
pub fn brokers() -> String {
    std::env::var("FLOWAUDIT_TEST_BROKERS")
        .expect("FLOWAUDIT_TEST_BROKERS is not set: run the tests with `make test`, which starts a Tansu broker")
}

pub fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_flowaudit")
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Topics, group and warehouse of one test.
pub struct Setup {
    pub gateway_topic: String,
    pub flow_topic: String,
    pub group: String,
    pub dir: tempfile::TempDir,
    /// `s3://…` when the warehouse is on the S3 test server ([`Setup::on_s3`]).
    pub s3: Option<String>,
}

impl Setup {
    pub fn new(partitions: i32) -> Self {
        let s = Self {
            gateway_topic: unique("gw"),
            flow_topic: unique("fl"),
            group: unique("grp"),
            dir: tempfile::tempdir().unwrap(),
            s3: None,
        };
        flowaudit_ingest::produce::ensure_topics(
            &brokers(),
            &[&s.gateway_topic, &s.flow_topic],
            partitions,
        )
        .unwrap();
        s
    }

    /// The same, with the warehouse under a fresh prefix of the S3 test server's bucket.
    pub fn on_s3(partitions: i32) -> Self {
        let bucket = std::env::var("FLOWAUDIT_TEST_S3").expect(
            "FLOWAUDIT_TEST_S3 is not set: run the tests with `make test` (it starts the S3 server)",
        );
        let mut s = Self::new(partitions);
        s.s3 = Some(format!("{bucket}/{}", unique("wh")));
        s
    }

    /// The local warehouse directory (of a setup that is not on S3).
    pub fn warehouse(&self) -> PathBuf {
        assert!(self.s3.is_none(), "a local warehouse");
        self.dir.path().join("warehouse")
    }

    /// `--warehouse` as given to the binary: the directory or the `s3://` URL.
    pub fn warehouse_arg(&self) -> String {
        match &self.s3 {
            Some(u) => u.clone(),
            None => self.dir.path().join("warehouse").display().to_string(),
        }
    }

    pub fn location(&self) -> flowaudit_ingest::warehouse::Location {
        flowaudit_ingest::warehouse::Location::parse(&self.warehouse_arg()).unwrap()
    }

    /// What the independent reader (pyarrow over the JSON log) sees, local or on S3.
    pub fn facts(&self) -> Value {
        pyarrow_at(&self.warehouse_arg())
    }

    /// Rows recorded in `table`'s Delta log, local or on S3 (0 before the table exists).
    pub fn rows(&self, table: &str) -> u64 {
        if self.s3.is_none() {
            return table_rows(&self.warehouse(), table);
        }
        flowaudit_ingest::warehouse::read_log_blocking(&self.location())
            .map(|l| {
                l.files
                    .iter()
                    .filter(|e| e.table == table)
                    .map(|e| e.rows)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Commit files in `table`'s Delta log (listed, not read).
    pub fn commits(&self, table: &str) -> usize {
        let (store, prefix) = self.location().store().unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(flowaudit_ingest::warehouse::list_commits(
                store.as_ref(),
                &prefix,
                table,
            ))
            .map(|l| l.commits.len())
            .unwrap_or(0)
    }

    /// `flowaudit ingest` for this setup (add `--until-caught-up` or not).
    pub fn ingest(&self) -> Command {
        let mut c = Command::new(bin());
        c.args(["ingest", "--brokers", &brokers(), "--group", &self.group])
            .args([
                "--gateway-topic",
                &self.gateway_topic,
                "--flow-topic",
                &self.flow_topic,
            ])
            .arg("--warehouse")
            .arg(self.warehouse_arg())
            // An S3 writer stages its files under the temporary directory: this test's own.
            .env("TMPDIR", self.dir.path())
            .arg("--policy")
            .arg(repo("fixtures/policy"))
            .arg("--geoip")
            .arg(repo("fixtures/geoip/ranges.csv"))
            .args(["--session-timeout-ms", "6000", "--idle-ms", "4000"])
            .env("FLOWAUDIT_LOG", "info,librdkafka=warn")
            .env_remove("FLOWAUDIT_CONFIG");
        c
    }

    pub fn produce_gateway(&self, msgs: &[flowaudit_ingest::generate::Message]) {
        flowaudit_ingest::produce::produce(&brokers(), &self.gateway_topic, msgs).unwrap();
    }
}

/// Run a command to completion; panic with its output unless it exits 0.
pub fn run_ok(mut c: Command) -> (String, String) {
    let out = c.output().expect("spawn");
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{c:?} exited {:?}\nstdout:\n{so}\nstderr:\n{se}",
        out.status
    );
    (so, se)
}

/// A running child whose stderr is collected in the background.
pub struct Running {
    pub child: Child,
    pub stderr: Arc<Mutex<String>>,
    /// Collected only by [`Running::spawn_with_stdout`].
    pub stdout: Arc<Mutex<String>>,
}

/// A test that fails mid-way leaves no process behind.
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collect a pipe's lines into a shared string in the background.
fn collect(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let sink = buf.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    buf
}

impl Running {
    pub fn spawn(mut c: Command) -> Self {
        c.stdout(Stdio::null());
        Self::spawn_inner(c)
    }

    /// Like [`Running::spawn`], with stdout collected too.
    pub fn spawn_with_stdout(mut c: Command) -> Self {
        c.stdout(Stdio::piped());
        Self::spawn_inner(c)
    }

    fn spawn_inner(mut c: Command) -> Self {
        let mut child = c.stderr(Stdio::piped()).spawn().expect("spawn");
        let stderr = collect(child.stderr.take().unwrap());
        let stdout = match child.stdout.take() {
            Some(p) => collect(p),
            None => Arc::new(Mutex::new(String::new())),
        };
        Self {
            child,
            stderr,
            stdout,
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait until the log contains `needle` (panics after `timeout`).
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let t = Instant::now();
        while !self.log().contains(needle) {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "process exited {st:?} before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                t.elapsed() < timeout,
                "no {needle:?} in the log after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                t.elapsed() < timeout,
                "process still running after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Run one of the repository's Python scripts in the test venv; its stdout if it exits 0.
pub fn python_script(script: &str, args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let py = std::env::var("FLOWAUDIT_PYTHON")
        .expect("FLOWAUDIT_PYTHON is not set: run the tests with `make test`");
    let out = Command::new(py)
        .arg(repo(&format!("scripts/{script}")))
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Produce every line of `file` to `topic` with confluent-kafka (an independent client, as a
/// sensor or collector would).
pub fn produce_with_python(topic: &str, file: &Path) {
    let b = brokers();
    python_script(
        "kafka_client.py",
        &[
            "produce".as_ref(),
            b.as_ref(),
            topic.as_ref(),
            file.as_os_str(),
        ],
    );
}

/// Read the warehouse with pyarrow (an independent reader) and return its JSON report.
pub fn pyarrow(warehouse: &Path) -> Value {
    let out = python_script("check_parquet.py", &[warehouse.as_os_str()]);
    serde_json::from_slice(&out).expect("json from check_parquet.py")
}

/// [`pyarrow`] for a warehouse URL (`s3://…`, through pyarrow's own S3 client).
pub fn pyarrow_at(warehouse: &str) -> Value {
    let out = python_script("check_parquet.py", &[std::ffi::OsStr::new(warehouse)]);
    serde_json::from_slice(&out).expect("json from check_parquet.py")
}

/// What the Python `deltalake` package reads from the warehouse (`scripts/read_delta.py`).
pub fn deltalake_at(warehouse: &str) -> Value {
    let out = python_script("read_delta.py", &[std::ffi::OsStr::new(warehouse)]);
    serde_json::from_slice(&out).expect("json from read_delta.py")
}

/// The `alerts` table as the Python `deltalake` package reads it, with the `txn` of the alert
/// store in `state` (`facts["alerts"]`: rows, fingerprints, seqs, txn, version, files).
pub fn deltalake_alerts(warehouse: &str, state: &Path) -> Value {
    let id = std::fs::read_to_string(state.join("_alerts/store_id")).expect("store_id");
    let out = python_script(
        "read_delta.py",
        &[
            std::ffi::OsStr::new(warehouse),
            std::ffi::OsStr::new(id.trim()),
        ],
    );
    let v: Value = serde_json::from_slice(&out).expect("json from read_delta.py");
    v["alerts"].clone()
}

/// The warehouse's Delta logs, read as `verify` reads them.
pub fn log(warehouse: &Path) -> flowaudit_ingest::warehouse::WarehouseLog {
    flowaudit_ingest::warehouse::read_log_blocking(&flowaudit_ingest::warehouse::Location::Local(
        warehouse.to_path_buf(),
    ))
    .unwrap()
}

/// Rows recorded in a table's Delta log (0 before the warehouse exists).
pub fn table_rows(warehouse: &Path, table: &str) -> u64 {
    if !warehouse.join(table).join("_delta_log").is_dir() {
        return 0;
    }
    log(warehouse)
        .files
        .iter()
        .filter(|e| e.table == table)
        .map(|e| e.rows)
        .sum()
}

/// Assert that every live file of the logs exists with the recorded SHA-256.
pub fn assert_log_matches_files(warehouse: &Path) {
    for e in log(warehouse).files {
        let p = warehouse.join(&e.path);
        assert_eq!(
            flowaudit_ingest::writer::sha256_file(&p).unwrap(),
            e.sha256,
            "{}",
            e.path
        );
    }
}

/// Start a second Tansu broker (the binary `make test` found) on `addr`, for tests of a broker
/// that comes up late. Kill it when done.
pub fn start_tansu(addr: &str) -> Child {
    let tansu = std::env::var("FLOWAUDIT_TANSU")
        .expect("FLOWAUDIT_TANSU is not set: run the tests with `make test`");
    let url = format!("tcp://{addr}");
    Command::new(tansu)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}
