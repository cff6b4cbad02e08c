//! The HTTP API: health, readiness, metrics, targets, forecasts, decisions, the deliveries
//! in the outbox (listed, and dead ones retried), the dashboard, and the OpenAPI document
//! that describes it all (`GET /api/v1/openapi.json`).
//!
//! [`router`] builds the whole API over a [`Store`]. Read handlers only read it (forecasts
//! for a requested horizon are computed from a copy of the stored series, outside the
//! lock); the few mutating ones (pause, resume, refit) set a flag the pipeline reads, and
//! always need the API token ([`ApiAuth`]). Every error is JSON
//! `{"error": {"code", "message"}}` through [`ApiError`], bad query parameters included.

use std::time::Duration;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, OpenApi, ToSchema};

mod auth;
mod dashboard;

pub use auth::ApiAuth;

use crate::act::outbox::{Delivery, DeliveryState, OutboxError};
use crate::decide::Decision;
use crate::forecast::bottleneck::Bottleneck;
use crate::forecast::capacity::Capacity;
use crate::forecast::{self, History, ModelInfo, Point};
use crate::series::Sample;
use crate::store::{DecisionRecord, DeliveryRecord, InstanceStats, SignalHealth, Store};

/// The longest forecast horizon served.
const MAX_HORIZON: Duration = Duration::from_secs(7 * 86_400);
/// Items listed when no `limit` is given.
const DEFAULT_LIMIT: usize = 50;
/// The most items one request may list.
const MAX_LIMIT: usize = 1_000;
/// The most deliveries one request may list.
const MAX_DELIVERY_LIMIT: usize = 10_000;

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

/// The JSON body of every error.
#[derive(Debug, Serialize, ToSchema)]
struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
struct ErrorDetail {
    /// Stable code: `bad_request`, `unknown_target`, `not_found`, `no_data`,
    /// `unauthorized`, `forbidden`.
    code: String,
    /// For people.
    message: String,
}

/// Query parameters, deserialised strictly: an unknown or malformed parameter is a 400
/// with a JSON error, like every other error.
struct ApiQuery<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// Parses an optional `limit` (1..=MAX_LIMIT) and `offset`.
fn page(limit: Option<&str>, offset: Option<&str>) -> Result<(usize, usize), ApiError> {
    let limit = match limit {
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
    let offset = match offset {
        None => 0,
        Some(s) => s.parse::<usize>().map_err(|_| {
            ApiError::bad_request(format!("offset `{s}`: expected a whole number from 0"))
        })?,
    };
    Ok((limit, offset))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

/// The API over `store`, guarded by `auth`.
pub fn router(store: Store, auth: ApiAuth) -> Router {
    routes(store, auth).0
}

/// A router that remembers the method and path of every route it serves, so that a test
/// can hold them to the OpenAPI document.
struct Routes {
    router: Router<Store>,
    list: Vec<(&'static str, &'static str)>,
}

impl Routes {
    fn new() -> Self {
        Self {
            router: Router::new(),
            list: Vec::new(),
        }
    }

    fn get<H: axum::handler::Handler<T, Store>, T: 'static>(
        mut self,
        path: &'static str,
        h: H,
    ) -> Self {
        self.router = self.router.route(path, get(h));
        self.list.push(("get", path));
        self
    }

    fn post<H: axum::handler::Handler<T, Store>, T: 'static>(
        mut self,
        path: &'static str,
        h: H,
    ) -> Self {
        self.router = self.router.route(path, post(h));
        self.list.push(("post", path));
        self
    }

    fn merge(mut self, other: Routes, layer: impl FnOnce(Router<Store>) -> Router<Store>) -> Self {
        self.router = self.router.merge(layer(other.router));
        self.list.extend(other.list);
        self
    }
}

