//! The Kubernetes platform (`[target.platform] kind = "kubernetes"`).
//!
//! No Kubernetes API server can run on the machines these tests run on, so they talk to a
//! stand-in ([`common::KubeApi`]) that follows the published API contract for what prescale
//! calls: the paths, the `Scale` and `HorizontalPodAutoscaler` objects with `apiVersion`,
//! `kind` and `metadata.resourceVersion`, `Status` objects for errors, 409 on a stale
//! `resourceVersion`, 403 and 404, and it checks the merge-patch content type and
//! `fieldManager=prescale`. prescale reaches it through kube-rs, configured by a kubeconfig
//! file the test writes (`server: http://127.0.0.1:PORT`), exactly as it would reach a
//! real cluster. What the stand-in cannot show is a real server's behaviour beyond that
//! contract (admission, controllers, RBAC evaluation itself).
//!
//! - the adapter against the stand-in: `replicas` mode sets `spec.replicas` (and reads the
//!   running count); refused while an HPA targets the resource; `hpa-floor` patches the
//!   HPA's `minReplicas` (bounded by `maxReplicas`) and gives it back; 409 is read again
//!   and retried; 403 and 404 are final with the server's message;
//! - `prescale serve` end to end, with a real Prometheus, delivering to the stand-in: the
//!   running count read from the scale subresource, a scale delivered, a 403 dead letter
//!   carrying the server's message, an HPA in the way degrading its target, and an HPA's
//!   floor given back on pause;
//! - the Role in `deploy/kubernetes/` allows exactly the (verb, resource) pairs the adapter
//!   called.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{Backfill, Call, Exporter, KubeApi, Options, Prometheus, poll_until_async};
use prescale::act::Attempt;
use prescale::act::kubernetes::{KubeError, Kubernetes};
use prescale::config::{Credentials, KubernetesConfig, KubernetesMode, ScaleTargetRef};
use serde_json::Value;

const NS: &str = "shop";
const DEADLINE: Duration = Duration::from_secs(90);
const API_TOKEN: &str = "api-token";

fn deployment(name: &str) -> ScaleTargetRef {
    ScaleTargetRef {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: name.into(),
    }
}

/// The adapter for Deployment `name` in [`NS`], reaching `api` through a kubeconfig in `dir`.
fn adapter(api: &KubeApi, dir: &Path, name: &str, mode: KubernetesMode) -> Kubernetes {
    let config = KubernetesConfig {
        namespace: NS.into(),
        resource: deployment(name),
        mode,
        hpa: None,
        restore_min: 2,
        credentials: Credentials::Kubeconfig {
            path: Some(api.write_kubeconfig(dir)),
            context: Some("stand-in".into()),
        },
    };
    Kubernetes::new(config, Duration::from_secs(5))
}

fn patches(calls: &[Call]) -> Vec<&Call> {
    calls.iter().filter(|c| c.verb == "patch").collect()
}

/// Every patch was a merge patch by field manager `prescale`.
fn assert_merge_patches(calls: &[Call]) {
    let p = patches(calls);
    assert!(!p.is_empty(), "no patch: {calls:?}");
    for c in p {
        assert_eq!(
            c.content_type.as_deref(),
            Some("application/merge-patch+json"),
            "{c:?}"
        );
        assert_eq!(c.field_manager.as_deref(), Some("prescale"), "{c:?}");
    }
}

#[tokio::test]
async fn replicas_mode_reads_the_running_count_and_sets_spec_replicas() {
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    api.add_deployment(NS, "web", 3);
    let k = adapter(&api, dir.path(), "web", KubernetesMode::Replicas);

    assert_eq!(k.running().await, Ok(3));
    k.scale_to(7).await.expect("scaled");
    assert_eq!(api.replicas(NS, "web"), Some(7));
    assert_eq!(k.running().await, Ok(7));

    let calls = api.calls();
    assert_merge_patches(&calls);
    let scale_patch = patches(&calls)[0];
    assert_eq!(
        (scale_patch.group.as_str(), scale_patch.resource.as_str()),
        ("apps", "deployments/scale")
    );
    assert_eq!(scale_patch.name.as_deref(), Some("web"));
    assert_eq!(scale_patch.status, 200);

    // Through the outbox's entry point: the body of a scale action.
    let body = br#"{"schema_version":1,"kind":"scale","target":"web","from":7,"to":9}"#;
    assert_eq!(k.attempt(body).await, Attempt::Success(Some(200)));
    assert_eq!(api.replicas(NS, "web"), Some(9));
}

