//! The configuration file as written: [`RawConfig`] and its tables, deserialised by serde.
//!
//! The documented fields are the reference of keys (docs/configuration.md mirrors them). Nothing here
//! checks values beyond their types; `validate.rs` does that.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::decide::balance::Strategy;
use crate::decide::{Mode, RateKind, Select};

/// Parses configuration text into its raw form; `file` names it in errors.
pub(super) fn from_toml(text: &str, file: &Path) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        file: file.to_owned(),
        // The parser quotes the line, which may hold a URL with credentials.
        message: super::redact_text(e.to_string().trim_end()),
    })
}

/// The longest duration any key accepts: 100 years. Beyond it a duration is a mistake, and
/// refusing it here keeps every sum and conversion to seconds (`i64`) from overflowing.
pub(super) const LONGEST_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// A humantime duration (`30s`, `5m`, `14d`) of at most [`LONGEST_DURATION`].
mod bounded {
    use std::time::Duration;

    use serde::de::{Deserialize, Deserializer, Error};

    /// A duration, or an optional one.
    pub(super) trait Longest {
        fn longest(&self) -> Option<Duration>;
    }

    impl Longest for Duration {
        fn longest(&self) -> Option<Duration> {
            Some(*self)
        }
    }

    impl Longest for Option<Duration> {
        fn longest(&self) -> Option<Duration> {
            *self
        }
    }

    pub(super) fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Longest,
        humantime_serde::Serde<T>: Deserialize<'de>,
    {
        let value = humantime_serde::Serde::<T>::deserialize(d)?.into_inner();
        match value.longest() {
            Some(d) if d > super::LONGEST_DURATION => Err(D::Error::custom(format!(
                "{} is too long; expected at most 100 years",
                humantime::format_duration(d)
            ))),
            _ => Ok(value),
        }
    }
}

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
    /// Several instances sharing the targets through etcd; without it one process owns
    /// every target.
    pub cluster: Option<RawCluster>,
    /// `[[discovery]]`: targets made from the series of a Prometheus query.
    #[serde(default)]
    pub discovery: Vec<RawDiscovery>,
}

/// `[[discovery]]`: every series `query` returns becomes a target, its table rendered
/// from `template` with the series' labels.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    /// PromQL whose result series are the services, e.g.
    /// `sum by (namespace, deployment) (rate(http_requests_total[2m]))`; run as an instant
    /// query every `refresh`.
    pub query: String,
    /// How often the query runs (default 1m).
    #[serde(default, with = "bounded")]
    pub refresh: Option<Duration>,
    /// The target's name, a template such as `"${namespace}-${deployment}"`.
    pub name: String,
    /// A series absent this long stops being a target (default 10m).
    #[serde(default, with = "bounded")]
    pub remove_after: Option<Duration>,
    /// The keys of a `[[target]]` (all but `name`), in whose strings `${label}` is
    /// replaced by the series' value of `label`: escaped for a PromQL string literal in
    /// queries, percent-encoded in URLs.
    pub template: toml::Table,
}

/// `[cluster]`: instances that share the targets through etcd.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// etcd endpoints, e.g. `["http://127.0.0.1:2379"]`; at least one, all `http` or all
    /// `https`, without credentials (use `username` and `password_*`).
    pub etcd: Vec<String>,
    /// This instance's name, unique in the cluster (default the host name).
    pub name: Option<String>,
    /// The URL other instances reach this instance's API at (default
    /// `http://<[server] listen>`, refused when that address is unspecified, e.g. 0.0.0.0).
    pub advertise: Option<String>,
    /// TTL of this instance's etcd lease: an instance that stops renewing it loses its
    /// targets this long after its last renewal (default 10s; whole seconds, 2s to 5m).
    #[serde(default, with = "bounded")]
    pub lease_ttl: Option<Duration>,
    /// Prefix of every key prescale writes in etcd (default `/prescale`).
    pub prefix: Option<String>,
    /// etcd user name (etcd authentication); needs `password_env` or `password_file`.
    pub username: Option<String>,
    /// Environment variable holding the etcd password.
    pub password_env: Option<String>,
    /// File holding the etcd password (trailing whitespace trimmed).
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA that signed the etcd servers' certificates; needs `https`
    /// endpoints, which need it.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for etcd (mutual TLS); needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
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
    #[serde(default, with = "bounded")]
    pub timeout: Option<Duration>,
    /// File holding a bearer token (trailing whitespace trimmed).
    pub bearer_token_file: Option<PathBuf>,
    /// Environment variable holding a bearer token.
    pub bearer_token_env: Option<String>,
    /// HTTP basic auth.
    pub basic_auth: Option<RawBasicAuth>,
    /// The largest answer read, in bytes (default 32 MiB).
    pub max_answer_bytes: Option<u64>,
    /// Most requests in flight to Prometheus at once, shared by backfill, polling and
    /// discovery (default 8, 1 to 256).
    pub max_concurrency: Option<u64>,
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
    /// Address of the KEDA external scaler (gRPC, KEDA's `externalscaler.proto`), e.g.
    /// `127.0.0.1:9090`; absent (the default), no gRPC server runs. Another address than
    /// `listen`; changing it needs a restart.
    pub keda_listen: Option<String>,
}

