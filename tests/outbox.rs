//! The durable outbox under faults, against real HTTP receivers on 127.0.0.1: a receiver
//! down then up, a slow one, one that refuses (4xx), superseding, a restart, an accelerated
//! clock, and a soak of 10,000 actions through a receiver that fails 30% of requests.
//!
//! Backoff, timeouts and ages run on virtual time (`start_paused`): a test holds tokio's
//! clock still while it waits for real I/O (see [`until`] and [`held`]) and moves it with
//! `tokio::time::advance`, so a retry happens exactly when the test says. The receivers run
//! on runtimes of their own, in real time. The soak and the API test run in real time.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Receiver, Reply, poll_until_async};
use prescale::act::outbox::{
    Delivery, DeliveryOutcome, DeliveryRecord, DeliveryState, Fence, Hooks, Outbox, Settings,
    Verdict,
};
use prescale::act::webhook::WebhookSender;
use prescale::act::{Action, ActionKind, Destination, RebalanceAction, Receivers, ScaleAction};
use prescale::clock::Clock;
use prescale::config::{DeliveryConfig, Secret, TargetConfig, WebhookConfig};
use prescale::metrics::Metrics;
use prescale::store::Store;
use serde_json::Value;
use tokio::sync::watch;

/// Real time, for conditions that depend on real I/O.
const DEADLINE: Duration = Duration::from_secs(60);

fn delivery(timeout_ms: u64, max_attempts: u32, initial_ms: u64, max_ms: u64) -> DeliveryConfig {
    DeliveryConfig {
        timeout: Duration::from_millis(timeout_ms),
        max_attempts,
        initial_backoff: Duration::from_millis(initial_ms),
        max_backoff: Duration::from_millis(max_ms),
        max_age: Duration::from_secs(3_600),
    }
}

fn hook(url: &str) -> WebhookConfig {
    WebhookConfig {
        url: url.parse().expect("url"),
        secret: Secret::new("s3cret"),
        previous_secret: None,
    }
}

/// Waits in real time until `probe` gives `Some`, failing after [`DEADLINE`]. Between
/// probes it pauses on the blocking pool, which also keeps a paused tokio clock from
/// auto-advancing: virtual time moves only when the test advances it.
async fn until<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    until_within(what, DEADLINE, probe).await
}

/// [`until`] with another deadline.
async fn until_within<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
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
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(5)))
            .await
            .expect("a pause on the blocking pool");
    }
}

/// Awaits `fut` with a paused tokio clock held still (a blocking task waits for the end):
/// for futures that wait on real I/O, such as a receiver's count of requests.
async fn held<T>(fut: impl Future<Output = T>) -> T {
    let (done, end) = std::sync::mpsc::channel::<()>();
    let hold = tokio::task::spawn_blocking(move || {
        let _ = end.recv();
    });
    let out = fut.await;
    drop(done);
    hold.await.expect("the hold ends");
    out
}

/// Moves virtual time on by `ms` (and a little, so that timers rounded up to the next
/// millisecond have fired too).
async fn advance_ms(ms: u64) {
    tokio::time::advance(Duration::from_millis(ms + 5)).await;
}

/// An outbox in `dir` with its worker running, delivering every target's `kind` actions
/// to `url_of(target)`.
struct Running {
    outbox: Outbox,
    store: Store,
    metrics: Metrics,
    stop: watch::Sender<bool>,
    worker: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(
        dir: &Path,
        targets: &[String],
        kind: ActionKind,
        url_of: impl Fn(&str) -> String,
        cfg: DeliveryConfig,
    ) -> Self {
        Self::start_with_clock(dir, targets, kind, url_of, cfg, Clock::system()).await
    }

    async fn start_with_clock(
        dir: &Path,
        targets: &[String],
        kind: ActionKind,
        url_of: impl Fn(&str) -> String,
        cfg: DeliveryConfig,
        clock: Clock,
    ) -> Self {
        Self::start_fenced(dir, targets, (kind, url_of), cfg, clock, None).await
    }

