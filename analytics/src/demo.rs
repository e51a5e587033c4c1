//! `flowaudit demo`: the whole pipeline on an embedded broker (librdkafka's in-process mock
//! cluster), so a new user sees it work with one command. Generates a day with planted
//! violations and some malformed messages, produces it, ingests it exactly once, and prints what
//! was written per table, what was quarantined and why, and the Delta log heads; then runs the
//! rule pack over the day, delivers the alerts to the `audit.alerts` topic and a JSON-lines
//! file, prints them grouped by rule, and checks them against the planted violations; last, it
//! writes the auditor's report of the day.
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use flowaudit_ingest::config::IngestSettings;
use flowaudit_ingest::generate::{self, GenerateOptions};
use flowaudit_ingest::produce;
use flowaudit_ingest::warehouse::{read_log_blocking, Location};
use rdkafka::mocking::MockCluster;

use crate::alerts::AlertStore;
use crate::catalog::Catalog;
use crate::cli::{print_run, print_summary, DemoArgs};
use crate::sinks::{deliver_all, Sink};
use crate::site::Site;

const GATEWAY_TOPIC: &str = "gateway.access";
const FLOW_TOPIC: &str = "network.flows";
const ALERT_TOPIC: &str = "audit.alerts";
const PARTITIONS: i32 = 6;

