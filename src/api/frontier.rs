//! A target's cost against risk on its own history: `POST …/frontier` replays the
//! request-rate history this instance holds for the target through the same code as
//! `prescale tune` (every tenth of the risk dial, the HPA at 0.3–0.9, the clairvoyant
//! scaler, and the target as configured), in the background on at most half the cores;
//! `GET …/frontier` answers how far it is and, once done, the frontier and where the
//! target sits on it. One replay runs at a time per instance. The dashboard draws it.
//!
//! Runs are kept in memory by the API (one per target, the newest), until the process
//! restarts or a reload rebuilds the API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, ApiState, ErrorBody};
use crate::config::{ForecastConfig, TargetConfig};
use crate::simulate::Score;
use crate::simulate::tune::{self, Objective, Tuning};
use crate::source::replay::Trace;
use crate::store::TargetState;

/// History a replay needs at least, seconds: the forecaster learns on the first third.
const MIN_HISTORY: i64 = 86_400;
/// Warm-up left out of the scores, at most (the forecaster's first fits), seconds.
const MAX_SKIP: i64 = 2 * 86_400;
/// Steps of the dial replayed (0, 0.1, …, 1).
const DIAL_STEPS: u32 = 10;

/// The runs, by target.
#[derive(Clone, Default)]
pub(crate) struct Frontiers(Arc<Mutex<HashMap<String, Run>>>);

impl Frontiers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Run>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A run: when it started and, once done, what it found.
#[derive(Debug, Default)]
struct Run {
    started_at: i64,
    finished_at: Option<i64>,
    found: Option<Found>,
    /// Why it found nothing (the replay failed).
    failed: Option<String>,
}

impl Run {
    fn running(&self) -> bool {
        self.finished_at.is_none()
    }
}

/// What a finished run found.
#[derive(Debug)]
struct Found {
    input: Input,
    tuning: Tuning,
    current: Score,
}

/// Whether a run is still replaying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum RunState {
    /// Replaying.
    Running,
    /// Done: the frontier is in the answer.
    Done,
    /// The replay failed: `error` says why.
    Failed,
}

/// One point: a scaler and how it did on the history.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct FrontierPoint {
    /// The risk dial (prescale) or the target utilisation (HPA); none for the clairvoyant
    /// scaler and the target as configured.
    setting: Option<f64>,
    /// Requests above the serving capacity, % of all.
    lost_pct: f64,
    /// Serving replicas × hours.
    replica_hours: f64,
    /// Steps at which the count asked for changed.
    scale_changes: u32,
}

impl FrontierPoint {
    fn of(setting: Option<f64>, s: &Score) -> Self {
        Self {
            setting,
            lost_pct: s.lost_pct,
            replica_hours: s.replica_hours,
            scale_changes: s.scale_changes,
        }
    }
}

/// A target's frontier, or how far its replay is.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct FrontierBody {
    target: String,
    state: RunState,
    /// Why the replay failed.
    error: Option<String>,
    /// When the replay was asked for (Unix s).
    started_at: i64,
    /// When it finished (Unix s).
    finished_at: Option<i64>,
    /// The history replayed: first and last bucket (Unix s), and its step.
    history_from: Option<i64>,
    history_to: Option<i64>,
    step_seconds: Option<i64>,
    /// The warm-up left out of the scores, seconds.
    skip_seconds: Option<i64>,
    /// The capacity per replica the scores are computed with, requests/s.
    capacity_rps: Option<f64>,
    /// prescale across the risk dial, leanest first.
    frontier: Vec<FrontierPoint>,
    /// The HPA at target utilisations 0.3 to 0.9.
    hpa: Vec<FrontierPoint>,
    /// The clairvoyant scaler: exactly the replicas each bucket needs, ready at once.
    clairvoyant: Option<FrontierPoint>,
    /// The target as configured now (its dial, and any key that overrides it).
    current: Option<FrontierPoint>,
    /// Its dial now.
    current_risk: Option<f64>,
    /// The dial with the fewest lost requests at no more replica-hours than the HPA at 70 %
    /// (`prescale tune --objective cost=hpa`), if one is.
    recommended_risk: Option<f64>,
}

