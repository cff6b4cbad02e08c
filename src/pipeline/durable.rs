//! What the live loop keeps across a restart and a failed write: resuming from the
//! outbox's control state at start ([`TargetLoop::resume`]), and putting back what a step
//! remembered of actions that could not be written ([`Unsent`]).

use std::collections::BTreeMap;

use tracing::{debug, info, warn};

use super::TargetLoop;
use crate::act::outbox::{DeliveryState, OutboxError};
use crate::decide::DecideState;
use crate::decide::alert::AlertState;
use crate::series::Sample;
use crate::step::Asked;
use crate::step::external::Own;
use crate::store::TargetState;

impl TargetLoop {
    /// Resumes from the target's control state in the outbox: its pause, the count last
    /// asked for (decisions start from it, and scale-in waits a stabilisation window) and,
    /// without a `replicas` query, the count taken as running: the count last delivered, or
    /// the one asked for after it while that is still pending and more (never fewer than
    /// may run). Without this a restarted target would not know what runs.
    pub async fn resume(&self) {
        let t = &self.target;
        let found = match self.remembered().await {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(e) => {
                warn!(target = %t.name, error = %e, "cannot read the target's control state");
                return;
            }
        };
        let policy = t.step_policy(&self.forecast, self.alerts.as_ref());
        let now = self.store.now();
        let Some(mut state) = self.store.target(&t.name) else {
            return;
        };
        state.paused = found.paused;
        if found.paused {
            info!(target = %t.name, "resuming paused");
        }
        let Some(asked) = found.asked else {
            return;
        };
        state.memory.resume(&policy, asked, found.running, now);
        if let (None, Some(r)) = (&t.queries.replicas, found.running) {
            state.replicas = r;
        }
        drop(state);
        info!(target = %t.name, asked = asked.replicas, asked_at = asked.at, running = ?found.running,
            "resuming from the count last asked for");
    }

    /// What the outbox remembers of the target (see [`TargetLoop::resume`]); `None` when
    /// nothing is recorded.
    async fn remembered(&self) -> Result<Option<Remembered>, OutboxError> {
        let Some(c) = self.outbox.control(&self.target.name).await? else {
            return Ok(None);
        };
        let Some(asked) = c.asked else {
            return Ok(Some(Remembered {
                paused: c.paused,
                asked: None,
                running: None,
            }));
        };
        let newer = c.delivered.is_none_or(|d| d.id < asked.id);
        let pending = newer
            && match self.outbox.get(asked.id).await {
                Ok(d) => d.state == DeliveryState::Pending,
                // Pruned: finished long ago, so not pending.
                Err(OutboxError::NotFound(_)) => false,
                Err(e) => return Err(e),
            };
        let running = [c.delivered, pending.then_some(asked)]
            .into_iter()
            .flatten()
            .map(|m| m.replicas)
            .max();
        Ok(Some(Remembered {
            paused: c.paused,
            asked: Some(Asked {
                replicas: asked.replicas,
                at: asked.at,
            }),
            running,
        }))
    }