/// `[forecast]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForecast {
    /// Prediction-interval level in (0, 1) (default 0.95).
    pub level: Option<f64>,
    /// Re-select and refit each target's model this often (default 1h).
    #[serde(default, with = "bounded")]
    pub refit_every: Option<Duration>,
    /// Horizon model selection and intervals are tuned for (default 1h; at least each
    /// target's startup + interval).
    #[serde(default, with = "bounded")]
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
    #[serde(default, with = "bounded")]
    pub timeout: Option<Duration>,
    /// Attempts before giving up (default 6).
    pub max_attempts: Option<u32>,
    /// First backoff between attempts, doubled each time with jitter (default 500ms).
    #[serde(default, with = "bounded")]
    pub initial_backoff: Option<Duration>,
    /// Longest backoff between attempts (default 30s).
    #[serde(default, with = "bounded")]
    pub max_backoff: Option<Duration>,
    /// An action not delivered this long after it was decided is dead-lettered (default 1h).
    #[serde(default, with = "bounded")]
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
    #[serde(default, with = "bounded")]
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
    #[serde(default, with = "bounded")]
    pub lead: Option<Duration>,
    /// Re-send a firing alert this often, so Alertmanager keeps it active (default 1m).
    #[serde(default, with = "bounded")]
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
    #[serde(default, with = "bounded")]
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
    #[serde(with = "bounded")]
    pub startup: Duration,
    /// Fewest replicas (default 1).
    pub min_replicas: Option<u32>,
    /// Most replicas.
    pub max_replicas: u32,
    /// The count running when prescale first manages the target, within
    /// `min_replicas..=max_replicas`: taken as running until a count is remembered (asked
    /// for and delivered) or observed. Without it (and without `replicas`), a new target
    /// asks for nothing until it knows what runs.
    pub initial_replicas: Option<u32>,
    /// Poll and decide every (default 30s).
    #[serde(default, with = "bounded")]
    pub interval: Option<Duration>,
    /// History to backfill and keep (default 14d).
    #[serde(default, with = "bounded")]
    pub history: Option<Duration>,
    /// Resolution of all series (default 1m, whole seconds).
    #[serde(default, with = "bounded")]
    pub step: Option<Duration>,
    /// A signal whose newest sample is older than this is stale: the target is degraded
    /// and may not scale in (default 2 × step + 2 × interval).
    #[serde(default, with = "bounded")]
    pub stale_after: Option<Duration>,
    /// Scale in only to the highest count recommended within this window (default from
    /// `risk`: 5m).
    #[serde(default, with = "bounded")]
    pub scale_in_window: Option<Duration>,
    /// One dial for the trade-off between cost and lost requests: a number in [0, 1] or
    /// `lean` (0.25), `balanced` (0.5, the default) or `safe` (0.75). It sets the defaults
    /// of `interval_share`, `prediction_utilization`, `target_utilization` and
    /// `scale_in_window`; each of those keys, when given, overrides it.
    pub risk: Option<RawRisk>,
    /// How much of the prediction interval above the point forecast the prediction policy
    /// plans for, in [0, 2] (default from `risk`: 1.0, the upper bound).
    pub interval_share: Option<f64>,
    /// Share of `capacity_rps` each replica carries in the demand (reactive) policy, in
    /// (0, 1] (default from `risk`: 0.7).
    pub target_utilization: Option<f64>,
    /// Share of `capacity_rps` each replica carries when planning for the upper forecast,
    /// in (0, 1] (default from `risk`: 0.9).
    pub prediction_utilization: Option<f64>,
    /// The demand policy holds while load / planned capacity is within 1 ± this, in
    /// [0, 1) (default 0.1, as the Kubernetes HPA).
    pub tolerance: Option<f64>,
    /// Headroom added to predicted peaks, as a share of the typical demand (its
    /// exponentially weighted mean over about a day), ≥ 0 (default 0).
    pub headroom: Option<f64>,
    /// What one change of the replica count costs, as time of the typical count's
    /// replicas: a change is made only where the plan says it saves more replica-time, so
    /// a count asked for again soon is held and changes a few steps apart are made as one
    /// (default 5m; 0s makes every change the behaviour allows, as the HPA).
    #[serde(default, with = "bounded")]
    pub change_cost: Option<Duration>,
    /// Priority under a `[budget]`: higher is served first (default 0).
    pub priority: Option<u32>,
    /// Scaling behaviour, as `HorizontalPodAutoscaler.spec.behavior`.
    pub behavior: Option<RawBehavior>,
    /// `act` (default) sends webhooks; `forecast-only` decides and shows, sends nothing.
    pub mode: Option<Mode>,
    /// When someone else changes the running count (observed by the `replicas` query or
    /// the Kubernetes scale subresource): `follow` (default) decides from the observed
    /// count, scaling an external scale-out in only after the scale-down stabilisation
    /// window and through the rate limits; `hold` pauses acting on the target until it
    /// is resumed through the API, so that a manual override wins.
    pub external_changes: Option<crate::step::ExternalChanges>,
    /// Where scale actions go: a signed webhook (default) or the Kubernetes API.
    pub platform: Option<RawPlatform>,
    /// Where rebalance actions go: a webhook (default) or HAProxy's runtime API.
    pub balancer: Option<RawBalancer>,
    /// How balancer weights are computed, and failover.
    pub rebalance: Option<RawRebalance>,
    /// `[[target.schedule]]`: windows with other bounds.
    #[serde(default)]
    pub schedule: Vec<RawSchedule>,
}

