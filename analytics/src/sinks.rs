//! Alert sinks: a Kafka topic for the incident desk, a JSON-lines file and an HTTP webhook.
//!
//! Delivery is at least once and in order: each sink has a cursor in the alert store; pending
//! alerts (status `new`, and `closed` updates, after the cursor) are sent in order and the cursor moves after each
//! confirmed delivery. A sink that is down keeps its cursor, so its alerts go out on the next
//! delivery attempt (the next `rules run`, or the next tick of `serve`). Suppressed alerts are
//! recorded but never sent. A crash between a delivery and its cursor update sends that alert
//! again: receivers deduplicate by `fingerprint` (the Kafka key) and status (the webhook's
//! Idempotency-Key is `<fingerprint>` for a first raise, `<fingerprint>:closed:<seq>` for a closing
//! and `<fingerprint>:reopened:<seq>` for a raise after a closing).
use std::fs::OpenOptions;

/// Whether a line of the outbox goes to the sinks: raises (`new`) and closings (`closed`);
/// suppressed alerts are recorded only.
pub fn is_sent(a: &crate::alerts::Alert) -> bool {
    a.status == "new" || a.status == "closed"
}

/// The webhook's `Idempotency-Key`: the fingerprint for its first raise; for a closing,
/// `<fingerprint>:closed:<seq>`, and for a raise that reopens a closed alert,
/// `<fingerprint>:reopened:<seq>`. Each line of the outbox its own key, the same on every retry,
/// so a receiver that drops repeated keys drops only repeated deliveries.
pub fn idempotency_key(a: &crate::alerts::Alert) -> String {
    if a.status == "closed" {
        format!("{}:closed:{}", a.fingerprint, a.seq)
    } else if a.reopens.is_some() {
        format!("{}:reopened:{}", a.fingerprint, a.seq)
    } else {
        a.fingerprint.clone()
    }
}
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tracing::{info, warn};

use crate::alerts::{Alert, AlertError, AlertStore};

/// Where alerts go.
#[derive(Debug, Clone)]
pub enum Sink {
    Kafka {
        brokers: String,
        topic: String,
        /// Extra librdkafka properties (TLS, SASL, …).
        properties: Vec<(String, String)>,
        /// How long librdkafka keeps trying one message.
        timeout: Duration,
    },
    File(PathBuf),
    Webhook {
        url: String,
        /// Attempts per alert in one delivery round.
        attempts: u32,
        /// First back-off; doubles after each failed attempt, up to 30 s.
        backoff: Duration,
        timeout: Duration,
    },
}

impl Sink {
    /// The sink's kind (`kafka`, `file`, `webhook`): its metrics' label (a name may hold a
    /// URL's credentials).
    pub fn kind(&self) -> &'static str {
        match self {
            Sink::Kafka { .. } => "kafka",
            Sink::File(_) => "file",
            Sink::Webhook { .. } => "webhook",
        }
    }

    /// The sink's name (its cursor is kept under it).
    pub fn name(&self) -> String {
        match self {
            Sink::Kafka { brokers, topic, .. } => format!("kafka:{brokers}/{topic}"),
            Sink::File(p) => format!("file:{}", p.display()),
            Sink::Webhook { url, .. } => format!("webhook:{url}"),
        }
    }
}

/// Counts messages librdkafka gave up on.
#[derive(Default)]
struct Failures {
    failed: AtomicU64,
    first: Mutex<Option<String>>,
}

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.first
                .lock()
                .expect("lock")
                .get_or_insert_with(|| e.to_string());
        }
    }
}

/// Errors delivering alerts.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{sink}: {pending} alert(s) not delivered, kept for the next attempt: {msg}")]
    Down {
        sink: String,
        pending: u64,
        msg: String,
    },
    #[error(transparent)]
    Store(#[from] AlertError),
}

/// What one delivery round did for one sink.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub sink: String,
    pub delivered: u64,
    pub error: Option<String>,
}

/// Deliver every pending alert to every sink. A sink seen for the first time starts at
/// `new_sink_start` (the store's length before the current run), so adding a sink does not
/// replay history. Errors of one sink do not stop the others.
pub fn deliver_all(store: &AlertStore, sinks: &[Sink], new_sink_start: u64) -> Vec<Delivery> {
    sinks
        .iter()
        .map(|s| {
            let name = s.name();
            let m = flowaudit_ingest::metrics::metrics();
            let label = flowaudit_ingest::metrics::SinkLabels {
                sink: s.kind().into(),
            };
            match deliver(store, s, new_sink_start) {
                Ok(n) => {
                    m.sink_delivered.get_or_create(&label).inc_by(n);
                    m.sink_backlog.get_or_create(&label).set(0);
                    Delivery {
                        sink: name,
                        delivered: n,
                        error: None,
                    }
                }
                Err(e) => {
                    m.sink_failures.get_or_create(&label).inc();
                    if let SinkError::Down { pending, .. } = &e {
                        m.sink_backlog.get_or_create(&label).set(*pending as i64);
                    }
                    warn!(sink = %name, error = %e, "alert delivery failed");
                    Delivery {
                        sink: name,
                        delivered: 0,
                        error: Some(e.to_string()),
                    }
                }
            }
        })
        .collect()
}

