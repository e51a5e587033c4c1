//! Analysts' ad hoc SQL over the rules' catalog: one engine behind `flowaudit sql` and the
//! Flight SQL endpoint.
//!
//! - **Read-only.** A statement must be a query (`SELECT`, `WITH`, `VALUES`), `EXPLAIN` of one,
//!   `SHOW TABLES`/`SHOW COLUMNS` or `DESCRIBE`. Everything else (DDL, DML, `COPY`,
//!   `CREATE EXTERNAL TABLE`, `SET`, …) is refused before planning, naming what was refused; the
//!   plan is checked once more (no DDL, DML, `COPY` or session statements), so a write hidden
//!   inside a query (`SELECT … INTO`) is refused too. No table function reads a path, so only
//!   the configured warehouse and policy folder are readable.
//! - **Limits.** Each query gets its own memory pool of `memory_limit` bytes and no spill files;
//!   an operator that needs more fails with [`SqlError::Memory`]. Every query's pool also counts
//!   in one pool shared by the process's queries ([`SqlError::SharedMemory`]). Scalar functions
//!   are checked for what they make ([`crate::sqlguard`]): one value larger than `max_value`
//!   fails with [`SqlError::ValueTooLarge`]. A query still running after `timeout` is stopped
//!   (its tasks are dropped, on the engine's side too, whether or not anyone reads the result;
//!   join filters, which loop without giving their thread back, check the deadline themselves:
//!   [`crate::sqlstop`]) and fails with [`SqlError::Timeout`]; a result past `max_result_rows` or
//!   `max_result_bytes` fails with [`SqlError::ResultTooLarge`]. Results are streamed batch by
//!   batch. On a cluster engine ([`crate::cluster`]) only the result limits apply as here: the
//!   memory limit and the value guard are the executors', and a stopped query's job runs on.
//! - **Threads.** Every query of an engine runs on one pool of `threads` worker threads (default
//!   half the cores), never on the caller's: the caller keeps its threads for timers, signals,
//!   I/O and (in `serve`) ingest, however many queries run.
//! - **Placeholders.** `$1, $2, …` and JDBC/ADBC-style `?` (numbered in order of appearance).
use std::future::Future;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::{
    CacheManagerConfig, FileMetadataCache, DEFAULT_METADATA_CACHE_LIMIT,
};
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion::prelude::{DataFrame, SQLOptions, SessionContext};
use datafusion::scalar::ScalarValue;
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::ast::{self, visit_expressions_mut, Expr, Value};

use futures::{FutureExt, Stream, StreamExt};

use crate::catalog::{Catalog, CatalogError, Strings};
use crate::site::Site;
use crate::sqlguard::{
    guard_functions, ConcatOpPlanner, GuardContext, QueryPool, SharedMemory, SharedMemoryExhausted,
    ValueTooLarge,
};
use crate::sqlstop::{QueryStop, StopInJoins};

/// Why a statement was not run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{what} is not allowed: this SQL is read-only (queries only: SELECT, WITH, VALUES, EXPLAIN, SHOW, DESCRIBE)")]
    ReadOnly { what: String },
    #[error("SQL syntax: {0}")]
    Syntax(String),
    #[error("expected one statement, found {0}")]
    NotOne(usize),
    #[error("query stopped: it ran longer than the time limit of {}", human_duration(*.0))]
    Timeout(Duration),
    #[error("query stopped: it needs more than the memory limit of {} ({detail})", human_bytes(*.limit))]
    Memory { limit: usize, detail: String },
    #[error("query stopped: {0}; try again when other queries have finished")]
    SharedMemory(SharedMemoryExhausted),
    #[error("query stopped: {0}")]
    ValueTooLarge(ValueTooLarge),
    #[error("query stopped: {0}")]
    ResultTooLarge(ResultTooLarge),
    #[error("query failed inside the engine: {0}")]
    Internal(String),
    #[error("parameters: {0}")]
    Params(String),
    #[error("{0}")]
    Query(DataFusionError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl SqlError {
    fn from_df(e: DataFusionError, limits: &Limits) -> Self {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(msg) => SqlError::Memory {
                limit: limits.memory,
                detail: msg.lines().next().unwrap_or("").to_string(),
            },
            DataFusionError::External(inner) => {
                if let Some(t) = inner.downcast_ref::<Timeout>() {
                    SqlError::Timeout(t.0)
                } else if let Some(v) = inner.downcast_ref::<ValueTooLarge>() {
                    SqlError::ValueTooLarge(ValueTooLarge {
                        function: v.function.clone(),
                        bytes: v.bytes,
                        limit: v.limit,
                    })
                } else if let Some(m) = inner.downcast_ref::<SharedMemoryExhausted>() {
                    SqlError::SharedMemory(SharedMemoryExhausted { limit: m.limit })
                } else if let Some(r) = inner.downcast_ref::<ResultTooLarge>() {
                    SqlError::ResultTooLarge(r.clone())
                } else if let Some(p) = inner.downcast_ref::<Panicked>() {
                    SqlError::Internal(p.0.clone())
                } else {
                    SqlError::Query(e)
                }
            }
            DataFusionError::Plan(msg)
                if msg.starts_with("DDL not supported")
                    || msg.starts_with("DML not supported")
                    || msg.starts_with("Statement not supported") =>
            {
                let what = msg.split(": ").nth(1).unwrap_or(msg);
                SqlError::ReadOnly {
                    what: match what {
                        "CreateMemoryTable" => "SELECT … INTO (CREATE TABLE)".to_string(),
                        other => other.to_string(),
                    },
                }
            }
            _ => SqlError::Query(e),
        }
    }
}

/// Per-query limits, and the engine's shared ones.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes an operator tree may hold (no spilling).
    pub memory: usize,
    /// Wall-clock time from the start of execution to the last batch.
    pub timeout: Duration,
    /// Bytes all running queries of the engine may hold together.
    pub total_memory: usize,
    /// Worker threads every query of the engine shares.
    pub threads: usize,
    /// Largest string or binary value a scalar function may make.
    pub max_value: usize,
    /// Rows a result may have (0: no limit).
    pub max_result_rows: u64,
    /// Bytes (Arrow, in memory) a result may have (0: no limit).
    pub max_result_bytes: u64,
}

/// Half the cores, at least one: the default size of the query thread pool.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| (n.get() / 2).max(1))
        .unwrap_or(1)
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: 2 << 30,
            timeout: Duration::from_secs(300),
            total_memory: 4 << 30,
            threads: default_threads(),
            max_value: 16 << 20,
            max_result_rows: 10_000_000,
            max_result_bytes: 4 << 30,
        }
    }
}

/// A result passed one of its limits.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the result passed the limit of {limit} ({key})")]
pub struct ResultTooLarge {
    pub limit: String,
    pub key: &'static str,
}

