//! Predicted-bottleneck alerts against a real Alertmanager: posted through the outbox to
//! `POST /api/v2/alerts`, listed by `GET /api/v2/alerts` with their labels and annotations,
//! and gone from the active list once resolved.

mod common;

use std::time::Duration;

use common::{Alertmanager, App, Prometheus, TestConfig, TestTarget, poll_until_async};
use prescale::act::alert::{AlertAction, Bottleneck, Limit};
use prescale::act::outbox::{DeliveryState, Outbox, Settings};
use prescale::act::webhook::WebhookSender;
use prescale::act::{Action, ActionKind, Destination, Receivers};
use prescale::config::{AlertmanagerConfig, DeliveryConfig};
use prescale::metrics::Metrics;
use serde_json::Value;
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(60);

fn ours<'a>(alerts: &'a [Value], target: &str) -> Option<&'a Value> {
    alerts.iter().find(|a| {
        a["labels"]["alertname"] == "PrescaleBottleneck" && a["labels"]["target"] == target
    })
}

async fn alerts(am: &Alertmanager) -> Vec<Value> {
    let addr = am.addr;
    tokio::task::spawn_blocking(move || {
        let (status, body) = common::http_get(addr, "/api/v2/alerts").expect("GET alerts");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Vec<Value>>(&body).expect("a list")
    })
    .await
    .expect("alerts")
}

/// A firing alert sent through the outbox is listed; its resolution takes it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firing_then_resolved_through_the_outbox() {
    let am = tokio::task::spawn_blocking(Alertmanager::start)
        .await
        .expect("start alertmanager");
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path()).unwrap();
    let cfg = DeliveryConfig {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..DeliveryConfig::default()
    };
    let am_cfg = AlertmanagerConfig {
        url: am.url().parse().unwrap(),
        lead: Duration::from_secs(1800),
        resend: Duration::from_secs(60),
    };
    let sender = WebhookSender::with_builder(cfg, reqwest::Client::builder().no_proxy()).unwrap();
    let receivers = Receivers::from_routes(
        [(
            "api".to_owned(),
            ActionKind::Alert,
            Destination::Alertmanager(am_cfg),
        )],
        sender,
    );
    let settings = Settings {
        delivery: cfg,
        retention: Duration::from_secs(3600),
    };
    let worker = outbox
        .worker(settings, receivers, Metrics::new(), None)
        .await
        .unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(worker.run(stopped));

    let now = common::now_secs();
    let bottleneck = Bottleneck {
        target: "api".into(),
        signal: "request_rate",
        limit: Limit::MaxReplicas,
        breach_at: now + 600,
        time_to_breach_secs: 600,
        peak_rps: 1250.0,
        capacity_rps: 1000.0,
        shortfall_rps: 250.0,
        shortfall_replicas: 3,
    };
    let firing = AlertAction {
        bottleneck: bottleneck.clone(),
        starts_at: now,
        ends_at: now + 240,
        resolved: false,
        issued_at: now,
    };
    outbox
        .enqueue(vec![Action::Alert(firing)])
        .await
        .expect("enqueue");
    let listed = poll_until_async("the alert to be listed", DEADLINE, || async {
        ours(&alerts(&am).await, "api").cloned()
    })
    .await;
    assert_eq!(listed["labels"]["signal"], "request_rate", "{listed}");
    assert_eq!(listed["annotations"]["time_to_breach"], "10m", "{listed}");
    assert_eq!(listed["annotations"]["shortfall_rps"], "250.00", "{listed}");
    assert_eq!(listed["annotations"]["shortfall_replicas"], "3", "{listed}");
    assert_eq!(listed["status"]["state"], "active", "{listed}");

    let resolved = AlertAction {
        bottleneck,
        starts_at: now,
        ends_at: now,
        resolved: true,
        issued_at: now + 1,
    };
    outbox
        .enqueue(vec![Action::Alert(resolved)])
        .await
        .expect("enqueue");
    poll_until_async("the alert to be resolved", DEADLINE, || async {
        ours(&alerts(&am).await, "api").is_none().then_some(())
    })
    .await;
    // Both recorded as delivered (the record follows Alertmanager's answer).
    poll_until_async("both alerts recorded as delivered", DEADLINE, || async {
        let done = outbox
            .list(Some(DeliveryState::Delivered), None, 10)
            .await
            .unwrap();
        (done.len() == 2).then_some(())
    })
    .await;
    let _ = stop.send(true);
    task.await.unwrap();
}

/// `serve`: a target that needs more than `max_replicas` can give is alerted to
/// Alertmanager with its time to breach and shortfall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_alerts_a_breach_scaling_cannot_prevent() {
    let am = tokio::task::spawn_blocking(Alertmanager::start)
        .await
        .expect("start alertmanager");
    let prom = Prometheus::backfilled_async(1).await;
    // A few requests/s of demand against 2 × 0.01 rps: breached now, whatever happens.
    let cfg = TestConfig::new()
        .prometheus(&prom.url())
        .alertmanager(&am.url(), "30m")
        .target(
            TestTarget::new("web", common::RATE_QUERY)
                .set("capacity_rps", 0.01)
                .set("startup", "1m")
                .set("min_replicas", 1)
                .set("max_replicas", 2)
                .set("interval", "1s")
                .set("history", "6h"),
        )
        .write();
    let app = App::start(&cfg).await;
    let listed = poll_until_async("the alert to be listed", DEADLINE, || async {
        ours(&alerts(&am).await, "web").cloned()
    })
    .await;
    assert_eq!(listed["labels"]["signal"], "request_rate", "{listed}");
    assert_eq!(listed["annotations"]["limit"], "max_replicas", "{listed}");
    // Breached from the first forecast point on: within a step (1m) of now.
    let ttb: i64 = listed["annotations"]["time_to_breach_seconds"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a number");
    assert!((0..=60).contains(&ttb), "{listed}");
    let shortfall: f64 = listed["annotations"]["shortfall_rps"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a number");
    assert!(shortfall > 0.5, "{listed}");
    app.stop().await;
}
