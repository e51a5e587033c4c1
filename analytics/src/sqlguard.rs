//! What keeps one analyst's query inside its limits where DataFusion's own memory accounting
//! does not look: values made by scalar functions, and the memory of every query together.
//!
//! - **Functions.** Every scalar function of an analyst's session is wrapped. Before a function
//!   that can make its output much larger than its input runs (`repeat`, `lpad`, `rpad`,
//!   `replace`, `regexp_replace`, `array_repeat`, `array_resize`, `range`, `generate_series`,
//!   and the `||` operator on strings), the size of what it would make is worked out from its
//!   arguments; after every function runs, what it made is measured. A single value larger than
//!   `max_value` stops the query ([`ValueTooLarge`]), and the largest output of each function is
//!   counted in the query's memory pool, so that it stops with the memory-limit error instead of
//!   taking memory nothing accounts for.
//! - **All queries together.** Each query's pool is also counted in a pool shared by every query
//!   of the process ([`QueryPool`]); a query that would take the shared pool past its limit
//!   stops with [`SharedMemoryExhausted`].
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, FieldRef, TimeUnit};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
    TrackConsumersPool,
};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExprSchemable, ExpressionPlacement, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, StructFieldMapping, Volatility,
};
use datafusion::sql::sqlparser::ast::BinaryOperator;

use crate::sql::human_bytes;

/// A function would make, or made, one value larger than the limit.
#[derive(Debug, thiserror::Error)]
#[error("{function} would make a value of {}, more than the limit of {} for one value (sql.max_value_bytes)", human_bytes(*.bytes as usize), human_bytes(*.limit))]
pub struct ValueTooLarge {
    pub function: String,
    pub bytes: u64,
    pub limit: usize,
}

/// The queries running now would together hold more than the shared limit.
#[derive(Debug, thiserror::Error)]
#[error("the queries running now would together hold more than their shared memory limit of {} (sql.total_memory_limit)", human_bytes(*.limit))]
pub struct SharedMemoryExhausted {
    pub limit: usize,
}

/// The memory of every analyst query of a process, shared.
#[derive(Debug, Clone)]
pub struct SharedMemory {
    pool: Arc<GreedyMemoryPool>,
    limit: usize,
}

impl SharedMemory {
    pub fn new(limit: usize) -> Self {
        Self {
            pool: Arc::new(GreedyMemoryPool::new(limit)),
            limit,
        }
    }

    /// Bytes held by running queries now.
    pub fn reserved(&self) -> usize {
        self.pool.reserved()
    }
}

/// One query's pool: its own limit, and its share of the [`SharedMemory`].
#[derive(Debug)]
pub struct QueryPool {
    own: TrackConsumersPool<GreedyMemoryPool>,
    shared: SharedMemory,
}

impl QueryPool {
    pub fn new(limit: usize, shared: SharedMemory) -> Self {
        Self {
            own: TrackConsumersPool::new(
                GreedyMemoryPool::new(limit),
                NonZeroUsize::new(3).expect("3 > 0"),
            ),
            shared,
        }
    }
}

impl std::fmt::Display for QueryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "query pool {} (shared: {} of {})",
            self.own,
            human_bytes(self.shared.pool.reserved()),
            human_bytes(self.shared.limit)
        )
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "flowaudit-query"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.own.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.own.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.own.grow(reservation, additional);
        self.shared.pool.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.own.shrink(reservation, shrink);
        self.shared.pool.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.own.try_grow(reservation, additional)?;
        if self.shared.pool.try_grow(reservation, additional).is_err() {
            self.own.shrink(reservation, additional);
            return Err(DataFusionError::External(Box::new(SharedMemoryExhausted {
                limit: self.shared.limit,
            })));
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.own.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.own.memory_limit()
    }
}

/// What the wrapped functions of one session check against.
#[derive(Debug)]
pub struct GuardContext {
    pub pool: Arc<dyn MemoryPool>,
    /// Largest value (string, binary) a function may make.
    pub max_value: usize,
}

