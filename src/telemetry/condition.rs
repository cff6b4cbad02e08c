//! When to log a condition that persists across cycles (a query that matches nothing, a
//! source that cannot be reached, an HPA in the way): when it starts, again at most every
//! [`REPEAT_EVERY`] seconds while it lasts (saying for how long), and once when it ends
//! (saying how long it lasted) — never once per cycle.
//!
//! Pure: each call takes `now` (Unix seconds, from whatever clock the caller runs on) and
//! answers what to log, if anything; the caller logs it with its own fields.

use std::collections::BTreeMap;
use std::fmt;

/// Seconds between two reminders that a condition still holds.
pub const REPEAT_EVERY: i64 = 300;

/// What to log about a condition now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// It has just started, or it changed kind (an outage became a query matching
    /// nothing): log it in full.
    Started,
    /// It still holds, since `for_secs` seconds: a reminder.
    Continues {
        /// Seconds since it started.
        for_secs: i64,
    },
    /// It has ended after `lasted_secs` seconds.
    Ended {
        /// Seconds from its start to its end.
        lasted_secs: i64,
    },
}

impl Note {
    /// How long the condition has held (0 when it has just started), e.g. `5m 30s`.
    pub fn duration(&self) -> Lasted {
        Lasted(match *self {
            Self::Started => 0,
            Self::Continues { for_secs } => for_secs,
            Self::Ended { lasted_secs } => lasted_secs,
        })
    }
}

/// A number of seconds, shown as `1h 5m 30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lasted(pub i64);

impl fmt::Display for Lasted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = u64::try_from(self.0).unwrap_or(0);
        write!(
            f,
            "{}",
            humantime::format_duration(std::time::Duration::from_secs(secs))
        )
    }
}

/// One condition: whether it holds, since when, of what kind, and when it was last logged.
#[derive(Debug, Clone, Default)]
pub struct Condition {
    holding: Option<Holding>,
}

#[derive(Debug, Clone)]
struct Holding {
    /// What kind of condition (e.g. an error's metric label): a new kind is a new start.
    kind: String,
    /// When it started.
    since: i64,
    /// When it was last logged.
    logged: i64,
}

impl Condition {
    /// The condition holds at `now`, of `kind`: what to log (`None`: nothing this time).
    pub fn holds(&mut self, kind: &str, now: i64) -> Option<Note> {
        match &mut self.holding {
            Some(h) if h.kind == kind => {
                if now - h.logged < REPEAT_EVERY {
                    return None;
                }
                h.logged = now;
                Some(Note::Continues {
                    for_secs: now - h.since,
                })
            }
            _ => {
                self.holding = Some(Holding {
                    kind: kind.to_owned(),
                    since: now,
                    logged: now,
                });
                Some(Note::Started)
            }
        }
    }

    /// The condition does not hold at `now`: [`Note::Ended`] if it did until now.
    pub fn clears(&mut self, now: i64) -> Option<Note> {
        self.holding.take().map(|h| Note::Ended {
            lasted_secs: now - h.since,
        })
    }

    /// Whether it holds.
    pub fn is_holding(&self) -> bool {
        self.holding.is_some()
    }
}

/// Conditions by key (e.g. per signal of a target): [`Condition`] for each.
#[derive(Debug, Clone)]
pub struct Conditions<K> {
    by_key: BTreeMap<K, Condition>,
}

impl<K> Default for Conditions<K> {
    fn default() -> Self {
        Self {
            by_key: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> Conditions<K> {
    /// `key`'s condition holds at `now`, of `kind` (see [`Condition::holds`]).
    pub fn holds(&mut self, key: &K, kind: &str, now: i64) -> Option<Note> {
        self.by_key.entry(key.clone()).or_default().holds(kind, now)
    }

    /// `key`'s condition does not hold at `now` (see [`Condition::clears`]).
    pub fn clears(&mut self, key: &K, now: i64) -> Option<Note> {
        self.by_key.remove(key)?.clears(now)
    }

    /// Whether `key`'s condition holds.
    pub fn is_holding(&self, key: &K) -> bool {
        self.by_key.get(key).is_some_and(Condition::is_holding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `events` — at each time, `Some(kind)` (the condition holds) or `None` (it does
    /// not) — and checks what is logged at each.
    fn check(events: &[(i64, Option<&str>)], expected: &[(i64, Note)]) {
        let mut c = Condition::default();
        let logged: Vec<(i64, Note)> = events
            .iter()
            .filter_map(|&(now, kind)| {
                let note = match kind {
                    Some(kind) => c.holds(kind, now),
                    None => c.clears(now),
                };
                note.map(|n| (now, n))
            })
            .collect();
        assert_eq!(logged, expected);
    }

    /// Every `interval` seconds from `from` to `to` (exclusive), the condition of `kind`.
    fn every(interval: i64, from: i64, to: i64, kind: &str) -> Vec<(i64, Option<&str>)> {
        (from..to)
            .step_by(interval as usize)
            .map(|t| (t, Some(kind)))
            .collect()
    }

    #[test]
    fn ten_minutes_of_a_query_matching_nothing_is_three_lines() {
        // Polled every 5 s for 10 minutes: 120 cycles, three lines.
        let events = every(5, 0, 600, "empty");
        check(
            &events,
            &[(0, Note::Started), (300, Note::Continues { for_secs: 300 })],
        );
        let mut events = events;
        events.push((600, None));
        check(
            &events,
            &[
                (0, Note::Started),
                (300, Note::Continues { for_secs: 300 }),
                (600, Note::Ended { lasted_secs: 600 }),
            ],
        );
    }

    #[test]
    fn a_reminder_comes_at_the_first_cycle_after_five_minutes() {
        // Every 7 s: the first cycle at or past 300 s after the last line is 301.
        check(
            &every(7, 0, 700, "unreachable"),
            &[
                (0, Note::Started),
                (301, Note::Continues { for_secs: 301 }),
                (602, Note::Continues { for_secs: 602 }),
            ],
        );
    }

    #[test]
    fn a_new_kind_is_a_new_start_and_an_end_is_logged_once() {
        check(
            &[
                (0, Some("unreachable")),
                (10, Some("unreachable")),
                (20, Some("empty")),
                (30, Some("empty")),
                (40, None),
                (50, None),
                (60, Some("empty")),
            ],
            &[
                (0, Note::Started),
                (20, Note::Started),
                (40, Note::Ended { lasted_secs: 20 }),
                (60, Note::Started),
            ],
        );
    }

    #[test]
    fn nothing_is_logged_for_a_condition_that_never_held() {
        check(&[(0, None), (10, None)], &[]);
    }

    #[test]
    fn keys_are_independent() {
        let mut c = Conditions::default();
        assert_eq!(c.holds(&"a", "x", 0), Some(Note::Started));
        assert_eq!(c.holds(&"b", "x", 100), Some(Note::Started));
        assert_eq!(c.holds(&"a", "x", 100), None);
        assert!(c.is_holding(&"a"));
        assert_eq!(c.clears(&"a", 200), Some(Note::Ended { lasted_secs: 200 }));
        assert!(!c.is_holding(&"a"));
        assert_eq!(
            c.holds(&"b", "x", 400),
            Some(Note::Continues { for_secs: 300 })
        );
    }

    #[test]
    fn durations_read_as_humans_write_them() {
        assert_eq!(
            Note::Continues { for_secs: 330 }.duration().to_string(),
            "5m 30s"
        );
        assert_eq!(Note::Started.duration().to_string(), "0s");
    }
}
