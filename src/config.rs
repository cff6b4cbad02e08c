//! Configuration: a TOML file deserialised into [`RawConfig`], then validated once into
//! [`Config`], whose fields have the right types and whose secrets are resolved.
//!
//! Every error names the file, the key and what was expected. The documented fields of the
//! raw structs are the configuration reference (the README mirrors them).

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::decide::balance::{MAX_WEIGHT, Settings, Strategy};
use crate::decide::{RateKind, RatePolicy, Rules, Select};

/// A configuration error: where it is (file, key) and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {error}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (unknown key, bad type,
    /// bad duration); the message from the TOML parser shows the line and the key.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// The parser's message, with the line and the key.
        message: String,
    },
    /// A key has a value that parses but is not acceptable.
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The key, e.g. `target[web].min_replicas`.
        key: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

// ---------------------------------------------------------------------------------------
// Raw, deserialised form: the reference for users.
// ---------------------------------------------------------------------------------------

/// The configuration file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where series come from. Required by `serve`.
    pub prometheus: Option<RawPrometheus>,
    /// The HTTP API.
    #[serde(default)]
    pub server: RawServer,
    /// Forecast settings shared by all targets.
    #[serde(default)]
    pub forecast: RawForecast,
    /// Webhook delivery settings shared by all targets.
    #[serde(default)]
    pub delivery: RawDelivery,
    /// Where durable state (the delivery outbox) lives.
    #[serde(default)]
    pub state: RawState,
    /// Alerts for predicted bottlenecks that scaling cannot prevent.
    pub alertmanager: Option<RawAlertmanager>,
    /// The services to scale; at least one.
    #[serde(default, rename = "target")]
    pub targets: Vec<RawTarget>,
    /// A replica budget shared by all targets.
    #[serde(default)]
    pub budget: RawBudget,
}

/// `[budget]`: a global replica budget.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    /// Most replicas across all targets; when the decisions ask for more, targets are
    /// served by `priority`, then in proportion to need, never below `min_replicas`
    /// (default: no budget).
    pub max_replicas: Option<u32>,
}

/// `[prometheus]`: the server to query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrometheus {
    /// Base URL, e.g. `http://127.0.0.1:9090` (a path prefix is kept).
    pub url: String,
    /// Timeout of one HTTP request (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// File holding a bearer token (trailing whitespace trimmed).
    pub bearer_token_file: Option<PathBuf>,
    /// Environment variable holding a bearer token.
    pub bearer_token_env: Option<String>,
    /// HTTP basic auth.
    pub basic_auth: Option<RawBasicAuth>,
}

/// `[prometheus.basic_auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    /// User name.
    pub username: String,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
}

/// `[server]`: the HTTP API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address to listen on (default `127.0.0.1:8080`).
    pub listen: Option<String>,
    /// Environment variable holding the API bearer token; mutating endpoints need it.
    pub api_token_env: Option<String>,
    /// File holding the API bearer token (trailing whitespace trimmed).
    pub api_token_file: Option<PathBuf>,
    /// Require the token on read endpoints too (default false; `/healthz`, `/readyz` and
    /// `/metrics` stay open).
    pub auth_reads: Option<bool>,
}

/// `[forecast]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForecast {
    /// Prediction-interval level in (0, 1) (default 0.95).
    pub level: Option<f64>,
    /// Re-select and refit each target's model this often (default 1h).
    #[serde(default, with = "humantime_serde")]
    pub refit_every: Option<Duration>,
    /// Horizon model selection and intervals are tuned for (default 1h; at least each
    /// target's startup + interval).
    #[serde(default, with = "humantime_serde")]
    pub horizon: Option<Duration>,
    /// Directory of the fitted models, one file per target (default `models`; a relative
    /// path is taken from the configuration file's directory).
    pub models_dir: Option<PathBuf>,
}

/// `[delivery]`: how webhooks are retried.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    /// Timeout of one attempt (default 5s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Attempts before giving up (default 6).
    pub max_attempts: Option<u32>,
    /// First backoff between attempts, doubled each time with jitter (default 500ms).
    #[serde(default, with = "humantime_serde")]
    pub initial_backoff: Option<Duration>,
    /// Longest backoff between attempts (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
    /// An action not delivered this long after it was decided is dead-lettered (default 1h).
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

/// `[state]`: durable state.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// Directory of the delivery outbox (`outbox.redb`); created if missing. Relative paths
    /// resolve against the configuration file's directory (default `state` beside it).
    pub dir: Option<PathBuf>,
    /// Delivered and superseded actions are kept this long for the API (default 7d);
    /// dead letters are kept until retried.
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
}

/// `[alertmanager]`: where predicted-bottleneck alerts go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertmanager {
    /// Base URL of Alertmanager, e.g. `http://127.0.0.1:9093`; alerts are posted to
    /// `/api/v2/alerts` under it.
    pub url: String,
    /// Alert when a breach is predicted within this lead (default 30m).
    #[serde(default, with = "humantime_serde")]
    pub lead: Option<Duration>,
    /// Re-send a firing alert this often, so Alertmanager keeps it active (default 1m).
    #[serde(default, with = "humantime_serde")]
    pub resend: Option<Duration>,
}

/// `[[target]]`: one scaled service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// Unique name: letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// PromQL giving the request rate (requests/s) as one series.
    pub request_rate: String,
    /// PromQL giving a latency (seconds, e.g. p95) as one series.
    pub latency: Option<String>,
    /// The latency objective, e.g. `250ms`; needs `latency`.
    #[serde(default, with = "humantime_serde")]
    pub latency_slo: Option<Duration>,
    /// PromQL giving the current replica count; without it the last count asked for is
    /// assumed.
    pub replicas: Option<String>,
    /// PromQL giving the request rate per instance, grouped by the `instance` label.
    pub instance_rate: Option<String>,
    /// PromQL giving the latency per instance, grouped by the `instance` label.
    pub instance_latency: Option<String>,
    /// PromQL giving the error ratio (0..1) per instance, grouped by the `instance` label.
    pub instance_errors: Option<String>,
    /// Requests/s one replica serves within its latency SLO. Optional when `latency`,
    /// `latency_slo` and `replicas` are set: it is then learned from latency under load.
    pub capacity_rps: Option<f64>,
    /// Time from asking for a replica to it serving, e.g. `3m`.
    #[serde(with = "humantime_serde")]
    pub startup: Duration,
    /// Fewest replicas (default 1).
    pub min_replicas: Option<u32>,
    /// Most replicas.
    pub max_replicas: u32,
    /// Poll and decide every (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// History to backfill and keep (default 14d).
    #[serde(default, with = "humantime_serde")]
    pub history: Option<Duration>,
    /// Resolution of all series (default 1m, whole seconds).
    #[serde(default, with = "humantime_serde")]
    pub step: Option<Duration>,
    /// A signal whose newest sample is older than this is stale: the target is degraded
    /// and may not scale in (default 2 × step + 2 × interval).
    #[serde(default, with = "humantime_serde")]
    pub stale_after: Option<Duration>,
    /// Scale in only to the highest count recommended within this window (default 5m).
    #[serde(default, with = "humantime_serde")]
    pub scale_in_window: Option<Duration>,
    /// Share of `capacity_rps` each replica carries in the demand (reactive) policy, in
    /// (0, 1] (default 0.7).
    pub target_utilization: Option<f64>,
    /// Share of `capacity_rps` each replica carries when planning for the upper forecast,
    /// in (0, 1] (default 0.9).
    pub prediction_utilization: Option<f64>,
    /// The demand policy holds while load / planned capacity is within 1 ± this, in
    /// [0, 1) (default 0.1, as the Kubernetes HPA).
    pub tolerance: Option<f64>,
    /// Headroom added to predicted peaks, as a share of the typical demand (its
    /// exponentially weighted mean over about a day), ≥ 0 (default 0).
    pub headroom: Option<f64>,
    /// Priority under a `[budget]`: higher is served first (default 0).
    pub priority: Option<u32>,
    /// Scaling behaviour, as `HorizontalPodAutoscaler.spec.behavior`.
    pub behavior: Option<RawBehavior>,
    /// `act` (default) sends webhooks; `forecast-only` decides and shows, sends nothing.
    pub mode: Option<Mode>,
    /// Where scale actions go.
    pub platform: Option<RawWebhook>,
    /// Where rebalance actions go: a webhook (default) or HAProxy's runtime API.
    pub balancer: Option<RawBalancer>,
    /// How balancer weights are computed, and failover.
    pub rebalance: Option<RawRebalance>,
}

