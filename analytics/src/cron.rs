//! Five-field cron expressions (`minute hour day-of-month month day-of-week`, UTC), as in a rule
//! header's `schedule`. Each field is `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a
//! comma-separated list of those. Day-of-week 0 and 7 are Sunday. As in Vixie cron, when both
//! day-of-month and day-of-week are restricted a day matches if either does.
use chrono::{DateTime, Datelike, Duration, DurationRound, Timelike, Utc};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_any: bool,
    weekdays_any: bool,
}

fn field(text: &str, name: &str, lo: u32, hi: u32) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{name}: step `{s}` is not a positive number"))?;
                (r, step)
            }
            None => (part, 1),
        };
        let num = |s: &str| -> Result<u32, String> {
            s.parse::<u32>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| format!("{name}: `{s}` is not a number from {lo} to {hi}"))
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (num(a)?, num(b)?)
        } else {
            let a = num(range)?;
            (a, if step > 1 { hi } else { a })
        };
        if a > b {
            return Err(format!("{name}: range `{range}` runs backwards"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            match v.checked_add(step) {
                Some(next) => v = next,
                None => break,
            }
        }
    }
    Ok((bits, text == "*"))
}

impl std::str::FromStr for Cron {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let f: Vec<&str> = s.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "`{s}` has {} fields; a schedule has five: minute hour day-of-month month day-of-week",
                f.len()
            ));
        }
        let (minutes, _) = field(f[0], "minute", 0, 59)?;
        let (hours, _) = field(f[1], "hour", 0, 23)?;
        let (days, days_any) = field(f[2], "day of month", 1, 31)?;
        let (months, _) = field(f[3], "month", 1, 12)?;
        let (mut weekdays, weekdays_any) = field(f[4], "day of week", 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Cron {
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_any,
            weekdays_any,
        })
    }
}

impl Cron {
    fn day_matches(&self, t: DateTime<Utc>) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().num_days_from_sunday()) != 0;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        }
    }

    /// Does the schedule fire at this minute?
    pub fn matches(&self, t: DateTime<Utc>) -> bool {
        self.minutes & (1 << t.minute()) != 0
            && self.hours & (1 << t.hour()) != 0
            && self.months & (1 << t.month()) != 0
            && self.day_matches(t)
    }

    /// The first firing time strictly after `t`, within about four years (None if the schedule
    /// never fires, e.g. `0 0 31 2 *`).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut c = t.duration_trunc(Duration::minutes(1)).ok()? + Duration::minutes(1);
        let limit = t + Duration::days(4 * 366);
        while c <= limit {
            if self.months & (1 << c.month()) == 0 || !self.day_matches(c) {
                c = (c + Duration::days(1))
                    .duration_trunc(Duration::days(1))
                    .ok()?;
                continue;
            }
            if self.hours & (1 << c.hour()) == 0 {
                c = (c + Duration::hours(1))
                    .duration_trunc(Duration::hours(1))
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << c.minute()) != 0 {
                return Some(c);
            }
            c += Duration::minutes(1);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn next_firing_times() {
        let c: Cron = "*/15 * * * *".parse().unwrap();
        assert_eq!(
            c.next_after(t("2026-11-21T10:07:30Z")),
            Some(t("2026-11-21T10:15:00Z"))
        );
        assert_eq!(
            c.next_after(t("2026-11-21T10:15:00Z")),
            Some(t("2026-11-21T10:30:00Z"))
        );
        let nightly: Cron = "30 2 * * *".parse().unwrap();
        assert_eq!(
            nightly.next_after(t("2026-11-21T10:00:00Z")),
            Some(t("2026-11-22T02:30:00Z"))
        );
        // Mondays at 06:00; 2026-11-23 is a Monday.
        let weekly: Cron = "0 6 * * 1".parse().unwrap();
        assert_eq!(
            weekly.next_after(t("2026-11-21T00:00:00Z")),
            Some(t("2026-11-23T06:00:00Z"))
        );
        let sunday: Cron = "0 0 * * 7".parse().unwrap();
        assert_eq!(
            sunday.next_after(t("2026-11-21T00:00:00Z")),
            Some(t("2026-11-22T00:00:00Z"))
        );
        let never: Cron = "0 0 31 2 *".parse().unwrap();
        assert_eq!(never.next_after(t("2026-11-21T00:00:00Z")), None);
        let list: Cron = "5,35 8-9 1 * *".parse().unwrap();
        assert_eq!(
            list.next_after(t("2026-11-21T00:00:00Z")),
            Some(t("2026-12-01T08:05:00Z"))
        );
        assert!(list.matches(t("2026-12-01T09:35:00Z")));
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for (s, want) in [
            ("* * * *", "has 4 fields"),
            ("60 * * * *", "minute: `60`"),
            ("* 24 * * *", "hour: `24`"),
            ("*/0 * * * *", "step `0`"),
            ("5-1 * * * *", "runs backwards"),
            ("* * 0 * *", "day of month: `0`"),
        ] {
            let e = s.parse::<Cron>().unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn a_step_beyond_the_range_fires_at_its_start() {
        // A fuzz seed (fuzz/regressions/rule_header): `v += step` overflowed.
        let c: Cron = "1-5/4294967295 * * * *".parse().unwrap();
        assert_eq!(
            c.next_after(t("2026-11-21T10:07:30Z")),
            Some(t("2026-11-21T11:01:00Z"))
        );
    }
}
