//! `flowaudit sql`: the analysts' shell over the read-only engine.
//!
//! Interactive when stdin is a terminal (line editing and history through rustyline);
//! otherwise statements are read from stdin line by line, so a script can be piped in. A
//! statement ends with `;`; lines starting with `\` are shell commands (`\d`, `\d TABLE`,
//! `\format F`, `\timing`, `\q`, `\?`). Ctrl-C during a query cancels the query (its stream is
//! dropped, which stops every task of the plan) and the shell goes on; at the prompt it clears
//! the line.
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, BooleanArray, StringArray, UInt64Array};
use arrow::record_batch::RecordBatch;
use futures::StreamExt;

use crate::sql::{stream_error, Checked, SqlEngine, SqlError};
use crate::sqlout::{Format, ResultWriter};

/// Why one statement did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error("cancelled")]
    Cancelled,
    #[error("writing the result: {0}")]
    Output(#[from] arrow::error::ArrowError),
    #[error("{0}")]
    Usage(String),
}

#[derive(Clone)]
pub struct ShellOptions {
    pub format: Format,
    /// Results go here instead of stdout.
    pub output: Option<PathBuf>,
    /// Print the row count and time of each statement to stderr.
    pub timing: bool,
    pub history: Option<PathBuf>,
}

/// What one statement produced.
pub struct Ran {
    pub rows: usize,
    pub seconds: f64,
}

/// Where results go: stdout, or the --output file (truncated once, then appended to).
struct Sink {
    file: Option<std::fs::File>,
}

impl Sink {
    fn open(opts: &ShellOptions) -> anyhow::Result<Self> {
        use anyhow::Context;
        let file = match &opts.output {
            Some(p) => Some(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            ),
            None => {
                if opts.format == Format::Parquet && std::io::stdout().is_terminal() {
                    anyhow::bail!(
                        "--format parquet writes binary: give --output FILE (or redirect stdout)"
                    );
                }
                None
            }
        };
        Ok(Self { file })
    }

    fn writer(&self) -> Box<dyn Write + Send + '_> {
        match &self.file {
            Some(f) => Box::new(std::io::BufWriter::new(f)),
            None => Box::new(std::io::BufWriter::new(std::io::stdout())),
        }
    }
}

/// SIGINT, caught for the whole session: it cancels the running query instead of the process.
struct Interrupt(tokio::signal::unix::Signal);

impl Interrupt {
    fn install(rt: &tokio::runtime::Runtime) -> anyhow::Result<Self> {
        let _guard = rt.enter();
        let sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        Ok(Self(sig))
    }

    /// Drop a Ctrl-C pressed while no query ran, so that it does not cancel the next one.
    fn forget_earlier(&mut self) {
        use futures::FutureExt;
        while let Some(Some(())) = self.0.recv().now_or_never() {}
    }
}