/// `[target.rebalance]`: balancer weights and failover.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRebalance {
    /// `equal`, `capacity`, `least_requests` or `least_response_time` (default).
    pub strategy: Option<Strategy>,
    /// Relative capacity per instance for `capacity`, e.g. `{ "10.0.0.1:8080" = 2 }`
    /// (unlisted instances count 1).
    pub capacity: Option<std::collections::BTreeMap<String, f64>>,
    /// Drain outliers by latency or error rate (default true).
    pub failover: Option<bool>,
    /// Observations the outlier test looks at (default 5m).
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    /// Robust z-score above which an instance is an outlier, > 0 (default 3.5).
    pub z_threshold: Option<f64>,
    /// Most instances drained at once, as a share of all, in [0, 1) (default 0.34).
    pub max_drained_fraction: Option<f64>,
    /// A weight must move by more than this (of 100) before new weights are sent
    /// (default 10).
    pub threshold: Option<u32>,
}

/// `[target.behavior]`: scale-up and scale-down rules.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBehavior {
    /// Default: no window; max(+100 %, +4 pods) per 15 s.
    pub scale_up: Option<RawRules>,
    /// Default: a 300 s window (or `scale_in_window`); −100 % per 15 s.
    pub scale_down: Option<RawRules>,
}

/// `[target.behavior.scale_up]` / `[target.behavior.scale_down]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRules {
    /// Scale-up: the lowest recommendation within it; scale-down: the highest.
    #[serde(default, with = "humantime_serde")]
    pub stabilization_window: Option<Duration>,
    /// `Max` (default), `Min` or `Disabled`.
    pub select_policy: Option<Select>,
    /// Rate limits, e.g. `[{ type = "Pods", value = 4, period = "1m" }]`; an empty list
    /// means no limit.
    pub policies: Option<Vec<RawRatePolicy>>,
}

/// One rate-limit policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRatePolicy {
    /// `Pods` or `Percent`.
    #[serde(rename = "type")]
    pub kind: RateKind,
    /// Replicas, or percent of the count at the start of the period; above 0.
    pub value: u32,
    /// The period, whole seconds, at least 1s.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
}

/// `[target.balancer]`: a signed webhook (`kind = "webhook"`, the default, with the keys
/// of [`RawWebhook`]) or HAProxy (`kind = "haproxy"`, with `runtime_api` and `backend`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBalancer {
    /// `webhook` (default) or `haproxy`.
    pub kind: Option<String>,
    /// Webhook: receiver URL.
    pub url: Option<String>,
    /// Webhook: variable holding the signing secret.
    pub secret_env: Option<String>,
    /// Webhook: file holding the signing secret.
    pub secret_file: Option<PathBuf>,
    /// Webhook: variable holding the previous secret, still signed with while rotating.
    pub previous_secret_env: Option<String>,
    /// Webhook: file holding the previous secret.
    pub previous_secret_file: Option<PathBuf>,
    /// HAProxy: the runtime API (`stats socket ... level admin`): `unix:/path/to.sock`, a
    /// socket path starting with `/`, or `HOST:PORT`.
    pub runtime_api: Option<String>,
    /// HAProxy: the backend whose servers are the target's instances.
    pub backend: Option<String>,
    /// HAProxy: timeout of one runtime API command (default 2s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// `[target.platform]` / `[target.balancer]`: a signed webhook.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// Receiver URL (http or https).
    pub url: String,
    /// Environment variable holding the HMAC signing secret.
    pub secret_env: Option<String>,
    /// File holding the HMAC signing secret (trailing whitespace trimmed).
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding the previous secret: while rotating, every request is
    /// signed with both (one `v1=` each), so receivers may hold either.
    pub previous_secret_env: Option<String>,
    /// File holding the previous secret.
    pub previous_secret_file: Option<PathBuf>,
}

pub use crate::decide::Mode;

// ---------------------------------------------------------------------------------------
// Validated form.
// ---------------------------------------------------------------------------------------

/// A secret string whose `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages).
    pub file: PathBuf,
    /// Prometheus, when configured.
    pub prometheus: Option<PrometheusConfig>,
    /// The HTTP API.
    pub server: ServerConfig,
    /// Forecast settings.
    pub forecast: ForecastConfig,
    /// Webhook delivery settings.
    pub delivery: DeliveryConfig,
    /// Durable state.
    pub state: StateConfig,
    /// Alertmanager, when configured.
    pub alertmanager: Option<AlertmanagerConfig>,
    /// The targets, in file order; names unique.
    pub targets: Vec<TargetConfig>,
    /// Most replicas across all targets, if budgeted.
    pub budget: Option<u32>,
}

/// Validated `[prometheus]`.
#[derive(Debug, Clone)]
pub struct PrometheusConfig {
    /// Base URL.
    pub url: Url,
    /// Credentials, resolved from their file or variable.
    pub auth: Option<PrometheusAuth>,
    /// Timeout of one HTTP request.
    pub timeout: Duration,
}

/// Prometheus credentials.
#[derive(Debug, Clone)]
pub enum PrometheusAuth {
    /// `Authorization: Bearer …`.
    Bearer(Secret),
    /// HTTP basic auth.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
}

/// Validated `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Bearer token for the API; without it, mutating endpoints refuse every request.
    pub api_token: Option<Secret>,
    /// Whether read endpoints need the token too.
    pub auth_reads: bool,
}

/// Validated `[forecast]`.
#[derive(Debug, Clone)]
pub struct ForecastConfig {
    /// Prediction-interval level in (0, 1).
    pub level: f64,
    /// Time between refits.
    pub refit_every: Duration,
    /// Horizon selection and intervals are tuned for.
    pub horizon: Duration,
    /// Directory of the fitted models.
    pub models_dir: PathBuf,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        Self {
            level: 0.95,
            refit_every: Duration::from_secs(3_600),
            horizon: Duration::from_secs(3_600),
            models_dir: PathBuf::from("models"),
        }
    }
}

impl ForecastConfig {
    /// Forecaster settings for a series of `step` seconds that must be forecast at least
    /// `lookahead` seconds ahead.
    pub fn settings(&self, step: i64, lookahead: i64) -> crate::forecast::Settings {
        crate::forecast::Settings {
            step,
            level: self.level,
            horizon: (self.horizon.as_secs() as i64).max(lookahead).max(step),
            refit_every: self.refit_every.as_secs().max(1) as i64,
        }
    }
}

/// Validated `[delivery]`.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryConfig {
    /// Timeout of one attempt.
    pub timeout: Duration,
    /// Attempts before giving up (≥ 1).
    pub max_attempts: u32,
    /// First backoff.
    pub initial_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// Age (since decided, or since a manual retry) past which an action is dead-lettered.
    pub max_age: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_age: Duration::from_secs(3_600),
        }
    }
}

