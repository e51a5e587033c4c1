//! The warehouse's Delta tables as DataFusion tables, read at the table's latest version at each
//! scan, so a long-lived session (the SQL shell, Flight SQL, `serve`) sees new commits.
//!
//! The warehouse writes plain Parquet files under its Delta logs (reader version 1: no deletion
//! vectors, no column mapping), so a scan reads the latest snapshot's files with DataFusion's own
//! Parquet scan, as a listing table of those files would: the `add` actions give the files, their
//! `date` and `hour` (files pruned on filters over those columns) and their row counts (for the
//! planner), and DataFusion splits large files into byte ranges across its partitions. The
//! columns come out as the rules were written against them ([`sql_schema`]), with no cast.
//! delta-rs's provider, used before, always pushed filters down into the Parquet decoder
//! (`pushdown_filters`, which this session leaves off as slower for the rule pack), read strings
//! as view types and partition values dictionary-encoded, and so needed a cast above its scan:
//! 1.4× the CPU of this scan over the rule pack. A table whose protocol needs a reader feature is
//! still read through delta-rs's provider, its columns cast back.
//!
//! On a local warehouse a scan asks delta-rs for new commits only when the `_delta_log`
//! directory changed since the last time it asked ([`LogWatch`]): asking lists the log through
//! delta-kernel's blocking executor, about 1 ms of every analyst's query (docs/sql.md, "Speed").
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::{project_schema, DFSchema, ScalarValue, Statistics};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::helpers::expr_applicable_for_cols;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::ParquetSource;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::{cast, Column};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::ExecutionPlan;
use deltalake::logstore::LogStore as _;
use deltalake::DeltaTable;
use flowaudit_ingest::schema::Table;
use flowaudit_ingest::warehouse::Location;
use tokio::sync::Mutex;

use crate::dictscan::{
    DictionaryExprAdapterFactory, DictionaryFooters, DictionaryReaderFactory, ScanPageIndex,
};

/// The partition columns of every ingest table, the last columns of [`sql_schema`].
const PARTITION_COLUMNS: &[&str] = &["date", "hour"];

/// The columns a warehouse table has in SQL: its Arrow schema, then `date` and `hour`.
pub fn sql_schema(table: Table) -> SchemaRef {
    let mut fields: Vec<Field> = table
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    for name in PARTITION_COLUMNS.iter().copied() {
        fields.push(Field::new(name, DataType::Utf8, false));
    }
    Arc::new(Schema::new(fields))
}

/// One Delta table of the warehouse, read at its latest version.
#[derive(Debug)]
pub struct DeltaWarehouseTable {
    name: &'static str,
    /// The URL of the table's directory.
    url: String,
    schema: SchemaRef,
    /// The columns in the Parquet files: `schema` without the partition columns.
    file_schema: SchemaRef,
    /// The partition columns, the last columns of `schema` (Utf8).
    partitions: &'static [&'static str],
    /// The Delta table, shared with the same table read with other string types.
    table: Arc<Mutex<DeltaTable>>,
    /// When its log last changed, on a local warehouse; shared as `table` is.
    log: Arc<LogWatch>,
    /// The string columns read from the files as dictionaries (crate::dictscan), with their
    /// rewritten footers: [`crate::dictscan::DICTIONARY_COLUMNS`] in the analysts' sessions.
    dictionaries: Option<Arc<DictionaryFooters>>,
}

/// Whether a local table's `_delta_log` directory changed since delta-rs last read it.
///
/// A commit, a checkpoint or a log clean-up adds, renames or removes an entry of that directory,
/// which changes its modification and change times. The check is the one git makes of its
/// index ("racy git"): file times come from a coarse clock, so a second change within the same
/// tick as the one recorded would leave them equal. A stamp is therefore trusted only if, when it
/// was taken, the directory had not changed for [`LogWatch::QUIET`]; any change after that
/// carries a later time. Otherwise, on any difference, or where the stamp cannot be read, the log
/// is read again. An S3 warehouse has no such stamp and always reads it.
#[derive(Debug, Default)]
struct LogWatch {
    /// The `_delta_log` directory; `None` on S3.
    dir: Option<PathBuf>,
    /// The stamp taken just before delta-rs last read the log, if that read succeeded.
    seen: std::sync::Mutex<Option<LogStamp>>,
    /// How many times the log was read for a scan (for tests).
    reads: AtomicU64,
}

