//! The dashboard in real headless Chromium, driven over the DevTools protocol: the page
//! loads, fetches the API and draws its charts; the demand line covers the time since the
//! app started (read back from the canvas's pixels); every state badge is readable; a
//! breach with no expected shortfall is put in true words. A screenshot is kept at
//! `target/dashboard.png`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use prescale::clock::Clock;
use prescale::config::Config;
use prescale::source::replay::{ReplaySource, Trace};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// How many times faster than real time the app's clock runs: a simulated minute (the
/// trace's step and the target's interval) every 0.1 s.
const SPEED: f64 = 600.0;
/// How much observed demand after the start the test waits for before loading the page.
const SINCE_START: i64 = 3 * 3_600;
/// Every state a badge can show.
const STATES: [&str; 6] = [
    "ok",
    "degraded",
    "paused",
    "backfilling",
    "budget-limited",
    "unreachable",
];

/// The Chromium binary, from Debian's `chromium` package.
fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.exists(),
        "chromium is missing: install Debian package chromium (tests/run.sh does)"
    );
    path
}

/// Flags for a quiet, headless, reproducible Chromium.
const CHROMIUM_FLAGS: [&str; 10] = [
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
];

/// Headless Chromium driven over the DevTools protocol on a pipe
/// (`--remote-debugging-pipe`: commands on its fd 3, answers and events on its fd 4, each
/// a JSON text ended by a NUL byte).
struct Browser {
    child: Child,
    commands: ChildStdin,
    messages: mpsc::Receiver<Value>,
    next_id: u64,
    log: PathBuf,
    _profile: tempfile::TempDir,
}

/// How long one DevTools command may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