/// Validated `[state]`.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// Directory of the outbox, absolute or relative to the working directory.
    pub dir: PathBuf,
    /// How long delivered and superseded actions are kept.
    pub retention: Duration,
}

/// Validated `[alertmanager]`.
#[derive(Debug, Clone)]
pub struct AlertmanagerConfig {
    /// Base URL.
    pub url: Url,
    /// How far ahead a breach is alerted.
    pub lead: Duration,
    /// How often a firing alert is re-sent.
    pub resend: Duration,
}

/// Validated HAProxy balancer of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyConfig {
    /// The runtime API.
    pub runtime_api: RuntimeApi,
    /// Backend name.
    pub backend: String,
    /// Timeout of one command.
    pub timeout: Duration,
}

/// Where HAProxy's runtime API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeApi {
    /// A unix socket.
    Unix(PathBuf),
    /// A TCP address, `HOST:PORT`.
    Tcp(String),
}

impl fmt::Display for RuntimeApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => f.write_str(a),
        }
    }
}

/// The PromQL queries of a target.
#[derive(Debug, Clone, Default)]
pub struct Queries {
    /// Request rate, requests/s.
    pub request_rate: String,
    /// Latency, seconds.
    pub latency: Option<String>,
    /// Current replica count.
    pub replicas: Option<String>,
    /// Request rate per `instance`.
    pub instance_rate: Option<String>,
    /// Latency per `instance`.
    pub instance_latency: Option<String>,
    /// Error ratio per `instance`.
    pub instance_errors: Option<String>,
}

/// A validated target.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Unique name.
    pub name: String,
    /// Its queries.
    pub queries: Queries,
    /// Latency objective.
    pub latency_slo: Option<Duration>,
    /// Requests/s one replica serves within its SLO (> 0), when configured; otherwise it is
    /// learned (see [`crate::forecast::capacity`]).
    pub capacity_rps: Option<f64>,
    /// Time from asking for a replica to it serving.
    pub startup: Duration,
    /// Fewest replicas (≥ 1... or 0 if configured so).
    pub min_replicas: u32,
    /// Most replicas (≥ min_replicas, ≥ 1).
    pub max_replicas: u32,
    /// Poll and decide every.
    pub interval: Duration,
    /// History to backfill and keep.
    pub history: Duration,
    /// Resolution of all series, whole seconds.
    pub step: Duration,
    /// Age past which a signal is stale.
    pub stale_after: Duration,
    /// Scale-in stabilisation window (the same as `scale_down.stabilization_window`).
    pub scale_in_window: Duration,
    /// Share of `capacity_rps` each replica carries in the demand policy, in (0, 1].
    pub target_utilization: f64,
    /// Share of `capacity_rps` each replica carries in the prediction policy, in (0, 1].
    pub prediction_utilization: f64,
    /// Tolerance of the demand policy, in [0, 1).
    pub tolerance: f64,
    /// Headroom over predicted peaks, as a share of the typical demand (≥ 0).
    pub headroom: f64,
    /// Priority under a budget; higher first.
    pub priority: u32,
    /// Scale-up behaviour.
    pub scale_up: Rules,
    /// Scale-down behaviour.
    pub scale_down: Rules,
    /// Act or only forecast.
    pub mode: Mode,
    /// Scale webhook.
    pub platform: Option<WebhookConfig>,
    /// Rebalance webhook.
    pub balancer: Option<WebhookConfig>,
    /// Rebalance through HAProxy's runtime API instead (`[target.balancer] kind = "haproxy"`).
    pub haproxy: Option<HaproxyConfig>,
    /// Balancer weights and failover.
    pub rebalance: Settings,
}

impl TargetConfig {
    /// The step in whole seconds.
    pub fn step_secs(&self) -> i64 {
        self.step.as_secs() as i64
    }

    /// How many samples `history` spans at `step` (the buffer size).
    pub fn history_points(&self) -> usize {
        (self.history.as_secs() / self.step.as_secs().max(1)) as usize + 1
    }

    /// A target with the defaults, for tests and backtests.
    pub fn example(name: &str, capacity_rps: f64, startup: Duration) -> Self {
        Self {
            name: name.to_owned(),
            queries: Queries::default(),
            latency_slo: None,
            capacity_rps: Some(capacity_rps),
            startup,
            min_replicas: 1,
            max_replicas: 1000,
            interval: DEFAULT_INTERVAL,
            history: DEFAULT_HISTORY,
            step: DEFAULT_STEP,
            stale_after: 2 * DEFAULT_STEP + 2 * DEFAULT_INTERVAL,
            scale_in_window: DEFAULT_SCALE_IN_WINDOW,
            target_utilization: DEFAULT_TARGET_UTILIZATION,
            prediction_utilization: DEFAULT_PREDICTION_UTILIZATION,
            tolerance: DEFAULT_TOLERANCE,
            headroom: DEFAULT_HEADROOM,
            priority: 0,
            scale_up: Rules::default_scale_up(),
            scale_down: Rules::default_scale_down(),
            mode: Mode::Act,
            platform: None,
            balancer: None,
            haproxy: None,
            rebalance: Settings::default(),
        }
    }
}

/// A validated webhook receiver.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Receiver URL.
    pub url: Url,
    /// HMAC-SHA256 signing secret.
    pub secret: Secret,
    /// The previous secret while rotating: requests carry a signature with each.
    pub previous_secret: Option<Secret>,
}

const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_HISTORY: Duration = Duration::from_secs(14 * 86_400);
const DEFAULT_STEP: Duration = Duration::from_secs(60);
const DEFAULT_SCALE_IN_WINDOW: Duration = Duration::from_secs(300);
/// Load per replica in the demand policy, as a share of `capacity_rps`.
pub const DEFAULT_TARGET_UTILIZATION: f64 = 0.7;
/// Load per replica at the upper forecast, as a share of `capacity_rps`.
pub const DEFAULT_PREDICTION_UTILIZATION: f64 = 0.9;
/// The HPA's tolerance.
pub const DEFAULT_TOLERANCE: f64 = 0.1;
/// Headroom over predicted peaks, as a share of the typical demand.
pub const DEFAULT_HEADROOM: f64 = 0.0;
/// Prometheus refuses a range query of more than 11,000 points per series.
const MAX_HISTORY_POINTS: u64 = 1_000_000;

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            file: path.to_owned(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text; `file` names it in errors and anchors
    /// relative secret paths.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Validator { file }.config(raw)
    }

    /// The target with this name.
    pub fn target(&self, name: &str) -> Option<&TargetConfig> {
        self.targets.iter().find(|t| t.name == name)
    }
}

