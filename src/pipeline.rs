//! The live loop of one target: poll → forecast → decide → act, every `interval`.
//!
//! At start each signal is backfilled over `history`; afterwards only what is new since the
//! newest sample is fetched (a gap left by an outage is fetched again when the source
//! returns). Forecasting and deciding are the pure functions of [`crate::forecast`] and
//! [`crate::decide`], called with the wall clock's `now`. Actions go to a delivery task per
//! receiver through a `watch` channel, so a slow receiver never delays polling and a newer
//! action replaces one not yet picked up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::act::webhook::WebhookSender;
use crate::act::{Action, RebalanceAction, ScaleAction};
use crate::config::{ForecastConfig, Mode, TargetConfig, WebhookConfig};
use crate::decide::{self, Decision, Observed, Policy, Reason, balance};
use crate::forecast::capacity::{self, Capacity, CapacitySource};
use crate::forecast::{Forecaster, History, Updated, bottleneck};
use crate::metrics::{
    CapacityLabels, DecisionLabels, DeliveryLabels, ModelLabels, PollLabels, SignalLabels,
    TargetLabels,
};
use crate::models::ModelsDir;
use crate::series::{Sample, align_down};
use crate::source::{Source, SourceError};
use crate::store::{DecisionRecord, DeliveryRecord, InstanceStats, Signal, Store, TargetState};

/// A weight must move by more than this before a rebalance is sent.
const REBALANCE_THRESHOLD: u32 = 10;
/// Steps of per-instance history fetched each cycle (the newest value is used).
const INSTANCE_WINDOW_STEPS: i64 = 5;

/// The wall clock in Unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Polls, forecasts, decides and hands actions to the delivery tasks for one target.
pub struct TargetLoop {
    /// The target.
    pub target: Arc<TargetConfig>,
    /// Where series come from.
    pub source: Arc<dyn Source>,
    /// Shared state.
    pub store: Store,
    /// Forecast settings (interval level, refit schedule, horizon).
    pub forecast: ForecastConfig,
    /// Where fitted models are saved and loaded.
    pub models: ModelsDir,
    /// Scale actions for the platform's delivery task.
    pub scale_tx: watch::Sender<Option<Action>>,
    /// Rebalance actions for the balancer's delivery task.
    pub rebalance_tx: watch::Sender<Option<Action>>,
}

