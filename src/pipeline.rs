//! The live loop of one target: poll → forecast → decide → act, every `interval`.
//!
//! At start each signal is backfilled over `history`; afterwards only what is new since the
//! newest sample is fetched (a gap left by an outage is fetched again when the source
//! returns). Forecasting and deciding are one pure [`crate::step::step`], the very one
//! `backtest` and `demo` run, called with the store clock's `now`: a cycle is poll → step →
//! record (store, metrics, outbox). Actions are written to the durable
//! outbox ([`crate::act::outbox`]) before anything is sent; its worker delivers them, so a
//! slow receiver never delays polling and a newer scale action supersedes one not yet
//! delivered. A predicted bottleneck that scaling cannot prevent becomes an alert.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::act::kubernetes::Kubernetes;
use crate::act::outbox::Outbox;
use crate::act::{Action, RebalanceAction, ScaleAction};
use crate::cluster::{Cluster, Standing};
use crate::config::{AlertmanagerConfig, ForecastConfig, TargetConfig};
use crate::forecast::capacity::CapacitySource;
use crate::metrics::{CapacityLabels, DecisionLabels, ModelLabels, TargetLabels};
use crate::models::{Encoded, ModelsDir, Written};
use crate::series::Sample;
use crate::source::Source;
use crate::step::{self, BudgetView, Inputs, Plan, TargetPolicy};
use crate::store::{DecisionRecord, Logged, Signal, Store, TargetState};
use crate::telemetry::condition::{Conditions, Note};
use backfill::{Backfill, Older};
use durable::{NotWritten, Unsent};

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
    /// The target's ownership, when instances share targets through etcd: the loop acts
    /// only while this instance owns the target at this epoch, and ends when it does not.
    pub ownership: Option<Ownership>,
    /// The target's Kubernetes platform, if its scale actions go to one: the running count
    /// is read from its scale subresource (when no `replicas` query is configured), and an
    /// HPA's floor is given back while the target is paused.
    pub kubernetes: Option<Arc<Kubernetes>>,
    /// The failures that persist across cycles, so that each is logged when it starts,
    /// every few minutes while it lasts and when it ends, not at every cycle.
    pub persisting: Persisting,
}

/// A failure of a target's loop that may last many cycles ([`TargetLoop::persisting`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Failure {
    /// Polling a signal (Prometheus down, a query matching nothing, ...).
    Poll(Signal),
    /// Reading the running count from Kubernetes (or an HPA in the way).
    ScaleRead,
    /// Giving the HPA its floor back while paused.
    FloorRelease,
}

/// The failures of a target's loop that hold now, and since when
/// ([`crate::telemetry::condition`]).
#[derive(Debug, Default)]
pub struct Persisting(std::sync::Mutex<Conditions<Failure>>);

impl Persisting {
    /// `failure` (of `kind`, e.g. an error's metric label) holds at `now`: what to log.
    fn holds(&self, failure: Failure, kind: &str, now: i64) -> Option<Note> {
        self.lock().holds(&failure, kind, now)
    }

    /// `failure` does not hold at `now`: [`Note::Ended`] if it did.
    fn clears(&self, failure: Failure, now: i64) -> Option<Note> {
        self.lock().clears(&failure, now)
    }

    /// Held only for a lookup, never across an `.await`; a panic elsewhere while it was
    /// held leaves nothing half-written that logging could not go on with.
    fn lock(&self) -> std::sync::MutexGuard<'_, Conditions<Failure>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Which instance may act on a target, when instances share targets ([`TargetLoop::ownership`]).
#[derive(Clone)]
pub struct Ownership {
    /// This instance's membership.
    pub cluster: Arc<Cluster>,
    /// The epoch at which it owns the target.
    pub epoch: u64,
}

/// Whether a cycle may act on its target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Acting {
    /// It may: one instance, or the owner at its epoch with its lease known live.
    Yes,
    /// Not now (why): the owner whose lease is not known live, or whose shared state is
    /// not read yet. It polls and forecasts, and asks for nothing.
    Hold(String),
    /// Not any more: another instance owns the target, or this one at another epoch.
    Lost,
}