#[tokio::test]
async fn replicas_mode_is_refused_while_an_hpa_targets_the_resource() {
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    api.add_deployment(NS, "web", 3);
    api.add_hpa(NS, "web-cpu", "web", 2, 10);
    // An HPA of another Deployment is no obstacle.
    api.add_deployment(NS, "other", 1);
    api.add_hpa(NS, "api", "api", 1, 5);
    let k = adapter(&api, dir.path(), "web", KubernetesMode::Replicas);

    let err = k.scale_to(5).await.expect_err("refused");
    assert!(
        matches!(&err, KubeError::HpaInTheWay { hpa, .. } if hpa == "web-cpu"),
        "{err}"
    );
    assert!(err.to_string().contains("hpa-floor"), "{err}");
    match err.attempt() {
        Attempt::Final { error, .. } => assert!(error.contains("`web-cpu`"), "{error}"),
        a => panic!("expected a final refusal, got {a:?}"),
    }
    assert!(matches!(
        k.running().await,
        Err(KubeError::HpaInTheWay { .. })
    ));
    assert_eq!(api.replicas(NS, "web"), Some(3), "left alone");
    assert!(patches(&api.calls()).is_empty());

    let other = adapter(&api, dir.path(), "other", KubernetesMode::Replicas);
    other.scale_to(4).await.expect("no HPA targets `other`");
    assert_eq!(api.replicas(NS, "other"), Some(4));
}

#[tokio::test]
async fn hpa_floor_raises_min_replicas_within_max_and_gives_it_back() {
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    api.add_deployment(NS, "web", 3);
    api.add_hpa(NS, "web-cpu", "web", 3, 12);
    let k = adapter(&api, dir.path(), "web", KubernetesMode::HpaFloor);

    assert_eq!(k.running().await, Ok(3), "the running count, HPA or not");
    k.scale_to(8).await.expect("floor raised");
    assert_eq!(api.hpa_min(NS, "web-cpu"), Some(8));
    assert_eq!(api.replicas(NS, "web"), Some(3), "replicas stay the HPA's");
    k.scale_to(50).await.expect("floor raised");
    assert_eq!(
        api.hpa_min(NS, "web-cpu"),
        Some(12),
        "bounded by maxReplicas"
    );

    assert_eq!(k.release().await, Ok(Some(2)), "the target's min_replicas");
    assert_eq!(api.hpa_min(NS, "web-cpu"), Some(2));
    let calls = api.calls();
    assert_merge_patches(&calls);
    assert!(
        patches(&calls)
            .iter()
            .all(|c| c.resource == "horizontalpodautoscalers" && c.group == "autoscaling"),
        "{calls:?}"
    );

    // Without an HPA, hpa-floor has nothing to raise: a final refusal saying so.
    api.add_deployment(NS, "lonely", 1);
    let lonely = adapter(&api, dir.path(), "lonely", KubernetesMode::HpaFloor);
    assert!(matches!(
        lonely.running().await,
        Err(KubeError::NoHpa { .. })
    ));
    let err = lonely.scale_to(4).await.expect_err("no HPA");
    assert!(matches!(err, KubeError::NoHpa { .. }), "{err}");
    assert!(matches!(err.attempt(), Attempt::Final { .. }));
}

