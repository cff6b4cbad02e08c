//! The Standard Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`)
//! checked by others than prescale: the signature against Python's own `hmac` and `base64`,
//! and real deliveries of `prescale serve` (a real Prometheus, scale and weights webhooks,
//! a retry, a secret rotation) verified by the standard's library, PyPI `standardwebhooks`,
//! in a Python receiver (`standard_webhooks_receiver.py`).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{App, Backfill, ChildGuard, Exporter, Options, Prometheus, TestConfig, TestTarget};
use prescale::act::webhook::{self, standard};
use prescale::config::{Secret, WebhookConfig};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);

fn hook(secret: &str, previous: Option<&str>) -> WebhookConfig {
    WebhookConfig {
        url: "http://127.0.0.1:9/h".parse().expect("url"),
        secret: Secret::new(secret),
        previous_secret: previous.map(Secret::new),
    }
}

/// What Python's `hmac` and `base64` make of (secrets, id, timestamp, body), the secrets
/// read as the documentation says: `whsec_<base64>` as the key it decodes to, any other
/// as its UTF-8 bytes.
fn python_signature(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    let code = r#"
import base64, hashlib, hmac, sys
secrets, msg_id, ts, body = sys.argv[1].split("\n"), sys.argv[2], sys.argv[3], bytes.fromhex(sys.argv[4])
def key(s):
    return base64.b64decode(s[len("whsec_"):], validate=True) if s.startswith("whsec_") else s.encode("utf-8")
signed = f"{msg_id}.{ts}.".encode() + body
print(" ".join("v1," + base64.b64encode(hmac.new(key(s), signed, hashlib.sha256).digest()).decode() for s in secrets))
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            code,
            &secrets.join("\n"),
            id,
            &timestamp.to_string(),
            &hex::encode(body),
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); install Debian package python3"));
    assert!(
        out.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned()
}

/// (secret, previous secret, id, timestamp, body).
type Case<'a> = (&'a str, Option<&'a str>, &'a str, i64, &'a [u8]);

/// Our `webhook-signature` is the one Python's `hmac` computes independently, for plain and
/// `whsec_` secrets, one or two of them, ASCII and non-ASCII.
#[test]
fn signatures_match_pythons_hmac() {
    let whsec = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    );
    let body = br#"{"schema_version":1,"kind":"scale","target":"web","to":7}"#;
    let cases: &[Case] = &[
        (
            "s3cret",
            None,
            "0123456789abcdef0123456789abcdef",
            1_700_000_000,
            body,
        ),
        (&whsec, None, "5f1e", 1, body),
        (&whsec, Some("old secret"), "5f1e", 1_750_000_123, body),
        (
            "pässwörd",
            Some(&whsec),
            "ab",
            42,
            "{\"name\":\"café\"}".as_bytes(),
        ),
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            None,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        ),
    ];
    for &(secret, previous, id, t, body) in cases {
        let [_, _, (name, ours)] =
            standard::headers(&hook(secret, previous), id, t, body).expect("valid secrets");
        assert_eq!(name, "webhook-signature");
        let secrets: Vec<&str> = std::iter::once(secret).chain(previous).collect();
        assert_eq!(
            ours,
            python_signature(&secrets, id, t, body),
            "secrets {secrets:?}, id {id}, t {t}"
        );
    }
}

/// The receiver script, started with what it holds per path; its JSON lines arrive on the
/// channel. Panics with its error when it cannot start (e.g. the library is not installed).
fn start_receiver(config: &Value) -> (ChildGuard, u16, mpsc::Receiver<Value>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standard_webhooks_receiver.py");
    let mut child = ChildGuard::spawn(
        Command::new("python3")
            .arg(&script)
            .arg(config.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        "the Python receiver",
        "python3",
    );
    let stdout = child.child_mut().stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    let Some(port) = first
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
    else {
        let mut err = String::new();
        if let Some(mut stderr) = child.child_mut().stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
        }
        panic!("the Python receiver did not start (said {first:?}): {err}");
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let v = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("receiver line is not JSON ({e}): {line}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    (child, port, rx)
}

/// Collects the receiver's records until `done` says enough; panics after [`DEADLINE`]
/// with what did arrive.
fn collect(rx: &mpsc::Receiver<Value>, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let until = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    while !done(&got) {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) => got.push(v),
            Err(e) => panic!("{e:?} after {DEADLINE:?}; the receiver saw: {got:#?}"),
        }
    }
    got
}

fn header<'a>(record: &'a Value, name: &str) -> &'a str {
    record["headers"][name]
        .as_str()
        .unwrap_or_else(|| panic!("no `{name}` header: {record}"))
}

