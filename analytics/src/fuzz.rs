//! Fuzz targets of the analytics library, as plain functions of the fuzzer's bytes: the rule
//! header parser and the read-only SQL check.
//!
//! The same functions run in the `afl` binaries of `fuzz/` (`make fuzz`) and in the corpus replay
//! of `tests/it/fuzz_corpus.rs` (every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/`, on every `make test`). Each returns normally for any input and
//! panics only when an invariant is broken. docs/fuzzing.md has the method.
use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::cron::Cron;
use crate::rules::{self, RuleError};
use crate::sql::{SqlEngine, SqlError};

/// A rule file as `flowaudit rules` loads it: parsed (or refused with the file and a line), and,
/// once parsed, its schedule's next firing time found and its query rendered for a window.
///
/// The file is named after the `-- id:` the input gives, so that inputs get past the check that
/// the id matches the file name.
pub fn rule_header(data: &[u8]) {
    // `load_rules` reads the file as UTF-8 first; other bytes never reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let stem = text
        .lines()
        .find_map(|l| l.strip_prefix("-- id:"))
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.contains(['/', '\0']) && s.len() < 200)
        .unwrap_or("rule");
    let path = PathBuf::from(format!("queries/{stem}.sql"));
    let rule = match rules::parse_rule(&path, text) {
        Ok(rule) => rule,
        Err(RuleError::Invalid { line, msg, .. }) => {
            assert!(line >= 1, "an error without a line: {msg}");
            assert!(!msg.trim().is_empty(), "an error without a message");
            return;
        }
        Err(e @ RuleError::Io { .. }) => panic!("parse_rule does no I/O: {e}"),
    };
    assert_eq!(rule.id, stem);
    assert!(!rule.sql.trim().is_empty());
    assert!(!rule.entity.is_empty());
    assert!(!rule.lookback.is_zero());
    assert_eq!(
        rules::parse_duration(&rules::format_duration(rule.lookback)),
        Some(rule.lookback),
        "lookback does not survive formatting"
    );
    let cron: Cron = rule.schedule.parse().expect("an accepted schedule parses");
    let at: DateTime<Utc> = "2026-11-21T10:07:30Z".parse().expect("fixed time");
    if let Some(next) = cron.next_after(at) {
        assert!(next > at && cron.matches(next));
    }
    // The window of a scheduled run, computed as `serve` does, and the query rendered for it.
    if let Ok(lookback) = chrono::Duration::from_std(rule.lookback) {
        let from = at - lookback;
        let sql = rules::render(&rule, from, at);
        assert!(!sql.contains("{{from}}") && !sql.contains("{{to}}"));
    }
}

/// A statement typed into `flowaudit sql` or sent over Flight SQL, through the read-only check:
/// refused with a reason, or accepted — and then its own text (as it is logged and shown) is
/// accepted again, never refused as a write.
pub fn sql_check(data: &[u8]) {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    match SqlEngine::parse(sql) {
        Err(e) => assert!(
            !e.to_string().trim().is_empty(),
            "an error without a message"
        ),
        Ok(stmts) => {
            for s in stmts {
                let text = s.to_string();
                if let Err(e @ SqlError::ReadOnly { .. }) = SqlEngine::parse(&text) {
                    panic!("accepted `{sql}`, but its text `{text}` is refused: {e}");
                }
            }
        }
    }
}
