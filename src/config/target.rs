//! The per-target part of the configuration: [`TargetConfig`] (queries, sizing, scaling
//! behaviour, balancer and receivers) and its defaults. Its validation from a
//! `[[target]]` table is in `target/resolve.rs`.

mod resolve;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::platform::KubernetesConfig;
use super::secrets::Secret;
use super::{AlertmanagerConfig, ForecastConfig};
use crate::decide::balance::Settings;
use crate::decide::risk::Risk;
use crate::decide::schedule::{self, Window};
use crate::decide::{Mode, Policy, Rules};
use crate::step::{AlertPolicy, ExternalChanges, Signal, TargetPolicy};

pub(super) use resolve::MAX_NAME;
pub(super) use resolve::target_key;

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
    /// The count running when prescale first manages the target (within the bounds),
    /// taken as running until one is remembered or observed.
    pub initial_replicas: Option<u32>,
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
    /// Whether that window is the dial's (neither `scale_in_window` nor
    /// `behavior.scale_down.stabilization_window` is set): then, while the load planned for
    /// comes from the target's recurring bursts, the leanest window is used instead.
    pub scale_in_from_dial: bool,
    /// The cost/risk dial the defaults below come from (`balanced` when not given).
    pub risk: Risk,
    /// Share of the prediction interval above the point forecast planned for, in [0, 2].
    pub interval_share: f64,
    /// Share of `capacity_rps` each replica carries in the demand policy, in (0, 1].
    pub target_utilization: f64,
    /// Share of `capacity_rps` each replica carries in the prediction policy, in (0, 1].
    pub prediction_utilization: f64,
    /// Tolerance of the demand policy, in [0, 1).
    pub tolerance: f64,
    /// Headroom over predicted peaks, as a share of the typical demand (≥ 0).
    pub headroom: f64,
    /// What one change of the count costs, as time of the typical count's replicas: a
    /// change is made only where the plan says it saves more (zero: every change the
    /// behaviour allows, as the HPA).
    pub change_cost: Duration,
    /// Priority under a budget; higher first.
    pub priority: u32,
    /// Scale-up behaviour.
    pub scale_up: Rules,
    /// Scale-down behaviour.
    pub scale_down: Rules,
    /// Act or only forecast.
    pub mode: Mode,
    /// What to do when someone else changes the running count.
    pub external_changes: ExternalChanges,
    /// Scale webhook.
    pub platform: Option<WebhookConfig>,
    /// Scale through the Kubernetes API instead (`[target.platform] kind = "kubernetes"`).
    pub kubernetes: Option<KubernetesConfig>,
    /// Rebalance webhook.
    pub balancer: Option<WebhookConfig>,
    /// Rebalance through HAProxy's runtime API instead (`[target.balancer] kind = "haproxy"`).
    pub haproxy: Option<HaproxyConfig>,
    /// Balancer weights and failover.
    pub rebalance: Settings,
    /// Scheduled windows (`[[target.schedule]]`).
    pub schedule: Vec<Window>,
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

    /// What the decision engine needs of this target. `capacity_rps` is `NaN` when it is
    /// to be learned: whoever resolves the capacity sets it.
    pub fn policy(&self) -> Policy {
        Policy {
            capacity_rps: self.capacity_rps.unwrap_or(f64::NAN),
            target_utilization: self.target_utilization,
            prediction_utilization: self.prediction_utilization,
            interval_share: self.interval_share,
            tolerance: self.tolerance,
            min_replicas: self.min_replicas,
            max_replicas: self.max_replicas,
            lookahead: (self.startup + self.interval).as_secs() as i64,
            interval: self.interval.as_secs() as i64,
            headroom: self.headroom,
            scale_up: self.scale_up.clone(),
            scale_down: self.scale_down.clone(),
            recurring_scale_in: self
                .scale_in_from_dial
                .then(|| self.risk.planning().recurring_scale_in_window),
            change_cost: self.change_cost.as_secs() as i64,
            schedule: self.schedule.clone(),
        }
    }

    /// The fewest and most replicas in force at `now`, scheduled windows included.
    pub fn bounds_at(&self, now: i64) -> (u32, u32) {
        let lookahead = (self.startup + self.interval).as_secs() as i64;
        let b = schedule::bounds(
            &self.schedule,
            self.min_replicas,
            self.max_replicas,
            lookahead,
            now,
        );
        (b.min, b.max)
    }

    /// Where on the `refit_every` grid this target refits: a hash of its name, so that
    /// many targets started together refit in different cycles, each hour, rather than
    /// all in one.
    fn refit_phase(&self, forecast: &ForecastConfig) -> i64 {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut h = DefaultHasher::new();
        self.name.hash(&mut h);
        let every = forecast.refit_every.as_secs().max(1);
        (h.finish() % every) as i64
    }

    /// Everything the per-target step needs, as plain data.
    pub fn step_policy(
        &self,
        forecast: &ForecastConfig,
        alerts: Option<&AlertmanagerConfig>,
    ) -> TargetPolicy {
        let decide = self.policy();
        let q = &self.queries;
        TargetPolicy {
            name: self.name.clone(),
            mode: self.mode,
            forecast: crate::forecast::Settings {
                refit_phase: self.refit_phase(forecast),
                ..forecast.settings(self.step_secs(), decide.lookahead)
            },
            decide,
            step: self.step_secs(),
            stale_after: self.stale_after.as_secs() as i64,
            startup: self.startup.as_secs() as i64,
            latency_slo: self.latency_slo.map(|d| d.as_secs_f64()),
            capacity_rps: self.capacity_rps,
            learns_capacity: self.latency_slo.is_some()
                && q.latency.is_some()
                && self.observes_replicas(),
            observes_replicas: self.observes_replicas(),
            initial_replicas: self.initial_replicas,
            scales: self.platform.is_some() || self.kubernetes.is_some(),
            floor_only: self
                .kubernetes
                .as_ref()
                .is_some_and(|k| k.mode == super::KubernetesMode::HpaFloor),
            balances: self.balancer.is_some() || self.haproxy.is_some(),
            rebalance: self.rebalance.clone(),
            priority: self.priority,
            alert: alerts.map(|a| AlertPolicy {
                lead: a.lead.as_secs() as i64,
                resend: a.resend.as_secs() as i64,
            }),
            external_changes: self.external_changes,
        }
    }

    /// Whether the running count is observed: by the `replicas` query, or else read from
    /// the Kubernetes scale subresource ([`TargetConfig::reads_scale`]).
    pub fn observes_replicas(&self) -> bool {
        self.queries.replicas.is_some() || self.kubernetes.is_some()
    }

    /// Whether the running count is read from the Kubernetes scale subresource each cycle
    /// (a Kubernetes platform and no `replicas` query, which would take precedence).
    pub fn reads_scale(&self) -> bool {
        self.queries.replicas.is_none() && self.kubernetes.is_some()
    }

    /// The signals this target's configuration asks for, with their queries.
    pub fn signals(&self) -> Vec<(Signal, &str)> {
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
            initial_replicas: None,
            interval: DEFAULT_INTERVAL,
            history: DEFAULT_HISTORY,
            step: DEFAULT_STEP,
            stale_after: 2 * DEFAULT_STEP + 2 * DEFAULT_INTERVAL,
            scale_in_window: DEFAULT_SCALE_IN_WINDOW,
            scale_in_from_dial: true,
            risk: Risk::BALANCED,
            interval_share: 1.0,
            target_utilization: DEFAULT_TARGET_UTILIZATION,
            prediction_utilization: DEFAULT_PREDICTION_UTILIZATION,
            tolerance: DEFAULT_TOLERANCE,
            headroom: DEFAULT_HEADROOM,
            change_cost: DEFAULT_CHANGE_COST,
            priority: 0,
            scale_up: Rules::default_scale_up(),
            scale_down: Rules::default_scale_down(),
            mode: Mode::Act,
            external_changes: ExternalChanges::Follow,
            platform: None,
            kubernetes: None,
            balancer: None,
            haproxy: None,
            rebalance: Settings::default(),
            schedule: Vec::new(),
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
/// Default cost of one change of the count: five minutes of the typical count's replicas.
pub const DEFAULT_CHANGE_COST: Duration = Duration::from_secs(300);
