//! Row buffers: validated records appended to Arrow builders, one buffer per warehouse file
//! (table, date, hour), finished into a `RecordBatch` at flush.
use std::net::IpAddr;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::record_batch::RecordBatch;
use sha2::{Digest, Sha256};

use crate::decode::Reject;
use crate::flow::Flow;
use crate::gateway::GatewayEvent;
use crate::geoip::{GeoInfo, GeoIp};
use crate::networks::Networks;
use crate::schema::Table;

/// Where a message came from in Kafka.
#[derive(Debug, Clone, Copy)]
pub struct Provenance<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The message timestamp (ms since the epoch), when the broker gave one.
    pub timestamp_ms: Option<i64>,
}

/// Enrichment at ingest: GeoIP (optional) and the enclave's networks.
pub struct Enricher {
    pub geoip: Option<GeoIp>,
    pub networks: Networks,
}

impl Enricher {
    fn geo(&self, ip: IpAddr) -> GeoInfo {
        self.geoip
            .as_ref()
            .map(|g| g.lookup(ip))
            .unwrap_or_default()
    }
}

fn ts_builder(cap: usize) -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::with_capacity(cap).with_timezone("UTC")
}

/// The canonical text of an address, in a reused buffer (IPv4 without the formatting machinery:
/// it is most of the addresses, and this is the hot path).
fn ip_str(buf: &mut String, ip: IpAddr) -> &str {
    use std::fmt::Write;
    buf.clear();
    match ip {
        IpAddr::V4(a) => {
            for (i, n) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push('.');
                }
                if n >= 100 {
                    buf.push((b'0' + n / 100) as char);
                }
                if n >= 10 {
                    buf.push((b'0' + n / 10 % 10) as char);
                }
                buf.push((b'0' + n % 10) as char);
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(buf, "{ip}");
        }
    }
    buf
}

/// Provenance columns shared by every table.
struct ProvenanceCols {
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
}

impl ProvenanceCols {
    fn new(cap: usize) -> Self {
        Self {
            topic: StringBuilder::with_capacity(cap, cap * 16),
            partition: Int32Builder::with_capacity(cap),
            offset: Int64Builder::with_capacity(cap),
        }
    }
    fn push(&mut self, p: &Provenance) {
        self.topic.append_value(p.topic);
        self.partition.append_value(p.partition);
        self.offset.append_value(p.offset);
    }
    fn finish(&mut self, cols: &mut Vec<ArrayRef>) {
        cols.push(Arc::new(self.topic.finish()));
        cols.push(Arc::new(self.partition.finish()));
        cols.push(Arc::new(self.offset.finish()));
    }
}

/// Buffered rows of one file, with the statistics the manifest records.
pub struct Rows {
    pub table: Table,
    pub rows: usize,
    pub min_ts_us: i64,
    pub max_ts_us: i64,
    pub min_offset: i64,
    pub max_offset: i64,
    cols: Cols,
    prov: ProvenanceCols,
    ip_buf: String,
}

enum Cols {
    Gateway(Box<GatewayCols>),
    Flow(Box<FlowCols>),
    Quarantine(Box<QuarantineCols>),
}

struct GatewayCols {
    event_id: StringBuilder,
    ts: TimestampMicrosecondBuilder,
    gateway_id: StringBuilder,
    employee_id: StringBuilder,
    employee_country: StringBuilder,
    role: StringBuilder,
    data_category: StringBuilder,
    action: StringBuilder,
    decision: StringBuilder,
    approval_ticket: StringBuilder,
    session_id: StringBuilder,
    records: Int64Builder,
    bytes: Int64Builder,
    dst_ip: StringBuilder,
    dst_country: StringBuilder,
    dst_asn: Int64Builder,
}