    /// After the cycle's actions were written (or there were none), or could not be: a
    /// target whose actions are not written forgets having asked (so it asks again next
    /// cycle) and is degraded, naming the outbox's error (until the outbox can be written)
    /// or why it may not act (`coordination`).
    pub(super) fn note_written(&self, written: Result<(), NotWritten>, unsent: Unsent) {
        let t = &self.target;
        let Some(mut state) = self.store.target(&t.name) else {
            return;
        };
        if !matches!(written, Err(NotWritten::Coordination(_))) && state.coordination.is_some() {
            state.coordination = None;
            info!(target = %t.name, "acting again");
        }
        match written {
            Err(NotWritten::Coordination(why)) => {
                unsent.restore(&mut state, t.queries.replicas.is_none());
                if state.coordination.is_none() {
                    warn!(target = %t.name, why = %why, "not acting; degraded (coordination)");
                }
                state.coordination = Some(why);
                self.store
                    .metrics()
                    .degraded
                    .get_or_create(&self.labels())
                    .set(1);
            }
            Err(NotWritten::Outbox(e)) => {
                unsent.restore(&mut state, t.queries.replicas.is_none());
                if state.write_error.is_none() {
                    warn!(target = %t.name, error = %e, "actions not written to the outbox; degraded, asking again next cycle");
                } else {
                    debug!(target = %t.name, error = %e, "actions still not written to the outbox");
                }
                state.write_error = Some(format!("actions not written: {e}"));
                self.store
                    .metrics()
                    .degraded
                    .get_or_create(&self.labels())
                    .set(1);
            }
            Ok(()) if state.write_error.is_some() && self.outbox.fault().is_none() => {
                state.write_error = None;
                info!(target = %t.name, "actions are written to the outbox again");
            }
            Ok(()) => {}
        }
    }
}

/// Why a cycle's actions were not written.
#[derive(Debug)]
pub(super) enum NotWritten {
    /// The outbox could not write them.
    Outbox(OutboxError),
    /// This instance may not act on the target now (why), or could not share the count
    /// asked for.
    Coordination(String),
}

impl NotWritten {
    /// A short name of the failure, to tell one lasting failure from another.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Outbox(_) => "outbox",
            Self::Coordination(_) => "coordination",
        }
    }
}

impl std::fmt::Display for NotWritten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Outbox(e) => write!(f, "not written to the outbox: {e}"),
            Self::Coordination(why) => write!(f, "not acting: {why}"),
        }
    }
}

/// What a target remembers across a restart, from the outbox's control state.
struct Remembered {
    /// Acting is paused.
    paused: bool,
    /// The count last asked for, and when.
    asked: Option<Asked>,
    /// The count taken as running without a `replicas` query: the count last delivered,
    /// or the one asked for after it while that is pending and more.
    running: Option<u32>,
}

/// What a step changes that says its actions were sent: put back when they cannot be
/// written, so that nothing shows (or is remembered) as asked for that was not written.
pub(super) struct Unsent {
    asked: Option<Asked>,
    running: Option<u32>,
    /// What prescale's own asks may leave running: an external change the step adopted
    /// is seen again at the next step, with the count asked for put back.
    own: Option<Own>,
    decide: DecideState,
    weights: BTreeMap<String, u32>,
    alert: AlertState,
    replicas: u32,
    /// The time of the newest sample of the replicas at each decision.
    shown_until: Option<i64>,
}

impl Unsent {
    /// The state before a step.
    pub(super) fn before(state: &TargetState) -> Self {
        let m = &state.memory;
        Self {
            asked: m.asked,
            running: m.running,
            own: m.own,
            decide: m.decide.clone(),
            weights: m.weights.clone(),
            alert: m.alert.clone(),
            replicas: state.replicas,
            shown_until: state.replicas_history.last().map(|s| s.ts),
        }
    }

    /// Puts it back after the step's actions could not be written: the count last asked
    /// for (and so taken as running), the rate-limit history (the count is asked for again), the weights and the
    /// alert last sent, and, when the count running is the count asked for (no `replicas`
    /// query), the replicas shown now and at this decision.
    fn restore(self, state: &mut TargetState, replicas_are_asked: bool) {
        let m = &mut state.memory;
        m.asked = self.asked;
        m.running = self.running;
        m.own = self.own;
        m.decide = self.decide;
        m.weights = self.weights;
        m.alert = self.alert;
        if replicas_are_asked && state.replicas != self.replicas {
            state.replicas = self.replicas;
            let history = &mut state.replicas_history;
            // The step's own sample, if it added one.
            if history.last().map(|s| s.ts) != self.shown_until
                && let Some(last) = history.pop()
            {
                history.extend([Sample {
                    ts: last.ts,
                    value: f64::from(self.replicas),
                }]);
            }
        }
    }
}