impl TargetLoop {
    /// Loads the saved model, then runs one cycle immediately and one every `interval`,
    /// until `shutdown` flips.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        self.load_model();
        let mut ticker = tokio::time::interval(self.target.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => break,
            }
            // A cycle is bounded by the source's timeouts; stop waiting for it on shutdown.
            tokio::select! {
                () = self.cycle(unix_now()) => {}
                _ = shutdown.changed() => break,
            }
        }
        debug!(target = %self.target.name, "target loop stopped");
    }

    /// Puts the saved forecaster, if any, in the store, so that forecasts are served before
    /// the first refit. A corrupt or old file is skipped with a warning (and overwritten at
    /// the next refit).
    pub fn load_model(&self) {
        let name = &self.target.name;
        let loaded = match self.models.load(name) {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                warn!(target = %name, error = %e, "model file skipped; the model will be refitted");
                return;
            }
        };
        let info = loaded.info();
        if let Some(mut state) = self.store.target(name) {
            state.forecaster = Some(loaded);
        }
        if let Some(i) = info {
            info!(target = %name, model = i.model, fitted_at = i.fitted_at, "model loaded");
        }
    }

    /// One poll → forecast → decide → act pass at `now`.
    pub async fn cycle(&self, now: i64) {
        let signals = Signal::configured(&self.target);
        for (signal, query) in signals {
            match signal {
                Signal::InstanceRate | Signal::InstanceLatency => {
                    self.poll_instances(signal, query, now).await
                }
                _ => self.poll(signal, query, now).await,
            }
        }
        self.decide(now);
    }

    async fn poll(&self, signal: Signal, query: &str, now: i64) {
        let t = &self.target;
        let step = t.step_secs();
        let end = align_down(now, step);
        let earliest = align_down(now - t.history.as_secs() as i64, step);
        let newest = self
            .store
            .target(&t.name)
            .and_then(|s| s.signals.get(&signal).and_then(|h| h.newest));
        let start = newest.map_or(earliest, |n| (n + step).max(earliest));
        if start > end {
            return;
        }
        let result = self
            .timed(signal, self.source.range(query, start, end, step))
            .await;
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
            Ok(samples) => {
                let added = state
                    .series_mut(signal)
                    .map_or(0, |s| s.extend(samples.iter().copied()));
                let newest = state
                    .series_mut(signal)
                    .and_then(|s| s.last())
                    .map(|s| s.ts);
                if signal == Signal::RequestRate && !state.backfilled {
                    state.backfilled = true;
                    info!(target = %t.name, points = added, "backfilled");
                }
                if signal == Signal::Replicas
                    && let Some(last) = samples.last()
                {
                    state.replicas = last.value.round().clamp(0.0, f64::from(u32::MAX)) as u32;
                }
                let h = state.signals.entry(signal).or_default();
                h.newest = newest.or(h.newest);
                h.last_poll = Some(now);
                h.error = None;
                if let Some(n) = h.newest {
                    age_metric.set((now - n) as f64);
                }
                debug!(target = %t.name, signal = signal.as_str(), added, "polled");
            }
            Err(e) => {
                let h = state.signals.entry(signal).or_default();
                h.last_poll = Some(now);
                h.error = Some(e.to_string());
                if let Some(n) = h.newest {
                    age_metric.set((now - n) as f64);
                }
                warn!(target = %t.name, signal = signal.as_str(), error = %e, "poll failed");
            }
        }
    }

    async fn poll_instances(&self, signal: Signal, query: &str, now: i64) {
        let t = &self.target;
        let step = t.step_secs();
        let end = align_down(now, step);
        let start = end - INSTANCE_WINDOW_STEPS * step;
        let result = self
            .timed(
                signal,
                self.source.range_by(query, "instance", start, end, step),
            )
            .await;
        let Some(mut state) = self.store.target(&t.name) else {
            return;
        };
        let h = state.signals.entry(signal).or_default();
        h.last_poll = Some(now);
        match result {
            Ok(grouped) => {
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
                state.instances.retain(|k, _| latest.contains_key(k));
                for (instance, value) in latest {
                    let stats = state
                        .instances
                        .entry(instance)
                        .or_insert_with(InstanceStats::default);
                    match signal {
                        Signal::InstanceLatency => stats.latency = Some(value),
                        _ => stats.rate = Some(value),
                    }
                }
            }
            Err(e) => {
                h.error = Some(e.to_string());
                warn!(target = %t.name, signal = signal.as_str(), error = %e, "poll failed");
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

    /// Forecasts and decides from the stored state; sends what changed.
    fn decide(&self, now: i64) {
        let t = &self.target;
        let mut policy = Policy::of(t);
        let settings = self.forecast.settings(t.step_secs(), policy.lookahead);
        let Some(mut state) = self.store.target(&t.name) else {
            return;
        };
        let degraded = state.degraded_reasons(now);
        let grid = state.rate.to_grid();
        let forecaster = state
            .forecaster
            .get_or_insert_with(|| Forecaster::new(settings));
        if *forecaster.settings() != settings {
            forecaster.set_settings(settings);
        }
        // A refit holds this target's lock for some milliseconds; the API waits that long.
        let updated = grid.as_ref().map(|(start, values)| {
            let history = History {
                start: *start,
                step: t.step_secs(),
                values,
            };
            forecaster.update(history, now)
        });
        let refitted = matches!(updated, Some(Ok(Updated::Refitted)));
        if let Some(Err(e)) = &updated {
            debug!(target = %t.name, error = %e, "no forecast");
        }
        let forecast = forecaster.forecast(now, settings.horizon).ok();
        let model_info = forecaster.info();
        let saved = refitted.then(|| ModelsDir::encode(&t.name, forecaster, now));
        if refitted || state.capacity.is_none() {
            state.capacity = Some(resolve_capacity(&state, t));
        }
        let capacity = state.capacity.as_ref().and_then(|c| c.effective_rps);
        let m = self.store.metrics();
        let labels = TargetLabels {
            target: t.name.clone(),
        };
        if let Some(i) = &model_info {
            if refitted {
                m.forecast_refits
                    .get_or_create(&ModelLabels {
                        target: t.name.clone(),
                        model: i.model.to_owned(),
                    })
                    .inc();
                info!(target = %t.name, model = i.model, description = %i.description, "model selected");
            }
            if let Some(c) = i.coverage {
                m.forecast_coverage.get_or_create(&labels).set(c);
            }
        }
        if let (Some(c), Some(cap)) = (&state.capacity, capacity) {
            m.capacity_rps
                .get_or_create(&CapacityLabels {
                    target: t.name.clone(),
                    source: if c.source == CapacitySource::Learned {
                        "learned"
                    } else {
                        "configured"
                    }
                    .to_owned(),
                })
                .set(cap);
        }
        state.bottleneck = match (&forecast, capacity) {
            (Some(f), Some(cap)) => {
                let latency = state
                    .capacity
                    .as_ref()
                    .and_then(|c| c.learned.as_ref())
                    .zip(t.latency_slo)
                    .map(|(l, slo)| (l.curve, slo.as_secs_f64()));
                Some(bottleneck::predict(bottleneck::Inputs {
                    forecast: f,
                    now,
                    replicas: state.replicas,
                    capacity_per_replica: cap,
                    demand_now: state.rate.last().map(|s| s.value),
                    latency,
                }))
            }
            _ => None,
        };
        m.seconds_to_bottleneck.get_or_create(&labels).set(
            state
                .bottleneck
                .as_ref()
                .map_or(f64::INFINITY, |b| b.seconds_to_breach()),
        );
        if let Some(bytes) = saved.and_then(|r| {
            r.map_err(|e| warn!(target = %t.name, error = %e, "saving the model failed"))
                .ok()
        }) {
            let models = self.models.clone();
            let name = t.name.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = models.write(&name, &bytes) {
                    warn!(target = %name, error = %e, "saving the model failed");
                }
            });
        }
        let fresh = |s: Option<Sample>| s.filter(|s| now - s.ts <= t.stale_after.as_secs() as i64);
        let observed = Observed {
            replicas: state.replicas,
            demand_rps: fresh(state.rate.last()).map(|s| s.value),
            degraded: !degraded.is_empty(),
        };
        let decision = match capacity {
            Some(cap) => {
                policy.capacity_rps = cap;
                decide::decide(
                    &policy,
                    forecast.as_ref(),
                    observed,
                    &mut state.decide_state,
                    now,
                )
            }
            // Nothing to size replicas by yet: hold, and say why.
            None => Decision {
                at: now,
                from: state.replicas,
                to: state.replicas,
                reasons: vec![Reason {
                    code: "NoCapacity",
                    message: state
                        .capacity
                        .as_ref()
                        .map_or_else(String::new, |c| c.reason.clone()),
                }],
                peak: None,
            },
        };
        if t.queries.replicas.is_none() {
            // Without a replicas query, the count asked for is taken as the count running.
            state.replicas = decision.to;
        }

        m.desired_replicas
            .get_or_create(&labels)
            .set(i64::from(decision.to));
        m.degraded
            .get_or_create(&labels)
            .set(i64::from(!degraded.is_empty()));
        let direction = match decision.to.cmp(&decision.from) {
            std::cmp::Ordering::Greater => "up",
            std::cmp::Ordering::Less => "down",
            std::cmp::Ordering::Equal => "hold",
        };
        m.decisions
            .get_or_create(&DecisionLabels {
                target: t.name.clone(),
                direction: direction.to_owned(),
                reason: decision.reasons.first().map_or("", |r| r.code).to_owned(),
            })
            .inc();

        let model = forecast.as_ref().map(|f| f.model);
        if decision.is_change() {
            info!(target = %t.name, from = decision.from, to = decision.to, reasons = %decision.reason_codes(), "scale decision");
            if t.mode == Mode::Act {
                let action = Action::Scale(ScaleAction::from_decision(&t.name, &decision, model));
                self.scale_tx.send_replace(Some(action));
            }
        }
        let weights = balance::weights(&state.instances);
        if !weights.is_empty() && balance::changed(&state.weights, &weights, REBALANCE_THRESHOLD) {
            info!(target = %t.name, instances = weights.len(), "rebalance");
            state.weights = weights.clone();
            if t.mode == Mode::Act {
                let action = Action::Rebalance(RebalanceAction {
                    target: t.name.clone(),
                    weights,
                    issued_at: now,
                });
                self.rebalance_tx.send_replace(Some(action));
            }
        }
        state.forecast = forecast;
        state.last_decision = Some(decision.clone());
        drop(state);
        self.store.record_decision(DecisionRecord {
            target: t.name.clone(),
            decision,
            mode: t.mode,
        });
    }
}

