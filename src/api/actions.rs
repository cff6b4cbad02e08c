//! The mutating endpoints on a target: pause, resume and refit. Each sets a flag the
//! pipeline reads at its next cycle; all need the API token. Pause and resume are first
//! committed to the outbox (so they hold for actions already queued, and survive a
//! restart), then answered.
//!
//! With a `[cluster]`, a request about a target another instance owns has been forwarded to
//! it (`fleet.rs`). The owner first shares a pause or resume through etcd, fenced on its
//! ownership at its epoch, so that the next owner keeps it; when it does not own the
//! target now, or the write fails, it answers 503 `coordination` and changes nothing.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;

use axum::http::StatusCode;

use super::{ApiError, ApiState, ErrorBody};
use crate::cluster::{Share, Standing};
use crate::store::{Store, TargetState};

/// What a mutating endpoint did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum ActionTaken {
    /// Acting on the target is paused.
    Paused,
    /// Acting on the target resumed.
    Resumed,
    /// Its forecast models are refitted at its next cycle.
    RefitScheduled,
}

impl ActionTaken {
    /// The name, as in the answer.
    fn as_str(self) -> &'static str {
        match self {
            Self::Paused => "paused",
            Self::Resumed => "resumed",
            Self::RefitScheduled => "refit_scheduled",
        }
    }
}

/// The answer of a mutating endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Action {
    target: String,
    action: ActionTaken,
}

/// Sets a flag on a target, answering 404 for an unknown one.
fn act_on(
    store: &Store,
    name: String,
    action: ActionTaken,
    f: impl FnOnce(&mut TargetState),
) -> Result<Json<Action>, ApiError> {
    let mut t = store
        .target(&name)
        .ok_or_else(|| ApiError::unknown_target(&name))?;
    f(&mut t);
    drop(t);
    tracing::info!(target = %name, action = action.as_str(), "API action");
    Ok(Json(Action {
        target: name,
        action,
    }))
}

/// Commits `name`'s pause (or resume) to the outbox, when there is one, then sets it in
/// the store: the answer comes only once it holds and survives a restart.
async fn set_paused(
    state: &ApiState,
    name: String,
    paused: bool,
) -> Result<Json<Action>, ApiError> {
    let store = &state.store;
    if store.target(&name).is_none() {
        return Err(ApiError::unknown_target(&name));
    }
    if let Some(fleet) = &state.fleet {
        share_pause(fleet.cluster(), &name, paused).await?;
    }
    if let Some(outbox) = store.outbox() {
        outbox.set_paused(&name, paused).await.map_err(|e| {
            tracing::error!(target = %name, paused, error = %e, "cannot record the pause");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage",
                format!("the pause could not be recorded in the outbox: {e}"),
            )
        })?;
    }
    let action = if paused {
        ActionTaken::Paused
    } else {
        ActionTaken::Resumed
    };
    act_on(store, name, action, |t| t.paused = paused)
}

/// Shares `name`'s pause through etcd at this instance's epoch; 503 `coordination` when
/// it does not own the target now or the write fails.
async fn share_pause(
    cluster: &crate::cluster::Cluster,
    name: &str,
    paused: bool,
) -> Result<(), ApiError> {
    let verb = if paused { "pause" } else { "resume" };
    let refuse = |why: String| {
        tracing::warn!(target = %name, action = verb, error = %why, "cannot share the pause");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "coordination",
            format!("coordination: cannot {verb} target `{name}`: {why}; nothing was changed"),
        )
    };
    match cluster.standing(name) {
        Standing::Owner(epoch) => cluster
            .share(name, epoch, Share::Paused(paused))
            .await
            .map_err(|e| refuse(e.to_string())),
        Standing::Lapsed(epoch) => Err(refuse(format!(
            "this instance owned it at epoch {epoch} but its etcd lease is not known live now"
        ))),
        Standing::Elsewhere => Err(refuse(
            match cluster.owners().get(&crate::cluster::bucket(name)) {
                Some(o) => format!("instance `{}` owns it, not this one", o.member),
                None => "no instance owns it now".to_owned(),
            },
        )),
    }
}

/// Stops acting on a target: it still polls, forecasts and decides, but sends nothing; its
/// scale and rebalance actions already queued are held (alerts still go). Survives
/// restarts.
#[utoipa::path(post, path = "/api/v1/targets/{name}/pause", tag = "actions",
    params(("name" = String, Path, description = "Target name")), security(("bearer" = [])),
    responses((status = 200, body = Action), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 500, description = "The pause could not be recorded", body = ErrorBody),
        (status = 502, description = "Another instance owns the target and did not answer (`owner_unreachable`)", body = ErrorBody),
        (status = 503, description = "`[cluster]`: this instance could not share the pause (`coordination`); nothing was changed", body = ErrorBody)))]
pub(super) async fn pause(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Action>, ApiError> {
    set_paused(&state, name, true).await
}

/// Acts on a paused target again; its held actions go out.
#[utoipa::path(post, path = "/api/v1/targets/{name}/resume", tag = "actions",
    params(("name" = String, Path, description = "Target name")), security(("bearer" = [])),
    responses((status = 200, body = Action), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 500, description = "The resume could not be recorded", body = ErrorBody),
        (status = 502, description = "Another instance owns the target and did not answer (`owner_unreachable`)", body = ErrorBody),
        (status = 503, description = "`[cluster]`: this instance could not share the resume (`coordination`); nothing was changed", body = ErrorBody)))]
pub(super) async fn resume(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Action>, ApiError> {
    set_paused(&state, name, false).await
}

/// Refits the target's forecast models at its next cycle.
#[utoipa::path(post, path = "/api/v1/targets/{name}/refit", tag = "actions",
    params(("name" = String, Path, description = "Target name")), security(("bearer" = [])),
    responses((status = 200, body = Action), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 502, description = "`[cluster]`: another instance owns the target and did not answer (`owner_unreachable`)", body = ErrorBody)))]
pub(super) async fn refit(
    State(store): State<Store>,
    Path(name): Path<String>,
) -> Result<Json<Action>, ApiError> {
    act_on(&store, name, ActionTaken::RefitScheduled, |t| {
        t.refit_requested = true
    })
}
