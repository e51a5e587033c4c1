//! Physical plan choices flowaudit's queries are faster with, as DataFusion optimizer rules.
//!
//! - **A window over a sorted input is evaluated a partition at a time** (`WindowAggExec`), not
//!   row by row (`BoundedWindowAggExec`). DataFusion picks the bounded operator whenever every
//!   window function can stream, so that a window over an unbounded input needs little memory.
//!   Over the warehouse every input is bounded and the sort below the window holds its whole
//!   input already. The bounded operator then costs a `ScalarValue` per row for `lag` and a row
//!   comparison per row to find the partitions' ends: 12 % and 7 % of `telemetry_silent`'s
//!   profile. The other evaluates `lag` as one shift of each partition's array and finds the
//!   partitions with one vectorised comparison. `WindowAggExec` holds its input outside the
//!   memory pool, so the analysts' sessions, which have a memory limit per query
//!   ([`crate::sql`]), keep DataFusion's choice; the rule runner and the report have none.
//! - **A sort pushed below a filtering join is moved back above it** ([`SortsAboveFilteringJoins`]):
//!   the roster rules' final order was applied to every event of the day before the join kept
//!   one of them.
//! - **A sort on a few sources and then times is a bucket sort** ([`crate::keysort`]).
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::JoinType;
use datafusion::error::Result;
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::Boundedness;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, InputOrderMode};
use datafusion::prelude::{SessionConfig, SessionContext};

/// Replaces each `BoundedWindowAggExec` over a bounded input sorted on its partition and order
/// keys by a `WindowAggExec` of the same window expressions.
#[derive(Debug, Default)]
pub struct WholePartitionWindows;

