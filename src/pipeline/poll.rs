//! Polling a target's signals: what is new since the newest sample (at first, the
//! history), and the per-instance signals' last few steps; each result recorded in the
//! store, its failures logged as conditions that persist.

use std::collections::BTreeMap;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::backfill::{self, Backfill, Older};
use super::{Failure, TargetLoop};
use crate::metrics::{DroppedLabels, PollLabels, SignalLabels};
use crate::series::align_down;
use crate::source::{Checked, SourceError};
use crate::store::{InstanceStats, Signal};
use crate::telemetry::condition::Note;

/// Steps of per-instance history fetched each cycle (the newest value is used).
const INSTANCE_WINDOW_STEPS: i64 = 5;

impl TargetLoop {
    /// Polls a target-level signal for what is new since its newest sample; without one,
    /// the history as `backfill` says (all of it, or the recent hours, queueing the rest).
    pub(super) async fn poll(&self, signal: Signal, query: &str, now: i64, backfill: Backfill<'_>) {
        let t = &self.target;
        let step = t.step_secs();
        let end = align_down(now, step);
        let earliest = align_down(now - t.history.as_secs() as i64, step);
        let newest = self
            .store
            .target(&t.name)
            .and_then(|s| s.signals.get(&signal).and_then(|h| h.newest));
        let start = match (newest, backfill) {
            (Some(n), _) => (n + step).max(earliest),
            (None, Backfill::Whole) => earliest,
            (None, Backfill::Staged(_)) => backfill::recent_start(earliest, end, step),
        };
        if start > end {
            return;
        }
        let result = self
            .timed(signal, self.source.range_checked(query, start, end, step))
            .await;
        self.count_dropped(signal, &result);
        let Some(mut state) = self.store.target(&t.name) else {
            return;
        };
        let age_metric = self
            .store
            .metrics()
            .sample_age
            .get_or_create(&self.signal_labels(signal))
            .clone();
        match result {
            Ok(Checked { value: samples, .. }) => {
                let added = state
                    .series_mut(signal)
                    .map_or(0, |s| s.extend(samples.iter().copied()));
                let newest = state
                    .series_mut(signal)
                    .and_then(|s| s.last())
                    .map(|s| s.ts);
                if signal == Signal::RequestRate && !state.backfill_tried {
                    state.backfill_tried = true;
                    info!(target = %t.name, points = added, "backfilled");
                }
                let h = state.signals.entry(signal).or_default();
                if let (None, Backfill::Staged(queue)) = (h.newest, backfill)
                    && start > earliest
                {
                    // The recent hours are in: the older history follows, beside the cycles.
                    h.loading = Some(start);
                    let older = Older {
                        signal,
                        query: query.to_owned(),
                        from: earliest,
                        before: start,
                    };
                    let _ = queue.send(older);
                }
                h.newest = newest.or(h.newest);
                h.last_poll = Some(now);
                h.error = None;
                if let Some(n) = h.newest {
                    age_metric.set((now - n) as f64);
                }
                debug!(target = %t.name, signal = signal.as_str(), added, "polled");
                drop(state);
                self.poll_succeeded(signal, now);
            }
            Err(e) => {
                // Tried: the target is degraded (naming the query), no longer backfilling,
                // and the next poll backfills from the start of the history again.
                if signal == Signal::RequestRate {
                    state.backfill_tried = true;
                }
                let h = state.signals.entry(signal).or_default();
                h.last_poll = Some(now);
                h.error = Some(e.to_string());
                if let Some(n) = h.newest {
                    age_metric.set((now - n) as f64);
                }
                drop(state);
                self.poll_failed(signal, &e, now);
            }
        }
    }

    /// Logs a failed poll when the failure starts (or changes kind), and every few
    /// minutes while it lasts; at DEBUG in between.
    pub(super) fn poll_failed(&self, signal: Signal, e: &SourceError, now: i64) {
        let (name, signal_name) = (&self.target.name, signal.as_str());
        match self
            .persisting
            .holds(Failure::Poll(signal), e.metric_label(), now)
        {
            Some(Note::Started) => {
                warn!(target = %name, signal = signal_name, error = %e, "poll failed");
            }
            Some(n) => {
                warn!(target = %name, signal = signal_name, error = %e, failing_for = %n.duration(), "poll still failing");
            }
            None => debug!(target = %name, signal = signal_name, error = %e, "poll failed"),
        }
    }

