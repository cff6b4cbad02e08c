//! Signals to the real `prescale serve` process: SIGHUP reloads the configuration file
//! without stopping the process or its listener (a bad file, or one that would need a
//! restart, is refused and the running configuration kept), and SIGTERM still stops it
//! gracefully afterwards.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{
    AppProcess, Prometheus, Receiver, Reply, TestConfig, TestTarget, free_addr, poll_until,
};

/// How long a reload may take to show (generous: a busy machine).
const DEADLINE: Duration = Duration::from_secs(60);

/// A configuration with the targets `names`, each reading the backfilled rate.
fn config(prom: &Prometheus, listen: SocketAddr, names: &[(&str, u32)]) -> TestConfig {
    names.iter().fold(
        TestConfig::new().prometheus(&prom.url()).listen(listen),
        |c, (name, max)| {
            c.target(
                TestTarget::new(name, common::RATE_QUERY)
                    .set("capacity_rps", 150)
                    .set("startup", "3m")
                    .set("max_replicas", i64::from(*max))
                    .set("interval", "1s")
                    .set("history", "6h"),
            )
        },
    )
}

/// The log without terminal colours, so that fields read `key=value`.
fn plain_log(app: &AppProcess) -> String {
    let log = app.stderr();
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // `ESC [ … m`
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The lines of the log that contain `what`.
fn lines_with(app: &AppProcess, what: &str) -> Vec<String> {
    plain_log(app)
        .lines()
        .filter(|l| l.contains(what))
        .map(str::to_owned)
        .collect()
}

/// The names of the targets the API shows now (none while it does not answer).
fn names(app: &AppProcess) -> Vec<String> {
    targets(app)
        .unwrap_or_default()
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

/// How many times `target` was backfilled (a fresh state backfills once).
fn backfills(app: &AppProcess, target: &str) -> usize {
    let field = format!("target={target} ");
    lines_with(app, "backfilled")
        .iter()
        .filter(|l| l.contains(&field))
        .count()
}

/// Target names and states the API lists.
fn targets(app: &AppProcess) -> Option<Vec<(String, String)>> {
    let body = app.get_json("/api/v1/targets")?;
    body["targets"]
        .as_array()?
        .iter()
        .map(|t| {
            Some((
                t["name"].as_str()?.to_owned(),
                t["status"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Sends SIGHUP and waits until the log has one more line containing `what`; returns it.
/// Panics if the process exits meanwhile.
fn hang_up_until_logged(app: &mut AppProcess, what: &str) -> String {
    signal_until_logged(app, "HUP", what)
}

/// Sends the signal `name` and waits until the log has one more line containing `what`;
/// returns it. Panics if the process exits meanwhile.
fn signal_until_logged(app: &mut AppProcess, name: &str, what: &str) -> String {
    let before = lines_with(app, what).len();
    app.signal(name);
    poll_until(
        &format!("a log line `{what}` after SIG{name}"),
        DEADLINE,
        || {
            if let Some(status) = app.exited() {
                panic!(
                    "prescale exited on SIG{name} ({status}); its log:\n{}",
                    app.stderr()
                );
            }
            lines_with(app, what).get(before).cloned()
        },
    )
}

/// A valid changed file is applied on SIGHUP (a target added appears, the unchanged one
/// keeps its state); a broken one is refused with the error naming file and key, and the
/// old targets stay served; a change of the listen address is refused as needing a
/// restart; several SIGHUPs in a row apply the last file; the process never exits on
/// SIGHUP, nor on SIGUSR1 or SIGUSR2 (logged, ignored), and SIGTERM still stops it cleanly.
#[test]
fn sighup_reloads_the_configuration_and_never_stops_the_process() {
    let prom = Prometheus::backfilled(1);
    let listen = free_addr();
    let cfg = config(&prom, listen, &[("web", 40)]).write();
    let mut app = AppProcess::serve(&cfg, listen);
    app.wait_ready();

    // A target added: it appears, and `web`, unchanged, is still backfilled at once.
    config(&prom, listen, &[("web", 40), ("api", 10)]).write_over(&cfg);
    let line = hang_up_until_logged(&mut app, "configuration reloaded");
    assert!(line.contains("added=api"), "{line}");
    let listed = poll_until("`api` listed", DEADLINE, || {
        targets(&app).filter(|t| t.iter().any(|(n, _)| n == "api"))
    });
    let web = listed
        .iter()
        .find(|(n, _)| n == "web")
        .expect("web still listed");
    assert_ne!(web.1, "backfilling", "web kept its state: {listed:?}");
    app.wait_ready();
    // Only the new target backfilled: `web` kept its series (a fresh state backfills).
    assert_eq!(backfills(&app, "api"), 1);
    assert_eq!(backfills(&app, "web"), 1, "web backfilled again");
    let gauge = |name: &str| format!("prescale_{name}{{target=\"api\"}}");
    poll_until("api's gauges", DEADLINE, || {
        let (_, metrics) = app.get("/metrics").ok()?;
        metrics.contains(&gauge("desired_replicas")).then_some(())
    });

    // A broken file: refused, naming the file and the key; both targets still served.
    let text = config(&prom, listen, &[("web", 40)]).to_toml();
    cfg.write_file("prescale.toml", &format!("{text}max_replica = 4\n"));
    let line = hang_up_until_logged(&mut app, "configuration reload refused");
    assert!(
        line.contains("ERROR") && line.contains("prescale.toml") && line.contains("max_replica"),
        "{line}"
    );
    assert_eq!(names(&app), ["api", "web"]);

    // The listen address cannot change without a restart: nothing of the file applies.
    config(&prom, free_addr(), &[("web", 40)]).write_over(&cfg);
    let line = hang_up_until_logged(&mut app, "configuration reload refused");
    assert!(
        line.contains("[server] listen") && line.contains("needs a restart"),
        "{line}"
    );
    assert_eq!(names(&app), ["api", "web"], "served on the same address");

    // Several SIGHUPs in a row: the last file applies, the process stays.
    config(&prom, listen, &[("web", 30)]).write_over(&cfg);
    let before = lines_with(&app, "configuration reloaded").len();
    for _ in 0..3 {
        app.signal("HUP");
    }
    poll_until("`api` removed", DEADLINE, || {
        (names(&app) == ["web"]).then_some(())
    });
    let reloads = lines_with(&app, "configuration reloaded");
    let last = reloads.last().expect("a reload logged");
    assert!(reloads.len() > before, "{reloads:?}");
    assert!(
        reloads[before].contains("removed=api") && reloads[before].contains("changed=web"),
        "{reloads:?}"
    );
    assert!(last.contains("targets=1"), "{last}");
    // A removed target's gauges go (a stale `degraded` would keep an alert firing).
    let (_, metrics) = app.get("/metrics").expect("GET /metrics");
    for name in ["desired_replicas", "degraded", "seconds_to_bottleneck"] {
        assert!(!metrics.contains(&gauge(name)), "{name}: {metrics}");
    }
    let detail = poll_until("web's new bounds", DEADLINE, || {
        app.get_json("/api/v1/targets/web")
            .filter(|d| d["max_replicas"] == 30)
    });
    assert_eq!(detail["max_replicas"], 30, "{detail}");
    app.wait_ready();
    // Changed, `web` started afresh, as after a restart.
    assert_eq!(backfills(&app, "web"), 2);
    assert!(app.exited().is_none(), "still running");

    // SIGUSR1 and SIGUSR2 mean nothing to prescale: logged, ignored, never an exit.
    for name in ["USR1", "USR2"] {
        let line = signal_until_logged(&mut app, name, "signal ignored");
        assert!(line.contains(&format!("SIG{name}")), "{line}");
    }
    app.wait_ready();

    app.signal("TERM");
    let status = app.wait_exit();
    assert!(status.success(), "exit {status}: {}", app.stderr());
    assert!(app.stderr().contains("shutting down"));
}

/// Decisions of `web` so far, in all and down, from `/metrics`.
fn decisions(app: &AppProcess) -> Option<(u64, u64)> {
    let (status, text) = app.get("/metrics").ok()?;
    (status == 200).then_some(())?;
    let mut counts = (0, 0);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("prescale_decisions_total{") else {
            continue;
        };
        if !rest.contains(r#"target="web""#) {
            continue;
        }
        let n: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        counts.0 += n as u64;
        if rest.contains(r#"direction="down""#) {
            counts.1 += n as u64;
        }
    }
    Some(counts)
}

/// A target scaled by a platform webhook; reads open or behind the token as `auth_reads`.
fn scaled_config(
    prom: &Prometheus,
    listen: SocketAddr,
    receiver: &Receiver,
    max: u32,
    auth_reads: bool,
) -> TestConfig {
    TestConfig::new()
        .prometheus(&prom.url())
        .listen(listen)
        .set("server", "api_token_file", "token")
        .set("server", "auth_reads", auth_reads)
        .target(
            TestTarget::new("web", common::RATE_QUERY)
                .set("capacity_rps", 0.05)
                .set("startup", "1m")
                .set("max_replicas", i64::from(max))
                // No replicas query: a start count, so that it scales.
                .set("initial_replicas", 1)
                .set("interval", "1s")
                .set("history", "6h")
                .platform(&receiver.url("/scale"), "signing.key"),
        )
}

/// A reload that changes the target (so it starts again from the outbox, as after a
/// restart) and `[server]` (reads now need the token): the new server settings apply on
/// the same listener, and the target resumes from the count last asked for: no decision
/// and no webhook after the reload goes below it.
#[test]
fn a_reload_applies_the_new_server_settings_and_never_scales_in() {
    let prom = Prometheus::backfilled(1);
    let receiver = Receiver::with_replies(Vec::new(), Reply::status(200));
    let listen = free_addr();
    let cfg = scaled_config(&prom, listen, &receiver, 100, false).write();
    cfg.write_file("token", "reload-token");
    cfg.write_file("signing.key", "reload-signing-key");
    let mut app = AppProcess::serve(&cfg, listen);
    // A count held and delivered, with nothing pending: the count last asked for.
    let last = poll_until("a held count, delivered", DEADLINE, || {
        let d = app.get_json("/api/v1/decisions?target=web&limit=1")?;
        let d = d["decisions"].as_array()?.first()?.clone();
        let pending = app.get_json("/api/v1/deliveries?state=pending")?;
        let to = d["to"].as_u64()?;
        let held = d["from"].as_u64() == Some(to) && to > 1;
        let delivered = receiver.scales().last().map(|s| s.1) == Some(to);
        (held && delivered && pending["deliveries"].as_array()?.is_empty()).then_some(to)
    });
    let sent_before = receiver.scales().len();
    let since = common::now_secs();
    let decided_before = decisions(&app).expect("the decisions metric");

    scaled_config(&prom, listen, &receiver, 90, true).write_over(&cfg);
    let line = hang_up_until_logged(&mut app, "configuration reloaded");
    assert!(
        line.contains("changed=web") && line.contains("sections=server"),
        "{line}"
    );
    // Reads need the token now, on the same address.
    let (status, _) = app.get("/api/v1/targets").expect("GET /api/v1/targets");
    assert_eq!(status, 401, "auth_reads applied");
    assert_eq!(app.get("/healthz").expect("GET /healthz").0, 200);
    // The target resumes from the count last asked for, then decides several times
    // (`/metrics` stays open), never down.
    poll_until(
        "the target resumed from the count asked for",
        DEADLINE,
        || {
            lines_with(&app, "resuming from the count last asked for")
                .iter()
                .any(|l| l.contains(&format!("asked={last}")))
                .then_some(())
        },
    );
    poll_until("three decisions after the reload", DEADLINE, || {
        (decisions(&app)?.0 >= decided_before.0 + 3).then_some(())
    });
    let (_, down) = decisions(&app).expect("the decisions metric");
    assert_eq!(
        down, decided_before.1,
        "a decision went down after the reload"
    );
    let after = &receiver.scales()[sent_before..];
    assert!(
        after.iter().all(|&(from, to)| from == last && to >= last),
        "scale webhooks after the reload: {after:?} (last asked for {last}, reload at {since})"
    );
    assert!(app.exited().is_none(), "still running");
}

/// A `[[discovery]]` finding the backfilled series: target `ok-trace`.
const DISCOVERY: &str = r#"
[[discovery]]
query = 'sum by (instance) (rate(http_requests_total{job="web"}[5m]))'
name = "ok-${instance}"
refresh = "1s"

[discovery.template]
request_rate = 'sum(rate(http_requests_total{instance="${instance}"}[5m]))'
capacity_rps = 150
startup = "3m"
max_replicas = 40
interval = "1s"
history = "6h"
"#;

/// A reload that changes a `[[discovery]]` runs its query first: a changed query that
/// still finds the series keeps its target running (it was once dropped until the next
/// refresh), and one that fails refuses the reload, naming the discovery and the query,
/// with the discovered target kept (the log once said "the discovered targets are kept"
/// and then `removed=` it).
#[test]
fn a_reload_keeps_the_discovered_targets_or_is_refused_naming_the_query() {
    let prom = Prometheus::backfilled(1);
    let listen = free_addr();
    let base = config(&prom, listen, &[("web", 40)]).to_toml();
    let cfg = common::TempConfig::write(&format!("{base}{DISCOVERY}"));
    let mut app = AppProcess::serve(&cfg, listen);
    app.wait_ready();
    poll_until("`ok-trace` discovered", DEADLINE, || {
        (names(&app) == ["ok-trace", "web"]).then_some(())
    });

    let changed = DISCOVERY.replace("[5m]))'\nname", "[10m]))'\nname");
    assert_ne!(changed, DISCOVERY);
    cfg.write_file("prescale.toml", &format!("{base}{changed}"));
    let line = hang_up_until_logged(&mut app, "configuration reloaded");
    assert!(
        line.contains("removed= ") && line.contains("sections=discovery"),
        "the changed discovery's target is kept: {line}"
    );
    assert_eq!(names(&app), ["ok-trace", "web"]);

    let broken = DISCOVERY.replace("[5m]))'\nname", "[5m])'\nname");
    cfg.write_file("prescale.toml", &format!("{base}{broken}"));
    let line = hang_up_until_logged(&mut app, "configuration reload refused");
    assert!(
        line.contains("ERROR")
            && line.contains("discovery[0]")
            && line.contains("sum by (instance) (rate(http_requests_total{job=")
            && line.contains("failed"),
        "{line}"
    );
    assert_eq!(names(&app), ["ok-trace", "web"], "nothing applied");
    let reloads = lines_with(&app, "configuration reloaded");
    assert_eq!(reloads.len(), 1, "{reloads:?}");
    app.signal("TERM");
    let status = app.wait_exit();
    assert!(status.success(), "exit {status}: {}", app.stderr());
}
