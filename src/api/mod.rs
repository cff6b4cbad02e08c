//! The HTTP API: health, readiness, metrics, targets, forecasts and decisions.
//!
//! [`router`] builds the whole API over a [`Store`]; handlers only read it (forecasts for a
//! requested horizon are computed from a copy of the stored series, outside the lock).
//! Every error is JSON `{"error": {"code", "message"}}` through [`ApiError`].

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::decide::Decision;
use crate::forecast::bottleneck::Bottleneck;
use crate::forecast::capacity::Capacity;
use crate::forecast::{self, History, ModelInfo, Point};
use crate::pipeline::unix_now;
use crate::store::{DecisionRecord, DeliveryRecord, InstanceStats, SignalHealth, Store};

/// The longest forecast horizon served.
const MAX_HORIZON: Duration = Duration::from_secs(7 * 86_400);
/// Decisions listed when no `limit` is given.
const DEFAULT_LIMIT: usize = 50;
/// The most decisions one request may list.
const MAX_LIMIT: usize = 1_000;

/// An API error: an HTTP status, a stable code and a message for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn unknown_target(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_target",
            format!("no target named `{name}`"),
        )
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

/// The API over `store`.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/targets", get(targets))
        .route("/api/v1/targets/{name}", get(target))
        .route("/api/v1/targets/{name}/forecast", get(target_forecast))
        .route("/api/v1/decisions", get(decisions))
        .fallback(not_found)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(store)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 once every target has been backfilled, else 503 with the reasons. Degraded targets
/// are listed either way.
async fn readyz(State(store): State<Store>) -> Response {
    let now = unix_now();
    let mut waiting = Vec::new();
    let mut degraded = Vec::new();
    for name in store.names() {
        let Some(t) = store.target(name) else {
            continue;
        };
        if !t.backfilled {
            let why = t.degraded_reasons(now).join("; ");
            waiting.push(format!(
                "{name}: not backfilled yet{}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({why})")
                }
            ));
        }
        let reasons = t.degraded_reasons(now);
        if !reasons.is_empty() {
            degraded.push(json!({ "target": name, "reasons": reasons }));
        }
    }
    let ready = waiting.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": ready, "reasons": waiting, "degraded": degraded })),
    )
        .into_response()
}

async fn metrics(State(store): State<Store>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        store.metrics().encode(),
    )
        .into_response()
}

/// A target in the list.
#[derive(Debug, Serialize)]
struct TargetSummary {
    name: String,
    status: &'static str,
    mode: crate::config::Mode,
    replicas: u32,
    desired_replicas: Option<u32>,
    min_replicas: u32,
    max_replicas: u32,
}

async fn targets(State(store): State<Store>) -> Json<serde_json::Value> {
    let now = unix_now();
    let list: Vec<TargetSummary> = store
        .names()
        .filter_map(|name| {
            let t = store.target(name)?;
            Some(TargetSummary {
                name: name.to_owned(),
                status: t.status(now),
                mode: t.config.mode,
                replicas: t.replicas,
                desired_replicas: t.last_decision.as_ref().map(|d| d.to),
                min_replicas: t.config.min_replicas,
                max_replicas: t.config.max_replicas,
            })
        })
        .collect();
    Json(json!({ "targets": list }))
}

/// One target in detail.
#[derive(Debug, Serialize)]
struct TargetDetail {
    #[serde(flatten)]
    summary: TargetSummary,
    degraded_reasons: Vec<String>,
    /// The capacity per replica in use (configured or learned), if known.
    capacity_rps: Option<f64>,
    /// Where it comes from and why, with the learned curve.
    capacity: Option<Capacity>,
    /// The selected forecast model, its scores and its interval coverage.
    forecast_model: Option<ModelInfo>,
    /// The predicted bottleneck.
    bottleneck: Option<Bottleneck>,
    startup_seconds: u64,
    interval_seconds: u64,
    step_seconds: i64,
    demand_rps: Option<f64>,
    points: usize,
    signals: std::collections::BTreeMap<&'static str, SignalHealth>,
    last_decision: Option<Decision>,
    instances: std::collections::BTreeMap<String, InstanceStats>,
    weights: std::collections::BTreeMap<String, u32>,
    last_delivery: Option<DeliveryRecord>,
}

