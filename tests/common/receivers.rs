//! Real HTTP receivers on 127.0.0.1 that record every request and answer a scripted
//! sequence of replies (for webhooks, and for faking a misbehaving Prometheus).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{oneshot, watch};

use super::http::Server;

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
    /// When it arrived.
    pub at: std::time::Instant,
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
    fn new(script: VecDeque<Reply>, then: Reply) -> Self {
        Self {
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(script),
            then: Mutex::new(then),
            count: watch::Sender::new(0),
            fail_ratio: Mutex::new(None),
            in_flight: Mutex::new(Default::default()),
        }
    }

    /// The next scripted reply; once the script is done, the fixed one (or a random 503
    /// when flaky).
    fn next_reply(&self) -> Reply {
        let mut script = self.script.lock().unwrap_or_else(|p| p.into_inner());
        script.pop_front().unwrap_or_else(|| {
            let mut flaky = self.fail_ratio.lock().unwrap_or_else(|p| p.into_inner());
            let fail = match flaky.as_mut() {
                Some((ratio, rng)) => rand::Rng::random_bool(rng, *ratio),
                None => false,
            };
            if fail {
                Reply::status(503)
            } else {
                self.then.lock().unwrap_or_else(|p| p.into_inner()).clone()
            }
        })
    }

    /// The scale webhooks accepted (2xx), as `(from, to)`, in order.
    fn scales(&self) -> Vec<(u64, u64)> {
        self.requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(Recorded::json)
            .filter(|b| b["kind"] == "scale")
            .filter_map(|b| Some((b["from"].as_u64()?, b["to"].as_u64()?)))
            .collect()
    }

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
        Self::serve(ReceiverState::new(script.into(), then), 0)
    }

    /// Answers `then` for ever, on 127.0.0.1:`port` (e.g. a port that refused connections
    /// until now).
    pub fn start_on(port: u16, then: Reply) -> Self {
        Self::serve(ReceiverState::new(VecDeque::new(), then), port)
    }

    fn serve(state: ReceiverState, port: u16) -> Self {
        let state = Arc::new(state);
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

    /// The scale webhooks it accepted, as `(from, to)`, in order.
    pub fn scales(&self) -> Vec<(u64, u64)> {
        self.state.scales()
    }

    /// [`Receiver::scales`] as a function another server can call (e.g. an exporter
    /// showing the count the receiver, as a platform, was last asked to run).
    pub fn scales_reader(&self) -> impl Fn() -> Vec<(u64, u64)> + Send + Sync + 'static {
        let state = self.state.clone();
        move || state.scales()
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
    let reply = state.next_reply();
    state.requests().push(Recorded {
        method,
        path,
        query: uri.query().map(str::to_owned),
        headers,
        body,
        status: reply.status,
        at: std::time::Instant::now(),
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
