//! The ingest loop: poll Kafka, decode, buffer per partition, hand full buffers to the
//! [committer](crate::committer) (write, record), then let offsets advance.
//!
//! Offsets come from the warehouse, never from Kafka: on assignment each partition starts at the
//! warehouse's next offset for it (the earliest offset Kafka holds if the warehouse has recorded
//! nothing of it), and messages below the next offset are skipped (they are already recorded).
//! Kafka's committed offsets follow the warehouse only so that consumer lag can be monitored with
//! the usual tools.
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::batch::{buffer_message, Enricher, HourFiles, MessageLimits, Provenance, Rows};
use crate::committer::{self, Counts, Job, LastMessage, Outcome};
use crate::config::IngestConfig;
use crate::error::{Error, Result};
use crate::geoip::GeoIp;
use crate::networks::Networks;
use crate::schema::Table;
use crate::warehouse::{CaughtUp, MessageWitness, Warehouse};

/// Counts of one run. `consumed = written_gateway + written_flows + quarantined` always holds
/// for what was recorded; `skipped_recorded` counts re-delivered messages already recorded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestSummary {
    pub consumed: u64,
    pub written_gateway: u64,
    pub written_flows: u64,
    pub quarantined: u64,
    pub quarantine_reasons: BTreeMap<String, u64>,
    pub skipped_recorded: u64,
    pub files: u64,
    pub commits: u64,
    pub stale_commits: u64,
    pub discarded_on_revoke: u64,
    /// Ranges recorded as gaps (offsets no longer in Kafka when read), and their offsets.
    pub gaps: u64,
    pub gap_offsets: u64,
    /// Each table's Delta version at the end of the run (`-1`: no commit yet).
    pub table_versions: BTreeMap<String, i64>,
    /// Seconds from the first message received to the last, plus the final write-and-record
    /// (excludes group join and the quiet wait that detects "caught up"): the basis of
    /// throughput figures.
    pub busy_secs: f64,
}

impl IngestSummary {
    /// Whether the counts reconcile.
    pub fn reconciles(&self) -> bool {
        self.consumed == self.written_gateway + self.written_flows + self.quarantined
    }
}

/// Rebalance events, recorded by the callback (inside `poll`) and applied by the loop after it;
/// client errors, recorded for the loop's [`Health`] check.
#[derive(Default)]
struct Ctx {
    /// Set when `changed` has entries, so the loop need not take the lock per message.
    dirty: AtomicBool,
    changed: Mutex<Vec<(String, i32)>>,
    assigned: Mutex<HashSet<(String, i32)>>,
    /// The latest client error since the loop last looked, and whether librdkafka called it fatal.
    problem: Mutex<Option<Problem>>,
    /// When a client error was last logged (errors repeat every few ms while a broker is down).
    last_logged: Mutex<Option<Instant>>,
    /// Where each assigned partition starts: the warehouse's recorded position.
    warehouse: Option<Arc<Mutex<Warehouse>>>,
    /// The topic that feeds `gateway_events` (every other feeds `flows`).
    gateway_topic: String,
    /// The offset each assigned partition was positioned at (absent: its earliest offset).
    starts: Mutex<std::collections::HashMap<(String, i32), i64>>,
    /// Positions librdkafka reset because Kafka answered "offset out of range" (topic,
    /// partition, the position it was at), from its log; see [`Ingestor::check_resets`].
    resets: Mutex<Vec<(String, i32, Option<i64>)>>,
    /// The client settings of the consumer that reads the recorded last messages again at
    /// assignment ([`check_witnesses`]); `None`: not checked.
    witness_config: Option<ClientConfig>,
    /// Why ingest must stop, found by the rebalance callback (which cannot return it).
    refused: Mutex<Option<Error>>,
}

/// The partition and position of librdkafka's warning `TOPIC [PARTITION]: offset reset (at
/// offset N (leader epoch E), broker B) to …: …: Broker: Offset out of range`.
fn parse_offset_reset(msg: &str) -> Option<(String, i32, Option<i64>)> {
    if !msg.contains("offset reset (at") || !msg.contains("Offset out of range") {
        return None;
    }
    let (topic, rest) = msg.split_once(" [")?;
    let (partition, rest) = rest.split_once(']')?;
    let at = rest
        .split_once("(at offset ")
        .and_then(|(_, r)| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok());
    Some((topic.to_string(), partition.trim().parse().ok()?, at))
}

/// How often a repeating Kafka error is logged again.
const LOG_REPEAT: Duration = Duration::from_secs(10);

impl Ctx {
    /// Record a client or consume error: logged (at most every [`LOG_REPEAT`]) and left for the
    /// loop's health check.
    fn report(&self, problem: Problem) {
        crate::metrics::metrics().kafka_errors.inc();
        let mut last = self.last_logged.lock().expect("lock");
        if last.is_none_or(|t| t.elapsed() >= LOG_REPEAT) {
            warn!(error = %problem.what, "kafka client error; librdkafka keeps retrying with backoff");
            *last = Some(Instant::now());
        }
        let mut p = self.problem.lock().expect("lock");
        if p.as_ref().is_none_or(|old| problem.rank() >= old.rank()) {
            *p = Some(problem);
        }
    }
}

/// A Kafka error as the loop's health check sees it.
struct Problem {
    what: String,
    /// librdkafka says the client cannot continue.
    fatal: bool,
    /// Says what is wrong (a host, credentials, a topic), rather than only that brokers are
    /// down: kept over a vaguer error that follows it.
    specific: bool,
}

impl Problem {
    fn new(error: &KafkaError, reason: &str) -> Self {
        use rdkafka::types::RDKafkaErrorCode as C;
        let code = error.rdkafka_error_code();
        Self {
            what: describe_kafka_error(error, reason),
            fatal: code == Some(C::Fatal),
            specific: !matches!(
                code,
                Some(C::AllBrokersDown | C::BrokerTransportFailure) | None
            ),
        }
    }
    fn rank(&self) -> (bool, bool) {
        (self.fatal, self.specific)
    }
}

/// What a Kafka error means for the user, in words.
fn describe_kafka_error(error: &KafkaError, reason: &str) -> String {
    use rdkafka::types::RDKafkaErrorCode as C;
    let detail = if reason.is_empty() {
        error.to_string()
    } else {
        reason.to_string()
    };
    match error.rdkafka_error_code() {
        Some(C::Resolve) => format!("a broker's host name does not resolve: {detail}"),
        Some(C::Authentication | C::SaslAuthenticationFailed) => {
            format!("the broker refused authentication (check the SASL/TLS settings and credentials): {detail}")
        }
        Some(C::SSL) => format!("TLS with the broker failed: {detail}"),
        Some(C::TopicAuthorizationFailed) => format!("not authorised to read a topic: {detail}"),
        Some(C::GroupAuthorizationFailed) => {
            format!("not authorised to use the consumer group: {detail}")
        }
        Some(C::UnknownTopicOrPartition) => format!("a subscribed topic does not exist: {detail}"),
        Some(C::AllBrokersDown) => format!("no broker is reachable: {detail}"),
        Some(C::BrokerTransportFailure) => format!("cannot talk to a broker: {detail}"),
        _ => detail,
    }
}

impl ClientContext for Ctx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        if fac == "OFFSET" {
            if let Some(reset) = parse_offset_reset(log_message) {
                self.resets.lock().expect("lock").push(reset);
            }
        }
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            L::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {log_message}"),
            L::Notice | L::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            L::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::PartitionEOF(_))
            || matches!(
                error.rdkafka_error_code(),
                Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
            )
        {
            return;
        }
        self.report(Problem::new(&error, reason));
    }
}

/// How ingest stopped consuming.
enum Stop {
    /// SIGINT/SIGTERM, or caught up with `until_caught_up`.
    Done,
    /// Kafka cannot be used and did not recover within the grace period: the reason.
    Unrecoverable(String),
}