async fn target(
    State(store): State<Store>,
    Path(name): Path<String>,
) -> Result<Json<TargetDetail>, ApiError> {
    let now = unix_now();
    let t = store
        .target(&name)
        .ok_or_else(|| ApiError::unknown_target(&name))?;
    let c = &t.config;
    Ok(Json(TargetDetail {
        summary: TargetSummary {
            name: name.clone(),
            status: t.status(now),
            mode: c.mode,
            replicas: t.replicas,
            desired_replicas: t.last_decision.as_ref().map(|d| d.to),
            min_replicas: c.min_replicas,
            max_replicas: c.max_replicas,
        },
        degraded_reasons: t.degraded_reasons(now),
        capacity_rps: t
            .capacity
            .as_ref()
            .and_then(|c| c.effective_rps)
            .or(c.capacity_rps),
        capacity: t.capacity.clone(),
        forecast_model: t.forecaster.as_ref().and_then(|f| f.info()),
        bottleneck: t.bottleneck.clone(),
        startup_seconds: c.startup.as_secs(),
        interval_seconds: c.interval.as_secs(),
        step_seconds: c.step_secs(),
        demand_rps: t.rate.last().map(|s| s.value),
        points: t.rate.len(),
        signals: t
            .signals
            .iter()
            .map(|(s, h)| (s.as_str(), h.clone()))
            .collect(),
        last_decision: t.last_decision.clone(),
        instances: t.instances.clone(),
        weights: t.weights.clone(),
        last_delivery: t.last_delivery.clone(),
    }))
}

#[derive(Debug, Deserialize)]
struct ForecastQuery {
    horizon: Option<String>,
}

/// The forecast body.
#[derive(Debug, Serialize)]
struct ForecastBody {
    target: String,
    generated_at: i64,
    step_seconds: i64,
    model: &'static str,
    /// The model's settings and what it dropped.
    description: Option<String>,
    level: f64,
    points: Vec<Point>,
}

async fn target_forecast(
    State(store): State<Store>,
    Path(name): Path<String>,
    Query(q): Query<ForecastQuery>,
) -> Result<Json<ForecastBody>, ApiError> {
    let horizon = match q.horizon.as_deref() {
        None => Duration::from_secs(3_600),
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            ApiError::bad_request(format!(
                "horizon `{s}`: {e}; expected a duration such as 30m or 1h"
            ))
        })?,
    };
    if horizon.is_zero() || horizon > MAX_HORIZON {
        return Err(ApiError::bad_request(format!(
            "horizon `{}` is out of range; expected above 0 and at most {}",
            humantime::format_duration(horizon),
            humantime::format_duration(MAX_HORIZON)
        )));
    }
    let now = unix_now();
    let horizon_s = horizon.as_secs() as i64;
    // From the target's fitted forecaster when there is one (a forecast from its state is
    // cheap, so it is made under the lock); else fit one on a copy of the series, outside it.
    let (fitted, grid, step, level) = {
        let t = store
            .target(&name)
            .ok_or_else(|| ApiError::unknown_target(&name))?;
        let fitted = t.forecaster.as_ref().and_then(|f| {
            let fc = f.forecast(now, horizon_s).ok()?;
            Some((fc, f.info().map(|i| i.description)))
        });
        let grid = if fitted.is_none() {
            t.rate.to_grid()
        } else {
            None
        };
        let level = t.forecaster.as_ref().map_or(0.95, |f| f.settings().level);
        (fitted, grid, t.config.step_secs(), level)
    };
    let (f, description) = match (fitted, grid) {
        (Some(fitted), _) => fitted,
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_data",
                format!("target `{name}` has no request-rate data yet"),
            ));
        }
        (None, Some((start, values))) => {
            let f = forecast::forecast(
                History {
                    start,
                    step,
                    values: &values,
                },
                now,
                horizon_s,
                level,
            )
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_data",
                    format!("target `{name}`: {e}"),
                )
            })?;
            (f, None)
        }
    };
    let end = now + horizon.as_secs() as i64;
    Ok(Json(ForecastBody {
        target: name,
        generated_at: f.generated_at,
        step_seconds: f.step_seconds,
        model: f.model,
        description,
        level: f.level,
        points: f.until(end).copied().collect(),
    }))
}

