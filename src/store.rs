//! The one shared handle on the pipeline's state: series, health, forecasts, decisions and
//! deliveries per target. The pipeline writes it; the HTTP API reads it.
//!
//! Locks are `std::sync::Mutex`es held only for short, synchronous sections and never across
//! an `.await` (the guards are not `Send`, so the compiler enforces it): forecasting a
//! target copies its grid out first.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde::Serialize;

use crate::act::outbox::Outbox;
use crate::clock::Clock;
use crate::config::TargetConfig;
pub use crate::decide::balance::InstanceStats;
use crate::decide::{Decision, ReasonCode};
use crate::discovery::Registry;
use crate::forecast::Forecast;
use crate::forecast::bottleneck::Bottleneck;
use crate::metrics::Metrics;
use crate::series::{Runs, Series};
use crate::step::{self, Memory};

mod cycles;
mod decisions;

pub use cycles::{CycleLag, Cycles, Logged};

pub use decisions::{DecisionLog, DecisionRecord};

pub use crate::step::{Signal, SignalHealth};

pub use crate::act::outbox::DeliveryRecord;

/// How the forecasts of one target have done lately: a rolling window of errors.
#[derive(Debug, Clone, Default)]
pub struct ForecastQuality {
    /// `(absolute error, inside)`; `f32`, a mean's worth of precision in half the bytes.
    window: VecDeque<(f32, bool)>,
}

/// Forecast points scored per target, at most.
const QUALITY_WINDOW: usize = 720;

impl ForecastQuality {
    /// Adds scored points `(absolute error, inside the interval)`.
    pub fn extend(&mut self, scored: impl IntoIterator<Item = (f64, bool)>) {
        self.window.extend(
            scored
                .into_iter()
                .map(|(e, inside)| ((e as f32).min(f32::MAX), inside)),
        );
        while self.window.len() > QUALITY_WINDOW {
            self.window.pop_front();
        }
    }

    /// Mean absolute error, requests/s; `None` before any point was scored.
    pub fn mae(&self) -> Option<f64> {
        (!self.window.is_empty()).then(|| {
            self.window.iter().map(|e| f64::from(e.0)).sum::<f64>() / self.window.len() as f64
        })
    }

    /// Share of observations inside the prediction interval.
    pub fn coverage(&self) -> Option<f64> {
        (!self.window.is_empty())
            .then(|| self.window.iter().filter(|e| e.1).count() as f64 / self.window.len() as f64)
    }

    /// Points scored.
    pub fn len(&self) -> usize {
        self.window.len()
    }

    /// Whether no point was scored.
    pub fn is_empty(&self) -> bool {
        self.window.is_empty()
    }
}

/// Runs of one replica count kept per target, at most: at a change every ten minutes, a
/// week (the dashboard's longest window), in 16 KB.
const REPLICA_RUNS: usize = 1_000;

/// Everything known of one target.
#[derive(Debug)]
pub struct TargetState {
    /// Its configuration.
    pub config: Arc<TargetConfig>,
    /// Request rate, requests/s.
    pub rate: Series,
    /// Latency, seconds.
    pub latency: Series,
    /// Observed replica counts.
    pub replica_series: Series,
    /// The replica count at each decision (observed, or the count asked for), as runs of
    /// one count.
    pub replicas_history: Runs,
    /// Freshness per configured signal.
    pub signals: BTreeMap<Signal, SignalHealth>,
    /// Whether the request rate's backfill has been tried: its first poll answered, with
    /// data or with an error (then the target is degraded, naming the query). Until then
    /// the target is backfilling and `/readyz` waits for it; after, it never does, so one
    /// query that matches nothing cannot hold the instance out of service.
    pub backfill_tried: bool,
    /// Replicas now: observed when a `replicas` query is configured and fresh, else the
    /// last count asked for (at start: the remembered count, else `min_replicas` until one
    /// is known).
    pub replicas: u32,
    /// The forecast the last decision used.
    pub forecast: Option<Forecast>,
    /// How recent forecasts did against what was then observed.
    pub forecast_quality: ForecastQuality,
    /// What the per-target step remembers: forecaster, capacity, stabilisation and
    /// rate-limit history, balancer, weights, drained instances, alert, count asked for.
    pub memory: Memory,
    /// The predicted bottleneck as of the last cycle.
    pub bottleneck: Option<Bottleneck>,
    /// The last decision.
    pub last_decision: Option<Decision>,
    /// The latest per-instance observations (every instance seen by any per-instance
    /// signal in the last poll).
    pub instances: BTreeMap<String, InstanceStats>,
    /// The count the last decision asked for before a budget limited it.
    pub wanted: Option<u32>,
    /// The last delivery outcome.
    pub last_delivery: Option<DeliveryRecord>,
    /// Acting is paused (`POST …/pause`): decisions are made and shown, nothing is sent.
    pub paused: bool,
    /// A refit was asked for (`POST …/refit`); the pipeline clears it when it refits.
    pub refit_requested: bool,
    /// Its decision history: changes kept, holds summarised.
    pub decisions: DecisionLog,
    /// Why the target's last actions could not be written to the outbox (naming the file
    /// and the error), until the outbox can be written again: the target is degraded.
    pub write_error: Option<String>,
    /// Why this instance may not act on the target now although it owns it (instances
    /// sharing targets: its lease is not known live, or the shared state cannot be read or
    /// written): the target is degraded with reason `coordination`.
    pub coordination: Option<String>,
    /// This instance runs the target's loop: always as one process; with `[cluster]`,
    /// while it owns the target. Readiness counts only these.
    pub owned_here: bool,
}

