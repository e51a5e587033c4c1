//! Few-valued string columns read from Parquet as dictionaries, for the analysts' sessions.
//!
//! The warehouse writes its strings dictionary-encoded, and a column such as `dst_zone` or
//! `decision` has a handful of values in a file. DataFusion 55's Parquet scan decodes such a
//! column to one string (or view) per row, so `dst_zone = 'external'` compares every row's
//! bytes. Read as `Dictionary(Int32, Utf8)`, each batch is the page dictionary and a key per
//! row, and arrow compares a dictionary with a scalar once per dictionary entry, then maps the
//! answers through the keys.
//!
//! Two parts do it, only for the columns of [`DICTIONARY_COLUMNS`], and only in scans that ask
//! for it (crate::tables, the analysts' catalog):
//! - [`DictionaryReaderFactory`] wraps the scan's Parquet reader factory. The Arrow schema a file
//!   carries (its `ARROW:schema` footer entry) is the parquet reader's hint for the types to
//!   decode to; the wrapper gives the reader the file's own footer with those columns declared
//!   dictionaries, so the pages decode straight into dictionary arrays. The file is not changed,
//!   and DataFusion's metadata cache keeps the file's own footer; the rewritten one is kept
//!   beside it ([`DictionaryFooters`]).
//! - [`DictionaryExprAdapterFactory`] adapts the scan's filters and projections to such a file:
//!   the table still says `Utf8View`, so DataFusion's adapter wraps the column in a cast to
//!   `Utf8View`; where that cast is compared with a string literal, or looked up in a list of
//!   them (`IN`), the literals are made dictionary scalars instead and the cast dropped, so the
//!   comparison runs on the dictionary. Elsewhere (projections, functions, `LIKE`) the cast
//!   stays: a dictionary of strings casts to views without copying its bytes.
//!
//! The wrapper also gives the decoder what the scan's [`PageIndex`] asks of each file's page
//! index, chosen by [`PageIndexChoice`] from the query's filters pushed into the scan: a scan
//! that will not prune pages gets the footer without it, and one that will gets it with the
//! index, read from the file once and kept with the footer (DataFusion's scan reads it again at
//! every open).
//!
//! The columns' values come out as before: the table's types, and the same rows.
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, BooleanArray, Int32Array, RecordBatch};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use bytes::Bytes;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{
    FileScanConfigBuilder, FileSource, ParquetFileReaderFactory, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::expressions::{
    BinaryExpr, CastExpr, Column, DynamicFilterPhysicalExpr, InListExpr, Literal,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr_adapter::{
    DefaultPhysicalExprAdapterFactory, PhysicalExprAdapter, PhysicalExprAdapterFactory,
};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::ExecutionPlan;
use futures::future::BoxFuture;
use futures::FutureExt;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::{AsyncFileReader, MetadataFetch};
use parquet::arrow::{encode_arrow_schema, parquet_to_arrow_schema, ARROW_SCHEMA_META_KEY};
use parquet::errors::ParquetError;
use parquet::file::metadata::{
    FileMetaData, KeyValue, PageIndexPolicy, ParquetMetaData, ParquetMetaDataBuilder,
    ParquetMetaDataReader,
};

/// The string columns the analysts' sessions read as dictionaries: those whose values come from
/// a small fixed vocabulary (zones, decisions, actions, protocols, formats, connection states,
/// the quarantine's tables and reasons). Countries, categories and roles stay views: queries
/// group by them, and DataFusion 55 groups dictionaries through its generic row format, about
/// 4× slower than it groups views (docs/benchmarks.md).
pub const DICTIONARY_COLUMNS: &[&str] = &[
    "src_zone",
    "dst_zone",
    "decision",
    "action",
    "protocol",
    "source_format",
    "flow_type",
    "conn_state",
    "target_table",
    "reason_code",
];

/// The type such a column is read as.
fn dictionary_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// `metadata` with the `Utf8` columns named in `columns` declared `Dictionary(Int32, Utf8)` in
/// its Arrow schema; `None` when it has no such column (read it as it is).
fn with_dictionary_columns(
    metadata: &ParquetMetaData,
    columns: &HashSet<&str>,
) -> parquet::errors::Result<Option<ParquetMetaData>> {
    let file = metadata.file_metadata();
    let schema = parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata())?;
    let mut changed = false;
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if f.data_type() == &DataType::Utf8 && columns.contains(f.name().as_str()) {
                changed = true;
                f.as_ref().clone().with_data_type(dictionary_type())
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    if !changed {
        return Ok(None);
    }
    let encoded = encode_arrow_schema(&Schema::new(fields));
    let mut kv: Vec<KeyValue> = file
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter(|e| e.key != ARROW_SCHEMA_META_KEY)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    kv.push(KeyValue::new(ARROW_SCHEMA_META_KEY.to_string(), encoded));
    let file = FileMetaData::new(
        file.version(),
        file.num_rows(),
        file.created_by().map(str::to_string),
        Some(kv),
        file.schema_descr_ptr(),
        file.column_orders().cloned(),
    );
    let mut old = metadata.clone().into_builder();
    Ok(Some(
        ParquetMetaDataBuilder::new(file)
            .set_row_groups(old.take_row_groups())
            .set_column_index(old.take_column_index())
            .set_offset_index(old.take_offset_index())
            .build(),
    ))
}

/// Whether the file of `footer` has a page index to read: its footer gives where a column's
/// column index and offset index are.
fn writes_page_index(footer: &ParquetMetaData) -> bool {
    footer.row_groups().iter().any(|rg| {
        rg.columns()
            .iter()
            .any(|c| c.column_index_offset().is_some() && c.offset_index_offset().is_some())
    })
}

/// What a scan's readers give the Parquet decoder of a file's page index (its column and offset
/// indexes), chosen for the whole scan by [`PageIndexChoice`] once the scan's predicate is
/// complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageIndex {
    /// The footer as DataFusion's metadata cache gives it (without the index): DataFusion's scan
    /// reads the index from the file at each open where it prunes pages. What a scan gets unless
    /// [`PageIndexChoice`] chose otherwise, and what a scan of an object store gets where the
    /// index cannot prune: without the offset index the decoder fetches whole column chunks.
    AsIs,
    /// With the index, read from the file the first time and kept with the footer.
    Load,
    /// Without it: no page is pruned, and the decoder does not work out which pages a filter's
    /// selection touches.
    Strip,
}

/// A scan's choice of [`PageIndex`], shared by its files (a `PartitionedFile` extension, which
/// the reader factory is given with each file).
#[derive(Debug)]
pub struct ScanPageIndex {
    mode: Mutex<PageIndex>,
    /// Whether the scan's files are on local disk, where fetching a whole column chunk costs
    /// little more than fetching the pages a selection touches.
    local: bool,
}

impl ScanPageIndex {
    pub fn new(local: bool) -> Self {
        Self {
            mode: Mutex::new(PageIndex::AsIs),
            local,
        }
    }

    /// The scan's choice so far.
    pub fn mode(&self) -> PageIndex {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, mode: PageIndex) {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    }
}

/// Chooses each analysts' warehouse scan's [`PageIndex`] from the filters pushed into it, once
/// DataFusion's rules have pushed them all, but not from the filters a join or an `ORDER BY …
/// LIMIT` adds while the query runs (dynamic filters): row-group statistics still prune by
/// those, and reading the page index for them made `WHERE dst_zone = 'external' ORDER BY ts
/// DESC LIMIT 10` take 1.6× its time (docs/benchmarks.md, "Ad hoc SQL").
/// - A filter naming a column other than the few-valued strings ([`DICTIONARY_COLUMNS`]) and
///   the partition columns may prune pages: [`PageIndex::Load`].
/// - Otherwise nothing prunes pages: a few-valued column's values are spread over every page of
///   a file written in time order. On local disk, [`PageIndex::Strip`], with DataFusion's page
///   index off for the scan: given the index, the decoder works out, for every column it reads,
///   which pages a filter's scattered selection touches (all of them), about 13 % of
///   `egress_by_country` (docs/benchmarks.md, "Ad hoc SQL"). On an object store,
///   [`PageIndex::AsIs`].
/// - Where DataFusion's own page index setting is off for the scan, nothing prunes pages.
#[derive(Debug)]
pub struct PageIndexChoice;

impl PhysicalOptimizerRule for PageIndexChoice {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|p| {
            let Some(exec) = p.downcast_ref::<DataSourceExec>() else {
                return Ok(Transformed::no(p));
            };
            let Some((config, parquet)) = exec.downcast_to_file_source::<ParquetSource>() else {
                return Ok(Transformed::no(p));
            };
            let Some(scan) = config
                .file_groups
                .iter()
                .flat_map(|g| g.files())
                .find_map(|f| f.extensions.get_arc::<ScanPageIndex>())
            else {
                return Ok(Transformed::no(p));
            };
            let partitions = config.table_partition_cols();
            let mut prunes = false;
            if let Some(predicate) = parquet.filter() {
                predicate.apply(|e| {
                    if e.downcast_ref::<DynamicFilterPhysicalExpr>().is_some() {
                        return Ok(TreeNodeRecursion::Jump);
                    }
                    if let Some(c) = e.downcast_ref::<Column>() {
                        prunes |= !DICTIONARY_COLUMNS.contains(&c.name())
                            && !partitions.iter().any(|f| f.name() == c.name());
                    }
                    Ok(TreeNodeRecursion::Continue)
                })?;
            }
            // DataFusion's page index setting off (its variable, say): nothing prunes pages.
            let enabled = parquet.table_parquet_options().global.enable_page_index;
            let mode = match (prunes && enabled, scan.local) {
                (true, _) => PageIndex::Load,
                (false, true) => PageIndex::Strip,
                (false, false) => PageIndex::AsIs,
            };
            scan.set(mode);
            if mode != PageIndex::Strip || !enabled {
                return Ok(Transformed::no(p));
            }
            let source = parquet.clone().with_enable_page_index(false);
            Ok(Transformed::yes(DataSourceExec::from_data_source(
                FileScanConfigBuilder::from(config.clone())
                    .with_source(Arc::new(source))
                    .build(),
            )))
        })
        .data()
    }

    fn name(&self) -> &str {
        "flowaudit_page_index_choice"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The footers of [`with_dictionary_columns`], kept for the footers DataFusion's metadata cache
/// hands out, so a file opened again is not rewritten again: one per table of an analysts'
/// catalog, shared by its queries. At most [`FOOTERS_KEPT_BYTES`] of footers are held (the
/// rewritten ones and those they were made from); past that, all are dropped and the next
/// queries rewrite them again.
#[derive(Debug)]
pub struct DictionaryFooters {
    columns: HashSet<&'static str>,
    kept: Mutex<Kept>,
    /// The most bytes of footers held: [`FOOTERS_KEPT_BYTES`].
    limit: usize,
}

/// Rewritten footers by the address of the footer they were made from (which each entry holds,
/// so that the address is not reused while the entry is kept) and what they have of its page
/// index.
#[derive(Debug, Default)]
struct Kept {
    footers: HashMap<(usize, PageIndex), (Arc<ParquetMetaData>, Arc<ParquetMetaData>)>,
    bytes: usize,
}

/// The most footers a table's [`DictionaryFooters`] holds, in bytes (as
/// `ParquetMetaData::memory_size` counts them): the size of the engine's own footer cache.
pub const FOOTERS_KEPT_BYTES: usize = 50 * 1024 * 1024;

impl DictionaryFooters {
    pub fn new(columns: &[&'static str]) -> Self {
        Self {
            columns: columns.iter().copied().collect(),
            kept: Mutex::default(),
            limit: FOOTERS_KEPT_BYTES,
        }
    }

    /// `footer` as the scan reads it, rewritten once, then kept, with what `page_index` asks of
    /// its page index (read from `file` the first time, when `footer` came without it).
    async fn get<F: MetadataFetch>(
        &self,
        footer: Arc<ParquetMetaData>,
        page_index: PageIndex,
        file: F,
    ) -> parquet::errors::Result<Arc<ParquetMetaData>> {
        let key = (Arc::as_ptr(&footer) as usize, page_index);
        if let Some((_, kept)) = self.lock().footers.get(&key) {
            return Ok(kept.clone());
        }
        let rewritten = with_dictionary_columns(&footer, &self.columns).map_err(|e| {
            ParquetError::General(format!(
                "declaring its few-valued strings dictionaries in its footer: {e}"
            ))
        })?;
        let has_index = footer.column_index().is_some() && footer.offset_index().is_some();
        let has_none = footer.column_index().is_none() && footer.offset_index().is_none();
        let rewritten = if page_index == PageIndex::Load && !has_index && writes_page_index(&footer)
        {
            let mut reader = ParquetMetaDataReader::new_with_metadata(
                rewritten.unwrap_or_else(|| footer.as_ref().clone()),
            )
            .with_page_index_policy(PageIndexPolicy::Optional);
            let read = reader
                .load_page_index(file)
                .await
                .and_then(|()| reader.finish());
            Arc::new(
                read.map_err(|e| ParquetError::General(format!("reading its page index: {e}")))?,
            )
        } else if page_index == PageIndex::Strip && !has_none {
            Arc::new(
                rewritten
                    .unwrap_or_else(|| footer.as_ref().clone())
                    .into_builder()
                    .set_column_index(None)
                    .set_offset_index(None)
                    .build(),
            )
        } else {
            rewritten.map_or_else(|| footer.clone(), Arc::new)
        };
        let size = if Arc::ptr_eq(&rewritten, &footer) {
            footer.memory_size()
        } else {
            footer.memory_size() + rewritten.memory_size()
        };
        let mut kept = self.lock();
        // Another scan may have rewritten the same footer meanwhile: keep (and count) one.
        if size <= self.limit && !kept.footers.contains_key(&key) {
            if kept.bytes + size > self.limit {
                *kept = Kept::default();
            }
            kept.bytes += size;
            kept.footers.insert(key, (footer, rewritten.clone()));
        }
        Ok(rewritten)
    }

    /// How many rewritten footers are kept.
    pub fn len(&self) -> usize {
        self.lock().footers.len()
    }

    /// How many of the kept footers were asked for with `page_index`.
    pub fn kept(&self, page_index: PageIndex) -> usize {
        self.lock()
            .footers
            .keys()
            .filter(|(_, index)| *index == page_index)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A Parquet reader factory whose readers give the columns of `footers` dictionary types in
/// each file's Arrow schema (see the module's documentation).
#[derive(Debug)]
pub struct DictionaryReaderFactory {
    inner: Arc<dyn ParquetFileReaderFactory>,
    footers: Arc<DictionaryFooters>,
}

impl DictionaryReaderFactory {
    /// Readers through `inner` whose footers are rewritten by `footers`, with what the file's
    /// [`ScanPageIndex`] extension asks of the page index ([`PageIndex::AsIs`] without one).
    pub fn new(inner: Arc<dyn ParquetFileReaderFactory>, footers: Arc<DictionaryFooters>) -> Self {
        Self { inner, footers }
    }
}

impl ParquetFileReaderFactory for DictionaryReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        let file = partitioned_file.object_meta.location.to_string();
        let page_index = partitioned_file
            .extensions
            .get::<ScanPageIndex>()
            .map_or(PageIndex::AsIs, ScanPageIndex::mode);
        let inner = self.inner.create_reader(
            partition_index,
            partitioned_file,
            metadata_size_hint,
            metrics,
        )?;
        Ok(Box::new(DictionaryReader {
            inner,
            footers: self.footers.clone(),
            page_index,
            file,
        }))
    }
}

struct DictionaryReader {
    inner: Box<dyn AsyncFileReader + Send>,
    footers: Arc<DictionaryFooters>,
    /// What the footers have of their page index.
    page_index: PageIndex,
    /// The file's path, for errors.
    file: String,
}

impl AsyncFileReader for DictionaryReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        self.inner.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let footers = self.footers.clone();
        let page_index = self.page_index;
        async move {
            let footer = self.inner.get_metadata(options).await?;
            let file = &self.file;
            let fetch = PageIndexFetch(self.inner.as_mut());
            footers
                .get(footer, page_index, fetch)
                .await
                .map_err(|e| ParquetError::General(format!("{file}: {e}")))
        }
        .boxed()
    }
}