/// The router and the (method, path) of each documented route.
fn routes(store: Store, auth: ApiAuth) -> (Router, Vec<(&'static str, &'static str)>) {
    let auth = Arc::new(auth);
    let reads = Routes::new()
        .get("/api/v1/targets", targets)
        .get("/api/v1/targets/{name}", target)
        .get("/api/v1/targets/{name}/forecast", target_forecast)
        .get("/api/v1/targets/{name}/history", target_history)
        .get("/api/v1/targets/{name}/bottleneck", target_bottleneck)
        .get("/api/v1/decisions", decisions)
        .get("/api/v1/deliveries", deliveries)
        .get("/api/v1/deliveries/{id}", delivery);
    let writes = Routes::new()
        .post("/api/v1/targets/{name}/pause", pause)
        .post("/api/v1/targets/{name}/resume", resume)
        .post("/api/v1/targets/{name}/refit", refit)
        .post("/api/v1/deliveries/{id}/retry", retry_delivery);
    let read_auth = auth.clone();
    let all = Routes::new()
        .get("/healthz", healthz)
        .get("/readyz", readyz)
        .get("/metrics", metrics)
        .get("/api/v1/openapi.json", openapi)
        .merge(reads, |r| {
            r.route_layer(middleware::from_fn_with_state(
                read_auth,
                auth::require_token_for_reads,
            ))
        })
        .merge(writes, |r| {
            r.route_layer(middleware::from_fn_with_state(auth, auth::require_token))
        });
    let router = all
        .router
        .merge(dashboard::routes())
        .fallback(not_found)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(store);
    (router, all.list)
}

/// The OpenAPI document: every route of [`router`] (a test holds them to it).
#[derive(OpenApi)]
#[openapi(
    info(title = "prescale", description = "Predictive autoscaler: forecasts, bottlenecks and decisions."),
    paths(healthz, readyz, metrics, openapi, targets, target, target_forecast, target_history, target_bottleneck, decisions,
        deliveries, delivery, retry_delivery, pause, resume, refit),
    components(schemas(ErrorBody, ErrorDetail, TargetSummary, TargetList, TargetDetail, QualityBody, BottleneckBody, ForecastBody, HistoryBody, DecisionList, Action)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "This document", content_type = "application/json")))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "The process runs", body = Object, example = json!({"status": "ok"}))))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 once every target has been backfilled, else 503 with the reasons. Degraded targets
/// are listed either way.
#[utoipa::path(get, path = "/readyz", tag = "meta", responses(
    (status = 200, description = "Every target is backfilled; degraded ones are listed", body = Object),
    (status = 503, description = "Some target is not backfilled yet; `reasons` says which and why", body = Object)))]
async fn readyz(State(store): State<Store>) -> Response {
    let now = store.now();
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

#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "prescale's own metrics", content_type = "application/openmetrics-text")))]
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
#[derive(Debug, Serialize, ToSchema)]
struct TargetSummary {
    name: String,
    /// `backfilling`, `degraded`, `paused`, `budget-limited` or `ok`.
    status: &'static str,
    /// `act` or `forecast-only`.
    #[schema(value_type = String)]
    mode: crate::config::Mode,
    /// Whether acting is paused by `POST …/pause`.
    paused: bool,
    replicas: u32,
    desired_replicas: Option<u32>,
    min_replicas: u32,
    max_replicas: u32,
}

/// A page of targets.
#[derive(Debug, Serialize, ToSchema)]
struct TargetList {
    targets: Vec<TargetSummary>,
    /// How many targets there are in all.
    total: usize,
    /// The `offset` of the next page, if any.
    next_offset: Option<usize>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    /// At most this many (1 to 1000, default 50).
    limit: Option<String>,
    /// Skip this many (default 0).
    offset: Option<String>,
}

fn summary(name: &str, t: &crate::store::TargetState, now: i64) -> TargetSummary {
    TargetSummary {
        name: name.to_owned(),
        status: t.status(now).as_str(),
        mode: t.config.mode,
        paused: t.paused,
        replicas: t.replicas,
        desired_replicas: t.last_decision.as_ref().map(|d| d.to),
        min_replicas: t.config.min_replicas,
        max_replicas: t.config.max_replicas,
    }
}

#[utoipa::path(get, path = "/api/v1/targets", tag = "targets", params(PageQuery),
    security((), ("bearer" = [])),
    responses((status = 200, body = TargetList), (status = 400, body = ErrorBody)))]
