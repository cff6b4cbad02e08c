//! Why a decision's count is what it is: `GET /api/v1/targets/{name}/decisions/{at}/explain`.
//!
//! The explanation is kept for each target's newest decisions (see
//! `store::decisions`); `{at}` is a decision's `at` from the decision log, or `latest`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::views::{CapacitySource, Peak};
use super::{ApiError, ErrorBody};
use crate::decide::explain as core;
use crate::store::Store;

/// One of the three policies that recommend a count.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum PolicyKind {
    /// The upper forecast over the look-ahead.
    Prediction,
    /// The observed load, as the HPA.
    Demand,
    /// The observed latency against its objective.
    Performance,
}

/// What one policy recommended.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct Recommendation {
    /// Which policy.
    policy: PolicyKind,
    /// Its count; null when it had nothing to go on (the message says why).
    replicas: Option<u32>,
    /// Whether it set the count (the highest wins; ties to the first listed).
    chosen: bool,
    /// How it got there.
    message: String,
}

/// One clamp or condition applied after the policies, in order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct Clamp {
    /// What it was: a decision reason code, e.g. `ScaleDownStabilized`.
    code: String,
    /// The count before it.
    from: u32,
    /// The count after it (equal to `from` for a condition that changed nothing).
    to: u32,
    /// Why.
    message: String,
}

/// Observed p95 latency against its objective.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct Latency {
    /// Observed p95 latency, seconds.
    p95: f64,
    /// The objective, seconds.
    slo: f64,
    /// Requests/s per replica at which the learned latency curve meets the objective.
    rps_per_replica_at_slo: Option<f64>,
    /// Replicas serving when it was observed.
    replicas: u32,
}

/// The bounds in force, and the scheduled windows that set them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct Bounds {
    /// Fewest replicas.
    min: u32,
    /// Most replicas.
    max: u32,
    /// The scheduled window that set `min`, if one did.
    min_window: Option<String>,
    /// The scheduled window that set `max`, if one did.
    max_window: Option<String>,
}

/// A shared budget's part in the decision.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct Grant {
    /// Replicas the budget shares across targets.
    total: u32,
    /// What this target asked for.
    wanted: u32,
    /// What it was granted.
    granted: u32,
}

/// What the policies decided from.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct Inputs {
    /// The count decisions start from (the count last asked for, or running).
    replicas: u32,
    /// The last complete observation of the request rate, requests/s.
    demand_rps: Option<f64>,
    /// Latency against its objective, when both are known and fresh.
    latency: Option<Latency>,
    /// Whether a signal was missing or stale (no scale-in).
    degraded: bool,
    /// Requests/s one replica serves within its SLO; null when unknown.
    capacity_rps: Option<f64>,
    /// Where that capacity comes from.
    capacity_source: Option<CapacitySource>,
    /// The share of capacity the demand policy plans each replica at.
    target_utilization: f64,
    /// The share of capacity the prediction policy plans each replica at.
    prediction_utilization: f64,
    /// Share of the prediction interval above the point forecast planned for (1: the upper
    /// bound).
    interval_share: f64,
    /// The policies hold within `1 ± tolerance` of the count.
    tolerance: f64,
    /// Seconds ahead the prediction covers (start-up + interval).
    lookahead: i64,
    /// The highest upper forecast within the look-ahead.
    peak: Option<Peak>,
    /// Requests/s added to the peak as headroom.
    headroom_rps: f64,
    /// The bounds in force.
    bounds: Bounds,
    /// The shared budget's grant, with `[budget]`.
    budget: Option<Grant>,
    /// A change of the running count someone else made, observed at this decision: the
    /// decision starts from the count it changed to (code `External` among the clamps).
    external: Option<ExternalChange>,
}

/// A change of the running count prescale did not ask for, as observed.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct ExternalChange {
    /// The count observed before it.
    from: u32,
    /// The count observed after it.
    to: u32,
    /// When it was observed (Unix s).
    at: i64,
}

/// Why a decision's count is what it is.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct Explain {
    /// The target.
    target: String,
    /// When the decision was made (Unix s).
    at: i64,
    /// Replicas before.
    from: u32,
    /// Replicas asked for.
    to: u32,
    /// What the policies decided from.
    inputs: Inputs,
    /// Every policy's recommendation.
    policies: Vec<Recommendation>,
    /// Each clamp or condition after the policies, in the order applied.
    clamps: Vec<Clamp>,
}

