//! flowaudit's command line and the work it orchestrates. Ingest lives in `flowaudit-ingest`;
//! this crate holds the `flowaudit` binary's subcommands, their configuration and the demo.

pub mod catalog;
pub mod cli;
pub mod config;
pub mod demo;
pub mod rules;