async fn targets(
    State(store): State<Store>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<TargetList>, ApiError> {
    let (limit, offset) = page(q.limit.as_deref(), q.offset.as_deref())?;
    let now = store.now();
    let names: Vec<&str> = store.names().collect();
    let total = names.len();
    let targets = names
        .into_iter()
        .skip(offset)
        .take(limit)
        .filter_map(|name| Some(summary(name, &*store.target(name)?, now)))
        .collect();
    let next_offset = (offset + limit < total).then_some(offset + limit);
    Ok(Json(TargetList {
        targets,
        total,
        next_offset,
    }))
}

/// One target in detail.
#[derive(Debug, Serialize, ToSchema)]
struct TargetDetail {
    #[serde(flatten)]
    summary: TargetSummary,
    degraded_reasons: Vec<String>,
    /// The capacity per replica in use (configured or learned), if known.
    capacity_rps: Option<f64>,
    /// Where it comes from and why, with the learned curve.
    #[schema(value_type = Option<Object>)]
    capacity: Option<Capacity>,
    /// The selected forecast model, its scores and its interval coverage.
    #[schema(value_type = Option<Object>)]
    forecast_model: Option<ModelInfo>,
    /// The predicted bottleneck: `{signal, at, seconds_to_breach, shortfall, headroom_now, …}`.
    #[schema(value_type = Option<Object>)]
    bottleneck: Option<Bottleneck>,
    startup_seconds: u64,
    interval_seconds: u64,
    step_seconds: i64,
    demand_rps: Option<f64>,
    points: usize,
    /// Per signal: newest sample, last poll, last error.
    #[schema(value_type = Object)]
    signals: std::collections::BTreeMap<&'static str, SignalHealth>,
    /// The last decision with its reasons.
    #[schema(value_type = Option<Object>)]
    last_decision: Option<Decision>,
    /// The latest per-instance observations.
    #[schema(value_type = Object)]
    instances: std::collections::BTreeMap<String, InstanceStats>,
    /// The last balancer weights.
    weights: std::collections::BTreeMap<String, u32>,
    /// Drained instances and why (failover).
    drained: std::collections::BTreeMap<String, String>,
    /// The last delivery's outcome.
    #[schema(value_type = Option<Object>)]
    last_delivery: Option<DeliveryRecord>,
    /// How the request-rate forecasts did lately.
    forecast_quality: QualityBody,
}

/// Rolling forecast quality.
#[derive(Debug, Serialize, ToSchema)]
struct QualityBody {
    /// Mean absolute error, requests/s.
    mae_rps: Option<f64>,
    /// Share of observations inside the prediction interval.
    interval_coverage: Option<f64>,
    /// Observations scored.
    points: usize,
}

#[utoipa::path(get, path = "/api/v1/targets/{name}", tag = "targets",
    params(("name" = String, Path, description = "Target name")),
    security((), ("bearer" = [])),
    responses((status = 200, body = TargetDetail), (status = 404, body = ErrorBody)))]
