//! A fleet: three `prescale serve` processes sharing 30 targets through a real 3-member
//! etcd, polling a real Prometheus, their webhooks to one real receiver that records every
//! request. Each instance has a `[cluster]` section (its own name, its own API as
//! `advertise`, `lease_ttl` of 3 s) and a fresh state directory.
//!
//! Demand is flat: each target's counter grows at a constant rate (backfilled by `promtool`
//! for the history, then scraped from a live exporter). Each target's two balancer
//! instances trade places in latency every step, so that `least_response_time` weights
//! change every step and actions flow continuously: who acts, and at which epoch, is always
//! visible at the receiver. A request is attributed to the instance whose outbox holds its
//! `Idempotency-Key` (`GET /api/v1/deliveries`, or the outbox file of a killed one).
//!
//! Every test checks at its end that the receiver never saw two instances act on one target
//! at one epoch, nor a lower epoch after a higher one for a target. The scenarios: a steady
//! fleet; `kill -9` of an owner; an owner paused (SIGSTOP) past its lease; etcd members lost
//! (one, then the quorum) and back; a fourth instance joining.
//!
//! One fleet runs at a time (a lock), so that the timings measured are the fleet's own and
//! not those of another fleet sharing the two cores. Nothing sleeps: every step waits on a
//! condition with a deadline, and a timeout prints the instances' logs.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::etcd_client::pb::event::EventType;
use common::http::Server;
use common::{
    AppProcess, Etcd, EtcdClient, Options, Prometheus, Receiver, Recorded, Reply, TempConfig,
};
use common::{TestConfig, TestTarget, free_addr, now_secs, poll_until};
use prescale::cluster::{BUCKETS, bucket};
use serde_json::Value;

/// Each instance's lease: short, so that failover is quick; etcd's own minimum is 2 s.
const TTL: Duration = Duration::from_secs(3);
const TARGETS: usize = 30;
/// Every target's step (s): its series' resolution, and how often its weights change.
const STEP: i64 = 2;
const PREFIX: &str = "/fleet";
const SECRET: &str = "fleet-secret";
/// Long: three debug builds of prescale beside etcd and Prometheus on a busy machine; a
/// wait ends as soon as its condition holds. Timings the contract promises are measured
/// and asserted separately.
const DEADLINE: Duration = Duration::from_secs(120);
/// What `kill -9` may take to move a target: the lease, then taking, backfilling and one
/// cycle.
const FAILOVER: Duration = Duration::from_secs(TTL.as_secs() + 5);
/// Added to a bound measured by polling every 50 ms on a busy machine.
const POLL_ALLOWANCE: Duration = Duration::from_secs(1);

/// One fleet at a time.
static ONE_FLEET: Mutex<()> = Mutex::new(());

/// `svc-00` … `svc-29`.
fn target_name(i: usize) -> String {
    format!("svc-{i:02}")
}

/// Requests/s of target `i`: flat, 4 to 8.
fn demand_rps(i: usize) -> f64 {
    4.0 + (i % 5) as f64
}

/// Target `i`'s counter, with the labels both the backfill and the exporter give it.
fn counter(i: usize) -> String {
    format!(
        r#"fleet_requests_total{{job="fleet",instance="demand",target="{}"}}"#,
        target_name(i)
    )
}

/// The counters at Unix second `t`: each has grown at its rate since `origin`.
fn counter_value(i: usize, origin: i64, t: f64) -> f64 {
    demand_rps(i) * (t - origin as f64)
}

/// The last 20 minutes of every counter, a sample every step, as an OpenMetrics file for
/// `promtool`.
fn backfill(origin: i64) -> String {
    use std::fmt::Write as _;
    let end = now_secs() / STEP * STEP - STEP;
    let mut out = String::from("# TYPE fleet_requests counter\n");
    for i in 0..TARGETS {
        for t in (end - 1200..=end).step_by(STEP as usize) {
            let v = counter_value(i, origin, t as f64);
            let _ = writeln!(out, "{} {v} {t}", counter(i));
        }
    }
    out.push_str("# EOF\n");
    out
}

/// A live `/metrics` carrying the backfilled counters on, for Prometheus to scrape.
struct Demand {
    server: Server,
}

impl Demand {
    fn start(origin: i64) -> Self {
        let metrics = move || async move {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let mut text = String::from("# TYPE fleet_requests_total counter\n");
            for i in 0..TARGETS {
                text.push_str(&format!(
                    "{} {}\n",
                    counter(i),
                    counter_value(i, origin, now)
                ));
            }
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4",
                )],
                text,
            )
        };
        let router = axum::Router::new().route("/metrics", axum::routing::get(metrics));
        Self {
            server: Server::start(router),
        }
    }
}

