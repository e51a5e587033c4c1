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
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::Boundedness;
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

/// Whether `rule` is one of this module's.
pub fn is_ours(rule: &dyn PhysicalOptimizerRule) -> bool {
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
}
