//! The harness shared by the integration tests: real processes and real servers on free
//! `127.0.0.1` ports.
//!
//! - [`Prometheus`]: a real `prometheus` process whose TSDB is backfilled with `promtool`
//!   from a real trace ([`Backfill`]), optionally scraping a live [`Exporter`] that carries
//!   the same series on.
//! - [`Receiver`]: an HTTP server that records every request and answers a scripted
//!   sequence of statuses (for webhooks and for faking a Prometheus).
//! - [`TempConfig`]: a prescale configuration file in a temporary directory.
//!
//! Nothing here waits by sleeping: readiness is polled with a deadline ([`poll_until`]) and
//! a timeout panics with what was awaited and what the server logged.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{oneshot, watch};

/// How long a started server may take to become ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);

/// The counter the backfill and the exporter write: `http_requests_total{job="web",instance="trace"}`.
pub const COUNTER: &str = "http_requests_total";
/// The request rate as the shipped configuration asks for it.
pub const RATE_QUERY: &str = r#"sum(rate(http_requests_total{job="web"}[5m]))"#;

// ---------------------------------------------------------------------------------------
// Small helpers.
// ---------------------------------------------------------------------------------------

/// A port that was free a moment ago on 127.0.0.1 (bound to port 0, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Unix time now, in seconds.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The NASA HTTP July 1995 trace: `timestamp_seconds,value`, requests per 60 s bucket.
pub fn trace_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/traces/nasa_http_jul95_1min.csv")
}

/// The rows of a `timestamp_seconds,value` trace.
pub fn read_trace(path: &Path) -> Vec<(i64, f64)> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read trace {}: {e}", path.display()));
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (ts, v) = l
                .split_once(',')
                .unwrap_or_else(|| panic!("{}: bad row `{l}`", path.display()));
            let ts = ts
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{}: `{l}`: {e}", path.display()));
            let v = v
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{}: `{l}`: {e}", path.display()));
            (ts, v)
        })
        .collect()
}

/// Calls `probe` until it gives `Some`, at most until `deadline` has passed, with a short
/// pause between attempts; panics naming `what` on timeout.
#[track_caller]
pub fn poll_until<T>(what: &str, deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`poll_until`] for async tests (does not block the test's runtime while waiting).
pub async fn poll_until_async<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP/1.0 GET (no chunked encoding) to 127.0.0.1: the status and the body.
/// Synchronous, so that the harness works from any test, async or not.
pub fn http_get(addr: SocketAddr, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head}")))?;
    Ok((status, body.to_owned()))
}