/// Two balancer instances whose latencies trade places every step (`/ 2`: [`STEP`]): the
/// weights go from 100/100 to 100/25 and back, so a rebalance is due at every step.
const LATENCY: &str = r#"label_replace(vector(0.1), "instance", "10.0.0.1:8080", "", "") or label_replace(0.1 + 0.3 * (floor(vector(time()) / 2) % 2), "instance", "10.0.0.2:8080", "", "")"#;

/// Target `i`: flat demand of 4–8 rps at 1 rps per replica, starting from 3 replicas (so
/// that each scales out once, to its steady count, with no rate limit), deciding every
/// second, weights from [`LATENCY`]; both webhooks to `receiver`.
fn target(i: usize, receiver: &Receiver) -> TestTarget {
    let query = format!(
        r#"sum(rate(fleet_requests_total{{target="{}"}}[30s]))"#,
        target_name(i)
    );
    let no_rate_limit: toml::Table = toml::from_str("scale_up = { policies = [] }").expect("TOML");
    let no_failover: toml::Table = toml::from_str("failover = false").expect("TOML");
    TestTarget::new(&target_name(i), &query)
        .set("capacity_rps", 1.0)
        .set("startup", "10s")
        .set("min_replicas", 1)
        .set("max_replicas", 50)
        .set("initial_replicas", 3)
        .set("interval", "1s")
        .set("step", format!("{STEP}s"))
        .set("history", "15m")
        .set("instance_latency", LATENCY)
        .set("behavior", no_rate_limit)
        .set("rebalance", no_failover)
        .platform(&receiver.url("/scale"), "secret")
        .balancer(&receiver.url("/weights"), "secret")
}

/// What a webhook asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Scale { from: u64, to: u64 },
    Rebalance,
}

/// One request the receiver saw: an action on a target at an epoch.
#[derive(Debug, Clone)]
struct Act {
    target: String,
    kind: Kind,
    epoch: u64,
    key: String,
    at: Instant,
}

impl Act {
    /// Reads a recorded webhook; panics naming what is missing (an epoch in the body and
    /// the same in `Prescale-Epoch`).
    fn of(r: &Recorded) -> Self {
        let body = r.json();
        let epoch = body["epoch"]
            .as_u64()
            .unwrap_or_else(|| panic!("{} {}: no `epoch` in the body: {body}", r.method, r.path));
        let header = r.header("prescale-epoch");
        assert_eq!(
            header.and_then(|h| h.parse::<u64>().ok()),
            Some(epoch),
            "{} {}: `Prescale-Epoch` {header:?} and the body's epoch {epoch} differ",
            r.method,
            r.path
        );
        let kind = match body["kind"].as_str() {
            Some("scale") => Kind::Scale {
                from: body["from"].as_u64().expect("from"),
                to: body["to"].as_u64().expect("to"),
            },
            Some("rebalance") => Kind::Rebalance,
            other => panic!("{} {}: unexpected kind {other:?}: {body}", r.method, r.path),
        };
        Self {
            target: body["target"].as_str().expect("target").to_owned(),
            kind,
            epoch,
            key: r
                .header("idempotency-key")
                .expect("Idempotency-Key")
                .to_owned(),
            at: r.at,
        }
    }
}

/// Where an instance's process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Running,
    /// SIGSTOP: it answers nothing until SIGCONT.
    Paused,
    /// `kill -9`: its outbox is read from its file.
    Killed,
}

/// One `prescale serve` of the fleet.
struct Instance {
    name: String,
    app: AppProcess,
    cfg: TempConfig,
    run: Run,
}

/// etcd, Prometheus, the receiver and the instances.
struct Fleet {
    // Dropped in this order: the instances first, the lock last.
    instances: Vec<Instance>,
    receiver: Receiver,
    prom: Prometheus,
    _demand: Demand,
    etcd: Etcd,
    client: EtcdClient,
    rt: tokio::runtime::Runtime,
    targets: Vec<String>,
    _one: MutexGuard<'static, ()>,
}

impl Fleet {
    /// Starts etcd, Prometheus, the receiver and three instances `p0`…`p2`, and waits until
    /// each is ready.
    fn start() -> Self {
        let one = ONE_FLEET.lock().unwrap_or_else(|p| p.into_inner());
        let rt = tokio::runtime::Runtime::new().expect("a runtime");
        let etcd = Etcd::start(3);
        let origin = now_secs() - 86_400;
        let demand = Demand::start(origin);
        let prom = Prometheus::start(Options {
            openmetrics: Some(backfill(origin)),
            scrape: Some(demand.server.addr),
            ..Options::default()
        });
        // Its channels' tasks run on `rt`.
        let client = rt.block_on(async { EtcdClient::new(&etcd.endpoints()) });
        let mut fleet = Self {
            instances: Vec::new(),
            receiver: Receiver::start(&[]),
            prom,
            _demand: demand,
            etcd,
            client,
            rt,
            targets: (0..TARGETS).map(target_name).collect(),
            _one: one,
        };
        for _ in 0..3 {
            fleet.spawn();
        }
        for i in 0..3 {
            fleet.wait_ready(i);
        }
        fleet
    }

