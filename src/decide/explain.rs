//! Why a decision's count is what it is, step by step: the inputs the policies saw, every
//! policy's recommendation (also those that lost or did not apply), then each clamp in the
//! order it was applied, with the count before and after it.
//!
//! [`super::decide_explained`] fills it while deciding; the step adds what only it knows
//! (where the capacity comes from, the budget's grant, a running count it does not know).

use serde::Serialize;

use super::schedule::Bounds;
use super::types::{ExternalChange, Latency, Peak, Reason, ReasonCode};
use crate::forecast::capacity::CapacitySource;

/// One of the three policies that recommend a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// The upper forecast over the look-ahead.
    Prediction,
    /// The observed load, as the HPA.
    Demand,
    /// The observed latency against its objective.
    Performance,
}

/// What one policy recommended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    /// Which policy.
    pub policy: PolicyKind,
    /// Its count; `None` when it had nothing to go on (the message says why).
    pub replicas: Option<u32>,
    /// Whether it set the count (the highest wins; ties to the first listed).
    pub chosen: bool,
    /// How it got there, for people.
    pub message: String,
}

/// One clamp or condition applied after the policies, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Clamp {
    /// What it was (the decision's reason code).
    pub code: ReasonCode,
    /// The count before it.
    pub from: u32,
    /// The count after it (equal to `from` for a condition that changed nothing).
    pub to: u32,
    /// Why, for people.
    pub message: String,
}

/// The bounds in force when deciding, and the scheduled windows that set them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoundsInForce {
    /// Fewest replicas.
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// The window that set `min` (its expression, zone, opening and bounds), if one did.
    pub min_window: Option<String>,
    /// The window that set `max`, if one did.
    pub max_window: Option<String>,
}

impl From<&Bounds<'_>> for BoundsInForce {
    fn from(b: &Bounds<'_>) -> Self {
        Self {
            min: b.min,
            max: b.max,
            min_window: b.min_from.map(|o| o.to_string()),
            max_window: b.max_from.map(|o| o.to_string()),
        }
    }
}

/// A shared budget's part in a decision.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Grant {
    /// Replicas the budget shares across targets.
    pub total: u32,
    /// What this target asked for.
    pub wanted: u32,
    /// What it was granted (its count when the budget did not limit it).
    pub granted: u32,
}

/// What the policies decided from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inputs {
    /// The count decisions start from (the count last asked for, or running).
    pub replicas: u32,
    /// The last complete observation of the request rate, requests/s.
    pub demand_rps: Option<f64>,
    /// Latency against its objective, when both are known and fresh.
    pub latency: Option<Latency>,
    /// Whether a signal was missing or stale (no scale-in).
    pub degraded: bool,
    /// Requests/s one replica serves within its SLO; `None` when unknown.
    pub capacity_rps: Option<f64>,
    /// Where that capacity comes from (set by the step).
    pub capacity_source: Option<CapacitySource>,
    /// The share of capacity the demand policy plans each replica at.
    pub target_utilization: f64,
    /// The share of capacity the prediction policy plans each replica at.
    pub prediction_utilization: f64,
    /// Share of the prediction interval above the point forecast planned for.
    pub interval_share: f64,
    /// The policies hold within `1 ± tolerance` of the count.
    pub tolerance: f64,
    /// Seconds ahead the prediction covers (start-up + interval).
    pub lookahead: i64,
    /// The highest upper forecast within the look-ahead: its time, point and upper bound.
    pub peak: Option<Peak>,
    /// Requests/s added to the peak as headroom.
    pub headroom_rps: f64,
    /// The bounds in force.
    pub bounds: BoundsInForce,
    /// The shared budget's grant, with `[budget]` (set by the step).
    pub budget: Option<Grant>,
    /// A change of the running count someone else made, observed this cycle (set by the
    /// step): `replicas` is then the count it changed to.
    pub external: Option<ExternalChange>,
}

/// Why a decision's count is what it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explain {
    /// What the policies decided from.
    pub inputs: Inputs,
    /// Every policy's recommendation.
    pub policies: Vec<Recommendation>,
    /// Each clamp or condition after the policies, in the order applied.
    pub clamps: Vec<Clamp>,
}

impl Explain {
    /// Adds a clamp from `from` to `to` applied after deciding (the budget), or a
    /// condition that changed nothing when equal (the running count is unknown).
    pub fn clamp(&mut self, code: ReasonCode, from: u32, to: u32, message: &str) {
        self.clamps.push(Clamp {
            code,
            from,
            to,
            message: message.to_owned(),
        });
    }
}

/// A decision's reasons and its explanation's clamps, written together.
#[derive(Debug)]
pub struct Trail<'a> {
    /// The decision's reasons.
    pub reasons: &'a mut Vec<Reason>,
    /// The explanation's clamps.
    pub clamps: &'a mut Vec<Clamp>,
}

impl Trail<'_> {
    /// A clamp from `from` to `to` (or a condition, when equal) with its reason.
    pub fn push(&mut self, code: ReasonCode, from: u32, to: u32, message: String) {
        self.clamps.push(Clamp {
            code,
            from,
            to,
            message: message.clone(),
        });
        self.reasons.push(Reason::new(code, message));
    }
}