/// `[[target.schedule]]`: a window that opens at each occurrence of `cron` and lasts
/// `duration`, with its own `min_replicas` and/or `max_replicas`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    /// When the window opens: a cron expression of 5 fields (minute, hour, day of month,
    /// month, day of week), e.g. `"0 8 * * MON-FRI"`.
    pub cron: String,
    /// How long it stays open, e.g. `10h`.
    #[serde(with = "bounded")]
    pub duration: Duration,
    /// The IANA time zone whose wall clock `cron` reads, e.g. `Europe/Berlin` (default
    /// `UTC`).
    pub timezone: Option<String>,
    /// Fewest replicas while open; in force from `startup` + `interval` before it opens.
    pub min_replicas: Option<u32>,
    /// Most replicas while open.
    pub max_replicas: Option<u32>,
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
    #[serde(default, with = "bounded")]
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
    #[serde(default, with = "bounded")]
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
    #[serde(with = "bounded")]
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
    #[serde(default, with = "bounded")]
    pub timeout: Option<Duration>,
}

/// `[target.platform]`: a signed webhook (`kind = "webhook"`, the default, with the keys
/// of [`RawWebhook`]) or the Kubernetes API (`kind = "kubernetes"`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlatform {
    /// `webhook` (default) or `kubernetes`.
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
    /// Kubernetes: the namespace of the scaled resource.
    pub namespace: Option<String>,
    /// Kubernetes: the name of the Deployment scaled (or `scale_target`).
    pub deployment: Option<String>,
    /// Kubernetes: any other resource with a `scale` subresource, as an HPA's
    /// `scaleTargetRef` names it: `{ kind = "StatefulSet", name = "db" }` (`api_version`
    /// defaults to `apps/v1` for Deployment, StatefulSet and ReplicaSet).
    pub scale_target: Option<RawScaleTarget>,
    /// Kubernetes: `replicas` (default: set the scale subresource's `spec.replicas`) or
    /// `hpa-floor` (raise the HPA's `minReplicas` to prescale's count).
    pub mode: Option<crate::config::KubernetesMode>,
    /// Kubernetes, `hpa-floor`: the HPA's name (default: the HPA in the namespace whose
    /// `scaleTargetRef` names the resource).
    pub hpa: Option<String>,
    /// Kubernetes: a kubeconfig file (default, without `kubeconfig` and `context`: the
    /// pod's service account).
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes: the kubeconfig's context (default: its current context).
    pub context: Option<String>,
}

/// `[target.platform.scale_target]`: a resource with a `scale` subresource.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScaleTarget {
    /// E.g. `StatefulSet`.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// E.g. `apps/v1`.
    pub api_version: Option<String>,
}

/// `[target.balancer]` (and a webhook `[target.platform]`): a signed webhook.
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

/// `risk`: a number or a name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RawRisk {
    /// A point on the dial, in [0, 1].
    Value(f64),
    /// `lean`, `balanced` or `safe`.
    Name(String),
}