    /// Waits until instance `i` answers `/readyz` with 200; panics with its last answer and
    /// the logs when it exits or times out.
    fn wait_ready(&mut self, i: usize) {
        let mut last = String::new();
        let what = format!("{} to be ready (/readyz)", self.instances[i].name);
        let found = catch_unwind(AssertUnwindSafe(|| {
            poll_until(&what, common::READY_DEADLINE, || {
                let app = &mut self.instances[i].app;
                if let Some(status) = app.exited() {
                    panic!("exited early ({status})");
                }
                match app.get("/readyz") {
                    Ok((200, _)) => Some(()),
                    Ok((status, body)) => {
                        last = format!("{status} {body}");
                        None
                    }
                    Err(e) => {
                        last = e.to_string();
                        None
                    }
                }
            })
        }));
        if let Err(e) = found {
            self.print_logs(&what);
            eprintln!("--- its last /readyz answer: {last}");
            resume_unwind(e)
        }
    }

    /// Starts the next instance, `p<n>`, without waiting; its index.
    fn spawn(&mut self) -> usize {
        let n = self.instances.len();
        let name = format!("p{n}");
        let listen = free_addr();
        let cfg = self.config(&name, listen).write();
        cfg.write_file("secret", SECRET);
        let app = AppProcess::serve(&cfg, listen);
        self.instances.push(Instance {
            name,
            app,
            cfg,
            run: Run::Running,
        });
        n
    }

    fn config(&self, name: &str, listen: SocketAddr) -> TestConfig {
        let config = TestConfig::new()
            .prometheus(&self.prom.url())
            .listen(listen)
            .set("forecast", "horizon", "1m")
            .set("delivery", "timeout", "2s")
            .set("delivery", "initial_backoff", "100ms")
            .set("delivery", "max_backoff", "500ms")
            .set("delivery", "max_attempts", 1000)
            .set("cluster", "etcd", self.etcd.endpoints())
            .set("cluster", "name", name)
            .set("cluster", "advertise", format!("http://{listen}"))
            .set("cluster", "lease_ttl", format!("{}s", TTL.as_secs()))
            .set("cluster", "prefix", PREFIX);
        (0..TARGETS).fold(config, |c, i| c.target(target(i, &self.receiver)))
    }

    fn index(&self, name: &str) -> usize {
        (self.instances.iter().position(|i| i.name == name))
            .unwrap_or_else(|| panic!("no instance {name}"))
    }

    fn is_running(&self, name: &str) -> bool {
        self.instances
            .iter()
            .any(|i| i.name == name && i.run == Run::Running)
    }

    /// `kill -9` of instance `i`.
    fn kill(&mut self, i: usize) {
        let status = self.instances[i].app.kill();
        assert!(!status.success(), "killed: {status}");
        self.instances[i].run = Run::Killed;
    }

    /// SIGSTOP (`pause`) or SIGCONT of instance `i`.
    fn pause(&mut self, i: usize, pause: bool) {
        let (signal, run) = if pause {
            ("STOP", Run::Paused)
        } else {
            ("CONT", Run::Running)
        };
        self.instances[i].app.signal(signal);
        self.instances[i].run = run;
    }

    /// [`poll_until`] that prints the instances' logs on a timeout.
    #[track_caller]
    fn until<T>(&self, what: &str, deadline: Duration, probe: impl FnMut() -> Option<T>) -> T {
        let found = catch_unwind(AssertUnwindSafe(|| poll_until(what, deadline, probe)));
        found.unwrap_or_else(|e| {
            self.print_logs(what);
            resume_unwind(e)
        })
    }

    /// The last lines of each instance's log.
    fn print_logs(&self, why: &str) {
        for i in &self.instances {
            let log = i.app.stderr();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!(
                "--- {why}: the log of {} ({:?}), last 60 lines:\n{tail}",
                i.name, i.run
            );
        }
    }

    /// Every webhook the receiver saw, in order of arrival.
    fn acts(&self) -> Vec<Act> {
        self.receiver.requests().iter().map(Act::of).collect()
    }

    /// Each bucket's owner and epoch, read from etcd (`<prefix>/owners/<bucket>`: the
    /// owner's name, its `mod_revision`).
    fn owners(&self) -> Result<BTreeMap<u16, (String, u64)>, String> {
        let prefix = format!("{PREFIX}/owners/");
        let answer = self
            .rt
            .block_on(async {
                let get = self.client.get_prefix(&prefix);
                tokio::time::timeout(Duration::from_secs(5), get).await
            })
            .map_err(|_| "etcd: no answer within 5 s".to_owned())?
            .map_err(|e| format!("etcd: {e}"))?;
        let mut owners = BTreeMap::new();
        for kv in answer.kvs {
            let key = String::from_utf8_lossy(&kv.key);
            let b: u16 = (key.strip_prefix(&prefix).and_then(|b| b.parse().ok()))
                .ok_or_else(|| format!("unexpected owner key {key}"))?;
            let owner = String::from_utf8_lossy(&kv.value).into_owned();
            owners.insert(b, (owner, kv.mod_revision as u64));
        }
        Ok(owners)
    }