/// Runs `cmd --version` to check that a tool is installed; panics with how to get it.
fn require_tool(cmd: &str) {
    match Command::new(cmd).arg("--version").output() {
        Ok(_) => {}
        Err(e) => panic!(
            "`{cmd}` is needed by this test but cannot be run ({e}); \
             install Debian package prometheus (apt-get install -y prometheus)"
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Backfill: a trace as a Prometheus counter.
// ---------------------------------------------------------------------------------------

/// One minute of the backfilled counter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Minute {
    /// The end of the minute's bucket: the counter's sample time (Unix seconds).
    pub ts: i64,
    /// Requests in the bucket (the trace value).
    pub requests: f64,
    /// The counter after the bucket: the sum of `requests` so far.
    pub total: f64,
}

/// The last days of the trace as the counter `http_requests_total{job="web",instance="trace"}`,
/// one sample a minute, shifted so that the last sample is one minute before the current
/// minute. `rate(http_requests_total[5m])` is then about the trace value / 60.
#[derive(Debug, Clone)]
pub struct Backfill {
    minutes: Vec<Minute>,
    gap: Option<Range<i64>>,
}

impl Backfill {
    /// The last `days` days of the NASA trace, ending a minute before the current minute.
    pub fn from_trace(days: u32) -> Self {
        Self::ending_at(days, (now_secs() / 60) * 60 - 60)
    }

    /// The last `days` days of the NASA trace, the last sample at `end` (a multiple of 60).
    pub fn ending_at(days: u32, end: i64) -> Self {
        assert!(end % 60 == 0, "end {end} is not on the minute");
        let trace = read_trace(&trace_path());
        let last = trace.last().map(|r| r.0).expect("the trace is empty");
        // The trace's timestamps are bucket starts; a sample is stamped at its bucket's end.
        let shift = end - (last + 60);
        let since = last + 60 - i64::from(days) * 86_400;
        let mut total = 0.0;
        let minutes = trace
            .into_iter()
            .filter(|(ts, _)| *ts >= since)
            .map(|(ts, requests)| {
                total += requests;
                Minute {
                    ts: ts + 60 + shift,
                    requests,
                    total,
                }
            })
            .collect();
        Self { minutes, gap: None }
    }

    /// Leaves out the samples stamped in `[end − minutes.end min, end − minutes.start min)`,
    /// `end` being the last sample (which stays): a scrape outage. The counter keeps
    /// counting across it, as a real one would.
    pub fn with_gap(mut self, minutes: Range<u32>) -> Self {
        assert!(
            minutes.start >= 1,
            "the gap must leave the last sample in place"
        );
        let end = self.end();
        self.gap = Some(end - i64::from(minutes.end) * 60..end - i64::from(minutes.start) * 60);
        self
    }

    /// Every minute, those in the gap included.
    pub fn minutes(&self) -> &[Minute] {
        &self.minutes
    }

    /// The timestamps left out, `[start, end)`.
    pub fn gap(&self) -> Option<Range<i64>> {
        self.gap.clone()
    }

    /// Whether the sample at `ts` is written (it exists and is not in the gap).
    pub fn has_sample(&self, ts: i64) -> bool {
        self.minute(ts).is_some() && !self.gap.as_ref().is_some_and(|g| g.contains(&ts))
    }

    /// The minute whose sample is at `ts`.
    pub fn minute(&self, ts: i64) -> Option<Minute> {
        let first = self.start();
        if ts < first || (ts - first) % 60 != 0 {
            return None;
        }
        self.minutes.get(((ts - first) / 60) as usize).copied()
    }

    /// The first sample time.
    pub fn start(&self) -> i64 {
        self.minutes.first().map_or(0, |m| m.ts)
    }

    /// The last sample time.
    pub fn end(&self) -> i64 {
        self.minutes.last().map_or(0, |m| m.ts)
    }

    /// The counter at the last sample (what a live exporter should continue from).
    pub fn total(&self) -> f64 {
        self.minutes.last().map_or(0.0, |m| m.total)
    }

    /// `rate(http_requests_total[window])` at a minute `ts` when samples lie on both ends of
    /// the window: `(total(ts) - total(ts - window)) / window`.
    pub fn rate(&self, ts: i64, window: i64) -> Option<f64> {
        let now = self.minute(ts)?;
        let then = self.minute(ts - window)?;
        Some((now.total - then.total) / window as f64)
    }

    /// The samples as an OpenMetrics file for `promtool tsdb create-blocks-from openmetrics`.
    ///
    /// OpenMetrics names the counter *family* `http_requests` and its samples
    /// `http_requests_total`; the TSDB stores the sample name, so PromQL sees
    /// `http_requests_total`. Timestamps are in seconds. The file must end with `# EOF`.
    pub fn to_openmetrics(&self) -> String {
        let mut out = String::with_capacity(self.minutes.len() * 64);
        out.push_str("# HELP http_requests Requests served, replayed from a trace.\n");
        out.push_str("# TYPE http_requests counter\n");
        for m in self.minutes.iter().filter(|m| self.has_sample(m.ts)) {
            let _ = writeln!(
                out,
                "{COUNTER}{{job=\"web\",instance=\"trace\"}} {} {}",
                m.total, m.ts
            );
        }
        out.push_str("# EOF\n");
        out
    }
}

// ---------------------------------------------------------------------------------------
// Prometheus.
// ---------------------------------------------------------------------------------------

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
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
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
        require_tool("prometheus");
        let dir = tempfile::Builder::new()
            .prefix("prescale-prometheus-")
            .tempdir()
            .expect("create a temporary directory");
        let data = dir.path().join("data");
        let openmetrics = (opts.openmetrics.clone())
            .or_else(|| opts.backfill.as_ref().map(Backfill::to_openmetrics));
        if let Some(openmetrics) = openmetrics {
            require_tool("promtool");
            let file = dir.path().join("backfill.om");
            std::fs::write(&file, openmetrics).expect("write the OpenMetrics file");
            let out = Command::new("promtool")
                .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
                .arg(&file)
                .arg(&data)
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
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
        );
        match opts.scrape {
            Some(addr) => {
                let _ = write!(
                    config,
                    "scrape_configs:\n  - job_name: web\n    honor_labels: true\n    \
                     static_configs:\n      - targets: [\"{addr}\"]\n"
                );
            }
            None => config.push_str("scrape_configs: []\n"),
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write prometheus.yml");
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
            let _ = child.kill();
            let _ = child.wait();
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
        let child = Command::new("prometheus")
            .arg(format!(
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
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start prometheus ({e}); install Debian package prometheus")
            });
        self.child = Some(child);
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
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
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

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------
// HTTP servers on their own thread.
// ---------------------------------------------------------------------------------------

/// An axum router served on 127.0.0.1:free port by a runtime on its own thread, so that it
/// answers whatever the test's runtime is doing (blocked, paused, or absent). Stopped on
/// drop.
struct Server {
    addr: SocketAddr,
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(router: Router) -> Self {
        Self::start_on(router, 0)
    }

    /// On a given port (0: a free one).
    fn start_on(router: Router, port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
        let addr = listener.local_addr().expect("local address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a runtime");
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("test-server-{addr}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    // Dropping the server future on stop closes every connection at once,
                    // so that a drop never waits for a client.
                    tokio::select! {
                        r = axum::serve(listener, router) => r.expect("serve"),
                        _ = stopped => {}
                    }
                });
            })
            .expect("spawn the server thread");
        Self {
            addr,
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Exporter.
// ---------------------------------------------------------------------------------------

/// A live `/metrics` endpoint exposing `http_requests_total{job="web",instance="trace"}`
/// growing at a constant rate from a starting total: scraped by [`Prometheus`] after a
/// [`Backfill`] with `start_total = backfill.total()`, it carries the same series on.
pub struct Exporter {
    server: Server,
}

impl Exporter {
    /// Serves `start_total + rate_per_s × seconds since start`.
    pub fn start(start_total: f64, rate_per_s: f64) -> Self {
        let started = Instant::now();
        let metrics = move || async move {
            let value = start_total + rate_per_s * started.elapsed().as_secs_f64();
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                format!(
                    "# TYPE {COUNTER} counter\n{COUNTER}{{job=\"web\",instance=\"trace\"}} {value}\n"
                ),
            )
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

// ---------------------------------------------------------------------------------------
// Receiver.
// ---------------------------------------------------------------------------------------

/// One request as the [`Receiver`] saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// E.g. `POST`.
    pub method: Method,
    /// The path, e.g. `/scale`.
    pub path: String,
    /// The query string, without `?`.
    pub query: Option<String>,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// The status the receiver answered.
    pub status: u16,
}

impl Recorded {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The query-string pairs, decoded.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.query.as_deref().unwrap_or_default().as_bytes())
            .into_owned()
            .collect()
    }

    /// The body as JSON; panics if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One scripted answer of the [`Receiver`].
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status.
    pub status: u16,
    /// The body (sent as JSON when it parses as JSON, as text otherwise).
    pub body: String,
    /// How long to wait before answering (e.g. to make a client time out).
    pub delay: Duration,
}

impl Reply {
    /// A reply with this status and a short text body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            body: format!("receiver says {status}"),
            delay: Duration::ZERO,
        }
    }

    /// A reply with this status and body.
    pub fn body(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// The same reply, sent after `delay`.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

struct ReceiverState {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<VecDeque<Reply>>,
    then: Mutex<Reply>,
    count: watch::Sender<usize>,
    /// Answer 503 to this share of requests, at random (after the script).
    fail_ratio: Mutex<Option<(f64, rand::rngs::StdRng)>>,
    /// Requests being answered now, and the most at once, per path.
    in_flight: Mutex<std::collections::HashMap<String, (usize, usize)>>,
}

/// Counts a request as in flight on its path until dropped (also when the client goes
/// away and the handler is cancelled).
struct InFlight {
    state: Arc<ReceiverState>,
    path: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut m = self
            .state
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(e) = m.get_mut(&self.path) {
            e.0 = e.0.saturating_sub(1);
        }
    }
}

impl ReceiverState {
    // A poisoned lock only means another test thread panicked; the data is still usable.
    fn requests(&self) -> MutexGuard<'_, Vec<Recorded>> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A real HTTP server on 127.0.0.1 recording every request (any method, any path) and
/// answering a scripted sequence of replies, then a fixed one.
pub struct Receiver {
    server: Server,
    state: Arc<ReceiverState>,
}

impl Receiver {
    /// Answers `statuses` in order (e.g. `[500, 500]`), then 200.
    pub fn start(statuses: &[u16]) -> Self {
        Self::with_replies(
            statuses.iter().map(|&s| Reply::status(s)).collect(),
            Reply::status(200),
        )
    }

    /// Answers `script` in order, then `then` for ever.
    pub fn with_replies(script: Vec<Reply>, then: Reply) -> Self {
        let state = Arc::new(ReceiverState {
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(script.into()),
            then: Mutex::new(then),
            count: watch::Sender::new(0),
            fail_ratio: Mutex::new(None),
            in_flight: Mutex::new(Default::default()),
        });
        let router = Router::new().fallback(record).with_state(state.clone());
        Self {
            server: Server::start(router),
            state,
        }
    }

    /// Answers `then` for ever, on 127.0.0.1:`port` (e.g. a port that refused connections
    /// until now).
    pub fn start_on(port: u16, then: Reply) -> Self {
        let state = Arc::new(ReceiverState {
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            then: Mutex::new(then),
            count: watch::Sender::new(0),
            fail_ratio: Mutex::new(None),
            in_flight: Mutex::new(Default::default()),
        });
        let router = Router::new().fallback(record).with_state(state.clone());
        Self {
            server: Server::start_on(router, port),
            state,
        }
    }

    /// Answers 200, but 503 to a random `ratio` of requests (seeded, so a run can be
    /// repeated).
    pub fn flaky(ratio: f64, seed: u64) -> Self {
        use rand::SeedableRng;
        let r = Self::start(&[]);
        *r.state.fail_ratio.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((ratio, rand::rngs::StdRng::seed_from_u64(seed)));
        r
    }

    /// From now on, answers `reply` once the script has run out.
    pub fn set_then(&self, reply: Reply) {
        *self.state.then.lock().unwrap_or_else(|p| p.into_inner()) = reply;
    }

    /// The most requests answered at once on `path`.
    pub fn max_in_flight(&self, path: &str) -> usize {
        let m = self
            .state
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        m.get(path).map_or(0, |e| e.1)
    }

    /// The requests answered with a 2xx.
    pub fn accepted(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// `http://127.0.0.1:PORT{path}`, e.g. `url("/scale")`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.addr)
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests().clone()
    }

    /// Waits until at least `n` requests have arrived and returns them all; panics after
    /// `deadline` (real time, also when the test's clock is paused) with what did arrive.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> Vec<Recorded> {
        let (expired, timeout) = oneshot::channel::<()>();
        // The deadline runs on the server's runtime, whose clock is real.
        let timer = self.server.handle.spawn(async move {
            tokio::time::sleep(deadline).await;
            let _ = expired.send(());
        });
        let mut count = self.state.count.subscribe();
        let arrived = tokio::select! {
            r = count.wait_for(|c| *c >= n) => r.is_ok(),
            _ = timeout => false,
        };
        timer.abort();
        let requests = self.requests();
        assert!(
            arrived,
            "timed out after {deadline:?} waiting for {n} requests at {}; {} arrived: {:#?}",
            self.server.addr,
            requests.len(),
            requests
                .iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect::<Vec<_>>()
        );
        requests
    }
}

async fn record(
    State(state): State<Arc<ReceiverState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let _in_flight = {
        let mut m = state.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(path.clone()).or_insert((0, 0));
        e.0 += 1;
        e.1 = e.1.max(e.0);
        InFlight {
            state: state.clone(),
            path: path.clone(),
        }
    };
    let reply = {
        let mut script = state.script.lock().unwrap_or_else(|p| p.into_inner());
        script.pop_front().unwrap_or_else(|| {
            let mut flaky = state.fail_ratio.lock().unwrap_or_else(|p| p.into_inner());
            let fail = match flaky.as_mut() {
                Some((ratio, rng)) => rand::Rng::random_bool(rng, *ratio),
                None => false,
            };
            if fail {
                Reply::status(503)
            } else {
                state.then.lock().unwrap_or_else(|p| p.into_inner()).clone()
            }
        })
    };
    state.requests().push(Recorded {
        method,
        path,
        query: uri.query().map(str::to_owned),
        headers,
        body,
        status: reply.status,
    });
    state.count.send_modify(|c| *c += 1);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if serde_json::from_str::<serde_json::Value>(&reply.body).is_ok() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    (status, [(header::CONTENT_TYPE, content_type)], reply.body).into_response()
}

// ---------------------------------------------------------------------------------------
// Configuration files.
// ---------------------------------------------------------------------------------------

/// A prescale configuration file (`prescale.toml`) in its own temporary directory, beside
/// which secret files can be written (relative paths in the file resolve against it).
pub struct TempConfig {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl TempConfig {
    /// Writes `toml` to `prescale.toml` in a new temporary directory.
    pub fn write(toml: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("prescale-config-")
            .tempdir()
            .expect("create a temporary directory");
        let path = dir.path().join("prescale.toml");
        std::fs::write(&path, toml).expect("write prescale.toml");
        Self { dir, path }
    }

    /// The configuration file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes another file beside it (e.g. a secret) and returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

/// A minimal valid configuration: Prometheus at `prometheus_url`, the API on `listen`, and
/// one target `web` reading [`RATE_QUERY`]; `extra` is appended to the `[[target]]` table
/// (e.g. `mode = "forecast-only"`, or sub-tables such as `[target.platform]`).
pub fn minimal_config(prometheus_url: &str, listen: SocketAddr, extra: &str) -> String {
    format!(
        r#"[prometheus]
url = "{prometheus_url}"

[server]
listen = "{listen}"

[[target]]
name = "web"
request_rate = '{RATE_QUERY}'
capacity_rps = 150
startup = "3m"
min_replicas = 2
max_replicas = 40
{extra}
"#
    )
}

// ---------------------------------------------------------------------------------------
// HAProxy and Alertmanager.
// ---------------------------------------------------------------------------------------

/// Panics naming the Debian package when `cmd` cannot be run.
fn require(cmd: &str, arg: &str, package: &str) {
    if let Err(e) = Command::new(cmd).arg(arg).output() {
        panic!(
            "`{cmd}` is needed by this test but cannot be run ({e}); \
             install Debian package {package} (apt-get install -y {package})"
        );
    }
}

/// A real `haproxy` in the foreground: an HTTP frontend on a free port, balancing
/// (round robin, weight 100 each) over backend `web` with one server per address, and the
/// runtime API at admin level on a unix socket and a TCP port. Killed on drop.
pub struct Haproxy {
    dir: tempfile::TempDir,
    child: Child,
    /// The frontend.
    pub frontend: SocketAddr,
    /// The runtime API's TCP address.
    pub api_tcp: SocketAddr,
}

impl Haproxy {
    /// Starts it and waits until the frontend and both API sockets answer.
    pub fn start(servers: &[SocketAddr]) -> Self {
        require("haproxy", "-v", "haproxy");
        let dir = tempfile::Builder::new()
            .prefix("prescale-haproxy-")
            .tempdir()
            .expect("create a temporary directory");
        let frontend = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let api_tcp = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cfg = format!(
            "global\n  stats socket {}/admin.sock level admin\n  stats socket ipv4@{api_tcp} level admin\n\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\n\
             frontend fe\n  bind {frontend}\n  default_backend web\n\n\
             backend web\n  balance roundrobin\n",
            dir.path().display()
        );
        for (i, s) in servers.iter().enumerate() {
            let _ = writeln!(cfg, "  server s{i} {s} weight 100");
        }
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, cfg).expect("write haproxy.cfg");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("haproxy.log");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start haproxy ({e}); install Debian package haproxy")
            });
        let mut h = Self {
            dir,
            child,
            frontend,
            api_tcp,
        };
        let socket = h.socket();
        poll_until("haproxy to listen", READY_DEADLINE, || {
            if let Ok(Some(status)) = h.child.try_wait() {
                panic!("haproxy exited early ({status}); its log:\n{}", h.log());
            }
            let ready = socket.exists()
                && TcpStream::connect(frontend).is_ok()
                && TcpStream::connect(api_tcp).is_ok();
            ready.then_some(())
        });
        h
    }

    /// The runtime API's unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// One runtime API command over the unix socket; HAProxy's whole answer.
    pub fn command(&self, cmd: &str) -> String {
        let mut s = std::os::unix::net::UnixStream::connect(self.socket()).expect("admin socket");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        writeln!(s, "{cmd}").expect("write the command");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read the answer");
        out
    }

    /// `(server name, address, admin state, weight)` from `show servers state web`.
    pub fn servers(&self) -> Vec<(String, String, u32, u32)> {
        let text = self.command("show servers state web");
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        assert_eq!(lines.next(), Some("1"), "{text}");
        let header: Vec<&str> = lines
            .next()
            .expect("header")
            .trim_start_matches("# ")
            .split(' ')
            .collect();
        let col = |n: &str| {
            header
                .iter()
                .position(|h| *h == n)
                .unwrap_or_else(|| panic!("no {n}: {text}"))
        };
        lines
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (
                    f[col("srv_name")].to_owned(),
                    format!("{}:{}", f[col("srv_addr")], f[col("srv_port")]),
                    f[col("srv_admin_state")].parse().expect("admin state"),
                    f[col("srv_uweight")].parse().expect("weight"),
                )
            })
            .collect()
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `prometheus-alertmanager` on a free port, no clustering, one receiver that
/// sends nothing. Killed on drop.
pub struct Alertmanager {
    dir: tempfile::TempDir,
    child: Child,
    /// Its address.
    pub addr: SocketAddr,
}