/// Wrap every scalar function of `funcs` (deduplicated: aliases share one function).
pub fn guard_functions(funcs: &mut Vec<Arc<ScalarUDF>>, ctx: &Arc<GuardContext>) {
    let mut seen: Vec<*const ()> = Vec::new();
    let mut out = Vec::with_capacity(funcs.len());
    for f in funcs.drain(..) {
        let p = Arc::as_ptr(&f) as *const ();
        if seen.contains(&p) {
            continue;
        }
        seen.push(p);
        out.push(wrap(f, ctx));
    }
    *funcs = out;
}

fn wrap(f: Arc<ScalarUDF>, ctx: &Arc<GuardContext>) -> Arc<ScalarUDF> {
    if f.inner().is::<Guarded>() {
        return f;
    }
    Arc::new(ScalarUDF::new_from_impl(Guarded::new(
        f.inner().clone(),
        ctx.clone(),
    )))
}

/// A scalar function whose outputs are checked (see the module docs).
#[derive(Debug)]
pub struct Guarded {
    inner: Arc<dyn ScalarUDFImpl>,
    ctx: Arc<GuardContext>,
    /// The largest output so far, counted in the query's pool until the query ends.
    held: Mutex<Option<MemoryReservation>>,
}

impl PartialEq for Guarded {
    fn eq(&self, other: &Self) -> bool {
        Arc::as_ptr(&self.inner) as *const () == Arc::as_ptr(&other.inner) as *const ()
            && Arc::ptr_eq(&self.ctx, &other.ctx)
    }
}
impl Eq for Guarded {}
impl Hash for Guarded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.name().hash(state);
    }
}

impl Guarded {
    fn new(inner: Arc<dyn ScalarUDFImpl>, ctx: Arc<GuardContext>) -> Self {
        Self {
            inner,
            ctx,
            held: Mutex::new(None),
        }
    }

    /// Refuse a value over the limit; count `total` bytes in the pool if it is the largest
    /// output of this function so far.
    fn admit(&self, max_value: u64, total: u64) -> Result<()> {
        let name = self.inner.name();
        if max_value > self.ctx.max_value as u64 {
            return Err(DataFusionError::External(Box::new(ValueTooLarge {
                function: name.to_string(),
                bytes: max_value,
                limit: self.ctx.max_value,
            })));
        }
        let total = usize::try_from(total).unwrap_or(usize::MAX);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let r = held.get_or_insert_with(|| {
            MemoryConsumer::new(format!("{name} (function results)")).register(&self.ctx.pool)
        });
        if total > r.size() {
            r.try_grow(total - r.size())?;
        }
        Ok(())
    }
}

impl ScalarUDFImpl for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_strict(&self) -> bool {
        self.inner.is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let Some((max_value, total)) = bound(self.inner.name(), &args.args, args.number_rows)? {
            self.admit(max_value, total)?;
        }
        let out = self.inner.invoke_with_args(args)?;
        let (max_value, total) = measure(&out)?;
        self.admit(max_value, total)?;
        Ok(out)
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        self.inner
            .with_updated_config(config)
            .map(|u| ScalarUDF::new_from_impl(Guarded::new(u.inner().clone(), self.ctx.clone())))
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        // A simplification may bring in functions of the default registry: wrap them too.
        match self.inner.simplify(args, info)? {
            ExprSimplifyResult::Simplified(e) => {
                let ctx = self.ctx.clone();
                let e = e
                    .transform_up(|e| match e {
                        Expr::ScalarFunction(sf) if !sf.func.inner().is::<Guarded>() => {
                            Ok(Transformed::yes(Expr::ScalarFunction(
                                ScalarFunction::new_udf(wrap(sf.func, &ctx), sf.args),
                            )))
                        }
                        other => Ok(Transformed::no(other)),
                    })?
                    .data;
                Ok(ExprSimplifyResult::Simplified(e))
            }
            original => Ok(original),
        }
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<PreimageResult> {
        self.inner.preimage(args, lit_expr, info)
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.conditional_arguments(args)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }

