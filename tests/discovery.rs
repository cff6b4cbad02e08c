//! `[[discovery]]` against a real Prometheus scraping a live exporter whose series the test
//! adds and removes: series becoming and stopping being targets of a real `prescale serve`,
//! shown in the API, with signed webhooks to their templated URLs; a clash with a
//! configured target; a failed query that keeps every target; a reload; bad templates
//! refused at start with the file, the discovery and the key; and two instances sharing the
//! targets through a real etcd, each discovered target run by its bucket's owner only.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    AppProcess, Options, Prometheus, Receiver, Reply, SeriesExporter, TempConfig, free_addr,
    poll_until,
};
use serde_json::Value;

const SECRET: &str = "discovery-test-secret";

/// Generous: Prometheus scrapes every second, prescale refreshes every second, and the
/// machine may be busy.
const DEADLINE: Duration = Duration::from_secs(90);

const QUERY: &str = "sum by (namespace, deployment, team) (rate(http_requests_total[5s]))";

/// A label value that must be escaped in a PromQL string literal and in a URL.
const TEAM: &str = r#"o'b"r\ian & co/1"#;

/// Serving on `listen`: a configured target `shop-db` (forecast only), and a discovery
/// making `${namespace}-${deployment}` of every series of [`QUERY`], refreshed every
/// second and removed 3 s after its series goes, its scale webhooks to
/// `hooks/hook/${namespace}/${deployment}?team=${team}`; its request-rate query selects
/// the series by all three labels, so it finds data only when `team` is escaped right.
fn config(prometheus: &str, listen: std::net::SocketAddr, hooks: &Receiver) -> String {
    let hook = hooks.url("/hook/${namespace}/${deployment}?team=${team}");
    format!(
        r#"[prometheus]
url = "{prometheus}"

[server]
listen = "{listen}"

[delivery]
initial_backoff = "50ms"
max_backoff = "200ms"
max_attempts = 10000

[[target]]
name = "shop-db"
request_rate = 'sum(rate(http_requests_total{{deployment="db"}}[10s]))'
capacity_rps = 1
startup = "1m"
max_replicas = 10
mode = "forecast-only"
interval = "1s"
step = "1s"
history = "5m"

[[discovery]]
query = '{QUERY}'
name = "${{namespace}}-${{deployment}}"
refresh = "1s"
remove_after = "3s"

[discovery.template]
request_rate = 'sum(rate(http_requests_total{{namespace="${{namespace}}", deployment="${{deployment}}", team="${{team}}"}}[10s]))'
capacity_rps = 0.5
startup = "1m"
max_replicas = 100
initial_replicas = 1
interval = "1s"
step = "1s"
history = "5m"

[discovery.template.platform]
url = "{hook}"
secret_file = "secret"
"#
    )
}

/// The names `GET /api/v1/targets` lists.
fn listed(app: &AppProcess) -> Option<Vec<String>> {
    let b = app.get_json("/api/v1/targets")?;
    Some(
        b["targets"]
            .as_array()?
            .iter()
            .filter_map(|t| Some(t["name"].as_str()?.to_owned()))
            .collect(),
    )
}

/// The first discovery of `GET /api/v1/discovery`.
fn discovery(app: &AppProcess) -> Option<Value> {
    let b = app.get_json("/api/v1/discovery")?;
    Some(b["discoveries"][0].clone())
}

fn names_in(d: &Value, key: &str) -> Vec<String> {
    d[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some(t["name"].as_str()?.to_owned()))
        .collect()
}

/// Scale webhooks accepted at `path`, their signatures and `team` query value checked.
fn scales_at(hooks: &Receiver, path: &str, team: &str) -> usize {
    hooks
        .accepted()
        .iter()
        .filter(|r| r.path == path)
        .inspect(|r| {
            let pairs = r.query_pairs();
            assert_eq!(
                pairs,
                [("team".to_owned(), team.to_owned())],
                "{:?}",
                r.query
            );
            prescale::act::webhook::verify(
                SECRET.as_bytes(),
                r.header("prescale-signature").expect("a signature"),
                &r.body,
                common::now_secs(),
                300,
            )
            .expect("signed with the template's secret");
            assert_eq!(r.json()["kind"], "scale", "{}", r.json());
        })
        .count()
}

