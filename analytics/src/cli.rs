//! The subcommands. Every flag has an environment variable (shown in `--help`) and, for the
//! settings a deployment keeps, a key in `flowaudit.toml`.
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};
use flowaudit_ingest::config::IngestSettings;
use flowaudit_ingest::consumer::IngestSummary;
use flowaudit_ingest::generate::{self, GenerateOptions};
use flowaudit_ingest::produce;

use crate::config::FileConfig;

/// flowaudit: an independent auditor's data-flow monitoring pipeline.
#[derive(Debug, Parser)]
#[command(name = "flowaudit", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (TOML); flags and environment variables override it.
    #[arg(long, global = true, env = "FLOWAUDIT_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a realistic, seeded day of gateway events and flows with planted violations.
    Generate(GenerateArgs),
    /// Consume gateway events and flows from Kafka into exactly-once Parquet.
    Ingest(IngestArgs),
    /// Run the whole pipeline on an embedded broker: generate, ingest, summarise.
    Demo(DemoArgs),
    /// Convert a JSON-lines file to one Parquet file through ingest's decoders (no Kafka).
    Convert(ConvertArgs),
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// JSON lines: one gateway event or flow record per line.
    #[arg(long)]
    pub input: PathBuf,
    /// What the lines are.
    #[arg(long, value_parser = ["gateway_events", "flows"])]
    pub table: String,
    /// Parquet file to write (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Policy folder (networks.toml gives the zones).
    #[arg(long, env = "FLOWAUDIT_POLICY")]
    pub policy: PathBuf,
    /// GeoIP database (.mmdb or CSV ranges).
    #[arg(long, env = "FLOWAUDIT_GEOIP")]
    pub geoip: Option<PathBuf>,
    /// zstd level, 1–22.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=22))]
    pub zstd_level: i32,
    /// Decoding threads (default: the number of cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The UTC day to generate (YYYY-MM-DD).
    #[arg(long, env = "FLOWAUDIT_DATE")]
    pub date: NaiveDate,
    /// Random seed: the same seed and date give the same traffic, byte for byte (default 7). [config: generate.seed]
    #[arg(long, env = "FLOWAUDIT_SEED")]
    pub seed: Option<u64>,
    /// Write gateway.jsonl, flows.jsonl and planted.json into this directory.
    #[arg(long, env = "FLOWAUDIT_GENERATE_OUT")]
    pub out: Option<PathBuf>,
    /// Produce the day to Kafka at HOST:PORT (instead of, or as well as, --out). [config: brokers]
    #[arg(long, env = "FLOWAUDIT_BROKERS")]
    pub brokers: Option<String>,
    /// Policy folder the world is drawn from (default fixtures/policy). [config: policy]
    #[arg(long, env = "FLOWAUDIT_POLICY")]
    pub policy: Option<PathBuf>,
    /// GeoIP CSV (start_ip,end_ip,country) that external addresses are drawn from
    /// (default fixtures/geoip/ranges.csv). [config: generate.geoip_csv]
    #[arg(long = "geoip", env = "FLOWAUDIT_GEOIP_CSV")]
    pub geoip_csv: Option<PathBuf>,
    /// Approximate number of gateway events (default 5000). [config: generate.events]
    #[arg(long, env = "FLOWAUDIT_EVENTS")]
    pub events: Option<usize>,
    /// Number of flow records (default 40000). [config: generate.flows]
    #[arg(long, env = "FLOWAUDIT_FLOWS")]
    pub flows: Option<usize>,
    /// Malformed messages to mix in; they go to the quarantine (default 0). [config: generate.malformed]
    #[arg(long, env = "FLOWAUDIT_MALFORMED")]
    pub malformed: Option<usize>,
    /// Encode every flow in one format instead of each exporter's own. [config: generate.flow_format]
    #[arg(long, env = "FLOWAUDIT_FLOW_FORMAT", value_parser = ["flowaudit", "goflow2", "zeek"])]
    pub flow_format: Option<String>,
    /// Topic for gateway events (default gateway.access). [config: ingest.gateway_topic]
    #[arg(long, env = "FLOWAUDIT_GATEWAY_TOPIC")]
    pub gateway_topic: Option<String>,
    /// Topic for flow records (default network.flows). [config: ingest.flow_topic]
    #[arg(long, env = "FLOWAUDIT_FLOW_TOPIC")]
    pub flow_topic: Option<String>,
    /// Partitions of each topic if it has to be created (default 4). [config: generate.partitions]
    #[arg(long, env = "FLOWAUDIT_PARTITIONS")]
    pub partitions: Option<i32>,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT…]. [config: brokers]
    #[arg(long, env = "FLOWAUDIT_BROKERS")]
    pub brokers: Option<String>,
    /// Warehouse directory for the Parquet tables and the manifest. [config: warehouse]
    #[arg(long, env = "FLOWAUDIT_WAREHOUSE")]
    pub warehouse: Option<PathBuf>,
    /// Policy folder; ingest reads networks.toml from it. [config: policy]
    #[arg(long, env = "FLOWAUDIT_POLICY")]
    pub policy: Option<PathBuf>,
    /// GeoIP database: .mmdb (MaxMind DB) or CSV start_ip,end_ip,country[,asn]. [config: geoip]
    #[arg(long, env = "FLOWAUDIT_GEOIP")]
    pub geoip: Option<PathBuf>,
    /// Consumer group; processes in one group split the partitions. [config: ingest.group]
    #[arg(long, env = "FLOWAUDIT_GROUP")]
    pub group: Option<String>,
    /// Ingest what the topics hold, commit and exit 0. [config: ingest.until_caught_up]
    #[arg(long, env = "FLOWAUDIT_UNTIL_CAUGHT_UP")]
    pub until_caught_up: bool,
    /// Topic of gateway access events (default gateway.access). [config: ingest.gateway_topic]
    #[arg(long, env = "FLOWAUDIT_GATEWAY_TOPIC")]
    pub gateway_topic: Option<String>,
    /// Topic of network flow records (default network.flows). [config: ingest.flow_topic]
    #[arg(long, env = "FLOWAUDIT_FLOW_TOPIC")]
    pub flow_topic: Option<String>,
    /// Largest accepted message in bytes (default 1 MiB). [config: ingest.max_message_bytes]
    #[arg(long, env = "FLOWAUDIT_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Longest a message waits in memory before being written, ms (default 10000). [config: ingest.flush_interval_ms]
    #[arg(long, env = "FLOWAUDIT_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,
    /// Most rows buffered per Kafka partition before writing (default 1000000). [config: ingest.max_file_rows]
    #[arg(long, env = "FLOWAUDIT_MAX_FILE_ROWS")]
    pub max_file_rows: Option<usize>,
    /// Most payload bytes buffered in total; bounds memory (default 256 MiB). [config: ingest.max_buffer_bytes]
    #[arg(long, env = "FLOWAUDIT_MAX_BUFFER_BYTES")]
    pub max_buffer_bytes: Option<usize>,
    /// zstd level of the Parquet files, 1–22 (default 3). [config: ingest.zstd_level]
    #[arg(long, env = "FLOWAUDIT_ZSTD_LEVEL")]
    pub zstd_level: Option<i32>,
    /// Kafka session timeout in ms (default 10000). [config: ingest.session_timeout_ms]
    #[arg(long, env = "FLOWAUDIT_SESSION_TIMEOUT_MS")]
    pub session_timeout_ms: Option<u32>,
    /// With --until-caught-up: quiet time that counts as caught up, ms (default 3000). [config: ingest.idle_ms]
    #[arg(long, env = "FLOWAUDIT_IDLE_MS")]
    pub idle_ms: Option<u64>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the demo's input files and warehouse (replaced).
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// The day to generate.
    #[arg(long, default_value = "2026-11-21")]
    pub date: NaiveDate,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Policy folder.
    #[arg(long, default_value = "fixtures/policy")]
    pub policy: PathBuf,
    /// GeoIP CSV used both to draw addresses and to enrich them.
    #[arg(long, default_value = "fixtures/geoip/ranges.csv")]
    pub geoip: PathBuf,
}

