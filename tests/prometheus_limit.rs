//! `[prometheus] max_concurrency` holds: 50 targets backfilling and polling through one
//! `prescale serve` never have more than 3 requests in flight, and each target asks for
//! its recent hours first and its older history after, newest first.
//!
//! Prometheus here is a **stand-in** written in this test, as issue 27 allows for this
//! check: a real Prometheus answers too fast, and cannot say how many requests it had in
//! flight at once. The stand-in answers every `query_range` slowly (100 ms), counts the
//! requests in flight, and answers one series with a sample at every step asked for, so
//! that the backfill's result can be checked too. The backfill of a real Prometheus is
//! tested in `serve.rs` and `prometheus_source.rs`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use common::app::App;
use common::config::{TestConfig, TestTarget};
use common::http::Server;
use common::process::poll_until_async;
use serde_json::{Value, json};

const TARGETS: usize = 50;
const LIMIT: usize = 3;
const STEP: i64 = 60;
/// The recent hours a first poll asks for (`pipeline::backfill::RECENT_SECS`).
const RECENT_SECS: i64 = 6 * 3_600;

/// What the stand-in saw.
#[derive(Default)]
struct Seen {
    in_flight: AtomicUsize,
    most: AtomicUsize,
    /// Every request, in the order they arrived: (query, start, end).
    requests: Mutex<Vec<(String, i64, i64)>>,
}

async fn query_range(
    State(seen): State<Arc<Seen>>,
    Query(params): Query<BTreeMap<String, String>>,
) -> axum::Json<Value> {
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.most.fetch_max(now, Ordering::SeqCst);
    let num = |k: &str| -> i64 {
        params
            .get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as i64)
    };
    let (start, end, step) = (num("start"), num("end"), num("step").max(1));
    let query = params.get("query").cloned().unwrap_or_default();
    seen.requests
        .lock()
        .expect("requests")
        .push((query, start, end));
    // Slow, as a loaded Prometheus: the requests of many targets overlap.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let values: Vec<Value> = (0..)
        .map(|i| start + i * step)
        .take_while(|ts| *ts <= end)
        .map(|ts| json!([ts, "1"]))
        .collect();
    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
    axum::Json(json!({
        "status": "success",
        "data": {"resultType": "matrix", "result": [{"metric": {}, "values": values}]}
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_targets_never_have_more_than_the_limit_in_flight() {
    let seen = Arc::new(Seen::default());
    let prometheus = Server::start(
        Router::new()
            .route("/api/v1/query_range", get(query_range))
            .with_state(seen.clone()),
    );
    let mut config = TestConfig::new()
        .prometheus(&format!("http://{}", prometheus.addr))
        .set("prometheus", "max_concurrency", LIMIT as i64);
    for i in 0..TARGETS {
        config = config.target(
            TestTarget::new(
                &format!("t{i}"),
                &format!("sum(rate(req{{t=\"t{i}\"}}[5m]))"),
            )
            .set("mode", "forecast-only")
            .set("capacity_rps", 10)
            .set("startup", "1m")
            .set("min_replicas", 1)
            .set("max_replicas", 10)
            .set("history", "2d")
            .set("step", "1m")
            .set("interval", "5s"),
        );
    }
    let cfg = config.write();
    let app = App::start(&cfg).await;

    // Every target gets its whole history: two days at a minute, 2,881 points, once the
    // older history is loaded after the recent hours.
    poll_until_async(
        "every target's whole history",
        Duration::from_secs(240),
        || async {
            for i in 0..TARGETS {
                let t = app.get_json(&format!("/api/v1/targets/t{i}")).await?;
                let loading = &t["signals"]["request_rate"]["loading"];
                let points = t["points"].as_u64()?;
                if !loading.is_null() || points < 2 * 1_440 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let (_, ready) = app.get("/readyz").await.expect("/readyz");
    app.stop().await;

    let most = seen.most.load(Ordering::SeqCst);
    assert!(
        most <= LIMIT,
        "{most} requests in flight at once; the limit is {LIMIT}"
    );
    // Fifty targets waiting: the limit, not the targets, bounds the requests in flight.
    assert_eq!(most, LIMIT, "the slots were never all in use");
    let requests = seen.requests.lock().expect("requests").clone();
    check_order(&requests);
    let ready: Value = serde_json::from_str(&ready).expect("/readyz is JSON");
    assert!(ready["cycles"]["behind"].is_u64(), "{ready}");
}

/// Per target: the first request is the recent hours; every request for older history
/// comes after it, the newest chunk first.
fn check_order(requests: &[(String, i64, i64)]) {
    let mut by_query: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
    for (q, start, end) in requests {
        by_query.entry(q).or_default().push((*start, *end));
    }
    assert_eq!(by_query.len(), TARGETS, "a query per target");
    for (q, asked) in by_query {
        let (first_start, first_end) = asked[0];
        assert!(
            first_end - first_start <= RECENT_SECS,
            "{q}: the first request spans {}s, more than the recent hours",
            first_end - first_start
        );
        let older: Vec<(i64, i64)> = asked
            .iter()
            .copied()
            .filter(|(_, end)| *end < first_start)
            .collect();
        assert!(
            !older.is_empty(),
            "{q}: no older history asked for: {asked:?}"
        );
        assert_eq!(older[0].1, first_start - STEP, "{q}: {asked:?}");
        for w in older.windows(2) {
            assert_eq!(
                w[1].1,
                w[0].0 - STEP,
                "{q}: older chunks newest first: {asked:?}"
            );
        }
    }
}
