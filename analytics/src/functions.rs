//! Faster paths of DataFusion built-in functions for the warehouse's column types, registered
//! under the built-ins' names; any other input goes to the built-in unchanged.
//!
//! - `date_trunc('hour' | 'day', ts)` of a UTC microsecond timestamp (every `ts` of the
//!   warehouse): DataFusion 55 truncates a timestamp with a time zone value by value through
//!   chrono's time-zone arithmetic (its arithmetic fast path is only for timestamps without one),
//!   about 130 ns a value; in UTC an hour and a day are fixed lengths, so this is one remainder
//!   per value. `volume_spike` truncates every allowed event of its seven days to the hour.
//! - `CAST(ts AS DATE)` of a UTC microsecond timestamp ([`UtcDateCasts`]): arrow's cast goes
//!   through chrono's time-zone conversion for each value when the timestamp has a zone, about
//!   35 ns a value here; in UTC the date is the day number, one division. The rules group flows
//!   by it and join events to the roster's validity dates with it. A cast is not a function, so
//!   an analyzer rule puts a function in its place, except where a comparison with a literal
//!   lets DataFusion prune Parquet row groups and pages by the cast's statistics.
//! - `ts ± INTERVAL '…'` of a UTC microsecond timestamp and an interval without months
//!   ([`UtcShift`], through the same rule): arrow adds an interval to a timestamp with a zone
//!   through chrono-tz for each value (the day part depends on the zone's calendar); in UTC a
//!   day and a second are fixed lengths, so it is one addition. `gateway_bypass` compares every
//!   flow with every candidate session within minutes of it: 28 % of its profile was this.
//! - `d || list || d [NOT] LIKE '%' || d || item || d || '%'`, the rules' test of whether a
//!   delimited policy list (an employee's categories or locations) holds an item
//!   ([`DelimitedItem`], through the same rule): DataFusion builds both concatenations as new
//!   string arrays and arrow compiles a pattern for every row whose pattern differs from the
//!   row before's; this searches the list in place. `gateway_allowed_forbidden` spent 28 of a
//!   day's 66 ms in that join filter.
use std::sync::Arc;

use arrow::array::{Array, Date32Array, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, FieldRef, TimeUnit};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::error::Result;
use datafusion::logical_expr::expr::{Cast, Like, ScalarFunction};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Documentation, Expr, ExprSchemable, LogicalPlan, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

/// Microseconds in an hour and in a day.
const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

/// `date_trunc` with the UTC fast path; everything else is DataFusion's own.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DateTrunc {
    inner: Arc<ScalarUDF>,
}

impl DateTrunc {
    pub fn new() -> Self {
        Self {
            inner: datafusion::functions::datetime::date_trunc(),
        }
    }

    /// The length of `granularity` in microseconds, where truncating a UTC timestamp to it is
    /// a remainder.
    fn step(granularity: &ColumnarValue) -> Option<i64> {
        let g = match granularity {
            ColumnarValue::Scalar(
                ScalarValue::Utf8(Some(g))
                | ScalarValue::Utf8View(Some(g))
                | ScalarValue::LargeUtf8(Some(g)),
            ) => g,
            _ => return None,
        };
        match g.to_ascii_lowercase().as_str() {
            "hour" => Some(HOUR_US),
            "day" => Some(DAY_US),
            _ => None,
        }
    }
}

impl Default for DateTrunc {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `tz` names UTC itself (not a zone that is at UTC's offset only part of the year).
fn is_utc(tz: &str) -> bool {
    matches!(tz, "UTC" | "utc" | "+00:00" | "Z" | "Etc/UTC")
}

/// `values` as UTC microsecond timestamps, with their zone's name, if that is what they are.
fn utc_micros(values: &dyn Array) -> Option<(&TimestampMicrosecondArray, &Arc<str>)> {
    match values.data_type() {
        DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if is_utc(tz) => {
            let ts = values
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()?;
            Some((ts, tz))
        }
        _ => None,
    }
}

impl ScalarUDFImpl for DateTrunc {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
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

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let (Some(step), Some(ColumnarValue::Array(values))) =
            (Self::step(&args.args[0]), args.args.get(1))
        {
            if let Some((ts, tz)) = utc_micros(values.as_ref()) {
                let out: TimestampMicrosecondArray = ts.unary(|v| v - v.rem_euclid(step));
                return Ok(ColumnarValue::Array(Arc::new(
                    out.with_timezone(tz.clone()),
                )));
            }
        }
        self.inner.invoke_with_args(args)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// Register the fast paths in `ctx`, over the built-ins of the same names.
pub fn register(ctx: &datafusion::prelude::SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(DateTrunc::new()));
}

/// Register the rewrites that put flowaudit's own functions in a plan ([`UtcDateCasts`]).
/// Only for the embedded engine: a Ballista scheduler would not know the function by name.
pub fn register_rewrites(ctx: &datafusion::prelude::SessionContext) {
    ctx.add_analyzer_rule(Arc::new(UtcDateCasts));
}

/// `CAST(ts AS DATE)` for a UTC microsecond timestamp: the day number since 1970, the value
/// arrow's cast gives, for every value chrono can represent; any other input (and any value
/// chrono cannot represent, which the cast rejects) goes to arrow's cast.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct UtcDate {
    signature: Signature,
}

impl UtcDate {
    /// The function's name in plans (it is not registered, so SQL cannot call it by name).
    pub const NAME: &'static str = "flowaudit_utc_date";

