//! Faster paths of DataFusion built-in functions for the warehouse's column types, registered
//! under the built-ins' names; any other input goes to the built-in unchanged.
//!
//! - `date_trunc('hour' | 'day', ts)` of a UTC microsecond timestamp (every `ts` of the
//!   warehouse): DataFusion 55 truncates a timestamp with a time zone value by value through
//!   chrono's time-zone arithmetic (its arithmetic fast path is only for timestamps without one),
//!   about 130 ns a value; in UTC an hour and a day are fixed lengths, so this is one remainder
//!   per value. `volume_spike` truncates every allowed event of its seven days to the hour.
use std::sync::Arc;

use arrow::array::{Array, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, FieldRef, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};

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
            if let DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) = values.data_type() {
                if is_utc(tz) {
                    let ts = values
                        .as_any()
                        .downcast_ref::<TimestampMicrosecondArray>()
                        .expect("a microsecond timestamp array");
                    let out: TimestampMicrosecondArray = ts.unary(|v| v - v.rem_euclid(step));
                    return Ok(ColumnarValue::Array(Arc::new(
                        out.with_timezone(tz.clone()),
                    )));
                }
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
}
