//! What the API shows of the pipeline's types: one view per type, a copy of its fields.
//!
//! The views make the API's JSON a contract of this module, described field by field in
//! the OpenAPI document, without the pure core depending on the API's schema library. Each
//! view serialises exactly like the type it copies (a test holds them to it), so a change
//! of a core type shows up here as a compile error or a failing test, not as a silent
//! change of the API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::act::ActionKind;
use crate::act::outbox::DeliveryOutcome;
use crate::{config, decide, forecast, series, store};

/// Whether a target's decisions are sent.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Mode {
    /// Decide and send webhooks.
    Act,
    /// Decide and show; send nothing.
    ForecastOnly,
}

/// A target's state: the store's, `unreachable` when its owner did not answer, or
/// `owned-elsewhere` for one this instance does not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Status {
    /// History is still being loaded.
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
    /// Another instance owns it and did not answer (`[cluster]`): only its configuration
    /// is shown.
    Unreachable,
    /// This instance does not run it (`[cluster]`, `scope=local`): another instance owns
    /// it (`owner` says which), or none does yet.
    OwnedElsewhere,
}

impl From<store::TargetStatus> for Status {
    fn from(s: store::TargetStatus) -> Self {
        match s {
            store::TargetStatus::Backfilling => Self::Backfilling,
            store::TargetStatus::Degraded => Self::Degraded,
            store::TargetStatus::Paused => Self::Paused,
            store::TargetStatus::BudgetLimited => Self::BudgetLimited,
            store::TargetStatus::Ok => Self::Ok,
        }
    }
}

impl From<config::Mode> for Mode {
    fn from(m: config::Mode) -> Self {
        match m {
            config::Mode::Act => Self::Act,
            config::Mode::ForecastOnly => Self::ForecastOnly,
        }
    }
}

/// One observation of a signal.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct Sample {
    /// Unix time (s), on the target's step grid.
    timestamp: i64,
    /// The value.
    value: f64,
}

impl From<series::Sample> for Sample {
    fn from(s: series::Sample) -> Self {
        Self {
            timestamp: s.ts,
            value: s.value,
        }
    }
}

/// One forecast point with its prediction interval.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct Point {
    /// Unix time (s) the point is for.
    timestamp: i64,
    /// Point forecast.
    value: f64,
    /// Lower bound of the prediction interval.
    lower: f64,
    /// Upper bound of the prediction interval.
    upper: f64,
}

impl From<&forecast::Point> for Point {
    fn from(p: &forecast::Point) -> Self {
        Self {
            timestamp: p.timestamp,
            value: p.value,
            lower: p.lower,
            upper: p.upper,
        }
    }
}

/// Why a decision came out as it did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct Reason {
    /// Stable code. Policies: `Prediction`, `Demand`, `Performance`, `NoData`. Clamps and
    /// conditions: `ScaleDownStabilized`, `ScaleUpStabilized`, `ScaleUpLimit`,
    /// `ScaleDownLimit`, `Calm`, `TooManyReplicas`, `TooFewReplicas`, `Degraded`, `BudgetLimited`,
    /// `ReplicasUnknown`, `Scheduled` (a window of `[[target.schedule]]`), `External`
    /// (someone else changed the running count), `Released` (an HPA's floor given back).
    code: String,
    /// What it means here, for people.
    message: String,
}

/// The highest upper forecast in the look-ahead window.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct Peak {
    /// When (Unix s).
    timestamp: i64,
    /// Point forecast there, requests/s.
    value: f64,
    /// Upper bound there, requests/s.
    upper: f64,
    /// The load planned for there, requests/s.
    planned: f64,
    /// Where `planned` comes from.
    basis: PlanBasis,
}

impl From<decide::Peak> for Peak {
    fn from(p: decide::Peak) -> Self {
        Self {
            timestamp: p.timestamp,
            value: p.value,
            upper: p.upper,
            planned: p.planned,
            basis: p.basis.into(),
        }
    }
}

/// Where the load planned for comes from.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub(super) enum PlanBasis {
    /// The share of the way from the point forecast to its upper bound, as a quantile of
    /// the calibrated errors.
    Interval,
    /// The target's recurring bursts: the last hour's median times the `quantile` of what
    /// followed such a median at the same phase and time since the last burst.
    RecurringBursts {
        /// In (0, 1).
        quantile: f64,
    },
}

impl From<forecast::PlanBasis> for PlanBasis {
    fn from(b: forecast::PlanBasis) -> Self {
        match b {
            forecast::PlanBasis::Interval => Self::Interval,
            forecast::PlanBasis::RecurringBursts { quantile } => Self::RecurringBursts { quantile },
        }
    }
}

/// A replica-count decision.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct Decision {
    /// When it was made (Unix s).
    at: i64,
    /// Replicas before.
    from: u32,
    /// Replicas asked for.
    to: u32,
    /// Why; the first sets the count, the others are clamps and conditions.
    reasons: Vec<Reason>,
    /// The forecast peak it planned for.
    peak: Option<Peak>,
}