    pub fn new() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl Default for UtcDate {
    fn default() -> Self {
        Self::new()
    }
}

/// The UTC day numbers of `ts`, when every value is one chrono can represent.
fn utc_days(ts: &TimestampMicrosecondArray) -> Option<Date32Array> {
    let representable =
        |v: Option<i64>| v.is_none_or(|v| chrono::DateTime::from_timestamp_micros(v).is_some());
    if !representable(arrow::compute::min(ts)) || !representable(arrow::compute::max(ts)) {
        return None;
    }
    Some(ts.unary(|v| v.div_euclid(DAY_US) as i32))
}

impl ScalarUDFImpl for UtcDate {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Date32)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let nullable = args.arg_fields.first().is_none_or(|f| f.is_nullable());
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::Date32,
            nullable,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match &args.args[0] {
            ColumnarValue::Array(values) => {
                if let Some(days) = utc_micros(values.as_ref()).and_then(|(ts, _)| utc_days(ts)) {
                    return Ok(ColumnarValue::Array(Arc::new(days)));
                }
                Ok(ColumnarValue::Array(arrow::compute::cast(
                    values,
                    &DataType::Date32,
                )?))
            }
            ColumnarValue::Scalar(v) => Ok(ColumnarValue::Scalar(v.cast_to(&DataType::Date32)?)),
        }
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        // The day number never decreases as the time increases.
        Ok(inputs[0].sort_properties)
    }
}

/// `ts + interval` (or `ts - interval`) for a UTC microsecond timestamp and an interval of days
/// and time but no months: one addition per value, the value arrow's interval arithmetic gives
/// wherever the input and the result are times chrono can represent; anything else goes to
/// arrow's arithmetic, errors included.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct UtcShift {
    signature: Signature,
    negate: bool,
}

impl UtcShift {
    /// The function's name in plans, by direction (it is not registered: SQL cannot call it).
    pub const PLUS: &'static str = "flowaudit_utc_plus";
    pub const MINUS: &'static str = "flowaudit_utc_minus";

    pub fn new(negate: bool) -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
            negate,
        }
    }

    /// The interval in microseconds (negated for `-`), if it has no months and no fraction of a
    /// microsecond and fits.
    fn micros(v: &arrow::datatypes::IntervalMonthDayNano, negate: bool) -> Option<i64> {
        if v.months != 0 || v.nanoseconds % 1000 != 0 {
            return None;
        }
        let us = i64::from(v.days)
            .checked_mul(DAY_US)?
            .checked_add(v.nanoseconds / 1000)?;
        if negate {
            us.checked_neg()
        } else {
            Some(us)
        }
    }

    /// Arrow's own arithmetic, for what the fast path does not take.
    fn arrow(
        &self,
        ts: &dyn arrow::array::Datum,
        interval: &ScalarValue,
    ) -> Result<arrow::array::ArrayRef> {
        use arrow::compute::kernels::numeric::{add, sub};
        let interval = arrow::array::Scalar::new(interval.to_array()?);
        Ok(if self.negate {
            sub(ts, &interval)?
        } else {
            add(ts, &interval)?
        })
    }
}

