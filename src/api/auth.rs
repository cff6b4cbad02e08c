//! Bearer-token authentication for the API.
//!
//! Mutating endpoints always need the token: without one configured they answer 401 and
//! never act. Read endpoints need it only when `[server] auth_reads` is set. Tokens are
//! compared in constant time (over their SHA-256 digests, so the length leaks nothing).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::config::{Secret, ServerConfig};

/// Who may call the API.
#[derive(Debug, Clone, Default)]
pub struct ApiAuth {
    token_digest: Option<[u8; 32]>,
    reads: bool,
}

impl ApiAuth {
    /// Authentication as `[server]` configures it.
    pub fn from_config(server: &ServerConfig) -> Self {
        Self::new(server.api_token.as_ref(), server.auth_reads)
    }

    /// A token (or none) and whether reads need it.
    pub fn new(token: Option<&Secret>, reads: bool) -> Self {
        Self {
            token_digest: token.map(|t| Sha256::digest(t.expose().as_bytes()).into()),
            reads,
        }
    }

    /// Checks the `Authorization` header value.
    fn check(&self, header: Option<&str>) -> Result<(), ApiError> {
        let Some(expected) = &self.token_digest else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "no API token is configured; set [server] api_token_env or api_token_file",
            ));
        };
        let Some(given) = header.and_then(bearer_token) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing `Authorization: Bearer <token>`",
            ));
        };
        let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        if bool::from(digest.ct_eq(expected)) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "wrong API token",
            ))
        }
    }
}

fn authorization(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

fn refuse(e: ApiError) -> Response {
    let unauthorized = e.status == StatusCode::UNAUTHORIZED;
    let mut res = e.into_response();
    if unauthorized {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    res
}

/// Middleware for mutating routes: the token is always required.
pub(super) async fn require_token(
    State(auth): State<Arc<ApiAuth>>,
    req: Request,
    next: Next,
) -> Response {
    match auth.check(authorization(&req)) {
        Ok(()) => next.run(req).await,
        Err(e) => refuse(e),
    }
}

/// Middleware for read routes: the token is required when `auth_reads` is set.
pub(super) async fn require_token_for_reads(
    State(auth): State<Arc<ApiAuth>>,
    req: Request,
    next: Next,
) -> Response {
    if !auth.reads {
        return next.run(req).await;
    }
    match auth.check(authorization(&req)) {
        Ok(()) => next.run(req).await,
        Err(e) => refuse(e),
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 9110, section 11.1).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for h in ["Bearer abc", "bearer abc", "BEARER abc"] {
            assert_eq!(bearer_token(h), Some("abc"), "{h}");
        }
        for h in ["Basic abc", "Bearerabc", "", "abc"] {
            assert_eq!(bearer_token(h), None, "{h}");
        }
    }
}
