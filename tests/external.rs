//! Someone else scales a target whose platform is a webhook and whose running count comes
//! from a `replicas` query (issue 25; the Kubernetes platform's version is in
//! `kubernetes.rs`). The `prescale` binary runs against a real Prometheus scraping a live
//! exporter, and real HTTP receivers stand for each target's platform: a platform runs the
//! count it was last asked for, and the exporter shows it as `platform_replicas`, which the
//! `replicas` query reads. A person "scales" by making a platform run 30 instead.
//!
//! `follow`: the change is recorded as `External`, from the count observed; nothing is
//! scaled in within the 20 s scale-down window; then the count falls through the rate limit
//! (4 per 5 s), every decision and webhook carrying the observed count as `from`.
//! `hold`: the target is paused and nothing is sent until it is resumed, and the first
//! webhook then starts from 30.
//!
//! Nothing sleeps: every step waits on a condition with a deadline.

mod common;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use common::http::Server;
use common::{AppProcess, Options, Prometheus, Receiver, Reply, TestConfig, TestTarget};
use common::{free_addr, poll_until};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(180);
const TOKEN: &str = "external-token";
/// The count each platform runs before it is asked for any.
const FIRST: u64 = 2;
/// The scale-down stabilisation window of the targets, seconds.
const WINDOW: i64 = 20;

/// A platform: a receiver of scale webhooks, and the count it runs.
struct Platform {
    receiver: Receiver,
    /// Someone else's count, and how many scale webhooks had come when it was set: the
    /// platform runs it until the next webhook.
    external: Arc<Mutex<Option<(usize, u64)>>>,
}

impl Platform {
    fn start() -> Self {
        Self {
            receiver: Receiver::with_replies(Vec::new(), Reply::status(200)),
            external: Arc::default(),
        }
    }

    /// The count it runs now, as a function the exporter calls at each scrape.
    fn running(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let scales = self.receiver.scales_reader();
        let external = self.external.clone();
        move || {
            let scales = scales();
            match *external.lock().unwrap_or_else(|p| p.into_inner()) {
                Some((seen, n)) if scales.len() <= seen => n,
                _ => scales.last().map_or(FIRST, |s| s.1),
            }
        }
    }

    /// Someone else makes it run `n`.
    fn scale_by_hand(&self, n: u64) {
        let seen = self.receiver.scales().len();
        *self.external.lock().unwrap_or_else(|p| p.into_inner()) = Some((seen, n));
    }
}

/// The count a platform runs, read at each scrape.
type Running = Box<dyn Fn() -> u64 + Send + Sync>;

