//! Logging set-up: `tracing` to stderr, as text or JSON, filtered by `RUST_LOG` (default
//! `info`), coloured only on a terminal and never with `NO_COLOR` set; how the API's
//! requests are traced ([`http_trace`]); and when a condition that persists across cycles
//! is logged ([`condition`]).

use std::io::IsTerminal;

use axum::http::{Request, Response, StatusCode};
use tower_http::classify::{
    ClassifiedResponse, ClassifyResponse, MakeClassifier, NeverClassifyEos, ServerErrorsAsFailures,
    ServerErrorsFailureClass,
};
use tower_http::trace::TraceLayer;
use tracing_subscriber::EnvFilter;

pub mod condition;
pub mod progress;

/// Installs the global subscriber; a second call does nothing. Text has colour codes only
/// when stderr is a terminal and `NO_COLOR` is unset or empty (<https://no-color.org>),
/// so logs sent to a file, a pipe or a collector are plain.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        // A log line that cannot be written (stderr closed, its reader gone) is dropped;
        // reporting that on stderr would panic.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Whether text logs carry colour codes: only on a terminal, and not when `NO_COLOR` is
/// set to anything but the empty string.
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// Request tracing for the API (tower-http): each request in a span, its answer at DEBUG,
/// and a server error (5xx) at ERROR, except `/readyz`'s 503, which only says that some
/// target is not backfilled yet (expected at every start) and is logged at DEBUG like any
/// other answer.
pub fn http_trace() -> TraceLayer<ReadinessAware> {
    TraceLayer::new(ReadinessAware)
}

/// Classifies answers as [`ServerErrorsAsFailures`] does, except that `503` from
/// `/readyz` is an answer, not a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadinessAware;

impl MakeClassifier for ReadinessAware {
    type Classifier = Classifier;
    type FailureClass = ServerErrorsFailureClass;
    type ClassifyEos = NeverClassifyEos<ServerErrorsFailureClass>;

    fn make_classifier<B>(&self, req: &Request<B>) -> Classifier {
        Classifier {
            readiness: req.uri().path() == "/readyz",
        }
    }
}

/// The classifier of one request (see [`ReadinessAware`]).
#[derive(Debug, Clone, Copy)]
pub struct Classifier {
    /// The request is for `/readyz`.
    readiness: bool,
}

impl ClassifyResponse for Classifier {
    type FailureClass = ServerErrorsFailureClass;
    type ClassifyEos = NeverClassifyEos<ServerErrorsFailureClass>;

    fn classify_response<B>(
        self,
        res: &Response<B>,
    ) -> ClassifiedResponse<Self::FailureClass, Self::ClassifyEos> {
        if self.readiness && res.status() == StatusCode::SERVICE_UNAVAILABLE {
            return ClassifiedResponse::Ready(Ok(()));
        }
        ServerErrorsAsFailures::new().classify_response(res)
    }

    fn classify_error<E: std::fmt::Display + 'static>(self, error: &E) -> Self::FailureClass {
        ServerErrorsAsFailures::new().classify_error(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether an answer of `status` to `path` is classified as a failure.
    fn failure(path: &str, status: u16) -> bool {
        let req = Request::get(path).body(()).expect("request");
        let res = Response::builder()
            .status(status)
            .body(())
            .expect("response");
        match ReadinessAware.make_classifier(&req).classify_response(&res) {
            ClassifiedResponse::Ready(r) => r.is_err(),
            ClassifiedResponse::RequiresEos(_) => true,
        }
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour(true, None));
        assert!(
            colour(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(
            !colour(false, None),
            "a file or a pipe gets no escape codes"
        );
        assert!(!colour(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn only_readiness_503_is_not_a_failure() {
        assert!(!failure("/readyz", 503), "not ready is an answer");
        assert!(!failure("/readyz", 200));
        assert!(failure("/readyz", 500), "a real server error stays one");
        assert!(failure("/api/v1/targets", 503));
        assert!(failure("/metrics", 500));
        assert!(!failure("/api/v1/targets/x", 404));
    }
}
