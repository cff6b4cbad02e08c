//! The dashboard in real headless Chromium: the page loads, fetches the API and draws its
//! charts with data. A screenshot is kept at `target/dashboard.png`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use prescale::config::Config;
use prescale::source::replay::{ReplaySource, Trace};
use tokio::sync::oneshot;

/// The Chromium binary, from Debian's `chromium` package.
fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.exists(),
        "chromium is missing: install Debian package chromium (tests/run.sh does)"
    );
    path
}

/// Runs headless Chromium on `url` with `args`, returning stdout.
fn run_chromium(url: &str, profile: &Path, args: &[&str]) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,1500",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `attr` on the element with `id` in serialised HTML.
fn attr(dom: &str, id: &str, attr: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let tag_start = dom[..at].rfind('<')?;
    let tag_end = at + dom[at..].find('>')?;
    let tag = &dom[tag_start..tag_end];
    let key = format!("{attr}=\"");
    let v = tag.find(&key)? + key.len();
    Some(tag[v..v + tag[v..].find('"')?].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_draws_charts_with_data_in_headless_chromium() {
    // Three days of the NASA trace, shifted so that its last bucket ends now.
    let rows = common::read_trace(&common::trace_path());
    let trace = Trace::from_rows(&rows[..3 * 1440]).expect("trace");
    let now = common::now_secs() / 60 * 60;
    let offset = now - (trace.start + trace.counts.len() as i64 * trace.step);
    let source = Arc::new(ReplaySource::new(trace, offset));

    let toml = r#"
[[target]]
name = "web"
request_rate = "replayed"
capacity_rps = 0.1
startup = "5m"
max_replicas = 100
interval = "1s"
history = "2d"
"#;
    let dir = tempfile::tempdir().expect("state dir");
    let config = Config::parse(toml, &dir.path().join("prescale.toml")).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(prescale::serve_with(
        config,
        source,
        prescale::clock::Clock::system(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));

    // Wait for data and a few decisions, so the charts have something to show.
    common::poll_until_async(
        "decisions to be recorded",
        Duration::from_secs(60),
        || async move {
            let (status, body) = tokio::task::spawn_blocking(move || {
                common::http_get(addr, "/api/v1/decisions?target=web")
            })
            .await
            .ok()?
            .ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (status == 200 && v["decisions"].as_array()?.len() >= 2).then_some(())
        },
    )
    .await;

    let url = format!("http://{addr}/");
    let profile = tempfile::tempdir().expect("profile dir");
    let dom = tokio::task::spawn_blocking({
        let (url, profile) = (url.clone(), profile.path().to_owned());
        move || run_chromium(&url, &profile, &["--dump-dom"])
    })
    .await
    .expect("chromium");

    assert!(
        attr(&dom, "updated", "class").is_some(),
        "page served: {dom}"
    );
    let rendered = dom.contains("data-rendered=");
    assert!(rendered, "the page's script completed a refresh: {dom}");
    let demand: usize = attr(&dom, "demand-chart", "data-points")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let replicas: usize = attr(&dom, "replicas-chart", "data-points")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // 24 h of one-minute demand plus an hour of forecast with its band.
    assert!(demand > 1_440, "demand chart shows {demand} values");
    assert!(replicas >= 2, "replicas chart shows {replicas} values");
    assert!(
        dom.matches("<canvas").count() >= 2,
        "uPlot drew its canvases"
    );
    assert!(
        dom.contains("Prediction") || dom.contains("Demand"),
        "decision reasons listed"
    );
    assert!(
        dom.contains("badge ok") || dom.contains("badge degraded"),
        "target state shown"
    );

    // Keep a screenshot as an artifact.
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    // `target/` may not exist when the build goes elsewhere (CARGO_TARGET_DIR).
    std::fs::create_dir_all(shot.parent().expect("a parent")).expect("create target/");
    let arg = format!("--screenshot={}", shot.display());
    let profile2 = tempfile::tempdir().expect("profile dir");
    tokio::task::spawn_blocking({
        let profile = profile2.path().to_owned();
        move || run_chromium(&url, &profile, &[&arg])
    })
    .await
    .expect("chromium screenshot");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot ({} bytes)",
        png.len()
    );

    let _ = stop.send(());
    server
        .await
        .expect("server task")
        .expect("serve returns Ok");
}
