//! The KEDA external scaler end to end: the `prescale serve` binary over a real Prometheus
//! backfilled from a real trace, called by a gRPC client generated from KEDA's own
//! `externalscaler.proto` (vendored in `proto/keda/` with its licence; `build.rs` writes
//! the client beside the crate's server). Every answer is held to the decision the HTTP API
//! shows.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{
    AppProcess, Etcd, Prometheus, READY_DEADLINE, STOP_DEADLINE, TempConfig, TestConfig,
    TestTarget, free_addr, poll_until,
};
use serde_json::Value;
use tonic::Code;

/// The client generated from KEDA's `externalscaler.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
mod externalscaler {
    include!(concat!(env!("OUT_DIR"), "/client/externalscaler.rs"));
}

use externalscaler::external_scaler_client::ExternalScalerClient;
use externalscaler::{GetMetricsRequest, ScaledObjectRef};

type Client = ExternalScalerClient<tonic::transport::Channel>;

const TOKEN: &str = "keda-test-token";

/// The reference KEDA sends for a `ScaledObject` named `name` whose trigger's metadata is
/// `metadata`.
fn scaled_object(name: &str, metadata: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: name.to_owned(),
        namespace: "shop".to_owned(),
        scaler_metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
    }
}

/// `GetMetrics` as KEDA calls it (the metric's name without KEDA's `sN-` prefix).
async fn metrics(client: &mut Client, object: &ScaledObjectRef) -> Result<i64, tonic::Status> {
    let res = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(object.clone()),
            metric_name: "prescale-web".to_owned(),
        })
        .await?
        .into_inner();
    assert_eq!(res.metric_values.len(), 1, "{res:?}");
    let v = &res.metric_values[0];
    assert_eq!(v.metric_name, "prescale-web");
    assert_eq!(v.metric_value_float, v.metric_value as f64, "{v:?}");
    Ok(v.metric_value)
}

/// The target `web` as the HTTP API shows it: its status and the count of its latest
/// decision.
fn shown(app: &AppProcess) -> Option<(String, Option<i64>)> {
    shown_at(app.addr)
}

/// [`shown`] by the API at `addr`.
fn shown_at(addr: SocketAddr) -> Option<(String, Option<i64>)> {
    let t: Value = common::get_json(addr, "/api/v1/targets/web")?;
    Some((
        t["status"].as_str()?.to_owned(),
        t["desired_replicas"].as_i64(),
    ))
}

/// A configuration with the external scaler on `grpc`, one target `web` deciding every
/// second (its data never stale: the backfill is not extended), and an API token (to pause
/// it).
fn config(prom: &Prometheus, http: SocketAddr, grpc: SocketAddr) -> TestConfig {
    TestConfig::new()
        .prometheus(&prom.url())
        .listen(http)
        .set("server", "keda_listen", grpc.to_string())
        .set("server", "api_token_file", "token")
        .target(
            TestTarget::web()
                .set("capacity_rps", 0.05)
                .set("min_replicas", 1)
                .set("max_replicas", 500)
                .set("interval", "1s")
                .set("history", "1d")
                .set("stale_after", "1d"),
        )
}

/// `prescale serve` of `config`, its API on `http`, ready.
fn serve(config: &TestConfig, http: SocketAddr) -> (AppProcess, TempConfig) {
    let cfg = config.write();
    cfg.write_file("token", TOKEN);
    let mut app = AppProcess::serve(&cfg, http);
    app.wait_ready();
    (app, cfg)
}

/// A `GetMetrics` answer equal to the count the HTTP API shows for the same decision: the
/// count is read before and after the call, and only a call between two equal readings
/// counts (a new decision may land in between).
async fn metrics_match_the_api(client: &mut Client, api: SocketAddr, object: &ScaledObjectRef) {
    let deadline = std::time::Instant::now() + READY_DEADLINE;
    loop {
        let before = shown_at(api);
        let got = metrics(client, object).await.expect("GetMetrics");
        let after = shown_at(api);
        match (&before, &after) {
            (Some((_, Some(b))), Some((_, Some(a)))) if a == b => {
                assert_eq!(got, *b, "GetMetrics is the decision the API shows");
                return;
            }
            _ => assert!(
                std::time::Instant::now() < deadline,
                "the decision kept changing: {before:?} then {after:?}"
            ),
        }
    }
}