impl Browser {
    fn launch() -> Self {
        let profile = tempfile::tempdir().expect("profile dir");
        let log = profile.path().join("chromium.log");
        // std's Command cannot hand a child fds 3 and 4, so a shell moves the pipes there
        // and becomes Chromium.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg(chromium())
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--remote-debugging-pipe", "about:blank"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("chromium log"))
            .spawn()
            .expect("start chromium");
        let commands = child.stdin.take().expect("chromium's command pipe");
        let mut answers = BufReader::new(child.stdout.take().expect("chromium's answer pipe"));
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            while answers.read_until(0, &mut buf).is_ok_and(|n| n > 0) {
                buf.pop_if(|b| *b == 0);
                let Ok(message) = serde_json::from_slice::<Value>(&buf) else {
                    return;
                };
                if tx.send(message).is_err() {
                    return;
                }
                buf.clear();
            }
        });
        Self {
            child,
            commands,
            messages,
            next_id: 0,
            log,
            _profile: profile,
        }
    }

    /// Sends a command (to a page when `session` is given) and waits for its answer: its
    /// result, or the error Chromium answered.
    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("serialise");
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .and_then(|()| self.commands.flush())
            .unwrap_or_else(|e| panic!("{method}: chromium's pipe: {e}; {}", self.stderr()));
        let until = Instant::now() + COMMAND_DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let answer = self.messages.recv_timeout(left).unwrap_or_else(|e| {
                panic!("{method}: no answer from chromium ({e}); {}", self.stderr())
            });
            if answer["id"] != id {
                continue; // an event, or an answer to an earlier command
            }
            return match answer.get("error") {
                None => Ok(answer["result"].clone()),
                Some(e) => Err(format!("{method}: {e}")),
            };
        }
    }

    /// Opens `url` in a new page and returns the page's session.
    fn open(&mut self, url: &str) -> String {
        let target = self
            .call(None, "Target.createTarget", json!({"url": url}))
            .unwrap_or_else(|e| panic!("{e}"));
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned()
    }

    /// Evaluates `expression` in the page (awaiting a promise): its value, or why not (it
    /// threw, or the page was between documents).
    fn try_eval(&mut self, session: &str, expression: &str) -> Result<Value, String> {
        let params = json!({"expression": expression, "returnByValue": true, "awaitPromise": true});
        let r = self.call(Some(session), "Runtime.evaluate", params)?;
        match r.get("exceptionDetails") {
            None => Ok(r["result"]["value"].clone()),
            Some(e) => Err(format!("{expression}\nthrew: {e}")),
        }
    }

    /// [`Self::try_eval`], for a page that is loaded: it must not fail.
    fn eval(&mut self, session: &str, expression: &str) -> Value {
        self.try_eval(session, expression)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn stderr(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("chromium's log:\n{log}")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing its command pipe makes Chromium quit; kill it if it does not.
        let _ = self
            .commands
            .write_all(b"{\"id\":0,\"method\":\"Browser.close\"}\0");
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            let _ = self.messages.recv_timeout(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs headless Chromium on `url` with `args`, returning stdout.
fn run_chromium(url: &str, profile: &Path, args: &[&str]) -> String {
    let out = Command::new(chromium())
        .args(CHROMIUM_FLAGS)
        .arg("--virtual-time-budget=10000")
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

/// The app, serving one target that replays the NASA trace on a clock [`SPEED`] times real
/// time: three days of history before `start`, and three more that arrive as it runs.
struct App {
    addr: SocketAddr,
    start: i64,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl App {
    async fn start() -> Self {
        Self::start_with("").await
    }

    /// The app with `server` as its `[server]` table (the directory of the configuration
    /// is created first, so that `server` can name files in it, see [`TOKEN_FILE`]).
    async fn start_with(server: &str) -> Self {
        let dir = tempfile::tempdir().expect("state dir");
        std::fs::write(dir.path().join(TOKEN_FILE), TOKEN).expect("write the token file");
        let rows = common::read_trace(&common::trace_path());
        let trace = Trace::from_rows(&rows[..6 * 1440]).expect("trace");
        let start = common::now_secs() / 60 * 60;
        let offset = start - (trace.start + 3 * 1440 * trace.step);
        let source = Arc::new(ReplaySource::new(trace, offset));
        let toml = r#"
[server]
SERVER

[[target]]
name = "web"
request_rate = "replayed"
capacity_rps = 0.1
startup = "5m"
max_replicas = 100
interval = "1m"
history = "2d"
"#
        .replace("SERVER", server);
        let config = Config::parse(&toml, &dir.path().join("prescale.toml")).expect("config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(prescale::serve_with(
            config,
            source,
            Clock::accelerated(start, SPEED),
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            start,
            stop,
            server,
            _dir: dir,
        }
    }

    /// Waits until the target has observed demand at least `since_start` seconds after the
    /// start, and has made some decisions.
    async fn wait_for_demand(&self, since_start: i64) {
        let (addr, want) = (self.addr, self.start + since_start);
        common::poll_until_async(
            "demand observed well after the start, and decisions",
            Duration::from_secs(180),
            || async move {
                let get = |path: &'static str| {
                    tokio::task::spawn_blocking(move || common::http_get(addr, path))
                };
                let (_, target) = get("/api/v1/targets/web").await.ok()?.ok()?;
                let (_, decisions) = get("/api/v1/decisions?target=web").await.ok()?.ok()?;
                let target: Value = serde_json::from_str(&target).ok()?;
                let decisions: Value = serde_json::from_str(&decisions).ok()?;
                let newest = target["signals"]["request_rate"]["newest"].as_i64()?;
                let made = common::decisions_made(decisions["decisions"].as_array()?);
                (newest >= want && made >= 2).then_some(())
            },
        )
        .await;
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.server
            .await
            .expect("server task")
            .expect("serve returns Ok");
    }
}

/// Reads the demand chart back from its canvas: where the demand line's colour
/// (`#2b6cb0`) is drawn, from the start to the newest observed demand.
const DEMAND_PIXELS: &str = r##"(() => {
  const u = state.charts["demand-chart"];
  const [xs, ys] = [u.data[0], u.data[1]];
  let last = null;
  for (let i = xs.length - 1; i >= 0; i--) if (ys[i] != null) { last = xs[i]; break; }
  const { left, top, width, height } = u.bbox;
  const px = u.ctx.getImageData(left, top, width, height).data;
  const demandAt = (col) => {
    for (let row = 0; row < height; row++) {
      const i = 4 * (row * width + col);
      const [r, g, b] = [px[i], px[i + 1], px[i + 2]];
      if (b > 120 && b - r > 70 && b - g > 30 && g > r) return true;
    }
    return false;
  };
  const col = (t) => Math.round(u.valToPos(t, "x", true)) - left;
  const [from, to] = [col(START) + 2, col(last) - 2];
  let drawn = 0, lastDrawn = -1;
  for (let c = 0; c < width; c++) if (demandAt(c)) { lastDrawn = c; if (c >= from && c <= to) drawn++; }
  return { last, from, to, drawn, lastDrawnAt: lastDrawn < 0 ? null : u.posToVal(lastDrawn / uPlot.pxRatio, "x") };
})()"##;

/// The demand line is drawn over (nearly) every pixel column from the start to the newest
/// observed demand, and the last one drawn is well after the start.
fn check_demand_since_start(browser: &mut Browser, page: &str, start: i64) {
    let m = browser.eval(page, &DEMAND_PIXELS.replace("START", &start.to_string()));
    let last = m["last"].as_i64().expect("observed demand in the chart");
    assert!(
        last >= start + SINCE_START,
        "the chart's data end at {last}, start {start}: {m}"
    );
    let (from, to, drawn) = (m["from"].as_i64(), m["to"].as_i64(), m["drawn"].as_i64());
    let (Some(from), Some(to), Some(drawn)) = (from, to, drawn) else {
        panic!("{m}");
    };
    assert!(
        to - from >= 20,
        "the time since start spans too few pixels: {m}"
    );
    assert!(
        drawn * 10 >= (to - from + 1) * 9,
        "the demand line is drawn over {drawn} of the {} pixel columns since the start: {m}",
        to - from + 1
    );
    let last_drawn = m["lastDrawnAt"].as_f64().unwrap_or(f64::NAN);
    assert!(
        last_drawn >= (start + SINCE_START) as f64,
        "the last demand drawn is at {last_drawn}, start {start}: {m}"
    );
}

/// A badge of every state, placed where the page shows them, with its computed colours.
const BADGE_COLOURS: &str = r##"(() => {
  const out = [];
  for (const where of ["#targets td", "#facts b"]) {
    const parent = document.querySelector(where);
    if (!parent) throw new Error(`no ${where}`);
    for (const state of STATES) {
      const badge = document.createElement("span");
      badge.className = `badge ${state}`;
      badge.textContent = state;
      parent.appendChild(badge);
      const style = getComputedStyle(badge);
      out.push({ where, state, color: style.color, background: style.backgroundColor });
      badge.remove();
    }
  }
  return out;
})()"##;

