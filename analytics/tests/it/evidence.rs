//! Checkpoints in the auditor's witness (issue 12), attacked as the platform's operator would:
//! every tampering with the warehouse, the alerts, the run records or the suppressions after a
//! checkpoint is named by `verify --checkpoints`; so are attacks on the witness itself; a TSA
//! that is down delays only the token; and a third party checks a checkpoint with `openssl`
//! alone. The TSA is `openssl ts -reply` behind HTTP on 127.0.0.1 (scripts/tsa_server.py).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::*;
use crate::verify::{copy_dir, drop_first_row, rewrite_add};

/// One demo run shared by the tests of this module: (its warehouse, which is also its state
/// directory). Each test copies it before changing anything.
fn demo() -> &'static Path {
    static DEMO: OnceLock<PathBuf> = OnceLock::new();
    DEMO.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        crate::verify::demo_warehouse(&dir.join("demo"))
    })
}

fn flowaudit(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(bin())
        .args(args)
        .env_remove("FLOWAUDIT_CONFIG")
        .env("FLOWAUDIT_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// An Ed25519 key pair made by openssl, as an auditor would: (private, public) PEM paths.
fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, public) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.pub.pem")),
    );
    let key_s = key.to_str().unwrap();
    assert!(openssl(dir, &["genpkey", "-algorithm", "ed25519", "-out", key_s]).0);
    assert!(
        openssl(
            dir,
            &[
                "pkey",
                "-in",
                key_s,
                "-pubout",
                "-out",
                public.to_str().unwrap()
            ]
        )
        .0
    );
    (key, public)
}

/// The local TSA: `openssl ts -reply` behind HTTP, with its own CA.
struct Tsa {
    child: std::process::Child,
    url: String,
    ca: PathBuf,
}

impl Tsa {
    fn start(dir: &Path) -> Self {
        let mut child = Command::new("python3")
            .arg(repo("scripts/tsa_server.py"))
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tsa_server.py");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("tsa_server.py said {line:?}"));
        Tsa {
            child,
            url: format!("http://127.0.0.1:{port}/"),
            ca: dir.join("ca.pem"),
        }
    }
}

impl Drop for Tsa {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything a scenario needs: a copy of the demo's warehouse and policy, the auditor's keys, a
/// witness, and the TSA.
struct Scene {
    dir: tempfile::TempDir,
    wh: PathBuf,
    policy: PathBuf,
    key: PathBuf,
    public: PathBuf,
    tsa: Tsa,
}

impl Scene {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let wh = dir.path().join("warehouse");
        copy_dir(demo(), &wh);
        let policy = dir.path().join("policy");
        copy_dir(&repo("fixtures/policy"), &policy);
        let (key, public) = keypair(dir.path(), "auditor");
        let tsa = Tsa::start(&dir.path().join("tsa"));
        Scene {
            dir,
            wh,
            policy,
            key,
            public,
            tsa,
        }
    }

    fn witness(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `flowaudit checkpoint` of this warehouse into `witness`, signed with `key`.
    fn checkpoint(&self, witness: &Path, key: &Path, tsa_url: &str) -> (bool, String) {
        flowaudit(&[
            os("checkpoint"),
            os("--warehouse"),
            self.wh.as_os_str(),
            os("--witness"),
            witness.as_os_str(),
            os("--sign-key"),
            key.as_os_str(),
            os("--tsa-url"),
            os(tsa_url),
            os("--tsa-attempts"),
            os("2"),
            os("--policy"),
            self.policy.as_os_str(),
        ])
    }

    fn checkpoint_ok(&self, witness: &Path) -> String {
        let (ok, out) = self.checkpoint(witness, &self.key, &self.tsa.url);
        assert!(ok, "{out}");
        out
    }

    /// `verify --checkpoints` of `wh` (this scene's warehouse or a changed copy).
    fn verify(&self, wh: &Path, policy: &Path, witness: &Path) -> (bool, String) {
        flowaudit(&[
            os("verify"),
            os("--warehouse"),
            wh.as_os_str(),
            os("--checkpoints"),
            witness.as_os_str(),
            os("--public-key"),
            self.public.as_os_str(),
            os("--tsa-ca"),
            self.tsa.ca.as_os_str(),
            os("--policy"),
            policy.as_os_str(),
        ])
    }

    /// A copy of the warehouse and policy to tamper with.
    fn copy(&self, name: &str) -> (PathBuf, PathBuf) {
        let (wh, policy) = (
            self.dir.path().join(format!("{name}-wh")),
            self.dir.path().join(format!("{name}-policy")),
        );
        copy_dir(&self.wh, &wh);
        copy_dir(&self.policy, &policy);
        (wh, policy)
    }
}

fn expect_caught(got: (bool, String), needles: &[&str]) {
    let (ok, out) = got;
    assert!(!ok, "verify passed a tampered warehouse:\n{out}");
    for n in needles {
        assert!(out.contains(n), "no {n:?} in:\n{out}");
    }
}

/// The commit files of `table`'s log, by version.
fn commits(wh: &Path, table: &str) -> Vec<(i64, PathBuf)> {
    let mut v: Vec<(i64, PathBuf)> = std::fs::read_dir(wh.join(table).join("_delta_log"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| (p.file_stem().unwrap().to_str().unwrap().parse().unwrap(), p))
        .collect();
    v.sort();
    v
}

/// The paths (relative to the table) that the commit file `log` adds.
fn adds(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["add"]["path"].as_str().map(str::to_string)
        })
        .collect()
}

