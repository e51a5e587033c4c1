//! Ingest configuration: every setting has a command-line flag, an environment variable and a
//! key in the `[ingest]` section of `flowaudit.toml` (precedence in that order, then the default).
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::warehouse::Location;
use crate::writer::ParquetSettings;

/// Settings as given by one source (file, environment, flags); `None` means "not given here".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    /// Kafka bootstrap servers, `HOST:PORT[,HOST:PORT…]`.
    pub brokers: Option<String>,
    /// Consumer group; processes in one group split the partitions.
    pub group: Option<String>,
    /// Topic of gateway access events.
    pub gateway_topic: Option<String>,
    /// Topic of network flow records.
    pub flow_topic: Option<String>,
    /// Warehouse directory (Delta tables).
    pub warehouse: Option<PathBuf>,
    /// Policy folder (`networks.toml` is read by ingest).
    pub policy: Option<PathBuf>,
    /// GeoIP database: `.mmdb` (MaxMind DB) or CSV ranges `start_ip,end_ip,country[,asn]`.
    pub geoip: Option<PathBuf>,
    /// Ingest what the topics hold, commit and exit 0.
    pub until_caught_up: Option<bool>,
    /// Largest accepted message; larger ones are quarantined (reason `oversize`).
    pub max_message_bytes: Option<usize>,
    /// Most payload bytes kept in a quarantine row (the full size and SHA-256 are always kept).
    pub quarantine_raw_max_bytes: Option<usize>,
    /// Longest time a consumed message waits in memory before its file is written.
    pub flush_interval_ms: Option<u64>,
    /// Most rows buffered for one Kafka partition before its files are written.
    pub max_file_rows: Option<usize>,
    /// Memory for data in flight: 9/16 for buffered rows (what they really hold), 5/16 for the
    /// Parquet encoder, 1/8 for librdkafka's prefetch.
    pub max_buffer_bytes: Option<usize>,
    /// zstd level of the Parquet files (1–22).
    pub zstd_level: Option<i32>,
    /// Rows per Parquet row group.
    pub row_group_rows: Option<usize>,
    /// Kafka consumer session timeout.
    pub session_timeout_ms: Option<u32>,
    /// With `until_caught_up`: how long without messages counts as caught up when the broker
    /// does not report the end of a partition.
    pub idle_ms: Option<u64>,
    /// Seconds between progress lines in the log.
    pub progress_interval_s: Option<u64>,
    /// How long Kafka may stay unusable (broker unreachable or unknown, authentication refused,
    /// a topic missing) before ingest writes what it holds and exits non-zero.
    pub give_up_after_ms: Option<u64>,
    /// Extra librdkafka properties (TLS, SASL, …), e.g. `"security.protocol" = "ssl"`.
    pub kafka: Option<BTreeMap<String, String>>,
    /// `ingest --metrics`: the address of the metrics and health endpoint (read by the binary).
    pub metrics: Option<String>,
}

impl IngestSettings {
    /// Fill what `self` leaves unset from `lower` (a lower-precedence source).
    pub fn or(self, lower: IngestSettings) -> IngestSettings {
        IngestSettings {
            brokers: self.brokers.or(lower.brokers),
            group: self.group.or(lower.group),
            gateway_topic: self.gateway_topic.or(lower.gateway_topic),
            flow_topic: self.flow_topic.or(lower.flow_topic),
            warehouse: self.warehouse.or(lower.warehouse),
            policy: self.policy.or(lower.policy),
            geoip: self.geoip.or(lower.geoip),
            until_caught_up: self.until_caught_up.or(lower.until_caught_up),
            max_message_bytes: self.max_message_bytes.or(lower.max_message_bytes),
            quarantine_raw_max_bytes: self
                .quarantine_raw_max_bytes
                .or(lower.quarantine_raw_max_bytes),
            flush_interval_ms: self.flush_interval_ms.or(lower.flush_interval_ms),
            max_file_rows: self.max_file_rows.or(lower.max_file_rows),
            max_buffer_bytes: self.max_buffer_bytes.or(lower.max_buffer_bytes),
            zstd_level: self.zstd_level.or(lower.zstd_level),
            row_group_rows: self.row_group_rows.or(lower.row_group_rows),
            session_timeout_ms: self.session_timeout_ms.or(lower.session_timeout_ms),
            idle_ms: self.idle_ms.or(lower.idle_ms),
            progress_interval_s: self.progress_interval_s.or(lower.progress_interval_s),
            give_up_after_ms: self.give_up_after_ms.or(lower.give_up_after_ms),
            metrics: self.metrics.or(lower.metrics),
            kafka: match (self.kafka, lower.kafka) {
                (Some(mut hi), Some(lo)) => {
                    for (k, v) in lo {
                        hi.entry(k).or_insert(v);
                    }
                    Some(hi)
                }
                (hi, lo) => hi.or(lo),
            },
        }
    }