/// `/metrics`: a counter at 40 requests/s, and `platform_replicas{target=…}` per platform.
fn exporter(platforms: Vec<(&'static str, Running)>) -> Server {
    let platforms = Arc::new(platforms);
    let started = std::time::Instant::now();
    let metrics = move || {
        let platforms = platforms.clone();
        async move {
            let total = 40.0 * started.elapsed().as_secs_f64();
            let mut body = format!(
                "# TYPE http_requests_total counter\nhttp_requests_total{{job=\"web\"}} {total}\n\
                 # TYPE platform_replicas gauge\n"
            );
            for (name, running) in platforms.iter() {
                let _ = writeln!(body, "platform_replicas{{target=\"{name}\"}} {}", running());
            }
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
        }
    };
    Server::start(Router::new().route("/metrics", get(metrics)))
}

/// A target scaled through `platform` that observes its count, reacting within seconds.
fn target(name: &str, platform: &Platform, then: &str) -> TestTarget {
    let behavior: toml::Table = format!(
        "scale_down = {{ stabilization_window = \"{WINDOW}s\", policies = [{{ type = \"Pods\", value = 4, period = \"5s\" }}] }}"
    )
    .parse()
    .expect("a TOML table");
    TestTarget::new(name, r#"sum(rate(http_requests_total{job="web"}[1m]))"#)
        .set(
            "replicas",
            format!(r#"max(platform_replicas{{target="{name}"}})"#),
        )
        .set("capacity_rps", 10)
        .set("startup", "2s")
        .set("min_replicas", 1)
        .set("max_replicas", 40)
        .set("interval", "1s")
        .set("step", "1s")
        .set("history", "10m")
        .set("stale_after", "30s")
        .set("external_changes", then)
        // Calm scaling off: this test watches the behaviour's own scale-in steps; with
        // ten minutes of history calm would price each change at the 30 running.
        .set("change_cost", "0s")
        .set("behavior", behavior)
        .platform(&platform.receiver.url("/scale"), "secret")
}

/// The decisions of `target`, oldest first.
fn decisions(app: &AppProcess, target: &str) -> Vec<Value> {
    let b = app
        .get_json(&format!("/api/v1/decisions?target={target}&limit=1000"))
        .unwrap_or_default();
    let mut list = b["decisions"].as_array().cloned().unwrap_or_default();
    list.reverse();
    list
}

fn is_external(d: &Value) -> bool {
    d["reasons"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["code"] == "External"))
}

/// The scale deliveries of `target`, oldest first: (created_at, from, to).
fn scale_deliveries(app: &AppProcess, target: &str) -> Vec<(f64, u64, u64)> {
    let b = app
        .get_json(&format!("/api/v1/deliveries?target={target}&limit=1000"))
        .unwrap_or_default();
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

/// Waits until `target` holds at its own count, above the first one, as its platform runs
/// it: the count.
fn settle(app: &AppProcess, target: &str, platform: &Platform) -> u64 {
    let running = platform.running();
    poll_until(&format!("`{target}` to settle"), DEADLINE, || {
        let n = running();
        let last = decisions(app, target).pop()?;
        (n > FIRST && last["from"] == n && last["to"] == n).then_some(n)
    })
}

/// The first decision of `target` recording an external change.
fn external_decision(app: &AppProcess, target: &str) -> Value {
    poll_until(
        &format!("`{target}`'s decision recording the external change"),
        DEADLINE,
        || decisions(app, target).into_iter().find(is_external),
    )
}

#[test]
fn a_webhook_platform_scaled_by_hand_is_followed_after_the_window_or_held() {
    let (web, held) = (Platform::start(), Platform::start());
    let metrics = exporter(vec![
        ("web", Box::new(web.running())),
        ("held", Box::new(held.running())),
    ]);
    let prom = Prometheus::start(Options {
        scrape: Some(metrics.addr),
        ..Options::default()
    });
    let listen = free_addr();
    let cfg = TestConfig::new()
        .prometheus(&prom.url())
        .listen(listen)
        .set("server", "api_token_file", "token")
        .set("delivery", "initial_backoff", "20ms")
        .set("delivery", "max_backoff", "100ms")
        .target(target("web", &web, "follow"))
        .target(target("held", &held, "hold"))
        .write();
    cfg.write_file("secret", "external-secret");
    cfg.write_file("token", TOKEN);
    let app = AppProcess::serve(&cfg, listen);

    let settled = settle(&app, "web", &web);
    settle(&app, "held", &held);
    assert!(settled < 30, "{settled}");
    let held_sent = held.receiver.scales().len();

    web.scale_by_hand(30);
    held.scale_by_hand(30);

    // follow: recorded, from the count observed.
    let ext = external_decision(&app, "web");
    assert_eq!(ext["from"], 30, "the observed count: {ext}");
    assert!(
        ext["reasons"]
            .to_string()
            .contains(&format!("from {settled} to 30")),
        "{ext}"
    );
    let at = ext["at"].as_i64().expect("at");
    poll_until("`web` to be scaled in to 18 or fewer", DEADLINE, || {
        (web.running()() <= 18).then_some(())
    });
    let after: Vec<Value> = decisions(&app, "web")
        .into_iter()
        .filter(|d| d["at"].as_i64().is_some_and(|t| t >= at))
        .collect();
    for d in after
        .iter()
        .filter(|d| d["at"].as_i64() < Some(at + WINDOW))
    {
        assert!(
            d["to"].as_u64() >= Some(30),
            "scaled in within the window: {d}"
        );
        assert_eq!(d["from"], 30, "from the count observed: {d}");
    }
    assert_eq!(
        after.iter().filter(|d| is_external(d)).count(),
        1,
        "one external change: {after:?}"
    );
    let sent: Vec<_> = scale_deliveries(&app, "web")
        .into_iter()
        .filter(|d| d.0 >= at as f64)
        .collect();
    assert!(sent.len() >= 3, "scaled in in steps: {sent:?}");
    assert!(
        sent[0].0 >= (at + WINDOW) as f64,
        "sent within the window: {sent:?}"
    );
    let mut observed = 30;
    for &(created, from, to) in &sent {
        assert_eq!(
            from, observed,
            "from the count running at {created}: {sent:?}"
        );
        assert!(from - to <= 4, "beyond the rate limit: {sent:?}");
        observed = to;
    }
    // The webhooks the platform received say the same.
    let received = web.receiver.scales();
    let since: Vec<_> = received.iter().rev().take(sent.len()).rev().collect();
    assert_eq!(since.first().map(|s| s.0), Some(30), "{received:?}");

    // hold: paused since the change; nothing sent until resumed, then from 30.
    let ext = external_decision(&app, "held");
    assert_eq!(ext["from"], 30, "{ext}");
    let t = app.get_json("/api/v1/targets/held").expect("the target");
    assert_eq!(t["paused"], true, "{t}");
    assert_eq!(
        held.receiver.scales().len(),
        held_sent,
        "nothing sent while held"
    );
    assert_eq!(held.running()(), 30);
    app.post("/api/v1/targets/held/resume", TOKEN);
    let first = poll_until("`held` to scale in once resumed", DEADLINE, || {
        held.receiver.scales().get(held_sent).copied()
    });
    assert_eq!(first.0, 30, "from the count running: {first:?}");
    assert!(first.1 < 30, "{first:?}");
}