/// The last data file added to `table`, relative to the warehouse.
fn last_file(wh: &Path, table: &str) -> String {
    let (_, log) = commits(wh, table)
        .into_iter()
        .rev()
        .find(|(_, p)| !adds(p).is_empty())
        .expect("a commit with files");
    format!("{table}/{}", adds(&log)[0])
}

#[test]
fn checkpoints_catch_truncation_a_deleted_row_and_a_replaced_file_that_verify_alone_passes() {
    let s = Scene::new();
    let witness = s.witness("witness");
    let out = s.checkpoint_ok(&witness);
    assert!(out.contains("checkpoint 1 written"), "{out}");
    assert!(out.contains("time-stamped: checkpoint(s) [1]"), "{out}");
    let (ok, out) = s.verify(&s.wh, &s.policy, &witness);
    assert!(ok, "{out}");
    assert!(
        out.contains("exposure: the last checkpoint is 1 (") && out.contains("time-stamped"),
        "{out}"
    );
    // Without the policy folder, verify says what it could not check.
    let (ok, out) = flowaudit(&[
        os("verify"),
        os("--warehouse"),
        s.wh.as_os_str(),
        os("--checkpoints"),
        witness.as_os_str(),
        os("--public-key"),
        s.public.as_os_str(),
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("note: checkpoint 1 covers suppressions.csv: pass --policy to check it")
            && out.contains("note: timestamp tokens not checked: pass --tsa-ca"),
        "{out}"
    );

    // Truncation: the last commits of flows and the files they added are deleted.
    let (wh, policy) = s.copy("truncated");
    let logs = commits(&wh, "flows");
    assert!(
        logs.len() >= 3,
        "the demo's flows log is too short: {logs:?}"
    );
    let lost = logs[logs.len() - 2..]
        .iter()
        .flat_map(|(_, l)| adds(l))
        .next()
        .expect("the lost commits added a file");
    for (_, log) in &logs[logs.len() - 2..] {
        for a in adds(log) {
            std::fs::remove_file(wh.join("flows").join(a)).unwrap();
        }
        std::fs::remove_file(log).unwrap();
    }
    let last = logs[logs.len() - 1].0;
    expect_caught(
        s.verify(&wh, &policy, &witness),
        &[
            &format!(
                "flows: truncated: its log ends at version {}, checkpoint 1 (",
                last - 2
            ),
            // Each file the lost commits added is named.
            &format!("flows: file flows/{lost}, recorded by checkpoint 1, is no longer in the log"),
        ],
    );

    // One row deleted from a file, and the log rewritten around it (hash, size, rows).
    let (wh, policy) = s.copy("row");
    let rel = last_file(&wh, "flows");
    let (sha, size, rows) = drop_first_row(&wh.join(&rel));
    rewrite_add(&wh, &rel, |add| {
        add["size"] = size.into();
        let mut stats: serde_json::Value =
            serde_json::from_str(add["stats"].as_str().unwrap()).unwrap();
        stats["numRecords"] = rows.into();
        add["stats"] = stats.to_string().into();
        add["tags"]["flowaudit.sha256"] = sha.clone().into();
        add["tags"]["flowaudit.rows"] = rows.to_string().into();
    });
    expect_caught(
        s.verify(&wh, &policy, &witness),
        &[
            "flows: rewritten: version ",
            "checkpoint 1 (",
            "chain hash",
            "a commit of versions 0..=",
            // The commit and the file are named.
            "was changed: checkpoint 1 recorded its file's SHA-256",
            &format!("flows: file {rel} was replaced: checkpoint 1 recorded SHA-256 "),
        ],
    );

    // A file replaced by one with the same rows and other bytes, its checksum recomputed.
    let (wh, policy) = s.copy("replaced");
    let rel = last_file(&wh, "gateway_events");
    let path = wh.join(&rel);
    {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let f = std::fs::File::open(&path).unwrap();
        let r = ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
        let schema = r.schema().clone();
        let batches: Vec<_> = r.build().unwrap().map(|b| b.unwrap()).collect();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            schema,
            None,
        )
        .unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.close().unwrap();
    }
    let sha = flowaudit_ingest::writer::sha256_file(&path).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    rewrite_add(&wh, &rel, |add| {
        add["size"] = size.into();
        add["tags"]["flowaudit.sha256"] = sha.clone().into();
    });
    expect_caught(
        s.verify(&wh, &policy, &witness),
        &[
            "gateway_events: rewritten: version ",
            &format!("gateway_events: file {rel} was replaced: checkpoint 1 recorded SHA-256 "),
        ],
    );
}

