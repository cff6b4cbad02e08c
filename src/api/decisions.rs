//! The decision log, newest first.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::paging::{MAX_LIMIT, Page};
use super::views;
use super::{ApiError, ApiQuery, ErrorBody};
use crate::store::Store;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct DecisionsQuery {
    /// Only this target's decisions.
    target: Option<String>,
    /// At most this many (1 to 1000, default 50).
    limit: Option<String>,
    /// Skip this many of the newest (default 0).
    offset: Option<String>,
}

/// A page of decisions, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DecisionList {
    decisions: Vec<views::DecisionRecord>,
    /// How many match in all (within the retained log).
    total: usize,
    /// The `offset` of the next page, if any.
    next_offset: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/decisions", tag = "decisions", params(DecisionsQuery),
    security((), ("bearer" = [])),
    responses((status = 200, body = DecisionList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 502, description = "`[cluster]`: another instance owns the `target` asked for and did not answer (`owner_unreachable`)", body = ErrorBody)))]
pub(super) async fn decisions(
    State(store): State<Store>,
    ApiQuery(q): ApiQuery<DecisionsQuery>,
) -> Result<Json<DecisionList>, ApiError> {
    let page = Page::parse(q.limit.as_deref(), q.offset.as_deref(), MAX_LIMIT)?;
    if let Some(t) = q.target.as_deref()
        && store.target(t).is_none()
    {
        return Err(ApiError::unknown_target(t));
    }
    let (decisions, total) = store.decisions(q.target.as_deref(), page.offset, page.limit);
    Ok(Json(DecisionList {
        decisions: decisions.iter().map(views::DecisionRecord::from).collect(),
        total,
        next_offset: page.next_offset(total),
    }))
}
