//! One pure step of one target: what `serve`, `backtest`, `forecast` and `demo` all run.
//!
//! [`step`] takes the target's [`TargetPolicy`] (its configuration as plain data), its
//! [`Memory`] across cycles (forecaster, stabilisation and rate-limit history, capacity,
//! balancer and failover state, alert state, the count last asked for) and this cycle's
//! [`Inputs`] (series, signal health, instances, pause, budget, `now`), and returns a
//! [`Plan`]: the decision with its reasons, whether to send it, the balancer weights to
//! send, the alert, the bottleneck, the capacity in use and whether it refitted.
//!
//! No I/O, no clock, no locks: the live loop is poll → step → record, and a backtest is a
//! loop of steps over a trace on a virtual clock.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::decide::alert::{self, AlertAction, AlertState, Limit};
use crate::decide::balance::{self, Balancer, InstanceStats};
use crate::decide::explain::Trail;
use crate::decide::{
    self, DecideState, Decision, Explain, Mode, Observed, Policy, Reason, ReasonCode,
};
use crate::forecast::bottleneck::{self, Bottleneck};
use crate::forecast::capacity::{self, Capacity};
use crate::forecast::{self, Forecast, Forecaster, History, Updated};
use crate::series::{Sample, Series};

mod budget;
pub mod external;
mod health;
mod rebalance;

pub use budget::{BudgetView, claim};
pub use external::{ExternalChange, ExternalChanges};
pub use health::{Signal, SignalHealth, degraded_reasons};
pub use rebalance::Rebalance;

use budget::apply_budget;
use external::Own;
use rebalance::rebalance;

/// Where predicted bottlenecks are alerted, as plain numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertPolicy {
    /// How far ahead a breach is alerted, seconds.
    pub lead: i64,
    /// How often a firing alert is re-sent, seconds.
    pub resend: i64,
}

/// A target's configuration as the step needs it: plain data, built by `config`.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetPolicy {
    /// The target's name.
    pub name: String,
    /// Act, or only forecast.
    pub mode: Mode,
    /// The decision policy (`capacity_rps` is `NaN` when it is to be learned).
    pub decide: Policy,
    /// Forecaster settings.
    pub forecast: forecast::Settings,
    /// Seconds per sample of every series.
    pub step: i64,
    /// Age past which a signal is stale, seconds.
    pub stale_after: i64,
    /// Seconds from asking for a replica to it serving.
    pub startup: i64,
    /// The latency objective, seconds.
    pub latency_slo: Option<f64>,
    /// The configured capacity per replica, requests/s.
    pub capacity_rps: Option<f64>,
    /// Whether capacity is learned: an SLO with latency and replicas series.
    pub learns_capacity: bool,
    /// Whether the running count is observed (a replicas series); otherwise the count
    /// last asked for is taken as the count running.
    pub observes_replicas: bool,
    /// The count running when prescale first manages the target (`initial_replicas`),
    /// taken as running until a count is asked for or observed.
    pub initial_replicas: Option<u32>,
    /// Whether scale decisions go anywhere (a platform webhook).
    pub scales: bool,
    /// Whether the count asked for is a floor under another autoscaler (Kubernetes
    /// `hpa-floor`): the count running above it is that autoscaler's to set, so a change
    /// of it is never someone else's (`External`).
    pub floor_only: bool,
    /// Whether weights go anywhere (a balancer webhook or HAProxy).
    pub balances: bool,
    /// Balancer weights and failover.
    pub rebalance: balance::Settings,
    /// Budget priority (higher first).
    pub priority: u32,
    /// Alerting of predicted bottlenecks, when configured.
    pub alert: Option<AlertPolicy>,
    /// What to do when someone else changes the running count (see [`external`]).
    pub external_changes: ExternalChanges,
}

/// The count last asked for, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Asked {
    /// Replicas asked for.
    pub replicas: u32,
    /// When (Unix s).
    pub at: i64,
}