/// Real deliveries of `prescale serve`, checked by `standardwebhooks.Webhook(secret).verify`
/// in a Python receiver: the scale webhook while its secret is rotated (a `whsec_` secret
/// now, a plain one before: each verifies alone), through a retry; the weights webhook with
/// a plain secret. A tampered body and a wrong secret are refused by the library, and the
/// `Prescale-Signature` still verifies with each secret as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_verifies_real_deliveries_during_a_rotation() {
    let new = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    );
    let old = "the old plain secret";
    let (_receiver, port, records) = start_receiver(&serde_json::json!({
        "/scale": {"whsec": [new], "plain": [old], "first": [503]},
        "/weights": {"plain": [old]},
    }));

    let backfill = Backfill::from_trace(1);
    let exporter = Exporter::start(backfill.total(), 300.0);
    let prom = Prometheus::start_async(Options {
        backfill: Some(backfill),
        scrape: Some(exporter.addr()),
        ..Options::default()
    })
    .await;
    // Two instances, the second twice as slow: weights to send.
    let latency = r#"label_replace(vector(0.1), "instance", "10.0.0.1:8080", "", "") or label_replace(vector(0.2), "instance", "10.0.0.2:8080", "", "")"#;
    let receiver = format!("http://127.0.0.1:{port}");
    let mut target = TestTarget::web()
        .set("capacity_rps", 0.5)
        .set("startup", "1m")
        .set("max_replicas", 500)
        .set("initial_replicas", 2)
        .set("interval", "1s")
        .set("step", "10s")
        .set("history", "6h")
        .set("instance_latency", latency)
        .balancer(&format!("{receiver}/weights"), "old");
    let platform = [
        ("url", format!("{receiver}/scale")),
        ("secret_file", "new".to_owned()),
        ("previous_secret_file", "old".to_owned()),
    ];
    target = target.set(
        "platform",
        toml::Value::Table(
            platform
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        ),
    );
    let cfg = TestConfig::new()
        .prometheus(&prom.url())
        .set("delivery", "initial_backoff", "20ms")
        .set("delivery", "max_backoff", "100ms")
        .target(target)
        .write();
    cfg.write_file("new", &format!("{new}\n"));
    cfg.write_file("old", old);

    let started = common::now_secs();
    let app = App::start(&cfg).await;
    let on = |path: &'static str| move |r: &&Value| r["path"] == path;
    let is_weights = |r: &Value| r["path"] == "/weights";
    let seen = tokio::task::spawn_blocking(move || {
        collect(&records, |got| {
            got.iter().filter(on("/scale")).count() >= 2 && got.iter().any(is_weights)
        })
    })
    .await
    .expect("collecting");
    app.stop().await;
    let ended = common::now_secs();

    for r in &seen {
        let n = if r["path"] == "/scale" { 2 } else { 1 };
        assert_eq!(
            r["errors"],
            Value::Array(vec![Value::Null; n]),
            "the library verifies with each secret: {r}"
        );
        let refused = |e: &Value| {
            e.as_str()
                .is_some_and(|e| e.contains("No matching signature"))
        };
        assert!(
            r["tampered_errors"]
                .as_array()
                .is_some_and(|a| a.len() == n && a.iter().all(refused)),
            "a tampered body is refused: {r}"
        );
        assert!(refused(&r["wrong_error"]), "a wrong secret is refused: {r}");

        // One `v1,` per secret; the delivery's key as id; this attempt's time, also the
        // `Prescale-Signature`'s, which still verifies with each secret as written.
        let signatures = header(r, "webhook-signature").split(' ').count();
        assert_eq!(signatures, n, "{r}");
        assert_eq!(header(r, "webhook-id"), header(r, "idempotency-key"), "{r}");
        let t: i64 = header(r, "webhook-timestamp")
            .parse()
            .expect("integer seconds");
        assert!(
            (started..=ended).contains(&t),
            "sent at {t}, within [{started}, {ended}]"
        );
        let legacy = header(r, "prescale-signature");
        assert!(legacy.starts_with(&format!("t={t},")), "{legacy}");
        let body = r["body"].as_str().expect("body").as_bytes();
        let held: &[&str] = if n == 2 { &[&new, old] } else { &[old] };
        for secret in held {
            webhook::verify(secret.as_bytes(), legacy, body, t, 0)
                .unwrap_or_else(|e| panic!("Prescale-Signature with {secret:?}: {e}: {r}"));
        }
    }
    // The scale webhook failed once (503) and was sent again: the same id, verified again.
    let scales: Vec<&Value> = seen.iter().filter(on("/scale")).collect();
    assert_eq!(
        (scales[0]["status"].as_u64(), scales[1]["status"].as_u64()),
        (Some(503), Some(200))
    );
    assert_eq!(
        header(scales[0], "webhook-id"),
        header(scales[1], "webhook-id")
    );
    assert_eq!(scales[0]["body"], scales[1]["body"]);
    let body: Value =
        serde_json::from_str(scales[0]["body"].as_str().expect("body")).expect("JSON");
    assert_eq!(
        (body["kind"].as_str(), body["from"].as_u64()),
        (Some("scale"), Some(2)),
        "{body}"
    );
    let weights = seen.iter().find(|r| is_weights(r)).expect("weights");
    assert_eq!(weights["status"], 200, "{weights}");
}