/// `rgb(r, g, b)` or an opaque `rgba(r, g, b, 1)`.
fn rgb(css: &str) -> Option<[f64; 3]> {
    let inner = css
        .strip_prefix("rgba(")
        .or_else(|| css.strip_prefix("rgb("))?
        .strip_suffix(')')?;
    let parts: Vec<f64> = inner
        .split(',')
        .map(|p| p.trim().parse().ok())
        .collect::<Option<_>>()?;
    match parts[..] {
        [r, g, b] | [r, g, b, 1.0] => Some([r, g, b]),
        _ => None,
    }
}

/// WCAG contrast ratio of two colours (1 to 21).
fn contrast(a: [f64; 3], b: [f64; 3]) -> f64 {
    let lum = |c: [f64; 3]| {
        let lin = |v: f64| {
            let v = v / 255.0;
            if v <= 0.039_28 {
                v / 12.92
            } else {
                ((v + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2])
    };
    let (la, lb) = (lum(a), lum(b));
    (la.max(lb) + 0.05) / (la.min(lb) + 0.05)
}

/// Every state's badge, in the list and in the facts, has text readable on its background.
fn check_badges(browser: &mut Browser, page: &str) {
    let states = serde_json::to_string(&STATES).expect("states");
    let badges = browser.eval(page, &BADGE_COLOURS.replace("STATES", &states));
    let badges = badges.as_array().expect("badges");
    assert_eq!(badges.len(), 2 * STATES.len(), "{badges:?}");
    let unreadable: Vec<String> = badges
        .iter()
        .filter_map(|b| {
            let colours = (b["color"].as_str(), b["background"].as_str());
            let (Some(fg), Some(bg)) = (colours.0.and_then(rgb), colours.1.and_then(rgb)) else {
                return Some(format!("not opaque colours: {b}"));
            };
            let ratio = contrast(fg, bg);
            (fg == bg || ratio < 4.5).then(|| format!("contrast {ratio:.2} (want 4.5): {b}"))
        })
        .collect();
    assert!(unreadable.is_empty(), "unreadable badges: {unreadable:#?}");
}

/// The header's word on the loops' schedule.
const CYCLES: &str = r#"document.getElementById("cycles").textContent"#;

/// The bottleneck line for breaches of each kind, rendered by the page's own code.
const BREACH_WORDS: &str = r##"(async () => {
  const d = await getJson("/api/v1/targets/web");
  const words = (expected, upper, signal, latency) => {
    d.bottleneck = { ...(d.bottleneck || {}), breach: { at: 1800000600, seconds_to_breach: 600,
      signal, expected_shortfall_rps: expected, upper_shortfall_rps: upper, predicted_latency_seconds: latency } };
    renderFacts(d);
    return document.getElementById("bottleneck").textContent;
  };
  return { upperOnly: words(0, 2.5, "request_rate", null), short: words(1.25, 3.5, "request_rate", null),
    latency: words(0, 0, "latency", 0.42) };
})()"##;

