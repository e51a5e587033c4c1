//! Where a deployment keeps what it reads and what it writes.
//!
//! The warehouse's Delta tables (`gateway_events`, `flows`, `quarantine`) are at a
//! [`Location`]: a local directory or `s3://BUCKET/PREFIX`, and so is the `alerts` Delta table
//! written from the alert store. The rule runner's own state (the alert store `_alerts/`, the
//! run records `_runs/runs.jsonl` and the scheduler's `_runs/schedule.json`) is a local
//! directory: the alert store is one writer behind
//! an exclusive `flock`, which an object store does not have. For a local warehouse it is the
//! warehouse directory itself; for an S3 warehouse it is `--state-dir` (docs/DESIGN.md, "Where
//! the rule runner's state lives").
use std::path::{Path, PathBuf};

use flowaudit_ingest::warehouse::Location;

use crate::cluster::Engine;

/// The warehouse's tables and the rule runner's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The Delta tables.
    pub tables: Location,
    /// The alert store and the run records; `None` for a reader of an S3 warehouse that was
    /// given none (`sql`, Flight SQL, which read only the warehouse).
    pub state: Option<PathBuf>,
    /// Where the queries over them run: in this process, or on a cluster (crate::cluster).
    pub engine: Engine,
}

impl Site {
    /// A local warehouse that also holds the state (the embedded default).
    pub fn local(dir: &Path) -> Self {
        Self {
            tables: Location::Local(dir.to_path_buf()),
            state: Some(dir.to_path_buf()),
            engine: Engine::Embedded,
        }
    }

    /// The tables at `tables` and the state in `state`, or in the warehouse directory when
    /// `None` and the warehouse is local (an S3 warehouse then has none).
    pub fn reader(tables: Location, state: Option<PathBuf>) -> Self {
        let state = state.or_else(|| tables.local().map(Path::to_path_buf));
        Self {
            tables,
            state,
            engine: Engine::Embedded,
        }
    }

    /// The same site, its queries run by `engine`.
    pub fn with_engine(self, engine: Engine) -> Self {
        Self { engine, ..self }
    }

    /// The state directory, for those that read or write alerts and run records.
    pub fn state_dir(&self) -> Result<&Path, String> {
        self.state.as_deref().ok_or_else(|| {
            format!(
                "the warehouse {} is on S3: pass --state-dir DIR (or FLOWAUDIT_STATE_DIR, or state_dir in flowaudit.toml), the local directory that keeps the alerts and run records",
                self.tables
            )
        })
    }

    /// The tables at `tables`, the state in `state` (the warehouse directory when `None` and
    /// the warehouse is local). An S3 warehouse needs a state directory.
    pub fn new(tables: Location, state: Option<PathBuf>) -> Result<Self, String> {
        let site = Self::reader(tables, state);
        site.state_dir()?;
        Ok(site)
    }
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.tables, &self.state) {
            (Location::Local(p), Some(s)) if p == s => write!(f, "{}", p.display()),
            (t, Some(s)) => write!(f, "{t} (state in {})", s.display()),
            (t, None) => write!(f, "{t}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_warehouse_keeps_its_state_and_s3_needs_a_state_dir() {
        let l = Site::new(Location::parse("/tmp/wh").unwrap(), None).unwrap();
        assert_eq!(l, Site::local(Path::new("/tmp/wh")));
        let s3 = Location::parse("s3://b/wh").unwrap();
        let e = Site::new(s3.clone(), None).unwrap_err();
        assert!(e.contains("--state-dir"), "{e}");
        assert!(Site::reader(s3.clone(), None).state_dir().is_err());
        let s = Site::new(s3, Some("/tmp/st".into())).unwrap();
        assert_eq!(s.state_dir().unwrap(), Path::new("/tmp/st"));
        assert_eq!(s.to_string(), "s3://b/wh/ (state in /tmp/st)");
    }
}