/// A file's page index read through the scan's own reader of it.
struct PageIndexFetch<'a>(&'a mut (dyn AsyncFileReader + Send));

impl MetadataFetch for PageIndexFetch<'_> {
    fn fetch(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.0.get_bytes(range)
    }
}

/// DataFusion's expression adapter, then string comparisons moved onto dictionary columns (see
/// the module's documentation).
#[derive(Debug)]
pub struct DictionaryExprAdapterFactory;

impl PhysicalExprAdapterFactory for DictionaryExprAdapterFactory {
    fn create(
        &self,
        logical_file_schema: SchemaRef,
        physical_file_schema: SchemaRef,
    ) -> Result<Arc<dyn PhysicalExprAdapter>> {
        Ok(Arc::new(DictionaryExprAdapter {
            inner: DefaultPhysicalExprAdapterFactory
                .create(logical_file_schema, physical_file_schema.clone())?,
            physical: physical_file_schema,
        }))
    }
}

#[derive(Debug)]
struct DictionaryExprAdapter {
    inner: Arc<dyn PhysicalExprAdapter>,
    physical: SchemaRef,
}

impl PhysicalExprAdapter for DictionaryExprAdapter {
    fn rewrite(&self, expr: Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
        self.inner
            .rewrite(expr)?
            .transform_up(|e| {
                let on_dictionary = match compare_on_dictionary(&e, &self.physical) {
                    Some(d) => Some(d),
                    None => in_list_on_dictionary(&e, &self.physical)?,
                };
                Ok(on_dictionary.map_or(Transformed::no(e), Transformed::yes))
            })
            .data()
    }
}

