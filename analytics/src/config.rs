//! `flowaudit.toml`: one file for every subcommand. Precedence for each setting: command-line
//! flag, then environment variable, then this file, then the built-in default.
use std::path::{Path, PathBuf};

use anyhow::Context;
use flowaudit_ingest::config::IngestSettings;
use serde::Deserialize;

/// The configuration file. Top-level keys are shared by every subcommand; `[ingest]` overrides
/// them for ingest and holds its own settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub brokers: Option<String>,
    pub warehouse: Option<PathBuf>,
    /// The local directory of the alert store and run records when the warehouse is on S3
    /// (default: the warehouse directory when it is local).
    pub state_dir: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    pub geoip: Option<PathBuf>,
    /// Where queries run: `embedded` (default) or `ballista://HOST:PORT` (docs/scale.md).
    pub engine: Option<String>,
    #[serde(default)]
    pub ingest: IngestSettings,
    #[serde(default)]
    pub generate: GenerateSettings,
    #[serde(default)]
    pub rules: RulesSettings,
    #[serde(default)]
    pub alerts: AlertSettings,
    #[serde(default)]
    pub serve: ServeSettings,
    #[serde(default)]
    pub report: ReportSettings,
    #[serde(default)]
    pub compact: CompactSettings,
    #[serde(default)]
    pub sql: SqlSettings,
    #[serde(default)]
    pub flight: FlightSettings,
    #[serde(default)]
    pub checkpoint: CheckpointSettings,
}

/// `[checkpoint]`: signed, time-stamped checkpoints in the auditor's witness (docs/evidence.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSettings {
    /// Where checkpoints go: a directory or `s3://BUCKET/PREFIX` the platform cannot write.
    pub witness: Option<PathBuf>,
    /// The auditor's Ed25519 private key (PKCS#8 PEM).
    pub sign_key: Option<PathBuf>,
    /// An RFC 3161 Time-Stamping Authority's URL.
    pub tsa_url: Option<String>,
    /// The TSA's CA certificate(s) (PEM), for `verify --checkpoints`.
    pub tsa_ca: Option<PathBuf>,
    /// `serve` writes a checkpoint at start and then this often, e.g. `15m` (off when unset).
    pub interval: Option<String>,
}

/// `[sql]`: analysts' queries, in `flowaudit sql` and over Flight SQL.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSettings {
    /// Memory one query may hold, e.g. `2GiB` (default 2GiB; no spilling to disk).
    pub memory_limit: Option<String>,
    /// Time one query may run, e.g. `5m` (default 5m).
    pub timeout: Option<String>,
    /// The shell's history file (default `~/.flowaudit_sql_history`).
    pub history: Option<PathBuf>,
    /// The shell's output format (default `table`).
    pub format: Option<String>,
    /// Memory all running queries of one process may hold together, e.g. `4GiB` (default 4GiB).
    pub total_memory_limit: Option<String>,
    /// Worker threads all queries of one process share (default half the cores, at least 1).
    pub threads: Option<usize>,
    /// Largest string or binary value a function may make, e.g. `16MiB` (default 16MiB).
    pub max_value_bytes: Option<String>,
    /// Rows a result may have; 0 for no limit (default 10000000).
    pub max_result_rows: Option<u64>,
    /// Bytes (Arrow, in memory) a result may have, e.g. `4GiB`; 0 for no limit (default 4GiB).
    pub max_result_bytes: Option<String>,
}

/// `[flight]`: the Flight SQL endpoint of `serve --flight`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlightSettings {
    /// Address to listen on, e.g. `127.0.0.1:50051`; the endpoint is on when set.
    pub addr: Option<String>,
    /// PEM certificate chain; TLS when set (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// How long a session token from the Handshake is valid, e.g. `12h` (default 12h).
    pub session_ttl: Option<String>,
    /// Users for basic authentication.
    #[serde(default)]
    pub users: Vec<FlightSecret>,
    /// Bearer tokens.
    #[serde(default)]
    pub tokens: Vec<FlightSecret>,
    /// Queries running at once, all users together (default 4).
    pub max_queries: Option<usize>,
    /// Queries running at once for one user (default 2).
    pub max_queries_per_user: Option<usize>,
    /// Open sessions, all users together (default 1000).
    pub max_sessions: Option<usize>,
    /// Open sessions of one user; a new one closes the oldest (default 20).
    pub max_sessions_per_user: Option<usize>,
    /// Open prepared statements, all users together (default 1000).
    pub max_prepared: Option<usize>,
    /// Open prepared statements of one user (default 50).
    pub max_prepared_per_user: Option<usize>,
    /// A prepared statement unused this long is closed, e.g. `1h` (default 1h).
    pub prepared_ttl: Option<String>,
    /// Bytes of the parameters bound in one DoPut, e.g. `1MiB` (default 1MiB).
    pub max_parameter_bytes: Option<String>,
    /// Failed logins from one address within `login_window` that lock it out (default 10).
    pub login_max_failures: Option<u32>,
    /// The window failed logins are counted in, e.g. `5m` (default 5m).
    pub login_window: Option<String>,
    /// How long a locked-out address is refused, e.g. `5m` (default 5m).
    pub login_lockout: Option<String>,
}

