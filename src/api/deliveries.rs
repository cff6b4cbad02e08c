//! The deliveries in the outbox: listed, one by one, and dead ones retried or discarded.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::paging::Page;
use super::{ApiError, ApiQuery, ErrorBody};
use crate::act::ActionKind;
use crate::act::outbox::{self, DeliveryOutcome, Outbox, OutboxError};
use crate::store::Store;

/// The most deliveries one request may list.
const MAX_DELIVERY_LIMIT: usize = 10_000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct DeliveriesQuery {
    /// `pending`, `delivered`, `dead`, `superseded` or `discarded`.
    state: Option<String>,
    /// Only this target's deliveries.
    target: Option<String>,
    /// At most this many (1 to 10000, default 50).
    limit: Option<String>,
    /// Skip this many of the newest (default 0).
    offset: Option<String>,
}

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum DeliveryState {
    /// Written, not delivered yet: waiting for its turn or its next attempt.
    Pending,
    /// The receiver accepted it.
    Delivered,
    /// Given up: refused, out of attempts or too old. Can be retried by hand.
    Dead,
    /// A newer action of its group replaced it before it was delivered.
    Superseded,
    /// A dead letter discarded by hand (`DELETE`): kept for the API, never sent.
    Discarded,
}

impl From<outbox::DeliveryState> for DeliveryState {
    fn from(s: outbox::DeliveryState) -> Self {
        use outbox::DeliveryState as S;
        match s {
            S::Pending => Self::Pending,
            S::Delivered => Self::Delivered,
            S::Dead => Self::Dead,
            S::Superseded => Self::Superseded,
            S::Discarded => Self::Discarded,
        }
    }
}

/// A delivery as the API shows it: times in Unix seconds, the body as JSON.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Delivery {
    /// Increasing with the order of writing.
    id: u64,
    target: String,
    /// What is sent.
    kind: ActionKind,
    state: DeliveryState,
    /// How it ended.
    outcome: Option<DeliveryOutcome>,
    /// The `Idempotency-Key`, the same on every attempt.
    idempotency_key: String,
    /// Attempts made.
    attempts: u32,
    /// When it was written (Unix s, with milliseconds).
    created_at: f64,
    /// When the next attempt is due (Unix s), while pending.
    next_attempt_at: Option<f64>,
    /// When it reached its state (Unix s), if not pending.
    finished_at: Option<f64>,
    /// What went wrong last.
    last_error: Option<String>,
    /// The last HTTP status.
    last_status: Option<u16>,
    /// The start of the receiver's answer to a refused action.
    response_body: Option<String>,
    /// The action that superseded it.
    superseded_by: Option<u64>,
    /// The epoch of the target's owner that decided it, when instances share targets.
    epoch: Option<u64>,
    /// The body as sent: JSON, or a string when it is not JSON.
    body: serde_json::Value,
}

impl From<&outbox::Delivery> for Delivery {
    fn from(d: &outbox::Delivery) -> Self {
        let secs = |ms: i64| ms as f64 / 1000.0;
        let state = DeliveryState::from(d.state);
        Self {
            id: d.id,
            target: d.target.clone(),
            kind: d.kind,
            state,
            outcome: d.outcome,
            idempotency_key: d.idempotency_key.clone(),
            attempts: d.attempts,
            created_at: secs(d.created_at_ms),
            next_attempt_at: (state == DeliveryState::Pending).then(|| secs(d.next_attempt_ms)),
            finished_at: d.finished_at_ms.map(secs),
            last_error: d.last_error.clone(),
            last_status: d.last_status,
            response_body: d.response_body.clone(),
            superseded_by: d.superseded_by,
            epoch: d.epoch,
            body: serde_json::from_str(&d.body)
                .unwrap_or_else(|_| serde_json::Value::String(d.body.clone())),
        }
    }
}

/// A page of deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DeliveryList {
    deliveries: Vec<Delivery>,
    /// The `offset` of the next page, if any.
    next_offset: Option<usize>,
}

