//! The registry's rules on tokio's paused time: series becoming and stopping being targets,
//! failed queries, clashes, reloads.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::metrics::Metrics;

const FILE: &str = r#"
[prometheus]
url = "http://127.0.0.1:9090"

[[target]]
name = "shop-web"
request_rate = "sum(rate(x[1m]))"
capacity_rps = 1
startup = "1m"
max_replicas = 5

[[discovery]]
query = "sum by (namespace, deployment) (rate(http_requests_total[2m]))"
name = "${namespace}-${deployment}"
refresh = "1s"
remove_after = "10s"
[discovery.template]
request_rate = 'sum(rate(http_requests_total{namespace="${namespace}", deployment="${deployment}"}[2m]))'
capacity_rps = 10
startup = "1m"
max_replicas = 8
"#;

fn config(extra: &str) -> Config {
    Config::parse(&format!("{FILE}{extra}"), Path::new("/etc/prescale.toml"))
        .expect("a valid configuration")
}

fn series(namespace: &str, deployment: &str) -> Labels {
    [("namespace", namespace), ("deployment", deployment)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn names(config: &Config) -> Vec<&str> {
    config.targets.iter().map(|t| t.name.as_str()).collect()
}

fn failed() -> SourceError {
    SourceError::Unreachable {
        query: "q".to_owned(),
        url: "http://127.0.0.1:9090".to_owned(),
        message: "connection refused".to_owned(),
    }
}

async fn advance(secs: u64) {
    tokio::time::advance(Duration::from_secs(secs)).await;
}

#[tokio::test(start_paused = true)]
async fn series_become_targets_and_stop_being_ones_after_remove_after() {
    let file = config("");
    let r = Registry::new(&file, Clock::accelerated(1_000, 1.0), Metrics::new());
    assert_eq!(names(&r.merged(&file)), ["shop-web"]);
    r.observe(0, 0, Ok(vec![series("a", "web"), series("b", "api/v2")]));
    let merged = r.merged(&file);
    assert_eq!(
        names(&merged),
        ["shop-web", "a-web"],
        "b/api/v2 is no valid name"
    );
    let web = merged.target("a-web").expect("discovered");
    assert_eq!(
        web.queries.request_rate,
        r#"sum(rate(http_requests_total{namespace="a", deployment="web"}[2m]))"#
    );
    let status = &r.status()[0];
    assert_eq!(status.last_refresh, Some(1_000));
    assert_eq!(status.problems.len(), 1, "{status:?}");
    assert_eq!(status.problems[0].kind, ProblemKind::Template);
    assert!(
        status.problems[0].message.contains("discovery[0].name"),
        "{status:?}"
    );

    advance(9).await;
    r.observe(0, 0, Ok(vec![]));
    assert_eq!(
        names(&r.merged(&file)),
        ["shop-web", "a-web"],
        "absent 9s of 10s"
    );
    advance(1).await;
    r.observe(0, 0, Ok(vec![]));
    let merged = r.merged(&file);
    assert_eq!(names(&merged), ["shop-web"], "absent 10s: removed");
    assert_eq!(
        names(&r.with_retired(&merged)),
        ["shop-web", "a-web"],
        "its receivers stay"
    );
    assert!(r.status()[0].targets.is_empty() && r.status()[0].problems.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_query_keeps_every_target_and_shows_its_error() {
    let file = config("");
    let r = Registry::new(&file, Clock::accelerated(1_000, 1.0), Metrics::new());
    r.observe(0, 0, Ok(vec![series("a", "web")]));
    advance(60).await;
    r.observe(0, 0, Err(failed()));
    assert_eq!(names(&r.merged(&file)), ["shop-web", "a-web"]);
    let status = &r.status()[0];
    assert!(
        status
            .error
            .as_deref()
            .is_some_and(|e| e.contains("connection refused"))
    );
    assert_eq!(status.last_refresh, Some(1_000), "the last success");
    r.observe(0, 0, Ok(vec![series("a", "web")]));
    assert_eq!(r.status()[0].error, None);
    assert_eq!(names(&r.merged(&file)), ["shop-web", "a-web"]);
}

#[tokio::test(start_paused = true)]
async fn a_clash_keeps_the_configured_or_the_first_target_and_is_shown() {
    let second = r#"
[[discovery]]
query = "sum by (team, deployment) (up)"
name = "${team}-${deployment}"
[discovery.template]
request_rate = 'sum(up{deployment="${deployment}"})'
capacity_rps = 1
startup = "1m"
max_replicas = 3
"#;
    let file = config(second);
    let metrics = Metrics::new();
    let r = Registry::new(&file, Clock::accelerated(1_000, 1.0), metrics.clone());
    r.observe(0, 0, Ok(vec![series("shop", "web"), series("a", "web")]));
    advance(1).await;
    let team = |t: &str, d: &str| -> Labels {
        [("team", t), ("deployment", d)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    r.observe(1, 0, Ok(vec![team("a", "web"), team("b", "db")]));
    assert_eq!(names(&r.merged(&file)), ["shop-web", "a-web", "b-db"]);
    let status = r.status();
    let kinds =
        |i: usize| -> Vec<ProblemKind> { status[i].problems.iter().map(|p| p.kind).collect() };
    assert_eq!(kinds(0), [ProblemKind::ClashWithConfigured]);
    assert_eq!(kinds(1), [ProblemKind::ClashWithDiscovered]);
    assert!(
        status[1].problems[0].message.contains("discovery[0]"),
        "{status:?}"
    );
    let a_web = &status[0].targets[0];
    assert_eq!(
        (a_web.name.as_str(), &a_web.labels),
        ("a-web", &series("a", "web"))
    );
    assert_eq!(status[1].targets[0].name, "b-db");
    let text = metrics.encode();
    for line in [
        r#"prescale_discovered_targets{discovery="0"} 1"#,
        r#"prescale_discovery_problems{discovery="1"} 1"#,
        r#"prescale_discovery_refreshes_total{discovery="1",outcome="ok"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_an_unchanged_discovery_and_drops_an_older_refresh() {
    let file = config("");
    let r = Registry::new(&file, Clock::accelerated(1_000, 1.0), Metrics::new());
    r.observe(0, 0, Ok(vec![series("a", "web")]));
    r.reconfigure(&file);
    assert_eq!(names(&r.merged(&file)), ["shop-web", "a-web"], "kept");
    r.observe(0, 0, Ok(vec![]));
    advance(30).await;
    r.observe(0, 0, Ok(vec![]));
    assert_eq!(
        names(&r.merged(&file)),
        ["shop-web", "a-web"],
        "a refresh from before the reload is dropped"
    );
    let changed = Config::parse(
        &FILE.replace("max_replicas = 8", "max_replicas = 9"),
        Path::new("/etc/prescale.toml"),
    )
    .expect("valid");
    r.reconfigure(&changed);
    assert_eq!(
        names(&r.merged(&changed)),
        ["shop-web"],
        "a changed discovery starts afresh"
    );
    assert_eq!(
        names(&r.with_retired(&r.merged(&changed))),
        ["shop-web", "a-web"]
    );
}

/// A reload names the discoveries it would start afresh (new or changed, not the ones
/// kept), and a changed one starts from what its query answered: its targets run on.
#[tokio::test(start_paused = true)]
async fn a_changed_discovery_starts_from_its_first_answer() {
    let file = config("");
    let r = Registry::new(&file, Clock::accelerated(1_000, 1.0), Metrics::new());
    r.observe(0, 0, Ok(vec![series("a", "web")]));
    assert!(r.fresh(&file).is_empty(), "an unchanged discovery is kept");
    let changed = Config::parse(
        &FILE.replace("max_replicas = 8", "max_replicas = 9"),
        Path::new("/etc/prescale.toml"),
    )
    .expect("valid");
    let fresh = r.fresh(&changed);
    assert_eq!(fresh, [(0, changed.discovery[0].query.clone())]);
    r.reconfigure_with(&changed, vec![(0, vec![series("a", "web")])]);
    let merged = r.merged(&changed);
    assert_eq!(
        names(&merged),
        ["shop-web", "a-web"],
        "kept through the reload"
    );
    assert_eq!(merged.target("a-web").map(|t| t.max_replicas), Some(9));
    assert_eq!(r.status()[0].error, None);
}