    /// [`Fleet::owners`], read again until etcd answers (a request may go to a member that
    /// is down).
    fn read_owners(&self) -> BTreeMap<u16, (String, u64)> {
        let mut last = String::new();
        let what = "etcd to answer for the owners";
        let found = catch_unwind(AssertUnwindSafe(|| {
            poll_until(what, DEADLINE, || self.owners().map_err(|e| last = e).ok())
        }));
        found.unwrap_or_else(|e| {
            eprintln!("--- the last error: {last}");
            resume_unwind(e)
        })
    }

    /// Each target's owner and epoch; `None` while a target's bucket has no owner.
    fn target_owners(&self) -> Option<BTreeMap<String, (String, u64)>> {
        let owners = self.owners().ok()?;
        (self.targets.iter())
            .map(|t| Some((t.clone(), owners.get(&bucket(t))?.clone())))
            .collect()
    }

    /// Whether the buckets are shared out for good: each owned by a running instance, none
    /// holding more than its fair share (so none will hand any over).
    fn is_shared_out(&self) -> bool {
        let Ok(buckets) = self.owners() else {
            return false;
        };
        let running: Vec<&Instance> = (self.instances.iter())
            .filter(|i| i.run == Run::Running)
            .collect();
        let share = usize::from(BUCKETS).div_ceil(running.len().max(1));
        let held = |name: &str| buckets.values().filter(|(o, _)| o == name).count();
        buckets.len() == usize::from(BUCKETS)
            && buckets.values().all(|(o, _)| self.is_running(o))
            && running.iter().all(|i| held(&i.name) <= share)
    }

    /// Waits until the buckets are shared out and every target's owner has acted on it at
    /// its epoch, and a count was delivered for it: each target's owner and epoch.
    fn settled(&self) -> BTreeMap<String, (String, u64)> {
        let what = "buckets shared out, every target acted on by its owner, a count delivered";
        self.until(what, DEADLINE, || {
            if !self.is_shared_out() {
                return None;
            }
            let owners = self.target_owners()?;
            let acts = self.acts();
            for (t, (owner, epoch)) in &owners {
                let mine: Vec<&Act> = acts.iter().filter(|a| &a.target == t).collect();
                let acted = mine.iter().any(|a| a.epoch == *epoch);
                let scaled = mine.iter().any(|a| matches!(a.kind, Kind::Scale { .. }));
                if !self.is_running(owner) || !acted || !scaled {
                    return None;
                }
            }
            Some(owners)
        })
    }

    /// Which instance wrote each idempotency key, and the epoch in what it wrote: from
    /// each running instance's `GET /api/v1/deliveries`, and a killed one's outbox file.
    fn written(&self) -> HashMap<String, (String, Option<u64>)> {
        let mut by_key = HashMap::new();
        for i in &self.instances {
            let deliveries = match i.run {
                Run::Running => listed(&i.app),
                Run::Killed => self.outbox_file(i),
                Run::Paused => panic!("{} is paused: its deliveries cannot be read", i.name),
            };
            for (key, epoch) in deliveries {
                if let Some((other, _)) = by_key.insert(key.clone(), (i.name.clone(), epoch)) {
                    panic!("key {key} written by both {other} and {}", i.name);
                }
            }
        }
        by_key
    }

    /// A killed instance's deliveries (key, epoch), read from its outbox file.
    fn outbox_file(&self, i: &Instance) -> Vec<(String, Option<u64>)> {
        let dir = i.cfg.dir().join("state");
        let outbox = prescale::act::outbox::Outbox::open(&dir)
            .unwrap_or_else(|e| panic!("open {}'s outbox: {e}", i.name));
        let mut all = Vec::new();
        loop {
            let (page, more) = self
                .rt
                .block_on(outbox.list_page(None, None, all.len(), 10_000))
                .unwrap_or_else(|e| panic!("list {}'s outbox: {e}", i.name));
            all.extend(page.into_iter().map(|d| {
                let body: Value = serde_json::from_str(&d.body).unwrap_or(Value::Null);
                (d.idempotency_key, body["epoch"].as_u64())
            }));
            if !more {
                return all;
            }
        }
    }

