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

#[derive(Deserialize, Default, Debug, PartialEq)]
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

impl<'a> Raw<'a> {
    /// The member `key` is read into, and its bit among the members seen; `None` for a key
    /// serde ignores. The keys are the struct's serde names (a test checks them against serde).
    fn slot(&mut self, key: &str) -> Option<(u64, &mut Option<Scalar<'a>>)> {
        Some(match key {
            "ts" => (1 << 0, &mut self.ts),
            "ts_end" => (1 << 1, &mut self.ts_end),
            "src_ip" => (1 << 2, &mut self.src_ip),
            "dst_ip" => (1 << 3, &mut self.dst_ip),
            "protocol" => (1 << 4, &mut self.protocol),
            "exporter" => (1 << 5, &mut self.exporter),
            "flow_id" => (1 << 6, &mut self.flow_id),
            "src_port" => (1 << 7, &mut self.src_port),
            "dst_port" => (1 << 8, &mut self.dst_port),
            "bytes" => (1 << 9, &mut self.bytes),
            "packets" => (1 << 10, &mut self.packets),
            "sequence_num" => (1 << 11, &mut self.sequence_num),
            "type" => (1 << 12, &mut self.flow_type),
            "time_received_ns" => (1 << 13, &mut self.time_received_ns),
            "time_flow_start_ns" => (1 << 14, &mut self.time_flow_start_ns),
            "time_flow_end_ns" => (1 << 15, &mut self.time_flow_end_ns),
            "sampler_address" => (1 << 16, &mut self.sampler_address),
            "src_addr" => (1 << 17, &mut self.src_addr),
            "dst_addr" => (1 << 18, &mut self.dst_addr),
            "dst_as" => (1 << 19, &mut self.dst_as),
            "proto" => (1 << 20, &mut self.proto),
            "uid" => (1 << 21, &mut self.uid),
            "id.orig_h" => (1 << 22, &mut self.orig_h),
            "id.orig_p" => (1 << 23, &mut self.orig_p),
            "id.resp_h" => (1 << 24, &mut self.resp_h),
            "id.resp_p" => (1 << 25, &mut self.resp_p),
            "orig_bytes" => (1 << 26, &mut self.orig_bytes),
            "orig_pkts" => (1 << 27, &mut self.orig_pkts),
            "duration" => (1 << 28, &mut self.duration),
            "conn_state" => (1 << 29, &mut self.conn_state),
            "_system_name" => (1 << 30, &mut self.system_name),
            "_node_name" => (1 << 31, &mut self.node_name),
            _ => return None,
        })
    }

    /// `raw` read by [`decode::flat_object`], the fast path: `None` where that reader gives up
    /// or a key repeats, and serde decodes instead.
    fn fast(raw: &'a [u8]) -> Option<Self> {
        let mut r = Raw::default();
        let mut seen = 0u64;
        decode::flat_object(raw, |key, value| match r.slot(key) {
            None => true,
            Some((bit, slot)) => {
                let first = seen & bit == 0;
                seen |= bit;
                *slot = value;
                first
            }
        })?;
        Some(r)
    }
}