impl From<&decide::Decision> for Decision {
    fn from(d: &decide::Decision) -> Self {
        Self {
            at: d.at,
            from: d.from,
            to: d.to,
            reasons: d
                .reasons
                .iter()
                .map(|r| Reason {
                    code: r.code.to_string(),
                    message: r.message.clone(),
                })
                .collect(),
            peak: d.peak.map(Peak::from),
        }
    }
}

/// A decision in the log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct DecisionRecord {
    /// The target.
    target: String,
    /// The decision.
    #[serde(flatten)]
    decision: Decision,
    /// Whether it was to be sent (`act`) or only shown (`forecast-only`).
    mode: Mode,
    /// When the first decision this record stands for was made (Unix s); `at` for one.
    since: i64,
    /// How many decisions it stands for: 1, or more for a run of holds with the same
    /// count, mode and reasons (`at` is the newest of them).
    repeats: u64,
}

impl From<&store::DecisionRecord> for DecisionRecord {
    fn from(r: &store::DecisionRecord) -> Self {
        Self {
            target: r.target.clone(),
            decision: Decision::from(&r.decision),
            mode: r.mode.into(),
            since: r.since,
            repeats: r.repeats,
        }
    }
}

/// Where the capacity used for deciding comes from.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum CapacitySource {
    /// `capacity_rps` in the configuration.
    Configured,
    /// Learned from latency under load.
    Learned,
    /// Neither: the target holds its replica count.
    Unknown,
}

impl From<forecast::capacity::CapacitySource> for CapacitySource {
    fn from(s: forecast::capacity::CapacitySource) -> Self {
        use forecast::capacity::CapacitySource as S;
        match s {
            S::Configured => Self::Configured,
            S::Learned => Self::Learned,
            S::Unknown => Self::Unknown,
        }
    }
}

/// `latency = base + gain / (1 - load / saturation)`, seconds, for load in requests/s per
/// replica.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct LatencyCurve {
    /// `a`, seconds.
    base: f64,
    /// `b ≥ 0`, seconds.
    gain: f64,
    /// `c`, requests/s per replica at which latency diverges.
    saturation: f64,
}

/// A learned capacity.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct Learned {
    /// The fitted curve.
    curve: LatencyCurve,
    /// Requests/s per replica within the SLO.
    capacity_rps: f64,
    /// Whether the capacity was capped at 1.5 × the highest load seen.
    capped: bool,
    /// Pairs it was learned from.
    pairs: usize,
    /// Highest load per replica observed.
    max_load_rps: f64,
}

/// The capacity in use and the evidence for it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct Capacity {
    /// Requests/s per replica used for deciding, when known.
    effective_rps: Option<f64>,
    /// Where it comes from.
    source: CapacitySource,
    /// Why, for people.
    reason: String,
    /// The configured value, if any.
    configured_rps: Option<f64>,
    /// The learned value and curve, if learned.
    learned: Option<Learned>,
}

impl From<&forecast::capacity::Capacity> for Capacity {
    fn from(c: &forecast::capacity::Capacity) -> Self {
        Self {
            effective_rps: c.effective_rps,
            source: c.source.into(),
            reason: c.reason.clone(),
            configured_rps: c.configured_rps,
            learned: c.learned.as_ref().map(|l| Learned {
                curve: LatencyCurve {
                    base: l.curve.base,
                    gain: l.curve.gain,
                    saturation: l.curve.saturation,
                },
                capacity_rps: l.capacity_rps,
                capped: l.capped,
                pairs: l.pairs,
                max_load_rps: l.max_load_rps,
            }),
        }
    }
}

/// A candidate model's score in the last selection.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct Score {
    /// The model's stable name.
    model: String,
    /// Its settings.
    description: String,
    /// Mean asymmetric loss over the held-out window (lower is better).
    loss: f64,
}

/// The selected forecast model of a target, what it knows, and how it did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct ModelInfo {
    /// Stable name of the selected model.
    model: &'static str,
    /// Its settings and what it dropped.
    description: String,
    /// When it was last refitted (Unix s).
    fitted_at: i64,
    /// Timestamp of the newest value it has seen.
    last_observation: i64,
    /// Whether intervals are calibrated from held-out errors (else the model's own).
    calibrated: bool,
    /// Held-out coverage of the calibrated interval (all horizons).
    calibration_coverage: Option<f64>,
    /// One-step-ahead coverage since the refit.
    coverage: Option<f64>,
    /// Actuals behind `coverage`.
    coverage_samples: u64,
    /// Candidates and their held-out loss, best first.
    selection: Vec<Score>,
}

impl From<forecast::ModelInfo> for ModelInfo {
    fn from(i: forecast::ModelInfo) -> Self {
        Self {
            model: i.model,
            description: i.description,
            fitted_at: i.fitted_at,
            last_observation: i.last_observation,
            calibrated: i.calibrated,
            calibration_coverage: i.calibration_coverage,
            coverage: i.coverage,
            coverage_samples: i.coverage_samples,
            selection: i
                .selection
                .into_iter()
                .map(|s| Score {
                    model: s.model,
                    description: s.description,
                    loss: s.loss,
                })
                .collect(),
        }
    }
}

