//! What a target's series say: its forecast, its observed history and its predicted
//! bottleneck.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::views;
use super::{ApiError, ApiQuery, ErrorBody};
use crate::forecast::{self, Forecast, History};
use crate::series::Series;
use crate::store::{Store, TargetState};

/// The longest forecast horizon served.
const MAX_HORIZON: Duration = Duration::from_secs(7 * 86_400);
/// The horizon when none is given.
const DEFAULT_HORIZON: Duration = Duration::from_secs(3_600);
/// The history served when no `since` is given, seconds.
const DEFAULT_SINCE: i64 = 86_400;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct ForecastQuery {
    /// How far ahead, e.g. `30m` (default `1h`, at most `7d`).
    horizon: Option<String>,
}

/// The forecast body.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ForecastBody {
    target: String,
    /// The `now` it was made at (Unix s).
    generated_at: i64,
    step_seconds: i64,
    /// The model that made it.
    model: &'static str,
    /// The model's settings and what it dropped.
    description: Option<String>,
    /// The prediction interval's level.
    level: f64,
    /// One point per step up to the horizon.
    points: Vec<views::Point>,
}

fn parse_horizon(s: Option<&str>) -> Result<Duration, ApiError> {
    let horizon = match s {
        None => DEFAULT_HORIZON,
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            ApiError::bad_request(format!(
                "horizon `{s}`: {e}; expected a duration such as 30m or 1h"
            ))
        })?,
    };
    // Forecasts are made in whole seconds: a horizon under 1s would be an empty one.
    if horizon < Duration::from_secs(1) || horizon > MAX_HORIZON {
        return Err(ApiError::bad_request(format!(
            "horizon `{}` is out of range; expected at least 1s and at most {}",
            humantime::format_duration(horizon),
            humantime::format_duration(MAX_HORIZON)
        )));
    }
    Ok(horizon)
}

fn no_data(message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_data", message)
}

/// What a forecast is made from: the fitted forecaster's forecast (cheap, so made under
/// the target's lock), or a copy of the series to fit a model on outside it.
enum Source {
    Fitted(Forecast, Option<String>),
    Grid {
        start: i64,
        values: Vec<f64>,
        step: i64,
        level: f64,
    },
}

fn forecast_source(t: &TargetState, now: i64, horizon: i64) -> Option<Source> {
    let fitted = t.memory.forecaster.as_ref().and_then(|f| {
        let fc = f.forecast(now, horizon).ok()?;
        Some(Source::Fitted(fc, f.info().map(|i| i.description)))
    });
    fitted.or_else(|| {
        let (start, values) = t.rate.to_grid()?;
        Some(Source::Grid {
            start,
            values,
            step: t.config.step_secs(),
            level: t
                .memory
                .forecaster
                .as_ref()
                .map_or(0.95, |f| f.settings().level),
        })
    })
}

#[utoipa::path(get, path = "/api/v1/targets/{name}/forecast", tag = "targets",
    params(("name" = String, Path, description = "Target name"), ForecastQuery),
    security((), ("bearer" = [])),
    responses((status = 200, body = ForecastBody), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, description = "No data yet", body = ErrorBody),
        (status = 502, description = "`[cluster]`: another instance owns the target and did not answer (`owner_unreachable`)", body = ErrorBody)))]
pub(super) async fn target_forecast(
    State(store): State<Store>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ForecastQuery>,
) -> Result<Json<ForecastBody>, ApiError> {
    let horizon = parse_horizon(q.horizon.as_deref())?.as_secs() as i64;
    let now = store.now();
    let source = {
        let t = store
            .target(&name)
            .ok_or_else(|| ApiError::unknown_target(&name))?;
        forecast_source(&t, now, horizon)
    };
    let (f, description) = match source {
        None => {
            return Err(no_data(format!(
                "target `{name}` has no request-rate data yet"
            )));
        }
        Some(Source::Fitted(f, description)) => (f, description),
        Some(Source::Grid {
            start,
            values,
            step,
            level,
        }) => {
            let history = History {
                start,
                step,
                values: &values,
            };
            let f = forecast::forecast(history, now, horizon, level)
                .map_err(|e| no_data(format!("target `{name}`: {e}")))?;
            (f, None)
        }
    };
    Ok(Json(ForecastBody {
        target: name,
        generated_at: f.generated_at,
        step_seconds: f.step_seconds,
        model: f.model,
        description,
        level: f.level,
        points: f.until(now + horizon).map(views::Point::from).collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    /// `rate` (default), `latency` or `replicas`.
    signal: Option<String>,
    /// A duration back from now (e.g. `6h`, default `24h`) or a Unix timestamp.
    since: Option<String>,
}

/// A series the history endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum HistorySignal {
    /// The request rate, requests/s.
    Rate,
    /// The latency, seconds.
    Latency,
    /// The replica count decided on: the first and last decision of each count.
    Replicas,
}

impl HistorySignal {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "rate" => Some(Self::Rate),
            "latency" => Some(Self::Latency),
            "replicas" => Some(Self::Replicas),
            _ => None,
        }
    }

    /// Its samples at or after `since`, oldest first.
    fn since(self, t: &TargetState, since: i64) -> Vec<views::Sample> {
        let from = |s: &Series| s.since(since).map(views::Sample::from).collect();
        match self {
            Self::Rate => from(&t.rate),
            Self::Latency => from(&t.latency),
            Self::Replicas => t
                .replicas_history
                .since(since)
                .map(views::Sample::from)
                .collect(),
        }
    }
}

