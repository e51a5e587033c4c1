//! A sort for a partition whose leading key has few distinct values: the rules' windows sort a
//! day of flows by exporter (or source) and time, or by exporter and sequence number.
//!
//! DataFusion's `SortExec` sorts each batch with comparisons of the key columns and then merges
//! the sorted batches with a loser tree over the keys in arrow's row format: 39 % of
//! `telemetry_silent`'s profile over the bench week, in memory comparisons of the row-encoded
//! keys and in the merge. This operator instead collects the partition (the window above it
//! holds the whole partition anyway), puts each row in the bucket of its leading key's value (a
//! counting sort, keeping the input order) and sorts each bucket by the other keys with a stable
//! sort that takes runs already in order in one pass: a source's records mostly arrive in time
//! and sequence order.
//!
//! The rows are DataFusion's in DataFusion's order: the same sort options (descending, nulls
//! first or last) and the same key values; among rows with equal keys the order is the input's
//! (DataFusion's sort is not stable, so any order of those is one it may give). A partition
//! whose leading key has more than [`MAX_BUCKETS`] values, or whose other keys are not integers
//! or times, is sorted as `SortExec` sorts a batch (`sort_batch`).
//!
//! Like [`crate::optimizer::WholePartitionWindows`], it holds its partition outside the memory
//! pool, so only the sessions without a per-query memory limit use it (the rule runner, the
//! report, the summaries); the analysts' sessions keep DataFusion's sort.
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::HashMap;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::Boundedness;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::sorts::sort::{sort_batch, SortExec};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::TryStreamExt;

use crate::functions::{is_string, string_values};

/// Most distinct values of the leading key a partition is bucketed by.
pub const MAX_BUCKETS: usize = 4096;

/// Replaces each `SortExec` that sorts every partition of a bounded input on its own (or a
/// single partition), without a limit, with a leading key of a string type and other keys of
/// integer or time types, by a [`BucketSortExec`].
#[derive(Debug, Default)]
pub struct BucketSorts;