#[test]
fn checkpoints_catch_an_edited_or_dropped_alert_run_record_or_suppression() {
    let s = Scene::new();
    let witness = s.witness("witness");
    s.checkpoint_ok(&witness);
    let alerts = |wh: &Path| wh.join("_alerts").join("alerts.jsonl");
    let runs = |wh: &Path| wh.join("_runs").join("runs.jsonl");
    let lines = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert!(lines(&alerts(&s.wh)).len() >= 2 && !lines(&runs(&s.wh)).is_empty());

    // An alert's severity lowered in the outbox.
    let (wh, policy) = s.copy("edited-alert");
    let mut l = lines(&alerts(&wh));
    let mut first: serde_json::Value = serde_json::from_str(&l[0]).unwrap();
    first["severity"] = "low".into();
    l[0] = serde_json::to_string(&first).unwrap();
    std::fs::write(alerts(&wh), l.join("\n") + "\n").unwrap();
    expect_caught(
        s.verify(&wh, &policy, &witness),
        &["alerts.jsonl: an alert among its first", "checkpoint 1 ("],
    );

    // The last alert dropped.
    let (wh, policy) = s.copy("dropped-alert");
    let l = lines(&alerts(&wh));
    std::fs::write(alerts(&wh), l[..l.len() - 1].join("\n") + "\n").unwrap();
    expect_caught(
        s.verify(&wh, &policy, &witness),
        &[&format!(
            "alerts.jsonl: 1 alert(s) dropped: it holds {} lines, checkpoint 1 (",
            l.len() - 1
        )],
    );

    // A run record dropped.
    let (wh, policy) = s.copy("dropped-run");
    std::fs::write(runs(&wh), "").unwrap();
    expect_caught(
        s.verify(&wh, &policy, &witness),
        &["runs.jsonl: ", "run record(s) dropped"],
    );

    // A suppression slipped into the policy after the checkpoint.
    let (wh, policy) = s.copy("suppression");
    let added = "gateway_bypass,dst_country=unknown,looks fine,mallory,2099-01-01";
    let mut text = std::fs::read_to_string(policy.join("suppressions.csv")).unwrap();
    text.push_str(added);
    text.push('\n');
    std::fs::write(policy.join("suppressions.csv"), text).unwrap();
    expect_caught(
        s.verify(&wh, &policy, &witness),
        &[
            "suppressions.csv: changed since checkpoint 1 recorded it: ",
            &format!("added \"{added}\""),
        ],
    );
}

