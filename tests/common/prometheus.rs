//! A real `prometheus` on 127.0.0.1 whose TSDB `promtool` filled from a [`Backfill`], and a
//! live [`Exporter`] it can scrape to carry the backfilled series on.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header;
use axum::routing::get;

use super::backfill::{Backfill, COUNTER};
use super::http::{Server, http_get};
use super::process::{ChildGuard, READY_DEADLINE, free_port, require_tool};

/// How to start a [`Prometheus`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Data written into the TSDB with `promtool` before the server starts.
    pub backfill: Option<Backfill>,
    /// An exporter to scrape every second as job `web` (`honor_labels: true`, so the
    /// exported `job`/`instance` labels are kept and the backfilled series continues).
    pub scrape: Option<SocketAddr>,
    /// The port to listen on; a free one when `None`.
    pub port: Option<u16>,
    /// A whole OpenMetrics file (ending in `# EOF`) written into the TSDB with `promtool`,
    /// instead of the backfill's.
    pub openmetrics: Option<String>,
}

/// A real `prometheus` process on 127.0.0.1, its data in a temporary directory; killed on
/// drop.
pub struct Prometheus {
    // First, so that the process is gone before its directory is removed.
    child: Option<ChildGuard>,
    dir: tempfile::TempDir,
    port: u16,
    backfill: Option<Backfill>,
}

impl Prometheus {
    /// A Prometheus holding the last `days` days of the trace, scraping nothing.
    pub fn backfilled(days: u32) -> Self {
        Self::start(Options {
            backfill: Some(Backfill::from_trace(days)),
            ..Options::default()
        })
    }

    /// [`Prometheus::start`] from async code: it blocks, so it runs on the blocking pool.
    pub async fn start_async(opts: Options) -> Self {
        tokio::task::spawn_blocking(move || Self::start(opts))
            .await
            .expect("start prometheus")
    }

    /// [`Prometheus::backfilled`] from async code.
    pub async fn backfilled_async(days: u32) -> Self {
        tokio::task::spawn_blocking(move || Self::backfilled(days))
            .await
            .expect("start prometheus")
    }

