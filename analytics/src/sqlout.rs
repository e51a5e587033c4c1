//! Result writers for `flowaudit sql`: each takes batches as they arrive, so large results
//! stream to the terminal or file instead of being collected in memory.
//!
//! Values come from events, that is from outside: a field may carry terminal escape sequences
//! (ESC `[`…, OSC, BEL, CR, 8-bit C1 controls like U+009B) or bidirectional overrides that make
//! text read differently from what it is. The text formats never write those raw:
//! - `table` and `csv` show them as visible escapes, `\x1b` for C0 controls and DEL,
//!   `\u{9b}` for C1 controls and `\u{202e}` for the bidirectional controls U+202A–U+202E and
//!   U+2066–U+2069 ([`neutralise`]); `table` also shows a newline or tab inside a value as a
//!   space, `csv` keeps them (quoted, as CSV carries them).
//! - `json` and `ndjson` write the same characters as JSON `\u` escapes, so the text is
//!   harmless on a terminal and the value read back is exactly the value stored.
//! - `parquet` is binary and written unchanged.
use std::borrow::Cow;
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

/// Is `c` a character a terminal may act on rather than show, or that makes text read other
/// than it is: a C0 control, DEL, a C1 control, or a bidirectional embedding, override or
/// isolate?
fn is_hostile(c: char) -> bool {
    matches!(c, '\0'..='\x1f' | '\x7f'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control character (C0, DEL, C1) and bidirectional control written as a
/// visible escape: `\x1b` for C0 and DEL, `\u{9b}`, `\u{202e}` for the others. Text without
/// them is returned as it is.
pub fn neutralise(s: &str) -> Cow<'_, str> {
    neutralise_but(s, |_| false)
}

/// [`neutralise`], keeping newlines and tabs (text laid out on several lines: a CSV cell, a
/// `<pre>` block).
pub fn neutralise_keeping_layout(s: &str) -> Cow<'_, str> {
    neutralise_but(s, |c| c == '\n' || c == '\t')
}