    /// Checks every request the receiver saw: written by exactly one instance, with the
    /// epoch written; one instance per (target, epoch); per target, epochs never go down.
    /// Each act with the instance that wrote it.
    fn assert_fenced(&self) -> Vec<(Act, String)> {
        let acts = self.acts();
        let written = self.written();
        let mut by_epoch: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
        let mut highest: BTreeMap<String, u64> = BTreeMap::new();
        let mut attributed = Vec::new();
        for a in acts {
            let Some((who, epoch)) = written.get(&a.key) else {
                panic!("{a:?} is in no instance's outbox");
            };
            assert_eq!(
                *epoch,
                Some(a.epoch),
                "{a:?} was written by {who} as {epoch:?}"
            );
            let seen = by_epoch.entry((a.target.clone(), a.epoch)).or_default();
            seen.insert(who.clone());
            assert!(
                seen.len() == 1,
                "two instances acted on {} at epoch {}: {seen:?}",
                a.target,
                a.epoch
            );
            let top = highest.entry(a.target.clone()).or_default();
            assert!(
                a.epoch >= *top,
                "{who} acted on {} at epoch {} after epoch {top}: {a:?}",
                a.target,
                a.epoch
            );
            *top = a.epoch;
            attributed.push((a, who.clone()));
        }
        println!(
            "{} requests from {} instance(s) at {} (target, epoch) pairs: fenced",
            attributed.len(),
            self.instances.len(),
            by_epoch.len()
        );
        attributed
    }

    /// The current etcd revision.
    fn revision(&self) -> i64 {
        let answer = self
            .rt
            .block_on(self.client.get(PREFIX))
            .expect("read the revision");
        answer.header.expect("a header").revision
    }

    /// How many times an owner key was written since `start` (a revision); panics when one
    /// was deleted. Every bucket must be owned now.
    fn owner_puts_since(&self, start: i64) -> usize {
        let owners = self.read_owners();
        assert_eq!(owners.len(), usize::from(BUCKETS), "every bucket owned");
        let end = owners
            .values()
            .map(|(_, rev)| *rev as i64)
            .max()
            .expect("owners");
        if end <= start {
            return 0;
        }
        let prefix = format!("{PREFIX}/owners/");
        self.rt.block_on(async {
            let watch = self.client.watch_prefix(&prefix, start + 1);
            let mut stream = watch.await.expect("watch");
            let mut puts = 0;
            loop {
                let next = tokio::time::timeout(Duration::from_secs(10), stream.message());
                let message = (next.await)
                    .expect("owner key events within 10 s")
                    .expect("a watch message")
                    .expect("the watch is open");
                for ev in message.events {
                    let kv = ev.kv.expect("an event's key");
                    assert_eq!(
                        ev.r#type,
                        i32::from(EventType::Put),
                        "owner key {} deleted at revision {}",
                        String::from_utf8_lossy(&kv.key),
                        kv.mod_revision
                    );
                    puts += 1;
                    if kv.mod_revision >= end {
                        return puts;
                    }
                }
            }
        })
    }
}

/// An instance's deliveries (key, epoch) from `GET /api/v1/deliveries`, every page.
fn listed(app: &AppProcess) -> Vec<(String, Option<u64>)> {
    let mut all = Vec::new();
    let mut offset = 0;
    loop {
        let path = format!("/api/v1/deliveries?limit=10000&offset={offset}");
        let page = poll_until(&format!("GET {path} at {}", app.addr), DEADLINE, || {
            app.get_json(&path)
        });
        for d in page["deliveries"].as_array().expect("deliveries") {
            let key = d["idempotency_key"].as_str().expect("a key").to_owned();
            all.push((key, d["body"]["epoch"].as_u64()));
        }
        match page["next_offset"].as_u64() {
            Some(next) => offset = next,
            None => return all,
        }
    }
}

/// The instance owning the most targets, and its targets with their epochs.
fn busiest(owners: &BTreeMap<String, (String, u64)>) -> (String, BTreeMap<String, u64>) {
    let mut by_owner: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    for (t, (owner, epoch)) in owners {
        by_owner.entry(owner).or_default().insert(t.clone(), *epoch);
    }
    let (name, targets) = (by_owner.into_iter())
        .max_by_key(|(_, t)| t.len())
        .expect("an owner");
    (name.to_owned(), targets)
}

/// How many acts on each of `targets` arrived after `since` with an epoch above the one
/// given (a new owner's).
fn acts_above(acts: &[Act], targets: &BTreeMap<String, u64>, since: Instant) -> Vec<usize> {
    (targets.iter())
        .map(|(t, epoch)| {
            let new = |a: &&Act| &a.target == t && a.epoch > *epoch && a.at >= since;
            acts.iter().filter(new).count()
        })
        .collect()
}