struct FlowCols {
    ts: TimestampMicrosecondBuilder,
    ts_end: TimestampMicrosecondBuilder,
    src_ip: StringBuilder,
    dst_ip: StringBuilder,
    src_port: Int32Builder,
    dst_port: Int32Builder,
    protocol: StringBuilder,
    bytes: Int64Builder,
    packets: Int64Builder,
    exporter: StringBuilder,
    sequence_num: Int64Builder,
    source_format: StringBuilder,
    flow_type: StringBuilder,
    flow_id: StringBuilder,
    conn_state: StringBuilder,
    src_country: StringBuilder,
    dst_country: StringBuilder,
    dst_asn: Int64Builder,
    src_zone: StringBuilder,
    dst_zone: StringBuilder,
}

struct QuarantineCols {
    ts: TimestampMicrosecondBuilder,
    kafka_timestamp: TimestampMicrosecondBuilder,
    target_table: StringBuilder,
    reason_code: StringBuilder,
    field: StringBuilder,
    reason: StringBuilder,
    raw: BinaryBuilder,
    raw_bytes: Int64Builder,
    raw_sha256: StringBuilder,
    raw_truncated: BooleanBuilder,
}

fn s(cap: usize) -> StringBuilder {
    StringBuilder::with_capacity(cap, cap * 8)
}

impl Rows {
    pub fn new(table: Table, cap: usize) -> Self {
        let cols = match table {
            Table::GatewayEvents => Cols::Gateway(Box::new(GatewayCols {
                event_id: s(cap),
                ts: ts_builder(cap),
                gateway_id: s(cap),
                employee_id: s(cap),
                employee_country: s(cap),
                role: s(cap),
                data_category: s(cap),
                action: s(cap),
                decision: s(cap),
                approval_ticket: s(cap),
                session_id: s(cap),
                records: Int64Builder::with_capacity(cap),
                bytes: Int64Builder::with_capacity(cap),
                dst_ip: s(cap),
                dst_country: s(cap),
                dst_asn: Int64Builder::with_capacity(cap),
            })),
            Table::Flows => Cols::Flow(Box::new(FlowCols {
                ts: ts_builder(cap),
                ts_end: ts_builder(cap),
                src_ip: s(cap),
                dst_ip: s(cap),
                src_port: Int32Builder::with_capacity(cap),
                dst_port: Int32Builder::with_capacity(cap),
                protocol: s(cap),
                bytes: Int64Builder::with_capacity(cap),
                packets: Int64Builder::with_capacity(cap),
                exporter: s(cap),
                sequence_num: Int64Builder::with_capacity(cap),
                source_format: s(cap),
                flow_type: s(cap),
                flow_id: s(cap),
                conn_state: s(cap),
                src_country: s(cap),
                dst_country: s(cap),
                dst_asn: Int64Builder::with_capacity(cap),
                src_zone: s(cap),
                dst_zone: s(cap),
            })),
            Table::Quarantine => Cols::Quarantine(Box::new(QuarantineCols {
                ts: ts_builder(cap),
                kafka_timestamp: ts_builder(cap),
                target_table: s(cap),
                reason_code: s(cap),
                field: s(cap),
                reason: s(cap),
                raw: BinaryBuilder::new(),
                raw_bytes: Int64Builder::with_capacity(cap),
                raw_sha256: s(cap),
                raw_truncated: BooleanBuilder::with_capacity(cap),
            })),
        };
        Self {
            table,
            rows: 0,
            min_ts_us: i64::MAX,
            max_ts_us: i64::MIN,
            min_offset: i64::MAX,
            max_offset: i64::MIN,
            cols,
            prov: ProvenanceCols::new(cap),
            ip_buf: String::with_capacity(48),
        }
    }

    fn note(&mut self, ts_us: i64, p: &Provenance) {
        self.rows += 1;
        self.min_ts_us = self.min_ts_us.min(ts_us);
        self.max_ts_us = self.max_ts_us.max(ts_us);
        self.min_offset = self.min_offset.min(p.offset);
        self.max_offset = self.max_offset.max(p.offset);
        self.prov.push(p);
    }