    async fn start_fenced(
        dir: &Path,
        targets: &[String],
        (kind, url_of): (ActionKind, impl Fn(&str) -> String),
        cfg: DeliveryConfig,
        clock: Clock,
        fence: Option<Arc<dyn Fence>>,
    ) -> Self {
        let outbox = Outbox::open_with_clock(dir, clock).expect("open the outbox");
        let configs: Vec<TargetConfig> = targets
            .iter()
            .map(|t| TargetConfig::example(t, 1.0, Duration::from_secs(60)))
            .collect();
        let metrics = Metrics::new();
        let store = Store::with_clock(&configs, metrics.clone(), clock);
        store.set_outbox(outbox.clone());
        let sender = WebhookSender::with_builder(cfg, reqwest::Client::builder().no_proxy())
            .expect("client");
        let routes = targets
            .iter()
            .map(|t| (t.clone(), kind, Destination::Webhook(hook(&url_of(t)))));
        let receivers = Receivers::from_routes(routes, sender);
        let settings = Settings {
            delivery: cfg,
            retention: Duration::from_secs(86_400),
        };
        // As `serve` does: the store keeps each target's last outcome.
        let report = store.clone();
        let last_delivery = move |target: &str, record: DeliveryRecord| {
            if let Some(mut t) = report.target(target) {
                t.last_delivery = Some(record);
            }
        };
        let hooks = Hooks {
            outcomes: Some(Box::new(last_delivery)),
            fence,
        };
        let worker = outbox
            .fenced_worker(settings, receivers, &metrics, hooks)
            .await
            .expect("a worker");
        let (stop, stopped) = watch::channel(false);
        let worker = tokio::spawn(worker.run(stopped));
        Self {
            outbox,
            store,
            metrics,
            stop,
            worker,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let worker = self.worker;
        until("the worker to stop", || async {
            worker.is_finished().then_some(())
        })
        .await;
        worker.await.expect("worker task");
    }

    async fn all(&self) -> Vec<Delivery> {
        let mut v = self
            .outbox
            .list(None, None, usize::MAX)
            .await
            .expect("list");
        v.reverse();
        v
    }

    /// Waits until no action is pending; returns them all, oldest first.
    async fn settled(&self) -> Vec<Delivery> {
        self.settled_within(DEADLINE).await
    }

    /// [`Running::settled`] with another deadline.
    async fn settled_within(&self, deadline: Duration) -> Vec<Delivery> {
        until_within("every action to settle", deadline, || async {
            let (pending, _) = self
                .outbox
                .list_page(Some(DeliveryState::Pending), None, 0, 1)
                .await
                .expect("list");
            pending.is_empty().then_some(())
        })
        .await;
        self.all().await
    }

    /// Waits until `probe` holds for the outbox's records (oldest first); returns them.
    async fn when(&self, what: &str, probe: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        until(what, || async {
            let all = self.all().await;
            probe(&all).then_some(all)
        })
        .await
    }
}

fn rebalance(target: &str, seq: i64) -> Action {
    Action::Rebalance(RebalanceAction {
        target: target.to_owned(),
        weights: BTreeMap::from([("10.0.0.1:80".to_owned(), (seq % 100) as u32 + 1)]),
        issued_at: seq,
    })
}

fn scale(target: &str, to: u32, at: i64) -> Action {
    Action::Scale(ScaleAction {
        target: target.to_owned(),
        from: 1,
        to,
        reasons: Vec::new(),
        peak: None,
        model: None,
        issued_at: at,
    })
}

/// `issued_at` of each accepted request on `path`, in arrival order.
fn accepted_seqs(r: &Receiver, path: &str) -> Vec<i64> {
    r.accepted()
        .iter()
        .filter(|x| x.path == path)
        .map(|x| x.json()["issued_at"].as_i64().expect("issued_at"))
        .collect()
}

/// Receiver down (connection refused), then up: every action delivered once, in order per
/// target, with the same key on every attempt; between attempts each head waits its
/// backoff, and nothing is sent while the clock stands still.
#[tokio::test(start_paused = true)]
async fn receiver_down_then_up_delivers_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let targets = ["a".to_owned(), "b".to_owned()];
    let run = Running::start(
        dir.path(),
        &targets,
        ActionKind::Rebalance,
        |t| format!("http://127.0.0.1:{port}/{t}"),
        delivery(1_000, 1_000, 10, 100),
    )
    .await;
    let mut actions = Vec::new();
    for seq in 0..5 {
        actions.push(rebalance("a", seq));
        actions.push(rebalance("b", 100 + seq));
    }
    let written = run.outbox.enqueue(actions).await.expect("enqueue");
    assert_eq!(written.len(), 10);

    // Failing while down: the head of each lane is retried after its backoff, the rest
    // wait their turn.
    for k in 1..=3 {
        let all = run
            .when(&format!("attempt {k} of both heads"), |all| {
                all.iter().filter(|d| d.attempts == k).count() == 2
            })
            .await;
        let now = run.outbox.now_ms();
        let heads: Vec<&Delivery> = all.iter().filter(|d| d.attempts > 0).collect();
        assert_eq!(heads.len(), 2, "only the heads: {all:#?}");
        for d in &heads {
            let error = d.last_error.as_deref().unwrap_or_default();
            assert!(error.contains("connect"), "{d:?}");
            assert!(d.body.contains("\"issued_at\":0") || d.body.contains("\"issued_at\":100"));
            let wait = d.next_attempt_ms - now;
            assert!((1..=100).contains(&wait), "backing off, not due: {wait} ms");
        }
        if k < 3 {
            advance_ms(100).await;
        }
    }

