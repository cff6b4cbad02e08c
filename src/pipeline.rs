//! The live loop of one target: poll → forecast → decide → act, every `interval`.
//!
//! At start each signal is backfilled over `history`; afterwards only what is new since the
//! newest sample is fetched (a gap left by an outage is fetched again when the source
//! returns). Forecasting and deciding are the pure functions of [`crate::forecast`] and
//! [`crate::decide`], called with the wall clock's `now`. Actions are written to the durable
//! outbox ([`crate::act::outbox`]) before anything is sent; its worker delivers them, so a
//! slow receiver never delays polling and a newer scale action supersedes one not yet
//! delivered. A predicted bottleneck that scaling cannot prevent becomes an alert.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::act::alert::{self, Limit};
use crate::act::outbox::Outbox;
use crate::act::{Action, RebalanceAction, ScaleAction};
use crate::config::{AlertmanagerConfig, ForecastConfig, Mode, TargetConfig};
use crate::decide::{self, Decision, Observed, Reason, balance};
use crate::forecast::capacity::{self, Capacity, CapacitySource};
use crate::forecast::{Forecaster, History, Updated, bottleneck};
use crate::metrics::{
    CapacityLabels, DecisionLabels, ModelLabels, PollLabels, SignalLabels, TargetLabels,
};
use crate::models::ModelsDir;
use crate::series::{Sample, align_down};
use crate::source::{Source, SourceError};
use crate::store::{DecisionRecord, InstanceStats, Signal, Store, TargetState};

/// Steps of per-instance history fetched each cycle (the newest value is used).
const INSTANCE_WINDOW_STEPS: i64 = 5;

/// Polls, forecasts, decides and writes actions to the outbox for one target.
pub struct TargetLoop {
    /// The target.
    pub target: Arc<TargetConfig>,
    /// Where series come from.
    pub source: Arc<dyn Source>,
    /// Shared state.
    pub store: Store,
    /// Where actions are written before they are sent.
    pub outbox: Outbox,
    /// Alertmanager, when predicted bottlenecks are to be alerted.
    pub alerts: Option<AlertmanagerConfig>,
    /// Most replicas across all targets, if budgeted.
    pub budget: Option<u32>,
    /// Forecast settings (interval level, refit schedule, horizon).
    pub forecast: ForecastConfig,
    /// Where fitted models are saved and loaded.
    pub models: ModelsDir,
}