/// Panics if the fast path reads `raw` otherwise than serde does (where it reads it at all): the
/// fuzz target's check ([`crate::fuzz::flows`]).
pub fn check_fast_path(raw: &[u8]) {
    if let Some(fast) = Raw::fast(raw) {
        match decode::object::<Raw>(raw) {
            Ok(slow) => assert_eq!(
                fast, slow,
                "the fast path and serde read {raw:?} differently"
            ),
            Err(e) => panic!("the fast path read {raw:?}, which serde rejects: {e}"),
        }
    }
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
    let r: Raw = match Raw::fast(raw) {
        Some(r) => r,
        None => decode::object(raw)?,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde gives for `raw`, the path every message took before the fast one.
    fn serde(raw: &[u8]) -> Result<Raw<'_>, Reject> {
        decode::object(raw)
    }

    /// Where the fast path reads `raw`, it reads what serde reads.
    fn agree(raw: &[u8]) -> bool {
        match Raw::fast(raw) {
            None => false,
            Some(fast) => {
                let slow = serde(raw).unwrap_or_else(|e| {
                    panic!(
                        "fast path accepted {:?}, serde: {e}",
                        String::from_utf8_lossy(raw)
                    )
                });
                assert_eq!(fast, slow, "{:?}", String::from_utf8_lossy(raw));
                true
            }
        }
    }

    const GOFLOW2: &str = r#"{"bytes":942154,"dst_addr":"10.20.99.248","dst_as":0,"dst_port":6379,"etype":"IPv4","in_if":1,"out_if":2,"packets":786,"proto":"TCP","sampler_address":"10.20.255.1","sampling_rate":0,"sequence_num":1001,"src_addr":"10.20.191.217","src_as":0,"src_port":43069,"time_flow_end_ns":1795219206098689000,"time_flow_start_ns":1795219200139451000,"time_received_ns":1795219207298689000,"type":"NETFLOW_V9"}"#;

    /// Every member the struct has, by its serde name, each with its own value: the fast path's
    /// key table is serde's.
    #[test]
    fn the_fast_path_reads_every_member_under_serdes_name() {
        let keys = [
            "ts",
            "ts_end",
            "src_ip",
            "dst_ip",
            "protocol",
            "exporter",
            "flow_id",
            "src_port",
            "dst_port",
            "bytes",
            "packets",
            "sequence_num",
            "type",
            "time_received_ns",
            "time_flow_start_ns",
            "time_flow_end_ns",
            "sampler_address",
            "src_addr",
            "dst_addr",
            "dst_as",
            "proto",
            "uid",
            "id.orig_h",
            "id.orig_p",
            "id.resp_h",
            "id.resp_p",
            "orig_bytes",
            "orig_pkts",
            "duration",
            "conn_state",
            "_system_name",
            "_node_name",
        ];
        let members: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                if i % 2 == 0 {
                    format!("\"{k}\":\"v{i}\"")
                } else {
                    format!("\"{k}\":{i}")
                }
            })
            .collect();
        let raw = format!("{{{}}}", members.join(","));
        let fast = Raw::fast(raw.as_bytes()).expect("fast path");
        assert_eq!(fast, serde(raw.as_bytes()).unwrap());
        assert_ne!(fast, Raw::default());
        // Each key on its own fills one member: none is missing from the table.
        for (i, k) in keys.iter().enumerate() {
            let raw = format!("{{\"{k}\":{i}}}");
            let fast = Raw::fast(raw.as_bytes()).expect("fast path");
            assert_ne!(fast, Raw::default(), "{k} is not in the fast path's table");
            assert_eq!(fast, serde(raw.as_bytes()).unwrap(), "{k}");
        }
    }

    /// The cases the fast path must leave to serde (whose rejection or reading it would get
    /// wrong), and those it reads.
    #[test]
    fn the_fast_path_gives_up_where_it_would_differ_from_serde() {
        let gives_up = [
            r#"{"src_addr":"10.0.0.1","src_addr":"10.0.0.2"}"#, // duplicate: serde rejects
            r#"{"bytes":null,"bytes":5}"#,                      // duplicate after a null
            r#"{"proto":"T\u0043P"}"#,                          // an escape
            r#"{"proto":"tab	in"}"#,                            // a control character
            r#"{"bytes":1.5}"#,
            r#"{"bytes":1e3}"#,
            r#"{"bytes":-1}"#,
            r#"{"bytes":-0}"#,
            r#"{"bytes":01}"#,
            r#"{"bytes":18446744073709551616}"#, // above u64: serde reads a float
            r#"{"tags":[1,2]}"#,
            r#"{"nested":{"a":1}}"#,
            r#"{"bytes":1,}"#,
            r#"{"bytes":1} x"#,
            r#"{"bytes":1}{}"#,
            r#"{"bytes" 1}"#,
            r#"{"bytes":tru}"#,
            r#"{"bytes":truex}"#,
            r#"{"bytes":1"#,
            "\u{c}{\"bytes\":1}",
            "[1]",
            "",
        ];
        for raw in gives_up {
            assert!(Raw::fast(raw.as_bytes()).is_none(), "read {raw:?}");
        }
        assert!(
            Raw::fast(b"{\"proto\":\"\xff\"}").is_none(),
            "invalid UTF-8"
        );
        let reads = [
            GOFLOW2,
            "{}",
            " \t\r\n{ \"bytes\" : 18446744073709551615 , \"proto\" : \"ü\" } \n",
            r#"{"bytes":9223372036854775807,"packets":9223372036854775808,"type":0}"#,
            r#"{"proto":null,"uid":true,"dst_as":false,"unknown":"x","other":null}"#,
            r#"{"ts":"2026-11-21T10:00:00Z","src_ip":"10.20.5.1","dst_ip":"31.10.0.1","bytes":0}"#,
        ];
        for raw in reads {
            assert!(agree(raw.as_bytes()), "gave up on {raw:?}");
        }
        let big = Raw::fast(reads[3].as_bytes()).unwrap();
        assert_eq!(big.bytes, Some(Scalar::Int(i64::MAX)));
        assert_eq!(big.packets, Some(Scalar::UInt(1 << 63)));
    }

    /// Every one-byte change, insertion and deletion of a goflow2 record, and random ones of
    /// several bytes: where the fast path reads the result, serde reads the same.
    #[test]
    fn mutated_records_read_by_the_fast_path_read_the_same_with_serde() {
        let base = GOFLOW2.as_bytes();
        let alphabet = b"{}[]\",:.-+eE0123456789 \t\n\\ntrufals\x00\x1f\xc3\xbc\xff";
        let (mut fast, mut total) = (0, 0);
        let mut check = |raw: &[u8]| {
            total += 1;
            if agree(raw) {
                fast += 1;
            }
        };
        for i in 0..base.len() {
            let mut deleted = base.to_vec();
            deleted.remove(i);
            check(&deleted);
            for &b in alphabet {
                let mut changed = base.to_vec();
                changed[i] = b;
                check(&changed);
                let mut inserted = base.to_vec();
                inserted.insert(i, b);
                check(&inserted);
            }
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for _ in 0..20_000 {
            let mut raw = base.to_vec();
            for _ in 0..1 + next(4) {
                let at = next(raw.len());
                raw[at] = alphabet[next(alphabet.len())];
            }
            check(&raw);
        }
        // Both paths were taken many times: the check could fail.
        assert!(
            fast > 1000 && total - fast > 1000,
            "{fast} of {total} read fast"
        );
    }
}
