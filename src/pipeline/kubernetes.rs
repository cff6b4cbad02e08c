//! A target whose platform is Kubernetes: the running count read from the scale
//! subresource each cycle, and an HPA's floor given back while the target is paused.

use tracing::{debug, info, warn};

use super::{Failure, TargetLoop};
use crate::act::kubernetes::Kubernetes;
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

    /// While the target is paused, gives the HPA its floor back once (`hpa-floor`, acting,
    /// and once a count was asked for): prescale stops acting on it. The count asked for becomes that floor, so that once resumed the
    /// next decision raises it again. A failure is tried again at the next cycle.
    pub(super) async fn release_while_paused(&self, k: &Kubernetes, now: i64) {
        let name = &self.target.name;
        {
            let Some(mut state) = self.store.target(name) else {
                return;
            };
            if !state.paused {
                state.floor_released = false;
                return;
            }
            // Nothing to give back: never acted on (or only forecasting), or given back.
            if state.floor_released || self.target.mode != Mode::Act || state.memory.asked.is_none()
            {
                return;
            }
        }
        match k.release().await {
            Ok(floor) => {
                if let Some(n) = self.persisting.clears(Failure::FloorRelease, now) {
                    debug!(target = %name, failed_for = %n.duration(), "the HPA's floor could be given back again");
                }
                let Some(mut state) = self.store.target(name) else {
                    return;
                };
                state.floor_released = true;
                if let Some(floor) = floor {
                    state.memory.asked = Some(Asked {
                        replicas: floor,
                        at: now,
                    });
                    info!(target = %name, floor, "paused: the HPA's floor is given back");
                }
            }
            Err(e) => match self.persisting.holds(Failure::FloorRelease, e.kind(), now) {
                Some(Note::Started) => {
                    warn!(target = %name, error = %e, "paused: cannot give the HPA its floor back; trying again every cycle");
                }
                Some(n) => {
                    warn!(target = %name, error = %e, failing_for = %n.duration(), "paused: still cannot give the HPA its floor back");
                }
                None => {
                    debug!(target = %name, error = %e, "paused: cannot give the HPA its floor back");
                }
            },
        }
    }
}
