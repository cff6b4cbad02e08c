//! prescale's own metrics, served at `/metrics` in the Prometheus text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

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

/// Labels of a delivery outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// Target name.
    pub target: String,
    /// `scale` or `rebalance`.
    pub kind: String,
    /// `delivered`, `rejected` or `gave_up`.
    pub outcome: String,
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
    /// Age of the newest sample.
    pub sample_age: Family<SignalLabels, Gauge<f64, AtomicU64>>,
    /// Decisions by direction and reason.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Webhook deliveries by outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Replicas asked for.
    pub desired_replicas: Family<TargetLabels, Gauge>,
    /// 1 while a target is degraded.
    pub degraded: Family<TargetLabels, Gauge>,
    /// Seconds until the predicted bottleneck; +Inf when none within the horizon.
    pub seconds_to_bottleneck: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    /// Requests/s per replica in use.
    pub capacity_rps: Family<CapacityLabels, Gauge<f64, AtomicU64>>,
    /// Model refits by selected model.
    pub forecast_refits: Family<ModelLabels, Counter>,
    /// One-step-ahead interval coverage since the last refit.
    pub forecast_coverage: Family<TargetLabels, Gauge<f64, AtomicU64>>,
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
        let mut registry = Registry::with_prefix("prescale");
        let polls = Family::<PollLabels, Counter>::default();
        registry.register(
            "polls",
            "Range queries by target, signal and outcome",
            polls.clone(),
        );
        let poll_duration = Family::<SignalLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        registry.register(
            "poll_duration_seconds",
            "Duration of range queries",
            poll_duration.clone(),
        );
        let sample_age = Family::<SignalLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "sample_age_seconds",
            "Age of the newest sample of a signal",
            sample_age.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions by direction and reason",
            decisions.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Webhook deliveries by outcome",
            deliveries.clone(),
        );
        let desired_replicas = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "desired_replicas",
            "Replicas asked for",
            desired_replicas.clone(),
        );
        let degraded = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "target_degraded",
            "1 while a signal of the target is missing or stale",
            degraded.clone(),
        );
        let seconds_to_bottleneck = Family::<TargetLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "seconds_to_bottleneck",
            "Seconds until demand is predicted to outgrow the running replicas (+Inf: not within the horizon)",
            seconds_to_bottleneck.clone(),
        );
        let capacity_rps = Family::<CapacityLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "capacity_rps",
            "Requests/s per replica in use, by where it comes from",
            capacity_rps.clone(),
        );
        let forecast_refits = Family::<ModelLabels, Counter>::default();
        registry.register(
            "forecast_refits",
            "Model re-selections and refits, by the model selected",
            forecast_refits.clone(),
        );
        let forecast_coverage = Family::<TargetLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "forecast_interval_coverage",
            "Share of actuals inside the one-step-ahead prediction interval since the last refit",
            forecast_coverage.clone(),
        );
        Self {
            registry: Arc::new(registry),
            seconds_to_bottleneck,
            capacity_rps,
            forecast_refits,
            forecast_coverage,
            polls,
            poll_duration,
            sample_age,
            decisions,
            deliveries,
            desired_replicas,
            degraded,
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