    // Up before the heads are due again: started after the clock moved on, the receiver
    // could miss the fourth attempt, whose backoff then never ends on the still clock.
    let receiver = Receiver::start_on(port, Reply::status(200));
    advance_ms(100).await;
    let all = run.settled().await;
    assert!(
        all.iter().all(|d| d.state == DeliveryState::Delivered),
        "{all:#?}"
    );
    assert_eq!(accepted_seqs(&receiver, "/a"), vec![0, 1, 2, 3, 4]);
    assert_eq!(
        accepted_seqs(&receiver, "/b"),
        vec![100, 101, 102, 103, 104]
    );
    let keys: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 10, "nothing sent twice once accepted");
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), 10);
    let want: HashSet<String> = all.iter().map(|d| d.idempotency_key.clone()).collect();
    assert_eq!(keys.into_iter().collect::<HashSet<_>>(), want);
    assert_eq!(receiver.max_in_flight("/a"), 1);
    // The worker reports each outcome to the store after committing it.
    let newest = all[8].idempotency_key.clone();
    let last = until("the last outcome reported", || async {
        let last = run.store.target("a").unwrap().last_delivery.clone();
        last.filter(|l| l.idempotency_key == newest)
    })
    .await;
    assert_eq!(
        (last.kind, last.outcome, last.attempts),
        (ActionKind::Rebalance, DeliveryOutcome::Delivered, 1)
    );
    assert_eq!(last.idempotency_key, all[8].idempotency_key);
    run.stop().await;
}

/// A receiver slower than the timeout: attempts time out and are retried one at a time per
/// target: the next request is sent only after the last one timed out and its backoff
/// passed, the waiting actions are not attempted, and all go through once it is fast.
#[tokio::test(start_paused = true)]
async fn slow_receiver_times_out_without_piling_up() {
    let dir = tempfile::tempdir().unwrap();
    // Answers after a minute of real time: never within the test's (virtual) timeout.
    let receiver = Receiver::with_replies(
        Vec::new(),
        Reply::status(200).after(Duration::from_secs(60)),
    );
    let url = receiver.url("/slow");
    let run = Running::start(
        dir.path(),
        &["web".to_owned()],
        ActionKind::Rebalance,
        |_| url.clone(),
        delivery(300, 1_000, 1_000, 1_000),
    )
    .await;
    run.outbox
        .enqueue((0..3).map(|s| rebalance("web", s)).collect())
        .await
        .expect("enqueue");
    for k in 1..=2 {
        held(receiver.wait_for(k, DEADLINE)).await;
        assert_eq!(receiver.requests().len(), k, "one request at a time");
        advance_ms(300).await;
        let all = run
            .when(&format!("attempt {k} to time out"), |all| {
                all[0].attempts == k as u32
            })
            .await;
        let error = all[0].last_error.as_deref().unwrap_or_default();
        assert!(error.contains("timed out after 300ms"), "{all:#?}");
        assert_eq!(
            (all[1].attempts, all[2].attempts),
            (0, 0),
            "the others wait their turn"
        );
        assert_eq!(
            receiver.requests().len(),
            k,
            "nothing more is sent during the backoff"
        );
        advance_ms(1_000).await;
    }
    let first_key = run.all().await[0].idempotency_key.clone();
    held(receiver.wait_for(3, DEADLINE)).await;
    assert!(
        receiver
            .requests()
            .iter()
            .all(|r| r.header("idempotency-key") == Some(first_key.as_str())),
        "only the head is attempted, with one key"
    );

    // Fast again: the head's third attempt goes through once it times out, then the rest.
    receiver.set_then(Reply::status(200));
    advance_ms(300).await;
    run.when("attempt 3 to time out", |all| all[0].attempts == 3)
        .await;
    advance_ms(1_000).await;
    let all = run.settled().await;
    assert!(
        all.iter().all(|d| d.state == DeliveryState::Delivered),
        "{all:#?}"
    );
    assert_eq!(all[0].attempts, 4);
    // Arrival order follows the outbox order: the head (several times), then 1, 2.
    let seqs: Vec<i64> = receiver
        .requests()
        .iter()
        .map(|r| r.json()["issued_at"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [0, 0, 0, 0, 1, 2]);
    run.stop().await;
}

/// The API token of [`api`]: retrying a delivery is a mutation.
const API_TOKEN: &str = "test-token";

/// The HTTP API over a store, on a real socket.
struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn start(store: Store) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = prescale::config::Secret::new(API_TOKEN);
        let app = prescale::api::router(
            store,
            prescale::api::ApiAuth::new(Some(&token), false),
            None,
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        Self {
            base: format!("http://{addr}"),
            client,
        }
    }

    /// GET `path`: the status and the JSON body.
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    }

    /// `method path`, with the token or without: the status and the JSON body.
    async fn send(&self, method: reqwest::Method, path: &str, with_token: bool) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if with_token {
            request = request.bearer_auth(API_TOKEN);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap_or(Value::Null))
    }

    /// `method path` with the token: asserts it answers `status` with the error `code`;
    /// returns the error's message.
    async fn refused(
        &self,
        method: reqwest::Method,
        path: &str,
        status: u16,
        code: &str,
    ) -> String {
        let (st, b) = self.send(method, path, true).await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {b}"
        );
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// POST `/api/v1/deliveries/{id}/retry`, with the token or without: the status.
    async fn retry(&self, id: u64, with_token: bool) -> u16 {
        let url = format!("{}/api/v1/deliveries/{id}/retry", self.base);
        let mut request = self.client.post(url);
        if with_token {
            request = request.bearer_auth(API_TOKEN);
        }
        request.send().await.unwrap().status().as_u16()
    }
}

