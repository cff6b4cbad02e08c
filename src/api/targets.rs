//! The targets: the list, and one target in detail. With a fleet, each target shows its
//! owner, and the list shows each owner's own view of its targets.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::fleet::{FORWARDED_BY, Fleet, Owners, Placement};
use super::paging::{MAX_LIMIT, Page};
use super::views::{self, map_values};
use super::{ApiError, ApiQuery, ApiState};
use crate::cluster::Member;
use crate::store::{Store, TargetState};

/// A target in the list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(super) struct TargetSummary {
    name: String,
    /// `backfilling`, `degraded`, `paused`, `budget-limited`, `ok`, `unreachable` (its
    /// owner did not answer), or `owned-elsewhere` (`scope=local`: this instance does not
    /// run it).
    status: views::Status,
    /// The instance that acts on it (`[cluster] name`); null without a `[cluster]`, and
    /// while no instance owns it.
    #[serde(default)]
    owner: Option<String>,
    /// Why its owner's own view could not be shown (status `unreachable`).
    #[serde(default)]
    owner_error: Option<String>,
    /// `act` or `forecast-only`.
    mode: views::Mode,
    /// Whether acting is paused by `POST …/pause`.
    paused: bool,
    replicas: u32,
    desired_replicas: Option<u32>,
    min_replicas: u32,
    max_replicas: u32,
    /// The cost/risk dial: 0 leanest to 1 safest (`lean` 0.25, `balanced` 0.5, `safe` 0.75).
    #[serde(default = "balanced")]
    risk: f64,
}

/// The dial of an instance that does not say (an older one).
fn balanced() -> f64 {
    crate::decide::risk::Risk::BALANCED.value()
}

/// A page of targets.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct TargetList {
    targets: Vec<TargetSummary>,
    /// How many targets there are in all.
    total: usize,
    /// The `offset` of the next page, if any.
    next_offset: Option<usize>,
}

fn summary(name: &str, t: &TargetState, now: i64, owner: Option<String>) -> TargetSummary {
    TargetSummary {
        name: name.to_owned(),
        // What this instance holds of a target it does not run is no status of the target.
        status: if t.owned_here {
            t.status(now).into()
        } else {
            views::Status::OwnedElsewhere
        },
        owner,
        owner_error: None,
        mode: t.config.mode.into(),
        paused: t.paused,
        replicas: t.replicas,
        desired_replicas: t.last_decision.as_ref().map(|d| d.to),
        min_replicas: t.config.min_replicas,
        max_replicas: t.config.max_replicas,
        risk: t.config.risk.value(),
    }
}

/// `limit`, `offset` and `scope` of the list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetsQuery {
    /// At most this many (1 to 1000, default 50).
    limit: Option<String>,
    /// Skip this many (default 0).
    offset: Option<String>,
    /// `fleet` (the default): each target as its owner shows it; `local`: as this
    /// instance's own store holds it (what an instance asks of another).
    scope: Option<String>,
}

/// Whose view of the targets the list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Each target's owner's.
    Fleet,
    /// This instance's.
    Local,
}

impl Scope {
    /// `fleet` (also when absent) or `local`; a 400 naming the parameter otherwise.
    fn parse(s: Option<&str>) -> Result<Self, ApiError> {
        match s {
            None | Some("fleet") => Ok(Self::Fleet),
            Some("local") => Ok(Self::Local),
            Some(other) => Err(ApiError::bad_request(format!(
                "scope `{other}`: expected `fleet` or `local`"
            ))),
        }
    }
}

/// The targets, sorted by name. With a `[cluster]`, a target another instance owns is
/// shown as that owner shows it (each owner asked once, all at once, a few seconds at
/// most); one whose owner does not answer keeps its configuration with status
/// `unreachable`.
#[utoipa::path(get, path = "/api/v1/targets", tag = "targets", params(TargetsQuery),
    security((), ("bearer" = [])),
    responses((status = 200, body = TargetList), (status = 400, body = super::ErrorBody)))]
