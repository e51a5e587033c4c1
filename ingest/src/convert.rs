//! `flowaudit convert`: JSON lines → Parquet through the same decoders, enrichment, builders and
//! writer as ingest, without Kafka. For backfills from files, and to measure decode → Arrow →
//! Parquet on its own (`make bench`). Rejected lines are counted by reason, not written.
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use crate::batch::{Enricher, Provenance, Rows};
use crate::error::{io_err, Result};
use crate::schema::Table;
use crate::writer::{ParquetSettings, ParquetSink};
use crate::{flow, gateway};

/// What a conversion did.
#[derive(Debug, Clone, Default)]
pub struct ConvertSummary {
    pub lines: u64,
    pub rows: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub sha256: String,
}

/// Convert `input` (one JSON message per line) into one Parquet file `output` of `table`.
pub fn convert_jsonl(input: &Path, table: Table, enricher: &Enricher, output: &Path, settings: &ParquetSettings) -> Result<ConvertSummary> {
    assert!(table != Table::Quarantine, "convert writes gateway_events or flows");
    let file = std::fs::File::open(input).map_err(io_err("open", input))?;
    let mut reader = std::io::BufReader::with_capacity(4 << 20, file);
    let mut sink = ParquetSink::create(output, table.schema(), settings, vec![("flowaudit.table".into(), table.name().into())])?;
    let mut summary = ConvertSummary::default();
    let topic = input.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let batch_rows = settings.row_group_rows.max(1);
    let mut rows = Rows::new(table, batch_rows.min(1 << 16));
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io_err("read", input))?;
        if n == 0 {
            break;
        }
        summary.input_bytes += n as u64;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let prov = Provenance { topic, partition: 0, offset: summary.lines as i64, timestamp_ms: None };
        summary.lines += 1;
        let res = match table {
            Table::GatewayEvents => gateway::decode(&line).map(|e| rows.push_gateway(&e, enricher, &prov)),
            _ => flow::decode(&line).map(|f| rows.push_flow(&f, enricher, &prov)),
        };
        if let Err(r) = res {
            *summary.rejected.entry(r.code.as_str()).or_default() += 1;
        }
        if rows.rows >= batch_rows {
            summary.rows += rows.rows as u64;
            sink.write(&rows.finish()?)?;
            rows = Rows::new(table, batch_rows.min(1 << 16));
        }
    }
    if rows.rows > 0 {
        summary.rows += rows.rows as u64;
        sink.write(&rows.finish()?)?;
    }
    let (sha256, bytes) = sink.finish()?;
    summary.output_bytes = bytes;
    summary.sha256 = sha256;
    Ok(summary)
}