fn outbox_error(e: OutboxError) -> ApiError {
    match e {
        OutboxError::NotFound(id) => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_delivery",
            format!("no delivery with id {id}"),
        ),
        e @ (OutboxError::NotDead { .. } | OutboxError::NotDiscardable { .. }) => {
            ApiError::new(StatusCode::CONFLICT, "not_dead", e.to_string())
        }
        e @ OutboxError::Superseded { .. } => {
            ApiError::new(StatusCode::CONFLICT, "superseded", e.to_string())
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

fn outbox(store: &Store) -> Result<Outbox, ApiError> {
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

/// Deliveries in the outbox, newest first.
#[utoipa::path(get, path = "/api/v1/deliveries", tag = "deliveries", params(DeliveriesQuery),
    security((), ("bearer" = [])),
    responses((status = 200, body = DeliveryList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, description = "The outbox is not open", body = ErrorBody)))]
pub(super) async fn deliveries(
    State(store): State<Store>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(outbox::DeliveryState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state `{s}`: expected pending, delivered, dead, superseded or discarded"
            ))
        })?),
    };
    let page = Page::parse(q.limit.as_deref(), q.offset.as_deref(), MAX_DELIVERY_LIMIT)?;
    if let Some(t) = q.target.as_deref()
        && store.target(t).is_none()
    {
        return Err(ApiError::unknown_target(t));
    }
    let outbox = outbox(&store)?;
    // Skipped rows are not loaded; an offset past the end is an empty last page.
    let (list, more) = outbox
        .list_page(state, q.target, page.offset, page.limit)
        .await
        .map_err(outbox_error)?;
    Ok(Json(DeliveryList {
        deliveries: list.iter().map(Delivery::from).collect(),
        next_offset: page.end().filter(|_| more),
    }))
}

/// One delivery.
#[utoipa::path(get, path = "/api/v1/deliveries/{id}", tag = "deliveries",
    params(("id" = u64, Path, description = "Delivery id")), security((), ("bearer" = [])),
    responses((status = 200, body = Delivery), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn delivery(
    State(store): State<Store>,
    Path(id): Path<String>,
) -> Result<Json<Delivery>, ApiError> {
    let id = delivery_id(&id)?;
    let d = outbox(&store)?.get(id).await.map_err(outbox_error)?;
    Ok(Json(Delivery::from(&d)))
}

/// A dead delivery goes back to pending (same idempotency key), unless an action of its
/// group (a newer scale action of the target, say) was written since and was delivered,
/// is pending or is dead: sending the old one would undo it.
#[utoipa::path(post, path = "/api/v1/deliveries/{id}/retry", tag = "deliveries",
    params(("id" = u64, Path, description = "Delivery id")), security(("bearer" = [])),
    responses((status = 200, body = Delivery), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not dead (`not_dead`), or older than an action of its group written since (`superseded`)", body = ErrorBody)))]
pub(super) async fn retry_delivery(
    State(store): State<Store>,
    Path(id): Path<String>,
) -> Result<Json<Delivery>, ApiError> {
    let id = delivery_id(&id)?;
    let d = outbox(&store)?.retry(id).await.map_err(outbox_error)?;
    Ok(Json(Delivery::from(&d)))
}

/// A dead delivery is discarded: its state becomes `discarded`, it is kept for the API and
/// never sent, and it no longer counts as dead.
#[utoipa::path(delete, path = "/api/v1/deliveries/{id}", tag = "deliveries",
    params(("id" = u64, Path, description = "Delivery id")), security(("bearer" = [])),
    responses((status = 200, description = "The delivery, discarded", body = Delivery),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Not dead (`not_dead`, naming its state)", body = ErrorBody)))]
pub(super) async fn discard_delivery(
    State(store): State<Store>,
    Path(id): Path<String>,
) -> Result<Json<Delivery>, ApiError> {
    let id = delivery_id(&id)?;
    let d = outbox(&store)?.discard(id).await.map_err(outbox_error)?;
    Ok(Json(Delivery::from(&d)))
}
