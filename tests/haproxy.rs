//! The HAProxy adapter against a real HAProxy fronting real local HTTP servers: weights
//! decided from per-instance latency land in `show servers state` and shift the traffic;
//! drain and ready work over the unix socket and over TCP.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{App, Haproxy, Prometheus, Receiver, TestConfig, TestTarget, poll_until_async};
use prescale::act::haproxy;
use prescale::config::{HaproxyConfig, RuntimeApi};

const DEADLINE: Duration = Duration::from_secs(60);

/// Requests each server got.
fn counts(servers: &[Receiver]) -> Vec<usize> {
    servers.iter().map(|r| r.requests().len()).collect()
}

/// Sends `n` requests through HAProxy and returns how many each server got.
async fn shift(h: &Haproxy, servers: &[Receiver], n: usize) -> Vec<usize> {
    let before = counts(servers);
    let frontend = h.frontend;
    tokio::task::spawn_blocking(move || {
        for i in 0..n {
            let (status, body) = common::http_get(frontend, &format!("/req/{i}"))
                .unwrap_or_else(|e| panic!("request {i} through haproxy: {e}"));
            assert_eq!(status, 200, "{body}");
        }
    })
    .await
    .expect("traffic");
    counts(servers)
        .iter()
        .zip(before)
        .map(|(a, b)| a - b)
        .collect()
}

/// `serve` with per-instance latency from Prometheus naming the two servers: the slower
/// one gets half the weight in HAProxy, and half the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_from_latency_reach_haproxy_and_shift_traffic() {
    let servers = [Receiver::start(&[]), Receiver::start(&[])];
    let h = tokio::task::spawn_blocking({
        let addrs = [servers[0].addr(), servers[1].addr()];
        move || Haproxy::start(&addrs)
    })
    .await
    .expect("start haproxy");
    let even = shift(&h, &servers, 100).await;
    assert_eq!(even, [50, 50], "weight 100 each at start");

    let prom = Prometheus::backfilled_async(1).await;
    let (a, b) = (servers[0].addr(), servers[1].addr());
    let latency = format!(
        r#"label_replace(vector(0.1), "instance", "{a}", "", "") or label_replace(vector(0.2), "instance", "{b}", "", "")"#
    );
    let cfg = TestConfig::new()
        .prometheus(&prom.url())
        .target(
            TestTarget::new("web", common::RATE_QUERY)
                .set("instance_latency", latency)
                .set("capacity_rps", 1)
                .set("startup", "1m")
                .set("max_replicas", 10)
                .set("interval", "1s")
                .set("history", "6h")
                .haproxy(&h.socket(), "web"),
        )
        .write();
    let app = App::start(&cfg).await;

    let state = poll_until_async("weights 100/50 in haproxy", DEADLINE, || async {
        let s = h.servers();
        let w: Vec<u32> = s.iter().map(|x| x.3).collect();
        (w == [100, 50]).then_some(s)
    })
    .await;
    assert_eq!(state[0].1, a.to_string(), "mapped by address: {state:?}");
    assert_eq!(state[1].1, b.to_string(), "mapped by address: {state:?}");
    let got = shift(&h, &servers, 300).await;
    assert!(
        (195..=205).contains(&got[0]) && got[0] + got[1] == 300,
        "traffic follows 100:50, got {got:?}"
    );

    app.stop().await;
    // The rebalance went through the outbox and is recorded there as delivered.
    let outbox = prescale::act::outbox::Outbox::open(&cfg.dir().join("state")).expect("reopen");
    let done = outbox
        .list(
            Some(prescale::act::outbox::DeliveryState::Delivered),
            None,
            10,
        )
        .await
        .unwrap();
    assert!(
        done.iter()
            .any(|d| d.kind == prescale::act::ActionKind::Rebalance),
        "{done:#?}"
    );
}

/// Weight 0 drains a server; a weight again makes it ready — over the unix socket and over
/// TCP. Unknown backends and unmatched instances are errors that name them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_and_restores_over_unix_and_tcp() {
    let servers = [Receiver::start(&[]), Receiver::start(&[])];
    let (a, b) = (servers[0].addr().to_string(), servers[1].addr().to_string());
    let h = tokio::task::spawn_blocking({
        let addrs = [servers[0].addr(), servers[1].addr()];
        move || Haproxy::start(&addrs)
    })
    .await
    .expect("start haproxy");
    let unix = HaproxyConfig {
        runtime_api: RuntimeApi::Unix(h.socket()),
        backend: "web".into(),
        timeout: Duration::from_secs(2),
    };
    let tcp = HaproxyConfig {
        runtime_api: RuntimeApi::Tcp(h.api_tcp.to_string()),
        ..unix.clone()
    };
    let weights = |x: u32, y: u32| BTreeMap::from([(a.clone(), x), (b.clone(), y)]);

    haproxy::apply(&unix, &weights(0, 100))
        .await
        .expect("drain a");
    let s = h.servers();
    assert!(s[0].2 & 0x08 != 0, "a drained: {s:?}");
    assert_eq!(shift(&h, &servers, 40).await, [0, 40]);

    haproxy::apply(&tcp, &weights(30, 90))
        .await
        .expect("restore a over tcp");
    let s = h.servers();
    assert_eq!((s[0].2, s[0].3, s[1].3), (0, 30, 90), "{s:?}");
    let got = shift(&h, &servers, 120).await;
    assert!(
        (28..=32).contains(&got[0]) && got[1] == 120 - got[0],
        "traffic follows 30:90, got {got:?}"
    );
    let seen = haproxy::servers(&tcp).await.expect("servers over tcp");
    assert_eq!(seen[0].address, a);
    assert_eq!(seen[1].weight, 90);

    let wrong = HaproxyConfig {
        backend: "nope".into(),
        ..unix.clone()
    };
    let err = haproxy::apply(&wrong, &weights(10, 10))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
    let err = haproxy::apply(&unix, &BTreeMap::from([("10.9.9.9:80".to_owned(), 5)]))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("10.9.9.9:80") && err.contains(&a), "{err}");
    let gone = HaproxyConfig {
        runtime_api: RuntimeApi::Unix(h.socket().with_extension("missing")),
        ..unix
    };
    match haproxy::apply(&gone, &weights(1, 1)).await {
        Err(haproxy::HaproxyError::Unreachable { .. }) => {}
        other => panic!("expected Unreachable, got {other:?}"),
    }
}