/// A 4xx is final: no retry, dead-lettered with the answer, listed and counted; a retry by
/// hand sends it again, with the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_error_is_dead_lettered_with_the_body_and_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::with_replies(
        vec![Reply::body(422, r#"{"error":"unknown service web"}"#)],
        Reply::status(200),
    );
    let url = receiver.url("/scale");
    let run = Running::start(
        dir.path(),
        &["web".to_owned()],
        ActionKind::Scale,
        |_| url.clone(),
        delivery(1_000, 5, 10, 50),
    )
    .await;
    let api = Api::start(run.store.clone()).await;
    run.outbox
        .enqueue(vec![scale("web", 4, 1)])
        .await
        .expect("enqueue");

    let dead = poll_until_async("the dead letter to be listed", DEADLINE, || async {
        let (_, b) = api.get("/api/v1/deliveries?state=dead").await;
        b["deliveries"]
            .as_array()
            .filter(|l| !l.is_empty())
            .cloned()
    })
    .await;
    let d = &dead[0];
    assert_eq!(d["state"], "dead");
    assert_eq!(d["outcome"], "rejected");
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["last_status"], 422);
    assert_eq!(d["response_body"], r#"{"error":"unknown service web"}"#);
    assert_eq!(d["body"]["kind"], "scale");
    assert_eq!(receiver.requests().len(), 1, "a 4xx is not retried");
    // The metrics follow the record.
    let metrics = poll_until_async("the dead letter counted", DEADLINE, || async {
        let m = run.metrics.encode();
        m.contains(r#"prescale_outbox_deliveries{state="dead"} 1"#)
            .then_some(m)
    })
    .await;
    assert!(
        metrics.contains(
            r#"prescale_deliveries_total{target="web",kind="scale",outcome="rejected"} 1"#
        ),
        "{metrics}"
    );
    let (status, _) = api.get("/api/v1/deliveries?state=delivered").await;
    assert_eq!(status, 200);
    let (status, b) = api.get("/api/v1/deliveries?state=lost").await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );

    let id = d["id"].as_u64().unwrap();
    assert_eq!(
        api.retry(id, false).await,
        401,
        "a retry needs the API token"
    );
    assert_eq!(api.retry(id, true).await, 200);
    let reqs = receiver.wait_for(2, DEADLINE).await;
    assert_eq!(
        reqs[0].header("idempotency-key"),
        reqs[1].header("idempotency-key")
    );
    assert_eq!(reqs[0].body, reqs[1].body);
    let d = poll_until_async("the retried delivery", DEADLINE, || async {
        let (_, b) = api.get(&format!("/api/v1/deliveries/{id}")).await;
        (b["state"] == "delivered").then_some(b)
    })
    .await;
    assert_eq!(d["attempts"], 1, "attempts start afresh on a retry: {d}");
    assert_eq!(
        api.retry(id, true).await,
        409,
        "only dead deliveries can be retried"
    );
    assert_eq!(api.retry(999_999, true).await, 404);
    assert!(
        run.metrics
            .encode()
            .contains(r#"prescale_outbox_deliveries{state="dead"} 0"#)
    );
    run.stop().await;
}

/// A dead scale action (to 16) retried after a newer one (to 8) was delivered is refused
/// (409 `superseded`): before, the retry sent 16 after 8. A dead letter is discarded with
/// `DELETE` (token): `discarded`, listed, no longer counted as dead, never sent; deleting
/// one that is not dead is a 409 naming its state, an unknown id a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_retry_is_refused_and_a_dead_letter_is_discarded() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::with_replies(
        vec![Reply::body(422, r#"{"error":"quota"}"#)],
        Reply::status(200),
    );
    let url = receiver.url("/scale");
    let run = Running::start(
        dir.path(),
        &["web".to_owned()],
        ActionKind::Scale,
        |_| url.clone(),
        delivery(1_000, 5, 10, 50),
    )
    .await;
    let api = Api::start(run.store.clone()).await;
    let state_of = |id: u64| {
        let api = &api;
        async move {
            let (_, b) = api.get(&format!("/api/v1/deliveries/{id}")).await;
            b["state"].as_str().map(str::to_owned)
        }
    };
    let old = run.outbox.enqueue(vec![scale("web", 16, 1)]).await.unwrap()[0].id;
    poll_until_async("16 dead", DEADLINE, || async {
        (state_of(old).await.as_deref() == Some("dead")).then_some(())
    })
    .await;
    let new = run.outbox.enqueue(vec![scale("web", 8, 2)]).await.unwrap()[0].id;
    poll_until_async("8 delivered", DEADLINE, || async {
        (state_of(new).await.as_deref() == Some("delivered")).then_some(())
    })
    .await;

    let retry = format!("/api/v1/deliveries/{old}/retry");
    let message = api.refused(Method::POST, &retry, 409, "superseded").await;
    assert!(message.contains(&format!("delivery {new}")), "{message}");
    assert_eq!(state_of(old).await.as_deref(), Some("dead"));
    let sent: Vec<Value> = receiver
        .requests()
        .iter()
        .map(|r| r.json()["to"].clone())
        .collect();
    assert_eq!(sent, [16, 8], "16 is never sent after 8");

    let path = format!("/api/v1/deliveries/{old}");
    let (status, _) = api.send(Method::DELETE, &path, false).await;
    assert_eq!(status, 401, "discarding needs the API token");
    let (status, b) = api.send(Method::DELETE, &path, true).await;
    assert_eq!(
        (status, b["state"].as_str()),
        (200, Some("discarded")),
        "{b}"
    );
    assert_eq!(b["outcome"], "rejected", "how it ended is kept: {b}");
    let (_, listed) = api.get("/api/v1/deliveries?state=discarded").await;
    assert_eq!(listed["deliveries"][0]["id"], old, "{listed}");
    poll_until_async("the dead letter no longer counted", DEADLINE, || async {
        run.metrics
            .encode()
            .contains(r#"prescale_outbox_deliveries{state="dead"} 0"#)
            .then_some(())
    })
    .await;
    for (id, state) in [(old, "discarded"), (new, "delivered")] {
        let path = format!("/api/v1/deliveries/{id}");
        let message = api.refused(Method::DELETE, &path, 409, "not_dead").await;
        assert!(message.contains(state), "{message}");
    }
    api.refused(Method::POST, &retry, 409, "not_dead").await;
    let unknown = "/api/v1/deliveries/999999";
    api.refused(Method::DELETE, unknown, 404, "unknown_delivery")
        .await;
    assert_eq!(receiver.requests().len(), 2, "nothing more was sent");
    run.stop().await;
}

/// A newer scale action supersedes older undelivered ones of the same target; one in
/// flight is superseded only once its attempt fails.
#[tokio::test(start_paused = true)]
async fn newer_scale_supersedes_undelivered_older_ones() {
    let dir = tempfile::tempdir().unwrap();
    // The first request is never answered in time; then 200.
    let receiver = Receiver::with_replies(
        vec![Reply::status(200).after(Duration::from_secs(60))],
        Reply::status(200),
    );
    let url = receiver.url("/scale");
    let run = Running::start(
        dir.path(),
        &["web".to_owned()],
        ActionKind::Scale,
        |_| url.clone(),
        delivery(1_000, 1_000, 20, 40),
    )
    .await;
    run.outbox.enqueue(vec![scale("web", 3, 1)]).await.unwrap();
    held(receiver.wait_for(1, DEADLINE)).await;
    // 3 is in flight: 5 waits behind it, and 9 supersedes 5.
    run.outbox.enqueue(vec![scale("web", 5, 2)]).await.unwrap();
    run.outbox.enqueue(vec![scale("web", 9, 3)]).await.unwrap();
    let all = run
        .when("5 to be superseded", |all| {
            all.len() == 3 && all[1].state == DeliveryState::Superseded
        })
        .await;
    assert_eq!(all[0].state, DeliveryState::Pending, "in flight: {all:#?}");
    assert_eq!(all[1].superseded_by, Some(all[2].id));
    // 3's attempt times out; 9 is newer, so 3 is superseded instead of retried.
    advance_ms(1_000).await;
    let all = run.settled().await;
    assert_eq!(
        all.iter().map(|d| d.state).collect::<Vec<_>>(),
        [
            DeliveryState::Superseded,
            DeliveryState::Superseded,
            DeliveryState::Delivered
        ]
    );
    assert_eq!(all[0].superseded_by, Some(all[2].id), "{all:#?}");
    assert_eq!(all[0].attempts, 1);
    assert_eq!(all[1].attempts, 0);
    assert_eq!(
        all.iter().map(|d| d.outcome).collect::<Vec<_>>(),
        [
            Some(DeliveryOutcome::Superseded),
            Some(DeliveryOutcome::Superseded),
            Some(DeliveryOutcome::Delivered)
        ]
    );
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 2, "3 (too late) and 9");
    assert_eq!(accepted[1].json()["to"], 9);
    run.stop().await;
}

/// Pending actions survive a stop and are delivered, in order, after reopening.
#[tokio::test(start_paused = true)]
async fn restart_resumes_pending_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::with_replies(Vec::new(), Reply::status(503));
    let url = receiver.url("/w");
    let cfg = delivery(1_000, 1_000, 20, 40);
    let targets = ["web".to_owned()];
    let run = Running::start(
        dir.path(),
        &targets,
        ActionKind::Rebalance,
        |_| url.clone(),
        cfg,
    )
    .await;
    run.outbox
        .enqueue((0..3).map(|s| rebalance("web", s)).collect())
        .await
        .unwrap();
    run.when("the first failed attempt", |all| all[0].attempts == 1)
        .await;
    advance_ms(40).await;
    let before = run
        .when("two failed attempts", |all| all[0].attempts == 2)
        .await;
    run.stop().await;

    receiver.set_then(Reply::status(200));
    let run = Running::start(
        dir.path(),
        &targets,
        ActionKind::Rebalance,
        |_| url.clone(),
        cfg,
    )
    .await;
    // The same decision made again after the restart is the same action: not written twice.
    let again = run.outbox.enqueue(vec![rebalance("web", 1)]).await.unwrap();
    assert!(again.is_empty(), "{again:#?}");
    // The head is due once its backoff has passed. The reopened outbox reads the wall
    // clock again, which did not follow the virtual time the first run spent: move on by
    // more than both.
    advance_ms(1_000).await;
    let all = run.settled().await;
    assert!(
        all.iter().all(|d| d.state == DeliveryState::Delivered),
        "{all:#?}"
    );
    assert_eq!(
        all.iter().map(|d| &d.idempotency_key).collect::<Vec<_>>(),
        before
            .iter()
            .map(|d| &d.idempotency_key)
            .collect::<Vec<_>>()
    );
    assert_eq!(all[0].attempts, 3, "attempts are kept across the restart");
    assert_eq!(accepted_seqs(&receiver, "/w"), vec![0, 1, 2]);
    run.stop().await;
}