impl ScalarUDFImpl for UtcShift {
    fn name(&self) -> &str {
        if self.negate {
            Self::MINUS
        } else {
            Self::PLUS
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
        Ok(Arc::new(Field::new(
            self.name(),
            args.arg_fields[0].data_type().clone(),
            nullable,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let ColumnarValue::Scalar(interval) = &args.args[1] else {
            return Err(datafusion::error::DataFusionError::Internal(format!(
                "{}: the interval must be a literal",
                self.name()
            )));
        };
        match &args.args[0] {
            ColumnarValue::Array(values) => {
                let shift = match interval {
                    ScalarValue::IntervalMonthDayNano(Some(v)) => Self::micros(v, self.negate),
                    _ => None,
                };
                if let (Some(shift), Some((ts, tz))) = (shift, utc_micros(values.as_ref())) {
                    let in_range = |v: Option<i64>| {
                        v.is_none_or(|v| {
                            chrono::DateTime::from_timestamp_micros(v).is_some()
                                && v.checked_add(shift).is_some_and(|w| {
                                    chrono::DateTime::from_timestamp_micros(w).is_some()
                                })
                        })
                    };
                    if in_range(arrow::compute::min(ts)) && in_range(arrow::compute::max(ts)) {
                        let out: TimestampMicrosecondArray = ts.unary(|v| v + shift);
                        return Ok(ColumnarValue::Array(Arc::new(
                            out.with_timezone(tz.clone()),
                        )));
                    }
                }
                Ok(ColumnarValue::Array(self.arrow(values, interval)?))
            }
            ColumnarValue::Scalar(v) => {
                let ts = arrow::array::Scalar::new(v.to_array()?);
                let out = self.arrow(&ts, interval)?;
                Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
            }
        }
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        // A fixed shift keeps the order.
        Ok(inputs[0].sort_properties)
    }
}

/// `d || list || d [NOT] LIKE '%' || d || item || d || '%'` for a delimiter `d` without LIKE's
/// special characters: whether `item` is one of the `d`-separated entries of `list` (or, as the
/// LIKE says exactly, whether `d item d` occurs in `d list d`), searched in place. An `item`
/// with `%`, `_` or `\` is a pattern to LIKE: those rows go to arrow's LIKE, on the strings the
/// concatenations would have made. NULL in, NULL out, as the concatenation gives.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DelimitedItem {
    signature: Signature,
    negated: bool,
}

impl DelimitedItem {
    /// The function's name in plans, by sense (it is not registered: SQL cannot call it).
    pub const HAS: &'static str = "flowaudit_has_item";
    pub const LACKS: &'static str = "flowaudit_lacks_item";

    pub fn new(negated: bool) -> Self {
        Self {
            signature: Signature::any(3, Volatility::Immutable),
            negated,
        }
    }

    /// The function in place of `like`, if it has the form (no ILIKE, no ESCAPE).
    fn from_like(like: &Like) -> Option<Expr> {
        if like.case_insensitive || like.escape_char.is_some() {
            return None;
        }
        let (open, list, close) = concat3(&like.expr)?;
        let (p_open, item, p_close) = concat3(&like.pattern)?;
        let special = |s: &str| s.contains(['%', '_', '\\']);
        if open != close
            || open.is_empty()
            || special(&open)
            || p_open != format!("%{open}")
            || p_close != format!("{open}%")
        {
            return None;
        }
        Some(Expr::ScalarFunction(ScalarFunction::new_udf(
            Arc::new(ScalarUDF::new_from_impl(Self::new(like.negated))),
            vec![
                list,
                item,
                Expr::Literal(ScalarValue::Utf8(Some(open)), None),
            ],
        )))
    }

    /// Whether `d item d` occurs in `d list d`; `hay` and `needle` are scratch space.
    fn holds(
        list: &str,
        item: &str,
        d: &str,
        hay: &mut Vec<u8>,
        needle: &mut Vec<u8>,
    ) -> Result<bool> {
        if item.contains(['%', '_', '\\']) {
            let hay = arrow::array::StringArray::from(vec![format!("{d}{list}{d}")]);
            let pattern = arrow::array::StringArray::from(vec![format!("%{d}{item}{d}%")]);
            return Ok(arrow::compute::kernels::comparison::like(&hay, &pattern)?.value(0));
        }
        for (buf, s) in [(&mut *hay, list), (&mut *needle, item)] {
            buf.clear();
            buf.extend_from_slice(d.as_bytes());
            buf.extend_from_slice(s.as_bytes());
            buf.extend_from_slice(d.as_bytes());
        }
        Ok(memchr::memmem::find(hay.as_slice(), needle.as_slice()).is_some())
    }
}

/// `(lit || x) || lit` (under casts between string types): the two literals and `x`.
fn concat3(e: &Expr) -> Option<(String, Expr, String)> {
    use datafusion::logical_expr::Operator::StringConcat;
    fn strip(e: &Expr) -> &Expr {
        match e {
            Expr::Cast(Cast { expr, field }) if is_string(field.data_type()) => strip(expr),
            e => e,
        }
    }
    fn text(e: &Expr) -> Option<String> {
        match strip(e) {
            Expr::Literal(
                ScalarValue::Utf8(Some(s))
                | ScalarValue::Utf8View(Some(s))
                | ScalarValue::LargeUtf8(Some(s)),
                _,
            ) => Some(s.clone()),
            _ => None,
        }
    }
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: StringConcat,
        right,
    }) = strip(e)
    else {
        return None;
    };
    let close = text(right)?;
    let Expr::BinaryExpr(BinaryExpr {
        left: head,
        op: StringConcat,
        right: x,
    }) = strip(left)
    else {
        return None;
    };
    Some((text(head)?, x.as_ref().clone(), close))
}

/// Whether `t` is one of arrow's three string types.
pub(crate) fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// The values of an array of any of arrow's three string types, or of NULLs; `None` for another
/// type.
pub(crate) fn string_values(a: &dyn Array) -> Option<Box<dyn Iterator<Item = Option<&str>> + '_>> {
    use arrow::array::AsArray;
    Some(match a.data_type() {
        DataType::Utf8 => Box::new(a.as_string::<i32>().iter()),
        DataType::LargeUtf8 => Box::new(a.as_string::<i64>().iter()),
        DataType::Utf8View => Box::new(a.as_string_view().iter()),
        DataType::Null => Box::new(std::iter::repeat_n(None, a.len())),
        _ => return None,
    })
}