/// The `_delta_log` directory's identity and times, and when they were read.
#[derive(Debug, Clone, PartialEq)]
struct LogStamp {
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    taken: SystemTime,
}

impl LogWatch {
    /// How long the directory must have been unchanged before its stamp is trusted.
    const QUIET: Duration = Duration::from_secs(1);

    fn new(location: &Location, table: &str) -> Self {
        let dir = match location {
            Location::Local(_) => location
                .table_url(table)
                .ok()
                .and_then(|u| u.to_file_path().ok())
                .map(|p| p.join("_delta_log")),
            Location::S3(_) => None,
        };
        Self {
            dir,
            ..Self::default()
        }
    }

    fn stamp(&self) -> Option<LogStamp> {
        let taken = SystemTime::now();
        let m = std::fs::metadata(self.dir.as_ref()?).ok()?;
        Some(LogStamp {
            ino: m.ino(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            taken,
        })
    }

    /// Whether the log must be read again, given `now`, a stamp taken just before.
    fn changed(&self, now: &Option<LogStamp>) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (Some(seen), Some(now)) = (seen.as_ref(), now) else {
            return true;
        };
        let quiet_since = seen.taken.checked_sub(Self::QUIET);
        let settled = |(s, ns): (i64, i64)| {
            let t = SystemTime::UNIX_EPOCH.checked_add(Duration::new(
                s.max(0) as u64,
                ns.clamp(0, 999_999_999) as u32,
            ));
            matches!((t, quiet_since), (Some(t), Some(q)) if s >= 0 && t <= q)
        };
        !(seen.ino == now.ino
            && seen.mtime == now.mtime
            && seen.ctime == now.ctime
            && settled(seen.mtime)
            && settled(seen.ctime))
    }

    fn record(&self, stamp: Option<LogStamp>) {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = stamp;
    }
}

/// What a scan reads, from the table's latest snapshot.
enum Snapshot {
    /// Plain Parquet files: each with its partition values and row count, pruned on the filters
    /// over the partition columns; paths relative to the table's store at `store`.
    Files {
        store: ObjectStoreUrl,
        files: Vec<PartitionedFile>,
    },
    /// A table whose protocol needs reader features: delta-rs's provider.
    Provider(Arc<dyn TableProvider>),
}

fn dferr(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::External(e.to_string().into())
}

/// A Delta table of the warehouse as SQL sees it: its name, its columns, the columns in its
/// files and its partition columns.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub name: &'static str,
    /// The SQL columns: `file_schema`, then the partition columns (Utf8).
    pub schema: SchemaRef,
    pub file_schema: SchemaRef,
    pub partitions: &'static [&'static str],
}

/// Every Delta table the catalog reads: the ingest tables, and `alerts` (the rule runner's,
/// partitioned by the finding's `date` only).
pub fn specs() -> Vec<TableSpec> {
    let mut out: Vec<TableSpec> = Table::ALL
        .iter()
        .map(|t| TableSpec {
            name: t.name(),
            schema: sql_schema(*t),
            file_schema: t.schema(),
            partitions: PARTITION_COLUMNS,
        })
        .collect();
    let mut fields: Vec<Field> = crate::alerts::table_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("date", DataType::Utf8, false));
    out.push(TableSpec {
        name: crate::alerts_table::TABLE,
        schema: Arc::new(Schema::new(fields)),
        file_schema: crate::alerts::table_schema(),
        partitions: &["date"],
    });
    out
}

/// The spec of the Delta table `name`, if the catalog has one.
pub fn spec(name: &str) -> Option<TableSpec> {
    specs().into_iter().find(|s| s.name == name)
}

/// The Delta table `name` at `location`, not read yet (built without I/O).
fn delta_table(location: &Location, name: &str) -> Result<DeltaTable> {
    flowaudit_ingest::warehouse::register_s3();
    let url = location.table_url(name).map_err(dferr)?;
    let (store, _) = location.store().map_err(dferr)?;
    deltalake::DeltaTableBuilder::from_url(url.clone())
        .map_err(dferr)?
        .with_storage_backend(store, url)
        .build()
        .map_err(dferr)
}

/// The object store a scan of the table `name` at `location` reads its files from, under the
/// URL its scans name: what a cluster executor registers before it runs a scan planned elsewhere.
pub fn scan_store(
    location: &Location,
    name: &str,
) -> Result<(ObjectStoreUrl, Arc<dyn object_store::ObjectStore>)> {
    let log_store = delta_table(location, name)?.log_store();
    Ok((log_store.object_store_url(), log_store.object_store(None)))
}