/// What a target remembers between steps.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// The request-rate forecaster (created at the first step, or loaded).
    pub forecaster: Option<Forecaster>,
    /// Stabilisation and rate-limit history.
    pub decide: DecideState,
    /// The capacity in use and its evidence (resolved at each refit, and while unknown
    /// every `refit_every`).
    pub capacity: Option<Capacity>,
    /// When the capacity was last resolved (Unix s).
    pub capacity_resolved_at: i64,
    /// Rebalancing windows and who is drained.
    pub balancer: Balancer,
    /// The last weights sent (or, without acting, computed).
    pub weights: BTreeMap<String, u32>,
    /// Instances drained by failover, with why.
    pub drained: BTreeMap<String, String>,
    /// The predicted-bottleneck alert.
    pub alert: AlertState,
    /// The count last asked for (in `forecast-only` mode: that would have been asked for).
    pub asked: Option<Asked>,
    /// The count taken as running when no replicas series observes it: the count last
    /// asked for, or after a restart the one remembered (see [`Memory::resume`]); `None`
    /// while unknown (then `initial_replicas` is taken, if configured).
    pub running: Option<u32>,
    /// Why the running count was unknown at the last step, as a degraded reason: a target
    /// that acts, without a replicas series, with nothing remembered and no
    /// `initial_replicas`. `None` when it was known.
    pub unknown_running: Option<String>,
    /// What prescale's own asks may leave running, to tell someone else's change of the
    /// observed count from them (see [`external`]); `None` until a count is observed or
    /// asked for.
    pub own: Option<Own>,
}

impl Memory {
    /// Resumes after a restart from durable state: decisions start from the count last
    /// asked for (`asked`), and scale-in waits a stabilisation window from `now`; without a
    /// replicas series, `running` (the count last delivered, or one asked for that may
    /// have been delivered, whichever is more) is taken as running.
    pub fn resume(&mut self, policy: &TargetPolicy, asked: Asked, running: Option<u32>, now: i64) {
        self.asked = Some(asked);
        self.running = running.or(self.running);
        self.own = Some(Own::resumed(asked.replicas, running));
        self.decide.remember(&policy.decide, now, asked.replicas);
    }
}

/// This cycle's inputs.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Now (Unix s): the decision sees only samples up to it.
    pub now: i64,
    /// Request rate, requests/s; the sample at `t` covers the bucket that ended at `t`.
    pub rate: &'a Series,
    /// Latency, seconds.
    pub latency: &'a Series,
    /// Observed replica counts.
    pub replicas: &'a Series,
    /// Freshness of each configured signal.
    pub signals: &'a BTreeMap<Signal, SignalHealth>,
    /// The newest per-instance observations.
    pub instances: &'a BTreeMap<String, InstanceStats>,
    /// Acting is paused: decide and show, ask for nothing.
    pub paused: bool,
    /// Refit the forecaster now (asked for through the API).
    pub refit: bool,
    /// The shared budget, when there is one.
    pub budget: Option<&'a BudgetView>,
}

/// What one step decided.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The replica decision with its reasons.
    pub decision: Decision,
    /// Why the decision's count is what it is: each policy, then each clamp.
    pub explain: Explain,
    /// The count the decision asked for before a budget limited it.
    pub wanted: u32,
    /// Ask the platform for `decision.to` (acting, a platform, a new count).
    pub scale: bool,
    /// Weights to send (or, without acting, the weights now in force), when they changed.
    pub rebalance: Option<Rebalance>,
    /// Whether the weights are to be sent.
    pub send_rebalance: bool,
    /// An alert to send.
    pub alert: Option<AlertAction>,
    /// The predicted bottleneck of the running replicas.
    pub bottleneck: Option<Bottleneck>,
    /// The forecast decided with.
    pub forecast: Option<Forecast>,
    /// Why no forecast, when there is none.
    pub forecast_error: Option<String>,
    /// Whether the forecaster refitted (its model is worth saving).
    pub refitted: bool,
    /// Why scaling is degraded; empty when healthy.
    pub degraded: Vec<String>,
    /// The replica count running after this step (observed, or the count last asked
    /// for); `None` while unknown (see [`ReasonCode::ReplicasUnknown`]).
    pub replicas: Option<u32>,
    /// A change of the running count someone else made, observed at this step.
    pub external: Option<ExternalChange>,
    /// Pause acting on the target until it is resumed: it saw an external change under
    /// `external_changes = "hold"` (nothing was asked for at this step).
    pub hold: bool,
}

