//! The `prescale` binary restarted under load, against a real Prometheus (filled by
//! `promtool` from the NASA trace) and a real HTTP receiver as the platform.
//!
//! A target settles at a count well above `min_replicas` (about 40), with that count
//! delivered and nothing pending; it is stopped (`kill -9` or SIGTERM), its outbox is
//! pruned as it would be after holding that count longer than the retention, and it is
//! restarted with a slightly smaller capacity per replica, so that it asks for more at
//! once. The first webhook after the restart must start from the count asked for before
//! it, and no decision or webhook may ask for fewer: with and without a `replicas` query.
//! A paused target stays paused across a `kill -9` and asks for nothing until resumed.
//!
//! Nothing sleeps: every step waits on a condition with a deadline. The backfilled day
//! is continued by a live exporter that Prometheus scrapes, so that the request rate stays
//! fresh however long a busy machine takes to settle, stop and restart prescale; it
//! continues the counter without a break at the rate the backfill ends at, so that the
//! demand stays steady: the restart asks for more only while the demand stays above
//! `CAPACITY_AFTER / CAPACITY` (80%) of what it was when the target settled.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{AppProcess, Backfill, Exporter, Options, Prometheus, Receiver, Reply};
use common::{TempConfig, TestConfig, TestTarget};
use common::{free_addr, poll_until};
use prescale::act::Receivers;
use prescale::act::outbox::{Outbox, Settings};
use prescale::act::webhook::WebhookSender;
use prescale::clock::Clock;
use prescale::config::DeliveryConfig;
use prescale::metrics::Metrics;
use serde_json::Value;

/// Long: six of these run two at a time, each a debug build of prescale beside its own
/// Prometheus, and a busy CI machine may be slow to settle them; a wait ends as soon as
/// its condition holds.
const DEADLINE: Duration = Duration::from_secs(180);
const SECRET: &str = "restart-secret";
const TOKEN: &str = "restart-token";
/// Requests/s one replica serves before the restart (about 40 replicas for the trace's
/// last minutes), and after it (25% more replicas needed).
const CAPACITY: f64 = 0.05;
const CAPACITY_AFTER: f64 = 0.04;
/// The count the platform runs before prescale asks for any.
const STARTING_REPLICAS: u32 = 20;
/// The platform's count when it is observed: the count the receiver (the platform) was
/// last asked for, [`STARTING_REPLICAS`] before that, as the exporter shows it. A platform
/// runs what it is asked: a count it was not asked for is someone else's change
/// (`external_changes`), which these tests do not make.
const REPLICAS_QUERY: &str = r#"max(platform_replicas{job="web"})"#;

/// How the live exporter carries the backfilled counter on: from the backfill's last
/// sample, at the rate Prometheus shows there, as if it had counted on since.
///
/// `rate(…[5m])` over one-minute samples spans the last four minutes. Carried on at that
/// rate, the demand moves by a few percent while the window slides from the backfill to
/// the live samples. (It was carried on at the last hour's mean, 28% lower, from the
/// counter's value at the backfill's last sample: the 5-minute window then took in a
/// minute or two without requests too, and the demand fell by up to 38% over the first
/// minutes of a test. A target settled before the fall and restarted after it needed no
/// more replicas, and held its count through the scale-down window: no webhook came.)
#[derive(Debug, Clone, Copy)]
struct Continuation {
    /// The backfill's last sample (Unix s), and the counter there.
    end: i64,
    total: f64,
    /// Requests/s from then on.
    rate: f64,
}

impl Continuation {
    fn of(fill: &Backfill) -> Self {
        let rate = fill
            .rate(fill.end(), 240)
            .expect("the backfill holds four minutes");
        Self {
            end: fill.end(),
            total: fill.total(),
            rate,
        }
    }

    /// The counter at `t` (Unix s), after the backfill's end.
    fn total_at(&self, t: i64) -> f64 {
        self.total + self.rate * (t - self.end) as f64
    }
}

