//! Gateway access events: the security gateways' record of every access to enclave data.
//! The contract (fields, types, an example) is in docs/events.md.
use std::borrow::Cow;
use std::net::IpAddr;

use serde::Deserialize;

use crate::decode::{self, Reject, Scalar};

/// Data categories, from most to least sensitive.
pub const DATA_CATEGORIES: &[&str] = &["restricted", "allowable", "pseudonymised", "public"];
/// Gateway actions.
pub const ACTIONS: &[&str] = &["read", "query", "export", "delete"];
/// Gateway decisions.
pub const DECISIONS: &[&str] = &["allow", "deny"];

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow, default)]
    event_id: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    ts: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    gateway_id: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    employee_id: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    employee_country: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    role: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    data_category: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    action: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    decision: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    approval_ticket: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    session_id: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    records: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    bytes: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    dst_ip: Option<Scalar<'a>>,
}

/// A validated gateway access event (before enrichment).
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayEvent<'a> {
    pub event_id: Cow<'a, str>,
    /// Event time, microseconds since the epoch (UTC).
    pub ts_us: i64,
    pub gateway_id: Cow<'a, str>,
    pub employee_id: Cow<'a, str>,
    pub employee_country: String,
    pub role: Cow<'a, str>,
    pub data_category: &'static str,
    pub action: &'static str,
    pub decision: &'static str,
    pub approval_ticket: Option<Cow<'a, str>>,
    pub session_id: Cow<'a, str>,
    pub records: i64,
    pub bytes: i64,
    pub dst_ip: Option<IpAddr>,
}

/// Decode and validate one gateway event. Unknown fields are ignored (forward compatibility).
pub fn decode(raw: &[u8]) -> Result<GatewayEvent<'_>, Reject> {
    let r: Raw = decode::object(raw)?;
    Ok(GatewayEvent {
        event_id: decode::req_str(("event_id", &r.event_id))?,
        ts_us: decode::req_rfc3339(("ts", &r.ts))?,
        gateway_id: decode::req_str(("gateway_id", &r.gateway_id))?,
        employee_id: decode::req_str(("employee_id", &r.employee_id))?,
        employee_country: decode::req_country(("employee_country", &r.employee_country))?,
        role: decode::req_str(("role", &r.role))?,
        data_category: decode::req_enum(("data_category", &r.data_category), DATA_CATEGORIES)?,
        action: decode::req_enum(("action", &r.action), ACTIONS)?,
        decision: decode::req_enum(("decision", &r.decision), DECISIONS)?,
        approval_ticket: decode::opt_str(("approval_ticket", &r.approval_ticket))?,
        session_id: decode::req_str(("session_id", &r.session_id))?,
        records: decode::req_int(("records", &r.records), 0, i64::MAX)?,
        bytes: decode::req_int(("bytes", &r.bytes), 0, i64::MAX)?,
        dst_ip: decode::opt_ip(("dst_ip", &r.dst_ip))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::RejectCode;

    const GOOD: &str = r#"{"event_id":"ev-1","ts":"2026-11-21T08:15:30.123Z","gateway_id":"gw-fra-1",
      "employee_id":"e1001","employee_country":"de","role":"analyst","data_category":"restricted",
      "action":"export","decision":"allow","approval_ticket":null,"session_id":"s-1","records":10,
      "bytes":4096,"dst_ip":"2001:db8::1","extra":{"ignored":true}}"#;

    #[test]
    fn decodes_a_valid_event() {
        let e = decode(GOOD.as_bytes()).unwrap();
        assert_eq!(e.event_id, "ev-1");
        assert_eq!(e.employee_country, "DE");
        assert_eq!(e.action, "export");
        assert_eq!(e.approval_ticket, None);
        assert_eq!(e.dst_ip, Some("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn rejects_name_the_field() {
        let bad = GOOD.replace(r#""records":10"#, r#""records":"10""#);
        let r = decode(bad.as_bytes()).unwrap_err();
        assert_eq!((r.code, r.field), (RejectCode::WrongType, Some("records")));
        let bad = GOOD.replace(r#""action":"export""#, r#""action":"exfiltrate""#);
        let r = decode(bad.as_bytes()).unwrap_err();
        assert_eq!(
            (r.code, r.field),
            (RejectCode::InvalidValue, Some("action"))
        );
        let bad = GOOD.replace(r#""session_id":"s-1","#, "");
        let r = decode(bad.as_bytes()).unwrap_err();
        assert_eq!(
            (r.code, r.field),
            (RejectCode::MissingField, Some("session_id"))
        );
    }
}