/// One step of one target at `inputs.now`.
pub fn step(policy: &TargetPolicy, memory: &mut Memory, inputs: &Inputs<'_>) -> Plan {
    let now = inputs.now;
    let degraded = degraded_reasons(inputs.signals, now, policy.stale_after);
    let (forecast, forecast_error, refitted) = forecast_step(policy, memory, inputs);
    let unknown_for = memory
        .capacity
        .as_ref()
        .filter(|c| c.effective_rps.is_none())
        .map(|_| now - memory.capacity_resolved_at);
    let retry = unknown_for.is_some_and(|age| age >= policy.forecast.refit_every);
    if refitted || memory.capacity.is_none() || retry {
        memory.capacity = Some(resolve_capacity(policy, inputs));
        memory.capacity_resolved_at = now;
    }
    let capacity = memory.capacity.as_ref().and_then(|c| c.effective_rps);
    let external = external_change(policy, memory, inputs);
    let hold = external.is_some() && policy.external_changes == ExternalChanges::Hold;
    let known = running_now(policy, memory, inputs);
    // Decisions start from the count last asked for, as the HPA's from the scale's
    // `spec.replicas`: a platform still starting replicas is not asked again.
    let base = memory
        .asked
        .map(|a| a.replicas)
        .or(known)
        .unwrap_or(policy.decide.min_replicas);
    // A target that sends no scale action may assume the count it starts from; one that
    // does asks for nothing while the count running is unknown.
    let running = known.or((!acts(policy)).then_some(base));
    let unknown = running.is_none().then(|| unknown_running(policy));
    memory.unknown_running = unknown
        .as_ref()
        .filter(|_| !policy.observes_replicas)
        .map(|why| format!("replicas: {why}"));
    let shown = running.unwrap_or(base);
    let bottleneck = predict_bottleneck(policy, memory, inputs, forecast.as_ref(), shown);
    let observed = Counts {
        base,
        running: shown,
    };
    let (mut decision, mut explain) = decide_count(
        policy,
        memory,
        inputs,
        forecast.as_ref(),
        observed,
        &degraded,
    );
    let wanted = decision.to;
    let granted = inputs.budget.and_then(|b| {
        let degraded = !degraded.is_empty();
        apply_budget(b, policy, &mut decision, &mut explain, degraded)
    });
    if let Some(c) = external {
        let why = external::message(&c, policy.external_changes);
        explain.inputs.external = Some(c);
        explain.clamp(ReasonCode::External, c.from, c.to, &why);
        decision
            .reasons
            .push(Reason::new(ReasonCode::External, why));
    }
    // The true `from` is the count observed running, when it is observed: the count
    // asked for may still be on its way.
    if policy.observes_replicas
        && let Some(n) = known
    {
        decision.from = n;
    }
    if let Some(why) = unknown {
        let why = format!("{why}; nothing is asked for until it is known");
        explain.clamp(ReasonCode::ReplicasUnknown, decision.to, decision.to, &why);
        decision
            .reasons
            .push(Reason::new(ReasonCode::ReplicasUnknown, why));
    }
    let scale = ask(policy, memory, inputs, &decision, running.filter(|_| !hold));
    let (rebalance, send_rebalance) = rebalance(policy, memory, inputs);
    let alert = alert_step(
        policy,
        memory,
        now,
        forecast.as_ref(),
        capacity,
        shown,
        granted,
    );
    let replicas = running_now(policy, memory, inputs).or(running);
    // The decision is shown as made from the signals; the target is degraded too.
    let mut degraded = degraded;
    degraded.extend(memory.unknown_running.clone());
    Plan {
        decision,
        explain,
        wanted,
        scale,
        rebalance,
        send_rebalance,
        alert,
        bottleneck,
        forecast,
        forecast_error,
        refitted,
        degraded,
        replicas,
        external,
        hold,
    }
}