struct Validator<'a> {
    file: &'a Path,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let prometheus = raw.prometheus.map(|p| self.prometheus(p)).transpose()?;
        let listen = raw.server.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen = listen.parse().map_err(|_| {
            self.err(
                "server.listen",
                format!("`{listen}` is not an address; expected IP:PORT, e.g. 127.0.0.1:8080"),
            )
        })?;
        let api_token = self.secret(
            "server.api_token",
            raw.server.api_token_env.as_deref(),
            raw.server.api_token_file.as_deref(),
        )?;
        let auth_reads = raw.server.auth_reads.unwrap_or(false);
        if auth_reads && api_token.is_none() {
            return Err(self.err(
                "server.auth_reads",
                "is true without a token; expected `api_token_env` or `api_token_file` too",
            ));
        }
        let level = raw.forecast.level.unwrap_or(0.95);
        if !(level > 0.0 && level < 1.0) {
            return Err(self.err(
                "forecast.level",
                format!("{level} is out of range; expected a number between 0 and 1, e.g. 0.95"),
            ));
        }
        let def = ForecastConfig::default();
        let refit_every = raw.forecast.refit_every.unwrap_or(def.refit_every);
        if refit_every < Duration::from_secs(1) {
            return Err(self.err("forecast.refit_every", "expected at least 1s, e.g. 1h"));
        }
        let horizon = raw.forecast.horizon.unwrap_or(def.horizon);
        if horizon.is_zero() || horizon > Duration::from_secs(86_400) {
            return Err(self.err(
                "forecast.horizon",
                "is out of range; expected above 0 and at most 1d, e.g. 1h",
            ));
        }
        let forecast = ForecastConfig {
            level,
            refit_every,
            horizon,
            // Relative to the configuration file, like secret files.
            models_dir: match (raw.forecast.models_dir, self.file.parent()) {
                (Some(d), _) if d.is_absolute() => d,
                (d, Some(dir)) => dir.join(d.unwrap_or(def.models_dir)),
                (d, None) => d.unwrap_or(def.models_dir),
            },
        };
        let delivery = self.delivery(raw.delivery)?;
        let state = self.state(raw.state)?;
        let alertmanager = raw.alertmanager.map(|a| self.alertmanager(a)).transpose()?;
        if raw.targets.is_empty() {
            return Err(self.err(
                "target",
                "no target; expected at least one [[target]] table",
            ));
        }
        let mut seen = HashSet::new();
        let mut targets = Vec::with_capacity(raw.targets.len());
        for (i, t) in raw.targets.into_iter().enumerate() {
            let t = self.target(i, t)?;
            if !seen.insert(t.name.clone()) {
                return Err(self.err(
                    format!("target[{i}].name"),
                    format!("duplicate target `{}`; expected unique names", t.name),
                ));
            }
            targets.push(t);
        }
        if raw.budget.max_replicas == Some(0) {
            return Err(self.err("budget.max_replicas", "is 0; expected at least 1"));
        }
        Ok(Config {
            file: self.file.to_owned(),
            prometheus,
            server: ServerConfig {
                listen,
                api_token,
                auth_reads,
            },
            forecast,
            delivery,
            state,
            alertmanager,
            targets,
            budget: raw.budget.max_replicas,
        })
    }

    fn prometheus(&self, p: RawPrometheus) -> Result<PrometheusConfig, ConfigError> {
        let url = self.url("prometheus.url", &p.url)?;
        let timeout = p.timeout.unwrap_or(Duration::from_secs(10));
        if timeout.is_zero() {
            return Err(self.err("prometheus.timeout", "expected a duration above zero"));
        }
        let bearer = self.secret(
            "prometheus.bearer_token",
            p.bearer_token_env.as_deref(),
            p.bearer_token_file.as_deref(),
        )?;
        let auth = match (bearer, p.basic_auth) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    "prometheus.basic_auth",
                    "both a bearer token and basic auth are set; expected at most one",
                ));
            }
            (Some(token), None) => Some(PrometheusAuth::Bearer(token)),
            (None, Some(b)) => {
                let password = self
                    .secret(
                        "prometheus.basic_auth.password",
                        b.password_env.as_deref(),
                        b.password_file.as_deref(),
                    )?
                    .ok_or_else(|| {
                        self.err(
                            "prometheus.basic_auth",
                            "no password; expected `password_env` or `password_file`",
                        )
                    })?;
                Some(PrometheusAuth::Basic {
                    username: b.username,
                    password,
                })
            }
            (None, None) => None,
        };
        Ok(PrometheusConfig { url, auth, timeout })
    }

    fn delivery(&self, d: RawDelivery) -> Result<DeliveryConfig, ConfigError> {
        let def = DeliveryConfig::default();
        let out = DeliveryConfig {
            timeout: d.timeout.unwrap_or(def.timeout),
            max_attempts: d.max_attempts.unwrap_or(def.max_attempts),
            initial_backoff: d.initial_backoff.unwrap_or(def.initial_backoff),
            max_backoff: d.max_backoff.unwrap_or(def.max_backoff),
            max_age: d.max_age.unwrap_or(def.max_age),
        };
        if out.max_age.is_zero() {
            return Err(self.err("delivery.max_age", "expected a duration above zero"));
        }
        if out.timeout.is_zero() {
            return Err(self.err("delivery.timeout", "expected a duration above zero"));
        }
        if out.max_attempts == 0 {
            return Err(self.err("delivery.max_attempts", "expected at least 1"));
        }
        if out.max_backoff < out.initial_backoff {
            return Err(self.err(
                "delivery.max_backoff",
                "is shorter than delivery.initial_backoff; expected max_backoff >= initial_backoff",
            ));
        }
        Ok(out)
    }

    fn state(&self, s: RawState) -> Result<StateConfig, ConfigError> {
        let dir = s.dir.unwrap_or_else(|| PathBuf::from("state"));
        if dir.as_os_str().is_empty() {
            return Err(self.err("state.dir", "is empty; expected a directory path"));
        }
        let dir = match self.file.parent() {
            Some(base) if dir.is_relative() => base.join(dir),
            _ => dir,
        };
        let retention = s.retention.unwrap_or(Duration::from_secs(7 * 86_400));
        Ok(StateConfig { dir, retention })
    }

    fn alertmanager(&self, a: RawAlertmanager) -> Result<AlertmanagerConfig, ConfigError> {
        let url = self.url("alertmanager.url", &a.url)?;
        let lead = a.lead.unwrap_or(Duration::from_secs(1_800));
        if lead.is_zero() {
            return Err(self.err("alertmanager.lead", "expected a duration above zero"));
        }
        let resend = a.resend.unwrap_or(Duration::from_secs(60));
        if resend < Duration::from_secs(1) {
            return Err(self.err("alertmanager.resend", "expected at least 1s"));
        }
        Ok(AlertmanagerConfig { url, lead, resend })
    }

    fn balancer(
        &self,
        key: &str,
        b: RawBalancer,
    ) -> Result<(Option<WebhookConfig>, Option<HaproxyConfig>), ConfigError> {
        match b.kind.as_deref().unwrap_or("webhook") {
            "webhook" => {
                let stray = [
                    ("runtime_api", b.runtime_api.is_some()),
                    ("backend", b.backend.is_some()),
                    ("timeout", b.timeout.is_some()),
                ];
                if let Some((k, _)) = stray.iter().find(|(_, set)| *set) {
                    return Err(self.err(
                        format!("{key}.{k}"),
                        "belongs to kind = \"haproxy\"; expected webhook keys (url, secret_env, secret_file)",
                    ));
                }
                let url = b.url.ok_or_else(|| {
                    self.err(
                        format!("{key}.url"),
                        "missing; expected the webhook URL (or kind = \"haproxy\")",
                    )
                })?;
                let w = RawWebhook {
                    url,
                    secret_env: b.secret_env,
                    secret_file: b.secret_file,
                    previous_secret_env: b.previous_secret_env,
                    previous_secret_file: b.previous_secret_file,
                };
                Ok((Some(self.webhook(key, w)?), None))
            }
            "haproxy" => {
                let stray = [
                    ("url", b.url.is_some()),
                    ("secret_env", b.secret_env.is_some()),
                    ("secret_file", b.secret_file.is_some()),
                    ("previous_secret_env", b.previous_secret_env.is_some()),
                    ("previous_secret_file", b.previous_secret_file.is_some()),
                ];
                if let Some((k, _)) = stray.iter().find(|(_, set)| *set) {
                    return Err(self.err(
                        format!("{key}.{k}"),
                        "belongs to kind = \"webhook\"; expected runtime_api and backend",
                    ));
                }
                let api = b.runtime_api.ok_or_else(|| {
                    self.err(
                        format!("{key}.runtime_api"),
                        "missing; expected `unix:/path/to/admin.sock` or `HOST:PORT`",
                    )
                })?;
                let runtime_api = if let Some(path) = api.strip_prefix("unix:") {
                    RuntimeApi::Unix(PathBuf::from(path))
                } else if api.starts_with('/') {
                    RuntimeApi::Unix(PathBuf::from(&api))
                } else if api
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                {
                    RuntimeApi::Tcp(api.clone())
                } else {
                    return Err(self.err(
                        format!("{key}.runtime_api"),
                        format!("`{api}` is not an address; expected `unix:/path/to/admin.sock` or `HOST:PORT`"),
                    ));
                };
                let backend = b.backend.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                    self.err(
                        format!("{key}.backend"),
                        "missing or empty; expected the name of the HAProxy backend",
                    )
                })?;
                let timeout = b.timeout.unwrap_or(Duration::from_secs(2));
                if timeout.is_zero() {
                    return Err(
                        self.err(format!("{key}.timeout"), "expected a duration above zero")
                    );
                }
                Ok((
                    None,
                    Some(HaproxyConfig {
                        runtime_api,
                        backend,
                        timeout,
                    }),
                ))
            }
            other => Err(self.err(
                format!("{key}.kind"),
                format!("`{other}` is not a balancer kind; expected `webhook` or `haproxy`"),
            )),
        }
    }

    fn target(&self, i: usize, t: RawTarget) -> Result<TargetConfig, ConfigError> {
        let valid_name = !t.name.is_empty()
            && t.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid_name {
            return Err(self.err(
                format!("target[{i}].name"),
                format!(
                    "`{}` is not a valid name; expected a non-empty name of letters, digits, `.`, `_` or `-`",
                    t.name
                ),
            ));
        }
        let key = |k: &str| format!("target[{}].{k}", t.name);
        let query = |k: &str, q: Option<String>| -> Result<Option<String>, ConfigError> {
            match q {
                Some(q) if q.trim().is_empty() => {
                    Err(self.err(key(k), "is empty; expected a PromQL expression"))
                }
                q => Ok(q),
            }
        };
        let queries = Queries {
            request_rate: query("request_rate", Some(t.request_rate.clone()))?.unwrap_or_default(),
            latency: query("latency", t.latency.clone())?,
            replicas: query("replicas", t.replicas.clone())?,
            instance_rate: query("instance_rate", t.instance_rate.clone())?,
            instance_latency: query("instance_latency", t.instance_latency.clone())?,
            instance_errors: query("instance_errors", t.instance_errors.clone())?,
        };
        if t.latency_slo.is_some() && queries.latency.is_none() {
            return Err(self.err(
                key("latency_slo"),
                "is set without `latency`; expected a `latency` query to compare with it",
            ));
        }
        if t.latency_slo.is_some_and(|d| d.is_zero()) {
            return Err(self.err(key("latency_slo"), "expected a duration above zero"));
        }
        match t.capacity_rps {
            Some(c) if !(c.is_finite() && c > 0.0) => {
                return Err(self.err(
                    key("capacity_rps"),
                    format!("{c} is not usable; expected a positive number of requests/s"),
                ));
            }
            None if t.latency_slo.is_none() || queries.replicas.is_none() => {
                return Err(self.err(
                    key("capacity_rps"),
                    "is missing; expected a positive number of requests/s, or `latency`, \
                     `latency_slo` and `replicas` to learn it from",
                ));
            }
            _ => {}
        }
        let min_replicas = t.min_replicas.unwrap_or(1);
        if t.max_replicas == 0 {
            return Err(self.err(key("max_replicas"), "is 0; expected at least 1"));
        }
        if min_replicas > t.max_replicas {
            return Err(self.err(
                key("min_replicas"),
                format!(
                    "{min_replicas} is above max_replicas {}; expected min_replicas <= max_replicas",
                    t.max_replicas
                ),
            ));
        }
        let step = t.step.unwrap_or(DEFAULT_STEP);
        if step.as_secs() == 0 || step.subsec_nanos() != 0 {
            return Err(self.err(
                key("step"),
                format!(
                    "{} is not usable; expected whole seconds, at least 1s",
                    humantime::format_duration(step)
                ),
            ));
        }
        let interval = t.interval.unwrap_or(DEFAULT_INTERVAL);
        if interval < Duration::from_secs(1) {
            return Err(self.err(key("interval"), "expected at least 1s"));
        }
        let history = t.history.unwrap_or(DEFAULT_HISTORY);
        if history < 2 * step {
            return Err(self.err(key("history"), "expected at least two steps"));
        }
        if history.as_secs() / step.as_secs() > MAX_HISTORY_POINTS {
            return Err(self.err(
                key("history"),
                format!("spans more than {MAX_HISTORY_POINTS} steps; expected a shorter history or a longer step"),
            ));
        }
        let stale_after = t.stale_after.unwrap_or(2 * step + 2 * interval);
        if stale_after < step {
            return Err(self.err(
                key("stale_after"),
                "is shorter than step; expected at least one step",
            ));
        }
        let utilization = |k: &str, v: Option<f64>, default: f64| {
            let v = v.unwrap_or(default);
            if v > 0.0 && v <= 1.0 {
                Ok(v)
            } else {
                Err(self.err(
                    key(k),
                    format!("{v} is out of range; expected a number in (0, 1], e.g. {default}"),
                ))
            }
        };
        let target_utilization = utilization(
            "target_utilization",
            t.target_utilization,
            DEFAULT_TARGET_UTILIZATION,
        )?;
        let prediction_utilization = utilization(
            "prediction_utilization",
            t.prediction_utilization,
            DEFAULT_PREDICTION_UTILIZATION,
        )?;
        let tolerance = t.tolerance.unwrap_or(DEFAULT_TOLERANCE);
        if !(0.0..1.0).contains(&tolerance) {
            return Err(self.err(
                key("tolerance"),
                format!("{tolerance} is out of range; expected a number in [0, 1), e.g. 0.1"),
            ));
        }
        let headroom = t.headroom.unwrap_or(DEFAULT_HEADROOM);
        if !(headroom.is_finite() && headroom >= 0.0) {
            return Err(self.err(
                key("headroom"),
                format!("{headroom} is not usable; expected a number >= 0, e.g. 0.2"),
            ));
        }
        let behavior = t.behavior.unwrap_or_default();
        if t.scale_in_window.is_some()
            && behavior
                .scale_down
                .as_ref()
                .is_some_and(|r| r.stabilization_window.is_some())
        {
            return Err(self.err(
                key("behavior.scale_down.stabilization_window"),
                "is set together with `scale_in_window`; expected one of them",
            ));
        }
        let scale_up = self.rules(
            &key("behavior.scale_up"),
            behavior.scale_up,
            Rules::default_scale_up(),
        )?;
        let mut down_default = Rules::default_scale_down();
        down_default.stabilization_window = t
            .scale_in_window
            .unwrap_or(DEFAULT_SCALE_IN_WINDOW)
            .as_secs() as i64;
        let scale_down = self.rules(
            &key("behavior.scale_down"),
            behavior.scale_down,
            down_default,
        )?;
        let rebalance = self.rebalance(&key("rebalance"), t.rebalance.unwrap_or_default())?;
        let platform = t
            .platform
            .map(|w| self.webhook(&key("platform"), w))
            .transpose()?;
        let (balancer, haproxy) = match t.balancer {
            Some(b) => self.balancer(&key("balancer"), b)?,
            None => (None, None),
        };
        Ok(TargetConfig {
            name: t.name.clone(),
            queries,
            latency_slo: t.latency_slo,
            capacity_rps: t.capacity_rps,
            startup: t.startup,
            min_replicas,
            max_replicas: t.max_replicas,
            interval,
            history,
            step,
            stale_after,
            scale_in_window: Duration::from_secs(scale_down.stabilization_window as u64),
            target_utilization,
            prediction_utilization,
            tolerance,
            headroom,
            priority: t.priority.unwrap_or(0),
            scale_up,
            scale_down,
            mode: t.mode.unwrap_or(Mode::Act),
            platform,
            balancer,
            haproxy,
            rebalance,
        })
    }

    fn rebalance(&self, key: &str, r: RawRebalance) -> Result<Settings, ConfigError> {
        let d = Settings::default();
        let capacity = r.capacity.unwrap_or_default();
        for (instance, c) in &capacity {
            if !(c.is_finite() && *c > 0.0) {
                return Err(self.err(
                    format!("{key}.capacity.\"{instance}\""),
                    format!("{c} is not usable; expected a positive number"),
                ));
            }
        }
        let window = r.window.map_or(d.window, |w| w.as_secs() as i64);
        if window < 1 {
            return Err(self.err(format!("{key}.window"), "expected at least 1s"));
        }
        let z_threshold = r.z_threshold.unwrap_or(d.z_threshold);
        if !(z_threshold.is_finite() && z_threshold > 0.0) {
            return Err(self.err(
                format!("{key}.z_threshold"),
                format!("{z_threshold} is not usable; expected a number above 0, e.g. 3.5"),
            ));
        }
        let max_drained_fraction = r.max_drained_fraction.unwrap_or(d.max_drained_fraction);
        if !(0.0..1.0).contains(&max_drained_fraction) {
            return Err(self.err(
                format!("{key}.max_drained_fraction"),
                format!(
                    "{max_drained_fraction} is out of range; expected a number in [0, 1), e.g. 0.34"
                ),
            ));
        }
        let threshold = r.threshold.unwrap_or(d.threshold);
        if threshold >= MAX_WEIGHT {
            return Err(self.err(
                format!("{key}.threshold"),
                format!("{threshold} is out of range; expected less than {MAX_WEIGHT}"),
            ));
        }
        Ok(Settings {
            strategy: r.strategy.unwrap_or(d.strategy),
            capacity,
            failover: r.failover.unwrap_or(d.failover),
            window,
            z_threshold,
            max_drained_fraction,
            threshold,
        })
    }

    /// Validates one direction's behaviour over its defaults.
    fn rules(
        &self,
        key: &str,
        raw: Option<RawRules>,
        default: Rules,
    ) -> Result<Rules, ConfigError> {
        let Some(raw) = raw else {
            return Ok(default);
        };
        let window = raw
            .stabilization_window
            .map_or(default.stabilization_window, |d| d.as_secs() as i64);
        let policies = match raw.policies {
            None => default.policies,
            Some(list) => list
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let k = format!("{key}.policies[{i}]");
                    if p.value == 0 {
                        return Err(self.err(format!("{k}.value"), "is 0; expected at least 1"));
                    }
                    if p.period.as_secs() == 0 || p.period.subsec_nanos() != 0 {
                        return Err(
                            self.err(format!("{k}.period"), "expected whole seconds, at least 1s")
                        );
                    }
                    Ok(RatePolicy {
                        kind: p.kind,
                        value: p.value,
                        period: p.period.as_secs() as i64,
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Rules {
            stabilization_window: window,
            select: raw.select_policy.unwrap_or(default.select),
            policies,
        })
    }

    fn webhook(&self, key: &str, w: RawWebhook) -> Result<WebhookConfig, ConfigError> {
        let url = self.url(&format!("{key}.url"), &w.url)?;
        let secret = self
            .secret(
                &format!("{key}.secret"),
                w.secret_env.as_deref(),
                w.secret_file.as_deref(),
            )?
            .ok_or_else(|| {
                self.err(
                    key,
                    "no signing secret; expected `secret_env` (a variable name) or `secret_file`",
                )
            })?;
        let previous_secret = self.secret(
            &format!("{key}.previous_secret"),
            w.previous_secret_env.as_deref(),
            w.previous_secret_file.as_deref(),
        )?;
        Ok(WebhookConfig {
            url,
            secret,
            previous_secret,
        })
    }

    fn url(&self, key: &str, s: &str) -> Result<Url, ConfigError> {
        let url = Url::parse(s).map_err(|e| {
            self.err(
                key,
                format!("`{s}` is not a URL ({e}); expected e.g. http://127.0.0.1:9090"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.err(
                key,
                format!(
                    "`{s}` has scheme `{}`; expected http or https",
                    url.scheme()
                ),
            ));
        }
        Ok(url)
    }

    /// Resolves a secret given as `<key>_env` or `<key>_file`; at most one may be set.
    fn secret(
        &self,
        key: &str,
        env: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Option<Secret>, ConfigError> {
        let value = match (env, file) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    key,
                    format!("both `{key}_env` and `{key}_file` are set; expected one"),
                ));
            }
            (Some(var), None) => std::env::var(var).map_err(|_| {
                self.err(
                    format!("{key}_env"),
                    format!(
                        "environment variable `{var}` is not set; expected it to hold the secret"
                    ),
                )
            })?,
            (None, Some(path)) => {
                let path = match self.file.parent() {
                    Some(dir) if path.is_relative() => dir.join(path),
                    _ => path.to_owned(),
                };
                std::fs::read_to_string(&path).map_err(|e| {
                    self.err(
                        format!("{key}_file"),
                        format!("cannot read `{}`: {e}", path.display()),
                    )
                })?
            }
            (None, None) => return Ok(None),
        };
        let value = value.trim_end().to_owned();
        if value.is_empty() {
            return Err(self.err(key, "the secret is empty; expected a non-empty value"));
        }
        Ok(Some(Secret(value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[prometheus]
url = "http://127.0.0.1:9090"

[server]
listen = "127.0.0.1:8080"

[[target]]
name = "web"
request_rate = 'sum(rate(http_requests_total{job="web"}[5m]))'
capacity_rps = 150
startup = "3m"
min_replicas = 2
max_replicas = 40
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        let t = &c.targets[0];
        assert_eq!(t.name, "web");
        assert_eq!(t.startup, Duration::from_secs(180));
        assert_eq!(t.interval, Duration::from_secs(30));
        assert_eq!(t.history, Duration::from_secs(14 * 86_400));
        assert_eq!(t.step, Duration::from_secs(60));
        assert_eq!(t.stale_after, Duration::from_secs(180));
        assert_eq!(t.mode, Mode::Act);
        assert_eq!(c.forecast.level, 0.95);
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
    }

    /// Each broken config must fail with an error naming the file, the key and the
    /// expectation.
    #[test]
    fn errors_name_file_key_and_expectation() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "max_replicas = 40",
                "max_replicas = 40\ncapcity = 3",
                &["test.toml", "capcity", "expected one of"],
            ),
            (
                "startup = \"3m\"",
                "startup = \"3 parsecs\"",
                &["test.toml", "startup", "parsecs"],
            ),
            (
                "min_replicas = 2",
                "min_replicas = 50",
                &["test.toml", "target[web].min_replicas", "max_replicas"],
            ),
            (
                "name = \"web\"",
                "name = \"\"",
                &["test.toml", "target[0].name", "non-empty"],
            ),
            (
                "capacity_rps = 150",
                "capacity_rps = -1",
                &["target[web].capacity_rps", "positive"],
            ),
            (
                "max_replicas = 40",
                "max_replicas = 40\nstep = \"1500ms\"",
                &["target[web].step", "whole seconds"],
            ),
            (
                "max_replicas = 40",
                "max_replicas = 40\nlatency_slo = \"250ms\"",
                &["target[web].latency_slo", "`latency` query"],
            ),
            (
                "max_replicas = 40",
                "max_replicas = 40\nmode = \"sometimes\"",
                &["test.toml", "sometimes", "act", "forecast-only"],
            ),
            (
                "url = \"http://127.0.0.1:9090\"",
                "url = \"nope\"",
                &["prometheus.url", "not a URL"],
            ),
            (
                "listen = \"127.0.0.1:8080\"",
                "listen = \"localhost\"",
                &["server.listen", "IP:PORT"],
            ),
        ];
        for (from, to, wants) in cases {
            assert!(MINIMAL.contains(from), "case `{from}` changes nothing");
            let text = MINIMAL.replace(from, to);
            let err = parse(&text).expect_err(to).to_string();
            for want in *wants {
                assert!(err.contains(want), "error for `{to}` lacks `{want}`: {err}");
            }
        }
    }

    /// The decision, behaviour, budget and rebalance keys: each broken value names its key.
    #[test]
    fn scaling_keys_are_validated() {
        let cases: &[(&str, &[&str])] = &[
            (
                "target_utilization = 1.5",
                &["target[web].target_utilization", "(0, 1]"],
            ),
            (
                "prediction_utilization = 0",
                &["target[web].prediction_utilization", "(0, 1]"],
            ),
            ("tolerance = 1", &["target[web].tolerance", "[0, 1)"]),
            ("headroom = -1", &["target[web].headroom", ">= 0"]),
            (
                "[target.behavior.scale_down]\npolicies = [{ type = \"Pods\", value = 0, period = \"1m\" }]",
                &[
                    "target[web].behavior.scale_down.policies[0].value",
                    "at least 1",
                ],
            ),
            (
                "[target.behavior.scale_up]\npolicies = [{ type = \"Pods\", value = 2, period = \"500ms\" }]",
                &[
                    "target[web].behavior.scale_up.policies[0].period",
                    "whole seconds",
                ],
            ),
            (
                "[target.behavior.scale_up]\nselect_policy = \"Sometimes\"",
                &["test.toml", "Sometimes", "Max", "Disabled"],
            ),
            (
                "scale_in_window = \"5m\"\n[target.behavior.scale_down]\nstabilization_window = \"10m\"",
                &[
                    "target[web].behavior.scale_down.stabilization_window",
                    "scale_in_window",
                ],
            ),
            (
                "[target.rebalance]\nmax_drained_fraction = 1.5",
                &["target[web].rebalance.max_drained_fraction", "[0, 1)"],
            ),
            (
                "[target.rebalance]\nstrategy = \"random\"",
                &["test.toml", "random", "least_response_time"],
            ),
            (
                "[target.rebalance]\nz_threshold = 0",
                &["target[web].rebalance.z_threshold", "above 0"],
            ),
            (
                "[target.rebalance.capacity]\n\"10.0.0.1:80\" = -2",
                &["target[web].rebalance.capacity.\"10.0.0.1:80\"", "positive"],
            ),
        ];
        for (extra, wants) in cases {
            let err = parse(&format!("{MINIMAL}{extra}\n"))
                .expect_err(extra)
                .to_string();
            for want in *wants {
                assert!(
                    err.contains(want),
                    "error for `{extra}` lacks `{want}`: {err}"
                );
            }
        }
        let err = parse(&format!("[budget]\nmax_replicas = 0\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("budget.max_replicas"), "{err}");
    }

    #[test]
    fn scaling_keys_are_read() {
        let text = format!(
            "[budget]\nmax_replicas = 100\n{MINIMAL}target_utilization = 0.7\npriority = 3\n\
             scale_in_window = \"10m\"\n\
             [target.behavior.scale_down]\nselect_policy = \"Min\"\n\
             policies = [{{ type = \"Percent\", value = 10, period = \"1m\" }}, {{ type = \"Pods\", value = 4, period = \"1m\" }}]\n\
             [target.rebalance]\nstrategy = \"capacity\"\ncapacity = {{ \"a:80\" = 2 }}\n"
        );
        let c = parse(&text).unwrap();
        let t = &c.targets[0];
        assert_eq!(c.budget, Some(100));
        assert_eq!((t.target_utilization, t.priority), (0.7, 3));
        assert_eq!(t.scale_down.stabilization_window, 600);
        assert_eq!(t.scale_down.select, Select::Min);
        assert_eq!(t.scale_down.policies.len(), 2);
        assert_eq!(t.scale_down.policies[0].kind, RateKind::Percent);
        assert_eq!(t.scale_up, Rules::default_scale_up());
        assert_eq!(t.rebalance.strategy, Strategy::Capacity);
        assert_eq!(t.rebalance.capacity["a:80"], 2.0);
        // Defaults as the Kubernetes HPA.
        let d = parse(MINIMAL).unwrap();
        assert_eq!(d.targets[0].scale_down, Rules::default_scale_down());
        assert_eq!(d.targets[0].tolerance, 0.1);
        assert_eq!(d.budget, None);
    }

    #[test]
    fn capacity_may_be_left_to_learn_only_with_latency_slo_and_replicas() {
        let without = MINIMAL.replace("capacity_rps = 150\n", "");
        let err = parse(&without).unwrap_err().to_string();
        assert!(
            err.contains("target[web].capacity_rps") && err.contains("to learn it from"),
            "{err}"
        );
        let learnable = without.replace(
            "max_replicas = 40",
            "max_replicas = 40\nlatency = 'p95'\nlatency_slo = \"250ms\"\nreplicas = 'count(up)'",
        );
        assert_eq!(parse(&learnable).unwrap().targets[0].capacity_rps, None);
        let c = parse(&MINIMAL.replace(
            "[[target]]",
            "[forecast]\nrefit_every = \"30m\"\nmodels_dir = \"/var/lib/prescale\"\n\n[[target]]",
        ))
        .unwrap();
        assert_eq!(c.forecast.refit_every, Duration::from_secs(1800));
        assert_eq!(c.forecast.models_dir, PathBuf::from("/var/lib/prescale"));
        let c = Config::parse(MINIMAL, Path::new("/etc/prescale/prescale.toml")).unwrap();
        assert_eq!(c.forecast.models_dir, PathBuf::from("/etc/prescale/models"));
        let err =
            parse(&MINIMAL.replace("[[target]]", "[forecast]\nhorizon = \"2d\"\n\n[[target]]"))
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("forecast.horizon") && err.contains("at most 1d"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_targets_are_refused() {
        let text = format!(
            "{MINIMAL}\n{}",
            &MINIMAL[MINIMAL.find("[[target]]").unwrap()..]
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("target[1].name") && err.contains("duplicate target `web`"),
            "{err}"
        );
    }

    #[test]
    fn webhook_secret_from_env_or_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s3cret\n").unwrap();
        let text = format!(
            "{MINIMAL}\n[target.platform]\nurl = \"http://127.0.0.1:9000/scale\"\nsecret_file = \"secret\"\n"
        );
        let c = Config::parse(&text, &dir.path().join("p.toml")).unwrap();
        assert_eq!(
            c.targets[0].platform.as_ref().unwrap().secret.expose(),
            "s3cret"
        );

        let text = format!(
            "{MINIMAL}\n[target.platform]\nurl = \"http://127.0.0.1:9000/scale\"\nsecret_env = \"PRESCALE_TEST_UNSET_VARIABLE\"\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("target[web].platform.secret_env")
                && err.contains("PRESCALE_TEST_UNSET_VARIABLE"),
            "{err}"
        );

        let text = format!("{MINIMAL}\n[target.platform]\nurl = \"http://127.0.0.1:9000/scale\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("no signing secret"), "{err}");
    }

    #[test]
    fn state_alertmanager_rotation_and_haproxy() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("new"), "new-secret\n").unwrap();
        std::fs::write(dir.path().join("old"), "old-secret\n").unwrap();
        let text = format!(
            "{MINIMAL}\n[target.platform]\nurl = \"http://127.0.0.1:9000/scale\"\nsecret_file = \"new\"\n\
             previous_secret_file = \"old\"\n\n[target.balancer]\nkind = \"haproxy\"\n\
             runtime_api = \"unix:/run/haproxy/admin.sock\"\nbackend = \"web\"\n\n\
             [state]\ndir = \"var\"\n\n[alertmanager]\nurl = \"http://127.0.0.1:9093\"\nlead = \"10m\"\n"
        );
        let c = Config::parse(&text, &dir.path().join("p.toml")).unwrap();
        let t = &c.targets[0];
        let p = t.platform.as_ref().unwrap();
        assert_eq!(
            (
                p.secret.expose(),
                p.previous_secret.as_ref().unwrap().expose()
            ),
            ("new-secret", "old-secret")
        );
        assert!(t.balancer.is_none());
        let h = t.haproxy.as_ref().unwrap();
        assert_eq!(
            (&h.runtime_api, h.backend.as_str(), h.timeout),
            (
                &RuntimeApi::Unix("/run/haproxy/admin.sock".into()),
                "web",
                Duration::from_secs(2)
            )
        );
        assert_eq!(c.state.dir, dir.path().join("var"));
        let am = c.alertmanager.as_ref().unwrap();
        assert_eq!(
            (am.lead, am.resend),
            (Duration::from_secs(600), Duration::from_secs(60))
        );

        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.state.dir, Path::new("state"));
        assert_eq!(c.delivery.max_age, Duration::from_secs(3600));
        assert!(c.alertmanager.is_none());

        let tcp = MINIMAL.to_owned()
            + "\n[target.balancer]\nkind = \"haproxy\"\nruntime_api = \"127.0.0.1:9999\"\nbackend = \"b\"\n";
        let c = parse(&tcp).unwrap();
        assert_eq!(
            c.targets[0].haproxy.as_ref().unwrap().runtime_api,
            RuntimeApi::Tcp("127.0.0.1:9999".into())
        );
    }

    /// Each broken balancer, state or alertmanager table fails naming its key.
    #[test]
    fn balancer_state_and_alertmanager_errors() {
        let cases: &[(&str, &[&str])] = &[
            (
                "[target.balancer]\nkind = \"nginx\"\n",
                &["target[web].balancer.kind", "`nginx`", "haproxy"],
            ),
            (
                "[target.balancer]\nkind = \"haproxy\"\nbackend = \"web\"\n",
                &["target[web].balancer.runtime_api", "missing"],
            ),
            (
                "[target.balancer]\nkind = \"haproxy\"\nruntime_api = \"nowhere\"\nbackend = \"web\"\n",
                &["target[web].balancer.runtime_api", "`nowhere`"],
            ),
            (
                "[target.balancer]\nkind = \"haproxy\"\nruntime_api = \"/s.sock\"\n",
                &["target[web].balancer.backend", "missing"],
            ),
            (
                "[target.balancer]\nkind = \"haproxy\"\nruntime_api = \"/s.sock\"\nbackend = \"b\"\nurl = \"http://x\"\n",
                &["target[web].balancer.url", "kind = \"webhook\""],
            ),
            (
                "[target.balancer]\nbackend = \"b\"\n",
                &["target[web].balancer.backend", "kind = \"haproxy\""],
            ),
            (
                "[target.balancer]\nsecret_env = \"X\"\n",
                &["target[web].balancer.url", "missing"],
            ),
            (
                "[target.platform]\nurl = \"http://127.0.0.1:1/\"\nsecret_file = \"/nonexistent/s\"\nprevious_secret_env = \"PRESCALE_TEST_UNSET\"\n",
                &["target[web].platform.secret_file", "/nonexistent/s"],
            ),
        ];
        for (extra, wants) in cases {
            let err = parse(&format!("{MINIMAL}\n{extra}"))
                .expect_err(extra)
                .to_string();
            for want in *wants {
                assert!(
                    err.contains(want),
                    "error for `{extra}` lacks `{want}`: {err}"
                );
            }
        }
        let top: &[(&str, &[&str])] = &[
            (
                "[alertmanager]\nurl = \"ftp://x\"\n",
                &["alertmanager.url", "http or https"],
            ),
            (
                "[alertmanager]\nurl = \"http://x\"\nlead = \"0s\"\n",
                &["alertmanager.lead"],
            ),
            ("[state]\ndir = \"\"\n", &["state.dir", "empty"]),
            ("[delivery]\nmax_age = \"0s\"\n", &["delivery.max_age"]),
        ];
        for (extra, wants) in top {
            let text = format!("{extra}\n{MINIMAL}");
            let err = parse(&text).expect_err(extra).to_string();
            for want in *wants {
                assert!(
                    err.contains(want),
                    "error for `{extra}` lacks `{want}`: {err}"
                );
            }
        }
    }

    #[test]
    fn shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prescale.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.targets[0].name, "web");
        assert_eq!(c.targets[0].capacity_rps, Some(150.0));
    }
}

