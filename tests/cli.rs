//! The `prescale` binary as a user runs it: `check-config`, `backtest` on a real trace, and
//! `serve` stopping cleanly on SIGTERM.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Backfill, Options, Prometheus, TempConfig, poll_until};

fn prescale(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prescale"))
        .args(args)
        .output()
        .expect("run prescale")
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

#[test]
fn check_config_accepts_the_shipped_example() {
    let out = prescale(&[
        "check-config",
        repo("config/prescale.toml").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("prescale.toml: ok") && stdout.contains("web:"),
        "{stdout}"
    );
}

#[test]
fn check_config_names_the_file_and_the_unknown_key() {
    let example = std::fs::read_to_string(repo("config/prescale.toml")).unwrap();
    let cfg = TempConfig::write(
        &example.replace("max_replicas = 40", "max_replicas = 40\nmax_replica = 4"),
    );
    let out = prescale(&["check-config", cfg.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("prescale.toml") && stderr.contains("unknown field `max_replica`"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no summary on error");

    let out = prescale(&["check-config", "/nonexistent/prescale.toml"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/prescale.toml: cannot read"));
}

/// `check-config` says plainly, under each target, when it will send nothing (or no scale
/// actions) and why; a target that acts on a platform and knows what runs gets no such line.
#[test]
fn check_config_says_when_a_target_sends_nothing_and_why() {
    use common::{TestConfig, TestTarget};
    let hook = "http://127.0.0.1:9/scale";
    let config = TestConfig::new()
        .prometheus("http://127.0.0.1:9")
        .target(
            TestTarget::new("quiet", "q")
                .set("capacity_rps", 1)
                .set("startup", "1m")
                .set("max_replicas", 4),
        )
        .target(
            TestTarget::new("watching", "q")
                .set("capacity_rps", 1)
                .set("startup", "1m")
                .set("max_replicas", 4)
                .set("mode", "forecast-only")
                .set("initial_replicas", 1)
                .platform(hook, "secret"),
        )
        .target(
            TestTarget::new("weights", "q")
                .set("capacity_rps", 1)
                .set("startup", "1m")
                .set("max_replicas", 4)
                .balancer(hook, "secret"),
        )
        .target(
            TestTarget::new("unknown", "q")
                .set("capacity_rps", 1)
                .set("startup", "1m")
                .set("max_replicas", 4)
                .platform(hook, "secret"),
        )
        .target(
            TestTarget::new("acting", "q")
                .set("capacity_rps", 1)
                .set("startup", "1m")
                .set("max_replicas", 4)
                .set("initial_replicas", 2)
                .platform(hook, "secret"),
        );
    let cfg = config.write();
    cfg.write_file("secret", "s3cret");
    let out = prescale(&["check-config", cfg.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // The line that follows the target's own line (or None when the next is a target's).
    let note = |name: &str| -> Option<String> {
        let mut lines = stdout
            .lines()
            .skip_while(|l| !l.starts_with(&format!("  {name}:")));
        lines
            .next()
            .unwrap_or_else(|| panic!("no line for {name}:\n{stdout}"));
        lines
            .next()
            .filter(|l| l.starts_with("    "))
            .map(|l| l.trim().to_owned())
    };
    let quiet = note("quiet").unwrap_or_default();
    assert!(
        quiet.starts_with("sends nothing: no [target.platform] and no [target.balancer]")
            && quiet.contains("keda_listen"),
        "{stdout}"
    );
    let watching = note("watching").unwrap_or_default();
    assert!(
        watching.starts_with("sends nothing: mode = \"forecast-only\""),
        "{stdout}"
    );
    assert!(
        note("weights")
            .unwrap_or_default()
            .starts_with("sends no scale actions: no [target.platform]"),
        "{stdout}"
    );
    let unknown = note("unknown").unwrap_or_default();
    assert!(
        unknown.starts_with("asks for nothing until its running count is known")
            && unknown.contains("initial_replicas"),
        "{stdout}"
    );
    assert_eq!(note("acting"), None, "{stdout}");

    // With an external scaler for KEDA, a target without a platform says who reads it.
    let keda = common::free_addr();
    let cfg = TestConfig::new()
        .prometheus("http://127.0.0.1:9")
        .set("server", "keda_listen", keda.to_string())
        .target(TestTarget::web())
        .write();
    let out = prescale(&["check-config", cfg.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "KEDA may read its count from the external scaler on {keda}"
        )),
        "{stdout}"
    );
}

fn backtest(trace: &Path, out: &Path) -> Vec<csv::StringRecord> {
    let o = prescale(&[
        "backtest",
        "--trace",
        trace.to_str().unwrap(),
        "--capacity",
        "0.1",
        "--startup",
        "5m",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "backtest failed: {}", text(&o.stderr));
    let mut r = csv::Reader::from_path(out).expect("decisions csv");
    let header: Vec<String> = r.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(
        header,
        [
            "timestamp",
            "demand_rps",
            "forecast_rps",
            "upper_rps",
            "replicas",
            "capacity_rps",
            "reason"
        ]
    );
    r.records().map(|r| r.expect("row")).collect()
}

/// One row per trace step, and cutting the trace after N days leaves the first N days of
/// decisions unchanged: no decision looks ahead.
#[test]
fn backtest_writes_a_row_per_step_without_look_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let rows = common::read_trace(&common::trace_path());
    let write = |name: &str, rows: &[(i64, f64)]| {
        let p = dir.path().join(name);
        let body: String = rows.iter().map(|(t, v)| format!("{t},{v}\n")).collect();
        std::fs::write(&p, format!("timestamp_seconds,value\n{body}")).unwrap();
        p
    };
    // Three days, and the same cut after two.
    let three = write("three.csv", &rows[..3 * 1440]);
    let two = write("two.csv", &rows[..2 * 1440]);
    let full = backtest(&three, &dir.path().join("three.out.csv"));
    let cut = backtest(&two, &dir.path().join("two.out.csv"));
    assert_eq!(full.len(), 3 * 1440, "a row per step");
    assert_eq!(cut.len(), 2 * 1440);
    for (i, (a, b)) in cut.iter().zip(&full).enumerate() {
        assert_eq!(a, b, "row {i} changed when later data was added");
    }
    for (row, (ts, _)) in full.iter().zip(&rows) {
        assert_eq!(row[0].parse::<i64>().unwrap(), *ts);
        assert!(row[4].parse::<u32>().unwrap() >= 1);
    }
    // Scaling follows the day: more replicas at the daily peak than overnight.
    let replicas: Vec<u32> = full.iter().map(|r| r[4].parse().unwrap()).collect();
    let (lo, hi) = (
        replicas[1440..].iter().min().unwrap(),
        replicas[1440..].iter().max().unwrap(),
    );
    assert!(hi >= &(lo * 3), "replicas range {lo}..{hi}");
}

#[test]
fn backtest_rejects_bad_input_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "timestamp_seconds,value\n0,1\n60,oops\n").unwrap();
    let out_path = dir.path().join("out.csv");
    let o = prescale(&[
        "backtest",
        "--trace",
        bad.to_str().unwrap(),
        "--capacity",
        "1",
        "--startup",
        "1m",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("bad.csv:3: bad value `oops`"),
        "{}",
        text(&o.stderr)
    );
    assert!(!out_path.exists(), "nothing written on bad input");
    let o = prescale(&[
        "backtest",
        "--trace",
        "x.csv",
        "--capacity",
        "0",
        "--startup",
        "1m",
        "--out",
        "y.csv",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--capacity"),
        "{}",
        text(&o.stderr)
    );
}

/// `prescale serve` answers health checks and exits 0 on SIGTERM.
#[test]
fn serve_stops_cleanly_on_sigterm() {
    let prom = Prometheus::backfilled(1);
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = TempConfig::write(&common::minimal_config(
        &prom.url(),
        listen,
        "history = \"6h\"\ninterval = \"1s\"",
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_prescale"))
        .args(["serve", "--config", cfg.path().to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn prescale serve");
    poll_until("prescale to be ready", Duration::from_secs(60), || {
        matches!(common::http_get(listen, "/readyz"), Ok((200, _))).then_some(())
    });
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = poll_until("prescale to exit", Duration::from_secs(20), || {
        child.try_wait().ok().flatten()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
}

/// `--summary` writes the scores of prescale, the HPA at 0.5–0.9 and the clairvoyant
/// scaler; `--plot` draws the SVG; the table goes to stdout.
#[test]
fn backtest_scores_against_the_hpa_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let rows = common::read_trace(&common::trace_path());
    let body: String = rows[..3 * 1440]
        .iter()
        .map(|(t, v)| format!("{t},{v}\n"))
        .collect();
    let trace = dir.path().join("t.csv");
    std::fs::write(&trace, format!("timestamp_seconds,value\n{body}")).unwrap();
    let (out, summary, plot) = (
        dir.path().join("out.csv"),
        dir.path().join("summary.json"),
        dir.path().join("plot.svg"),
    );
    let o = prescale(&[
        "backtest",
        "--trace",
        trace.to_str().unwrap(),
        "--capacity",
        "0.1",
        "--startup",
        "5m",
        "--skip",
        "2d",
        "--out",
        out.to_str().unwrap(),
        "--summary",
        summary.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let table = text(&o.stdout);
    for name in ["prescale", "hpa@0.5", "hpa@0.9", "clairvoyant"] {
        assert!(table.contains(name), "{table}");
    }
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(s["skip_seconds"], 172_800, "{s}");
    for key in ["hpa@0.5", "hpa@0.6", "hpa@0.7", "hpa@0.8", "hpa@0.9"] {
        assert!(s["hpa"][key]["lost_pct"].is_number(), "{key}: {s}");
    }
    let clair = &s["clairvoyant"];
    assert_eq!(clair["lost_pct"], 0.0, "{s}");
    for scaler in [&s["prescale"], &s["hpa"]["hpa@0.7"]] {
        for key in ["lost_pct", "under_provisioned_pct", "replica_hours"] {
            assert!(scaler[key].as_f64().unwrap() >= 0.0, "{key}: {s}");
        }
        // Nobody serves the day for fewer replica-hours than the clairvoyant scaler.
        assert!(
            scaler["replica_hours"].as_f64() >= clair["replica_hours"].as_f64(),
            "{s}"
        );
        assert!(scaler["scale_changes"].as_u64().unwrap() > 0, "{s}");
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("serving capacity"),
        "{}",
        &svg[..100.min(svg.len())]
    );
}

/// `--prometheus URL --query Q --from --to` replays a range of a real Prometheus: a row per
/// step, the demand being what Prometheus returns.
#[test]
fn backtest_replays_a_range_from_prometheus() {
    let fill = Backfill::from_trace(1);
    let prom = Prometheus::start(Options {
        backfill: Some(fill.clone()),
        scrape: None,
        port: None,
        openmetrics: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.csv");
    let (from, to) = (fill.start() + 3_600, fill.end());
    let o = prescale(&[
        "backtest",
        "--prometheus",
        &prom.url(),
        "--query",
        common::RATE_QUERY,
        "--from",
        &from.to_string(),
        "--to",
        &to.to_string(),
        "--capacity",
        "0.1",
        "--startup",
        "5m",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut r = csv::Reader::from_path(&out).unwrap();
    let rows: Vec<csv::StringRecord> = r.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len() as i64, (to - from) / 60 + 1);
    for row in rows.iter().step_by(97) {
        let ts: i64 = row[0].parse().unwrap();
        let demand: f64 = row[1].parse().unwrap();
        // The bucket starting at `ts` is the rate sampled at its end.
        let want = fill.rate(ts + 60, 300).expect("trace rate");
        assert!(
            (demand - want).abs() <= 1e-9 * want.max(1.0),
            "at {ts}: {demand} vs {want}"
        );
    }
    // A query that matches nothing is an error naming the query.
    let o = prescale(&[
        "backtest",
        "--prometheus",
        &prom.url(),
        "--query",
        "nothing_here",
        "--from",
        &from.to_string(),
        "--to",
        &to.to_string(),
        "--capacity",
        "0.1",
        "--startup",
        "5m",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("nothing_here"),
        "{}",
        text(&o.stderr)
    );
}

/// A `prescale serve` child process with its stderr captured; killed on drop.
struct Serve {
    child: std::process::Child,
    listen: std::net::SocketAddr,
    _config: TempConfig,
}

impl Serve {
    fn start(prometheus_url: &str, models: &Path) -> Self {
        let listen = format!("127.0.0.1:{}", common::free_port())
            .parse()
            .unwrap();
        let text = common::minimal_config(
            prometheus_url,
            listen,
            "history = \"3d\"\ninterval = \"1s\"",
        )
        .replace(
            "[[target]]",
            &format!(
                "[forecast]\nmodels_dir = \"{}\"\n\n[[target]]",
                models.display()
            ),
        );
        let config = TempConfig::write(&text);
        let child = Command::new(env!("CARGO_BIN_EXE_prescale"))
            .args(["serve", "--config", config.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn prescale serve");
        Self {
            child,
            listen,
            _config: config,
        }
    }

    fn get(&self, path: &str) -> Option<(u16, serde_json::Value)> {
        let (status, body) = common::http_get(self.listen, path).ok()?;
        Some((status, serde_json::from_str(&body).unwrap_or_default()))
    }

    /// SIGKILL, then everything it logged.
    fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        stderr
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kill -9 and restart `prescale serve`: with Prometheus down, the forecast endpoint still
/// answers from the saved model, before any refit. Then a corrupt model file is skipped with
/// a warning and replaced by a refitted one.
#[test]
fn restart_forecasts_from_the_saved_model_and_skips_a_corrupt_one() {
    let mut prom = Prometheus::backfilled(3);
    let models = tempfile::tempdir().unwrap();
    let file = models.path().join("web.json");
    let read_saved = || -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(&file).ok()?).ok()
    };

    let first = Serve::start(&prom.url(), models.path());
    let saved = poll_until(
        "the model to be saved",
        Duration::from_secs(120),
        read_saved,
    );
    let fitted_at = saved["forecaster"]["state"]["fitted_at"].as_i64().unwrap();
    let model = saved["forecaster"]["state"]["fitted"]["kind"].clone();
    first.kill();

    prom.stop();
    let second = Serve::start(&prom.url(), models.path());
    let (_, forecast) = poll_until("a forecast", Duration::from_secs(60), || {
        second
            .get("/api/v1/targets/web/forecast?horizon=30m")
            .filter(|(s, _)| *s == 200)
    });
    let points = forecast["points"].as_array().unwrap();
    assert!(points.len() >= 30, "{forecast}");
    assert!(
        points
            .iter()
            .all(|p| p["lower"].as_f64() <= p["value"].as_f64()
                && p["value"].as_f64() <= p["upper"].as_f64())
    );
    // Capacity is resolved by the first cycle, which may still be polling.
    let (_, detail) = poll_until("a first decision", Duration::from_secs(60), || {
        second
            .get("/api/v1/targets/web")
            .filter(|(_, d)| !d["last_decision"].is_null())
    });
    assert_eq!(
        detail["forecast_model"]["fitted_at"].as_i64(),
        Some(fitted_at),
        "{detail}"
    );
    assert!(!model.is_null());
    // Capacity and bottleneck are reported: 2 replicas × 150 rps configured, far above the
    // trace's ~1 rps, so no breach within the horizon (and +Inf seconds to it).
    assert_eq!(detail["capacity"]["source"], "configured", "{detail}");
    assert_eq!(detail["capacity_rps"].as_f64(), Some(150.0), "{detail}");
    assert_eq!(
        detail["bottleneck"]["capacity_rps"].as_f64(),
        Some(300.0),
        "{detail}"
    );
    assert!(detail["bottleneck"]["breach"].is_null(), "{detail}");
    let (_, metrics) = common::http_get(second.listen, "/metrics").unwrap();
    assert!(
        metrics.contains("prescale_seconds_to_bottleneck{target=\"web\"} inf"),
        "{metrics}"
    );
    let log = second.kill();
    assert!(log.contains("model loaded"), "{log}");

    std::fs::write(&file, "{ not a model").unwrap();
    prom.restart();
    let third = Serve::start(&prom.url(), models.path());
    // The corrupt content does not parse; a refitted model replaces it.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let refitted = loop {
        if let Some(v) = read_saved() {
            break v;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "the corrupt model file was not replaced; log:\n{}",
                third.kill()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(refitted["format_version"], 1);
    let log = third.kill();
    assert!(
        log.contains("model file skipped") && log.contains("corrupt model file"),
        "{log}"
    );
}

/// The password in every URL of [`credentials_config`], and the signing secret of its
/// webhook: none may appear in any output.
const PASSWORD: &str = "hunter2";

/// A configuration whose URLs all carry credentials: Prometheus at `prometheus` (a real
/// one ignores them), a platform webhook and Alertmanager on ports where nothing listens,
/// so that every delivery fails; the target scales at once (2 rps per replica at most).
fn credentials_config(prometheus: &str, listen: std::net::SocketAddr) -> common::TestConfig {
    let closed = common::free_port();
    let with = |user: &str, rest: &str| format!("http://{user}:{PASSWORD}@127.0.0.1:{rest}");
    common::TestConfig::new()
        .prometheus(prometheus)
        .listen(listen)
        .alertmanager(&with("am", &format!("{closed}/")), "30m")
        .set("delivery", "max_attempts", 2)
        .set("delivery", "initial_backoff", "10ms")
        .set("delivery", "max_backoff", "20ms")
        .target(
            common::TestTarget::new("web", common::RATE_QUERY)
                .set("capacity_rps", 0.05)
                .set("startup", "1m")
                .set("max_replicas", 100)
                // No replicas query: a start count, so that it scales (and delivery fails).
                .set("initial_replicas", 1)
                .set("interval", "1s")
                .set("history", "6h")
                .platform(&with("hook", &format!("{closed}/scale")), "signing.key"),
        )
}

/// Everything `app` answers on the API (as text), for a search.
fn api_answers(app: &common::AppProcess) -> String {
    let paths = [
        "/readyz",
        "/metrics",
        "/api/v1/targets",
        "/api/v1/targets/web",
        "/api/v1/decisions",
        "/api/v1/deliveries",
    ];
    paths
        .iter()
        .map(|p| app.get(p).map(|(_, body)| body).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Credentials in URLs (Prometheus, Alertmanager, webhooks) and the signing secret never
/// appear in `check-config`'s output or errors, in the log of `serve` while deliveries and
/// polls fail, nor in any API answer.
#[test]
fn credentials_in_urls_appear_in_no_output() {
    let prom = Prometheus::backfilled(1);
    let leak = |what: &str, text: &str| {
        assert!(
            !text.contains(PASSWORD),
            "{what} shows a credential:\n{text}"
        );
    };
    let listen = common::free_addr();
    let prom_url = format!("http://prom:{PASSWORD}@127.0.0.1:{}", prom.port());
    let cfg = credentials_config(&prom_url, listen).write();
    cfg.write_file("signing.key", &format!("signing-{PASSWORD}"));
    let out = prescale(&["check-config", cfg.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    leak("check-config", &(text(&out.stdout) + &text(&out.stderr)));
    assert!(
        text(&out.stdout).contains("http://***@127.0.0.1"),
        "{}",
        text(&out.stdout)
    );
    // A URL that is refused is shown without its credentials too.
    let bad = TempConfig::write(&cfg_text_with_prometheus(
        &cfg,
        &format!("ftp://u:{PASSWORD}@h/"),
    ));
    let out = prescale(&["check-config", bad.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("prometheus.url"),
        "{}",
        text(&out.stderr)
    );
    leak("check-config's error", &text(&out.stderr));

    // Deliveries fail (nothing listens): errors in the log and the API.
    let mut app = common::AppProcess::serve(&cfg, listen);
    app.wait_ready();
    poll_until("a failed delivery", Duration::from_secs(60), || {
        let d = app.get_json("/api/v1/deliveries?target=web")?;
        d["deliveries"]
            .as_array()?
            .iter()
            .any(|d| d["attempts"].as_u64() >= Some(1) && d["last_error"].is_string())
            .then_some(())
    });
    leak("the API", &api_answers(&app));
    leak("the log", &(app.stderr() + &app.stdout()));
    app.kill();

    // Prometheus unreachable: the poll errors name the URL, without credentials.
    drop(prom);
    let listen = common::free_addr();
    let down = format!("http://prom:{PASSWORD}@127.0.0.1:{}", common::free_port());
    credentials_config(&down, listen).write_over(&cfg);
    let app = common::AppProcess::serve(&cfg, listen);
    let reasons = poll_until("a failed poll", Duration::from_secs(60), || {
        let d = app.get_json("/api/v1/targets/web")?;
        let r = d["degraded_reasons"]
            .as_array()?
            .first()?
            .as_str()?
            .to_owned();
        r.contains("cannot reach").then_some(r)
    });
    assert!(reasons.contains("http://127.0.0.1:"), "{reasons}");
    poll_until("the failure logged", Duration::from_secs(60), || {
        app.stderr().contains("poll failed").then_some(())
    });
    leak("the API", &api_answers(&app));
    leak("the log", &(app.stderr() + &app.stdout()));
}

/// `cfg`'s text with `[prometheus] url` replaced by `url`.
fn cfg_text_with_prometheus(cfg: &TempConfig, url: &str) -> String {
    let text = std::fs::read_to_string(cfg.path()).expect("read the configuration");
    let mut table: toml::Table = text.parse().expect("TOML");
    table["prometheus"]["url"] = toml::Value::from(url);
    toml::to_string(&table).expect("TOML")
}

/// While a target backfills, `/readyz` answers 503, which is expected and logged at DEBUG,
/// not as an ERROR at every probe (a real server error stays ERROR).
#[test]
fn not_ready_answers_are_not_logged_as_errors() {
    let listen = common::free_addr();
    // A Prometheus that takes connections and never answers, with a long timeout: the
    // first poll stays in flight, so the target stays backfilling (a poll that fails makes
    // it degraded, and the instance ready).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", silent.local_addr().expect("address"));
    let toml = common::minimal_config(&url, listen, "interval = \"1s\"").replacen(
        "[prometheus]\n",
        "[prometheus]\ntimeout = \"10m\"\n",
        1,
    );
    let cfg = TempConfig::write(&toml);
    let app = common::AppProcess::serve(&cfg, listen);
    for i in 0..5 {
        let (status, body) = poll_until("an answer from /readyz", Duration::from_secs(60), || {
            app.get("/readyz").ok()
        });
        assert_eq!(status, 503, "probe {i}: {body}");
        assert!(body.contains("web: not backfilled yet"), "{body}");
    }
    let log = app.stderr();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "ERROR lines:\n{}", errors.join("\n"));
}

/// A `[cluster]` section is read and checked (`check-config` shows it); `serve` with an
/// etcd it cannot reach exits 1, naming the file, the section, the instance and the
/// endpoint, and acts on nothing.
#[test]
fn serve_with_an_etcd_it_cannot_reach_exits_naming_the_file_and_the_endpoint() {
    let listen = common::free_addr();
    let toml = common::TestConfig::new()
        .prometheus("http://127.0.0.1:9")
        .listen(listen)
        .set("state", "dir", "state")
        .target(common::TestTarget::web())
        .to_toml();
    let etcd = common::free_port();
    let cfg = TempConfig::write(&format!(
        "{toml}\n[cluster]\netcd = [\"http://127.0.0.1:{etcd}\"]\nname = \"east-1\"\nlease_ttl = \"3s\"\n"
    ));
    let out = prescale(&["check-config", cfg.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("cluster: instance east-1 (advertised at http://"),
        "{}",
        text(&out.stdout)
    );
    let mut app = common::AppProcess::serve(&cfg, listen);
    let status = app.wait_exit();
    let stderr = app.stderr();
    assert_eq!(status.code(), Some(1), "exit status {status}: {stderr}");
    assert!(
        stderr.contains(&cfg.path().display().to_string())
            && stderr.contains("[cluster]")
            && stderr.contains("east-1")
            && stderr.contains(&format!("127.0.0.1:{etcd}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `backtest --config` replays the first target's `[[target.schedule]]` windows on the
/// trace's clock: over the NASA trace (from Saturday 1 July 1995), a weekday window at
/// 09:00 New York time is asked for `--startup` plus a step before it opens, on Monday
/// only.
#[test]
fn backtest_honours_the_schedule_of_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let rows = common::read_trace(&common::trace_path());
    let trace = dir.path().join("three.csv");
    let body: String = rows[..3 * 1440]
        .iter()
        .map(|(t, v)| format!("{t},{v}\n"))
        .collect();
    std::fs::write(&trace, format!("timestamp_seconds,value\n{body}")).unwrap();
    let cfg = TempConfig::write(
        r#"
[[target]]
name = "nasa"
request_rate = "trace"
capacity_rps = 100
startup = "5m"
max_replicas = 100
[[target.schedule]]
cron = "0 9 * * MON-FRI"
duration = "8h"
timezone = "America/New_York"
min_replicas = 40
"#,
    );
    let out = dir.path().join("out.csv");
    let o = prescale(&[
        "backtest",
        "--trace",
        trace.to_str().unwrap(),
        "--config",
        cfg.path().to_str().unwrap(),
        "--startup",
        "5m",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "backtest failed: {}", text(&o.stderr));
    let mut r = csv::Reader::from_path(&out).expect("decisions csv");
    let floored: Vec<i64> = r
        .records()
        .map(|r| r.expect("row"))
        .filter(|r| r[4].parse::<u32>().unwrap() >= 40)
        .map(|r| r[0].parse().unwrap())
        .collect();
    // Monday 3 July 1995, 09:00 EDT = 13:00 UTC; 5m + one 1m step ahead.
    let open = 804_776_400;
    assert_eq!(floored.first(), Some(&(open - 360)), "{floored:?}");
    assert!(floored.contains(&(open + 8 * 3600 - 60)));
    assert!(floored.iter().all(|&t| t < open + 8 * 3600 + 600));
}

/// A trace of `rows` minutes of steady demand, written in `dir`.
fn steady_trace(dir: &Path, rows: usize) -> PathBuf {
    let path = dir.join(format!("steady-{rows}.csv"));
    let body: String = (0..rows)
        .map(|i| format!("{},600\n", 1_000_020 + 60 * i))
        .collect();
    std::fs::write(&path, format!("timestamp_seconds,value\n{body}")).unwrap();
    path
}

/// `tune` refuses what it cannot score, before replaying, with an error saying why, a
/// non-zero exit and nothing written: a warm-up longer than the trace, a trace of three
/// rows, a loss cap of 150 % (it once printed a row of zeros per dial, "recommended",
/// exited 0 and wrote the configuration).
#[test]
fn tune_refuses_what_it_cannot_score() {
    let dir = tempfile::tempdir().unwrap();
    let two_days = steady_trace(dir.path(), 2 * 1440);
    let three_rows = steady_trace(dir.path(), 3);
    let written = dir.path().join("tuned.toml");
    let tune = |trace: &Path, extra: &[&str]| {
        let mut args = vec![
            "tune",
            "--trace",
            trace.to_str().unwrap(),
            "--capacity",
            "1",
            "--startup",
            "5m",
            "--steps",
            "2",
            "--write",
            written.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        prescale(&args)
    };
    for (trace, extra, says) in [
        (
            &two_days,
            &["--skip", "3d"][..],
            "-86400 s of the trace would be scored",
        ),
        (&two_days, &["--skip", "1d 1h"][..], "82800 s"),
        (&three_rows, &[][..], "180 s of the trace would be scored"),
        (&two_days, &["--objective", "lost=150%"][..], "under 100%"),
    ] {
        let o = tune(trace, extra);
        let (out, err) = (text(&o.stdout), text(&o.stderr));
        assert!(!o.status.success(), "{extra:?}: exit 0\n{out}\n{err}");
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(!out.contains("recommended"), "{extra:?}: {out}");
        assert!(!written.exists(), "{extra:?}: a configuration was written");
    }
}

/// `backtest`, `tune` and `forecast --config` take the one `[[target]]` of the file, or the
/// one `--target` names; with `[[discovery]]` alone, several targets and no `--target`, or
/// an unknown name, each exits non-zero naming what is missing (they once panicked on a
/// discovery-only file).
#[test]
fn replays_name_the_target_they_take_the_policy_from() {
    let dir = tempfile::tempdir().unwrap();
    let trace = steady_trace(dir.path(), 3 * 1440);
    let trace = trace.to_str().unwrap();
    let out = dir.path().join("out.csv");
    let out = out.to_str().unwrap();
    let discovered = TempConfig::write(
        r#"[prometheus]
url = "http://127.0.0.1:9090"

[[discovery]]
query = 'sum by (service) (rate(http_requests_total[5m]))'
name = "${service}"

[discovery.template]
request_rate = 'sum(rate(http_requests_total{service="${service}"}[5m]))'
capacity_rps = 10
startup = "1m"
max_replicas = 100
"#,
    );
    let target = |name: &str, min: u32| {
        format!(
            "[[target]]\nname = \"{name}\"\nrequest_rate = 'up'\ncapacity_rps = 10\n\
             startup = \"1m\"\nmin_replicas = {min}\nmax_replicas = 100\n"
        )
    };
    let two = TempConfig::write(&format!(
        "[prometheus]\nurl = \"http://127.0.0.1:9090\"\n\n{}\n{}",
        target("api", 2),
        target("web", 70)
    ));
    let run = |command: &str, cfg: &TempConfig, extra: &[&str]| {
        let mut args = vec![command, "--trace", trace];
        if command != "tune" {
            args.extend(["--out", out]);
        }
        if command == "forecast" {
            args.extend(["--horizon", "1h"]);
        } else {
            args.extend(["--startup", "1m"]);
        }
        if command == "tune" {
            args.extend(["--steps", "1", "--refine", "0"]);
        }
        args.extend(["--config", cfg.path().to_str().unwrap()]);
        args.extend_from_slice(extra);
        prescale(&args)
    };
    for command in ["backtest", "tune", "forecast"] {
        let o = run(command, &discovered, &[]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{command}: {err}");
        assert!(
            err.contains("no [[target]] to replay")
                && err.contains("[[discovery]]")
                && err.contains(&discovered.path().display().to_string())
                && !err.contains("panicked"),
            "{command}: {err}"
        );
        let o = run(command, &two, &[]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{command}: {err}");
        assert!(
            err.contains("2 targets (`api`, `web`)") && err.contains("--target NAME"),
            "{command}: {err}"
        );
        let o = run(command, &two, &["--target", "db"]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{command}: {err}");
        assert!(
            err.contains("no [[target]] named `db`; the targets are `api`, `web`"),
            "{command}: {err}"
        );
    }
    // The named target's policy is the one replayed: `web`'s floor of 70.
    let o = run("backtest", &two, &["--target", "web"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut rows = csv::Reader::from_path(out).expect("decisions csv");
    let replicas: Vec<u32> = rows
        .records()
        .map(|r| r.expect("row")[4].parse().expect("replicas"))
        .collect();
    assert!(
        !replicas.is_empty() && replicas.iter().all(|&r| r >= 70),
        "{replicas:?}"
    );
}