impl TargetLoop {
    /// Runs one cycle immediately, then one every `interval`, until `shutdown` flips.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        self.load_model();
        let mut ticker = tokio::time::interval(self.store.clock().real(self.target.interval));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => break,
            }
            // A cycle is bounded by the source's timeouts; stop waiting for it on shutdown.
            tokio::select! {
                () = self.cycle(self.store.now()) => {}
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

    /// One poll → forecast → decide → act pass at `now` (the store's clock).
    pub async fn cycle(&self, now: i64) {
        let signals = Signal::configured(&self.target);
        for (signal, query) in signals {
            match signal {
                Signal::InstanceRate | Signal::InstanceLatency | Signal::InstanceErrors => {
                    self.poll_instances(signal, query, now).await
                }
                _ => self.poll(signal, query, now).await,
            }
        }
        let actions = self.decide(now);
        if !actions.is_empty()
            && let Err(e) = self.outbox.enqueue(actions).await
        {
            error!(target = %self.target.name, error = %e, "cannot write actions to the outbox; they are lost");
        }
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
                        Signal::InstanceErrors => stats.errors = Some(value),
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

    /// Forecasts and decides from the stored state; returns the actions to send.
    fn decide(&self, now: i64) -> Vec<Action> {
        let t = &self.target;
        let mut policy = t.policy();
        let settings = self.forecast.settings(t.step_secs(), policy.lookahead);
        let mut actions = Vec::new();
        let Some(mut state) = self.store.target(&t.name) else {
            return actions;
        };
        let alert_lead = self.alerts.as_ref().map_or(0, |a| a.lead.as_secs() as i64);
        let degraded = state.degraded_reasons(now);
        let refit_requested = std::mem::take(&mut state.refit_requested);
        // Score the previous forecast against what has been observed since it was made.
        if let Some(prev) = state.forecast.take() {
            // Its points start after the last observation it saw: all later ones are new.
            let first = prev.points.first().map_or(i64::MAX, |p| p.timestamp);
            let scored: Vec<(f64, bool)> = prev.score(state.rate.since(first)).collect();
            state.forecast_quality.extend(scored);
            let labels = TargetLabels {
                target: t.name.clone(),
            };
            let m = self.store.metrics();
            if let (Some(mae), Some(coverage)) = (
                state.forecast_quality.mae(),
                state.forecast_quality.coverage(),
            ) {
                m.forecast_mae.get_or_create(&labels).set(mae);
                m.forecast_coverage.get_or_create(&labels).set(coverage);
            }
        }
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
            if refit_requested {
                info!(target = %t.name, "refit requested");
                forecaster.refit(history, now).map(|()| Updated::Refitted)
            } else {
                forecaster.update(history, now)
            }
        });
        let refitted = matches!(updated, Some(Ok(Updated::Refitted)));
        if let Some(Err(e)) = &updated {
            debug!(target = %t.name, error = %e, "no forecast");
        }
        // Far enough ahead for the decision, the bottleneck and alerts.
        let forecast = forecaster
            .forecast(now, settings.horizon.max(alert_lead))
            .ok();
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
        if let Some(i) = &model_info
            && refitted
        {
            m.forecast_refits
                .get_or_create(&ModelLabels {
                    target: t.name.clone(),
                    model: i.model.to_owned(),
                })
                .inc();
            info!(target = %t.name, model = i.model, description = %i.description, "model selected");
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
        let latency = t
            .latency_slo
            .zip(fresh(state.latency.last()))
            .map(|(slo, s)| decide::Latency {
                p95: s.value,
                slo: slo.as_secs_f64(),
                rps_per_replica_at_slo: state
                    .capacity
                    .as_ref()
                    .and_then(|c| c.learned.as_ref())
                    .map(|l| l.capacity_rps),
            });
        let observed = Observed {
            replicas: state.replicas,
            demand_rps: fresh(state.rate.last()).map(|s| s.value),
            latency,
            degraded: !degraded.is_empty(),
        };
        let mut decision = match capacity {
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
                reasons: vec![Reason::new(
                    "NoCapacity",
                    state
                        .capacity
                        .as_ref()
                        .map_or_else(String::new, |c| c.reason.clone()),
                )],
                peak: None,
            },
        };
        state.wanted = Some(decision.to);
        // The most the budget grants this target, when it grants less than it wants.
        let mut budget_cap = None;
        if let Some(budget) = self.budget {
            // The other targets are locked one at a time, never while holding this one.
            drop(state);
            let granted = self.granted(budget, now);
            let Some(again) = self.store.target(&t.name) else {
                return actions;
            };
            state = again;
            if let Some((granted, total)) = granted
                && granted < decision.to
            {
                decision.limit_to(
                    granted,
                    format!(
                        "{} limited to {granted} by the budget of {budget} replicas across targets (asked for in all: {total})",
                        decision.to
                    ),
                );
                state
                    .decide_state
                    .record_scale(now, decision.from, decision.to);
                budget_cap = Some(granted);
            }
        }
        let acting = t.mode == Mode::Act && !state.paused;
        if t.queries.replicas.is_none() && !state.paused {
            // Without a replicas query, the count asked for is taken as the count running
            // (in forecast-only mode: the count prescale would have asked for). While
            // paused nothing is asked for, so the first decision after a resume sends
            // whatever differs from what was last sent.
            state.replicas = decision.to;
        }
        let replicas = f64::from(state.replicas);
        state.replicas_history.extend([Sample {
            ts: now,
            value: replicas,
        }]);

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
            if acting && t.platform.is_some() {
                let action = Action::Scale(ScaleAction::from_decision(&t.name, &decision, model));
                actions.push(action);
            }
        }
        let st = &mut *state;
        let balance = st.balancer.update(&t.rebalance, &st.instances, now);
        for (instance, why) in &balance.drained {
            if !state.drained.contains_key(instance) {
                warn!(target = %t.name, %instance, why = %why, "draining an outlier");
            }
        }
        for instance in state.drained.keys() {
            if !balance.drained.contains_key(instance) {
                info!(target = %t.name, %instance, "restoring a drained instance");
            }
        }
        state.drained = balance.drained;
        let weights = balance.weights;
        if !weights.is_empty() && balance::changed(&state.weights, &weights, t.rebalance.threshold)
        {
            info!(target = %t.name, instances = weights.len(), "rebalance");
            state.weights = weights.clone();
            if acting && (t.balancer.is_some() || t.haproxy.is_some()) {
                let action = Action::Rebalance(RebalanceAction {
                    target: t.name.clone(),
                    weights,
                    issued_at: now,
                });
                actions.push(action);
            }
        }
        if let Some(am) = &self.alerts {
            // What the target may still reach: what the budget grants it, its maximum, or
            // in forecast-only mode (where prescale scales nothing) what runs now.
            let (reachable, limit) = match (t.mode, budget_cap) {
                (Mode::ForecastOnly, _) => (state.replicas, Limit::ForecastOnly),
                (Mode::Act, Some(granted)) => (granted, Limit::Budget),
                (Mode::Act, None) => (t.max_replicas, Limit::MaxReplicas),
            };
            let bottleneck = forecast.as_ref().zip(capacity).and_then(|(f, cap)| {
                alert::predicted_breach(&t.name, f, now, alert_lead, cap, reachable, limit)
            });
            if let Some(a) = state
                .alert
                .step(bottleneck, now, am.resend.as_secs() as i64)
            {
                info!(target = %t.name, resolved = a.resolved, time_to_breach_s = a.bottleneck.time_to_breach_secs,
                    shortfall_rps = a.bottleneck.shortfall_rps, "predicted bottleneck alert");
                actions.push(Action::Alert(a));
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
        actions
    }
}

impl TargetLoop {
    /// This target's share of `budget` given every target's last wish, and the total
    /// wished; `None` if this target is not in the store. A degraded target's floor is
    /// what it runs now: missing data never scales in, not even for the budget.
    fn granted(&self, budget: u32, now: i64) -> Option<(u32, u64)> {
        let mut claims = Vec::new();
        let mut mine = None;
        for name in self.store.names() {
            let Some(s) = self.store.target(name) else {
                continue;
            };
            if name == self.target.name {
                mine = Some(claims.len());
            }
            let want = s.wanted.unwrap_or(s.replicas);
            let min = if s.degraded_reasons(now).is_empty() {
                s.config.min_replicas
            } else {
                s.config.min_replicas.max(s.replicas.min(want))
            };
            claims.push(decide::budget::Claim {
                priority: s.config.priority,
                min,
                want,
            });
        }
        let total = claims.iter().map(|c| u64::from(c.want)).sum();
        let granted = decide::budget::allocate(budget, &claims);
        mine.map(|i| (granted[i], total))
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