/// Whether Kafka is usable. A client or consume error opens a suspicion; while it lasts, a
/// metadata request every [`PROBE_EVERY`] checks that a broker answers and that both topics
/// exist. A successful probe clears it; one still failing `give_up_after_ms` after the first
/// error makes ingest stop with the reason (a librdkafka fatal error stops it at once).
#[derive(Default)]
struct Health {
    since: Option<Instant>,
    last_probe: Option<Instant>,
    reason: String,
    /// `reason` names what is wrong (see [`Problem::specific`]).
    specific: bool,
    /// `reason` is what a broker answered to the probe (the most precise of all).
    from_broker: bool,
}

const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One metadata request: `Ok` when a broker answers and every topic exists with partitions.
fn probe(consumer: &BaseConsumer<Ctx>, topics: &[&str]) -> std::result::Result<(), String> {
    let md = consumer
        .fetch_metadata(None, PROBE_TIMEOUT)
        .map_err(|e| format!("metadata request failed: {e}"))?;
    for t in topics {
        match md.topics().iter().find(|m| m.name() == *t) {
            None => return Err(format!("topic \"{t}\" does not exist")),
            Some(m) if m.error().is_some() || m.partitions().is_empty() => {
                return Err(format!(
                    "topic \"{t}\" is not usable: {}",
                    m.error()
                        .map(|e| rdkafka::types::RDKafkaErrorCode::from(e).to_string())
                        .unwrap_or_else(|| "no partitions".into())
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Why a gap was recorded: the offsets were below the earliest Kafka still held when the
/// partition was read.
pub const GAP_NOT_IN_KAFKA: &str = "not_in_kafka";

/// The earliest offset Kafka holds of a partition (one ListOffsets request; made only when the
/// offsets jump, so once per transaction with transactional producers).
fn low_watermark(c: &BaseConsumer<Ctx>, topic: &str, partition: i32) -> Result<i64> {
    // A jump in offsets is either holes (transaction markers, compaction) or a range Kafka no
    // longer holds: which one cannot be guessed, so a failed query is retried and then fatal,
    // never taken as holes (that would skip a gap silently).
    let mut last = None;
    for attempt in 1..=LOW_WATERMARK_ATTEMPTS {
        match c.fetch_watermarks(topic, partition, Duration::from_secs(5)) {
            Ok((low, _)) => return Ok(low.max(0)),
            Err(e) => {
                warn!(topic, partition, attempt, error = %e, "cannot read the earliest offset Kafka holds; retrying");
                last = Some(e);
                std::thread::sleep(Duration::from_millis(500 * attempt as u64));
            }
        }
    }
    Err(Error::Unrecoverable(format!(
        "{topic}/{partition}: offsets jump and the earliest offset Kafka holds cannot be read \
         ({}), so a lost range cannot be told from holes; stopping before anything is skipped",
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// The error for a partition that no longer holds offset `position`, where this consumer was
/// positioned, though Kafka holds offsets from below it: the topic was recreated or truncated.
fn recreated(topic: &str, partition: i32, position: i64, delivered: Option<i64>) -> Error {
    let how = match delivered {
        Some(o) => format!("Kafka delivered offset {o}, below offset {position} where this consumer was positioned"),
        None => format!("Kafka answered that offset {position}, where this consumer was positioned, is out of range, though it holds earlier offsets"),
    };
    Error::Unrecoverable(format!(
        "{topic}/{partition}: {how}: the partition holds fewer offsets than the warehouse \
         recorded of it. The topic was deleted and recreated, or truncated; its new messages \
         reuse offsets the warehouse recorded and cannot be told apart from them, so ingest \
         stops instead of skipping them as already recorded. Ingest the new topic into a new \
         warehouse or under a new topic name (docs/operations.md, \"A recreated topic\")"
    ))
}

/// The error for a partition whose message at a recorded offset is not the one the warehouse
/// recorded there: the topic was recreated and refilled past the warehouse's position.
fn refilled(topic: &str, partition: i32, recorded: &MessageWitness, now: &MessageWitness) -> Error {
    let show = |w: &MessageWitness| {
        format!(
            "timestamp {}, {} bytes, sha256 {}",
            w.timestamp_ms
                .map_or_else(|| "none".to_string(), |t| format!("{t} ms")),
            w.bytes,
            w.sha256
        )
    };
    Error::Unrecoverable(format!(
        "{topic}/{partition}: the message Kafka holds at offset {o} is not the one the warehouse \
         recorded there (recorded: {r}; now: {n}). The topic was deleted and recreated (or its \
         log truncated by an unclean leader election) and refilled past the warehouse's position {next}; its messages up to offset \
         {o} reuse offsets the warehouse recorded and would be skipped as already recorded, so \
         ingest stops instead. Ingest the new topic into a new warehouse or under a new topic \
         name (docs/operations.md, \"A recreated topic\")",
        o = recorded.offset,
        next = recorded.offset.saturating_add(1),
        r = show(recorded),
        n = show(now),
    ))
}

/// How long [`check_witnesses`] waits for Kafka before leaving a partition unchecked.
const WITNESS_TIMEOUT: Duration = Duration::from_secs(10);

/// Read again, with a consumer of its own (an explicit assignment: it never joins the group,
/// and commits nothing), the message at each witness's offset (the last message the warehouse
/// recorded of a partition) and compare it with what the warehouse recorded of it: a different message there means the topic was
/// recreated and refilled past the recorded position ([`refilled`]). A message that is no
/// longer there (retention, compaction, a partition with fewer offsets) is not compared: the
/// consumer's own checks record the first as a gap and stop on the last.
fn check_witnesses(
    config: &ClientConfig,
    witnesses: &[(String, i32, MessageWitness)],
) -> Result<()> {
    if witnesses.is_empty() {
        return Ok(());
    }
    let mut c = config.clone();
    // librdkafka assigns only with a group id; this consumer never joins the group (no
    // subscription) and never commits.
    c.set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("client.id", "flowaudit-ingest-witness");
    let consumer: BaseConsumer = c.create()?;
    let topics: std::collections::BTreeSet<&str> =
        witnesses.iter().map(|(t, _, _)| t.as_str()).collect();
    // One topic at a time: librdkafka's end-of-partition event names the partition only.
    for topic in topics {
        let mut pending: std::collections::HashMap<i32, &MessageWitness> = witnesses
            .iter()
            .filter(|(t, _, _)| t == topic)
            .map(|(_, p, w)| (*p, w))
            .collect();
        let mut tpl = TopicPartitionList::new();
        for (p, w) in &pending {
            tpl.add_partition_offset(topic, *p, Offset::Offset(w.offset))?;
        }
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + WITNESS_TIMEOUT;
        while !pending.is_empty() && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let Some(w) = pending.remove(&m.partition()) else {
                        continue;
                    };
                    if m.offset() != w.offset {
                        info!(
                            topic,
                            partition = m.partition(),
                            recorded = w.offset,
                            delivered = m.offset(),
                            "the last recorded message is not in Kafka any more: not compared"
                        );
                        continue;
                    }
                    let now = MessageWitness::of(
                        m.offset(),
                        m.timestamp().to_millis(),
                        m.payload().unwrap_or(&[]),
                    );
                    if now != *w {
                        return Err(refilled(topic, m.partition(), w, &now));
                    }
                    debug!(
                        topic,
                        partition = m.partition(),
                        offset = w.offset,
                        "Kafka still holds the last recorded message"
                    );
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some(w) = pending.remove(&p) {
                        info!(
                            topic,
                            partition = p,
                            recorded = w.offset,
                            "the partition ends before the last recorded message: not compared"
                        );
                    }
                }
                Some(Err(e)) => debug!(topic, error = %e, "reading the last recorded messages"),
                None => {}
            }
        }
        for (p, w) in pending {
            warn!(
                topic,
                partition = p,
                offset = w.offset,
                "Kafka did not deliver the last recorded message in time: not compared"
            );
        }
        consumer.unassign()?;
    }
    Ok(())
}

/// How often [`low_watermark`] asks before giving up.
const LOW_WATERMARK_ATTEMPTS: u32 = 5;

/// The table a topic feeds: `gateway_events` for the gateway topic, `flows` for every other.
fn primary_table(gateway_topic: &str, topic: &str) -> Table {
    if topic == gateway_topic {
        Table::GatewayEvents
    } else {
        Table::Flows
    }
}

impl Ctx {
    /// Set where each newly assigned partition starts: the first offset the warehouse has not
    /// recorded, or the earliest offset Kafka still holds when it has recorded nothing of that
    /// partition. Kafka's committed offsets are never used to start: they may be ahead of the
    /// warehouse (a fresh warehouse with a used group) and would skip data silently. Starting
    /// lower than needed is always safe, as messages below the recorded position are skipped.
    fn start_at_recorded_positions(&self, tpl: &mut TopicPartitionList) {
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let mut witnesses = Vec::new();
        for (topic, partition) in parts {
            let recorded = match &self.warehouse {
                Some(m) => m.lock().expect("warehouse lock").next_offset(
                    primary_table(&self.gateway_topic, &topic),
                    &topic,
                    partition,
                ),
                None => Ok(None),
            };
            if let (Ok(Some(next)), Some(m), Some(_)) =
                (&recorded, &self.warehouse, &self.witness_config)
            {
                let table = primary_table(&self.gateway_topic, &topic);
                match m.lock().expect("warehouse lock").last_message(
                    table,
                    &topic,
                    partition,
                    next - 1,
                ) {
                    Ok(Some(w)) => witnesses.push((topic.clone(), partition, w)),
                    Ok(None) => {}
                    Err(e) => {
                        warn!(topic, partition, error = %e, "cannot read the last recorded message: not compared")
                    }
                }
            }
            let start = match recorded {
                Ok(Some(next)) => Offset::Offset(next),
                Ok(None) => Offset::Beginning,
                Err(e) => {
                    warn!(topic, partition, error = %e, "cannot read the recorded position: starting at the earliest retained offset (what is recorded is skipped)");
                    Offset::Beginning
                }
            };
            info!(topic, partition, start = ?start, "partition assigned: starting at the warehouse's position");
            let mut starts = self.starts.lock().expect("lock");
            match start {
                Offset::Offset(o) => starts.insert((topic.clone(), partition), o),
                _ => starts.remove(&(topic.clone(), partition)),
            };
            if let Err(e) = tpl.set_partition_offset(&topic, partition, start) {
                warn!(topic, partition, error = %e, "cannot set the start offset");
            }
        }
        // Before anything is read from the recorded positions: is the message before each
        // still the one recorded? (docs/DESIGN.md, "A topic recreated and refilled")
        if let Some(config) = &self.witness_config {
            if let Err(e) = check_witnesses(config, &witnesses) {
                self.refused.lock().expect("lock").get_or_insert(e);
                self.dirty.store(true, Ordering::Release);
            }
        }
    }

    /// Note moved partitions for the loop (see [`Ingestor::apply_rebalance`]).
    fn moved(&self, tpl: &TopicPartitionList, assigned_now: bool) {
        let mut assigned = self.assigned.lock().expect("lock");
        for e in tpl.elements() {
            let tp = (e.topic().to_string(), e.partition());
            if assigned_now {
                assigned.insert(tp.clone());
            } else {
                info!(topic = %tp.0, partition = tp.1, "partition revoked");
                assigned.remove(&tp);
            }
            self.changed.lock().expect("lock").push(tp);
            self.dirty.store(true, Ordering::Release);
        }
    }
}

impl ConsumerContext for Ctx {
    /// The default rebalance, except that an assignment starts at the warehouse's positions.
    fn rebalance(&self, c: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(c.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.start_at_recorded_positions(tpl);
                let r = if cooperative {
                    c.incremental_assign(tpl)
                } else {
                    c.assign(tpl)
                };
                if r.is_ok() {
                    self.moved(tpl, true);
                }
                r
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.moved(tpl, false);
                if cooperative {
                    c.incremental_unassign(tpl)
                } else {
                    c.unassign()
                }
            }
            other => {
                let e = KafkaError::Rebalance(other.into());
                self.report(Problem::new(&e, "rebalancing"));
                let mut all = TopicPartitionList::new();
                if let Ok(a) = c.assignment() {
                    all = a;
                }
                self.moved(&all, false);
                if cooperative {
                    c.incremental_unassign(&all)
                } else {
                    c.unassign()
                }
            }
        };
        if let Err(e) = result {
            self.report(Problem::new(&e, "applying a rebalance"));
        }
    }
}

/// Messages of one Kafka partition waiting to be written: one [`Rows`] per output file.
struct PartBuffer {
    files: HourFiles,
    first_offset: i64,
    last_offset: i64,
    opened: Instant,
    /// Memory these rows hold: exact after a recount, estimated (payload size) between.
    bytes: usize,
    /// Rows were added since the last recount.
    dirty: bool,
    counts: Counts,
    /// The message at `last_offset` (its payload copied; the commit records its digest).
    last_timestamp_ms: Option<i64>,
    last_payload: Vec<u8>,
}

struct PartState {
    topic: String,
    partition: i32,
    /// This incarnation of the partition (new after a rebalance or a rewind).
    epoch: u64,
    /// Offsets below this are recorded, or buffered/in flight to be.
    next_offset: i64,
    /// One past the highest offset received (recorded or not).
    seen: i64,
    /// Kafka was asked for nothing below this offset (where the partition was positioned at
    /// assignment or by our seek, then one past each offset received): a message below it means
    /// Kafka reset the position, which it does when the position is out of range.
    floor: i64,
    buf: Option<PartBuffer>,
}

struct Ingestor<'c> {
    cfg: &'c IngestConfig,
    enricher: Enricher,
    warehouse: Arc<Mutex<Warehouse>>,
    jobs: SyncSender<Job>,
    outcomes: Receiver<Result<Outcome>>,
    in_flight: usize,
    /// Memory held by each job handed to the committer, in order, until its outcome returns.
    in_flight_sizes: VecDeque<usize>,
    in_flight_bytes: usize,
    next_epoch: u64,
    parts: Vec<PartState>,
    /// Memory held by the partitions' buffers (see [`PartBuffer::bytes`]).
    buffered_bytes: usize,
    /// Estimated bytes added since the last recount (so that near the bound a recount is not
    /// done per message).
    since_recount: usize,
    health: Health,
    summary: IngestSummary,
    last_msg: Instant,
    last_assign: Instant,
    /// Each partition's latest caught-up mark, and whether it changed since last written.
    marks: BTreeMap<(String, i32), (CaughtUp, bool)>,
    marks_dirty: bool,
    marks_written: Option<Instant>,
    first_msg: Option<Instant>,
    /// Each partition's next offset the warehouse records, as last known (for the lag metric).
    recorded: BTreeMap<(String, i32), i64>,
    /// When the lag metric was last updated.
    lag_updated: Option<Instant>,
}

/// How often the caught-up marks are written at most while ingest runs.
const MARK_EVERY: Duration = Duration::from_secs(5);

/// A partition's unchanged mark is renewed (its time moved on) at most this often.
const MARK_REFRESH: chrono::Duration = chrono::Duration::seconds(30);

/// How long "caught up" waits, after the last message, for a position reset to be reported when
/// a partition's recorded position is past the high watermark librdkafka knows.
const RESET_GRACE: Duration = Duration::from_secs(1);

/// How often the loop checks flush deadlines, progress and "caught up".
const TICK: Duration = Duration::from_millis(50);

/// What keeping within the rows' share of memory asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BoundStep {
    /// Nothing (more) to do.
    Enough,
    /// Over the bound with a job in flight: wait for the committer's oldest job.
    Wait,
    /// Over the bound with the committer idle: hand it the largest buffer, then look again.
    Write,
    /// Over half the bound with the committer idle: hand it the largest buffer without waiting,
    /// so that it writes while the consumer goes on decoding rather than the consumer waiting for
    /// a whole job each time the bound is reached (docs/DESIGN.md, "Bounded memory").
    WriteEarly,
}

/// The next step for `held` bytes (buffers and jobs in flight) against `bound` with `in_flight`
/// jobs handed to the committer.
fn bound_step(held: usize, bound: usize, in_flight: usize) -> BoundStep {
    match (held > bound, in_flight > 0) {
        (true, true) => BoundStep::Wait,
        (true, false) => BoundStep::Write,
        (false, false) if held > bound / 2 => BoundStep::WriteEarly,
        _ => BoundStep::Enough,
    }
}

/// The (low, high) watermarks librdkafka cached for a partition: high from the last fetch
/// response (`None` before the first), low when known (else -1).
fn cached_watermarks(
    consumer: &BaseConsumer<Ctx>,
    topic: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: a valid client handle and NUL-terminated topic; librdkafka only writes the two
    // out-parameters.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some((low, high))
}

/// Build the consumer's librdkafka configuration (auto-commit off; offsets come from the warehouse's Delta logs).
///
/// The prefetch is held to `cfg.prefetch_bytes()`, an eighth of the shared budget. librdkafka
/// holds each queued message with a few hundred bytes of its own beside the payload, and
/// `queued.max.messages.kbytes` counts payloads only: so payloads get a quarter of the share, the
/// message count per partition (`queued.min.messages`) allows 1 KiB a message for half of it, and
/// a fetch response an eighth (at most 8 MiB; librdkafka refuses a `fetch.max.bytes` below
/// `message.max.bytes`, 1 MB by default, so a whole fetch is never less than that). A full queue
/// postpones the next fetch by `fetch.queue.backoff.ms`, 1 s by default: with a queue this
/// shallow that stalls the consumer (3.5x slower in make bench), so it is 10 ms. `[ingest.kafka]`
/// overrides any of these (docs/operations.md, "Memory").
pub fn client_config(cfg: &IngestConfig) -> ClientConfig {
    let prefetch = cfg.prefetch_bytes();
    let fetch = (prefetch / 8).clamp(64 << 10, 8 << 20);
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
        .set("fetch.message.max.bytes", fetch.to_string())
        .set("fetch.wait.max.ms", "50")
        .set("fetch.queue.backoff.ms", "10")
        .set(
            "queued.min.messages",
            (prefetch / 2 / 1024).clamp(100, 10_000_000).to_string(),
        )
        .set(
            "queued.max.messages.kbytes",
            (prefetch / 4 / 1024).clamp(1, 2_097_151).to_string(),
        )
        .set("receive.message.max.bytes", "209715200")
        .set("client.id", "flowaudit-ingest");
    for (k, v) in &cfg.kafka {
        c.set(k, v);
    }
    if !cfg.kafka.contains_key("fetch.max.bytes") {
        let message_max = c
            .get("message.max.bytes")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1_000_000);
        c.set("fetch.max.bytes", fetch.max(message_max).to_string());
    }
    c
}

/// Run ingest until `shutdown` is set (SIGINT/SIGTERM) or, with `until_caught_up`, until the
/// assigned partitions are consumed to their end. Everything consumed is written and recorded
/// before this returns `Ok`.
pub fn run(cfg: &IngestConfig, shutdown: Arc<AtomicBool>) -> Result<IngestSummary> {
    let networks = Networks::load(&cfg.policy)?;
    crate::metrics::readiness().set(
        "ingest",
        Ok(format!("{}/networks.toml", cfg.policy.display())),
    );
    let geoip = cfg.geoip.as_deref().map(GeoIp::open).transpose()?;
    match &geoip {
        Some(g) => {
            info!(path = %g.identity().path.display(), sha256 = %g.identity().sha256, kind = g.identity().kind, "GeoIP database loaded")
        }
        None => warn!("no GeoIP database configured: countries of external addresses will be null"),
    }
    let geoip_sha = geoip.as_ref().map(|g| g.identity().sha256.clone());
    let warehouse = Warehouse::open(&cfg.warehouse)?;
    info!(warehouse = %warehouse.location(), versions = ?warehouse.versions(), writer = warehouse.writer_id(), "warehouse opened");
    let warehouse = Arc::new(Mutex::new(warehouse));

    let ctx = Ctx {
        warehouse: Some(warehouse.clone()),
        gateway_topic: cfg.gateway_topic.clone(),
        witness_config: Some(client_config(cfg)),
        ..Ctx::default()
    };
    let consumer: BaseConsumer<Ctx> = client_config(cfg).create_with_context(ctx)?;
    consumer.subscribe(&[&cfg.gateway_topic, &cfg.flow_topic])?;
    info!(brokers = %cfg.brokers, group = %cfg.group, topics = ?[&cfg.gateway_topic, &cfg.flow_topic], "subscribed");

    // One job queued and one being written at most: bounds the memory of buffers in flight.
    let (job_tx, job_rx) = sync_channel::<Job>(1);
    let (out_tx, out_rx) = channel();
    std::thread::scope(|scope| {
        let m = warehouse.clone();
        let settings = cfg.parquet.clone();
        let committer = scope.spawn(move || committer::run(job_rx, out_tx, m, settings, geoip_sha));
        let now = Instant::now();
        let mut ing = Ingestor {
            cfg,
            enricher: Enricher { geoip, networks },
            warehouse: warehouse.clone(),
            jobs: job_tx,
            outcomes: out_rx,
            in_flight: 0,
            in_flight_sizes: VecDeque::new(),
            in_flight_bytes: 0,
            next_epoch: 0,
            parts: Vec::new(),
            buffered_bytes: 0,
            since_recount: 0,
            health: Health::default(),
            summary: IngestSummary::default(),
            last_msg: now,
            last_assign: now,
            marks: BTreeMap::new(),
            marks_dirty: false,
            marks_written: None,
            first_msg: None,
            recorded: BTreeMap::new(),
            lag_updated: None,
        };
        let result = ing.consume(&consumer, &shutdown).and_then(|stop| {
            // Write and record everything before exiting, also when Kafka became unusable
            // (recording needs only the local disk). On an I/O error, buffered data is not
            // recorded and its offsets do not advance: the next run reads it again.
            let t = Instant::now();
            ing.flush_all()?;
            ing.drain(&consumer, true)?;
            if matches!(stop, Stop::Done) {
                ing.mark_caught_up(&consumer);
                ing.write_marks(true);
            }
            Ok((t.elapsed(), stop))
        });
        let Ingestor {
            jobs,
            summary,
            first_msg,
            last_msg,
            parts,
            ..
        } = ing;
        drop(jobs);
        committer.join().expect("committer thread");
        let (final_flush, stop) = result?;
        let mut summary = summary;
        if let Stop::Unrecoverable(reason) = stop {
            // No Kafka commit: the broker cannot be used, and the warehouse is authoritative.
            warn!(
                recorded = summary.consumed,
                files = summary.files,
                "everything consumed was written and recorded; stopping because Kafka cannot be used"
            );
            return Err(Error::Unrecoverable(format!(
                "{reason}; still failing after {} s (give_up_after_ms = {}); the {} messages consumed before were written and recorded",
                cfg.give_up_after_ms / 1000,
                cfg.give_up_after_ms,
                summary.consumed
            )));
        }
        commit_kafka_offsets(&consumer, &parts, CommitMode::Sync);
        let w = warehouse.lock().expect("warehouse lock");
        summary.table_versions = w
            .versions()
            .into_iter()
            .map(|(t, v)| (t.to_string(), v))
            .collect();
        if let Some(first) = first_msg {
            summary.busy_secs =
                (last_msg.saturating_duration_since(first) + final_flush).as_secs_f64();
        }
        Ok(summary)
    })
}

fn commit_partition(
    c: &BaseConsumer<Ctx>,
    topic: &str,
    partition: i32,
    next: i64,
    mode: CommitMode,
) {
    let mut tpl = TopicPartitionList::new();
    if tpl
        .add_partition_offset(topic, partition, Offset::Offset(next))
        .is_ok()
    {
        match c.commit(&tpl, mode) {
            Ok(())
            | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                debug!(error = %e, topic, partition, "kafka offset commit failed (the warehouse is authoritative)")
            }
        }
    }
}

/// Commit every assigned partition's recorded position to Kafka (for lag monitoring).
fn commit_kafka_offsets(c: &BaseConsumer<Ctx>, parts: &[PartState], mode: CommitMode) {
    let assigned = c.context().assigned.lock().expect("lock").clone();
    for p in parts {
        if p.next_offset > 0 && assigned.contains(&(p.topic.clone(), p.partition)) {
            commit_partition(c, &p.topic, p.partition, p.next_offset, mode);
        }
    }
}

/// Add a committed job's counts to the metrics.
fn count_outcome(gateway_topic: &str, topic: &str, counts: &Counts) {
    let m = crate::metrics::metrics();
    m.consumed
        .get_or_create(&crate::metrics::topic(topic))
        .inc_by(counts.msgs);
    if counts.already_recorded > 0 {
        m.skipped_recorded
            .get_or_create(&crate::metrics::topic(topic))
            .inc_by(counts.already_recorded);
    }
    for (table, n) in [
        (Table::GatewayEvents, counts.gateway),
        (Table::Flows, counts.flows),
    ] {
        // Created at zero too, so that a scraper sees the series from the first commit.
        m.rows_written
            .get_or_create(&crate::metrics::table(table.name()))
            .inc_by(n);
    }
    let for_table = primary_table(gateway_topic, topic).name();
    for (reason, n) in &counts.reasons {
        m.rows_quarantined
            .get_or_create(&crate::metrics::QuarantineLabels {
                table: for_table.into(),
                reason: (*reason).into(),
            })
            .inc_by(*n);
    }
}

/// How often the lag metric is updated.
const LAG_EVERY: Duration = Duration::from_secs(1);

impl Ingestor<'_> {
    /// Set each assigned partition's lag: the high watermark librdkafka last saw minus the next
    /// offset the warehouse records (its position at assignment, then each commit's).
    fn update_lag(&mut self, consumer: &BaseConsumer<Ctx>) {
        if self.lag_updated.is_some_and(|t| t.elapsed() < LAG_EVERY) {
            return;
        }
        self.lag_updated = Some(Instant::now());
        let m = crate::metrics::metrics();
        let assigned = consumer.context().assigned.lock().expect("lock").clone();
        m.partitions_assigned.set(assigned.len() as i64);
        let starts = consumer.context().starts.lock().expect("lock").clone();
        for (topic, partition) in assigned {
            let Some((low, high)) = cached_watermarks(consumer, &topic, partition) else {
                continue;
            };
            if high < 0 {
                continue;
            }
            let key = (topic.clone(), partition);
            let next = self
                .recorded
                .get(&key)
                .or(starts.get(&key))
                .copied()
                .unwrap_or(low.max(0));
            let l = crate::metrics::partition(&topic, partition);
            m.consumer_lag.get_or_create(&l).set((high - next).max(0));
            m.recorded_offset.get_or_create(&l).set(next);
        }
    }

    fn consume(&mut self, consumer: &BaseConsumer<Ctx>, shutdown: &AtomicBool) -> Result<Stop> {
        let cfg = self.cfg;
        let progress = Duration::from_secs(cfg.progress_interval_s.max(1));
        let mut last_progress = Instant::now();
        let mut last_consumed = 0u64;
        let mut warned_unassigned = false;
        let mut next_tick = Instant::now();
        loop {
            if shutdown.load(Ordering::Relaxed) {
                info!("shutdown requested: writing and recording what is buffered");
                return Ok(Stop::Done);
            }
            let polled = consumer.poll(Duration::from_millis(100));
            if consumer.context().dirty.swap(false, Ordering::AcqRel) {
                if let Some(e) = consumer.context().refused.lock().expect("lock").take() {
                    return Err(e);
                }
                self.apply_rebalance(consumer);
            }
            let mut queue_drained = false;
            match polled {
                None => queue_drained = true,
                Some(Ok(msg)) => {
                    self.handle(consumer, &msg)?;
                    if self.buffered_bytes + self.in_flight_bytes > cfg.row_bytes()
                        && self.since_recount >= cfg.row_bytes() / 64
                    {
                        self.recount();
                        self.enforce_bound(consumer)?;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => consumer.context().report(Problem::new(&e, "")),
            }
            // Housekeeping runs on a tick, not per message (or when the queue is empty).
            let now = Instant::now();
            if now < next_tick && !queue_drained {
                continue;
            }
            next_tick = now + TICK;
            self.check_resets(consumer)?;
            self.drain(consumer, false)?;
            self.flush_due(consumer)?;
            if queue_drained {
                self.mark_caught_up(consumer);
            }
            self.write_marks(false);
            self.update_lag(consumer);
            if let Some(reason) = self.check_health(consumer) {
                return Ok(Stop::Unrecoverable(reason));
            }
            if last_progress.elapsed() >= progress {
                let c = self.summary.consumed;
                info!(
                    recorded = c,
                    rate_per_s =
                        ((c - last_consumed) as f64 / last_progress.elapsed().as_secs_f64()) as u64,
                    buffered = self
                        .parts
                        .iter()
                        .filter_map(|p| p.buf.as_ref())
                        .map(|b| b.counts.msgs)
                        .sum::<u64>(),
                    buffered_bytes = self.buffered_bytes,
                    in_flight_bytes = self.in_flight_bytes,
                    committed_files = self.summary.files,
                    "progress"
                );
                last_consumed = c;
                last_progress = Instant::now();
            }
            if cfg.until_caught_up {
                let assigned = consumer.context().assigned.lock().expect("lock").clone();
                if assigned.is_empty() {
                    let unassigned = self.last_assign.elapsed();
                    if !warned_unassigned && unassigned > Duration::from_secs(30) {
                        warn!("no partitions assigned yet: is the broker reachable and do the topics exist?");
                        warned_unassigned = true;
                    }
                    // A batch run never waits forever: other members of the group may hold
                    // every partition (more processes than partitions), or the group may not
                    // settle. The broker being unreachable is reported by the health check.
                    let limit = Duration::from_millis(cfg.give_up_after_ms.max(cfg.idle_ms));
                    if unassigned > limit {
                        warn!(
                            waited_ms = unassigned.as_millis() as u64,
                            "no partition was assigned to this process within give_up_after_ms: stopping with nothing to read"
                        );
                        return Ok(Stop::Done);
                    }
                } else if queue_drained {
                    if let Some(why) = self.caught_up(consumer, &assigned)? {
                        info!("{why}");
                        return Ok(Stop::Done);
                    }
                }
            }
        }
    }

    /// Mark each assigned partition whose every received message is recorded (nothing buffered,
    /// nothing in flight) and whose position reached the high watermark librdkafka last saw:
    /// everything Kafka held for it is recorded as of now ([`CaughtUp`]).
    fn mark_caught_up(&mut self, consumer: &BaseConsumer<Ctx>) {
        // Nothing in flight, and Kafka usable (a stale cached high watermark proves nothing).
        if self.in_flight > 0 || self.health.since.is_some() {
            return;
        }
        let now = chrono::Utc::now();
        let assigned = consumer.context().assigned.lock().expect("lock").clone();
        let positions = consumer.position().ok();
        let at = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let writer = self
            .warehouse
            .lock()
            .expect("warehouse lock")
            .writer_id()
            .to_string();
        // Every assigned partition, also one that never delivered a message (an empty topic is
        // complete too).
        for (topic, partition) in assigned {
            let Ok(idx) = self.state_index(consumer, &topic, partition) else {
                continue;
            };
            let p = &self.parts[idx];
            if p.buf.is_some() {
                continue;
            }
            let Some((low, high)) = cached_watermarks(consumer, &p.topic, p.partition) else {
                continue;
            };
            let fetched = positions
                .as_ref()
                .and_then(|tpl| tpl.find_partition(&p.topic, p.partition))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(-1);
            let pos = p.seen.max(p.next_offset).max(low.max(0)).max(fetched);
            let recorded_to = p.next_offset.max(0);
            // Not caught up; or messages expired unrecorded (below the low watermark: a gap not
            // recorded yet); or a position past the end (a recreated topic, about to stop).
            if high < 0 || pos < high || recorded_to < low || p.next_offset > high {
                continue;
            }
            // Unchanged and recent: not rewritten (each mark is a PUT).
            if self
                .marks
                .get(&(p.topic.clone(), p.partition))
                .is_some_and(|(m, _)| {
                    m.recorded_to == recorded_to
                        && chrono::DateTime::parse_from_rfc3339(&m.at)
                            .is_ok_and(|t| now.signed_duration_since(t) < MARK_REFRESH)
                })
            {
                continue;
            }
            self.marks.insert(
                (p.topic.clone(), p.partition),
                (
                    CaughtUp {
                        table: primary_table(&self.cfg.gateway_topic, &p.topic)
                            .name()
                            .to_string(),
                        topic: p.topic.clone(),
                        partition: p.partition,
                        recorded_to,
                        high_watermark: high,
                        at: at.clone(),
                        writer: writer.clone(),
                        closed: false,
                    },
                    true,
                ),
            );
            self.marks_dirty = true;
        }
    }

    /// Write the caught-up marks that changed, at most every [`MARK_EVERY`] unless `now`. A
    /// failure is logged and retried later: a mark only ever delays a judgement of silence.
    fn write_marks(&mut self, now: bool) {
        if !self.marks_dirty
            || (!now && self.marks_written.is_some_and(|t| t.elapsed() < MARK_EVERY))
        {
            return;
        }
        let marks: Vec<CaughtUp> = self
            .marks
            .values()
            .filter(|(_, dirty)| *dirty)
            .map(|(m, _)| m.clone())
            .collect();
        let res = self
            .warehouse
            .lock()
            .expect("warehouse lock")
            .record_caught_up(&marks);
        self.marks_written = Some(Instant::now());
        match res {
            Ok(()) => {
                self.marks_dirty = false;
                for (_, dirty) in self.marks.values_mut() {
                    *dirty = false;
                }
            }
            Err(e) => warn!(error = %e, "cannot write the caught-up marks (retrying)"),
        }
    }

    /// Look at the positions librdkafka reset since the last tick because Kafka answered "offset
    /// out of range". Below the earliest offset Kafka holds, that is retention (the range is
    /// recorded as a gap when the first message arrives); at or above it, the position is past
    /// the partition's end: the topic was recreated or truncated, and ingest stops
    /// (docs/DESIGN.md, "A topic recreated with fewer offsets").
    fn check_resets(&mut self, consumer: &BaseConsumer<Ctx>) -> Result<()> {
        let resets = std::mem::take(&mut *consumer.context().resets.lock().expect("lock"));
        for (topic, partition, at) in resets {
            let recorded = self
                .parts
                .iter()
                .find(|p| p.topic == topic && p.partition == partition)
                .map(|p| p.next_offset)
                .filter(|o| *o != i64::MIN);
            let Some(at) = at.or(recorded) else {
                continue;
            };
            let low = low_watermark(consumer, &topic, partition)?;
            if at < low {
                info!(topic, partition, position = at, earliest = low, "the position is below the earliest offset Kafka holds: the range will be recorded as a gap");
                continue;
            }
            return Err(recreated(&topic, partition, at, None));
        }
        Ok(())
    }

    /// Partitions that moved: forget their state (buffers are dropped unrecorded, so the next
    /// owner reads them again) and reload the next offset from the warehouse when they return.
    fn apply_rebalance(&mut self, consumer: &BaseConsumer<Ctx>) {
        let changed: Vec<_> =
            std::mem::take(&mut *consumer.context().changed.lock().expect("lock"));
        if changed.is_empty() {
            return;
        }
        self.last_assign = Instant::now();
        self.last_msg = Instant::now();
        for (topic, partition) in changed {
            // Its next owner marks it; an old mark from here must not overwrite a newer one.
            self.marks.remove(&(topic.clone(), partition));
            // Its next owner reports its lag.
            self.recorded.remove(&(topic.clone(), partition));
            let m = crate::metrics::metrics();
            let l = crate::metrics::partition(&topic, partition);
            m.consumer_lag.remove(&l);
            m.recorded_offset.remove(&l);
            if let Some(i) = self
                .parts
                .iter()
                .position(|p| p.topic == topic && p.partition == partition)
            {
                let st = self.parts.swap_remove(i);
                if let Some(b) = st.buf {
                    self.buffered_bytes -= b.bytes;
                    self.summary.discarded_on_revoke += b.counts.msgs;
                    info!(
                        topic,
                        partition,
                        messages = b.counts.msgs,
                        "partition moved: unrecorded buffer dropped, to be read again by its owner"
                    );
                }
            }
        }
    }

    /// Caught up: the local queue was drained by the last poll, and every assigned partition's
    /// position is at or past the high watermark librdkafka cached from the last fetch response
    /// (no extra request, and no reliance on ListOffsets, which some brokers answer wrongly).
    /// The position is the consumer's (librdkafka's), which moves past transaction markers and
    /// aborted records that are never delivered; offsets delivered to us alone would stop below
    /// the high watermark of a transactional topic. As a safety net, `idle_ms` without any
    /// message also ends the run, with a warning. Returns why it stops, or `None`.
    fn caught_up(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        assigned: &HashSet<(String, i32)>,
    ) -> Result<Option<&'static str>> {
        const IDLE: &str = "stopping after the idle timeout (idle_ms) without having seen every partition reach its high watermark";
        let quiet = self.last_msg.elapsed();
        if quiet < Duration::from_millis(200) {
            return Ok(None);
        }
        let give_up = quiet >= Duration::from_millis(self.cfg.idle_ms);
        let positions = consumer.position().ok();
        for (topic, partition) in assigned {
            let Some((low, high)) = cached_watermarks(consumer, topic, *partition) else {
                if give_up {
                    warn!(topic, partition, "no high watermark known for a partition");
                    return Ok(Some(IDLE));
                }
                return Ok(None);
            };
            let fetched = positions
                .as_ref()
                .and_then(|tpl| tpl.find_partition(topic, *partition))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(-1);
            let idx = self.state_index(consumer, topic, *partition)?;
            // Nothing received and nothing recorded: the partition starts at its low watermark.
            let pos = self.parts[idx]
                .seen
                .max(self.parts[idx].next_offset)
                .max(low.max(0))
                .max(fetched);
            // A recorded position past the end librdkafka knows: a broker that reports its high
            // watermark low (the test broker does), or a recreated topic, whose out-of-range
            // reset ([`Self::check_resets`]) may still be on its way: wait a little longer.
            if self.parts[idx].next_offset > high && quiet < RESET_GRACE && !give_up {
                return Ok(None);
            }
            if pos < high {
                if give_up {
                    warn!(
                        topic,
                        partition,
                        position = pos,
                        high_watermark = high,
                        "partition did not reach its high watermark"
                    );
                    return Ok(Some(IDLE));
                }
                return Ok(None);
            }
        }
        self.check_resets(consumer)?;
        Ok(Some("caught up with the topics: every assigned partition's position reached its high watermark"))
    }

    /// Look at the errors reported since the last tick and, while any is unresolved, probe
    /// the brokers. Returns the reason to stop once Kafka stayed unusable for the grace period.
    fn check_health(&mut self, consumer: &BaseConsumer<Ctx>) -> Option<String> {
        let reported = consumer.context().problem.lock().expect("lock").take();
        if let Some(p) = reported {
            if p.fatal {
                return Some(format!("librdkafka reported a fatal error: {}", p.what));
            }
            if self.health.since.is_none()
                || (!self.health.from_broker && (p.specific || !self.health.specific))
            {
                self.health.reason = p.what;
                self.health.specific = p.specific;
            }
            self.health.since.get_or_insert_with(Instant::now);
        }
        let since = self.health.since?;
        if self
            .health
            .last_probe
            .is_none_or(|t| t.elapsed() >= PROBE_EVERY)
        {
            let topics = [
                self.cfg.gateway_topic.as_str(),
                self.cfg.flow_topic.as_str(),
            ];
            let result = probe(consumer, &topics);
            self.health.last_probe = Some(Instant::now());
            match result {
                Ok(()) => {
                    info!(
                        after_s = since.elapsed().as_secs(),
                        "kafka is usable again: a broker answers and both topics exist"
                    );
                    self.health = Health {
                        last_probe: self.health.last_probe,
                        ..Health::default()
                    };
                    return None;
                }
                // A broker answered: what it said is the most precise reason.
                Err(why) if !why.starts_with("metadata request failed") => {
                    self.health.reason = why;
                    self.health.specific = true;
                    self.health.from_broker = true;
                }
                Err(why) if self.health.reason.is_empty() => self.health.reason = why,
                Err(_) => {}
            }
        }
        (since.elapsed() >= Duration::from_millis(self.cfg.give_up_after_ms))
            .then(|| format!("kafka cannot be used: {}", self.health.reason))
    }

    fn state_index(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        topic: &str,
        partition: i32,
    ) -> Result<usize> {
        if let Some(i) = self
            .parts
            .iter()
            .position(|p| p.partition == partition && p.topic == topic)
        {
            return Ok(i);
        }
        let next = self
            .warehouse
            .lock()
            .expect("warehouse lock")
            .next_offset(
                primary_table(&self.cfg.gateway_topic, topic),
                topic,
                partition,
            )?
            .unwrap_or(i64::MIN);
        debug!(
            topic,
            partition,
            next_offset = next,
            "resuming partition from the warehouse"
        );
        if next != i64::MIN {
            self.recorded.insert((topic.to_string(), partition), next);
        }
        self.next_epoch += 1;
        self.parts.push(PartState {
            topic: topic.to_string(),
            partition,
            epoch: self.next_epoch,
            next_offset: next,
            seen: i64::MIN,
            floor: consumer
                .context()
                .starts
                .lock()
                .expect("lock")
                .get(&(topic.to_string(), partition))
                .copied()
                .unwrap_or(i64::MIN),
            buf: None,
        });
        Ok(self.parts.len() - 1)
    }

    fn handle(&mut self, consumer: &BaseConsumer<Ctx>, msg: &BorrowedMessage<'_>) -> Result<()> {
        let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
        self.last_msg = Instant::now();
        self.first_msg.get_or_insert(self.last_msg);
        let idx = self.state_index(consumer, topic, partition)?;
        let (expected, floor) = (self.parts[idx].next_offset, self.parts[idx].floor);
        if offset < floor {
            return Err(recreated(topic, partition, floor, Some(offset)));
        }
        self.parts[idx].floor = offset.saturating_add(1);
        if offset > expected && expected != i64::MIN {
            // Offsets can have holes (transaction markers, compaction); a jump past the earliest
            // offset Kafka still holds is a range lost to retention or an offset reset.
            let low = low_watermark(consumer, topic, partition)?;
            if low > expected {
                self.record_gap(idx, expected, low.min(offset) - 1)?;
            }
        }
        let st = &mut self.parts[idx];
        st.seen = st.seen.max(offset.saturating_add(1));
        if offset < st.next_offset {
            self.summary.skipped_recorded += 1;
            return Ok(());
        }
        let target = primary_table(&self.cfg.gateway_topic, topic);
        let payload = msg.payload().unwrap_or(&[]);
        let prov = Provenance {
            topic,
            partition,
            offset,
            timestamp_ms: msg.timestamp().to_millis(),
        };
        let buf = st.buf.get_or_insert_with(|| PartBuffer {
            files: BTreeMap::new(),
            first_offset: offset,
            last_offset: offset,
            opened: Instant::now(),
            bytes: 0,
            dirty: false,
            counts: Counts::default(),
            last_timestamp_ms: None,
            last_payload: Vec::new(),
        });
        let mut new_file_bytes = 0usize;
        let limits = MessageLimits {
            max_message_bytes: self.cfg.max_message_bytes,
            quarantine_raw_max_bytes: self.cfg.quarantine_raw_max_bytes,
        };
        match buffer_message(
            &mut buf.files,
            target,
            payload,
            &prov,
            limits,
            &self.enricher,
            || chrono::Utc::now().timestamp_micros(),
            &mut new_file_bytes,
        ) {
            None if target == Table::GatewayEvents => buf.counts.gateway += 1,
            None => buf.counts.flows += 1,
            Some(r) => {
                debug!(topic, partition, offset, reason = %r, "quarantined");
                buf.counts.quarantined += 1;
                *buf.counts.reasons.entry(r.code.as_str()).or_default() += 1;
            }
        }
        // An estimate until the next recount: the payload kept, plus a new file's builders.
        let size = payload.len().min(self.cfg.quarantine_raw_max_bytes) + 128 + new_file_bytes;
        buf.bytes += size;
        buf.dirty = true;
        buf.counts.msgs += 1;
        buf.last_offset = offset;
        buf.last_timestamp_ms = prov.timestamp_ms;
        buf.last_payload.clear();
        buf.last_payload.extend_from_slice(payload);
        st.next_offset = offset.saturating_add(1);
        self.buffered_bytes += size;
        self.since_recount += size;
        if buf.counts.msgs as usize >= self.cfg.max_file_rows {
            self.flush(idx)?;
        }
        Ok(())
    }

    /// Flush partitions whose buffer is old enough, then keep within the memory bound.
    fn flush_due(&mut self, consumer: &BaseConsumer<Ctx>) -> Result<()> {
        let age = Duration::from_millis(self.cfg.flush_interval_ms);
        for i in 0..self.parts.len() {
            if self.parts[i]
                .buf
                .as_ref()
                .is_some_and(|b| b.opened.elapsed() >= age)
            {
                self.flush(i)?;
            }
        }
        self.recount();
        self.enforce_bound(consumer)
    }

    /// Replace the estimates of changed buffers by what their rows really hold.
    fn recount(&mut self) {
        for st in &mut self.parts {
            if let Some(b) = st.buf.as_mut().filter(|b| b.dirty) {
                let held = std::mem::size_of::<PartBuffer>()
                    + b.files.values().map(Rows::held_bytes).sum::<usize>();
                self.buffered_bytes = self.buffered_bytes - b.bytes + held;
                b.bytes = held;
                b.dirty = false;
            }
        }
        self.since_recount = 0;
    }

    /// Keep buffers and jobs with the committer within their share of `max_buffer_bytes`
    /// ([`bound_step`]).
    fn enforce_bound(&mut self, consumer: &BaseConsumer<Ctx>) -> Result<()> {
        let bound = self.cfg.row_bytes();
        loop {
            let held = self.buffered_bytes + self.in_flight_bytes;
            match bound_step(held, bound, self.in_flight) {
                BoundStep::Enough => return Ok(()),
                BoundStep::Wait => self.drain_one(consumer)?,
                step @ (BoundStep::WriteEarly | BoundStep::Write) => {
                    let Some(i) = self.largest_buffer() else {
                        return Ok(());
                    };
                    debug!(
                        buffered_bytes = self.buffered_bytes,
                        in_flight_bytes = self.in_flight_bytes,
                        row_bytes = bound,
                        early = step == BoundStep::WriteEarly,
                        "handing the largest buffer to the committer"
                    );
                    self.flush(i)?;
                    if step == BoundStep::WriteEarly {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The partition whose buffer holds the most memory.
    fn largest_buffer(&self) -> Option<usize> {
        (0..self.parts.len())
            .filter(|i| self.parts[*i].buf.is_some())
            .max_by_key(|i| self.parts[*i].buf.as_ref().map_or(0, |b| b.bytes))
    }

    fn flush_all(&mut self) -> Result<()> {
        for i in 0..self.parts.len() {
            self.flush(i)?;
        }
        Ok(())
    }

    /// Hand one partition's buffer to the committer (blocks while it is busy with the previous
    /// one: that bounds memory).
    fn flush(&mut self, idx: usize) -> Result<()> {
        let st = &mut self.parts[idx];
        let Some(buf) = st.buf.take() else {
            return Ok(());
        };
        self.buffered_bytes -= buf.bytes;
        self.in_flight_sizes.push_back(buf.bytes);
        self.in_flight_bytes += buf.bytes;
        let job = Job {
            primary: primary_table(&self.cfg.gateway_topic, &st.topic),
            topic: st.topic.clone(),
            partition: st.partition,
            epoch: st.epoch,
            files: buf.files,
            first_offset: buf.first_offset,
            last_offset: buf.last_offset,
            counts: buf.counts,
            gap: None,
            last_message: Some(LastMessage {
                timestamp_ms: buf.last_timestamp_ms,
                payload: buf.last_payload,
            }),
        };
        self.in_flight += 1;
        self.jobs.send(job).map_err(|_| self.committer_gone())?;
        Ok(())
    }

    /// Record `first..=last` of a partition as a gap: its buffer is handed to the committer
    /// first, then a job with no rows whose commit advances the partition's position over the
    /// range and says why (docs/DESIGN.md, "Gaps").
    fn record_gap(&mut self, idx: usize, first: i64, last: i64) -> Result<()> {
        self.flush(idx)?;
        let st = &mut self.parts[idx];
        warn!(
            topic = %st.topic,
            partition = st.partition,
            first,
            last,
            "gap: these offsets are no longer in Kafka; recording the range as missing"
        );
        self.summary.gaps += 1;
        self.summary.gap_offsets += (last - first + 1) as u64;
        let job = Job {
            primary: primary_table(&self.cfg.gateway_topic, &st.topic),
            topic: st.topic.clone(),
            partition: st.partition,
            epoch: st.epoch,
            files: BTreeMap::new(),
            first_offset: first,
            last_offset: last,
            counts: Counts::default(),
            gap: Some(GAP_NOT_IN_KAFKA.into()),
            last_message: None,
        };
        st.next_offset = last.saturating_add(1);
        self.in_flight_sizes.push_back(0);
        self.in_flight += 1;
        self.jobs.send(job).map_err(|_| self.committer_gone())?;
        Ok(())
    }

    /// The committer stopped: its error is waiting in the outcome channel.
    fn committer_gone(&self) -> Error {
        match self.outcomes.try_recv() {
            Ok(Err(e)) => e,
            _ => Error::Config("the committer thread stopped".into()),
        }
    }

    /// Wait for the committer's oldest job in flight and apply its outcome.
    fn drain_one(&mut self, consumer: &BaseConsumer<Ctx>) -> Result<()> {
        let out = self
            .outcomes
            .recv()
            .map_err(|_| Error::Config("the committer thread stopped".into()))?;
        self.apply_outcome(consumer, out)
    }

    /// Apply the committer's outcomes; with `all`, wait until nothing is in flight.
    fn drain(&mut self, consumer: &BaseConsumer<Ctx>, all: bool) -> Result<()> {
        while self.in_flight > 0 {
            let out = if all {
                self.outcomes
                    .recv()
                    .map_err(|_| Error::Config("the committer thread stopped".into()))?
            } else {
                match self.outcomes.try_recv() {
                    Ok(o) => o,
                    Err(TryRecvError::Empty) => return Ok(()),
                    Err(TryRecvError::Disconnected) => {
                        return Err(Error::Config("the committer thread stopped".into()))
                    }
                }
            };
            self.apply_outcome(consumer, out)?;
        }
        Ok(())
    }

    fn apply_outcome(&mut self, consumer: &BaseConsumer<Ctx>, out: Result<Outcome>) -> Result<()> {
        self.in_flight -= 1;
        if let Some(n) = self.in_flight_sizes.pop_front() {
            self.in_flight_bytes -= n;
        }
        {
            match out? {
                Outcome::Committed {
                    topic,
                    partition,
                    last_offset,
                    counts,
                    files,
                    ..
                } => {
                    self.recorded
                        .insert((topic.clone(), partition), last_offset.saturating_add(1));
                    count_outcome(&self.cfg.gateway_topic, &topic, &counts);
                    let s = &mut self.summary;
                    s.consumed += counts.msgs;
                    s.skipped_recorded += counts.already_recorded;
                    s.written_gateway += counts.gateway;
                    s.written_flows += counts.flows;
                    s.quarantined += counts.quarantined;
                    for (r, n) in counts.reasons {
                        *s.quarantine_reasons.entry(r.to_string()).or_default() += n;
                    }
                    s.files += files as u64;
                    s.commits += 1;
                    commit_partition(
                        consumer,
                        &topic,
                        partition,
                        last_offset.saturating_add(1),
                        CommitMode::Async,
                    );
                }
                Outcome::Stale {
                    topic,
                    partition,
                    epoch,
                    recorded_last,
                } => {
                    self.summary.stale_commits += 1;
                    self.recorded
                        .insert((topic.clone(), partition), recorded_last.saturating_add(1));
                    warn!(topic, partition, recorded_last, "another writer already recorded these offsets: buffers dropped, resuming after them");
                    let Some(st) = self
                        .parts
                        .iter_mut()
                        .find(|p| p.topic == topic && p.partition == partition && p.epoch == epoch)
                    else {
                        return Ok(());
                    };
                    self.next_epoch += 1;
                    st.epoch = self.next_epoch;
                    if let Some(b) = st.buf.take() {
                        self.buffered_bytes -= b.bytes;
                    }
                    st.next_offset = recorded_last.saturating_add(1);
                    st.floor = st.next_offset;
                    // Without the seek, the next messages would start past the recorded
                    // position and the range between would be skipped: stop instead (a restart
                    // starts at the recorded position).
                    consumer
                        .seek(&topic, partition, Offset::Offset(st.next_offset), Duration::from_secs(10))
                        .map_err(|e| {
                            Error::Unrecoverable(format!(
                                "{topic}/{partition}: cannot seek back to offset {} after another writer's commit: {e}",
                                st.next_offset
                            ))
                        })?;
                }
                Outcome::Discarded => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{bound_step, parse_offset_reset, BoundStep};

    #[test]
    fn the_committer_gets_a_buffer_from_half_the_bound_and_the_consumer_waits_only_over_it() {
        let bound = 1000;
        // Under half: buffers keep filling (a job per partition, not per half-full buffer).
        assert_eq!(bound_step(0, bound, 0), BoundStep::Enough);
        assert_eq!(bound_step(500, bound, 0), BoundStep::Enough);
        // Over half with the committer idle: it gets work, and the consumer does not wait.
        assert_eq!(bound_step(501, bound, 0), BoundStep::WriteEarly);
        assert_eq!(bound_step(1000, bound, 0), BoundStep::WriteEarly);
        // Over half with a job in flight: nothing more is handed over early.
        assert_eq!(bound_step(900, bound, 1), BoundStep::Enough);
        // Over the bound: write when idle, else wait for the committer.
        assert_eq!(bound_step(1001, bound, 0), BoundStep::Write);
        assert_eq!(bound_step(1001, bound, 1), BoundStep::Wait);
        assert_eq!(bound_step(5000, bound, 2), BoundStep::Wait);
    }

    #[test]
    fn librdkafkas_out_of_range_reset_warning_names_the_partition_and_position() {
        // The warning rd_kafka_offset_reset() logs (librdkafka 2.12, rdkafka_offset.c).
        let msg = "audit.gw-1 [3]: offset reset (at offset 200 (leader epoch -1), broker 1) to \
                   BEGINNING: fetch failed due to requested offset not available on the broker: \
                   Broker: Offset out of range";
        assert_eq!(
            parse_offset_reset(msg),
            Some(("audit.gw-1".to_string(), 3, Some(200)))
        );
        // Other resets (no committed offset, a seek to a logical offset) are not this.
        let none = "audit.gw-1 [3]: offset reset (at offset INVALID, broker -1) to BEGINNING: \
                    no previously committed offset available: Local: No offset stored";
        assert_eq!(parse_offset_reset(none), None);
    }
}