/// Which signal breaches.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum BreachSignal {
    /// The upper forecast exceeds the capacity of the running replicas.
    RequestRate,
    /// The latency predicted from the point forecast exceeds the SLO.
    Latency,
}

/// The first predicted breach.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct Breach {
    /// When (Unix s).
    at: i64,
    /// Seconds from the prediction to then.
    seconds_to_breach: i64,
    /// Which signal breaches first.
    signal: BreachSignal,
    /// Largest (point forecast − capacity) over the horizon, requests/s; 0 when only the
    /// upper bound crosses.
    expected_shortfall_rps: f64,
    /// Largest (upper forecast − capacity) over the horizon, requests/s.
    upper_shortfall_rps: f64,
    /// Latency predicted at the breach, seconds (with a latency curve).
    predicted_latency_seconds: Option<f64>,
}

/// A target's predicted bottleneck.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct Bottleneck {
    /// Replicas counted on.
    replicas: u32,
    /// Requests/s the running replicas serve within their SLO.
    capacity_rps: f64,
    /// Capacity minus the demand now, requests/s (negative when short already).
    headroom_now_rps: Option<f64>,
    /// Demand now over capacity.
    utilisation_now: Option<f64>,
    /// End of the horizon checked (Unix s).
    horizon_end: i64,
    /// The first breach within the horizon, or null when none is predicted.
    breach: Option<Breach>,
}

impl From<&forecast::bottleneck::Bottleneck> for Bottleneck {
    fn from(b: &forecast::bottleneck::Bottleneck) -> Self {
        use forecast::bottleneck::BreachSignal as S;
        Self {
            replicas: b.replicas,
            capacity_rps: b.capacity_rps,
            headroom_now_rps: b.headroom_now_rps,
            utilisation_now: b.utilisation_now,
            horizon_end: b.horizon_end,
            breach: b.breach.as_ref().map(|x| Breach {
                at: x.at,
                seconds_to_breach: x.seconds_to_breach,
                signal: match x.signal {
                    S::RequestRate => BreachSignal::RequestRate,
                    S::Latency => BreachSignal::Latency,
                },
                expected_shortfall_rps: x.expected_shortfall_rps,
                upper_shortfall_rps: x.upper_shortfall_rps,
                predicted_latency_seconds: x.predicted_latency_seconds,
            }),
        }
    }
}

/// What is known of one signal's freshness.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct SignalHealth {
    /// Timestamp of the newest sample (Unix s).
    newest: Option<i64>,
    /// When it was last polled (Unix s).
    last_poll: Option<i64>,
    /// The last poll's error, if it failed.
    error: Option<String>,
    /// While its older history is still being loaded after the recent hours: the oldest
    /// time loaded so far (Unix s); the target is degraded (no scale-in) until it is done.
    loading: Option<i64>,
}

impl From<&store::SignalHealth> for SignalHealth {
    fn from(h: &store::SignalHealth) -> Self {
        Self {
            newest: h.newest,
            last_poll: h.last_poll,
            error: h.error.clone(),
            loading: h.loading,
        }
    }
}

/// The latest observations of one instance.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct InstanceStats {
    /// Requests/s.
    rate: Option<f64>,
    /// Latency, seconds.
    latency: Option<f64>,
    /// Error ratio (errors / requests), 0 to 1.
    errors: Option<f64>,
}

impl From<&store::InstanceStats> for InstanceStats {
    fn from(s: &store::InstanceStats) -> Self {
        Self {
            rate: s.rate,
            latency: s.latency,
            errors: s.errors,
        }
    }
}

/// The outcome of a target's last delivery.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct DeliveryRecord {
    /// What was sent.
    kind: ActionKind,
    /// The action's idempotency key.
    idempotency_key: String,
    /// How it ended.
    outcome: DeliveryOutcome,
    /// Attempts made.
    attempts: u32,
    /// The error, when not delivered.
    error: Option<String>,
    /// When it ended (Unix s).
    at: i64,
}

impl From<&store::DeliveryRecord> for DeliveryRecord {
    fn from(d: &store::DeliveryRecord) -> Self {
        Self {
            kind: d.kind,
            idempotency_key: d.idempotency_key.clone(),
            outcome: d.outcome,
            attempts: d.attempts,
            error: d.error.clone(),
            at: d.at,
        }
    }
}

/// Copies a map's values into their views.
pub(super) fn map_values<'a, K: Ord + Clone + 'a, T: 'a, V: From<&'a T>>(
    map: impl IntoIterator<Item = (&'a K, &'a T)>,
) -> BTreeMap<K, V> {
    map.into_iter()
        .map(|(k, v)| (k.clone(), V::from(v)))
        .collect()
}

#[cfg(test)]
mod tests;
