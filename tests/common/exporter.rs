//! A `/metrics` endpoint whose series the test adds, changes and removes while Prometheus
//! scrapes it ([`SeriesExporter`]): each is the counter `http_requests_total` with its own
//! labels, growing at its own rate. A series removed is missing from the next scrape, and
//! Prometheus marks it stale at once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::Router;
use axum::http::header;
use axum::routing::get;

use super::http::Server;

/// The exported series, by their labels as written between braces (`a="1",b="2"`).
type Exported = Arc<Mutex<BTreeMap<String, Counter>>>;

/// A counter growing at `rate` per second since `since`, from `base`.
#[derive(Debug, Clone, Copy)]
struct Counter {
    base: f64,
    since: Instant,
    rate: f64,
}

impl Counter {
    fn value(&self) -> f64 {
        self.base + self.rate * self.since.elapsed().as_secs_f64()
    }
}

/// A live `/metrics` with series added, changed and removed by the test.
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
                for (labels, counter) in lock(&shared).iter() {
                    let value = counter.value();
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

    /// Exports `http_requests_total{labels}` growing by `rate` per second from now (from
    /// its total so far when it is exported already: the counter never drops); `labels`
    /// as `[("namespace", "shop"), …]`.
    pub fn set(&self, labels: &[(&str, &str)], rate: f64) {
        let mut series = lock(&self.series);
        let key = key(labels);
        let base = series.get(&key).map_or(0.0, Counter::value);
        let since = Instant::now();
        series.insert(key, Counter { base, since, rate });
    }

    /// Stops exporting the series with these labels.
    pub fn remove(&self, labels: &[(&str, &str)]) {
        lock(&self.series).remove(&key(labels));
    }

    /// Its address (what Prometheus scrapes).
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }
}

fn lock(series: &Exported) -> MutexGuard<'_, BTreeMap<String, Counter>> {
    series.lock().unwrap_or_else(|p| p.into_inner())
}

/// The labels as the text format writes them, values escaped (backslash, double quote,
/// newline).
fn key(labels: &[(&str, &str)]) -> String {
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
