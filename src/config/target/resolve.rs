//! How a raw `[[target]]` table becomes a [`TargetConfig`]: the `Validator` methods that
//! check its name, queries, capacity, replica bounds, timing, planning dials, scaling
//! behaviour, rebalance settings and balancer (a webhook or HAProxy), each error naming
//! the target's key (`target[NAME].KEY`).

use std::path::PathBuf;
use std::time::Duration;

use super::{
    DEFAULT_CHANGE_COST, DEFAULT_HEADROOM, DEFAULT_HISTORY, DEFAULT_INTERVAL, DEFAULT_STEP,
    DEFAULT_TOLERANCE, HaproxyConfig, Queries, RuntimeApi, TargetConfig, WebhookConfig,
};
use crate::config::parse::{
    RawBalancer, RawBehavior, RawRebalance, RawRules, RawTarget, RawWebhook,
};
use crate::config::{ConfigError, Validator};
use crate::decide::balance::{MAX_WEIGHT, Settings};
use crate::decide::risk::Risk;
use crate::decide::{Mode, RatePolicy, Rules};

/// The most steps a target's history (or its forecast horizon) may span. Prometheus refuses
/// a range query of more than 11,000 points per series, so the backfill asks in chunks
/// (`source::prometheus::MAX_POINTS_PER_REQUEST`); this bounds how many chunks and how
/// much memory one target may take.
const MAX_HISTORY_POINTS: u64 = 1_000_000;

/// The longest target name: it is the stem of the target's model file.
pub(crate) const MAX_NAME: usize = 128;

/// The key of `k` in the target named `name`, e.g. `target[web].min_replicas`.
pub(in crate::config) fn target_key(name: &str, k: &str) -> String {
    format!("target[{name}].{k}")
}

/// A target's series resolution and timing.
struct Timing {
    step: Duration,
    interval: Duration,
    history: Duration,
    stale_after: Duration,
}

/// How a target plans replicas against its capacity.
struct Planning {
    risk: Risk,
    interval_share: f64,
    target_utilization: f64,
    prediction_utilization: f64,
    tolerance: f64,
    headroom: f64,
}

/// Where a target's rebalance actions go: a webhook or HAProxy.
type BalancerConfig = (Option<WebhookConfig>, Option<HaproxyConfig>);

