//! Scheduled windows: bounds that stand in for `min_replicas`/`max_replicas` for a while.
//!
//! A window opens at each occurrence of its cron expression, on the wall clock of its time
//! zone (so 08:00 in `Europe/Berlin` is 08:00 in summer and in winter), and lasts its
//! duration. On a day the clock skips the opening time (spring forward), the window opens
//! at the first instant after the gap; on a day the clock repeats it (fall back), it opens
//! once, at the earlier instant (croner's rules for a fixed-time job).
//!
//! While windows are open, the bounds they set stand in for the target's, combined by the
//! highest minimum and the highest maximum; a bound no open window sets stays the
//! target's. A floor above the maximum in force raises the maximum with it. A
//! window's floor is in force `lead` seconds (the target's start-up time) before it opens,
//! so replicas asked for then serve when it opens; a floor never lowers the one in force
//! before the window opens. The evaluation is pure: it takes `now`.

use chrono::{DateTime, TimeZone};
use chrono_tz::Tz;
use croner::Cron;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};

/// Parses a cron expression of 5 fields (minute, hour, day of month, month, day of week;
/// names such as `MON-FRI` and nicknames such as `@daily` too), as Vixie cron: a day
/// matches when either its day of month or its day of week does.
pub fn parse_cron(expr: &str) -> Result<Cron, CronError> {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
}

/// One `[[target.schedule]]` window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The cron expression as written (5 fields), for people.
    pub expression: String,
    /// The parsed expression.
    pub cron: Cron,
    /// The time zone whose wall clock the expression reads.
    pub timezone: Tz,
    /// How long each window lasts, seconds (> 0).
    pub duration: i64,
    /// The fewest replicas while it is open (and `lead` before), if it sets one.
    pub min_replicas: Option<u32>,
    /// The most replicas while it is open, if it sets one.
    pub max_replicas: Option<u32>,
}

impl Window {
    /// The latest opening at or before `t` (Unix s), in Unix s.
    fn opening_at_or_before(&self, t: i64) -> Option<i64> {
        let at: DateTime<Tz> = self.timezone.timestamp_opt(t, 0).single()?;
        let open = self.cron.find_previous_occurrence(&at, true).ok()?;
        Some(open.timestamp())
    }

    /// The opening of the window open at `now`, if one is.
    fn open_at(&self, now: i64) -> Option<i64> {
        self.opening_at_or_before(now)
            .filter(|&o| now < o.saturating_add(self.duration))
    }

    /// The opening within `(now, now + lead]`, if any: the window whose floor leads it.
    fn opening_within(&self, now: i64, lead: i64) -> Option<i64> {
        if lead <= 0 {
            return None;
        }
        self.opening_at_or_before(now.saturating_add(lead))
            .filter(|&o| o > now)
    }

    /// Its opening at `at` on its own wall clock, e.g. `2026-03-29T03:00:00+02:00`.
    pub fn local(&self, at: i64) -> String {
        self.timezone
            .timestamp_opt(at, 0)
            .single()
            .map_or_else(|| at.to_string(), |t| t.to_rfc3339())
    }
}

/// A window at one of its openings: where a scheduled bound came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Opening<'a> {
    /// The window.
    pub window: &'a Window,
    /// When it opens (or opened), Unix s.
    pub at: i64,
}

impl std::fmt::Display for Opening<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = self.window;
        write!(
            f,
            "window `{}` ({}) opening at {} ({}) for {}s",
            w.expression,
            w.timezone.name(),
            w.local(self.at),
            self.at,
            w.duration
        )?;
        if let Some(min) = w.min_replicas {
            write!(f, ", min_replicas {min}")?;
        }
        if let Some(max) = w.max_replicas {
            write!(f, ", max_replicas {max}")?;
        }
        Ok(())
    }
}

/// The bounds in force at one moment, and which window set each (none: the target's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds<'a> {
    /// Fewest replicas.
    pub min: u32,
    /// Most replicas (never below `min`).
    pub max: u32,
    /// The window that set `min`, if one did.
    pub min_from: Option<Opening<'a>>,
    /// The window that set `max`, if one did.
    pub max_from: Option<Opening<'a>>,
}