#[derive(Debug, Deserialize)]
struct DecisionsQuery {
    target: Option<String>,
    limit: Option<String>,
}

async fn decisions(
    State(store): State<Store>,
    Query(q): Query<DecisionsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "limit `{s}`: expected a whole number from 1 to {MAX_LIMIT}"
                ))
            })?,
    };
    if let Some(t) = q.target.as_deref()
        && store.target(t).is_none()
    {
        return Err(ApiError::unknown_target(t));
    }
    let list: Vec<DecisionRecord> = store.decisions(q.target.as_deref(), limit);
    Ok(Json(json!({ "decisions": list })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TargetConfig;
    use crate::metrics::Metrics;
    use crate::series::Sample;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn store() -> Store {
        let t = TargetConfig::example("web", 10.0, Duration::from_secs(60));
        let store = Store::new(&[t], Metrics::new());
        let now = unix_now() / 60 * 60;
        {
            let mut s = store.target("web").unwrap();
            s.rate.extend((0..120).map(|k| Sample {
                ts: now - 60 * (119 - k),
                value: 42.0,
            }));
            s.backfilled = true;
        }
        store
    }

    async fn get(store: &Store, uri: &str) -> (StatusCode, serde_json::Value) {
        let res = router(store.clone())
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn errors_are_json_with_codes() {
        let s = store();
        let check = |status: StatusCode, code: &'static str, body: serde_json::Value| {
            assert_eq!(body["error"]["code"], code, "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
            status
        };
        let (st, b) = get(&s, "/api/v1/targets/nope").await;
        assert_eq!(check(st, "unknown_target", b), StatusCode::NOT_FOUND);
        let (st, b) = get(&s, "/api/v1/targets/nope/forecast").await;
        assert_eq!(check(st, "unknown_target", b), StatusCode::NOT_FOUND);
        for bad in ["horizon=abc", "horizon=0s", "horizon=30d"] {
            let (st, b) = get(&s, &format!("/api/v1/targets/web/forecast?{bad}")).await;
            assert_eq!(
                check(st, "bad_request", b),
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        for bad in ["limit=0", "limit=x", "limit=100000"] {
            let (st, b) = get(&s, &format!("/api/v1/decisions?{bad}")).await;
            assert_eq!(
                check(st, "bad_request", b),
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        let (st, b) = get(&s, "/api/v1/decisions?target=nope").await;
        assert_eq!(check(st, "unknown_target", b), StatusCode::NOT_FOUND);
        let (st, b) = get(&s, "/nowhere").await;
        assert_eq!(check(st, "not_found", b), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn forecast_covers_the_horizon() {
        let s = store();
        let (st, b) = get(&s, "/api/v1/targets/web/forecast?horizon=30m").await;
        assert_eq!(st, StatusCode::OK, "{b}");
        assert_eq!(b["target"], "web");
        assert_eq!(b["step_seconds"], 60);
        let points = b["points"].as_array().unwrap();
        let generated = b["generated_at"].as_i64().unwrap();
        let last = points.last().unwrap()["timestamp"].as_i64().unwrap();
        assert!(
            last <= generated + 1800 && last > generated + 1800 - 60,
            "{last} vs {generated}"
        );
        for p in points {
            let (v, lo, hi) = (
                p["value"].as_f64().unwrap(),
                p["lower"].as_f64().unwrap(),
                p["upper"].as_f64().unwrap(),
            );
            assert!(lo <= v && v <= hi && (v - 42.0).abs() < 1e-9, "{p}");
        }
    }

    #[tokio::test]
    async fn readiness_waits_for_backfill() {
        let s = store();
        assert_eq!(get(&s, "/readyz").await.0, StatusCode::OK);
        s.target("web").unwrap().backfilled = false;
        let (st, b) = get(&s, "/readyz").await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            b["reasons"][0]
                .as_str()
                .unwrap()
                .contains("web: not backfilled"),
            "{b}"
        );
    }
}