impl TargetLoop {
    /// Runs one cycle immediately, then one every `interval`, until `shutdown` flips (or,
    /// when instances share targets, until this one no longer owns the target at its
    /// epoch). A signal's first poll asks for its recent hours; its older history is
    /// loaded beside the cycles (`pipeline/backfill.rs`).
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let (queue, older) = mpsc::unbounded_channel();
        self.resume_older(&queue, self.store.now());
        // Loads until the loop ends (the queue never closes before), then stops with it.
        tokio::select! {
            () = self.cycles(shutdown, &queue) => {}
            () = self.load_older(older) => {}
        }
        self.store.cycles().forget(&self.target.name);
        debug!(target = %self.target.name, "target loop stopped");
    }

    /// The cycles of [`TargetLoop::run`], each timed and its lag behind schedule recorded.
    async fn cycles(
        &self,
        mut shutdown: watch::Receiver<bool>,
        queue: &mpsc::UnboundedSender<Older>,
    ) {
        // With an owner, the shared state is read at the first cycle that may act.
        let mut resumed = self.ownership.is_none();
        if resumed {
            self.load_model();
            self.resume().await;
        }
        let mut ticker = tokio::time::interval(self.store.clock().real(self.target.interval));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = tokio::select! {
                due = ticker.tick() => due,
                _ = shutdown.changed() => break,
            };
            let mut acting = self.acting();
            if acting == Acting::Lost {
                info!(target = %self.target.name, "no longer owned by this instance; its loop stops");
                break;
            }
            if acting == Acting::Yes && !resumed {
                match self.resume_shared().await {
                    Ok(()) => resumed = true,
                    Err(e) => acting = Acting::Hold(format!("cannot read the shared state: {e}")),
                }
            }
            // A cycle is bounded by the source's timeouts; stop waiting for it on shutdown.
            let started = tokio::time::Instant::now();
            let now = self.store.now();
            tokio::select! {
                () = self.cycle_acting(now, acting, Backfill::Staged(queue)) => {}
                _ = shutdown.changed() => break,
            }
            self.cycle_done(
                now,
                started.saturating_duration_since(due),
                started.elapsed(),
            );
        }
    }

    /// Records a cycle's duration and how late it started (`lag`), and logs the loops
    /// falling behind schedule: when it starts, every few minutes while it lasts, and when
    /// it ends, for all targets together.
    fn cycle_done(&self, now: i64, lag: Duration, took: Duration) {
        let m = self.store.metrics();
        m.cycle_duration.observe(took.as_secs_f64());
        m.cycle_lag
            .get_or_create(&self.labels())
            .set(lag.as_secs_f64());
        let interval = self.store.clock().real(self.target.interval).as_secs_f64();
        let cycles = self.store.cycles();
        let Some(Logged { note, lag }) =
            cycles.record(&self.target.name, lag.as_secs_f64(), interval, now)
        else {
            return;
        };
        let slowest = lag.slowest.as_deref().unwrap_or("");
        match note {
            Note::Started => warn!(
                behind = lag.behind,
                max_lag_s = lag.max_lag_seconds,
                slowest,
                "target cycles fall behind schedule (Prometheus slow, or [prometheus] max_concurrency low for the fleet)"
            ),
            Note::Continues { .. } => {
                warn!(behind = lag.behind, max_lag_s = lag.max_lag_seconds, slowest,
                behind_for = %note.duration(), "target cycles still behind schedule")
            }
            Note::Ended { .. } => {
                info!(behind_for = %note.duration(), "target cycles back on schedule")
            }
        }
    }

    /// Whether this cycle may act, from the target's ownership.
    fn acting(&self) -> Acting {
        let Some(o) = &self.ownership else {
            return Acting::Yes;
        };
        match o.cluster.standing(&self.target.name) {
            Standing::Owner(e) if e == o.epoch => Acting::Yes,
            Standing::Lapsed(e) if e == o.epoch => Acting::Hold(
                "this instance's etcd lease is not known live (etcd unreachable or without \
                 quorum): acting on nothing until it is renewed"
                    .to_owned(),
            ),
            Standing::Owner(_) | Standing::Lapsed(_) | Standing::Elsewhere => Acting::Lost,
        }
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
            state.memory.forecaster = Some(loaded);
        }
        if let Some(i) = info {
            info!(target = %name, model = i.model, fitted_at = i.fitted_at, "model loaded");
        }
    }

    /// One poll → step → record pass at `now` (the store's clock).
    /// Without sample yet, a signal is backfilled over its whole history at once.
    pub async fn cycle(&self, now: i64) {
        self.cycle_acting(now, Acting::Yes, Backfill::Whole).await;
    }

    /// [`TargetLoop::cycle`]; while `acting` holds, the step's actions are not written
    /// (as when the outbox cannot be written: nothing is remembered as asked for).
    async fn cycle_acting(&self, now: i64, acting: Acting, backfill: Backfill<'_>) {
        for (signal, query) in self.target.signals() {
            if signal.per_instance() {
                self.poll_instances(signal, query, now).await;
            } else {
                self.poll(signal, query, now, backfill).await;
            }
        }
        if let Some(k) = self.kubernetes.as_deref() {
            if self.target.reads_scale() {
                self.poll_scale(k, now).await;
            }
            if acting == Acting::Yes {
                self.release_while_paused(now).await;
            }
        }
        let Some(Stepped {
            actions,
            model,
            unsent,
            hold,
        }) = self.step(now)
        else {
            return;
        };
        if hold && acting == Acting::Yes {
            self.hold(now).await;
        }
        let written = match acting {
            Acting::Hold(why) => Err(NotWritten::Coordination(why)),
            _ if actions.is_empty() => Ok(()),
            _ => self.write(actions).await,
        };
        self.note_written(written, unsent);
        if let Some(bytes) = model {
            self.save_model(bytes).await;
        }
    }

    /// The step at `now` on the stored state, recorded in the store and metrics: the
    /// actions to write, the encoded model to save after a refit, what to undo if the
    /// actions cannot be written, and whether to pause the target. `None` if the target
    /// is not in the store.
    fn step(&self, now: i64) -> Option<Stepped> {
        let t = &self.target;
        let policy = t.step_policy(&self.forecast, self.alerts.as_ref());
        // The other targets are locked one at a time, never while holding this one.
        let budget = self.budget.and_then(|total| self.budget_view(total, now));
        let mut guard = self.store.target(&t.name)?;
        let state = &mut *guard;
        self.score_previous_forecast(state);
        let refit = std::mem::take(&mut state.refit_requested);
        if refit {
            info!(target = %t.name, "refit requested");
        }
        let inputs = Inputs {
            now,
            rate: &state.rate,
            latency: &state.latency,
            replicas: &state.replica_series,
            signals: &state.signals,
            instances: &state.instances,
            paused: state.paused,
            refit,
            budget: budget.as_ref(),
        };
        let unsent = Unsent::before(state);
        let plan = step::step(&policy, &mut state.memory, &inputs);
        let model = plan
            .refitted
            .then(|| {
                let f = state.memory.forecaster.as_ref()?;
                ModelsDir::encode(&t.name, f, now)
                    .map_err(|e| warn!(target = %t.name, error = %e, "saving the model failed"))
                    .ok()
            })
            .flatten();
        self.record_metrics(state, &plan);
        let actions = self.actions(&policy, &plan, state.last_decision.as_ref());
        record(state, &plan);
        let hold = plan.hold;
        let record = DecisionRecord::new(t.name.clone(), plan.decision, t.mode);
        drop(guard);
        self.store.record_decision(record.explained(plan.explain));
        Some(Stepped {
            actions,
            model,
            unsent,
            hold,
        })
    }

    /// Every target's last claim on the budget, in a fixed order, and this one's place.
    fn budget_view(&self, total: u32, now: i64) -> Option<BudgetView> {
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
            let degraded = !s.degraded_reasons(now).is_empty();
            let c = &s.config;
            claims.push(step::claim(
                c.priority,
                c.bounds_at(now).0,
                s.replicas,
                want,
                degraded,
            ));
        }
        Some(BudgetView {
            total,
            claims,
            mine: mine?,
        })
    }

    /// Scores the previous forecast against what has been observed since it was made.
    fn score_previous_forecast(&self, state: &mut TargetState) {
        let Some(prev) = state.forecast.take() else {
            return;
        };
        // Its points start after the last observation it saw: all later ones are new.
        let first = prev.points.first().map_or(i64::MAX, |p| p.timestamp);
        let scored: Vec<(f64, bool)> = prev.score(state.rate.since(first)).collect();
        state.forecast_quality.extend(scored);
        let labels = self.labels();
        let m = self.store.metrics();
        if let (Some(mae), Some(coverage)) = (
            state.forecast_quality.mae(),
            state.forecast_quality.coverage(),
        ) {
            m.forecast_mae.get_or_create(&labels).set(mae);
            m.forecast_coverage.get_or_create(&labels).set(coverage);
        }
    }

    fn labels(&self) -> TargetLabels {
        TargetLabels {
            target: self.target.name.clone(),
        }
    }

    /// The plan's metrics and logs.
    fn record_metrics(&self, state: &TargetState, plan: &Plan) {
        let t = &self.target;
        let m = self.store.metrics();
        let labels = self.labels();
        if let Some(e) = &plan.forecast_error {
            debug!(target = %t.name, error = %e, "no forecast");
        }
        if let (true, Some(i)) = (
            plan.refitted,
            state.memory.forecaster.as_ref().and_then(|f| f.info()),
        ) {
            let model = ModelLabels {
                target: t.name.clone(),
                model: i.model.to_owned(),
            };
            m.forecast_refits.get_or_create(&model).inc();
            info!(target = %t.name, model = i.model, description = %i.description, "model selected");
        }
        if let Some(c) = &state.memory.capacity
            && let Some(cap) = c.effective_rps
        {
            let source = if c.source == CapacitySource::Learned {
                "learned"
            } else {
                "configured"
            };
            let labels = CapacityLabels {
                target: t.name.clone(),
                source: source.to_owned(),
            };
            m.capacity_rps.get_or_create(&labels).set(cap);
        }
        let to_breach = plan
            .bottleneck
            .as_ref()
            .map_or(f64::INFINITY, |b| b.seconds_to_breach());
        m.seconds_to_bottleneck
            .get_or_create(&labels)
            .set(to_breach);
        if let Some(c) = plan.external {
            m.external_changes.get_or_create(&labels).inc();
            warn!(target = %t.name, from = c.from, to = c.to, then = t.external_changes.as_str(),
                "the running count was changed by someone else");
        }
        let d = &plan.decision;
        m.desired_replicas
            .get_or_create(&labels)
            .set(i64::from(d.to));
        let degraded = !plan.degraded.is_empty()
            || state.write_error.is_some()
            || state.coordination.is_some();
        m.degraded.get_or_create(&labels).set(i64::from(degraded));
        let direction = match d.to.cmp(&d.from) {
            std::cmp::Ordering::Greater => "up",
            std::cmp::Ordering::Less => "down",
            std::cmp::Ordering::Equal => "hold",
        };
        let reason = d.reasons.first().map_or("", |r| r.code.as_str());
        m.decisions
            .get_or_create(&DecisionLabels {
                target: t.name.clone(),
                direction: direction.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The actions a plan asks to send, with their logs. A decision to change the count
    /// is logged at INFO when it asks for it or differs from the `previous` one (its
    /// counts or reasons); the same decision again, asking for nothing (an HPA in the way,
    /// the count running unknown, paused), is logged at DEBUG.
    fn actions(
        &self,
        policy: &TargetPolicy,
        plan: &Plan,
        previous: Option<&crate::decide::Decision>,
    ) -> Vec<Action> {
        let t = &self.target;
        let mut actions = Vec::new();
        let d = &plan.decision;
        if d.is_change() {
            let same = previous.is_some_and(|p| {
                (p.from, p.to, p.reason_codes()) == (d.from, d.to, d.reason_codes())
            });
            if plan.scale || !same {
                info!(target = %t.name, from = d.from, to = d.to, reasons = %d.reason_codes(), asked = plan.scale, "scale decision");
            } else {
                debug!(target = %t.name, from = d.from, to = d.to, reasons = %d.reason_codes(), "scale decision unchanged; nothing asked");
            }
        }
        if plan.scale {
            let model = plan.forecast.as_ref().map(|f| f.model);
            actions.push(Action::Scale(ScaleAction::from_decision(&t.name, d, model)));
        }
        if let Some(r) = &plan.rebalance {
            for (instance, why) in &r.drained {
                warn!(target = %t.name, %instance, why = %why, "draining an outlier");
            }
            for instance in &r.restored {
                info!(target = %t.name, %instance, "restoring a drained instance");
            }
            if plan.send_rebalance {
                info!(target = %t.name, instances = r.weights.len(), "rebalance");
            } else {
                debug!(target = %t.name, instances = r.weights.len(), "rebalance unchanged; nothing sent");
            }
            if plan.send_rebalance {
                actions.push(Action::Rebalance(RebalanceAction {
                    target: t.name.clone(),
                    weights: r.weights.clone(),
                    issued_at: d.at,
                }));
            }
        }
        if let Some(a) = &plan.alert {
            info!(target = %policy.name, resolved = a.resolved, time_to_breach_s = a.bottleneck.time_to_breach_secs,
                shortfall_rps = a.bottleneck.shortfall_rps, "predicted bottleneck alert");
            actions.push(Action::Alert(a.clone()));
        }
        actions
    }

    /// Writes an encoded model; awaited, so a target's saves land in order. When instances
    /// share targets it is also shared, for the next owner.
    async fn save_model(&self, bytes: Encoded) {
        self.share_model(&bytes).await;
        let models = self.models.clone();
        let name = self.target.name.clone();
        let saved = tokio::task::spawn_blocking(move || models.write(&name, &bytes)).await;
        match saved {
            Ok(Ok(Written::Saved)) => {}
            Ok(Ok(Written::Outdated)) => {
                debug!(target = %self.target.name, "a newer model was saved meanwhile");
            }
            Ok(Err(e)) => warn!(target = %self.target.name, error = %e, "saving the model failed"),
            Err(e) => warn!(target = %self.target.name, error = %e, "saving the model failed"),
        }
    }
}

/// What a cycle's step gives the loop to do.
struct Stepped {
    /// The actions to write.
    actions: Vec<Action>,
    /// The encoded model to save after a refit.
    model: Option<Encoded>,
    /// What to put back if the actions cannot be written.
    unsent: Unsent,
    /// Pause the target: someone else changed its count under `external_changes = "hold"`.
    hold: bool,
}

/// Keeps in the store what a plan says of the target.
fn record(state: &mut TargetState, plan: &Plan) {
    state.wanted = Some(plan.wanted);
    state.bottleneck = plan.bottleneck.clone();
    state.forecast = plan.forecast.clone();
    state.last_decision = Some(plan.decision.clone());
    // While the count running is unknown, the last one known stays shown.
    if let Some(replicas) = plan.replicas {
        state.replicas = replicas;
        state.replicas_history.extend([Sample {
            ts: plan.decision.at,
            value: f64::from(replicas),
        }]);
    }
}

mod backfill;
mod durable;
mod external;
mod kubernetes;
mod owned;
mod poll;
mod shared;

pub use owned::run_owned;

#[cfg(test)]
mod tests;