/// `CAST(col AS <string>) [NOT] IN ('a', 'b', …)`, where `col` is a dictionary of `Utf8` in
/// `schema` and every item a non-null string literal, as `col [NOT] IN (<the items as dictionary
/// scalars>)`: DataFusion's list filter then looks up each dictionary value once. `None` for
/// anything else.
fn in_list_on_dictionary(
    expr: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Result<Option<Arc<dyn PhysicalExpr>>> {
    let Some(list) = expr.downcast_ref::<InListExpr>() else {
        return Ok(None);
    };
    let Some(col) = dictionary_column(list.expr(), schema) else {
        return Ok(None);
    };
    let Some(items) = list
        .list()
        .iter()
        .map(string_literal)
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    Ok(Some(Arc::new(InListExpr::try_new(
        col,
        items,
        list.negated(),
        schema,
    )?)))
}

/// `CAST(col AS <string>) <op> 'literal'` (either side), where `col` is a dictionary of `Utf8`
/// in `schema` and `op` a comparison, as `col <op> <the literal as a dictionary scalar>`.
/// `None` for anything else.
fn compare_on_dictionary(
    expr: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Option<Arc<dyn PhysicalExpr>> {
    let b = expr.downcast_ref::<BinaryExpr>()?;
    let op = *b.op();
    let comparison = matches!(
        op,
        Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::IsDistinctFrom
            | Operator::IsNotDistinctFrom
    );
    if !comparison {
        return None;
    }
    let (col, value, col_left) = match (
        dictionary_column(b.left(), schema),
        string_literal(b.right()),
    ) {
        (Some(col), Some(value)) => (col, value, true),
        _ => (
            dictionary_column(b.right(), schema)?,
            string_literal(b.left())?,
            false,
        ),
    };
    // `=` and `<>` are symmetric: the column on the left, as the keys' comparison reads it.
    if matches!(op, Operator::Eq | Operator::NotEq) {
        if let Some(keys) = KeyCompare::new(BinaryExpr::new(col.clone(), op, value.clone())) {
            return Some(Arc::new(keys));
        }
    }
    Some(Arc::new(match col_left {
        true => BinaryExpr::new(col, op, value),
        false => BinaryExpr::new(value, op, col),
    }))
}

/// `col = 'literal'` or `col <> 'literal'` on a dictionary column ([`compare_on_dictionary`]),
/// compared on the dictionary's keys: the literal is looked up among the batch's few values
/// once, and where it is one of them, the keys are compared with its key, an integer comparison
/// arrow vectorises. arrow's own comparison of a dictionary instead gathers one bit per row from
/// the values' result (`take_bits`), about 6 % of `egress_by_country` (docs/benchmarks.md, "Ad
/// hoc SQL"). Anything else (a value repeated in the dictionary, null values, a scalar column)
/// is left to that comparison. Pruning sees the comparison itself: DataFusion's pruning takes a
/// [`PhysicalExpr::snapshot`] of a predicate before reading it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct KeyCompare {
    cmp: Arc<BinaryExpr>,
    /// The string `cmp` compares with.
    literal: String,
}

impl KeyCompare {
    /// `cmp` compared on the keys, when it compares something with a string literal made a
    /// dictionary scalar (its right side).
    fn new(cmp: BinaryExpr) -> Option<Self> {
        let literal = match cmp.right().downcast_ref::<Literal>()?.value() {
            ScalarValue::Dictionary(_, v) => match v.as_ref() {
                ScalarValue::Utf8(Some(s)) => s.clone(),
                _ => return None,
            },
            _ => return None,
        };
        Some(Self {
            cmp: Arc::new(cmp),
            literal,
        })
    }

    /// The comparison on the keys, when the batch's column allows it.
    fn on_keys(&self, batch: &RecordBatch) -> Result<Option<ColumnarValue>> {
        let ColumnarValue::Array(column) = self.cmp.left().evaluate(batch)? else {
            return Ok(None);
        };
        let Some(dict) = column.as_dictionary_opt::<Int32Type>() else {
            return Ok(None);
        };
        let Some(values) = dict.values().as_string_opt::<i32>() else {
            return Ok(None);
        };
        if values.null_count() > 0 {
            return Ok(None);
        }
        let literal = Some(self.literal.as_str());
        let mut at = values.iter().enumerate().filter(|(_, v)| *v == literal);
        let key = match (at.next(), at.next()) {
            (None, _) => None,
            (Some((k, _)), None) => Some(k as i32),
            (Some(_), Some(_)) => return Ok(None),
        };
        let eq = *self.cmp.op() == Operator::Eq;
        let keys = dict.keys();
        let result = match key {
            Some(k) => {
                let k = Int32Array::new_scalar(k);
                if eq {
                    arrow::compute::kernels::cmp::eq(keys, &k)?
                } else {
                    arrow::compute::kernels::cmp::neq(keys, &k)?
                }
            }
            // A value not in the dictionary: no row is equal, every non-null row differs.
            None => BooleanArray::new(
                if eq {
                    BooleanBuffer::new_unset(keys.len())
                } else {
                    BooleanBuffer::new_set(keys.len())
                },
                keys.nulls().cloned(),
            ),
        };
        Ok(Some(ColumnarValue::Array(Arc::new(result))))
    }
}

impl std::fmt::Display for KeyCompare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.cmp.fmt(f)
    }
}

