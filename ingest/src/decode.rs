//! Shared decoding: a borrowed JSON scalar, precise rejection reasons, and validated field
//! accessors. Every bad message becomes a [`Reject`] naming what was wrong and in which field; the
//! consumer writes it to the quarantine table with the raw bytes.
use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, NaiveDate};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Earliest accepted event time (inclusive): 1970-01-01T00:00:00Z, in microseconds.
pub const MIN_EVENT_TIME_US: i64 = 0;
/// Latest accepted event time (exclusive): 2100-01-01T00:00:00Z, in microseconds.
pub const MAX_EVENT_TIME_US: i64 = 4_102_444_800_000_000;
/// Longest accepted string value, in bytes.
pub const MAX_STRING_BYTES: usize = 1024;

/// Why a message was quarantined: a stable code for counting, plus the field and a detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectCode {
    /// The message had no payload.
    Empty,
    /// The payload exceeds `max_message_bytes`.
    Oversize,
    /// The payload is not valid UTF-8.
    InvalidUtf8,
    /// The JSON ends before the value is complete.
    TruncatedJson,
    /// The payload is not JSON.
    NotJson,
    /// The JSON is valid but not an object.
    NotObject,
    /// A required field is missing or null.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// A field has the right type but an invalid value.
    InvalidValue,
    /// A timestamp could not be parsed.
    BadTimestamp,
    /// A timestamp parsed but lies outside the accepted range.
    TimestampOutOfRange,
    /// An IP address could not be parsed.
    BadIp,
    /// A flow record in none of the accepted formats.
    UnknownFormat,
    /// The Kafka message timestamp (set by the producer or the broker) is not a time in
    /// milliseconds in the accepted range, e.g. a producer that sets nanoseconds.
    BadKafkaTimestamp,
}

impl RejectCode {
    /// The code as written to the quarantine table's `reason_code` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Oversize => "oversize",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::TruncatedJson => "truncated_json",
            Self::NotJson => "not_json",
            Self::NotObject => "not_object",
            Self::MissingField => "missing_field",
            Self::WrongType => "wrong_type",
            Self::InvalidValue => "invalid_value",
            Self::BadTimestamp => "bad_timestamp",
            Self::TimestampOutOfRange => "timestamp_out_of_range",
            Self::BadIp => "bad_ip",
            Self::UnknownFormat => "unknown_format",
            Self::BadKafkaTimestamp => "bad_kafka_timestamp",
        }
    }
}

/// A rejected message: the reason it goes to quarantine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub code: RejectCode,
    /// The offending field, when one field is to blame.
    pub field: Option<&'static str>,
    pub detail: String,
}

impl Reject {
    pub fn new(code: RejectCode, field: Option<&'static str>, detail: impl Into<String>) -> Self {
        Self {
            code,
            field,
            detail: detail.into(),
        }
    }
    fn field(code: RejectCode, field: &'static str, detail: impl Into<String>) -> Self {
        Self::new(code, Some(field), detail)
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(field) => write!(
                f,
                "{}: field `{}`: {}",
                self.code.as_str(),
                field,
                self.detail
            ),
            None => write!(f, "{}: {}", self.code.as_str(), self.detail),
        }
    }
}

/// Decode a JSON object into `T`. Anything else (an array, which serde would map onto the struct
/// positionally, a scalar, or not JSON at all) is a precise rejection.
pub fn object<'a, T: Deserialize<'a>>(raw: &'a [u8]) -> Result<T, Reject> {
    let first = raw.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(match serde_json::from_slice::<IgnoredAny>(raw) {
            Ok(_) => {
                let kind = match first {
                    Some(b'[') => "an array",
                    Some(b'"') => "a string",
                    Some(b'n') => "null",
                    Some(b't' | b'f') => "a boolean",
                    _ => "a number",
                };
                Reject::new(
                    RejectCode::NotObject,
                    None,
                    format!("expected a JSON object, found {kind}"),
                )
            }
            Err(e) => json_reject(raw, e),
        });
    }
    serde_json::from_slice(raw).map_err(|e| json_reject(raw, e))
}

