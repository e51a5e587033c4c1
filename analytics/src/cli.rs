//! The subcommands. Every flag has an environment variable (shown in `--help`) and, for the
//! settings a deployment keeps, a key in `flowaudit.toml`.
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};
use flowaudit_ingest::config::IngestSettings;
use flowaudit_ingest::consumer::IngestSummary;
use flowaudit_ingest::generate::{self, GenerateOptions};
use flowaudit_ingest::produce;
use flowaudit_ingest::warehouse::Location;

use crate::site::Site;

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
    /// The rule pack: run rules over a window, list them, test them against their cases.
    Rules(RulesArgs),
    /// Run every rule on its schedule (with catch-up), deliver alerts, optionally ingest too.
    Serve(ServeArgs),
    /// Check the warehouse against its Delta logs: the commits' hash chain, every file's SHA-256
    /// and rows, every Kafka offset in exactly one row; lists files no commit references.
    Verify(VerifyArgs),
    /// Record the warehouse head and the rule runner's records in a checkpoint signed with the
    /// auditor's key and time-stamped by a TSA, in a witness location the platform cannot write.
    Checkpoint(CheckpointArgs),
    /// Rewrite the small files of closed hours into large ones, as one Delta commit per table
    /// that changes no data (verify checks the rows are the same).
    Compact(CompactArgs),
    /// Delete the files compactions replaced, and files no commit ever added, once older than
    /// the retention period (the logs and live files are never touched).
    Vacuum(VacuumArgs),
    /// Write the auditor's report for a day or a range of days (HTML, JSON, CSV).
    Report(ReportArgs),
    /// Ad hoc, read-only SQL over the rules' catalog: an interactive shell, or -c / -f.
    Sql(SqlArgs),
    /// Tools for the Flight SQL endpoint: `flight hash-password` makes a user's password hash.
    Flight(crate::auth::FlightArgs),
    /// Load a GeoIP database, say what it holds (ranges, nesting, conflicts) and look addresses up.
    Geoip(crate::geoip_cmd::GeoipArgs),
    /// Run a member of a Ballista cluster: the scheduler, or an executor (docs/scale.md).
    Cluster(ClusterArgs),
    /// Check a configuration file (--config FILE) and print the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Close a Kafka partition that will never receive data again (a retired or renamed topic):
    /// its table is then complete for all time as far as it is concerned (docs/rules.md).
    ClosePartition(ClosePartitionArgs),
}

#[derive(Debug, Args)]
pub struct ClosePartitionArgs {
    /// Warehouse directory or s3://BUCKET/PREFIX. [config: warehouse]
    #[arg(long, env = "FLOWAUDIT_WAREHOUSE")]
    pub warehouse: Option<PathBuf>,
    /// The table the partition feeds: flows or gateway_events.
    #[arg(long)]
    pub table: String,
    /// The Kafka topic (or an import's source name).
    #[arg(long)]
    pub topic: String,
    #[arg(long)]
    pub partition: i32,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate flowaudit.toml as the subcommands read it (each problem as FILE:LINE:COL: KEY:
    /// what), then print the effective configuration (the file, with the environment variables
    /// that override it) with secrets masked. Exits 1 when there is a problem.
    Check,
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The scheduler: clients (`--engine ballista://HOST:PORT`) send it their plans, it plans the
    /// stages and hands them to the executors.
    Scheduler(SchedulerArgs),
    /// An executor: runs the stages its scheduler hands it, over the warehouse.
    Executor(ExecutorArgs),
}

/// What every cluster member reads: the clients' warehouse, policy and GeoIP database.
#[derive(Debug, Args, Clone)]
pub struct MemberArgs {
    /// Warehouse: a directory or s3://BUCKET/PREFIX, the clients' own. [config: warehouse]
    #[arg(long, env = "FLOWAUDIT_WAREHOUSE")]
    pub warehouse: Option<PathBuf>,
    /// Policy folder, the same files as the clients'. [config: policy]
    #[arg(long, env = "FLOWAUDIT_POLICY")]
    pub policy: Option<PathBuf>,
    /// GeoIP database behind country_of(), the same as the clients'. [config: geoip]
    #[arg(long, env = "FLOWAUDIT_GEOIP")]
    pub geoip: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub member: MemberArgs,
    /// HOST:PORT to listen on (clients and executors connect here).
    #[arg(
        long,
        env = "FLOWAUDIT_CLUSTER_BIND",
        default_value = "127.0.0.1:50050"
    )]
    pub bind: String,
    /// Seconds without a heartbeat before an executor counts as lost and its tasks run on
    /// the others.
    #[arg(
        long,
        env = "FLOWAUDIT_CLUSTER_EXECUTOR_TIMEOUT_S",
        default_value_t = 60
    )]
    pub executor_timeout_s: u64,
}

#[derive(Debug, Args)]
pub struct ExecutorArgs {
    #[command(flatten)]
    pub member: MemberArgs,
    /// The scheduler's HOST:PORT.
    #[arg(long, env = "FLOWAUDIT_CLUSTER_SCHEDULER")]
    pub scheduler: String,
    /// HOST:PORT of its Flight service (shuffle data); its gRPC service takes PORT+1. The
    /// default stays clear of the Flight SQL endpoint's usual 50051 on the same machine.
    #[arg(
        long,
        env = "FLOWAUDIT_CLUSTER_BIND",
        default_value = "127.0.0.1:50060"
    )]
    pub bind: String,
    /// Tasks it runs at once (default: the cores).
    #[arg(long, env = "FLOWAUDIT_CLUSTER_SLOTS")]
    pub slots: Option<usize>,
    /// Directory for its shuffle files (default: one under the system's temporary directory).
    #[arg(long, env = "FLOWAUDIT_CLUSTER_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Seconds between heartbeats to the scheduler (keep well under its --executor-timeout-s).
    #[arg(long, env = "FLOWAUDIT_CLUSTER_HEARTBEAT_S", default_value_t = 10)]
    pub heartbeat_s: u64,
}

impl MemberArgs {
    fn open(self, file: &FileConfig) -> anyhow::Result<(crate::cluster::Member, Site)> {
        let reader = ReaderArgs {
            warehouse: self.warehouse,
            state_dir: None,
            policy: self.policy,
            geoip: self.geoip,
            engine: None,
        };
        let (site, policy, geoip) = reader.resolve_data(file)?;
        let member = tokio::runtime::Runtime::new()?
            .block_on(crate::cluster::Member::open(
                &site,
                &policy,
                geoip.as_deref(),
            ))
            .context("opening the catalog")?;
        Ok((member, site))
    }
}

