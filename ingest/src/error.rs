//! Typed errors of the ingest library. Each variant says what failed and where; the binary adds
//! context with anyhow.
use std::path::PathBuf;

/// The ingest library's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A configuration value is invalid (not retryable: fix the configuration).
    #[error("configuration: {0}")]
    Config(String),
    /// A policy file is invalid (not retryable: fix the file).
    #[error("policy file {path}: {msg}")]
    Policy { path: PathBuf, msg: String },
    /// The GeoIP database could not be loaded.
    #[error("GeoIP database {path}: {msg}")]
    GeoIp { path: PathBuf, msg: String },
    /// The warehouse's tables or their Delta logs could not be read or written.
    #[error("warehouse: {0}")]
    Warehouse(String),
    /// Kafka client error (usually retryable: the broker may come back).
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Kafka could not be used (unknown host, authentication refused, missing topic, …) for
    /// longer than the grace period (`give_up_after_ms`). Not retryable by waiting longer: fix
    /// the configuration or the cluster, then start again.
    #[error("{0}")]
    Unrecoverable(String),
    /// Messages could not be delivered to Kafka.
    #[error("produce: {0}")]
    Produce(String),
    /// Arrow error while building a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet error while writing a file.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// Result with the ingest [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach the operation and path to an `io::Error`.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}