impl IngestArgs {
    fn settings(&self) -> IngestSettings {
        IngestSettings {
            brokers: self.brokers.clone(),
            group: self.group.clone(),
            gateway_topic: self.gateway_topic.clone(),
            flow_topic: self.flow_topic.clone(),
            warehouse: self.warehouse.clone(),
            policy: self.policy.clone(),
            geoip: self.geoip.clone(),
            until_caught_up: self.until_caught_up.then_some(true),
            max_message_bytes: self.max_message_bytes,
            flush_interval_ms: self.flush_interval_ms,
            max_file_rows: self.max_file_rows,
            max_buffer_bytes: self.max_buffer_bytes,
            zstd_level: self.zstd_level,
            session_timeout_ms: self.session_timeout_ms,
            idle_ms: self.idle_ms,
            ..Default::default()
        }
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let file = FileConfig::load(cli.config.as_deref())?;
    match cli.command {
        Command::Generate(a) => run_generate(a, &file),
        Command::Ingest(a) => {
            let cfg = a
                .settings()
                .or(file.ingest_settings())
                .resolve()
                .context("ingest configuration")?;
            let shutdown = shutdown_flag()?;
            let summary = flowaudit_ingest::consumer::run(&cfg, shutdown).context("ingest")?;
            print_summary(&summary);
            if !summary.reconciles() {
                bail!(
                    "counts do not reconcile: consumed {} != written {} + quarantined {}",
                    summary.consumed,
                    summary.written_gateway + summary.written_flows,
                    summary.quarantined
                );
            }
            Ok(())
        }
        Command::Demo(a) => crate::demo::run(&a),
        Command::Convert(a) => run_convert(a),
    }
}

/// SIGINT and SIGTERM set the returned flag; the ingest loop then flushes, records and exits.
pub fn shutdown_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, flag.clone()).context("installing signal handler")?;
    }
    Ok(flag)
}