    fn struct_field_mapping(
        &self,
        literal_args: &[Option<ScalarValue>],
    ) -> Option<StructFieldMapping> {
        self.inner.struct_field_mapping(literal_args)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner.placement(args)
    }
}

/// One argument's per-row numbers: the same for every row (a scalar) or one per row.
enum PerRow {
    Const(u64),
    Each(Vec<u64>),
}

impl PerRow {
    fn get(&self, i: usize) -> u64 {
        match self {
            PerRow::Const(v) => *v,
            PerRow::Each(v) => v.get(i).copied().unwrap_or(0),
        }
    }
}

/// Byte length of each string or binary value (0 for a null); `None` for other types.
fn value_lengths(a: &dyn Array) -> Option<Vec<u64>> {
    fn diffs<O: arrow::array::OffsetSizeTrait>(o: &[O]) -> Vec<u64> {
        o.windows(2)
            .map(|w| (w[1].as_usize().saturating_sub(w[0].as_usize())) as u64)
            .collect()
    }
    Some(match a.data_type() {
        DataType::Utf8 => diffs(a.as_string::<i32>().offsets()),
        DataType::LargeUtf8 => diffs(a.as_string::<i64>().offsets()),
        DataType::Binary => diffs(a.as_binary::<i32>().offsets()),
        DataType::LargeBinary => diffs(a.as_binary::<i64>().offsets()),
        DataType::Utf8View => a
            .as_string_view()
            .views()
            .iter()
            .map(|v| (*v as u32) as u64)
            .collect(),
        DataType::BinaryView => a
            .as_binary_view()
            .views()
            .iter()
            .map(|v| (*v as u32) as u64)
            .collect(),
        _ => return None,
    })
}

fn scalar_length(s: &ScalarValue) -> Option<u64> {
    Some(match s {
        ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
            v.as_ref().map_or(0, |s| s.len() as u64)
        }
        ScalarValue::Binary(v) | ScalarValue::LargeBinary(v) | ScalarValue::BinaryView(v) => {
            v.as_ref().map_or(0, |b| b.len() as u64)
        }
        ScalarValue::FixedSizeBinary(_, v) => v.as_ref().map_or(0, |b| b.len() as u64),
        _ => return None,
    })
}

/// Byte lengths of a string argument; for another type, the size of its values.
fn lengths(v: &ColumnarValue) -> PerRow {
    match v {
        ColumnarValue::Scalar(s) => PerRow::Const(scalar_length(s).unwrap_or(s.size() as u64)),
        ColumnarValue::Array(a) => match value_lengths(a.as_ref()) {
            Some(l) => PerRow::Each(l),
            None => match a.data_type().primitive_width() {
                Some(w) => PerRow::Const(w as u64),
                None => {
                    let bytes = a.to_data().get_slice_memory_size().unwrap_or(0) as u64;
                    PerRow::Const(bytes / (a.len().max(1) as u64) + 1)
                }
            },
        },
    }
}

/// An integer argument, negative and null as 0.
fn counts(v: &ColumnarValue) -> Result<PerRow> {
    Ok(match v {
        ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Int64)? {
            ScalarValue::Int64(Some(n)) => PerRow::Const(n.max(0) as u64),
            _ => PerRow::Const(0),
        },
        ColumnarValue::Array(a) => {
            let a = arrow::compute::cast(a, &DataType::Int64)?;
            PerRow::Each(
                a.as_primitive::<arrow::datatypes::Int64Type>()
                    .iter()
                    .map(|n| n.unwrap_or(0).max(0) as u64)
                    .collect(),
            )
        }
    })
}

const DAY_NS: i128 = 86_400_000_000_000;

