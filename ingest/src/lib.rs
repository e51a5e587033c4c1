//! flowaudit ingest: gateway access events and network flow records from Kafka into
//! Delta Lake tables (Parquet, zstd, partitioned by date and hour) with the Kafka offsets in the
//! same transactions as the files: exactly once.
//!
//! The path of one message: [`consumer`] polls it, [`decode`] validates and normalises it
//! ([`gateway`], [`flow`]), [`geoip`] and [`networks`] enrich it, [`batch`] buffers it per Kafka
//! partition, [`writer`] writes the Parquet files and [`warehouse`] commits them to the Delta tables,
//! after which (and only after which) the offsets advance. The contract is in docs/DESIGN.md.

pub mod batch;
pub mod committer;
pub mod compact;
pub mod config;
pub mod consumer;
pub mod convert;
pub mod decode;
pub mod durable;
pub mod error;
pub mod flow;
pub mod fuzz;
pub mod gateway;
pub mod generate;
pub mod geoip;
pub mod metrics;
pub mod networks;
pub mod produce;
pub mod progress;
pub mod schema;
pub mod warehouse;
pub mod writer;

pub use config::IngestConfig;
pub use error::{Error, Result};
