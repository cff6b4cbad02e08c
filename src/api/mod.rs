//! The HTTP API: health, readiness, metrics, targets, forecasts, decisions, the deliveries
//! in the outbox (listed, and dead ones retried or discarded), the dashboard, and the OpenAPI document
//! that describes it all (`GET /api/v1/openapi.json`).
//!
//! [`router`] builds the whole API over a [`Store`]. Read handlers only read it (forecasts
//! for a requested horizon are computed from a copy of the stored series, outside the
//! lock); the few mutating ones (pause, resume, refit; retrying or discarding a dead
//! delivery) set a flag the pipeline reads or change the outbox, and
//! always need the API token ([`ApiAuth`]). Every error is JSON
//! `{"error": {"code", "message"}}` through [`ApiError`], bad query parameters included.
//!
//! One file per resource: `health.rs` (`/healthz`, `/readyz`, `/metrics`), `targets.rs`,
//! `forecasts.rs` (forecast, history, bottleneck), `decisions.rs`, `deliveries.rs`,
//! `actions.rs` (pause, resume, refit), `frontier.rs` (a target's history replayed across
//! the risk dial), `discovery.rs` (`[[discovery]]`: the targets found,
//! errors and clashes); `views.rs` holds what the API shows of the pipeline's types,
//! `paging.rs` the `limit`/`offset` arithmetic and `error.rs` the error boundary. Every answer is a typed struct, so the OpenAPI document describes each field.
//!
//! With a [`Fleet`] (`[cluster]`), every instance answers for every target: `fleet.rs`
//! forwards a request about one target owned by another instance to that owner, the list
//! of targets asks each owner for its own entries, and `cluster.rs` serves
//! `/api/v1/cluster`. Deliveries stay each instance's own (its outbox).
//!
//! [`keda`] is the other face of the same state: KEDA's external scaler over gRPC, on its
//! own listener (`[server] keda_listen`).

use std::sync::Arc;

use axum::Json;
use axum::extract::FromRef;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Router, middleware};
use utoipa::OpenApi;

mod actions;
mod auth;
mod cluster;
mod dashboard;
mod decisions;
mod deliveries;
mod discovery;
mod error;
mod explain;
mod fleet;
mod forecasts;
mod frontier;
mod health;
pub mod keda;
mod paging;
mod targets;
mod views;

pub use auth::ApiAuth;
pub use error::ApiError;
pub use fleet::Fleet;

use error::{ApiQuery, ErrorBody, ErrorDetail};

use crate::store::Store;

/// The API over `store`, guarded by `auth`; with a `fleet`, it answers for the targets
/// other instances own too (see [`Fleet`]).
pub fn router(store: Store, auth: ApiAuth, fleet: Option<Fleet>) -> Router {
    let frontiers = frontier::Frontiers::default();
    routes(
        ApiState {
            store,
            fleet,
            frontiers,
        },
        auth,
    )
    .0
}

/// What the handlers read: the store, and the fleet when there is one.
#[derive(Clone)]
pub(crate) struct ApiState {
    store: Store,
    fleet: Option<Fleet>,
    /// Replays of targets' histories across the risk dial (`frontier.rs`).
    frontiers: frontier::Frontiers,
}

impl FromRef<ApiState> for Store {
    fn from_ref(state: &ApiState) -> Store {
        state.store.clone()
    }
}

/// A router that remembers the method and path of every route it serves, so that a test
/// can hold them to the OpenAPI document.
struct Routes {
    router: Router<ApiState>,
    list: Vec<(&'static str, &'static str)>,
}

impl Routes {
    fn new() -> Self {
        Self {
            router: Router::new(),
            list: Vec::new(),
        }
    }

    fn get<H: axum::handler::Handler<T, ApiState>, T: 'static>(
        mut self,
        path: &'static str,
        h: H,
    ) -> Self {
        self.router = self.router.route(path, get(h));
        self.list.push(("get", path));
        self
    }

    fn post<H: axum::handler::Handler<T, ApiState>, T: 'static>(
        mut self,
        path: &'static str,
        h: H,
    ) -> Self {
        self.router = self.router.route(path, post(h));
        self.list.push(("post", path));
        self
    }

    fn delete<H: axum::handler::Handler<T, ApiState>, T: 'static>(
        mut self,
        path: &'static str,
        h: H,
    ) -> Self {
        self.router = self.router.route(path, delete(h));
        self.list.push(("delete", path));
        self
    }

    fn merge(
        mut self,
        other: Routes,
        layer: impl FnOnce(Router<ApiState>) -> Router<ApiState>,
    ) -> Self {
        self.router = self.router.merge(layer(other.router));
        self.list.extend(other.list);
        self
    }
}

