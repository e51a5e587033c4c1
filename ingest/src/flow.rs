//! Network flow records in three formats, normalised to one row: flowaudit's own JSON, goflow2's
//! NetFlow/IPFIX/sFlow JSON, and Zeek `conn.log` JSON. The format of each message is recognised
//! from its fields; docs/events.md gives the mapping.
use std::borrow::Cow;
use std::net::IpAddr;

use serde::Deserialize;

use crate::decode::{self, Reject, RejectCode, Scalar};

/// The accepted flow formats, as written to the `source_format` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowFormat {
    Flowaudit,
    Goflow2,
    Zeek,
}

impl FlowFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flowaudit => "flowaudit",
            Self::Goflow2 => "goflow2",
            Self::Zeek => "zeek",
        }
    }
}

#[derive(Deserialize)]
struct Raw<'a> {
    // flowaudit's own format (ts is shared with Zeek)
    #[serde(borrow, default)]
    ts: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    ts_end: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    src_ip: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    dst_ip: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    protocol: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    exporter: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    flow_id: Option<Scalar<'a>>,
    // shared by flowaudit and goflow2
    #[serde(borrow, default)]
    src_port: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    dst_port: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    bytes: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    packets: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    sequence_num: Option<Scalar<'a>>,
    // goflow2
    #[serde(borrow, default, rename = "type")]
    flow_type: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    time_received_ns: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    time_flow_start_ns: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    time_flow_end_ns: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    sampler_address: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    src_addr: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    dst_addr: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    dst_as: Option<Scalar<'a>>,
    // goflow2 and Zeek
    #[serde(borrow, default)]
    proto: Option<Scalar<'a>>,
    // Zeek conn.log
    #[serde(borrow, default)]
    uid: Option<Scalar<'a>>,
    #[serde(borrow, default, rename = "id.orig_h")]
    orig_h: Option<Scalar<'a>>,
    #[serde(borrow, default, rename = "id.orig_p")]
    orig_p: Option<Scalar<'a>>,
    #[serde(borrow, default, rename = "id.resp_h")]
    resp_h: Option<Scalar<'a>>,
    #[serde(borrow, default, rename = "id.resp_p")]
    resp_p: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    orig_bytes: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    orig_pkts: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    duration: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    conn_state: Option<Scalar<'a>>,
    #[serde(borrow, default, rename = "_system_name")]
    system_name: Option<Scalar<'a>>,
    #[serde(borrow, default, rename = "_node_name")]
    node_name: Option<Scalar<'a>>,
}

/// A validated, normalised flow record (before enrichment). Direction is src → dst and `bytes`
/// counts the bytes sent in that direction (for Zeek, the originator's bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct Flow<'a> {
    /// Flow start, microseconds since the epoch (UTC).
    pub ts_us: i64,
    /// Flow end, when the format gives it.
    pub ts_end_us: Option<i64>,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub src_port: Option<i32>,
    pub dst_port: Option<i32>,
    /// Lowercase protocol name (`tcp`, `udp`, `icmp`, …) or the IANA number as text.
    pub protocol: Cow<'a, str>,
    pub bytes: i64,
    pub packets: Option<i64>,
    /// Who reported the flow: flowaudit `exporter`, goflow2 `sampler_address`, Zeek `_system_name`.
    pub exporter: Option<Cow<'a, str>>,
    /// The exporter's sequence number (goflow2 `sequence_num`), to detect lost telemetry.
    pub sequence_num: Option<i64>,
    pub format: FlowFormat,
    /// goflow2 `type` (NETFLOW_V5, NETFLOW_V9, IPFIX, SFLOW_5).
    pub flow_type: Option<Cow<'a, str>>,
    /// flowaudit `flow_id` or Zeek `uid`.
    pub flow_id: Option<Cow<'a, str>>,
    /// Zeek `conn_state`.
    pub conn_state: Option<Cow<'a, str>>,
    /// ASN of the destination as the exporter reported it (goflow2 `dst_as`, 0 = unknown).
    pub exporter_dst_asn: Option<i64>,
}

/// Decode, recognise and normalise one flow record.
pub fn decode(raw: &[u8]) -> Result<Flow<'_>, Reject> {
    let r: Raw = decode::object(raw)?;
    if r.orig_h.is_some() || r.resp_h.is_some() || r.uid.is_some() {
        zeek(r)
    } else if r.src_addr.is_some() || r.sampler_address.is_some() || r.time_received_ns.is_some() {
        goflow2(r)
    } else if r.src_ip.is_some() || r.dst_ip.is_some() {
        flowaudit(r)
    } else {
        Err(Reject::new(
            RejectCode::UnknownFormat,
            None,
            "not a recognised flow record: expected flowaudit (src_ip, dst_ip), goflow2 (src_addr, \
             sampler_address) or Zeek conn.log (id.orig_h, id.resp_h) fields",
        ))
    }
}