/// Updates (or refits) the forecaster with the request rate and forecasts far enough ahead
/// for the decision, the bottleneck and alerts: (forecast, why none, refitted).
fn forecast_step(
    policy: &TargetPolicy,
    memory: &mut Memory,
    inputs: &Inputs<'_>,
) -> (Option<Forecast>, Option<String>, bool) {
    let settings = policy.forecast;
    let forecaster = memory
        .forecaster
        .get_or_insert_with(|| Forecaster::new(settings));
    if *forecaster.settings() != settings {
        forecaster.set_settings(settings);
    }
    // Only what the forecaster has not seen, unless it is to refit (or the series no
    // longer reaches the newest value it saw: then it refits on all of it, as it would).
    let grid = forecaster
        .needs_since(inputs.now)
        .filter(|&since| !inputs.refit && inputs.rate.last().is_some_and(|l| l.ts >= since))
        .map_or_else(
            || inputs.rate.to_grid(),
            |since| inputs.rate.to_grid_since(since),
        );
    let updated = grid.map(|(start, values)| {
        let history = History {
            start,
            step: policy.step,
            values: &values,
        };
        if inputs.refit {
            forecaster
                .refit(history, inputs.now)
                .map(|()| Updated::Refitted)
        } else {
            forecaster.update(history, inputs.now)
        }
    });
    let refitted = matches!(updated, Some(Ok(Updated::Refitted)));
    let lead = policy.alert.map_or(0, |a| a.lead);
    let share = policy.decide.interval_share;
    match forecaster.forecast_planned(inputs.now, settings.horizon.max(lead), Some(share)) {
        Ok(f) => (Some(f), None, refitted),
        Err(e) => {
            let why = match updated {
                Some(Err(u)) => u.to_string(),
                None => "no request-rate samples yet".to_owned(),
                Some(Ok(_)) => e.to_string(),
            };
            (None, Some(why), refitted)
        }
    }
}

/// The capacity to decide with: configured, or learned from `(rate / replicas, latency)`
/// pairs when the target has a latency SLO and latency and replicas series.
pub fn resolve_capacity(policy: &TargetPolicy, inputs: &Inputs<'_>) -> Capacity {
    let learned = match policy.latency_slo {
        Some(slo) if policy.learns_capacity => {
            let pairs = load_latency_pairs(inputs.rate, inputs.replicas, inputs.latency);
            Some(capacity::learn(&pairs, slo))
        }
        _ => None,
    };
    capacity::resolve(policy.capacity_rps, learned.as_ref())
}

/// `(requests/s per replica, latency)` at every latency sample that has a rate and a
/// replica count (≥ 1) at the same timestamp.
fn load_latency_pairs(rate: &Series, replicas: &Series, latency: &Series) -> Vec<(f64, f64)> {
    let at = |s: &Series, ts: i64| s.since(ts).next().filter(|x| x.ts == ts).map(|x| x.value);
    latency
        .iter()
        .filter_map(|l| {
            let r = at(rate, l.ts)?;
            let n = at(replicas, l.ts).filter(|n| *n >= 1.0)?;
            Some((r / n, l.value))
        })
        .collect()
}

/// The count running now, if known: with a replicas series, its newest sample; without,
/// the count taken as running ([`Memory::running`]); while neither, and nothing was ever
/// asked for, `initial_replicas`.
fn running_now(policy: &TargetPolicy, memory: &Memory, inputs: &Inputs<'_>) -> Option<u32> {
    let known = if policy.observes_replicas {
        observed(policy, inputs)
    } else {
        memory.running
    };
    known.or(policy.initial_replicas.filter(|_| memory.asked.is_none()))
}

