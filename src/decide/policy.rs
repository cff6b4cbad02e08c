//! A target's decision policy: what the decision engine needs of its configuration.

use serde::Serialize;

use super::behavior::Rules;
use super::explain::{BoundsInForce, Explain, Inputs, PolicyKind, Recommendation};
use super::schedule;

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
    /// How much of the prediction interval above the point forecast the prediction policy
    /// plans for: 1 plans for the upper bound, below 1 a calibrated quantile short of it
    /// (the forecast's `planned` values), above 1 a multiple of its distance (see
    /// [`risk`](super::risk)).
    pub interval_share: f64,
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
    /// The scale-down stabilisation window while the load planned for comes from the
    /// target's recurring bursts, when shorter than `scale_down`'s: that plan holds
    /// capacity where a burst may come back and releases it where none comes, so less
    /// patience is needed (the dial's `recurring_scale_in_window`; `None`: the window was
    /// configured, and holds).
    pub recurring_scale_in: Option<i64>,
    /// What one change of the count costs, in seconds of the typical count's replica-time:
    /// a change is made only where the plan says it saves more ([`calm`](super::calm));
    /// 0: every change the behaviour allows is made, as the HPA.
    pub change_cost: i64,
    /// Scheduled windows; their floors lead their openings by `lookahead`.
    pub schedule: Vec<schedule::Window>,
}

impl Policy {
    /// The bounds in force at `now`: `min_replicas`/`max_replicas`, or those of the
    /// scheduled windows open (or, for a floor, opening within `lookahead`).
    pub fn bounds(&self, now: i64) -> schedule::Bounds<'_> {
        schedule::bounds(
            &self.schedule,
            self.min_replicas,
            self.max_replicas,
            self.lookahead,
            now,
        )
    }

    /// An explanation with this policy's settings and the bounds at `now`, and nothing
    /// recommended yet.
    pub(super) fn explanation(&self, replicas: u32, now: i64) -> Explain {
        Explain {
            inputs: Inputs {
                replicas,
                demand_rps: None,
                latency: None,
                degraded: false,
                capacity_rps: Some(self.capacity_rps).filter(|c| c.is_finite() && *c > 0.0),
                capacity_source: None,
                target_utilization: self.target_utilization,
                prediction_utilization: self.prediction_utilization,
                interval_share: self.interval_share,
                tolerance: self.tolerance,
                lookahead: self.lookahead,
                peak: None,
                headroom_rps: 0.0,
                bounds: BoundsInForce::from(&self.bounds(now)),
                budget: None,
                external: None,
            },
            policies: Vec::new(),
            clamps: Vec::new(),
        }
    }

    /// The explanation of a hold for want of capacity per replica: no policy could size
    /// replicas.
    pub fn explain_without_capacity(&self, replicas: u32, now: i64, why: &str) -> Explain {
        let mut e = self.explanation(replicas, now);
        e.inputs.capacity_rps = None;
        e.policies = [
            PolicyKind::Prediction,
            PolicyKind::Demand,
            PolicyKind::Performance,
        ]
        .into_iter()
        .map(|policy| Recommendation {
            policy,
            replicas: None,
            chosen: false,
            message: format!("no capacity per replica to size replicas by: {why}"),
        })
        .collect();
        e
    }

    /// Replicas needed to carry `rps` at `utilization`.
    pub(super) fn need(&self, rps: f64, utilization: f64) -> u32 {
        let per = self.capacity_rps * utilization;
        (rps / per - 1e-9).ceil().clamp(0.0, f64::from(u32::MAX)) as u32
    }
}