/// The outbox runs on the clock it is given, like the decisions: on a clock that starts in
/// 2001 and runs 60 times faster, `created_at` is that clock's time, a backoff of 0.5–1 s
/// (real) is 30–60 s on it, and `max_age` (61 s) is judged on it: the second attempt comes
/// within it, and the next one (after 1–2 s real, 60–120 s on the clock) would not, so the
/// second failure expires the action, whatever the wall clock says.
#[tokio::test(start_paused = true)]
async fn the_outbox_runs_on_the_clock_it_is_given() {
    const START: i64 = 1_000_000_000;
    let clock = Clock::accelerated(START, 60.0);
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::with_replies(Vec::new(), Reply::status(503));
    let url = receiver.url("/scale");
    let cfg = DeliveryConfig {
        max_age: Duration::from_secs(61),
        ..delivery(1_000, 100, 1_000, 2_000)
    };
    let run = Running::start_with_clock(
        dir.path(),
        &["web".to_owned()],
        ActionKind::Scale,
        |_| url.clone(),
        cfg,
        clock,
    )
    .await;
    let written = run.outbox.enqueue(vec![scale("web", 4, START)]).await;
    let created = written.expect("enqueue")[0].created_at_ms;
    // The clock runs in real time too (60 s per real second): allow a busy machine 2 s.
    assert!(
        (START * 1000..=(START + 120) * 1000).contains(&created),
        "created at {created} ms, not on the clock given ({START} s)"
    );
    assert!((created / 1000 - clock.now()).abs() <= 120, "{created}");

    held(receiver.wait_for(1, DEADLINE)).await;
    let all = run
        .when("the first attempt", |all| all[0].attempts == 1)
        .await;
    let wait = all[0].next_attempt_ms - run.outbox.now_ms();
    assert!(
        (30_000..=60_000).contains(&wait),
        "a backoff of 0.5-1 s is 30-60 s on the clock: {wait} ms"
    );
    // Just past the due time: ceil(wait / 60) ms of real time.
    advance_ms((wait as u64).div_ceil(60)).await;
    held(receiver.wait_for(2, DEADLINE)).await;
    let all = run
        .when("the action to expire", |all| {
            all[0].state == DeliveryState::Dead
        })
        .await;
    let d = &all[0];
    assert_eq!(
        (d.outcome, d.attempts),
        (Some(DeliveryOutcome::Expired), 2),
        "{d:#?}"
    );
    let age = d.finished_at_ms.expect("finished") - d.created_at_ms;
    assert!((30_000..61_000).contains(&age), "{age} ms on the clock");
    // The worker reports the outcome to the store after committing it.
    let last = until("the outcome reported", || async {
        run.store.target("web").unwrap().last_delivery.clone()
    })
    .await;
    assert_eq!(last.outcome, DeliveryOutcome::Expired);
    assert_eq!(last.at, d.finished_at_ms.unwrap() / 1000);
    assert_eq!(receiver.requests().len(), 2);
    run.stop().await;
}