impl PhysicalOptimizerRule for WholePartitionWindows {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(w) = node.as_ref().downcast_ref::<BoundedWindowAggExec>() else {
                return Ok(Transformed::no(node));
            };
            let bounded = matches!(w.input().boundedness(), Boundedness::Bounded);
            if !bounded || w.input_order_mode != InputOrderMode::Sorted {
                return Ok(Transformed::no(node));
            }
            let can_repartition = !w.partition_keys().is_empty();
            let whole = WindowAggExec::try_new(
                w.window_expr().to_vec(),
                w.input().clone(),
                can_repartition,
            )?;
            Ok(Transformed::yes(Arc::new(whole) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "flowaudit_whole_partition_windows"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Moves a sort that DataFusion pushed below a filtering join back above it. `EnforceSorting`
/// pushes a sort through a `CollectLeft` inner hash join to its probe side, as the join keeps the
/// probe side's order; with a join filter that keeps few rows (the roster rules keep one event
/// of a day's 143k) the sort then orders every probed row instead of the few joined ones: 12 ms
/// of a 66 ms rule per day. Only a sort on plain columns of the probe side that the join
/// passes through is moved; the join's output is then sorted on the same columns.
#[derive(Debug, Default)]
pub struct SortsAboveFilteringJoins;

impl SortsAboveFilteringJoins {
    fn lift(join: &HashJoinExec) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(sort) = join.right().as_ref().downcast_ref::<SortExec>() else {
            return Ok(None);
        };
        let per_partition = sort.preserve_partitioning()
            || sort.input().output_partitioning().partition_count() == 1;
        if join.filter().is_none()
            || join.join_type() != &JoinType::Inner
            || join.partition_mode() != &PartitionMode::CollectLeft
            || sort.fetch().is_some()
            || !per_partition
        {
            return Ok(None);
        }
        let left_len = join.left().schema().fields().len();
        let out = join.schema();
        let mut keys = Vec::new();
        for e in sort.expr().iter() {
            let Some(c) = e.expr.downcast_ref::<Column>() else {
                return Ok(None);
            };
            let at = left_len + c.index();
            let k = match join.projection.as_deref() {
                Some(p) => match p.iter().position(|i| *i == at) {
                    Some(k) => k,
                    None => return Ok(None),
                },
                None => at,
            };
            keys.push(PhysicalSortExpr::new(
                Arc::new(Column::new(out.field(k).name(), k)),
                e.options,
            ));
        }
        let Some(order) = LexOrdering::new(keys) else {
            return Ok(None);
        };
        let join = join
            .builder()
            .recompute_properties()
            .with_new_children(vec![join.left().clone(), sort.input().clone()])?
            .build_exec()?;
        Ok(Some(Arc::new(
            SortExec::new(order, join).with_preserve_partitioning(sort.preserve_partitioning()),
        )))
    }
}

impl PhysicalOptimizerRule for SortsAboveFilteringJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(join) = node.as_ref().downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            Ok(match Self::lift(join)? {
                Some(lifted) => Transformed::yes(lifted),
                None => Transformed::no(node),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "flowaudit_sorts_above_filtering_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether `rule` is one of flowaudit's rules whose operators hold their input outside the
/// memory pool (the whole-partition windows, the bucket sorts): the analysts' sessions, which
/// have a memory limit per query, leave these out. [`SortsAboveFilteringJoins`] only moves
/// DataFusion's own sort, which counts against the pool, so those sessions keep it.
pub fn holds_memory_outside_the_pool(rule: &dyn PhysicalOptimizerRule) -> bool {
    rule.name() == WholePartitionWindows.name() || rule.name() == crate::keysort::BucketSorts.name()
}

/// A session with `config`, DataFusion's default rules and flowaudit's (this module's, last).
pub fn session(config: SessionConfig) -> SessionContext {
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .build();
    let state = SessionStateBuilder::new_from_existing(state)
        .with_physical_optimizer_rule(Arc::new(WholePartitionWindows))
        .with_physical_optimizer_rule(Arc::new(SortsAboveFilteringJoins))
        .with_physical_optimizer_rule(Arc::new(crate::keysort::BucketSorts))
        .build();
    SessionContext::new_with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::physical_plan::displayable;

    /// The rule changes the operator and not the rows: `lag` over partitions of several
    /// batches, with nulls, ties and a partition of one row.
    #[tokio::test]
    async fn a_window_over_a_sorted_input_runs_a_partition_at_a_time_with_the_same_rows() {
        let sql = "SELECT s, t, lag(t) OVER (PARTITION BY s ORDER BY t) AS prev, \
                          lag(t, 2) OVER (PARTITION BY s ORDER BY t) AS prev2 \
                   FROM (SELECT CASE WHEN v % 7 = 0 THEN NULL ELSE 'k' || CAST(v % 5 AS VARCHAR) END AS s, \
                                v / 3 AS t FROM generate_series(1, 20000) AS g(v) \
                         UNION ALL SELECT 'single', 1) x \
                   ORDER BY s, t, prev, prev2";
        let run = |ctx: SessionContext| async move {
            let df = ctx.sql(sql).await.unwrap();
            let plan = df.clone().create_physical_plan().await.unwrap();
            let text = displayable(plan.as_ref()).indent(false).to_string();
            let rows = arrow::util::pretty::pretty_format_batches(&df.collect().await.unwrap())
                .unwrap()
                .to_string();
            (text, rows)
        };
        let config = || {
            SessionConfig::new()
                .with_batch_size(1000)
                .with_target_partitions(3)
        };
        let (plain_plan, plain) = run(SessionContext::new_with_config(config())).await;
        let (ours_plan, ours) = run(session(config())).await;
        assert!(plain_plan.contains("BoundedWindowAggExec"), "{plain_plan}");
        assert!(!ours_plan.contains("BoundedWindowAggExec"), "{ours_plan}");
        assert!(ours_plan.contains("WindowAggExec"), "{ours_plan}");
        assert_eq!(ours, plain);
        let single: Vec<Vec<&str>> = ours
            .lines()
            .map(|l| l.split('|').map(str::trim).collect())
            .filter(|cells: &Vec<&str>| cells.get(1) == Some(&"single"))
            .collect();
        assert_eq!(single, vec![vec!["", "single", "1", "", "", ""]], "{ours}");
    }

    /// A sort DataFusion pushes below a filtering `CollectLeft` join is applied above it, on
    /// the same columns, with the same rows in the same order; a join without a filter keeps
    /// DataFusion's plan.
    #[tokio::test]
    async fn a_sort_below_a_filtering_join_moves_above_it_with_the_same_rows() {
        let probe = "(SELECT v AS id, v % 7 AS k, (v * 7919) % 1000 AS t, 'c' || CAST(v % 5 AS VARCHAR) AS cat \
                     FROM generate_series(1, 20000) AS g(v))";
        let build = "(VALUES (0, 'c0;c1'), (1, 'c2'), (2, 'c3;c4'), (3, 'c0'), (4, ''), (5, 'c1;c2'), (6, 'c4'))";
        let filtered = format!(
            "SELECT e.t AS first, e.id, e.cat, r.allowed FROM {probe} e JOIN {build} AS r(k, allowed) \
             ON r.k = e.k WHERE ';' || r.allowed || ';' NOT LIKE '%;' || e.cat || ';%' AND e.t % 3 = 0 \
             ORDER BY first, e.id"
        );
        let plain_join = format!(
            "SELECT e.t AS first, e.id, r.allowed FROM {probe} e JOIN {build} AS r(k, allowed) \
             ON r.k = e.k ORDER BY first, e.id"
        );
        let config = || {
            SessionConfig::new()
                .with_batch_size(1000)
                .with_target_partitions(3)
        };
        let run = |ctx: SessionContext, sql: String| async move {
            let df = ctx.sql(&sql).await.unwrap();
            let plan = df.clone().create_physical_plan().await.unwrap();
            let text = displayable(plan.as_ref()).indent(false).to_string();
            let rows = arrow::util::pretty::pretty_format_batches(&df.collect().await.unwrap())
                .unwrap()
                .to_string();
            (text, rows)
        };
        // Where the sort is, by the indentation of the first SortExec against the join's.
        let sort_below_join = |plan: &str| {
            let depth = |what: &str| {
                plan.lines()
                    .find(|l| l.trim_start().starts_with(what))
                    .map(|l| l.len() - l.trim_start().len())
            };
            depth("SortExec") > depth("HashJoinExec")
        };
        let (plain_plan, plain) =
            run(SessionContext::new_with_config(config()), filtered.clone()).await;
        let (ours_plan, ours) = run(session(config()), filtered).await;
        assert!(plain_plan.contains("mode=CollectLeft"), "{plain_plan}");
        assert!(sort_below_join(&plain_plan), "{plain_plan}");
        assert!(!sort_below_join(&ours_plan), "{ours_plan}");
        assert_eq!(ours, plain);
        assert!(ours.lines().count() > 100, "{ours}");
        let (plain_plan, plain) = run(
            SessionContext::new_with_config(config()),
            plain_join.clone(),
        )
        .await;
        let (ours_plan, ours) = run(session(config()), plain_join).await;
        assert_eq!(
            sort_below_join(&ours_plan),
            sort_below_join(&plain_plan),
            "{ours_plan}"
        );
        assert_eq!(ours, plain);
    }
}