fn run_cluster(a: ClusterArgs, file: &FileConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("flowaudit-cluster")
        .build()?;
    match a.command {
        ClusterCommand::Scheduler(s) => {
            let (member, site) = s.member.open(file)?;
            eprintln!(
                "flowaudit cluster scheduler on {} over {site} (policy {})",
                s.bind,
                member.fingerprint()
            );
            rt.block_on(crate::cluster::run_scheduler(
                member,
                crate::cluster::SchedulerOptions {
                    bind: s.bind,
                    executor_timeout_s: s.executor_timeout_s,
                },
            ))
            .context("cluster scheduler")
        }
        ClusterCommand::Executor(e) => {
            let (member, site) = e.member.open(file)?;
            eprintln!(
                "flowaudit cluster executor on {} for {} over {site} (policy {})",
                e.bind,
                e.scheduler,
                member.fingerprint()
            );
            rt.block_on(crate::cluster::run_executor(
                member,
                crate::cluster::ExecutorOptions {
                    scheduler: e.scheduler,
                    bind: e.bind,
                    slots: e.slots.unwrap_or_else(|| {
                        std::thread::available_parallelism().map_or(1, |n| n.get())
                    }),
                    work_dir: e.work_dir.map(|d| d.to_string_lossy().into_owned()),
                    heartbeat_s: e.heartbeat_s,
                },
            ))
            .context("cluster executor")
        }
    }
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    #[command(flatten)]
    pub reader: ReaderArgs,
    /// Run these statements and exit.
    #[arg(short = 'c', long = "command", conflicts_with = "file")]
    pub command: Option<String>,
    /// Run the statements of this file and exit.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// Output format (default table). [config: sql.format]
    #[arg(long, value_enum, env = "FLOWAUDIT_SQL_FORMAT")]
    pub format: Option<crate::sqlout::Format>,
    /// Write results to this file instead of stdout.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Memory one query may hold, e.g. 512MiB (default 2GiB). [config: sql.memory_limit]
    #[arg(long, env = "FLOWAUDIT_SQL_MEMORY_LIMIT")]
    pub memory_limit: Option<String>,
    /// Time one query may run, e.g. 30s or 5m (default 5m). [config: sql.timeout]
    #[arg(long, env = "FLOWAUDIT_SQL_TIMEOUT")]
    pub timeout: Option<String>,
    /// Print rows and time of each statement to stderr (always on in the interactive shell).
    #[arg(long)]
    pub timing: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub reader: ReaderArgs,
    /// Folder of rule files, whose versions the appendix lists (default queries). [config: rules.dir]
    #[arg(long, env = "FLOWAUDIT_RULES_DIR")]
    pub rules_dir: Option<PathBuf>,
    #[command(flatten)]
    pub days: DaysArgs,
    /// Directory to write the report into.
    #[arg(long, env = "FLOWAUDIT_REPORT_OUT")]
    pub out: PathBuf,
    /// Pin the generation time to the end of the window: the same inputs give the same bytes.
    #[arg(long, env = "FLOWAUDIT_REPRODUCIBLE")]
    pub reproducible: bool,
    /// Sign the report and the Delta log heads with this Ed25519 key (PKCS#8 PEM), into report.sig.json.
    #[arg(long, env = "FLOWAUDIT_SIGN_KEY")]
    pub sign_key: Option<PathBuf>,
    /// The previous report's report.json: the summary says what changed since.
    #[arg(long, env = "FLOWAUDIT_PREVIOUS_REPORT")]
    pub previous: Option<PathBuf>,
    /// The auditor's witness: the report names the checkpoints written in its window and what
    /// the latest leaves uncovered. [config: checkpoint.witness]
    #[arg(long, env = "FLOWAUDIT_CHECKPOINTS")]
    pub checkpoints: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Warehouse directory or s3://BUCKET/PREFIX. [config: warehouse]
    #[arg(long, env = "FLOWAUDIT_WAREHOUSE")]
    pub warehouse: Option<PathBuf>,
    /// A signed report (its directory or report.json): check its signature and files too.
    #[arg(long, env = "FLOWAUDIT_REPORT", requires = "public_key")]
    pub report: Option<PathBuf>,
    /// The witness (directory or s3://BUCKET/PREFIX): check every checkpoint in it, and that
    /// the warehouse and the rule runner's records still hold what each recorded.
    /// [config: checkpoint.witness]
    #[arg(long, env = "FLOWAUDIT_CHECKPOINTS", requires = "public_key")]
    pub checkpoints: Option<PathBuf>,
    /// The auditor's Ed25519 public key (PEM) for --report and --checkpoints.
    #[arg(long, env = "FLOWAUDIT_PUBLIC_KEY")]
    pub public_key: Option<PathBuf>,
    /// The TSA's CA certificate(s) (PEM): check the checkpoints' timestamp tokens.
    /// [config: checkpoint.tsa_ca]
    #[arg(long, env = "FLOWAUDIT_TSA_CA")]
    pub tsa_ca: Option<PathBuf>,
    /// The rule runner's state directory, whose alerts and run records the checkpoints cover
    /// (default: the warehouse directory when it is local). [config: state_dir]
    #[arg(long, env = "FLOWAUDIT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The policy folder, whose suppressions.csv the checkpoints cover. [config: policy]
    #[arg(long, env = "FLOWAUDIT_POLICY")]
    pub policy: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// Warehouse directory or s3://BUCKET/PREFIX. [config: warehouse]
    #[arg(long, env = "FLOWAUDIT_WAREHOUSE")]
    pub warehouse: Option<PathBuf>,
    /// The auditor's Ed25519 private key (PKCS#8 PEM). [config: checkpoint.sign_key]
    #[arg(long, env = "FLOWAUDIT_SIGN_KEY")]
    pub sign_key: Option<PathBuf>,
    /// Where checkpoints are written: a directory or s3://BUCKET/PREFIX of the auditor's that
    /// the platform cannot write. [config: checkpoint.witness]
    #[arg(long, env = "FLOWAUDIT_WITNESS")]
    pub witness: Option<PathBuf>,
    /// An RFC 3161 Time-Stamping Authority (http:// or https://). [config: checkpoint.tsa_url]
    #[arg(long, env = "FLOWAUDIT_TSA_URL")]
    pub tsa_url: Option<String>,
    /// Attempts at the TSA per checkpoint before leaving it for the next run.
    #[arg(long, default_value_t = 3)]
    pub tsa_attempts: u32,
    /// The rule runner's state directory (default: the warehouse directory when it is local).
    /// [config: state_dir]
    #[arg(long, env = "FLOWAUDIT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The policy folder (its suppressions.csv is covered). [config: policy]
    #[arg(long, env = "FLOWAUDIT_POLICY")]
    pub policy: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Warehouse directory or s3://BUCKET/PREFIX. [config: warehouse]
    #[arg(long, env = "FLOWAUDIT_WAREHOUSE")]
    pub warehouse: Option<PathBuf>,
    /// Only this table (repeatable: gateway_events, flows, quarantine; default all).
    #[arg(long = "table", value_delimiter = ',')]
    pub tables: Vec<String>,
    /// An hour is compacted once this long has passed since its end (late data still arrives).
    #[arg(long, default_value = "2h")]
    pub closed_after: String,
    /// Most rows in one written file.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_file_rows: u64,
    /// zstd level of the written files.
    #[arg(long, default_value_t = 3)]
    pub zstd_level: i32,
    /// Say what would be rewritten, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct VacuumArgs {
    /// Warehouse directory or s3://BUCKET/PREFIX. [config: warehouse]
    #[arg(long, env = "FLOWAUDIT_WAREHOUSE")]
    pub warehouse: Option<PathBuf>,
    /// Keep what became unneeded less than this long ago (at least 1h: a running ingest's
    /// uploaded files are committed within its flush interval).
    #[arg(long, default_value = "7d")]
    pub retain: String,
    /// Allow --retain below 1h (files a running ingest uploaded but has not committed yet
    /// would be deleted, and its commit would then reference missing files).
    #[arg(long)]
    pub no_retention_check: bool,
    /// Say what would be deleted, and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct RulesArgs {
    #[command(subcommand)]
    pub command: RulesCommand,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Run the rules over a day or a range of days; raise, record and deliver new alerts.
    Run(Box<RulesRunArgs>),
    /// List the rules.
    List(RulesDirArgs),
    /// Run every rule against its test cases (events that must fire, near misses that must not).
    Test(RulesTestArgs),
}

#[derive(Debug, Args)]
pub struct RulesDirArgs {
    /// Folder of rule files (default queries). [config: rules.dir]
    #[arg(long, env = "FLOWAUDIT_RULES_DIR")]
    pub rules_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RulesTestArgs {
    #[command(flatten)]
    pub dir: RulesDirArgs,
    /// Folder of rule test cases (default fixtures/rules). [config: rules.cases]
    #[arg(long, env = "FLOWAUDIT_RULE_CASES")]
    pub cases: Option<PathBuf>,
    /// Policy folder the cases are decided with (default fixtures/policy). [config: policy]
    #[arg(long, env = "FLOWAUDIT_POLICY")]
    pub policy: Option<PathBuf>,
    /// GeoIP database for the cases' addresses (default fixtures/geoip/ranges.csv). [config: geoip]
    #[arg(long, env = "FLOWAUDIT_GEOIP")]
    pub geoip: Option<PathBuf>,
}

/// What a reader of the warehouse needs (`report`, `sql`, `rules run`, `serve`).
#[derive(Debug, Args, Clone)]
pub struct ReaderArgs {
    /// Warehouse: a directory (Delta tables, alerts, run records) or s3://BUCKET/PREFIX (the
    /// Delta tables; alerts and run records in --state-dir). [config: warehouse]
    #[arg(long, env = "FLOWAUDIT_WAREHOUSE")]
    pub warehouse: Option<PathBuf>,
    /// Local directory for the alert store, the alerts table and the run records (default: the
    /// warehouse directory; needed with an s3:// warehouse). [config: state_dir]
    #[arg(long, env = "FLOWAUDIT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Policy folder. [config: policy]
    #[arg(long, env = "FLOWAUDIT_POLICY")]
    pub policy: Option<PathBuf>,
    /// GeoIP database behind country_of(): .mmdb or CSV ranges. [config: geoip]
    #[arg(long, env = "FLOWAUDIT_GEOIP")]
    pub geoip: Option<PathBuf>,
    /// Where queries run: `embedded` (in this process, the default) or `ballista://HOST:PORT`,
    /// a cluster's scheduler (`flowaudit cluster`). [config: engine]
    #[arg(long, env = "FLOWAUDIT_ENGINE")]
    pub engine: Option<String>,
}

impl ReaderArgs {
    /// The warehouse (a local directory, which must exist, or `s3://`) with its state
    /// directory, the policy folder (which must exist) and the GeoIP database, from flags and
    /// the file.
    pub fn resolve(self, file: &FileConfig) -> anyhow::Result<(Site, PathBuf, Option<PathBuf>)> {
        let engine = match self.engine.as_ref().or(file.engine.as_ref()) {
            Some(e) => crate::cluster::Engine::parse(e)?,
            None => crate::cluster::Engine::Embedded,
        };
        let (site, policy, geoip) = self.resolve_data(file)?;
        Ok((site.with_engine(engine), policy, geoip))
    }