    /// Apply defaults and validate.
    pub fn resolve(self) -> Result<IngestConfig> {
        let need = |v: Option<PathBuf>, what: &str, flag: &str, env: &str| {
            v.ok_or_else(|| {
                Error::Config(format!(
                    "{what} is required: pass {flag}, set {env}, or set it in flowaudit.toml"
                ))
            })
        };
        let cfg = IngestConfig {
            brokers: self.brokers.ok_or_else(|| {
                Error::Config("brokers are required: pass --brokers HOST:PORT, set FLOWAUDIT_BROKERS, or set it in flowaudit.toml".into())
            })?,
            group: self.group.unwrap_or_else(|| "flowaudit-ingest".into()),
            gateway_topic: self.gateway_topic.unwrap_or_else(|| "gateway.access".into()),
            flow_topic: self.flow_topic.unwrap_or_else(|| "network.flows".into()),
            warehouse: Location::parse(&need(self.warehouse, "the warehouse", "--warehouse DIR|s3://BUCKET/PREFIX", "FLOWAUDIT_WAREHOUSE")?.to_string_lossy())?,
            policy: need(self.policy, "the policy folder", "--policy DIR", "FLOWAUDIT_POLICY")?,
            geoip: self.geoip,
            until_caught_up: self.until_caught_up.unwrap_or(false),
            max_message_bytes: self.max_message_bytes.unwrap_or(1 << 20),
            quarantine_raw_max_bytes: self.quarantine_raw_max_bytes.unwrap_or(1 << 20),
            flush_interval_ms: self.flush_interval_ms.unwrap_or(10_000),
            max_file_rows: self.max_file_rows.unwrap_or(1_000_000),
            max_buffer_bytes: self.max_buffer_bytes.unwrap_or(256 << 20),
            parquet: ParquetSettings {
                zstd_level: self.zstd_level.unwrap_or(3),
                row_group_rows: self.row_group_rows.unwrap_or(1 << 20),
            },
            session_timeout_ms: self.session_timeout_ms.unwrap_or(10_000),
            idle_ms: self.idle_ms.unwrap_or(3_000),
            progress_interval_s: self.progress_interval_s.unwrap_or(10),
            give_up_after_ms: self.give_up_after_ms.unwrap_or(60_000),
            kafka: self.kafka.unwrap_or_default(),
        };
        if cfg.gateway_topic == cfg.flow_topic {
            return Err(Error::Config(format!(
                "gateway_topic and flow_topic are both \"{}\"",
                cfg.gateway_topic
            )));
        }
        if !(1..=22).contains(&cfg.parquet.zstd_level) {
            return Err(Error::Config(format!(
                "zstd_level {} is outside 1..=22",
                cfg.parquet.zstd_level
            )));
        }
        if cfg.max_file_rows == 0 || cfg.max_message_bytes == 0 {
            return Err(Error::Config(
                "max_file_rows and max_message_bytes must be positive".into(),
            ));
        }
        if cfg.max_buffer_bytes < MIN_BUFFER_BYTES {
            return Err(Error::Config(format!(
                "max_buffer_bytes {} is below {}, the least ingest can keep to: {} of it is reserved for what ingest holds whatever the data (the Kafka client's fetches, the Parquet encoder, memory the allocator keeps after it is freed), and the rest is shared by rows, encoder and prefetch (docs/operations.md, \"Memory\")",
                mib(cfg.max_buffer_bytes),
                mib(MIN_BUFFER_BYTES),
                mib(FIXED_RESERVE_BYTES),
            )));
        }
        Ok(cfg)
    }
}