impl DeltaWarehouseTable {
    /// Open `table` of the warehouse at `location`; `None` if it has no Delta log yet.
    pub async fn open(location: &Location, table: Table) -> Result<Option<Self>> {
        Self::open_spec(
            location,
            spec(table.name()).expect("every ingest table has a spec"),
        )
        .await
    }

    /// Open the Delta table of `spec` at `location`; `None` if it has no Delta log yet.
    pub async fn open_spec(location: &Location, spec: TableSpec) -> Result<Option<Self>> {
        flowaudit_ingest::warehouse::register_s3();
        if !flowaudit_ingest::warehouse::has_log(location, spec.name)
            .await
            .map_err(dferr)?
        {
            return Ok(None);
        }
        let table = Self::unread(location, spec)?;
        let name = table.name;
        match table.table.lock().await.load().await {
            Ok(()) => {}
            Err(deltalake::DeltaTableError::NotATable(_)) => return Ok(None),
            Err(e) => return Err(dferr(format!("{name}: {e}"))),
        }
        Ok(Some(table))
    }

    /// The Delta table of `spec` at `location`, read at its first scan (which fails if it has
    /// no log by then): how a cluster member opens a table a client's plan names.
    pub fn unread(location: &Location, spec: TableSpec) -> Result<Self> {
        let dt = delta_table(location, spec.name)?;
        Ok(Self {
            name: spec.name,
            url: location.table_url(spec.name).map_err(dferr)?.to_string(),
            schema: spec.schema,
            file_schema: spec.file_schema,
            partitions: spec.partitions,
            table: Arc::new(Mutex::new(dt)),
            log: Arc::new(LogWatch::new(location, spec.name)),
            dictionaries: None,
        })
    }

    /// How many times a scan read this table's Delta log for new commits.
    pub fn log_reads(&self) -> u64 {
        self.log.reads.load(Ordering::Relaxed)
    }

    /// The same table with its string columns, but not the partition columns, read as
    /// `Utf8View` (DataFusion's own type for strings read from Parquet): decoding a
    /// dictionary-encoded page copies a 16-byte view per row instead of the bytes, and comparing
    /// strings of up to 12 bytes compares the views. The rule pack and the summaries read
    /// `Utf8`, the type they were written against; the analysts' sessions read this
    /// (crate::sql, docs/benchmarks.md).
    pub fn with_view_strings(&self) -> Self {
        let view = |f: &FieldRef| -> Field {
            let f = f.as_ref().clone();
            if f.data_type() == &DataType::Utf8 {
                f.with_data_type(DataType::Utf8View)
            } else {
                f
            }
        };
        let file_schema: Vec<Field> = self.file_schema.fields().iter().map(view).collect();
        let mut fields = file_schema.clone();
        fields.extend(self.partition_fields().iter().map(|f| f.as_ref().clone()));
        Self {
            name: self.name,
            url: self.url.clone(),
            schema: Arc::new(Schema::new(fields)),
            file_schema: Arc::new(Schema::new(file_schema)),
            partitions: self.partitions,
            table: self.table.clone(),
            log: self.log.clone(),
            dictionaries: Some(Arc::new(DictionaryFooters::new(
                crate::dictscan::DICTIONARY_COLUMNS,
            ))),
        }
    }

    /// The footers rewritten so far for reading few-valued strings as dictionaries, when this
    /// table reads them so.
    pub fn dictionary_footers(&self) -> Option<&DictionaryFooters> {
        self.dictionaries.as_deref()
    }

    /// The table's name in SQL.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The URL of the table's directory.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The partition columns, as in `schema`.
    fn partition_fields(&self) -> Vec<FieldRef> {
        let n = self.schema.fields().len() - self.partitions.len();
        self.schema.fields()[n..].to_vec()
    }