    /// Append a gateway event, enriched with the destination's country and ASN.
    pub fn push_gateway(&mut self, e: &GatewayEvent, enr: &Enricher, p: &Provenance) {
        let Cols::Gateway(c) = &mut self.cols else {
            unreachable!("gateway row into {:?}", self.table)
        };
        c.event_id.append_value(&e.event_id);
        c.ts.append_value(e.ts_us);
        c.gateway_id.append_value(&e.gateway_id);
        c.employee_id.append_value(&e.employee_id);
        c.employee_country.append_value(&e.employee_country);
        c.role.append_value(&e.role);
        c.data_category.append_value(e.data_category);
        c.action.append_value(e.action);
        c.decision.append_value(e.decision);
        c.approval_ticket
            .append_option(e.approval_ticket.as_deref());
        c.session_id.append_value(&e.session_id);
        c.records.append_value(e.records);
        c.bytes.append_value(e.bytes);
        match e.dst_ip {
            Some(ip) => {
                c.dst_ip.append_value(ip_str(&mut self.ip_buf, ip));
                let (_, site) = enr.networks.classify(ip);
                let geo = enr.geo(ip);
                c.dst_country.append_option(site.or(geo.country_str()));
                c.dst_asn.append_option(geo.asn.map(i64::from));
            }
            None => {
                c.dst_ip.append_null();
                c.dst_country.append_null();
                c.dst_asn.append_null();
            }
        }
        self.note(e.ts_us, p);
    }

    /// Append a flow, enriched with countries, ASN and zones.
    pub fn push_flow(&mut self, f: &Flow, enr: &Enricher, p: &Provenance) {
        let Cols::Flow(c) = &mut self.cols else {
            unreachable!("flow row into {:?}", self.table)
        };
        c.ts.append_value(f.ts_us);
        c.ts_end.append_option(f.ts_end_us);
        c.src_ip.append_value(ip_str(&mut self.ip_buf, f.src_ip));
        c.dst_ip.append_value(ip_str(&mut self.ip_buf, f.dst_ip));
        c.src_port.append_option(f.src_port);
        c.dst_port.append_option(f.dst_port);
        c.protocol.append_value(&f.protocol);
        c.bytes.append_value(f.bytes);
        c.packets.append_option(f.packets);
        c.exporter.append_option(f.exporter.as_deref());
        c.sequence_num.append_option(f.sequence_num);
        c.source_format.append_value(f.format.as_str());
        c.flow_type.append_option(f.flow_type.as_deref());
        c.flow_id.append_option(f.flow_id.as_deref());
        c.conn_state.append_option(f.conn_state.as_deref());
        let (src_zone, src_site) = enr.networks.classify(f.src_ip);
        let (dst_zone, dst_site) = enr.networks.classify(f.dst_ip);
        let src_geo = if src_site.is_some() {
            GeoInfo::default()
        } else {
            enr.geo(f.src_ip)
        };
        let dst_geo = if dst_site.is_some() {
            GeoInfo::default()
        } else {
            enr.geo(f.dst_ip)
        };
        c.src_country
            .append_option(src_site.or(src_geo.country_str()));
        c.dst_country
            .append_option(dst_site.or(dst_geo.country_str()));
        c.dst_asn
            .append_option(dst_geo.asn.map(i64::from).or(f.exporter_dst_asn));
        c.src_zone.append_value(src_zone.as_str());
        c.dst_zone.append_value(dst_zone.as_str());
        self.note(f.ts_us, p);
    }

    /// Append a quarantined message. `ts_us` is the partition time (Kafka timestamp or ingest
    /// time); at most `raw_limit` bytes of the payload are kept, with its full size and SHA-256.
    pub fn push_quarantine(
        &mut self,
        target: Table,
        raw: &[u8],
        reject: &Reject,
        ts_us: i64,
        raw_limit: usize,
        p: &Provenance,
    ) {
        let Cols::Quarantine(c) = &mut self.cols else {
            unreachable!("quarantine row into {:?}", self.table)
        };
        c.ts.append_value(ts_us);
        c.kafka_timestamp
            .append_option(p.timestamp_ms.map(|ms| ms * 1000));
        c.target_table.append_value(target.name());
        c.reason_code.append_value(reject.code.as_str());
        c.field.append_option(reject.field);
        c.reason.append_value(reject.to_string());
        let kept = raw.len().min(raw_limit);
        c.raw.append_value(&raw[..kept]);
        c.raw_bytes.append_value(raw.len() as i64);
        c.raw_sha256.append_value(hex::encode(Sha256::digest(raw)));
        c.raw_truncated.append_value(kept < raw.len());
        self.note(ts_us, p);
    }