/// [`string_values`], or an error naming `function` for another type.
fn strings<'a>(
    a: &'a dyn Array,
    function: &str,
) -> Result<Box<dyn Iterator<Item = Option<&'a str>> + 'a>> {
    string_values(a).ok_or_else(|| {
        datafusion::error::DataFusionError::Internal(format!(
            "{function}: not a string: {}",
            a.data_type()
        ))
    })
}

impl ScalarUDFImpl for DelimitedItem {
    fn name(&self) -> &str {
        if self.negated {
            Self::LACKS
        } else {
            Self::HAS
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(d))
            | ScalarValue::Utf8View(Some(d))
            | ScalarValue::LargeUtf8(Some(d)),
        )) = args.args.get(2)
        else {
            return Err(datafusion::error::DataFusionError::Internal(format!(
                "{}: the delimiter must be a string literal",
                self.name()
            )));
        };
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args[..2])?;
        let (mut hay, mut needle) = (Vec::new(), Vec::new());
        let out = strings(arrays[0].as_ref(), self.name())?
            .zip(strings(arrays[1].as_ref(), self.name())?)
            .map(|(list, item)| match (list, item) {
                (Some(list), Some(item)) => Self::holds(list, item, d, &mut hay, &mut needle)
                    .map(|h| Some(h != self.negated)),
                _ => Ok(None),
            })
            .collect::<Result<arrow::array::BooleanArray>>()?;
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?)
        } else {
            ColumnarValue::Array(Arc::new(out))
        })
    }
}

/// Replaces `CAST(x AS DATE)` of a UTC microsecond timestamp by [`UtcDate`], `ts ± INTERVAL`
/// without months by [`UtcShift`], and the delimited-list LIKE by [`DelimitedItem`], in every
/// plan node, except under a comparison with a literal (`CAST(ts AS DATE) = DATE '…'`, `BETWEEN`,
/// `IN`): there DataFusion prunes row groups and pages by the cast of the column's statistics,
/// which it cannot do through a function. Runs after type coercion; every expression keeps
/// its name.
#[derive(Debug, Default)]
pub struct UtcDateCasts;

impl UtcDateCasts {
    fn rewrite_plan(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
        let mut schema = merge_schema(&plan.inputs());
        if let LogicalPlan::TableScan(scan) = &plan {
            schema.merge(&DFSchema::try_from_qualified_schema(
                scan.table_name.clone(),
                &scan.source.schema(),
            )?);
        }
        let names = NamePreserver::new(&plan);
        plan.map_expressions(|expr| {
            let name = names.save(&expr);
            let out = expr.transform_down(|e| Self::rewrite_expr(e, &schema))?;
            Ok(out.update_data(|e| name.restore(e)))
        })
    }