/// The bounds in force at `now`: the open windows' highest minimum and highest maximum,
/// each the target's (`min`, `max`) when no open window sets it; then the floor raised to
/// that of any window opening within `lead` seconds, and the maximum to the floor.
pub fn bounds(windows: &[Window], min: u32, max: u32, lead: i64, now: i64) -> Bounds<'_> {
    let mut b = Bounds {
        min,
        max,
        min_from: None,
        max_from: None,
    };
    for w in windows {
        let Some(at) = w.open_at(now) else { continue };
        let o = Opening { window: w, at };
        if let Some(lo) = w.min_replicas
            && (b.min_from.is_none() || lo > b.min)
        {
            b.min = lo;
            b.min_from = Some(o);
        }
        if let Some(hi) = w.max_replicas
            && (b.max_from.is_none() || hi > b.max)
        {
            b.max = hi;
            b.max_from = Some(o);
        }
    }
    for w in windows {
        let (Some(floor), Some(at)) = (w.min_replicas, w.opening_within(now, lead)) else {
            continue;
        };
        if floor > b.min {
            b.min = floor;
            b.min_from = Some(Opening { window: w, at });
        }
    }
    if b.max < b.min {
        b.max = b.min;
        b.max_from = b.min_from;
    }
    b
}

/// A window, for tests: `expr` in the time zone named `tz`.
#[cfg(test)]
pub(crate) fn window(
    expr: &str,
    tz: &str,
    duration: i64,
    min: Option<u32>,
    max: Option<u32>,
) -> Window {
    Window {
        expression: expr.to_owned(),
        cron: parse_cron(expr).unwrap(),
        timezone: tz.parse().unwrap(),
        duration,
        min_replicas: min,
        max_replicas: max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds of an RFC 3339 time.
    fn at(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp()
    }

    /// (windows, lead, now) → (min, max, opening of the window that set the min).
    fn check(windows: &[Window], lead: i64, now: &str, want: (u32, u32, Option<&str>)) {
        let b = bounds(windows, 2, 20, lead, at(now));
        let from = b.min_from.map(|o| o.window.local(o.at));
        assert_eq!((b.min, b.max, from.as_deref()), want, "at {now}: {b:?}");
    }

    #[test]
    fn a_window_opens_on_its_local_wall_clock() {
        // 08:00 in Berlin is 07:00 UTC in winter and 06:00 UTC in summer.
        let w = [window("0 8 * * *", "Europe/Berlin", 3600, Some(10), None)];
        let open = Some("2026-01-15T08:00:00+01:00");
        check(&w, 0, "2026-01-15T06:59:59Z", (2, 20, None));
        check(&w, 0, "2026-01-15T07:00:00Z", (10, 20, open));
        check(&w, 0, "2026-01-15T07:59:59Z", (10, 20, open));
        check(&w, 0, "2026-01-15T08:00:00Z", (2, 20, None));
        let open = Some("2026-07-15T08:00:00+02:00");
        check(&w, 0, "2026-07-15T05:59:59Z", (2, 20, None));
        check(&w, 0, "2026-07-15T06:00:00Z", (10, 20, open));
        check(&w, 0, "2026-07-15T07:00:00Z", (2, 20, None));
    }

    /// Europe/Berlin springs forward on 2026-03-29 (02:00 → 03:00 CEST) and falls back on
    /// 2026-10-25 (03:00 CEST → 02:00 CET). A window at 02:30 local for an hour.
    #[test]
    fn windows_across_daylight_saving_changes() {
        let w = [window("30 2 * * *", "Europe/Berlin", 3600, Some(10), None)];
        // The day before spring forward: 02:30 CET = 01:30 UTC.
        let before = Some("2026-03-28T02:30:00+01:00");
        check(&w, 0, "2026-03-28T01:29:59Z", (2, 20, None));
        check(&w, 0, "2026-03-28T01:30:00Z", (10, 20, before));
        // 02:30 does not exist on the 29th: the window opens at the first instant after
        // the gap, 03:00 CEST = 01:00 UTC, and lasts its hour.
        let skipped = Some("2026-03-29T03:00:00+02:00");
        check(&w, 0, "2026-03-29T00:59:59Z", (2, 20, None));
        check(&w, 0, "2026-03-29T01:00:00Z", (10, 20, skipped));
        check(&w, 0, "2026-03-29T01:59:59Z", (10, 20, skipped));
        check(&w, 0, "2026-03-29T02:00:00Z", (2, 20, None));
        // The day after: 02:30 CEST = 00:30 UTC.
        let after = Some("2026-03-30T02:30:00+02:00");
        check(&w, 0, "2026-03-30T00:29:59Z", (2, 20, None));
        check(&w, 0, "2026-03-30T00:30:00Z", (10, 20, after));
        // 02:30 happens twice on 2026-10-25: 00:30 UTC (CEST) and 01:30 UTC (CET). The
        // window opens once, at the first, and closes an hour later.
        let repeated = Some("2026-10-25T02:30:00+02:00");
        check(&w, 0, "2026-10-25T00:29:59Z", (2, 20, None));
        check(&w, 0, "2026-10-25T00:30:00Z", (10, 20, repeated));
        check(&w, 0, "2026-10-25T01:29:59Z", (10, 20, repeated));
        check(&w, 0, "2026-10-25T01:30:00Z", (2, 20, None));
        check(&w, 0, "2026-10-25T02:29:59Z", (2, 20, None));
    }

    /// The floor leads the opening by `lead`, also across a change of offset.
    #[test]
    fn the_floor_leads_the_opening() {
        let w = [window(
            "30 2 * * *",
            "Europe/Berlin",
            3600,
            Some(10),
            Some(12),
        )];
        let skipped = Some("2026-03-29T03:00:00+02:00");
        // Opening at 01:00 UTC, 10 minutes' lead: the floor from 00:50 UTC, the window's
        // maximum only once it is open (the floor raises the target's 20 no lower).
        check(&w, 600, "2026-03-29T00:49:59Z", (2, 20, None));
        check(&w, 600, "2026-03-29T00:50:00Z", (10, 20, skipped));
        check(&w, 600, "2026-03-29T01:00:00Z", (10, 12, skipped));
        check(&w, 600, "2026-03-29T02:00:00Z", (2, 20, None));
        // A lead longer than the window's own length.
        let repeated = Some("2026-10-25T02:30:00+02:00");
        check(&w, 7200, "2026-10-24T22:29:59Z", (2, 20, None));
        check(&w, 7200, "2026-10-24T22:30:00Z", (10, 20, repeated));
    }

    #[test]
    fn overlapping_windows_combine_by_the_highest_bounds() {
        let windows = [
            // Weekdays 08:00–18:00 UTC: at least 6, at most 15.
            window("0 8 * * 1-5", "UTC", 10 * 3600, Some(6), Some(15)),
            // Every day 12:00–14:00 UTC: at least 9.
            window("0 12 * * *", "UTC", 2 * 3600, Some(9), None),
            // Nights 22:00–06:00 UTC: at most 3.
            window("0 22 * * *", "UTC", 8 * 3600, None, Some(3)),
            // Nights from 23:00 for an hour: at least 1, below the target's 2.
            window("0 23 * * *", "UTC", 3600, Some(1), None),
        ];
        let check = |now: &str, want: (u32, u32, Option<&str>, Option<&str>)| {
            let b = bounds(&windows, 2, 20, 0, at(now));
            fn expr(o: Option<Opening<'_>>) -> Option<&str> {
                o.map(|o| o.window.expression.as_str())
            }
            let got = (b.min, b.max, expr(b.min_from), expr(b.max_from));
            assert_eq!(got, want, "at {now}");
        };
        // Thursday 2026-01-15.
        check("2026-01-15T07:00:00Z", (2, 20, None, None));
        check(
            "2026-01-15T09:00:00Z",
            (6, 15, Some("0 8 * * 1-5"), Some("0 8 * * 1-5")),
        );
        // 9 from the midday window, 15 from the weekday window.
        check(
            "2026-01-15T12:30:00Z",
            (9, 15, Some("0 12 * * *"), Some("0 8 * * 1-5")),
        );
        check("2026-01-15T22:30:00Z", (2, 3, None, Some("0 22 * * *")));
        // Both night windows: each sets one bound.
        check(
            "2026-01-15T23:30:00Z",
            (1, 3, Some("0 23 * * *"), Some("0 22 * * *")),
        );
        // Saturday: the weekday window stays shut; midday opens.
        check("2026-01-17T09:00:00Z", (2, 20, None, None));
        check("2026-01-17T13:59:59Z", (9, 20, Some("0 12 * * *"), None));
        // A floor alone, below the target's: lower for its hour.
        let alone = [window("0 23 * * *", "UTC", 3600, Some(1), None)];
        let b = bounds(&alone, 2, 20, 0, at("2026-01-15T23:00:00Z"));
        assert_eq!((b.min, b.max), (1, 20));
    }

    /// A floor above every maximum in force raises the maximum with it; a window's lead
    /// never lowers the floor in force.
    #[test]
    fn a_floor_ahead_never_lowers_and_raises_the_maximum() {
        let windows = [
            window("0 8 * * *", "UTC", 3600, Some(30), Some(40)),
            window("0 7 * * *", "UTC", 7200, Some(5), Some(8)),
            window("30 7 * * *", "UTC", 3600, Some(1), None),
        ];
        let b = bounds(&windows, 2, 20, 900, at("2026-01-15T07:50:00Z"));
        assert_eq!((b.min, b.max), (30, 30), "{b:?}");
        assert_eq!(b.max_from.map(|o| o.at), Some(at("2026-01-15T08:00:00Z")));
        // At 07:20 the 07:30 window's floor of 1 leads, below the open window's 5.
        let b = bounds(&windows, 2, 20, 900, at("2026-01-15T07:20:00Z"));
        assert_eq!((b.min, b.max), (5, 8), "{b:?}");
    }
}