async fn target(
    State(store): State<Store>,
    Path(name): Path<String>,
) -> Result<Json<TargetDetail>, ApiError> {
    let now = store.now();
    let t = store
        .target(&name)
        .ok_or_else(|| ApiError::unknown_target(&name))?;
    let c = &t.config;
    Ok(Json(TargetDetail {
        summary: summary(&name, &t, now),
        degraded_reasons: t.degraded_reasons(now),
        capacity_rps: t
            .memory
            .capacity
            .as_ref()
            .and_then(|c| c.effective_rps)
            .or(c.capacity_rps),
        capacity: t.memory.capacity.clone(),
        forecast_model: t.memory.forecaster.as_ref().and_then(|f| f.info()),
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
        weights: t.memory.weights.clone(),
        drained: t.memory.drained.clone(),
        last_delivery: t.last_delivery.clone(),
        forecast_quality: QualityBody {
            mae_rps: t.forecast_quality.mae(),
            interval_coverage: t.forecast_quality.coverage(),
            points: t.forecast_quality.len(),
        },
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct ForecastQuery {
    /// How far ahead, e.g. `30m` (default `1h`, at most `7d`).
    horizon: Option<String>,
}

/// The forecast body.
#[derive(Debug, Serialize, ToSchema)]
struct ForecastBody {
    target: String,
    generated_at: i64,
    step_seconds: i64,
    model: &'static str,
    /// The model's settings and what it dropped.
    description: Option<String>,
    level: f64,
    /// `{timestamp, value, lower, upper}` per step.
    #[schema(value_type = Vec<Object>)]
    points: Vec<Point>,
}

#[utoipa::path(get, path = "/api/v1/targets/{name}/forecast", tag = "targets",
    params(("name" = String, Path, description = "Target name"), ForecastQuery),
    security((), ("bearer" = [])),
    responses((status = 200, body = ForecastBody), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, description = "No data yet", body = ErrorBody)))]
async fn target_forecast(
    State(store): State<Store>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ForecastQuery>,
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
    let now = store.now();
    let horizon_s = horizon.as_secs() as i64;
    // From the target's fitted forecaster when there is one (a forecast from its state is
    // cheap, so it is made under the lock); else fit one on a copy of the series, outside it.
    let (fitted, grid, step, level) = {
        let t = store
            .target(&name)
            .ok_or_else(|| ApiError::unknown_target(&name))?;
        let fitted = t.memory.forecaster.as_ref().and_then(|f| {
            let fc = f.forecast(now, horizon_s).ok()?;
            Some((fc, f.info().map(|i| i.description)))
        });
        let grid = if fitted.is_none() {
            t.rate.to_grid()
        } else {
            None
        };
        let level = t
            .memory
            .forecaster
            .as_ref()
            .map_or(0.95, |f| f.settings().level);
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

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    /// `rate` (default), `latency` or `replicas`.
    signal: Option<String>,
    /// A duration back from now (e.g. `6h`, default `24h`) or a Unix timestamp.
    since: Option<String>,
}

/// An observed series.
#[derive(Debug, Serialize, ToSchema)]
struct HistoryBody {
    target: String,
    signal: &'static str,
    /// `{timestamp, value}` per sample.
    #[schema(value_type = Vec<Object>)]
    points: Vec<Sample>,
}

/// The observed series of one signal since a time: `since` is a duration back from now
/// (`6h`, default `24h`) or a Unix timestamp. `signal=replicas` is the replica count the
/// target had at each decision (observed, or asked for without a `replicas` query).
#[utoipa::path(get, path = "/api/v1/targets/{name}/history", tag = "targets",
    params(("name" = String, Path, description = "Target name"), HistoryQuery),
    security((), ("bearer" = [])),
    responses((status = 200, body = HistoryBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn target_history(
    State(store): State<Store>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryBody>, ApiError> {
    let now = store.now();
    let since = match q.since.as_deref() {
        None => now - 86_400,
        Some(s) => match s.parse::<i64>() {
            Ok(ts) if ts >= 0 => ts,
            _ => humantime::parse_duration(s).map(|d| now - d.as_secs() as i64).map_err(|_| {
                ApiError::bad_request(format!(
                    "since `{s}`: expected a duration back from now (e.g. 6h) or a Unix timestamp"
                ))
            })?,
        },
    };
    let signal = match q.signal.as_deref().unwrap_or("rate") {
        "rate" => "rate",
        "latency" => "latency",
        "replicas" => "replicas",
        other => {
            return Err(ApiError::bad_request(format!(
                "signal `{other}`: expected one of rate, latency, replicas"
            )));
        }
    };
    let t = store
        .target(&name)
        .ok_or_else(|| ApiError::unknown_target(&name))?;
    let series = match signal {
        "rate" => &t.rate,
        "latency" => &t.latency,
        _ => &t.replicas_history,
    };
    let points = series.since(since).copied().collect();
    Ok(Json(HistoryBody {
        target: name.clone(),
        signal,
        points,
    }))
}

/// The predicted bottleneck of a target.
#[derive(Debug, Serialize, ToSchema)]
struct BottleneckBody {
    target: String,
    /// When it was predicted (the target's last cycle), Unix s.
    predicted_at: Option<i64>,
    /// `{replicas, capacity_rps, headroom_now_rps, utilisation_now, horizon_end, breach}`;
    /// `breach` is `{at, seconds_to_breach, signal, expected_shortfall_rps,
    /// upper_shortfall_rps, predicted_latency_seconds}`, or null when none is predicted
    /// within the horizon. Null until capacity and a forecast are known.
    #[schema(value_type = Option<Object>)]
    bottleneck: Option<Bottleneck>,
}

/// The first predicted breach of capacity or of the latency SLO within the horizon, with
/// the headroom now.
#[utoipa::path(get, path = "/api/v1/targets/{name}/bottleneck", tag = "targets",
    params(("name" = String, Path, description = "Target name")),
    security((), ("bearer" = [])),
    responses((status = 200, body = BottleneckBody), (status = 404, body = ErrorBody)))]
async fn target_bottleneck(
    State(store): State<Store>,
    Path(name): Path<String>,
) -> Result<Json<BottleneckBody>, ApiError> {
    let t = store
        .target(&name)
        .ok_or_else(|| ApiError::unknown_target(&name))?;
    Ok(Json(BottleneckBody {
        predicted_at: t.last_decision.as_ref().map(|d| d.at),
        bottleneck: t.bottleneck.clone(),
        target: name.clone(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct DecisionsQuery {
    /// Only this target's decisions.
    target: Option<String>,
    /// At most this many (1 to 1000, default 50).
    limit: Option<String>,
    /// Skip this many of the newest (default 0).
    offset: Option<String>,
}

/// A page of decisions, newest first.
#[derive(Debug, Serialize, ToSchema)]
struct DecisionList {
    /// Each: `target`, `at`, `from`, `to`, `reasons` [{code, message}], `peak`, `mode`.
    #[schema(value_type = Vec<Object>)]
    decisions: Vec<DecisionRecord>,
    /// How many match in all (within the retained log).
    total: usize,
    /// The `offset` of the next page, if any.
    next_offset: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/decisions", tag = "decisions", params(DecisionsQuery),
    security((), ("bearer" = [])),
    responses((status = 200, body = DecisionList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn decisions(
    State(store): State<Store>,
    ApiQuery(q): ApiQuery<DecisionsQuery>,
) -> Result<Json<DecisionList>, ApiError> {
    let (limit, offset) = page(q.limit.as_deref(), q.offset.as_deref())?;
    if let Some(t) = q.target.as_deref()
        && store.target(t).is_none()
    {
        return Err(ApiError::unknown_target(t));
    }
    let (decisions, total) = store.decisions(q.target.as_deref(), offset, limit);
    let next_offset = (offset + limit < total).then_some(offset + limit);
    Ok(Json(DecisionList {
        decisions,
        total,
        next_offset,
    }))
}

/// The answer of a mutating endpoint.
#[derive(Debug, Serialize, ToSchema)]
struct Action {
    target: String,
    /// `paused`, `resumed` or `refit_scheduled`.
    action: &'static str,
}

/// Sets a flag on a target, answering 404 for an unknown one.
fn act_on(
    store: &Store,
    name: String,
    action: &'static str,
    f: impl FnOnce(&mut crate::store::TargetState),
) -> Result<Json<Action>, ApiError> {
    let mut t = store
        .target(&name)
        .ok_or_else(|| ApiError::unknown_target(&name))?;
    f(&mut t);
    drop(t);
    tracing::info!(target = %name, action, "API action");
    Ok(Json(Action {
        target: name,
        action,
    }))
}

/// Stops acting on a target: it still polls, forecasts and decides, but sends nothing.
#[utoipa::path(post, path = "/api/v1/targets/{name}/pause", tag = "actions",
    params(("name" = String, Path, description = "Target name")), security(("bearer" = [])),
    responses((status = 200, body = Action), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn pause(
    State(store): State<Store>,
    Path(name): Path<String>,
) -> Result<Json<Action>, ApiError> {
    act_on(&store, name, "paused", |t| t.paused = true)
}

/// Acts on a paused target again.
#[utoipa::path(post, path = "/api/v1/targets/{name}/resume", tag = "actions",
    params(("name" = String, Path, description = "Target name")), security(("bearer" = [])),
    responses((status = 200, body = Action), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn resume(
    State(store): State<Store>,
    Path(name): Path<String>,
) -> Result<Json<Action>, ApiError> {
    act_on(&store, name, "resumed", |t| t.paused = false)
}

/// Refits the target's forecast models at its next cycle.
#[utoipa::path(post, path = "/api/v1/targets/{name}/refit", tag = "actions",
    params(("name" = String, Path, description = "Target name")), security(("bearer" = [])),
    responses((status = 200, body = Action), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn refit(
    State(store): State<Store>,
    Path(name): Path<String>,
) -> Result<Json<Action>, ApiError> {
    act_on(&store, name, "refit_scheduled", |t| {
        t.refit_requested = true
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    /// `pending`, `delivered`, `dead` or `superseded`.
    state: Option<String>,
    /// Only this target's deliveries.
    target: Option<String>,
    /// At most this many (1 to 10000, default 50).
    limit: Option<String>,
    /// Skip this many of the newest (default 0).
    offset: Option<String>,
}

/// A delivery as the API shows it: times in Unix seconds, the body as JSON.
fn delivery_view(d: &Delivery) -> serde_json::Value {
    let secs = |ms: i64| ms as f64 / 1000.0;
    json!({
        "id": d.id,
        "target": d.target,
        "kind": d.kind,
        "state": d.state,
        "outcome": d.outcome,
        "idempotency_key": d.idempotency_key,
        "attempts": d.attempts,
        "created_at": secs(d.created_at_ms),
        "next_attempt_at": (d.state == DeliveryState::Pending).then(|| secs(d.next_attempt_ms)),
        "finished_at": d.finished_at_ms.map(secs),
        "last_error": d.last_error,
        "last_status": d.last_status,
        "response_body": d.response_body,
        "superseded_by": d.superseded_by,
        "body": serde_json::from_str::<serde_json::Value>(&d.body)
            .unwrap_or_else(|_| serde_json::Value::String(d.body.clone())),
    })
}

fn outbox_error(e: OutboxError) -> ApiError {
    match e {
        OutboxError::NotFound(id) => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_delivery",
            format!("no delivery with id {id}"),
        ),
        e @ OutboxError::NotDead { .. } => {
            ApiError::new(StatusCode::CONFLICT, "not_dead", e.to_string())
        }
        e => {
            tracing::error!(error = %e, "outbox error in the API");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage",
                "the outbox could not be read or written; see the server log",
            )
        }
    }
}

fn outbox(store: &Store) -> Result<crate::act::outbox::Outbox, ApiError> {
    store.outbox().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_outbox",
            "the outbox is not open",
        )
    })
}

fn delivery_id(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("delivery id `{s}`: expected a whole number")))
}

/// Deliveries in the outbox, newest first: `{"deliveries": [...], "next_offset"}`.
#[utoipa::path(get, path = "/api/v1/deliveries", tag = "deliveries", params(DeliveriesQuery),
    security((), ("bearer" = [])),
    responses((status = 200, description = "`{deliveries: [{id, target, kind, state, outcome, idempotency_key, attempts, created_at, next_attempt_at, finished_at, last_error, last_status, response_body, superseded_by, body}], next_offset}`", body = Object),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn deliveries(
    State(store): State<Store>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(DeliveryState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state `{s}`: expected pending, delivered, dead or superseded"
            ))
        })?),
    };
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_DELIVERY_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "limit `{s}`: expected a whole number from 1 to {MAX_DELIVERY_LIMIT}"
                ))
            })?,
    };
    if let Some(t) = q.target.as_deref()
        && store.target(t).is_none()
    {
        return Err(ApiError::unknown_target(t));
    }
    let offset = match q.offset.as_deref() {
        None => 0,
        Some(s) => s.parse::<usize>().map_err(|_| {
            ApiError::bad_request(format!("offset `{s}`: expected a whole number from 0"))
        })?,
    };
    let list = outbox(&store)?
        .list(state, q.target, offset + limit)
        .await
        .map_err(outbox_error)?;
    let full = list.len() == offset + limit;
    let list: Vec<_> = list.iter().skip(offset).map(delivery_view).collect();
    Ok(Json(
        json!({ "deliveries": list, "next_offset": full.then_some(offset + limit) }),
    ))
}