pub(super) async fn targets(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<TargetsQuery>,
) -> Result<Json<TargetList>, ApiError> {
    let page = Page::parse(q.limit.as_deref(), q.offset.as_deref(), MAX_LIMIT)?;
    let scope = Scope::parse(q.scope.as_deref())?;
    let store = &state.store;
    let owners = state.fleet.as_ref().map(Fleet::owners);
    let owner_of = |name: &str| {
        owners
            .as_ref()
            .and_then(|o| o.owner(name))
            .map(|o| o.member.clone())
    };
    let now = store.now();
    let total = store.names().count();
    let mut targets: Vec<TargetSummary> = store
        .names()
        .skip(page.offset)
        .take(page.limit)
        .filter_map(|name| Some(summary(name, &*store.target(name)?, now, owner_of(name))))
        .collect();
    let fan_out = scope == Scope::Fleet && !headers.contains_key(FORWARDED_BY);
    if let (Some(fleet), Some(owners), true) = (&state.fleet, &owners, fan_out) {
        let auth = headers.get(header::AUTHORIZATION);
        let query = format!(
            "/api/v1/targets?scope=local&limit={}&offset={}",
            page.limit, page.offset
        );
        let remote = from_owners(fleet, owners, &targets, &query, auth).await;
        for t in &mut targets {
            if let Placement::Remote(m) = owners.placement(&t.name) {
                *t = owners_view(t, m, remote.get(&m.name));
            }
        }
    }
    Ok(Json(TargetList {
        targets,
        total,
        next_offset: page.next_offset(total),
    }))
}

/// What each owner of some of `targets` answered for the same page of its own view, by
/// owner: its targets by name, or why it did not answer.
async fn from_owners(
    fleet: &Fleet,
    owners: &Owners,
    targets: &[TargetSummary],
    query: &str,
    auth: Option<&HeaderValue>,
) -> BTreeMap<String, Result<BTreeMap<String, TargetSummary>, String>> {
    let mut asks = tokio::task::JoinSet::new();
    let mut asked = std::collections::BTreeSet::new();
    for t in targets {
        let Placement::Remote(m) = owners.placement(&t.name) else {
            continue;
        };
        if !asked.insert(m.name.clone()) {
            continue;
        }
        let (fleet, m, query, auth) = (fleet.clone(), m.clone(), query.to_owned(), auth.cloned());
        asks.spawn(async move {
            let answer = match fleet
                .get_json::<TargetList>(&m, &query, auth.as_ref())
                .await
            {
                Ok((status, list)) if status.is_success() => Ok(list
                    .targets
                    .into_iter()
                    .map(|t| (t.name.clone(), t))
                    .collect()),
                Ok((status, _)) => Err(format!("it answered {status}")),
                Err(e) => Err(e),
            };
            (m.name, answer)
        });
    }
    let mut answers = BTreeMap::new();
    while let Some(done) = asks.join_next().await {
        if let Ok((name, answer)) = done {
            answers.insert(name, answer);
        }
    }
    answers
}

/// `local`'s entry as its owner `m` showed it, or the local one marked `unreachable`.
fn owners_view(
    local: &TargetSummary,
    m: &Member,
    answer: Option<&Result<BTreeMap<String, TargetSummary>, String>>,
) -> TargetSummary {
    let why = match answer {
        // Its task cannot panic; if it did, that is no answer.
        None => "its answer was lost".to_owned(),
        Some(Err(e)) => e.clone(),
        Some(Ok(theirs)) => match theirs.get(&local.name) {
            Some(t) => {
                return TargetSummary {
                    owner: local.owner.clone(),
                    owner_error: None,
                    ..t.clone()
                };
            }
            None => "it does not list this target (is its configuration the same?)".to_owned(),
        },
    };
    TargetSummary {
        status: views::Status::Unreachable,
        owner_error: Some(format!(
            "instance `{}` at {}: {why}",
            m.name,
            super::fleet::shown(m)
        )),
        ..local.clone()
    }
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
    responses((status = 200, body = TargetDetail), (status = 404, body = super::ErrorBody),
        (status = 502, description = "`[cluster]`: another instance owns the target and did not answer (`owner_unreachable`)", body = super::ErrorBody)))]
pub(super) async fn target(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<TargetDetail>, ApiError> {
    let store: &Store = &state.store;
    let owner = state
        .fleet
        .as_ref()
        .and_then(|f| f.owners().owner(&name).map(|o| o.member.clone()));
    let now = store.now();
    let t = store
        .target(&name)
        .ok_or_else(|| ApiError::unknown_target(&name))?;
    Ok(Json(detail(&name, &t, now, owner)))
}

fn detail(name: &str, t: &TargetState, now: i64, owner: Option<String>) -> TargetDetail {
    let c = &t.config;
    TargetDetail {
        summary: summary(name, t, now, owner),
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
