//! A target whose platform is Kubernetes: the running count read from the scale
//! subresource each cycle, and an HPA's floor given back (through the outbox) while the
//! target is paused or once it is removed.

use tracing::{debug, info, warn};

use super::{Failure, TargetLoop};
use crate::act::Action;
use crate::act::kubernetes::{Kubernetes, release_action};
use crate::config::Mode;
use crate::series::{Sample, align_down};
use crate::step::Asked;
use crate::store::Signal;
use crate::telemetry::condition::Note;

impl TargetLoop {
    /// Reads the running count from the scale subresource into the replicas series (the
    /// newest read of a step replaces the one before). A failure, or an HPA in the way of
    /// `replicas` mode, is the replicas signal's error: the target is degraded, and the
    /// message says why.
    pub(super) async fn poll_scale(&self, k: &Kubernetes, now: i64) {
        let result = k.running().await;
        let Some(mut state) = self.store.target(&self.target.name) else {
            return;
        };
        let ts = align_down(now, self.target.step_secs());
        let newest = match result {
            Ok(n) => {
                let series = &mut state.replica_series;
                if series.last().is_some_and(|l| l.ts >= ts) {
                    series.pop();
                }
                series.extend([Sample {
                    ts,
                    value: f64::from(n),
                }]);
                Ok(series.last().map(|s| s.ts))
            }
            Err(e) => Err(e),
        };
        let h = state.signals.entry(Signal::Replicas).or_default();
        h.last_poll = Some(now);
        let name = &self.target.name;
        match newest {
            Ok(newest) => {
                h.newest = newest.or(h.newest);
                h.error = None;
                if let Some(n) = self.persisting.clears(Failure::ScaleRead, now) {
                    info!(target = %name, failed_for = %n.duration(), "the running count is read from Kubernetes again");
                }
            }
            Err(e) => {
                h.error = Some(e.to_string());
                drop(state);
                match self.persisting.holds(Failure::ScaleRead, e.kind(), now) {
                    Some(Note::Started) => {
                        warn!(target = %name, error = %e, "cannot read the running count from Kubernetes");
                    }
                    Some(n) => {
                        warn!(target = %name, error = %e, failing_for = %n.duration(), "still cannot read the running count from Kubernetes");
                    }
                    None => {
                        debug!(target = %name, error = %e, "cannot read the running count from Kubernetes");
                    }
                }
            }
        }
    }

    /// While the target is paused, gives the HPA its floor back (`hpa-floor`, acting): a
    /// scale action to the target's `min_replicas` with the reason `Released`, written to
    /// the outbox like any other (at this owner's epoch in a fleet), which the worker
    /// sends although the target is paused. It becomes the count asked for, so it is
    /// written once (not again while the count asked for is that floor), and once resumed
    /// the next decision raises the floor again. Not written, it is tried at the next
    /// cycle.
    pub(super) async fn release_while_paused(&self, now: i64) {
        let name = &self.target.name;
        let action = {
            let Some(state) = self.store.target(name) else {
                return;
            };
            if !state.paused || self.target.mode != Mode::Act {
                return;
            }
            let asked = state.memory.asked.map(|a| a.replicas);
            let Some(action) = release_action(&self.target, asked, now, "paused") else {
                return;
            };
            action
        };
        let floor = action.to;
        match self.write(vec![Action::Scale(action)]).await {
            Ok(()) => {
                if let Some(n) = self.persisting.clears(Failure::FloorRelease, now) {
                    debug!(target = %name, failed_for = %n.duration(), "the HPA's floor's release could be written again");
                }
                if let Some(mut state) = self.store.target(name) {
                    state.memory.asked = Some(Asked {
                        replicas: floor,
                        at: now,
                    });
                }
                info!(target = %name, floor, "paused: the HPA's floor is given back (written to the outbox)");
            }
            Err(e) => match self.persisting.holds(Failure::FloorRelease, e.kind(), now) {
                Some(Note::Started) => {
                    warn!(target = %name, error = %e, "paused: cannot write the release of the HPA's floor; trying again every cycle");
                }
                Some(n) => {
                    warn!(target = %name, error = %e, failing_for = %n.duration(), "paused: still cannot write the release of the HPA's floor");
                }
                None => {
                    debug!(target = %name, error = %e, "paused: cannot write the release of the HPA's floor");
                }
            },
        }
    }
}
