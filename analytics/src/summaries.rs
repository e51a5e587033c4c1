//! Summaries: small tables derived from a warehouse table, kept per day so that a rule looking
//! back weeks reads a few rows per day instead of every record of those weeks.
//!
//! A summary is defined by SQL over one warehouse table (`queries/summaries/NAME.sql`, compiled
//! in), grouped by that table's `date`. In SQL it is a table like any other; the embedded engine
//! serves it from a process-wide cache of per-day results, each keyed by the SHA-256 of the
//! definition and of that day's data files (path and size, as the table's latest Delta snapshot
//! lists them). A day whose files changed (new records, late data, a compaction) is computed
//! again from the table at the scan that needs it, in one query for all such days; nothing is
//! written anywhere, so a summary is never more than the table it is read from, and a new
//! process starts by rebuilding what it reads. On a Ballista cluster, or before the source table
//! has a log, the summary is a plain view of the same SQL. DuckDB's differential test and
//! benchmark read the same definition as a view (docs/rules.md, "Summaries").
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::Session;
use datafusion::datasource::listing::helpers::expr_applicable_for_cols;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tracing::{debug, info};

use crate::tables::DeltaWarehouseTable;

/// A summary: its name in SQL, the warehouse table it is computed from, and its SQL.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub name: &'static str,
    pub source: &'static str,
    pub sql: &'static str,
}

/// Every summary the catalog has.
pub const SUMMARIES: &[Summary] = &[
    Summary {
        name: "egress_daily",
        source: "flows",
        sql: include_str!("../../queries/summaries/egress_daily.sql"),
    },
    Summary {
        name: "allowed_events_hourly",
        source: "gateway_events",
        sql: include_str!("../../queries/summaries/allowed_events_hourly.sql"),
    },
    Summary {
        name: "exporter_clocks_daily",
        source: "flows",
        sql: include_str!("../../queries/summaries/exporter_clocks_daily.sql"),
    },
    Summary {
        name: "gateway_clocks_daily",
        source: "gateway_events",
        sql: include_str!("../../queries/summaries/gateway_clocks_daily.sql"),
    },
];

/// The warehouse table the summary `name` is computed from, if `name` is a summary.
pub fn source_of(name: &str) -> Option<&'static str> {
    SUMMARIES.iter().find(|s| s.name == name).map(|s| s.source)
}

/// The column every summary is kept by: the source table's first partition column.
const DAY: &str = "date";

/// Days kept per summary and source table; the oldest go first beyond it.
const KEPT_DAYS: usize = 1000;

/// One day of a summary: the key of what it was computed from, and its rows.
struct Day {
    key: String,
    rows: Vec<RecordBatch>,
}

/// The days of one summary over one source table, and how many were computed so far.
#[derive(Default)]
struct Kept {
    days: BTreeMap<String, Day>,
    computed: u64,
}