/// A breach with no expected shortfall says what is true instead of "short by 0.00 rps".
fn check_breach_wording(browser: &mut Browser, page: &str) {
    let w = browser.eval(page, BREACH_WORDS);
    let text = |k: &str| w[k].as_str().unwrap_or_default().to_owned();
    let (upper_only, short, latency) = (text("upperOnly"), text("short"), text("latency"));
    assert!(
        !upper_only.contains("short by")
            && upper_only.contains("upper forecast exceeds capacity by up to 2.50 rps"),
        "{upper_only}"
    );
    assert!(short.contains("short by 1.25 rps"), "{short}");
    assert!(
        !latency.contains("short by") && latency.contains("predicted latency 0.420 s"),
        "{latency}"
    );
}

/// Keeps a screenshot of the page as an artifact at `target/dashboard.png`.
fn screenshot(url: &str) {
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    // `target/` may not exist when the build goes elsewhere (CARGO_TARGET_DIR).
    std::fs::create_dir_all(shot.parent().expect("a parent")).expect("create target/");
    let arg = format!("--screenshot={}", shot.display());
    let profile = tempfile::tempdir().expect("profile dir");
    run_chromium(url, profile.path(), &[&arg]);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot ({} bytes)",
        png.len()
    );
}

/// What the page shows once it has drawn, as it shows it.
const RENDERED: &str = r##"(() => {
  const chart = document.getElementById("demand-chart");
  if (!document.body?.dataset.rendered || !state.charts["demand-chart"]) return null;
  return { points: Number(chart.dataset.points), replicas: Number(document.getElementById("replicas-chart").dataset.points),
    canvases: document.querySelectorAll("canvas").length, decisions: document.getElementById("decisions").textContent,
    badge: document.querySelector("#targets .badge")?.className ?? "",
    policies: [...document.querySelectorAll("#explain-policies tr")].map((r) => r.dataset.policy),
    chosen: [...document.querySelectorAll("#explain-policies tr.chosen")].map((r) => r.dataset.policy),
    explain: document.getElementById("explain").textContent };
})()"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_draws_demand_since_start_in_headless_chromium() {
    let app = App::start().await;
    app.wait_for_demand(SINCE_START).await;
    let (url, start) = (format!("http://{}/", app.addr), app.start);
    tokio::task::spawn_blocking(move || {
        let mut browser = Browser::launch();
        let page = browser.open(&url);
        // Until the page has loaded, its script has run and it has drawn once.
        let shown = common::poll_until("the page to draw", Duration::from_secs(60), || {
            browser
                .try_eval(&page, RENDERED)
                .ok()
                .filter(|v| !v.is_null())
        });
        // A day of one-minute demand plus an hour of forecast with its band.
        assert!(shown["points"].as_u64() > Some(1_440), "{shown}");
        assert!(shown["replicas"].as_u64() >= Some(2), "{shown}");
        assert!(shown["canvases"].as_u64() >= Some(2), "uPlot drew: {shown}");
        let decisions = shown["decisions"].as_str().unwrap_or_default();
        assert!(
            decisions.contains("Prediction") || decisions.contains("Demand"),
            "decision reasons listed: {shown}"
        );
        // The latest decision explained: every policy, one of them chosen, and its inputs.
        assert_eq!(
            shown["policies"],
            serde_json::json!(["prediction", "demand", "performance"]),
            "{shown}"
        );
        assert_eq!(shown["chosen"].as_array().map(Vec::len), Some(1), "{shown}");
        let explain = shown["explain"].as_str().unwrap_or_default();
        assert!(
            explain.contains("forecast peak") && explain.contains("rps/replica"),
            "{shown}"
        );
        let badge = shown["badge"].as_str().unwrap_or_default();
        assert!(
            STATES.iter().any(|s| badge == format!("badge {s}")),
            "target state shown: {shown}"
        );
        // The header says whether the loops keep their schedule (from /readyz).
        let cycles = common::poll_until("the header's schedule", Duration::from_secs(60), || {
            let text = browser.try_eval(&page, CYCLES).ok()?;
            let text = text.as_str()?.to_owned();
            (text == "cycles on schedule" || text.contains("behind schedule")).then_some(text)
        });
        assert!(!cycles.is_empty());
        check_demand_since_start(&mut browser, &page, start);
        check_badges(&mut browser, &page);
        check_breach_wording(&mut browser, &page);
        drop(browser);
        screenshot(&url);
    })
    .await
    .expect("the browser checks");
    app.stop().await;
}

/// The API token of [`App::start_with`]'s configuration, in the file [`TOKEN_FILE`].
const TOKEN: &str = "dashboard-test-token";
/// Where the token is, beside the configuration.
const TOKEN_FILE: &str = "api-token";

