//! Result writers for `flowaudit sql`: each takes batches as they arrive, so large results
//! stream to the terminal or file instead of being collected in memory.
use std::io::Write;

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned text table (column widths from the first rows).
    Table,
    /// Comma-separated, with a header row.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// Parquet (zstd); needs --output or a non-terminal stdout.
    Parquet,
}

/// A writer of one result.
pub enum ResultWriter<W: Write + Send> {
    Table(TableWriter<W>),
    Csv(arrow::csv::Writer<W>),
    Json(arrow::json::ArrayWriter<W>),
    Ndjson(arrow::json::LineDelimitedWriter<W>),
    Parquet(parquet::arrow::ArrowWriter<W>),
}

impl<W: Write + Send> ResultWriter<W> {
    pub fn new(format: Format, out: W, schema: &SchemaRef) -> Result<Self, ArrowError> {
        Ok(match format {
            Format::Table => ResultWriter::Table(TableWriter::new(out, schema.clone())),
            Format::Csv => ResultWriter::Csv(
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(out),
            ),
            Format::Json => ResultWriter::Json(
                arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build(out),
            ),
            Format::Ndjson => ResultWriter::Ndjson(
                arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build(out),
            ),
            Format::Parquet => {
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                    .build();
                ResultWriter::Parquet(
                    parquet::arrow::ArrowWriter::try_new(out, schema.clone(), Some(props))
                        .map_err(|e| ArrowError::ExternalError(Box::new(e)))?,
                )
            }
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        match self {
            ResultWriter::Table(w) => w.write(batch),
            ResultWriter::Csv(w) => w.write(batch),
            ResultWriter::Json(w) => w.write(batch),
            ResultWriter::Ndjson(w) => w.write(batch),
            ResultWriter::Parquet(w) => w
                .write(batch)
                .map_err(|e| ArrowError::ExternalError(Box::new(e))),
        }
    }

    /// Finish the result (footer, closing bracket, Parquet footer) and flush.
    pub fn finish(self) -> Result<(), ArrowError> {
        match self {
            ResultWriter::Table(w) => w.finish(),
            ResultWriter::Csv(w) => w.into_inner().flush().map_err(Into::into),
            ResultWriter::Json(mut w) => {
                w.finish()?;
                let mut out = w.into_inner();
                out.write_all(b"\n")?;
                out.flush().map_err(Into::into)
            }
            ResultWriter::Ndjson(mut w) => {
                w.finish()?;
                w.into_inner().flush().map_err(Into::into)
            }
            ResultWriter::Parquet(w) => w
                .close()
                .map(|_| ())
                .map_err(|e| ArrowError::ExternalError(Box::new(e))),
        }
    }
}

/// Rows used to size the columns before the first line is printed.
const SIZING_ROWS: usize = 200;
/// Widest a column gets; longer values are cut with "…".
const MAX_WIDTH: usize = 60;

/// An aligned table that streams: the first [`SIZING_ROWS`] rows set the column widths, then
/// every row is printed as it arrives.
pub struct TableWriter<W: Write> {
    out: W,
    schema: SchemaRef,
    pending: Vec<Vec<String>>,
    widths: Option<Vec<usize>>,
    rows: usize,
}

impl<W: Write> TableWriter<W> {
    fn new(out: W, schema: SchemaRef) -> Self {
        Self {
            out,
            schema,
            pending: Vec::new(),
            widths: None,
            rows: 0,
        }
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        let opts = FormatOptions::default().with_null("NULL");
        let fmts = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = fmts
                .iter()
                .map(|f| f.value(row).to_string().replace(['\n', '\t'], " "))
                .collect();
            self.rows += 1;
            if self.widths.is_some() {
                self.print_row(&cells)?;
            } else {
                self.pending.push(cells);
                if self.pending.len() >= SIZING_ROWS {
                    self.flush_pending()?;
                }
            }
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> Result<(), ArrowError> {
        let mut widths: Vec<usize> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().chars().count())
            .collect();
        for row in &self.pending {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        for w in widths.iter_mut() {
            *w = (*w).min(MAX_WIDTH);
        }
        self.widths = Some(widths);
        let sep = self.separator();
        let header: Vec<String> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        writeln!(self.out, "{sep}")?;
        self.print_row(&header)?;
        writeln!(self.out, "{sep}")?;
        for row in std::mem::take(&mut self.pending) {
            self.print_row(&row)?;
        }
        Ok(())
    }

    fn separator(&self) -> String {
        let widths = self.widths.as_ref().expect("sized");
        let mut s = String::from("+");
        for w in widths {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
        }
        s
    }

    fn print_row(&mut self, cells: &[String]) -> Result<(), ArrowError> {
        let widths = self.widths.as_ref().expect("sized");
        let mut line = String::from("|");
        for (w, c) in widths.iter().zip(cells) {
            let n = c.chars().count();
            let cell: String = if n > *w {
                c.chars().take(w.saturating_sub(1)).chain(['…']).collect()
            } else {
                c.clone()
            };
            let pad = w - cell.chars().count();
            line.push(' ');
            line.push_str(&cell);
            line.push_str(&" ".repeat(pad + 1));
            line.push('|');
        }
        writeln!(self.out, "{line}")?;
        Ok(())
    }

    fn finish(mut self) -> Result<(), ArrowError> {
        if self.widths.is_none() {
            self.flush_pending()?;
        }
        let sep = self.separator();
        writeln!(self.out, "{sep}")?;
        let n = self.rows;
        writeln!(self.out, "({n} row{})", if n == 1 { "" } else { "s" })?;
        self.out.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array, StringArray};
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            (
                "country",
                Arc::new(StringArray::from(vec![Some("US"), None])) as Arc<dyn Array>,
            ),
            ("bytes", Arc::new(Int64Array::from(vec![10, 2000]))),
        ])
        .unwrap()
    }

    fn render(format: Format) -> String {
        let b = batch();
        let mut buf = Vec::new();
        let mut w = ResultWriter::new(format, &mut buf, &b.schema()).unwrap();
        w.write(&b).unwrap();
        w.write(&b.slice(0, 1)).unwrap();
        w.finish().unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn table_is_aligned_and_counts_rows() {
        assert_eq!(
            render(Format::Table),
            "+---------+-------+\n\
             | country | bytes |\n\
             +---------+-------+\n\
             | US      | 10    |\n\
             | NULL    | 2000  |\n\
             | US      | 10    |\n\
             +---------+-------+\n\
             (3 rows)\n"
        );
    }

    #[test]
    fn text_formats_stream_every_batch() {
        assert_eq!(render(Format::Csv), "country,bytes\nUS,10\n,2000\nUS,10\n");
        assert_eq!(
            render(Format::Ndjson),
            "{\"country\":\"US\",\"bytes\":10}\n{\"country\":null,\"bytes\":2000}\n{\"country\":\"US\",\"bytes\":10}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&render(Format::Json)).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 3);
        assert_eq!(v[1]["country"], serde_json::Value::Null);
    }

    #[test]
    fn long_cells_are_cut() {
        let long = "x".repeat(100);
        let b = RecordBatch::try_from_iter(vec![(
            "v",
            Arc::new(StringArray::from(vec![long.as_str()])) as Arc<dyn Array>,
        )])
        .unwrap();
        let mut buf = Vec::new();
        let mut w = ResultWriter::new(Format::Table, &mut buf, &b.schema()).unwrap();
        w.write(&b).unwrap();
        w.finish().unwrap();
        let s = String::from_utf8(buf).unwrap();
        assert!(
            s.contains(&format!("{}…", "x".repeat(MAX_WIDTH - 1))),
            "{s}"
        );
    }
}