/// The router and the (method, path) of each documented route.
fn routes(state: ApiState, auth: ApiAuth) -> (Router, Vec<(&'static str, &'static str)>) {
    let auth = Arc::new(auth);
    // About one target: answered by its owner (`fleet.rs`).
    let by_path = |r: Router<ApiState>| {
        r.route_layer(middleware::from_fn_with_state(
            state.clone(),
            fleet::forward_by_path,
        ))
    };
    let one_target = Routes::new()
        .get("/api/v1/targets/{name}", targets::target)
        .get(
            "/api/v1/targets/{name}/forecast",
            forecasts::target_forecast,
        )
        .get("/api/v1/targets/{name}/history", forecasts::target_history)
        .get(
            "/api/v1/targets/{name}/bottleneck",
            forecasts::target_bottleneck,
        )
        .get(
            "/api/v1/targets/{name}/decisions/{at}/explain",
            explain::explain,
        )
        .get("/api/v1/targets/{name}/frontier", frontier::frontier);
    let decisions = Routes::new().get("/api/v1/decisions", decisions::decisions);
    let reads = Routes::new()
        .get("/api/v1/cluster", cluster::cluster)
        .get("/api/v1/targets", targets::targets)
        .get("/api/v1/discovery", discovery::discovery)
        .merge(one_target, by_path)
        .merge(decisions, |r| {
            r.route_layer(middleware::from_fn_with_state(
                state.clone(),
                fleet::forward_by_query,
            ))
        })
        .get("/api/v1/deliveries", deliveries::deliveries)
        .get("/api/v1/deliveries/{id}", deliveries::delivery);
    let target_writes = Routes::new()
        .post("/api/v1/targets/{name}/pause", actions::pause)
        .post("/api/v1/targets/{name}/resume", actions::resume)
        .post("/api/v1/targets/{name}/refit", actions::refit)
        .post("/api/v1/targets/{name}/frontier", frontier::start);
    let writes = Routes::new()
        .merge(target_writes, by_path)
        .post("/api/v1/deliveries/{id}/retry", deliveries::retry_delivery)
        .delete("/api/v1/deliveries/{id}", deliveries::discard_delivery);
    let read_auth = auth.clone();
    let all = Routes::new()
        .get("/healthz", health::healthz)
        .get("/readyz", health::readyz)
        .get("/metrics", health::metrics)
        .get("/api/v1/openapi.json", openapi)
        .merge(reads, |r| {
            r.route_layer(middleware::from_fn_with_state(
                read_auth,
                auth::require_token_for_reads,
            ))
        })
        .merge(writes, |r| {
            r.route_layer(middleware::from_fn_with_state(auth, auth::require_token))
        });
    let router = all
        .router
        .route_layer(middleware::map_response(error::json_rejections))
        .merge(dashboard::routes())
        .fallback(not_found)
        .layer(crate::telemetry::http_trace())
        .with_state(state);
    (router, all.list)
}

/// The OpenAPI document: every route of [`router`] (a test holds them to it), and a schema
/// for every answer (a test holds each to have its fields described).
#[derive(OpenApi)]
#[openapi(
    info(title = "prescale", description = "Predictive autoscaler: forecasts, bottlenecks and decisions."),
    paths(health::healthz, health::readyz, health::metrics, openapi, cluster::cluster, targets::targets, targets::target, discovery::discovery,
        forecasts::target_forecast, forecasts::target_history, forecasts::target_bottleneck,
        decisions::decisions, explain::explain, deliveries::deliveries, deliveries::delivery, deliveries::retry_delivery, deliveries::discard_delivery,
        actions::pause, actions::resume, actions::refit, frontier::start, frontier::frontier),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document (OpenAPI 3.1).
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json")))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
