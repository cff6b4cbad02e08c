//! Pure deciding: a forecast, what is observed now, the policy and `now` in; a replica count
//! with its reasons out.
//!
//! Three policies each recommend a count and the highest wins:
//! - **demand** (reactive): the Kubernetes HPA formula on the last complete observation,
//!   `ceil(load / (capacity × target_utilization))`, holding within the tolerance;
//! - **performance**: when the observed p95 latency exceeds the SLO, the count the learned
//!   latency curve needs to bring it back under (proportional to the excess without one);
//! - **prediction**: the highest load planned for (at an `interval_share` of 1: the
//!   upper forecast) over `[now, now + startup + interval]`, the time until a replica
//!   asked for now would serve, over `capacity × prediction_utilization`, also holding
//!   within the tolerance (against flapping).
//!
//! The two plan at different utilisations on purpose: the upper forecast already carries a
//! margin, so it is planned close to capacity (0.9 by default), while observed demand above
//! the forecast means the forecast missed, and a miss tends to grow during the start-up
//! time, so the reactive floor plans with an HPA's usual margin (0.7 by default).
//!
//! The winner then goes through the HPA's scaling behaviour ([`behavior`]): stabilisation
//! windows (scale-in only to the highest recommendation within the window, so only when all
//! policies agree for that long), the cost of a change ([`calm`]: a count the plan asks
//! for again soon is held, changes a few steps apart are made as one) and rate limits,
//! then `min_replicas`/`max_replicas`. With
//! data missing or stale the count never goes down; it goes up on the evidence there is.
//! Every clamp is named in the reasons.
//!
//! Scheduled windows ([`schedule`]) stand in for the bounds while open. Their bounds first
//! clamp the recommendation, so the stabilisation remembers them like any recommendation:
//! a count above a scheduled maximum comes down only through the scale-in stabilisation
//! and rate limits, and after a window's floor the count stays up for a stabilisation
//! window. A scheduled floor is then also a hard clamp, as `min_replicas` (and the HPA's
//! `minReplicas`): it passes the scale-up stabilisation and rate limits, since a floor
//! that arrives late defeats its purpose.

pub mod alert;
pub mod balance;
pub mod behavior;
pub mod budget;
pub mod calm;
pub mod explain;
mod policy;
mod recommend;
pub mod risk;
pub mod schedule;
mod types;

use serde::Serialize;

pub use behavior::{RateKind, RatePolicy, Rules, Select};
pub use explain::Explain;
pub use policy::{Mode, Policy};
pub use types::{ExternalChange, Latency, Peak, Reason, ReasonCode};

use explain::Trail;
use recommend::{demand, performance, prediction, recommendations};

use crate::forecast::{Forecast, PlanBasis};

/// What is observed of a target now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed {
    /// Replicas now (observed, or the last count asked for).
    pub replicas: u32,
    /// The last complete observation of the request rate, requests/s.
    pub demand_rps: Option<f64>,
    /// Latency against the SLO, when both are known and fresh.
    pub latency: Option<Latency>,
    /// A signal is missing or stale: scale-in is forbidden.
    pub degraded: bool,
    /// Replicas serving, when known apart from `replicas` (launches still starting are in
    /// `replicas`, not here): the demand policy's utilisation is the demand over these, as
    /// the Kubernetes HPA's is over its ready pods. `None`: `replicas`.
    pub serving: Option<u32>,
}

impl Observed {
    /// Replicas and demand only; healthy, no latency.
    pub fn demand(replicas: u32, demand_rps: Option<f64>) -> Self {
        Self {
            replicas,
            demand_rps,
            latency: None,
            degraded: false,
            serving: None,
        }
    }
}

/// A replica-count decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// When it was made (Unix s).
    pub at: i64,
    /// Replicas before.
    pub from: u32,
    /// Replicas asked for.
    pub to: u32,
    /// Why; the first sets the count, the others are clamps and conditions.
    pub reasons: Vec<Reason>,
    /// The forecast peak it planned for.
    pub peak: Option<Peak>,
}

impl Decision {
    /// Whether it changes the replica count.
    pub fn is_change(&self) -> bool {
        self.from != self.to
    }

    /// The reason codes joined by `+`, e.g. `Prediction+TooFewReplicas`.
    pub fn reason_codes(&self) -> String {
        let codes: Vec<&str> = self.reasons.iter().map(|r| r.code.as_str()).collect();
        codes.join("+")
    }