/// A `range`/`generate_series` argument as a number on one scale: integers as they are, dates,
/// timestamps and intervals in nanoseconds (a month counted as 28 days, the shortest).
fn series_point(s: &ScalarValue) -> Option<i128> {
    let unit_ns = |u: &TimeUnit| match u {
        TimeUnit::Second => 1_000_000_000i128,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    };
    Some(match s {
        ScalarValue::Int8(Some(v)) => *v as i128,
        ScalarValue::Int16(Some(v)) => *v as i128,
        ScalarValue::Int32(Some(v)) => *v as i128,
        ScalarValue::Int64(Some(v)) => *v as i128,
        ScalarValue::UInt8(Some(v)) => *v as i128,
        ScalarValue::UInt16(Some(v)) => *v as i128,
        ScalarValue::UInt32(Some(v)) => *v as i128,
        ScalarValue::UInt64(Some(v)) => *v as i128,
        ScalarValue::Date32(Some(d)) => *d as i128 * DAY_NS,
        ScalarValue::Date64(Some(ms)) => *ms as i128 * 1_000_000,
        ScalarValue::TimestampSecond(Some(v), _) => *v as i128 * unit_ns(&TimeUnit::Second),
        ScalarValue::TimestampMillisecond(Some(v), _) => {
            *v as i128 * unit_ns(&TimeUnit::Millisecond)
        }
        ScalarValue::TimestampMicrosecond(Some(v), _) => {
            *v as i128 * unit_ns(&TimeUnit::Microsecond)
        }
        ScalarValue::TimestampNanosecond(Some(v), _) => *v as i128,
        ScalarValue::IntervalMonthDayNano(Some(i)) => {
            i.months as i128 * 28 * DAY_NS + i.days as i128 * DAY_NS + i.nanoseconds as i128
        }
        ScalarValue::IntervalDayTime(Some(i)) => {
            i.days as i128 * DAY_NS + i.milliseconds as i128 * 1_000_000
        }
        ScalarValue::IntervalYearMonth(Some(m)) => *m as i128 * 28 * DAY_NS,
        _ => return None,
    })
}

/// Elements of a `range`/`generate_series` call on one row, or `None` when it cannot be told.
fn series_len(args: &[ColumnarValue], row: usize) -> Option<u64> {
    let at = |i: usize| -> Option<ScalarValue> {
        match &args[i] {
            ColumnarValue::Scalar(s) => Some(s.clone()),
            ColumnarValue::Array(a) => ScalarValue::try_from_array(a, row).ok(),
        }
    };
    let (start, stop, step) = match args.len() {
        1 => (0, series_point(&at(0)?)?, 1),
        2 => (series_point(&at(0)?)?, series_point(&at(1)?)?, 1),
        3 => (
            series_point(&at(0)?)?,
            series_point(&at(1)?)?,
            series_point(&at(2)?)?,
        ),
        _ => return None,
    };
    if step == 0 {
        return Some(0);
    }
    let n = (stop - start).unsigned_abs() / step.unsigned_abs() + 1;
    Some(u64::try_from(n).unwrap_or(u64::MAX))
}

