//! The receiver checks of the webhook contract (`docs/webhooks.md`), run as written: the
//! one with the Standard Webhooks library (PyPI `standardwebhooks`, which `tests/run.sh`
//! installs), the shell one (with `openssl`) and the Python one, against headers prescale
//! signs — with one secret, and with two while rotating. And the README's one-line receiver
//! (`examples/receiver.py`), started as the README starts it, receiving what prescale's own
//! webhook sender posts with the shipped configuration's secret.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use prescale::act::Attempt;
use prescale::act::webhook::{WebhookSender, sign_all, standard};
use prescale::config::{Config, DeliveryConfig, WebhookConfig};

/// The code block that follows `<!-- receiver-check:{lang}` in the webhook contract.
fn snippet(lang: &str) -> String {
    let doc = repo("docs/webhooks.md");
    let text = std::fs::read_to_string(&doc).expect("docs/webhooks.md");
    let marker = format!("<!-- receiver-check:{lang} ");
    let after = &text[text
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/webhooks.md has no `{marker}` block"))..];
    let start = after.find("```").expect("a code block");
    let body = &after[start..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    body[..body.find("```").expect("closing fence")].to_owned()
}

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// (header, body, secret) → does each snippet say valid?
fn cases(now: i64) -> Vec<(String, Vec<u8>, &'static str, bool)> {
    let body = br#"{"schema_version":1,"kind":"scale","target":"web","to":7}"#.to_vec();
    let one = sign_all(&[b"new-secret"], now, &body);
    let two = sign_all(&[b"new-secret", b"old-secret"], now, &body);
    let old = sign_all(&[b"new-secret"], now - 3_600, &body);
    let mut tampered = body.clone();
    tampered[30] ^= 1;
    vec![
        (one.clone(), body.clone(), "new-secret", true),
        (one.clone(), body.clone(), "old-secret", false),
        (two.clone(), body.clone(), "new-secret", true),
        (two.clone(), body.clone(), "old-secret", true),
        (two.clone(), body.clone(), "wrong", false),
        (two, tampered, "new-secret", false),
        (old, body.clone(), "new-secret", false),
        ("v1=abc".to_owned(), body, "new-secret", false),
    ]
}

/// (headers, body, secret as configured) → does the library snippet say valid? Plain and
/// `whsec_` secrets, a rotation, a tampered body, an old timestamp, a missing header.
fn standard_cases(now: i64) -> Vec<(serde_json::Value, Vec<u8>, &'static str, bool)> {
    const WHSEC: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let whsec_key = b"0123456789abcdef0123456789abcdef".as_slice();
    let body = br#"{"schema_version":1,"kind":"scale","target":"web","to":7}"#.to_vec();
    let id = "0123456789abcdef0123456789abcdef";
    let headers = |keys: &[&[u8]], t: i64| {
        serde_json::json!({
            standard::ID_HEADER: id,
            standard::TIMESTAMP_HEADER: t.to_string(),
            standard::SIGNATURE_HEADER: standard::sign(keys, id, t, &body),
        })
    };
    let one = headers(&[b"new-secret"], now);
    let two = headers(&[whsec_key, b"new-secret"], now);
    let mut tampered = body.clone();
    tampered[30] ^= 1;
    let mut missing = one.clone();
    missing
        .as_object_mut()
        .unwrap()
        .remove(standard::TIMESTAMP_HEADER);
    vec![
        (one.clone(), body.clone(), "new-secret", true),
        (one.clone(), body.clone(), "old-secret", false),
        (two.clone(), body.clone(), WHSEC, true),
        (two.clone(), body.clone(), "new-secret", true),
        (two.clone(), body.clone(), "wrong", false),
        (two, tampered, WHSEC, false),
        (
            headers(&[b"new-secret"], now - 3_600),
            body.clone(),
            "new-secret",
            false,
        ),
        (missing, body, "new-secret", false),
    ]
}

#[test]
fn library_check_verifies_what_prescale_signs() {
    let code = snippet("python-library")
        + "\nimport json, sys\n\
           for case in json.load(open(sys.argv[1])):\n\
           \x20   print(verify(case['secret'], bytes(case['body']), case['headers']))\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("verify.py");
    std::fs::write(&file, code).unwrap();
    let cases = standard_cases(common::now_secs());
    let input: Vec<serde_json::Value> = cases
        .iter()
        .map(|(headers, body, secret, _)| {
            serde_json::json!({"headers": headers, "body": body, "secret": secret})
        })
        .collect();
    let cases_file = dir.path().join("cases.json");
    std::fs::write(&cases_file, serde_json::to_vec(&input).unwrap()).unwrap();
    let out = Command::new("python3")
        .arg(&file)
        .arg(&cases_file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); install Debian package python3"));
    assert!(
        out.status.success(),
        "the library snippet failed (tests/run.sh installs PyPI standardwebhooks): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let want: Vec<String> = cases
        .iter()
        .map(|c| if c.3 { "True" } else { "False" }.to_owned())
        .collect();
    assert_eq!(said, want, "one line per case: {cases:?}");
}

#[test]
fn shell_check_verifies_what_prescale_signs() {
    let script = snippet("sh");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("verify.sh");
    std::fs::write(&file, &script).unwrap();
    for (i, (header, body, secret, want)) in cases(common::now_secs()).into_iter().enumerate() {
        let body_file = dir.path().join(format!("body{i}.json"));
        std::fs::write(&body_file, &body).unwrap();
        let out = Command::new("sh")
            .arg(&file)
            .arg(&header)
            .arg(&body_file)
            .env("SECRET", secret)
            .output()
            .expect("run sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("not found"),
            "a tool is missing (openssl is in Debian package openssl): {stderr}"
        );
        assert_eq!(
            out.status.success() && stdout.trim() == "valid",
            want,
            "case {i}: header {header}, secret {secret}: {stdout}{stderr}"
        );
    }
}

#[test]
fn python_check_verifies_what_prescale_signs() {
    let code = snippet("python")
        + "\nimport sys\nprint(verify(sys.argv[1].encode(), sys.argv[2], open(sys.argv[3], 'rb').read()))\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("verify.py");
    std::fs::write(&file, code).unwrap();
    for (i, (header, body, secret, want)) in cases(common::now_secs()).into_iter().enumerate() {
        let body_file = dir.path().join(format!("body{i}.json"));
        std::fs::write(&body_file, &body).unwrap();
        let out = Command::new("python3")
            .arg(&file)
            .arg(secret)
            .arg(&header)
            .arg(&body_file)
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}); install Debian package python3"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "case {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout.trim(),
            if want { "True" } else { "False" },
            "case {i}: header {header}, secret {secret}"
        );
    }
}

/// `examples/receiver.py` on `port` with `secret_file`, as the README starts it; its
/// stdout lines arrive on the channel.
struct Receiver {
    child: common::ChildGuard,
    lines: mpsc::Receiver<String>,
}

impl Receiver {
    fn start(port: u16, secret_file: &Path) -> Self {
        let mut child = common::ChildGuard::spawn(
            Command::new("python3")
                .arg(repo("examples/receiver.py"))
                .args(["--port", &port.to_string(), "--secret-file"])
                .arg(secret_file)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
            "examples/receiver.py",
            "python3",
        );
        let stdout = child.child_mut().stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let receiver = Self { child, lines };
        let first = receiver.next_line();
        assert!(
            first.starts_with("listening on http://127.0.0.1:"),
            "{first}"
        );
        receiver
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a line from examples/receiver.py within 30 s")
    }
}

/// The shipped configuration's platform webhook, pointed at `port`.
fn shipped_hook(port: u16) -> WebhookConfig {
    let config = Config::load(&repo("config/prescale.toml")).expect("the shipped example loads");
    let mut hook = config.targets[0]
        .platform
        .clone()
        .expect("the shipped example has a platform webhook");
    hook.url
        .set_port(Some(port))
        .expect("an http URL takes a port");
    hook
}

/// The README's receiver, started with `config/webhook-secret`, answers 200 to what
/// prescale's webhook sender signs with the shipped configuration (and prints the action),
/// also while a secret is rotated; 401 to a request signed with another secret, which
/// prescale then treats as final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_receiver_accepts_what_prescale_sends_with_the_shipped_config() {
    let port = common::free_port();
    let mut receiver = Receiver::start(port, &repo("config/webhook-secret"));
    let sender = WebhookSender::with_builder(
        DeliveryConfig::default(),
        reqwest::Client::builder().no_proxy(),
    )
    .expect("a webhook sender");
    let body = br#"{"schema_version":1,"kind":"scale","target":"web","issued_at":1763700000,"from":4,"to":7}"#;
    let hook = shipped_hook(port);
    match sender
        .attempt(&hook, body, "0123456789abcdef0123456789abcdef", None)
        .await
    {
        Attempt::Success(status) => assert_eq!(status, Some(200)),
        other => panic!("the receiver refused a correctly signed action: {other:?}"),
    }
    assert_eq!(
        receiver.next_line(),
        "valid /scale scale web: 4 -> 7 (key 0123456789abcdef0123456789abcdef)"
    );

    // Another secret, and the shipped one as the previous while rotating.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("new-secret"), "a-new-secret\n").unwrap();
    let rotating = format!(
        "[[target]]\nname = \"web\"\nrequest_rate = \"q\"\ncapacity_rps = 1\nstartup = \"1m\"\n\
         max_replicas = 4\ninitial_replicas = 1\n[target.platform]\nurl = \"http://127.0.0.1:{port}/scale\"\n\
         secret_file = \"new-secret\"\nprevious_secret_file = \"{}\"\n",
        repo("config/webhook-secret").display()
    );
    let config = Config::parse(&rotating, &dir.path().join("prescale.toml")).expect("config");
    let mut hook = config.targets[0].platform.clone().expect("platform");
    match sender.attempt(&hook, body, "k2", None).await {
        Attempt::Success(status) => assert_eq!(status, Some(200)),
        other => panic!("refused while rotating: {other:?}"),
    }
    assert!(receiver.next_line().starts_with("valid /scale"));
    hook.previous_secret = None;
    match sender.attempt(&hook, body, "k3", None).await {
        Attempt::Final { status, .. } => assert_eq!(status, Some(401)),
        other => panic!("a wrong secret was not refused for good: {other:?}"),
    }
    assert_eq!(receiver.next_line(), "INVALID signature on /scale: refused");
    receiver.child.kill();
}
