//! The one error boundary of the API: [`ApiError`] answers `{"error": {"code", "message"}}`
//! with its status, and [`ApiQuery`] turns malformed query strings into such an answer.

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

/// An API error: an HTTP status, a stable code and a message for people.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(super) fn unknown_target(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_target",
            format!("no target named `{name}`"),
        )
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// The JSON body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ErrorDetail {
    /// Stable code: `bad_request`, `unknown_target`, `unknown_delivery`, `not_dead`,
    /// `not_found`, `no_data`, `no_outbox`, `storage`, `unauthorized`, `forbidden`,
    /// `no_cluster`, `owner_unreachable`, `coordination`.
    #[schema(value_type = String)]
    code: &'static str,
    /// For people.
    message: String,
}

/// Query parameters, deserialised strictly: an unknown or malformed parameter is a 400
/// with a JSON error, like every other error.
pub(super) struct ApiQuery<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// Gives a plain-text 400 of axum's own extractors (a path segment that is not UTF-8) the
/// JSON error body every other error has.
pub(super) async fn json_rejections(res: Response) -> Response {
    let plain = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
    if res.status() != StatusCode::BAD_REQUEST || !plain {
        return res;
    }
    let text = axum::body::to_bytes(res.into_body(), 4096)
        .await
        .unwrap_or_default();
    ApiError::bad_request(String::from_utf8_lossy(&text).into_owned()).into_response()
}