/// The capacity to decide with: configured, or learned from `(rate / replicas, latency)`
/// pairs when the target has a latency SLO and a replicas query.
fn resolve_capacity(state: &TargetState, t: &TargetConfig) -> Capacity {
    let learned = match (t.latency_slo, &t.queries.replicas, &t.queries.latency) {
        (Some(slo), Some(_), Some(_)) => {
            let pairs: Vec<(f64, f64)> = state
                .latency
                .iter()
                .filter_map(|l| {
                    let at = |s: &crate::series::Series| {
                        s.since(l.ts)
                            .next()
                            .filter(|x| x.ts == l.ts)
                            .map(|x| x.value)
                    };
                    let rate = at(&state.rate)?;
                    let replicas = at(&state.replica_series).filter(|r| *r >= 1.0)?;
                    Some((rate / replicas, l.value))
                })
                .collect();
            Some(capacity::learn(&pairs, slo.as_secs_f64()))
        }
        _ => None,
    };
    capacity::resolve(t.capacity_rps, learned.as_ref())
}

/// Delivers the newest action from `rx` to `hook`, one at a time, until `shutdown` flips.
pub async fn deliver_loop(
    sender: Arc<WebhookSender>,
    hook: WebhookConfig,
    store: Store,
    mut rx: watch::Receiver<Option<Action>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            _ = shutdown.changed() => break,
        }
        let Some(action) = rx.borrow_and_update().clone() else {
            continue;
        };
        let result = tokio::select! {
            r = sender.deliver(&hook, &action) => r,
            _ = shutdown.changed() => break,
        };
        let (outcome, attempts, error) = match &result {
            Ok(d) => (d.outcome_label(), d.attempts, None),
            Err(e) => (e.outcome_label(), e.attempts(), Some(e.to_string())),
        };
        store
            .metrics()
            .deliveries
            .get_or_create(&DeliveryLabels {
                target: action.target().to_owned(),
                kind: action.kind().to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        if let Some(mut state) = store.target(action.target()) {
            state.last_delivery = Some(DeliveryRecord {
                kind: action.kind(),
                idempotency_key: action.idempotency_key(),
                outcome,
                attempts,
                error,
                at: unix_now(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Queries, TargetConfig};
    use crate::forecast::capacity::LatencyCurve;
    use crate::metrics::Metrics;
    use std::time::Duration;

    /// A target without `capacity_rps` learns it from its series; one with it keeps it and
    /// reports the learned value beside it.
    #[test]
    fn capacity_is_learned_from_rate_replicas_and_latency() {
        let curve = LatencyCurve {
            base: 0.05,
            gain: 0.05,
            saturation: 100.0,
        };
        // (configured, want source, want effective)
        let cases = [
            (None, CapacitySource::Learned, 66.7),
            (Some(40.0), CapacitySource::Configured, 40.0),
        ];
        for (configured, source, want) in cases {
            let mut t = TargetConfig::example("web", 1.0, Duration::from_secs(60));
            t.capacity_rps = configured;
            t.latency_slo = Some(Duration::from_millis(200));
            t.queries = Queries {
                request_rate: "rate".into(),
                latency: Some("latency".into()),
                replicas: Some("replicas".into()),
                ..Queries::default()
            };
            let store = Store::new(std::slice::from_ref(&t), Metrics::new());
            let mut state = store.target("web").unwrap();
            for i in 0..600i64 {
                let ts = i * 60;
                let replicas = 2.0 + (i % 3) as f64;
                let load = 10.0 + 80.0 * ((i * 37) % 100) as f64 / 100.0;
                state.rate.extend([Sample {
                    ts,
                    value: load * replicas,
                }]);
                state.replica_series.extend([Sample {
                    ts,
                    value: replicas,
                }]);
                state.latency.extend([Sample {
                    ts,
                    value: curve.latency(load),
                }]);
            }
            let c = resolve_capacity(&state, &t);
            assert_eq!(c.source, source, "{}", c.reason);
            let got = c.effective_rps.unwrap();
            assert!(
                (got - want).abs() / want < 0.05,
                "{configured:?}: {got} vs {want}"
            );
            let learned = c.learned.as_ref().unwrap().capacity_rps;
            assert!((learned - 66.7).abs() / 66.7 < 0.05, "learned {learned}");
        }
    }
}