/// Deliver the alerts `sink` has not received; returns how many were sent.
pub fn deliver(store: &AlertStore, sink: &Sink, new_sink_start: u64) -> Result<u64, SinkError> {
    let name = sink.name();
    let cursor = store.cursor(&name, new_sink_start.min(store.len()))?;
    if cursor >= store.len() {
        return Ok(0);
    }
    let pending = store.read_from(cursor + 1)?;
    let down = |done: u64, msg: String| SinkError::Down {
        sink: name.clone(),
        pending: pending.len() as u64 - done,
        msg,
    };
    let mut sent = 0;
    match sink {
        Sink::File(path) => {
            let mut lines = String::new();
            for a in pending.iter().filter(|a| is_sent(a)) {
                lines.push_str(&serde_json::to_string(a).expect("json"));
                lines.push('\n');
                sent += 1;
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| down(0, e.to_string()))?;
            }
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| down(0, format!("opening {}: {e}", path.display())))?;
            f.write_all(lines.as_bytes())
                .and_then(|_| f.sync_data())
                .map_err(|e| down(0, format!("writing {}: {e}", path.display())))?;
            store.set_cursor(&name, pending.last().expect("pending").seq)?;
        }
        Sink::Kafka {
            brokers,
            topic,
            properties,
            timeout,
        } => {
            let mut cfg = ClientConfig::new();
            cfg.set("bootstrap.servers", brokers)
                .set("enable.idempotence", "true")
                .set("message.timeout.ms", timeout.as_millis().to_string())
                .set("linger.ms", "5");
            for (k, v) in properties {
                cfg.set(k, v);
            }
            let producer: ThreadedProducer<Failures> = cfg
                .create_with_context(Failures::default())
                .map_err(|e| down(0, format!("creating the producer: {e}")))?;
            // Send in order, a batch at a time, and wait for each batch's acknowledgement.
            for chunk in pending.chunks(500) {
                let payloads: Vec<(String, String)> = chunk
                    .iter()
                    .filter(|a| is_sent(a))
                    .map(|a| {
                        (
                            a.fingerprint.clone(),
                            serde_json::to_string(a).expect("json"),
                        )
                    })
                    .collect();
                for (key, payload) in &payloads {
                    producer
                        .send(BaseRecord::to(topic).key(key).payload(payload))
                        .map_err(|(e, _)| down(sent, format!("producing to {topic}: {e}")))?;
                }
                producer
                    .flush(*timeout + Duration::from_secs(5))
                    .map_err(|e| down(sent, format!("waiting for {topic}: {e}")))?;
                let last: &Alert = chunk.last().expect("non-empty chunk");
                let failed = producer.context().failed.load(Ordering::Relaxed);
                if failed > 0 {
                    let first = producer.context().first.lock().expect("lock").clone();
                    return Err(down(
                        sent,
                        format!(
                            "{failed} message(s) to {topic} not acknowledged: {}",
                            first.unwrap_or_default()
                        ),
                    ));
                }
                sent += payloads.len() as u64;
                store.set_cursor(&name, last.seq)?;
            }
        }
        Sink::Webhook {
            url,
            attempts,
            backoff,
            timeout,
        } => {
            let tls =
                native_tls::TlsConnector::new().map_err(|e| down(0, format!("TLS setup: {e}")))?;
            let agent = ureq::AgentBuilder::new()
                .timeout(*timeout)
                .tls_connector(std::sync::Arc::new(tls))
                .build();
            for a in &pending {
                if is_sent(a) {
                    let body = serde_json::to_string(a).expect("json");
                    let mut wait = *backoff;
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        let r = agent
                            .post(url)
                            .set("Content-Type", "application/json")
                            .set("Idempotency-Key", &idempotency_key(a))
                            .send_string(&body);
                        match r {
                            Ok(_) => break,
                            Err(e) if attempt < *attempts => {
                                warn!(url = %url, attempt, error = %e, retry_in_ms = wait.as_millis() as u64, "webhook failed; retrying");
                                std::thread::sleep(wait);
                                wait = (wait * 2).min(Duration::from_secs(30));
                            }
                            Err(e) => {
                                return Err(down(
                                    sent,
                                    format!("POST {url} failed {attempt} times; last: {e}"),
                                ))
                            }
                        }
                    }
                    sent += 1;
                }
                store.set_cursor(&name, a.seq)?;
            }
        }
    }
    info!(sink = %name, alerts = sent, "alerts delivered");
    Ok(sent)
}
