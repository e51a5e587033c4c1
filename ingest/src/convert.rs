//! `flowaudit convert`: JSON lines → Parquet through the same decoders, enrichment, builders and
//! writer as ingest, without Kafka. For backfills from files, and to measure decode → Arrow →
//! Parquet on its own (`make bench`). Rejected lines are counted by reason, not written.
//!
//! The file is read in chunks of whole lines; worker threads decode chunks into record batches;
//! the calling thread writes them in input order, so the output is the same for any number of
//! workers.
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;

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

/// Bytes per chunk handed to a worker (whole lines).
const CHUNK_BYTES: usize = 8 << 20;

struct Chunk {
    seq: u64,
    first_line: u64,
    data: Vec<u8>,
}

struct Decoded {
    seq: u64,
    lines: u64,
    batch: RecordBatch,
    rejected: HashMap<&'static str, u64>,
}

fn decode_chunk(chunk: &Chunk, table: Table, enricher: &Enricher, topic: &str) -> Result<Decoded> {
    let mut rows = Rows::new(table, 1 << 15);
    let mut rejected = HashMap::new();
    let mut lines = 0u64;
    for line in chunk.data.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let prov = Provenance {
            topic,
            partition: 0,
            offset: (chunk.first_line + lines) as i64,
            timestamp_ms: None,
        };
        lines += 1;
        let res = match table {
            Table::GatewayEvents => {
                gateway::decode(line).map(|e| rows.push_gateway(&e, enricher, &prov))
            }
            _ => flow::decode(line).map(|f| rows.push_flow(&f, enricher, &prov)),
        };
        if let Err(r) = res {
            *rejected.entry(r.code.as_str()).or_default() += 1;
        }
    }
    Ok(Decoded {
        seq: chunk.seq,
        lines,
        batch: rows.finish()?,
        rejected,
    })
}

/// Convert `input` (one JSON message per line) into one Parquet file `output` of `table`, with
/// `workers` decoding threads (at least one).
pub fn convert_jsonl(
    input: &Path,
    table: Table,
    enricher: &Enricher,
    output: &Path,
    settings: &ParquetSettings,
    workers: usize,
) -> Result<ConvertSummary> {
    assert!(
        table != Table::Quarantine,
        "convert writes gateway_events or flows"
    );
    let mut file = std::fs::File::open(input).map_err(io_err("open", input))?;
    let mut sink = ParquetSink::create(
        output,
        table.schema(),
        settings,
        vec![("flowaudit.table".into(), table.name().into())],
    )?;
    let topic = input
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file")
        .to_string();
    let mut summary = ConvertSummary::default();
    let workers = workers.max(1);
    let (chunk_tx, chunk_rx) = sync_channel::<Chunk>(workers * 2);
    let chunk_rx = Arc::new(Mutex::new(chunk_rx));
    let (out_tx, out_rx) = sync_channel::<Result<Decoded>>(workers * 2);
    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..workers {
            let (rx, tx, topic): (
                Arc<Mutex<Receiver<Chunk>>>,
                SyncSender<Result<Decoded>>,
                &str,
            ) = (chunk_rx.clone(), out_tx.clone(), &topic);
            scope.spawn(move || loop {
                let next = rx.lock().expect("lock").recv();
                let Ok(chunk) = next else { break };
                if tx
                    .send(decode_chunk(&chunk, table, enricher, topic))
                    .is_err()
                {
                    break;
                }
            });
        }
        drop(out_tx);
        // Reader: whole-line chunks, numbered.
        let reader = scope.spawn(move || -> Result<u64> {
            let mut carry: Vec<u8> = Vec::new();
            let (mut seq, mut line_no, mut total) = (0u64, 0u64, 0u64);
            loop {
                let mut data = std::mem::take(&mut carry);
                let start = data.len();
                data.resize(start + CHUNK_BYTES, 0);
                let n = file
                    .read(&mut data[start..])
                    .map_err(io_err("read", input))?;
                data.truncate(start + n);
                total += n as u64;
                if n == 0 && data.is_empty() {
                    break;
                }
                if n > 0 {
                    // Keep the last partial line for the next chunk.
                    match data.iter().rposition(|b| *b == b'\n') {
                        Some(i) => carry = data.split_off(i + 1),
                        None => {
                            carry = data;
                            continue;
                        }
                    }
                }
                let lines = data.iter().filter(|b| **b == b'\n').count() as u64
                    + u64::from(data.last().is_some_and(|b| *b != b'\n'));
                if chunk_tx
                    .send(Chunk {
                        seq,
                        first_line: line_no,
                        data,
                    })
                    .is_err()
                {
                    break;
                }
                seq += 1;
                line_no += lines;
                if n == 0 {
                    break;
                }
            }
            Ok(total)
        });
        // Writer (this thread): in input order.
        let mut pending: BTreeMap<u64, Decoded> = BTreeMap::new();
        let mut next = 0u64;
        for d in out_rx {
            let d = d?;
            pending.insert(d.seq, d);
            while let Some(d) = pending.remove(&next) {
                summary.lines += d.lines;
                summary.rows += d.batch.num_rows() as u64;
                for (k, v) in d.rejected {
                    *summary.rejected.entry(k).or_default() += v;
                }
                if d.batch.num_rows() > 0 {
                    sink.write(&d.batch)?;
                }
                next += 1;
            }
        }
        summary.input_bytes = reader.join().expect("reader thread")?;
        Ok(())
    })?;
    let (sha256, bytes) = sink.finish()?;
    summary.output_bytes = bytes;
    summary.sha256 = sha256;
    Ok(summary)
}