    /// Lowers the count to `to` because a shared budget allows no more, saying so.
    pub fn limit_to(&mut self, to: u32, message: String) {
        if to < self.to {
            self.to = to;
            self.reasons
                .push(Reason::new(ReasonCode::BudgetLimited, message));
        }
    }
}

/// What deciding remembers between calls: recommendations and scale events, for
/// stabilisation and rate limits.
#[derive(Debug, Clone, Default)]
pub struct DecideState {
    history: behavior::History,
    last: Option<i64>,
    /// Typical demand: (exponentially weighted mean, when last updated).
    typical: Option<(f64, i64)>,
}

/// Time constant of the typical demand, seconds.
const TYPICAL_TAU: f64 = 86_400.0;

impl DecideState {
    /// Records that the count asked for went from `from` to `to` at `now`, for the rate
    /// limits. Call it once per change actually asked for (not for a decision that was not
    /// sent, nor again while the platform catches up), so one scale-up is counted once.
    pub fn record_scale(&mut self, now: i64, from: u32, to: u32) {
        self.history.scaled(now, from, to);
    }

    /// Remembers `replicas` as recommended at `now`: after a restart, the count last asked
    /// for holds scale-in for a full stabilisation window, as if it had just been
    /// recommended, so a restart never scales in by itself.
    pub fn remember(&mut self, policy: &Policy, now: i64, replicas: u32) {
        self.history
            .recommend(now, replicas, &policy.scale_up, &policy.scale_down);
    }
}

/// Decides the replica count at `now`.
pub fn decide(
    policy: &Policy,
    forecast: Option<&Forecast>,
    observed: Observed,
    state: &mut DecideState,
    now: i64,
) -> Decision {
    decide_explained(policy, forecast, observed, state, now).0
}

/// What [`behave`] starts from: the observation, the winning policy's count, and whether
/// the load planned for came from the target's recurring bursts.
#[derive(Debug, Clone, Copy)]
struct Behave<'a> {
    observed: Observed,
    recommended: u32,
    recurring: bool,
    /// The forecast, whose plan says which counts will be asked for next.
    forecast: Option<&'a Forecast>,
    /// The headroom the prediction policy adds, requests/s.
    headroom: f64,
}

/// Decides the replica count at `now`, with why: every policy's recommendation and each
/// clamp in order.
pub fn decide_explained(
    policy: &Policy,
    forecast: Option<&Forecast>,
    observed: Observed,
    state: &mut DecideState,
    now: i64,
) -> (Decision, Explain) {
    let current = observed.replicas;
    let peak = forecast
        // Points are stamped at the end of their bucket: the window covers every bucket
        // that starts within `[now, now + lookahead]`.
        .and_then(|f| {
            let to = now + policy.lookahead + f.step_seconds;
            let basis = f.plan_basis(policy.interval_share);
            f.peak_planned(now, to, policy.interval_share)
                .map(|(p, planned)| (p, planned, basis))
        })
        .filter(|(p, _, _)| p.upper.is_finite())
        .map(|(p, planned, basis)| Peak {
            timestamp: p.timestamp,
            value: p.value,
            upper: p.upper,
            planned,
            basis,
        });
    let demand_rps = observed.demand_rps.filter(|v| v.is_finite() && *v >= 0.0);
    if let Some(d) = demand_rps {
        state.observe_demand(d, now);
    }
    let headroom = policy.headroom * state.typical.map_or(0.0, |(m, _)| m);
    let mut explain = policy.explanation(current, now);
    explain.inputs.demand_rps = demand_rps;
    explain.inputs.latency = observed.latency;
    explain.inputs.degraded = observed.degraded;
    explain.inputs.peak = peak;
    explain.inputs.headroom_rps = headroom;

    // Each policy's recommendation, with its reason; the highest wins, ties to the first.
    let candidates = [
        peak.map(|pk| prediction(policy, pk, headroom, current)),
        demand_rps.map(|d| demand(policy, d, current, observed.serving)),
        observed
            .latency
            .filter(|l| l.p95.is_finite() && l.p95 > l.slo)
            .map(|l| performance(l, demand_rps, current)),
    ];
    let best = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.as_ref().map(|(r, _)| (i, *r)))
        .max_by_key(|(i, r)| (*r, std::cmp::Reverse(*i)))
        .map(|(i, _)| i);
    explain.policies = recommendations(&candidates, best, observed.latency);
    let mut reasons = Vec::new();
    let mut trail = Trail {
        reasons: &mut reasons,
        clamps: &mut explain.clamps,
    };
    let to = match best.and_then(|i| candidates[i].clone()) {
        None => {
            let m = "no forecast and no observed demand: holding".to_owned();
            trail.push(ReasonCode::NoData, current, current, m);
            if observed.degraded {
                let m = "data missing or stale: no scale-in".to_owned();
                trail.push(ReasonCode::Degraded, current, current, m);
            }
            scheduled_floor(policy, current, now, &mut trail)
        }
        Some((recommended, reason)) => {
            trail.reasons.push(reason);
            let recurring =
                peak.is_some_and(|p| matches!(p.basis, PlanBasis::RecurringBursts { .. }));
            let input = Behave {
                observed,
                recommended,
                recurring,
                forecast,
                headroom,
            };
            behave(policy, state, input, now, &mut trail)
        }
    };
    state.last = Some(now);
    let decision = Decision {
        at: now,
        from: current,
        to,
        reasons,
        peak,
    };
    (decision, explain)
}