/// A user (password) or a named bearer token. A password: its argon2id hash (`hash`, from
/// `flowaudit flight hash-password`), or the older unsalted SHA-256 or clear text (accepted, with
/// a warning to rehash). A token: its SHA-256 or clear text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlightSecret {
    pub name: String,
    /// Password (users) or token (tokens), in clear.
    pub password: Option<String>,
    pub token: Option<String>,
    /// argon2id hash of the password in PHC format (`$argon2id$v=19$…`).
    pub hash: Option<String>,
    /// Hex SHA-256 of the password or token (`printf %s SECRET | sha256sum`).
    pub sha256: Option<String>,
}

/// `[report]`: the nightly report written by `serve`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSettings {
    /// Folder for the nightly reports (`<out>/<date>/`); the nightly report is on when set.
    pub out: Option<PathBuf>,
    /// When the nightly report of the previous day is written (cron, UTC; default `30 2 * * *`).
    pub schedule: Option<String>,
    /// Ed25519 key (PKCS#8 PEM) the reports are signed with.
    pub sign_key: Option<PathBuf>,
}

/// `[compact]`: compaction run by `serve` on a schedule (off unless `schedule` is set).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactSettings {
    /// When `serve` compacts the closed hours (cron, UTC), e.g. `15 * * * *`.
    pub schedule: Option<String>,
    /// How long after its end an hour is compacted (default 2h).
    pub closed_after: Option<String>,
    /// Most rows in one written file (default 1000000).
    pub max_file_rows: Option<u64>,
}

/// `[rules]`: where the rule files and their test cases are.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesSettings {
    /// Folder of rule files (default `queries`).
    pub dir: Option<PathBuf>,
    /// Folder of rule test cases (default `fixtures/rules`).
    pub cases: Option<PathBuf>,
    /// Run only these rule ids (default: all).
    pub only: Option<Vec<String>>,
    /// How late data may arrive before a window is evaluated without it, for rules that name no
    /// `lateness` (default `5m`; docs/rules.md, "Watermarks and late data").
    pub lateness: Option<String>,
}

/// `[alerts]`: the sinks alerts are delivered to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// Kafka topic for the incident desk (default `audit.alerts`); used when brokers are set.
    pub topic: Option<String>,
    /// Send alerts to Kafka when brokers are set (default true).
    pub kafka: Option<bool>,
    /// How long librdkafka keeps trying to deliver one alert, ms (default 30000).
    pub kafka_timeout_ms: Option<u64>,
    /// Append alerts to this JSON-lines file.
    pub file: Option<PathBuf>,
    /// POST each alert to this URL.
    pub webhook: Option<String>,
    /// Attempts per alert in one delivery round (default 5).
    pub webhook_attempts: Option<u32>,
    /// First back-off between attempts, ms; doubles up to 30 s (default 500).
    pub webhook_backoff_ms: Option<u64>,
    /// Timeout of one webhook request, ms (default 10000).
    pub webhook_timeout_ms: Option<u64>,
}

/// `[serve]`: the scheduler.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    /// Run ingest in the same process (settings from `[ingest]`).
    pub ingest: Option<bool>,
    /// Seconds between scheduler ticks (default 10).
    pub tick_s: Option<u64>,
    /// How far back missed firings are caught up, e.g. `7d` (default 7d).
    pub catch_up_max: Option<String>,
    /// Run the rules and the nightly report (default true; false serves only Flight SQL/ingest).
    pub scheduler: Option<bool>,
    /// Address of the metrics and health endpoint, e.g. `127.0.0.1:9464` (off when unset).
    pub metrics: Option<String>,
}

/// `[generate]`: defaults for `flowaudit generate`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSettings {
    pub seed: Option<u64>,
    pub events: Option<usize>,
    pub flows: Option<usize>,
    pub malformed: Option<usize>,
    pub partitions: Option<i32>,
    /// GeoIP CSV that external addresses are drawn from.
    pub geoip_csv: Option<PathBuf>,
    pub flow_format: Option<String>,
}

impl FileConfig {
    /// Load the file if a path is given (a missing file given explicitly is an error).
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    /// The ingest settings this file gives: `[ingest]`, then the shared top-level keys.
    pub fn ingest_settings(&self) -> IngestSettings {
        self.ingest.clone().or(IngestSettings {
            brokers: self.brokers.clone(),
            warehouse: self.warehouse.clone(),
            policy: self.policy.clone(),
            geoip: self.geoip.clone(),
            ..Default::default()
        })
    }
}
