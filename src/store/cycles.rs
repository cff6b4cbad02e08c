//! Whether the target loops keep up with their schedule: the targets whose last cycle
//! started late, by how much, and when to warn about it.
//!
//! A cycle is due every `interval`; it starts late when the one before it (waiting for
//! Prometheus' slots, or a busy machine) took longer than that. One condition covers every
//! target, so a fleet falling behind is one WARN when it starts, a reminder every few
//! minutes while it lasts and one line when it ends ([`crate::telemetry::condition`]), not
//! one per target and cycle.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::telemetry::condition::{Condition, Note};

/// The lag below which a cycle counts as on time, seconds: a tick may wake a little late.
const TOLERANCE_SECS: f64 = 1.0;

/// The targets behind schedule, shared by the loops; cheap to lock, held for a lookup.
#[derive(Debug, Default)]
pub struct Cycles(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Lag of the last cycle of each target behind, seconds.
    behind: BTreeMap<String, f64>,
    /// Whether any target is behind, for the log.
    condition: Condition,
}

/// How far the target loops are behind schedule, as `/readyz` and the dashboard show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CycleLag {
    /// Targets whose last cycle started more than a second, or a tenth of their interval,
    /// after it was due.
    pub behind: usize,
    /// The largest of their lags, seconds (0 when none is behind).
    pub max_lag_seconds: f64,
    /// The target with that lag, if any.
    pub slowest: Option<String>,
}

/// What to log about the fleet's cycles after one of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    /// Started, continues or ended.
    pub note: Note,
    /// The lag now.
    pub lag: CycleLag,
}

impl Cycles {
    /// `target`'s cycle at `now` started `lag_secs` after it was due, with cycles due
    /// every `interval_secs`: what to log, if anything.
    pub fn record(
        &self,
        target: &str,
        lag_secs: f64,
        interval_secs: f64,
        now: i64,
    ) -> Option<Logged> {
        let mut inner = self.lock();
        if lag_secs > TOLERANCE_SECS.max(interval_secs / 10.0) {
            inner.behind.insert(target.to_owned(), lag_secs);
        } else if inner.behind.remove(target).is_none() {
            return None;
        }
        let note = if inner.behind.is_empty() {
            inner.condition.clears(now)
        } else {
            inner.condition.holds("behind", now)
        };
        // Summed up only when there is something to log: the map may hold every target.
        note.map(|note| Logged {
            note,
            lag: summary(&inner.behind),
        })
    }

    /// A target that no longer runs here is no longer behind.
    pub fn forget(&self, target: &str) {
        self.lock().behind.remove(target);
    }

    /// How far behind the loops are now.
    pub fn lag(&self) -> CycleLag {
        summary(&self.lock().behind)
    }

    /// Held for a lookup or an update, never across an `.await`; a panic while it was
    /// held leaves nothing half-written.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn summary(behind: &BTreeMap<String, f64>) -> CycleLag {
    let slowest = behind
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(name, lag)| (name.clone(), *lag));
    CycleLag {
        behind: behind.len(),
        max_lag_seconds: slowest.as_ref().map_or(0.0, |s| s.1),
        slowest: slowest.map(|s| s.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falling_behind_is_logged_when_it_starts_every_few_minutes_and_when_it_ends() {
        let c = Cycles::default();
        let notes = |r: Option<Logged>| r.map(|l| (l.note, l.lag.behind));
        // On time (within a second, or a tenth of the interval): nothing to say.
        assert_eq!(notes(c.record("a", 0.5, 60.0, 0)), None);
        assert_eq!(notes(c.record("a", 5.0, 60.0, 0)), None);
        // Behind: once when it starts, not at every cycle, then every five minutes.
        assert_eq!(
            notes(c.record("a", 7.0, 60.0, 60)),
            Some((Note::Started, 1))
        );
        assert_eq!(notes(c.record("b", 30.0, 60.0, 61)), None);
        assert_eq!(
            c.lag(),
            CycleLag {
                behind: 2,
                max_lag_seconds: 30.0,
                slowest: Some("b".into())
            }
        );
        assert_eq!(
            notes(c.record("a", 9.0, 60.0, 360)),
            Some((Note::Continues { for_secs: 300 }, 2))
        );
        // Ended once the last one behind is on time again.
        assert_eq!(notes(c.record("a", 0.0, 60.0, 400)), None);
        assert_eq!(
            notes(c.record("b", 0.0, 60.0, 420)),
            Some((Note::Ended { lasted_secs: 360 }, 0))
        );
        assert_eq!(c.lag(), CycleLag::default());
        c.record("a", 99.0, 60.0, 500);
        c.forget("a");
        assert_eq!(c.lag().behind, 0);
    }
}