    /// [`Self::resolve`] without the engine: where the data and policy are.
    fn resolve_data(self, file: &FileConfig) -> anyhow::Result<(Site, PathBuf, Option<PathBuf>)> {
        let geoip = self.geoip.or(file.geoip.clone());
        let state = self.state_dir.or(file.state_dir.clone());
        let Some(w) = self.warehouse.clone().or(file.warehouse.clone()) else {
            bail!("no warehouse: pass --warehouse DIR or s3://BUCKET/PREFIX (or FLOWAUDIT_WAREHOUSE, or warehouse in flowaudit.toml)");
        };
        let location = Location::parse(&w.to_string_lossy())?;
        if location.local().is_some() {
            let (w, p) = reader_paths(Some(w), self.policy, file)?;
            let site = Site::reader(Location::Local(w), state);
            return Ok((site, p, geoip));
        }
        let site = Site::reader(location, state);
        let Some(policy) = self.policy.or(file.policy.clone()) else {
            bail!("no policy folder: pass --policy DIR (or FLOWAUDIT_POLICY, or policy in flowaudit.toml)");
        };
        if !policy.join("networks.toml").is_file() {
            bail!(
                "{} is not a policy folder: it has no networks.toml",
                policy.display()
            );
        }
        Ok((site, policy, geoip))
    }
}

/// Where the data and policy are, and where alerts go (shared by `rules run` and `serve`).
#[derive(Debug, Args, Clone)]
pub struct WarehouseArgs {
    #[command(flatten)]
    pub reader: ReaderArgs,
    /// Folder of rule files (default queries). [config: rules.dir]
    #[arg(long, env = "FLOWAUDIT_RULES_DIR")]
    pub rules_dir: Option<PathBuf>,
    /// Run only this rule (repeatable; default all). [config: rules.only]
    #[arg(long = "rule", env = "FLOWAUDIT_RULE", value_delimiter = ',')]
    pub rule: Vec<String>,
    /// Kafka bootstrap servers: alerts go to the alerts topic there. [config: brokers]
    #[arg(long, env = "FLOWAUDIT_BROKERS")]
    pub brokers: Option<String>,
    /// Kafka topic for alerts (default audit.alerts). [config: alerts.topic]
    #[arg(long, env = "FLOWAUDIT_ALERTS_TOPIC")]
    pub alerts_topic: Option<String>,
    /// Append alerts to this JSON-lines file. [config: alerts.file]
    #[arg(long, env = "FLOWAUDIT_ALERTS_FILE")]
    pub alerts_file: Option<PathBuf>,
    /// POST each alert as JSON to this URL (retries with back-off). [config: alerts.webhook]
    #[arg(long, env = "FLOWAUDIT_WEBHOOK")]
    pub webhook: Option<String>,
    /// Attempts per alert and delivery round (default 5). [config: alerts.webhook_attempts]
    #[arg(long, env = "FLOWAUDIT_WEBHOOK_ATTEMPTS")]
    pub webhook_attempts: Option<u32>,
    /// First back-off between webhook attempts in ms, doubling (default 500). [config: alerts.webhook_backoff_ms]
    #[arg(long, env = "FLOWAUDIT_WEBHOOK_BACKOFF_MS")]
    pub webhook_backoff_ms: Option<u64>,
}

#[derive(Debug, Args)]
pub struct RulesRunArgs {
    #[command(flatten)]
    pub common: WarehouseArgs,
    /// Evaluate each whole window even where the data is not complete yet (the run and its
    /// coverage are marked `incomplete`). Without it, a rule evaluates only the part of the
    /// window its data completes, and says what holds the rest back.
    #[arg(long)]
    pub force: bool,
    /// Each day of the window is its own run.
    #[command(flatten)]
    pub days: DaysArgs,
}

/// A window of whole UTC days: `--date D`, or `--from D1 --to D2` (inclusive). Per invocation:
/// no config key.
#[derive(Debug, Args)]
pub struct DaysArgs {
    /// The UTC day (YYYY-MM-DD).
    #[arg(long, env = "FLOWAUDIT_DATE", conflicts_with_all = ["from", "to"])]
    pub date: Option<NaiveDate>,
    /// First day (YYYY-MM-DD, inclusive).
    #[arg(long, env = "FLOWAUDIT_FROM", requires = "to")]
    pub from: Option<NaiveDate>,
    /// Last day (inclusive).
    #[arg(long, env = "FLOWAUDIT_TO", requires = "from")]
    pub to: Option<NaiveDate>,
}

impl DaysArgs {
    /// The first and last day.
    pub fn range(&self) -> anyhow::Result<(NaiveDate, NaiveDate)> {
        match (self.date, self.from, self.to) {
            (Some(d), None, None) => Ok((d, d)),
            (None, Some(f), Some(t)) if f <= t => Ok((f, t)),
            (None, Some(f), Some(t)) => bail!("--from {f} is after --to {t}"),
            _ => bail!("give the window: --date YYYY-MM-DD, or --from YYYY-MM-DD --to YYYY-MM-DD"),
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: WarehouseArgs,
    /// Run ingest in the same process (its settings come from [ingest] and the top-level keys). [config: serve.ingest]
    #[arg(long, env = "FLOWAUDIT_SERVE_INGEST")]
    pub ingest: bool,
    /// Seconds between scheduler ticks (default 10). [config: serve.tick_s]
    #[arg(long, env = "FLOWAUDIT_TICK_S")]
    pub tick_s: Option<u64>,
    /// How far back missed firings are caught up, e.g. 7d (default 7d). [config: serve.catch_up_max]
    #[arg(long, env = "FLOWAUDIT_CATCH_UP_MAX")]
    pub catch_up_max: Option<String>,
    /// Write the nightly report of each previous day into DIR/<date>/. [config: report.out]
    #[arg(long, env = "FLOWAUDIT_REPORT_OUT")]
    pub report_out: Option<PathBuf>,
    /// When the nightly report is written (cron, UTC; default "30 2 * * *"). [config: report.schedule]
    #[arg(long, env = "FLOWAUDIT_REPORT_SCHEDULE")]
    pub report_schedule: Option<String>,
    /// Sign the nightly reports with this Ed25519 key (PKCS#8 PEM). [config: report.sign_key]
    #[arg(long, env = "FLOWAUDIT_SIGN_KEY")]
    pub sign_key: Option<PathBuf>,
    /// Serve the read-only catalog over Arrow Flight SQL on HOST:PORT. [config: flight.addr]
    #[arg(long, env = "FLOWAUDIT_FLIGHT")]
    pub flight: Option<String>,
    /// Do not run the rules or the nightly report (e.g. only --flight, or only --ingest). [config: serve.scheduler = false]
    #[arg(long, env = "FLOWAUDIT_NO_SCHEDULER")]
    pub no_scheduler: bool,
    /// Memory one Flight query may hold (default 2GiB). [config: sql.memory_limit]
    #[arg(long, env = "FLOWAUDIT_SQL_MEMORY_LIMIT")]
    pub memory_limit: Option<String>,
    /// Time one Flight query may run (default 5m). [config: sql.timeout]
    #[arg(long, env = "FLOWAUDIT_SQL_TIMEOUT")]
    pub timeout: Option<String>,
    /// Serve Prometheus metrics (/metrics) and health (/healthz, /readyz) on HOST:PORT. [config: serve.metrics]
    #[arg(long, env = "FLOWAUDIT_METRICS", value_name = "ADDR")]
    pub metrics: Option<String>,
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
    /// Then record the file in this local warehouse's Delta table (one commit; the file moves
    /// under `<table>/date=…/hour=…/`), as a backfill from files rather than from Kafka.
    #[arg(long, requires = "partition")]
    pub into_warehouse: Option<PathBuf>,
    /// The partition the file goes to with --into-warehouse: `YYYY-MM-DD/HH`.
    #[arg(long)]
    pub partition: Option<String>,
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
    /// Warehouse directory for the Delta tables. [config: warehouse]
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
    /// Memory for data in flight (default 256 MiB, at least 128 MiB): 48 MiB reserved for fixed costs, the rest shared 9/16 buffered rows, 5/16 the Parquet encoder, 1/8 the Kafka prefetch. [config: ingest.max_buffer_bytes]
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
    /// How long Kafka may stay unusable (unknown host, authentication refused, missing topic) before ingest writes what it holds and exits non-zero, ms (default 60000). [config: ingest.give_up_after_ms]
    #[arg(long, env = "FLOWAUDIT_GIVE_UP_AFTER_MS")]
    pub give_up_after_ms: Option<u64>,
    /// Serve Prometheus metrics (/metrics) and health (/healthz, /readyz) on HOST:PORT. [config: ingest.metrics]
    #[arg(long, env = "FLOWAUDIT_METRICS", value_name = "ADDR")]
    pub metrics: Option<String>,
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
    /// Folder of rule files.
    #[arg(long, default_value = "queries")]
    pub rules: PathBuf,
    /// Write the Delta tables to s3://BUCKET/PREFIX (an empty prefix; AWS_* variables configure
    /// the client) instead of <out>/warehouse; the alerts and run records go to <out>/state.
    #[arg(long)]
    pub warehouse: Option<String>,
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
            give_up_after_ms: self.give_up_after_ms,
            metrics: self.metrics.clone(),
            ..Default::default()
        }
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Config(ConfigCommand::Check) = cli.command {
        return config_check(cli.config.as_deref());
    }
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
            let endpoint = match a.metrics.clone().or(file.ingest_settings().metrics) {
                Some(addr) => Some(crate::ops::start(
                    &addr,
                    crate::ops::ReadyChecks {
                        kafka: Some(flowaudit_ingest::consumer::client_config(&cfg)),
                        warehouse: Some(cfg.warehouse.clone()),
                    },
                    shutdown.clone(),
                )?),
                None => None,
            };
            let summary = flowaudit_ingest::consumer::run(&cfg, shutdown.clone());
            if let Some(e) = endpoint {
                shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
                e.join();
            }
            let summary = summary.context("ingest")?;
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
        Command::Rules(r) => match r.command {
            RulesCommand::Run(a) => run_rules(*a, &file),
            RulesCommand::List(a) => list_rules(a, &file),
            RulesCommand::Test(a) => test_rules(a, &file),
        },
        Command::Serve(a) => run_serve(a, &file),
        Command::Verify(a) => run_verify(a, &file),
        Command::Checkpoint(a) => run_checkpoint(a, &file),
        Command::Compact(a) => run_compact(a, &file),
        Command::Vacuum(a) => run_vacuum(a, &file),
        Command::Report(a) => run_report(a, &file),
        Command::Sql(a) => run_sql(a, &file),
        Command::Flight(a) => crate::auth::run_flight(a),
        Command::Geoip(a) => crate::geoip_cmd::run(a, &file),
        Command::Cluster(a) => run_cluster(a, &file),
        Command::Config(ConfigCommand::Check) => unreachable!("handled before the file is loaded"),
        Command::ClosePartition(a) => run_close_partition(a, &file),
    }
}

/// A duration setting (`30s`, `5m`, `12h`, `7d`), at most a century ([`crate::rules::MAX_WINDOW`]):
/// every duration is added to or taken from a clock somewhere, and a longer one would overflow
/// it (a panic at each use) rather than mean "for ever".
fn setting_duration(key: &str, v: &str, like: &str) -> anyhow::Result<std::time::Duration> {
    let d = crate::rules::parse_duration(v)
        .with_context(|| format!("{key} \"{v}\" is not a duration like {like}"))?;
    if d > crate::rules::MAX_WINDOW {
        bail!("{key} \"{v}\" is longer than 36500d");
    }
    Ok(d)
}

/// The per-query limits from flags and `[sql]`.
fn sql_limits(
    memory: Option<String>,
    timeout: Option<String>,
    file: &FileConfig,
) -> anyhow::Result<crate::sql::Limits> {
    let mut limits = crate::sql::Limits::default();
    if let Some(m) = memory.or(file.sql.memory_limit.clone()) {
        limits.memory =
            crate::sql::parse_bytes(&m).map_err(|e| anyhow::anyhow!("memory limit: {e}"))?;
    }
    if let Some(t) = timeout.or(file.sql.timeout.clone()) {
        limits.timeout = setting_duration("timeout", &t, "30s, 5m or 1h")?;
    }
    let size = |key: &str, v: &Option<String>, into: &mut usize| -> anyhow::Result<()> {
        if let Some(v) = v {
            *into = crate::sql::parse_bytes(v).map_err(|e| anyhow::anyhow!("sql.{key}: {e}"))?;
        }
        Ok(())
    };
    let q = &file.sql;
    size(
        "total_memory_limit",
        &q.total_memory_limit,
        &mut limits.total_memory,
    )?;
    size("max_value_bytes", &q.max_value_bytes, &mut limits.max_value)?;
    let mut result_bytes = limits.max_result_bytes as usize;
    size("max_result_bytes", &q.max_result_bytes, &mut result_bytes)?;
    limits.max_result_bytes = result_bytes as u64;
    if let Some(n) = q.max_result_rows {
        limits.max_result_rows = n;
    }
    if let Some(n) = q.threads {
        if n == 0 {
            bail!("sql.threads must be at least 1");
        }
        limits.threads = n;
    }
    Ok(limits)
}

/// Warehouse and policy for a reader: both must exist.
fn reader_paths(
    warehouse: Option<PathBuf>,
    policy: Option<PathBuf>,
    file: &FileConfig,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let Some(warehouse) = warehouse.or(file.warehouse.clone()) else {
        bail!("no warehouse: pass --warehouse DIR (or FLOWAUDIT_WAREHOUSE, or warehouse in flowaudit.toml)");
    };
    let Some(policy) = policy.or(file.policy.clone()) else {
        bail!("no policy folder: pass --policy DIR (or FLOWAUDIT_POLICY, or policy in flowaudit.toml)");
    };
    let warehouse = flowaudit_ingest::config::local_warehouse(warehouse)?;
    if !warehouse.is_dir() {
        bail!(
            "warehouse {} does not exist (check --warehouse)",
            warehouse.display()
        );
    }
    if !policy.join("networks.toml").is_file() {
        bail!(
            "{} is not a policy folder: it has no networks.toml",
            policy.display()
        );
    }
    Ok((warehouse, policy))
}

fn run_sql(a: SqlArgs, file: &FileConfig) -> anyhow::Result<()> {
    use clap::ValueEnum;
    let (site, policy, geoip) = a.reader.resolve(file)?;
    let limits = sql_limits(a.memory_limit, a.timeout, file)?;
    let format = match (a.format, &file.sql.format) {
        (Some(f), _) => f,
        (None, Some(f)) => crate::sqlout::Format::from_str(f, true).map_err(|_| {
            anyhow::anyhow!("sql.format \"{f}\": one of table, csv, json, ndjson, parquet")
        })?,
        (None, None) => crate::sqlout::Format::Table,
    };
    let history = file.sql.history.clone().or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".flowaudit_sql_history"))
    });
    let opts = crate::shell::ShellOptions {
        format,
        output: a.output,
        timing: a.timing,
        history,
    };
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let engine = rt
        .block_on(crate::sql::SqlEngine::open(
            &site,
            &policy,
            geoip.as_deref(),
            limits,
        ))
        .context("opening the catalog")?;
    let result = if let Some(sql) = a.command {
        crate::shell::run_script(&rt, &engine, &sql, "-c", &opts)
    } else if let Some(path) = a.file {
        let sql = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        crate::shell::run_script(&rt, &engine, &sql, &path.display().to_string(), &opts)
    } else {
        crate::shell::interactive(&rt, &engine, opts)
    };
    // A cancelled query's task stops at its next yield; do not wait for it to exit.
    drop(engine);
    rt.shutdown_background();
    result
}

