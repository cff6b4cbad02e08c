//! Signal health: each signal's freshness, and the degraded rule that turns a missing,
//! failing or stale target-level signal into a reason scaling is degraded.

use std::collections::BTreeMap;

use serde::Serialize;

/// A signal of a target: the name used in metrics, the API and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Requests/s.
    RequestRate,
    /// Latency, seconds.
    Latency,
    /// Replica count.
    Replicas,
    /// Requests/s per instance.
    InstanceRate,
    /// Latency per instance.
    InstanceLatency,
    /// Error ratio per instance.
    InstanceErrors,
}

impl Signal {
    /// The name, as in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestRate => "request_rate",
            Self::Latency => "latency",
            Self::Replicas => "replicas",
            Self::InstanceRate => "instance_rate",
            Self::InstanceLatency => "instance_latency",
            Self::InstanceErrors => "instance_errors",
        }
    }

    /// Whether it is a per-instance signal (used for balancing and failover, not scaling).
    pub fn per_instance(self) -> bool {
        matches!(
            self,
            Self::InstanceRate | Self::InstanceLatency | Self::InstanceErrors
        )
    }
}

/// What is known of one signal's freshness.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SignalHealth {
    /// Timestamp of the newest sample (Unix s).
    pub newest: Option<i64>,
    /// When it was last polled (Unix s).
    pub last_poll: Option<i64>,
    /// The last poll's error, if it failed.
    pub error: Option<String>,
    /// While its older history is still being loaded (the first poll asked for the recent
    /// hours only): the oldest time loaded so far (Unix s). Scaling is degraded until it
    /// is `None`: no scale-in on a history that is not all there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loading: Option<i64>,
}

/// Why scaling is degraded at `now`: one line per target-level signal (request rate,
/// latency, replicas) that is missing, failing or older than `stale_after`; empty when
/// healthy. Per-instance signals never degrade scaling: they limit balancing only.
pub fn degraded_reasons(
    signals: &BTreeMap<Signal, SignalHealth>,
    now: i64,
    stale_after: i64,
) -> Vec<String> {
    signals
        .iter()
        .filter(|(s, _)| !s.per_instance())
        .filter_map(|(signal, h)| health_problem(*signal, h, now, stale_after))
        .collect()
}

fn health_problem(signal: Signal, h: &SignalHealth, now: i64, stale_after: i64) -> Option<String> {
    let name = signal.as_str();
    match (h.newest, &h.error) {
        (_, Some(e)) => Some(format!("{name}: {e}")),
        (None, None) => Some(format!("{name}: no data yet")),
        (Some(ts), None) if now - ts > stale_after => Some(format!(
            "{name}: stale, newest sample {}s old (stale_after {stale_after}s)",
            now - ts
        )),
        (Some(_), None) => h.loading.map(|from| {
            let loaded = std::time::Duration::from_secs(u64::try_from(now - from).unwrap_or(0));
            format!(
                "{name}: older history still loading (the newest {} loaded)",
                humantime::format_duration(loaded)
            )
        }),
    }
}