/// A Prometheus holding the trace's last day, continued live (see [`Continuation`]) by an
/// exporter it scrapes every second (dropped with it); the exporter also shows the count
/// `platform` was last asked to run, as `platform_replicas`.
struct Live {
    prom: Prometheus,
    _exporter: Exporter,
}

impl Live {
    fn start(platform: &Receiver) -> Self {
        let fill = Backfill::from_trace(1);
        let live = Continuation::of(&fill);
        let scales = platform.scales_reader();
        let running = move || {
            scales()
                .last()
                .map_or(f64::from(STARTING_REPLICAS), |s| s.1 as f64)
        };
        let (total, rate) = (live.total_at(common::now_secs()), live.rate);
        let exporter = Exporter::with_gauge(total, rate, "platform_replicas", running);
        let prom = Prometheus::start(Options {
            backfill: Some(fill),
            scrape: Some(exporter.addr()),
            ..Options::default()
        });
        Self {
            prom,
            _exporter: exporter,
        }
    }

    fn url(&self) -> String {
        self.prom.url()
    }
}

/// Defect (a test's, issue 25): the demand fell by up to 38% over the first minutes of a
/// test, more than the restart's 25% less capacity per replica makes up for, so that a
/// restart that came after the fall asked for nothing. Carried on as [`Continuation`]
/// says, the demand (`rate(…[5m])`: the last four minutes' increase) at any minute from
/// the backfill's end on is above `CAPACITY_AFTER / CAPACITY` of what it was at any
/// earlier one, with half of the 20% to spare.
#[test]
fn the_live_demand_stays_steady_enough_for_a_restart_to_need_more() {
    let fill = Backfill::from_trace(1);
    let live = Continuation::of(&fill);
    let counter = |t: i64| {
        if t <= fill.end() {
            fill.minute(t)
                .map(|m| m.total)
                .expect("a backfilled minute")
        } else {
            live.total_at(t)
        }
    };
    let demand = |ts: i64| (counter(ts) - counter(ts - 240)) / 240.0;
    let demands: Vec<f64> = (0..10).map(|k| demand(fill.end() + 60 * k)).collect();
    // Half of the fall the restart's capacity makes up for.
    let margin = 1.0 - (1.0 - CAPACITY_AFTER / CAPACITY) / 2.0;
    for (i, before) in demands.iter().enumerate() {
        for after in &demands[i..] {
            assert!(
                after / before > margin,
                "the demand falls from {before:.3} to {after:.3} rps (by more than {:.0}%): \
                 {demands:.3?}",
                (1.0 - margin) * 100.0
            );
        }
    }
}

/// How prescale is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Kill,
    Term,
}

/// The configuration: one target `web` scaled through `receiver`, deciding every second.
/// Without a `replicas` query it is told that its platform runs [`STARTING_REPLICAS`] when
/// it starts managing it (`initial_replicas`); once it has asked for a count that is
/// ignored. With one, it observes the count the platform runs ([`REPLICAS_QUERY`]).
fn config(prom: &str, receiver: &Receiver, observed: bool, capacity: f64) -> TestConfig {
    let target = TestTarget::new("web", common::RATE_QUERY)
        .set("capacity_rps", capacity)
        .set("startup", "1m")
        .set("min_replicas", 1)
        .set("max_replicas", 100)
        .set("interval", "1s")
        .set("history", "6h")
        .platform(&receiver.url("/scale"), "secret");
    let target = if observed {
        target.set("replicas", REPLICAS_QUERY)
    } else {
        target.set("initial_replicas", i64::from(STARTING_REPLICAS))
    };
    TestConfig::new()
        .prometheus(prom)
        .listen(free_addr())
        .set("server", "api_token_file", "token")
        .target(target)
}

/// Starts `prescale serve` on `cfg` (written over the file, on a fresh port).
fn serve(cfg: &TempConfig, config: &TestConfig) -> AppProcess {
    let listen = free_addr();
    config.clone().listen(listen).write_over(cfg);
    AppProcess::serve(cfg, listen)
}

