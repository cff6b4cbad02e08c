//! Signed JSON webhooks, retried with exponential backoff.
//!
//! Each request is a `POST` of [`Action::body`] with these headers:
//!
//! - `Prescale-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//!   The timestamp is inside the signed text, so a receiver can refuse old requests
//!   (replays); [`verify`] is the reference check. While a secret is rotated, the header
//!   carries one `v1=` per secret (the current one first), so a receiver holding either
//!   accepts the request.
//! - `Idempotency-Key: <key>`: [`Action::idempotency_key`], the same on every attempt.
//! - `webhook-id: <key>`, `webhook-timestamp: <unix seconds>` and
//!   `webhook-signature: v1,<base64> [v1,<base64>]`: the same delivery signed as the
//!   Standard Webhooks convention says ([`standard`]), so a receiver can check it with that
//!   standard's libraries. Both signatures carry the same timestamp.
//! - `Content-Type: application/json`, `User-Agent: prescale/<version>`.
//!
//! A 2xx answer is success. Connection errors, timeouts, 5xx, 408 and 429 are retried up to
//! `max_attempts` in all; any other answer (a 3xx — redirects are not followed — or a 4xx)
//! is final. The body and the key are identical on every attempt; the signature is made
//! afresh each time, so its timestamp stays within a receiver's tolerance.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use sha2::Sha256;
use tracing::{debug, info, warn};
use url::Url;

use super::outbox::DeliveryOutcome;
use super::{Action, ActionKind, Attempt};
use crate::config::{DeliveryConfig, WebhookConfig};

pub mod standard;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Prescale-Signature";
/// The header carrying [`Action::idempotency_key`].
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// The header carrying the epoch of the target's owner, when instances share targets.
pub const EPOCH_HEADER: &str = "Prescale-Epoch";
/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("prescale/", env!("CARGO_PKG_VERSION"));

/// How much of a rejecting receiver's body is kept, in characters.
const BODY_SNIPPET_CHARS: usize = 500;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` fails only for fixed-size-key MACs.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Prescale-Signature` header value for `body` signed at `timestamp` (Unix s):
/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    sign_all(&[secret], timestamp, body)
}

/// The header signed with each of `secrets`, in order: `t=<timestamp>,v1=<…>,v1=<…>`.
pub fn sign_all(secrets: &[&[u8]], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let tag = mac(secret, timestamp, body).finalize().into_bytes();
        header.push_str(",v1=");
        header.push_str(&hex::encode(tag));
    }
    header
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is not `t=<integer>,v1=<hex>[,v1=<hex>…]`.
    #[error("malformed signature header: {0}")]
    Malformed(&'static str),
    /// No `v1` signature matches the body and the secret.
    #[error("signature does not match")]
    Mismatch,
    /// The signature is good but its timestamp is too far from now: a replay, or a clock
    /// out of step.
    #[error("signature timestamp {timestamp} is more than {tolerance_secs}s from now ({now})")]
    OutsideTolerance {
        /// The signed timestamp (Unix s).
        timestamp: i64,
        /// The receiver's clock (Unix s).
        now: i64,
        /// The allowed distance, seconds.
        tolerance_secs: i64,
    },
}

/// Checks a `Prescale-Signature` header against `body`, as a receiver should: some `v1`
/// must be the HMAC of `"<t>.<body>"` (compared in constant time), and `t` must be within
/// `tolerance_secs` of `now` (Unix s). Several `v1` entries are allowed (secret rotation);
/// unknown schemes are ignored. Pairs are read as signed, like the README's checks: `t` in
/// canonical digits, `v1` in lower-case hex, no spaces.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (scheme, value) = part.split_once('=').ok_or(SignatureError::Malformed(
            "expected comma-separated key=value pairs",
        ))?;
        match scheme {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed("more than one `t`"));
                }
                // As signed: no sign, no leading zero (the signed text is `t` as written).
                let t = value
                    .parse::<i64>()
                    .ok()
                    .filter(|t| t.to_string() == value)
                    .ok_or(SignatureError::Malformed("`t` is not an integer"))?;
                timestamp = Some(t);
            }
            // Lower case only, as signed: the README's checks compare the text.
            "v1" if value.bytes().any(|b| b.is_ascii_uppercase()) => {
                return Err(SignatureError::Malformed("`v1` is not lower-case hex"));
            }
            "v1" => signatures.push(
                hex::decode(value).map_err(|_| SignatureError::Malformed("`v1` is not hex"))?,
            ),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no `t`"))?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("no `v1`"));
    }
    let expected = mac(secret, timestamp, body);
    if !signatures
        .iter()
        .any(|s| expected.clone().verify_slice(s).is_ok())
    {
        return Err(SignatureError::Mismatch);
    }
    if now.abs_diff(timestamp) > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::OutsideTolerance {
            timestamp,
            now,
            tolerance_secs,
        });
    }
    Ok(())
}