/// Every target is owned by one running instance, which acts on it at its epoch, and only
/// it; the buckets are shared fairly; actions flow at every step.
#[test]
fn every_target_has_one_owner_and_the_receiver_sees_one_instance_per_epoch() {
    let fleet = Fleet::start();
    // Settled: the 256 buckets owned, each instance at most its fair share.
    let owners = fleet.settled();
    let acting: BTreeSet<&String> = owners.values().map(|(o, _)| o).collect();
    println!("the targets are owned by {acting:?}");
    // Actions keep flowing: five more on every target, all by its owner at its epoch.
    let since = Instant::now();
    fleet.until("five more actions on every target", DEADLINE, || {
        let acts = fleet.acts();
        let fresh = |t: &String| {
            acts.iter()
                .filter(|a| &a.target == t && a.at >= since)
                .count()
        };
        fleet.targets.iter().all(|t| fresh(t) >= 5).then_some(())
    });
    let attributed = fleet.assert_fenced();
    for (a, who) in attributed.iter().filter(|(a, _)| a.at >= since) {
        let (owner, epoch) = &owners[&a.target];
        assert_eq!(
            (who, a.epoch),
            (owner, *epoch),
            "{} acted on by {who} at {}, owned by {owner} at {epoch}",
            a.target,
            a.epoch
        );
    }
}

/// `kill -9` of the owner of the most targets: each of its targets is acted on by another
/// instance at a higher epoch within `lease_ttl + 5 s`, resuming from the count delivered:
/// no scale action after the kill lowers a count (demand is flat).
#[test]
fn kill_9_of_an_owner_moves_its_targets_within_the_lease_without_scaling_in() {
    let mut fleet = Fleet::start();
    let owners = fleet.settled();
    let (victim, lost) = busiest(&owners);
    let before = fleet.acts();
    let counts: BTreeMap<String, u64> = (lost.keys())
        .map(|t| {
            let last = before.iter().rev().find_map(|a| match a.kind {
                Kind::Scale { to, .. } if &a.target == t => Some(to),
                _ => None,
            });
            (t.clone(), last.expect("a count delivered"))
        })
        .collect();
    let killed = Instant::now();
    fleet.kill(fleet.index(&victim));
    let taken = fleet.until("the killed owner's targets acted on anew", DEADLINE, || {
        let acts = fleet.acts();
        (lost.iter())
            .map(|(t, e)| {
                let first = acts.iter().find(|a| &a.target == t && a.epoch > *e)?;
                Some(first.at.duration_since(killed))
            })
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max()
    });
    println!(
        "{victim} killed: its {} targets acted on anew within {taken:?}",
        lost.len()
    );
    assert!(
        taken <= FAILOVER,
        "{victim}'s targets moved after {taken:?} > lease_ttl + 5 s"
    );
    // Three actions of each new owner: time for a scale-in to show, if any were made.
    fleet.until("three actions of each new owner", DEADLINE, || {
        let n = acts_above(&fleet.acts(), &lost, killed);
        n.iter().all(|&n| n >= 3).then_some(())
    });
    let scales = (fleet.acts().iter())
        .filter(|a| a.at >= killed && matches!(a.kind, Kind::Scale { .. }))
        .count();
    println!("{scales} scale actions after the kill");
    // The new owner starts from at least the count delivered (the count asked for, if
    // that was larger and not delivered yet) and never asks for fewer.
    for a in fleet.acts().iter().filter(|a| a.at >= killed) {
        if let (Some(count), Kind::Scale { from, to }) = (counts.get(&a.target), a.kind) {
            assert!(
                from >= *count && to >= *count,
                "{}: after the kill, {from} → {to}, below the count delivered, {count}",
                a.target
            );
        }
    }
    fleet.assert_fenced();
}

