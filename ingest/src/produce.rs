//! Produce generated traffic to Kafka (what a gateway or a flow collector would send).
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::generate::Message;

/// Create `topics` with `partitions` each if they do not exist. Brokers without the admin API
/// (the librdkafka mock cluster) are reported and skipped: create the topics another way there.
pub fn ensure_topics(brokers: &str, topics: &[&str], partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let rt = futures_executor(admin.create_topics(&new, &opts));
    match rt {
        Ok(results) => {
            for r in results {
                match r {
                    Ok(t) => info!(topic = %t, partitions, "topic created"),
                    Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                        info!(topic = %t, "topic exists")
                    }
                    Err((t, e)) => warn!(topic = %t, error = %e, "could not create topic"),
                }
            }
        }
        Err(e) => warn!(error = %e, "could not create topics"),
    }
    Ok(())
}

/// Block on a future without an async runtime (the admin client drives itself on its own thread).
fn futures_executor<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Thread(std::thread::Thread);
    impl Wake for Thread {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Thread(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park_timeout(Duration::from_millis(50)),
        }
    }
}

/// Counts delivery failures: a message librdkafka gave up on is an error, never a silent loss.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.first_error
                .lock()
                .expect("lock")
                .get_or_insert_with(|| e.to_string());
        }
    }
}

/// Produce `msgs` to `topic` (idempotent producer, lz4), keyed so that each gateway's and
/// exporter's messages stay in order. Returns the number delivered.
pub fn produce(brokers: &str, topic: &str, msgs: &[Message]) -> Result<u64> {
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("message.max.bytes", "20000000")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Deliveries::default())?;
    let mut sent = 0u64;
    let progress = crate::progress::bar(
        msgs.len() as u64,
        &format!("producing to {topic}"),
        "messages",
    );
    for m in msgs {
        progress.inc(1);
        let mut rec = BaseRecord::to(topic)
            .key(&m.key)
            .payload(&m.payload)
            .timestamp(m.ts_us / 1000);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        sent += 1;
    }
    progress.finish_and_clear();
    producer.flush(Duration::from_secs(120))?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = producer
            .context()
            .first_error
            .lock()
            .expect("lock")
            .clone()
            .unwrap_or_default();
        return Err(Error::Produce(format!(
            "{failed} of {sent} messages to {topic} were not delivered (first error: {first})"
        )));
    }
    info!(topic, messages = sent, "produced");
    Ok(sent)
}