#[test]
fn forged_reordered_or_deleted_checkpoints_are_caught_a_down_tsa_delays_only_the_token_and_openssl_alone_checks_one(
) {
    let s = Scene::new();

    // The TSA down: the checkpoint is written and signed, its token left for the next run.
    let witness = s.witness("witness");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", l.local_addr().unwrap())
    };
    let (ok, out) = s.checkpoint(&witness, &s.key, &dead);
    assert!(ok, "{out}");
    assert!(
        out.contains("not yet time-stamped: checkpoint 1: TSA "),
        "{out}"
    );
    let (ok, out) = s.verify(&s.wh, &s.policy, &witness);
    assert!(ok, "{out}");
    assert!(out.contains("checkpoint 1 has no timestamp token"), "{out}");
    // The TSA back: the next checkpoint stamps both.
    let out = s.checkpoint_ok(&witness);
    assert!(out.contains("time-stamped: checkpoint(s) [1, 2]"), "{out}");
    let (ok, out) = s.verify(&s.wh, &s.policy, &witness);
    assert!(ok, "{out}");
    assert!(!out.contains("no timestamp token"), "{out}");
    s.checkpoint_ok(&witness);

    // A regulator with openssl alone: the Ed25519 signature, then the token.
    let cp = witness.join("checkpoints");
    let pub_pem = s.public.to_str().unwrap();
    let ca = s.tsa.ca.to_str().unwrap();
    let signature_ok = |data: &str| {
        let sig = "000000000002.sig";
        let args = ["pkeyutl", "-verify", "-pubin", "-inkey", pub_pem, "-rawin"];
        openssl(&cp, &[&args[..], &["-in", data, "-sigfile", sig]].concat())
    };
    let token_ok = |data: &str| {
        openssl(
            &cp,
            &[
                "ts",
                "-verify",
                "-in",
                "000000000002.tsr",
                "-data",
                data,
                "-CAfile",
                ca,
            ],
        )
    };
    let (ok, out) = signature_ok("000000000002.json");
    assert!(
        ok && out.contains("Signature Verified Successfully"),
        "{out}"
    );
    let (ok, out) = token_ok("000000000002.json");
    assert!(ok && out.contains("Verification: OK"), "{out}");
    // ... and both refuse an edited statement.
    let mut edited = std::fs::read(cp.join("000000000002.json")).unwrap();
    let i = edited.len() / 2;
    edited[i] ^= 1;
    let edited_path = s.dir.path().join("edited.json");
    std::fs::write(&edited_path, &edited).unwrap();
    assert!(!signature_ok(edited_path.to_str().unwrap()).0);
    assert!(!token_ok(edited_path.to_str().unwrap()).0);

    // A checkpoint signed with another key.
    let forged = s.witness("forged");
    copy_dir(&witness, &forged);
    let (other, _) = keypair(s.dir.path(), "mallory");
    let (ok, out) = s.checkpoint(&forged, &other, &s.tsa.url);
    assert!(ok, "{out}");
    expect_caught(
        s.verify(&s.wh, &s.policy, &forged),
        &["checkpoint 4: the signature does not verify with the auditor's public key"],
    );

    // A checkpoint whose token is another checkpoint's.
    let swapped = s.witness("swapped");
    copy_dir(&witness, &swapped);
    let c = swapped.join("checkpoints");
    std::fs::copy(c.join("000000000001.tsr"), c.join("000000000003.tsr")).unwrap();
    expect_caught(
        s.verify(&s.wh, &s.policy, &swapped),
        &["checkpoint 3: timestamp token: it is a valid token over other data"],
    );

    // A checkpoint deleted from the middle of the witness.
    let gap = s.witness("gap");
    copy_dir(&witness, &gap);
    for ext in ["json", "sig", "tsr"] {
        std::fs::remove_file(gap.join("checkpoints").join(format!("000000000002.{ext}"))).unwrap();
    }
    expect_caught(
        s.verify(&s.wh, &s.policy, &gap),
        &[
            "checkpoint 2..=2 missing from the witness: 1 is followed by 3",
            "checkpoint 3: it does not follow checkpoint 1",
        ],
    );

    // A checkpointer stopped between its two writes leaves a signature without its statement:
    // the next checkpoint follows the one before it, and verify notes the gap.
    let crashed = s.witness("crashed");
    copy_dir(&witness, &crashed);
    std::fs::write(crashed.join("checkpoints/000000000004.sig"), [0u8; 64]).unwrap();
    assert!(s.checkpoint_ok(&crashed).contains("checkpoint 5 written"));
    let (ok, out) = s.verify(&s.wh, &s.policy, &crashed);
    assert!(ok, "{out}");
    assert!(
        out.contains("note: checkpoint 4: a signature without its statement"),
        "{out}"
    );
    // A statement someone else put in the witness is neither signed nor chained to.
    let injected = s.witness("injected");
    copy_dir(&witness, &injected);
    let c = injected.join("checkpoints");
    std::fs::copy(c.join("000000000003.json"), c.join("000000000004.json")).unwrap();
    assert!(s.checkpoint_ok(&injected).contains("checkpoint 5 written"));
    assert!(!c.join("000000000004.sig").exists());
    let got = s.verify(&s.wh, &s.policy, &injected);
    assert!(
        !got.1.contains("checkpoint 5: it does not follow"),
        "{}",
        got.1
    );
    expect_caught(got, &["checkpoint 4: no signature in the witness"]);

    // A witness inside the warehouse is refused: the platform can write there.
    let (ok, out) = s.checkpoint(&s.wh.join("witness"), &s.key, &s.tsa.url);
    assert!(!ok && out.contains("is inside the warehouse"), "{out}");
}

