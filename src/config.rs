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
    /// The services to scale; at least one.
    #[serde(default, rename = "target")]
    pub targets: Vec<RawTarget>,
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
    /// `act` (default) sends webhooks; `forecast-only` decides and shows, sends nothing.
    pub mode: Option<Mode>,
    /// Where scale actions go.
    pub platform: Option<RawWebhook>,
    /// Where rebalance actions go.
    pub balancer: Option<RawWebhook>,
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
}

/// Whether a target's decisions are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Decide and send webhooks.
    Act,
    /// Decide and show; send nothing.
    ForecastOnly,
}

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
    /// The targets, in file order; names unique.
    pub targets: Vec<TargetConfig>,
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
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
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
    /// Scale-in stabilisation window.
    pub scale_in_window: Duration,
    /// Act or only forecast.
    pub mode: Mode,
    /// Scale webhook.
    pub platform: Option<WebhookConfig>,
    /// Rebalance webhook.
    pub balancer: Option<WebhookConfig>,
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
            mode: Mode::Act,
            platform: None,
            balancer: None,
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
}

const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_HISTORY: Duration = Duration::from_secs(14 * 86_400);
const DEFAULT_STEP: Duration = Duration::from_secs(60);
const DEFAULT_SCALE_IN_WINDOW: Duration = Duration::from_secs(300);
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
        Ok(Config {
            file: self.file.to_owned(),
            prometheus,
            server: ServerConfig { listen },
            forecast,
            delivery,
            targets,
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
        };
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
        let platform = t
            .platform
            .map(|w| self.webhook(&key("platform"), w))
            .transpose()?;
        let balancer = t
            .balancer
            .map(|w| self.webhook(&key("balancer"), w))
            .transpose()?;
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
            scale_in_window: t.scale_in_window.unwrap_or(DEFAULT_SCALE_IN_WINDOW),
            mode: t.mode.unwrap_or(Mode::Act),
            platform,
            balancer,
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
        Ok(WebhookConfig { url, secret })
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
    fn shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prescale.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.targets[0].name, "web");
        assert_eq!(c.targets[0].capacity_rps, Some(150.0));
    }
}