impl FrontierBody {
    fn of(target: String, run: &Run) -> Self {
        let f = run.found.as_ref();
        let t = f.map(|f| &f.tuning);
        Self {
            target,
            state: match (f, &run.failed) {
                (Some(_), _) => RunState::Done,
                (None, Some(_)) => RunState::Failed,
                (None, None) => RunState::Running,
            },
            error: run.failed.clone(),
            started_at: run.started_at,
            finished_at: run.finished_at,
            history_from: f.map(|f| f.input.trace.start),
            history_to: f.map(|f| f.input.trace.timestamp(f.input.trace.counts.len() - 1)),
            step_seconds: f.map(|f| f.input.trace.step),
            skip_seconds: t.map(|t| t.skip_seconds),
            capacity_rps: f.and_then(|f| f.input.target.capacity_rps),
            frontier: t.map_or_else(Vec::new, |t| {
                t.frontier
                    .iter()
                    .map(|p| FrontierPoint::of(Some(p.risk), &p.score))
                    .collect()
            }),
            hpa: t.map_or_else(Vec::new, |t| {
                t.references
                    .hpa
                    .iter()
                    .map(|(u, s)| FrontierPoint::of(Some(*u), s))
                    .collect()
            }),
            clairvoyant: t.map(|t| FrontierPoint::of(None, &t.references.clairvoyant)),
            current: f.map(|f| FrontierPoint::of(None, &f.current)),
            current_risk: f.map(|f| f.input.target.risk.value()),
            recommended_risk: t.and_then(|t| t.recommended),
        }
    }
}

/// What a replay runs on: the target's history as a trace, its configuration with the
/// capacity in use, and its forecast settings.
#[derive(Debug)]
struct Input {
    trace: Trace,
    target: TargetConfig,
    forecast: ForecastConfig,
}

impl Input {
    /// The replay's input from `t`'s state, or why there is none.
    fn of(name: &str, t: &TargetState) -> Result<Self, ApiError> {
        let refuse = |code: &'static str, message: String| {
            ApiError::new(StatusCode::CONFLICT, code, message)
        };
        let capacity = t
            .memory
            .capacity
            .as_ref()
            .and_then(|c| c.effective_rps)
            .or(t.config.capacity_rps)
            .ok_or_else(|| {
                refuse(
                    "no_capacity",
                    format!("target `{name}`: the capacity per replica is not known yet (neither configured nor learned); a replay has nothing to score against"),
                )
            })?;
        let step = t.config.step_secs();
        let (start, values) = t.rate.to_grid().unwrap_or((0, Vec::new()));
        let span = values.len() as i64 * step;
        if span < MIN_HISTORY {
            return Err(refuse(
                "too_little_history",
                format!(
                    "target `{name}`: {span} s of request-rate history; a replay needs at least {MIN_HISTORY} s"
                ),
            ));
        }
        let mut target = (*t.config).clone();
        target.capacity_rps = Some(capacity);
        let forecast = t
            .memory
            .forecaster
            .as_ref()
            .map_or_else(ForecastConfig::default, |f| {
                let s = f.settings();
                ForecastConfig {
                    level: s.level,
                    refit_every: std::time::Duration::from_secs(s.refit_every.max(1) as u64),
                    horizon: std::time::Duration::from_secs(s.horizon.max(1) as u64),
                    ..ForecastConfig::default()
                }
            });
        let trace = Trace {
            start,
            step,
            counts: values.iter().map(|v| v * step as f64).collect(),
            ..Trace::default()
        };
        Ok(Self {
            trace,
            target,
            forecast,
        })
    }

    /// Replays it: the dial, the references, and the target as configured.
    fn replay(self) -> Result<Found, tune::TuneError> {
        let span = self.trace.counts.len() as i64 * self.trace.step;
        let opts = tune::Options {
            dials: tune::dial(DIAL_STEPS),
            train_until: None,
            skip: (span / 3).min(MAX_SKIP),
            objective: Objective::CostOfHpa,
            threads: std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            // The grid alone: the panel draws it, and it costs a third less.
            refine: 0,
            // What is left of the shortest history after its warm-up.
            min_scored: MIN_HISTORY * 2 / 3,
        };
        let tuning = tune::tune(&self.trace, &self.target, &self.forecast, &opts, &|_| {})?;
        let current = tune::as_configured(&self.trace, &self.target, &self.forecast, opts.skip);
        Ok(Found {
            input: self,
            tuning,
            current,
        })
    }
}