/// A count held for want of data or capacity, raised to a scheduled floor in force: a
/// window's floor does not wait for the data.
pub fn scheduled_floor(policy: &Policy, current: u32, now: i64, trail: &mut Trail<'_>) -> u32 {
    let b = policy.bounds(now);
    match b.min_from {
        Some(o) if current < b.min => {
            let m = format!("{current} raised to {} by the {o}", b.min);
            trail.push(ReasonCode::Scheduled, current, b.min, m);
            b.min
        }
        _ => current,
    }
}

impl DecideState {
    /// Folds an observed demand into the typical demand.
    fn observe_demand(&mut self, d: f64, now: i64) {
        self.typical = Some(match self.typical {
            Some((m, t)) if now > t => {
                let a = 1.0 - (-((now - t) as f64) / TYPICAL_TAU).exp();
                (m + a * (d - m), now)
            }
            Some(prev) => prev,
            None => (d, now),
        });
    }
}

/// The HPA's behaviour on a recommendation: stabilisation, no scale-in when degraded, rate
/// limits, then the bounds; each clamp is added to the trail.
fn behave(
    policy: &Policy,
    state: &mut DecideState,
    input: Behave,
    now: i64,
    trail: &mut Trail<'_>,
) -> u32 {
    let Behave {
        observed,
        recommended,
        recurring,
        ..
    } = input;
    let current = observed.replicas;
    let up = &policy.scale_up;
    let bounds = policy.bounds(now);
    let recommended = scheduled(&bounds, recommended, trail);
    // Every recommendation is kept for the configured window, whichever is used now.
    state
        .history
        .recommend(now, recommended, up, &policy.scale_down);
    let narrowed = policy
        .recurring_scale_in
        .filter(|&w| recurring && w < policy.scale_down.stabilization_window)
        .map(|w| Rules {
            stabilization_window: w,
            ..policy.scale_down.clone()
        });
    let down = narrowed.as_ref().unwrap_or(&policy.scale_down);
    let mut to = state.history.stabilized(now, current, up, down);
    if to > recommended {
        let m = format!(
            "holding {to}: recommended within the last {}s",
            down.stabilization_window
        );
        trail.push(ReasonCode::ScaleDownStabilized, recommended, to, m);
    } else if to < recommended {
        let m = format!(
            "{to}: the lowest recommendation within the last {}s",
            up.stabilization_window
        );
        trail.push(ReasonCode::ScaleUpStabilized, recommended, to, m);
    }
    if to < current && observed.degraded {
        let m = "data missing or stale: no scale-in".to_owned();
        trail.push(ReasonCode::Degraded, to, current, m);
        to = current;
    } else if observed.degraded {
        let m = "data missing or stale: scaling out on the evidence there is".to_owned();
        trail.push(ReasonCode::Degraded, to, to, m);
    }
    let to = worth_changing(policy, state, &input, to, now, trail);
    let to = rate_limit(policy, state, current, to, now, trail);
    bound(&bounds, current, to, trail)
}