impl Alertmanager {
    /// Starts it and waits until `/-/ready` answers 200.
    pub fn start() -> Self {
        require(
            "prometheus-alertmanager",
            "--version",
            "prometheus-alertmanager",
        );
        let dir = tempfile::Builder::new()
            .prefix("prescale-alertmanager-")
            .tempdir()
            .expect("create a temporary directory");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let cfg = dir.path().join("alertmanager.yml");
        std::fs::write(
            &cfg,
            "route:\n  receiver: nowhere\n  group_wait: 1s\nreceivers:\n  - name: nowhere\n",
        )
        .expect("write alertmanager.yml");
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).expect("log");
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start prometheus-alertmanager ({e}); install Debian package prometheus-alertmanager")
            });
        let mut am = Self { dir, child, addr };
        poll_until("alertmanager to be ready", READY_DEADLINE, || {
            if let Ok(Some(status)) = am.child.try_wait() {
                panic!(
                    "alertmanager exited early ({status}); its log:\n{}",
                    am.log()
                );
            }
            matches!(http_get(addr, "/-/ready"), Ok((200, _))).then_some(())
        });
        am
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET /api/v2/alerts`: the alerts it holds (active, silenced and inhibited).
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let (status, body) = http_get(self.addr, "/api/v2/alerts").expect("GET /api/v2/alerts");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Vec<serde_json::Value>>(&body)
            .unwrap_or_else(|e| panic!("not a list of alerts ({e}): {body}"))
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