    fn rewrite_expr(expr: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
        // A literal, under any type coercion casts (folded later by the optimizer).
        fn literal(e: &Expr) -> bool {
            match e {
                Expr::Cast(Cast { expr, .. }) => literal(expr),
                Expr::TryCast(c) => literal(&c.expr),
                e => matches!(e, Expr::Literal(..)),
            }
        }
        let prunable = match &expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                use datafusion::logical_expr::Operator::*;
                matches!(op, Eq | NotEq | Lt | LtEq | Gt | GtEq)
                    && (literal(left) || literal(right))
            }
            Expr::Between(b) => literal(&b.low) || literal(&b.high),
            Expr::InList(l) => l.list.iter().all(literal),
            _ => false,
        };
        if prunable {
            return Ok(Transformed::new(expr, false, TreeNodeRecursion::Jump));
        }
        if let Expr::Like(like) = &expr {
            return Ok(match DelimitedItem::from_like(like) {
                Some(f) => Transformed::yes(f),
                None => Transformed::no(expr),
            });
        }
        if let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &expr {
            use datafusion::logical_expr::Operator;
            let negate = match op {
                Operator::Plus => false,
                Operator::Minus => true,
                _ => return Ok(Transformed::no(expr)),
            };
            let fixed = matches!(right.as_ref(), Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) if UtcShift::micros(v, false).is_some());
            let utc = matches!(left.get_type(schema), Ok(DataType::Timestamp(TimeUnit::Microsecond, Some(tz))) if is_utc(&tz));
            if !(fixed && utc) {
                return Ok(Transformed::no(expr));
            }
            return Ok(Transformed::yes(Expr::ScalarFunction(
                ScalarFunction::new_udf(
                    Arc::new(ScalarUDF::new_from_impl(UtcShift::new(negate))),
                    vec![left.as_ref().clone(), right.as_ref().clone()],
                ),
            )));
        }
        let Expr::Cast(Cast { expr: inner, field }) = &expr else {
            return Ok(Transformed::no(expr));
        };
        if field.data_type() != &DataType::Date32 || !field.metadata().is_empty() {
            return Ok(Transformed::no(expr));
        }
        match inner.get_type(schema) {
            Ok(DataType::Timestamp(TimeUnit::Microsecond, Some(tz))) if is_utc(&tz) => Ok(
                Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
                    Arc::new(ScalarUDF::new_from_impl(UtcDate::new())),
                    vec![inner.as_ref().clone()],
                ))),
            ),
            _ => Ok(Transformed::no(expr)),
        }
    }
}

impl AnalyzerRule for UtcDateCasts {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(Self::rewrite_plan)
            .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "flowaudit_utc_date_casts"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    /// The fast path gives the built-in's values, for every hour and day boundary case: before
    /// 1970, on a boundary, a microsecond before one, nulls.
    #[tokio::test]
    async fn date_trunc_in_utc_is_the_built_ins_and_other_inputs_go_to_it() {
        let values = "(TIMESTAMP '2026-11-21T10:59:59.999999Z'), (TIMESTAMP '2026-11-21T11:00:00Z'), \
                      (TIMESTAMP '1969-12-31T23:30:00.5Z'), (TIMESTAMP '1900-02-28T00:00:00.000001Z'), \
                      (TIMESTAMP '2026-03-29T01:30:00Z'), (NULL)";
        let sql = |g: &str| {
            format!(
                "SELECT CAST(date_trunc('{g}', arrow_cast(t, 'Timestamp(Microsecond, Some(\"UTC\"))')) AS VARCHAR) AS v \
                 FROM (VALUES {values}) AS x(t)"
            )
        };
        let run = |ctx: SessionContext, sql: String| async move {
            let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
            arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string()
        };
        for g in ["hour", "HOUR", "day", "minute", "month", "week"] {
            let builtin = run(SessionContext::new(), sql(g)).await;
            let ours = SessionContext::new();
            register(&ours);
            assert_eq!(run(ours, sql(g)).await, builtin, "granularity {g}");
        }
        // The fast path is taken for hours of UTC timestamps, and it is right where chrono's
        // path is known: 1969-12-31T23:30:00.5Z is in the hour 23:00, not 00:00.
        let ours = SessionContext::new();
        register(&ours);
        let got = run(ours, sql("hour")).await;
        assert!(got.contains("1969-12-31T23:00:00Z"), "{got}");
        assert!(got.contains("2026-11-21T10:00:00Z"), "{got}");
        assert!(got.contains("2026-11-21T11:00:00Z"), "{got}");
        // Another zone, whose day is not UTC's, goes to the built-in: the day starts at
        // midnight in Berlin, not at midnight UTC.
        let sql = "SELECT CAST(date_trunc('day', arrow_cast(arrow_cast(TIMESTAMP '2026-11-21T23:30:00Z', \
                   'Timestamp(Microsecond, Some(\"UTC\"))'), 'Timestamp(Microsecond, Some(\"Europe/Berlin\"))')) \
                   AS VARCHAR) AS v";
        let ctx = SessionContext::new();
        register(&ctx);
        let berlin = run(ctx, sql.into()).await;
        assert_eq!(berlin, run(SessionContext::new(), sql.into()).await);
        assert!(berlin.contains("2026-11-22T00:00:00+01:00"), "{berlin}");
    }

