//! Changes of the running count that prescale did not ask for: someone scaled the target
//! by hand during an incident, or another controller did.
//!
//! Each step compares the observed running count with what prescale's own asks may leave
//! running: the span between the count running when it last asked and every count it asked
//! for since. A count inside that span is prescale's (a scale still rolling out, or the
//! platform applying an earlier ask; a count that stays short of the ask is a lost ask,
//! asked for again). The span narrows to the count asked for once the platform reached it
//! a start-up plus an interval after the ask. A count outside it is an *external change*:
//! the decision then starts from it, and an externally raised count is scaled in only
//! after the scale-down stabilisation window and through the rate limits, as the HPA
//! would (`external_changes = "follow"`), or the target is paused until resumed
//! (`"hold"`).
//!
//! A change that lands inside the span (someone sets 10 while prescale's 8 → 12 rolls
//! out) cannot be told from prescale's own, and is taken as prescale's.

use serde::{Deserialize, Serialize};

/// What a target does when someone else changes its running count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExternalChanges {
    /// Decide from the observed count, through the HPA's behaviour (the default).
    #[default]
    Follow,
    /// Pause acting on the target until it is resumed through the API: a manual override
    /// wins.
    Hold,
}

impl ExternalChanges {
    /// The documented name (`follow`, `hold`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Follow => "follow",
            Self::Hold => "hold",
        }
    }
}

pub use crate::decide::ExternalChange;

/// For people: what changed, and what prescale does about it under `then`.
pub fn message(change: &ExternalChange, then: ExternalChanges) -> String {
    let then = match then {
        ExternalChanges::Follow => {
            "decisions start from it (an external scale-out is scaled in only after the scale-down stabilisation window, through the rate limits)"
        }
        ExternalChanges::Hold => {
            "`external_changes = \"hold\"`: acting on the target is paused until it is resumed"
        }
    };
    format!(
        "the running count changed from {} to {} without prescale asking for it; {then}",
        change.from, change.to
    )
}

/// What prescale's own asks may leave running: every count from `lo` to `hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Own {
    lo: u32,
    hi: u32,
    /// The count last observed.
    seen: u32,
}

impl Own {
    /// Nothing in flight: `n` runs.
    pub fn settled(n: u32) -> Self {
        Self {
            lo: n,
            hi: n,
            seen: n,
        }
    }

    /// After a restart: the count last asked for, and the count last delivered (when
    /// known), either of which may run.
    pub fn resumed(asked: u32, delivered: Option<u32>) -> Self {
        let d = delivered.unwrap_or(asked);
        Self {
            lo: asked.min(d),
            hi: asked.max(d),
            seen: d,
        }
    }

    /// Records that prescale asked for `to`: while it is applied, any count between the
    /// one running and it is prescale's.
    pub fn asked(&mut self, to: u32) {
        self.lo = self.lo.min(to);
        self.hi = self.hi.max(to);
    }

    /// Observes `n` running at `now`: the external change, if it is one. `asked` is the
    /// count last asked for, `settled` whether the platform has had a start-up plus an
    /// interval to apply it; once it runs then, the span narrows to it.
    pub fn observe(
        &mut self,
        n: u32,
        asked: u32,
        settled: bool,
        now: i64,
    ) -> Option<ExternalChange> {
        if n < self.lo || n > self.hi {
            let change = ExternalChange {
                from: self.seen,
                to: n,
                at: now,
            };
            *self = Self::settled(n);
            return Some(change);
        }
        self.seen = n;
        if settled && n == asked {
            *self = Self::settled(n);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Observations after asks: (event, expected external change as (from, to)).
    enum Event {
        Ask(u32),
        /// Observed count, and whether the last ask had time to settle.
        See(u32, bool),
    }

    fn check(start: u32, events: &[Event], want: &[Option<(u32, u32)>]) {
        let mut own = Own::settled(start);
        let mut asked = start;
        let mut got = Vec::new();
        for (i, e) in events.iter().enumerate() {
            match *e {
                Event::Ask(n) => {
                    own.asked(n);
                    asked = n;
                }
                Event::See(n, settled) => {
                    let c = own.observe(n, asked, settled, i as i64);
                    got.push(c.map(|c| (c.from, c.to)));
                    if c.is_some() {
                        asked = n;
                    }
                }
            }
        }
        assert_eq!(got, want);
    }

    use Event::{Ask, See};

    #[test]
    fn tells_someone_elses_change_from_prescales_own() {
        // Someone raises 8 to 30: external.
        check(8, &[See(8, true), See(30, true)], &[None, Some((8, 30))]);
        // Someone scales to 0: external.
        check(8, &[See(0, true)], &[Some((8, 0))]);
        // Prescale's 7 → 20 rolling out: each count on the way is its own.
        check(
            7,
            &[Ask(20), See(9, false), See(15, false), See(20, true)],
            &[None, None, None],
        );
        // Then settled at 20: someone else's 7 is external.
        check(
            7,
            &[Ask(20), See(20, true), See(7, true)],
            &[None, Some((20, 7))],
        );
        // Up to 12, then down to 10 before 12 arrived: 11 on the way is still its own.
        check(
            8,
            &[
                Ask(12),
                See(10, false),
                Ask(10),
                See(11, false),
                See(10, true),
            ],
            &[None, None, None],
        );
        // A lost ask (the count stays where it was) is not external: it is asked again.
        check(8, &[Ask(12), See(8, true), See(8, true)], &[None, None]);
        // Reaching the ask before it settled keeps the span: a late 11 is its own.
        check(8, &[Ask(12), See(12, false), See(11, false)], &[None, None]);
        // After an external change, the span is the observed count.
        check(
            8,
            &[See(30, true), See(29, true)],
            &[Some((8, 30)), Some((30, 29))],
        );
    }

    #[test]
    fn resumed_spans_the_count_asked_for_and_delivered() {
        let mut own = Own::resumed(12, Some(8));
        assert_eq!(own.observe(10, 12, false, 0), None);
        assert_eq!(
            own.observe(30, 12, false, 1),
            Some(ExternalChange {
                from: 10,
                to: 30,
                at: 1
            })
        );
    }
}
