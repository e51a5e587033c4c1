//! flowaudit's command line and the work it orchestrates. Ingest lives in `flowaudit-ingest`;
//! this crate holds the catalog, the rules and their runner, alerts and their sinks, the
//! scheduler, the `flowaudit` binary's subcommands, their configuration and the demo.

pub mod alerts;
pub mod alerts_table;
pub mod auth;
pub mod cases;
pub mod catalog;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod config_check;
pub mod cron;
pub mod demo;
pub mod flight;
pub mod fuzz;
pub mod geoip_cmd;
pub mod ledger;
pub mod lifecycle;
pub mod ops;
pub mod planted;
pub mod report;
pub mod rules;
pub mod runner;
pub mod serve;
pub mod shell;
pub mod signing;
pub mod sinks;
pub mod site;
pub mod sql;
pub mod sqlguard;
pub mod sqlout;
pub mod sqlstop;
pub mod tables;
pub mod tsa;
pub mod verify;
pub mod watermark;
