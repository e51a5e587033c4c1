//! `flowaudit config check --config FILE`: validate a `flowaudit.toml` the way the subcommands
//! will read it, naming `FILE:LINE:COLUMN` and the key of each problem, and print the effective
//! configuration (the file with the environment variables that override it applied) with secrets
//! masked.
//!
//! Two layers of checks: the file's shape (TOML syntax, known keys, value types: the same serde
//! types every subcommand deserialises), then each value's meaning with the parsers the
//! subcommands use (durations, sizes, cron schedules, the engine, addresses, the warehouse URL,
//! Flight credentials, the ingest limits). Every problem is reported, not only the first.
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::config::FileConfig;

/// One problem: where, which key, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `FILE:LINE:COLUMN`, or the environment variable the value came from.
    pub at: String,
    /// The dotted key (`serve.tick_s`, `flight.users[0].hash`), or empty for a syntax error.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.at, self.message)
        } else {
            write!(f, "{}: {}: {}", self.at, self.key, self.message)
        }
    }
}

/// What `config check` found.
#[derive(Debug)]
pub struct Checked {
    /// The effective configuration, secrets masked, as TOML.
    pub effective: String,
    /// Keys whose value an environment variable set, with the variable.
    pub from_env: Vec<(String, String)>,
    pub problems: Vec<Problem>,
}

/// Errors reading the file (not problems in it).
#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
pub struct ReadError {
    path: PathBuf,
    source: std::io::Error,
}

/// The file's text and key spans, to turn a byte offset or a key path into `FILE:LINE:COL`.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
    doc: Option<toml_edit::ImDocument<&'a str>>,
}

impl Source<'_> {
    fn position(&self, offset: usize) -> String {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("{}:{line}:{col}", self.path.display())
    }

    /// The key path whose key or value span holds `span` (the innermost).
    fn key_at(&self, span: &Range<usize>) -> String {
        fn walk(
            table: &dyn toml_edit::TableLike,
            prefix: &str,
            span: &Range<usize>,
        ) -> Option<String> {
            for (k, item) in table.iter() {
                let path = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                let key_span = table.key(k).and_then(|k| k.span());
                if key_span
                    .is_some_and(|s| s.start <= span.start && span.end <= s.end.max(s.start + 1))
                {
                    return Some(path);
                }
                if let Some(inner) = item.as_table_like() {
                    if let Some(p) = walk(inner, &path, span) {
                        return Some(p);
                    }
                }
                if let Some(arr) = item.as_array_of_tables() {
                    for (i, t) in arr.iter().enumerate() {
                        if let Some(p) = walk(t, &format!("{path}[{i}]"), span) {
                            return Some(p);
                        }
                    }
                }
                if item
                    .span()
                    .is_some_and(|s| s.start <= span.start && span.end <= s.end)
                {
                    return Some(path);
                }
            }
            None
        }
        self.doc
            .as_ref()
            .and_then(|d| walk(d.as_table(), "", span))
            .unwrap_or_default()
    }

    /// Where a key path is (its key), or the file when it is not in the file.
    fn locate(&self, key: &str) -> String {
        let Some(doc) = &self.doc else {
            return self.path.display().to_string();
        };
        let mut table: &dyn toml_edit::TableLike = doc.as_table();
        let mut found = None;
        let parts: Vec<&str> = key.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let (name, index) = match part.split_once('[') {
                Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (*part, None),
            };
            let Some(item) = table.get(name) else { break };
            found = table.key(name).and_then(|k| k.span()).or(found);
            if i + 1 == parts.len() {
                break;
            }
            match (index, item.as_array_of_tables(), item.as_table_like()) {
                (Some(n), Some(arr), _) => match arr.get(n) {
                    Some(t) => table = t,
                    None => break,
                },
                (None, _, Some(t)) => table = t,
                _ => break,
            }
        }
        match found {
            Some(s) => self.position(s.start),
            None => self.path.display().to_string(),
        }
    }
}

