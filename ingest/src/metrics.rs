//! The process's metrics, for operators (`serve --metrics ADDR`, `ingest --metrics ADDR`; the
//! list with alerting rules is in docs/operations.md, "Metrics").
//!
//! One registry per process, made on first use; the code that does the work updates it (the
//! ingest loop, the committer, the scheduler, the sinks, the checkpointer, Flight SQL) and the
//! HTTP endpoint encodes it in the OpenMetrics text format with the Prometheus project's Rust
//! client. Nothing here is read back by flowaudit: the tables, the run records and the alert
//! store stay the record; metrics are a view of the work for watching it.
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a Kafka partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: String,
}

/// Labels of a topic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

/// Labels of a warehouse table.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

/// Quarantined rows: the table the message was for, and the reason code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuarantineLabels {
    pub table: String,
    pub reason: String,
}

/// A rule and how its evaluation of a window ended: its coverage (`complete`, `partial`,
/// `incomplete`: forced before the data was complete, `due`: waiting for it, `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleOutcomeLabels {
    pub rule: String,
    pub outcome: String,
}

/// A rule.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

/// Alerts raised: rule and severity.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub rule: String,
    pub severity: String,
}

/// A source of records whose watermark the scheduler follows (a table).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

/// An alert sink (`kafka`, `file`, `webhook`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

/// A Flight SQL user and how the query ended (`ok`, `error`, `refused`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlightLabels {
    pub user: String,
    pub outcome: String,
}

/// Every metric flowaudit exposes. Names carry the `flowaudit_` prefix; counters get `_total`
/// from the encoder.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    // Ingest.
    pub consumed: Family<TopicLabels, Counter>,
    pub skipped_recorded: Family<TopicLabels, Counter>,
    pub rows_written: Family<TableLabels, Counter>,
    pub rows_quarantined: Family<QuarantineLabels, Counter>,
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    pub recorded_offset: Family<PartitionLabels, Gauge>,
    pub partitions_assigned: Gauge,
    pub commits: Family<TableLabels, Counter>,
    pub commit_seconds: Family<TableLabels, Histogram, fn() -> Histogram>,
    pub commit_bytes: Family<TableLabels, Histogram, fn() -> Histogram>,
    pub commit_rows: Family<TableLabels, Histogram, fn() -> Histogram>,
    pub commit_conflicts: Family<TableLabels, Counter>,
    pub gaps: Family<TopicLabels, Counter>,
    pub gap_offsets: Family<TopicLabels, Counter>,
    pub kafka_errors: Counter,
    // Rules and alerts.
    pub rule_runs: Family<RuleOutcomeLabels, Counter>,
    pub rule_seconds: Family<RuleLabels, Histogram, fn() -> Histogram>,
    pub watermark_age: Family<SourceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub windows_due: Gauge,
    pub scheduler_ticks_failed: Counter,
    pub alerts_raised: Family<AlertLabels, Counter>,
    pub alerts_closed: Family<AlertLabels, Counter>,
    pub sink_backlog: Family<SinkLabels, Gauge>,
    pub sink_delivered: Family<SinkLabels, Counter>,
    pub sink_failures: Family<SinkLabels, Counter>,
    // Evidence.
    pub checkpoints: Counter,
    pub checkpoint_failures: Counter,
    pub checkpoint_timestamp: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub tsa_failures: Counter,
    pub reports: Counter,
    // Flight SQL.
    pub flight_queries: Family<FlightLabels, Counter>,
    pub flight_query_seconds: Family<FlightLabels, Histogram, fn() -> Histogram>,
    pub flight_plans_ahead_run: Counter,
}

fn seconds_histogram() -> Histogram {
    // 1 ms to ~9 min.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.5, 15,
    ))
}

fn bytes_histogram() -> Histogram {
    // 4 KiB to 4 GiB.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        4096.0, 4.0, 11,
    ))
}