/// An owner paused (SIGSTOP) for 3 × `lease_ttl` loses its targets to the others; after
/// SIGCONT it delivers nothing more for them at the epochs it lost (its pending actions
/// for them are superseded), and epochs never go down.
#[test]
fn a_paused_owner_delivers_nothing_for_the_targets_it_lost() {
    let mut fleet = Fleet::start();
    let owners = fleet.settled();
    let (victim, lost) = busiest(&owners);
    let i = fleet.index(&victim);
    // The receiver fails until the owner is resumed, so that the owner is paused holding
    // actions for the targets it will lose, pending (an attempt in flight at the pause is
    // answered 503 too); the others retry theirs.
    fleet.receiver.set_then(Reply::status(503));
    let app = &fleet.instances[i].app;
    // Refused once already: an attempt answered before the receiver failed may still show
    // as pending for a moment.
    let what = "a pending action, refused, for a target the owner will lose";
    let held = fleet.until(what, DEADLINE, || {
        let page = app.get_json("/api/v1/deliveries?state=pending&limit=10000")?;
        let pending = page["deliveries"].as_array()?.iter().find(|d| {
            let target = d["target"].as_str().unwrap_or_default();
            let refused = d["last_status"].as_u64() == Some(503);
            refused
                && lost
                    .get(target)
                    .is_some_and(|e| d["body"]["epoch"].as_u64() == Some(*e))
        });
        pending.cloned()
    });
    let paused = Instant::now();
    fleet.pause(i, true);
    fleet.until(
        "its targets taken by others, paused for 3 × lease_ttl",
        DEADLINE,
        || {
            let n = acts_above(&fleet.acts(), &lost, paused);
            (paused.elapsed() >= 3 * TTL && n.iter().all(|&n| n >= 1)).then_some(())
        },
    );
    // From before SIGCONT: whatever the paused instance sends arrives after it.
    let resumed = Instant::now();
    fleet.receiver.set_then(Reply::status(200));
    fleet.pause(i, false);
    // Three actions on every target since SIGCONT (a stale attempt, retried every 500 ms
    // at most, would have been made by then), and the resumed instance answering.
    fleet.until(
        "three actions on every target after SIGCONT",
        DEADLINE,
        || {
            let acts = fleet.acts();
            let fresh =
                |t: &String| (acts.iter().filter(|a| &a.target == t && a.at >= resumed)).count();
            let all = fleet.targets.iter().all(|t| fresh(t) >= 3);
            (all && fleet.instances[i].app.get_json("/healthz").is_some()).then_some(())
        },
    );
    let attributed = fleet.assert_fenced();
    let late: Vec<&Act> = (attributed.iter())
        .filter(|(a, who)| *who == victim && a.at >= resumed)
        .filter(|(a, _)| lost.get(&a.target) == Some(&a.epoch))
        .map(|(a, _)| a)
        .collect();
    assert!(
        late.is_empty(),
        "{victim} delivered after SIGCONT for targets it lost: {late:#?}"
    );
    // What it held for them was superseded, never accepted.
    let states = old_epoch_states(&fleet.instances[i].app, &lost);
    println!("{victim}'s actions at the epochs it lost, by state: {states:?}");
    let id = held["id"].as_u64().expect("an id");
    let key = held["idempotency_key"].as_str().expect("a key");
    let after = fleet.instances[i]
        .app
        .get_json(&format!("/api/v1/deliveries/{id}"))
        .expect("the held delivery");
    let attempts: Vec<(u16, String)> = (fleet.receiver.requests().iter())
        .filter(|r| r.header("idempotency-key") == Some(key))
        .map(|r| (r.status, moment(r.at, paused, resumed)))
        .collect();
    assert!(
        after["state"] == "superseded" && attempts.iter().all(|(status, _)| *status != 200),
        "{victim} held {held} at the pause; now {after}; received: {attempts:?}"
    );
}

/// `at` relative to a pause, for messages.
fn moment(at: Instant, paused: Instant, resumed: Instant) -> String {
    if at < paused {
        format!("{:?} before the pause", paused - at)
    } else if at < resumed {
        format!("{:?} into the pause", at - paused)
    } else {
        format!("{:?} after SIGCONT", at - resumed)
    }
}

/// How many of `app`'s deliveries carry a target's epoch in `epochs`, by state; `fenced`
/// for those superseded by no newer action (the fence's verdict).
fn old_epoch_states(app: &AppProcess, epochs: &BTreeMap<String, u64>) -> BTreeMap<String, usize> {
    let mut states = BTreeMap::new();
    let page = app
        .get_json("/api/v1/deliveries?limit=10000")
        .expect("deliveries");
    for d in page["deliveries"].as_array().expect("deliveries") {
        let target = d["target"].as_str().unwrap_or_default();
        if epochs.get(target).copied() == d["body"]["epoch"].as_u64() {
            let state = match d["state"].as_str() {
                Some("superseded") if d["superseded_by"].is_null() => "fenced",
                other => other.unwrap_or("?"),
            };
            let state = state.to_owned();
            *states.entry(state).or_default() += 1;
        }
    }
    states
}

/// One etcd member killed: ownership and acting go on unchanged. A second killed (quorum
/// lost): no instance acts from `lease_ttl + 2 s` on, targets are degraded with reason
/// `coordination`, and their owners still serve forecasts. Both back: acting resumes.
#[test]
fn one_etcd_member_lost_changes_nothing_quorum_lost_stops_acting_and_its_return_resumes_it() {
    let mut fleet = Fleet::start();
    let owners = fleet.settled();
    let buckets = fleet.read_owners();

    fleet.etcd.kill(2);
    let one_down = Instant::now();
    fleet.until(
        "two actions on every target, a lease's life after",
        DEADLINE,
        || {
            let acts = fleet.acts();
            let fresh =
                |t: &String| (acts.iter().filter(|a| &a.target == t && a.at >= one_down)).count();
            let all = fleet.targets.iter().all(|t| fresh(t) >= 2);
            (all && one_down.elapsed() >= 2 * TTL).then_some(())
        },
    );
    assert_eq!(
        fleet.read_owners(),
        buckets,
        "one etcd member down moved buckets"
    );
    for a in fleet.acts().iter().filter(|a| a.at >= one_down) {
        assert_eq!(
            a.epoch, owners[&a.target].1,
            "{a:?} after one member went down"
        );
    }

    fleet.etcd.kill(1);
    let lost = Instant::now();
    let quiet = lost + TTL + Duration::from_secs(2);
    quorum_lost(&fleet, &owners, quiet);

    fleet.etcd.restart(1);
    fleet.etcd.restart(2);
    fleet.etcd.wait_all_healthy();
    let back = Instant::now();
    let resumed = fleet.until(
        "an action on every target after the quorum is back",
        DEADLINE,
        || {
            let acts = fleet.acts();
            (fleet.targets.iter())
                .map(|t| acts.iter().find(|a| &a.target == t && a.at >= back))
                .map(|a| a.map(|a| a.at.duration_since(back)))
                .collect::<Option<Vec<_>>>()?
                .into_iter()
                .max()
        },
    );
    println!("every target acted on again {resumed:?} after etcd was healthy");
    fleet.assert_fenced();
}