    /// `values` (a `VALUES` list of timestamps) as a table of UTC microsecond timestamps `t`.
    fn utc_table(values: &str) -> String {
        format!(
            "(SELECT arrow_cast(t, 'Timestamp(Microsecond, Some(\"UTC\"))') AS t FROM (VALUES {values}) AS x(t))"
        )
    }

    /// A session with the fast paths and the rewrites, as the embedded engine has them.
    fn ours() -> SessionContext {
        let ctx = SessionContext::new();
        register(&ctx);
        register_rewrites(&ctx);
        ctx
    }

    /// `sql`'s result in `ctx`, as a table.
    async fn run(ctx: SessionContext, sql: String) -> datafusion::error::Result<String> {
        let batches = ctx.sql(&sql).await?.collect().await?;
        Ok(arrow::util::pretty::pretty_format_batches(&batches)?.to_string())
    }

    /// `sql`'s plans in [`ours`].
    async fn explain(sql: String) -> String {
        run(ours(), format!("EXPLAIN {sql}")).await.unwrap()
    }

    /// `CAST(ts AS DATE)` through the rewrite gives arrow's dates (before 1970, at midnight, a
    /// microsecond before it, nulls) in a projection, a grouping and a join filter; a value
    /// chrono cannot represent is the cast's error; a comparison with a literal keeps the cast.
    #[tokio::test]
    async fn utc_date_casts_give_the_casts_dates_and_leave_prunable_comparisons() {
        let values = "(TIMESTAMP '2026-11-21T23:59:59.999999Z'), (TIMESTAMP '2026-11-22T00:00:00Z'), \
                      (TIMESTAMP '1969-12-31T23:30:00.5Z'), (TIMESTAMP '1900-02-28T00:00:00.000001Z'), \
                      (TIMESTAMP '1969-12-31T00:00:00Z'), (NULL)";
        let table = utc_table(values);
        let queries = [
            format!("SELECT t, CAST(t AS DATE) AS d FROM {table} ORDER BY t"),
            format!("SELECT CAST(t AS DATE) AS d, count(*) AS n FROM {table} GROUP BY CAST(t AS DATE) ORDER BY d"),
            format!(
                "SELECT a.t, b.d FROM {table} a JOIN (VALUES (DATE '2026-11-21'), (DATE '1969-12-31')) AS b(d) \
                 ON CAST(a.t AS DATE) >= b.d AND CAST(a.t AS DATE) <= b.d + 1 ORDER BY a.t, b.d"
            ),
        ];
        for q in &queries {
            let builtin = run(SessionContext::new(), q.clone()).await.unwrap();
            assert_eq!(run(ours(), q.clone()).await.unwrap(), builtin, "{q}");
            assert!(
                explain(q.clone()).await.contains(UtcDate::NAME),
                "not rewritten: {q}"
            );
        }
        let got = run(ours(), queries[0].clone()).await.unwrap();
        for (t, d) in [
            ("2026-11-21T23:59:59.999999Z", "2026-11-21"),
            ("2026-11-22T00:00:00Z", "2026-11-22"),
            ("1969-12-31T23:30:00.500Z", "1969-12-31"),
            ("1900-02-28T00:00:00.000001Z", "1900-02-28"),
        ] {
            assert!(
                got.lines()
                    .any(|l| l.contains(&format!("| {t} ")) && l.contains(&format!("| {d} "))),
                "{t} -> {d}:\n{got}"
            );
        }
        // Outside chrono's range: the cast's own error, not a made-up date.
        let huge = "SELECT CAST(arrow_cast(t, 'Timestamp(Microsecond, Some(\"UTC\"))') AS DATE) \
                    FROM (VALUES (9223372036854775807), (0)) AS x(t)";
        let builtin = run(SessionContext::new(), huge.into()).await.unwrap_err();
        let err = run(ours(), huge.into()).await.unwrap_err();
        assert!(err.to_string().contains("Cannot convert"), "{err}");
        assert_eq!(err.to_string(), builtin.to_string());
        // Another zone goes to the cast: its date is not UTC's.
        let berlin = format!(
            "SELECT CAST(arrow_cast(t, 'Timestamp(Microsecond, Some(\"Europe/Berlin\"))') AS DATE) AS d FROM {table} ORDER BY d"
        );
        assert_eq!(
            run(ours(), berlin.clone()).await.unwrap(),
            run(SessionContext::new(), berlin.clone()).await.unwrap()
        );
        assert!(!explain(berlin).await.contains(UtcDate::NAME));
        // A comparison with a literal keeps the cast, which Parquet statistics can prune by.
        for w in [
            "CAST(t AS DATE) = DATE '2026-11-21'",
            "CAST(t AS DATE) >= '2026-11-21'",
            "CAST(t AS DATE) BETWEEN '2026-11-21' AND '2026-11-22'",
            "CAST(t AS DATE) IN (DATE '2026-11-21', DATE '2026-11-22')",
        ] {
            let q = format!("SELECT count(*) FROM {table} WHERE {w}");
            assert!(
                !explain(q.clone()).await.contains(UtcDate::NAME),
                "rewritten: {w}"
            );
            assert_eq!(
                run(ours(), q.clone()).await.unwrap(),
                run(SessionContext::new(), q).await.unwrap()
            );
        }
    }

