//! Pure deciding: a forecast, what is observed now, the policy and `now` in; a replica count
//! with its reasons out.
//!
//! The first policy is predictive with a reactive floor: enough replicas for the highest
//! upper forecast until a replica asked for now would be serving (`startup + interval`),
//! and never fewer than the last observed demand needs. Scale-in takes the highest count
//! recommended within the stabilisation window (Kubernetes HPA semantics), and is refused
//! while the data is missing or stale.

pub mod balance;

use std::collections::VecDeque;

use serde::Serialize;

use crate::config::TargetConfig;
use crate::forecast::Forecast;

/// What the decision engine needs of a target's configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Requests/s one replica serves within its SLO.
    pub capacity_rps: f64,
    /// Fewest replicas.
    pub min_replicas: u32,
    /// Most replicas.
    pub max_replicas: u32,
    /// Seconds ahead that capacity must cover: startup + interval.
    pub lookahead: i64,
    /// Scale-in stabilisation window, seconds.
    pub scale_in_window: i64,
}

impl Policy {
    /// The policy of a configured target.
    pub fn of(t: &TargetConfig) -> Self {
        Self {
            // Unset when it is to be learned: the pipeline sets the resolved capacity.
            capacity_rps: t.capacity_rps.unwrap_or(f64::NAN),
            min_replicas: t.min_replicas,
            max_replicas: t.max_replicas,
            lookahead: (t.startup + t.interval).as_secs() as i64,
            scale_in_window: t.scale_in_window.as_secs() as i64,
        }
    }
}

/// What is observed of a target now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed {
    /// Replicas now (observed, or the last count asked for).
    pub replicas: u32,
    /// The last observed request rate, requests/s.
    pub demand_rps: Option<f64>,
    /// A signal is missing or stale: scale-in is forbidden.
    pub degraded: bool,
}

/// Why a decision came out as it did; the first reason is the one that set the count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    /// Stable code: `Prediction`, `Demand`, `NoData`, `ScaleDownStabilized`,
    /// `TooManyReplicas`, `TooFewReplicas`, `Degraded`.
    pub code: &'static str,
    /// What it means here, for people.
    pub message: String,
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
}

/// What deciding remembers between calls: recent recommendations, for stabilisation.
#[derive(Debug, Clone, Default)]
pub struct DecideState {
    recommendations: VecDeque<(i64, u32)>,
}

