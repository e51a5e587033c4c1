//! Watermarks: up to when the committed data of each table and each source (flow exporter,
//! security gateway) is complete, so that a rule window is evaluated only once what it reads is
//! there (docs/rules.md, "Watermarks and late data").
//!
//! - A **partition**'s clock is the later of the newest event time the log records for it (the
//!   `max_event_time` of its live files) and the time ingest last had everything Kafka held for
//!   it recorded (its [`CaughtUp`] mark, counted only when the log records every offset the mark
//!   says was recorded). An import is complete when recorded: its clock never holds anything back.
//! - A **table**'s clock is the earliest clock of the partitions that feed it: a partition that
//!   is behind holds the whole table back, whatever the others show.
//! - A **source** is complete up to its newest record; when it has sent nothing since, up to the
//!   time ingest was caught up with every partition of its table (a record reaches Kafka within
//!   the lateness), or, on event times alone (ingest behind, or never idle), up to its table's
//!   clock less the source's expected interval: a source is judged silent only once ingest shows
//!   everything else up to then, never while ingest is behind.
//! - A rule reading some tables is complete up to the earliest of those tables' and their
//!   sources' completeness, less the rule's allowed lateness.
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, NaiveDate, SecondsFormat, Utc};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use flowaudit_ingest::warehouse::{CaughtUp, WarehouseLog};
use serde::Serialize;

use crate::catalog::Catalog;

/// The tables whose completeness a watermark tracks (what ingest writes from Kafka).
pub const TRACKED: &[&str] = &["flows", "gateway_events"];

/// One partition feeding a table.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionClock {
    pub topic: String,
    pub partition: i32,
    /// The newest event time recorded for it.
    pub newest_event: Option<DateTime<Utc>>,
    /// When ingest last had all of it recorded (a mark the log backs), if ever.
    pub caught_up_at: Option<DateTime<Utc>>,
    /// An import recorded whole: complete for all time.
    pub closed: bool,
}

impl PartitionClock {
    /// Up to when this partition is complete; `None`: not known to be complete at all.
    pub fn clock(&self) -> Option<DateTime<Utc>> {
        if self.closed {
            return Some(DateTime::<Utc>::MAX_UTC);
        }
        self.newest_event.max(self.caught_up_at)
    }
}

/// A source a table's records come from, with its expected interval.
#[derive(Debug, Clone, Serialize)]
pub struct SourceClock {
    /// `exporter` or `gateway`.
    pub kind: String,
    pub source: String,
    pub table: String,
    pub expected_interval_s: i64,
    /// Its newest record (looked for from the date the watermarks were computed for).
    pub newest: Option<DateTime<Utc>>,
}

/// The watermarks of a warehouse, as of its log and marks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Watermarks {
    pub partitions: BTreeMap<String, Vec<PartitionClock>>,
    pub sources: Vec<SourceClock>,
}

/// What holds a rule's window back: a source or a partition, complete only up to `complete_to`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Lagging {
    pub what: String,
    /// RFC 3339; `None`: nothing of it is known to be complete.
    pub complete_to: Option<String>,
}