/// Environment variables that override keys of the file: every flag's `env` whose help names
/// its key (`[config: KEY]`), from the command line's own definition. One variable may set a
/// key of each subcommand that has it (`FLOWAUDIT_METRICS`: `serve.metrics`, `ingest.metrics`).
pub fn env_keys() -> BTreeMap<String, std::collections::BTreeSet<String>> {
    fn walk(cmd: &clap::Command, out: &mut BTreeMap<String, std::collections::BTreeSet<String>>) {
        for a in cmd.get_arguments() {
            let (Some(env), Some(help)) = (a.get_env(), a.get_help()) else {
                continue;
            };
            let help = help.to_string();
            let Some(key) = help
                .split("[config: ")
                .nth(1)
                .and_then(|r| r.split(']').next())
            else {
                continue;
            };
            // `serve.scheduler = false`: a flag that sets a value, not the key's value.
            if key.contains(' ') {
                continue;
            }
            out.entry(env.to_string_lossy().into_owned())
                .or_default()
                .insert(key.to_string());
        }
        for s in cmd.get_subcommands() {
            walk(s, out);
        }
    }
    let mut out = BTreeMap::new();
    walk(&crate::cli::Cli::command(), &mut out);
    out
}

/// The TOML values a string from the environment may stand for, most literal first: the key's
/// type decides (a numeric consumer group stays a string, `1` is true for a flag).
fn env_values(v: &str) -> Vec<toml::Value> {
    let mut out = vec![toml::Value::String(v.into())];
    if let Ok(n) = v.parse::<i64>() {
        out.push(toml::Value::Integer(n));
    }
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => out.push(toml::Value::Boolean(true)),
        "false" | "0" | "no" | "off" => out.push(toml::Value::Boolean(false)),
        _ => {}
    }
    out
}