/// Upper bounds of what the function `name` would make from `args`: (largest value, all
/// values), in bytes; `None` for a function whose output is no larger than its input.
fn bound(name: &str, args: &[ColumnarValue], rows: usize) -> Result<Option<(u64, u64)>> {
    let rows = rows.max(1);
    let per_row = |f: &dyn Fn(usize) -> u64| -> (u64, u64) {
        let mut max = 0u64;
        let mut total = 0u64;
        for i in 0..rows {
            let v = f(i);
            max = max.max(v);
            total = total.saturating_add(v);
        }
        (max, total)
    };
    let arg = |i: usize| args.get(i);
    Ok(Some(match name {
        "repeat" if args.len() == 2 => {
            let (s, n) = (lengths(&args[0]), counts(&args[1])?);
            per_row(&|i| s.get(i).saturating_mul(n.get(i)))
        }
        "lpad" | "rpad" if args.len() >= 2 => {
            let (s, n) = (lengths(&args[0]), counts(&args[1])?);
            let fill = arg(2).map_or(PerRow::Const(1), lengths);
            // The result has n characters; each is one of the input's or the fill's.
            per_row(&|i| {
                s.get(i)
                    .saturating_add(n.get(i).saturating_mul(fill.get(i).max(4)))
            })
        }
        "replace" if args.len() == 3 => {
            let (s, from, to) = (lengths(&args[0]), lengths(&args[1]), lengths(&args[2]));
            per_row(&|i| {
                let matches = s.get(i) / from.get(i).max(1) + 1;
                s.get(i).saturating_add(matches.saturating_mul(to.get(i)))
            })
        }
        "regexp_replace" if args.len() >= 3 => {
            // Each match (at most one per byte, plus one) becomes the replacement, whose group
            // references (two bytes or more each) expand to at most the match.
            let (s, r) = (lengths(&args[0]), lengths(&args[2]));
            per_row(&|i| {
                let matches = s.get(i).saturating_add(1);
                s.get(i)
                    .saturating_add(matches.saturating_mul(r.get(i)).saturating_mul(2))
            })
        }
        "array_repeat" if args.len() == 2 => {
            let (e, n) = (lengths(&args[0]), counts(&args[1])?);
            per_row(&|i| n.get(i).saturating_mul(e.get(i).saturating_add(8)))
        }
        "array_resize" if args.len() >= 2 => {
            let n = counts(&args[1])?;
            let e = arg(2).map_or(PerRow::Const(16), lengths);
            per_row(&|i| n.get(i).saturating_mul(e.get(i).saturating_add(8)))
        }
        "range" | "generate_series" if !args.is_empty() && args.len() <= 3 => {
            per_row(&|i| series_len(args, i).map_or(0, |n| n.saturating_mul(16)))
        }
        "||" if args.len() == 2 => {
            let (a, b) = (lengths(&args[0]), lengths(&args[1]));
            per_row(&|i| a.get(i).saturating_add(b.get(i)))
        }
        _ => return Ok(None),
    }))
}

/// What a function made: (largest string or binary value, bytes of all of it).
fn measure(out: &ColumnarValue) -> Result<(u64, u64)> {
    Ok(match out {
        ColumnarValue::Scalar(s) => (scalar_length(s).unwrap_or(0), s.size() as u64),
        ColumnarValue::Array(a) => {
            let max = value_lengths(a.as_ref())
                .and_then(|l| l.into_iter().max())
                .unwrap_or(0);
            let total = a.to_data().get_slice_memory_size()? as u64;
            (max, total)
        }
    })
}

/// The `||` operator on strings, planned as a checked function (on lists it stays DataFusion's
/// `array_concat` and friends). A null on either side makes null, as SQL says.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ConcatOp {
    signature: Signature,
}

impl Default for ConcatOp {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn is_list(t: &DataType) -> bool {
    matches!(
        t,
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _)
    )
}

fn concat_type(types: &[DataType]) -> DataType {
    let binary = |t: &DataType| {
        matches!(
            t,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView
        )
    };
    if types.iter().all(binary) {
        DataType::Binary
    } else if types.contains(&DataType::LargeUtf8) {
        DataType::LargeUtf8
    } else {
        DataType::Utf8
    }
}

impl ScalarUDFImpl for ConcatOp {
    fn name(&self) -> &str {
        "||"
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        Ok(format!(
            "{} || {}",
            args[0].schema_name(),
            args[1].schema_name()
        ))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let t = concat_type(arg_types);
        Ok(vec![t; arg_types.len()])
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(concat_type(arg_types))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<Result<_>>()?;
        let out = arrow::compute::kernels::concat_elements::concat_elements_dyn(
            arrays[0].as_ref(),
            arrays[1].as_ref(),
        )?;
        Ok(ColumnarValue::Array(out))
    }
}

/// Plans `a || b` on strings as the checked [`ConcatOp`].
#[derive(Debug)]
pub struct ConcatOpPlanner {
    pub ctx: Arc<GuardContext>,
}