    /// Logs that a signal whose polls were failing is polled again, and after how long.
    pub(super) fn poll_succeeded(&self, signal: Signal, now: i64) {
        if let Some(n) = self.persisting.clears(Failure::Poll(signal), now) {
            info!(target = %self.target.name, signal = signal.as_str(), failed_for = %n.duration(), "poll recovered");
        }
    }

    pub(super) async fn poll_instances(&self, signal: Signal, query: &str, now: i64) {
        let t = &self.target;
        let step = t.step_secs();
        let end = align_down(now, step);
        let start = end - INSTANCE_WINDOW_STEPS * step;
        let result = self
            .timed(
                signal,
                self.source
                    .range_by_checked(query, "instance", start, end, step),
            )
            .await;
        self.count_dropped(signal, &result);
        let Some(mut state) = self.store.target(&t.name) else {
            return;
        };
        let h = state.signals.entry(signal).or_default();
        h.last_poll = Some(now);
        match result {
            Ok(Checked { value: grouped, .. }) => {
                h.error = None;
                h.newest = grouped
                    .values()
                    .filter_map(|s| s.last().map(|s| s.ts))
                    .max()
                    .or(h.newest);
                let latest: BTreeMap<String, f64> = grouped
                    .into_iter()
                    .filter_map(|(k, s)| s.last().map(|s| (k, s.value)))
                    .collect();
                merge_instances(&mut state.instances, signal, &latest);
                drop(state);
                self.poll_succeeded(signal, now);
            }
            Err(e) => {
                h.error = Some(e.to_string());
                drop(state);
                self.poll_failed(signal, &e, now);
            }
        }
    }

    /// Counts the samples a query's answer had dropped at the door (also when none was
    /// left).
    pub(super) fn count_dropped<T>(
        &self,
        signal: Signal,
        result: &Result<Checked<T>, SourceError>,
    ) {
        let dropped = match result {
            Ok(checked) => checked.dropped,
            Err(SourceError::Unusable { dropped, .. }) => *dropped,
            Err(_) => return,
        };
        for (reason, n) in dropped.by_reason() {
            if n > 0 {
                let labels = DroppedLabels {
                    target: self.target.name.clone(),
                    signal: signal.as_str().to_owned(),
                    reason,
                };
                let n = u64::try_from(n).unwrap_or(u64::MAX);
                self.store
                    .metrics()
                    .samples_dropped
                    .get_or_create(&labels)
                    .inc_by(n);
            }
        }
    }

    /// Awaits a query, counting it and its duration.
    async fn timed<T>(
        &self,
        signal: Signal,
        fut: impl Future<Output = Result<T, SourceError>>,
    ) -> Result<T, SourceError> {
        let started = Instant::now();
        let result = fut.await;
        let m = self.store.metrics();
        m.poll_duration
            .get_or_create(&self.signal_labels(signal))
            .observe(started.elapsed().as_secs_f64());
        let outcome = result.as_ref().map_or_else(|e| e.metric_label(), |_| "ok");
        m.polls
            .get_or_create(&PollLabels {
                target: self.target.name.clone(),
                signal: signal.as_str().to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        result
    }

    fn signal_labels(&self, signal: Signal) -> SignalLabels {
        SignalLabels {
            target: self.target.name.clone(),
            signal: signal.as_str().to_owned(),
        }
    }
}

/// Sets `signal`'s newest value per instance. An instance stays while any per-instance
/// signal reports it: one signal losing it (a drained instance's latency series vanishes
/// when it gets no traffic) clears only that signal's value.
pub(super) fn merge_instances(
    instances: &mut BTreeMap<String, InstanceStats>,
    signal: Signal,
    latest: &BTreeMap<String, f64>,
) {
    for name in latest.keys() {
        instances.entry(name.clone()).or_default();
    }
    for (name, stats) in instances.iter_mut() {
        let v = latest.get(name).copied();
        match signal {
            Signal::InstanceLatency => stats.latency = v,
            Signal::InstanceErrors => stats.errors = v,
            _ => stats.rate = v,
        }
    }
    instances.retain(|_, s| s.rate.is_some() || s.latency.is_some() || s.errors.is_some());
}