/// Replays the target's history across the risk dial in the background (202); see the
/// module docs.
#[utoipa::path(post, path = "/api/v1/targets/{name}/frontier", tag = "targets",
    params(("name" = String, Path, description = "Target name")),
    security(("bearer" = [])),
    responses((status = 202, description = "Replaying", body = FrontierBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "`replay_running`, `no_capacity` or `too_little_history`", body = ErrorBody)))]
pub(super) async fn start(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<FrontierBody>), ApiError> {
    let input = {
        let t = state
            .store
            .target(&name)
            .ok_or_else(|| ApiError::unknown_target(&name))?;
        Input::of(&name, &t)?
    };
    let now = state.store.now();
    let run = Run {
        started_at: now,
        finished_at: None,
        found: None,
        failed: None,
    };
    let body = {
        let mut runs = state.frontiers.lock();
        // One at a time per instance: replays share the cores with the live cycles.
        if let Some((other, _)) = runs.iter().find(|(_, r)| r.running()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "replay_running",
                format!(
                    "target `{name}`: a replay of `{other}`'s history is running; one runs at a time, ask again when it is done"
                ),
            ));
        }
        let body = FrontierBody::of(name.clone(), &run);
        runs.insert(name.clone(), run);
        body
    };
    tracing::info!(target = %name, steps = input.trace.counts.len(), "replaying the history across the risk dial");
    let (frontiers, store, key) = (state.frontiers.clone(), state.store.clone(), name.clone());
    tokio::spawn(async move {
        let replayed = tokio::task::spawn_blocking(move || input.replay()).await;
        let mut runs = frontiers.lock();
        let Some(r) = runs.get_mut(&key) else {
            return;
        };
        r.finished_at = Some(store.now());
        match replayed {
            Ok(Ok(found)) => r.found = Some(found),
            Ok(Err(e)) => {
                tracing::warn!(target = %key, error = %e, "the history could not be scored");
                r.failed = Some(format!("the replay could not score the history: {e}"));
            }
            Err(e) => {
                tracing::error!(target = %key, error = %e, "the replay of the history failed");
                r.failed = Some(format!("the replay failed: {e}"));
            }
        }
    });
    Ok((StatusCode::ACCEPTED, Json(body)))
}

/// The target's frontier on its own history, or how far its replay is.
#[utoipa::path(get, path = "/api/v1/targets/{name}/frontier", tag = "targets",
    params(("name" = String, Path, description = "Target name")),
    security((), ("bearer" = [])),
    responses((status = 200, body = FrontierBody),
        (status = 404, description = "`unknown_target`, or `no_frontier`: no replay was asked for", body = ErrorBody)))]
