//! Each target's decision history: every change kept, holds summarised.
//!
//! A target decides every `interval`, and most decisions hold the count. Logging each one
//! in one shared ring (as before) let busy targets push everyone's changes out within
//! minutes. Now each target keeps its own history of up to [`PER_TARGET`] records:
//!
//! - a **change** (`from != to`) is always a record of its own;
//! - a **hold** that repeats the record before it (same count, mode and reason codes) is
//!   folded into it: the record shows the newest decision, `since` the first one and
//!   `repeats` how many it stands for;
//! - when the history is full, the oldest **hold** goes first, so changes are kept longest.
//!
//! Records carry a sequence number shared by all targets, so a listing across targets is
//! newest first.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::Serialize;

use crate::decide::{Decision, Explain, Mode};

/// How many records each target keeps: a few hundred bytes each (the reasons' messages),
/// so 1,000 took more than the target's 14 days of history. 200 hold more than a day of a
/// change every ten minutes.
const PER_TARGET: usize = 200;

/// How many of a target's newest records keep their explanation (each a kilobyte or so:
/// every policy's and clamp's message).
const EXPLAINED: usize = 10;

/// A decision in the log, or a run of equal holds.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    /// The target.
    pub target: String,
    /// The decision (of a run of holds: the newest).
    #[serde(flatten)]
    pub decision: Decision,
    /// Whether it was to be sent (`act`) or only shown (`forecast-only`).
    pub mode: Mode,
    /// When the first decision this record stands for was made (Unix s); `at` for one.
    pub since: i64,
    /// How many decisions this record stands for: 1, or more for a run of equal holds.
    pub repeats: u64,
    /// Why the (newest) decision's count is what it is; kept for the newest records only.
    #[serde(skip)]
    pub explain: Option<Arc<Explain>>,
}

impl DecisionRecord {
    /// A record of one decision.
    pub fn new(target: impl Into<String>, decision: Decision, mode: Mode) -> Self {
        Self {
            target: target.into(),
            since: decision.at,
            repeats: 1,
            decision,
            mode,
            explain: None,
        }
    }

    /// The record with the decision's explanation.
    pub fn explained(self, explain: Explain) -> Self {
        Self {
            explain: Some(Arc::new(explain)),
            ..self
        }
    }

    /// Whether it holds the count (every decision it stands for does).
    pub fn is_hold(&self) -> bool {
        !self.decision.is_change()
    }

    /// Whether `next` repeats this hold: the same count, mode and reasons.
    fn repeated_by(&self, next: &Self) -> bool {
        self.is_hold()
            && next.is_hold()
            && self.decision.to == next.decision.to
            && self.mode == next.mode
            && self.decision.reasons.iter().map(|r| r.code).eq(next
                .decision
                .reasons
                .iter()
                .map(|r| r.code))
    }
}

/// One target's history, oldest first.
#[derive(Debug, Default)]
pub struct DecisionLog {
    records: VecDeque<(u64, DecisionRecord)>,
}

impl DecisionLog {
    /// Adds a decision as number `seq` (the caller's, increasing across targets).
    pub fn push(&mut self, seq: u64, record: DecisionRecord) {
        if let Some((last_seq, last)) = self.records.back_mut()
            && last.repeated_by(&record)
        {
            let (since, repeats) = (last.since, last.repeats);
            *last = DecisionRecord {
                since,
                repeats: repeats.saturating_add(record.repeats),
                ..record
            };
            *last_seq = seq;
            return;
        }
        if self.records.len() >= PER_TARGET {
            let oldest_hold = self.records.iter().position(|(_, r)| r.is_hold());
            self.records.remove(oldest_hold.unwrap_or(0));
        }
        self.records.push_back((seq, record));
        if let Some(i) = self.records.len().checked_sub(EXPLAINED + 1) {
            self.records[i].1.explain = None;
        }
    }

    /// The record of the decision made at `at`, or the newest record for `None`. A run of
    /// holds is found by any `at` from its `since` to its newest: its `at` moves on as
    /// holds fold into it, so the one a listing showed a moment ago is still found.
    pub fn at(&self, at: Option<i64>) -> Option<&DecisionRecord> {
        match at {
            None => self.records.back().map(|(_, r)| r),
            Some(at) => self
                .records
                .iter()
                .rev()
                .map(|(_, r)| r)
                .find(|r| (r.since..=r.decision.at).contains(&at)),
        }
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records newest first, with their sequence numbers.
    pub fn newest_first(&self) -> impl Iterator<Item = &(u64, DecisionRecord)> {
        self.records.iter().rev()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Reason, ReasonCode};

    fn record(at: i64, from: u32, to: u32, code: ReasonCode) -> DecisionRecord {
        let decision = Decision {
            at,
            from,
            to,
            reasons: vec![Reason::new(code, "why")],
            peak: None,
        };
        DecisionRecord::new("web", decision, Mode::Act)
    }

    #[test]
    fn equal_holds_fold_into_one_record_and_changes_stay_apart() {
        let mut log = DecisionLog::default();
        log.push(1, record(0, 2, 4, ReasonCode::Prediction));
        for (k, at) in (60..=600).step_by(60).enumerate() {
            log.push(2 + k as u64, record(at, 4, 4, ReasonCode::Prediction));
        }
        log.push(20, record(660, 4, 4, ReasonCode::Degraded));
        log.push(21, record(720, 4, 3, ReasonCode::Demand));
        let got: Vec<(u64, i64, i64, u64)> = log
            .newest_first()
            .map(|(s, r)| (*s, r.since, r.decision.at, r.repeats))
            .collect();
        assert_eq!(
            got,
            [
                (21, 720, 720, 1),
                (20, 660, 660, 1),
                (11, 60, 600, 10),
                (1, 0, 0, 1)
            ]
        );
    }

    #[test]
    fn a_full_history_drops_its_oldest_hold_before_any_change() {
        let mut log = DecisionLog::default();
        log.push(0, record(0, 1, 2, ReasonCode::Demand));
        // Alternate reasons so no two holds fold, and fill the history with them.
        for k in 1..PER_TARGET as i64 + 10 {
            let code = if k % 2 == 0 {
                ReasonCode::Demand
            } else {
                ReasonCode::Prediction
            };
            log.push(k as u64, record(k * 60, 2, 2, code));
        }
        assert_eq!(log.len(), PER_TARGET);
        let oldest = log.newest_first().last().expect("a record");
        assert_eq!(oldest.0, 0, "the change is kept: {oldest:?}");
        let holds = log.newest_first().filter(|(_, r)| r.is_hold()).count();
        assert_eq!(holds, PER_TARGET - 1);
    }

    #[test]
    fn a_history_of_changes_only_drops_the_oldest() {
        let mut log = DecisionLog::default();
        for k in 0..PER_TARGET as u64 + 5 {
            let n = (k % 7) as u32 + 1;
            log.push(k, record(k as i64, n, n + 1, ReasonCode::Demand));
        }
        assert_eq!(log.len(), PER_TARGET);
        assert_eq!(log.newest_first().last().map(|(s, _)| *s), Some(5));
    }
}