    /// `ts ± INTERVAL` through the rewrite gives arrow's times, in a projection and a join
    /// filter; an interval with months, another zone and a time past chrono's range go to arrow
    /// (the last with arrow's error); a comparison with a literal keeps its form.
    #[tokio::test]
    async fn utc_shifts_give_arrows_times_and_leave_the_rest_to_arrow() {
        let values =
            "(TIMESTAMP '2026-11-21T23:59:59.999999Z'), (TIMESTAMP '1969-12-31T23:58:00Z'), \
                      (TIMESTAMP '1900-02-28T00:00:00.000001Z'), (NULL)";
        let table = utc_table(values);
        let rewritten = [
            format!(
                "SELECT t, t + INTERVAL '5 minutes' AS a, t - INTERVAL '1 day 2 hours' AS b, \
                 t + INTERVAL '-3 days 0.000001 seconds' AS c FROM {table} ORDER BY t"
            ),
            format!(
                "SELECT a.t, b.t AS u FROM {table} a JOIN {table} b \
                 ON b.t >= a.t - INTERVAL '5 minutes' AND b.t <= a.t + INTERVAL '1 minute' ORDER BY a.t, b.t"
            ),
        ];
        for q in &rewritten {
            let got = run(ours(), q.clone()).await.unwrap();
            assert_eq!(
                got,
                run(SessionContext::new(), q.clone()).await.unwrap(),
                "{q}"
            );
            let plan = explain(q.clone()).await;
            assert!(
                plan.contains(UtcShift::PLUS) && plan.contains(UtcShift::MINUS),
                "{q}\n{plan}"
            );
        }
        let got = run(ours(), rewritten[0].clone()).await.unwrap();
        assert!(got.contains("2026-11-22T00:04:59.999999Z"), "{got}");
        assert!(got.contains("1969-12-30T21:58:00Z"), "{got}");
        // Months, another zone: arrow's arithmetic, not rewritten.
        for q in [
            format!("SELECT t + INTERVAL '1 month' AS a FROM {table} ORDER BY a"),
            format!(
                "SELECT arrow_cast(t, 'Timestamp(Microsecond, Some(\"Europe/Berlin\"))') + INTERVAL '1 day' AS a \
                 FROM {table} ORDER BY a"
            ),
        ] {
            assert_eq!(
                run(ours(), q.clone()).await.unwrap(),
                run(SessionContext::new(), q.clone()).await.unwrap()
            );
            let plan = explain(q.clone()).await;
            assert!(!plan.contains(UtcShift::PLUS), "{q}\n{plan}");
        }
        // Past chrono's range: arrow's error.
        let max = chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_micros();
        let q = format!(
            "SELECT arrow_cast(t, 'Timestamp(Microsecond, Some(\"UTC\"))') + INTERVAL '1 day' \
             FROM (VALUES ({max}), (0)) AS x(t)"
        );
        let builtin = run(SessionContext::new(), q.clone()).await.unwrap_err();
        let err = run(ours(), q.clone()).await.unwrap_err();
        assert_eq!(err.to_string(), builtin.to_string());
        assert!(explain(q).await.contains(UtcShift::PLUS));
        // A comparison with a literal keeps its form.
        let q = format!("SELECT count(*) FROM {table} WHERE t - INTERVAL '1 hour' >= TIMESTAMP '2026-01-01T00:00:00Z'");
        assert!(!explain(q.clone()).await.contains(UtcShift::MINUS));
        assert_eq!(
            run(ours(), q.clone()).await.unwrap(),
            run(SessionContext::new(), q).await.unwrap()
        );
    }