/// A task of the plan panicked (DataFusion's, or a function's); the message is the panic's.
#[derive(Debug)]
struct Panicked(String);
impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl std::error::Error for Panicked {}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a task panicked".into())
}

/// The worker threads of an engine's queries; shut down without waiting when dropped.
struct QueryThreads(Option<tokio::runtime::Runtime>);

impl QueryThreads {
    fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            // Parquet reads block on the file system; a few such threads per worker.
            .max_blocking_threads(2 * threads + 2)
            .thread_name("flowaudit-query")
            .enable_all()
            .build()?;
        Ok(Self(Some(rt)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running until dropped").handle()
    }
}

impl Drop for QueryThreads {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Parses "512MiB", "2GiB", "1GB", "1000000" (bytes).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a size like 512MiB or 2GiB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1048576.0,
        "g" | "gb" => 1e9,
        "gib" => 1073741824.0,
        other => {
            return Err(format!(
                "\"{s}\": unknown unit \"{other}\" (B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    Ok((n * mult) as usize)
}

pub fn human_bytes(n: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn human_duration(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// The error a stream yields when its deadline passes.
#[derive(Debug)]
struct Timeout(Duration);
impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "time limit of {} reached", human_duration(self.0))
    }
}
impl std::error::Error for Timeout {}

/// The error a query fails with when its time limit of `timeout` has passed.
pub(crate) fn timeout_error(timeout: Duration) -> DataFusionError {
    DataFusionError::External(Box::new(Timeout(timeout)))
}

/// The results of one query as its caller reads them: batches from the query's task on the
/// engine's threads, the time limit (kept here too, on the caller's clock, so that it holds even
/// when every query thread is busy) and the result limits. Dropping it stops the query's task.
struct QueryStream {
    rx: tokio::sync::mpsc::Receiver<datafusion::error::Result<arrow::record_batch::RecordBatch>>,
    schema: SchemaRef,
    sleep: Pin<Box<tokio::time::Sleep>>,
    limits: Limits,
    timed_out: Arc<AtomicBool>,
    /// Seen by the query's join filters, which loop without yielding (crate::sqlstop).
    stop: Arc<QueryStop>,
    task: tokio::task::AbortHandle,
    rows: u64,
    bytes: u64,
    done: bool,
    /// The threads the query runs on outlive its results.
    _threads: Arc<QueryThreads>,
}

impl QueryStream {
    fn fail(&mut self, e: DataFusionError) -> Poll<Option<<Self as Stream>::Item>> {
        self.done = true;
        self.stop.drop_results();
        self.task.abort();
        Poll::Ready(Some(Err(e)))
    }
}

impl Drop for QueryStream {
    fn drop(&mut self) {
        self.stop.drop_results();
        self.task.abort();
    }
}

impl Stream for QueryStream {
    type Item = datafusion::error::Result<arrow::record_batch::RecordBatch>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let timeout = timeout_error(self.limits.timeout);
        if self.sleep.as_mut().poll(cx).is_ready() {
            return self.fail(timeout);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) if self.timed_out.load(Ordering::Relaxed) => self.fail(timeout),
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => self.fail(e),
            Poll::Ready(Some(Ok(batch))) => {
                self.rows += batch.num_rows() as u64;
                self.bytes += batch
                    .columns()
                    .iter()
                    .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0) as u64)
                    .sum::<u64>();
                let l = self.limits;
                let over = if l.max_result_rows > 0 && self.rows > l.max_result_rows {
                    Some(ResultTooLarge {
                        limit: format!("{} rows", l.max_result_rows),
                        key: "sql.max_result_rows",
                    })
                } else if l.max_result_bytes > 0 && self.bytes > l.max_result_bytes {
                    Some(ResultTooLarge {
                        limit: human_bytes(l.max_result_bytes as usize),
                        key: "sql.max_result_bytes",
                    })
                } else {
                    None
                };
                match over {
                    Some(r) => self.fail(DataFusionError::External(Box::new(r))),
                    None => Poll::Ready(Some(Ok(batch))),
                }
            }
        }
    }
}

impl RecordBatchStream for QueryStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// Every operator of an analyst's plan gives its thread back now and then (DataFusion's
/// `CooperativeExec` around each one, not only around the scans): an operator that makes many
/// batches from memory (a cross join) would otherwise hold a query thread past the deadline,
/// and every other query queued behind it.
#[derive(Debug)]
struct YieldEverywhere;