impl TargetState {
    fn new(config: Arc<TargetConfig>) -> Self {
        let step = config.step_secs();
        let cap = config.history_points();
        let mut signals: BTreeMap<Signal, SignalHealth> = config
            .signals()
            .into_iter()
            .map(|(s, _)| (s, SignalHealth::default()))
            .collect();
        if config.reads_scale() {
            // Read from the Kubernetes scale subresource instead of a query.
            signals.insert(Signal::Replicas, SignalHealth::default());
        }
        Self {
            rate: Series::new(step, cap),
            latency: Series::new(step, cap),
            replica_series: Series::new(step, cap),
            replicas_history: Runs::new(config.history.as_secs() as i64, REPLICA_RUNS),
            signals,
            backfill_tried: false,
            replicas: config.min_replicas,
            forecast: None,
            forecast_quality: ForecastQuality::default(),
            memory: Memory::default(),
            bottleneck: None,
            last_decision: None,
            instances: BTreeMap::new(),
            wanted: None,
            last_delivery: None,
            paused: false,
            refit_requested: false,
            decisions: DecisionLog::default(),
            write_error: None,
            coordination: None,
            owned_here: true,
            config,
        }
    }

    /// Forgets everything learned, keeping the configuration and the decision history
    /// (when another instance took the target, or this one takes it: what it knew is
    /// outdated, and the memory freed).
    pub fn reset(&mut self) {
        let decisions = std::mem::take(&mut self.decisions);
        let owned_here = self.owned_here;
        *self = Self::new(self.config.clone());
        self.decisions = decisions;
        self.owned_here = owned_here;
    }

    /// The buffer of a signal that keeps one series (not the per-instance ones).
    pub fn series_mut(&mut self, signal: Signal) -> Option<&mut Series> {
        match signal {
            Signal::RequestRate => Some(&mut self.rate),
            Signal::Latency => Some(&mut self.latency),
            Signal::Replicas => Some(&mut self.replica_series),
            Signal::InstanceRate | Signal::InstanceLatency | Signal::InstanceErrors => None,
        }
    }

    /// Why scaling is degraded at `now`: one line per missing, failing or stale
    /// target-level signal (see [`step::degraded_reasons`]), an unknown running count, and
    /// the outbox's error while the target's actions cannot be written; empty when healthy.
    pub fn degraded_reasons(&self, now: i64) -> Vec<String> {
        let stale_after = self.config.stale_after.as_secs() as i64;
        let mut reasons = step::degraded_reasons(&self.signals, now, stale_after);
        // And a running count the last step did not know (see `Memory::unknown_running`).
        reasons.extend(self.memory.unknown_running.clone());
        reasons.extend(self.write_error.clone());
        reasons.extend(
            self.coordination
                .as_ref()
                .map(|why| format!("coordination: {why}")),
        );
        reasons
    }

    /// The first state that applies: backfilling, degraded, paused, budget-limited, ok.
    pub fn status(&self, now: i64) -> TargetStatus {
        let budget_limited = self.last_decision.as_ref().is_some_and(|d| {
            d.reasons
                .iter()
                .any(|r| r.code == ReasonCode::BudgetLimited)
        });
        if !self.backfill_tried {
            TargetStatus::Backfilling
        } else if !self.degraded_reasons(now).is_empty() {
            TargetStatus::Degraded
        } else if self.paused {
            TargetStatus::Paused
        } else if budget_limited {
            TargetStatus::BudgetLimited
        } else {
            TargetStatus::Ok
        }
    }
}

/// A target's state as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetStatus {
    /// History is still being loaded: the request rate was not polled yet.
    Backfilling,
    /// A target-level signal is missing, failing or stale (no scale-in), or its actions
    /// cannot be written to the outbox.
    Degraded,
    /// Acting is paused.
    Paused,
    /// The shared budget limited the last decision.
    BudgetLimited,
    /// Healthy.
    Ok,
}