/// `serve` with `[checkpoint] interval` writes checkpoints on their own thread: with the TSA
/// down they are written and signed while ingest alongside keeps committing; once the TSA is up
/// (on the same address) every earlier statement gets its token; the witness then verifies.
#[test]
fn serve_checkpoints_while_ingesting_and_a_tsa_that_comes_back_stamps_what_it_missed() {
    let s = Setup::new(1);
    let dir = s.dir.path();
    let (key, public) = keypair(dir, "auditor");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let witness = dir.join("witness");
    let cfg = dir.join("flowaudit.toml");
    std::fs::write(
        &cfg,
        format!(
            "brokers = \"{}\"\n[ingest]\ngroup = \"{}\"\ngateway_topic = \"{}\"\nflow_topic = \"{}\"\n\
             flush_interval_ms = 500\n\
             [checkpoint]\nwitness = \"{}\"\nsign_key = \"{}\"\ntsa_url = \"http://127.0.0.1:{port}/\"\ninterval = \"1s\"\n",
            brokers(),
            s.group,
            s.gateway_topic,
            s.flow_topic,
            witness.display(),
            key.display()
        ),
    )
    .unwrap();
    let mut c = Command::new(bin());
    c.arg("--config")
        .arg(&cfg)
        .args(["serve", "--ingest", "--no-scheduler", "--warehouse"])
        .arg(s.warehouse())
        .arg("--policy")
        .arg(repo("fixtures/policy"))
        .args(["--metrics", "127.0.0.1:0"])
        .env("FLOWAUDIT_LOG", "info,librdkafka=warn")
        .env_remove("FLOWAUDIT_CONFIG");
    let mut server = Running::spawn(c);
    let metrics_at = crate::ops::endpoint(&mut server);
    let msgs: Vec<_> = (0..200).map(crate::compact::event).collect();
    s.produce_gateway(&msgs);
    let statements = |ext: &str| -> usize {
        std::fs::read_dir(witness.join("checkpoints"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == ext))
                    .count()
            })
            .unwrap_or(0)
    };
    // Ingest commits everything while the TSA is down; checkpoints go on, unstamped.
    let t = std::time::Instant::now();
    while s.rows("gateway_events") + s.rows("quarantine") < 200 || statements("json") < 2 {
        assert!(t.elapsed() < Duration::from_secs(90), "{}", server.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(statements("tsr"), 0, "{}", server.log());
    assert!(
        server.log().contains("no timestamp token yet"),
        "{}",
        server.log()
    );
    // The operator sees checkpoints written (and when) while the TSA fails.
    let m = crate::ops::Scrape::of(&metrics_at);
    assert!(
        m.sum("flowaudit_checkpoints_written_total", &[]) >= 2.0,
        "{:?}",
        m.samples
    );
    assert!(
        m.sum("flowaudit_tsa_failures_total", &[]) >= 2.0,
        "{:?}",
        m.samples
    );
    let last = m.sum("flowaudit_checkpoint_last_success_timestamp_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(now - last < 60.0 && now >= last - 1.0, "{last} vs {now}");
    // The TSA comes up at the configured address: every statement gets its token.
    let tsa_dir = dir.join("tsa");
    let mut tsa = Command::new("python3")
        .arg(repo("scripts/tsa_server.py"))
        .arg(&tsa_dir)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    loop {
        let (j, r) = (statements("json"), statements("tsr"));
        if j >= 3 && r == j {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{j} statements, {r} tokens\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server.signal(libc::SIGTERM);
    let ok = server.wait(Duration::from_secs(30)).success();
    let _ = tsa.kill();
    let _ = tsa.wait();
    assert!(ok, "{}", server.log());
    let (ok, out) = flowaudit(&[
        os("verify"),
        os("--warehouse"),
        s.warehouse().as_os_str(),
        os("--checkpoints"),
        witness.as_os_str(),
        os("--public-key"),
        public.as_os_str(),
        os("--tsa-ca"),
        tsa_dir.join("ca.pem").as_os_str(),
        os("--policy"),
        repo("fixtures/policy").as_os_str(),
    ]);
    assert!(ok, "{out}");
    assert!(!out.contains("no timestamp token"), "{out}");
}