/// The Flight SQL endpoint's settings from `--flight` and `[flight]`.
pub fn flight_options(
    addr: &str,
    file: &FileConfig,
) -> anyhow::Result<crate::flight::FlightOptions> {
    use crate::auth::Credential;
    use crate::flight::{Auth, FlightLimits, ThrottleConfig};
    let f = &file.flight;
    let addr = addr.parse().with_context(|| {
        format!("flight address \"{addr}\" is not HOST:PORT (e.g. 127.0.0.1:50051)")
    })?;
    let tls = match (&f.tls_cert, &f.tls_key) {
        (Some(c), Some(k)) => Some((
            std::fs::read_to_string(c)
                .with_context(|| format!("reading flight.tls_cert {}", c.display()))?,
            std::fs::read_to_string(k)
                .with_context(|| format!("reading flight.tls_key {}", k.display()))?,
        )),
        (None, None) => None,
        _ => bail!("flight TLS needs both tls_cert and tls_key"),
    };
    let cred = |kind: &str,
                s: &crate::config::FlightSecret,
                clear: &Option<String>|
     -> anyhow::Result<Credential> {
        match (clear, &s.hash, &s.sha256) {
            (Some(secret), None, None) => Ok(Credential::from_secret(&s.name, secret)),
            (None, Some(h), None) => {
                Credential::from_phc(&s.name, h).map_err(|e| anyhow::anyhow!("flight.{kind}: {e}"))
            }
            (None, None, Some(h)) => Credential::from_sha256_hex(&s.name, h)
                .map_err(|e| anyhow::anyhow!("flight.{kind}: {e}")),
            _ => bail!(
                "flight.{kind} \"{}\": give exactly one of the secret, its hash or its sha256",
                s.name
            ),
        }
    };
    let users = f
        .users
        .iter()
        .map(|u| cred("users", u, &u.password))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tokens = f
        .tokens
        .iter()
        .map(|t| cred("tokens", t, &t.token))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if users.is_empty() && tokens.is_empty() {
        bail!("Flight SQL needs credentials: add [[flight.users]] (name, hash from `flowaudit flight hash-password`) and/or [[flight.tokens]] (name, token or sha256) to the config file");
    }
    let duration =
        |key: &str, v: &Option<String>, default: &str| -> anyhow::Result<std::time::Duration> {
            let t = v.clone().unwrap_or_else(|| default.into());
            setting_duration(&format!("flight.{key}"), &t, "30s, 5m or 12h")
        };
    let session_ttl = duration("session_ttl", &f.session_ttl, "12h")?;
    let d = FlightLimits::default();
    let t = ThrottleConfig::default();
    let limits = FlightLimits {
        max_queries: f.max_queries.unwrap_or(d.max_queries),
        max_queries_per_user: f.max_queries_per_user.unwrap_or(d.max_queries_per_user),
        max_sessions: f.max_sessions.unwrap_or(d.max_sessions),
        max_sessions_per_user: f.max_sessions_per_user.unwrap_or(d.max_sessions_per_user),
        max_prepared: f.max_prepared.unwrap_or(d.max_prepared),
        max_prepared_per_user: f.max_prepared_per_user.unwrap_or(d.max_prepared_per_user),
        prepared_ttl: duration("prepared_ttl", &f.prepared_ttl, "1h")?,
        max_parameter_bytes: match &f.max_parameter_bytes {
            Some(v) => crate::sql::parse_bytes(v)
                .map_err(|e| anyhow::anyhow!("flight.max_parameter_bytes: {e}"))?,
            None => d.max_parameter_bytes,
        },
    };
    for (key, v) in [
        ("max_queries", limits.max_queries),
        ("max_queries_per_user", limits.max_queries_per_user),
        ("max_sessions", limits.max_sessions),
        ("max_sessions_per_user", limits.max_sessions_per_user),
        ("max_prepared", limits.max_prepared),
        ("max_prepared_per_user", limits.max_prepared_per_user),
    ] {
        if v == 0 {
            bail!("flight.{key} must be at least 1");
        }
    }
    let throttle = ThrottleConfig {
        max_failures: f.login_max_failures.unwrap_or(t.max_failures).max(1),
        window: duration("login_window", &f.login_window, "5m")?,
        lockout: duration("login_lockout", &f.login_lockout, "5m")?,
        max_peers: t.max_peers,
    };
    Ok(crate::flight::FlightOptions {
        addr,
        tls,
        auth: Auth {
            users,
            tokens,
            session_ttl,
            throttle,
        },
        limits,
    })
}

