//! `GET /api/v1/cluster`: the instances sharing the targets (`[cluster]`), how many
//! targets each owns and whether it is ready, and who owns each target at which epoch.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::fleet::Fleet;
use super::{ApiError, ApiState, ErrorBody};
use crate::cluster::{Member, bucket};

/// The fleet as this instance sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ClusterView {
    /// This instance's name (`[cluster] name`).
    name: String,
    /// Whether this instance's etcd lease is known live now: it acts on its targets only
    /// then.
    live: bool,
    /// The live members, by name.
    members: Vec<MemberView>,
    /// Every configured target, by name, with its owner.
    targets: Vec<Ownership>,
}

/// A live member.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MemberView {
    /// Its unique name.
    name: String,
    /// The URL of its API (`[cluster] advertise`).
    advertise: String,
    /// When it joined, Unix seconds.
    started_at: i64,
    /// Configured targets whose bucket it owns.
    targets: usize,
    /// Buckets it owns (of 256).
    buckets: usize,
    /// Its `GET /readyz`, asked now.
    health: MemberHealth,
}

/// A member's readiness, asked now.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MemberHealth {
    /// `ready`, `not_ready` or `unreachable`.
    status: HealthStatus,
    /// Why it is not ready, as its `/readyz` says.
    reasons: Vec<String>,
    /// Why it could not be asked, when unreachable.
    error: Option<String>,
}

/// What a member's `/readyz` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum HealthStatus {
    /// It answered 200.
    Ready,
    /// It answered 503 (backfilling, or its outbox cannot be written).
    NotReady,
    /// It did not answer in time, or not as `/readyz` does.
    Unreachable,
}

/// Who owns a target.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Ownership {
    target: String,
    /// Its bucket (0 to 255), by a stable hash of its name.
    bucket: u16,
    /// The instance that acts on it; null while no instance owns its bucket.
    owner: Option<String>,
    /// The owner's epoch (the etcd revision at which it took the bucket); null when
    /// unowned.
    epoch: Option<u64>,
}

/// The instances sharing the targets, each asked for its readiness (all at once, a few
/// seconds at most), and each target's owner and epoch as this instance last read them.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster",
    security((), ("bearer" = [])),
    responses((status = 200, body = ClusterView),
        (status = 404, description = "There is no `[cluster]`: this instance runs alone (`no_cluster`)", body = ErrorBody)))]
pub(super) async fn cluster(State(state): State<ApiState>) -> Result<Json<ClusterView>, ApiError> {
    let fleet = state.fleet.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_cluster",
            "this instance runs alone: its configuration has no [cluster] section",
        )
    })?;
    let owners = fleet.owners();
    let mut health = health(fleet, owners.members().values()).await;
    let targets: Vec<Ownership> = state
        .store
        .names()
        .map(|name| {
            let owner = owners.owner(name);
            Ownership {
                target: name.to_owned(),
                bucket: bucket(name),
                owner: owner.map(|o| o.member.clone()),
                epoch: owner.map(|o| o.epoch),
            }
        })
        .collect();
    let members = owners
        .members()
        .values()
        .map(|m| MemberView {
            name: m.name.clone(),
            advertise: super::fleet::shown(m),
            started_at: m.started_at,
            targets: targets
                .iter()
                .filter(|t| t.owner.as_deref() == Some(&m.name))
                .count(),
            buckets: owners
                .buckets()
                .values()
                .filter(|o| o.member == m.name)
                .count(),
            health: health.remove(&m.name).unwrap_or(MemberHealth {
                status: HealthStatus::Unreachable,
                error: Some("its health check did not finish".to_owned()),
                reasons: Vec::new(),
            }),
        })
        .collect();
    Ok(Json(ClusterView {
        name: owners.me().to_owned(),
        live: fleet.cluster().is_live(),
        members,
        targets,
    }))
}

/// What this reads of a `/readyz` answer.
#[derive(Deserialize)]
struct Readiness {
    ready: bool,
    reasons: Vec<String>,
}

/// Each member's readiness, asked of all at once.
async fn health<'a>(
    fleet: &Fleet,
    members: impl Iterator<Item = &'a Member>,
) -> BTreeMap<String, MemberHealth> {
    let mut asks = tokio::task::JoinSet::new();
    for m in members {
        let (fleet, m) = (fleet.clone(), m.clone());
        asks.spawn(async move {
            let health = match fleet.get_json::<Readiness>(&m, "/readyz", None).await {
                Ok((status, r)) if status == StatusCode::OK && r.ready => MemberHealth {
                    status: HealthStatus::Ready,
                    reasons: r.reasons,
                    error: None,
                },
                Ok((status, r)) if status == StatusCode::SERVICE_UNAVAILABLE => MemberHealth {
                    status: HealthStatus::NotReady,
                    reasons: r.reasons,
                    error: None,
                },
                Ok((status, _)) => unreachable(format!("/readyz answered {status}")),
                Err(e) => unreachable(e),
            };
            (m.name, health)
        });
    }
    let mut all = BTreeMap::new();
    while let Some(done) = asks.join_next().await {
        if let Ok((name, health)) = done {
            all.insert(name, health);
        }
    }
    all
}

fn unreachable(error: String) -> MemberHealth {
    MemberHealth {
        status: HealthStatus::Unreachable,
        reasons: Vec::new(),
        error: Some(error),
    }
}