impl ExprPlanner for ConcatOpPlanner {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> Result<PlannerResult<RawBinaryExpr>> {
        if expr.op != BinaryOperator::StringConcat {
            return Ok(PlannerResult::Original(expr));
        }
        let (lt, rt) = (expr.left.get_type(schema)?, expr.right.get_type(schema)?);
        if is_list(&lt) || is_list(&rt) {
            return Ok(PlannerResult::Original(expr));
        }
        let udf = Arc::new(ScalarUDF::new_from_impl(Guarded::new(
            Arc::new(ConcatOp::default()),
            self.ctx.clone(),
        )));
        Ok(PlannerResult::Planned(Expr::ScalarFunction(
            ScalarFunction::new_udf(udf, vec![expr.left, expr.right]),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    fn col(a: ArrayRef) -> ColumnarValue {
        ColumnarValue::Array(a)
    }

    #[test]
    fn bounds_come_from_the_arguments() {
        let s = col(Arc::new(StringArray::from(vec!["ab", "abcd"])));
        let n = col(Arc::new(Int64Array::from(vec![3, -5])));
        assert_eq!(bound("repeat", &[s.clone(), n], 2).unwrap(), Some((6, 6)));
        let big = ColumnarValue::Scalar(ScalarValue::Int64(Some(400_000_000)));
        let x = ColumnarValue::Scalar(ScalarValue::Utf8(Some("x".into())));
        assert_eq!(
            bound("repeat", &[x.clone(), big.clone()], 3).unwrap(),
            Some((400_000_000, 1_200_000_000))
        );
        let (max, _) = bound("lpad", &[x.clone(), big], 1).unwrap().unwrap();
        assert!(max >= 400_000_000);
        let r = bound(
            "replace",
            &[
                ColumnarValue::Scalar(ScalarValue::Utf8(Some("x".repeat(1000)))),
                x.clone(),
                ColumnarValue::Scalar(ScalarValue::Utf8(Some("y".repeat(1000)))),
            ],
            1,
        )
        .unwrap()
        .unwrap();
        assert!(r.0 >= 1_000_000, "{r:?}");
        let one = ColumnarValue::Scalar(ScalarValue::Int64(Some(1)));
        let far = ColumnarValue::Scalar(ScalarValue::Int64(Some(1_000_000_001)));
        let (max, _) = bound("range", &[one, far], 1).unwrap().unwrap();
        assert!(max >= 8_000_000_000, "{max}");
        let d = |s: &str| {
            ColumnarValue::Scalar(ScalarValue::Date32(Some(
                chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .unwrap()
                    .signed_duration_since(chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
                    .num_days() as i32,
            )))
        };
        let day = ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(
            arrow::datatypes::IntervalMonthDayNano::new(0, 1, 0),
        )));
        let (max, _) = bound(
            "generate_series",
            &[d("2026-11-01"), d("2026-11-30"), day],
            1,
        )
        .unwrap()
        .unwrap();
        assert_eq!(max, 30 * 16);
        assert_eq!(bound("upper", &[s, x], 2).unwrap(), None);
    }

    #[test]
    fn the_shared_pool_limits_queries_together() {
        let shared = SharedMemory::new(1000);
        let a: Arc<dyn MemoryPool> = Arc::new(QueryPool::new(800, shared.clone()));
        let b: Arc<dyn MemoryPool> = Arc::new(QueryPool::new(800, shared.clone()));
        let ra = MemoryConsumer::new("a").register(&a);
        let rb = MemoryConsumer::new("b").register(&b);
        ra.try_grow(700).unwrap();
        assert!(ra.try_grow(200).is_err(), "over the query's own limit");
        let e = rb.try_grow(400).unwrap_err();
        assert!(e.to_string().contains("shared memory limit"), "{e}");
        assert_eq!(b.reserved(), 0, "a refused grow is undone");
        drop(ra);
        assert_eq!(shared.reserved(), 0);
        rb.try_grow(400).unwrap();
    }
}
