//! The outbox's file under storage faults: a full disk (a small tmpfs the test mounts and
//! fills) with the real binary and in process, and damaged `outbox.redb` files at start.
//!
//! Mounting needs root, as CI runs; without it these tests fail saying so (they are never
//! skipped).

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{AppProcess, Prometheus, Receiver, Reply, TempConfig, TestConfig, TestTarget};
use common::{free_addr, poll_until, poll_until_async};
use prescale::act::outbox::{DeliveryState, Outbox, Settings};
use prescale::act::webhook::WebhookSender;
use prescale::act::{Action, ActionKind, Destination, Receivers, ScaleAction};
use prescale::config::{DeliveryConfig, Secret, WebhookConfig};
use prescale::metrics::Metrics;
use serde_json::Value;

/// Real time, for conditions that depend on real processes.
const DEADLINE: Duration = Duration::from_secs(90);
const SECRET: &str = "disk-secret";

/// A tmpfs of a few MiB mounted on a temporary directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one of `size` (e.g. `16m`); panics saying why when it cannot (not root).
    fn mount(size: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("prescale-disk-")
            .tempdir()
            .expect("create a temporary directory");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run `mount` ({e}); this test mounts a tmpfs"));
        assert!(
            out.status.success(),
            "cannot mount a tmpfs on {}: {}; this test needs root (CI runs as root)",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what is left with `filler`, until a write finds no space; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("create the filler");
        let chunk = vec![0xa5_u8; 1 << 20];
        for size in [1 << 20, 4096, 1] {
            while f.write(&chunk[..size]).is_ok_and(|n| n > 0) {}
        }
        let probe = self.path().join("probe");
        assert!(
            std::fs::write(&probe, [0_u8; 4096]).is_err(),
            "the tmpfs is full"
        );
        let _ = std::fs::remove_file(probe);
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a process that outlived its test): detach it.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// A metric's value in the `/metrics` text (a line `name value`).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Serving on `listen`, its outbox in `state`: a target without a `replicas` query that
/// scales up step by step (its demand is far above its capacity), every second.
fn disk_config(
    prometheus: &str,
    listen: std::net::SocketAddr,
    state: &Path,
    to: &str,
) -> TestConfig {
    TestConfig::new()
        .prometheus(prometheus)
        .listen(listen)
        .set("state", "dir", state.display().to_string())
        .set("delivery", "initial_backoff", "100ms")
        .set("delivery", "max_backoff", "300ms")
        .target(
            TestTarget::new("web", common::RATE_QUERY)
                .set("capacity_rps", 0.05)
                .set("startup", "1m")
                .set("min_replicas", 1)
                .set("max_replicas", 1000)
                // No replicas query: a start count, so that it scales.
                .set("initial_replicas", 1)
                .set("interval", "1s")
                .set("history", "6h")
                .platform(to, "secret"),
        )
}

/// The disk under the state directory fills up while the target scales: its next action
/// cannot be written. The target is degraded naming the file and the error, `/readyz` is
/// 503, the metrics show it, the count shown is the one delivered (not the one that could
/// not be written), and the failure is logged at ERROR once. Once space is freed, the
/// outbox is reopened and the target asks again: the action arrives, following on from the
/// last one delivered (none lost).
#[test]
fn a_full_disk_degrades_the_target_then_delivery_resumes_when_space_is_freed() {
    let disk = Tmpfs::mount("16m");
    let state = disk.path().join("state");
    let prom = Prometheus::backfilled(1);
    let receiver = Receiver::with_replies(Vec::new(), Reply::status(200));
    let listen = free_addr();
    let cfg = disk_config(&prom.url(), listen, &state, &receiver.url("/scale")).write();
    cfg.write_file("secret", SECRET);
    let mut app = AppProcess::serve(&cfg, listen);
    app.wait_ready();

    // A first scale-up delivered; the next waits for the rate limit (15 s): fill now.
    poll_until("a first scale delivered", DEADLINE, || {
        receiver.scales().first().copied()
    });
    let filler = disk.fill();
    let file = state.join("outbox.redb").display().to_string();

    let target = poll_until("the target degraded by the outbox", DEADLINE, || {
        let t = app.get_json("/api/v1/targets/web")?;
        let reasons = t["degraded_reasons"].as_array()?;
        let named = reasons
            .iter()
            .filter_map(Value::as_str)
            .any(|r| r.contains(&file) && r.contains("No space left on device"));
        (t["status"] == "degraded" && named).then_some(t)
    });
    // Nothing shows as asked for that was not written: the count is the last delivered.
    let shown = poll_until("the count shown to be the one delivered", DEADLINE, || {
        let t = app.get_json("/api/v1/targets/web")?;
        let last = receiver.scales().last()?.1;
        (t["replicas"].as_u64() == Some(last)).then_some(last)
    });
    assert!(shown > 1, "{target}");
    let (status, body) = app.get("/readyz").expect("readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&file) && body.contains("cannot be written"),
        "{body}"
    );
    // Several failed cycles, one ERROR line.
    let metrics = poll_until("three failed writes", DEADLINE, || {
        let (_, m) = app.get("/metrics").ok()?;
        (metric(&m, "prescale_outbox_write_errors_total")? >= 3.0).then_some(m)
    });
    assert_eq!(
        metric(&metrics, "prescale_outbox_healthy"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, r#"prescale_target_degraded{target="web"}"#),
        Some(1.0),
        "{metrics}"
    );
    let log = app.stderr();
    let errors = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("cannot write to the outbox"))
        .count();
    assert_eq!(errors, 1, "one ERROR line per episode: {log}");
    let before = receiver.scales().len();

    std::fs::remove_file(filler).expect("free the space");
    let after = poll_until("a scale delivered after space is freed", DEADLINE, || {
        let s = receiver.scales();
        (s.len() > before).then_some(s)
    });
    assert_eq!(
        after[before].0, shown,
        "the next action follows on from the last delivered: {after:?}"
    );
    for w in after.windows(2) {
        assert_eq!(w[1].0, w[0].1, "no scale action lost: {after:?}");
    }
    poll_until("ready and healthy again", DEADLINE, || {
        let (status, _) = app.get("/readyz").ok()?;
        let (_, m) = app.get("/metrics").ok()?;
        let t = app.get_json("/api/v1/targets/web")?;
        let healthy = metric(&m, "prescale_outbox_healthy") == Some(1.0);
        (status == 200 && healthy && t["status"] != "degraded").then_some(())
    });
    let log = app.stderr();
    assert!(log.contains("the outbox can be written again"), "{log}");
    drop(app);
}

fn delivery_config() -> DeliveryConfig {
    DeliveryConfig {
        timeout: Duration::from_secs(5),
        max_attempts: 100,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        max_age: Duration::from_secs(3_600),
    }
}

fn scale(to: u32, at: i64) -> Action {
    Action::Scale(ScaleAction {
        target: "web".to_owned(),
        from: 1,
        to,
        reasons: Vec::new(),
        peak: None,
        model: None,
        issued_at: at,
    })
}

/// In process: a write to a full disk fails naming the file, leaves nothing written and
/// starts a fault (metrics too); after space is freed the file is reopened, writes succeed
/// (the fault ends) and the action is delivered to a real receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_then_a_reopen_writes_and_delivers() {
    let disk = Tmpfs::mount("8m");
    let receiver = Receiver::start(&[]);
    let outbox = Outbox::open(&disk.path().join("state")).expect("open the outbox");
    let metrics = Metrics::new();
    let hook = WebhookConfig {
        url: receiver.url("/scale").parse().expect("url"),
        secret: Secret::new("s3cret"),
        previous_secret: None,
    };
    let sender =
        WebhookSender::with_builder(delivery_config(), reqwest::Client::builder().no_proxy())
            .expect("client");
    let routes = [(
        "web".to_owned(),
        ActionKind::Scale,
        Destination::Webhook(hook),
    )];
    let settings = Settings {
        delivery: delivery_config(),
        retention: Duration::from_secs(86_400),
    };
    let worker = outbox
        .worker(
            settings,
            Receivers::from_routes(routes, sender),
            &metrics,
            None,
        )
        .await
        .expect("a worker");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(worker.run(stopped));
    outbox.enqueue(vec![scale(3, 1)]).await.expect("written");
    poll_until_async("3 delivered and recorded", DEADLINE, || async {
        let all = outbox.list(None, None, 10).await.ok()?;
        (all.first()?.state == DeliveryState::Delivered).then_some(())
    })
    .await;

    let filler = disk.fill();
    let e = outbox
        .enqueue(vec![scale(5, 2)])
        .await
        .expect_err("no space left");
    let file = outbox.path().display().to_string();
    assert!(e.to_string().contains(&file), "{e}");
    let fault = outbox.fault().expect("a fault");
    assert!(
        fault.contains(&file) && fault.contains("No space left on device"),
        "{fault}"
    );
    let text = metrics.encode();
    assert_eq!(
        metric(&text, "prescale_outbox_healthy"),
        Some(0.0),
        "{text}"
    );
    assert!(
        metric(&text, "prescale_outbox_write_errors_total") >= Some(1.0),
        "{text}"
    );
    // Still full: still failing (redb would refuse every write from now on, full or not).
    assert!(outbox.enqueue(vec![scale(6, 3)]).await.is_err());

    std::fs::remove_file(filler).expect("free the space");
    let written = outbox
        .enqueue(vec![scale(7, 4)])
        .await
        .expect("written again");
    assert_eq!(written.len(), 1);
    assert_eq!(outbox.fault(), None);
    assert_eq!(
        metric(&metrics.encode(), "prescale_outbox_healthy"),
        Some(1.0)
    );
    let requests = receiver.wait_for(2, DEADLINE).await;
    let sent: Vec<u64> = requests
        .iter()
        .filter_map(|r| r.json()["to"].as_u64())
        .collect();
    assert_eq!(sent, [3, 7], "what failed was never written, so never sent");
    let all = poll_until_async("both delivered and recorded", DEADLINE, || async {
        let all = outbox.list(None, None, 10).await.ok()?;
        all.iter()
            .all(|d| d.state == DeliveryState::Delivered)
            .then_some(all)
    })
    .await;
    assert_eq!(all.len(), 2, "{all:#?}");
    let _ = stop.send(true);
    worker.await.expect("the worker stops");
    drop(outbox);
}