/// Waits until the target holds the count its policies want, well above `min_replicas`,
/// accepted by the receiver, with nothing pending: the count last asked for, no ask in
/// flight.
fn settled(app: &AppProcess, receiver: &Receiver) -> u64 {
    until_or_log(
        app,
        receiver,
        "a held count, delivered, nothing pending",
        || {
            let d = app.get_json("/api/v1/decisions?target=web&limit=1")?;
            let d = d["decisions"].as_array()?.first()?.clone();
            let pending = app.get_json("/api/v1/deliveries?state=pending")?;
            let to = d["to"].as_u64()?;
            // Held at the count its policies want, not on the way there.
            let reasons = d["reasons"].to_string();
            let wanted = !reasons.contains("Limit") && !reasons.contains("Stabilized");
            let held = d["from"].as_u64() == Some(to) && to >= 10 && wanted;
            let delivered = receiver.scales().last().map(|s| s.1) == Some(to);
            (held && delivered && pending["deliveries"].as_array()?.is_empty()).then_some(to)
        },
    )
}

/// [`poll_until`] with [`DEADLINE`] that, on a timeout, prints `app`'s log, and what it
/// shows of the target (its state, its last decisions, its deliveries) and what `receiver`
/// was asked, before failing.
fn until_or_log<T>(
    app: &AppProcess,
    receiver: &Receiver,
    what: &str,
    probe: impl FnMut() -> Option<T>,
) -> T {
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        poll_until(what, DEADLINE, probe)
    }));
    found.unwrap_or_else(|e| {
        let show = |path: &str| {
            app.get_json(path)
                .map_or_else(|| "(no answer)".to_owned(), |v| v.to_string())
        };
        eprintln!(
            "waiting for {what}:\n\
             target: {}\n\
             last decisions: {}\n\
             deliveries: {}\n\
             scale webhooks received (from, to): {:?}\n\
             prescale's log:\n{}",
            show("/api/v1/targets/web"),
            show("/api/v1/decisions?target=web&limit=10"),
            show("/api/v1/deliveries?target=web&limit=20"),
            receiver.scales(),
            app.stderr()
        );
        std::panic::resume_unwind(e)
    })
}

/// Stops `app` as `stop` says and checks how it ended.
fn stop(app: &mut AppProcess, stop: Stop) {
    match stop {
        Stop::Kill => assert!(!app.kill().success(), "killed"),
        Stop::Term => {
            app.terminate();
            let status = app.wait_exit();
            assert!(status.success(), "SIGTERM stops gracefully: {status}");
        }
    }
}

/// What retention does to a count held for longer than it: the outbox is opened eight
/// days later and its own worker, with the default retention of seven days, deletes every
/// finished delivery at its start. Nothing is pending, so nothing is sent.
fn prune_as_after_a_week(state: &Path) {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let later = Clock::accelerated(Clock::system().now() + 8 * 86_400, 1.0);
        let outbox = Outbox::open_with_clock(state, later).expect("open the outbox");
        let delivery = DeliveryConfig::default();
        let sender = WebhookSender::with_builder(delivery, reqwest::Client::builder().no_proxy())
            .expect("client");
        let settings = Settings {
            delivery,
            retention: Duration::from_secs(7 * 86_400),
        };
        let receivers = Receivers::from_routes(Vec::new(), sender);
        let worker = outbox
            .worker(settings, receivers, &Metrics::new(), None)
            .await
            .expect("a worker");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(worker.run(stopped));
        common::poll_until_async("the deliveries to be pruned", DEADLINE, || async {
            let left = outbox.list(None, None, 10).await.expect("list");
            left.is_empty().then_some(())
        })
        .await;
        let _ = stop.send(true);
        task.await.expect("the worker stops");
    });
}

/// The decisions made after `since` (Unix s), oldest first.
fn decisions_after(app: &AppProcess, since: i64) -> Option<Vec<Value>> {
    let b = app.get_json("/api/v1/decisions?target=web&limit=1000")?;
    let mut d: Vec<Value> = b["decisions"]
        .as_array()?
        .iter()
        .filter(|d| d["at"].as_i64() > Some(since))
        .cloned()
        .collect();
    d.reverse();
    Some(d)
}

