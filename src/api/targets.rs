//! The targets: the list, and one target in detail.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::paging::{MAX_LIMIT, Page, PageQuery};
use super::views::{self, map_values};
use super::{ApiError, ApiQuery};
use crate::store::{Store, TargetState};

/// A target in the list.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TargetSummary {
    name: String,
    /// `backfilling`, `degraded`, `paused`, `budget-limited` or `ok`.
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
    /// `act` or `forecast-only`.
    mode: views::Mode,
    /// Whether acting is paused by `POST …/pause`.
    paused: bool,
    replicas: u32,
    desired_replicas: Option<u32>,
    min_replicas: u32,
    max_replicas: u32,
}

/// A page of targets.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TargetList {
    targets: Vec<TargetSummary>,
    /// How many targets there are in all.
    total: usize,
    /// The `offset` of the next page, if any.
    next_offset: Option<usize>,
}

fn summary(name: &str, t: &TargetState, now: i64) -> TargetSummary {
    TargetSummary {
        name: name.to_owned(),
        status: t.status(now).as_str(),
        mode: t.config.mode.into(),
        paused: t.paused,
        replicas: t.replicas,
        desired_replicas: t.last_decision.as_ref().map(|d| d.to),
        min_replicas: t.config.min_replicas,
        max_replicas: t.config.max_replicas,
    }
}

#[utoipa::path(get, path = "/api/v1/targets", tag = "targets", params(PageQuery),
    security((), ("bearer" = [])),
    responses((status = 200, body = TargetList), (status = 400, body = super::ErrorBody)))]
pub(super) async fn targets(
    State(store): State<Store>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<TargetList>, ApiError> {
    let page = Page::parse(q.limit.as_deref(), q.offset.as_deref(), MAX_LIMIT)?;
    let now = store.now();
    let names: Vec<&str> = store.names().collect();
    let total = names.len();
    let targets = names
        .into_iter()
        .skip(page.offset)
        .take(page.limit)
        .filter_map(|name| Some(summary(name, &*store.target(name)?, now)))
        .collect();
    Ok(Json(TargetList {
        targets,
        total,
        next_offset: page.next_offset(total),
    }))
}

/// One target in detail.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TargetDetail {
    #[serde(flatten)]
    summary: TargetSummary,
    /// One line per missing, failing or stale signal.
    degraded_reasons: Vec<String>,
    /// The capacity per replica in use (configured or learned), if known.
    capacity_rps: Option<f64>,
    /// Where it comes from and why, with the learned curve.
    capacity: Option<views::Capacity>,
    /// The selected forecast model, its scores and its interval coverage.
    forecast_model: Option<views::ModelInfo>,
    /// The predicted bottleneck, as of the last cycle.
    bottleneck: Option<views::Bottleneck>,
    startup_seconds: u64,
    interval_seconds: u64,
    step_seconds: i64,
    /// The newest request rate, requests/s.
    demand_rps: Option<f64>,
    /// Request-rate samples held.
    points: usize,
    /// Per configured signal: newest sample, last poll, last error.
    signals: BTreeMap<&'static str, views::SignalHealth>,
    /// The last decision with its reasons.
    last_decision: Option<views::Decision>,
    /// The latest per-instance observations.
    instances: BTreeMap<String, views::InstanceStats>,
    /// The last balancer weights.
    weights: BTreeMap<String, u32>,
    /// Drained instances and why (failover).
    drained: BTreeMap<String, String>,
    /// The last delivery's outcome.
    last_delivery: Option<views::DeliveryRecord>,
    /// How the request-rate forecasts did lately.
    forecast_quality: QualityBody,
}

/// Rolling forecast quality.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct QualityBody {
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
    responses((status = 200, body = TargetDetail), (status = 404, body = super::ErrorBody)))]
pub(super) async fn target(
    State(store): State<Store>,
    Path(name): Path<String>,
) -> Result<Json<TargetDetail>, ApiError> {
    let now = store.now();
    let t = store
        .target(&name)
        .ok_or_else(|| ApiError::unknown_target(&name))?;
    Ok(Json(detail(&name, &t, now)))
}

fn detail(name: &str, t: &TargetState, now: i64) -> TargetDetail {
    let c = &t.config;
    TargetDetail {
        summary: summary(name, t, now),
        degraded_reasons: t.degraded_reasons(now),
        capacity_rps: t
            .memory
            .capacity
            .as_ref()
            .and_then(|c| c.effective_rps)
            .or(c.capacity_rps),
        capacity: t.memory.capacity.as_ref().map(views::Capacity::from),
        forecast_model: t
            .memory
            .forecaster
            .as_ref()
            .and_then(|f| f.info())
            .map(views::ModelInfo::from),
        bottleneck: t.bottleneck.as_ref().map(views::Bottleneck::from),
        startup_seconds: c.startup.as_secs(),
        interval_seconds: c.interval.as_secs(),
        step_seconds: c.step_secs(),
        demand_rps: t.rate.last().map(|s| s.value),
        points: t.rate.len(),
        signals: t
            .signals
            .iter()
            .map(|(s, h)| (s.as_str(), views::SignalHealth::from(h)))
            .collect(),
        last_decision: t.last_decision.as_ref().map(views::Decision::from),
        instances: map_values(&t.instances),
        weights: t.memory.weights.clone(),
        drained: t.memory.drained.clone(),
        last_delivery: t.last_delivery.as_ref().map(views::DeliveryRecord::from),
        forecast_quality: QualityBody {
            mae_rps: t.forecast_quality.mae(),
            interval_coverage: t.forecast_quality.coverage(),
            points: t.forecast_quality.len(),
        },
    }
}