    /// The table at its latest version: its files that `partition_filters` (filters over the
    /// partition columns only) keep, or delta-rs's provider.
    async fn current(&self, state: &dyn Session, partition_filters: &[Expr]) -> Result<Snapshot> {
        let mut dt = self.table.lock().await;
        // The stamp is taken before the log is read: a commit during the read changes it.
        let stamp = self.log.stamp();
        if self.log.changed(&stamp) {
            self.log.reads.fetch_add(1, Ordering::Relaxed);
            self.log.record(None);
            dt.update_incremental(None)
                .await
                .map_err(|e| dferr(format!("{}: {e}", self.name)))?;
            self.log.record(stamp);
        }
        let snapshot = dt
            .snapshot()
            .map_err(|e| dferr(format!("{}: {e}", self.name)))?;
        let columns = snapshot.snapshot().arrow_schema();
        let names: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let delta_names: Vec<&str> = columns.fields().iter().map(|f| f.name().as_str()).collect();
        if names != delta_names {
            return Err(DataFusionError::Plan(format!(
                "the Delta table {} has columns {delta_names:?}, expected {names:?}",
                self.name
            )));
        }
        let protocol = snapshot.protocol();
        let plain = protocol.min_reader_version() <= 1
            && protocol.reader_features().is_none_or(|f| f.is_empty())
            && snapshot
                .metadata()
                .partition_columns()
                .iter()
                .map(String::as_str)
                .eq(self.partitions.iter().copied());
        if !plain {
            dt.update_datafusion_session(state).map_err(dferr)?;
            let provider = dt
                .table_provider()
                .await
                .map_err(|e| dferr(format!("{}: {e}", self.name)))?;
            return Ok(Snapshot::Provider(provider));
        }
        // The table's own store, rooted at the table: the paths in the log are relative to it.
        let log_store = dt.log_store();
        let store = log_store.object_store_url();
        if state.runtime_env().object_store(&store).is_err() {
            state
                .runtime_env()
                .register_object_store(store.as_ref(), log_store.object_store(None));
        }
        let mut files = Vec::new();
        for f in snapshot.log_data().iter() {
            let meta = object_store::ObjectMeta::try_from(&f).map_err(dferr)?;
            let size = meta.size;
            let values = f.partition_values_map();
            let file = PartitionedFile::new_from_meta(meta).with_partition_values(
                self.partitions
                    .iter()
                    .map(|c| ScalarValue::Utf8(values.get(*c).cloned().flatten()))
                    .collect(),
            );
            // Row counts from the log, for join order and the like; the partition columns' values
            // are added by `with_statistics`.
            let stats = Statistics::new_unknown(&self.file_schema)
                .with_num_rows(f.num_records().map_or(Precision::Absent, Precision::Exact))
                .with_total_byte_size(Precision::Inexact(size as usize));
            files.push(file.with_statistics(Arc::new(stats)));
        }
        let files = prune(state, files, self.partitions, partition_filters)?;
        Ok(Snapshot::Files { store, files })
    }

    /// The table's data files at its latest version that `partition_filters` (filters over the
    /// partition columns only) keep, by the value of its first partition column (`date`): each
    /// file's path and size, sorted by path. `None` when the table is read through delta-rs's
    /// provider, whose files are not listed here.
    pub async fn files_by_day(
        &self,
        state: &dyn Session,
        partition_filters: &[Expr],
    ) -> Result<Option<BTreeMap<String, Vec<(String, u64)>>>> {
        let Snapshot::Files { files, .. } = self.current(state, partition_filters).await? else {
            return Ok(None);
        };
        let mut days: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for f in files {
            let day = match f.partition_values.first() {
                Some(ScalarValue::Utf8(Some(d))) => d.clone(),
                other => {
                    return Err(dferr(format!(
                        "{}: a file with no {} value ({other:?}): {}",
                        self.name,
                        self.partitions.first().copied().unwrap_or("partition"),
                        f.object_meta.location
                    )))
                }
            };
            days.entry(day)
                .or_default()
                .push((f.object_meta.location.to_string(), f.object_meta.size));
        }
        for files in days.values_mut() {
            files.sort();
        }
        Ok(Some(days))
    }