/// With the quorum lost: every target degraded (`coordination`) on its owner, which
/// still serves its forecast; then nothing arrives at the receiver from `quiet` for two
/// leases.
fn quorum_lost(fleet: &Fleet, owners: &BTreeMap<String, (String, u64)>, quiet: Instant) {
    let what = "every target degraded with reason `coordination`, its forecast served";
    fleet.until(what, DEADLINE, || {
        let all = owners.iter().all(|(t, (owner, _))| {
            let app = &fleet.instances[fleet.index(owner)].app;
            let forecast = app.get(&format!("/api/v1/targets/{t}/forecast?horizon=1m"));
            let view = app
                .get_json(&format!("/api/v1/targets/{t}"))
                .unwrap_or_default();
            let coordination = view["degraded_reasons"]
                .to_string()
                .contains("coordination");
            matches!(forecast, Ok((200, _))) && view["status"] == "degraded" && coordination
        });
        all.then_some(())
    });
    let degraded = Instant::now();
    let last = fleet.acts().last().map(|a| a.at);
    let lost = quiet - TTL - Duration::from_secs(2);
    println!(
        "quorum lost: the last action arrived {:?} after, every target degraded after {:?}",
        last.map(|at| at.saturating_duration_since(lost)),
        degraded.duration_since(lost)
    );
    let until = quiet.max(degraded) + 2 * TTL;
    // Watched for two leases from `quiet`: a negative can only be observed over a window.
    fleet.until("two leases of silence to pass", DEADLINE, || {
        let acting: Vec<Act> = (fleet.acts().into_iter())
            .filter(|a| a.at >= quiet)
            .collect();
        if !acting.is_empty() {
            panic!("acted on without a quorum, from lease_ttl + 2 s on: {acting:#?}");
        }
        (Instant::now() >= until).then_some(())
    });
}

/// A fourth instance joins a steady fleet: within one `lease_ttl` of being ready it owns
/// its fair share of the buckets, some of the targets' among them, and acts on them at
/// new epochs; no owner key is deleted meanwhile (buckets are handed over, never freed).
#[test]
fn a_joining_instance_takes_its_share_within_the_lease_with_no_bucket_unowned() {
    let mut fleet = Fleet::start();
    let owners = fleet.settled();
    let start = fleet.revision();
    let j = fleet.spawn();
    fleet.wait_ready(j);
    let ready = Instant::now();
    let name = fleet.instances[j].name.clone();
    let share = usize::from(BUCKETS) / 4;
    let took = fleet.until("the joiner to own its share", DEADLINE, || {
        let buckets = fleet.owners().ok()?;
        let held = buckets.values().filter(|(o, _)| *o == name).count();
        (held >= share).then(|| ready.elapsed())
    });
    println!("{name} owned its {share} buckets {took:?} after it was ready");
    assert!(
        took <= TTL + POLL_ALLOWANCE,
        "{name} took {took:?} > lease_ttl to own its share"
    );
    let now = fleet.target_owners().expect("every target owned");
    let taken: BTreeMap<String, u64> = (now.iter())
        .filter(|(_, (o, _))| *o == name)
        .map(|(t, (_, e))| (t.clone(), *e))
        .collect();
    assert!(
        !taken.is_empty(),
        "{name} owns none of the targets: {now:?}"
    );
    let acted = fleet.until("the joiner to act on its targets", DEADLINE, || {
        let acts = fleet.acts();
        (taken.iter())
            .map(|(t, e)| acts.iter().find(|a| &a.target == t && a.epoch == *e))
            .map(|a| a.map(|a| a.at.duration_since(ready)))
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max()
    });
    println!(
        "{name} acted on its {} targets within {acted:?} of being ready",
        taken.len()
    );
    for (t, e) in &taken {
        assert!(
            *e > owners[t].1,
            "{t} taken at epoch {e}, not above {owners:?}"
        );
    }
    let puts = fleet.owner_puts_since(start);
    assert!(
        puts >= share,
        "only {puts} owner keys written for {share} hand-overs"
    );
    fleet.assert_fenced();
}