#[tokio::test]
async fn a_conflict_is_read_again_and_retried() {
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    api.add_deployment(NS, "web", 3);
    let k = adapter(&api, dir.path(), "web", KubernetesMode::Replicas);

    // Another writer changes the object after each of the next two reads.
    api.interfere("deployments", NS, "web", 2);
    k.scale_to(6).await.expect("third read and patch succeed");
    assert_eq!(api.replicas(NS, "web"), Some(6));
    let statuses: Vec<u16> = patches(&api.calls()).iter().map(|c| c.status).collect();
    assert_eq!(statuses, [409, 409, 200]);

    // A writer that never stops: bounded, then retried later by the outbox.
    api.interfere("deployments", NS, "web", 100);
    let err = k.scale_to(7).await.expect_err("gives up this attempt");
    assert!(matches!(err, KubeError::Conflict { .. }), "{err}");
    assert!(matches!(err.attempt(), Attempt::Retry { .. }));
    assert_eq!(api.replicas(NS, "web"), Some(6));

    // hpa-floor too.
    api.add_deployment(NS, "api", 1);
    api.add_hpa(NS, "api", "api", 1, 9);
    let floor = adapter(&api, dir.path(), "api", KubernetesMode::HpaFloor);
    api.interfere("horizontalpodautoscalers", NS, "api", 1);
    floor.scale_to(4).await.expect("second patch succeeds");
    assert_eq!(api.hpa_min(NS, "api"), Some(4));
}

#[tokio::test]
async fn forbidden_and_missing_are_final_with_the_servers_message() {
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    api.add_deployment(NS, "web", 3);
    api.deny("patch", "deployments/scale");
    let k = adapter(&api, dir.path(), "web", KubernetesMode::Replicas);
    match k.attempt(br#"{"to":5}"#).await {
        Attempt::Final {
            error,
            status,
            body,
        } => {
            assert_eq!(status, Some(403));
            assert!(
                body.contains("cannot patch resource \"deployments/scale\" in API group \"apps\""),
                "{body}"
            );
            assert!(error.contains("403 Forbidden"), "{error}");
        }
        a => panic!("expected a final 403, got {a:?}"),
    }

    let missing = adapter(&api, dir.path(), "gone", KubernetesMode::Replicas);
    match missing.attempt(br#"{"to":5}"#).await {
        Attempt::Final { status, body, .. } => {
            assert_eq!(status, Some(404));
            assert_eq!(body, "deployments.apps \"gone\" not found");
        }
        a => panic!("expected a final 404, got {a:?}"),
    }

    // Nobody listening: a transport error, retried.
    let closed = KubeApi::start();
    let url = closed.url();
    drop(closed);
    let config = KubernetesConfig {
        credentials: Credentials::Kubeconfig {
            path: Some(write_kubeconfig_to(dir.path(), &url)),
            context: None,
        },
        ..k.config().clone()
    };
    let unreachable = Kubernetes::new(config, Duration::from_secs(2));
    assert!(matches!(
        unreachable.attempt(br#"{"to":5}"#).await,
        Attempt::Retry { status: None, .. }
    ));
}

/// A PATCH the API server applied but whose answer never came: the attempt is retried,
/// and its error says it timed out and may have been applied (it once said only "client
/// error (SendRequest)"). The stand-in holds the answer back; it is no real API server.
#[tokio::test]
async fn a_patch_that_times_out_says_so_and_that_it_may_have_been_applied() {
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    api.add_deployment(NS, "web", 3);
    api.stall("patch", "deployments/scale");
    let config = adapter(&api, dir.path(), "web", KubernetesMode::Replicas)
        .config()
        .clone();
    let k = Kubernetes::new(config, Duration::from_secs(1));
    match k.attempt(br#"{"to":5}"#).await {
        Attempt::Retry { error, status, .. } => {
            assert_eq!(status, None);
            assert!(
                error.contains("PATCH Deployment/web/scale")
                    && error.contains("timed out")
                    && error.contains("may have been applied"),
                "{error}"
            );
        }
        a => panic!("expected a retry after a timeout, got {a:?}"),
    }
    assert_eq!(api.replicas(NS, "web"), Some(5), "the stand-in applied it");
}

fn write_kubeconfig_to(dir: &Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("closed-kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  cluster:\n    server: {server}\n\
         contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\nusers:\n- name: u\n  user:\n    token: t\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Everything the adapter does, in both modes, against one stand-in: the calls it made.
async fn exercise_every_call() -> Vec<Call> {
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    api.add_deployment(NS, "web", 3);
    api.add_deployment(NS, "api", 3);
    api.add_hpa(NS, "api", "api", 2, 10);
    let replicas = adapter(&api, dir.path(), "web", KubernetesMode::Replicas);
    replicas.running().await.expect("read");
    replicas.scale_to(5).await.expect("scaled");
    let floor = adapter(&api, dir.path(), "api", KubernetesMode::HpaFloor);
    floor.running().await.expect("read");
    floor.scale_to(6).await.expect("floor raised");
    floor.release().await.expect("floor given back");
    api.calls()
}

/// (verb, group, resource) of every rule of the Role in `deploy/kubernetes/rbac.yaml`.
fn role_grants() -> BTreeSet<(String, String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/rbac.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
    let roles: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Role").collect();
    assert_eq!(roles.len(), 1, "one Role in {}", path.display());
    let mut grants = BTreeSet::new();
    for rule in roles[0]["rules"].as_array().expect("rules") {
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .unwrap_or_else(|| panic!("rule without {k}: {rule}"))
                .iter()
                .map(|v| v.as_str().expect("a string").to_owned())
                .collect()
        };
        assert!(rule.get("resourceNames").is_none_or(Value::is_array));
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    assert!(
                        verb != "*" && resource != "*" && group != "*",
                        "a wildcard is more than least privilege: {rule}"
                    );
                    grants.insert((verb.clone(), group.clone(), resource.clone()));
                }
            }
        }
    }
    // The RoleBinding gives this Role to the ServiceAccount the Deployment runs as.
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "RoleBinding")
        .expect("a RoleBinding");
    assert_eq!(binding["roleRef"]["name"], roles[0]["metadata"]["name"]);
    assert!(docs.iter().any(|d| d["kind"] == "ServiceAccount"
        && binding["subjects"][0]["name"] == d["metadata"]["name"]));
    grants
}