fn neutralise_but(s: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    let hostile = |c: char| is_hostile(c) && !keep(c);
    if !s.chars().any(&hostile) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !hostile(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// How [`Neutralising`] writes a hostile character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// `\x1b`, `\u{9b}` (CSV: the escape is visible text).
    Visible,
    /// `\u001b`, `\u009b` (JSON: the escape is the same string).
    Json,
}

/// A byte stream filter over UTF-8 text that rewrites hostile characters (see [`is_hostile`];
/// newline and tab pass) as escapes. A character split across two writes is held until the
/// next write or [`Neutralising::finish`].
pub struct Neutralising<W: Write> {
    inner: W,
    escape: Escape,
    held: Vec<u8>,
}

impl<W: Write> Neutralising<W> {
    fn new(inner: W, escape: Escape) -> Self {
        Self {
            inner,
            escape,
            held: Vec::new(),
        }
    }

    fn escaped(&self, cp: u32) -> String {
        match (self.escape, cp < 0x80) {
            (Escape::Json, _) => format!("\\u{cp:04x}"),
            (Escape::Visible, true) => format!("\\x{cp:02x}"),
            (Escape::Visible, false) => format!("\\u{{{cp:x}}}"),
        }
    }

    /// Write what is held and flush; the writer underneath.
    pub fn finish(mut self) -> std::io::Result<W> {
        let held = std::mem::take(&mut self.held);
        self.inner.write_all(&held)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Neutralising<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(buf);
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            // The code point of a hostile character starting at i and its length in bytes;
            // `None` when the bytes there are harmless; `Err` when the buffer ends inside a
            // sequence that could still become hostile.
            let hit: Result<Option<(u32, usize)>, ()> = match b {
                b'\n' | b'\t' => Ok(None),
                0x00..=0x1f | 0x7f => Ok(Some((b as u32, 1))),
                0xc2 => match data.get(i + 1) {
                    None => Err(()),
                    Some(&c) if (0x80..=0x9f).contains(&c) => Ok(Some((c as u32, 2))),
                    Some(_) => Ok(None),
                },
                0xe2 => match (data.get(i + 1), data.get(i + 2)) {
                    (None, _) => Err(()),
                    (Some(0x80 | 0x81), None) => Err(()),
                    (Some(&0x80), Some(&c)) if (0xaa..=0xae).contains(&c) => {
                        Ok(Some((0x2000 + (c as u32 - 0x80), 3)))
                    }
                    (Some(&0x81), Some(&c)) if (0xa6..=0xa9).contains(&c) => {
                        Ok(Some((0x2040 + (c as u32 - 0x80), 3)))
                    }
                    _ => Ok(None),
                },
                _ => Ok(None),
            };
            match hit {
                Ok(Some((cp, len))) => {
                    out.extend_from_slice(self.escaped(cp).as_bytes());
                    i += len;
                }
                Ok(None) => {
                    out.push(b);
                    i += 1;
                }
                Err(()) => {
                    self.held = data[i..].to_vec();
                    break;
                }
            }
        }
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A writer of one result.
pub enum ResultWriter<W: Write + Send> {
    Table(TableWriter<W>),
    Csv(Box<arrow::csv::Writer<Neutralising<W>>>),
    Json(arrow::json::ArrayWriter<Neutralising<W>>),
    Ndjson(arrow::json::LineDelimitedWriter<Neutralising<W>>),
    Parquet(parquet::arrow::ArrowWriter<W>),
}

impl<W: Write + Send> ResultWriter<W> {
    pub fn new(format: Format, out: W, schema: &SchemaRef) -> Result<Self, ArrowError> {
        Ok(match format {
            Format::Table => ResultWriter::Table(TableWriter::new(out, schema.clone())),
            Format::Csv => ResultWriter::Csv(Box::new(
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(Neutralising::new(out, Escape::Visible)),
            )),
            Format::Json => ResultWriter::Json(
                arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build(Neutralising::new(out, Escape::Json)),
            ),
            Format::Ndjson => ResultWriter::Ndjson(
                arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build(Neutralising::new(out, Escape::Json)),
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
            ResultWriter::Csv(w) => (*w).into_inner().finish().map(drop).map_err(Into::into),
            ResultWriter::Json(mut w) => {
                w.finish()?;
                let mut out = w.into_inner();
                out.write_all(b"\n")?;
                out.finish().map(drop).map_err(Into::into)
            }
            ResultWriter::Ndjson(mut w) => {
                w.finish()?;
                w.into_inner().finish().map(drop).map_err(Into::into)
            }
            ResultWriter::Parquet(w) => w
                .close()
                .map(|_| ())
                .map_err(|e| ArrowError::ExternalError(Box::new(e))),
        }
    }
}

/// A value as a table cell: one line, nothing a terminal acts on.
fn table_cell(s: &str) -> String {
    neutralise(&s.replace(['\n', '\t'], " ")).into_owned()
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
                .map(|f| table_cell(&f.value(row).to_string()))
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
            .map(|f| table_cell(f.name()).chars().count())
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
            .map(|f| table_cell(f.name()))
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

    const HOSTILE: &[&str] = &[
        "\x1b]0;owned\x07title",
        "\x1b[2J\x1b[31mred",
        "ok\rOVERWRITTEN",
        "\u{9b}31m8-bit CSI",
        "abc\u{202e}gpj.exe",
        "del\x7f and a \u{2066}isolate",
    ];

    fn hostile_batch() -> RecordBatch {
        RecordBatch::try_from_iter(vec![(
            "v\x1b[1m",
            Arc::new(StringArray::from(HOSTILE.to_vec())) as Arc<dyn Array>,
        )])
        .unwrap()
    }

    /// No byte or character a terminal acts on, in any text format.
    fn assert_inert(out: &str, format: Format) {
        let bad: Vec<char> = out
            .chars()
            .filter(|c| *c != '\n' && is_hostile(*c))
            .collect();
        assert!(bad.is_empty(), "{format:?} writes {bad:?} raw: {out:?}");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let b = hostile_batch();
        for format in [Format::Table, Format::Csv, Format::Json, Format::Ndjson] {
            let mut buf = Vec::new();
            let mut w = ResultWriter::new(format, &mut buf, &b.schema()).unwrap();
            w.write(&b).unwrap();
            w.finish().unwrap();
            let out = String::from_utf8(buf).unwrap();
            assert_inert(&out, format);
            match format {
                Format::Table | Format::Csv => {
                    assert!(out.contains("\\x1b]0;owned\\x07title"), "{out}");
                    assert!(out.contains("ok\\x0dOVERWRITTEN"), "{out}");
                    assert!(out.contains("\\u{9b}31m"), "{out}");
                    assert!(out.contains("abc\\u{202e}gpj.exe"), "{out}");
                    assert!(out.contains("del\\x7f and a \\u{2066}isolate"), "{out}");
                }
                // JSON escapes are lossless: the values read back are the values stored.
                Format::Json => {
                    let v: Vec<serde_json::Map<String, serde_json::Value>> =
                        serde_json::from_str(&out).unwrap();
                    let got: Vec<&str> =
                        v.iter().map(|r| r["v\x1b[1m"].as_str().unwrap()).collect();
                    assert_eq!(got, HOSTILE);
                }
                Format::Ndjson => {
                    let got: Vec<String> = out
                        .lines()
                        .map(|l| {
                            let r: serde_json::Value = serde_json::from_str(l).unwrap();
                            r["v\x1b[1m"].as_str().unwrap().to_string()
                        })
                        .collect();
                    assert_eq!(got, HOSTILE);
                }
                Format::Parquet => unreachable!(),
            }
        }
    }

    #[test]
    fn a_character_split_across_writes_is_still_caught() {
        let text = "a\u{9b}b\u{202e}c\u{2069}d\u{20ac}e\u{c4}f".as_bytes();
        for escape in [Escape::Visible, Escape::Json] {
            let mut w = Neutralising::new(Vec::new(), escape);
            for b in text {
                w.write_all(&[*b]).unwrap();
            }
            let out = String::from_utf8(w.finish().unwrap()).unwrap();
            let want = match escape {
                Escape::Visible => "a\\u{9b}b\\u{202e}c\\u{2069}d\u{20ac}e\u{c4}f",
                Escape::Json => "a\\u009bb\\u202ec\\u2069d\u{20ac}e\u{c4}f",
            };
            assert_eq!(out, want);
        }
    }

    #[test]
    fn neutralise_leaves_plain_text_alone() {
        assert!(matches!(
            neutralise("e1001 in DE, 3 € ÄÖ"),
            Cow::Borrowed(_)
        ));
        assert_eq!(neutralise("a\x1b[0mb"), "a\\x1b[0mb");
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