const I64_MAX: i64 = i64::MAX;

fn flowaudit(r: Raw<'_>) -> Result<Flow<'_>, Reject> {
    let ts_us = decode::req_rfc3339(("ts", &r.ts))?;
    let ts_end_us = decode::opt_str(("ts_end", &r.ts_end))?
        .map(|s| decode::parse_rfc3339("ts_end", &s))
        .transpose()?;
    Ok(Flow {
        ts_us,
        ts_end_us,
        src_ip: decode::req_ip(("src_ip", &r.src_ip))?,
        dst_ip: decode::req_ip(("dst_ip", &r.dst_ip))?,
        src_port: decode::opt_port(("src_port", &r.src_port))?,
        dst_port: decode::opt_port(("dst_port", &r.dst_port))?,
        protocol: protocol(("protocol", &r.protocol))?,
        bytes: decode::req_int(("bytes", &r.bytes), 0, I64_MAX)?,
        packets: decode::opt_int(("packets", &r.packets), 0, I64_MAX)?,
        exporter: Some(decode::req_str(("exporter", &r.exporter))?),
        sequence_num: decode::opt_int(("sequence_num", &r.sequence_num), 0, I64_MAX)?,
        format: FlowFormat::Flowaudit,
        flow_type: None,
        flow_id: decode::opt_str(("flow_id", &r.flow_id))?,
        conn_state: None,
        exporter_dst_asn: None,
    })
}

/// A goflow2 `*_ns` time: integer nanoseconds, or an RFC 3339 string (goflow2 can format either).
fn ns_time(field: decode::Field<'_, '_>) -> Result<Option<i64>, Reject> {
    match field.1 {
        None => Ok(None),
        Some(Scalar::Str(s)) => decode::parse_rfc3339(field.0, s).map(Some),
        Some(_) => {
            let ns = decode::opt_int(field, 0, I64_MAX)?.unwrap_or(0);
            if ns == 0 {
                Ok(None) // goflow2 writes 0 when the exporter did not send the time
            } else {
                decode::check_time(field.0, ns / 1000).map(Some)
            }
        }
    }
}

fn goflow2(r: Raw<'_>) -> Result<Flow<'_>, Reject> {
    let received = ns_time(("time_received_ns", &r.time_received_ns))?;
    let start = ns_time(("time_flow_start_ns", &r.time_flow_start_ns))?;
    let end = ns_time(("time_flow_end_ns", &r.time_flow_end_ns))?;
    let ts_us = start.or(received).ok_or_else(|| {
        Reject::new(
            RejectCode::MissingField,
            Some("time_flow_start_ns"),
            "neither time_flow_start_ns nor time_received_ns is set",
        )
    })?;
    let dst_as = decode::opt_int(("dst_as", &r.dst_as), 0, u32::MAX as i64)?;
    Ok(Flow {
        ts_us,
        ts_end_us: end,
        src_ip: decode::req_ip(("src_addr", &r.src_addr))?,
        dst_ip: decode::req_ip(("dst_addr", &r.dst_addr))?,
        src_port: decode::opt_port(("src_port", &r.src_port))?,
        dst_port: decode::opt_port(("dst_port", &r.dst_port))?,
        protocol: protocol(("proto", &r.proto))?,
        bytes: decode::req_int(("bytes", &r.bytes), 0, I64_MAX)?,
        packets: decode::opt_int(("packets", &r.packets), 0, I64_MAX)?,
        exporter: Some(decode::req_str(("sampler_address", &r.sampler_address))?),
        sequence_num: decode::opt_int(("sequence_num", &r.sequence_num), 0, I64_MAX)?,
        format: FlowFormat::Goflow2,
        flow_type: decode::opt_str(("type", &r.flow_type)).or_else(|_| {
            // goflow2's protobuf-JSON writes the type as an enum number
            decode::opt_int(("type", &r.flow_type), 0, 255)
                .map(|n| n.map(|n| Cow::Owned(n.to_string())))
        })?,
        flow_id: None,
        conn_state: None,
        exporter_dst_asn: dst_as.filter(|a| *a > 0),
    })
}

fn zeek(r: Raw<'_>) -> Result<Flow<'_>, Reject> {
    // Zeek writes `ts` as epoch seconds (float) by default, or ISO 8601 with JSON::TS_ISO8601.
    let ts_us = match &r.ts {
        None => {
            return Err(Reject::new(
                RejectCode::MissingField,
                Some("ts"),
                "required field is missing or null",
            ))
        }
        Some(Scalar::Str(s)) => decode::parse_rfc3339("ts", s)?,
        Some(Scalar::Int(i)) => decode::check_time("ts", i.saturating_mul(1_000_000))?,
        Some(Scalar::Float(f)) if f.is_finite() && f.abs() < 1e13 => {
            decode::check_time("ts", (f * 1e6).round() as i64)?
        }
        Some(Scalar::Float(f)) => {
            return Err(Reject::new(
                RejectCode::TimestampOutOfRange,
                Some("ts"),
                format!("{f} seconds is out of range"),
            ))
        }
        Some(other) => {
            return Err(Reject::new(
                RejectCode::WrongType,
                Some("ts"),
                format!(
                    "expected epoch seconds or an ISO 8601 string, found {}",
                    other.describe()
                ),
            ))
        }
    };
    let duration_us = match &r.duration {
        None => None,
        Some(Scalar::Int(i)) if *i >= 0 => Some(i.saturating_mul(1_000_000)),
        Some(Scalar::Float(f)) if f.is_finite() && *f >= 0.0 && *f < 1e9 => {
            Some((f * 1e6).round() as i64)
        }
        Some(other) => {
            return Err(Reject::new(
                RejectCode::InvalidValue,
                Some("duration"),
                format!("expected non-negative seconds, found {}", other.describe()),
            ))
        }
    };
    // The end is a time like the start: a duration that puts it past the accepted range (or
    // past i64) is out of range, not saturated.
    let ts_end_us = match duration_us {
        None => None,
        Some(d) => match d.checked_add(ts_us) {
            Some(end) if decode::check_time("duration", end).is_ok() => Some(end),
            _ => {
                return Err(Reject::new(
                    RejectCode::TimestampOutOfRange,
                    Some("duration"),
                    format!("{} s after ts ends the flow past 2100-01-01", d / 1_000_000),
                ))
            }
        },
    };
    let exporter = match decode::opt_str(("_system_name", &r.system_name))? {
        Some(s) => Some(s),
        None => decode::opt_str(("_node_name", &r.node_name))?,
    };
    Ok(Flow {
        ts_us,
        ts_end_us,
        src_ip: decode::req_ip(("id.orig_h", &r.orig_h))?,
        dst_ip: decode::req_ip(("id.resp_h", &r.resp_h))?,
        src_port: decode::opt_port(("id.orig_p", &r.orig_p))?,
        dst_port: decode::opt_port(("id.resp_p", &r.resp_p))?,
        protocol: protocol(("proto", &r.proto))?,
        // Zeek omits orig_bytes for connections that carried none (e.g. conn_state S0).
        bytes: decode::opt_int(("orig_bytes", &r.orig_bytes), 0, I64_MAX)?.unwrap_or(0),
        packets: decode::opt_int(("orig_pkts", &r.orig_pkts), 0, I64_MAX)?,
        exporter,
        sequence_num: None,
        format: FlowFormat::Zeek,
        flow_type: None,
        flow_id: Some(decode::req_str(("uid", &r.uid))?),
        conn_state: decode::opt_str(("conn_state", &r.conn_state))?,
        exporter_dst_asn: None,
    })
}

/// A protocol as a lowercase name: from a name (`"TCP"`, `"udp"`) or an IANA number (6, 17).
fn protocol<'a>(field: decode::Field<'_, 'a>) -> Result<Cow<'a, str>, Reject> {
    match field.1 {
        Some(Scalar::Str(_)) => {
            let s = decode::req_str(field)?;
            if s.len() > 16 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(Reject::new(
                    RejectCode::InvalidValue,
                    Some(field.0),
                    format!("\"{s}\" is not a protocol name"),
                ));
            }
            Ok(if s.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(s.to_ascii_lowercase())
            } else {
                s
            })
        }
        Some(_) => {
            let n = decode::req_int(field, 0, 255)?;
            Ok(Cow::Borrowed(match n {
                1 => "icmp",
                6 => "tcp",
                17 => "udp",
                47 => "gre",
                50 => "esp",
                58 => "ipv6-icmp",
                132 => "sctp",
                _ => return Ok(Cow::Owned(n.to_string())),
            }))
        }
        None => Err(Reject::new(
            RejectCode::MissingField,
            Some(field.0),
            "required field is missing or null",
        )),
    }
}
