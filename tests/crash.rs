//! The `prescale` binary under hard faults: `kill -9` between writing an action and
//! delivering it, then a restart; a state directory that cannot be used at start.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Prometheus, Receiver, Reply, TempConfig, poll_until};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);
const SECRET: &str = "crash-secret";

fn spawn(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_prescale"))
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .spawn()
        .expect("start prescale")
}

fn get(addr: std::net::SocketAddr, path: &str) -> Option<Value> {
    let (status, body) = common::http_get(addr, path).ok()?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

/// `kill -9` while a rebalance action is written but not delivered (the receiver is
/// failing); after a restart it is delivered, once, with the same key.
#[test]
fn kill_9_between_write_and_delivery_then_restart_delivers_once() {
    let prom = Prometheus::backfilled(1);
    let receiver = Receiver::with_replies(Vec::new(), Reply::status(503));
    let latency = r#"label_replace(vector(0.1), "instance", "10.0.0.1:8080", "", "") or label_replace(vector(0.3), "instance", "10.0.0.2:8080", "", "")"#;
    let config = |port: u16| {
        format!(
            "[prometheus]\nurl = \"{}\"\n\n[server]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [delivery]\ninitial_backoff = \"100ms\"\nmax_backoff = \"300ms\"\nmax_attempts = 1000\n\n\
             [[target]]\nname = \"web\"\nrequest_rate = '{}'\ninstance_latency = '{latency}'\n\
             capacity_rps = 0.05\nstartup = \"1m\"\nmax_replicas = 100\ninterval = \"1s\"\nhistory = \"6h\"\n\n\
             [target.platform]\nurl = \"{}\"\nsecret_file = \"secret\"\n\n\
             [target.balancer]\nurl = \"{}\"\nsecret_file = \"secret\"\n",
            prom.url(),
            common::RATE_QUERY,
            receiver.url("/scale"),
            receiver.url("/weights"),
        )
    };
    let port = common::free_port();
    let cfg = TempConfig::write(&config(port));
    cfg.write_file("secret", SECRET);
    let log = cfg.dir().join("prescale.log");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut first = spawn(cfg.path(), &log);

    // The rebalance is written and failing: pending, attempted at least twice.
    let pending = poll_until("a pending, failing rebalance", DEADLINE, || {
        let b = get(addr, "/api/v1/deliveries?state=pending")?;
        b["deliveries"]
            .as_array()?
            .iter()
            .find(|d| d["kind"] == "rebalance" && d["attempts"].as_u64() >= Some(2))
            .cloned()
    });
    let key = pending["idempotency_key"].as_str().unwrap().to_owned();
    let id = pending["id"].as_u64().unwrap();
    first.kill().expect("kill -9");
    let status = first.wait().expect("wait");
    assert!(!status.success(), "killed: {status}");
    assert!(
        receiver.accepted().is_empty(),
        "nothing accepted before the kill"
    );

    receiver.set_then(Reply::status(200));
    let port = common::free_port();
    cfg.write_file("prescale.toml", &config(port));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut second = spawn(cfg.path(), &log);
    poll_until(
        "the pending rebalance delivered after restart",
        DEADLINE,
        || {
            receiver
                .accepted()
                .iter()
                .any(|r| r.header("idempotency-key") == Some(key.as_str()))
                .then_some(())
        },
    );
    let d = poll_until("the delivery recorded", DEADLINE, || {
        get(addr, &format!("/api/v1/deliveries/{id}")).filter(|d| d["state"] == "delivered")
    });
    assert_eq!(d["idempotency_key"], key.as_str());
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for r in receiver.accepted() {
        let k = r.header("idempotency-key").unwrap().to_owned();
        prescale::act::webhook::verify(
            SECRET.as_bytes(),
            r.header("prescale-signature").unwrap(),
            &r.body,
            common::now_secs(),
            300,
        )
        .expect("signed");
        *by_key.entry(k).or_default() += 1;
    }
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
    second.kill().expect("stop");
    let _ = second.wait();
}

fn serve_fails(cfg: &TempConfig, wants: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_prescale"))
        .args(["serve", "--config"])
        .arg(cfg.path())
        .stdin(Stdio::null())
        .output()
        .expect("run prescale");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {stderr}");
    for want in wants {
        assert!(stderr.contains(want), "stderr lacks `{want}`: {stderr}");
    }
}

fn config_with_state(dir: &str) -> String {
    // Prometheus is never reached: prescale stops before polling.
    common::minimal_config(
        "http://127.0.0.1:9",
        std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port())),
        "",
    ) + &format!("\n[state]\ndir = \"{dir}\"\n")
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
