//! Row buffers: validated records appended to Arrow builders, one buffer per warehouse file
//! (table, date, hour), finished into a `RecordBatch` at flush.
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryBuilder, BooleanBuilder, GenericByteBuilder, Int32Builder, Int64Builder,
    PrimitiveBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{ArrowPrimitiveType, ByteArrayType};
use arrow::record_batch::RecordBatch;
use chrono::NaiveDate;
use sha2::{Digest, Sha256};

use crate::decode::{Reject, RejectCode, MAX_EVENT_TIME_US, MIN_EVENT_TIME_US};
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

/// The Kafka timestamp of a message in microseconds, checked: `Ok(None)` when the broker gave
/// none, `Err` (reason `bad_kafka_timestamp`) when it is not a time in milliseconds within the
/// accepted event-time range (a producer that sets nanoseconds or seconds, a negative time).
pub fn kafka_time_us(timestamp_ms: Option<i64>) -> Result<Option<i64>, Reject> {
    let Some(ms) = timestamp_ms else {
        return Ok(None);
    };
    match ms.checked_mul(1000) {
        Some(us) if (MIN_EVENT_TIME_US..MAX_EVENT_TIME_US).contains(&us) => Ok(Some(us)),
        _ => Err(Reject::new(
            RejectCode::BadKafkaTimestamp,
            Some("kafka_timestamp"),
            format!(
                "Kafka message timestamp {ms} is not milliseconds since the epoch within \
                 [1970-01-01, 2100-01-01) (a producer setting nanoseconds or seconds?)"
            ),
        )),
    }
}

/// The limits the consumer applies to each message.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimits {
    /// A larger payload is quarantined (`oversize`) without being decoded.
    pub max_message_bytes: usize,
    /// How much of a quarantined payload is kept in its row.
    pub quarantine_raw_max_bytes: usize,
}

/// One partition's buffered rows, by the file they go to: (table, date, hour).
pub type HourFiles = BTreeMap<(Table, NaiveDate, u8), Rows>;

/// The rows of one (table, date, hour), created on first use. Buffers start small and grow with
/// their rows (in chunks): an hour with one row costs a few KiB, not a preallocation sized for a
/// busy hour. `new_bytes` grows by what a new buffer holds.
fn rows_for<'f>(
    files: &'f mut HourFiles,
    key: (Table, NaiveDate, u8),
    new_bytes: &mut usize,
) -> &'f mut Rows {
    const CAP: usize = 16;
    match files.entry(key) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => {
            let rows = Rows::new(key.0, CAP);
            *new_bytes += rows.held_bytes();
            e.insert(rows)
        }
    }
}

/// One Kafka message of `target`'s topic, as the consumer handles it (and the fuzz harness
/// replays it): the size check, the Kafka timestamp check, the decoder, then exactly one row —
/// in the buffer of its table and event hour when accepted, or in the quarantine buffer of its
/// partition time (the Kafka timestamp when it is a valid time, else `now_us()`) with its reason.
/// `new_file_bytes` grows by what newly created buffers hold. Returns the reject when the
/// message was quarantined.
#[allow(clippy::too_many_arguments)]
pub fn buffer_message(
    files: &mut HourFiles,
    target: Table,
    payload: &[u8],
    prov: &Provenance<'_>,
    limits: MessageLimits,
    enricher: &Enricher,
    now_us: impl FnOnce() -> i64,
    new_file_bytes: &mut usize,
) -> Option<Reject> {
    let kafka_us = kafka_time_us(prov.timestamp_ms);
    let reject = if payload.len() > limits.max_message_bytes {
        Some(Reject::new(
            RejectCode::Oversize,
            None,
            format!(
                "message of {} bytes exceeds max_message_bytes = {}",
                payload.len(),
                limits.max_message_bytes
            ),
        ))
    } else if let Err(r) = &kafka_us {
        Some(r.clone())
    } else if target == Table::GatewayEvents {
        match crate::gateway::decode(payload) {
            Ok(ev) => {
                let (d, h) = crate::decode::date_hour(ev.ts_us);
                rows_for(files, (Table::GatewayEvents, d, h), new_file_bytes)
                    .push_gateway(&ev, enricher, prov);
                None
            }
            Err(r) => Some(r),
        }
    } else {
        match crate::flow::decode(payload) {
            Ok(f) => {
                let (d, h) = crate::decode::date_hour(f.ts_us);
                rows_for(files, (Table::Flows, d, h), new_file_bytes).push_flow(&f, enricher, prov);
                None
            }
            Err(r) => Some(r),
        }
    };
    if let Some(r) = &reject {
        let ts_us = kafka_us.ok().flatten().unwrap_or_else(now_us);
        let (d, h) = crate::decode::date_hour(ts_us);
        rows_for(files, (Table::Quarantine, d, h), new_file_bytes).push_quarantine(
            target,
            payload,
            r,
            ts_us,
            limits.quarantine_raw_max_bytes,
            prov,
        );
    }
    reject
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

/// Buffered rows of one file, with the statistics the warehouse records.
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
    /// Rows in the builders (the open chunk), and the most before they are finished.
    open_rows: usize,
    chunk_rows: usize,
    /// Chunks already finished into arrays (their allocation is exact and final).
    done: Vec<Vec<ArrayRef>>,
    done_bytes: usize,
}