/// 10,000 actions across 100 targets through a receiver failing 30% of requests at
/// random: each is delivered or dead-lettered, none is accepted twice, none is lost, and
/// each target's are accepted in order. Prints the delivery rate and the p99 time from
/// decision (writing) to delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_10000_actions_through_a_flaky_receiver() {
    const TARGETS: usize = 100;
    const PER_TARGET: i64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::flaky(0.3, 5);
    let base = receiver.url("");
    let targets: Vec<String> = (0..TARGETS).map(|i| format!("t{i:03}")).collect();
    let run = Running::start(
        dir.path(),
        &targets,
        ActionKind::Rebalance,
        |t| format!("{base}/{t}"),
        delivery(5_000, 6, 5, 50),
    )
    .await;
    let started = Instant::now();
    // One decision cycle writes one action per target.
    for seq in 0..PER_TARGET {
        let actions = targets.iter().map(|t| rebalance(t, seq)).collect();
        run.outbox.enqueue(actions).await.expect("enqueue");
    }
    let all = run.settled_within(Duration::from_secs(300)).await;
    let elapsed = started.elapsed();

    assert_eq!(all.len(), TARGETS * PER_TARGET as usize, "none lost");
    let delivered: Vec<&Delivery> = all
        .iter()
        .filter(|d| d.state == DeliveryState::Delivered)
        .collect();
    let dead: Vec<&Delivery> = all
        .iter()
        .filter(|d| d.state == DeliveryState::Dead)
        .collect();
    assert_eq!(
        delivered.len() + dead.len(),
        all.len(),
        "delivered or dead-lettered"
    );
    for d in &dead {
        assert_eq!(d.outcome, Some(DeliveryOutcome::GaveUp), "{d:?}");
        assert_eq!(d.attempts, 6);
    }

    let accepted = receiver.accepted();
    let mut by_key: HashMap<&str, usize> = HashMap::new();
    for r in &accepted {
        *by_key
            .entry(r.header("idempotency-key").unwrap())
            .or_default() += 1;
    }
    assert!(
        by_key.values().all(|n| *n == 1),
        "none accepted twice by key"
    );
    let delivered_keys: HashSet<&str> = delivered
        .iter()
        .map(|d| d.idempotency_key.as_str())
        .collect();
    let accepted_keys: HashSet<&str> = by_key.keys().copied().collect();
    assert_eq!(
        accepted_keys, delivered_keys,
        "accepted exactly the delivered ones"
    );
    for t in &targets {
        let seqs = accepted_seqs(&receiver, &format!("/{t}"));
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{t} out of order: {seqs:?}"
        );
    }
    let failures = receiver.requests().len() - accepted.len();

    let mut latencies: Vec<i64> = delivered
        .iter()
        .map(|d| d.finished_at_ms.unwrap() - d.created_at_ms)
        .collect();
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let rate = delivered.len() as f64 / elapsed.as_secs_f64();
    println!(
        "soak: {} actions, {} targets: {} delivered, {} dead-lettered, {} failed attempts; \
         {:.1} s, {rate:.0} deliveries/s; decision→delivery p50 {} ms, p99 {} ms, max {} ms",
        all.len(),
        TARGETS,
        delivered.len(),
        dead.len(),
        failures,
        elapsed.as_secs_f64(),
        p(0.5),
        p(0.99),
        latencies.last().unwrap()
    );
    run.stop().await;
}