#[test]
fn a_keda_client_gets_the_decided_count_and_refusals_where_no_count_is_safe() {
    let prom = Prometheus::backfilled(2);
    let (http, grpc) = (free_addr(), free_addr());
    let (mut app, cfg) = serve(&config(&prom, http, grpc), http);
    let desired = poll_until("the first decision", READY_DEADLINE, || match shown(&app) {
        Some((status, Some(n))) if status == "ok" => Some(n),
        _ => None,
    });
    assert!(desired > 0, "the trace's demand needs replicas: {desired}");
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let mut stream = rt.block_on(async {
        let mut client = Client::connect(format!("http://{grpc}"))
            .await
            .expect("connect to keda_listen");
        let web = scaled_object("web-scaler", &[("target", "web")]);

        let spec = client
            .get_metric_spec(web.clone())
            .await
            .expect("GetMetricSpec");
        let specs = spec.into_inner().metric_specs;
        assert_eq!(specs.len(), 1, "{specs:?}");
        assert_eq!(
            (
                specs[0].metric_name.as_str(),
                specs[0].target_size,
                specs[0].target_size_float
            ),
            ("prescale-web", 1, 1.0)
        );
        metrics_match_the_api(&mut client, http, &web).await;
        // Without `target`, the ScaledObject's name is the target's.
        metrics_match_the_api(&mut client, http, &scaled_object("web", &[])).await;
        let active = client.is_active(web.clone()).await.expect("IsActive");
        assert!(
            active.into_inner().result,
            "{desired} replicas wanted: active"
        );

        let mut stream = client
            .stream_is_active(web.clone())
            .await
            .expect("StreamIsActive")
            .into_inner();
        let first = tokio::time::timeout(READY_DEADLINE, stream.message())
            .await
            .expect("a first message within the deadline")
            .expect("a message, not an error")
            .expect("a message, not the end");
        assert!(first.result, "the first message is the current flag");

        // An unknown target: NOT_FOUND naming it, from every method.
        let nope = scaled_object("so", &[("target", "nope")]);
        let refusals = [
            metrics(&mut client, &nope).await.expect_err("unknown"),
            client.is_active(nope.clone()).await.expect_err("unknown"),
            client
                .get_metric_spec(nope.clone())
                .await
                .expect_err("unknown"),
            client
                .stream_is_active(nope.clone())
                .await
                .expect_err("unknown"),
        ];
        for status in refusals {
            assert_eq!(status.code(), Code::NotFound, "{status:?}");
            assert!(status.message().contains("`nope`"), "{status:?}");
        }

        // A name of 20,000 characters: INVALID_ARGUMENT, its message short enough for a
        // header (it once came back RESOURCE_EXHAUSTED, the name echoed whole).
        let long = "x".repeat(20_000);
        for object in [
            scaled_object("so", &[("target", &long)]),
            scaled_object(&long, &[]),
        ] {
            let refusals = [
                metrics(&mut client, &object).await.expect_err("too long"),
                client
                    .is_active(object.clone())
                    .await
                    .expect_err("too long"),
                client
                    .get_metric_spec(object.clone())
                    .await
                    .expect_err("too long"),
            ];
            for status in refusals {
                assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                let m = status.message();
                assert!(
                    m.len() < 1_000
                        && m.contains("20000 characters")
                        && m.contains("longer than 128"),
                    "{m}"
                );
            }
        }

        // Paused through the API: no count at all (UNAVAILABLE, naming target and
        // reason), so KEDA keeps the current one; the metric's spec still stands.
        let paused = pause(http).await;
        assert_eq!(paused, 200, "POST …/pause");
        for status in [
            metrics(&mut client, &web).await.expect_err("paused"),
            client.is_active(web.clone()).await.expect_err("paused"),
        ] {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            let m = status.message();
            assert!(m.contains("target `web`") && m.contains("paused"), "{m}");
        }
        client
            .get_metric_spec(web)
            .await
            .expect("the spec while paused");

        // A reload (SIGHUP) that adds a target: the scaler reads the new configuration.
        let api = scaled_object("api", &[]);
        let status = client
            .get_metric_spec(api.clone())
            .await
            .expect_err("not yet");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        let added = TestTarget::new("api", common::RATE_QUERY)
            .set("capacity_rps", 150)
            .set("startup", "3m")
            .set("max_replicas", 40);
        config(&prom, http, grpc).target(added).write_over(&cfg);
        app.signal("HUP");
        common::poll_until_async("the reloaded target `api`", READY_DEADLINE, || {
            let (mut client, api) = (client.clone(), api.clone());
            async move { client.get_metric_spec(api).await.ok() }
        })
        .await;
        stream
    });

    // Stopping prescale ends the open stream, and prescale stops.
    app.terminate();
    let end = rt.block_on(async {
        tokio::time::timeout(STOP_DEADLINE, async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
    });
    assert!(
        matches!(end, Ok(Ok(None)) | Ok(Err(_))),
        "the stream ends at shutdown: {end:?}"
    );
    let status = app.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", app.stderr());
}

/// `POST /api/v1/targets/web/pause` with the token: the status.
async fn pause(http: SocketAddr) -> u16 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    client
        .post(format!("http://{http}/api/v1/targets/web/pause"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("POST …/pause")
        .status()
        .as_u16()
}

/// The owner of `web` as the instance at `addr` sees the fleet; `None` until it shows two
/// members holding 128 buckets each (the hand-offs to the joiner done) and an owner of
/// `web`.
fn settled(addr: SocketAddr) -> Option<String> {
    let c = common::get_json(addr, "/api/v1/cluster")?;
    let members = c["members"].as_array()?;
    let even = members.len() == 2 && members.iter().all(|m| m["buckets"].as_u64() == Some(128));
    let web = c["targets"]
        .as_array()?
        .iter()
        .find(|t| t["target"] == "web")?;
    even.then(|| web["owner"].as_str().map(str::to_owned))?
}

/// With `[cluster]`, an instance that does not own a target answers for it from the
/// owner's state, and answers UNAVAILABLE naming the owner when the owner is gone.
#[test]
fn any_instance_of_a_fleet_answers_for_every_target() {
    let etcd = Etcd::start(1);
    let prom = Prometheus::backfilled(2);
    let mut apps = Vec::new();
    for name in ["p0", "p1"] {
        let (http, grpc) = (free_addr(), free_addr());
        let config = config(&prom, http, grpc)
            .set("cluster", "etcd", etcd.endpoints())
            .set("cluster", "name", name)
            .set("cluster", "advertise", format!("http://{http}"))
            .set("cluster", "lease_ttl", "10s");
        let (app, cfg) = serve(&config, http);
        apps.push((app, cfg, grpc));
    }
    let owner = poll_until("the fleet to settle", READY_DEADLINE, || {
        let a = settled(apps[0].0.addr)?;
        (settled(apps[1].0.addr)? == a).then_some(a)
    });
    let (o, n) = if owner == "p0" { (0, 1) } else { (1, 0) };
    let owner_api = apps[o].0.addr;
    poll_until("the owner's first decision", READY_DEADLINE, || {
        matches!(shown_at(owner_api), Some((s, Some(_))) if s == "ok").then_some(())
    });
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let mut client = rt.block_on(async {
        let mut client = Client::connect(format!("http://{}", apps[n].2))
            .await
            .expect("connect to the other instance's keda_listen");
        let web = scaled_object("web-scaler", &[("target", "web")]);
        metrics_match_the_api(&mut client, owner_api, &web).await;
        let active = client.is_active(web).await.expect("IsActive");
        assert!(active.into_inner().result);
        client
    });

    // The owner killed: until its lease lapses (10 s) it is still the owner, and does not
    // answer.
    apps[o].0.kill();
    let status = rt
        .block_on(metrics(
            &mut client,
            &scaled_object("web-scaler", &[("target", "web")]),
        ))
        .expect_err("the owner is gone");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let m = status.message();
    assert!(
        m.contains("target `web`") && m.contains(&format!("instance `{owner}`")),
        "{m}"
    );
    drop(client);
    apps[n].0.terminate();
    let exit = apps[n].0.wait_exit();
    assert!(exit.success(), "{exit}; log:\n{}", apps[n].0.stderr());
}
