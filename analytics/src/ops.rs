//! The operator's endpoint (`serve --metrics ADDR`, `ingest --metrics ADDR`): `/metrics` in the
//! OpenMetrics text format Prometheus scrapes, `/healthz` (the process answers) and `/readyz`
//! (the broker is reachable, the warehouse takes a write, the policy is loaded). The list of
//! metrics and the alerting rules are in docs/operations.md.
//!
//! It runs on a thread of its own with a small runtime, so that a scrape never waits for the
//! work and the work never waits for a scrape.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use flowaudit_ingest::metrics::{metrics, readiness};
use flowaudit_ingest::warehouse::Location;
use object_store::ObjectStoreExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tracing::{info, warn};

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Errors starting the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("metrics address {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("metrics address {0}: not HOST:PORT")]
    Address(String),
    #[error("the Kafka client for /readyz: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("the metrics endpoint's runtime: {0}")]
    Runtime(std::io::Error),
}

/// What `/readyz` checks.
pub struct ReadyChecks {
    /// A Kafka client configured as the work's (brokers, security); `None`: no broker is used.
    pub kafka: Option<rdkafka::ClientConfig>,
    /// The warehouse the work writes; `None`: not checked (a process that only reads).
    pub warehouse: Option<Location>,
}

struct Checker {
    kafka: Option<Arc<BaseConsumer>>,
    warehouse: Option<Location>,
}

/// One readiness check's answer: its name, and what it found (`Err`: why it is not ready).
struct Check {
    name: &'static str,
    result: Result<String, String>,
}

impl Checker {
    async fn run(self: Arc<Self>) -> Vec<Check> {
        let broker = {
            let me = self.clone();
            async move {
                let c = me.kafka.clone()?;
                let r = tokio::task::spawn_blocking(move || {
                    c.fetch_metadata(None, CHECK_TIMEOUT)
                        .map(|md| md.brokers().len())
                })
                .await;
                let result = match r {
                    Ok(Ok(n)) => Ok(format!("reachable ({n} brokers in the metadata)")),
                    Ok(Err(e)) => Err(format!("not reachable: {e}")),
                    Err(e) => Err(format!("check failed: {e}")),
                };
                Some(Check {
                    name: "broker",
                    result,
                })
            }
        };
        let warehouse = {
            let me = self.clone();
            async move {
                let w = me.warehouse.clone()?;
                let result = match tokio::time::timeout(CHECK_TIMEOUT, probe_write(&w)).await {
                    Ok(Ok(())) => Ok(format!("{w} takes a write")),
                    Ok(Err(e)) => Err(format!("{w} does not take a write: {e}")),
                    Err(_) => Err(format!(
                        "{w}: a write took longer than {} s",
                        CHECK_TIMEOUT.as_secs()
                    )),
                };
                Some(Check {
                    name: "warehouse",
                    result,
                })
            }
        };
        let (b, w) = tokio::join!(broker, warehouse);
        let parts = readiness().parts();
        let policy: Vec<Check> = if parts.is_empty() {
            vec![Check {
                name: "policy",
                result: Err("not loaded yet".into()),
            }]
        } else {
            parts
                .into_iter()
                .map(|(part, state)| Check {
                    name: "policy",
                    result: state
                        .map(|p| format!("({part}) loaded: {p}"))
                        .map_err(|e| format!("({part}) {e}")),
                })
                .collect()
        };
        b.into_iter().chain(w).chain(policy).collect()
    }
}

/// Write and delete a small object under the warehouse's `_ops/` prefix.
async fn probe_write(w: &Location) -> Result<(), String> {
    let (store, prefix) = w.store().map_err(|e| e.to_string())?;
    if let Some(dir) = w.local() {
        if !dir.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
    }
    let path = object_store::path::Path::from(format!(
        "{}/_ops/readyz-{}-{:016x}",
        prefix.as_ref().trim_end_matches('/'),
        std::process::id(),
        rand::random::<u64>()
    ));
    store
        .put(&path, bytes::Bytes::from_static(b"readyz\n").into())
        .await
        .map_err(|e| e.to_string())?;
    store.delete(&path).await.map_err(|e| e.to_string())?;
    Ok(())
}

async fn metrics_page() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics().encode(),
    )
}

async fn ready_page(checker: Arc<Checker>) -> impl IntoResponse {
    let checks = checker.run().await;
    let ok = checks.iter().all(|c| c.result.is_ok());
    let mut body = String::from(if ok { "ready\n" } else { "not ready\n" });
    for c in &checks {
        let line = match &c.result {
            Ok(d) => format!("{}: ok {d}\n", c.name),
            Err(d) => format!("{}: FAIL {d}\n", c.name),
        };
        body.push_str(&line);
    }
    if !ok {
        warn!(checks = %body.replace('\n', "; "), "/readyz: not ready");
    }
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body,
    )
}

fn router(checker: Arc<Checker>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || ready_page(checker.clone())))
}

/// The running endpoint; it stops when the process's shutdown flag is set.
pub struct Endpoint {
    pub addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Endpoint {
    /// Wait for the endpoint's thread to end (after shutdown was requested).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Bind `addr` and serve the endpoint on a thread of its own until `shutdown` is set. The
/// address is bound before this returns, so a bad or taken address is an error here.
pub fn start(
    addr: &str,
    checks: ReadyChecks,
    shutdown: Arc<AtomicBool>,
) -> Result<Endpoint, OpsError> {
    let parsed: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|_| OpsError::Address(addr.into()))?
        .collect();
    let listener = std::net::TcpListener::bind(&parsed[..]).map_err(|source| OpsError::Bind {
        addr: addr.into(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| OpsError::Bind {
            addr: addr.into(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| OpsError::Bind {
        addr: addr.into(),
        source,
    })?;
    let kafka = match checks.kafka {
        Some(mut c) => {
            // Its own client: never the work's consumer (a metadata request must not disturb it).
            c.set("client.id", "flowaudit-readyz")
                .remove("group.id")
                .set("log_level", "3");
            Some(Arc::new(c.create::<BaseConsumer>()?))
        }
        None => None,
    };
    let checker = Arc::new(Checker {
        kafka,
        warehouse: checks.warehouse,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("metrics")
        .enable_all()
        .build()
        .map_err(OpsError::Runtime)?;
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(error = %e, "the metrics endpoint could not start");
                        return;
                    }
                };
                let stop = wait_for(shutdown);
                if let Err(e) = axum::serve(listener, router(checker))
                    .with_graceful_shutdown(stop)
                    .await
                {
                    warn!(error = %e, "the metrics endpoint stopped");
                }
            })
        })
        .map_err(OpsError::Runtime)?;
    info!(addr = %bound, "metrics on http://{bound}/metrics, health on /healthz and /readyz");
    Ok(Endpoint {
        addr: bound,
        thread: Some(thread),
    })
}

async fn wait_for(flag: Arc<AtomicBool>) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