/// `prescale serve` on a state directory whose `outbox.redb` is `bytes`: it must exit by
/// itself with status 1, naming the file, without a panic, and leave the file as it was.
fn refused_at_start(what: &str, bytes: &[u8]) {
    let cfg = TempConfig::write("");
    let toml = TestConfig::new()
        .prometheus("http://127.0.0.1:9")
        .listen(free_addr())
        .set("state", "dir", "state")
        .target(TestTarget::web())
        .to_toml();
    cfg.write_file("prescale.toml", &toml);
    std::fs::create_dir(cfg.dir().join("state")).expect("state dir");
    let file = cfg.dir().join("state/outbox.redb");
    std::fs::write(&file, bytes).expect("write the outbox");
    let mut app = AppProcess::serve(&cfg, free_addr());
    let status = app.wait_exit();
    let stderr = app.stderr();
    assert_eq!(
        status.code(),
        Some(1),
        "{what}: exit status {status}: {stderr}"
    );
    assert!(
        stderr.contains(&file.display().to_string())
            && stderr.contains("cannot open it as an outbox"),
        "{what}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what}: a panic: {stderr}");
    // The error is one line: a log line or the final `error: …`, nothing dangling.
    let stray = stderr.lines().find(|l| {
        let logged = ["DEBUG", "INFO", "WARN", "ERROR"]
            .iter()
            .any(|level| l.contains(level));
        !(l.is_empty() || logged || l.starts_with("error: "))
    });
    assert!(
        stray.is_none(),
        "{what}: a stray line {stray:?} in {stderr}"
    );
    assert_eq!(
        std::fs::read(&file).expect("read"),
        bytes,
        "{what}: left as it was"
    );
}