/// One restart: settle, stop, prune, restart needing more; the first webhook after the
/// restart starts from the count asked for before it, and nothing asks for fewer.
fn restart_never_scales_in(how: Stop, observed: bool) {
    let case = format!("{how:?}, replicas query: {observed}");
    let receiver = Receiver::with_replies(Vec::new(), Reply::status(200));
    let prom = Live::start(&receiver);
    let cfg = config(&prom.url(), &receiver, observed, CAPACITY).write();
    cfg.write_file("secret", SECRET);
    cfg.write_file("token", TOKEN);
    let before = config(&prom.url(), &receiver, observed, CAPACITY);
    let mut app = serve(&cfg, &before);
    let last = settled(&app, &receiver);
    let sent = receiver.scales().len();
    stop(&mut app, how);
    prune_as_after_a_week(&cfg.dir().join("state"));

    let stopped_at = common::now_secs();
    let after = config(&prom.url(), &receiver, observed, CAPACITY_AFTER);
    let app = serve(&cfg, &after);
    let (from, to) = until_or_log(&app, &receiver, "a scale webhook after the restart", || {
        receiver.scales().get(sent).copied()
    });
    assert_eq!(from, last, "{case}: the first webhook after the restart");
    assert!(to > last, "{case}: it asks for more: {from} → {to}");
    // Counted as made, not as records: equal holds share one record (`repeats`), and
    // with a steady demand all after the first ask are equal.
    let decisions = until_or_log(&app, &receiver, "three decisions after the restart", || {
        decisions_after(&app, stopped_at).filter(|d| common::decisions_made(d) >= 3)
    });
    assert_eq!(
        decisions[0]["from"].as_u64(),
        Some(last),
        "{case}: {}",
        decisions[0]
    );
    for d in &decisions {
        assert!(d["to"].as_u64() >= Some(last), "{case}: scaled in: {d}");
    }
    let webhooks = receiver.scales();
    assert!(
        webhooks[sent..].iter().all(|&(_, to)| to >= last),
        "{case}: webhooks after the restart: {:?} (asked for {last} before)",
        &webhooks[sent..]
    );
}

/// Defect: a target without a `replicas` query restarted by `kill -9` asked "from 1",
/// having forgotten the count it ran at (the deliveries it was read from were pruned).
#[test]
fn kill_9_without_a_replicas_query_resumes_from_the_count_delivered() {
    restart_never_scales_in(Stop::Kill, false);
}

/// The same restart by SIGTERM.
#[test]
fn sigterm_without_a_replicas_query_resumes_from_the_count_delivered() {
    restart_never_scales_in(Stop::Term, false);
}

/// With a `replicas` query, a restart by `kill -9` also starts from the count asked for.
#[test]
fn kill_9_with_a_replicas_query_starts_from_the_count_asked_for() {
    restart_never_scales_in(Stop::Kill, true);
}

/// The same restart by SIGTERM.
#[test]
fn sigterm_with_a_replicas_query_starts_from_the_count_asked_for() {
    restart_never_scales_in(Stop::Term, true);
}