impl Validator<'_> {
    /// Validates the `i`-th `[[target]]` table; errors name it by name once it has one.
    pub(in crate::config) fn target(
        &self,
        i: usize,
        t: RawTarget,
    ) -> Result<TargetConfig, ConfigError> {
        self.target_name(i, &t.name)?;
        let queries = self.queries(&t)?;
        self.capacity(&t, &queries)?;
        let min_replicas = self.replica_bounds(&t)?;
        let timing = self.timing(&t)?;
        let schedule = self.schedules(&t, min_replicas)?;
        let planning = self.planning(&t)?;
        let dial_window = Duration::from_secs(planning.risk.planning().scale_in_window as u64);
        let scale_in_window = t.scale_in_window.unwrap_or(dial_window);
        let explicit = t.scale_in_window.is_some();
        let scale_in_from_dial = !explicit
            && t.behavior
                .as_ref()
                .and_then(|b| b.scale_down.as_ref())
                .is_none_or(|r| r.stabilization_window.is_none());
        let (scale_up, scale_down) =
            self.behavior(&t.name, (scale_in_window, explicit), t.behavior)?;
        let rebalance = self.rebalance(
            &target_key(&t.name, "rebalance"),
            t.rebalance.unwrap_or_default(),
        )?;
        let (platform, kubernetes) = match t.platform {
            Some(p) => self.platform(&target_key(&t.name, "platform"), p, min_replicas)?,
            None => (None, None),
        };
        let (balancer, haproxy) = match t.balancer {
            Some(b) => self.balancer(&target_key(&t.name, "balancer"), b)?,
            None => (None, None),
        };
        Ok(TargetConfig {
            name: t.name,
            queries,
            latency_slo: t.latency_slo,
            capacity_rps: t.capacity_rps,
            startup: t.startup,
            min_replicas,
            max_replicas: t.max_replicas,
            initial_replicas: t.initial_replicas,
            interval: timing.interval,
            history: timing.history,
            step: timing.step,
            stale_after: timing.stale_after,
            scale_in_window: Duration::from_secs(scale_down.stabilization_window as u64),
            scale_in_from_dial,
            risk: planning.risk,
            interval_share: planning.interval_share,
            target_utilization: planning.target_utilization,
            prediction_utilization: planning.prediction_utilization,
            tolerance: planning.tolerance,
            headroom: planning.headroom,
            change_cost: t.change_cost.unwrap_or(DEFAULT_CHANGE_COST),
            priority: t.priority.unwrap_or(0),
            scale_up,
            scale_down,
            mode: t.mode.unwrap_or(Mode::Act),
            external_changes: t.external_changes.unwrap_or_default(),
            platform,
            kubernetes,
            balancer,
            haproxy,
            rebalance,
            schedule,
        })
    }

    fn target_name(&self, i: usize, name: &str) -> Result<(), ConfigError> {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        let why = if !valid {
            "expected a non-empty name of letters, digits, `.`, `_` or `-`".to_owned()
        } else if name == "." || name == ".." {
            "expected a name that is not `.` or `..` (it names the target's model file)".to_owned()
        } else if name.len() > MAX_NAME {
            format!(
                "it is {} characters long; expected at most {MAX_NAME} (it names the target's model file)",
                name.len()
            )
        } else {
            return Ok(());
        };
        let shown: String = name.chars().take(40).collect();
        let more = if name.chars().count() > 40 { "…" } else { "" };
        Err(self.err(
            format!("target[{i}].name"),
            format!("`{shown}{more}` is not a valid name; {why}"),
        ))
    }

    fn queries(&self, t: &RawTarget) -> Result<Queries, ConfigError> {
        let query = |k: &str, q: &Option<String>| -> Result<Option<String>, ConfigError> {
            match q {
                Some(q) if q.trim().is_empty() => Err(self.err(
                    target_key(&t.name, k),
                    "is empty; expected a PromQL expression",
                )),
                q => Ok(q.clone()),
            }
        };
        Ok(Queries {
            request_rate: query("request_rate", &Some(t.request_rate.clone()))?.unwrap_or_default(),
            latency: query("latency", &t.latency)?,
            replicas: query("replicas", &t.replicas)?,
            instance_rate: query("instance_rate", &t.instance_rate)?,
            instance_latency: query("instance_latency", &t.instance_latency)?,
            instance_errors: query("instance_errors", &t.instance_errors)?,
        })
    }

    /// The latency objective, and a capacity that is configured or can be learned.
    fn capacity(&self, t: &RawTarget, queries: &Queries) -> Result<(), ConfigError> {
        // A Kubernetes platform reads the running count from the scale subresource.
        let kubernetes = t
            .platform
            .as_ref()
            .is_some_and(|p| p.kind.as_deref() == Some("kubernetes"));
        if t.latency_slo.is_some() && queries.latency.is_none() {
            return Err(self.err(
                target_key(&t.name, "latency_slo"),
                "is set without `latency`; expected a `latency` query to compare with it",
            ));
        }
        if t.latency_slo.is_some_and(|d| d.is_zero()) {
            return Err(self.err(
                target_key(&t.name, "latency_slo"),
                "expected a duration above zero",
            ));
        }
        match t.capacity_rps {
            Some(c) if !(c.is_finite() && c > 0.0) => Err(self.err(
                target_key(&t.name, "capacity_rps"),
                format!("{c} is not usable; expected a positive number of requests/s"),
            )),
            None if t.latency_slo.is_none() || !(queries.replicas.is_some() || kubernetes) => {
                Err(self.err(
                    target_key(&t.name, "capacity_rps"),
                    "is missing; expected a positive number of requests/s, or `latency`, \
                     `latency_slo` and `replicas` (or a Kubernetes platform) to learn it from",
                ))
            }
            _ => Ok(()),
        }
    }

    /// `min_replicas` (default 1), checked against `max_replicas`; `initial_replicas`
    /// within both.
    fn replica_bounds(&self, t: &RawTarget) -> Result<u32, ConfigError> {
        let min_replicas = t.min_replicas.unwrap_or(1);
        if t.max_replicas == 0 {
            return Err(self.err(
                target_key(&t.name, "max_replicas"),
                "is 0; expected at least 1",
            ));
        }
        if min_replicas > t.max_replicas {
            return Err(self.err(
                target_key(&t.name, "min_replicas"),
                format!(
                    "{min_replicas} is above max_replicas {}; expected min_replicas <= max_replicas",
                    t.max_replicas
                ),
            ));
        }
        if let Some(n) = t.initial_replicas
            && !(min_replicas..=t.max_replicas).contains(&n)
        {
            return Err(self.err(
                target_key(&t.name, "initial_replicas"),
                format!(
                    "{n} is outside min_replicas..=max_replicas ({min_replicas}..={}); expected the count running now, within the bounds",
                    t.max_replicas
                ),
            ));
        }
        Ok(min_replicas)
    }

    fn timing(&self, t: &RawTarget) -> Result<Timing, ConfigError> {
        let step = t.step.unwrap_or(DEFAULT_STEP);
        if step.as_secs() == 0 || step.subsec_nanos() != 0 {
            return Err(self.err(
                target_key(&t.name, "step"),
                format!(
                    "{} is not usable; expected whole seconds, at least 1s",
                    humantime::format_duration(step)
                ),
            ));
        }
        let interval = t.interval.unwrap_or(DEFAULT_INTERVAL);
        if interval < Duration::from_secs(1) {
            return Err(self.err(target_key(&t.name, "interval"), "expected at least 1s"));
        }
        let history = t.history.unwrap_or(DEFAULT_HISTORY);
        if history < 2 * step {
            return Err(self.err(
                target_key(&t.name, "history"),
                "expected at least two steps",
            ));
        }
        if history.as_secs() / step.as_secs() > MAX_HISTORY_POINTS {
            return Err(self.err(
                target_key(&t.name, "history"),
                format!("spans more than {MAX_HISTORY_POINTS} steps; expected a shorter history or a longer step"),
            ));
        }
        // Each cycle forecasts `startup + interval` ahead, one point a step.
        if t.startup.saturating_add(interval).as_secs() / step.as_secs() > MAX_HISTORY_POINTS {
            return Err(self.err(
                target_key(&t.name, "startup"),
                format!("startup + interval spans more than {MAX_HISTORY_POINTS} steps; expected a shorter startup or a longer step"),
            ));
        }
        let stale_after = t.stale_after.unwrap_or(2 * step + 2 * interval);
        if stale_after < step {
            return Err(self.err(
                target_key(&t.name, "stale_after"),
                "is shorter than step; expected at least one step",
            ));
        }
        Ok(Timing {
            step,
            interval,
            history,
            stale_after,
        })
    }

    fn planning(&self, t: &RawTarget) -> Result<Planning, ConfigError> {
        let risk = self.risk(t)?;
        let interval_share = self.interval_share(t, risk)?;
        let dial = risk.planning();
        let utilization = |k: &str, v: Option<f64>, default: f64| {
            let v = v.unwrap_or(default);
            if v > 0.0 && v <= 1.0 {
                Ok(v)
            } else {
                Err(self.err(
                    target_key(&t.name, k),
                    format!("{v} is out of range; expected a number in (0, 1], e.g. {default}"),
                ))
            }
        };
        let target_utilization = utilization(
            "target_utilization",
            t.target_utilization,
            dial.target_utilization,
        )?;
        let prediction_utilization = utilization(
            "prediction_utilization",
            t.prediction_utilization,
            dial.prediction_utilization,
        )?;
        let tolerance = t.tolerance.unwrap_or(DEFAULT_TOLERANCE);
        if !(0.0..1.0).contains(&tolerance) {
            return Err(self.err(
                target_key(&t.name, "tolerance"),
                format!("{tolerance} is out of range; expected a number in [0, 1), e.g. 0.1"),
            ));
        }
        let headroom = t.headroom.unwrap_or(DEFAULT_HEADROOM);
        if !(headroom.is_finite() && headroom >= 0.0) {
            return Err(self.err(
                target_key(&t.name, "headroom"),
                format!("{headroom} is not usable; expected a number >= 0, e.g. 0.2"),
            ));
        }
        Ok(Planning {
            risk,
            interval_share,
            target_utilization,
            prediction_utilization,
            tolerance,
            headroom,
        })
    }

    /// Scale-up and scale-down rules; `scale_in_window` is the scale-down window's default
    /// (the target's key, or the dial's) and whether the key gave it.
    fn behavior(
        &self,
        name: &str,
        (scale_in_window, explicit): (Duration, bool),
        behavior: Option<RawBehavior>,
    ) -> Result<(Rules, Rules), ConfigError> {
        let RawBehavior {
            scale_up,
            scale_down,
        } = behavior.unwrap_or_default();
        if explicit
            && scale_down
                .as_ref()
                .is_some_and(|r| r.stabilization_window.is_some())
        {
            return Err(self.err(
                target_key(name, "behavior.scale_down.stabilization_window"),
                "is set together with `scale_in_window`; expected one of them",
            ));
        }
        let up = self.rules(
            &target_key(name, "behavior.scale_up"),
            scale_up,
            Rules::default_scale_up(),
        )?;
        let mut down_default = Rules::default_scale_down();
        down_default.stabilization_window = scale_in_window.as_secs() as i64;
        let down = self.rules(
            &target_key(name, "behavior.scale_down"),
            scale_down,
            down_default,
        )?;
        Ok((up, down))
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

    pub(in crate::config) fn webhook(
        &self,
        key: &str,
        w: RawWebhook,
    ) -> Result<WebhookConfig, ConfigError> {
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
        let source = |env: &Option<String>| if env.is_some() { "env" } else { "file" };
        self.standard_webhook_key(&format!("{key}.secret_{}", source(&w.secret_env)), &secret)?;
        if let Some(previous) = &previous_secret {
            let at = format!("{key}.previous_secret_{}", source(&w.previous_secret_env));
            self.standard_webhook_key(&at, previous)?;
        }
        Ok(WebhookConfig {
            url,
            secret,
            previous_secret,
        })
    }

    fn balancer(&self, key: &str, b: RawBalancer) -> Result<BalancerConfig, ConfigError> {
        match b.kind.as_deref().unwrap_or("webhook") {
            "webhook" => Ok((Some(self.webhook_balancer(key, b)?), None)),
            "haproxy" => Ok((None, Some(self.haproxy(key, b)?))),
            other => Err(self.err(
                format!("{key}.kind"),
                format!("`{other}` is not a balancer kind; expected `webhook` or `haproxy`"),
            )),
        }
    }

    /// `[target.balancer]` with `kind = "webhook"`: no HAProxy keys.
    fn webhook_balancer(&self, key: &str, b: RawBalancer) -> Result<WebhookConfig, ConfigError> {
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
        self.webhook(key, w)
    }

    /// `[target.balancer]` with `kind = "haproxy"`: no webhook keys.
    fn haproxy(&self, key: &str, b: RawBalancer) -> Result<HaproxyConfig, ConfigError> {
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
        let runtime_api = self.runtime_api(key, api)?;
        let backend = b.backend.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
            self.err(
                format!("{key}.backend"),
                "missing or empty; expected the name of the HAProxy backend",
            )
        })?;
        let timeout = b.timeout.unwrap_or(Duration::from_secs(2));
        if timeout.is_zero() {
            return Err(self.err(format!("{key}.timeout"), "expected a duration above zero"));
        }
        Ok(HaproxyConfig {
            runtime_api,
            backend,
            timeout,
        })
    }

    /// `unix:/path`, `/path` or `HOST:PORT`.
    fn runtime_api(&self, key: &str, api: String) -> Result<RuntimeApi, ConfigError> {
        if let Some(path) = api.strip_prefix("unix:") {
            Ok(RuntimeApi::Unix(PathBuf::from(path)))
        } else if api.starts_with('/') {
            Ok(RuntimeApi::Unix(PathBuf::from(api)))
        } else if api
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        {
            Ok(RuntimeApi::Tcp(api))
        } else {
            Err(self.err(
                format!("{key}.runtime_api"),
                format!(
                    "`{api}` is not an address; expected `unix:/path/to/admin.sock` or `HOST:PORT`"
                ),
            ))
        }
    }
}