fn run_generate(a: GenerateArgs, file: &FileConfig) -> anyhow::Result<()> {
    let g = &file.generate;
    let brokers = a.brokers.or(file.brokers.clone());
    if a.out.is_none() && brokers.is_none() {
        bail!("nothing to do: pass --out DIR to write files, and/or --brokers HOST:PORT (or FLOWAUDIT_BROKERS, or brokers in flowaudit.toml) to produce to Kafka");
    }
    let opts = GenerateOptions {
        date: a.date,
        seed: a.seed.or(g.seed).unwrap_or(7),
        policy: a
            .policy
            .or(file.policy.clone())
            .unwrap_or_else(|| "fixtures/policy".into()),
        geoip_csv: a
            .geoip_csv
            .or(g.geoip_csv.clone())
            .unwrap_or_else(|| "fixtures/geoip/ranges.csv".into()),
        events: a.events.or(g.events).unwrap_or(5000),
        flows: a.flows.or(g.flows).unwrap_or(40000),
        malformed: a.malformed.or(g.malformed).unwrap_or(0),
        flow_format: a.flow_format.or(g.flow_format.clone()),
    };
    let gateway_topic = a
        .gateway_topic
        .or(file.ingest.gateway_topic.clone())
        .unwrap_or_else(|| "gateway.access".into());
    let flow_topic = a
        .flow_topic
        .or(file.ingest.flow_topic.clone())
        .unwrap_or_else(|| "network.flows".into());
    let gen = generate::generate(&opts).context("generating traffic")?;
    if let Some(out) = &a.out {
        generate::write_jsonl(&gen, out)
            .with_context(|| format!("writing to {}", out.display()))?;
        println!(
            "wrote {} gateway events, {} flows and {} planted violations to {}",
            gen.gateway.len(),
            gen.flows.len(),
            gen.planted.violations.len(),
            out.display()
        );
    }
    if let Some(brokers) = &brokers {
        produce::ensure_topics(
            brokers,
            &[&gateway_topic, &flow_topic],
            a.partitions.or(g.partitions).unwrap_or(4),
        )?;
        let n_g = produce::produce(brokers, &gateway_topic, &gen.gateway)
            .context("producing gateway events")?;
        let n_f = produce::produce(brokers, &flow_topic, &gen.flows).context("producing flows")?;
        println!(
            "produced {n_g} messages to {gateway_topic} and {n_f} to {flow_topic} on {brokers}"
        );
    }
    Ok(())
}

fn run_convert(a: ConvertArgs) -> anyhow::Result<()> {
    use flowaudit_ingest::batch::Enricher;
    use flowaudit_ingest::schema::Table;
    let networks = flowaudit_ingest::networks::Networks::load(&a.policy)?;
    let geoip = a
        .geoip
        .as_deref()
        .map(flowaudit_ingest::geoip::GeoIp::open)
        .transpose()?;
    let table = if a.table == "flows" {
        Table::Flows
    } else {
        Table::GatewayEvents
    };
    let settings = flowaudit_ingest::writer::ParquetSettings {
        zstd_level: a.zstd_level,
        ..Default::default()
    };
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let t = std::time::Instant::now();
    let s = flowaudit_ingest::convert::convert_jsonl(
        &a.input,
        table,
        &Enricher { geoip, networks },
        &a.out,
        &settings,
        threads,
    )
    .with_context(|| format!("converting {}", a.input.display()))?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "convert: {} lines -> {} rows in {} ({} bytes, sha256 {}) in {secs:.3} s: {:.0} rows/s, {:.1} MB/s of JSON; rejected {:?}",
        s.lines, s.rows, a.out.display(), s.output_bytes, s.sha256, s.lines as f64 / secs, s.input_bytes as f64 / secs / 1e6, s.rejected
    );
    Ok(())
}

/// Print an ingest run's counts (stdout; the log goes to stderr).
pub fn print_summary(s: &IngestSummary) {
    println!(
        "ingest: consumed {} = gateway_events {} + flows {} + quarantined {}; {} files in {} commits; {} already-recorded messages skipped; busy {:.3} s",
        s.consumed, s.written_gateway, s.written_flows, s.quarantined, s.files, s.commits, s.skipped_recorded, s.busy_secs
    );
    if s.stale_commits > 0 || s.discarded_on_revoke > 0 {
        println!(
            "  rebalances: {} commits found their offsets already recorded by another writer; {} buffered messages left to the partitions' new owners",
            s.stale_commits, s.discarded_on_revoke
        );
    }
    for (reason, n) in &s.quarantine_reasons {
        println!("  quarantined {n:>6}  {reason}");
    }
    for r in &s.repairs {
        println!("  repair: {r}");
    }
    println!("manifest head: seq {} {}", s.manifest_seq, s.manifest_head);
}
