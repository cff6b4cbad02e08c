//! One API for the fleet (`prescale::api::Fleet`): instances in this process, each with
//! its own `Cluster` joined to a real etcd, its own `Store` over the same targets and its
//! own router served on a free 127.0.0.1 port. A request about a target is answered by the
//! target's owner whichever instance is asked, once (a forwarded request is never forwarded
//! again); the list shows every target's owner; `/api/v1/cluster` lists the members, their
//! targets and health; an owner that does not answer gives 502 (and `unreachable` in the
//! list); a pause that cannot be shared through etcd changes nothing (503).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Etcd, free_port, poll_until_async};
use prescale::api::{ApiAuth, Fleet};
use prescale::cluster::{BUCKETS, Cluster, Standing, bucket};
use prescale::config::{ClusterConfig, Secret, TargetConfig};
use prescale::metrics::Metrics;
use prescale::store::Store;
use serde_json::Value;

/// Long enough that a busy machine renews every lease in time (an instance acts, and
/// shares a pause, only while its lease is known live).
const TTL: Duration = Duration::from_secs(10);
/// Short, for the test that waits for a lease to lapse; etcd's own minimum is 2 s.
const SHORT_TTL: Duration = Duration::from_secs(3);
const DEADLINE: Duration = Duration::from_secs(60);
const TOKEN: &str = "fleet-token";
/// The targets every instance is configured with.
const TARGETS: usize = 16;

fn target_names() -> Vec<String> {
    (0..TARGETS).map(|i| format!("t{i:02}")).collect()
}

/// One instance: its membership, its store, and its API served until dropped.
struct Instance {
    cluster: Arc<Cluster>,
    store: Store,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Joins `name` to `etcd`, advertising `advertise` (its own API unless given), and serves
/// its API. Every target of its store shows `replicas` (so a test can tell who answered),
/// backfilled (so that `/readyz` is 200).
async fn start(etcd: &Etcd, name: &str, replicas: u32, advertise: Option<String>) -> Instance {
    start_with(etcd, name, replicas, advertise, TTL).await
}

/// [`start`] with a lease of `ttl`.
async fn start_with(
    etcd: &Etcd,
    name: &str,
    replicas: u32,
    advertise: Option<String>,
    ttl: Duration,
) -> Instance {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let config = ClusterConfig {
        etcd: etcd
            .endpoints()
            .iter()
            .map(|e| e.parse().expect("endpoint URL"))
            .collect(),
        name: name.to_owned(),
        advertise: advertise
            .unwrap_or_else(|| format!("http://{addr}"))
            .parse()
            .expect("URL"),
        lease_ttl: ttl,
        prefix: "/prescale-fleet-api".to_owned(),
        auth: None,
        tls: None,
    };
    let cluster = Arc::new(
        Cluster::join(&config)
            .await
            .unwrap_or_else(|e| panic!("{name} cannot join: {e}")),
    );
    let targets: Vec<TargetConfig> = target_names()
        .iter()
        .map(|t| TargetConfig::example(t, 10.0, Duration::from_secs(60)))
        .collect();
    let store = Store::new(&targets, Metrics::new());
    for t in target_names() {
        let mut s = store.target(&t).expect("configured");
        s.replicas = replicas;
        s.backfill_tried = true;
    }
    let fleet = Fleet::with_builder(cluster.clone(), reqwest::Client::builder().no_proxy())
        .expect("HTTP client");
    let app = prescale::api::router(
        store.clone(),
        ApiAuth::new(Some(&Secret::new(TOKEN)), false),
        Some(fleet),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Instance {
        cluster,
        store,
        addr,
        server,
    }
}

/// Waits until the instances own every bucket exactly once, fairly, and each one's view of
/// the owners agrees with that (so that they agree on where each target is answered).
async fn wait_settled(instances: &[&Cluster]) {
    let share = usize::from(BUCKETS).div_ceil(instances.len());
    poll_until_async(
        "the buckets to be shared and seen alike",
        DEADLINE,
        || async {
            let mut all = BTreeMap::new();
            for c in instances {
                let owned = c.owned();
                if owned.len() > share {
                    return None;
                }
                for (b, epoch) in owned {
                    all.insert(b, (c.name().to_owned(), epoch));
                }
            }
            let agreed = instances.iter().all(|c| {
                let seen: BTreeMap<u16, (String, u64)> = c
                    .owners()
                    .into_iter()
                    .map(|(b, o)| (b, (o.member, o.epoch)))
                    .collect();
                seen == all && c.members().len() == instances.len()
            });
            (all.len() == usize::from(BUCKETS) && agreed).then_some(())
        },
    )
    .await;
}

/// The owner of `target` as `c` last read it (once settled, all agree).
fn owner(c: &Cluster, target: &str) -> String {
    c.owners()
        .get(&bucket(target))
        .map(|o| o.member.clone())
        .unwrap_or_else(|| panic!("{target} has no owner"))
}

/// A configured target `c` owns.
fn owned_by(c: &Cluster) -> String {
    target_names()
        .into_iter()
        .find(|t| owner(c, t) == c.name())
        .unwrap_or_else(|| panic!("{} owns none of the {TARGETS} targets", c.name()))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(40))
        .build()
        .expect("client")
}

/// An answer: status, the `Prescale-Served-By` header, and the JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    served_by: Option<String>,
    body: Value,
}

