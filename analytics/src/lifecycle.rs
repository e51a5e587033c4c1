//! When an open alert is closed: its *support* is the evaluations of its rule that found its
//! fingerprint. A re-evaluation with more data that no longer finds an alert closes it once no
//! evaluation that still stands supports it (docs/alerts.md, "Closed alerts").
//!
//! An evaluation *stands* until a later evaluation of the same rule covers at least its range:
//! the same window evaluated again (late data, a re-run) or a wider one (the whole day after a
//! part of it). The later one saw everything the earlier one saw, and more. Sliding windows
//! (`serve`: the last hour, every 15 minutes) do not cover one another, so an alert raised by
//! several of them stays open while any of them stands with it, and is closed when the last of
//! them has been evaluated again without it. Only alerts of a day the new evaluation overlaps
//! are considered; a run record written before fingerprints were kept counts as supporting
//! every alert of the days it overlaps (nothing is closed on what was not recorded).
use std::collections::HashSet;

use chrono::{DateTime, NaiveDate, Utc};

use crate::ledger::Evaluation;

/// An evaluation's range and what it found.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub range: (DateTime<Utc>, DateTime<Utc>),
    /// `None`: not recorded (a run record from before fingerprints were kept).
    pub found: Option<&'a HashSet<String>>,
}

impl<'a> Found<'a> {
    /// What an evaluation in a run record found; `None` when it evaluated nothing (due, failed).
    pub fn of(e: &'a Evaluation) -> Option<Self> {
        if !matches!(e.coverage.as_str(), "complete" | "partial" | "incomplete") {
            return None;
        }
        Some(Found {
            range: e.evaluated?,
            found: e.found.as_ref(),
        })
    }
}

fn covers(outer: (DateTime<Utc>, DateTime<Utc>), inner: (DateTime<Utc>, DateTime<Utc>)) -> bool {
    outer.0 <= inner.0 && inner.1 <= outer.1
}

/// The start of the UTC day `day` (`YYYY-MM-DD`).
pub fn day_start(day: &str) -> Option<DateTime<Utc>> {
    NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// Whether `range` overlaps the UTC day `day`.
pub fn overlaps_day(range: (DateTime<Utc>, DateTime<Utc>), day: &str) -> bool {
    let Some(start) = day_start(day) else {
        return false;
    };
    range.0 < start + chrono::Duration::days(1) && start < range.1
}

/// Of the `open` alerts of a rule, as (fingerprint, day), those to close after the evaluation
/// `current`: of a day `current` overlaps, not found by it, and found by no evaluation of
/// `prior` (the rule's earlier evaluations, oldest first) that still stands.
pub fn unsupported(
    open: &[(String, String)],
    prior: &[Found<'_>],
    current: Found<'_>,
) -> HashSet<String> {
    let all: Vec<Found<'_>> = prior.iter().copied().chain([current]).collect();
    let standing: Vec<&Found<'_>> = all
        .iter()
        .enumerate()
        .filter(|(i, e)| {
            !all[i + 1..]
                .iter()
                .any(|later| covers(later.range, e.range))
        })
        .map(|(_, e)| e)
        .collect();
    open.iter()
        .filter(|(fp, day)| {
            overlaps_day(current.range, day)
                && !current.found.is_some_and(|f| f.contains(fp))
                && !standing
                    .iter()
                    .any(|e| overlaps_day(e.range, day) && e.found.is_none_or(|f| f.contains(fp)))
        })
        .map(|(fp, _)| fp.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        format!("2026-11-22T{s}:00Z").parse().unwrap()
    }

    fn set(fps: &[&str]) -> HashSet<String> {
        fps.iter().map(|s| s.to_string()).collect()
    }

    /// An evaluation of `[from, to)` that found `found`.
    fn eval<'a>(
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        found: Option<&'a HashSet<String>>,
    ) -> Found<'a> {
        Found {
            range: (from, to),
            found,
        }
    }

    fn open(fps: &[&str]) -> Vec<(String, String)> {
        fps.iter()
            .map(|f| (f.to_string(), "2026-11-22".to_string()))
            .collect()
    }

    #[test]
    fn the_same_window_evaluated_again_without_it_closes_it() {
        let (a, none) = (set(&["f"]), set(&[]));
        let before = eval(t("10:00"), t("11:00"), Some(&a));
        let again = eval(t("10:00"), t("11:00"), Some(&none));
        assert_eq!(unsupported(&open(&["f"]), &[before], again), set(&["f"]));
        // Found again: kept.
        let still = eval(t("10:00"), t("11:00"), Some(&a));
        assert!(unsupported(&open(&["f"]), &[before], still).is_empty());
    }

    #[test]
    fn a_sliding_window_that_still_stands_keeps_it_open_until_it_is_evaluated_again() {
        let (f, none) = (set(&["f"]), set(&[]));
        let w1 = eval(t("10:00"), t("11:00"), Some(&f));
        let w2 = eval(t("10:15"), t("11:15"), Some(&f));
        // Late data fills 10:00–11:00: w1 no longer finds it, but w2 still stands with it.
        let w1_again = eval(t("10:00"), t("11:00"), Some(&none));
        assert!(unsupported(&open(&["f"]), &[w1, w2], w1_again).is_empty());
        // A neighbour that does not cover w2 does not close it either.
        let w3 = eval(t("10:30"), t("11:30"), Some(&none));
        assert!(unsupported(&open(&["f"]), &[w1, w2, w1_again], w3).is_empty());
        // w2 evaluated again without it: no window stands with it any more.
        let w2_again = eval(t("10:15"), t("11:15"), Some(&none));
        assert_eq!(
            unsupported(&open(&["f"]), &[w1, w2, w1_again, w3], w2_again),
            set(&["f"])
        );
    }

    #[test]
    fn a_wider_window_stands_for_the_parts_it_covers() {
        let (f, none) = (set(&["f"]), set(&[]));
        let morning = eval(t("00:00"), t("12:00"), Some(&f));
        let day = eval(
            t("00:00"),
            "2026-11-23T00:00:00Z".parse().unwrap(),
            Some(&none),
        );
        assert_eq!(unsupported(&open(&["f"]), &[morning], day), set(&["f"]));
    }

    #[test]
    fn unrecorded_findings_and_other_days_are_left_alone() {
        let none = set(&[]);
        // A record from before fingerprints were kept supports what it may have found.
        let old = eval(t("10:15"), t("11:15"), None);
        let w = eval(t("10:00"), t("11:00"), Some(&none));
        assert!(unsupported(&open(&["f"]), &[old], w).is_empty());
        // An alert of another day is not judged by a window that does not overlap it.
        let other = vec![("f".to_string(), "2026-11-21".to_string())];
        assert!(unsupported(&other, &[], w).is_empty());
        // One the evaluation found is never closed by it.
        let f = set(&["f"]);
        let w = eval(t("10:00"), t("11:00"), Some(&f));
        assert!(unsupported(&open(&["f"]), &[], w).is_empty());
    }
}
