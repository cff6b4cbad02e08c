//! Pure deciding: a forecast, what is observed now, the policy and `now` in; a replica count
//! with its reasons out.
//!
//! Three policies each recommend a count and the highest wins:
//! - **demand** (reactive): the Kubernetes HPA formula on the last complete observation,
//!   `ceil(load / (capacity × target_utilization))`, holding within the tolerance;
//! - **performance**: when the observed p95 latency exceeds the SLO, the count the learned
//!   latency curve needs to bring it back under (proportional to the excess without one);
//! - **prediction**: the highest upper forecast over `[now, now + startup + interval]`,
//!   the time until a replica asked for now would serve, over `capacity ×
//!   prediction_utilization`, also holding within the tolerance (against flapping).
//!
//! The two plan at different utilisations on purpose: the upper forecast already carries a
//! margin, so it is planned close to capacity (0.9 by default), while observed demand above
//! the forecast means the forecast missed, and a miss tends to grow during the start-up
//! time, so the reactive floor plans with an HPA's usual margin (0.7 by default).
//!
//! The winner then goes through the HPA's scaling behaviour ([`behavior`]): stabilisation
//! windows (scale-in only to the highest recommendation within the window, so only when all
//! policies agree for that long) and rate limits, then `min_replicas`/`max_replicas`. With
//! data missing or stale the count never goes down; it goes up on the evidence there is.
//! Every clamp is named in the reasons.

pub mod balance;
pub mod behavior;
pub mod budget;

use serde::Serialize;

pub use behavior::{RateKind, RatePolicy, Rules, Select};

use crate::forecast::Forecast;

/// Whether a target's decisions are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Decide and send webhooks.
    Act,
    /// Decide and show; send nothing.
    ForecastOnly,
}

/// What the decision engine needs of a target's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Requests/s one replica serves within its SLO.
    pub capacity_rps: f64,
    /// The share of `capacity_rps` each replica carries in the demand policy, in (0, 1].
    pub target_utilization: f64,
    /// The share of `capacity_rps` each replica carries in the prediction policy, in (0, 1].
    pub prediction_utilization: f64,
    /// The demand policy holds while load/planned capacity is within 1 ± tolerance.
    pub tolerance: f64,
    /// Fewest replicas.
    pub min_replicas: u32,
    /// Most replicas.
    pub max_replicas: u32,
    /// Seconds ahead that capacity must cover: startup + interval.
    pub lookahead: i64,
    /// Seconds between decisions (rate limits apply once per period within it).
    pub interval: i64,
    /// Headroom added to the predicted peak, as a share of the typical demand (its
    /// exponentially weighted mean over about a day).
    pub headroom: f64,
    /// Scale-up behaviour.
    pub scale_up: Rules,
    /// Scale-down behaviour.
    pub scale_down: Rules,
}

impl Policy {
    /// Replicas needed to carry `rps` at `utilization`.
    fn need(&self, rps: f64, utilization: f64) -> u32 {
        let per = self.capacity_rps * utilization;
        (rps / per - 1e-9).ceil().clamp(0.0, f64::from(u32::MAX)) as u32
    }
}

/// Observed latency against its objective, as plain numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Observed p95 latency, seconds.
    pub p95: f64,
    /// The objective, seconds.
    pub slo: f64,
    /// Requests/s per replica at which the learned latency curve meets the objective;
    /// `None` while no curve has been learned.
    pub rps_per_replica_at_slo: Option<f64>,
}

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
}

impl Observed {
    /// Replicas and demand only; healthy, no latency.
    pub fn demand(replicas: u32, demand_rps: Option<f64>) -> Self {
        Self {
            replicas,
            demand_rps,
            latency: None,
            degraded: false,
        }
    }
}

/// Why a decision came out as it did; the first reason is the policy that set the count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    /// Stable code. Policies: `Prediction`, `Demand`, `Performance`, `NoData`. Clamps and
    /// conditions: `ScaleDownStabilized`, `ScaleUpStabilized`, `ScaleUpLimit`,
    /// `ScaleDownLimit`, `TooManyReplicas`, `TooFewReplicas`, `Degraded`, `BudgetLimited`.
    pub code: &'static str,
    /// What it means here, for people.
    pub message: String,
}