impl PhysicalOptimizerRule for BucketSorts {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(sort) = node.as_ref().downcast_ref::<SortExec>() else {
                return Ok(Transformed::no(node));
            };
            let input = sort.input();
            let per_partition =
                sort.preserve_partitioning() || input.output_partitioning().partition_count() == 1;
            let bounded = matches!(input.boundedness(), Boundedness::Bounded);
            if sort.fetch().is_some() || !per_partition || !bounded || !keys_fit(sort)? {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(
                Arc::new(BucketSortExec::new(sort.clone())) as Arc<dyn ExecutionPlan>,
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "flowaudit_bucket_sorts"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Integer and time types, whose values order as their `i64` casts.
fn is_integer_like(t: &DataType) -> bool {
    use DataType::*;
    matches!(
        t,
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | Timestamp(..) | Date32 | Date64
    )
}

fn keys_fit(sort: &SortExec) -> Result<bool> {
    let schema = sort.input().schema();
    let mut types = sort
        .expr()
        .iter()
        .map(|e| e.expr.data_type(&schema))
        .collect::<Result<Vec<_>>>()?
        .into_iter();
    let lead = types.next().is_some_and(|t| is_string(&t));
    Ok(lead && types.len() > 0 && types.all(|t| is_integer_like(&t)))
}

/// `SortExec`'s sort of each partition, by buckets of the leading key ([module docs](self)).
#[derive(Debug)]
pub struct BucketSortExec {
    sort: SortExec,
    metrics: ExecutionPlanMetricsSet,
}

impl BucketSortExec {
    pub fn new(sort: SortExec) -> Self {
        Self {
            sort,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for BucketSortExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "BucketSortExec: ")?;
        self.sort.fmt_as(t, f)
    }
}

impl ExecutionPlan for BucketSortExec {
    fn name(&self) -> &'static str {
        "BucketSortExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.sort.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.sort.input()]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
        ) -> Result<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> Result<datafusion::common::tree_node::TreeNodeRecursion> {
        datafusion::physical_plan::apply_expression_roots(
            self.sort.expr().iter().map(|e| &e.expr),
            f,
        )
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children).map_err(|c| {
            DataFusionError::Internal(format!("BucketSortExec has one child, not {}", c.len()))
        })?;
        let sort = SortExec::new(self.sort.expr().clone(), input)
            .with_preserve_partitioning(self.sort.preserve_partitioning());
        Ok(Arc::new(Self::new(sort)))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.sort.input().execute(partition, context.clone())?;
        let schema = self.schema();
        let expr = self.sort.expr().clone();
        let batch_size = context.session_config().batch_size().max(1);
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let out_schema = schema.clone();
        let sorted = async move {
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            let timer = metrics.elapsed_compute().timer();
            let out = sort_partition(&schema, &batches, &expr, batch_size)?;
            timer.done();
            metrics.record_output(out.iter().map(RecordBatch::num_rows).sum());
            metrics.done();
            Ok::<_, DataFusionError>(futures::stream::iter(out.into_iter().map(Ok)))
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            out_schema,
            futures::stream::once(sorted).try_flatten(),
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// `batches` sorted by `expr`, in batches of `batch_size` rows.
fn sort_partition(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    expr: &datafusion::physical_expr::LexOrdering,
    batch_size: usize,
) -> Result<Vec<RecordBatch>> {
    let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    let Some(order) = bucket_order(&batches, expr)? else {
        let all = arrow::compute::concat_batches(schema, batches.iter().copied())?;
        let sorted = sort_batch(&all, expr, None)?;
        return Ok((0..sorted.num_rows())
            .step_by(batch_size)
            .map(|at| sorted.slice(at, batch_size.min(sorted.num_rows() - at)))
            .collect());
    };
    let mut at = Vec::with_capacity(order.len());
    let mut first = 0usize;
    let starts: Vec<usize> = batches
        .iter()
        .map(|b| {
            let s = first;
            first += b.num_rows();
            s
        })
        .collect();
    for &row in &order {
        let row = row as usize;
        let b = starts.partition_point(|&s| s <= row) - 1;
        at.push((b, row - starts[b]));
    }
    at.chunks(batch_size)
        .map(|chunk| {
            arrow::compute::interleave_record_batch(&batches, chunk).map_err(DataFusionError::from)
        })
        .collect()
}

/// The rows of `batches` (numbered across them) in `expr`'s order, or `None` where the leading
/// key has more than [`MAX_BUCKETS`] values or a key is not of a type this sort takes.
fn bucket_order(
    batches: &[&RecordBatch],
    expr: &datafusion::physical_expr::LexOrdering,
) -> Result<Option<Vec<u32>>> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if u32::try_from(rows).is_err() {
        return Ok(None);
    }
    let mut keys = expr.iter();
    let lead = keys.next().ok_or_else(|| {
        DataFusionError::Internal("BucketSortExec: a sort without keys".to_string())
    })?;
    let lead_arrays = batches
        .iter()
        .map(|b| lead.expr.evaluate(b)?.into_array(b.num_rows()))
        .collect::<Result<Vec<ArrayRef>>>()?;
    // The leading key's distinct values, numbered as they first appear (NULL is `None`).
    let mut ids: HashMap<Option<&[u8]>, u32> = HashMap::new();
    let mut row_ids: Vec<u32> = Vec::with_capacity(rows);
    for a in &lead_arrays {
        let mut last: Option<(Option<&[u8]>, u32)> = None;
        let Some(values) = string_values(a.as_ref()) else {
            return Ok(None);
        };
        for v in values.map(|v| v.map(str::as_bytes)) {
            let id = match last {
                Some((l, id)) if l == v => id,
                _ => {
                    let next = ids.len() as u32;
                    let id = *ids.entry(v).or_insert(next);
                    if ids.len() > MAX_BUCKETS {
                        return Ok(None);
                    }
                    last = Some((v, id));
                    id
                }
            };
            row_ids.push(id);
        }
    }
    // Buckets in the key's order: bytes compare as arrow compares strings.
    let mut distinct: Vec<(Option<&[u8]>, u32)> = ids.into_iter().collect();
    let opts = lead.options;
    distinct.sort_unstable_by(|(a, _), (b, _)| match (a, b) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) if opts.nulls_first => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (Some(_), None) if opts.nulls_first => std::cmp::Ordering::Greater,
        (Some(_), None) => std::cmp::Ordering::Less,
        (Some(a), Some(b)) if opts.descending => b.cmp(a),
        (Some(a), Some(b)) => a.cmp(b),
    });
    let mut bucket_of = vec![0u32; distinct.len()];
    for (bucket, (_, id)) in distinct.iter().enumerate() {
        bucket_of[*id as usize] = bucket as u32;
    }
    // The other keys as u128s that order as the values do, nulls and direction included.
    let mut rest: Vec<Vec<u128>> = Vec::new();
    for key in keys {
        let mut col = Vec::with_capacity(rows);
        for b in batches {
            let a = key.expr.evaluate(b)?.into_array(b.num_rows())?;
            if !is_integer_like(a.data_type()) {
                return Ok(None);
            }
            let Ok(ints) = arrow::compute::cast(&a, &DataType::Int64) else {
                return Ok(None);
            };
            let ints = ints.as_primitive::<arrow::datatypes::Int64Type>();
            let (null_rank, value_rank) = if key.options.nulls_first {
                (0u128, 1u128 << 64)
            } else {
                (1u128 << 64, 0u128)
            };
            for i in 0..ints.len() {
                col.push(if ints.is_null(i) {
                    null_rank
                } else {
                    let u = (ints.value(i) as u64) ^ (1 << 63);
                    value_rank | u128::from(if key.options.descending { !u } else { u })
                });
            }
        }
        rest.push(col);
    }
    // A counting sort into the buckets, in input order, then each bucket by the other keys.
    let mut starts = vec![0usize; distinct.len() + 1];
    for id in &row_ids {
        starts[bucket_of[*id as usize] as usize + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut fill = starts.clone();
    let mut order = vec![0u32; rows];
    for (row, id) in row_ids.iter().enumerate() {
        let b = bucket_of[*id as usize] as usize;
        order[fill[b]] = row as u32;
        fill[b] += 1;
    }
    for w in starts.windows(2) {
        let bucket = &mut order[w[0]..w[1]];
        if let [only] = rest.as_slice() {
            bucket.sort_by_key(|&r| only[r as usize]);
        } else {
            bucket.sort_by(|&a, &b| {
                rest.iter()
                    .map(|k| k[a as usize].cmp(&k[b as usize]))
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
        }
    }
    Ok(Some(order))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizer::session;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// `sql`'s physical plan and rows in `ctx`.
    async fn run(ctx: SessionContext, sql: &str) -> (String, String) {
        let df = ctx.sql(sql).await.unwrap();
        let plan = df.clone().create_physical_plan().await.unwrap();
        let text = displayable(plan.as_ref()).indent(false).to_string();
        let rows = arrow::util::pretty::pretty_format_batches(&df.collect().await.unwrap())
            .unwrap()
            .to_string();
        (text, rows)
    }

    /// `ours` is `plain`, line by line (the first difference, not the whole table, on failure).
    fn same(ours: &str, plain: &str, what: &str) {
        for (i, (a, b)) in ours.lines().zip(plain.lines()).enumerate() {
            assert_eq!(a, b, "{what}: line {i}");
        }
        assert_eq!(ours.lines().count(), plain.lines().count(), "{what}");
    }

    /// Rows of strings (NULLs, ties, an empty string, a prefix of another) and times or
    /// integers (NULLs, ties, negative values, out of order), in batches of `batch` rows.
    fn data(distinct: u64) -> String {
        format!(
            "(SELECT CASE WHEN v % 11 = 0 THEN NULL WHEN v % 13 = 0 THEN '' \
                          ELSE 'k' || CAST((v * 7) % {distinct} AS VARCHAR) END AS s, \
                     CASE WHEN v % 17 = 0 THEN NULL ELSE (v * 7919) % 1000 - 500 END AS n, \
                     CASE WHEN v % 19 = 0 THEN NULL \
                          ELSE arrow_cast((v * 104729) % 5000 * 1000000, 'Timestamp(Microsecond, Some(\"UTC\"))') END AS t \
              FROM generate_series(1, 30000) AS g(v))"
        )
    }

    /// The sort gives DataFusion's order for each direction and null placement of both keys, a
    /// window above it gives DataFusion's values, and a leading key with more values than
    /// [`MAX_BUCKETS`] takes the other path to the same rows.
    #[tokio::test]
    async fn bucket_sorts_give_datafusions_order() {
        let config = |partitions| {
            SessionConfig::new()
                .with_batch_size(1000)
                .with_target_partitions(partitions)
        };
        for distinct in [5, 2 * MAX_BUCKETS as u64] {
            let x = data(distinct);
            for (columns, order) in [
                ("s, t", "s, t"),
                ("s, t", "s DESC, t"),
                ("s, t", "s NULLS FIRST, t DESC NULLS LAST"),
                ("s, n, t", "s DESC NULLS LAST, n DESC NULLS FIRST, t"),
                ("s, n", "s, n NULLS FIRST"),
            ] {
                // One partition: the query's ORDER BY is the sort. Only the keys are selected:
                // rows with equal keys may come in any order.
                let sql = format!("SELECT {columns} FROM {x} ORDER BY {order}");
                let (plain_plan, plain) =
                    run(SessionContext::new_with_config(config(1)), &sql).await;
                let (ours_plan, ours) = run(session(config(1)), &sql).await;
                assert!(!plain_plan.contains("BucketSortExec"), "{plain_plan}");
                assert!(ours_plan.contains("BucketSortExec"), "{order}\n{ours_plan}");
                same(&ours, &plain, &format!("{order} ({distinct} values)"));
            }
            // Partitions of a window, sorted each on its own. Only the keys and the window's
            // values are selected: those rows are the same whatever the order among ties.
            for (key, order) in [("t", "t"), ("n", "n DESC")] {
                let sql = format!(
                    "SELECT s, {key}, lag({key}) OVER (PARTITION BY s ORDER BY {order}) AS prev \
                     FROM {x} ORDER BY s, {key}, prev"
                );
                let (_, plain) = run(SessionContext::new_with_config(config(3)), &sql).await;
                let (ours_plan, ours) = run(session(config(3)), &sql).await;
                assert!(ours_plan.contains("BucketSortExec"), "{ours_plan}");
                same(
                    &ours,
                    &plain,
                    &format!("window over {order} ({distinct} values)"),
                );
            }
        }
        // A leading key that is not a string, or a limit: DataFusion's sort.
        for sql in [
            "SELECT n, s FROM (VALUES (1, 'a'), (2, 'b')) AS x(n, s) ORDER BY n, s",
            "SELECT s, n FROM (VALUES (1, 'a'), (2, 'b')) AS x(n, s) ORDER BY s, n LIMIT 1",
            "SELECT s, n FROM (VALUES (1.5, 'a'), (2.5, 'b')) AS x(n, s) ORDER BY s, n",
        ] {
            let (plan, _) = run(session(config(1)), sql).await;
            assert!(!plan.contains("BucketSortExec"), "{sql}\n{plan}");
        }
    }
}