impl TargetConfig {
    /// The decision policy of this target (`capacity_rps` is `NaN` when it is learned).
    pub fn policy(&self) -> crate::decide::Policy {
        crate::decide::Policy {
            capacity_rps: self.capacity_rps.unwrap_or(f64::NAN),
            target_utilization: self.target_utilization,
            prediction_utilization: self.prediction_utilization,
            tolerance: self.tolerance,
            min_replicas: self.min_replicas,
            max_replicas: self.max_replicas,
            lookahead: (self.startup + self.interval).as_secs() as i64,
            interval: self.interval.as_secs() as i64,
            headroom: self.headroom,
            scale_up: self.scale_up.clone(),
            scale_down: self.scale_down.clone(),
        }
    }

    /// Everything the per-target step needs, as plain data.
    pub fn step_policy(
        &self,
        forecast: &ForecastConfig,
        alerts: Option<&AlertmanagerConfig>,
    ) -> crate::step::TargetPolicy {
        let decide = self.policy();
        let q = &self.queries;
        crate::step::TargetPolicy {
            name: self.name.clone(),
            mode: self.mode,
            forecast: forecast.settings(self.step_secs(), decide.lookahead),
            decide,
            step: self.step_secs(),
            stale_after: self.stale_after.as_secs() as i64,
            startup: self.startup.as_secs() as i64,
            latency_slo: self.latency_slo.map(|d| d.as_secs_f64()),
            capacity_rps: self.capacity_rps,
            learns_capacity: self.latency_slo.is_some()
                && q.latency.is_some()
                && q.replicas.is_some(),
            observes_replicas: q.replicas.is_some(),
            scales: self.platform.is_some(),
            balances: self.balancer.is_some() || self.haproxy.is_some(),
            rebalance: self.rebalance.clone(),
            priority: self.priority,
            alert: alerts.map(|a| crate::step::AlertPolicy {
                lead: a.lead.as_secs() as i64,
                resend: a.resend.as_secs() as i64,
            }),
        }
    }

    /// The signals this target's configuration asks for, with their queries.
    pub fn signals(&self) -> Vec<(crate::step::Signal, &str)> {
        use crate::step::Signal;
        let q = &self.queries;
        [
            (Signal::RequestRate, Some(q.request_rate.as_str())),
            (Signal::Latency, q.latency.as_deref()),
            (Signal::Replicas, q.replicas.as_deref()),
            (Signal::InstanceRate, q.instance_rate.as_deref()),
            (Signal::InstanceLatency, q.instance_latency.as_deref()),
            (Signal::InstanceErrors, q.instance_errors.as_deref()),
        ]
        .into_iter()
        .filter_map(|(s, q)| q.map(|q| (s, q)))
        .collect()
    }
}
