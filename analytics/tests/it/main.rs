//! End-to-end tests of the `flowaudit` binary against a real Kafka-protocol broker process (Tansu,
//! started by `make test`) and an S3-API server process (moto), with the Delta tables checked by an
//! independent reader (pyarrow over the JSON log).
mod support;

mod cli;
mod cluster;
mod compact;
mod coverage;
mod crash;
mod evidence;
mod fuzz_corpus;
mod geoip_real;
mod group;
mod hostile_ingest;
mod ingest_e2e;
mod malformed;
mod ops;
mod rules;
mod s3;
mod signals;
mod sql;
mod summaries;
mod verify;