impl TargetStatus {
    /// The name shown in the API and the dashboard.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backfilling => "backfilling",
            Self::Degraded => "degraded",
            Self::Paused => "paused",
            Self::BudgetLimited => "budget-limited",
            Self::Ok => "ok",
        }
    }
}

/// The shared state; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// Fixed at start: the set of targets never changes while running.
    targets: BTreeMap<String, Mutex<TargetState>>,
    /// The sequence number of the next decision logged, across targets.
    next_decision: AtomicU64,
    metrics: Metrics,
    clock: Clock,
    /// The durable outbox, once opened (`serve` sets it before anything runs).
    outbox: OnceLock<Outbox>,
    /// The targets discovered from Prometheus, when `serve` discovers any.
    discovery: OnceLock<Registry>,
    /// Which target loops are behind their schedule.
    cycles: Cycles,
}

impl Store {
    /// A store for these targets on the system clock.
    pub fn new(targets: &[TargetConfig], metrics: Metrics) -> Self {
        Self::with_clock(targets, metrics, Clock::system())
    }

    /// A store for these targets whose `now` comes from `clock`.
    pub fn with_clock(targets: &[TargetConfig], metrics: Metrics, clock: Clock) -> Self {
        let targets = targets
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    Mutex::new(TargetState::new(Arc::new(t.clone()))),
                )
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                targets,
                next_decision: AtomicU64::new(0),
                metrics,
                clock,
                outbox: OnceLock::new(),
                discovery: OnceLock::new(),
                cycles: Cycles::default(),
            }),
        }
    }

    /// Which target loops are behind their schedule.
    pub fn cycles(&self) -> &Cycles {
        &self.inner.cycles
    }

    /// Now, in Unix seconds, on the pipeline's clock.
    pub fn now(&self) -> i64 {
        self.inner.clock.now()
    }

    /// The pipeline's clock.
    pub fn clock(&self) -> Clock {
        self.inner.clock
    }

    /// Attaches the outbox (once; a second call is ignored).
    pub fn set_outbox(&self, outbox: Outbox) {
        let _ = self.inner.outbox.set(outbox);
    }

    /// The outbox, once attached.
    pub fn outbox(&self) -> Option<&Outbox> {
        self.inner.outbox.get()
    }

    /// Attaches the discovery registry (once; a second call is ignored).
    pub fn set_discovery(&self, registry: Registry) {
        let _ = self.inner.discovery.set(registry);
    }

    /// The discovery registry, once attached.
    pub fn discovery(&self) -> Option<&Registry> {
        self.inner.discovery.get()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Target names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.inner.targets.keys().map(String::as_str)
    }

    /// Locks one target's state; `None` for an unknown name. Hold it briefly.
    pub fn target(&self, name: &str) -> Option<MutexGuard<'_, TargetState>> {
        self.inner.targets.get(name).map(|m| lock(m))
    }

    /// Adds a decision to its target's history (an unknown target's is dropped).
    pub fn record_decision(&self, record: DecisionRecord) {
        let seq = self.inner.next_decision.fetch_add(1, Ordering::Relaxed);
        if let Some(mut t) = self.target(&record.target) {
            t.decisions.push(seq, record);
        }
    }

    /// The record of `target`'s decision made at `at` (`None`: the newest); `None` when
    /// the target or the decision is unknown.
    pub fn decision_at(&self, target: &str, at: Option<i64>) -> Option<DecisionRecord> {
        self.target(target)?.decisions.at(at).cloned()
    }

    /// Numbers the next decisions after `old`'s, so histories taken over from it stay in
    /// order with the ones recorded here.
    pub fn continue_decisions_after(&self, old: &Store) {
        let next = old.inner.next_decision.load(Ordering::Relaxed);
        self.inner.next_decision.fetch_max(next, Ordering::Relaxed);
    }

    /// Up to `limit` records after skipping `offset`, newest first, of one target or of
    /// all; and how many there are in all.
    pub fn decisions(
        &self,
        target: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> (Vec<DecisionRecord>, usize) {
        let wanted = offset.saturating_add(limit);
        let mut total = 0;
        let mut newest: Vec<(u64, DecisionRecord)> = Vec::new();
        let names: Vec<&str> = match target {
            Some(t) => vec![t],
            None => self.names().collect(),
        };
        for name in names {
            let Some(t) = self.target(name) else {
                continue;
            };
            total += t.decisions.len();
            // Only a target's `offset + limit` newest can be on the page.
            newest.extend(t.decisions.newest_first().take(wanted).cloned());
        }
        newest.sort_unstable_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        let page = newest
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(_, r)| r)
            .collect();
        (page, total)
    }
}

/// Locks a mutex, recovering from poisoning: state is updated in small steps that leave it
/// consistent, so a panic elsewhere must not take the API down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