impl datafusion::physical_optimizer::PhysicalOptimizerRule for YieldEverywhere {
    fn optimize(
        &self,
        plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        _config: &datafusion::config::ConfigOptions,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        use datafusion::physical_plan::coop::CooperativeExec;
        plan.transform_up(|p| {
            if p.children().is_empty() || p.name() == "CooperativeExec" {
                return Ok(Transformed::no(p));
            }
            Ok(Transformed::yes(Arc::new(CooperativeExec::new(p))
                as Arc<dyn datafusion::physical_plan::ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "flowaudit_yield_everywhere"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// What a table is, for `\d` and Flight SQL's `GetTables`.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub name: String,
    /// "warehouse", "policy" or "view".
    pub kind: &'static str,
    pub schema: SchemaRef,
}

/// A parsed, checked statement, ready to plan.
#[derive(Debug, Clone)]
pub struct Checked(Statement);

impl std::fmt::Display for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The read-only SQL engine.
pub struct SqlEngine {
    site: Site,
    policy: PathBuf,
    geoip: Option<PathBuf>,
    pub limits: Limits,
    threads: Arc<QueryThreads>,
    shared: SharedMemory,
    catalog: std::sync::RwLock<(Arc<Catalog>, std::time::Instant)>,
    /// How long an opened catalog is used before policy files and new tables are re-read.
    refresh: Duration,
    /// Parquet footers and page indexes already read, shared by every query's session (each has
    /// its own runtime, for its own memory pool) and checked against each file's size and
    /// modification time before use.
    footers: Arc<FileMetadataCache>,
}

/// The environment variable of DataFusion's `execution.parquet.pushdown_filters`.
const PUSHDOWN_VAR: &str = "DATAFUSION_EXECUTION_PARQUET_PUSHDOWN_FILTERS";

/// The environment variable of DataFusion's `execution.parquet.bloom_filter_on_read`.
const BLOOM_VAR: &str = "DATAFUSION_EXECUTION_PARQUET_BLOOM_FILTER_ON_READ";

/// The environment variable of DataFusion's `optimizer.hash_join_inlist_pushdown_max_distinct_values`.
const INLIST_VAR: &str = "DATAFUSION_OPTIMIZER_HASH_JOIN_INLIST_PUSHDOWN_MAX_DISTINCT_VALUES";

const WAREHOUSE_TABLES: [&str; 5] = [
    "gateway_events",
    "flows",
    "quarantine",
    "alerts",
    "ingest_gaps",
];

impl SqlEngine {
    pub async fn open(
        site: &Site,
        policy: &Path,
        geoip: Option<&Path>,
        limits: Limits,
    ) -> Result<Self, SqlError> {
        let catalog = Catalog::open_with(site, policy, geoip, Strings::View).await?;
        let threads = QueryThreads::new(limits.threads)
            .map_err(|e| SqlError::Query(DataFusionError::IoError(e)))?;
        Ok(Self {
            site: site.clone(),
            policy: policy.into(),
            geoip: geoip.map(Into::into),
            limits,
            threads: Arc::new(threads),
            shared: SharedMemory::new(limits.total_memory),
            catalog: std::sync::RwLock::new((Arc::new(catalog), std::time::Instant::now())),
            refresh: Duration::from_secs(30),
            footers: Arc::new(
                DefaultCache::new(DEFAULT_METADATA_CACHE_LIMIT).with_name("flowaudit sql footers"),
            ),
        })
    }

    /// The catalog, re-opened when older than the refresh interval (a long-running server sees
    /// policy changes and tables created after it started).
    async fn catalog(&self) -> Result<Arc<Catalog>, SqlError> {
        {
            let g = self.catalog.read().expect("catalog lock");
            if g.1.elapsed() < self.refresh {
                return Ok(g.0.clone());
            }
        }
        let fresh = Arc::new(
            Catalog::open_with(
                &self.site,
                &self.policy,
                self.geoip.as_deref(),
                Strings::View,
            )
            .await?,
        );
        *self.catalog.write().expect("catalog lock") = (fresh.clone(), std::time::Instant::now());
        Ok(fresh)
    }

    /// Bytes held by the queries running now (all of them).
    pub fn memory_in_use(&self) -> usize {
        self.shared.reserved()
    }

    /// A session over the catalog with this query's own memory pool (counted in the shared
    /// one), no spill files, the engine's cache of Parquet footers, checked scalar functions,
    /// and join filters that see `stop`.
    async fn session(&self, stop: &Arc<QueryStop>) -> Result<SessionContext, SqlError> {
        let catalog = self.catalog().await?;
        let pool: Arc<dyn datafusion::execution::memory_pool::MemoryPool> =
            Arc::new(QueryPool::new(self.limits.memory, self.shared.clone()));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool.clone())
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .with_cache_manager(
                CacheManagerConfig::default().with_file_metadata_cache(Some(self.footers.clone())),
            )
            .build_arc()
            .map_err(SqlError::Query)?;
        let guard = Arc::new(GuardContext {
            pool,
            max_value: self.limits.max_value,
        });
        let mut builder =
            SessionStateBuilder::new_from_existing(catalog.ctx.state()).with_runtime_env(runtime);
        if let Some(funcs) = builder.scalar_functions().as_mut() {
            guard_functions(funcs, &guard);
        }
        if let Some(planners) = builder.expr_planners().as_mut() {
            planners.insert(0, Arc::new(ConcatOpPlanner { ctx: guard }));
        }
        // Windows stay DataFusion's streaming operator and sorts DataFusion's sort here: the
        // whole-partition window and the bucket sort hold their input outside the query's
        // memory pool (crate::optimizer, crate::keysort).
        if let Some(optimizer) = builder.physical_optimizers().as_mut() {
            optimizer
                .rules
                .retain(|r| !crate::optimizer::holds_memory_outside_the_pool(r.as_ref()));
        }
        let mut state = builder
            .with_physical_optimizer_rule(Arc::new(StopInJoins(stop.clone())))
            .with_physical_optimizer_rule(Arc::new(YieldEverywhere))
            .with_physical_optimizer_rule(Arc::new(crate::dictscan::PageIndexChoice))
            .build();
        let options = state.config_mut().options_mut();
        options.execution.target_partitions = self.limits.threads.max(1);
        // Filters are evaluated inside the Parquet scan, the other columns decoded only for the
        // rows that pass: analysts' questions are mostly selective (docs/benchmarks.md, "Ad hoc
        // SQL"). The variable of DataFusion's setting still decides where it is set.
        if std::env::var_os(PUSHDOWN_VAR).is_none() {
            options.execution.parquet.pushdown_filters = true;
        }
        // A join's build side reaches the probe side's scan as its key range plus a hash lookup,
        // not as an IN list: a list is worth its cost where Bloom filters can use it, and here it
        // was re-analysed for pruning at every file open (about 1 ms of a 9 ms query over 30
        // employees; docs/benchmarks.md). The range still prunes files, row groups and pages.
        if std::env::var_os(INLIST_VAR).is_none() {
            options
                .optimizer
                .hash_join_inlist_pushdown_max_distinct_values = 0;
        }
        // No writer of the warehouse writes Bloom filters (ingest, `convert`, the alerts table):
        // looking for them cost every file open about 0.1 ms of predicate analysis for nothing
        // (docs/benchmarks.md, "Ad hoc SQL"). DataFusion's variable still decides where it is set.
        // The Parquet scan reads this from the table options (made from the configuration when
        // the state was built), not from the configuration.
        if std::env::var_os(BLOOM_VAR).is_none() {
            state
                .table_options_mut()
                .parquet
                .global
                .bloom_filter_on_read = false;
        }
        Ok(SessionContext::new_with_state(state))
    }

    /// Split `sql` into statements, refusing anything that is not read-only.
    pub fn parse(sql: &str) -> Result<Vec<Checked>, SqlError> {
        let stmts = DFParser::parse_sql(sql).map_err(|e| SqlError::Syntax(e.to_string()))?;
        stmts
            .into_iter()
            .map(|mut s| {
                check_read_only(&s)?;
                number_placeholders(&mut s);
                Ok(Checked(s))
            })
            .collect()
    }

    /// Parse exactly one statement.
    pub fn parse_one(sql: &str) -> Result<Checked, SqlError> {
        let mut v = Self::parse(sql)?;
        if v.len() != 1 {
            return Err(SqlError::NotOne(v.len()));
        }
        Ok(v.remove(0))
    }

    /// Plan a checked statement (no execution): the result schema and parameters are known.
    pub async fn plan(&self, stmt: &Checked) -> Result<Planned, SqlError> {
        let stop = Arc::new(QueryStop::default());
        let ctx = self.session(&stop).await?;
        let state = ctx.state();
        let plan = state
            .statement_to_plan(stmt.0.clone())
            .await
            .map_err(|e| SqlError::from_df(e, &self.limits))?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| SqlError::from_df(e, &self.limits))?;
        // The warehouse's strings are read as `Utf8View`; results carry them as `Utf8`, as the
        // tables' columns are documented and as every client reads them. A view array sent as
        // is would carry each batch's whole data buffers (a Parquet page's dictionary).
        let plan = utf8_results(plan).map_err(|e| SqlError::from_df(e, &self.limits))?;
        Ok(Planned {
            df: DataFrame::new(state, plan),
            limits: self.limits,
            threads: self.threads.clone(),
            stop,
            ahead: None,
        })
    }

    /// Every table of the catalog, sorted by name.
    pub async fn tables(&self) -> Result<Vec<TableInfo>, SqlError> {
        let catalog = self.catalog().await?;
        let ctx = &catalog.ctx;
        let schema = ctx
            .catalog("datafusion")
            .and_then(|c| c.schema("public"))
            .expect("the default schema exists");
        let mut out = Vec::new();
        let mut names = schema.table_names();
        names.sort();
        for name in names {
            let Some(t) = schema
                .table(&name)
                .await
                .map_err(|e| SqlError::from_df(e, &self.limits))?
            else {
                continue;
            };
            let kind = if WAREHOUSE_TABLES.contains(&name.as_str()) {
                "warehouse"
            } else {
                "policy"
            };
            out.push(TableInfo {
                name,
                kind,
                schema: as_results_carry(&t.schema()),
            });
        }
        Ok(out)
    }
}

/// A planned statement.
pub struct Planned {
    df: DataFrame,
    limits: Limits,
    threads: Arc<QueryThreads>,
    stop: Arc<QueryStop>,
    /// Its physical plan, being made on the query threads since [`Planned::plan_ahead`].
    ahead: Option<PlanAhead>,
}

/// A physical plan being made in the background; the work is stopped if the statement is dropped
/// before it runs.
struct PlanAhead(tokio::task::JoinHandle<Result<Arc<dyn ExecutionPlan>, DataFusionError>>);

impl Drop for PlanAhead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Planned {
    pub fn schema(&self) -> SchemaRef {
        Arc::new(self.df.schema().as_arrow().clone())
    }

    pub fn plan(&self) -> &LogicalPlan {
        self.df.logical_plan()
    }

    /// Start making the physical plan (optimising, choosing operators, listing the files to
    /// read) on the query threads now, for an [`execute`](Self::execute) without parameters that
    /// is expected soon: a Flight client asks for a statement's FlightInfo, then for its rows,
    /// and the plan is made while that second request travels. Nothing is read before
    /// `execute`. An `execute` with parameters plans again with them bound.
    pub fn plan_ahead(&mut self) {
        if self.ahead.is_none() {
            let df = self.df.clone();
            self.ahead = Some(PlanAhead(
                self.threads
                    .handle()
                    .spawn(async move { df.create_physical_plan().await }),
            ));
        }
    }

    /// Whether [`plan_ahead`](Self::plan_ahead) was called.
    pub fn is_planning_ahead(&self) -> bool {
        self.ahead.is_some()
    }

    /// Whether the physical plan started by [`plan_ahead`](Self::plan_ahead) is made (or failed).
    pub fn planned_ahead(&self) -> bool {
        self.ahead.as_ref().is_some_and(|a| a.0.is_finished())
    }

    /// The statement's parameters (`$1`, `$2`, …) in order, typed where the plan implies a type.
    pub fn parameter_schema(&self) -> Result<Schema, SqlError> {
        let params = self
            .df
            .logical_plan()
            .get_parameter_types()
            .map_err(|e| SqlError::Params(e.to_string()))?;
        let mut ids: Vec<(usize, String, Option<DataType>)> = params
            .into_iter()
            .map(|(id, t)| {
                let n = id.trim_start_matches('$').parse().unwrap_or(usize::MAX);
                (n, id, t)
            })
            .collect();
        ids.sort();
        // A parameter compared with a warehouse string is typed `Utf8View`; clients bind `Utf8`,
        // the type results carry, and the plan casts it when it runs.
        Ok(Schema::new(
            ids.into_iter()
                .map(|(_, id, t)| {
                    let t = t.as_ref().map_or(DataType::Null, carried);
                    Field::new(id, t, true)
                })
                .collect::<Vec<_>>(),
        ))
    }

    /// Start execution, binding `params` to `$1, $2, …` in order.
    pub async fn execute(
        self,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<SendableRecordBatchStream, SqlError> {
        let limits = self.limits;
        let mut ahead = self.ahead;
        let df = match params {
            Some(p) => {
                ahead = None;
                self.df
                    .with_param_values(p)
                    .map_err(|e| SqlError::Params(e.find_root().to_string()))?
            }
            None => self.df,
        };
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        // The plan runs on the engine's query threads, feeding a small channel. The deadline is
        // raced there too: when it passes, the plan's stream is dropped on its own threads
        // (every task of the plan with it), even if nobody reads the results any more. A panic
        // inside the plan becomes this query's error.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let timed_out = Arc::new(AtomicBool::new(false));
        let flag = timed_out.clone();
        let deadline = tokio::time::Instant::now() + limits.timeout;
        self.stop.start(limits.timeout);
        let task = self.threads.handle().spawn(async move {
            let on_panic = tx.clone();
            let run = async move {
                let started = match ahead.as_mut() {
                    Some(a) => match (&mut a.0).await {
                        Ok(plan) => plan.and_then(|p| execute_stream(p, Arc::new(df.task_ctx()))),
                        Err(e) if e.is_panic() => Err(DataFusionError::External(Box::new(
                            Panicked(panic_message(e.into_panic().as_ref())),
                        ))),
                        Err(e) => Err(DataFusionError::External(Box::new(e))),
                    },
                    None => df.execute_stream().await,
                };
                let mut stream = match started {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                while let Some(item) = stream.next().await {
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        break;
                    }
                }
            };
            tokio::select! {
                r = AssertUnwindSafe(run).catch_unwind() => {
                    if let Err(p) = r {
                        let e = DataFusionError::External(Box::new(Panicked(panic_message(p.as_ref()))));
                        let _ = on_panic.send(Err(e)).await;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => flag.store(true, Ordering::Relaxed),
            }
        });
        Ok(Box::pin(QueryStream {
            rx,
            schema,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            limits,
            timed_out,
            stop: self.stop,
            task: task.abort_handle(),
            rows: 0,
            bytes: 0,
            done: false,
            _threads: self.threads.clone(),
        }))
    }
}

/// The type a result column of type `t` carries: `Utf8View` as `Utf8`, also inside lists,
/// structs, maps and dictionaries ([`utf8_results`]).
fn carried(t: &DataType) -> DataType {
    let field = |f: &FieldRef| Arc::new(f.as_ref().clone().with_data_type(carried(f.data_type())));
    match t {
        DataType::Utf8View => DataType::Utf8,
        DataType::List(f) => DataType::List(field(f)),
        DataType::LargeList(f) => DataType::LargeList(field(f)),
        DataType::ListView(f) => DataType::ListView(field(f)),
        DataType::LargeListView(f) => DataType::LargeListView(field(f)),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(field(f), *n),
        DataType::Struct(fs) => DataType::Struct(fs.iter().map(field).collect()),
        DataType::Map(f, sorted) => DataType::Map(field(f), *sorted),
        DataType::Dictionary(k, v) => DataType::Dictionary(k.clone(), Box::new(carried(v))),
        other => other.clone(),
    }
}

/// `schema` with the types results carry ([`carried`]).
fn as_results_carry(schema: &SchemaRef) -> SchemaRef {
    if schema
        .fields()
        .iter()
        .all(|f| carried(f.data_type()) == *f.data_type())
    {
        return schema.clone();
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(carried(f.data_type())))
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `plan` with every column holding `Utf8View` cast to the type it carries ([`carried`]; the
/// same names), or `plan` itself if it has none or is not a query (`EXPLAIN`, `DESCRIBE` keep
/// their own output).
fn utf8_results(plan: LogicalPlan) -> Result<LogicalPlan, DataFusionError> {
    use datafusion::logical_expr::{cast, Expr, LogicalPlanBuilder};
    if matches!(
        plan,
        LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) | LogicalPlan::DescribeTable(_)
    ) || plan
        .schema()
        .fields()
        .iter()
        .all(|f| carried(f.data_type()) == *f.data_type())
    {
        return Ok(plan);
    }
    let exprs: Vec<Expr> = plan
        .schema()
        .iter()
        .map(|(qualifier, field)| {
            let c = Expr::Column(datafusion::common::Column::from((qualifier, field)));
            let to = carried(field.data_type());
            if to != *field.data_type() {
                cast(c, to).alias_qualified(qualifier.cloned(), field.name())
            } else {
                c
            }
        })
        .collect();
    LogicalPlanBuilder::from(plan).project(exprs)?.build()
}

/// Map an error raised while streaming results into a [`SqlError`].
pub fn stream_error(e: DataFusionError, limits: &Limits) -> SqlError {
    SqlError::from_df(e, limits)
}

/// Refuse anything but queries, EXPLAIN of a query, SHOW and DESCRIBE.
fn check_read_only(s: &Statement) -> Result<(), SqlError> {
    let refuse = |what: &str| {
        Err(SqlError::ReadOnly {
            what: what.to_string(),
        })
    };
    match s {
        Statement::Statement(st) => match st.as_ref() {
            ast::Statement::Query(_)
            | ast::Statement::ShowTables { .. }
            | ast::Statement::ShowColumns { .. }
            | ast::Statement::ExplainTable { .. } => Ok(()),
            ast::Statement::Explain { statement, .. } => {
                check_read_only(&Statement::Statement(statement.clone()))
            }
            other => refuse(&statement_kind(&other.to_string())),
        },
        Statement::CreateExternalTable(_) => refuse("CREATE EXTERNAL TABLE (registering a path)"),
        Statement::CopyTo(_) => refuse("COPY"),
        Statement::Explain(e) => check_read_only(&e.statement),
        Statement::Reset(_) => refuse("RESET"),
    }
}

/// "INSERT", "CREATE TABLE", "DROP VIEW", "SET": the statement's leading keywords.
fn statement_kind(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().take(3).collect();
    let first = words.first().copied().unwrap_or("").to_ascii_uppercase();
    let two = matches!(
        first.as_str(),
        "CREATE" | "DROP" | "ALTER" | "TRUNCATE" | "DELETE" | "INSERT"
    );
    if two && words.len() > 1 {
        let second = words[1].to_ascii_uppercase();
        if second == "OR" && words.len() > 2 {
            return format!("{first} OR {}", words[2].to_ascii_uppercase());
        }
        return format!("{first} {second}");
    }
    first
}

/// Rewrite `?` placeholders into `$1, $2, …` in order of appearance.
fn number_placeholders(s: &mut Statement) {
    let Statement::Statement(st) = s else { return };
    let mut n = 0;
    let _ = visit_expressions_mut(st.as_mut(), |e| {
        if let Expr::Value(v) = e {
            if let Value::Placeholder(p) = &mut v.value {
                if p == "?" {
                    n += 1;
                    *p = format!("${n}");
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each query has its own runtime (for its own memory pool), yet a file's Parquet footer is
    /// read once: the engine's cache holds one entry per data file after a query, and the next
    /// query's session reads through the same cache.
    #[tokio::test(flavor = "multi_thread")]
    async fn queries_share_the_footers_they_read() {
        let policy = repo().join("fixtures/policy");
        let wh = case_warehouse("first_seen_destination");
        let files = parquet_files(&wh.path().join("flows"));
        assert!(files > 1, "the case writes a file per hour: {files}");

        let engine = SqlEngine::open(&Site::local(wh.path()), &policy, None, Limits::default())
            .await
            .unwrap();
        assert_eq!(engine.footers.len(), 0);
        let sum = "SELECT sum(bytes) AS b FROM flows";
        let first = run(&engine, sum).await;
        assert_eq!(engine.footers.len(), files);
        let planned = engine
            .plan(&SqlEngine::parse_one(sum).unwrap())
            .await
            .unwrap();
        let cache = planned
            .df
            .task_ctx()
            .runtime_env()
            .cache_manager
            .get_file_metadata_cache();
        assert!(Arc::ptr_eq(&cache, &engine.footers));
        assert_eq!(run(&engine, sum).await, first);
        assert_eq!(engine.footers.len(), files);
    }

    /// An analyst's filter is evaluated inside the Parquet scan (`pushdown_filters`) and the
    /// scan reads strings as views: no `FilterExec` above it, and the same rows, as `Utf8`, as
    /// the rule runner's session gets with the filter above the scan.
    #[tokio::test(flavor = "multi_thread")]
    async fn analysts_read_string_views_and_filter_inside_the_parquet_scan() {
        if std::env::var_os(PUSHDOWN_VAR).is_some() {
            eprintln!("{PUSHDOWN_VAR} is set: it decides, not the engine's default");
            return;
        }
        let wh = case_warehouse("first_seen_destination");
        let policy = repo().join("fixtures/policy");
        let engine = SqlEngine::open(&Site::local(wh.path()), &policy, None, Limits::default())
            .await
            .unwrap();
        let sql =
            "SELECT ts, dst_ip, bytes FROM flows WHERE dst_zone = 'external' ORDER BY ts, dst_ip";
        let planned = engine
            .plan(&SqlEngine::parse_one(sql).unwrap())
            .await
            .unwrap();
        let plan = planned.df.clone().create_physical_plan().await.unwrap();
        let text = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        assert!(
            !text.contains("FilterExec") && text.contains("predicate=dst_zone"),
            "{text}"
        );
        let inside = run(&engine, sql).await;
        // The rule runner's session over the same warehouse filters above the scan.
        let catalog = Catalog::open(wh.path(), &policy, None).await.unwrap();
        let df = catalog.ctx.sql(sql).await.unwrap();
        let text = datafusion::physical_plan::displayable(
            df.clone().create_physical_plan().await.unwrap().as_ref(),
        )
        .indent(false)
        .to_string();
        assert!(text.contains("FilterExec"), "{text}");
        let above = arrow::util::pretty::pretty_format_batches(&df.collect().await.unwrap())
            .unwrap()
            .to_string();
        assert_eq!(inside, above);
        assert!(inside.lines().count() > 5, "{inside}");

        let types = "SELECT arrow_typeof(dst_zone) AS t, dst_zone, date FROM flows LIMIT 1";
        assert!(run(&engine, types).await.contains("| Utf8View |"));
        let planned = engine
            .plan(&SqlEngine::parse_one(types).unwrap())
            .await
            .unwrap();
        let schema = planned.schema();
        let got: Vec<&DataType> = schema.fields().iter().map(|f| f.data_type()).collect();
        assert_eq!(got, [&DataType::Utf8, &DataType::Utf8, &DataType::Utf8]);
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["t", "dst_zone", "date"]);
        // Strings inside lists and structs are carried as `Utf8` too, in the schema and in the
        // batches themselves.
        let nested = "SELECT array_agg(dst_country) AS countries, \
                      named_struct('zone', dst_zone) AS s FROM flows GROUP BY dst_zone";
        let planned = engine
            .plan(&SqlEngine::parse_one(nested).unwrap())
            .await
            .unwrap();
        let want = Schema::new(vec![
            Field::new(
                "countries",
                DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                true,
            ),
            Field::new(
                "s",
                DataType::Struct(vec![Field::new("zone", DataType::Utf8, true)].into()),
                false,
            ),
        ]);
        let types_of = |s: &Schema| -> Vec<DataType> {
            s.fields().iter().map(|f| f.data_type().clone()).collect()
        };
        assert_eq!(types_of(&planned.schema()), types_of(&want));
        let batches = collect(planned, None).await;
        assert!(!batches.is_empty());
        for b in &batches {
            assert_eq!(types_of(&b.schema()), types_of(&want));
        }
        // A parameter compared with a string column is bound as `Utf8`.
        let planned = engine
            .plan(
                &SqlEngine::parse_one("SELECT count(*) AS n FROM flows WHERE dst_zone = ?")
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            planned.parameter_schema().unwrap().field(0).data_type(),
            &DataType::Utf8
        );
        let batches = collect(
            planned,
            Some(vec![ScalarValue::Utf8(Some("external".into()))]),
        )
        .await;
        let bound = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        let literal = run(
            &engine,
            "SELECT count(*) AS n FROM flows WHERE dst_zone = 'external'",
        )
        .await;
        assert_eq!(bound, literal);
        // The table listings (`\d`, Flight's GetTables) give the types results carry.
        let tables = engine.tables().await.unwrap();
        let flows = tables.iter().find(|t| t.name == "flows").unwrap();
        assert_eq!(
            flows
                .schema
                .field_with_name("dst_zone")
                .unwrap()
                .data_type(),
            &DataType::Utf8
        );
    }

    /// The analysts' sessions read the few-valued string columns as dictionaries and compare
    /// them there (crate::dictscan): every kind of filter on them, their values and their
    /// groups come out as the rule runner's session, which reads `Utf8`, gets them.
    #[tokio::test(flavor = "multi_thread")]
    async fn few_valued_columns_read_as_dictionaries_give_the_rows_utf8_gives() {
        let (wh, engine, catalog) = case_engine("gateway_bypass").await;
        let queries = [
            "SELECT count(*) AS n FROM flows WHERE dst_zone = 'external'",
            "SELECT src_zone, dst_zone, protocol, count(*) AS n, sum(bytes) AS b FROM flows \
             WHERE dst_zone <> 'enclave' AND protocol = 'tcp' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            "SELECT ts, dst_ip, src_zone, dst_zone FROM flows \
             WHERE 'external' = dst_zone AND src_zone >= 'e' ORDER BY ts, dst_ip",
            "SELECT count(*) AS n FROM flows \
             WHERE dst_zone IN ('external', 'partner') OR dst_zone LIKE 'en%'",
            "SELECT count(*) AS n FROM flows WHERE dst_zone = 'no-such-zone'",
            "SELECT decision, action, data_category, count(*) AS n FROM gateway_events \
             WHERE decision IS DISTINCT FROM 'allow' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            "SELECT event_id, decision FROM gateway_events \
             WHERE decision = 'deny' AND action < 'z' ORDER BY event_id",
        ];
        for sql in queries {
            assert_eq!(
                run(&engine, sql).await,
                rule_runner_rows(&catalog, sql).await,
                "{sql}"
            );
        }
        let n = run(&engine, queries[0]).await;
        assert!(!n.contains("| 0 "), "the case has external flows: {n}");
        let denied = run(&engine, queries[6]).await;
        assert!(
            denied.contains("| deny "),
            "the case has a denied event: {denied}"
        );
        // The files were read through the dictionary reader: a footer rewritten per file.
        for table in ["flows", "gateway_events"] {
            let files = parquet_files(&wh.path().join(table));
            assert_eq!(
                kept_footers(&engine, table, |f| f.len()).await,
                files,
                "{table}"
            );
        }
    }

    /// An analyst's scan is given the files' page index, read once and kept, when the query's
    /// filters pushed into it name a column other than the few-valued strings and the partition
    /// columns; otherwise (on local disk) it neither prunes pages nor gives the decoder the
    /// index, whatever a join or an `ORDER BY … LIMIT` adds to the scan's filter as it runs.
    /// The rows are the rule runner's either way.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_page_index_is_read_for_scans_it_can_prune_and_left_for_the_others() {
        use crate::dictscan::{PageIndex, ScanPageIndex};
        use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
        use datafusion::config::ConfigOptions;
        use datafusion::datasource::physical_plan::{
            FileScanConfigBuilder, FileSource, ParquetSource,
        };
        use datafusion::datasource::source::DataSourceExec;
        use datafusion::physical_optimizer::PhysicalOptimizerRule;
        let (wh, engine, catalog) = case_engine("gateway_bypass").await;
        let (load, strip) = ((true, PageIndex::Load), (false, PageIndex::Strip));
        let cases = [
            (
                "SELECT count(*) AS n FROM flows WHERE ts >= TIMESTAMP '2026-11-21T00:00:00Z'",
                load,
            ),
            ("SELECT sum(bytes) AS b FROM flows", strip),
            (
                "SELECT sum(bytes) AS b FROM flows WHERE date >= '2026-01-01'",
                strip,
            ),
            (
                "SELECT count(*) AS n, sum(bytes) AS b FROM flows \
                 WHERE dst_zone = 'external' AND date >= '2026-01-01'",
                strip,
            ),
            (
                "SELECT count(*) AS n FROM flows WHERE dst_zone = 'external' AND dst_port = 443",
                load,
            ),
            // `ORDER BY … LIMIT` filters the scan on `ts` as it runs: not counted.
            (
                "SELECT ts, dst_ip FROM flows WHERE dst_zone = 'external' \
                 ORDER BY ts DESC, dst_ip LIMIT 3",
                strip,
            ),
            // Nor is the join's filter on `employee_id`; the query's own filters are.
            (
                "SELECT count(*) AS n FROM gateway_events g \
                 JOIN employees e ON e.employee_id = g.employee_id WHERE g.decision = 'allow'",
                strip,
            ),
            (
                "SELECT count(*) AS n FROM gateway_events g JOIN employees e \
                 ON e.employee_id = g.employee_id WHERE g.decision = 'allow' AND g.records > 1",
                load,
            ),
        ];
        for (sql, want) in cases {
            let planned = engine
                .plan(&SqlEngine::parse_one(sql).unwrap())
                .await
                .unwrap();
            let plan = planned.df.clone().create_physical_plan().await.unwrap();
            let mut scans = Vec::new();
            let mut stack = vec![plan];
            while let Some(p) = stack.pop() {
                if let Some((config, parquet)) = p
                    .downcast_ref::<DataSourceExec>()
                    .and_then(|e| e.downcast_to_file_source::<ParquetSource>())
                {
                    let mode = config
                        .file_groups
                        .iter()
                        .flat_map(|g| g.files())
                        .map(|f| f.extensions.get::<ScanPageIndex>().unwrap().mode())
                        .collect::<std::collections::HashSet<_>>();
                    assert_eq!(mode.len(), 1, "{sql}");
                    scans.push((
                        parquet.table_parquet_options().global.enable_page_index,
                        mode.into_iter().next().unwrap(),
                    ));
                    // The cases of a join and a `LIMIT` do have a filter added as they run.
                    let dynamic = parquet
                        .filter()
                        .is_some_and(|f| f.to_string().contains("DynamicFilter"));
                    assert_eq!(
                        dynamic,
                        sql.contains("JOIN") || sql.contains("LIMIT"),
                        "{sql}"
                    );
                }
                stack.extend(p.children().into_iter().cloned());
            }
            assert_eq!(scans, [want], "{sql}");
            assert_eq!(
                run(&engine, sql).await,
                rule_runner_rows(&catalog, sql).await,
                "{sql}"
            );
        }
        // Each file's footer is kept once with its page index and once without.
        for table in ["flows", "gateway_events"] {
            let files = parquet_files(&wh.path().join(table));
            let with = kept_footers(&engine, table, |f| f.kept(PageIndex::Load)).await;
            let without = kept_footers(&engine, table, |f| f.kept(PageIndex::Strip)).await;
            assert_eq!((with, without), (files, files), "{table}");
        }
        // With DataFusion's page index setting off, a filter on `ts` does not read the index.
        let planned = engine
            .plan(&SqlEngine::parse_one(cases[0].0).unwrap())
            .await
            .unwrap();
        let plan = planned.df.clone().create_physical_plan().await.unwrap();
        let scan = plan
            .transform_up(|p| {
                let Some((config, parquet)) = p
                    .downcast_ref::<DataSourceExec>()
                    .and_then(|e| e.downcast_to_file_source::<ParquetSource>())
                else {
                    return Ok(Transformed::no(p));
                };
                let source = parquet.clone().with_enable_page_index(false);
                Ok(Transformed::yes(DataSourceExec::from_data_source(
                    FileScanConfigBuilder::from(config.clone())
                        .with_source(Arc::new(source))
                        .build(),
                )))
            })
            .unwrap()
            .data;
        let modes = |plan: &Arc<dyn ExecutionPlan>| {
            let mut modes = Vec::new();
            plan.apply(|p| {
                if let Some((config, _)) = p
                    .downcast_ref::<DataSourceExec>()
                    .and_then(|e| e.downcast_to_file_source::<ParquetSource>())
                {
                    modes.extend(
                        config
                            .file_groups
                            .iter()
                            .flat_map(|g| g.files())
                            .map(|f| f.extensions.get::<ScanPageIndex>().unwrap().mode()),
                    );
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
            modes
        };
        assert!(modes(&scan).iter().all(|m| *m == PageIndex::Load));
        let chosen = crate::dictscan::PageIndexChoice
            .optimize(scan, &ConfigOptions::default())
            .unwrap();
        let modes = modes(&chosen);
        assert!(!modes.is_empty() && modes.iter().all(|m| *m == PageIndex::Strip));
        let external = run(
            &engine,
            "SELECT count(*) AS n FROM flows WHERE dst_zone = 'external'",
        )
        .await;
        assert!(
            !external.contains("| 0 "),
            "the case has external flows: {external}"
        );
    }

    /// A join's build side reaches the scan of the other side as a key range with a hash
    /// lookup, not an IN list, and the scan does not look for Bloom filters (the warehouse's
    /// writers write none): the rows are those of the rule runner's session, which does both.
    #[tokio::test(flavor = "multi_thread")]
    async fn joins_filter_the_scan_by_key_range_and_hash_without_bloom_filters() {
        if std::env::var_os(INLIST_VAR).is_some() || std::env::var_os(BLOOM_VAR).is_some() {
            eprintln!("{INLIST_VAR} or {BLOOM_VAR} is set: it decides, not the engine's default");
            return;
        }
        let wh = case_warehouse("repeated_denials");
        let policy = repo().join("fixtures/policy");
        let engine = SqlEngine::open(&Site::local(wh.path()), &policy, None, Limits::default())
            .await
            .unwrap();
        let sql = "SELECT e.name, g.data_category, count(*) AS n FROM gateway_events g \
                   JOIN employees e ON e.employee_id = g.employee_id \
                   GROUP BY e.name, g.data_category ORDER BY n DESC, e.name, g.data_category";
        let analysed = run(&engine, &format!("EXPLAIN ANALYZE {sql}")).await;
        let scan = analysed
            .lines()
            .skip_while(|l| !l.contains("file_type=parquet"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            scan.contains("DynamicFilter [ employee_id@")
                && scan.contains("<=")
                && !scan.contains("IN (SET)"),
            "{analysed}"
        );
        // The scan's metrics count row groups "matched" by Bloom filters either way; the
        // setting the scan reads is in the session's table options.
        let session = engine
            .session(&Arc::new(QueryStop::default()))
            .await
            .unwrap();
        assert!(
            !session
                .state()
                .table_options()
                .parquet
                .global
                .bloom_filter_on_read
        );
        // DataFusion's defaults, which the rule runner's session keeps, do both.
        let catalog = Catalog::open(wh.path(), &policy, None).await.unwrap();
        let batches = catalog
            .ctx
            .sql(&format!("EXPLAIN ANALYZE {sql}"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let defaults = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(defaults.contains("IN (SET)"), "{defaults}");
        assert!(
            catalog
                .ctx
                .state()
                .table_options()
                .parquet
                .global
                .bloom_filter_on_read
        );
        let want = arrow::util::pretty::pretty_format_batches(
            &catalog.ctx.sql(sql).await.unwrap().collect().await.unwrap(),
        )
        .unwrap()
        .to_string();
        let got = run(&engine, sql).await;
        assert_eq!(got, want);
        assert!(got.lines().count() > 4, "the case has joined events: {got}");
    }

    /// Every batch of `planned` run with `params`.
    async fn collect(
        planned: Planned,
        params: Option<Vec<ScalarValue>>,
    ) -> Vec<arrow::record_batch::RecordBatch> {
        planned
            .execute(params)
            .await
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
            .await
    }

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// A warehouse holding the rows of a rule's test case (`fixtures/rules/<case>`).
    fn case_warehouse(case: &str) -> tempfile::TempDir {
        use flowaudit_ingest::batch::Enricher;
        let policy = repo().join("fixtures/policy");
        let enricher = Enricher {
            geoip: Some(
                flowaudit_ingest::geoip::GeoIp::open(&repo().join("fixtures/geoip/ranges.csv"))
                    .unwrap(),
            ),
            networks: flowaudit_ingest::networks::Networks::load(&policy).unwrap(),
        };
        let wh = tempfile::tempdir().unwrap();
        let case = repo().join("fixtures/rules").join(case);
        std::thread::scope(|s| {
            s.spawn(|| crate::cases::build_warehouse(&case, wh.path(), &enricher))
                .join()
        })
        .unwrap()
        .unwrap();
        wh
    }

    /// An engine over the warehouse of the rules' test case `case`, and the rule runner's
    /// catalog over the same warehouse.
    async fn case_engine(case: &str) -> (tempfile::TempDir, SqlEngine, Catalog) {
        let wh = case_warehouse(case);
        let policy = repo().join("fixtures/policy");
        let engine = SqlEngine::open(&Site::local(wh.path()), &policy, None, Limits::default())
            .await
            .unwrap();
        let catalog = Catalog::open(wh.path(), &policy, None).await.unwrap();
        (wh, engine, catalog)
    }

    /// The rows of `sql` in the rule runner's session, as [`run`] prints an engine's.
    async fn rule_runner_rows(catalog: &Catalog, sql: &str) -> String {
        let df = catalog.ctx.sql(sql).await.unwrap();
        arrow::util::pretty::pretty_format_batches(&df.collect().await.unwrap())
            .unwrap()
            .to_string()
    }

    /// `count` of the rewritten footers the engine's `table` keeps.
    async fn kept_footers(
        engine: &SqlEngine,
        table: &str,
        count: impl Fn(&crate::dictscan::DictionaryFooters) -> usize,
    ) -> usize {
        let catalog = engine.catalog.read().unwrap().0.clone();
        let provider = catalog.ctx.table_provider(table).await.unwrap();
        let t = provider
            .as_ref()
            .downcast_ref::<crate::tables::DeltaWarehouseTable>()
            .unwrap();
        count(t.dictionary_footers().unwrap())
    }

    async fn run(engine: &SqlEngine, sql: &str) -> String {
        let planned = engine
            .plan(&SqlEngine::parse_one(sql).unwrap())
            .await
            .unwrap();
        let batches = collect(planned, None).await;
        arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    }

    /// How many Parquet files are under `dir`.
    fn parquet_files(dir: &Path) -> usize {
        walk(dir)
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .count()
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    /// An analyst's query keeps DataFusion's window operator and sort, which count what they
    /// hold against the query's memory limit, where the rule runner's session would use the
    /// whole-partition window and the bucket sort (crate::optimizer, crate::keysort).
    #[tokio::test]
    async fn analysts_keep_the_operators_that_count_their_memory() {
        let wh = tempfile::tempdir().unwrap();
        let policy =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/policy");
        let sql = "SELECT s, t, lag(t) OVER (PARTITION BY s ORDER BY t) AS prev \
                   FROM (VALUES ('a', 2), ('b', 1), ('a', 1)) AS x(s, t) ORDER BY s, t";
        let engine = SqlEngine::open(&Site::local(wh.path()), &policy, None, Limits::default())
            .await
            .unwrap();
        let planned = engine
            .plan(&SqlEngine::parse_one(sql).unwrap())
            .await
            .unwrap();
        let plan = planned.df.clone().create_physical_plan().await.unwrap();
        let text = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        assert!(text.contains("BoundedWindowAggExec"), "{text}");
        assert!(
            text.contains("SortExec") && !text.contains("BucketSortExec"),
            "{text}"
        );
        // The rule runner's session over the same catalog.
        let catalog = Catalog::open(wh.path(), &policy, None).await.unwrap();
        let df = catalog.ctx.sql(sql).await.unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        let text = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        assert!(
            text.contains("BucketSortExec") && !text.contains("BoundedWindowAggExec"),
            "{text}"
        );
    }

    fn refused(sql: &str) -> String {
        match SqlEngine::parse(sql) {
            Err(SqlError::ReadOnly { what }) => what,
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn writes_are_refused_by_name() {
        assert_eq!(refused("INSERT INTO alerts VALUES (1)"), "INSERT INTO");
        assert_eq!(refused("create table t as select 1"), "CREATE TABLE");
        assert_eq!(
            refused("CREATE OR REPLACE VIEW v AS SELECT 1"),
            "CREATE OR REPLACE"
        );
        assert_eq!(refused("DROP TABLE flows"), "DROP TABLE");
        assert_eq!(refused("DELETE FROM flows"), "DELETE FROM");
        assert_eq!(refused("UPDATE flows SET bytes = 0"), "UPDATE");
        assert_eq!(refused("SET datafusion.execution.batch_size = 1"), "SET");
        assert_eq!(
            refused("CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc'"),
            "CREATE EXTERNAL TABLE (registering a path)"
        );
        assert_eq!(refused("COPY flows TO '/tmp/x.parquet'"), "COPY");
        assert_eq!(
            refused("EXPLAIN ANALYZE INSERT INTO alerts VALUES (1)"),
            "INSERT INTO"
        );
        // One bad statement in a script refuses the script.
        assert_eq!(refused("SELECT 1; DROP TABLE flows"), "DROP TABLE");
    }

    #[test]
    fn reads_pass() {
        for sql in [
            "SELECT 1",
            "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
            "VALUES (1), (2)",
            "EXPLAIN SELECT 1",
            "SHOW TABLES",
            "DESCRIBE flows",
        ] {
            SqlEngine::parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn question_marks_become_numbered_placeholders() {
        let s = SqlEngine::parse_one("SELECT a FROM t WHERE a = ? AND b IN (?, $3)").unwrap();
        assert_eq!(
            s.to_string(),
            "SELECT a FROM t WHERE a = $1 AND b IN ($2, $3)"
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2 GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert_eq!(parse_bytes("1.5GB").unwrap(), 1_500_000_000);
        assert!(parse_bytes("lots").unwrap_err().contains("lots"));
        assert!(parse_bytes("5 parsecs").unwrap_err().contains("parsecs"));
    }
}
