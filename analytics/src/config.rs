//! `flowaudit.toml`: one file for every subcommand. Precedence for each setting: command-line
//! flag, then environment variable, then this file, then the built-in default.
use std::path::{Path, PathBuf};

use anyhow::Context;
use flowaudit_ingest::config::IngestSettings;
use serde::Deserialize;

/// The configuration file. Top-level keys are shared by every subcommand; `[ingest]` overrides
/// them for ingest and holds its own settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub brokers: Option<String>,
    pub warehouse: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    pub geoip: Option<PathBuf>,
    #[serde(default)]
    pub ingest: IngestSettings,
    #[serde(default)]
    pub generate: GenerateSettings,
}

/// `[generate]`: defaults for `flowaudit generate`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSettings {
    pub seed: Option<u64>,
    pub events: Option<usize>,
    pub flows: Option<usize>,
    pub malformed: Option<usize>,
    pub partitions: Option<i32>,
    /// GeoIP CSV that external addresses are drawn from.
    pub geoip_csv: Option<PathBuf>,
    pub flow_format: Option<String>,
}

impl FileConfig {
    /// Load the file if a path is given (a missing file given explicitly is an error).
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    /// The ingest settings this file gives: `[ingest]`, then the shared top-level keys.
    pub fn ingest_settings(&self) -> IngestSettings {
        self.ingest.clone().or(IngestSettings {
            brokers: self.brokers.clone(),
            warehouse: self.warehouse.clone(),
            policy: self.policy.clone(),
            geoip: self.geoip.clone(),
            ..Default::default()
        })
    }
}
