//! The three policies' recommendations: prediction, demand and performance, each a count
//! with its reason.

use super::explain::{PolicyKind, Recommendation};
use super::policy::Policy;
use super::types::{Latency, Peak, Reason, ReasonCode};
use crate::forecast::PlanBasis;

/// The prediction policy: the upper forecast's peak plus headroom, moved only past the
/// tolerance (a forecast that wavers around the current count must not make it flap).
pub(super) fn prediction(policy: &Policy, pk: Peak, headroom: f64, current: u32) -> (u32, Reason) {
    let planned = pk.planned;
    let r = policy.need(planned + headroom, policy.prediction_utilization);
    let r = if f64::from(r.abs_diff(current)) <= f64::from(current) * policy.tolerance {
        current
    } else {
        r
    };
    let what = match pk.basis {
        PlanBasis::RecurringBursts { quantile } => format!(
            "{planned:.3} rps planned (the last hour's median times the {:.1}% quantile of what followed it at this phase of the target's recurring bursts; forecast {:.3})",
            quantile * 100.0,
            pk.value
        ),
        PlanBasis::Interval if policy.interval_share == 1.0 => {
            format!("upper forecast {:.3} rps", pk.upper)
        }
        PlanBasis::Interval => format!(
            "{planned:.3} rps planned ({:.0}% of the way from the forecast {:.3} to its upper bound {:.3}, as a quantile)",
            policy.interval_share * 100.0,
            pk.value,
            pk.upper
        ),
    };
    let message = format!(
        "{what} at {} within the next {}s, plus {headroom:.3} rps headroom, needs {r} replicas",
        pk.timestamp, policy.lookahead
    );
    (r, Reason::new(ReasonCode::Prediction, message))
}

/// The demand policy: the HPA formula on the observed demand over the replicas `serving`
/// (else `current`), holding `current` within tolerance.
pub(super) fn demand(policy: &Policy, d: f64, current: u32, serving: Option<u32>) -> (u32, Reason) {
    let serving = serving.unwrap_or(current);
    let planned = f64::from(serving) * policy.capacity_rps * policy.target_utilization;
    let ratio = if planned > 0.0 {
        d / planned
    } else {
        f64::INFINITY
    };
    let r = if (ratio - 1.0).abs() <= policy.tolerance {
        current
    } else {
        policy.need(d, policy.target_utilization)
    };
    // With no replica serving the ratio is infinite (or, with no demand, undefined): say
    // so in words rather than print `inf%` or `NaN%`.
    let message = if ratio.is_finite() {
        format!(
            "observed {d:.3} rps is {:.0}% of planned capacity: {r} replicas",
            ratio * 100.0
        )
    } else {
        format!("observed {d:.3} rps with no replica serving (no planned capacity): {r} replicas")
    };
    (r, Reason::new(ReasonCode::Demand, message))
}

/// The most a latency breach shrinks the capacity per replica the curve claims, in one
/// decision: trusting what is seen over the curve at most doubles the replicas serving.
const MAX_LATENCY_SHRINK: f64 = 0.5;

/// The performance policy, for a p95 above the SLO: the count the learned curve needs, but
/// never trusting the curve beyond what is observed — the SLO breaks at the load each
/// serving replica carries now, so capacity is taken at most that load scaled by
/// `slo / p95` (at most halved). Without a curve, the count scaled by the excess. Never
/// fewer than now.
pub(super) fn performance(l: Latency, demand_rps: Option<f64>, current: u32) -> (u32, Reason) {
    let ceil = |x: f64| (x - 1e-9).ceil().clamp(0.0, f64::from(u32::MAX)) as u32;
    let serving = f64::from(l.replicas.max(1));
    let curve = l
        .rps_per_replica_at_slo
        .filter(|v| v.is_finite() && *v > 0.0)
        .zip(demand_rps.filter(|d| *d > 0.0));
    let (r, how) = match curve {
        Some((per, d)) => {
            let seen = d / serving * (l.slo / l.p95).max(MAX_LATENCY_SHRINK);
            let per_replica = per.min(seen);
            let how = if per_replica < per {
                format!(
                    "the latency curve meets it at {per:.3} rps per replica, but it breaks at {:.3} now: {per_replica:.3} assumed",
                    d / serving
                )
            } else {
                format!("the latency curve meets it at {per:.3} rps per replica")
            };
            (ceil(d / per_replica), how)
        }
        None => (
            ceil(f64::from(current) * l.p95 / l.slo),
            "no latency curve yet: scaled by the excess".to_owned(),
        ),
    };
    let r = r.max(current);
    let message = format!(
        "p95 {:.3}s above the {:.3}s objective; {how}: {r} replicas",
        l.p95, l.slo
    );
    (r, Reason::new(ReasonCode::Performance, message))
}

/// Every policy's recommendation for the explanation, with why those that did not apply
/// did not.
pub(super) fn recommendations(
    candidates: &[Option<(u32, Reason)>; 3],
    best: Option<usize>,
    latency: Option<Latency>,
) -> Vec<Recommendation> {
    let kinds = [
        PolicyKind::Prediction,
        PolicyKind::Demand,
        PolicyKind::Performance,
    ];
    let absent = |kind: PolicyKind| match kind {
        PolicyKind::Prediction => "no forecast within the look-ahead".to_owned(),
        PolicyKind::Demand => "no fresh observation of the request rate".to_owned(),
        PolicyKind::Performance => match latency {
            Some(l) => format!("p95 {:.3}s within the {:.3}s objective", l.p95, l.slo),
            None => "no latency objective, or no fresh latency sample".to_owned(),
        },
    };
    kinds
        .into_iter()
        .zip(candidates)
        .enumerate()
        .map(|(i, (policy, c))| Recommendation {
            policy,
            replicas: c.as_ref().map(|(r, _)| *r),
            chosen: best == Some(i),
            message: c
                .as_ref()
                .map_or_else(|| absent(policy), |(_, reason)| reason.message.clone()),
        })
        .collect()
}
