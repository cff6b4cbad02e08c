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
//! `actions.rs` (pause, resume, refit); `views.rs` holds what the API shows of the
//! pipeline's types, `paging.rs` the `limit`/`offset` arithmetic and `error.rs` the error
//! boundary. Every answer is a typed struct, so the OpenAPI document describes each field.

use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Router, middleware};
use utoipa::OpenApi;

mod actions;
mod auth;
mod dashboard;
mod decisions;
mod deliveries;
mod error;
mod forecasts;
mod health;
mod paging;
mod targets;
mod views;

pub use auth::ApiAuth;
pub use error::ApiError;

use error::{ApiQuery, ErrorBody, ErrorDetail};

use crate::store::Store;

/// The API over `store`, guarded by `auth`.
pub fn router(store: Store, auth: ApiAuth) -> Router {
    routes(store, auth).0
}

/// A router that remembers the method and path of every route it serves, so that a test
/// can hold them to the OpenAPI document.
struct Routes {
    router: Router<Store>,
    list: Vec<(&'static str, &'static str)>,
}

impl Routes {
    fn new() -> Self {
        Self {
            router: Router::new(),
            list: Vec::new(),
        }
    }

    fn get<H: axum::handler::Handler<T, Store>, T: 'static>(
        mut self,
        path: &'static str,
        h: H,
    ) -> Self {
        self.router = self.router.route(path, get(h));
        self.list.push(("get", path));
        self
    }

    fn post<H: axum::handler::Handler<T, Store>, T: 'static>(
        mut self,
        path: &'static str,
        h: H,
    ) -> Self {
        self.router = self.router.route(path, post(h));
        self.list.push(("post", path));
        self
    }

    fn delete<H: axum::handler::Handler<T, Store>, T: 'static>(
        mut self,
        path: &'static str,
        h: H,
    ) -> Self {
        self.router = self.router.route(path, delete(h));
        self.list.push(("delete", path));
        self
    }

    fn merge(mut self, other: Routes, layer: impl FnOnce(Router<Store>) -> Router<Store>) -> Self {
        self.router = self.router.merge(layer(other.router));
        self.list.extend(other.list);
        self
    }
}

/// The router and the (method, path) of each documented route.
fn routes(store: Store, auth: ApiAuth) -> (Router, Vec<(&'static str, &'static str)>) {
    let auth = Arc::new(auth);
    let reads = Routes::new()
        .get("/api/v1/targets", targets::targets)
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
        .get("/api/v1/decisions", decisions::decisions)
        .get("/api/v1/deliveries", deliveries::deliveries)
        .get("/api/v1/deliveries/{id}", deliveries::delivery);
    let writes = Routes::new()
        .post("/api/v1/targets/{name}/pause", actions::pause)
        .post("/api/v1/targets/{name}/resume", actions::resume)
        .post("/api/v1/targets/{name}/refit", actions::refit)
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
        .with_state(store);
    (router, all.list)
}

/// The OpenAPI document: every route of [`router`] (a test holds them to it), and a schema
/// for every answer (a test holds each to have its fields described).
#[derive(OpenApi)]
#[openapi(
    info(title = "prescale", description = "Predictive autoscaler: forecasts, bottlenecks and decisions."),
    paths(health::healthz, health::readyz, health::metrics, openapi, targets::targets, targets::target,
        forecasts::target_forecast, forecasts::target_history, forecasts::target_bottleneck,
        decisions::decisions, deliveries::deliveries, deliveries::delivery, deliveries::retry_delivery, deliveries::discard_delivery,
        actions::pause, actions::resume, actions::refit),
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