/// Check `path`, with `env` the environment (variables that override keys are applied).
pub fn check(path: &Path, env: &BTreeMap<String, String>) -> Result<Checked, ReadError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReadError {
        path: path.into(),
        source,
    })?;
    let mut problems = Vec::new();
    let doc = match toml_edit::ImDocument::parse(text.as_str()) {
        Ok(d) => Some(d),
        Err(e) => {
            let src = Source {
                path,
                text: &text,
                doc: None,
            };
            problems.push(Problem {
                at: e
                    .span()
                    .map_or_else(|| path.display().to_string(), |s| src.position(s.start)),
                key: String::new(),
                message: one_line(e.message()),
            });
            None
        }
    };
    let src = Source {
        path,
        text: &text,
        doc,
    };
    // The shape: what every subcommand deserialises. serde stops at the first problem, so the
    // file is read again without each line reported, until every unknown key or bad type is.
    // The values' meaning is then checked on what remains.
    let (mut table, shown): (toml::Table, toml::Table) = if src.doc.is_some() {
        let rest = shape_problems(&src, &mut problems);
        (
            toml::from_str(&rest).unwrap_or_default(),
            toml::from_str(&text).unwrap_or_default(),
        )
    } else {
        Default::default()
    };
    let mut shown = shown;
    // The environment's overrides.
    let mut from_env = Vec::new();
    for (var, key) in env_keys()
        .into_iter()
        .flat_map(|(var, keys)| keys.into_iter().map(move |k| (var.clone(), k)))
    {
        let Some(v) = env.get(&var) else { continue };
        let parts: Vec<&str> = key.split('.').collect();
        // The first reading the file's types accept (else the string, reported below).
        let candidates = env_values(v);
        let value = candidates
            .iter()
            .find(|c| {
                let mut t = table.clone();
                set_path(&mut t, &parts, (*c).clone());
                toml::Value::Table(t).try_into::<FileConfig>().is_ok()
            })
            .unwrap_or(&candidates[0])
            .clone();
        set_path(&mut table, &parts, value.clone());
        set_path(&mut shown, &parts, value);
        from_env.push((key, var));
    }
    let at_env: BTreeMap<&str, &str> = from_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let locate = |key: &str| match at_env.get(key) {
        Some(var) => format!("{var} (environment)"),
        None => src.locate(key),
    };
    match toml::Value::Table(table).try_into::<FileConfig>() {
        Ok(cfg) => meaning_problems(&cfg, &locate, &mut problems),
        Err(e) => problems.push(Problem {
            at: format!(
                "the environment ({})",
                from_env
                    .iter()
                    .map(|(_, v)| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            key: String::new(),
            message: one_line(e.message()),
        }),
    }
    mask(&mut shown, "");
    let effective = toml::to_string_pretty(&shown).unwrap_or_default();
    Ok(Checked {
        effective,
        from_env,
        problems,
    })
}

/// Set the value at a dotted path, making the tables on the way.
fn set_path(t: &mut toml::Table, parts: &[&str], v: toml::Value) {
    match parts {
        [] => {}
        [last] => {
            t.insert(last.to_string(), v);
        }
        [first, rest @ ..] => {
            let e = t
                .entry(first.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            if !e.is_table() {
                *e = toml::Value::Table(Default::default());
            }
            if let Some(inner) = e.as_table_mut() {
                set_path(inner, rest, v);
            }
        }
    }
}

/// Every unknown key and badly typed value, each with its position: the file is deserialised
/// with one key at a time removed until it passes, so that the next problem shows too.
/// Returns the text with the reported lines blanked out.
fn shape_problems(src: &Source<'_>, problems: &mut Vec<Problem>) -> String {
    let text = src.text;
    let mut skip: Vec<Range<usize>> = Vec::new();
    let mut masked = text.to_string();
    for _ in 0..50 {
        // Blank out what was reported (keeping offsets), and deserialise again.
        masked = text.to_string();
        for r in &skip {
            masked.replace_range(r.clone(), &" ".repeat(r.len()));
        }
        let Err(e) = toml::from_str::<FileConfig>(&masked) else {
            break;
        };
        let Some(span) = e.span() else {
            problems.push(Problem {
                at: src.path.display().to_string(),
                key: String::new(),
                message: one_line(e.message()),
            });
            break;
        };
        let key = src.key_at(&span);
        problems.push(Problem {
            at: src.position(span.start),
            key: key.clone(),
            message: one_line(e.message()),
        });
        // The whole line of the key (`key = value`): removing it lets the rest be checked.
        let start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
        let end = text[span.start..]
            .find('\n')
            .map_or(text.len(), |i| span.start + i);
        if skip.iter().any(|r| r.start == start) || start == end {
            break;
        }
        skip.push(start..end);
    }
    masked
}

/// A parser's message on one line.
fn one_line(m: &str) -> String {
    m.trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The values' meaning, with the parsers the subcommands use.
fn meaning_problems(cfg: &FileConfig, locate: &dyn Fn(&str) -> String, out: &mut Vec<Problem>) {
    let mut bad = |key: &str, message: String| {
        out.push(Problem {
            at: locate(key),
            key: key.into(),
            message,
        })
    };
    let durations: [(&str, &Option<String>); 9] = [
        ("serve.catch_up_max", &cfg.serve.catch_up_max),
        ("checkpoint.interval", &cfg.checkpoint.interval),
        ("sql.timeout", &cfg.sql.timeout),
        ("flight.session_ttl", &cfg.flight.session_ttl),
        ("flight.prepared_ttl", &cfg.flight.prepared_ttl),
        ("flight.login_window", &cfg.flight.login_window),
        ("flight.login_lockout", &cfg.flight.login_lockout),
        ("rules.lateness", &cfg.rules.lateness),
        ("compact.closed_after", &cfg.compact.closed_after),
    ];
    for (key, v) in durations {
        if let Some(v) = v {
            let zero_ok = key == "compact.closed_after" || key == "rules.lateness";
            match crate::rules::parse_duration(v) {
                _ if zero_ok && v.trim_end_matches(['s', 'm', 'h', 'd']) == "0" => {}
                Some(d) if d > crate::rules::MAX_WINDOW => {
                    bad(key, format!("\"{v}\" is longer than 36500d"))
                }
                Some(_) => {}
                None => bad(
                    key,
                    format!("\"{v}\" is not a duration like 30s, 5m, 12h or 7d"),
                ),
            }
        }
    }
    let sizes: [(&str, &Option<String>); 5] = [
        ("sql.memory_limit", &cfg.sql.memory_limit),
        ("sql.total_memory_limit", &cfg.sql.total_memory_limit),
        ("sql.max_value_bytes", &cfg.sql.max_value_bytes),
        ("sql.max_result_bytes", &cfg.sql.max_result_bytes),
        (
            "flight.max_parameter_bytes",
            &cfg.flight.max_parameter_bytes,
        ),
    ];
    for (key, v) in sizes {
        if let Some(v) = v {
            if let Err(e) = crate::sql::parse_bytes(v) {
                bad(key, e);
            }
        }
    }
    for (key, v) in [
        ("report.schedule", &cfg.report.schedule),
        ("compact.schedule", &cfg.compact.schedule),
    ] {
        if let Some(v) = v {
            if let Err(e) = v.parse::<crate::cron::Cron>() {
                bad(key, format!("\"{v}\": {e}"));
            }
        }
    }
    if let Some(e) = &cfg.engine {
        if let Err(err) = crate::cluster::Engine::parse(e) {
            bad("engine", err.to_string());
        }
    }
    for (key, v) in [
        ("flight.addr", &cfg.flight.addr),
        ("serve.metrics", &cfg.serve.metrics),
        ("ingest.metrics", &cfg.ingest.metrics),
    ] {
        if let Some(v) = v {
            if std::net::ToSocketAddrs::to_socket_addrs(v.as_str()).is_err() {
                bad(
                    key,
                    format!("\"{v}\" is not HOST:PORT (e.g. 127.0.0.1:9464)"),
                );
            }
        }
    }
    for (key, v) in [
        ("warehouse", &cfg.warehouse),
        ("ingest.warehouse", &cfg.ingest.warehouse),
        ("checkpoint.witness", &cfg.checkpoint.witness),
    ] {
        if let Some(v) = v {
            if let Err(e) = flowaudit_ingest::warehouse::Location::parse(&v.to_string_lossy()) {
                bad(key, e.to_string());
            }
        }
    }
    for (kind, list) in [("users", &cfg.flight.users), ("tokens", &cfg.flight.tokens)] {
        for (i, s) in list.iter().enumerate() {
            let key = format!("flight.{kind}[{i}]");
            let clear = if kind == "users" {
                &s.password
            } else {
                &s.token
            };
            match (clear, &s.hash, &s.sha256) {
                (Some(_), None, None) => {}
                (None, Some(h), None) => {
                    if let Err(e) = crate::auth::Credential::from_phc(&s.name, h) {
                        bad(&format!("{key}.hash"), e.to_string());
                    }
                }
                (None, None, Some(h)) => {
                    if let Err(e) = crate::auth::Credential::from_sha256_hex(&s.name, h) {
                        bad(&format!("{key}.sha256"), e.to_string());
                    }
                }
                _ => bad(
                    &format!("{key}.name"),
                    format!(
                        "\"{}\": give exactly one of the secret, its hash or its sha256",
                        s.name
                    ),
                ),
            }
        }
    }
    let i = cfg.ingest_settings();
    if let Some(z) = i.zstd_level.filter(|z| !(1..=22).contains(z)) {
        bad("ingest.zstd_level", format!("{z} is outside 1..=22"));
    }
    for (key, v) in [
        ("ingest.max_file_rows", i.max_file_rows),
        ("ingest.max_message_bytes", i.max_message_bytes),
    ] {
        if v == Some(0) {
            bad(key, "must be positive".into());
        }
    }
    let least = flowaudit_ingest::config::MIN_BUFFER_BYTES;
    if let Some(v) = i.max_buffer_bytes.filter(|v| *v < least) {
        bad(
            "ingest.max_buffer_bytes",
            format!(
                "{v} is below {least} ({} MiB), the least ingest can keep to (docs/operations.md, \"Memory\")",
                least >> 20
            ),
        );
    }
    if let (Some(g), Some(f)) = (&i.gateway_topic, &i.flow_topic) {
        if g == f {
            bad(
                "ingest.flow_topic",
                format!("gateway_topic and flow_topic are both \"{g}\""),
            );
        }
    }
    if cfg.sql.threads == Some(0) {
        bad("sql.threads", "must be at least 1".into());
    }
}

/// Whether a key holds a secret (its value is masked).
fn is_secret(path: &str, key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    (path.starts_with("flight.users") || path.starts_with("flight.tokens"))
        && matches!(k.as_str(), "password" | "token" | "hash" | "sha256")
        || k.contains("password")
        || k.contains("secret")
        || k.ends_with(".pem")
        || k.contains("sasl.oauthbearer.config")
        || k.contains("private")
}

/// Mask secrets: credentials' values, librdkafka's password/secret properties, and the
/// credentials or query of a URL (a webhook's token).
fn mask(table: &mut toml::Table, path: &str) {
    for (k, v) in table.iter_mut() {
        let here = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match v {
            toml::Value::Table(t) => mask(t, &here),
            toml::Value::Array(items) => {
                for item in items.iter_mut() {
                    if let toml::Value::Table(t) = item {
                        mask(t, &here);
                    }
                }
            }
            toml::Value::String(s) if is_secret(&here, k) => *s = "***".into(),
            // A webhook's path is often its token (`/services/T…/B…/XXXX`).
            toml::Value::String(s) if k == "webhook" => *s = mask_url_path(s),
            toml::Value::String(s) if s.contains("://") => *s = mask_url(s),
            _ => {}
        }
    }
}

fn mask_url_path(s: &str) -> String {
    let masked = mask_url(s);
    let Ok(mut u) = url::Url::parse(&masked) else {
        return "***".into();
    };
    if !matches!(u.path(), "" | "/") {
        u.set_path("/***");
    }
    u.to_string()
}

fn mask_url(s: &str) -> String {
    let Ok(mut u) = url::Url::parse(s) else {
        return s.to_string();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query().is_some() {
        let masked: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, _)| (k.into_owned(), "***".to_string()))
            .collect();
        u.query_pairs_mut().clear().extend_pairs(masked);
    }
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_shape_and_lose_their_credentials() {
        assert_eq!(
            mask_url("https://u:p@hooks.example/x?token=abc&x=1"),
            "https://u:***@hooks.example/x?token=***&x=***"
        );
        assert_eq!(mask_url("s3://bucket/prefix"), "s3://bucket/prefix");
        assert_eq!(
            mask_url_path("https://hooks.slack.example/services/T0/B0/XXXX?x=1"),
            "https://hooks.slack.example/***?x=***"
        );
    }

    #[test]
    fn every_documented_key_with_an_environment_variable_is_found() {
        let keys = env_keys();
        assert!(keys["FLOWAUDIT_BROKERS"].contains("brokers"));
        assert!(keys["FLOWAUDIT_TICK_S"].contains("serve.tick_s"));
        assert!(keys["FLOWAUDIT_METRICS"].contains("serve.metrics"));
        assert!(keys["FLOWAUDIT_METRICS"].contains("ingest.metrics"));
        assert!(keys.values().flatten().all(|k| !k.contains(' ')));
    }
}