/// Plan, run and write one statement; Ctrl-C cancels it.
async fn run_statement(
    engine: &SqlEngine,
    stmt: &Checked,
    format: Format,
    sink: &Sink,
    interrupt: &mut Interrupt,
) -> Result<Ran, ShellError> {
    let start = Instant::now();
    interrupt.forget_earlier();
    let work = async {
        let planned = engine.plan(stmt).await?;
        let mut stream = planned.execute(None).await?;
        let mut writer = ResultWriter::new(format, sink.writer(), &stream.schema())?;
        let mut rows = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| stream_error(e, &engine.limits))?;
            rows += batch.num_rows();
            writer.write(&batch)?;
        }
        writer.finish()?;
        Ok::<_, ShellError>(rows)
    };
    let rows = tokio::select! {
        r = work => r?,
        _ = interrupt.0.recv() => return Err(ShellError::Cancelled),
    };
    Ok(Ran {
        rows,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn report(ran: &Ran) {
    eprintln!(
        "{} row{} in {:.3} s",
        ran.rows,
        if ran.rows == 1 { "" } else { "s" },
        ran.seconds
    );
}

/// Run a script (`-c` or `-f`): every statement in order, stopping at the first error.
pub fn run_script(
    rt: &tokio::runtime::Runtime,
    engine: &SqlEngine,
    sql: &str,
    origin: &str,
    opts: &ShellOptions,
) -> anyhow::Result<()> {
    if sql.trim_start().starts_with('\\') {
        // A shell command given to -c, as in `flowaudit sql -c '\d flows'`.
        let sink = Sink::open(opts)?;
        command(rt, engine, sql.trim(), &mut opts.clone(), &sink)
            .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        return Ok(());
    }
    let stmts = SqlEngine::parse(sql).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    if stmts.is_empty() {
        anyhow::bail!("{origin}: no SQL statement");
    }
    if opts.format == Format::Parquet && stmts.len() > 1 {
        anyhow::bail!(
            "{origin}: --format parquet writes one result, and there are {} statements",
            stmts.len()
        );
    }
    let sink = Sink::open(opts)?;
    let mut interrupt = Interrupt::install(rt)?;
    let n = stmts.len();
    for (i, stmt) in stmts.iter().enumerate() {
        let ran = rt.block_on(run_statement(
            engine,
            stmt,
            opts.format,
            &sink,
            &mut interrupt,
        ));
        match ran {
            Ok(ran) if opts.timing => report(&ran),
            Ok(_) => {}
            Err(e) if n == 1 => anyhow::bail!("{origin}: {e}"),
            Err(e) => anyhow::bail!("{origin}, statement {} of {n}: {e}", i + 1),
        }
    }
    Ok(())
}

/// The interactive shell (or line-by-line stdin when it is not a terminal).
pub fn interactive(
    rt: &tokio::runtime::Runtime,
    engine: &SqlEngine,
    mut opts: ShellOptions,
) -> anyhow::Result<()> {
    let tty = std::io::stdin().is_terminal();
    let sink = Sink::open(&opts)?;
    let mut lines: Box<dyn LineSource> = if tty {
        eprintln!("flowaudit sql: read-only. End statements with ';'. \\d lists the tables, \\? the commands, \\q quits.");
        Box::new(Editor::new(opts.history.clone())?)
    } else {
        Box::new(std::io::stdin().lock().lines())
    };
    // Installed after the editor, which sets a SIGINT handler of its own for as long as it
    // lives: ours comes first (and passes the signal on), so Ctrl-C during a query cancels the
    // query instead of being swallowed; at the prompt the terminal is raw and Ctrl-C is a key.
    let mut interrupt = Interrupt::install(rt)?;
    if tty {
        opts.timing = true;
    }
    let mut buf = String::new();
    loop {
        let prompt = if buf.is_empty() {
            "flowaudit> "
        } else {
            "        -> "
        };
        let line = match lines.next_line(prompt)? {
            Line::Text(l) => l,
            Line::Interrupted => {
                buf.clear();
                continue;
            }
            Line::Eof => break,
        };
        let trimmed = line.trim();
        if buf.is_empty() && trimmed.starts_with('\\') {
            match command(rt, engine, trimmed, &mut opts, &sink) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    eprintln!(
                        "error: {}",
                        crate::sqlout::neutralise_keeping_layout(&e.to_string())
                    );
                    continue;
                }
            }
        }
        if buf.is_empty() && trimmed.is_empty() {
            continue;
        }
        buf.push_str(&line);
        buf.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let sql = std::mem::take(&mut buf);
        lines.remember(sql.trim());
        let stmts = match SqlEngine::parse(&sql) {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "error: {}",
                    crate::sqlout::neutralise_keeping_layout(&e.to_string())
                );
                continue;
            }
        };
        for stmt in &stmts {
            match rt.block_on(run_statement(
                engine,
                stmt,
                opts.format,
                &sink,
                &mut interrupt,
            )) {
                Ok(ran) => {
                    if opts.timing {
                        report(&ran)
                    }
                }
                Err(e) => {
                    eprintln!(
                        "error: {}",
                        crate::sqlout::neutralise_keeping_layout(&e.to_string())
                    );
                    break;
                }
            }
        }
    }
    if !buf.trim().is_empty() {
        eprintln!("warning: the last statement has no ';' and was not run");
    }
    Ok(())
}

/// A shell command; Ok(false) quits.
fn command(
    rt: &tokio::runtime::Runtime,
    engine: &SqlEngine,
    line: &str,
    opts: &mut ShellOptions,
    sink: &Sink,
) -> Result<bool, ShellError> {
    let mut words = line.split_whitespace();
    let cmd = words.next().unwrap_or("");
    let arg = words.next().map(|s| s.trim_end_matches(';'));
    match (cmd, arg) {
        ("\\q", _) => return Ok(false),
        ("\\?", _) => {
            eprintln!(
                "\\d            list the tables\n\
                 \\d TABLE      describe a table's columns\n\
                 \\format F     table, csv, json, ndjson (parquet needs --output)\n\
                 \\timing       print rows and time after each query (on/off)\n\
                 \\q            quit\n\
                 Ctrl-C cancels a running query; Ctrl-D quits."
            );
        }
        ("\\timing", _) => {
            opts.timing = !opts.timing;
            eprintln!("timing is {}", if opts.timing { "on" } else { "off" });
        }
        ("\\format", Some(f)) => {
            use clap::ValueEnum;
            let f = Format::from_str(f, true).map_err(|_| {
                ShellError::Usage(format!(
                    "unknown format \"{f}\": table, csv, json, ndjson, parquet"
                ))
            })?;
            if f == Format::Parquet && opts.output.is_none() {
                return Err(ShellError::Usage("parquet needs --output FILE".into()));
            }
            opts.format = f;
        }
        ("\\d", None) => {
            let batch = rt.block_on(tables_batch(engine))?;
            write_batch(&batch, opts.format, sink)?;
        }
        ("\\d", Some(t)) => {
            let batch = rt.block_on(describe_batch(engine, t))?;
            write_batch(&batch, opts.format, sink)?;
        }
        _ => {
            return Err(ShellError::Usage(format!(
                "unknown command \"{line}\" (\\? lists the commands)"
            )))
        }
    }
    Ok(true)
}

