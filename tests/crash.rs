//! The `prescale` binary under hard faults: `kill -9` between writing an action and
//! delivering it, then a restart; a state directory that cannot be used at start. (A
//! restart's effect on the count running is in `restart.rs`.)

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{AppProcess, Prometheus, Receiver, Reply, TempConfig, TestConfig, TestTarget};
use common::{free_addr, poll_until};

const DEADLINE: Duration = Duration::from_secs(60);
const SECRET: &str = "crash-secret";

/// Serving on `listen`: one target whose two instances differ in latency (so it
/// rebalances at once), its webhooks to `receiver`, retried every few hundred ms.
fn crash_config(prometheus: &str, listen: std::net::SocketAddr, receiver: &Receiver) -> TestConfig {
    let latency = r#"label_replace(vector(0.1), "instance", "10.0.0.1:8080", "", "") or label_replace(vector(0.3), "instance", "10.0.0.2:8080", "", "")"#;
    TestConfig::new()
        .prometheus(prometheus)
        .listen(listen)
        .set("delivery", "initial_backoff", "100ms")
        .set("delivery", "max_backoff", "300ms")
        .set("delivery", "max_attempts", 1000)
        .target(
            TestTarget::new("web", common::RATE_QUERY)
                .set("instance_latency", latency)
                .set("capacity_rps", 0.05)
                .set("startup", "1m")
                .set("max_replicas", 100)
                // What its platform runs when prescale starts managing it.
                .set("initial_replicas", 1)
                .set("interval", "1s")
                .set("history", "6h")
                .platform(&receiver.url("/scale"), "secret")
                .balancer(&receiver.url("/weights"), "secret"),
        )
}

/// How many times the receiver accepted each idempotency key, checking every signature.
fn accepted_by_key(receiver: &Receiver) -> HashMap<String, usize> {
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for r in receiver.accepted() {
        let k = r.header("idempotency-key").expect("an idempotency key");
        prescale::act::webhook::verify(
            SECRET.as_bytes(),
            r.header("prescale-signature").expect("a signature"),
            &r.body,
            common::now_secs(),
            300,
        )
        .expect("signed");
        *by_key.entry(k.to_owned()).or_default() += 1;
    }
    by_key
}

/// `kill -9` while a rebalance action is written but not delivered (the receiver is
/// failing); after a restart it is delivered, once, with the same key.
#[test]
fn kill_9_between_write_and_delivery_then_restart_delivers_once() {
    let prom = Prometheus::backfilled(1);
    let receiver = Receiver::with_replies(Vec::new(), Reply::status(503));
    let listen = free_addr();
    let cfg = crash_config(&prom.url(), listen, &receiver).write();
    cfg.write_file("secret", SECRET);
    let mut first = AppProcess::serve(&cfg, listen);

    // The rebalance is written and failing: pending, attempted at least twice.
    let pending = poll_until("a pending, failing rebalance", DEADLINE, || {
        let b = first.get_json("/api/v1/deliveries?state=pending")?;
        b["deliveries"]
            .as_array()?
            .iter()
            .find(|d| d["kind"] == "rebalance" && d["attempts"].as_u64() >= Some(2))
            .cloned()
    });
    let key = pending["idempotency_key"].as_str().unwrap().to_owned();
    let id = pending["id"].as_u64().unwrap();
    let status = first.kill();
    assert!(!status.success(), "killed: {status}");
    assert!(
        receiver.accepted().is_empty(),
        "nothing accepted before the kill"
    );

    receiver.set_then(Reply::status(200));
    let listen = free_addr();
    crash_config(&prom.url(), listen, &receiver).write_over(&cfg);
    let second = AppProcess::serve(&cfg, listen);
    poll_until(
        "the pending rebalance delivered after restart",
        DEADLINE,
        || accepted_by_key(&receiver).contains_key(&key).then_some(()),
    );
    let d = poll_until("the delivery recorded", DEADLINE, || {
        second
            .get_json(&format!("/api/v1/deliveries/{id}"))
            .filter(|d| d["state"] == "delivered")
    });
    assert_eq!(d["idempotency_key"], key.as_str());
    let by_key = accepted_by_key(&receiver);
    assert_eq!(by_key.get(&key), Some(&1), "delivered once: {by_key:?}");
    assert!(by_key.values().all(|n| *n == 1), "no key twice: {by_key:?}");
    let sent_before = receiver
        .requests()
        .iter()
        .filter(|r| r.header("idempotency-key") == Some(key.as_str()))
        .map(|r| r.body.clone())
        .collect::<Vec<_>>();
    assert!(
        sent_before.windows(2).all(|w| w[0] == w[1]),
        "the same body before and after the crash"
    );
}

