//! The Arrow schemas of the warehouse tables. `date` and `hour` are Hive partition directories,
//! not columns in the files. Every row carries its Kafka provenance.
use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Version of the table schemas, recorded in every commit and the Parquet metadata.
pub const SCHEMA_VERSION: u32 = 1;

/// A warehouse table written by ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    GatewayEvents,
    Flows,
    Quarantine,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::GatewayEvents, Table::Flows, Table::Quarantine];

    /// The table's directory name under the warehouse.
    pub fn name(self) -> &'static str {
        match self {
            Table::GatewayEvents => "gateway_events",
            Table::Flows => "flows",
            Table::Quarantine => "quarantine",
        }
    }

    pub fn schema(self) -> SchemaRef {
        static S: OnceLock<[SchemaRef; 3]> = OnceLock::new();
        let s = S.get_or_init(|| [gateway_events(), flows(), quarantine()]);
        s[self as usize].clone()
    }
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn provenance() -> [Field; 3] {
    [
        Field::new("kafka_topic", DataType::Utf8, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
    ]
}

fn gateway_events() -> SchemaRef {
    let mut f = vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("ts", ts(), false),
        Field::new("gateway_id", DataType::Utf8, false),
        Field::new("employee_id", DataType::Utf8, false),
        Field::new("employee_country", DataType::Utf8, false),
        Field::new("role", DataType::Utf8, false),
        Field::new("data_category", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("decision", DataType::Utf8, false),
        Field::new("approval_ticket", DataType::Utf8, true),
        Field::new("session_id", DataType::Utf8, false),
        Field::new("records", DataType::Int64, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("dst_ip", DataType::Utf8, true),
        Field::new("dst_country", DataType::Utf8, true),
        Field::new("dst_asn", DataType::Int64, true),
    ];
    f.extend(provenance());
    Arc::new(Schema::new(f))
}

fn flows() -> SchemaRef {
    let mut f = vec![
        Field::new("ts", ts(), false),
        Field::new("ts_end", ts(), true),
        Field::new("src_ip", DataType::Utf8, false),
        Field::new("dst_ip", DataType::Utf8, false),
        Field::new("src_port", DataType::Int32, true),
        Field::new("dst_port", DataType::Int32, true),
        Field::new("protocol", DataType::Utf8, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("packets", DataType::Int64, true),
        Field::new("exporter", DataType::Utf8, true),
        Field::new("sequence_num", DataType::Int64, true),
        Field::new("source_format", DataType::Utf8, false),
        Field::new("flow_type", DataType::Utf8, true),
        Field::new("flow_id", DataType::Utf8, true),
        Field::new("conn_state", DataType::Utf8, true),
        Field::new("src_country", DataType::Utf8, true),
        Field::new("dst_country", DataType::Utf8, true),
        Field::new("dst_asn", DataType::Int64, true),
        Field::new("src_zone", DataType::Utf8, false),
        Field::new("dst_zone", DataType::Utf8, false),
    ];
    f.extend(provenance());
    Arc::new(Schema::new(f))
}

fn quarantine() -> SchemaRef {
    let mut f = vec![
        Field::new("ts", ts(), false),
        Field::new("kafka_timestamp", ts(), true),
        Field::new("target_table", DataType::Utf8, false),
        Field::new("reason_code", DataType::Utf8, false),
        Field::new("field", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Binary, false),
        Field::new("raw_bytes", DataType::Int64, false),
        Field::new("raw_sha256", DataType::Utf8, false),
        Field::new("raw_truncated", DataType::Boolean, false),
    ];
    f.extend(provenance());
    Arc::new(Schema::new(f))
}