/// The Role allows every call the adapter makes (both modes), and nothing else.
#[tokio::test]
async fn the_role_grants_exactly_what_the_adapter_calls() {
    let calls = exercise_every_call().await;
    assert!(calls.iter().all(|c| c.status == 200), "{calls:?}");
    let called: BTreeSet<(String, String, String)> = calls
        .iter()
        .map(|c| (c.verb.clone(), c.group.clone(), c.resource.clone()))
        .collect();
    let grants = role_grants();
    let missing: Vec<_> = called.difference(&grants).collect();
    let extra: Vec<_> = grants.difference(&called).collect();
    assert!(
        missing.is_empty(),
        "the adapter calls these, the Role does not allow them: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "the Role allows more than the adapter calls: {extra:?}"
    );
}

// ---------------------------------------------------------------------------------------
// `prescale serve` end to end.

/// A running `prescale serve`, reloading its file at each [`Serving::reload`].
struct Serving {
    addr: std::net::SocketAddr,
    reloads: tokio::sync::mpsc::Sender<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    client: reqwest::Client,
}

impl Serving {
    async fn start(config: &Path) -> Self {
        let config = prescale::config::Config::load(config).expect("valid test config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (reloads, reloaded) = tokio::sync::mpsc::channel(1);
        let stopped = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(prescale::serve_reloading(
            config, listener, stopped, reloaded,
        ));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        Self {
            addr,
            reloads,
            stop: Some(stop),
            task,
            client,
        }
    }

    async fn get(&self, path: &str) -> Value {
        let res = self
            .client
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await;
        match res {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    async fn post(&self, path: &str) -> u16 {
        let res = self
            .client
            .post(format!("http://{}{path}", self.addr))
            .bearer_auth(API_TOKEN)
            .send()
            .await;
        res.map_or(0, |r| r.status().as_u16())
    }

    async fn reload(&self) {
        self.reloads.send(()).await.expect("serve takes reloads");
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("serve stops within 20 s")
            .expect("serve task")
            .expect("serve returns Ok");
    }
}

fn kube_target(name: &str, platform: &str) -> String {
    format!(
        r#"
[[target]]
name = "{name}"
request_rate = '{}'
capacity_rps = 0.5
startup = "1m"
min_replicas = 2
max_replicas = 40
interval = "1s"
step = "10s"
history = "2d"

[target.platform]
kind = "kubernetes"
namespace = "{NS}"
kubeconfig = "kubeconfig"
context = "stand-in"
{platform}
"#,
        common::RATE_QUERY
    )
}

/// `prescale serve` with a real Prometheus, delivering to the stand-in: the running count
/// read from the scale subresource (no `replicas` query, no `initial_replicas`), a scale
/// delivered as a merge patch; a 403 dead letter carrying the server's message; an HPA in
/// the way of `replicas` mode degrading its target with a message naming it; and in
/// `hpa-floor` mode the HPA's floor raised, given back on pause, raised again on resume, and
/// given back on removal from the configuration by a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_scales_through_the_stand_in() {
    let backfill = Backfill::from_trace(3);
    let exporter = Exporter::start(backfill.total(), 300.0);
    let prom = Prometheus::start_async(Options {
        backfill: Some(backfill),
        scrape: Some(exporter.addr()),
        port: None,
        openmetrics: None,
    })
    .await;
    let api = KubeApi::start();
    api.add_deployment(NS, "web", 2);
    api.add_deployment(NS, "fought", 2);
    api.add_hpa(NS, "fought-cpu", "fought", 2, 10);
    api.add_deployment(NS, "floored", 2);
    api.add_hpa(NS, "floored-cpu", "floored", 2, 30);
    api.add_scalable("statefulsets", "StatefulSet", NS, "db", 2);
    api.deny("patch", "statefulsets/scale");

    api.add_deployment(NS, "dropped", 2);
    api.add_hpa(NS, "dropped-cpu", "dropped", 2, 30);

    let dir = tempfile::tempdir().unwrap();
    api.write_kubeconfig(dir.path());
    std::fs::write(dir.path().join("token"), API_TOKEN).unwrap();
    let head = format!(
        "[server]\napi_token_file = \"token\"\n\n[prometheus]\nurl = \"{}\"\n\n[delivery]\ninitial_backoff = \"20ms\"\nmax_backoff = \"100ms\"\ntimeout = \"2s\"\n{}{}{}{}",
        prom.url(),
        kube_target("web", "deployment = \"web\""),
        kube_target("fought", "deployment = \"fought\""),
        kube_target("floored", "deployment = \"floored\"\nmode = \"hpa-floor\""),
        kube_target(
            "db",
            "scale_target = { kind = \"StatefulSet\", name = \"db\" }"
        ),
    );
    let dropped = kube_target("dropped", "deployment = \"dropped\"\nmode = \"hpa-floor\"");
    let config = dir.path().join("prescale.toml");
    std::fs::write(&config, format!("{head}{dropped}")).unwrap();
    let app = Serving::start(&config).await;

    // The running count comes from the scale subresource, then a scale is delivered.
    let scaled = poll_until_async("prescale to scale Deployment web", DEADLINE, || async {
        api.replicas(NS, "web").filter(|n| *n > 2)
    })
    .await;
    assert!(scaled <= 40, "{scaled}");
    let web = app.get("/api/v1/targets/web").await;
    assert!(web["signals"]["replicas"]["newest"].is_i64(), "{web}");

    // A refused patch is a dead letter carrying the API server's message.
    let dead = poll_until_async("the 403 dead letter", DEADLINE, || async {
        let b = app.get("/api/v1/deliveries?state=dead&target=db").await;
        b["deliveries"].as_array().and_then(|l| l.first().cloned())
    })
    .await;
    assert_eq!(dead["last_status"], 403, "{dead}");
    let body = dead["response_body"].as_str().unwrap_or_default();
    assert!(
        body.contains("cannot patch resource \"statefulsets/scale\""),
        "{dead}"
    );

    // An HPA in the way of replicas mode: degraded, naming it; nothing patched.
    let reasons = poll_until_async("`fought` to be degraded", DEADLINE, || async {
        let t = app.get("/api/v1/targets/fought").await;
        let r = t["degraded_reasons"].as_array()?.clone();
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert!(
        reasons
            .iter()
            .any(|r| r.as_str().unwrap_or_default().contains("`fought-cpu`")),
        "{reasons:?}"
    );
    assert_eq!(api.replicas(NS, "fought"), Some(2));

    // hpa-floor: the floor is raised; a pause gives it back.
    poll_until_async("the HPA's floor to be raised", DEADLINE, || async {
        api.hpa_min(NS, "floored-cpu").filter(|n| *n > 2)
    })
    .await;
    assert_eq!(
        api.replicas(NS, "floored"),
        Some(2),
        "replicas stay the HPA's"
    );
    // The release goes through the outbox: its first attempt meets an API server that
    // applies the patch and never answers, and the worker retries it once it answers again.
    api.stall("patch", "horizontalpodautoscalers");
    assert_eq!(app.post("/api/v1/targets/floored/pause").await, 200);
    poll_until_async("the floor to be given back on pause", DEADLINE, || async {
        (api.hpa_min(NS, "floored-cpu") == Some(2)).then_some(())
    })
    .await;
    poll_until_async("the release's attempt to time out", DEADLINE, || async {
        let list = app
            .get("/api/v1/deliveries?target=floored&limit=1000")
            .await;
        list["deliveries"]
            .as_array()?
            .iter()
            .find(|d| {
                d["body"]["reasons"][0]["code"] == "Released"
                    && d["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("timed out"))
            })
            .map(drop)
    })
    .await;
    api.unstall("patch", "horizontalpodautoscalers");
    let release = released(&app, "floored").await;
    assert!(
        release["attempts"].as_u64() >= Some(2),
        "retried: {release}"
    );
    assert_eq!(
        release["body"]["reasons"][0]["code"], "Released",
        "{release}"
    );
    assert!(
        release["body"]["reasons"][0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("paused: ")),
        "{release}"
    );
    // Resumed, the next decision raises it again.
    assert_eq!(app.post("/api/v1/targets/floored/resume").await, 200);
    poll_until_async(
        "the floor to be raised again on resume",
        DEADLINE,
        || async { api.hpa_min(NS, "floored-cpu").filter(|n| *n > 2) },
    )
    .await;

    // Removed from the configuration by a reload: its floor is given back.
    poll_until_async("`dropped`'s floor to be raised", DEADLINE, || async {
        api.hpa_min(NS, "dropped-cpu").filter(|n| *n > 2)
    })
    .await;
    std::fs::write(&config, &head).unwrap();
    app.reload().await;
    poll_until_async(
        "the floor to be given back on removal",
        DEADLINE,
        || async { (api.hpa_min(NS, "dropped-cpu") == Some(2)).then_some(()) },
    )
    .await;
    let release = released(&app, "dropped").await;
    assert_eq!(
        release["body"]["reasons"][0]["code"], "Released",
        "{release}"
    );

    let calls = api.calls();
    assert_merge_patches(&calls);
    app.stop().await;
}

/// The newest delivered scale action of `target`, once it is a release of its floor to 2
/// (the target's `min_replicas`): every write to the platform goes through the outbox.
/// (Listed unfiltered: the API no longer knows a target removed by a reload.)
async fn released(app: &Serving, target: &str) -> Value {
    poll_until_async(
        "the release delivered through the outbox",
        DEADLINE,
        || async {
            let list = app
                .get("/api/v1/deliveries?state=delivered&limit=1000")
                .await;
            let newest = list["deliveries"]
                .as_array()?
                .iter()
                .filter(|d| d["kind"] == "scale" && d["target"] == target)
                .max_by_key(|d| d["id"].as_u64())?
                .clone();
            (newest["body"]["to"] == 2 && newest["body"]["reasons"][0]["code"] == "Released")
                .then_some(newest)
        },
    )
    .await
}

/// The ConfigMap's configuration is valid, and its targets scale through Kubernetes with
/// in-cluster credentials, in both modes.
#[test]
fn the_configmap_holds_a_valid_kubernetes_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/configmap.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let map: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(map["kind"], "ConfigMap");
    let toml = map["data"]["prescale.toml"]
        .as_str()
        .expect("prescale.toml");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let toml = toml.replace("/etc/prescale-token/token", &token.display().to_string());
    let file = dir.path().join("prescale.toml");
    std::fs::write(&file, toml).unwrap();
    let config = prescale::config::Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let modes: Vec<_> = config
        .targets
        .iter()
        .map(|t| {
            let k = t.kubernetes.as_ref().expect("a Kubernetes platform");
            assert_eq!(k.credentials, Credentials::InCluster);
            k.mode
        })
        .collect();
    assert_eq!(modes, [KubernetesMode::Replicas, KubernetesMode::HpaFloor]);
    let summary = prescale::summary(&config);
    assert!(
        summary.contains("Kubernetes hpa-floor Deployment/checkout in namespace shop"),
        "{summary}"
    );
}

/// A target on the stand-in whose demand needs about 6 replicas (40 rps at 10 each, 0.7
/// utilised), deciding every second, scaling in by at most 4 per 5 s after a 20 s window,
/// with `external_changes = "{then}"`.
fn external_target(name: &str, then: &str) -> String {
    format!(
        r#"
[[target]]
name = "{name}"
request_rate = 'sum(rate(http_requests_total{{job="web"}}[1m]))'
capacity_rps = 10
startup = "2s"
min_replicas = 1
max_replicas = 40
interval = "1s"
step = "1s"
history = "10m"
stale_after = "30s"
external_changes = "{then}"
# Calm scaling off: this test watches the HPA behaviour's own scale-in steps. With ten
# minutes of history there is no typical count yet, and calm would price each change at
# the 30 replicas running, over the short horizon a 1 s step gives.
change_cost = "0s"

[target.behavior.scale_down]
stabilization_window = "20s"
policies = [{{ type = "Pods", value = 4, period = "5s" }}]

[target.platform]
kind = "kubernetes"
namespace = "{NS}"
deployment = "{name}"
kubeconfig = "kubeconfig"
context = "stand-in"
"#
    )
}

/// The decisions of `target` in the log, oldest first.
async fn decisions(app: &Serving, target: &str) -> Vec<Value> {
    let b = app
        .get(&format!("/api/v1/decisions?target={target}&limit=1000"))
        .await;
    let mut list = b["decisions"].as_array().cloned().unwrap_or_default();
    list.reverse();
    list
}

fn codes(d: &Value) -> Vec<String> {
    d["reasons"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|r| r["code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The first decision of `target` that records an external change.
async fn external_decision(app: &Serving, target: &str) -> Value {
    poll_until_async(
        &format!("`{target}`'s decision recording the external change"),
        DEADLINE,
        || async {
            decisions(app, target)
                .await
                .into_iter()
                .find(|d| codes(d).iter().any(|c| c == "External"))
        },
    )
    .await
}

/// The scale deliveries of `target`, oldest first: (created_at, from, to).
async fn scale_deliveries(app: &Serving, target: &str) -> Vec<(f64, u64, u64)> {
    let b = app
        .get(&format!("/api/v1/deliveries?target={target}&limit=1000"))
        .await;
    let mut list: Vec<(f64, u64, u64)> = b["deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|d| d["kind"] == "scale")
        .filter_map(|d| {
            Some((
                d["created_at"].as_f64()?,
                d["body"]["from"].as_u64()?,
                d["body"]["to"].as_u64()?,
            ))
        })
        .collect();
    list.sort_by(|a, b| a.0.total_cmp(&b.0));
    list
}

/// Defect (issue 25): a person scaled a Deployment to 30 during an incident and prescale
/// patched it back to its own count 0.2 s later, with no stabilisation, its decision and
/// delivery saying `from` its own count. Against the Kubernetes API stand-in (no real API
/// server can run here), with a real Prometheus: the change is recorded as `External`
/// with the observed count as `from`; nothing is scaled in before the 20 s window; then the
/// scale-in goes through the rate limit (4 per 5 s), every delivery carrying the count
/// observed as `from`. Under `external_changes = "hold"` the target is paused and nothing
/// is sent until it is resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_scale_is_followed_after_the_window_or_held_until_resumed() {
    let exporter = common::SeriesExporter::start();
    exporter.set(&[("job", "web"), ("instance", "a")], 40.0);
    let prom = Prometheus::start_async(Options {
        backfill: None,
        scrape: Some(exporter.addr()),
        port: None,
        openmetrics: None,
    })
    .await;
    let api = KubeApi::start();
    api.add_deployment(NS, "web", 2);
    api.add_deployment(NS, "held", 2);
    let dir = tempfile::tempdir().unwrap();
    api.write_kubeconfig(dir.path());
    std::fs::write(dir.path().join("token"), API_TOKEN).unwrap();
    let config = dir.path().join("prescale.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\napi_token_file = \"token\"\n\n[prometheus]\nurl = \"{}\"\n\n[delivery]\ninitial_backoff = \"20ms\"\nmax_backoff = \"100ms\"\n{}{}",
            prom.url(),
            external_target("web", "follow"),
            external_target("held", "hold"),
        ),
    )
    .unwrap();
    let app = Serving::start(&config).await;

    // Both settle on their own count (a hold at the count running).
    let mut settled = 0;
    for name in ["web", "held"] {
        settled = poll_until_async(&format!("`{name}` to settle"), DEADLINE, || async {
            let running = api.replicas(NS, name)?;
            let last = decisions(&app, name).await.pop()?;
            (running > 2 && last["from"] == running && last["to"] == running).then_some(running)
        })
        .await;
        assert!(settled < 30, "{settled}");
    }
    let before = scale_deliveries(&app, "held").await.len();

    // Someone scales both to 30.
    api.set_replicas(NS, "web", 30);
    api.set_replicas(NS, "held", 30);

    let ext = external_decision(&app, "web").await;
    assert_eq!(ext["from"], 30, "the observed count: {ext}");
    assert!(
        ext["reasons"]
            .to_string()
            .contains(&format!("from {settled} to 30")),
        "{ext}"
    );
    let at = ext["at"].as_i64().expect("at");
    let window = 20;

    // Scaled in through the rate limit: at least three steps of 4.
    poll_until_async("`web` to be scaled in to 18 or fewer", DEADLINE, || async {
        (api.replicas(NS, "web")? <= 18).then_some(())
    })
    .await;
    let after: Vec<Value> = decisions(&app, "web")
        .await
        .into_iter()
        .filter(|d| d["at"].as_i64().is_some_and(|t| t >= at))
        .collect();
    for d in &after {
        let (t, from, to) = (d["at"].as_i64().unwrap(), &d["from"], &d["to"]);
        if t < at + window {
            assert!(to.as_u64() >= Some(30), "scaled in within the window: {d}");
            assert_eq!(from, 30, "from the count observed: {d}");
        }
    }
    assert_eq!(
        after
            .iter()
            .filter(|d| codes(d).contains(&"External".to_owned()))
            .count(),
        1,
        "one external change: {after:?}"
    );
    let sent: Vec<_> = scale_deliveries(&app, "web")
        .await
        .into_iter()
        .filter(|d| d.0 >= at as f64)
        .collect();
    assert!(sent.len() >= 3, "scaled in in steps: {sent:?}");
    let first = sent[0];
    assert!(
        first.0 >= (at + window) as f64,
        "sent within the window: {sent:?}"
    );
    let mut observed = 30;
    for &(created, from, to) in &sent {
        assert_eq!(
            from, observed,
            "from the count observed at {created}: {sent:?}"
        );
        assert!(from - to <= 4, "beyond the rate limit: {sent:?}");
        observed = to;
    }

    // `hold`: paused since the change; nothing sent while paused, then resumed.
    let held = external_decision(&app, "held").await;
    assert_eq!(held["from"], 30, "{held}");
    let t = app.get("/api/v1/targets/held").await;
    assert_eq!(t["paused"], true, "{t}");
    assert_eq!(api.replicas(NS, "held"), Some(30));
    assert_eq!(scale_deliveries(&app, "held").await.len(), before);
    assert_eq!(app.post("/api/v1/targets/held/resume").await, 200);
    poll_until_async("`held` to scale in once resumed", DEADLINE, || async {
        api.replicas(NS, "held").filter(|n| *n < 30)
    })
    .await;
    let sent = scale_deliveries(&app, "held").await;
    assert_eq!(sent.get(before).map(|d| d.1), Some(30), "{sent:?}");
    app.stop().await;
}