/// Rows per chunk (at least; a larger initial capacity makes larger chunks): the builders are
/// finished into arrays every this many rows, so that no buffer grows by doubling past a few
/// MiB and what is held is known from the arrays.
pub const CHUNK_ROWS: usize = 8192;

/// Memory held by a builder, in bytes: exact for capacities Arrow exposes, an upper bound
/// (twice the length, which amortised doubling never exceeds, plus the smallest allocation)
/// for the others.
trait Held {
    fn held(&self) -> usize;
}

const MIN_ALLOC: usize = 64;

impl<T: ByteArrayType> Held for GenericByteBuilder<T> {
    fn held(&self) -> usize {
        self.values_capacity()
            + 2 * std::mem::size_of_val(self.offsets_slice())
            + self.validity_slice().map_or(0, |v| 2 * v.len())
            + MIN_ALLOC
    }
}

impl<T: ArrowPrimitiveType> Held for PrimitiveBuilder<T> {
    fn held(&self) -> usize {
        self.capacity() * std::mem::size_of::<T::Native>()
            + self.validity_slice().map_or(0, |v| 2 * v.len())
            + MIN_ALLOC
    }
}

impl Held for BooleanBuilder {
    fn held(&self) -> usize {
        self.capacity() / 8 + self.validity_slice().map_or(0, |v| 2 * v.len()) + MIN_ALLOC
    }
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
            open_rows: 0,
            chunk_rows: cap.max(CHUNK_ROWS),
            done: Vec::new(),
            done_bytes: 0,
        }
    }

    fn note(&mut self, ts_us: i64, p: &Provenance) {
        self.rows += 1;
        self.min_ts_us = self.min_ts_us.min(ts_us);
        self.max_ts_us = self.max_ts_us.max(ts_us);
        self.min_offset = self.min_offset.min(p.offset);
        self.max_offset = self.max_offset.max(p.offset);
        self.prov.push(p);
        self.open_rows += 1;
        if self.open_rows >= self.chunk_rows {
            self.close_chunk();
        }
    }

    /// Finish the builders into arrays (a closed chunk); the builders start again empty.
    fn close_chunk(&mut self) {
        if self.open_rows == 0 {
            return;
        }
        let cols = self.finish_open();
        self.done_bytes += cols
            .iter()
            .map(|a| a.get_array_memory_size())
            .sum::<usize>();
        self.done.push(cols);
        self.open_rows = 0;
    }

    /// Bytes of memory these rows hold: the closed chunks' arrays (exact) and the open
    /// builders' allocations (exact where Arrow exposes the capacity, else an upper bound),
    /// plus the structures themselves. This, not the payload size, is what the memory bound
    /// counts.
    pub fn held_bytes(&self) -> usize {
        let open = match &self.cols {
            Cols::Gateway(c) => {
                std::mem::size_of::<GatewayCols>()
                    + c.event_id.held()
                    + c.ts.held()
                    + c.gateway_id.held()
                    + c.employee_id.held()
                    + c.employee_country.held()
                    + c.role.held()
                    + c.data_category.held()
                    + c.action.held()
                    + c.decision.held()
                    + c.approval_ticket.held()
                    + c.session_id.held()
                    + c.records.held()
                    + c.bytes.held()
                    + c.dst_ip.held()
                    + c.dst_country.held()
                    + c.dst_asn.held()
            }
            Cols::Flow(c) => {
                std::mem::size_of::<FlowCols>()
                    + c.ts.held()
                    + c.ts_end.held()
                    + c.src_ip.held()
                    + c.dst_ip.held()
                    + c.src_port.held()
                    + c.dst_port.held()
                    + c.protocol.held()
                    + c.bytes.held()
                    + c.packets.held()
                    + c.exporter.held()
                    + c.sequence_num.held()
                    + c.source_format.held()
                    + c.flow_type.held()
                    + c.flow_id.held()
                    + c.conn_state.held()
                    + c.src_country.held()
                    + c.dst_country.held()
                    + c.dst_asn.held()
                    + c.src_zone.held()
                    + c.dst_zone.held()
            }
            Cols::Quarantine(c) => {
                std::mem::size_of::<QuarantineCols>()
                    + c.ts.held()
                    + c.kafka_timestamp.held()
                    + c.target_table.held()
                    + c.reason_code.held()
                    + c.field.held()
                    + c.reason.held()
                    + c.raw.held()
                    + c.raw_bytes.held()
                    + c.raw_sha256.held()
                    + c.raw_truncated.held()
            }
        };
        std::mem::size_of::<Self>()
            + self.ip_buf.capacity()
            + open
            + self.prov.topic.held()
            + self.prov.partition.held()
            + self.prov.offset.held()
            + self.done_bytes
            + self.done.capacity() * std::mem::size_of::<Vec<ArrayRef>>()
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
        // Checked: a timestamp that is not milliseconds in range is stored as null (the consumer
        // quarantines such a message with reason `bad_kafka_timestamp`, and its value is in
        // the reason).
        c.kafka_timestamp
            .append_option(kafka_time_us(p.timestamp_ms).ok().flatten());
        c.target_table.append_value(target.name());
        c.reason_code.append_value(reject.code.as_str());
        c.field.append_option(reject.field);
        c.reason.append_value(reject.to_string());
        let kept = raw.len().min(raw_limit);
        c.raw.append_value(&raw[..kept]);
        c.raw_bytes
            .append_value(i64::try_from(raw.len()).unwrap_or(i64::MAX));
        c.raw_sha256.append_value(hex::encode(Sha256::digest(raw)));
        c.raw_truncated.append_value(kept < raw.len());
        self.note(ts_us, p);
    }

    /// Finish the buffered rows into one batch of the table's schema (the chunks concatenated).
    pub fn finish(&mut self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let mut batches = self.finish_batches()?;
        if batches.len() == 1 {
            return Ok(batches.remove(0));
        }
        arrow::compute::concat_batches(&self.table.schema(), &batches)
    }

    /// Finish the buffered rows into batches of the table's schema, one per chunk, without
    /// copying (a Parquet writer turns them into row groups of its own size).
    pub fn finish_batches(&mut self) -> Result<Vec<RecordBatch>, arrow::error::ArrowError> {
        self.close_chunk();
        self.done_bytes = 0;
        let schema = self.table.schema();
        std::mem::take(&mut self.done)
            .into_iter()
            .map(|cols| RecordBatch::try_new(schema.clone(), cols))
            .collect()
    }

    /// The open builders' columns, in schema order; the builders are reset.
    fn finish_open(&mut self) -> Vec<ArrayRef> {
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
        cols
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prov(offset: i64, timestamp_ms: Option<i64>) -> Provenance<'static> {
        Provenance {
            topic: "t",
            partition: 0,
            offset,
            timestamp_ms,
        }
    }

    #[test]
    fn kafka_timestamps_are_checked() {
        assert_eq!(
            kafka_time_us(Some(1_795_255_200_000)).unwrap(),
            Some(1_795_255_200_000_000)
        );
        assert_eq!(kafka_time_us(None).unwrap(), None);
        for bad in [
            1_795_255_200_000_000_000,
            i64::MAX,
            i64::MIN,
            -1,
            4_102_444_800_000,
        ] {
            let r = kafka_time_us(Some(bad)).unwrap_err();
            assert_eq!(r.code, RejectCode::BadKafkaTimestamp, "{bad}");
            assert!(r.detail.contains(&bad.to_string()), "{r}");
        }
    }

    #[test]
    fn a_quarantine_row_with_a_nanosecond_kafka_timestamp_keeps_a_null_time() {
        let mut q = Rows::new(Table::Quarantine, 4);
        let r = Reject::new(RejectCode::NotJson, None, "not valid JSON");
        for (i, ts) in [
            Some(1_795_255_200_000_000_000),
            Some(i64::MIN),
            Some(1_795_255_200_000),
        ]
        .into_iter()
        .enumerate()
        {
            q.push_quarantine(
                Table::Flows,
                b"x",
                &r,
                1_795_255_200_000_000,
                16,
                &prov(i as i64, ts),
            );
        }
        let b = q.finish().unwrap();
        let kt = b.column_by_name("kafka_timestamp").unwrap();
        assert_eq!(kt.null_count(), 2);
        assert!(kt.is_valid(2));
    }

    /// Many rows are held in closed chunks of exact size; what is counted is at least what the
    /// arrays really hold and grows with the rows, and every row comes out once.
    #[test]
    fn held_bytes_count_allocations_and_chunks_keep_every_row() {
        let mut q = Rows::new(Table::Quarantine, 4);
        let empty = q.held_bytes();
        assert!(empty < 16 * 1024, "a new buffer is small: {empty}");
        let r = Reject::new(RejectCode::NotJson, None, "not valid JSON");
        let raw = vec![b'x'; 100];
        let n = CHUNK_ROWS * 2 + 10;
        for i in 0..n {
            q.push_quarantine(
                Table::Flows,
                &raw,
                &r,
                1_795_255_200_000_000,
                1 << 20,
                &prov(i as i64, None),
            );
        }
        assert_eq!(q.done.len(), 2);
        let held = q.held_bytes();
        assert!(held >= n * 100, "{held}");
        let batches = q.finish_batches().unwrap();
        let real: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
        assert!(held >= real, "counted {held} < held by the arrays {real}");
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), n);
        let offsets: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column_by_name("kafka_offset")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(offsets, (0..n as i64).collect::<Vec<_>>());
    }

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