impl From<&core::Inputs> for Inputs {
    fn from(i: &core::Inputs) -> Self {
        Self {
            replicas: i.replicas,
            demand_rps: i.demand_rps,
            latency: i.latency.map(|l| Latency {
                p95: l.p95,
                slo: l.slo,
                rps_per_replica_at_slo: l.rps_per_replica_at_slo,
                replicas: l.replicas,
            }),
            degraded: i.degraded,
            capacity_rps: i.capacity_rps,
            capacity_source: i.capacity_source.map(CapacitySource::from),
            target_utilization: i.target_utilization,
            prediction_utilization: i.prediction_utilization,
            interval_share: i.interval_share,
            tolerance: i.tolerance,
            lookahead: i.lookahead,
            peak: i.peak.map(Peak::from),
            headroom_rps: i.headroom_rps,
            bounds: Bounds {
                min: i.bounds.min,
                max: i.bounds.max,
                min_window: i.bounds.min_window.clone(),
                max_window: i.bounds.max_window.clone(),
            },
            budget: i.budget.map(|g| Grant {
                total: g.total,
                wanted: g.wanted,
                granted: g.granted,
            }),
            external: i.external.map(|c| ExternalChange {
                from: c.from,
                to: c.to,
                at: c.at,
            }),
        }
    }
}

impl Explain {
    fn new(target: &str, d: &crate::decide::Decision, e: &core::Explain) -> Self {
        Self {
            target: target.to_owned(),
            at: d.at,
            from: d.from,
            to: d.to,
            inputs: Inputs::from(&e.inputs),
            policies: e.policies.iter().map(recommendation).collect(),
            clamps: e
                .clamps
                .iter()
                .map(|c| Clamp {
                    code: c.code.to_string(),
                    from: c.from,
                    to: c.to,
                    message: c.message.clone(),
                })
                .collect(),
        }
    }
}

fn recommendation(r: &core::Recommendation) -> Recommendation {
    Recommendation {
        policy: match r.policy {
            core::PolicyKind::Prediction => PolicyKind::Prediction,
            core::PolicyKind::Demand => PolicyKind::Demand,
            core::PolicyKind::Performance => PolicyKind::Performance,
        },
        replicas: r.replicas,
        chosen: r.chosen,
        message: r.message.clone(),
    }
}

/// Every policy's recommendation with its inputs (observation, forecast peak and upper
/// bound, capacity and its source, schedule window, budget grant), then each clamp in the
/// order applied, with the count before and after it. Kept for each target's ten newest
/// decision records; `{at}` is a decision's `at` or `latest`.
#[utoipa::path(get, path = "/api/v1/targets/{name}/decisions/{at}/explain", tag = "decisions",
    params(("name" = String, Path, description = "Target name"),
        ("at" = String, Path, description = "The decision's `at` (Unix s) from the decision log, or `latest`")),
    security((), ("bearer" = [])),
    responses((status = 200, body = Explain), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 502, description = "`[cluster]`: another instance owns the target and did not answer (`owner_unreachable`)", body = ErrorBody)))]