/// Run the demo.
pub fn run(a: &DemoArgs) -> anyhow::Result<()> {
    let input = a.out.join("input");
    let site = demo_site(a)?;
    let state = site.state_dir().map_err(anyhow::Error::msg)?.to_path_buf();
    println!("== flowaudit demo: {} (seed {}) ==", a.date, a.seed);

    // The mock cluster keeps at most 5 MiB per partition: the demo's volume (lz4-compressed) stays well below.
    let cluster = MockCluster::new(1).context("starting the embedded Kafka broker")?;
    let brokers = cluster.bootstrap_servers();
    for t in [GATEWAY_TOPIC, FLOW_TOPIC, ALERT_TOPIC] {
        cluster
            .create_topic(t, PARTITIONS, 1)
            .with_context(|| format!("creating topic {t}"))?;
    }
    println!("embedded broker at {brokers}, topics {GATEWAY_TOPIC} and {FLOW_TOPIC} ({PARTITIONS} partitions each)");

    let opts = GenerateOptions {
        date: a.date,
        seed: a.seed,
        policy: a.policy.clone(),
        geoip_csv: a.geoip.clone(),
        events: 4000,
        flows: 30000,
        malformed: 24,
        flow_format: None,
    };
    let gen = generate::generate(&opts).context("generating traffic")?;
    generate::write_jsonl(&gen, &input)?;
    let produced = produce::produce(&brokers, GATEWAY_TOPIC, &gen.gateway)?
        + produce::produce(&brokers, FLOW_TOPIC, &gen.flows)?;
    println!(
        "generated and produced {} gateway events and {} flows ({} of them malformed on purpose); {} planted violations in {}",
        gen.gateway.len(),
        gen.flows.len(),
        gen.planted.malformed_gateway + gen.planted.malformed_flows,
        gen.planted.violations.len(),
        input.join("planted.json").display()
    );

    let cfg = IngestSettings {
        brokers: Some(brokers.clone()),
        group: Some("flowaudit-demo".into()),
        warehouse: Some(site.tables.to_string().into()),
        policy: Some(a.policy.clone()),
        geoip: Some(a.geoip.clone()),
        until_caught_up: Some(true),
        session_timeout_ms: Some(6000),
        idle_ms: Some(2000),
        flush_interval_ms: Some(5000),
        ..Default::default()
    }
    .resolve()?;
    let summary = flowaudit_ingest::consumer::run(&cfg, Arc::new(AtomicBool::new(false)))
        .context("ingest")?;
    print_summary(&summary);
    if !summary.reconciles() || summary.consumed != produced {
        bail!("counts do not reconcile: produced {produced}, consumed {}, written {} + quarantined {}", summary.consumed, summary.written_gateway + summary.written_flows, summary.quarantined);
    }

    let log = read_log_blocking(&site.tables)?;
    let mut per_table: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for e in &log.files {
        let t = per_table.entry(e.table.as_str()).or_default();
        t.0 += 1;
        t.1 += e.rows;
        t.2 += e.bytes;
    }
    println!("\nwarehouse {}:", site.tables);
    println!(
        "  {:<16} {:>6} {:>10} {:>12}",
        "table", "files", "rows", "bytes"
    );
    for (t, (files, rows, bytes)) in &per_table {
        println!("  {t:<16} {files:>6} {rows:>10} {bytes:>12}");
    }
    println!(
        "Delta logs: {} commits; heads {}",
        log.commits.len(),
        log.heads_summary()
    );
    println!("\nplanted violations (for the rules to find):");
    for p in &gen.planted.violations {
        println!(
            "  {} {:<32} {:<6} {}",
            p.id, p.kind, p.severity, p.description
        );
    }
    println!(
        "\nreconciled: produced {produced} = consumed {} = written {} + quarantined {}",
        summary.consumed,
        summary.written_gateway + summary.written_flows,
        summary.quarantined
    );

    // Rules over the day, alerts to Kafka and a file.
    let alerts_file = a.out.join("alerts.jsonl");
    std::fs::remove_file(&alerts_file).ok();
    let sinks = vec![
        Sink::Kafka {
            brokers: brokers.clone(),
            topic: ALERT_TOPIC.into(),
            properties: Vec::new(),
            timeout: std::time::Duration::from_secs(30),
        },
        Sink::File(alerts_file.clone()),
    ];
    let rules = crate::rules::load_rules(&a.rules).context("loading the rules")?;
    let rt = tokio::runtime::Runtime::new()?;
    let catalog = rt
        .block_on(Catalog::open_at(&site, &a.policy, Some(&a.geoip)))
        .context("opening the catalog")?;
    let suppressions = crate::alerts::load_suppressions(&a.policy.join("suppressions.csv"))?;
    let mut store = AlertStore::open(&state)?;
    let from = a.date.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    let res = rt.block_on(crate::runner::run_window(
        &catalog,
        &site,
        &rules,
        &mut store,
        &suppressions,
        crate::runner::Window {
            from,
            to: from + chrono::Duration::days(1),
            trigger: "manual",
            evaluate: crate::runner::Evaluate::WhatIsComplete,
            lateness: crate::rules::DEFAULT_LATENESS,
        },
    ))?;
    println!("\n== rules over {} ==", a.date);
    print_run(&res);
    for d in deliver_all(&store, &sinks, 0) {
        match d.error {
            None => println!("  delivered {} alert(s) to {}", d.delivered, d.sink),
            Some(e) => bail!("alert delivery failed: {e}"),
        }
    }
    let cov = crate::planted::check(&serde_json::to_value(&gen.planted)?, &res.raised);
    println!(
        "\nplanted violations found: {} of {}; unexpected high-severity alerts: {}",
        cov.found.len(),
        cov.found.len() + cov.missed.len(),
        cov.unexpected_high.len()
    );
    for (id, kind, fp) in &cov.found {
        println!("  {id} {kind:<32} found by alert {}", &fp[..12]);
    }
    for (id, kind) in &cov.missed {
        println!("  {id} {kind:<32} NOT FOUND");
    }
    for x in &cov.unexpected_high {
        println!("  unexpected: {} {}", x.rule_id, x.summary);
    }
    if let Some(f) = res.record.failed_rules().first() {
        bail!(
            "rule {} failed: {}",
            f.id,
            f.error.as_deref().unwrap_or_default()
        );
    }
    if !cov.complete() {
        bail!("the rules did not find exactly the planted violations");
    }
    println!(
        "alerts: {} (JSON lines) and topic {ALERT_TOPIC}; run records: {}",
        alerts_file.display(),
        state.join("_runs/runs.jsonl").display()
    );

    // A checkpoint of what was ingested and raised, signed with a key made for the demo (an
    // auditor keeps theirs, and the witness, where the platform cannot reach), without a TSA.
    let witness = a.out.join("witness");
    if witness.exists() {
        std::fs::remove_dir_all(&witness)
            .with_context(|| format!("removing the previous demo's {}", witness.display()))?;
    }
    let (key, public) = demo_keys(&a.out)?;
    let written = rt
        .block_on(crate::checkpoint::write(&crate::checkpoint::Settings {
            warehouse: site.tables.clone(),
            witness: Location::Local(witness.clone()),
            key,
            tsa_url: None,
            tsa_attempts: 1,
            tsa_backoff: std::time::Duration::ZERO,
            state: crate::checkpoint::StatePaths {
                state_dir: Some(state.clone()),
                policy: Some(a.policy.clone()),
            },
        }))
        .context("writing the demo's checkpoint")?;
    println!(
        "checkpoint {} in {} (signed with {}; no TSA in the demo); check it with:\n  flowaudit verify --warehouse {} --state-dir {} --policy {} --checkpoints {} --public-key {}",
        written.seq,
        witness.display(),
        a.out.join("auditor.pem").display(),
        site.tables,
        state.display(),
        a.policy.display(),
        witness.display(),
        public.display()
    );

    // The auditor's report of the day.
    let report_dir = a.out.join("report");
    let report = rt
        .block_on(crate::report::build(&crate::report::ReportOptions {
            site: site.clone(),
            policy: a.policy.clone(),
            geoip: Some(a.geoip.clone()),
            rules_dir: a.rules.clone(),
            from: a.date,
            to: a.date,
            reproducible: true,
            previous: None,
            witness: Some(Location::Local(witness)),
        }))
        .map_err(anyhow::Error::msg)
        .context("building the report")?;
    crate::report::write(&report, &report_dir).map_err(anyhow::Error::msg)?;
    println!(
        "report: {} ({})",
        report_dir.join("report.html").display(),
        report["summary"]["verdict"].as_str().unwrap_or_default()
    );
    let incomplete: Vec<&str> = report["evaluation"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["complete"] != true)
        .filter_map(|r| r["statement"].as_str())
        .collect();
    if incomplete.is_empty() {
        println!("evaluation coverage: every record committed for {} was evaluated by every rule on complete data", a.date);
    } else {
        println!("evaluation coverage: incomplete");
        for s in incomplete {
            println!("  {s}");
        }
    }
    drop(cluster);
    Ok(())
}