/// Defect: the pause was forgotten on restart, and the restarted process acted at once.
/// Paused, then `kill -9`: restarted needing more replicas, it is still paused, decides
/// and asks for nothing; resumed, it asks from the count it held.
#[test]
fn a_pause_survives_kill_9_and_nothing_is_asked_until_resumed() {
    let receiver = Receiver::with_replies(Vec::new(), Reply::status(200));
    let prom = Live::start(&receiver);
    let cfg = config(&prom.url(), &receiver, false, CAPACITY).write();
    cfg.write_file("secret", SECRET);
    cfg.write_file("token", TOKEN);
    let mut app = serve(&cfg, &config(&prom.url(), &receiver, false, CAPACITY));
    let last = settled(&app, &receiver);
    app.post("/api/v1/targets/web/pause", TOKEN);
    stop(&mut app, Stop::Kill);
    let sent = receiver.scales().len();

    let stopped_at = common::now_secs();
    let app = serve(&cfg, &config(&prom.url(), &receiver, false, CAPACITY_AFTER));
    // The first decisions after a restart may hold while the forecaster refits and the
    // demand is fresh again (a busy machine): wait for one that would ask for more.
    let wants_more = |d: &Vec<serde_json::Value>| d.iter().any(|d| d["to"].as_u64() > Some(last));
    until_or_log(
        &app,
        &receiver,
        "a decision after the restart that would ask for more",
        || decisions_after(&app, stopped_at).filter(wants_more),
    );
    let t = app.get_json("/api/v1/targets/web").expect("the target");
    assert_eq!(t["paused"], true, "still paused: {t}");
    let written = app
        .get_json("/api/v1/deliveries?target=web&state=pending")
        .expect("deliveries");
    assert_eq!(
        written["deliveries"],
        serde_json::json!([]),
        "nothing written"
    );
    assert_eq!(receiver.scales().len(), sent, "nothing sent while paused");

    app.post("/api/v1/targets/web/resume", TOKEN);
    let (from, to) = until_or_log(&app, &receiver, "a scale webhook after the resume", || {
        receiver.scales().get(sent).copied()
    });
    assert_eq!((from, to > last), (last, true), "{from} → {to}");
}

/// Defect: a target without a `replicas` query and nothing remembered took `min_replicas`
/// as running and asked "from 1". Now its running count is unknown: it decides and shows
/// (`ReplicasUnknown`), is degraded with a reason naming `initial_replicas`, and asks for
/// nothing; restarted with `initial_replicas`, it asks from that count.
#[test]
fn an_unknown_running_count_asks_for_nothing_until_initial_replicas_names_it() {
    let receiver = Receiver::with_replies(Vec::new(), Reply::status(200));
    let prom = Live::start(&receiver);
    let unknown = TestConfig::new().prometheus(&prom.url()).target(
        TestTarget::new("web", common::RATE_QUERY)
            .set("capacity_rps", CAPACITY)
            .set("startup", "1m")
            .set("max_replicas", 100)
            .set("interval", "1s")
            .set("history", "6h")
            .platform(&receiver.url("/scale"), "secret"),
    );
    let cfg = unknown.write();
    cfg.write_file("secret", SECRET);
    let mut app = serve(&cfg, &unknown);
    let decisions = until_or_log(&app, &receiver, "three decisions", || {
        decisions_after(&app, 0).filter(|d| common::decisions_made(d) >= 3)
    });
    for d in &decisions {
        let codes = d["reasons"].to_string();
        assert!(codes.contains("ReplicasUnknown"), "{d}");
    }
    assert!(
        decisions
            .iter()
            .any(|d| d["to"].as_u64() > d["from"].as_u64()),
        "it would scale: {decisions:?}"
    );
    let t = app.get_json("/api/v1/targets/web").expect("the target");
    assert_eq!(t["status"], "degraded", "{t}");
    assert!(
        t["degraded_reasons"]
            .to_string()
            .contains("initial_replicas"),
        "says what to do: {t}"
    );
    let written = app.get_json("/api/v1/deliveries").expect("deliveries");
    assert_eq!(
        written["deliveries"],
        serde_json::json!([]),
        "nothing written"
    );
    assert!(receiver.scales().is_empty(), "nothing sent");
    stop(&mut app, Stop::Term);

    let named = TestConfig::new().prometheus(&prom.url()).target(
        TestTarget::new("web", common::RATE_QUERY)
            .set("capacity_rps", CAPACITY)
            .set("startup", "1m")
            .set("max_replicas", 100)
            .set("initial_replicas", 8)
            .set("interval", "1s")
            .set("history", "6h")
            .platform(&receiver.url("/scale"), "secret"),
    );
    let app = serve(&cfg, &named);
    let (from, to) = until_or_log(&app, &receiver, "a scale webhook", || {
        receiver.scales().first().copied()
    });
    assert_eq!(from, 8, "from the count named: {from} → {to}");
    let t = app.get_json("/api/v1/targets/web").expect("the target");
    assert!(
        !t["degraded_reasons"]
            .to_string()
            .contains("initial_replicas"),
        "{t}"
    );
}