/// The newest pending scale action of `target` that was attempted at least once: its id
/// and the count it asks for.
fn pending_scale(app: &AppProcess, target: &str) -> Option<(u64, u64)> {
    let b = app.get_json(&format!("/api/v1/deliveries?target={target}&state=pending"))?;
    b["deliveries"].as_array()?.iter().find_map(|d| {
        (d["kind"] == "scale" && d["attempts"].as_u64()? >= 1)
            .then(|| Some((d["id"].as_u64()?, d["body"]["to"].as_u64()?)))?
    })
}

/// Series appear and disappear; their targets follow, in the API and at their receivers.
#[test]
fn series_appearing_and_disappearing_become_and_stop_being_targets() {
    let exporter = SeriesExporter::start();
    let web = [("namespace", "shop"), ("deployment", "web"), ("team", TEAM)];
    let db = [
        ("namespace", "shop"),
        ("deployment", "db"),
        ("team", "core"),
    ];
    let api = [
        ("namespace", "shop"),
        ("deployment", "api"),
        ("team", "core"),
    ];
    exporter.set(&web, 1.0);
    exporter.set(&db, 5.0);
    let mut prom = Prometheus::start(Options {
        scrape: Some(exporter.addr()),
        ..Options::default()
    });
    let hooks = Receiver::start(&[]);
    let listen = free_addr();
    let cfg = TempConfig::write(&config(&prom.url(), listen, &hooks));
    cfg.write_file("secret", SECRET);
    let app = AppProcess::serve(&cfg, listen);

    // shop-web is discovered and scales out through its templated URL; shop-db is the
    // configured target, and the series making the same name is a clash.
    poll_until("shop-web and shop-db to be listed", DEADLINE, || {
        let names = listed(&app)?;
        (names.contains(&"shop-web".to_owned()) && names.contains(&"shop-db".to_owned()))
            .then_some(())
    });
    poll_until("a scale webhook at /hook/shop/web", DEADLINE, || {
        (scales_at(&hooks, "/hook/shop/web", TEAM) > 0).then_some(())
    });
    let d = poll_until("the clash to be shown", DEADLINE, || {
        let d = discovery(&app)?;
        let problems = d["problems"].as_array()?;
        problems
            .iter()
            .any(|p| p["kind"] == "clash_with_configured" && p["name"] == "shop-db")
            .then_some(d)
    });
    assert_eq!(names_in(&d, "targets"), ["shop-web"], "{d}");
    assert_eq!(d["targets"][0]["labels"]["team"], TEAM, "{d}");
    assert_eq!(d["query"], QUERY);
    assert!(
        d["last_refresh"].as_i64().is_some() && d["error"].is_null(),
        "{d}"
    );
    let log = app.stderr();
    assert!(
        log.contains("makes target `shop-db`, which is configured"),
        "logged: {log}"
    );

    // A new series becomes a target, with webhooks to its own URL.
    exporter.set(&api, 1.0);
    poll_until("shop-api to be listed", DEADLINE, || {
        listed(&app)?.contains(&"shop-api".to_owned()).then_some(())
    });
    poll_until("a scale webhook at /hook/shop/api", DEADLINE, || {
        (scales_at(&hooks, "/hook/shop/api", "core") > 0).then_some(())
    });

    // A reload (SIGHUP) of the unchanged file keeps the discovered targets.
    app.signal("HUP");
    poll_until("the reload to be logged", DEADLINE, || {
        app.stderr()
            .contains("configuration reloaded")
            .then_some(())
    });
    let log = app.plain_log();
    let line = log
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap_or_default();
    assert!(
        line.contains("targets=3") && !line.contains("removed=shop"),
        "{line}"
    );
    let names = listed(&app).expect("the targets");
    assert!(
        names.contains(&"shop-web".to_owned()) && names.contains(&"shop-api".to_owned()),
        "{names:?}"
    );

    // Prometheus down: the query fails, the error is shown, and no target goes, even
    // past remove_after.
    prom.stop();
    let failed_at = poll_until("the failed query to be shown", DEADLINE, || {
        let d = discovery(&app)?;
        d["error"].as_str()?;
        d["last_refresh"].as_i64()
    });
    poll_until(
        "remove_after to pass with Prometheus down",
        DEADLINE,
        || {
            let d = discovery(&app)?;
            assert_eq!(
                names_in(&d, "targets"),
                ["shop-web", "shop-api"],
                "kept while down: {d}"
            );
            let listed = listed(&app)?;
            assert!(listed.contains(&"shop-web".to_owned()), "{listed:?}");
            (common::now_secs() >= failed_at + 5 && d["error"].as_str().is_some()).then_some(())
        },
    );
    prom.restart();

    // A scale action of shop-web written, and failing, when its series goes.
    hooks.set_then(Reply::status(503));
    exporter.set(&web, 40.0);
    let (id, to) = poll_until("a pending scale action of shop-web", DEADLINE, || {
        pending_scale(&app, "shop-web")
    });

    // The series goes: after remove_after its target leaves the API.
    exporter.remove(&web);
    let mut last_seen = 0;
    poll_until("shop-web to leave the API", DEADLINE, || {
        if let Some(d) = discovery(&app) {
            for t in d["targets"].as_array().into_iter().flatten() {
                if t["name"] == "shop-web" {
                    last_seen = last_seen.max(t["last_seen"].as_i64().unwrap_or(0));
                }
            }
        }
        let names = listed(&app)?;
        (!names.contains(&"shop-web".to_owned()) && names.contains(&"shop-api".to_owned()))
            .then_some(())
    });
    assert!(
        common::now_secs() >= last_seen + 3,
        "removed no sooner than remove_after (3 s) after it was last seen at {last_seen}"
    );
    let d = discovery(&app).expect("the discovery");
    assert_eq!(names_in(&d, "targets"), ["shop-api"], "{d}");
    assert!(d["error"].is_null(), "Prometheus is back: {d}");
    let (status, _) = app.get("/api/v1/targets/shop-web").expect("GET");
    assert_eq!(status, 404, "a removed target is unknown to the API");
    assert!(
        app.stderr().contains("discovered target removed"),
        "{}",
        app.stderr()
    );

    // Its lane finishes: the action written before is still delivered, to its URL.
    let state = |app: &AppProcess| {
        let d = app.get_json(&format!("/api/v1/deliveries/{id}"))?;
        Some(d["state"].as_str()?.to_owned())
    };
    assert_eq!(state(&app).as_deref(), Some("pending"), "not dead-lettered");
    hooks.set_then(Reply::status(200));
    poll_until(
        "the action written before the removal to be delivered",
        DEADLINE,
        || (state(&app)? == "delivered").then_some(()),
    );
    let delivered: Vec<u64> = (hooks.accepted().iter())
        .filter(|r| r.path == "/hook/shop/web")
        .filter_map(|r| r.json()["to"].as_u64())
        .collect();
    assert_eq!(delivered.last(), Some(&to), "{delivered:?}");

    // Nothing more is sent for it, and its gauges are gone.
    let sent = scales_at(&hooks, "/hook/shop/web", TEAM);
    let now = d["last_refresh"].as_i64().expect("a refresh");
    poll_until("three more refreshes", DEADLINE, || {
        (discovery(&app)?["last_refresh"].as_i64()? >= now + 3).then_some(())
    });
    assert_eq!(
        scales_at(&hooks, "/hook/shop/web", TEAM),
        sent,
        "nothing more for shop-web"
    );
    let (_, metrics) = app.get("/metrics").expect("GET /metrics");
    // Counters keep their history; the gauges of a removed target go, as at a reload.
    let gauge = |target: &str| format!("prescale_desired_replicas{{target=\"{target}\"}}");
    assert!(!metrics.contains(&gauge("shop-web")), "{metrics}");
    assert!(metrics.contains(&gauge("shop-api")), "{metrics}");
}