/// Ownership as a cluster member sees it, set by the test: the epoch this instance owns
/// the target at, and whether its lease is known live. Counts the questions asked.
#[derive(Default)]
struct Ownership {
    owned: Mutex<(Option<u64>, bool)>,
    asked: AtomicUsize,
}

impl Ownership {
    fn set(&self, epoch: Option<u64>, live: bool) {
        *self.owned.lock().unwrap() = (epoch, live);
    }
}

impl Fence for Ownership {
    fn verdict(&self, _target: &str, epoch: u64) -> Verdict {
        self.asked.fetch_add(1, Ordering::SeqCst);
        match *self.owned.lock().unwrap() {
            (_, false) => Verdict::Hold,
            (Some(e), true) if e == epoch => Verdict::Deliver,
            (now, true) => Verdict::Supersede(format!("owned at {now:?}, not {epoch}")),
        }
    }
}

/// A worker for target `web`'s scale actions to `url`, fenced by an [`Ownership`] that owns
/// it at epoch 7, its lease known live or not.
async fn fenced(
    dir: &Path,
    url: &str,
    cfg: DeliveryConfig,
    live: bool,
) -> (Running, Arc<Ownership>) {
    let fence = Arc::new(Ownership::default());
    fence.set(Some(7), live);
    let run = Running::start_fenced(
        dir,
        &["web".to_owned()],
        (ActionKind::Scale, |_: &str| url.to_owned()),
        cfg,
        Clock::system(),
        Some(fence.clone()),
    )
    .await;
    (run, fence)
}