fn write_batch(batch: &RecordBatch, format: Format, sink: &Sink) -> Result<(), ShellError> {
    let mut w = ResultWriter::new(format, sink.writer(), &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    Ok(())
}

/// `\d`: name, kind and column count of every table.
pub async fn tables_batch(engine: &SqlEngine) -> Result<RecordBatch, SqlError> {
    let tables = engine.tables().await?;
    let col = |f: &dyn Fn(&crate::sql::TableInfo) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(tables.iter().map(f)))
    };
    Ok(RecordBatch::try_from_iter(vec![
        ("table", col(&|t| t.name.clone())),
        ("kind", col(&|t| t.kind.to_string())),
        (
            "columns",
            Arc::new(UInt64Array::from_iter_values(
                tables.iter().map(|t| t.schema.fields().len() as u64),
            )) as ArrayRef,
        ),
    ])
    .expect("fixed schema"))
}

/// `\d TABLE`: its columns, types and nullability.
pub async fn describe_batch(engine: &SqlEngine, table: &str) -> Result<RecordBatch, ShellError> {
    let tables = engine.tables().await?;
    let Some(t) = tables.iter().find(|t| t.name == table) else {
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        return Err(ShellError::Usage(format!(
            "no table \"{table}\" (tables: {})",
            names.join(", ")
        )));
    };
    let fields = t.schema.fields();
    Ok(RecordBatch::try_from_iter(vec![
        (
            "column",
            Arc::new(StringArray::from_iter_values(
                fields.iter().map(|f| f.name().clone()),
            )) as ArrayRef,
        ),
        (
            "type",
            Arc::new(StringArray::from_iter_values(
                fields.iter().map(|f| f.data_type().to_string()),
            )),
        ),
        (
            "nullable",
            Arc::new(BooleanArray::from_iter(
                fields.iter().map(|f| Some(f.is_nullable())),
            )),
        ),
    ])
    .expect("fixed schema"))
}

enum Line {
    Text(String),
    Interrupted,
    Eof,
}

trait LineSource {
    fn next_line(&mut self, prompt: &str) -> anyhow::Result<Line>;
    fn remember(&mut self, _statement: &str) {}
}

impl<B: BufRead> LineSource for std::io::Lines<B> {
    fn next_line(&mut self, _prompt: &str) -> anyhow::Result<Line> {
        match self.next() {
            Some(Ok(l)) => Ok(Line::Text(l)),
            Some(Err(e)) => Err(anyhow::anyhow!("reading stdin: {e}")),
            None => Ok(Line::Eof),
        }
    }
}

struct Editor {
    rl: rustyline::DefaultEditor,
    history: Option<PathBuf>,
}

impl Editor {
    fn new(history: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut rl = rustyline::DefaultEditor::new()?;
        if let Some(h) = &history {
            // A missing history file is normal on first use.
            let _ = rl.load_history(h);
        }
        Ok(Self { rl, history })
    }
}

impl LineSource for Editor {
    fn next_line(&mut self, prompt: &str) -> anyhow::Result<Line> {
        use rustyline::error::ReadlineError;
        match self.rl.readline(prompt) {
            Ok(l) => Ok(Line::Text(l)),
            Err(ReadlineError::Interrupted) => Ok(Line::Interrupted),
            Err(ReadlineError::Eof) => Ok(Line::Eof),
            Err(e) => Err(e.into()),
        }
    }

    fn remember(&mut self, statement: &str) {
        let _ = self.rl.add_history_entry(statement);
        if let Some(h) = &self.history {
            if let Some(dir) = h.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(e) = self.rl.save_history(h) {
                tracing::warn!(path = %h.display(), error = %e, "could not save the SQL history");
            }
        }
    }
}