/// Read `raw` as a flat JSON object, calling `field(key, value)` for each member in order, and
/// give up (`None`) on anything this reader does not handle exactly as serde_json does: a string
/// with an escape or a control character, a number that is not a non-negative integer of at most
/// 20 digits (a fraction, an exponent, a sign, a leading zero, above `u64::MAX`), an array or an
/// object as a value, invalid UTF-8, or any syntax error. `field` returns `false` to give up too
/// (a duplicate key, which serde rejects). A `null` value is `None`, as serde gives an `Option`.
///
/// This is the fast path of the flow decoder (issue 15): the caller decodes with serde whenever it
/// returns `None`, so every rejection keeps serde's precise reason, and on what it accepts it
/// gives what serde gives (`Scalar::Int` for integers up to `i64::MAX`, `Scalar::UInt` above).
pub fn flat_object<'a>(
    raw: &'a [u8],
    mut field: impl FnMut(&'a str, Option<Scalar<'a>>) -> bool,
) -> Option<()> {
    let text = std::str::from_utf8(raw).ok()?;
    let s = raw;
    let mut i = 0usize;
    let ws = |i: &mut usize| {
        while matches!(s.get(*i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            *i += 1;
        }
    };
    // A string at `i` (its opening quote): its contents, without escapes.
    let string = |i: &mut usize| -> Option<&'a str> {
        let start = *i + 1;
        let mut j = start;
        loop {
            match *s.get(j)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => j += 1,
            }
        }
        *i = j + 1;
        // Both ends are ASCII quotes, so both are character boundaries.
        text.get(start..j)
    };
    ws(&mut i);
    if s.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    ws(&mut i);
    if s.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if s.get(i) != Some(&b'"') {
                return None;
            }
            let key = string(&mut i)?;
            ws(&mut i);
            if s.get(i) != Some(&b':') {
                return None;
            }
            i += 1;
            ws(&mut i);
            let value = match *s.get(i)? {
                b'"' => Some(Scalar::Str(Cow::Borrowed(string(&mut i)?))),
                b'0'..=b'9' => {
                    let start = i;
                    let mut v: u64 = 0;
                    while let Some(d @ b'0'..=b'9') = s.get(i) {
                        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
                        i += 1;
                    }
                    // JSON has no leading zeros; a fraction or an exponent makes a float.
                    if (s[start] == b'0' && i - start > 1)
                        || matches!(s.get(i), Some(b'.' | b'e' | b'E'))
                    {
                        return None;
                    }
                    Some(match i64::try_from(v) {
                        Ok(v) => Scalar::Int(v),
                        Err(_) => Scalar::UInt(v),
                    })
                }
                b't' if s[i..].starts_with(b"true") => {
                    i += 4;
                    Some(Scalar::Bool(true))
                }
                b'f' if s[i..].starts_with(b"false") => {
                    i += 5;
                    Some(Scalar::Bool(false))
                }
                b'n' if s[i..].starts_with(b"null") => {
                    i += 4;
                    None
                }
                _ => return None,
            };
            if !field(key, value) {
                return None;
            }
            ws(&mut i);
            match s.get(i) {
                Some(b',') => {
                    i += 1;
                    ws(&mut i);
                }
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    ws(&mut i);
    (i == s.len()).then_some(())
}

/// Turn a serde_json error on `raw` into a precise rejection.
pub fn json_reject(raw: &[u8], err: serde_json::Error) -> Reject {
    if raw.is_empty() {
        return Reject::new(RejectCode::Empty, None, "message has no payload");
    }
    if let Err(e) = std::str::from_utf8(raw) {
        return Reject::new(
            RejectCode::InvalidUtf8,
            None,
            format!(
                "payload is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        );
    }
    use serde_json::error::Category;
    match err.classify() {
        Category::Eof => Reject::new(
            RejectCode::TruncatedJson,
            None,
            format!("JSON ends early: {err}"),
        ),
        Category::Syntax | Category::Io => {
            Reject::new(RejectCode::NotJson, None, format!("not valid JSON: {err}"))
        }
        Category::Data => {
            let msg = err.to_string();
            if msg.starts_with("invalid type") {
                Reject::new(
                    RejectCode::NotObject,
                    None,
                    format!("expected a JSON object: {msg}"),
                )
            } else {
                Reject::new(RejectCode::InvalidValue, None, msg)
            }
        }
    }
}

/// Any JSON value, borrowed where possible; containers are skipped and only their kind kept.
/// Decoding into structs of `Option<Scalar>` is fast (no intermediate tree) and lets validation
/// say precisely which field had which wrong type.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Array,
    Object,
}

impl Scalar<'_> {
    /// A short description for error messages: the type and, for scalars, the value.
    pub fn describe(&self) -> String {
        match self {
            Scalar::Str(s) if s.len() > 40 => {
                format!("string \"{}…\"", s.chars().take(40).collect::<String>())
            }
            Scalar::Str(s) => format!("string \"{s}\""),
            Scalar::Int(i) => format!("number {i}"),
            Scalar::UInt(u) => format!("number {u}"),
            Scalar::Float(f) => format!("number {f}"),
            Scalar::Bool(b) => format!("boolean {b}"),
            Scalar::Array => "an array".into(),
            Scalar::Object => "an object".into(),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(match i64::try_from(v) {
                    Ok(i) => Scalar::Int(i),
                    Err(_) => Scalar::UInt(v),
                })
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Array)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Object)
            }
        }
        d.deserialize_any(V)
    }
}