impl Reason {
    /// A reason with its code and a message for people.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The highest upper forecast in the look-ahead window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Peak {
    /// When (Unix s).
    pub timestamp: i64,
    /// Point forecast there, requests/s.
    pub value: f64,
    /// Upper bound there, requests/s.
    pub upper: f64,
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
        let codes: Vec<&str> = self.reasons.iter().map(|r| r.code).collect();
        codes.join("+")
    }

    /// Lowers the count to `to` because a shared budget allows no more, saying so.
    pub fn limit_to(&mut self, to: u32, message: String) {
        if to < self.to {
            self.to = to;
            self.reasons.push(Reason::new("BudgetLimited", message));
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
    /// Tells the state that the count actually asked for differs from the decision (a
    /// budget lowered it), so that rate limits count the real change.
    pub fn record_scale(&mut self, now: i64, from: u32, to: u32) {
        self.history.rescaled(now, from, to);
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
    let current = observed.replicas;
    let mut reasons = Vec::new();

    let peak = forecast
        .and_then(|f| f.peak_upper(now, now + policy.lookahead))
        .filter(|p| p.upper.is_finite())
        .map(|p| Peak {
            timestamp: p.timestamp,
            value: p.value,
            upper: p.upper,
        });
    let demand_rps = observed.demand_rps.filter(|v| v.is_finite() && *v >= 0.0);

    if let Some(d) = demand_rps {
        state.typical = Some(match state.typical {
            Some((m, t)) if now > t => {
                let a = 1.0 - (-((now - t) as f64) / TYPICAL_TAU).exp();
                (m + a * (d - m), now)
            }
            Some(prev) => prev,
            None => (d, now),
        });
    }
    let headroom = policy.headroom * state.typical.map_or(0.0, |(m, _)| m);

    // Each policy's recommendation, with its reason; the highest wins, ties to the first.
    let mut candidates: Vec<(u32, Reason)> = Vec::with_capacity(3);
    if let Some(d) = demand_rps {
        let planned = f64::from(current) * policy.capacity_rps * policy.target_utilization;
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
        candidates.push((
            r,
            Reason::new(
                "Demand",
                format!(
                    "observed {d:.3} rps is {:.0}% of planned capacity: {r} replicas",
                    ratio * 100.0
                ),
            ),
        ));
    }
    if let Some(pk) = peak {
        let r = policy.need(pk.upper + headroom, policy.prediction_utilization);
        // Like the demand policy, move only past the tolerance: a forecast that wavers
        // around the current count must not make it flap.
        let r = if f64::from(r.abs_diff(current)) <= f64::from(current) * policy.tolerance {
            current
        } else {
            r
        };
        candidates.insert(
            0,
            (
                r,
                Reason::new(
                    "Prediction",
                    format!(
                        "upper forecast {:.3} rps at {} within the next {}s, plus {headroom:.3} rps headroom, needs {r} replicas",
                        pk.upper, pk.timestamp, policy.lookahead
                    ),
                ),
            ),
        );
    }
    if let Some(l) = observed
        .latency
        .filter(|l| l.p95.is_finite() && l.p95 > l.slo)
    {
        let curve = l
            .rps_per_replica_at_slo
            .filter(|v| v.is_finite() && *v > 0.0)
            .zip(demand_rps);
        let (r, how) = match curve {
            Some((per, d)) => (
                (d / per - 1e-9).ceil().clamp(0.0, f64::from(u32::MAX)) as u32,
                format!("the latency curve meets it at {per:.3} rps per replica"),
            ),
            None => (
                (f64::from(current) * l.p95 / l.slo)
                    .ceil()
                    .clamp(0.0, f64::from(u32::MAX)) as u32,
                "no latency curve yet: scaled by the excess".to_owned(),
            ),
        };
        // Over the SLO, never fewer than now.
        let r = r.max(current);
        candidates.push((
            r,
            Reason::new(
                "Performance",
                format!(
                    "p95 {:.3}s above the {:.3}s objective; {how}: {r} replicas",
                    l.p95, l.slo
                ),
            ),
        ));
    }
    let best = candidates
        .iter()
        .enumerate()
        .max_by_key(|(i, (r, _))| (*r, std::cmp::Reverse(*i)))
        .map(|(i, _)| i);
    let Some(best) = best else {
        reasons.push(Reason::new(
            "NoData",
            "no forecast and no observed demand: holding",
        ));
        if observed.degraded {
            reasons.push(Reason::new(
                "Degraded",
                "data missing or stale: no scale-in",
            ));
        }
        state.last = Some(now);
        return Decision {
            at: now,
            from: current,
            to: current,
            reasons,
            peak,
        };
    };
    let (recommended, reason) = candidates.swap_remove(best);
    reasons.push(reason);

    // Stabilisation (HPA semantics), on the recommendation before rate limits and bounds.
    let (up, down) = (&policy.scale_up, &policy.scale_down);
    state.history.recommend(now, recommended, up, down);
    let mut to = state.history.stabilized(now, current, up, down);
    if to > recommended {
        reasons.push(Reason::new(
            "ScaleDownStabilized",
            format!(
                "holding {to}: recommended within the last {}s",
                down.stabilization_window
            ),
        ));
    } else if to < recommended {
        reasons.push(Reason::new(
            "ScaleUpStabilized",
            format!(
                "{to}: the lowest recommendation within the last {}s",
                up.stabilization_window
            ),
        ));
    }

    if to < current && observed.degraded {
        reasons.push(Reason::new(
            "Degraded",
            "data missing or stale: no scale-in",
        ));
        to = current;
    } else if observed.degraded {
        reasons.push(Reason::new(
            "Degraded",
            "data missing or stale: scaling out on the evidence there is",
        ));
    }

    let elapsed = state.last.map_or(policy.interval, |t| now - t).max(1);
    if to > current {
        let limit = state.history.scale_up_limit(now, current, elapsed, up);
        if to > limit {
            reasons.push(Reason::new(
                "ScaleUpLimit",
                format!("{to} limited to {limit} by the scale-up policies"),
            ));
            to = limit;
        }
    } else if to < current {
        let limit = state.history.scale_down_limit(now, current, elapsed, down);
        if to < limit {
            reasons.push(Reason::new(
                "ScaleDownLimit",
                format!("{to} limited to {limit} by the scale-down policies"),
            ));
            to = limit;
        }
    }
    if to > policy.max_replicas {
        reasons.push(Reason::new(
            "TooManyReplicas",
            format!("{to} capped at max_replicas {}", policy.max_replicas),
        ));
        to = policy.max_replicas;
    }
    if to < policy.min_replicas {
        reasons.push(Reason::new(
            "TooFewReplicas",
            format!("{to} raised to min_replicas {}", policy.min_replicas),
        ));
        to = policy.min_replicas;
    }
    state.history.scaled(now, current, to);
    state.last = Some(now);

    Decision {
        at: now,
        from: current,
        to,
        reasons,
        peak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::Point;

    fn policy() -> Policy {
        Policy {
            capacity_rps: 10.0,
            target_utilization: 1.0,
            prediction_utilization: 1.0,
            tolerance: 0.1,
            min_replicas: 2,
            max_replicas: 20,
            lookahead: 300,
            interval: 60,
            headroom: 0.0,
            scale_up: Rules::default_scale_up(),
            scale_down: Rules::default_scale_down(),
        }
    }

    fn flat(now: i64, upper: f64) -> Forecast {
        Forecast {
            generated_at: now,
            step_seconds: 60,
            model: "test",
            level: 0.95,
            points: (1..=10)
                .map(|k| Point {
                    timestamp: now + 60 * k,
                    value: upper * 0.8,
                    lower: 0.0,
                    upper,
                })
                .collect(),
        }
    }

    fn obs(replicas: u32, demand: f64) -> Observed {
        Observed::demand(replicas, Some(demand))
    }

    /// (replicas now, upper forecast, demand now, degraded) → (replicas asked, reasons)
    #[test]
    fn single_decisions() {
        let check =
            |replicas: u32, upper: f64, demand: f64, degraded: bool, want: u32, codes: &str| {
                let mut st = DecideState::default();
                let o = Observed {
                    degraded,
                    ..obs(replicas, demand)
                };
                let d = decide(&policy(), Some(&flat(0, upper)), o, &mut st, 0);
                assert_eq!((d.to, d.reason_codes().as_str()), (want, codes), "{d:?}");
            };
        check(5, 95.0, 50.0, false, 10, "Prediction");
        check(5, 100.0, 50.0, false, 10, "Prediction");
        check(5, 40.0, 120.0, false, 12, "Demand");
        // Prediction holds within the tolerance (11 is within 10 % of 10), moves past it.
        check(10, 105.0, 50.0, false, 10, "Prediction");
        check(10, 115.0, 50.0, false, 12, "Prediction");
        check(10, 79.0, 50.0, false, 8, "Prediction");
        // Within the tolerance the demand policy holds; prediction still scales in.
        check(5, 10.0, 54.0, false, 5, "Demand");
        check(5, 500.0, 50.0, false, 20, "Prediction+TooManyReplicas");
        // No earlier recommendation to hold on to: down at once, to the minimum.
        check(5, 1.0, 1.0, false, 2, "Prediction+TooFewReplicas");
        check(5, 20.0, 20.0, true, 5, "Prediction+Degraded");
        check(5, 90.0, 20.0, true, 9, "Prediction+Degraded");
    }

    /// The HPA formula and its tolerance, as in the Kubernetes documentation ("Algorithm
    /// details"): `ceil(current × metric / target)`, skipped within 10 % of the target.
    /// (replicas, demand rps) → replicas, with 10 rps per replica at utilisation 1.
    #[test]
    fn demand_policy_is_the_hpa_formula() {
        let check = |replicas: u32, demand: f64, want: u32| {
            let mut st = DecideState::default();
            let d = decide(&policy(), None, obs(replicas, demand), &mut st, 0);
            assert_eq!(
                (d.to, d.reasons[0].code),
                (want, "Demand"),
                "{replicas} replicas at {demand} rps: {d:?}"
            );
        };
        check(4, 80.0, 8); // 200 % of target: double
        check(4, 20.0, 2); // 50 %: halve
        check(5, 54.0, 5); // 108 %: within the tolerance
        check(5, 46.0, 5); // 92 %: within
        check(5, 56.0, 6); // 112 %: past it
        check(10, 85.0, 9); // 85 %: past it, down
        check(0, 5.0, 2); // nothing running: the formula, then min_replicas
    }

    #[test]
    fn missing_data_holds() {
        let mut st = DecideState::default();
        let o = Observed {
            degraded: true,
            ..Observed::demand(5, None)
        };
        let d = decide(&policy(), None, o, &mut st, 0);
        assert_eq!((d.to, d.reason_codes().as_str()), (5, "NoData+Degraded"));
        // Demand alone, without a forecast, still scales out.
        let d = decide(&policy(), None, obs(5, 90.0), &mut st, 60);
        assert_eq!((d.to, d.reason_codes().as_str()), (9, "Demand"));
    }

    #[test]
    fn performance_policy() {
        let check = |latency: Latency, demand: f64, want: u32, first: &str| {
            let mut st = DecideState::default();
            let o = Observed {
                latency: Some(latency),
                ..obs(5, demand)
            };
            let d = decide(&policy(), Some(&flat(0, demand)), o, &mut st, 0);
            assert_eq!((d.to, d.reasons[0].code), (want, first), "{d:?}");
        };
        let slow = |p95: f64, curve: Option<f64>| Latency {
            p95,
            slo: 0.2,
            rps_per_replica_at_slo: curve,
        };
        // Under the SLO: performance has nothing to say.
        check(slow(0.1, Some(5.0)), 50.0, 5, "Prediction");
        // Over it, with a curve: 50 rps at 6 rps per replica needs 9.
        check(slow(0.3, Some(6.0)), 50.0, 9, "Performance");
        // Without a curve: scaled by the excess, 5 × 0.3/0.2 → 8.
        check(slow(0.3, None), 50.0, 8, "Performance");
        // A curve that asks for fewer than now never scales in while over the SLO.
        check(slow(0.3, Some(100.0)), 40.0, 5, "Performance");
    }

    #[test]
    fn scale_in_waits_for_the_stabilisation_window() {
        let mut st = DecideState::default();
        let mut replicas = 10;
        let mut at = Vec::new();
        for k in 0..12 {
            let now = k * 60;
            let upper = if k == 0 { 100.0 } else { 30.0 };
            let d = decide(
                &policy(),
                Some(&flat(now, upper)),
                obs(replicas, 10.0),
                &mut st,
                now,
            );
            if k > 0 && k < 5 {
                assert_eq!(d.reasons.last().unwrap().code, "ScaleDownStabilized");
            }
            replicas = d.to;
            at.push(replicas);
        }
        // The recommendation of 10 at t=0 holds while it is within the last 300 s.
        assert_eq!(at, [10, 10, 10, 10, 10, 3, 3, 3, 3, 3, 3, 3]);
    }

    #[test]
    fn scale_up_rate_limit() {
        let mut p = policy();
        p.max_replicas = 1000;
        let mut st = DecideState::default();
        // Default policy over a 60 s interval: max(+100 %, +4) four times: 1 → 5 → 10 → 20 → 40.
        let d = decide(&p, Some(&flat(0, 1000.0)), obs(1, 5.0), &mut st, 0);
        assert_eq!(
            (d.to, d.reason_codes().as_str()),
            (40, "Prediction+ScaleUpLimit")
        );
    }

    #[test]
    fn scale_down_rate_limit() {
        let mut p = policy();
        p.scale_down = Rules {
            stabilization_window: 0,
            select: Select::Max,
            policies: vec![RatePolicy {
                kind: RateKind::Pods,
                value: 2,
                period: 120,
            }],
        };
        let mut st = DecideState::default();
        let mut replicas = 12;
        let mut at = Vec::new();
        for k in 0..6 {
            let now = k * 60;
            let d = decide(
                &p,
                Some(&flat(now, 20.0)),
                obs(replicas, 20.0),
                &mut st,
                now,
            );
            replicas = d.to;
            at.push((replicas, d.reason_codes()));
        }
        let counts: Vec<u32> = at.iter().map(|a| a.0).collect();
        assert_eq!(counts, [10, 10, 8, 8, 6, 6], "{at:?}");
        assert_eq!(at[0].1, "Prediction+ScaleDownLimit");
    }
}