    /// Backfills the TSDB (when asked), writes the configuration, starts the server and
    /// waits until it is ready and answers for the backfilled series.
    ///
    /// Panics when `prometheus` or `promtool` is missing, when `promtool` fails (with its
    /// output), or when the server is not ready within [`READY_DEADLINE`] (with its log).
    pub fn start(opts: Options) -> Self {
        require_tool("prometheus", "--version", "prometheus");
        let dir = tempfile::Builder::new()
            .prefix("prescale-prometheus-")
            .tempdir()
            .expect("create a temporary directory");
        let openmetrics = (opts.openmetrics.clone())
            .or_else(|| opts.backfill.as_ref().map(Backfill::to_openmetrics));
        if let Some(openmetrics) = openmetrics {
            fill_tsdb(dir.path(), &openmetrics);
        }
        write_config(dir.path(), opts.scrape);
        let mut prometheus = Self {
            dir,
            port: opts.port.unwrap_or_else(free_port),
            child: None,
            backfill: opts.backfill,
        };
        prometheus.spawn();
        prometheus
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// What was backfilled.
    pub fn backfill(&self) -> Option<&Backfill> {
        self.backfill.as_ref()
    }

    /// The temporary directory (data in `data/`, log in `prometheus.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (SIGKILL), keeping its data directory.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Starts the server again on the same port and data, and waits until it is ready.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// An instant query at `time` (Unix seconds; now when `None`): `(labels, value)` per
    /// series, the value as Prometheus wrote it. Panics on any failure.
    pub fn instant(&self, query: &str, time: Option<i64>) -> Vec<(serde_json::Value, String)> {
        match self.try_instant(query, time) {
            Ok(v) => v,
            Err(e) => panic!("instant query `{query}` failed: {e}"),
        }
    }

    fn try_instant(
        &self,
        query: &str,
        time: Option<i64>,
    ) -> Result<Vec<(serde_json::Value, String)>, String> {
        let mut url = url::Url::parse("http://x/api/v1/query").map_err(|e| e.to_string())?;
        url.query_pairs_mut().append_pair("query", query);
        if let Some(t) = time {
            url.query_pairs_mut().append_pair("time", &t.to_string());
        }
        let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
        let (status, body) = http_get(self.addr(), &path).map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("HTTP {status}: {body}"));
        }
        let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let result = json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(result
            .into_iter()
            .map(|r| {
                let value = r["value"][1].as_str().unwrap_or_default().to_owned();
                (r["metric"].clone(), value)
            })
            .collect())
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("prometheus.log"))
            .expect("open prometheus.log");
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!(
            "--config.file={}",
            self.dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            self.dir.path().join("data").display()
        ))
        .arg("--storage.tsdb.retention.time=100y")
        .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log handle"))
        .stderr(log);
        self.child = Some(ChildGuard::spawn(&mut cmd, "prometheus", "prometheus"));
        self.wait_ready();
    }

    /// Waits until `/-/ready` answers 200 and, with a backfill, the last backfilled sample
    /// can be queried. Panics with the log when the process exits or the deadline passes.
    fn wait_ready(&mut self) {
        let until = Instant::now() + READY_DEADLINE;
        let check = self.backfill.as_ref().map(|b| {
            let last = b.end();
            (format!("count({COUNTER}{{job=\"web\"}})"), last)
        });
        loop {
            if let Some(status) = self.child.as_mut().and_then(ChildGuard::exited) {
                panic!(
                    "prometheus exited early ({status}) on port {}; its log:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            let state = match http_get(self.addr(), "/-/ready") {
                Ok((200, _)) => match &check {
                    None => return,
                    Some((query, time)) => match self.try_instant(query, Some(*time)) {
                        Ok(rows) if !rows.is_empty() => return,
                        Ok(_) => format!("`{query}` at {time} is empty"),
                        Err(e) => format!("`{query}` failed: {e}"),
                    },
                },
                Ok((status, body)) => format!("/-/ready: HTTP {status}: {body}"),
                Err(e) => format!("/-/ready: {e}"),
            };
            if Instant::now() >= until {
                panic!(
                    "prometheus on port {} not ready within {READY_DEADLINE:?} ({state}); its log:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Writes an OpenMetrics file into a new TSDB in `dir/data` with `promtool`; panics with
/// its output when it fails.
fn fill_tsdb(dir: &Path, openmetrics: &str) {
    require_tool("promtool", "--version", "prometheus");
    let file = dir.join("backfill.om");
    std::fs::write(&file, openmetrics).expect("write the OpenMetrics file");
    let out = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
        .arg(&file)
        .arg(dir.join("data"))
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool tsdb create-blocks-from openmetrics failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `dir/prometheus.yml`: everything every second, scraping `scrape` (if any) as job
/// `web` with its own labels kept.
fn write_config(dir: &Path, scrape: Option<SocketAddr>) {
    let mut config = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
    );
    match scrape {
        Some(addr) => {
            let _ = write!(
                config,
                "scrape_configs:\n  - job_name: web\n    honor_labels: true\n    \
                 static_configs:\n      - targets: [\"{addr}\"]\n"
            );
        }
        None => config.push_str("scrape_configs: []\n"),
    }
    std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
}

/// A gauge's value, read at each scrape.
type Gauge = Arc<dyn Fn() -> f64 + Send + Sync>;

/// A live `/metrics` endpoint exposing `http_requests_total{job="web",instance="trace"}`
/// growing at a constant rate from a starting total: scraped by [`Prometheus`] after a
/// [`Backfill`] with `start_total = backfill.total()`, it carries the same series on.
pub struct Exporter {
    server: Server,
}

impl Exporter {
    /// Serves `start_total + rate_per_s × seconds since start`.
    pub fn start(start_total: f64, rate_per_s: f64) -> Self {
        Self::serve(start_total, rate_per_s, None)
    }

    /// [`Exporter::start`], also exposing the gauge `name{job="web",instance="trace"}`
    /// whose value `value` gives at each scrape (e.g. the count a stand-in platform runs).
    pub fn with_gauge(
        start_total: f64,
        rate_per_s: f64,
        name: &'static str,
        value: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> Self {
        Self::serve(start_total, rate_per_s, Some((name, Arc::new(value))))
    }

    fn serve(start_total: f64, rate_per_s: f64, gauge: Option<(&'static str, Gauge)>) -> Self {
        let started = Instant::now();
        let metrics = move || {
            let gauge = gauge.clone();
            async move {
                let value = start_total + rate_per_s * started.elapsed().as_secs_f64();
                let mut body = format!(
                    "# TYPE {COUNTER} counter\n{COUNTER}{{job=\"web\",instance=\"trace\"}} {value}\n"
                );
                if let Some((name, value)) = gauge {
                    let _ = write!(
                        body,
                        "# TYPE {name} gauge\n{name}{{job=\"web\",instance=\"trace\"}} {}\n",
                        value()
                    );
                }
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
            }
        };
        Self {
            server: Server::start(Router::new().route("/metrics", get(metrics))),
        }
    }

    /// Its address (what Prometheus scrapes).
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }
}