pub(super) async fn explain(
    State(store): State<Store>,
    Path((name, at)): Path<(String, String)>,
) -> Result<Json<Explain>, ApiError> {
    let at = match at.as_str() {
        "latest" => None,
        s => Some(s.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!(
                "`{s}` is not a decision time: expected Unix seconds (a decision's `at`) or `latest`"
            ))
        })?),
    };
    if store.target(&name).is_none() {
        return Err(ApiError::unknown_target(&name));
    }
    let record = store.decision_at(&name, at).ok_or_else(|| {
        let what = at.map_or_else(
            || "no decision yet".to_owned(),
            |at| format!("no decision at {at}"),
        );
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_decision",
            format!("target `{name}` has {what} (see /api/v1/decisions?target={name})"),
        )
    })?;
    let e = record.explain.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "explain_expired",
            format!(
                "the explanation of `{name}`'s decision at {} is no longer kept: only the newest decisions' are",
                record.decision.at
            ),
        )
    })?;
    Ok(Json(Explain::new(&name, &record.decision, e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::config::TargetConfig;
    use crate::decide::{self, DecideState, Observed};

    /// The view serialises exactly as the core type (plus the decision it explains).
    #[test]
    fn the_view_matches_the_core_explanation() {
        let target = TargetConfig::example("web", 10.0, Duration::from_secs(240));
        let policy = decide::Policy {
            max_replicas: 5,
            ..target.policy()
        };
        let observed = Observed::demand(3, Some(90.0));
        let mut state = DecideState::default();
        let (d, e) = decide::decide_explained(&policy, None, observed, &mut state, 600);
        let view = serde_json::to_value(Explain::new("web", &d, &e)).expect("json");
        let core = serde_json::to_value(&e).expect("json");
        for key in ["inputs", "policies", "clamps"] {
            assert_eq!(view[key], core[key], "{key}");
        }
        assert_eq!(
            (view["from"].as_u64(), view["to"].as_u64()),
            (Some(3), Some(5))
        );
        // 90 rps at 7 per replica: 13 recommended, then clamped down to max_replicas 5.
        let clamps = view["clamps"].as_array().expect("clamps");
        assert_eq!(clamps[0]["from"], 13, "{clamps:?}");
        let last = clamps.last().expect("a clamp");
        assert_eq!(
            (&last["code"], &last["to"]),
            (&"TooManyReplicas".into(), &5.into())
        );
        let chosen: Vec<_> = view["policies"]
            .as_array()
            .expect("policies")
            .iter()
            .filter(|p| p["chosen"] == true)
            .map(|p| p["policy"].clone())
            .collect();
        assert_eq!(chosen, ["demand"]);
    }

    fn explained(store: &Store, at: i64, demand: f64) {
        let policy = TargetConfig::example("web", 10.0, Duration::from_secs(60)).policy();
        let observed = Observed::demand(2, Some(demand));
        let mut state = DecideState::default();
        let (d, e) = decide::decide_explained(&policy, None, observed, &mut state, at);
        let record = crate::store::DecisionRecord::new("web", d, crate::config::Mode::Act);
        store.record_decision(record.explained(e));
    }

    #[tokio::test]
    async fn explains_a_kept_decision_and_says_why_not_otherwise() {
        use crate::api::tests::{get, store};
        let s = store();
        let (st, b) = get(&s, "/api/v1/targets/web/decisions/latest/explain").await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("unknown_decision")),
            "{b}"
        );
        // Alternate the demand so every decision is a record of its own.
        for k in 0..12 {
            explained(&s, 60 * k, if k % 2 == 0 { 15.0 } else { 45.0 });
        }
        let (st, b) = get(&s, "/api/v1/targets/web/decisions/660/explain").await;
        assert_eq!(st, StatusCode::OK, "{b}");
        assert_eq!(
            (b["target"].as_str(), b["at"].as_i64()),
            (Some("web"), Some(660))
        );
        assert_eq!(b["inputs"]["demand_rps"].as_f64(), Some(45.0), "{b}");
        assert_eq!(b["policies"].as_array().map(Vec::len), Some(3), "{b}");
        let (_, latest) = get(&s, "/api/v1/targets/web/decisions/latest/explain").await;
        assert_eq!(latest, b);
        let (st, b) = get(&s, "/api/v1/targets/web/decisions/0/explain").await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("explain_expired")),
            "{b}"
        );
        let (st, b) = get(&s, "/api/v1/targets/web/decisions/61/explain").await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("unknown_decision")),
            "{b}"
        );
        let (st, b) = get(&s, "/api/v1/targets/web/decisions/yesterday/explain").await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "{b}"
        );
        let (st, b) = get(&s, "/api/v1/targets/nope/decisions/latest/explain").await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{b}");
    }

    /// A run of equal holds is one record whose `at` moves on as holds fold into it: the
    /// `at` a listing gave is still explained after the next hold folds in (it once
    /// answered 404), as is any `at` within the run; one before it is not.
    #[tokio::test]
    async fn a_folded_hold_is_explained_by_any_at_within_it() {
        use crate::api::tests::{get, store};
        let s = store();
        let held = |at: i64| {
            let policy = TargetConfig::example("web", 10.0, Duration::from_secs(60)).policy();
            let observed = Observed::demand(2, Some(15.0));
            let mut state = DecideState::default();
            let (d, e) = decide::decide_explained(&policy, None, observed, &mut state, at);
            // Held at the count decided: the same count and reasons each time.
            let d = crate::decide::Decision { from: d.to, ..d };
            let record = crate::store::DecisionRecord::new("web", d, crate::config::Mode::Act);
            s.record_decision(record.explained(e));
        };
        held(0);
        held(60);
        let (_, list) = get(&s, "/api/v1/decisions?target=web").await;
        let listed = list["decisions"][0]["at"].as_i64().expect("an at");
        assert_eq!(listed, 60, "{list}");
        held(120);
        for at in [listed, 0, 90, 120] {
            let (st, b) = get(&s, &format!("/api/v1/targets/web/decisions/{at}/explain")).await;
            assert_eq!(st, StatusCode::OK, "{at}: {b}");
            assert_eq!(b["at"].as_i64(), Some(120), "the run's newest: {b}");
        }
        let (st, b) = get(&s, "/api/v1/targets/web/decisions/180/explain").await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{b}");
    }
}