/// A fenced worker (instances sharing targets) asks before every attempt: while the lease
/// is not known live it holds the action and sends nothing; once owned at the action's
/// epoch it delivers it with the epoch in the body and the `Prescale-Epoch` header; an
/// action of a lost epoch, or one without an epoch, is superseded and never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_worker_sends_only_at_the_owners_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&[]);
    let url = receiver.url("/scale");
    let (run, fence) = fenced(dir.path(), &url, delivery(1_000, 5, 10, 50), false).await;
    run.outbox
        .enqueue_at(vec![scale("web", 4, 1)], Some(7))
        .await
        .expect("enqueue");
    // Held: asked again and again, nothing sent.
    poll_until_async("the fence to be asked three times", DEADLINE, || async {
        (fence.asked.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    assert!(
        receiver.requests().is_empty(),
        "sent while the lease was unknown"
    );
    assert_eq!(run.all().await[0].state, DeliveryState::Pending);

    fence.set(Some(7), true);
    let reqs = receiver.wait_for(1, DEADLINE).await;
    assert_eq!(reqs[0].header("prescale-epoch"), Some("7"));
    assert_eq!(reqs[0].json()["epoch"], 7);
    assert_eq!(reqs[0].json()["to"], 4);
    // The receiver has it; the worker records the outcome after its answer (a busy machine
    // may take a while): a fence lost before then would call the attempt back.
    run.when("the first action delivered", |all| {
        all.first()
            .is_some_and(|d| d.state == DeliveryState::Delivered)
    })
    .await;

    // Lost: another epoch owns the target now.
    fence.set(Some(9), true);
    run.outbox
        .enqueue_at(vec![scale("web", 5, 2)], Some(7))
        .await
        .expect("enqueue");
    run.when("the lost epoch's action superseded", |all| {
        all.len() == 2 && all[1].state == DeliveryState::Superseded
    })
    .await;
    run.outbox
        .enqueue(vec![scale("web", 6, 3)])
        .await
        .expect("enqueue");
    let all = run.settled().await;
    let states: Vec<_> = all.iter().map(|d| (d.state, d.epoch)).collect();
    assert_eq!(
        states,
        [
            (DeliveryState::Delivered, Some(7)),
            (DeliveryState::Superseded, Some(7)),
            (DeliveryState::Superseded, None)
        ]
    );
    assert!(
        all[1]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("not 7"),
        "{:?}",
        all[1].last_error
    );
    assert_eq!(receiver.requests().len(), 1, "a fenced action was sent");
    run.stop().await;
}

/// An attempt already in flight when this instance may no longer act on its target (the
/// lease lapsed, say, while a slow receiver answers) is called back rather than left to
/// finish: its action goes back to pending, held, and is superseded once another epoch
/// owns the target. It is never recorded as delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_attempt_in_flight_is_called_back_when_ownership_lapses() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Reply::status(200).after(Duration::from_secs(120));
    let receiver = Receiver::with_replies(vec![slow], Reply::status(200));
    let url = receiver.url("/scale");
    let (run, fence) = fenced(dir.path(), &url, delivery(300_000, 5, 10, 50), true).await;
    run.outbox
        .enqueue_at(vec![scale("web", 4, 1)], Some(7))
        .await
        .expect("enqueue");
    receiver.wait_for(1, DEADLINE).await;
    // The lease lapses while the receiver takes its time.
    fence.set(Some(7), false);
    let called_back = run
        .when("the attempt called back", |all| {
            all[0].state == DeliveryState::Pending
                && all[0]
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("called back"))
        })
        .await;
    assert_eq!(called_back[0].attempts, 1);
    // Another epoch owns the target now: superseded, never delivered.
    fence.set(Some(9), true);
    let all = run.settled().await;
    assert_eq!(all[0].state, DeliveryState::Superseded, "{:?}", all[0]);
    assert_eq!(receiver.requests().len(), 1, "sent again after it was lost");
    run.stop().await;
}