/// Errors computing watermarks.
#[derive(Debug, thiserror::Error)]
pub enum WatermarkError {
    #[error("reading the newest record of each source: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
    #[error("{0}")]
    Log(#[from] flowaudit_ingest::Error),
}

fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl Watermarks {
    /// Compute the watermarks from the log, the caught-up marks and (for each source's newest
    /// record) the tables' partitions from `since` to `until`.
    pub async fn compute(
        catalog: &Catalog,
        log: &WarehouseLog,
        marks: &[CaughtUp],
        since: NaiveDate,
        until: NaiveDate,
    ) -> Result<Self, WatermarkError> {
        // Every offset below this is recorded for (topic, partition), in any table.
        let mut recorded: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        let mut feeds: BTreeMap<&str, BTreeSet<(&str, i32)>> = BTreeMap::new();
        for c in &log.commits {
            let Some(m) = &c.meta else { continue };
            let e = recorded.entry((&m.topic, m.partition)).or_insert(0);
            *e = (*e).max(m.covers_last_offset.saturating_add(1));
            if TRACKED.contains(&c.table.as_str()) {
                feeds
                    .entry(c.table.as_str())
                    .or_default()
                    .insert((&m.topic, m.partition));
            }
        }
        for m in marks {
            if let Some(t) = TRACKED.iter().find(|t| **t == m.table) {
                feeds.entry(t).or_default().insert((&m.topic, m.partition));
            }
        }
        let mut newest: BTreeMap<(&str, &str, i32), DateTime<Utc>> = BTreeMap::new();
        for f in &log.files {
            // An event time after its commit is a clock ahead (or hostile): it shows progress
            // only up to when it was committed.
            let committed = parse_ts(&f.committed_at);
            if let Some(t) = parse_ts(&f.max_event_time).map(|t| match committed {
                Some(c) => t.min(c),
                None => t,
            }) {
                let e = newest
                    .entry((f.table.as_str(), f.topic.as_str(), f.partition))
                    .or_insert(t);
                *e = (*e).max(t);
            }
        }
        let mut out = Watermarks::default();
        for (table, parts) in feeds {
            let clocks = parts
                .into_iter()
                .map(|(topic, partition)| {
                    let mark = marks.iter().find(|m| {
                        m.table == table
                            && m.topic == topic
                            && m.partition == partition
                            && (m.recorded_to <= 0
                                || recorded.get(&(topic, partition)).copied().unwrap_or(0)
                                    >= m.recorded_to)
                    });
                    PartitionClock {
                        topic: topic.to_string(),
                        partition,
                        newest_event: newest.get(&(table, topic, partition)).copied(),
                        caught_up_at: mark.and_then(|m| parse_ts(&m.at)),
                        closed: mark.is_some_and(|m| m.closed),
                    }
                })
                .collect();
            out.partitions.insert(table.to_string(), clocks);
        }
        let (since, until) = (since.format("%Y-%m-%d"), until.format("%Y-%m-%d"));
        let query = |sql: String| async move {
            let batches = catalog.ctx.sql(&sql).await?.collect().await?;
            crate::runner::batches_to_json(&batches)
                .map_err(datafusion::error::DataFusionError::Execution)
        };
        let newest_of = |rows: Vec<serde_json::Map<String, serde_json::Value>>| {
            rows.into_iter()
                .filter_map(|r| {
                    let s = r.get("source")?.as_str()?.to_string();
                    let us = r.get("newest_us")?.as_i64()?;
                    Some((s, DateTime::<Utc>::from_timestamp_micros(us)?))
                })
                .collect::<BTreeMap<String, DateTime<Utc>>>()
        };
        // Each source's newest record over the days, from the per-day clocks summaries: a day
        // already read by an earlier run of this process, with the same files, is not read again
        // (a run over day D reads D to D + 2; a backfill's next run reads one new day).
        let flows = newest_of(
            query(format!(
                "SELECT exporter AS source, CAST(date_part('epoch', max(newest_ts)) * 1000000 AS BIGINT) AS newest_us \
                 FROM exporter_clocks_daily WHERE date BETWEEN '{since}' AND '{until}' GROUP BY exporter"
            ))
            .await?,
        );
        let gateways = newest_of(
            query(format!(
                "SELECT gateway_id AS source, CAST(date_part('epoch', max(newest_ts)) * 1000000 AS BIGINT) AS newest_us \
                 FROM gateway_clocks_daily WHERE date BETWEEN '{since}' AND '{until}' GROUP BY gateway_id"
            ))
            .await?,
        );
        let declared = query(
            "SELECT 'exporter' AS kind, exporter AS source, CAST(expected_interval_s AS BIGINT) AS interval_s FROM exporters \
             UNION ALL \
             SELECT 'gateway' AS kind, gateway_id AS source, CAST(max(expected_interval_s) AS BIGINT) AS interval_s \
             FROM gateways GROUP BY gateway_id"
                .to_string(),
        )
        .await?;
        for r in declared {
            let text = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            let (kind, source) = (text("kind"), text("source"));
            let (table, newest) = if kind == "exporter" {
                ("flows", flows.get(&source))
            } else {
                ("gateway_events", gateways.get(&source))
            };
            out.sources.push(SourceClock {
                kind,
                table: table.to_string(),
                expected_interval_s: r.get("interval_s").and_then(|v| v.as_i64()).unwrap_or(0),
                newest: newest.copied(),
                source,
            });
        }
        out.sources
            .sort_by(|a, b| (&a.table, &a.source).cmp(&(&b.table, &b.source)));
        out.export_ages(Utc::now());
        Ok(out)
    }

    /// Set the watermark-age metric of each table and source with a known clock.
    fn export_ages(&self, now: DateTime<Utc>) {
        use flowaudit_ingest::metrics::{metrics, SourceLabels};
        let m = metrics();
        let age = |t: DateTime<Utc>| (now - t).num_milliseconds().max(0) as f64 / 1000.0;
        for table in TRACKED {
            if let Some(t) = self
                .table_clock(table)
                .filter(|t| *t < DateTime::<Utc>::MAX_UTC)
            {
                m.watermark_age
                    .get_or_create(&SourceLabels {
                        source: format!("table:{table}"),
                    })
                    .set(age(t));
            }
        }
        for s in &self.sources {
            if let Some(t) = s.newest {
                m.watermark_age
                    .get_or_create(&SourceLabels {
                        source: format!("{}:{}", s.kind, s.source),
                    })
                    .set(age(t));
            }
        }
    }

    /// Up to when `table` is complete (its slowest partition), `None` when nothing feeds it
    /// or a partition is not known complete at all.
    pub fn table_clock(&self, table: &str) -> Option<DateTime<Utc>> {
        let parts = self.partitions.get(table)?;
        parts.iter().map(|p| p.clock()).min().flatten()
    }

    /// The wall-clock time up to which ingest had everything Kafka held for every partition of
    /// `table` recorded (`None` when a partition has no such mark).
    pub fn table_caught_up(&self, table: &str) -> Option<DateTime<Utc>> {
        let parts = self.partitions.get(table)?;
        parts
            .iter()
            .map(|p| {
                if p.closed {
                    Some(DateTime::<Utc>::MAX_UTC)
                } else {
                    p.caught_up_at
                }
            })
            .min()
            .flatten()
    }

    /// Up to when a rule reading `tables` with `lateness` is complete, and what holds it back
    /// before `want` (each source or partition complete only to before it).
    pub fn complete_through(
        &self,
        tables: &[String],
        lateness: std::time::Duration,
        want: DateTime<Utc>,
    ) -> (Option<DateTime<Utc>>, Vec<Lagging>) {
        let late = Duration::from_std(lateness).unwrap_or(Duration::zero());
        let sub = |t: DateTime<Utc>, d: Duration| t.checked_sub_signed(d).unwrap_or(t);
        let mut through: Option<DateTime<Utc>> = Some(DateTime::<Utc>::MAX_UTC);
        let mut lagging = Vec::new();
        let show =
            |t: Option<DateTime<Utc>>| t.filter(|t| *t != DateTime::<Utc>::MAX_UTC).map(rfc3339);
        for table in tables.iter().filter(|t| TRACKED.contains(&t.as_str())) {
            let clock = self.table_clock(table);
            let mut table_through = clock.map(|c| sub(c, late));
            for p in self.partitions.get(table.as_str()).into_iter().flatten() {
                let c = p.clock().map(|c| sub(c, late));
                if c.is_none_or(|c| c < want) {
                    lagging.push(Lagging {
                        what: format!("{table} partition {}/{}", p.topic, p.partition),
                        complete_to: show(c),
                    });
                }
            }
            if !self.partitions.contains_key(table.as_str()) {
                lagging.push(Lagging {
                    what: format!("{table}: nothing recorded and no ingest mark"),
                    complete_to: None,
                });
            }
            let caught_up = self.table_caught_up(table);
            for s in self.sources.iter().filter(|s| &s.table == table) {
                // Without a record since: judged silent once ingest was caught up past it (a
                // record reaches Kafka within the lateness), or, on event times alone (ingest
                // behind or never idle), once the table moved on by the source's interval.
                let silent_from = clock.map(|c| sub(c, Duration::seconds(s.expected_interval_s)));
                let own = s
                    .newest
                    .max(silent_from)
                    .max(caught_up)
                    .map(|t| sub(t, late));
                let own = own.min(table_through);
                if own.is_none_or(|c| c < want) {
                    lagging.push(Lagging {
                        what: format!("{} {}", s.kind, s.source),
                        complete_to: show(own),
                    });
                }
                table_through = table_through.min(own);
            }
            through = through.min(table_through);
        }
        (through, lagging)
    }
}

/// The warehouse tables `sql` reads (its table scans, subqueries included; a summary stands for
/// the table it is computed from).
pub async fn tables_read(catalog: &Catalog, sql: &str) -> Result<Vec<String>, String> {
    let plan = catalog
        .ctx
        .state()
        .create_logical_plan(sql)
        .await
        .map_err(|e| e.to_string())?;
    let mut names = BTreeSet::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(s) = node {
            // A summary reads the table it is computed from.
            let name = s.table_name.table();
            names.insert(
                crate::summaries::source_of(name)
                    .unwrap_or(name)
                    .to_string(),
            );
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| e.to_string())?;
    Ok(names.into_iter().collect())
}
