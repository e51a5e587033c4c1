//! Parquet files: zstd, large row groups, provenance in the key-value metadata. A file is written
//! to the writer's staging directory, hashed while it is written, and fsynced; the committer then
//! publishes it to its table and commits it (see [`crate::warehouse`]).
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use crate::error::{io_err, Error, Result};

/// How Parquet files are written.
#[derive(Debug, Clone)]
pub struct ParquetSettings {
    pub zstd_level: i32,
    pub row_group_rows: usize,
}

impl Default for ParquetSettings {
    fn default() -> Self {
        Self {
            zstd_level: 3,
            row_group_rows: 1 << 20,
        }
    }
}

/// A `Write` that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A file written and fsynced in staging, not yet recorded.
#[derive(Debug, Clone)]
pub struct StagedFile {
    pub staging_path: PathBuf,
    /// Final path relative to the warehouse, `/`-separated (`flows/date=…/hour=…/name.parquet`).
    pub rel_path: String,
    pub table: &'static str,
    pub sha256: String,
    pub bytes: u64,
    pub rows: u64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub min_ts_us: i64,
    pub max_ts_us: i64,
}

/// Columns written without dictionary encoding (nearly unique values).
const NO_DICTIONARY: &[&str] = &[
    "ts",
    "ts_end",
    "kafka_offset",
    "sequence_num",
    "bytes",
    "packets",
    "records",
    "flow_id",
    "event_id",
    "src_port",
    "raw",
    "raw_sha256",
];

/// A Parquet file being written: hashed as it is written, fsynced when finished.
pub struct ParquetSink {
    path: PathBuf,
    writer: ArrowWriter<Hashing<BufWriter<File>>>,
}

impl ParquetSink {
    /// Create `path` (it must not exist) for batches of `schema`.
    pub fn create(
        path: &Path,
        schema: arrow::datatypes::SchemaRef,
        settings: &ParquetSettings,
        metadata: Vec<(String, String)>,
    ) -> Result<Self> {
        let level = ZstdLevel::try_new(settings.zstd_level)
            .map_err(|e| Error::Config(format!("zstd level: {e}")))?;
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(settings.row_group_rows.max(1)))
            .set_key_value_metadata(Some(
                metadata
                    .into_iter()
                    .map(|(k, v)| KeyValue::new(k, v))
                    .collect(),
            ))
            .set_created_by(format!("flowaudit {}", env!("CARGO_PKG_VERSION")));
        // Nearly unique columns gain nothing from a dictionary but its cost.
        for col in NO_DICTIONARY {
            if schema.column_with_name(col).is_some() {
                props = props.set_column_dictionary_enabled(
                    parquet::schema::types::ColumnPath::from(*col),
                    false,
                );
            }
        }
        let props = props.build();
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io_err("create", path))?;
        let out = Hashing {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            bytes: 0,
        };
        Ok(Self {
            path: path.to_path_buf(),
            writer: ArrowWriter::try_new(out, schema, Some(props))?,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        Ok(self.writer.write(batch)?)
    }

    /// Write the footer, fsync, and return the file's SHA-256 and size.
    pub fn finish(self) -> Result<(String, u64)> {
        let path = self.path;
        let mut out = self.writer.into_inner()?;
        out.flush().map_err(io_err("write", &path))?;
        let file = out.inner.into_inner().map_err(|e| Error::Io {
            op: "write",
            path: path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err("fsync", &path))?;
        Ok((hex::encode(out.hasher.finalize()), out.bytes))
    }
}

/// Write `batch` to `path` (created new), returning its SHA-256 and size. The file is fsynced.
pub fn write_parquet(
    path: &Path,
    batch: &RecordBatch,
    settings: &ParquetSettings,
    metadata: Vec<(String, String)>,
) -> Result<(String, u64)> {
    let mut sink = ParquetSink::create(path, batch.schema(), settings, metadata)?;
    sink.write(batch)?;
    sink.finish()
}

/// Write `batches` (at least one; all of `schema`) to `path` (created new) as one file, returning
/// its SHA-256 and size. The file is fsynced.
pub fn write_parquet_batches(
    path: &Path,
    schema: arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
    settings: &ParquetSettings,
    metadata: Vec<(String, String)>,
) -> Result<(String, u64)> {
    let mut sink = ParquetSink::create(path, schema, settings, metadata)?;
    for b in batches {
        sink.write(b)?;
    }
    sink.finish()
}

/// fsync a directory, so that a rename or create inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// SHA-256 of a file's contents, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(io_err("open", path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io_err("read", path))?;
    Ok(hex::encode(h.finalize()))
}
