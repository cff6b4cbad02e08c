//! What the `prescale` binary writes to stderr and stdout when they are not a terminal:
//! logs without colour codes, a condition that lasts logged once rather than every cycle,
//! progress lines for long replays, and no panic when the reader of a pipe has gone.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use common::{AppProcess, ChildGuard, Options, Prometheus, TestConfig, TestTarget, poll_until};

/// Deadline for a condition on a busy machine.
const DEADLINE: Duration = Duration::from_secs(120);

fn prescale() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_prescale"));
    cmd.stdin(Stdio::null()).env_remove("NO_COLOR");
    cmd
}

/// `prescale backtest` of `trace` at 0.1 rps per replica and a 5-minute start-up, writing
/// its decisions to `out`.
fn backtest(trace: &std::path::Path, out: &std::path::Path) -> Command {
    let mut cmd = prescale();
    cmd.args([
        "backtest",
        "--capacity",
        "0.1",
        "--startup",
        "5m",
        "--trace",
    ])
    .arg(trace)
    .arg("--out")
    .arg(out);
    cmd
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// The value of the first sample of `/metrics` whose line starts with `series`.
fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// A configuration for one target `web` polled every second from `prometheus`, whose
/// request-rate query is `query`.
fn config(prometheus: &str, query: &str, listen: std::net::SocketAddr) -> common::TempConfig {
    TestConfig::new()
        .prometheus(prometheus)
        .listen(listen)
        .target(
            TestTarget::new("web", query)
                .set("capacity_rps", 150)
                .set("startup", "3m")
                .set("min_replicas", 1)
                .set("max_replicas", 10)
                .set("interval", "1s"),
        )
        .write()
}

/// `serve` with stderr a pipe, read until every one of `wanted` appears in it: the log so
/// far.
fn serve_log_through_a_pipe(cfg: &common::TempConfig, no_color: bool, wanted: &[&str]) -> String {
    let mut cmd = prescale();
    cmd.args(["serve", "--config"])
        .arg(cfg.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if no_color {
        cmd.env("NO_COLOR", "1");
    }
    let mut child = ChildGuard::new(cmd.spawn().expect("start prescale"), "prescale");
    let stderr = child.child_mut().stderr.take().expect("piped stderr");
    // Read on a thread, so that a deadline holds even if nothing comes.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let deadline = std::time::Instant::now() + DEADLINE;
    while !wanted.iter().all(|w| log.contains(w)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => panic!("{wanted:?} not all logged within {DEADLINE:?}; the log:\n{log}"),
        }
    }
    child.kill();
    log
}

/// Logs sent to a pipe or a file carry no terminal escape codes, with `NO_COLOR` set or
/// not.
#[test]
fn logs_to_a_pipe_or_a_file_have_no_colour_codes() {
    // Nothing listens there: every poll fails, and says so.
    let down = format!("http://127.0.0.1:{}", common::free_port());
    for no_color in [false, true] {
        let cfg = config(&down, "sum(rate(x_total[5m]))", common::free_addr());
        // The INFO lines of start-up and the first failed poll may come in either order.
        let log = serve_log_through_a_pipe(&cfg, no_color, &["poll failed", " INFO "]);
        assert!(log.contains(" WARN "), "{log}");
        assert!(
            !log.contains('\u{1b}'),
            "escape codes in a piped log (NO_COLOR set: {no_color}):\n{log:?}"
        );
    }
    let listen = common::free_addr();
    let cfg = config(&down, "sum(rate(x_total[5m]))", listen);
    let app = AppProcess::serve(&cfg, listen);
    poll_until("the failing poll logged to the file", DEADLINE, || {
        app.stderr().contains("poll failed").then_some(())
    });
    let log = app.stderr();
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in the log file:\n{log:?}"
    );
}

