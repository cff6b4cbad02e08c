//! The durable outbox under faults, against real HTTP receivers on 127.0.0.1: a receiver
//! down then up, a slow one, one that refuses (4xx), superseding, a restart, and a soak of
//! 10,000 actions through a receiver that fails 30% of requests.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Receiver, Reply, poll_until_async};
use prescale::act::outbox::{Delivery, DeliveryState, Outbox, Settings};
use prescale::act::webhook::WebhookSender;
use prescale::act::{Action, Destination, RebalanceAction, Receivers, ScaleAction};
use prescale::config::{DeliveryConfig, Secret, TargetConfig, WebhookConfig};
use prescale::metrics::Metrics;
use prescale::store::Store;
use serde_json::Value;
use tokio::sync::watch;

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
        kind: &'static str,
        url_of: impl Fn(&str) -> String,
        cfg: DeliveryConfig,
    ) -> Self {
        let outbox = Outbox::open(dir).expect("open the outbox");
        let configs: Vec<TargetConfig> = targets
            .iter()
            .map(|t| TargetConfig::example(t, 1.0, Duration::from_secs(60)))
            .collect();
        let metrics = Metrics::new();
        let store = Store::new(&configs, metrics.clone());
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
        let worker = outbox
            .worker(settings, receivers, metrics.clone(), Some(store.clone()))
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
        tokio::time::timeout(Duration::from_secs(10), self.worker)
            .await
            .expect("the worker stops")
            .expect("worker task");
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
    async fn settled(&self, deadline: Duration) -> Vec<Delivery> {
        poll_until_async("every action to settle", deadline, || async {
            let pending = self
                .outbox
                .list(Some(DeliveryState::Pending), None, 1)
                .await
                .expect("list");
            pending.is_empty().then_some(())
        })
        .await;
        self.all().await
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
/// target, with the same key on every attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_then_up_delivers_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let targets = ["a".to_owned(), "b".to_owned()];
    let run = Running::start(
        dir.path(),
        &targets,
        "rebalance",
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

    // Failing while down: the head of each lane is retried, the rest wait their turn.
    let heads = poll_until_async("three failed attempts per lane", DEADLINE, || async {
        let all = run.all().await;
        let heads: Vec<Delivery> = all.iter().filter(|d| d.attempts > 0).cloned().collect();
        (heads.len() == 2 && heads.iter().all(|d| d.attempts >= 3)).then_some(heads)
    })
    .await;
    for d in &heads {
        assert!(
            d.last_error
                .as_deref()
                .unwrap_or_default()
                .contains("connect"),
            "{d:?}"
        );
        assert!(d.body.contains("\"issued_at\":0") || d.body.contains("\"issued_at\":100"));
    }

    let receiver = Receiver::start_on(port, Reply::status(200));
    let all = run.settled(DEADLINE).await;
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
    let (_, detail) = (0, run.store.target("a").unwrap().last_delivery.clone());
    assert_eq!(detail.unwrap().outcome, "delivered");
    run.stop().await;
}

/// A receiver slower than the timeout: attempts time out and are retried, one at a time
/// per target (no pile-up of the waiting actions), and all go through once it is fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_receiver_times_out_without_piling_up() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::with_replies(
        Vec::new(),
        Reply::status(200).after(Duration::from_millis(600)),
    );
    let url = receiver.url("/slow");
    // Timeout 300 ms; the backoff is at least 500 ms, so a slow answer (600 ms) has always
    // finished before the next attempt: the receiver's count of concurrent requests is the
    // sender's.
    let run = Running::start(
        dir.path(),
        &["web".to_owned()],
        "rebalance",
        |_| url.clone(),
        delivery(300, 1_000, 1_000, 1_000),
    )
    .await;
    run.outbox
        .enqueue((0..3).map(|s| rebalance("web", s)).collect())
        .await
        .expect("enqueue");
    receiver.wait_for(3, DEADLINE).await;
    let all = run.all().await;
    assert!(all[0].attempts >= 2, "{all:#?}");
    assert!(
        all[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("timed out after 300ms"),
        "{all:#?}"
    );
    assert_eq!(
        (all[1].attempts, all[2].attempts),
        (0, 0),
        "the others wait their turn"
    );
    let first_key = &all[0].idempotency_key;
    assert!(
        receiver
            .requests()
            .iter()
            .all(|r| r.header("idempotency-key") == Some(first_key.as_str())),
        "only the head is attempted, with one key"
    );

    receiver.set_then(Reply::status(200));
    let all = run.settled(DEADLINE).await;
    assert!(
        all.iter().all(|d| d.state == DeliveryState::Delivered),
        "{all:#?}"
    );
    assert_eq!(
        receiver.max_in_flight("/slow"),
        1,
        "never two requests at once"
    );
    // Arrival order follows the outbox order: the head (maybe several times), then 1, 2.
    let seqs: Vec<i64> = receiver
        .requests()
        .iter()
        .map(|r| r.json()["issued_at"].as_i64().unwrap())
        .collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(seqs, sorted, "in order: {seqs:?}");
    assert_eq!(seqs.iter().filter(|s| **s > 0).count(), 2, "{seqs:?}");
    run.stop().await;
}

/// The API token of [`api`]: retrying a delivery is a mutation.
const API_TOKEN: &str = "test-token";

async fn api(store: Store) -> (String, reqwest::Client) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = prescale::config::Secret::new(API_TOKEN);
    let app = prescale::api::router(store, prescale::api::ApiAuth::new(Some(&token), false));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    (format!("http://{addr}"), client)
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
        "scale",
        |_| url.clone(),
        delivery(1_000, 5, 10, 50),
    )
    .await;
    let (base, client) = api(run.store.clone()).await;
    run.outbox
        .enqueue(vec![scale("web", 4, 1)])
        .await
        .expect("enqueue");

    let get = |path: String| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let r = client.get(format!("{base}{path}")).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let dead = poll_until_async("the dead letter to be listed", DEADLINE, || async move {
        let (_, b) = get("/api/v1/deliveries?state=dead".into()).await;
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
    let (status, _) = get("/api/v1/deliveries?state=delivered".into()).await;
    assert_eq!(status, 200);
    let (status, b) = get("/api/v1/deliveries?state=lost".into()).await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );

    let id = d["id"].as_u64().unwrap();
    let unauthorized = client
        .post(format!("{base}/api/v1/deliveries/{id}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401, "a retry needs the API token");
    let retry = client
        .post(format!("{base}/api/v1/deliveries/{id}/retry"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 200);
    let reqs = receiver.wait_for(2, DEADLINE).await;
    assert_eq!(
        reqs[0].header("idempotency-key"),
        reqs[1].header("idempotency-key")
    );
    assert_eq!(reqs[0].body, reqs[1].body);
    let d = poll_until_async("the retried delivery", DEADLINE, || async move {
        let (_, b) = get(format!("/api/v1/deliveries/{id}")).await;
        (b["state"] == "delivered").then_some(b)
    })
    .await;
    assert_eq!(d["attempts"], 1, "attempts start afresh on a retry: {d}");
    let again = client
        .post(format!("{base}/api/v1/deliveries/{id}/retry"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "only dead deliveries can be retried");
    let missing = client
        .post(format!("{base}/api/v1/deliveries/999999/retry"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(
        run.metrics
            .encode()
            .contains(r#"prescale_outbox_deliveries{state="dead"} 0"#)
    );
    run.stop().await;
}

/// A newer scale action supersedes older undelivered ones of the same target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_scale_supersedes_undelivered_older_ones() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::with_replies(Vec::new(), Reply::status(503));
    let url = receiver.url("/scale");
    let run = Running::start(
        dir.path(),
        &["web".to_owned()],
        "scale",
        |_| url.clone(),
        delivery(1_000, 1_000, 20, 40),
    )
    .await;
    run.outbox.enqueue(vec![scale("web", 3, 1)]).await.unwrap();
    receiver.wait_for(1, DEADLINE).await;
    run.outbox.enqueue(vec![scale("web", 5, 2)]).await.unwrap();
    run.outbox.enqueue(vec![scale("web", 9, 3)]).await.unwrap();
    poll_until_async("the older ones superseded", DEADLINE, || async {
        let all = run.all().await;
        (all[0].state == DeliveryState::Superseded && all[1].state == DeliveryState::Superseded)
            .then_some(())
    })
    .await;
    receiver.set_then(Reply::status(200));
    let all = run.settled(DEADLINE).await;
    assert_eq!(
        all.iter().map(|d| d.state).collect::<Vec<_>>(),
        [
            DeliveryState::Superseded,
            DeliveryState::Superseded,
            DeliveryState::Delivered
        ]
    );
    // Each by a newer one: the first by the second when it came (or by the third, if the
    // first was in flight then and failed afterwards).
    assert!(
        all[0].superseded_by.is_some_and(|by| by > all[0].id),
        "{all:#?}"
    );
    assert_eq!(all[1].superseded_by, Some(all[2].id));
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].json()["to"], 9);
    run.stop().await;
}

/// Pending actions survive a stop and are delivered, in order, after reopening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_pending_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::with_replies(Vec::new(), Reply::status(503));
    let url = receiver.url("/w");
    let cfg = delivery(1_000, 1_000, 20, 40);
    let run = Running::start(
        dir.path(),
        &["web".to_owned()],
        "rebalance",
        |_| url.clone(),
        cfg,
    )
    .await;
    run.outbox
        .enqueue((0..3).map(|s| rebalance("web", s)).collect())
        .await
        .unwrap();
    receiver.wait_for(2, DEADLINE).await;
    let before = run.all().await;
    run.stop().await;

    receiver.set_then(Reply::status(200));
    let run = Running::start(
        dir.path(),
        &["web".to_owned()],
        "rebalance",
        |_| url.clone(),
        cfg,
    )
    .await;
    // The same decision made again after the restart is the same action: not written twice.
    let again = run.outbox.enqueue(vec![rebalance("web", 1)]).await.unwrap();
    assert!(again.is_empty(), "{again:#?}");
    let all = run.settled(DEADLINE).await;
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
    assert_eq!(accepted_seqs(&receiver, "/w"), vec![0, 1, 2]);
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
        "rebalance",
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
    let all = run.settled(Duration::from_secs(300)).await;
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
        assert_eq!(d.outcome.as_deref(), Some("gave_up"), "{d:?}");
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