/// A real outbox file with a few actions in it, as bytes.
fn a_real_outbox() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let outbox = Outbox::open(dir.path()).expect("open");
        let actions = (0..20).map(|i| scale(2 + i, i64::from(i))).collect();
        outbox.enqueue(actions).await.expect("written");
    });
    std::fs::read(dir.path().join("outbox.redb")).expect("read the outbox")
}

/// An empty file, a real outbox cut short (at several lengths) and garbage are each refused
/// at start with the documented error naming the file, exit status 1, and no panic (redb
/// asserts on a truncated file: before, exit 101 with a panic message).
#[test]
fn a_damaged_outbox_is_refused_with_its_path_and_no_panic() {
    let real = a_real_outbox();
    assert!(real.len() > 8192, "{}", real.len());
    refused_at_start("an empty file", b"");
    for cut in [512, 4096, real.len() / 2, real.len() - 1] {
        refused_at_start(&format!("truncated to {cut} bytes"), &real[..cut]);
    }
    let mut garbage = b"redb".to_vec();
    garbage.extend((0..9000_u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    refused_at_start("garbage", &garbage);
    // A page of the header region overwritten (redb asserts over several lines on this one).
    let mut overwritten = real.clone();
    overwritten[4096..4103].copy_from_slice(b"garbage");
    refused_at_start("overwritten at 4096", &overwritten);
}