/// On a terminal (a pseudo-terminal from `script`) the log is coloured, unless `NO_COLOR`
/// is set. `serve` exits at once here: its `[cluster]`'s etcd cannot be reached.
#[test]
fn logs_on_a_terminal_are_coloured_unless_no_color_is_set() {
    common::process::require_tool("script", "--version", "bsdutils");
    let etcd = common::free_port();
    let toml = TestConfig::new()
        .prometheus("http://127.0.0.1:9")
        .listen(common::free_addr())
        .set("state", "dir", "state")
        .target(TestTarget::web())
        .to_toml();
    let cfg = common::TempConfig::write(&format!(
        "{toml}\n[cluster]\netcd = [\"http://127.0.0.1:{etcd}\"]\nname = \"east-1\"\nlease_ttl = \"3s\"\n"
    ));
    let run = |no_color: bool| {
        let line = format!(
            "{} serve --config {}",
            env!("CARGO_BIN_EXE_prescale"),
            cfg.path().display()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::null())
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "debug");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd.output().expect("run script");
        text(&out.stdout)
    };
    let coloured = run(false);
    assert!(coloured.contains("east-1"), "{coloured}");
    assert!(
        coloured.contains('\u{1b}'),
        "no colour on a terminal:\n{coloured:?}"
    );
    let plain = run(true);
    assert!(plain.contains("east-1"), "{plain}");
    assert!(
        !plain.contains('\u{1b}'),
        "colour with NO_COLOR set:\n{plain:?}"
    );
}

/// A query that matches nothing in a real Prometheus, polled every second for many
/// cycles, is logged once (with the query), not once per cycle.
#[test]
fn a_query_matching_nothing_is_logged_once_not_every_cycle() {
    let prom = Prometheus::start(Options::default());
    let listen = common::free_addr();
    let query = "sum(rate(prescale_test_nothing_total[5m]))";
    let cfg = config(&prom.url(), query, listen);
    let app = AppProcess::serve(&cfg, listen);
    let series = r#"prescale_polls_total{target="web",signal="request_rate",outcome="empty"}"#;
    let polls = poll_until("12 polls matching nothing", DEADLINE, || {
        let (_, m) = app.get("/metrics").ok()?;
        metric(&m, series).filter(|&n| n >= 12.0)
    });
    let log = app.stderr();
    let about: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(r#"signal="request_rate""#))
        .collect();
    assert_eq!(
        about.len(),
        1,
        "{polls} polls matched nothing, one line expected:\n{}",
        about.join("\n")
    );
    assert!(
        about[0].contains("WARN") && about[0].contains("poll failed") && about[0].contains(query),
        "{}",
        about[0]
    );
}

/// The scores `backtest` prints and the progress lines it writes to stderr (not a
/// terminal) on the first `days` of the NASA trace.
fn backtest_days(dir: &Path, days: usize) -> (std::process::Output, std::path::PathBuf) {
    let rows = common::read_trace(&common::trace_path());
    let trace = dir.join("trace.csv");
    let body: String = rows[..days * 1440]
        .iter()
        .map(|(t, v)| format!("{t},{v}\n"))
        .collect();
    std::fs::write(&trace, format!("timestamp_seconds,value\n{body}")).unwrap();
    let out = dir.join("decisions.csv");
    let o = backtest(&trace, &out).output().expect("run prescale");
    assert!(o.status.success(), "backtest failed: {}", text(&o.stderr));
    (o, trace)
}

/// `backtest` with stderr a pipe writes a progress line at each tenth of the way, and its
/// stdout is exactly the scores table, as the library makes it.
#[test]
fn backtest_reports_progress_on_stderr_and_leaves_stdout_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (o, trace_path) = backtest_days(dir.path(), 8);
    let stderr = text(&o.stderr);
    let progress: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("replaying: "))
        .collect();
    let percents: Vec<&str> = progress
        .iter()
        .filter_map(|l| l.strip_prefix("replaying: ")?.split(' ').next())
        .collect();
    assert_eq!(
        percents,
        [
            "10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%", "100%"
        ],
        "{stderr}"
    );
    assert!(progress[9].contains("11520/11520 steps"), "{}", progress[9]);
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");

    // stdout: the scores, as `backtest` computed them before progress was reported.
    let trace = prescale::source::replay::Trace::load(&trace_path).unwrap();
    let forecast = prescale::config::ForecastConfig {
        level: 0.95,
        ..Default::default()
    };
    let mut target =
        prescale::config::TargetConfig::example("backtest", 1.0, Duration::from_secs(300));
    target.capacity_rps = Some(0.1);
    let rows = prescale::simulate::backtest(&trace, &target, &forecast, |_| {});
    let scores = prescale::simulate::Summary::of(&trace, &target, &rows, 0);
    assert_eq!(text(&o.stdout), scores.table());
    let csv = std::fs::read_to_string(dir.path().join("decisions.csv")).unwrap();
    assert!(
        csv.starts_with(
            "timestamp,demand_rps,forecast_rps,upper_rps,replicas,capacity_rps,reason\n"
        ),
        "{}",
        &csv[..200.min(csv.len())]
    );
    assert_eq!(csv.lines().count(), rows.len() + 1);
}