/// Runs `prescale serve` on `cfg`: it must exit by itself (a prescale that keeps running
/// is killed and fails the test), unsuccessfully, saying each of `wants`.
fn serve_fails(cfg: &TempConfig, wants: &[&str]) {
    let mut app = AppProcess::serve(cfg, free_addr());
    let status = app.wait_exit();
    let stderr = app.stderr();
    assert!(!status.success(), "must fail: {stderr}");
    for want in wants {
        assert!(stderr.contains(want), "stderr lacks `{want}`: {stderr}");
    }
}

fn config_with_state(dir: &str) -> String {
    // Prometheus is never reached: prescale stops before polling.
    TestConfig::new()
        .prometheus("http://127.0.0.1:9")
        .listen(free_addr())
        .set("state", "dir", dir)
        .target(TestTarget::web())
        .to_toml()
}

/// A state directory that cannot be created, one that is a file, and an outbox file that
/// is not an outbox: a clear error naming the path, a non-zero exit, nothing written.
#[test]
fn unusable_state_directory_stops_start_cleanly() {
    // Cannot be created: its parent is a regular file.
    let cfg = TempConfig::write("");
    cfg.write_file("prescale.toml", &config_with_state("blocker/state"));
    cfg.write_file("blocker", "not a directory");
    let path = cfg.dir().join("blocker/state");
    serve_fails(&cfg, &[&path.display().to_string(), "cannot create it"]);
    assert_eq!(
        std::fs::read_to_string(cfg.dir().join("blocker")).unwrap(),
        "not a directory"
    );

    // A file where the directory should be.
    let cfg = TempConfig::write("");
    cfg.write_file("prescale.toml", &config_with_state("state"));
    cfg.write_file("state", "x");
    let path = cfg.dir().join("state");
    serve_fails(&cfg, &[&path.display().to_string(), "is not a directory"]);

    // A corrupt outbox: refused, and left exactly as it was.
    let cfg = TempConfig::write("");
    cfg.write_file("prescale.toml", &config_with_state("state"));
    std::fs::create_dir(cfg.dir().join("state")).unwrap();
    let file = cfg.write_file("state/outbox.redb", &"garbage ".repeat(1000));
    let before = std::fs::read(&file).unwrap();
    serve_fails(
        &cfg,
        &[&file.display().to_string(), "cannot open it as an outbox"],
    );
    assert_eq!(std::fs::read(&file).unwrap(), before, "untouched");
    let entries: Vec<_> = std::fs::read_dir(cfg.dir().join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["outbox.redb"], "nothing else written");

    // A valid redb file whose record is not a delivery: refused at start, naming the record.
    let cfg = TempConfig::write("");
    cfg.write_file("prescale.toml", &config_with_state("state"));
    std::fs::create_dir(cfg.dir().join("state")).unwrap();
    let file = cfg.dir().join("state/outbox.redb");
    {
        let db = redb::Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("deliveries");
            let mut t = txn.open_table(table).unwrap();
            t.insert(1, &b"not json"[..]).unwrap();
        }
        txn.commit().unwrap();
    }
    serve_fails(
        &cfg,
        &[&file.display().to_string(), "record 1 is not readable"],
    );

    // Another prescale holds the outbox: refused, naming it.
    let cfg = TempConfig::write("");
    cfg.write_file("prescale.toml", &config_with_state("state"));
    let held = prescale::act::outbox::Outbox::open(&cfg.dir().join("state")).unwrap();
    serve_fails(&cfg, &["outbox.redb", "in use by another process"]);
    drop(held);
}