/// The count the behaviour allows, held or moved further where the plan says a change
/// now would soon be followed by another ([`calm`]).
fn worth_changing(
    policy: &Policy,
    state: &DecideState,
    input: &Behave<'_>,
    to: u32,
    now: i64,
    trail: &mut Trail<'_>,
) -> u32 {
    let Some(f) = input.forecast.filter(|_| policy.change_cost > 0) else {
        return to;
    };
    let bounds = policy.bounds(now);
    let step = f.step_seconds.max(1);
    let last = f.points.last().map_or(now, |p| p.timestamp);
    let window = policy.lookahead + step;
    let asks: Vec<u32> = std::iter::once(to)
        .chain(
            (1..)
                .map(|k| now + k * step)
                .take_while(|t| t + window <= last)
                .filter_map(|t| f.peak_planned(t, t + window, policy.interval_share))
                .map(|(_, load)| {
                    policy
                        .need(load + input.headroom, policy.prediction_utilization)
                        .clamp(bounds.min, bounds.max.max(bounds.min))
                }),
        )
        .collect();
    let typical = state
        .typical
        .map_or(f64::from(input.observed.replicas), |(m, _)| {
            f64::from(policy.need(m, policy.prediction_utilization))
        });
    let cost = policy.change_cost as f64 * typical.max(1.0) / step as f64;
    let held = calm::cheapest_first(input.observed.replicas, &asks, cost);
    if held != to {
        let m = format!(
            "{held}: the plan's counts over the next {}s are met at least cost so, a change costing {}s of the typical {typical:.0} replicas",
            (asks.len() as i64 - 1) * step,
            policy.change_cost
        );
        trail.push(ReasonCode::Calm, to, held, m);
    }
    held
}

/// Clamps a recommendation to the scheduled bounds in force, before the stabilisation
/// remembers it.
fn scheduled(bounds: &schedule::Bounds<'_>, r: u32, trail: &mut Trail<'_>) -> u32 {
    if let Some(o) = bounds.max_from
        && r > bounds.max
    {
        let m = format!("{r} capped at {} by the {o}", bounds.max);
        trail.push(ReasonCode::Scheduled, r, bounds.max, m);
        return bounds.max;
    }
    if let Some(o) = bounds.min_from
        && r < bounds.min
    {
        let m = format!("{r} raised to {} by the {o}", bounds.min);
        trail.push(ReasonCode::Scheduled, r, bounds.min, m);
        return bounds.min;
    }
    r
}

/// The scale-up and scale-down rate policies.
fn rate_limit(
    policy: &Policy,
    state: &DecideState,
    current: u32,
    to: u32,
    now: i64,
    trail: &mut Trail<'_>,
) -> u32 {
    let elapsed = state.last.map_or(policy.interval, |t| now - t).max(1);
    if to > current {
        let limit = state
            .history
            .scale_up_limit(now, current, elapsed, &policy.scale_up);
        if to > limit {
            let m = format!("{to} limited to {limit} by the scale-up policies");
            trail.push(ReasonCode::ScaleUpLimit, to, limit, m);
            return limit;
        }
    } else if to < current {
        let limit = state
            .history
            .scale_down_limit(now, current, elapsed, &policy.scale_down);
        if to < limit {
            let m = format!("{to} limited to {limit} by the scale-down policies");
            trail.push(ReasonCode::ScaleDownLimit, to, limit, m);
            return limit;
        }
    }
    to
}

/// `min_replicas` and `max_replicas`, or the scheduled bounds in force. A scheduled
/// maximum only stops scale-up here: the recommendation was capped at it, so a count above
/// it comes down through the stabilisation and rate limits.
fn bound(b: &schedule::Bounds<'_>, current: u32, to: u32, trail: &mut Trail<'_>) -> u32 {
    match b.max_from {
        Some(o) if to > b.max.max(current) => {
            let cap = b.max.max(current);
            let m = format!("{to} capped at {cap} by the {o}");
            trail.push(ReasonCode::Scheduled, to, cap, m);
            return cap;
        }
        None if to > b.max => {
            let m = format!("{to} capped at max_replicas {}", b.max);
            trail.push(ReasonCode::TooManyReplicas, to, b.max, m);
            return b.max;
        }
        _ => {}
    }
    if to < b.min {
        let (code, m) = match b.min_from {
            Some(o) => (
                ReasonCode::Scheduled,
                format!("{to} raised to {} by the {o}", b.min),
            ),
            None => (
                ReasonCode::TooFewReplicas,
                format!("{to} raised to min_replicas {}", b.min),
            ),
        };
        trail.push(code, to, b.min, m);
        return b.min;
    }
    to
}

#[cfg(test)]
mod tests;