/// The resolved ingest configuration.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub brokers: String,
    pub group: String,
    pub gateway_topic: String,
    pub flow_topic: String,
    /// A local directory or `s3://bucket/prefix`.
    pub warehouse: Location,
    pub policy: PathBuf,
    pub geoip: Option<PathBuf>,
    pub until_caught_up: bool,
    pub max_message_bytes: usize,
    pub quarantine_raw_max_bytes: usize,
    pub flush_interval_ms: u64,
    pub max_file_rows: usize,
    pub max_buffer_bytes: usize,
    pub parquet: ParquetSettings,
    pub session_timeout_ms: u32,
    pub idle_ms: u64,
    pub progress_interval_s: u64,
    pub give_up_after_ms: u64,
    pub kafka: BTreeMap<String, String>,
}

/// The part of `max_buffer_bytes` that ingest holds whatever the bound and the data: librdkafka's
/// fetch buffers (never below `message.max.bytes`, 1 MB, per request), the Parquet encoder's
/// fixed state, and what the allocator keeps around freed buffers. Measured in make bench
/// (docs/benchmarks.md, table 4): over the program's own size, 400,000 events interleaved over
/// 2,000 hours held about 38 MiB plus 0.9 of the shared budget.
pub const FIXED_RESERVE_BYTES: usize = 48 << 20;

/// The least `max_buffer_bytes` accepted. Below it, with data spread over every hour the rows'
/// share is too small to hold one row per open hour, and the commits that forces hold more
/// than the bound (measured at 96 MiB in make bench: 119 MiB held, 30,000 files in 15 commits).
pub const MIN_BUFFER_BYTES: usize = 128 << 20;

fn mib(bytes: usize) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

impl IngestConfig {
    /// What the rows, the encoder and the prefetch share: `max_buffer_bytes` less the fixed
    /// reserve.
    pub fn shared_bytes(&self) -> usize {
        self.max_buffer_bytes.saturating_sub(FIXED_RESERVE_BYTES)
    }

    /// The share given to librdkafka's prefetch (an eighth of the shared budget): the
    /// consumer's queue limits are derived from it (`consumer::client_config`).
    pub fn prefetch_bytes(&self) -> usize {
        self.shared_bytes() / 8
    }

    /// The share held as rows, counted as they really are: buffers being filled and jobs handed
    /// to the writer (nine sixteenths of the shared budget). The remaining five sixteenths are
    /// not counted but left for what the Parquet encoder holds while it writes a job's files (its
    /// pages and compressed column chunks, proportional to the job), measured in make bench.
    pub fn row_bytes(&self) -> usize {
        self.shared_bytes() / 16 * 9
    }
}

/// The warehouse as a local directory, for the commands that read it as one (rules, report, sql,
/// serve). A URL (`s3://bucket/prefix`, `file://…`, any `scheme://`) is refused rather than
/// taken as a relative path, which would silently write a local directory named after the
/// scheme: ingest, verify and sql take an `s3://` warehouse, the other readers do not yet.
pub fn local_warehouse(path: PathBuf) -> Result<PathBuf> {
    let s = path.to_string_lossy();
    if let Some((scheme, _)) = s.split_once("://") {
        if !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(Error::Config(format!(
                "warehouse {s}: a {scheme}:// URL is not supported here yet (ingest, verify and sql take s3://; rules, report, serve and demo read a local directory)"
            )));
        }
    }
    Ok(path)
}