/// What the page shows of the token form, its data and its token.
const AUTH_STATE: &str = r##"(() => ({
  form: !document.getElementById("auth").hidden,
  why: document.getElementById("auth-why").textContent,
  rendered: Boolean(document.body?.dataset.rendered),
  targets: document.getElementById("targets").textContent,
  hash: location.hash,
  stored: sessionStorage.getItem("prescale.token"),
}))()"##;

/// With `auth_reads = true`, the page without a token asks for it in a form, and with the
/// token given (in the form, or as `#token=…` in the address, which then leaves the address
/// bar) it shows the targets and draws its charts: its requests carry the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_asks_for_the_token_and_shows_data_when_reads_need_it() {
    let server = format!("api_token_file = \"{TOKEN_FILE}\"\nauth_reads = true");
    let app = App::start_with(&server).await;
    let base = format!("http://{}/", app.addr);
    tokio::task::spawn_blocking(move || {
        let mut browser = Browser::launch();
        let state = |browser: &mut Browser, page: &str| browser.try_eval(page, AUTH_STATE).ok();
        // No token: the form shows, nothing is drawn.
        let page = browser.open(&base);
        let asked = common::poll_until("the token form", Duration::from_secs(60), || {
            state(&mut browser, &page).filter(|s| s["form"] == true)
        });
        assert_eq!(asked["rendered"], false, "{asked}");
        assert!(
            asked["why"].as_str().is_some_and(|w| w.contains("token")),
            "{asked}"
        );
        // A wrong token given in the form is refused and asked for again.
        let submit = |token: &str| {
            format!(
                r#"(() => {{ document.getElementById("auth-token").value = "{token}";
                   document.getElementById("auth").requestSubmit(); return true; }})()"#
            )
        };
        browser.eval(&page, &submit("wrong"));
        common::poll_until("the wrong token refused", Duration::from_secs(60), || {
            state(&mut browser, &page).filter(|s| {
                s["form"] == true && s["why"].as_str().is_some_and(|w| w.contains("refused"))
            })
        });
        // The right one: the data shows.
        browser.eval(&page, &submit(TOKEN));
        let shown = common::poll_until("data after the token", Duration::from_secs(120), || {
            state(&mut browser, &page).filter(|s| s["rendered"] == true)
        });
        assert_eq!(shown["form"], false, "{shown}");
        assert!(
            shown["targets"].as_str().is_some_and(|t| t.contains("web")),
            "{shown}"
        );
        // In the address, in a new tab (its own sessionStorage): taken, and removed.
        let page = browser.open(&format!("{base}#token={TOKEN}"));
        let shown = common::poll_until("data with #token", Duration::from_secs(120), || {
            state(&mut browser, &page).filter(|s| s["rendered"] == true)
        });
        assert_eq!(shown["form"], false, "{shown}");
        assert_eq!(shown["hash"], "", "the token left the address bar: {shown}");
        assert_eq!(shown["stored"], TOKEN, "{shown}");
        assert!(
            shown["targets"].as_str().is_some_and(|t| t.contains("web")),
            "{shown}"
        );
        check_frontier(&mut browser, &page);
    })
    .await
    .expect("the browser checks");
    app.stop().await;
}

/// What the page shows of the frontier panel.
const FRONTIER: &str = r##"(() => {
  const box = document.getElementById("frontier");
  return { state: box.dataset.state, text: box.textContent,
    dials: box.querySelectorAll("circle.dial").length,
    hpa: box.querySelectorAll("rect.hpa").length,
    current: !!document.getElementById("frontier-current") };
})()"##;

/// The button replays the target's history (a POST with the page's token); the panel then
/// shows it replaying and, once done, draws the dial's frontier, the HPA's points and the
/// target as configured.
fn check_frontier(browser: &mut Browser, page: &str) {
    let before = browser.eval(page, FRONTIER);
    assert_eq!(before["state"], "none", "{before}");
    browser.eval(
        page,
        r#"(() => { document.getElementById("frontier-run").click(); return true; })()"#,
    );
    let done = common::poll_until("the frontier drawn", Duration::from_secs(300), || {
        browser
            .try_eval(page, FRONTIER)
            .ok()
            .filter(|v| v["state"] == "done")
    });
    assert_eq!(done["dials"], 11, "{done}");
    assert_eq!(done["hpa"], 7, "{done}");
    assert_eq!(done["current"], true, "{done}");
    assert!(
        done["text"]
            .as_str()
            .is_some_and(|t| t.contains("this target now")),
        "{done}"
    );
}