/// An observed series.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct HistoryBody {
    target: String,
    signal: HistorySignal,
    /// The samples since the time asked for, oldest first.
    points: Vec<views::Sample>,
}

fn parse_since(s: Option<&str>, now: i64) -> Result<i64, ApiError> {
    let Some(s) = s else {
        return Ok(now - DEFAULT_SINCE);
    };
    match s.parse::<i64>() {
        Ok(ts) if ts >= 0 => Ok(ts),
        _ => humantime::parse_duration(s)
            .map(|d| now.saturating_sub(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
            .map_err(|_| {
                ApiError::bad_request(format!(
                    "since `{s}`: expected a duration back from now (e.g. 6h) or a Unix timestamp"
                ))
            }),
    }
}

/// The observed series of one signal since a time: `since` is a duration back from now
/// (`6h`, default `24h`) or a Unix timestamp. `signal=replicas` is the replica count the
/// target had at its decisions (observed, or asked for without a `replicas` query), as
/// steps: the first and the last decision of each count (the count in force at `since`
/// starts at `since`).
#[utoipa::path(get, path = "/api/v1/targets/{name}/history", tag = "targets",
    params(("name" = String, Path, description = "Target name"), HistoryQuery),
    security((), ("bearer" = [])),
    responses((status = 200, body = HistoryBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 502, description = "`[cluster]`: another instance owns the target and did not answer (`owner_unreachable`)", body = ErrorBody)))]
pub(super) async fn target_history(
    State(store): State<Store>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryBody>, ApiError> {
    let since = parse_since(q.since.as_deref(), store.now())?;
    let signal = match q.signal.as_deref() {
        None => HistorySignal::Rate,
        Some(s) => HistorySignal::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "signal `{s}`: expected one of rate, latency, replicas"
            ))
        })?,
    };
    let t = store
        .target(&name)
        .ok_or_else(|| ApiError::unknown_target(&name))?;
    let points = signal.since(&t, since);
    Ok(Json(HistoryBody {
        target: name.clone(),
        signal,
        points,
    }))
}

/// The predicted bottleneck of a target.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BottleneckBody {
    target: String,
    /// When it was predicted (the target's last cycle), Unix s.
    predicted_at: Option<i64>,
    /// Null until capacity and a forecast are known.
    bottleneck: Option<views::Bottleneck>,
}

/// The first predicted breach of capacity or of the latency SLO within the horizon, with
/// the headroom now.
#[utoipa::path(get, path = "/api/v1/targets/{name}/bottleneck", tag = "targets",
    params(("name" = String, Path, description = "Target name")),
    security((), ("bearer" = [])),
    responses((status = 200, body = BottleneckBody), (status = 404, body = ErrorBody),
        (status = 502, description = "`[cluster]`: another instance owns the target and did not answer (`owner_unreachable`)", body = ErrorBody)))]
pub(super) async fn target_bottleneck(
    State(store): State<Store>,
    Path(name): Path<String>,
) -> Result<Json<BottleneckBody>, ApiError> {
    let t = store
        .target(&name)
        .ok_or_else(|| ApiError::unknown_target(&name))?;
    Ok(Json(BottleneckBody {
        predicted_at: t.last_decision.as_ref().map(|d| d.at),
        bottleneck: t.bottleneck.as_ref().map(views::Bottleneck::from),
        target: name.clone(),
    }))
}