/// A delivered action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Attempts made, the successful one included.
    pub attempts: u32,
    /// The receiver's 2xx status.
    pub status: u16,
}

impl Delivered {
    /// [`DeliveryOutcome::Delivered`] (see [`DeliveryError::outcome`]).
    pub fn outcome(&self) -> DeliveryOutcome {
        DeliveryOutcome::Delivered
    }

    /// `"delivered"`: the outcome label for metrics.
    pub fn outcome_label(&self) -> &'static str {
        self.outcome().as_str()
    }
}

/// Why an action was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The receiver answered with a final refusal (a 4xx other than 408/429, or a 3xx);
    /// retrying would not help.
    #[error(
        "{kind} webhook for `{target}` to {url}: rejected with HTTP {status} after {attempts} attempt(s): {body}"
    )]
    Rejected {
        /// The target's name.
        target: String,
        /// The action's kind.
        kind: ActionKind,
        /// The receiver (any password redacted).
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The receiver's status.
        status: u16,
        /// The start of the receiver's body (about 500 characters, lossily decoded).
        body: String,
    },
    /// Every attempt failed with a connection error, a timeout or a retryable status.
    #[error(
        "{kind} webhook for `{target}` to {url}: gave up after {attempts} attempt(s); last: {last}"
    )]
    GaveUp {
        /// The target's name.
        target: String,
        /// The action's kind.
        kind: ActionKind,
        /// The receiver (any password redacted).
        url: String,
        /// Attempts made.
        attempts: u32,
        /// What went wrong the last time.
        last: String,
    },
}

impl DeliveryError {
    /// [`DeliveryOutcome::Rejected`] or [`DeliveryOutcome::GaveUp`].
    pub fn outcome(&self) -> DeliveryOutcome {
        match self {
            Self::Rejected { .. } => DeliveryOutcome::Rejected,
            Self::GaveUp { .. } => DeliveryOutcome::GaveUp,
        }
    }

    /// `"rejected"` or `"gave_up"`: the outcome label for metrics.
    pub fn outcome_label(&self) -> &'static str {
        self.outcome().as_str()
    }

    /// Attempts made.
    pub fn attempts(&self) -> u32 {
        match self {
            Self::Rejected { attempts, .. } | Self::GaveUp { attempts, .. } => *attempts,
        }
    }
}

/// Sends actions to webhooks. Cheap to share by reference; holds one connection pool.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    cfg: DeliveryConfig,
}

impl WebhookSender {
    /// A sender with its own HTTP client (system proxy settings apply; redirects are not
    /// followed). Fails only if the TLS backend cannot be initialised.
    pub fn new(cfg: DeliveryConfig) -> Result<Self, reqwest::Error> {
        Self::with_builder(cfg, reqwest::Client::builder())
    }

    /// A sender whose client is built from `builder` (e.g. `no_proxy()` in tests).
    pub fn with_builder(
        cfg: DeliveryConfig,
        builder: reqwest::ClientBuilder,
    ) -> Result<Self, reqwest::Error> {
        // Already installed (by us or another client) is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = builder
            .user_agent(USER_AGENT)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            // A redirected POST may become a GET or leave the configured host: refuse.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { client, cfg })
    }

