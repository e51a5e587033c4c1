//! Stopping a query inside a join that finds nothing.
//!
//! A query is stopped at its deadline by dropping its task, which works only when the task gives
//! its thread back. Every operator is wrapped to yield now and then (`YieldEverywhere` in
//! [`crate::sql`]), but a join evaluates its filter in a loop of its own: a nested-loop join
//! joins each batch of one side with every row of the other in one poll, and when the filter
//! keeps nothing (`flows a, flows b, flows c WHERE …` with a filter no triple meets) that poll
//! never ends, holding a query thread past the time limit and every query queued behind it.
//!
//! So each join filter of an analyst's plan is wrapped in [`StopCheck`], which looks at the
//! query's [`QueryStop`] before every evaluation (once per row of the other side and batch, for
//! a nested-loop join: a relaxed atomic load and a clock read, against the filter's own work on
//! a whole batch) and fails the query with its time-limit error once the deadline has passed or
//! its results were dropped.
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arrow::datatypes::{FieldRef, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::physical_plan::joins::{
    HashJoinExec, NestedLoopJoinExec, NestedLoopJoinExecBuilder, SortMergeJoinExec,
};
use datafusion::physical_plan::ExecutionPlan;

/// When one query must stop: its deadline (set when it starts executing) or its results being
/// dropped. Shared by the query's result stream, which sets it, and its join filters, which
/// check it.
#[derive(Debug, Default)]
pub struct QueryStop {
    dropped: AtomicBool,
    deadline: OnceLock<(Instant, Duration)>,
}

impl QueryStop {
    /// The query starts executing now and may run for `timeout`.
    pub fn start(&self, timeout: Duration) {
        let _ = self.deadline.set((Instant::now() + timeout, timeout));
    }

    /// Nobody reads the query's results any more.
    pub fn drop_results(&self) {
        self.dropped.store(true, Ordering::Relaxed);
    }

    /// The error the query fails with if it must stop now.
    fn check(&self) -> Result<()> {
        if let Some((deadline, timeout)) = self.deadline.get() {
            if Instant::now() >= *deadline {
                return Err(crate::sql::timeout_error(*timeout));
            }
        }
        if self.dropped.load(Ordering::Relaxed) {
            return Err(DataFusionError::Execution(
                "query stopped: its results were dropped".into(),
            ));
        }
        Ok(())
    }
}

/// A join filter that checks its query's [`QueryStop`] before each evaluation. It shows in
/// `EXPLAIN` as the filter it wraps.
#[derive(Debug)]
pub struct StopCheck {
    inner: Arc<dyn PhysicalExpr>,
    stop: Arc<QueryStop>,
}

impl PartialEq for StopCheck {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.stop, &other.stop) && self.inner.as_ref() == other.inner.as_ref()
    }
}

impl Eq for StopCheck {}

impl Hash for StopCheck {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        (Arc::as_ptr(&self.stop) as usize).hash(state);
    }
}

impl fmt::Display for StopCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl PhysicalExpr for StopCheck {
    fn data_type(&self, input_schema: &Schema) -> Result<arrow::datatypes::DataType> {
        self.inner.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.inner.nullable(input_schema)
    }

    fn return_field(&self, input_schema: &Schema) -> Result<FieldRef> {
        self.inner.return_field(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        self.stop.check()?;
        self.inner.evaluate(batch)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.inner]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(format!(
                "StopCheck has one child, got {}",
                children.len()
            )));
        }
        Ok(Arc::new(StopCheck {
            inner: children.remove(0),
            stop: self.stop.clone(),
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt_sql(f)
    }
}

/// The physical optimizer rule that wraps the filter of every nested-loop, hash and sort-merge
/// join of one query's plan in a [`StopCheck`] on that query's [`QueryStop`].
#[derive(Debug)]
pub struct StopInJoins(pub Arc<QueryStop>);

impl StopInJoins {
    fn wrap(&self, f: &JoinFilter) -> Option<JoinFilter> {
        if f.expression().downcast_ref::<StopCheck>().is_some() {
            return None;
        }
        Some(JoinFilter::new(
            Arc::new(StopCheck {
                inner: f.expression().clone(),
                stop: self.0.clone(),
            }),
            f.column_indices().to_vec(),
            f.schema().clone(),
        ))
    }
}

impl PhysicalOptimizerRule for StopInJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|p| {
            let wrapped: Option<Arc<dyn ExecutionPlan>> =
                if let Some(j) = p.downcast_ref::<NestedLoopJoinExec>() {
                    match j.filter().and_then(|f| self.wrap(f)) {
                        Some(f) => Some(Arc::new(
                            NestedLoopJoinExecBuilder::from(j)
                                .with_filter(Some(f))
                                .build()?,
                        )),
                        None => None,
                    }
                } else if let Some(j) = p.downcast_ref::<HashJoinExec>() {
                    match j.filter().and_then(|f| self.wrap(f)) {
                        Some(f) => Some(Arc::new(j.builder().with_filter(Some(f)).build()?)),
                        None => None,
                    }
                } else if let Some(j) = p.downcast_ref::<SortMergeJoinExec>() {
                    match j.filter().as_ref().and_then(|f| self.wrap(f)) {
                        Some(f) => Some(Arc::new(SortMergeJoinExec::try_new(
                            j.left().clone(),
                            j.right().clone(),
                            j.on().to_vec(),
                            Some(f),
                            j.join_type(),
                            j.sort_options().to_vec(),
                            j.null_equality(),
                        )?)),
                        None => None,
                    }
                } else {
                    None
                };
            Ok(match wrapped {
                Some(w) => Transformed::yes(w),
                None => Transformed::no(p),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "flowaudit_stop_in_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
