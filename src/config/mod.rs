//! Configuration: a TOML file deserialised into [`RawConfig`], then validated once into
//! [`Config`], whose fields have the right types and whose secrets are resolved.
//!
//! Every error names the file, the key and what was expected. The documented fields of the
//! raw structs are the configuration reference (docs/configuration.md mirrors them).
//!
//! - `parse.rs`: [`RawConfig`] and its tables, as written (serde);
//! - `validate.rs`: raw sections → validated ones, with their defaults;
//! - `target.rs`: [`TargetConfig`], the per-target part, and its defaults;
//! - `target/resolve.rs`: a `[[target]]` table → [`TargetConfig`], its validation;
//! - `cluster.rs`: [`ClusterConfig`], `[cluster]` and its validation;
//! - `platform.rs`: `[target.platform]`: a webhook or [`KubernetesConfig`];
//! - `secrets.rs`: [`Secret`], read from an environment variable or a file;
//! - here: the validated top-level types, [`ConfigError`] and [`Config::load`].
//!
//! Configuration depends on the core's policy types ([`crate::decide`]), never the
//! reverse: [`TargetConfig::policy`] converts a target into a [`crate::decide::Policy`].

mod cluster;
mod discovery;
mod parse;
mod platform;
#[cfg(test)]
mod proptests;
mod risk;
mod schedule;
mod secrets;
mod summary;
mod target;
mod template;
#[cfg(test)]
mod tests;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

pub use crate::decide::Mode;
pub use cluster::{ClusterConfig, DEFAULT_LEASE_TTL, EtcdAuth, EtcdTls};
pub(crate) use discovery::show_labels;
pub use discovery::{DEFAULT_REFRESH, DEFAULT_REMOVE_AFTER, DiscoveryConfig, Labels};
pub use parse::{
    RawAlertmanager, RawBalancer, RawBasicAuth, RawBehavior, RawBudget, RawCluster, RawConfig,
    RawDelivery, RawDiscovery, RawForecast, RawPlatform, RawPrometheus, RawRatePolicy,
    RawRebalance, RawRules, RawServer, RawState, RawTarget, RawWebhook,
};
pub use platform::{Credentials, KubernetesConfig, KubernetesMode, ScaleTargetRef};
pub use secrets::{Secret, WHSEC_PREFIX, WhsecError};
pub use summary::summary;
/// The longest target name, in bytes: it is the stem of the target's model file.
pub const MAX_TARGET_NAME: usize = target::MAX_NAME;
pub use target::{
    DEFAULT_CHANGE_COST, DEFAULT_HEADROOM, DEFAULT_PREDICTION_UTILIZATION,
    DEFAULT_TARGET_UTILIZATION, DEFAULT_TOLERANCE, HaproxyConfig, Queries, RuntimeApi,
    TargetConfig, WebhookConfig,
};

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
    /// The cluster this instance shares its targets with; `None`: one process owns every
    /// target.
    pub cluster: Option<ClusterConfig>,
    /// `[[discovery]]`, in file order: targets made from a query's series.
    pub discovery: Vec<DiscoveryConfig>,
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
    /// The largest answer read, in bytes; a larger one is refused.
    pub max_answer_bytes: usize,
    /// Most requests in flight to Prometheus at once (backfill, polls and discovery
    /// together); the others wait for a slot.
    pub max_concurrency: usize,
}

/// The default of `[prometheus] max_concurrency`.
pub const DEFAULT_MAX_CONCURRENCY: usize = 8;

/// The largest `[prometheus] max_concurrency` accepted.
pub const MAX_CONCURRENCY_LIMIT: u64 = 256;

/// The default of `[prometheus] max_answer_bytes`: 32 MiB, about a million samples.
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 32 << 20;

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
    /// Where the KEDA external scaler (gRPC) listens; `None`: it does not run.
    pub keda_listen: Option<SocketAddr>,
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
            refit_phase: 0,
        }
    }
}

/// Validated `[delivery]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        let raw = parse::from_toml(text, file)?;
        Validator { file }.config(raw)
    }

    /// The target with this name.
    pub fn target(&self, name: &str) -> Option<&TargetConfig> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// The one `[[target]]` a replay takes its policy from: the one named `name`, or, with
    /// no name, the only one. An error (key `target`) when there is none (a configuration
    /// whose targets are all discovered at run time), when `name` is none of them, or when
    /// no name is given and there are several, listing their names.
    pub fn replayed_target(&self, name: Option<&str>) -> Result<&TargetConfig, ConfigError> {
        let names = || {
            self.targets
                .iter()
                .map(|t| format!("`{}`", t.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let message = match (name, self.targets.as_slice()) {
            (_, []) => {
                let discovered = if self.discovery.is_empty() {
                    String::new()
                } else {
                    " (its targets are discovered at run time by [[discovery]], so they are \
                     not known here)"
                        .to_owned()
                };
                format!(
                    "no [[target]] to replay{discovered}: add a [[target]] table with the \
                     policy to replay{}",
                    name.map_or(String::new(), |n| format!(" named `{n}`"))
                )
            }
            (None, [only]) => return Ok(only),
            (None, _) => format!(
                "{} targets ({}): name the one to replay with --target NAME",
                self.targets.len(),
                names()
            ),
            (Some(n), _) => match self.target(n) {
                Some(t) => return Ok(t),
                None => format!("no [[target]] named `{n}`; the targets are {}", names()),
            },
        };
        Err(ConfigError::Invalid {
            file: self.file.clone(),
            key: "target".to_owned(),
            message,
        })
    }
}

/// What every validation step shares: the file, to name it in errors and to resolve
/// relative paths against. Each part of the configuration adds its own methods
/// (`validate.rs`, `target/resolve.rs`, `secrets.rs`).
struct Validator<'a> {
    file: &'a Path,
}

impl Validator<'_> {
    /// An error at `key`.
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// `path` taken from the configuration file's directory when it is relative.
    fn relative(&self, path: &Path) -> PathBuf {
        match self.file.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }
    }

    /// An http or https URL. Errors show it without credentials.
    fn url(&self, key: &str, s: &str) -> Result<Url, ConfigError> {
        let url = Url::parse(s).map_err(|e| {
            self.err(
                key,
                format!(
                    "`{}` is not a URL ({e}); expected e.g. http://127.0.0.1:9090",
                    redact_text(s)
                ),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.err(
                key,
                format!(
                    "`{}` has scheme `{}`; expected http or https",
                    redacted(&url),
                    url.scheme()
                ),
            ));
        }
        Ok(url)
    }
}

/// `url` with its credentials (user name and password) shown as `***`, for every output:
/// logs, errors, `check-config`, the API.
pub fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        // Fails only for URLs that cannot have credentials, which then have none to hide.
        let _ = shown.set_username("***");
        let _ = shown.set_password(None);
    }
    shown.to_string()
}

/// `text` with the credentials of every `scheme://user:password@host` in it shown as
/// `***`, for text that may hold a URL that did not parse (an error quoting a line).
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| "/?#\"'`<>".contains(c) || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}
