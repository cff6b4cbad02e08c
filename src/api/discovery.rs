//! `GET /api/v1/discovery`: each `[[discovery]]`, its last refresh and error, the targets
//! it made and the series it could not make targets of (a template that does not fit the
//! series, a name clash).
//!
//! With `[cluster]`, each instance discovers on its own: the answer is this instance's.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use crate::discovery::{Found, Problem, ProblemKind, Status};

/// Every discovery, in file order (empty without `[[discovery]]`).
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DiscoveryList {
    /// The discoveries.
    discoveries: Vec<DiscoveryView>,
}

/// One `[[discovery]]`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DiscoveryView {
    /// Its place among the `[[discovery]]` tables (0 first), as errors name it.
    index: usize,
    /// The query whose series are the targets.
    query: String,
    /// How often the query runs, seconds.
    refresh_seconds: u64,
    /// How long a series may be absent before its target is removed, seconds.
    remove_after_seconds: u64,
    /// When a refresh last succeeded, Unix seconds; null before the first.
    last_refresh: Option<i64>,
    /// Why the last refresh failed (the discovered targets are then kept); null once one
    /// succeeds.
    error: Option<String>,
    /// The targets it made, by name.
    targets: Vec<FoundView>,
    /// The series that are not targets, and why.
    problems: Vec<ProblemView>,
}

/// A discovered target.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct FoundView {
    /// The target's name.
    name: String,
    /// Its series' labels.
    labels: BTreeMap<String, String>,
    /// When the series was first seen, Unix seconds.
    first_seen: i64,
    /// When it was last seen, Unix seconds.
    last_seen: i64,
}

/// A series that is not a target.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ProblemView {
    /// Why.
    kind: ProblemKindView,
    /// The series' labels.
    labels: BTreeMap<String, String>,
    /// The name it renders to, when it renders.
    name: Option<String>,
    /// What is wrong.
    message: String,
}

/// Why a series is not a target.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum ProblemKindView {
    /// Its labels do not make a valid target (a missing label, an invalid name, …).
    Template,
    /// Its name is a configured target's; the configured one is kept.
    ClashWithConfigured,
    /// Its name is taken by another discovered series, seen earlier.
    ClashWithDiscovered,
}

impl From<ProblemKind> for ProblemKindView {
    fn from(k: ProblemKind) -> Self {
        match k {
            ProblemKind::Template => Self::Template,
            ProblemKind::ClashWithConfigured => Self::ClashWithConfigured,
            ProblemKind::ClashWithDiscovered => Self::ClashWithDiscovered,
        }
    }
}

impl From<Status> for DiscoveryView {
    fn from(s: Status) -> Self {
        Self {
            index: s.index,
            query: s.query,
            refresh_seconds: s.refresh,
            remove_after_seconds: s.remove_after,
            last_refresh: s.last_refresh,
            error: s.error,
            targets: s.targets.into_iter().map(FoundView::from).collect(),
            problems: s.problems.into_iter().map(ProblemView::from).collect(),
        }
    }
}

impl From<Found> for FoundView {
    fn from(f: Found) -> Self {
        Self {
            name: f.name,
            labels: f.labels,
            first_seen: f.first_seen,
            last_seen: f.last_seen,
        }
    }
}

impl From<Problem> for ProblemView {
    fn from(p: Problem) -> Self {
        Self {
            kind: p.kind.into(),
            labels: p.labels,
            name: p.name,
            message: p.message,
        }
    }
}

/// Each discovery's last refresh, error, targets and problems (name clashes, series the
/// template does not fit), on this instance.
#[utoipa::path(get, path = "/api/v1/discovery", tag = "targets",
    security((), ("bearer" = [])),
    responses((status = 200, body = DiscoveryList)))]
pub(super) async fn discovery(State(state): State<ApiState>) -> Json<DiscoveryList> {
    let discoveries = state
        .store
        .discovery()
        .map(|r| r.status().into_iter().map(DiscoveryView::from).collect())
        .unwrap_or_default();
    Json(DiscoveryList { discoveries })
}