/// `prescale check-config` on `config`: whether it passed, and what it printed.
fn check_config(config: &str) -> (bool, String) {
    let cfg = TempConfig::write(config);
    cfg.write_file("secret", SECRET);
    let out = Command::new(env!("CARGO_BIN_EXE_prescale"))
        .args(["check-config", cfg.path().to_str().expect("a UTF-8 path")])
        .output()
        .expect("run prescale");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A template that cannot make a valid target is refused at start, naming the file, the
/// discovery and the key.
#[test]
fn bad_templates_are_refused_at_start_with_the_key() {
    let hooks = Receiver::start(&[]);
    let good = config("http://127.0.0.1:9", free_addr(), &hooks);
    let (ok, out) = check_config(&good);
    assert!(
        ok && out.contains("discovery[0]: targets `${namespace}-${deployment}`"),
        "{out}"
    );

    let cases = [
        (
            good.replace("team=\"${team}\"}[10s]", "team=\"${pod}\"}[10s]"),
            "discovery[0].template.request_rate",
            "`${pod}`, which the query's series cannot carry",
        ),
        (
            good.replace(
                "[10s]))'\ncapacity_rps = 0.5",
                "[${deployment}]))'\ncapacity_rps = 0.5",
            ),
            "discovery[0].template.request_rate",
            "outside a",
        ),
        (
            good.replace("max_replicas = 100", "max_replicas = 0"),
            "discovery[0].template.max_replicas",
            "sample labels",
        ),
        (
            good.replace("secret_file = \"secret\"\n", ""),
            "discovery[0].template.platform",
            "no signing secret",
        ),
        (
            good.replace("name = \"${namespace}-${deployment}\"", "name = \"shop\""),
            "discovery[0].name",
            "uses no label",
        ),
        (
            good.replace(
                "[discovery.template]\n",
                "[discovery.template]\nname = \"x\"\n",
            ),
            "discovery[0].template.name",
            "expected the name template in `name`",
        ),
    ];
    for (config, key, needle) in cases {
        assert_ne!(config, good, "the case changes the file: {key}");
        let (ok, out) = check_config(&config);
        assert!(!ok, "refused: {key}: {out}");
        assert!(
            out.contains("prescale.toml")
                && out.contains(&format!("key `{key}`"))
                && out.contains(needle),
            "{key} / {needle}: {out}"
        );
    }
}

/// `config` for instance `name` of a cluster over `etcd`.
fn clustered(
    config: &str,
    etcd: &common::Etcd,
    name: &str,
    listen: std::net::SocketAddr,
) -> String {
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    format!(
        "{config}\n[cluster]\netcd = [{}]\nname = \"{name}\"\nadvertise = \"http://{listen}\"\nlease_ttl = \"10s\"\nprefix = \"/prescale-discovery\"\n",
        endpoints.join(", ")
    )
}

/// With `[cluster]` each instance discovers on its own, and each discovered target is run
/// by the owner of its bucket only: every webhook it sends carries that owner's epoch.
#[test]
fn with_a_cluster_each_discovered_target_runs_on_its_owner_only() {
    let etcd = common::Etcd::start(1);
    let exporter = SeriesExporter::start();
    let web = [("namespace", "shop"), ("deployment", "web"), ("team", TEAM)];
    let api = [
        ("namespace", "shop"),
        ("deployment", "api"),
        ("team", "core"),
    ];
    exporter.set(
        &[
            ("namespace", "shop"),
            ("deployment", "db"),
            ("team", "core"),
        ],
        5.0,
    );
    let prom = Prometheus::start(Options {
        scrape: Some(exporter.addr()),
        ..Options::default()
    });
    let hooks = Receiver::start(&[]);
    let apps: Vec<(AppProcess, TempConfig)> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let listen = free_addr();
            let text = clustered(&config(&prom.url(), listen, &hooks), &etcd, name, listen);
            let cfg = TempConfig::write(&text);
            cfg.write_file("secret", SECRET);
            (AppProcess::serve(&cfg, listen), cfg)
        })
        .collect();

    // The buckets shared out (128 each) before any series is discovered, so that no
    // target changes owner while the test watches.
    poll_until("the buckets shared out", DEADLINE, || {
        let c = apps[0].0.get_json("/api/v1/cluster")?;
        let members = c["members"].as_array()?;
        (members.len() == 2 && members.iter().all(|m| m["buckets"] == 128)).then_some(())
    });
    exporter.set(&web, 20.0);
    exporter.set(&api, 20.0);
    for (app, _) in &apps {
        poll_until("each instance to discover both series", DEADLINE, || {
            let mut names = names_in(&discovery(app)?, "targets");
            names.sort();
            (names == ["shop-api", "shop-web"]).then_some(())
        });
    }
    for (target, path, team) in [
        ("shop-web", "/hook/shop/web", TEAM),
        ("shop-api", "/hook/shop/api", "core"),
    ] {
        poll_until("a scale webhook", DEADLINE, || {
            (scales_at(&hooks, path, team) > 0).then_some(())
        });
        let c = apps[1].0.get_json("/api/v1/cluster").expect("the cluster");
        let owned = c["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["target"] == target)
            .unwrap_or_else(|| panic!("{target} in the cluster view: {c}"));
        let epoch = owned["epoch"]
            .as_u64()
            .expect("an owner's epoch")
            .to_string();
        for r in hooks.accepted().iter().filter(|r| r.path == path) {
            assert_eq!(
                r.header("prescale-epoch"),
                Some(epoch.as_str()),
                "{target}: sent by its owner {} only",
                owned["owner"]
            );
        }
    }

    // The series goes: the target leaves both instances.
    exporter.remove(&web);
    for (app, _) in &apps {
        poll_until("shop-web to leave every instance", DEADLINE, || {
            let names = names_in(&discovery(app)?, "targets");
            (names == ["shop-api"]).then_some(())
        });
    }
}