/// A field of a decoded record: its name and value (`None` when missing or null).
pub type Field<'f, 'a> = (&'static str, &'f Option<Scalar<'a>>);

fn missing(name: &'static str) -> Reject {
    Reject::field(
        RejectCode::MissingField,
        name,
        "required field is missing or null",
    )
}

fn wrong(name: &'static str, expected: &str, got: &Scalar) -> Reject {
    Reject::field(
        RejectCode::WrongType,
        name,
        format!("expected {expected}, found {}", got.describe()),
    )
}

/// A required, non-empty string of at most [`MAX_STRING_BYTES`].
pub fn req_str<'a>((name, v): Field<'_, 'a>) -> Result<Cow<'a, str>, Reject> {
    opt_str((name, v))?.ok_or_else(|| missing(name))
}

/// An optional string; if present it must be non-empty and at most [`MAX_STRING_BYTES`].
pub fn opt_str<'a>((name, v): Field<'_, 'a>) -> Result<Option<Cow<'a, str>>, Reject> {
    match v {
        None => Ok(None),
        Some(Scalar::Str(s)) => {
            if s.trim().is_empty() {
                Err(Reject::field(
                    RejectCode::InvalidValue,
                    name,
                    "empty string",
                ))
            } else if s.len() > MAX_STRING_BYTES {
                Err(Reject::field(
                    RejectCode::InvalidValue,
                    name,
                    format!(
                        "string of {} bytes exceeds the limit of {MAX_STRING_BYTES}",
                        s.len()
                    ),
                ))
            } else {
                Ok(Some(s.clone()))
            }
        }
        Some(other) => Err(wrong(name, "a string", other)),
    }
}

/// One of a fixed set of lowercase strings; returns the canonical `&'static str`.
pub fn req_enum(field: Field<'_, '_>, allowed: &[&'static str]) -> Result<&'static str, Reject> {
    let s = req_str(field)?;
    allowed.iter().copied().find(|a| *a == s).ok_or_else(|| {
        Reject::field(
            RejectCode::InvalidValue,
            field.0,
            format!("\"{s}\" is not one of {}", allowed.join(", ")),
        )
    })
}

/// An optional integer in `[min, max]`. Floats, strings and out-of-range numbers are rejected.
pub fn opt_int((name, v): Field<'_, '_>, min: i64, max: i64) -> Result<Option<i64>, Reject> {
    let i = match v {
        None => return Ok(None),
        Some(Scalar::Int(i)) => *i,
        Some(s @ Scalar::UInt(_)) => {
            return Err(Reject::field(
                RejectCode::InvalidValue,
                name,
                format!("{} is out of range", s.describe()),
            ))
        }
        Some(s @ Scalar::Float(f)) if f.fract() != 0.0 || !f.is_finite() => {
            return Err(wrong(name, "an integer", s))
        }
        Some(s @ Scalar::Float(_)) => return Err(wrong(name, "an integer (not a float)", s)),
        Some(other) => return Err(wrong(name, "an integer", other)),
    };
    if i < min || i > max {
        return Err(Reject::field(
            RejectCode::InvalidValue,
            name,
            format!("{i} is outside [{min}, {max}]"),
        ));
    }
    Ok(Some(i))
}

/// A required integer in `[min, max]`.
pub fn req_int(field: Field<'_, '_>, min: i64, max: i64) -> Result<i64, Reject> {
    opt_int(field, min, max)?.ok_or_else(|| missing(field.0))
}

/// An optional TCP/UDP port.
pub fn opt_port(field: Field<'_, '_>) -> Result<Option<i32>, Reject> {
    Ok(opt_int(field, 0, 65535)?.map(|p| p as i32))
}

/// A required ISO 3166-1 alpha-2 country code; lowercase is accepted and upper-cased.
pub fn req_country(field: Field<'_, '_>) -> Result<String, Reject> {
    let s = req_str(field)?;
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(s.to_ascii_uppercase())
    } else {
        Err(Reject::field(
            RejectCode::InvalidValue,
            field.0,
            format!("\"{s}\" is not an ISO 3166-1 alpha-2 country code"),
        ))
    }
}

/// Parse an IP address (IPv4 or IPv6, no port, no zone).
pub fn parse_ip(name: &'static str, s: &str) -> Result<IpAddr, Reject> {
    s.parse::<IpAddr>().map_err(|_| {
        Reject::field(
            RejectCode::BadIp,
            name,
            format!("\"{s}\" is not an IPv4 or IPv6 address"),
        )
    })
}

/// A required IP address.
pub fn req_ip(field: Field<'_, '_>) -> Result<IpAddr, Reject> {
    let s = req_str(field)?;
    parse_ip(field.0, &s)
}

/// An optional IP address.
pub fn opt_ip(field: Field<'_, '_>) -> Result<Option<IpAddr>, Reject> {
    opt_str(field)?.map(|s| parse_ip(field.0, &s)).transpose()
}

/// Check an event time (microseconds since the epoch) lies in the accepted range.
pub fn check_time(name: &'static str, us: i64) -> Result<i64, Reject> {
    if (MIN_EVENT_TIME_US..MAX_EVENT_TIME_US).contains(&us) {
        Ok(us)
    } else {
        Err(Reject::field(
            RejectCode::TimestampOutOfRange,
            name,
            format!(
                "{} is outside the accepted range [1970-01-01, 2100-01-01)",
                fmt_us(us)
            ),
        ))
    }
}

/// Parse an RFC 3339 timestamp into microseconds since the epoch, range-checked.
pub fn parse_rfc3339(name: &'static str, s: &str) -> Result<i64, Reject> {
    match DateTime::parse_from_rfc3339(s) {
        Ok(dt) => check_time(name, dt.timestamp_micros()),
        Err(e) => {
            // chrono rejects years outside 0..=9999 and some edge forms; keep the reason precise.
            Err(Reject::field(
                RejectCode::BadTimestamp,
                name,
                format!("\"{s}\" is not an RFC 3339 timestamp ({e})"),
            ))
        }
    }
}

/// A required RFC 3339 timestamp string.
pub fn req_rfc3339(field: Field<'_, '_>) -> Result<i64, Reject> {
    let s = req_str(field)?;
    parse_rfc3339(field.0, &s)
}

/// Format microseconds since the epoch as RFC 3339 (UTC), or the raw number if unrepresentable.
pub fn fmt_us(us: i64) -> String {
    match DateTime::from_timestamp_micros(us) {
        Some(dt) => dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => format!("{us} µs since the epoch"),
    }
}

/// The UTC date and hour of a timestamp in microseconds, for Hive partitioning.
pub fn date_hour(us: i64) -> (NaiveDate, u8) {
    let dt = DateTime::from_timestamp_micros(us).unwrap_or_default();
    (dt.date_naive(), chrono::Timelike::hour(&dt) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_decodes_every_kind() {
        let v: Vec<Scalar> =
            serde_json::from_str(r#"["a", -1, 18446744073709551615, 1.5, true, [1], {"a":1}]"#)
                .unwrap();
        assert_eq!(v[0], Scalar::Str("a".into()));
        assert_eq!(v[1], Scalar::Int(-1));
        assert_eq!(v[2], Scalar::UInt(u64::MAX));
        assert_eq!(v[3], Scalar::Float(1.5));
        assert_eq!(v[4], Scalar::Bool(true));
        assert_eq!(v[5], Scalar::Array);
        assert_eq!(v[6], Scalar::Object);
    }

    #[test]
    fn timestamps_outside_range_are_rejected_with_the_field() {
        assert_eq!(
            parse_rfc3339("ts", "2026-11-21T10:00:00Z").unwrap(),
            1_795_255_200_000_000
        );
        let r = parse_rfc3339("ts", "9999-12-31T23:59:59Z").unwrap_err();
        assert_eq!(r.code, RejectCode::TimestampOutOfRange);
        assert_eq!(r.field, Some("ts"));
        let r = parse_rfc3339("ts", "0000-01-01T00:00:00Z").unwrap_err();
        assert_eq!(r.code, RejectCode::TimestampOutOfRange, "{r}");
        let r = parse_rfc3339("ts", "yesterday").unwrap_err();
        assert_eq!(r.code, RejectCode::BadTimestamp);
    }

    #[test]
    fn integers_reject_floats_strings_and_out_of_range() {
        let f = Some(Scalar::Float(1.5));
        assert_eq!(
            opt_int(("n", &f), 0, 10).unwrap_err().code,
            RejectCode::WrongType
        );
        let s = Some(Scalar::Str("3".into()));
        assert_eq!(
            opt_int(("n", &s), 0, 10).unwrap_err().code,
            RejectCode::WrongType
        );
        let big = Some(Scalar::Int(11));
        assert_eq!(
            opt_int(("n", &big), 0, 10).unwrap_err().code,
            RejectCode::InvalidValue
        );
        let ok = Some(Scalar::Int(10));
        assert_eq!(opt_int(("n", &ok), 0, 10).unwrap(), Some(10));
    }
}