async fn call(method: &str, at: &Instance, path: &str, headers: &[(&str, &str)]) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client().request(method, format!("http://{}{path}", at.addr));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = res.status().as_u16();
    let served_by = res
        .headers()
        .get("prescale-served-by")
        .map(|v| v.to_str().expect("ASCII").to_owned());
    let body = res.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        served_by,
        body,
    }
}

async fn get(at: &Instance, path: &str) -> Answer {
    call("GET", at, path, &[]).await
}

const AUTH: (&str, &str) = ("authorization", "Bearer fleet-token");

async fn start_etcd() -> Etcd {
    tokio::task::spawn_blocking(|| Etcd::start(1))
        .await
        .expect("etcd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_instance_answers_with_the_owners_view_and_forwards_once() {
    let etcd = start_etcd().await;
    let a = start(&etcd, "a", 11, None).await;
    let b = start(&etcd, "b", 22, None).await;
    wait_settled(&[&a.cluster, &b.cluster]).await;
    let (ta, tb) = (owned_by(&a.cluster), owned_by(&b.cluster));

    // b forwards a question about a's target to a, and relays a's answer.
    let direct = get(&a, &format!("/api/v1/targets/{ta}")).await;
    assert_eq!((direct.status, direct.served_by.as_deref()), (200, None));
    assert_eq!(direct.body["replicas"], 11, "{}", direct.body);
    assert_eq!(direct.body["owner"], "a");
    let via_b = get(&b, &format!("/api/v1/targets/{ta}")).await;
    assert_eq!(via_b.status, 200, "{}", via_b.body);
    assert_eq!(via_b.served_by.as_deref(), Some("a"));
    assert_eq!(
        via_b.body["replicas"], 11,
        "b answered for a: {}",
        via_b.body
    );
    // Its own target it answers itself.
    let own = get(&b, &format!("/api/v1/targets/{tb}")).await;
    assert_eq!((own.status, own.served_by.as_deref()), (200, None));
    assert_eq!(
        (own.body["replicas"].clone(), own.body["owner"].clone()),
        (22.into(), "b".into())
    );
    // Every route about one target, errors included: the owner's status and body.
    for path in [
        format!("/api/v1/targets/{ta}/forecast?horizon=1h"),
        format!("/api/v1/targets/{ta}/history?signal=rate&since=1h"),
        format!("/api/v1/targets/{ta}/bottleneck"),
        format!("/api/v1/decisions?target={ta}"),
        format!("/api/v1/targets/{ta}/history?signal=nope"),
    ] {
        let (mine, theirs) = (get(&a, &path).await, get(&b, &path).await);
        assert_eq!(theirs.served_by.as_deref(), Some("a"), "{path}");
        assert_eq!(
            (theirs.status, &theirs.body),
            (mine.status, &mine.body),
            "{path}"
        );
    }

    // A forwarded request is answered where it arrives: never forwarded again.
    let forwarded = call(
        "GET",
        &b,
        &format!("/api/v1/targets/{ta}"),
        &[("prescale-forwarded-by", "a")],
    )
    .await;
    assert_eq!(forwarded.served_by, None);
    assert_eq!(forwarded.body["replicas"], 22, "{}", forwarded.body);

    // Mutations: checked for the token here, done by the owner.
    let refit = format!("/api/v1/targets/{ta}/refit");
    assert_eq!(call("POST", &b, &refit, &[]).await.status, 401);
    let done = call("POST", &b, &refit, &[AUTH]).await;
    assert_eq!(
        (done.status, done.served_by.as_deref()),
        (200, Some("a")),
        "{}",
        done.body
    );
    assert!(a.store.target(&ta).expect("ta").refit_requested);
    assert!(!b.store.target(&ta).expect("ta").refit_requested);

    // A pause is shared through etcd by the owner, then held there.
    let paused = call("POST", &b, &format!("/api/v1/targets/{ta}/pause"), &[AUTH]).await;
    assert_eq!(
        (paused.status, paused.served_by.as_deref()),
        (200, Some("a")),
        "{}",
        paused.body
    );
    assert!(a.store.target(&ta).expect("ta").paused);
    assert!(!b.store.target(&ta).expect("ta").paused);
    let shared = a
        .cluster
        .shared_state(&ta)
        .await
        .expect("read the shared state");
    assert!(shared.paused, "the pause is not shared");
    let resumed = call("POST", &b, &format!("/api/v1/targets/{ta}/resume"), &[AUTH]).await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert!(!a.cluster.shared_state(&ta).await.expect("read").paused);
    assert!(!a.store.target(&ta).expect("ta").paused);

    // Asked to pause a target it does not own (a forwarded request, answered here): 503,
    // and nothing changes.
    let refused = call(
        "POST",
        &b,
        &format!("/api/v1/targets/{ta}/pause"),
        &[AUTH, ("prescale-forwarded-by", "a")],
    )
    .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "coordination");
    let message = refused.body["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("coordination") && message.contains(&ta),
        "{message}"
    );
    assert!(!b.store.target(&ta).expect("ta").paused);
    assert!(!a.cluster.shared_state(&ta).await.expect("read").paused);

    // The list: every target with its owner, each as its owner shows it.
    for at in [&a, &b] {
        let list = get(at, "/api/v1/targets?limit=1000").await;
        assert_eq!(list.status, 200, "{}", list.body);
        let targets = list.body["targets"].as_array().expect("targets");
        assert_eq!(targets.len(), TARGETS);
        for t in targets {
            let name = t["name"].as_str().expect("name");
            let (expected, replicas) = if owner(&a.cluster, name) == "a" {
                ("a", 11)
            } else {
                ("b", 22)
            };
            assert_eq!(
                (t["owner"].as_str(), t["replicas"].as_u64()),
                (Some(expected), Some(replicas)),
                "{t}"
            );
            assert_ne!(t["status"], "unreachable", "{t}");
        }
        // `scope=local`: this instance's own store only.
        let local = get(at, "/api/v1/targets?limit=1000&scope=local").await;
        let mine = if at.addr == a.addr { 11 } else { 22 };
        assert!(
            local.body["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .all(|t| t["replicas"] == mine)
        );
    }

    // The cluster: both members, ready, with their targets and buckets; each target's
    // owner and epoch.
    let view = get(&b, "/api/v1/cluster").await;
    assert_eq!(view.status, 200, "{}", view.body);
    assert_eq!(
        (view.body["name"].as_str(), view.body["live"].as_bool()),
        (Some("b"), Some(true))
    );
    let members = view.body["members"].as_array().expect("members");
    assert_eq!(members.len(), 2, "{}", view.body);
    for (m, c, addr) in [
        (&members[0], &a.cluster, a.addr),
        (&members[1], &b.cluster, b.addr),
    ] {
        assert_eq!(m["name"], c.name());
        assert_eq!(m["advertise"], format!("http://{addr}/"));
        assert_eq!(m["health"]["status"], "ready", "{m}");
        let buckets = c.owners().values().filter(|o| o.member == c.name()).count();
        assert_eq!(m["buckets"], buckets, "{m}");
        let owned = target_names()
            .iter()
            .filter(|t| owner(c, t) == c.name())
            .count();
        assert_eq!(m["targets"], owned, "{m}");
    }
    let owners = b.cluster.owners();
    for t in view.body["targets"].as_array().expect("targets") {
        let name = t["target"].as_str().expect("target");
        let o = &owners[&bucket(name)];
        assert_eq!(t["bucket"], bucket(name));
        assert_eq!(
            (t["owner"].as_str(), t["epoch"].as_u64()),
            (Some(o.member.as_str()), Some(o.epoch)),
            "{t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_does_not_answer_is_a_502_and_unreachable_in_the_list() {
    let etcd = start_etcd().await;
    let a = start(&etcd, "a", 11, None).await;
    // c is a member whose API nobody serves: its port is closed.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let c = start(&etcd, "c", 33, Some(closed.clone())).await;
    c.server.abort();
    wait_settled(&[&a.cluster, &c.cluster]).await;
    let tc = owned_by(&c.cluster);

    for (method, path) in [
        ("GET", format!("/api/v1/targets/{tc}")),
        ("POST", format!("/api/v1/targets/{tc}/pause")),
    ] {
        let answer = call(method, &a, &path, &[AUTH]).await;
        assert_eq!(answer.status, 502, "{method} {path}: {}", answer.body);
        assert_eq!(answer.body["error"]["code"], "owner_unreachable");
        let message = answer.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("`c`") && message.contains(&closed),
            "{message}"
        );
    }
    assert!(!a.store.target(&tc).expect("tc").paused);

    // The list still answers: c's targets with their configuration, marked unreachable.
    let list = get(&a, "/api/v1/targets?limit=1000").await;
    assert_eq!(list.status, 200, "{}", list.body);
    for t in list.body["targets"].as_array().expect("targets") {
        let name = t["name"].as_str().expect("name");
        if owner(&a.cluster, name) == "c" {
            assert_eq!(
                (t["status"].as_str(), t["owner"].as_str()),
                (Some("unreachable"), Some("c")),
                "{t}"
            );
            assert!(
                t["owner_error"]
                    .as_str()
                    .is_some_and(|e| e.contains(&closed)),
                "{t}"
            );
            assert_eq!(t["max_replicas"], 1000, "{t}");
        } else {
            assert_eq!(t["owner"], "a", "{t}");
            assert_ne!(t["status"], "unreachable", "{t}");
        }
    }

    let view = get(&a, "/api/v1/cluster").await;
    assert_eq!(view.status, 200, "{}", view.body);
    let health: BTreeMap<&str, &Value> = view.body["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| (m["name"].as_str().expect("name"), &m["health"]))
        .collect();
    assert_eq!(health["a"]["status"], "ready", "{}", view.body);
    assert_eq!(health["c"]["status"], "unreachable", "{}", view.body);
    assert!(health["c"]["error"].as_str().is_some(), "{}", view.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_needs_a_live_lease_and_reads_go_on_without_one() {
    let mut etcd = start_etcd().await;
    let a = start_with(&etcd, "a", 11, None, SHORT_TTL).await;
    wait_settled(&[&a.cluster]).await;
    let t = owned_by(&a.cluster);
    let pause = format!("/api/v1/targets/{t}/pause");
    assert_eq!(call("POST", &a, &pause, &[AUTH]).await.status, 200);
    let resume = format!("/api/v1/targets/{t}/resume");
    assert_eq!(call("POST", &a, &resume, &[AUTH]).await.status, 200);

    // etcd goes: the lease can no longer be renewed, and a stops acting.
    etcd.kill(0);
    poll_until_async("a's lease to lapse", DEADLINE, || async {
        matches!(a.cluster.standing(&t), Standing::Lapsed(_)).then_some(())
    })
    .await;
    let refused = call("POST", &a, &pause, &[AUTH]).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "coordination");
    let message = refused.body["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("coordination") && message.contains(&t),
        "{message}"
    );
    assert!(
        !a.store.target(&t).expect("t").paused,
        "paused without sharing it"
    );

    // Reads are still served, from what the instance knows.
    let detail = get(&a, &format!("/api/v1/targets/{t}")).await;
    assert_eq!(
        (detail.status, detail.body["replicas"].as_u64()),
        (200, Some(11))
    );
    let view = get(&a, "/api/v1/cluster").await;
    assert_eq!(
        (view.status, view.body["live"].as_bool()),
        (200, Some(false)),
        "{}",
        view.body
    );
}