fn run_report(a: ReportArgs, file: &FileConfig) -> anyhow::Result<()> {
    let (from, to) = a.days.range()?;
    let (site, policy, geoip) = a.reader.resolve(file)?;
    site.state_dir().map_err(anyhow::Error::msg)?;
    let opts = crate::report::ReportOptions {
        site,
        policy,
        geoip,
        rules_dir: a
            .rules_dir
            .or(file.rules.dir.clone())
            .unwrap_or_else(|| "queries".into()),
        from,
        to,
        reproducible: a.reproducible,
        previous: a.previous,
        witness: a
            .checkpoints
            .or(file.checkpoint.witness.clone())
            .map(|w| flowaudit_ingest::warehouse::Location::parse(&w.to_string_lossy()))
            .transpose()?,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let r = rt
        .block_on(crate::report::build(&opts))
        .map_err(anyhow::Error::msg)
        .context("building the report")?;
    let mut files = crate::report::write(&r, &a.out).map_err(anyhow::Error::msg)?;
    if let Some(key) = &a.sign_key {
        files.push(crate::signing::sign(&a.out, &r, key).map_err(anyhow::Error::msg)?);
    }
    println!(
        "report {from} to {to}: {} ({} findings); wrote {}",
        r["summary"]["verdict"].as_str().unwrap_or_default(),
        r["findings"].as_array().map_or(0, |f| f.len()),
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// A duration setting that may also be zero (`0s`, `0h`, `0`).
fn duration_or_zero(key: &str, v: &str) -> anyhow::Result<std::time::Duration> {
    if v.trim_end_matches(['s', 'm', 'h', 'd']) == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    setting_duration(key, v, "2h or 7d")
}

/// An existing warehouse to maintain: a local directory or `s3://`.
fn existing_warehouse(wh: Option<PathBuf>, file: &FileConfig) -> anyhow::Result<Location> {
    let Some(wh) = wh.or(file.warehouse.clone()) else {
        bail!("no warehouse: pass --warehouse DIR or s3://BUCKET/PREFIX (or FLOWAUDIT_WAREHOUSE, or warehouse in flowaudit.toml)");
    };
    let location = Location::parse(&wh.to_string_lossy())?;
    if let Some(dir) = location.local().filter(|d| !d.is_dir()) {
        bail!(
            "warehouse {} does not exist (check --warehouse)",
            dir.display()
        );
    }
    Ok(location)
}

fn run_vacuum(a: VacuumArgs, file: &FileConfig) -> anyhow::Result<()> {
    let location = existing_warehouse(a.warehouse, file)?;
    let retain = duration_or_zero("--retain", &a.retain)?;
    if retain < std::time::Duration::from_secs(3600) && !a.no_retention_check {
        bail!(
            "--retain {} is below 1h: files a running ingest uploaded but has not committed yet could be deleted (pass --no-retention-check if nothing writes the warehouse)",
            a.retain
        );
    }
    let v = flowaudit_ingest::compact::vacuum(&location, retain, a.dry_run)
        .with_context(|| format!("vacuuming {location}"))?;
    let verb = if a.dry_run { "would delete" } else { "deleted" };
    for p in v.replaced.iter().chain(&v.never_committed) {
        println!("{verb} {p}");
    }
    println!(
        "{verb} {} files ({} bytes): {} replaced by compactions, {} never committed; retained {}",
        v.replaced.len() + v.never_committed.len(),
        v.bytes,
        v.replaced.len(),
        v.never_committed.len(),
        a.retain
    );
    Ok(())
}

fn run_compact(a: CompactArgs, file: &FileConfig) -> anyhow::Result<()> {
    use flowaudit_ingest::schema::Table;
    let location = existing_warehouse(a.warehouse, file)?;
    let tables = if a.tables.is_empty() {
        Table::ALL.to_vec()
    } else {
        a.tables
            .iter()
            .map(|n| {
                Table::ALL
                    .into_iter()
                    .find(|t| t.name() == n)
                    .ok_or_else(|| {
                        anyhow::anyhow!("no table \"{n}\" (gateway_events, flows, quarantine)")
                    })
            })
            .collect::<anyhow::Result<_>>()?
    };
    if a.max_file_rows == 0 {
        bail!("--max-file-rows must be at least 1");
    }
    let opts = flowaudit_ingest::compact::CompactOptions {
        tables,
        // `0s`: every hour that has ended.
        closed_after: duration_or_zero("--closed-after", &a.closed_after)?,
        max_rows: a.max_file_rows,
        settings: flowaudit_ingest::writer::ParquetSettings {
            zstd_level: a.zstd_level,
            ..Default::default()
        },
        dry_run: a.dry_run,
    };
    let done = flowaudit_ingest::compact::compact(&location, &opts)
        .with_context(|| format!("compacting {location}"))?;
    for t in &done {
        let what = match (t.written, t.version, a.dry_run) {
            (0, _, _) => "nothing to compact".to_string(),
            (_, _, true) => format!(
                "would replace {} files ({} rows) by {}",
                t.replaced, t.rows, t.written
            ),
            (_, Some(v), _) => format!(
                "replaced {} files ({} rows) by {} at version {v}",
                t.replaced, t.rows, t.written
            ),
            (_, None, _) => {
                "not recorded: a concurrent commit removed some of these files first (run it again)"
                    .to_string()
            }
        };
        println!("{}: {what}", t.table);
    }
    Ok(())
}

fn run_verify(a: VerifyArgs, file: &FileConfig) -> anyhow::Result<()> {
    let Some(wh) = a.warehouse.or(file.warehouse.clone()) else {
        bail!("no warehouse: pass --warehouse DIR (or FLOWAUDIT_WAREHOUSE, or warehouse in flowaudit.toml)");
    };
    let location = flowaudit_ingest::warehouse::Location::parse(&wh.to_string_lossy())?;
    let mut v = crate::verify::verify(&location);
    if let (Some(report), Some(key)) = (&a.report, &a.public_key) {
        let c = crate::signing::check(report, key).map_err(anyhow::Error::msg)?;
        let signed_problems = !c.problems.is_empty();
        v.problems.extend(c.problems);
        if !signed_problems {
            if c.log_heads.is_empty() {
                println!("report signature valid; its files are unchanged");
            } else {
                let log =
                    flowaudit_ingest::warehouse::read_log_blocking(&location).unwrap_or_default();
                let mut all_in = true;
                for h in &c.log_heads {
                    let found = log
                        .commits
                        .iter()
                        .find(|x| x.table == h.table && x.version == h.version);
                    if found.is_none_or(|x| x.hash != h.hash) {
                        all_in = false;
                        v.problems.push(format!(
                            "the log of {} no longer holds the signed head version {} {}: the evidence the report covers was rewritten",
                            h.table, h.version, h.hash
                        ));
                    }
                }
                if all_in {
                    println!("report signature valid; its files are unchanged; the signed log heads are in the tables' logs");
                }
            }
        }
    }
    // The coverage ledger (the run records) against the log.
    let mut ledger = String::new();
    let state_dir = a
        .state_dir
        .clone()
        .or(file.state_dir.clone())
        .or_else(|| location.local().map(std::path::Path::to_path_buf));
    if let Some(state) = state_dir {
        let runs = crate::runner::read_runs(&state).map_err(anyhow::Error::msg)?;
        if !runs.is_empty() {
            let log = flowaudit_ingest::warehouse::read_log_blocking(&location)
                .context("reading the tables' logs for the coverage ledger")?;
            let problems = crate::ledger::check(&runs, &log);
            if problems.is_empty() {
                ledger = format!(
                    "; coverage ledger: the table versions and positions of {} rule runs are in the log",
                    runs.len()
                );
            }
            v.problems.extend(problems);
        }
        // The alerts table against the outbox it is written from.
        if let Some(c) = runtime()?.block_on(crate::verify_alerts::check(&location, &state)) {
            if c.problems.is_empty() {
                ledger.push_str(&format!("; {}", c.summary()));
            }
            v.problems.extend(c.problems);
            v.notes.extend(c.notes);
        }
    }
    let mut exposure = None;
    if let Some(witness) = a.checkpoints.or(file.checkpoint.witness.clone()) {
        let key = a
            .public_key
            .as_deref()
            .context("--checkpoints needs --public-key")?;
        let key = crate::signing::load_public_key(key).map_err(anyhow::Error::msg)?;
        let ca = match a.tsa_ca.or(file.checkpoint.tsa_ca.clone()) {
            Some(p) => Some(std::fs::read(&p).with_context(|| format!("{}", p.display()))?),
            None => None,
        };
        let witness = flowaudit_ingest::warehouse::Location::parse(&witness.to_string_lossy())?;
        let state = crate::checkpoint::StatePaths {
            state_dir: a
                .state_dir
                .or(file.state_dir.clone())
                .or_else(|| location.local().map(Path::to_path_buf)),
            policy: a.policy.or(file.policy.clone()),
        };
        let c = runtime()?.block_on(async {
            let log = flowaudit_ingest::warehouse::read_log(&location).await?;
            crate::checkpoint::check(&witness, &key, ca.as_deref(), &log, &state)
                .await
                .map_err(anyhow::Error::from)
        })?;
        v.problems.extend(c.problems);
        v.notes.extend(c.notes);
        if let Some(e) = c.exposure {
            v.notes
                .push(format!("{} checkpoint(s) in {witness}; {e}", c.checkpoints));
            exposure = Some(e);
        }
    }
    if v.problems.is_empty() {
        for n in &v.notes {
            println!("note: {n}");
        }
        if let Some(e) = exposure {
            println!("exposure: {e}");
        }
        println!(
            "verified {}: {} files, {} rows, {} commits; log heads {}{ledger}",
            location,
            v.files,
            v.rows,
            v.commits,
            v.heads_summary()
        );
        return Ok(());
    }
    for p in &v.problems {
        println!("{p}");
    }
    bail!(
        "{} does not verify: {} problem(s)",
        location,
        v.problems.len()
    )
}

/// A runtime for a command's object-store and HTTP work.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// The witness, refused when it is inside the warehouse (the platform can write there).
fn checked_witness(
    witness: flowaudit_ingest::warehouse::Location,
    warehouse: &flowaudit_ingest::warehouse::Location,
) -> anyhow::Result<flowaudit_ingest::warehouse::Location> {
    let (w, wh) = (witness.root_url()?, warehouse.root_url()?);
    if w.as_str().starts_with(wh.as_str()) {
        bail!("the witness {witness} is inside the warehouse {warehouse}: it must be a location the platform cannot write");
    }
    Ok(witness)
}

fn run_checkpoint(a: CheckpointArgs, file: &FileConfig) -> anyhow::Result<()> {
    let Some(wh) = a.warehouse.or(file.warehouse.clone()) else {
        bail!("no warehouse: pass --warehouse DIR|s3://BUCKET/PREFIX (or FLOWAUDIT_WAREHOUSE, or warehouse in flowaudit.toml)");
    };
    let Some(witness) = a.witness.or(file.checkpoint.witness.clone()) else {
        bail!("no witness: pass --witness DIR|s3://BUCKET/PREFIX (or FLOWAUDIT_WITNESS, or [checkpoint] witness)");
    };
    let Some(key) = a.sign_key.or(file.checkpoint.sign_key.clone()) else {
        bail!("no signing key: pass --sign-key KEY.pem (or FLOWAUDIT_SIGN_KEY, or [checkpoint] sign_key)");
    };
    let warehouse = flowaudit_ingest::warehouse::Location::parse(&wh.to_string_lossy())?;
    let witness = flowaudit_ingest::warehouse::Location::parse(&witness.to_string_lossy())?;
    let witness = checked_witness(witness, &warehouse)?;
    let settings = crate::checkpoint::Settings {
        key: crate::signing::load_signing_key(&key).map_err(anyhow::Error::msg)?,
        tsa_url: a.tsa_url.or(file.checkpoint.tsa_url.clone()),
        tsa_attempts: a.tsa_attempts.max(1),
        tsa_backoff: std::time::Duration::from_millis(500),
        state: crate::checkpoint::StatePaths {
            state_dir: a
                .state_dir
                .or(file.state_dir.clone())
                .or_else(|| warehouse.local().map(Path::to_path_buf)),
            policy: a.policy.or(file.policy.clone()),
        },
        warehouse,
        witness,
    };
    let w = runtime()?
        .block_on(crate::checkpoint::write(&settings))
        .context("writing the checkpoint")?;
    println!(
        "checkpoint {} written to {}: {}",
        w.seq,
        settings.witness,
        w.statement["tables"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| format!("{}@{}", t["table"].as_str().unwrap_or("?"), t["version"]))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if !w.stamped.is_empty() {
        println!("time-stamped: checkpoint(s) {:?}", w.stamped);
    }
    for (n, e) in &w.unstamped {
        println!("not yet time-stamped: checkpoint {n}: {e} (the next checkpoint asks again)");
    }
    Ok(())
}

/// Settings resolved from flags, environment and file, for `rules run` and `serve`.
pub struct Resolved {
    pub site: Site,
    pub policy: PathBuf,
    pub geoip: Option<PathBuf>,
    pub rules_dir: PathBuf,
    pub only: Vec<String>,
    pub sinks: Vec<crate::sinks::Sink>,
}

impl WarehouseArgs {
    pub fn resolve(self, file: &FileConfig) -> anyhow::Result<Resolved> {
        use crate::sinks::Sink;
        use std::time::Duration;
        let (site, policy, geoip) = self.reader.resolve(file)?;
        let a = &file.alerts;
        let mut sinks = Vec::new();
        if let Some(brokers) = self.brokers.or(file.brokers.clone()) {
            if a.kafka.unwrap_or(true) {
                sinks.push(Sink::Kafka {
                    brokers,
                    topic: self
                        .alerts_topic
                        .or(a.topic.clone())
                        .unwrap_or_else(|| "audit.alerts".into()),
                    properties: file
                        .ingest
                        .kafka
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                    timeout: Duration::from_millis(a.kafka_timeout_ms.unwrap_or(30_000)),
                });
            }
        }
        if let Some(f) = self.alerts_file.or(a.file.clone()) {
            sinks.push(Sink::File(f));
        }
        if let Some(url) = self.webhook.or(a.webhook.clone()) {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("webhook URL \"{url}\" must start with http:// or https://");
            }
            sinks.push(Sink::Webhook {
                url,
                attempts: self
                    .webhook_attempts
                    .or(a.webhook_attempts)
                    .unwrap_or(5)
                    .max(1),
                backoff: Duration::from_millis(
                    self.webhook_backoff_ms
                        .or(a.webhook_backoff_ms)
                        .unwrap_or(500),
                ),
                timeout: Duration::from_millis(a.webhook_timeout_ms.unwrap_or(10_000)),
            });
        }
        Ok(Resolved {
            site,
            policy,
            geoip,
            rules_dir: self
                .rules_dir
                .or(file.rules.dir.clone())
                .unwrap_or_else(|| "queries".into()),
            only: if self.rule.is_empty() {
                file.rules.only.clone().unwrap_or_default()
            } else {
                self.rule
            },
            sinks,
        })
    }
}

fn select_rules(dir: &std::path::Path, only: &[String]) -> anyhow::Result<Vec<crate::rules::Rule>> {
    let rules = crate::rules::load_rules(dir)
        .with_context(|| format!("loading rules from {}", dir.display()))?;
    for id in only {
        if !rules.iter().any(|r| &r.id == id) {
            bail!(
                "no rule `{id}` in {} (rules: {})",
                dir.display(),
                rules
                    .iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(rules
        .into_iter()
        .filter(|r| only.is_empty() || only.contains(&r.id))
        .collect())
}

/// The lateness of rules that name none: `[rules] lateness`, or 5 minutes.
pub fn default_lateness(file: &FileConfig) -> anyhow::Result<std::time::Duration> {
    match &file.rules.lateness {
        None => Ok(crate::rules::DEFAULT_LATENESS),
        Some(l) => crate::rules::parse_duration(l)
            .filter(|d| *d <= crate::rules::MAX_WINDOW)
            .with_context(|| format!("[rules] lateness `{l}`: not a duration like 5m or 1h")),
    }
}

fn run_rules(a: RulesRunArgs, file: &FileConfig) -> anyhow::Result<()> {
    let lateness = default_lateness(file)?;
    let (first, last) = a.days.range()?;
    let days: Vec<NaiveDate> = first.iter_days().take_while(|d| *d <= last).collect();
    let r = a.common.resolve(file)?;
    r.site.state_dir().map_err(anyhow::Error::msg)?;
    let rules = select_rules(&r.rules_dir, &r.only)?;
    let rt = tokio::runtime::Runtime::new()?;
    let suppressions = crate::alerts::load_suppressions(&r.policy.join("suppressions.csv"))?;
    let mut failed = Vec::new();
    let mut undelivered = Vec::new();
    // A bar only for a backfill (more than a day), and only on a terminal.
    let progress = (days.len() > 1)
        .then(|| flowaudit_ingest::progress::bar(days.len() as u64, "rules", "days"));
    // One catalog for the whole range: the policy is read once, so every day of a backfill is
    // judged by the same policy files (each run record names their hashes), and the tables
    // move to their latest snapshot at every query as they do within a day.
    let opening = std::time::Instant::now();
    let catalog = rt
        .block_on(crate::catalog::Catalog::open_at(
            &r.site,
            &r.policy,
            r.geoip.as_deref(),
        ))
        .context("opening the catalog")?;
    tracing::debug!(ms = opening.elapsed().as_millis() as u64, "catalog opened");
    for day in days {
        if let Some(p) = &progress {
            p.set_message(format!("rules {day}"));
            p.inc(1);
        }
        let from = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
        let to = from + chrono::Duration::days(1);
        let mut store =
            crate::alerts::AlertStore::open(r.site.state_dir().map_err(anyhow::Error::msg)?)?;
        let before = store.len();
        let res = rt
            .block_on(crate::runner::run_window(
                &catalog,
                &r.site,
                &rules,
                &mut store,
                &suppressions,
                crate::runner::Window {
                    from,
                    to,
                    trigger: "manual",
                    evaluate: if a.force {
                        crate::runner::Evaluate::Forced
                    } else {
                        crate::runner::Evaluate::WhatIsComplete
                    },
                    lateness,
                },
            ))
            .context("running the rules")?;
        print_run(&res);
        for f in res.record.failed_rules() {
            failed.push(format!(
                "{day} {}: {}",
                f.id,
                f.error.as_deref().unwrap_or_default()
            ));
        }
        for d in crate::sinks::deliver_all(&store, &r.sinks, before) {
            match &d.error {
                None => println!("  delivered {} alert(s) to {}", d.delivered, d.sink),
                Some(e) => {
                    println!("  NOT delivered: {e}");
                    undelivered.push(e.clone());
                }
            }
        }
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    if !failed.is_empty() {
        bail!(
            "{} rule run(s) failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    if !undelivered.is_empty() {
        bail!(
            "alerts are recorded but not delivered to every sink; they will be sent by the next `rules run` or `serve`:\n  {}",
            undelivered.join("\n  ")
        );
    }
    Ok(())
}

/// Print a run: per-rule counts, then the new alerts grouped by rule, then suppressions.
pub fn print_run(res: &crate::runner::RunResult) {
    let rec = &res.record;
    println!(
        "run {} ({}) over [{}, {}): {} rules in {} ms; log heads {}",
        rec.run_id,
        rec.trigger,
        rec.window_from,
        rec.window_to,
        rec.rules.len(),
        rec.millis,
        rec.log_heads
            .iter()
            .map(|h| format!("{}@{}", h.table, h.version))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  {:<34} {:>8} {:>6} {:>5} {:>9} {:>10} {:>6} {:>7}  coverage",
        "rule", "severity", "rows", "new", "repeated", "suppressed", "closed", "ms"
    );
    for o in &rec.rules {
        println!(
            "  {:<34} {:>8} {:>6} {:>5} {:>9} {:>10} {:>6} {:>7}  {}{}",
            o.id,
            o.severity,
            o.rows,
            o.new,
            o.already_raised,
            o.suppressed,
            o.closed,
            o.millis,
            o.coverage,
            o.error
                .as_ref()
                .map(|e| format!("  FAILED: {e}"))
                .unwrap_or_default()
        );
    }
    for o in rec
        .rules
        .iter()
        .filter(|o| o.coverage != "complete" && o.error.is_none())
    {
        let what = match (&o.evaluated_from, &o.evaluated_to) {
            (Some(f), Some(t)) if o.coverage == "partial" => {
                format!("evaluated [{f}, {t}); the rest of the window is due")
            }
            (Some(_), Some(_)) => "evaluated on incomplete data (--force)".to_string(),
            _ => "not evaluated: due".to_string(),
        };
        let held: Vec<String> = o
            .lagging
            .iter()
            .map(|l| match &l.complete_to {
                Some(t) => format!("{} complete up to {t}", l.what),
                None => format!("{} not known complete", l.what),
            })
            .collect();
        println!(
            "  {} ({}, lateness {}): {what}; held back by: {}",
            o.id,
            o.coverage,
            crate::rules::format_duration(std::time::Duration::from_secs(o.lateness_s)),
            if held.is_empty() {
                "nothing".to_string()
            } else {
                held.join("; ")
            }
        );
    }
    for a in &res.closed {
        println!(
            "  closed {} [{}]: {}",
            a.rule_id,
            a.entity_key,
            a.close_reason.as_deref().unwrap_or_default()
        );
    }
    print_alerts_by_rule(&res.raised);
    for a in &res.suppressed {
        let s = a.suppression.as_ref().expect("suppressed");
        println!(
            "  suppressed {} [{}]: by {} until {}: {}",
            a.rule_id, a.entity_key, s.who, s.expires, s.reason
        );
    }
    for s in &rec.expired_suppressions {
        println!(
            "  expired suppression did not apply: {} [{}] by {} expired {}: {}",
            s.rule_id, s.entity, s.who, s.expires, s.reason
        );
    }
}

/// New alerts, grouped by rule.
pub fn print_alerts_by_rule(alerts: &[crate::alerts::Alert]) {
    let mut by_rule: std::collections::BTreeMap<&str, Vec<&crate::alerts::Alert>> =
        std::collections::BTreeMap::new();
    for a in alerts {
        by_rule.entry(a.rule_id.as_str()).or_default().push(a);
    }
    if alerts.is_empty() {
        println!("  no new alerts");
    }
    for (rule, list) in by_rule {
        println!("  {rule} ({} new, {})", list.len(), list[0].severity);
        for a in list {
            println!("    [{}] {}", &a.fingerprint[..12], a.summary);
        }
    }
}

fn list_rules(a: RulesDirArgs, file: &FileConfig) -> anyhow::Result<()> {
    let dir = a
        .rules_dir
        .or(file.rules.dir.clone())
        .unwrap_or_else(|| "queries".into());
    let rules = select_rules(&dir, &[])?;
    println!(
        "{:<34} {:<8} {:<14} {:<8} title",
        "id", "severity", "schedule", "lookback"
    );
    for r in &rules {
        println!(
            "{:<34} {:<8} {:<14} {:<8} {}",
            r.id,
            r.severity.as_str(),
            r.schedule,
            crate::rules::format_duration(r.lookback),
            r.title
        );
    }
    println!("{} rules in {}", rules.len(), dir.display());
    Ok(())
}

fn test_rules(a: RulesTestArgs, file: &FileConfig) -> anyhow::Result<()> {
    let dir = a
        .dir
        .rules_dir
        .or(file.rules.dir.clone())
        .unwrap_or_else(|| "queries".into());
    let cases = a
        .cases
        .or(file.rules.cases.clone())
        .unwrap_or_else(|| "fixtures/rules".into());
    let policy = a
        .policy
        .or(file.policy.clone())
        .unwrap_or_else(|| "fixtures/policy".into());
    let geoip = a
        .geoip
        .or(file.geoip.clone())
        .unwrap_or_else(|| "fixtures/geoip/ranges.csv".into());
    let rules = select_rules(&dir, &[])?;
    let rt = tokio::runtime::Runtime::new()?;
    let reports = rt
        .block_on(crate::cases::run_cases(&rules, &cases, &policy, &geoip))
        .map_err(anyhow::Error::msg)?;
    let mut failed = 0;
    for r in &reports {
        if r.passed() {
            println!(
                "ok    {:<34} fired {} of {} expected, {} near misses quiet",
                r.rule, r.fired, r.expected, r.quiet
            );
        } else {
            failed += 1;
            println!("FAIL  {}", r.rule);
            for p in &r.problems {
                println!("        {p}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} rules failed their cases", reports.len());
    }
    println!("all {} rules pass their cases", reports.len());
    Ok(())
}

fn run_serve(a: ServeArgs, file: &FileConfig) -> anyhow::Result<()> {
    let s = &file.serve;
    let ingest = if a.ingest || s.ingest.unwrap_or(false) {
        Some(
            IngestSettings {
                warehouse: a.common.reader.warehouse.clone(),
                policy: a.common.reader.policy.clone(),
                geoip: a.common.reader.geoip.clone(),
                brokers: a.common.brokers.clone(),
                ..Default::default()
            }
            .or(file.ingest_settings())
            .resolve()
            .context("ingest configuration")?,
        )
    } else {
        None
    };
    let catch_up = a
        .catch_up_max
        .or(s.catch_up_max.clone())
        .unwrap_or_else(|| "7d".into());
    let catch_up_max = setting_duration("catch_up_max", &catch_up, "12h or 7d")?;
    if let Some(cfg) = &ingest {
        // Ingest creates the warehouse it writes.
        if let Some(dir) = cfg.warehouse.local() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the warehouse {}", dir.display()))?;
        }
    }
    let report = match a.report_out.or(file.report.out.clone()) {
        Some(out) => {
            let schedule = a
                .report_schedule
                .or(file.report.schedule.clone())
                .unwrap_or_else(|| "30 2 * * *".into());
            Some(crate::serve::NightlyReport {
                cron: schedule
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("report schedule: {e}"))?,
                out,
                sign_key: a.sign_key.or(file.report.sign_key.clone()),
                witness: file
                    .checkpoint
                    .witness
                    .as_ref()
                    .map(|w| flowaudit_ingest::warehouse::Location::parse(&w.to_string_lossy()))
                    .transpose()?,
            })
        }
        None => None,
    };
    let flight = match a.flight.or(file.flight.addr.clone()) {
        Some(addr) => Some(crate::serve::FlightServe {
            options: flight_options(&addr, file)?,
            limits: sql_limits(a.memory_limit, a.timeout, file)?,
        }),
        None => None,
    };
    let compact = match &file.compact.schedule {
        Some(cron) => Some(crate::serve::ScheduledCompaction {
            cron: cron
                .parse()
                .map_err(|e: String| anyhow::anyhow!("compact.schedule: {e}"))?,
            options: flowaudit_ingest::compact::CompactOptions {
                tables: flowaudit_ingest::schema::Table::ALL.to_vec(),
                closed_after: duration_or_zero(
                    "compact.closed_after",
                    file.compact.closed_after.as_deref().unwrap_or("2h"),
                )?,
                max_rows: file.compact.max_file_rows.unwrap_or(1_000_000).max(1),
                settings: Default::default(),
                dry_run: false,
            },
        }),
        None => None,
    };
    let scheduler = !a.no_scheduler && s.scheduler.unwrap_or(true);
    if !scheduler && flight.is_none() && ingest.is_none() {
        bail!("nothing to serve: --no-scheduler needs --flight ADDR and/or --ingest");
    }
    let r = a.common.resolve(file)?;
    let checkpoint = match &file.checkpoint.interval {
        Some(every) => {
            let interval = setting_duration("checkpoint.interval", every, "15m")?;
            let (Some(witness), Some(key)) = (&file.checkpoint.witness, &file.checkpoint.sign_key)
            else {
                bail!("checkpoint.interval is set: [checkpoint] needs witness and sign_key too");
            };
            let witness = flowaudit_ingest::warehouse::Location::parse(&witness.to_string_lossy())?;
            Some(crate::serve::ScheduledCheckpoint {
                interval,
                settings: crate::checkpoint::Settings {
                    warehouse: r.site.tables.clone(),
                    witness: checked_witness(witness, &r.site.tables)?,
                    key: crate::signing::load_signing_key(key).map_err(anyhow::Error::msg)?,
                    tsa_url: file.checkpoint.tsa_url.clone(),
                    tsa_attempts: 3,
                    tsa_backoff: std::time::Duration::from_millis(500),
                    state: crate::checkpoint::StatePaths {
                        state_dir: r.site.state.clone(),
                        policy: Some(r.policy.clone()),
                    },
                },
            })
        }
        None => None,
    };
    if scheduler {
        r.site.state_dir().map_err(anyhow::Error::msg)?;
        select_rules(&r.rules_dir, &r.only)?;
    }
    let opts = crate::serve::ServeOptions {
        scheduler,
        flight,
        report,
        site: r.site,
        policy: r.policy,
        geoip: r.geoip,
        rules_dir: r.rules_dir,
        only: r.only,
        sinks: r.sinks,
        tick: std::time::Duration::from_secs(a.tick_s.or(s.tick_s).unwrap_or(10).max(1)),
        catch_up_max,
        ingest,
        compact,
        checkpoint,
        lateness: default_lateness(file)?,
    };
    let shutdown = shutdown_flag()?;
    let endpoint = match a.metrics.or(s.metrics.clone()) {
        Some(addr) => Some(crate::ops::start(
            &addr,
            crate::ops::ReadyChecks {
                kafka: match &opts.ingest {
                    Some(cfg) => Some(flowaudit_ingest::consumer::client_config(cfg)),
                    None => opts.sinks.iter().find_map(|s| match s {
                        crate::sinks::Sink::Kafka {
                            brokers,
                            properties,
                            ..
                        } => {
                            let mut c = rdkafka::ClientConfig::new();
                            c.set("bootstrap.servers", brokers);
                            for (k, v) in properties {
                                c.set(k, v);
                            }
                            Some(c)
                        }
                        _ => None,
                    }),
                },
                warehouse: opts.ingest.as_ref().map(|c| c.warehouse.clone()),
            },
            shutdown.clone(),
        )?),
        None => None,
    };
    let served = crate::serve::serve(opts, shutdown.clone());
    if let Some(e) = endpoint {
        shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
        e.join();
    }
    served
}

fn run_close_partition(a: ClosePartitionArgs, file: &FileConfig) -> anyhow::Result<()> {
    if !crate::watermark::TRACKED.contains(&a.table.as_str()) {
        bail!(
            "--table {}: partitions feed {}",
            a.table,
            crate::watermark::TRACKED.join(" or ")
        );
    }
    let location = existing_warehouse(a.warehouse, file)?;
    let writer = format!(
        "close-partition@{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into())
    );
    let rt = tokio::runtime::Runtime::new()?;
    let mark = rt
        .block_on(flowaudit_ingest::warehouse::close_partition(
            &location,
            &a.table,
            &a.topic,
            a.partition,
            &writer,
        ))
        .with_context(|| format!("closing {}/{} of {}", a.topic, a.partition, a.table))?;
    println!(
        "{}: {}/{} closed with offsets below {} recorded: complete for all time; records of it committed later are late data",
        mark.table, mark.topic, mark.partition, mark.recorded_to
    );
    Ok(())
}

fn config_check(path: Option<&Path>) -> anyhow::Result<()> {
    let Some(path) = path else {
        bail!("config check needs the file: flowaudit config check --config FILE (or FLOWAUDIT_CONFIG)");
    };
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let checked = crate::config_check::check(path, &env)?;
    println!(
        "# The effective configuration of {} (secrets masked).",
        path.display()
    );
    for (key, var) in &checked.from_env {
        println!("# {key}: from the environment ({var})");
    }
    println!(
        "# Keys not shown take their defaults (flowaudit COMMAND --help, docs/operations.md)."
    );
    print!("{}", checked.effective);
    if checked.problems.is_empty() {
        eprintln!("{}: OK", path.display());
        return Ok(());
    }
    for p in &checked.problems {
        eprintln!("{p}");
    }
    bail!("{}: {} problem(s)", path.display(), checked.problems.len())
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
    if let (Some(wh), Some(part)) = (&a.into_warehouse, &a.partition) {
        let (date, hour) = part
            .split_once('/')
            .filter(|(d, h)| {
                NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok()
                    && h.len() == 2
                    && h.parse::<u8>().is_ok_and(|h| h < 24)
            })
            .with_context(|| format!("--partition {part}: expected YYYY-MM-DD/HH"))?;
        let location = flowaudit_ingest::warehouse::Location::Local(wh.clone());
        let mut w = flowaudit_ingest::warehouse::Warehouse::open(&location)
            .with_context(|| format!("opening the warehouse {}", wh.display()))?;
        // Each import is its own source: files converted separately number their rows from 0.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let source = format!("convert-{date}-{hour}-{nanos:x}-{}", std::process::id());
        let version = w
            .import_files(
                table,
                &source,
                &[(a.out.clone(), date.to_string(), hour.to_string())],
            )
            .with_context(|| format!("recording {} in {}", a.out.display(), wh.display()))?;
        println!(
            "recorded in {} {} at version {version}",
            wh.display(),
            table.name()
        );
    }
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
    if s.gaps > 0 {
        println!(
            "  gaps: {} ranges, {} offsets that Kafka no longer held were recorded as missing",
            s.gaps, s.gap_offsets
        );
    }
    println!(
        "table versions: {}",
        s.table_versions
            .iter()
            .map(|(t, v)| format!("{t}@{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}