/// Summary name and source table URL → what is kept of it.
type Cache = HashMap<(&'static str, String), Kept>;

/// The process's summaries. One lock: a scan that computes days holds it, so two scans needing
/// the same days compute them once.
fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// How many days of the summary `name` over the table at `source_url` this process has computed
/// (each computed again after a change counts again).
pub async fn days_computed(name: &str, source_url: &str) -> u64 {
    cache()
        .lock()
        .await
        .iter()
        .filter(|((n, url), _)| *n == name && url == source_url)
        .map(|(_, kept)| kept.computed)
        .sum()
}

/// The summary `summary` as a view of its SQL over the tables `ctx` has: what a cluster plans,
/// and what serves while the source table has no log yet.
pub async fn view(ctx: &SessionContext, summary: &Summary) -> Result<ViewTable> {
    let plan = ctx.state().create_logical_plan(summary.sql).await?;
    Ok(ViewTable::new(plan, Some(summary.sql.to_string())))
}

/// A summary served per day from the cache, computed from `source` where a day changed.
#[derive(Debug)]
pub struct SummaryTable {
    summary: Summary,
    schema: SchemaRef,
    source: Arc<DeltaWarehouseTable>,
    /// SHA-256 of the definition, part of every day's key.
    definition: String,
}

impl SummaryTable {
    /// The summary over `source`; its columns are those its SQL gives over `ctx`'s tables, as
    /// planned (after type coercion, which may make a string column a view type).
    pub async fn new(
        ctx: &SessionContext,
        summary: Summary,
        source: Arc<DeltaWarehouseTable>,
    ) -> Result<Self> {
        let state = ctx.state();
        let plan = state.optimize(&state.create_logical_plan(summary.sql).await?)?;
        Ok(Self {
            schema: Arc::clone(plan.schema().inner()),
            definition: hex::encode(Sha256::digest(summary.sql.as_bytes())),
            summary,
            source,
        })
    }

    /// The key of a day computed from `files`.
    fn key(&self, files: &[(String, u64)]) -> String {
        let mut h = Sha256::new();
        h.update(self.definition.as_bytes());
        for (path, size) in files {
            h.update(format!("\n{path}\t{size}").as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// `batch` with the summary's columns: each cast to its declared type where it differs.
    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        if batch.schema().fields() == self.schema.fields() {
            return Ok(batch);
        }
        let columns = self
            .schema
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, column)| arrow::compute::cast(column, field.data_type()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// The summary's rows for `days` (all of them if `None`), computed from the source table in
    /// one query, each batch cut by day.
    async fn compute(
        &self,
        days: Option<&[&String]>,
    ) -> Result<BTreeMap<String, Vec<RecordBatch>>> {
        let ctx = crate::optimizer::session(
            crate::catalog::session_config().map_err(|e| DataFusionError::External(e.into()))?,
        );
        ctx.register_table(self.summary.source, self.source.clone())?;
        crate::functions::register(&ctx);
        crate::functions::register_rewrites(&ctx);
        let mut sql = format!("SELECT * FROM ({}\n) s", self.summary.sql);
        if let Some(days) = days {
            let list: Vec<String> = days
                .iter()
                .map(|d| format!("'{}'", d.replace('\'', "''")))
                .collect();
            sql.push_str(&format!(" WHERE s.{DAY} IN ({})", list.join(", ")));
        }
        // The rows as the summary's columns declare them: the physical plan may give a string
        // column another string type than the logical plan the columns come from.
        let batches = ctx
            .sql(&sql)
            .await?
            .collect()
            .await?
            .into_iter()
            .map(|b| self.conform(b))
            .collect::<Result<Vec<_>>>()?;
        let mut out: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
        if let Some(days) = days {
            for d in days {
                out.insert((*d).clone(), Vec::new());
            }
        }
        let at = self.schema.index_of(DAY)?;
        for batch in batches {
            let column = batch.column(at);
            let Some(dates) = column.as_any().downcast_ref::<StringArray>() else {
                return Err(DataFusionError::Internal(format!(
                    "summary {}: {DAY} is {}, not a string",
                    self.summary.name,
                    column.data_type()
                )));
            };
            let mut seen: Vec<&str> = (0..dates.len())
                .filter(|i| dates.is_valid(*i))
                .map(|i| dates.value(i))
                .collect();
            seen.sort_unstable();
            seen.dedup();
            for day in seen {
                let mask = arrow::compute::kernels::cmp::eq(dates, &StringArray::new_scalar(day))?;
                out.entry(day.to_string())
                    .or_default()
                    .push(filter_record_batch(&batch, &mask)?);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl TableProvider for SummaryTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters on the day choose the days to read; all are applied again above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let day_filters: Vec<Expr> = filters
            .iter()
            .filter(|f| expr_applicable_for_cols(&[DAY], f))
            .map(|f| unnormalize_col(f.clone()))
            .collect();
        let rows: Vec<RecordBatch> = match self.source.files_by_day(state, &day_filters).await? {
            // A table read through delta-rs's provider: computed at each scan, not kept.
            None => self.compute(None).await?.into_values().flatten().collect(),
            Some(days) => {
                let keys: Vec<(&String, String)> =
                    days.iter().map(|(d, files)| (d, self.key(files))).collect();
                let mut cache = cache().lock().await;
                let kept = cache
                    .entry((self.summary.name, self.source.url().to_string()))
                    .or_default();
                let stale: Vec<&String> = keys
                    .iter()
                    .filter(|(d, key)| kept.days.get(*d).is_none_or(|k| &k.key != key))
                    .map(|(d, _)| *d)
                    .collect();
                if !stale.is_empty() {
                    // A new process reading weeks of history computes them all at once: say so.
                    let (days, reused) = (stale.len(), keys.len() - stale.len());
                    if days > 1 {
                        info!(
                            summary = self.summary.name,
                            days, reused, "computing summary days"
                        );
                    } else {
                        debug!(
                            summary = self.summary.name,
                            days, reused, "computing summary days"
                        );
                    }
                    let computed = self.compute(Some(&stale)).await?;
                    for (d, key) in &keys {
                        if let Some(rows) = computed.get(*d) {
                            let (day, key) = ((*d).clone(), key.clone());
                            kept.days.insert(
                                day,
                                Day {
                                    key,
                                    rows: rows.clone(),
                                },
                            );
                        }
                    }
                    kept.computed += stale.len() as u64;
                }
                let mut rows = Vec::new();
                for (d, _) in &keys {
                    let day = kept.days.get(*d).ok_or_else(|| {
                        DataFusionError::Internal(format!(
                            "summary {}: day {d} was not computed",
                            self.summary.name
                        ))
                    })?;
                    rows.extend(day.rows.iter().cloned());
                }
                while kept.days.len() > KEPT_DAYS {
                    kept.days.pop_first();
                }
                rows
            }
        };
        let exec =
            MemorySourceConfig::try_new_exec(&[rows], self.schema.clone(), projection.cloned())?;
        Ok(exec)
    }
}
