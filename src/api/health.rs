//! Health, readiness and prescale's own metrics: the endpoints that never need the token.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::Store;

/// The process runs.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Health {
    /// Always `ok`: an answer at all is the news.
    status: HealthStatus,
}

/// The only health there is to report.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum HealthStatus {
    /// The process runs.
    Ok,
}

#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "The process runs", body = Health)))]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health {
        status: HealthStatus::Ok,
    })
}

/// Whether every target's backfill has been tried and the outbox can be written, and which
/// targets are degraded.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Readiness {
    /// Every target's request rate has been polled once (with data or an error) and the
    /// outbox can be written.
    ready: bool,
    /// Why it is not ready: per target still backfilling, and the outbox's write error.
    reasons: Vec<String>,
    /// Targets with a missing, failing or stale signal (a query that matches nothing, one
    /// Prometheus refuses or cannot answer), ready or not: they never make it not ready.
    degraded: Vec<DegradedTarget>,
    /// Whether the target loops keep their schedule; falling behind never makes it not
    /// ready.
    cycles: CycleHealth,
}

/// How far the target loops are behind their schedule.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CycleHealth {
    /// Targets whose last cycle started more than a second, or a tenth of their interval,
    /// after it was due (the cycle before took longer than the interval).
    behind: usize,
    /// The largest of their lags, seconds; 0 when none is behind.
    max_lag_seconds: f64,
    /// The target with that lag, if any.
    slowest: Option<String>,
}

/// A degraded target and why.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DegradedTarget {
    target: String,
    /// One line per missing, failing or stale signal.
    reasons: Vec<String>,
}

/// 200 once every target's backfill has been tried (its request rate polled once, with data
/// or an error) and while the outbox can be written, else 503 with the reasons. Degraded
/// targets are listed either way: one target's bad query degrades that target, never the
/// instance.
#[utoipa::path(get, path = "/readyz", tag = "meta", responses(
    (status = 200, description = "Every target's backfill has been tried and the outbox can be written; degraded targets are listed", body = Readiness),
    (status = 503, description = "Some target's request rate was not polled yet, or the outbox cannot be written; `reasons` says which and why", body = Readiness)))]
pub(super) async fn readyz(State(store): State<Store>) -> Response {
    let now = store.now();
    let mut waiting = Vec::new();
    let mut degraded = Vec::new();
    for name in store.names() {
        let Some(t) = store.target(name) else {
            continue;
        };
        // Instances sharing targets answer for the ones they run.
        if !t.owned_here {
            continue;
        }
        let reasons = t.degraded_reasons(now);
        if !t.backfill_tried {
            waiting.push(format!(
                "{name}: not backfilled yet (its request rate was not polled yet)"
            ));
        }
        if !reasons.is_empty() {
            degraded.push(DegradedTarget {
                target: name.to_owned(),
                reasons,
            });
        }
    }
    // Actions are not written, so not sent: not ready, whatever the targets say.
    if let Some(fault) = store.outbox().and_then(|o| o.fault()) {
        waiting.push(format!("the outbox cannot be written: {fault}"));
    }
    let ready = waiting.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let lag = store.cycles().lag();
    let body = Readiness {
        ready,
        reasons: waiting,
        degraded,
        cycles: CycleHealth {
            behind: lag.behind,
            max_lag_seconds: lag.max_lag_seconds,
            slowest: lag.slowest,
        },
    };
    (status, Json(body)).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "prescale's own metrics", content_type = "application/openmetrics-text")))]
pub(super) async fn metrics(State(store): State<Store>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        store.metrics().encode(),
    )
        .into_response()
}
