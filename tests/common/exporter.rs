//! A `/metrics` endpoint whose series the test adds and removes while Prometheus scrapes
//! it ([`SeriesExporter`]): each is the counter `http_requests_total` with its own labels,
//! growing at its own rate. A series removed is missing from the next scrape, and
//! Prometheus marks it stale at once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::http::header;
use axum::routing::get;

use super::http::Server;

/// The exported series: labels as written between braces (`a="1",b="2"`) → (when added,
/// requests/s).
type Exported = Arc<Mutex<BTreeMap<String, (Instant, f64)>>>;

/// A live `/metrics` with series added and removed by the test.
pub struct SeriesExporter {
    server: Server,
    series: Exported,
}

impl SeriesExporter {
    /// Exports nothing yet.
    pub fn start() -> Self {
        let series: Exported = Arc::default();
        let shared = series.clone();
        let metrics = move || {
            let shared = shared.clone();
            async move {
                let mut body = String::from("# TYPE http_requests_total counter\n");
                for (labels, (since, rate)) in
                    shared.lock().unwrap_or_else(|p| p.into_inner()).iter()
                {
                    let value = rate * since.elapsed().as_secs_f64();
                    let _ = writeln!(body, "http_requests_total{{{labels}}} {value}");
                }
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
            }
        };
        Self {
            server: Server::start(Router::new().route("/metrics", get(metrics))),
            series,
        }
    }

    /// Exports `http_requests_total{labels}` growing by `rate` per second from now;
    /// `labels` as `[("namespace", "shop"), …]`.
    pub fn add(&self, labels: &[(&str, &str)], rate: f64) {
        self.lock()
            .insert(Self::key(labels), (Instant::now(), rate));
    }

    /// Stops exporting the series with these labels.
    pub fn remove(&self, labels: &[(&str, &str)]) {
        self.lock().remove(&Self::key(labels));
    }

    fn key(labels: &[(&str, &str)]) -> String {
        // The text format's escapes: backslash, double quote and newline.
        let escape = |v: &str| {
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let pairs: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        pairs.join(",")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Instant, f64)>> {
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its address (what Prometheus scrapes).
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }
}