fn rows_histogram() -> Histogram {
    // 1 to ~1M rows.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 4.0, 11,
    ))
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::with_prefix("flowaudit");
        macro_rules! reg {
            ($name:literal, $help:literal, $m:expr) => {{
                let m = $m;
                r.register($name, $help, m.clone());
                m
            }};
        }
        Self {
            consumed: reg!("ingest_messages_consumed", "Kafka messages consumed and recorded (written or quarantined)", Family::default()),
            skipped_recorded: reg!("ingest_messages_skipped_recorded", "Messages read again that the warehouse had already recorded (not written twice)", Family::default()),
            rows_written: reg!("ingest_rows_written", "Rows written to a warehouse table (gateway_events, flows)", Family::default()),
            rows_quarantined: reg!("ingest_rows_quarantined", "Messages written to quarantine, by the table they were for and the reason code", Family::default()),
            consumer_lag: reg!("ingest_consumer_lag", "Messages in a partition not yet recorded: the broker's high watermark minus the table log's next offset", Family::default()),
            recorded_offset: reg!("ingest_recorded_offset", "The next offset of a partition the table log records (where a restart resumes)", Family::default()),
            partitions_assigned: reg!("ingest_partitions_assigned", "Kafka partitions assigned to this process", Gauge::default()),
            commits: reg!("ingest_commits", "Commits to a warehouse table by the ingest committer", Family::default()),
            commit_seconds: reg!("ingest_commit_duration_seconds", "Time to write and commit one partition's buffer (Parquet encoding, upload, Delta commits)", Family::new_with_constructor(seconds_histogram as fn() -> Histogram)),
            commit_bytes: reg!("ingest_commit_bytes", "Parquet bytes one commit added to a table", Family::new_with_constructor(bytes_histogram as fn() -> Histogram)),
            commit_rows: reg!("ingest_commit_rows", "Rows one commit added to a table", Family::new_with_constructor(rows_histogram as fn() -> Histogram)),
            commit_conflicts: reg!("ingest_commit_conflicts", "Delta commits refused because another writer committed the same partition's offsets first", Family::default()),
            gaps: reg!("ingest_gaps", "Offset ranges recorded as gaps (no longer in Kafka when read)", Family::default()),
            gap_offsets: reg!("ingest_gap_offsets", "Offsets inside recorded gaps", Family::default()),
            kafka_errors: reg!("ingest_kafka_errors", "Kafka client errors reported by librdkafka (it retries)", Counter::default()),
            rule_runs: reg!("rule_runs", "Rule evaluations of a window, by rule and outcome (complete, partial, incomplete, due, failed)", Family::default()),
            rule_seconds: reg!("rule_run_duration_seconds", "Time one rule took over one window", Family::new_with_constructor(seconds_histogram as fn() -> Histogram)),
            watermark_age: reg!("watermark_age_seconds", "Seconds between now and the newest record time a source has recorded (how far its data lags)", Family::default()),
            windows_due: reg!("rule_windows_due", "Rule windows waiting for complete data", Gauge::default()),
            scheduler_ticks_failed: reg!("scheduler_ticks_failed", "Scheduler ticks that failed (retried at the next tick)", Counter::default()),
            alerts_raised: reg!("alerts_raised", "Alerts raised (new, not deduplicated into an open one), by rule and severity", Family::default()),
            alerts_closed: reg!("alerts_closed", "Alerts closed (no evaluation that still stands found them), by rule and severity", Family::default()),
            sink_backlog: reg!("sink_backlog", "Alerts waiting for delivery to a sink", Family::default()),
            sink_delivered: reg!("sink_delivered", "Alerts delivered to a sink", Family::default()),
            sink_failures: reg!("sink_failures", "Failed deliveries to a sink (retried at the next round)", Family::default()),
            checkpoints: reg!("checkpoints_written", "Signed checkpoints written to the witness", Counter::default()),
            checkpoint_failures: reg!("checkpoint_failures", "Checkpoints that could not be written", Counter::default()),
            checkpoint_timestamp: reg!("checkpoint_last_success_timestamp_seconds", "Unix time of the last checkpoint written (age: time() minus this)", Gauge::default()),
            tsa_failures: reg!("tsa_failures", "Requests to the RFC 3161 Time-Stamping Authority that failed", Counter::default()),
            reports: reg!("reports_written", "Nightly reports written", Counter::default()),
            flight_queries: reg!("flight_queries", "Flight SQL queries by user and outcome (ok, error, refused)", Family::default()),
            flight_query_seconds: reg!("flight_query_duration_seconds", "Time to plan and stream one Flight SQL query", Family::new_with_constructor(seconds_histogram as fn() -> Histogram)),
            flight_plans_ahead_run: reg!("flight_plans_ahead_run", "Flight SQL queries whose DoGet ran the physical plan made after their GetFlightInfo", Counter::default()),
            registry: r,
        }
    }

    /// The metrics in the OpenMetrics text format (what Prometheus scrapes).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// What `/readyz` needs to know that only the work itself can tell: whether each part of the
/// process (`ingest`, `scheduler`, `flight`) has its policy loaded and works with it.
#[derive(Debug, Default)]
pub struct Readiness {
    parts: Mutex<std::collections::BTreeMap<&'static str, Result<String, String>>>,
}

impl Readiness {
    /// `part` loaded its policy (what it says: a path, a fingerprint), or cannot (why).
    pub fn set(&self, part: &'static str, state: Result<String, String>) {
        self.parts.lock().expect("lock").insert(part, state);
    }

    /// Each part's state.
    pub fn parts(&self) -> std::collections::BTreeMap<&'static str, Result<String, String>> {
        self.parts.lock().expect("lock").clone()
    }
}

/// The process's readiness facts.
pub fn readiness() -> &'static Readiness {
    static R: OnceLock<Readiness> = OnceLock::new();
    R.get_or_init(Readiness::default)
}

/// Convenience for labels.
pub fn table(t: &str) -> TableLabels {
    TableLabels { table: t.into() }
}

/// Convenience for labels.
pub fn topic(t: &str) -> TopicLabels {
    TopicLabels { topic: t.into() }
}

/// Convenience for labels.
pub fn partition(topic: &str, partition: i32) -> PartitionLabels {
    PartitionLabels {
        topic: topic.into(),
        partition: partition.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoding_names_each_family_once_with_its_type() {
        let m = metrics();
        m.rows_written.get_or_create(&table("unit-test")).inc_by(3);
        m.commit_seconds
            .get_or_create(&table("unit-test"))
            .observe(0.2);
        let text = m.encode();
        assert!(
            text.contains("# TYPE flowaudit_ingest_rows_written counter"),
            "{text}"
        );
        assert!(
            text.contains("flowaudit_ingest_rows_written_total{table=\"unit-test\"} 3"),
            "{text}"
        );
        assert!(text.contains("# TYPE flowaudit_ingest_commit_duration_seconds histogram"));
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