    /// The delimited-list LIKE through the rewrite gives LIKE's answers: an entry, a prefix or a
    /// part of one (not an entry), an item spanning entries (found, as LIKE finds it, also where
    /// an earlier partial match overlaps it), empty lists and items, items LIKE reads as
    /// patterns, NULLs, in a projection and a join filter, with a view string column; other
    /// forms (another delimiter on one side, ILIKE) are left to LIKE.
    #[tokio::test]
    async fn delimited_list_likes_give_likes_answers() {
        let rows = "('pseudonymised;public', 'public'), ('pseudonymised;public', 'pseudo'), \
                    ('unrestricted', 'restricted'), ('restricted', 'restricted'), \
                    ('xa;a;a', 'a;a'), ('', ''), ('a;;b', ''), ('a', ''), ('', 'a'), \
                    ('public', 'p_blic'), ('public;x', 'pub%'), ('a\\b', 'a\\b'), \
                    ('pu_lic', 'pu\\_lic'), (NULL, 'a'), ('a', NULL)";
        let table =
            format!("(SELECT l, arrow_cast(i, 'Utf8View') AS i FROM (VALUES {rows}) AS x(l, i))");
        let rewritten = [
            format!(
                "SELECT l, i, ';' || l || ';' LIKE '%;' || i || ';%' AS has, \
                 ';' || l || ';' NOT LIKE '%;' || i || ';%' AS lacks FROM {table} ORDER BY l, i"
            ),
            format!(
                "SELECT a.l, b.i FROM {table} a JOIN {table} b ON a.l IS NOT NULL \
                 AND ', ' || a.l || ', ' NOT LIKE '%, ' || b.i || ', %' ORDER BY a.l, b.i"
            ),
        ];
        for q in &rewritten {
            let got = run(ours(), q.clone()).await.unwrap();
            assert_eq!(
                got,
                run(SessionContext::new(), q.clone()).await.unwrap(),
                "{q}"
            );
            let plan = explain(q.clone()).await;
            assert!(plan.contains(DelimitedItem::LACKS), "{q}\n{plan}");
        }
        let got = run(ours(), rewritten[0].clone()).await.unwrap();
        for (l, i, has) in [
            ("pseudonymised;public", "public", "true"),
            ("pseudonymised;public", "pseudo", "false"),
            ("unrestricted", "restricted", "false"),
            ("xa;a;a", "a;a", "true"),
            ("public", "p_blic", "true"),
            ("a;;b", "", "true"),
            ("a", "", "false"),
        ] {
            let row = format!("| {l:<20} | {i:<10} | {has:<5} |");
            assert!(got.lines().any(|r| r.starts_with(&row)), "{row}\n{got}");
        }
        assert!(explain(rewritten[0].clone())
            .await
            .contains(DelimitedItem::HAS));
        for q in [
            format!("SELECT ';' || l || ',' LIKE '%;' || i || ';%' AS x FROM {table} ORDER BY x"),
            format!("SELECT ';' || l || ';' LIKE '%' || i || ';%' AS x FROM {table} ORDER BY x"),
            format!("SELECT ';' || l || ';' ILIKE '%;' || i || ';%' AS x FROM {table} ORDER BY x"),
            format!("SELECT '%' || l || '%' LIKE '%%' || i || '%%' AS x FROM {table} ORDER BY x"),
        ] {
            let plan = explain(q.clone()).await;
            assert!(!plan.contains(DelimitedItem::HAS), "{q}\n{plan}");
            assert_eq!(
                run(ours(), q.clone()).await.unwrap(),
                run(SessionContext::new(), q).await.unwrap()
            );
        }
    }
}
