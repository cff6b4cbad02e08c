//! The plain types a decision is made of and explained with: the latency observed, the
//! reasons and their codes, the forecast peak planned for.

use serde::Serialize;

use crate::forecast::PlanBasis;

/// Observed latency against its objective, as plain numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Observed p95 latency, seconds.
    pub p95: f64,
    /// The objective, seconds.
    pub slo: f64,
    /// Requests/s per replica at which the learned latency curve meets the objective;
    /// `None` while no curve has been learned.
    pub rps_per_replica_at_slo: Option<f64>,
    /// Replicas serving when the latency was observed.
    pub replicas: u32,
}

/// What set or clamped a decision's count: a closed set, serialised as the documented
/// PascalCase names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ReasonCode {
    /// The prediction policy (upper forecast over the look-ahead) set the count.
    Prediction,
    /// The demand policy (observed load, as the HPA) set the count.
    Demand,
    /// The performance policy (latency above its SLO) set the count.
    Performance,
    /// No forecast and no observed demand: held.
    NoData,
    /// No capacity per replica, configured or learned: held.
    NoCapacity,
    /// Scale-in held by the scale-down stabilisation window.
    ScaleDownStabilized,
    /// Scale-out held by the scale-up stabilisation window.
    ScaleUpStabilized,
    /// Scale-out limited by the scale-up rate policies.
    ScaleUpLimit,
    /// Scale-in limited by the scale-down rate policies.
    ScaleDownLimit,
    /// Capped at `max_replicas`.
    TooManyReplicas,
    /// Raised to `min_replicas`.
    TooFewReplicas,
    /// Data missing or stale: no scale-in.
    Degraded,
    /// Held, or moved further, because the plan asks for another change soon: a change
    /// must be worth what it costs (`change_cost`).
    Calm,
    /// Lowered by the shared budget.
    BudgetLimited,
    /// Set by a scheduled window's bound (`[[target.schedule]]`); the message names the
    /// window, its opening and its bounds.
    Scheduled,
    /// The count running is unknown (no `replicas` sample, or without a `replicas` query
    /// nothing remembered and no `initial_replicas`): decided and shown, nothing asked for.
    ReplicasUnknown,
    /// The running count was changed by someone else (not asked for by prescale, nor its
    /// earlier ask still being applied); the message says from what to what, as observed.
    /// The decision starts from the observed count (`external_changes = "follow"`), or
    /// the target is paused until resumed (`"hold"`).
    External,
    /// The platform's floor given back (Kubernetes `hpa-floor`: the HPA's `minReplicas`
    /// set to the target's `min_replicas` again) because prescale stops acting on the
    /// target: it was paused, or removed from the configuration. Sent while the target is
    /// paused, through the outbox like any other action.
    Released,
}

impl ReasonCode {
    /// The documented name, e.g. `ScaleDownStabilized`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prediction => "Prediction",
            Self::Demand => "Demand",
            Self::Performance => "Performance",
            Self::NoData => "NoData",
            Self::NoCapacity => "NoCapacity",
            Self::ScaleDownStabilized => "ScaleDownStabilized",
            Self::ScaleUpStabilized => "ScaleUpStabilized",
            Self::ScaleUpLimit => "ScaleUpLimit",
            Self::ScaleDownLimit => "ScaleDownLimit",
            Self::TooManyReplicas => "TooManyReplicas",
            Self::TooFewReplicas => "TooFewReplicas",
            Self::Degraded => "Degraded",
            Self::Calm => "Calm",
            Self::BudgetLimited => "BudgetLimited",
            Self::Scheduled => "Scheduled",
            Self::ReplicasUnknown => "ReplicasUnknown",
            Self::External => "External",
            Self::Released => "Released",
        }
    }
}

impl std::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a decision came out as it did; the first reason is the policy that set the count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    /// What set or clamped the count.
    pub code: ReasonCode,
    /// What it means here, for people.
    pub message: String,
}

impl Reason {
    /// A reason with its code and a message for people.
    pub fn new(code: ReasonCode, message: impl Into<String>) -> Self {
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
    /// The load planned for there (the policy's share of the way to the upper bound, as a
    /// calibrated quantile, or the quantile of the target's recurring bursts), requests/s.
    pub planned: f64,
    /// Where `planned` comes from.
    pub basis: PlanBasis,
}

/// A change of the running count that prescale did not ask for, as observed (see
/// `step::external`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExternalChange {
    /// The count observed before it.
    pub from: u32,
    /// The count observed now.
    pub to: u32,
    /// When it was observed (Unix s).
    pub at: i64,
}