/// Runs `cmd` with its stdout a pipe whose reader is gone before anything is written (as
/// with `| head -1` once `head` has its line): the exit status and stderr.
fn with_stdout_closed(mut cmd: Command) -> (ExitStatus, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start prescale");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for prescale");
    (out.status, text(&out.stderr))
}

fn assert_quiet_end(what: &str, (status, stderr): (ExitStatus, String)) {
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert_ne!(status.code(), Some(101), "{what}: {stderr}");
    assert_eq!(status.code(), Some(0), "{what}: {status}: {stderr}");
    assert!(!stderr.contains("error:"), "{what}: {stderr}");
}

/// `tune`, `forecast`, `backtest` and `check-config` whose stdout's reader has gone end
/// quietly with status 0, as `… | head -1` expects.
#[test]
fn a_closed_stdout_ends_commands_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (_, trace) = backtest_days(dir.path(), 3);
    let mut tune = prescale();
    tune.args([
        "tune",
        "--capacity",
        "0.1",
        "--startup",
        "5m",
        "--steps",
        "2",
    ])
    .args(["--refine", "0", "--trace"])
    .arg(&trace);
    assert_quiet_end("tune", with_stdout_closed(tune));

    let mut forecast = prescale();
    forecast
        .args(["forecast", "--horizon", "15m", "--skip", "0", "--trace"])
        .arg(&trace)
        .arg("--out")
        .arg(dir.path().join("forecasts.csv"));
    assert_quiet_end("forecast", with_stdout_closed(forecast));

    let backtest = backtest(&trace, &dir.path().join("decisions.csv"));
    assert_quiet_end("backtest", with_stdout_closed(backtest));

    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prescale.toml");
    let mut check = prescale();
    check.arg("check-config").arg(&config);
    assert_quiet_end("check-config", with_stdout_closed(check));
}

/// `serve` whose stderr's reader has gone goes on polling (its log lines are dropped) and
/// stops cleanly on SIGTERM.
#[test]
fn serve_goes_on_when_its_log_reader_has_gone() {
    let down = format!("http://127.0.0.1:{}", common::free_port());
    let listen = common::free_addr();
    let cfg = config(&down, "sum(rate(x_total[5m]))", listen);
    let mut cmd = prescale();
    cmd.args(["serve", "--config"])
        .arg(cfg.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::new(cmd.spawn().expect("start prescale"), "prescale");
    drop(child.child_mut().stderr.take());
    let series =
        r#"prescale_polls_total{target="web",signal="request_rate",outcome="unreachable"}"#;
    poll_until("five failed polls, each logged or not", DEADLINE, || {
        child.assert_running(|| "(stderr closed)".to_owned());
        let (_, m) = common::http_get(listen, "/metrics").ok()?;
        metric(&m, series).filter(|&n| n >= 5.0)
    });
    child.terminate();
    let status = child.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{status}");
}