impl PhysicalExpr for KeyCompare {
    fn data_type(&self, input_schema: &Schema) -> Result<DataType> {
        self.cmp.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.cmp.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        match self.on_keys(batch)? {
            Some(v) => Ok(v),
            None => self.cmp.evaluate(batch),
        }
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        self.cmp.children()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let inner = Arc::clone(&self.cmp).with_new_children(children)?;
        let keys = inner.downcast_ref::<BinaryExpr>().and_then(|b| {
            KeyCompare::new(BinaryExpr::new(
                b.left().clone(),
                *b.op(),
                b.right().clone(),
            ))
        });
        Ok(match keys {
            Some(k) => Arc::new(k),
            None => inner,
        })
    }

    fn fmt_sql(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.cmp.fmt_sql(f)
    }

    fn snapshot(&self) -> Result<Option<Arc<dyn PhysicalExpr>>> {
        Ok(Some(self.cmp.clone()))
    }
}

/// The column under `CAST(col AS Utf8 | LargeUtf8 | Utf8View)` when `col` is a dictionary of
/// `Utf8` in `schema`.
fn dictionary_column(
    expr: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Option<Arc<dyn PhysicalExpr>> {
    let cast = expr.downcast_ref::<CastExpr>()?;
    if !matches!(
        cast.cast_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return None;
    }
    let col = cast.expr().downcast_ref::<Column>()?;
    let field = schema.fields().get(col.index())?;
    (field.name() == col.name() && field.data_type() == &dictionary_type())
        .then(|| cast.expr().clone())
}

/// A non-null string literal as a `Dictionary(Int32, Utf8)` scalar.
fn string_literal(expr: &Arc<dyn PhysicalExpr>) -> Option<Arc<dyn PhysicalExpr>> {
    let value = match expr.downcast_ref::<Literal>()?.value() {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => s.clone(),
        _ => return None,
    };
    Some(Arc::new(Literal::new(ScalarValue::Dictionary(
        Box::new(DataType::Int32),
        Box::new(ScalarValue::Utf8(Some(value))),
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, DictionaryArray, Int64Array, StringArray};
    use arrow::datatypes::Int32Type;
    use arrow::record_batch::RecordBatch;
    use datafusion::physical_expr::expressions::{col, in_list, like, lit};
    use datafusion::physical_expr_common::physical_expr::snapshot_physical_expr;
    use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
    use parquet::arrow::ArrowWriter;

    fn file_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("dst_zone", DataType::Utf8, true),
            Field::new("dst_ip", DataType::Utf8, false),
            Field::new("bytes", DataType::Int64, false),
        ]))
    }

    fn zones() -> Vec<Option<&'static str>> {
        vec![
            Some("external"),
            Some("enclave"),
            None,
            Some("external"),
            Some("partner"),
            Some("enclave"),
        ]
    }

    /// A Parquet file as the warehouse writes it: strings dictionary-encoded, Arrow schema in
    /// the footer.
    fn parquet_file() -> Bytes {
        let n = zones().len();
        let batch = RecordBatch::try_new(
            file_schema(),
            vec![
                Arc::new(StringArray::from(zones())),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("192.0.2.{i}")),
                )),
                Arc::new(Int64Array::from_iter_values(0..n as i64)),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, file_schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        Bytes::from(out)
    }

    /// A file's footer with `dst_zone` declared a dictionary reads that column as a dictionary
    /// of the page's values, with the same values; the other columns, and a footer naming no
    /// such column, are read as they are.
    #[test]
    fn a_footer_with_few_valued_columns_declared_dictionaries_reads_them_as_dictionaries() {
        let file = parquet_file();
        let metadata = ParquetMetaDataReader::new()
            .parse_and_finish(&file)
            .unwrap();
        let none: HashSet<&str> = ["dst_country", "bytes"].into_iter().collect();
        assert!(with_dictionary_columns(&metadata, &none).unwrap().is_none());

        let some: HashSet<&str> = ["dst_zone", "bytes"].into_iter().collect();
        let hinted = with_dictionary_columns(&metadata, &some).unwrap().unwrap();
        assert_eq!(hinted.row_groups().len(), metadata.row_groups().len());
        let hinted =
            ArrowReaderMetadata::try_new(Arc::new(hinted), ArrowReaderOptions::new()).unwrap();
        let types: Vec<&DataType> = hinted
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type())
            .collect();
        assert_eq!(
            types,
            [&dictionary_type(), &DataType::Utf8, &DataType::Int64]
        );
        let batches: Vec<RecordBatch> =
            ParquetRecordBatchReaderBuilder::new_with_metadata(file.clone(), hinted)
                .build()
                .unwrap()
                .map(|b| b.unwrap())
                .collect();
        let zone = batches[0].column(0);
        let dict = zone
            .as_any()
            .downcast_ref::<DictionaryArray<Int32Type>>()
            .unwrap();
        assert_eq!(dict.values().len(), 3, "the page dictionary: {dict:?}");
        let back = arrow::compute::cast(zone, &DataType::Utf8).unwrap();
        assert_eq!(
            back.as_any().downcast_ref::<StringArray>().unwrap(),
            &StringArray::from(zones())
        );

        // A footer is rewritten once while the footer it was made from is the one handed out;
        // a footer with no such column is handed out as it is.
        let footers = DictionaryFooters::new(&["dst_zone"]);
        let metadata = Arc::new(
            ParquetMetaDataReader::new()
                .with_page_index_policy(PageIndexPolicy::Required)
                .parse_and_finish(&file)
                .unwrap(),
        );
        let first = get(&footers, metadata.clone(), PageIndex::Load, &file);
        assert!(!Arc::ptr_eq(&first, &metadata));
        assert!(Arc::ptr_eq(
            &get(&footers, metadata.clone(), PageIndex::Load, &file),
            &first
        ));
        assert_eq!(footers.len(), 1);
        let again = Arc::new(metadata.as_ref().clone());
        assert!(!Arc::ptr_eq(
            &get(&footers, again, PageIndex::Load, &file),
            &first
        ));
        assert_eq!(footers.len(), 2);
        let plain = DictionaryFooters::new(&["dst_country"]);
        assert!(Arc::ptr_eq(
            &get(&plain, metadata.clone(), PageIndex::Load, &file),
            &metadata
        ));

        // Past the bound, what is held is dropped before the next footer is kept, and a footer
        // larger than the bound is not kept at all.
        let one = metadata.memory_size() + first.memory_size();
        let bounded = DictionaryFooters {
            limit: one + one / 2,
            ..DictionaryFooters::new(&["dst_zone"])
        };
        get(&bounded, metadata.clone(), PageIndex::Load, &file);
        assert_eq!(bounded.len(), 1);
        get(
            &bounded,
            Arc::new(metadata.as_ref().clone()),
            PageIndex::Load,
            &file,
        );
        assert_eq!(bounded.len(), 1);
        assert!(bounded.lock().bytes <= bounded.limit);
        let tiny = DictionaryFooters {
            limit: one / 2,
            ..DictionaryFooters::new(&["dst_zone"])
        };
        get(&tiny, metadata.clone(), PageIndex::Load, &file);
        assert!(tiny.is_empty());
    }

    /// A scan that will not prune pages gets the rewritten footer without the page index, kept
    /// apart from the one with it; both read the same rows. A footer read without a page index
    /// is handed out as it is to a scan that does not want one, and gets it, read once from the
    /// file, for a scan that does.
    #[test]
    fn footers_without_their_page_index_are_kept_apart_and_read_the_same_rows() {
        let file = parquet_file();
        let indexed = Arc::new(
            ParquetMetaDataReader::new()
                .with_page_index_policy(PageIndexPolicy::Required)
                .parse_and_finish(&file)
                .unwrap(),
        );
        assert!(indexed.column_index().is_some() && indexed.offset_index().is_some());
        let footers = DictionaryFooters::new(&["dst_zone"]);
        let with = get(&footers, indexed.clone(), PageIndex::Load, &file);
        let without = get(&footers, indexed.clone(), PageIndex::Strip, &file);
        assert!(with.column_index().is_some() && with.offset_index().is_some());
        assert!(without.column_index().is_none() && without.offset_index().is_none());
        assert_eq!(footers.len(), 2);
        assert!(Arc::ptr_eq(
            &get(&footers, indexed.clone(), PageIndex::Strip, &file),
            &without
        ));
        let read = |m: &Arc<ParquetMetaData>| -> Vec<RecordBatch> {
            let m = ArrowReaderMetadata::try_new(m.clone(), ArrowReaderOptions::new()).unwrap();
            assert_eq!(m.schema().field(0).data_type(), &dictionary_type());
            ParquetRecordBatchReaderBuilder::new_with_metadata(file.clone(), m)
                .build()
                .unwrap()
                .map(|b| b.unwrap())
                .collect()
        };
        assert_eq!(read(&with), read(&without));

        // No column to declare a dictionary: only the index is taken off.
        let plain = DictionaryFooters::new(&["dst_country"]);
        let bare = get(&plain, indexed.clone(), PageIndex::Strip, &file);
        assert!(bare.offset_index().is_none() && bare.column_index().is_none());
        assert_eq!(bare.row_groups().len(), indexed.row_groups().len());
        // A footer that has no page index has nothing to take off.
        let unindexed = Arc::new(
            ParquetMetaDataReader::new()
                .with_page_index_policy(PageIndexPolicy::Skip)
                .parse_and_finish(&file)
                .unwrap(),
        );
        assert!(Arc::ptr_eq(
            &get(&plain, unindexed.clone(), PageIndex::Strip, &file),
            &unindexed
        ));
        // As it is: neither read nor taken off.
        let as_is = get(&footers, unindexed.clone(), PageIndex::AsIs, &Bytes::new());
        assert!(as_is.offset_index().is_none() && as_is.column_index().is_none());
        assert!(get(&footers, indexed.clone(), PageIndex::AsIs, &file)
            .offset_index()
            .is_some());
        // Asked for with it, its page index is read from the file once, then kept.
        let loaded = get(&footers, unindexed.clone(), PageIndex::Load, &file);
        assert!(loaded.column_index().is_some() && loaded.offset_index().is_some());
        assert_eq!(read(&loaded), read(&with));
        assert!(Arc::ptr_eq(
            &get(&footers, unindexed.clone(), PageIndex::Load, &Bytes::new()),
            &loaded
        ));
    }

    /// A file written without column indexes has no page index to read: the footer is handed
    /// out without one, and the file is not read.
    #[test]
    fn a_file_without_a_page_index_is_not_read_for_one() {
        let mut out = Vec::new();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_statistics_enabled(parquet::file::properties::EnabledStatistics::Chunk)
            .build();
        let mut w = ArrowWriter::try_new(&mut out, file_schema(), Some(props)).unwrap();
        let file = parquet_file();
        let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.close().unwrap();
        let footer = Arc::new(
            ParquetMetaDataReader::new()
                .parse_and_finish(&Bytes::from(out))
                .unwrap(),
        );
        assert!(!writes_page_index(&footer));
        let footers = DictionaryFooters::new(&["dst_zone"]);
        let got = get(&footers, footer, PageIndex::Load, &Bytes::new());
        assert!(got.column_index().is_none());
    }

    /// `footers.get`, reading any page index from `file`.
    fn get(
        footers: &DictionaryFooters,
        footer: Arc<ParquetMetaData>,
        page_index: PageIndex,
        file: &Bytes,
    ) -> Arc<ParquetMetaData> {
        let mut file = std::io::Cursor::new(file.clone());
        futures::executor::block_on(footers.get(footer, page_index, &mut file)).unwrap()
    }

    /// Comparisons of a dictionary column with a string literal are evaluated on the
    /// dictionary (no cast left over the column) and select exactly the rows the comparison on
    /// the table's `Utf8View` selects, nulls included; other uses of the column keep the cast.
    #[test]
    fn string_comparisons_move_onto_the_dictionary_and_select_the_same_rows() {
        let logical = Arc::new(Schema::new(vec![
            Field::new("dst_zone", DataType::Utf8View, true),
            Field::new("dst_ip", DataType::Utf8View, false),
        ]));
        let physical = Arc::new(Schema::new(vec![
            Field::new("dst_zone", dictionary_type(), true),
            Field::new("dst_ip", DataType::Utf8, false),
        ]));
        // A batch as the file gives it, and the same batch in the table's types.
        let batches = |zone: DictionaryArray<Int32Type>| -> (RecordBatch, RecordBatch) {
            let ips = StringArray::from_iter_values((0..zone.len()).map(|_| "192.0.2.1"));
            let physical_batch = RecordBatch::try_new(
                physical.clone(),
                vec![Arc::new(zone) as ArrayRef, Arc::new(ips) as ArrayRef],
            )
            .unwrap();
            let logical_batch = RecordBatch::try_new(
                logical.clone(),
                physical_batch
                    .columns()
                    .iter()
                    .map(|c| arrow::compute::cast(c, &DataType::Utf8View).unwrap())
                    .collect(),
            )
            .unwrap();
            (physical_batch, logical_batch)
        };
        let (physical_batch, logical_batch) = batches(zones().into_iter().collect());
        let adapter = DictionaryExprAdapterFactory
            .create(logical.clone(), physical.clone())
            .unwrap();
        let zone_col = col("dst_zone", &logical).unwrap();
        let external = || lit(ScalarValue::Utf8View(Some("external".into())));
        let binary = |l: Arc<dyn PhysicalExpr>, op, r: Arc<dyn PhysicalExpr>| {
            Arc::new(BinaryExpr::new(l, op, r)) as Arc<dyn PhysicalExpr>
        };
        let on_dictionary = [
            binary(zone_col.clone(), Operator::Eq, external()),
            binary(external(), Operator::NotEq, zone_col.clone()),
            binary(zone_col.clone(), Operator::Lt, external()),
            binary(zone_col.clone(), Operator::GtEq, external()),
            binary(zone_col.clone(), Operator::IsDistinctFrom, external()),
            binary(zone_col.clone(), Operator::IsNotDistinctFrom, external()),
        ];
        let zones_list = || {
            vec![
                external(),
                lit(ScalarValue::Utf8View(Some("partner".into()))),
            ]
        };
        let lists = [
            in_list(zone_col.clone(), zones_list(), &false, &logical).unwrap(),
            in_list(zone_col.clone(), zones_list(), &true, &logical).unwrap(),
        ];
        let mask = |e: &Arc<dyn PhysicalExpr>, b: &RecordBatch| -> BooleanArray {
            let v = e.evaluate(b).unwrap().into_array(b.num_rows()).unwrap();
            v.as_any().downcast_ref::<BooleanArray>().unwrap().clone()
        };
        for e in on_dictionary {
            let rewritten = adapter.rewrite(e.clone()).unwrap();
            // `=` and `<>` compare keys; pruning reads the comparison under them.
            let keys = rewritten.downcast_ref::<KeyCompare>().is_some();
            assert_eq!(
                keys,
                matches!(
                    e.downcast_ref::<BinaryExpr>().unwrap().op(),
                    Operator::Eq | Operator::NotEq
                ),
                "{rewritten}"
            );
            let plain = snapshot_physical_expr(rewritten.clone()).unwrap();
            let b = plain.downcast_ref::<BinaryExpr>().unwrap();
            let sides = [b.left(), b.right()];
            assert!(
                sides.iter().any(|s| s.downcast_ref::<Column>().is_some())
                    && sides.iter().all(|s| s.downcast_ref::<CastExpr>().is_none()),
                "{rewritten}"
            );
            assert_eq!(
                mask(&rewritten, &physical_batch),
                mask(&e, &logical_batch),
                "{e}"
            );
        }
        for e in lists {
            let rewritten = adapter.rewrite(e.clone()).unwrap();
            let l = rewritten.downcast_ref::<InListExpr>().unwrap();
            assert!(l.expr().downcast_ref::<Column>().is_some(), "{rewritten}");
            assert_eq!(
                mask(&rewritten, &physical_batch),
                mask(&e, &logical_batch),
                "{e}"
            );
        }
        // On the keys: a value missing from the dictionary, a dictionary repeating the value
        // (left to arrow's comparison), and nulls among the keys, each as on the table's type.
        let missing = || lit(ScalarValue::Utf8View(Some("no-such-zone".into())));
        let repeated: DictionaryArray<Int32Type> = DictionaryArray::new(
            Int32Array::from(vec![Some(0), Some(1), None, Some(2), Some(1)]),
            Arc::new(StringArray::from(vec!["external", "enclave", "external"])),
        );
        let (repeated_batch, repeated_logical) = batches(repeated);
        for op in [Operator::Eq, Operator::NotEq] {
            for (value, repeated_in_dictionary) in [(external(), true), (missing(), false)] {
                let e = binary(zone_col.clone(), op, value);
                let rewritten = adapter.rewrite(e.clone()).unwrap();
                let keys = rewritten.downcast_ref::<KeyCompare>().unwrap();
                // Compared on the keys, but for a value the dictionary holds twice.
                assert!(keys.on_keys(&physical_batch).unwrap().is_some(), "{e}");
                assert_eq!(
                    keys.on_keys(&repeated_batch).unwrap().is_none(),
                    repeated_in_dictionary,
                    "{e}"
                );
                for (p, l) in [
                    (&physical_batch, &logical_batch),
                    (&repeated_batch, &repeated_logical),
                ] {
                    assert_eq!(mask(&rewritten, p), mask(&e, l), "{e}");
                }
            }
        }
        let e = binary(zone_col.clone(), Operator::NotEq, missing());
        let all = mask(&adapter.rewrite(e).unwrap(), &physical_batch);
        assert_eq!(
            (all.true_count(), all.null_count()),
            (zones().iter().filter(|z| z.is_some()).count(), 1)
        );

        // The column under a function keeps its cast, as does a list with a null in it; a
        // column that is not a dictionary in the file is DataFusion's adapter's business alone.
        let pattern = lit(ScalarValue::Utf8View(Some("ext%".into())));
        let others = [
            like(false, false, zone_col.clone(), pattern, &logical).unwrap(),
            in_list(
                zone_col.clone(),
                vec![external(), lit(ScalarValue::Utf8View(None))],
                &false,
                &logical,
            )
            .unwrap(),
            binary(
                col("dst_ip", &logical).unwrap(),
                Operator::Eq,
                lit(ScalarValue::Utf8View(Some("192.0.2.1".into()))),
            ),
        ];
        for e in others {
            let rewritten = adapter.rewrite(e.clone()).unwrap();
            assert!(format!("{rewritten}").contains("CAST("), "{rewritten}");
            assert_eq!(
                mask(&rewritten, &physical_batch),
                mask(&e, &logical_batch),
                "{e}"
            );
        }
    }
}