    /// DataFusion's Parquet scan of `files`, as a listing table of the same files would plan it.
    async fn scan_files(
        &self,
        state: &dyn Session,
        store: ObjectStoreUrl,
        files: Vec<PartitionedFile>,
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if files.is_empty() {
            let schema = project_schema(&self.schema, projection)?;
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let statistics = Statistics::try_merge_iter(
            files.iter().filter_map(|f| f.statistics.as_deref()),
            &self.schema,
        )?;
        // The analysts' scans: what their readers give the decoder of each file's page index is
        // chosen once the scan's predicate is complete (crate::dictscan::PageIndexChoice).
        let mut files = files;
        if self.dictionaries.is_some() {
            let scan = Arc::new(ScanPageIndex::new(self.url.starts_with("file:")));
            for f in &mut files {
                f.extensions.insert_arc(scan.clone());
            }
        }
        let groups = FileGroup::new(files).split_files(state.config().target_partitions().max(1));
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let source = format.file_source(
            TableSchema::builder(self.file_schema.clone())
                .with_table_partition_cols(self.partition_fields())
                .build(),
        );
        let mut config = FileScanConfigBuilder::new(store, source)
            .with_file_groups(groups)
            .with_statistics(statistics)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit);
        if self.dictionaries.is_some() {
            config = config.with_expr_adapter(Some(Arc::new(DictionaryExprAdapterFactory)));
        }
        let plan = format.create_physical_plan(state, config.build()).await?;
        let Some(footers) = &self.dictionaries else {
            return Ok(plan);
        };
        // DataFusion's Parquet reader factory (with the engine's metadata cache), wrapped.
        let Some(exec) = plan.downcast_ref::<DataSourceExec>() else {
            return Ok(plan);
        };
        let Some((config, parquet)) = exec.downcast_to_file_source::<ParquetSource>() else {
            return Ok(plan);
        };
        let Some(inner) = parquet.parquet_file_reader_factory().cloned() else {
            return Ok(plan);
        };
        let source = parquet.clone().with_parquet_file_reader_factory(Arc::new(
            DictionaryReaderFactory::new(inner, footers.clone()),
        ));
        Ok(DataSourceExec::from_data_source(
            FileScanConfigBuilder::from(config.clone())
                .with_source(Arc::new(source))
                .build(),
        ))
    }

    /// A scan through delta-rs's provider, its columns cast back to `schema`'s types.
    async fn scan_provider(
        &self,
        state: &dyn Session,
        inner: Arc<dyn TableProvider>,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = inner.scan(state, projection, filters, limit).await?;
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let got = plan.schema();
        let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::with_capacity(wanted.len());
        let mut same = got.fields().len() == wanted.len();
        for (i, w) in wanted.iter().enumerate() {
            let want = self.schema.field(*w);
            let col: Arc<dyn PhysicalExpr> = Arc::new(Column::new(want.name(), i));
            let have = got.field(i).data_type();
            if have == want.data_type() {
                exprs.push((col, want.name().clone()));
            } else {
                same = false;
                exprs.push((
                    cast(col, &got, want.data_type().clone())?,
                    want.name().clone(),
                ));
            }
        }
        if same {
            return Ok(plan);
        }
        Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
    }
}

/// The files whose partition values pass every filter in `filters` (filters over the partition
/// columns only), evaluated once over all files; a filter that cannot be evaluated there prunes
/// nothing (every filter is applied again above the scan).
fn prune(
    state: &dyn Session,
    files: Vec<PartitionedFile>,
    partitions: &[&str],
    filters: &[Expr],
) -> Result<Vec<PartitionedFile>> {
    if filters.is_empty() || files.is_empty() {
        return Ok(files);
    }
    let schema = Arc::new(Schema::new(
        partitions
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let df_schema = DFSchema::try_from(schema.clone())?;
    let columns: Vec<ArrayRef> = (0..partitions.len())
        .map(|i| ScalarValue::iter_to_array(files.iter().map(|f| f.partition_values[i].clone())))
        .collect::<Result<_>>()?;
    let batch = RecordBatch::try_new(schema, columns)?;
    let mut keep = vec![true; files.len()];
    for filter in filters {
        let Ok(expr) = state.create_physical_expr(filter.clone(), &df_schema) else {
            continue;
        };
        let Ok(mask) = expr
            .evaluate(&batch)
            .and_then(|v| v.into_array(batch.num_rows()))
        else {
            continue;
        };
        let Some(mask) = mask.as_any().downcast_ref::<BooleanArray>() else {
            continue;
        };
        for (i, k) in keep.iter_mut().enumerate() {
            *k &= mask.is_valid(i) && mask.value(i);
        }
    }
    Ok(files
        .into_iter()
        .zip(keep)
        .filter_map(|(f, k)| k.then_some(f))
        .collect())
}

#[async_trait]
impl TableProvider for DeltaWarehouseTable {
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
        // Filters are re-applied above the scan: pruning in the scan is an optimisation only.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let partition_filters: Vec<Expr> = filters
            .iter()
            .filter(|f| expr_applicable_for_cols(self.partitions, f))
            .cloned()
            .collect();
        match self.current(state, &partition_filters).await? {
            Snapshot::Files { store, files } => {
                self.scan_files(state, store, files, projection, limit)
                    .await
            }
            Snapshot::Provider(inner) => {
                self.scan_provider(state, inner, projection, filters, limit)
                    .await
            }
        }
    }
}