/// One delivery.
#[utoipa::path(get, path = "/api/v1/deliveries/{id}", tag = "deliveries",
    params(("id" = u64, Path, description = "Delivery id")), security((), ("bearer" = [])),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delivery(
    State(store): State<Store>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = delivery_id(&id)?;
    let d = outbox(&store)?.get(id).await.map_err(outbox_error)?;
    Ok(Json(delivery_view(&d)))
}

/// A dead delivery goes back to pending (same idempotency key).
#[utoipa::path(post, path = "/api/v1/deliveries/{id}/retry", tag = "deliveries",
    params(("id" = u64, Path, description = "Delivery id")), security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Not dead", body = ErrorBody)))]
async fn retry_delivery(
    State(store): State<Store>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = delivery_id(&id)?;
    let d = outbox(&store)?.retry(id).await.map_err(outbox_error)?;
    Ok(Json(delivery_view(&d)))
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
        let now = crate::clock::Clock::system().now() / 60 * 60;
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
        let res = router(store.clone(), ApiAuth::default())
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

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        token: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let res = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
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
    async fn mutations_need_the_right_token() {
        let s = store();
        let secret = crate::config::Secret::new("s3cret");
        let open = router(s.clone(), ApiAuth::default());
        let guarded = router(s.clone(), ApiAuth::new(Some(&secret), false));
        // (router, token, status, code)
        let cases: [(&Router, Option<&str>, StatusCode, &str); 4] = [
            (
                &open,
                Some("s3cret"),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ), // no token configured: never acts
            (&guarded, None, StatusCode::UNAUTHORIZED, "unauthorized"),
            (&guarded, Some("wrong"), StatusCode::FORBIDDEN, "forbidden"),
            (
                &guarded,
                Some("s3cret-but-longer"),
                StatusCode::FORBIDDEN,
                "forbidden",
            ),
        ];
        for (app, token, status, code) in cases {
            let (st, b) = call(app, "POST", "/api/v1/targets/web/pause", token).await;
            assert_eq!(
                (st, b["error"]["code"].as_str()),
                (status, Some(code)),
                "{token:?}: {b}"
            );
            assert!(
                !s.target("web").unwrap().paused,
                "refused requests never act"
            );
        }
        let (st, b) = call(
            &guarded,
            "POST",
            "/api/v1/targets/web/pause",
            Some("s3cret"),
        )
        .await;
        assert_eq!(
            (st, b["action"].as_str()),
            (StatusCode::OK, Some("paused")),
            "{b}"
        );
        assert!(s.target("web").unwrap().paused);
        let (_, b) = call(&guarded, "GET", "/api/v1/targets", None).await;
        assert_eq!(
            b["targets"][0]["paused"], true,
            "reads stay open by default: {b}"
        );
        let (st, _) = call(
            &guarded,
            "POST",
            "/api/v1/targets/web/resume",
            Some("s3cret"),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert!(!s.target("web").unwrap().paused);
        let (st, _) = call(
            &guarded,
            "POST",
            "/api/v1/targets/web/refit",
            Some("s3cret"),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert!(s.target("web").unwrap().refit_requested);
        let (st, b) = call(
            &guarded,
            "POST",
            "/api/v1/targets/nope/pause",
            Some("s3cret"),
        )
        .await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("unknown_target"))
        );
    }

    #[tokio::test]
    async fn reads_can_require_the_token() {
        let s = store();
        let secret = crate::config::Secret::new("s3cret");
        let app = router(s, ApiAuth::new(Some(&secret), true));
        assert_eq!(
            call(&app, "GET", "/api/v1/targets", None).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(&app, "GET", "/api/v1/targets", Some("nope")).await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(&app, "GET", "/api/v1/targets", Some("s3cret")).await.0,
            StatusCode::OK
        );
        assert_eq!(
            call(&app, "GET", "/healthz", None).await.0,
            StatusCode::OK,
            "health stays open"
        );
    }

    /// Every route the router serves is in the OpenAPI document, and every operation in the
    /// document is served (not the fallback).
    #[tokio::test]
    async fn every_route_is_in_the_openapi_document() {
        let s = store();
        let secret = crate::config::Secret::new("t");
        let (app, served) = routes(s, ApiAuth::new(Some(&secret), false));
        let (_, doc) = call(&app, "GET", "/api/v1/openapi.json", None).await;
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().unwrap().keys() {
                documented.push((method.clone(), path.clone()));
            }
        }
        let mut served: Vec<(String, String)> = served
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(served, documented, "router and OpenAPI document differ");
        for (method, path) in &documented {
            let uri = path.replace("{name}", "web");
            let (st, b) = call(&app, &method.to_uppercase(), &uri, Some("t")).await;
            assert!(
                st != StatusCode::METHOD_NOT_ALLOWED && b["error"]["code"] != "not_found",
                "{method} {path}: {st} {b}"
            );
        }
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    }

    #[tokio::test]
    async fn lists_are_paginated() {
        let s = store();
        for k in 0..5 {
            s.record_decision(DecisionRecord {
                target: "web".into(),
                decision: Decision {
                    at: k,
                    from: 1,
                    to: 2,
                    reasons: Vec::new(),
                    peak: None,
                },
                mode: crate::config::Mode::Act,
            });
        }
        let app = router(s, ApiAuth::default());
        let (_, b) = call(&app, "GET", "/api/v1/decisions?limit=2&offset=1", None).await;
        let at: Vec<i64> = b["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["at"].as_i64().unwrap())
            .collect();
        assert_eq!(
            (at, b["total"].as_u64(), b["next_offset"].as_u64()),
            (vec![3, 2], Some(5), Some(3))
        );
        let (_, b) = call(&app, "GET", "/api/v1/decisions?limit=2&offset=4", None).await;
        assert!(b["next_offset"].is_null(), "{b}");
        let (_, b) = call(&app, "GET", "/api/v1/targets?limit=1", None).await;
        assert_eq!(
            (b["total"].as_u64(), b["targets"].as_array().map(Vec::len)),
            (Some(1), Some(1))
        );
        let (st, b) = call(&app, "GET", "/api/v1/targets?offset=-1", None).await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request"))
        );
        let (st, b) = call(&app, "GET", "/api/v1/decisions?colour=blue", None).await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "unknown parameters are refused: {b}"
        );
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
        for bad in ["signal=volume", "since=yesterday"] {
            let (st, b) = get(&s, &format!("/api/v1/targets/web/history?{bad}")).await;
            assert_eq!(
                check(st, "bad_request", b),
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
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