    /// Delivers `action` to `hook`, retrying transient failures with exponential backoff
    /// and jitter, and logs one line with the outcome. For one-off use: `serve` delivers
    /// through the outbox, which calls [`WebhookSender::attempt`] and keeps its own
    /// (durable) count of attempts.
    ///
    /// Dropping the future stops further attempts; a request already sent may still have
    /// been applied, which is what the idempotency key is for.
    pub async fn deliver(
        &self,
        hook: &WebhookConfig,
        action: &Action,
    ) -> Result<Delivered, DeliveryError> {
        let body = action.body();
        let key = action.idempotency_key();
        let url = redacted(&hook.url);
        let (target, action_kind) = (action.target(), action.kind());
        let kind = action_kind.as_str();
        let max_attempts = self.cfg.max_attempts.max(1);

        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(hook, &body, &key, None).await {
                Attempt::Success(status) => {
                    let status = status.unwrap_or(200);
                    info!(target, kind, %url, attempts = attempt, status, %key, "webhook delivered");
                    return Ok(Delivered {
                        attempts: attempt,
                        status,
                    });
                }
                Attempt::Final { status, body, .. } => {
                    let status = status.unwrap_or(0);
                    warn!(target, kind, %url, attempts = attempt, status, %key, body = %body, "webhook rejected");
                    return Err(DeliveryError::Rejected {
                        target: target.to_owned(),
                        kind: action_kind,
                        url,
                        attempts: attempt,
                        status,
                        body,
                    });
                }
                Attempt::Retry {
                    error,
                    status,
                    retry_after,
                } => {
                    if attempt >= max_attempts {
                        warn!(target, kind, %url, attempts = attempt, status, %key, error = %error, "webhook gave up");
                        return Err(DeliveryError::GaveUp {
                            target: target.to_owned(),
                            kind: action_kind,
                            url,
                            attempts: attempt,
                            last: error,
                        });
                    }
                    let wait = backoff(&self.cfg, attempt, rand::random::<f64>());
                    let wait = retry_after
                        .map_or(wait, |ra| ra.clamp(wait, self.cfg.max_backoff.max(wait)));
                    debug!(
                        target, kind, %url, attempt, status, %key, error = %error,
                        backoff_ms = wait.as_millis() as u64, "webhook attempt failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One signed POST of `body` to `hook` with idempotency key `key` (and the owner's
    /// `epoch`, if any); no retries.
    pub async fn attempt(
        &self,
        hook: &WebhookConfig,
        body: &[u8],
        key: &str,
        epoch: Option<u64>,
    ) -> Attempt {
        let mut secrets = vec![hook.secret.expose().as_bytes()];
        if let Some(previous) = &hook.previous_secret {
            secrets.push(previous.expose().as_bytes());
        }
        let now = unix_now();
        let signature = sign_all(&secrets, now, body);
        let standard = match standard::headers(hook, key, now, body) {
            Ok(headers) => headers,
            // Only a hook built without validating its configuration gets here.
            Err(e) => {
                return Attempt::Final {
                    error: format!("webhook to {}: the signing secret {e}", redacted(&hook.url)),
                    status: None,
                    body: String::new(),
                };
            }
        };
        let mut request = self
            .client
            .post(hook.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(SIGNATURE_HEADER, signature)
            .header(IDEMPOTENCY_HEADER, key);
        for (name, value) in standard {
            request = request.header(name, value);
        }
        if let Some(epoch) = epoch {
            request = request.header(EPOCH_HEADER, epoch.to_string());
        }
        self.send(request.body(body.to_vec())).await
    }

    /// One unsigned POST of a JSON `body` to `url` (Alertmanager's API); no retries.
    pub async fn post_json(&self, url: &Url, body: &[u8]) -> Attempt {
        let request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body.to_vec());
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Attempt {
        let sent = request.send().await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    error: self.describe(&e),
                    status: None,
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return Attempt::Success(Some(status.as_u16()));
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let snippet = match snippet(&mut response).await {
            Ok(s) => s,
            Err(e) => format!("(body unreadable: {})", self.describe(&e)),
        };
        let retryable = status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS;
        if retryable {
            Attempt::Retry {
                error: format!("HTTP {status}: {snippet}"),
                status: Some(status.as_u16()),
                retry_after,
            }
        } else {
            Attempt::Final {
                error: format!("HTTP {status}"),
                status: Some(status.as_u16()),
                body: snippet,
            }
        }
    }

    fn describe(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            return format!(
                "timed out after {}",
                humantime::format_duration(self.cfg.timeout)
            );
        }
        let mut s = if e.is_connect() {
            "connect error".to_owned()
        } else {
            "request error".to_owned()
        };
        // reqwest's own message names the URL; the causes say what actually happened.
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            s.push_str(": ");
            s.push_str(&cause.to_string());
            source = cause.source();
        }
        s
    }
}

/// The first [`BODY_SNIPPET_CHARS`] characters of a body, reading no more than needed.
async fn snippet(response: &mut reqwest::Response) -> Result<String, reqwest::Error> {
    let mut bytes = Vec::new();
    while bytes.len() < BODY_SNIPPET_CHARS * 4 {
        match response.chunk().await? {
            Some(chunk) => bytes.extend_from_slice(&chunk),
            None => break,
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    Ok(match text.char_indices().nth(BODY_SNIPPET_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.into_owned(),
    })
}

/// The wait after failed attempt number `attempt` (1-based): `initial_backoff` doubled per
/// attempt, capped at `max_backoff`, with equal jitter — half fixed, half scaled by
/// `jitter` in [0, 1) — so retries spread out but never bunch at zero.
pub(crate) fn backoff(cfg: &DeliveryConfig, attempt: u32, jitter: f64) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    let base = cfg
        .initial_backoff
        .saturating_mul(factor)
        .min(cfg.max_backoff);
    let half = base / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// The URL with any credentials replaced, for logs and errors.
pub(crate) fn redacted(url: &Url) -> String {
    crate::config::redacted(url)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;

    use super::*;
    use crate::act::{RebalanceAction, ScaleAction};
    use crate::config::Secret;
    use crate::decide::{Decision, Reason};

    const SECRET: &str = "s3cret";

    /// One request as the receiver saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        headers: HeaderMap,
        body: Bytes,
    }

    #[derive(Clone, Default)]
    struct Receiver {
        seen: Arc<Mutex<Vec<Seen>>>,
        /// Answers in order; 200 once they run out.
        script: Arc<Mutex<VecDeque<(StatusCode, &'static str)>>>,
    }

    impl Receiver {
        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().expect("receiver lock").clone()
        }
    }

    async fn record(
        State(r): State<Receiver>,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, &'static str) {
        // Recorded before answering, so the sender sees the answer only after the record.
        r.seen
            .lock()
            .expect("receiver lock")
            .push(Seen { headers, body });
        r.script
            .lock()
            .expect("receiver lock")
            .pop_front()
            .unwrap_or((StatusCode::OK, "ok"))
    }

    /// A real receiver on 127.0.0.1:0 answering `script`, and the hook pointing at it.
    async fn receiver(script: &[(StatusCode, &'static str)]) -> (Receiver, WebhookConfig) {
        let r = Receiver {
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            ..Receiver::default()
        };
        let app = Router::new()
            .route("/hook", post(record))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (r, hook(&format!("http://{addr}/hook")))
    }

    fn hook(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.parse().expect("url"),
            secret: Secret::new(SECRET),
            previous_secret: None,
        }
    }

    fn sender(timeout_ms: u64, max_attempts: u32) -> WebhookSender {
        let cfg = DeliveryConfig {
            timeout: Duration::from_millis(timeout_ms),
            max_attempts,
            initial_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(10),
            ..DeliveryConfig::default()
        };
        // Tests talk to 127.0.0.1 only: never through a proxy from the environment.
        WebhookSender::with_builder(cfg, reqwest::Client::builder().no_proxy()).expect("client")
    }

    fn scale() -> Action {
        let d = Decision {
            at: 1_700_000_000,
            from: 3,
            to: 5,
            reasons: vec![Reason {
                code: crate::decide::ReasonCode::Prediction,
                message: "needs 5".into(),
            }],
            peak: None,
        };
        Action::Scale(ScaleAction::from_decision("web", &d, Some("profile")))
    }

    fn header<'a>(s: &'a Seen, name: &str) -> &'a str {
        s.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn retries_server_errors_with_the_same_body_and_key() {
        let (r, hook) = receiver(&[
            (StatusCode::INTERNAL_SERVER_ERROR, "oops"),
            (StatusCode::BAD_GATEWAY, "down"),
        ])
        .await;
        let action = scale();
        let got = sender(2_000, 5)
            .deliver(&hook, &action)
            .await
            .expect("delivered");
        assert_eq!(
            got,
            Delivered {
                attempts: 3,
                status: 200
            }
        );
        assert_eq!(got.outcome_label(), "delivered");

        let seen = r.seen();
        assert_eq!(seen.len(), 3);
        for s in &seen {
            assert_eq!(s.body, seen[0].body);
            assert_eq!(&s.body[..], &action.body()[..]);
            assert_eq!(header(s, IDEMPOTENCY_HEADER), action.idempotency_key());
            assert_eq!(header(s, "content-type"), "application/json");
            assert_eq!(header(s, "user-agent"), USER_AGENT);
            assert_eq!(
                verify(
                    SECRET.as_bytes(),
                    header(s, SIGNATURE_HEADER),
                    &s.body,
                    unix_now(),
                    300
                ),
                Ok(())
            );
        }
    }

    #[tokio::test]
    async fn retries_too_many_requests() {
        let (r, hook) = receiver(&[(StatusCode::TOO_MANY_REQUESTS, "slow down")]).await;
        let got = sender(2_000, 3)
            .deliver(&hook, &scale())
            .await
            .expect("delivered");
        assert_eq!((got.attempts, r.seen().len()), (2, 2));
    }

    #[tokio::test]
    async fn client_error_is_final_and_keeps_the_body() {
        let (r, hook) = receiver(&[(StatusCode::BAD_REQUEST, "unknown target `web`")]).await;
        let err = sender(2_000, 5)
            .deliver(&hook, &scale())
            .await
            .expect_err("rejected");
        assert_eq!(err.outcome_label(), "rejected");
        match &err {
            DeliveryError::Rejected {
                status,
                body,
                attempts,
                target,
                kind,
                ..
            } => {
                assert_eq!(
                    (*status, body.as_str(), *attempts),
                    (400, "unknown target `web`", 1)
                );
                assert_eq!((target.as_str(), *kind), ("web", ActionKind::Scale));
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        assert_eq!(r.seen().len(), 1);
    }

    #[tokio::test]
    async fn connection_refused_gives_up_after_max_attempts() {
        // A port that was just free: bind, note it, close.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = dead.local_addr().expect("local addr");
        drop(dead);
        let err = sender(2_000, 3)
            .deliver(&hook(&format!("http://{addr}/hook")), &scale())
            .await
            .expect_err("gave up");
        assert_eq!(err.outcome_label(), "gave_up");
        match &err {
            DeliveryError::GaveUp { attempts, last, .. } => {
                assert_eq!(*attempts, 3);
                assert!(last.starts_with("connect error"), "{last}");
            }
            other => panic!("expected GaveUp, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn silent_receiver_times_out() {
        // Accepts connections and holds them without ever answering.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicU32::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        let err = sender(200, 2)
            .deliver(&hook(&format!("http://{addr}/hook")), &scale())
            .await
            .expect_err("gave up");
        match &err {
            DeliveryError::GaveUp { attempts, last, .. } => {
                assert_eq!(*attempts, 2);
                assert!(last.contains("timed out after 200ms"), "{last}");
            }
            other => panic!("expected GaveUp, got {other:?}"),
        }
        assert!(err.to_string().contains("timed out"), "{err}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn delivers_rebalance() {
        let (r, hook) = receiver(&[]).await;
        let weights = [("a:80".to_owned(), 10), ("b:80".to_owned(), 0)].into();
        let action = Action::Rebalance(RebalanceAction {
            target: "web".into(),
            weights,
            issued_at: 7,
        });
        let got = sender(2_000, 1)
            .deliver(&hook, &action)
            .await
            .expect("delivered");
        assert_eq!(got.attempts, 1);
        let seen = r.seen();
        let body: serde_json::Value = serde_json::from_slice(&seen[0].body).expect("json");
        assert_eq!(body["weights"]["a:80"], 10);
    }

    /// (header, body, secret, now) → verify's answer, for a body signed at t=1000.
    #[test]
    fn sign_and_verify() {
        let body: &[u8] = br#"{"kind":"scale"}"#;
        let good = sign(b"key", 1000, body);
        let check =
            |header: &str, b: &[u8], secret: &[u8], now: i64, want: Result<(), SignatureError>| {
                assert_eq!(
                    verify(secret, header, b, now, 300),
                    want,
                    "header {header:?}, now {now}"
                );
            };
        let malformed = |why| Err(SignatureError::Malformed(why));
        let outside = |now| {
            Err(SignatureError::OutsideTolerance {
                timestamp: 1000,
                now,
                tolerance_secs: 300,
            })
        };

        assert!(
            good.starts_with("t=1000,v1=") && good.len() == "t=1000,v1=".len() + 64,
            "{good}"
        );
        check(&good, body, b"key", 1000, Ok(()));
        check(&good, body, b"key", 1300, Ok(()));
        check(&good, body, b"key", 700, Ok(()));
        check(
            &format!("t=1000,v1={},v1={}", "00".repeat(32), &good[10..]),
            body,
            b"key",
            1000,
            Ok(()),
        );
        check(&format!("{good},v0=legacy"), body, b"key", 1000, Ok(()));
        check(
            &good,
            br#"{"kind":"scalE"}"#,
            b"key",
            1000,
            Err(SignatureError::Mismatch),
        );
        check(&good, body, b"other", 1000, Err(SignatureError::Mismatch));
        check(
            &good.replace("t=1000", "t=1001"),
            body,
            b"key",
            1000,
            Err(SignatureError::Mismatch),
        );
        check(&good, body, b"key", 1301, outside(1301));
        check(&good, body, b"key", 699, outside(699));
        check(
            "",
            body,
            b"key",
            1000,
            malformed("expected comma-separated key=value pairs"),
        );
        check(&good[7..], body, b"key", 1000, malformed("no `t`"));
        check("t=1000", body, b"key", 1000, malformed("no `v1`"));
        check(
            &good.replace("t=1000", "t=soon"),
            body,
            b"key",
            1000,
            malformed("`t` is not an integer"),
        );
        check(
            "t=1000,v1=zz",
            body,
            b"key",
            1000,
            malformed("`v1` is not hex"),
        );
        check(
            &format!("t=1,{good}"),
            body,
            b"key",
            1000,
            malformed("more than one `t`"),
        );
    }

    /// While rotating, both secrets sign; a receiver holding either accepts.
    #[test]
    fn rotation_signs_with_both_secrets() {
        let body: &[u8] = b"{}";
        let header = sign_all(&[b"new", b"old"], 1000, body);
        assert_eq!(header.matches(",v1=").count(), 2, "{header}");
        assert!(
            header.starts_with(&sign(b"new", 1000, body)),
            "current first"
        );
        for secret in [&b"new"[..], b"old"] {
            assert_eq!(verify(secret, &header, body, 1000, 300), Ok(()));
        }
        assert_eq!(
            verify(b"other", &header, body, 1000, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[tokio::test]
    async fn previous_secret_signs_every_attempt() {
        let (r, mut hook) = receiver(&[(StatusCode::INTERNAL_SERVER_ERROR, "oops")]).await;
        hook.previous_secret = Some(Secret::new("previous"));
        sender(2_000, 3)
            .deliver(&hook, &scale())
            .await
            .expect("delivered");
        let seen = r.seen();
        assert_eq!(seen.len(), 2);
        for s in &seen {
            let h = header(s, SIGNATURE_HEADER);
            assert_eq!(
                verify(SECRET.as_bytes(), h, &s.body, unix_now(), 300),
                Ok(())
            );
            assert_eq!(verify(b"previous", h, &s.body, unix_now(), 300), Ok(()));

            // The Standard Webhooks headers: the key as id, the attempt's time (the one the
            // `Prescale-Signature` carries too), one `v1,` per secret.
            let id = header(s, standard::ID_HEADER);
            assert_eq!(id, header(s, IDEMPOTENCY_HEADER));
            let t = header(s, standard::TIMESTAMP_HEADER);
            assert!(h.starts_with(&format!("t={t},")), "{h} vs {t}");
            let t: i64 = t.parse().expect("integer seconds");
            assert_eq!(
                header(s, standard::SIGNATURE_HEADER),
                standard::sign(&[SECRET.as_bytes(), b"previous"], id, t, &s.body)
            );
        }
    }

    /// attempt → backoff with no jitter and with the most jitter.
    #[test]
    fn backoff_doubles_and_caps() {
        let cfg = DeliveryConfig {
            timeout: Duration::from_secs(1),
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..DeliveryConfig::default()
        };
        let check = |attempt, low_ms, high_ms| {
            assert_eq!(
                backoff(&cfg, attempt, 0.0),
                Duration::from_millis(low_ms),
                "attempt {attempt}"
            );
            assert_eq!(
                backoff(&cfg, attempt, 1.0),
                Duration::from_millis(high_ms),
                "attempt {attempt}"
            );
        };
        check(1, 50, 100);
        check(2, 100, 200);
        check(3, 200, 400);
        check(4, 400, 800);
        check(5, 500, 1000);
        check(40, 500, 1000);
    }

    #[test]
    fn credentials_are_redacted() {
        for url in ["http://u:pw@127.0.0.1:9/h", "http://token@127.0.0.1:9/h"] {
            let shown = redacted(&url.parse().expect("url"));
            assert_eq!(shown, "http://***@127.0.0.1:9/h", "{url}");
        }
        assert_eq!(
            redacted(&"http://127.0.0.1:9/h".parse().expect("url")),
            "http://127.0.0.1:9/h"
        );
    }
}

#[cfg(test)]
mod proptests;