/// The demo auditor's key pair, `<out>/auditor.pem` and `<out>/auditor.pub.pem`, made on first
/// use; the private key and its public half's path.
fn demo_keys(
    out: &std::path::Path,
) -> anyhow::Result<(ed25519_dalek::SigningKey, std::path::PathBuf)> {
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey, EncodePublicKey};
    let (key, public) = (out.join("auditor.pem"), out.join("auditor.pub.pem"));
    if !key.is_file() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let pem = sk
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding the demo key: {e}"))?;
        std::fs::write(&key, pem.as_bytes())
            .with_context(|| format!("writing {}", key.display()))?;
    }
    let sk = crate::signing::load_signing_key(&key).map_err(anyhow::Error::msg)?;
    let pem = sk
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the demo public key: {e}"))?;
    std::fs::write(&public, pem).with_context(|| format!("writing {}", public.display()))?;
    Ok((sk, public))
}

/// The demo's warehouse: `<out>/warehouse` (replaced), or the `--warehouse` S3 prefix, which
/// must hold no tables yet (the embedded broker's offsets start again at 0 every run), with the
/// state in `<out>/state` (replaced).
fn demo_site(a: &DemoArgs) -> anyhow::Result<Site> {
    let replace = |dir: &std::path::Path| -> anyhow::Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("removing the previous demo's {}", dir.display()))?;
        }
        Ok(())
    };
    match &a.warehouse {
        None => {
            let dir = a.out.join("warehouse");
            replace(&dir)?;
            Ok(Site::local(&dir))
        }
        Some(w) => {
            let location = Location::parse(w)?;
            if location.local().is_some() {
                bail!("demo --warehouse takes s3://BUCKET/PREFIX (the local warehouse is <out>/warehouse)");
            }
            let log =
                read_log_blocking(&location).with_context(|| format!("reading {location}"))?;
            if !log.commits.is_empty() {
                bail!(
                    "{location} already holds Delta tables ({} commits): the demo needs an empty prefix",
                    log.commits.len()
                );
            }
            let state = a.out.join("state");
            replace(&state)?;
            Site::new(location, Some(state)).map_err(anyhow::Error::msg)
        }
    }
}