/// The newest observed running count, with a replicas series (or the scale subresource).
fn observed(policy: &TargetPolicy, inputs: &Inputs<'_>) -> Option<u32> {
    if !policy.observes_replicas {
        return None;
    }
    inputs
        .replicas
        .last()
        .filter(|s| s.value.is_finite() && s.value >= 0.0)
        .map(|s| s.value.round().clamp(0.0, f64::from(u32::MAX)) as u32)
}

/// Compares the observed running count with what prescale's own asks may leave running
/// (see [`external`]). On someone else's change, decisions start from the observed count:
/// it becomes the count last asked for and, when raised, a recommendation at `now`, so
/// that scale-in waits the scale-down stabilisation window as after any recommendation.
/// Only for a target that sends scale actions and observes its count.
fn external_change(
    policy: &TargetPolicy,
    memory: &mut Memory,
    inputs: &Inputs<'_>,
) -> Option<ExternalChange> {
    if !acts(policy) || policy.floor_only {
        return None;
    }
    let n = observed(policy, inputs)?;
    let Some(asked) = memory.asked else {
        // Nothing asked for yet: whatever runs is where prescale starts.
        memory.own = Some(Own::settled(n));
        return None;
    };
    let now = inputs.now;
    let settled = now - asked.at >= policy.startup + policy.decide.interval;
    let change = memory
        .own
        .get_or_insert_with(|| Own::settled(asked.replicas))
        .observe(n, asked.replicas, settled, now)?;
    memory.asked = Some(Asked {
        replicas: n,
        at: now,
    });
    if n > asked.replicas {
        memory.decide.remember(&policy.decide, now, n);
    }
    Some(change)
}

/// Whether the target sends scale actions: it acts, and has a platform.
fn acts(policy: &TargetPolicy) -> bool {
    policy.mode == Mode::Act && policy.scales
}

/// Why the running count is unknown, and what the user can do about it.
fn unknown_running(policy: &TargetPolicy) -> String {
    if policy.observes_replicas {
        "the running count is unknown: the `replicas` query has given no sample yet \
         (`initial_replicas` says what runs until it does)"
            .to_owned()
    } else {
        "the running count is unknown: no `replicas` query and no count remembered; \
         set `initial_replicas` to the count running now, or a `replicas` query"
            .to_owned()
    }
}

fn fresh(s: Option<Sample>, now: i64, stale_after: i64) -> Option<Sample> {
    s.filter(|s| now - s.ts <= stale_after && s.value.is_finite())
}

fn predict_bottleneck(
    policy: &TargetPolicy,
    memory: &Memory,
    inputs: &Inputs<'_>,
    forecast: Option<&Forecast>,
    running: u32,
) -> Option<Bottleneck> {
    let capacity = memory.capacity.as_ref()?;
    let cap = capacity.effective_rps?;
    let latency = capacity
        .learned
        .as_ref()
        .zip(policy.latency_slo)
        .map(|(l, slo)| (l.curve, slo));
    Some(bottleneck::predict(bottleneck::Inputs {
        forecast: forecast?,
        now: inputs.now,
        replicas: running,
        capacity_per_replica: cap,
        demand_now: inputs.rate.last().map(|s| s.value),
        latency,
    }))
}

/// The count decisions start from (the count last asked for) and the count serving.
#[derive(Debug, Clone, Copy)]
struct Counts {
    base: u32,
    running: u32,
}