    /// Finish the buffered rows into a batch of the table's schema.
    pub fn finish(&mut self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(24);
        match &mut self.cols {
            Cols::Gateway(c) => {
                cols.push(Arc::new(c.event_id.finish()));
                cols.push(Arc::new(c.ts.finish()));
                cols.push(Arc::new(c.gateway_id.finish()));
                cols.push(Arc::new(c.employee_id.finish()));
                cols.push(Arc::new(c.employee_country.finish()));
                cols.push(Arc::new(c.role.finish()));
                cols.push(Arc::new(c.data_category.finish()));
                cols.push(Arc::new(c.action.finish()));
                cols.push(Arc::new(c.decision.finish()));
                cols.push(Arc::new(c.approval_ticket.finish()));
                cols.push(Arc::new(c.session_id.finish()));
                cols.push(Arc::new(c.records.finish()));
                cols.push(Arc::new(c.bytes.finish()));
                cols.push(Arc::new(c.dst_ip.finish()));
                cols.push(Arc::new(c.dst_country.finish()));
                cols.push(Arc::new(c.dst_asn.finish()));
            }
            Cols::Flow(c) => {
                cols.push(Arc::new(c.ts.finish()));
                cols.push(Arc::new(c.ts_end.finish()));
                cols.push(Arc::new(c.src_ip.finish()));
                cols.push(Arc::new(c.dst_ip.finish()));
                cols.push(Arc::new(c.src_port.finish()));
                cols.push(Arc::new(c.dst_port.finish()));
                cols.push(Arc::new(c.protocol.finish()));
                cols.push(Arc::new(c.bytes.finish()));
                cols.push(Arc::new(c.packets.finish()));
                cols.push(Arc::new(c.exporter.finish()));
                cols.push(Arc::new(c.sequence_num.finish()));
                cols.push(Arc::new(c.source_format.finish()));
                cols.push(Arc::new(c.flow_type.finish()));
                cols.push(Arc::new(c.flow_id.finish()));
                cols.push(Arc::new(c.conn_state.finish()));
                cols.push(Arc::new(c.src_country.finish()));
                cols.push(Arc::new(c.dst_country.finish()));
                cols.push(Arc::new(c.dst_asn.finish()));
                cols.push(Arc::new(c.src_zone.finish()));
                cols.push(Arc::new(c.dst_zone.finish()));
            }
            Cols::Quarantine(c) => {
                cols.push(Arc::new(c.ts.finish()));
                cols.push(Arc::new(c.kafka_timestamp.finish()));
                cols.push(Arc::new(c.target_table.finish()));
                cols.push(Arc::new(c.reason_code.finish()));
                cols.push(Arc::new(c.field.finish()));
                cols.push(Arc::new(c.reason.finish()));
                cols.push(Arc::new(c.raw.finish()));
                cols.push(Arc::new(c.raw_bytes.finish()));
                cols.push(Arc::new(c.raw_sha256.finish()));
                cols.push(Arc::new(c.raw_truncated.finish()));
            }
        }
        self.prov.finish(&mut cols);
        RecordBatch::try_new(self.table.schema(), cols)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ip_text_is_canonical() {
        let mut buf = String::new();
        for ip in [
            "0.0.0.0",
            "10.20.0.1",
            "255.255.255.255",
            "192.168.100.9",
            "2001:db8::1",
            "::ffff:1.2.3.4",
        ] {
            let a: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(super::ip_str(&mut buf, a), a.to_string());
        }
    }
}
