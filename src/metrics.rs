//! prescale's own metrics, served at `/metrics` in the Prometheus text format.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::act::outbox::OutboxMetrics;
pub use crate::act::outbox::{DeliveryLabels, OutboxLabels};
use crate::source::DropReason;

/// Labels of a per-signal metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    /// Target name.
    pub target: String,
    /// Signal: `request_rate`, `latency`, `replicas`, `instance_rate`, `instance_latency`.
    pub signal: String,
}

/// Labels of a poll outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PollLabels {
    /// Target name.
    pub target: String,
    /// Signal.
    pub signal: String,
    /// `ok` or the error's label (`empty`, `timeout`, `unreachable`, …).
    pub outcome: String,
}

/// Labels of samples dropped at the door.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DroppedLabels {
    /// Target name.
    pub target: String,
    /// Signal.
    pub signal: String,
    /// Why: `non_finite`, `negative` or `out_of_range`.
    pub reason: DropReason,
}

impl EncodeLabelValue for DropReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Labels of a decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// Target name.
    pub target: String,
    /// `up`, `down` or `hold`.
    pub direction: String,
    /// The reason that set the count.
    pub reason: String,
}

/// Labels of a per-target metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// Target name.
    pub target: String,
}

/// All of prescale's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Range queries by outcome.
    pub polls: Family<PollLabels, Counter>,
    /// Range query durations.
    pub poll_duration: Family<SignalLabels, Histogram>,
    /// Samples dropped at the door, by reason.
    pub samples_dropped: Family<DroppedLabels, Counter>,
    /// Age of the newest sample.
    pub sample_age: Family<SignalLabels, Gauge<f64, AtomicU64>>,
    /// How long a target's cycle (poll → step → record) took, all targets together.
    pub cycle_duration: Histogram,
    /// How late a target's last cycle started after it was due.
    pub cycle_lag: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    /// Decisions by direction and reason.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Webhook deliveries by outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Actions in the outbox by state (`pending`, `dead`).
    pub outbox: Family<OutboxLabels, Gauge>,
    /// Seconds from an action's decision to its delivery.
    pub delivery_latency: Histogram,
    /// Writes to the outbox file that failed.
    pub outbox_write_errors: Counter,
    /// 1 while the outbox can be written, 0 from a failed write until one succeeds.
    pub outbox_healthy: Gauge,
    /// Replicas asked for.
    pub desired_replicas: Family<TargetLabels, Gauge>,
    /// 1 while a target is degraded.
    pub degraded: Family<TargetLabels, Gauge>,
    /// Rolling mean absolute error of the request-rate forecast.
    pub forecast_mae: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    /// Rolling share of observations inside the prediction interval.
    pub forecast_coverage: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    /// Seconds until the predicted bottleneck; +Inf when none within the horizon.
    pub seconds_to_bottleneck: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    /// Requests/s per replica in use.
    pub capacity_rps: Family<CapacityLabels, Gauge<f64, AtomicU64>>,
    /// Model refits by selected model.
    pub forecast_refits: Family<ModelLabels, Counter>,
    /// Changes of the running count someone else made, by target.
    pub external_changes: Family<TargetLabels, Counter>,
    /// Discovery queries by discovery and outcome.
    pub discovery_refreshes: Family<DiscoveryOutcomeLabels, Counter>,
    /// Targets each discovery makes now.
    pub discovered_targets: Family<DiscoveryLabels, Gauge>,
    /// Series each discovery cannot make targets of now (clashes, template problems).
    pub discovery_problems: Family<DiscoveryLabels, Gauge>,
}

/// Labels of a `[[discovery]]`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiscoveryLabels {
    /// Its place among the `[[discovery]]` tables (0 first).
    pub discovery: String,
}

/// Labels of a discovery query's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiscoveryOutcomeLabels {
    /// Its place among the `[[discovery]]` tables (0 first).
    pub discovery: String,
    /// `ok` or the error's label (`timeout`, `unreachable`, `prometheus_error`, …).
    pub outcome: String,
}

/// Labels of the capacity in use.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CapacityLabels {
    /// Target name.
    pub target: String,
    /// `configured` or `learned`.
    pub source: String,
}