/// The policies' decision, or a hold when there is no capacity to size replicas by.
fn decide_count(
    policy: &TargetPolicy,
    memory: &mut Memory,
    inputs: &Inputs<'_>,
    forecast: Option<&Forecast>,
    counts: Counts,
    degraded: &[String],
) -> (Decision, Explain) {
    let Counts { base, running } = counts;
    let now = inputs.now;
    let capacity = memory.capacity.as_ref();
    let Some(cap) = capacity.and_then(|c| c.effective_rps) else {
        let why = capacity.map_or_else(String::new, |c| c.reason.clone());
        let mut explain = policy.decide.explain_without_capacity(base, now, &why);
        explain.inputs.capacity_source = capacity.map(|c| c.source);
        let mut reasons = Vec::new();
        let mut trail = Trail {
            reasons: &mut reasons,
            clamps: &mut explain.clamps,
        };
        trail.push(ReasonCode::NoCapacity, base, base, why);
        let to = decide::scheduled_floor(&policy.decide, base, now, &mut trail);
        let decision = Decision {
            at: now,
            from: base,
            to,
            reasons,
            peak: None,
        };
        return (decision, explain);
    };
    let learned = capacity.and_then(|c| c.learned.as_ref());
    let latency = policy
        .latency_slo
        .zip(fresh(inputs.latency.last(), now, policy.stale_after))
        .map(|(slo, s)| decide::Latency {
            p95: s.value,
            slo,
            rps_per_replica_at_slo: learned.map(|l| l.capacity_rps),
            replicas: running,
        });
    let observed = Observed {
        replicas: base,
        demand_rps: fresh(inputs.rate.last(), now, policy.stale_after).map(|s| s.value),
        latency,
        degraded: !degraded.is_empty(),
        serving: None,
    };
    let mut p = policy.decide.clone();
    p.capacity_rps = cap;
    let (decision, mut explain) =
        decide::decide_explained(&p, forecast, observed, &mut memory.decide, now);
    explain.inputs.capacity_source = capacity.map(|c| c.source);
    (decision, explain)
}

/// Whether to ask the platform for `decision.to` now, recording what is asked for.
///
/// A count is asked for when it differs from the count last asked for (at first: the count
/// running), or again when the running count still differs from it a start-up plus an
/// interval after it was asked for (the platform lost it, or someone changed it) — but
/// never again for fewer than run while data is missing or stale. Only a
/// new count is recorded in the rate-limit history, once, however long the platform takes.
/// While paused, or while the count running is unknown (`None`), nothing is asked for and
/// nothing recorded; in `forecast-only` mode the count that would have been asked for is
/// recorded, so the shown decisions follow the same limits.
fn ask(
    policy: &TargetPolicy,
    memory: &mut Memory,
    inputs: &Inputs<'_>,
    d: &Decision,
    running: Option<u32>,
) -> bool {
    let Some(running) = running.filter(|_| !inputs.paused) else {
        return false;
    };
    let now = inputs.now;
    let patience = policy.startup + policy.decide.interval;
    let before = memory.asked.map_or(running, |a| a.replicas);
    // Asking again for fewer than run is a scale-in: never on missing or stale data.
    let degraded = d.reasons.iter().any(|r| r.code == ReasonCode::Degraded);
    let again = memory.asked.is_some_and(|a| {
        running != d.to && now - a.at >= patience && (d.to > running || !degraded)
    });
    if before == d.to && !again {
        return false;
    }
    if before != d.to {
        memory.decide.record_scale(now, before, d.to);
    }
    memory.asked = Some(Asked {
        replicas: d.to,
        at: now,
    });
    memory
        .own
        .get_or_insert_with(|| Own::settled(before))
        .asked(d.to);
    if !policy.observes_replicas {
        memory.running = Some(d.to);
    }
    acts(policy)
}

/// The alert to send, if any: a breach of what the target may still reach (its budget
/// grant, its maximum, or in `forecast-only` mode what runs now).
fn alert_step(
    policy: &TargetPolicy,
    memory: &mut Memory,
    now: i64,
    forecast: Option<&Forecast>,
    capacity: Option<f64>,
    running: u32,
    granted: Option<u32>,
) -> Option<AlertAction> {
    let a = policy.alert?;
    let (reachable, limit) = match (policy.mode, granted) {
        (Mode::ForecastOnly, _) => (running, Limit::ForecastOnly),
        (Mode::Act, Some(g)) => (g, Limit::Budget),
        (Mode::Act, None) => (policy.decide.bounds(now).max, Limit::MaxReplicas),
    };
    let breach = forecast.zip(capacity).and_then(|(f, cap)| {
        alert::predicted_breach(&policy.name, f, now, a.lead, cap, reachable, limit)
    });
    memory.alert.step(breach, now, a.resend)
}

#[cfg(test)]
mod tests;
