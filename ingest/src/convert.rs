//! `flowaudit convert`: JSON lines → Parquet through the same decoders, enrichment, builders and
//! writer as ingest, without Kafka. For backfills from files, and to measure decode → Arrow →
//! Parquet on its own (`make bench`). Rejected lines are counted by reason, not written.
//!
//! The file is memory-mapped and cut into chunks of whole lines; worker threads decode chunks
//! into record batches; the calling thread writes them in input order, so the output is the same
//! for any number of workers.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::mpsc::sync_channel;
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

struct Chunk<'a> {
    seq: u64,
    first_line: u64,
    data: &'a [u8],
}

struct Decoded {
    seq: u64,
    lines: u64,
    /// The chunk's input bytes (for progress).
    bytes: usize,
    batch: RecordBatch,
    rejected: HashMap<&'static str, u64>,
}

fn decode_chunk(
    chunk: &Chunk<'_>,
    table: Table,
    enricher: &Enricher,
    topic: &str,
) -> Result<Decoded> {
    let mut rows = Rows::new(table, 1 << 15);
    let mut rejected = HashMap::new();
    let mut lines = 0u64;
    // `offset` is the line number in the file (blank lines count, as the cutter counts them).
    for (i, line) in chunk.data.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let prov = Provenance {
            topic,
            partition: 0,
            offset: (chunk.first_line + i as u64) as i64,
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
        bytes: chunk.data.len(),
        batch: rows.finish()?,
        rejected,
    })
}

fn count_lines(data: &[u8]) -> u64 {
    data.iter().filter(|b| **b == b'\n').count() as u64
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
    let file = std::fs::File::open(input).map_err(io_err("open", input))?;
    // SAFETY: the mapping is read-only and private to this call; a file truncated by someone else
    // while we read it could fault, as with any reader of a file that changes underneath it.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err("map", input))?;
    let data: &[u8] = &map;
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
    let (chunk_tx, chunk_rx) = sync_channel::<Chunk<'_>>(workers * 2);
    let chunk_rx = Arc::new(Mutex::new(chunk_rx));
    let (out_tx, out_rx) = sync_channel::<Result<Decoded>>(workers * 2);
    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..workers {
            let (rx, tx, topic) = (chunk_rx.clone(), out_tx.clone(), topic.as_str());
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
        // Cutter: whole-line chunks of the mapping, numbered.
        scope.spawn(move || {
            let (mut seq, mut line_no, mut start) = (0u64, 0u64, 0usize);
            while start < data.len() {
                let mut end = (start + CHUNK_BYTES).min(data.len());
                if end < data.len() {
                    end = match data[end..].iter().position(|b| *b == b'\n') {
                        Some(i) => end + i + 1,
                        None => data.len(),
                    };
                }
                let chunk = &data[start..end];
                let lines =
                    count_lines(chunk) + u64::from(chunk.last().is_some_and(|b| *b != b'\n'));
                if chunk_tx
                    .send(Chunk {
                        seq,
                        first_line: line_no,
                        data: chunk,
                    })
                    .is_err()
                {
                    break;
                }
                seq += 1;
                line_no += lines;
                start = end;
            }
        });
        // Writer (this thread): in input order.
        let progress = crate::progress::bar(data.len() as u64, "converting", "bytes");
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
                progress.inc(d.bytes as u64);
                next += 1;
            }
        }
        summary.input_bytes = data.len() as u64;
        progress.finish_and_clear();
        Ok(())
    })?;
    let (sha256, bytes) = sink.finish()?;
    summary.output_bytes = bytes;
    summary.sha256 = sha256;
    Ok(summary)
}