/// Labels of a model refit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Target name.
    pub target: String,
    /// The selected model.
    pub model: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let OutboxMetrics {
            deliveries,
            outbox,
            delivery_latency,
            write_errors: outbox_write_errors,
            healthy: outbox_healthy,
        } = OutboxMetrics::new();
        let mut m = Self {
            registry: Arc::default(),
            polls: Family::default(),
            poll_duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
            }),
            samples_dropped: Family::default(),
            sample_age: Family::default(),
            cycle_duration: Histogram::new([
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
            ]),
            cycle_lag: Family::default(),
            decisions: Family::default(),
            deliveries,
            outbox,
            delivery_latency,
            outbox_write_errors,
            outbox_healthy,
            desired_replicas: Family::default(),
            degraded: Family::default(),
            forecast_mae: Family::default(),
            forecast_coverage: Family::default(),
            seconds_to_bottleneck: Family::default(),
            capacity_rps: Family::default(),
            forecast_refits: Family::default(),
            external_changes: Family::default(),
            discovery_refreshes: Family::default(),
            discovered_targets: Family::default(),
            discovery_problems: Family::default(),
        };
        let mut registry = Registry::with_prefix("prescale");
        m.register_polls_and_actions(&mut registry);
        m.register_targets(&mut registry);
        m.registry = Arc::new(registry);
        m
    }

    /// Polls, decisions and deliveries.
    fn register_polls_and_actions(&self, registry: &mut Registry) {
        registry.register(
            "polls",
            "Range queries by target, signal and outcome",
            self.polls.clone(),
        );
        registry.register(
            "poll_duration_seconds",
            "Duration of range queries",
            self.poll_duration.clone(),
        );
        registry.register(
            "samples_dropped",
            "Samples dropped at the door by target, signal and reason: non_finite, negative, out_of_range",
            self.samples_dropped.clone(),
        );
        registry.register(
            "sample_age_seconds",
            "Age of the newest sample of a signal",
            self.sample_age.clone(),
        );
        registry.register(
            "cycle_duration_seconds",
            "Duration of a target's cycle (poll, step, record), waiting for Prometheus' slots included",
            self.cycle_duration.clone(),
        );
        registry.register(
            "cycle_lag_seconds",
            "How late a target's last cycle started after it was due (0 when on time)",
            self.cycle_lag.clone(),
        );
        registry.register(
            "decisions",
            "Decisions by direction and reason",
            self.decisions.clone(),
        );
        registry.register(
            "deliveries",
            "Webhook deliveries by outcome",
            self.deliveries.clone(),
        );
        registry.register(
            "outbox_deliveries",
            "Actions in the outbox by state: pending, or dead (given up, retry by hand)",
            self.outbox.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Time from an action's decision to its delivery",
            self.delivery_latency.clone(),
        );
        registry.register(
            "outbox_write_errors",
            "Writes to the outbox file that failed (a full disk, say)",
            self.outbox_write_errors.clone(),
        );
        registry.register(
            "outbox_healthy",
            "1 while the outbox can be written; 0 from a failed write until one succeeds",
            self.outbox_healthy.clone(),
        );
    }

    /// The per-target gauges and counters.
    fn register_targets(&self, registry: &mut Registry) {
        registry.register(
            "desired_replicas",
            "Replicas asked for",
            self.desired_replicas.clone(),
        );
        registry.register(
            "target_degraded",
            "1 while a signal of the target is missing or stale",
            self.degraded.clone(),
        );
        registry.register(
            "forecast_mae_rps",
            "Rolling mean absolute error of the request-rate forecast, requests/s",
            self.forecast_mae.clone(),
        );
        registry.register(
            "forecast_interval_coverage_ratio",
            "Rolling share of observed request rates inside the forecast's prediction interval",
            self.forecast_coverage.clone(),
        );
        registry.register(
            "seconds_to_bottleneck",
            "Seconds until demand is predicted to outgrow the running replicas (+Inf: not within the horizon)",
            self.seconds_to_bottleneck.clone(),
        );
        registry.register(
            "capacity_rps",
            "Requests/s per replica in use, by where it comes from",
            self.capacity_rps.clone(),
        );
        registry.register(
            "forecast_refits",
            "Model re-selections and refits, by the model selected",
            self.forecast_refits.clone(),
        );
        registry.register(
            "external_changes",
            "Changes of the running count prescale did not ask for (someone else's), observed",
            self.external_changes.clone(),
        );
        registry.register(
            "discovery_refreshes",
            "Discovery queries by discovery and outcome",
            self.discovery_refreshes.clone(),
        );
        registry.register(
            "discovered_targets",
            "Targets a discovery makes now",
            self.discovered_targets.clone(),
        );
        registry.register(
            "discovery_problems",
            "Series a discovery cannot make targets of now: name clashes, labels the template does not fit",
            self.discovery_problems.clone(),
        );
    }

    /// Drops the gauges of a target that is no longer configured (after a reload), so that
    /// none keeps showing its last value: a `degraded` of 1 would keep an alert firing for
    /// a target that is gone. `signals` are its signals' names. Counters stay: they only
    /// count what happened.
    pub fn forget_target(&self, target: &str, signals: &[&str]) {
        let t = TargetLabels {
            target: target.to_owned(),
        };
        self.desired_replicas.remove(&t);
        self.degraded.remove(&t);
        self.forecast_mae.remove(&t);
        self.forecast_coverage.remove(&t);
        self.seconds_to_bottleneck.remove(&t);
        for source in ["configured", "learned"] {
            self.capacity_rps.remove(&CapacityLabels {
                target: target.to_owned(),
                source: source.to_owned(),
            });
        }
        for signal in signals {
            self.sample_age.remove(&SignalLabels {
                target: target.to_owned(),
                signal: (*signal).to_owned(),
            });
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The outbox's share, counting into these metrics.
    pub fn outbox_metrics(&self) -> OutboxMetrics {
        OutboxMetrics {
            deliveries: self.deliveries.clone(),
            outbox: self.outbox.clone(),
            delivery_latency: self.delivery_latency.clone(),
            write_errors: self.outbox_write_errors.clone(),
            healthy: self.outbox_healthy.clone(),
        }
    }
}

impl From<&Metrics> for OutboxMetrics {
    fn from(m: &Metrics) -> Self {
        m.outbox_metrics()
    }
}

impl From<Metrics> for OutboxMetrics {
    fn from(m: Metrics) -> Self {
        m.outbox_metrics()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metric names registered, as their `# TYPE` lines give them.
    fn exported() -> Vec<String> {
        // A family shows only once it has a child: give each one.
        let m = Metrics::new();
        let t = || TargetLabels { target: "t".into() };
        let sig = || SignalLabels {
            target: "t".into(),
            signal: "s".into(),
        };
        m.polls
            .get_or_create(&PollLabels {
                target: "t".into(),
                signal: "s".into(),
                outcome: "ok".into(),
            })
            .inc();
        m.poll_duration.get_or_create(&sig()).observe(0.1);
        m.sample_age.get_or_create(&sig()).set(1.0);
        m.samples_dropped
            .get_or_create(&DroppedLabels {
                target: "t".into(),
                signal: "s".into(),
                reason: DropReason::Negative,
            })
            .inc();
        m.decisions
            .get_or_create(&DecisionLabels {
                target: "t".into(),
                direction: "up".into(),
                reason: "r".into(),
            })
            .inc();
        m.deliveries
            .get_or_create(&DeliveryLabels {
                target: "t".into(),
                kind: crate::act::ActionKind::Scale,
                outcome: crate::act::outbox::DeliveryOutcome::GaveUp,
            })
            .inc();
        m.desired_replicas.get_or_create(&t()).set(1);
        m.degraded.get_or_create(&t()).set(0);
        m.forecast_mae.get_or_create(&t()).set(1.0);
        m.forecast_coverage.get_or_create(&t()).set(1.0);
        m.seconds_to_bottleneck.get_or_create(&t()).set(1.0);
        m.capacity_rps
            .get_or_create(&CapacityLabels {
                target: "t".into(),
                source: "learned".into(),
            })
            .set(1.0);
        m.forecast_refits
            .get_or_create(&ModelLabels {
                target: "t".into(),
                model: "ets".into(),
            })
            .inc();
        m.external_changes.get_or_create(&t()).inc();
        m.outbox
            .get_or_create(&OutboxLabels {
                state: crate::act::outbox::DeliveryState::Dead,
            })
            .set(0);
        m.delivery_latency.observe(0.1);
        m.encode()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    /// Every `prescale_*` series the shipped Grafana dashboard queries is one we export.
    #[test]
    fn grafana_dashboard_uses_exported_metrics() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana-dashboard.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let families = exported();
        let mut used = 0;
        for panel in dash["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    let Some(name) = word.strip_prefix("prescale_") else {
                        continue;
                    };
                    let base = ["_total", "_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| name.strip_suffix(suffix))
                        .unwrap_or(name);
                    assert!(
                        families.iter().any(|f| f == &format!("prescale_{base}")),
                        "panel `{}` queries prescale_{name}, which is not exported ({families:?})",
                        panel["title"]
                    );
                    used += 1;
                }
            }
        }
        assert!(used >= 9, "the dashboard queries our metrics ({used})");
    }
}
