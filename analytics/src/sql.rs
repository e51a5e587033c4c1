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
//!   an operator that needs more fails with [`SqlError::Memory`]. A query still running after
//!   `timeout` fails with [`SqlError::Timeout`]. Results are streamed batch by batch.
//! - **Placeholders.** `$1, $2, …` and JDBC/ADBC-style `?` (numbered in order of appearance).
use std::future::Future;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::prelude::{DataFrame, SQLOptions, SessionContext};
use datafusion::scalar::ScalarValue;
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::ast::{self, visit_expressions_mut, Expr, Value};
use futures::{Stream, StreamExt};

use crate::catalog::{Catalog, CatalogError};

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
            DataFusionError::External(inner) => match inner.downcast_ref::<Timeout>() {
                Some(t) => SqlError::Timeout(t.0),
                None => SqlError::Query(e),
            },
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

/// Per-query limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes an operator tree may hold (no spilling).
    pub memory: usize,
    /// Wall-clock time from the start of execution to the last batch.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: 2 << 30,
            timeout: Duration::from_secs(300),
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

/// A stream that fails with [`Timeout`] once its deadline passes (and then ends).
struct Deadline {
    inner: SendableRecordBatchStream,
    sleep: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    done: bool,
    /// Dropped after `inner` (fields drop in order).
    _runtime: QueryRuntime,
}

impl Stream for Deadline {
    type Item = datafusion::error::Result<arrow::record_batch::RecordBatch>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            let limit = self.limit;
            return Poll::Ready(Some(Err(DataFusionError::External(Box::new(Timeout(
                limit,
            ))))));
        }
        self.inner.as_mut().poll_next(cx)
    }
}

impl RecordBatchStream for Deadline {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
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
    warehouse: PathBuf,
    policy: PathBuf,
    geoip: Option<PathBuf>,
    pub limits: Limits,
    catalog: std::sync::RwLock<(Arc<Catalog>, std::time::Instant)>,
    /// How long an opened catalog is used before policy files and new tables are re-read.
    refresh: Duration,
}

const WAREHOUSE_TABLES: [&str; 4] = ["gateway_events", "flows", "quarantine", "alerts"];

impl SqlEngine {
    pub async fn open(
        warehouse: &Path,
        policy: &Path,
        geoip: Option<&Path>,
        limits: Limits,
    ) -> Result<Self, SqlError> {
        let catalog = Catalog::open(warehouse, policy, geoip).await?;
        Ok(Self {
            warehouse: warehouse.into(),
            policy: policy.into(),
            geoip: geoip.map(Into::into),
            limits,
            catalog: std::sync::RwLock::new((Arc::new(catalog), std::time::Instant::now())),
            refresh: Duration::from_secs(30),
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
        let fresh =
            Arc::new(Catalog::open(&self.warehouse, &self.policy, self.geoip.as_deref()).await?);
        *self.catalog.write().expect("catalog lock") = (fresh.clone(), std::time::Instant::now());
        Ok(fresh)
    }

    /// A session over the catalog with this query's own memory pool and no spill files.
    async fn session(&self) -> Result<SessionContext, SqlError> {
        let catalog = self.catalog().await?;
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.limits.memory, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(SqlError::Query)?;
        let state = SessionStateBuilder::new_from_existing(catalog.ctx.state())
            .with_runtime_env(runtime)
            .build();
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
        let ctx = self.session().await?;
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
        Ok(Planned {
            df: DataFrame::new(state, plan),
            limits: self.limits,
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
                schema: t.schema(),
            });
        }
        Ok(out)
    }
}

/// A planned statement.
pub struct Planned {
    df: DataFrame,
    limits: Limits,
}

impl Planned {
    pub fn schema(&self) -> SchemaRef {
        Arc::new(self.df.schema().as_arrow().clone())
    }

    pub fn plan(&self) -> &LogicalPlan {
        self.df.logical_plan()
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
        Ok(Schema::new(
            ids.into_iter()
                .map(|(_, id, t)| Field::new(id, t.unwrap_or(DataType::Null), true))
                .collect::<Vec<_>>(),
        ))
    }

    /// Start execution, binding `params` to `$1, $2, …` in order.
    pub async fn execute(
        self,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<SendableRecordBatchStream, SqlError> {
        let limits = self.limits;
        let df = match params {
            Some(p) => self
                .df
                .with_param_values(p)
                .map_err(|e| SqlError::Params(e.find_root().to_string()))?,
            None => self.df,
        };
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        // The plan runs on a runtime of its own, feeding a small channel. The caller's runtime
        // keeps its threads for timers, signals and I/O, so the deadline, the shell's Ctrl-C and
        // a Flight client are never starved by a CPU-bound plan; dropping the stream aborts the
        // plan's tasks and lets its runtime go (a task that is mid-computation stops at its next
        // yield, on its own threads, without holding up the next query).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("flowaudit-query")
            .enable_all()
            .build()
            .map_err(|e| SqlError::Query(DataFusionError::IoError(e)))?;
        let mut builder = RecordBatchReceiverStreamBuilder::new(schema, 2);
        let tx = builder.tx();
        builder.spawn_on(
            async move {
                let mut stream = match df.execute_stream().await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return Ok(());
                    }
                };
                while let Some(item) = stream.next().await {
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        break;
                    }
                }
                Ok(())
            },
            runtime.handle(),
        );
        Ok(Box::pin(Deadline {
            inner: builder.build(),
            sleep: Box::pin(tokio::time::sleep(limits.timeout)),
            limit: limits.timeout,
            done: false,
            _runtime: QueryRuntime(Some(runtime)),
        }))
    }
}

/// The runtime of one query, shut down without waiting when its stream is dropped.
struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
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