pub(super) async fn frontier(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<FrontierBody>, ApiError> {
    if state.store.target(&name).is_none() {
        return Err(ApiError::unknown_target(&name));
    }
    let body = (state.frontiers.lock().get(&name)).map(|r| FrontierBody::of(name.clone(), r));
    body.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_frontier",
            format!("target `{name}`: no replay of its history was asked for (POST this path)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;

    use super::*;
    use crate::api::ApiAuth;
    use crate::api::tests::call;
    use crate::metrics::Metrics;
    use crate::series::Sample;
    use crate::store::Store;

    /// A store with target `web` (capacity 10 rps per replica) holding `hours` of a daily
    /// wave between about 12 and 72 rps, one sample a minute up to now.
    fn store(hours: i64, capacity: Option<f64>) -> Store {
        let mut t = TargetConfig::example("web", 10.0, Duration::from_secs(120));
        t.capacity_rps = capacity;
        let store = Store::new(&[t], Metrics::new());
        let now = store.now() / 60 * 60;
        let mut s = store.target("web").expect("the target");
        s.rate.extend((0..hours * 60).map(|k| {
            let ts = now - 60 * (hours * 60 - 1 - k);
            let day = (ts % 86_400) as f64 / 86_400.0 * std::f64::consts::TAU;
            let wobble = ((k * 7_919) % 13) as f64 - 6.0;
            Sample {
                ts,
                value: 42.0 + 30.0 * day.sin() + wobble,
            }
        }));
        drop(s);
        store
    }

    fn app(store: &Store, frontiers: &Frontiers) -> axum::Router {
        let secret = crate::config::Secret::new("t");
        let state = ApiState {
            store: store.clone(),
            fleet: None,
            frontiers: frontiers.clone(),
        };
        super::super::routes(state, ApiAuth::new(Some(&secret), false)).0
    }

    #[tokio::test]
    async fn the_history_is_replayed_across_the_dial_and_the_target_sits_on_it() {
        let s = store(30, Some(10.0));
        let app = app(&s, &Frontiers::default());
        let uri = "/api/v1/targets/web/frontier";
        let (st, b) = call(&app, "GET", uri, None).await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("no_frontier"))
        );
        let (st, _) = call(&app, "POST", uri, None).await;
        assert_eq!(
            st,
            StatusCode::UNAUTHORIZED,
            "starting a replay needs the token"
        );
        let (st, b) = call(&app, "POST", uri, Some("t")).await;
        assert_eq!(
            (st, b["state"].as_str()),
            (StatusCode::ACCEPTED, Some("running")),
            "{b}"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        let b = loop {
            let (st, b) = call(&app, "GET", uri, None).await;
            assert_eq!(st, StatusCode::OK, "{b}");
            if b["state"] == "done" {
                break b;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the replay never finished: {b}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let points = b["frontier"].as_array().expect("frontier");
        assert_eq!(points.len(), 11, "{b}");
        let hours = |p: &serde_json::Value| p["replica_hours"].as_f64().expect("replica_hours");
        let lost = |p: &serde_json::Value| p["lost_pct"].as_f64().expect("lost_pct");
        let (lean, safe) = (&points[0], &points[10]);
        assert!(hours(safe) > hours(lean) && lost(safe) <= lost(lean), "{b}");
        assert_eq!(b["hpa"].as_array().map(Vec::len), Some(7), "{b}");
        assert!(hours(&b["clairvoyant"]) < hours(lean), "{b}");
        // The example target is the balanced dial with nothing overridden: it sits exactly
        // on the frontier's 0.5.
        assert_eq!(b["current_risk"], 0.5);
        assert_eq!(points[5]["setting"], 0.5);
        assert_eq!(hours(&b["current"]), hours(&points[5]), "{b}");
        assert_eq!(lost(&b["current"]), lost(&points[5]), "{b}");
        assert_eq!(b["capacity_rps"], 10.0);
        assert_eq!(b["step_seconds"], 60);
    }

    #[tokio::test]
    async fn a_replay_needs_a_capacity_a_day_of_history_and_no_other_running() {
        let uri = "/api/v1/targets/web/frontier";
        for (hours, capacity, code) in [
            (30, None, "no_capacity"),
            (20, Some(10.0), "too_little_history"),
        ] {
            let app = app(&store(hours, capacity), &Frontiers::default());
            let (st, b) = call(&app, "POST", uri, Some("t")).await;
            assert_eq!(
                (st, b["error"]["code"].as_str()),
                (StatusCode::CONFLICT, Some(code)),
                "{b}"
            );
        }
        // Another target's replay running: this one waits its turn.
        let busy = Frontiers::default();
        busy.lock().insert(
            "api".to_owned(),
            Run {
                started_at: 0,
                ..Run::default()
            },
        );
        let (st, b) = call(&app(&store(30, Some(10.0)), &busy), "POST", uri, Some("t")).await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("replay_running")),
            "{b}"
        );
        busy.lock().insert(
            "web".to_owned(),
            Run {
                started_at: 0,
                ..Run::default()
            },
        );
        let (st, b) = call(&app(&store(30, Some(10.0)), &busy), "GET", uri, None).await;
        assert_eq!(
            (st, b["state"].as_str()),
            (StatusCode::OK, Some("running")),
            "{b}"
        );
        let (st, b) = call(
            &app(&store(30, Some(10.0)), &busy),
            "GET",
            "/api/v1/targets/nope/frontier",
            None,
        )
        .await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("unknown_target")),
            "{b}"
        );
    }
}