/// Decides the replica count at `now`.
pub fn decide(
    policy: &Policy,
    forecast: Option<&Forecast>,
    observed: Observed,
    state: &mut DecideState,
    now: i64,
) -> Decision {
    let cap = policy.capacity_rps;
    let need = |rps: f64| (rps / cap - 1e-9).ceil().max(0.0) as u32;
    let mut reasons = Vec::new();

    let peak = forecast
        .and_then(|f| f.peak_upper(now, now + policy.lookahead))
        .map(|p| Peak {
            timestamp: p.timestamp,
            value: p.value,
            upper: p.upper,
        });
    let predicted = peak.map(|p| need(p.upper));
    let reactive = observed.demand_rps.map(need);

    let mut want = match (predicted, reactive) {
        (Some(p), Some(r)) if r > p => {
            reasons.push(Reason {
                code: "Demand",
                message: format!(
                    "observed {:.2} rps needs {r} replicas, above the forecast's {p}",
                    observed.demand_rps.unwrap_or(0.0)
                ),
            });
            r
        }
        (Some(p), _) => {
            let pk = peak.expect("predicted implies a peak");
            reasons.push(Reason {
                code: "Prediction",
                message: format!(
                    "upper forecast {:.2} rps at {} within the next {}s needs {p} replicas",
                    pk.upper, pk.timestamp, policy.lookahead
                ),
            });
            p
        }
        (None, Some(r)) => {
            reasons.push(Reason {
                code: "Demand",
                message: format!("no forecast; observed demand needs {r} replicas"),
            });
            r
        }
        (None, None) => {
            reasons.push(Reason {
                code: "NoData",
                message: "no forecast and no observed demand: holding".into(),
            });
            observed.replicas
        }
    };

    if want > policy.max_replicas {
        reasons.push(Reason {
            code: "TooManyReplicas",
            message: format!("{want} capped at max_replicas {}", policy.max_replicas),
        });
        want = policy.max_replicas;
    }
    if want < policy.min_replicas {
        reasons.push(Reason {
            code: "TooFewReplicas",
            message: format!("{want} raised to min_replicas {}", policy.min_replicas),
        });
        want = policy.min_replicas;
    }

    // HPA-style scale-down stabilisation: the highest recommendation within the window.
    state
        .recommendations
        .retain(|&(t, _)| t > now - policy.scale_in_window);
    state.recommendations.push_back((now, want));
    let mut to = want;
    if want < observed.replicas {
        if observed.degraded {
            reasons.push(Reason {
                code: "Degraded",
                message: "data missing or stale: no scale-in".into(),
            });
            to = observed.replicas;
        } else {
            let held = state
                .recommendations
                .iter()
                .map(|&(_, r)| r)
                .max()
                .unwrap_or(want);
            let stabilised = held.min(observed.replicas).max(want);
            if stabilised > want {
                reasons.push(Reason {
                    code: "ScaleDownStabilized",
                    message: format!(
                        "holding {stabilised}: recommended within the last {}s",
                        policy.scale_in_window
                    ),
                });
            }
            to = stabilised;
        }
    } else if observed.degraded {
        reasons.push(Reason {
            code: "Degraded",
            message: "data missing or stale: scaling out on the evidence there is".into(),
        });
    }

    Decision {
        at: now,
        from: observed.replicas,
        to,
        reasons,
        peak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::Point;

    const POLICY: Policy = Policy {
        capacity_rps: 10.0,
        min_replicas: 2,
        max_replicas: 20,
        lookahead: 300,
        scale_in_window: 300,
    };

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
        Observed {
            replicas,
            demand_rps: Some(demand),
            degraded: false,
        }
    }

    /// (replicas now, upper forecast, demand now, degraded) → (replicas asked, first reason)
    #[test]
    fn single_decisions() {
        let check =
            |replicas: u32, upper: f64, demand: f64, degraded: bool, want: u32, code: &str| {
                let mut st = DecideState::default();
                let o = Observed {
                    degraded,
                    ..obs(replicas, demand)
                };
                let d = decide(&POLICY, Some(&flat(0, upper)), o, &mut st, 0);
                assert_eq!((d.to, d.reasons[0].code), (want, code), "{d:?}");
            };
        check(5, 95.0, 50.0, false, 10, "Prediction");
        check(5, 100.0, 50.0, false, 10, "Prediction");
        check(5, 40.0, 120.0, false, 12, "Demand");
        check(5, 500.0, 50.0, false, 20, "Prediction"); // capped
        check(5, 1.0, 1.0, false, 2, "Prediction"); // raised to min
        check(5, 20.0, 20.0, true, 5, "Prediction"); // degraded: no scale-in
        check(5, 90.0, 20.0, true, 9, "Prediction"); // degraded: scale-out allowed
    }

    #[test]
    fn clamps_are_named() {
        let mut st = DecideState::default();
        let d = decide(&POLICY, Some(&flat(0, 500.0)), obs(5, 1.0), &mut st, 0);
        assert_eq!(d.reason_codes(), "Prediction+TooManyReplicas");
        let d = decide(
            &POLICY,
            None,
            Observed {
                replicas: 5,
                demand_rps: None,
                degraded: true,
            },
            &mut st,
            0,
        );
        assert_eq!((d.to, d.reason_codes().as_str()), (5, "NoData+Degraded"));
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
                &POLICY,
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
}
