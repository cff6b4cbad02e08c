//! The references a backtest is scored against (the Kubernetes HPA and a clairvoyant
//! scaler), the simulated platform that turns asked-for counts into serving replicas, and
//! the scores.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Row;
use crate::config::TargetConfig;
use crate::decide::{self, DecideState, Observed};
use crate::source::replay::Trace;

/// The capacity a backtest is scored by: the configured one, else `NaN`.
fn capacity(target: &TargetConfig) -> f64 {
    target.capacity_rps.unwrap_or(f64::NAN)
}

/// The Kubernetes HPA on the same trace: the demand policy alone (tolerance 0.1, default
/// behaviour) at `target_utilization`, reacting to the last complete bucket.
pub fn hpa(trace: &Trace, target: &TargetConfig, target_utilization: f64) -> Vec<u32> {
    let step = trace.step;
    let mut target = target.clone();
    target.interval = std::time::Duration::from_secs(step as u64);
    target.target_utilization = target_utilization;
    target.prediction_utilization = target_utilization;
    target.tolerance = crate::config::DEFAULT_TOLERANCE;
    target.scale_up = decide::Rules::default_scale_up();
    target.scale_down = decide::Rules::default_scale_down();
    let policy = target.policy();
    let mut state = DecideState::default();
    let first = trace.rps(0);
    let mut replicas = if first.is_finite() {
        ((first / (capacity(&target) * target_utilization)).ceil() as u32)
            .clamp(target.min_replicas, target.max_replicas)
    } else {
        target.min_replicas
    };
    // Its utilisation is over the pods ready, as the Kubernetes HPA's is.
    let delay = (target.startup.as_secs() as i64 + step - 1) / step.max(1) * step;
    let mut platform = Platform::new(delay, trace.timestamp(0), replicas);
    (0..trace.counts.len())
        .map(|i| {
            if i > 0 {
                let last = Some(trace.rps(i - 1)).filter(|v| v.is_finite());
                let observed = Observed {
                    degraded: last.is_none(),
                    serving: Some(platform.ready_at(trace.timestamp(i - 1))),
                    ..Observed::demand(replicas, last)
                };
                let now = trace.timestamp(i);
                let d = decide::decide(&policy, None, observed, &mut state, now);
                if d.to != d.from {
                    state.record_scale(now, d.from, d.to);
                    platform.scale(now, d.to);
                }
                replicas = d.to;
            }
            replicas
        })
        .collect()
}

/// The clairvoyant scaler: exactly the replicas each bucket's demand needs, ready at once.
pub fn clairvoyant(trace: &Trace, target: &TargetConfig) -> Vec<u32> {
    (0..trace.counts.len())
        .map(|i| {
            let d = trace.rps(i);
            let need = if d.is_finite() {
                (d / capacity(target) - 1e-9).ceil().max(0.0) as u32
            } else {
                0
            };
            need.clamp(target.min_replicas, target.max_replicas)
        })
        .collect()
}

/// A platform that starts replicas `startup` seconds after it is asked and removes them at
/// once (cancelling launches still in flight first).
#[derive(Debug)]
pub struct Platform {
    startup: i64,
    /// (time, count asked for), in order.
    asked: Vec<(i64, u32)>,
    /// Replicas serving and launches in flight as of the last change: (ready at, count).
    launches: Vec<(i64, u32)>,
}

impl Platform {
    /// A platform running `initial` replicas since `at`.
    pub fn new(startup: i64, at: i64, initial: u32) -> Self {
        Self {
            startup,
            asked: vec![(at, initial)],
            launches: vec![(at, initial)],
        }
    }

    /// Asks for `to` replicas at `at` (not before the last ask).
    pub fn scale(&mut self, at: i64, to: u32) {
        // Launches ready by now serve alike: keep them as one.
        let ready = self.launches.partition_point(|l| l.0 <= at);
        if ready > 1 {
            let serving: u32 = self.launches.drain(..ready).map(|l| l.1).sum();
            self.launches.insert(0, (at, serving));
        }
        let total: u32 = self.launches.iter().map(|l| l.1).sum();
        if to > total {
            self.launches.push((at + self.startup, to - total));
        } else {
            let mut excess = total - to;
            // Newest launches go first: in-flight ones before serving ones.
            while excess > 0 {
                let Some(last) = self.launches.last_mut() else {
                    break;
                };
                let k = last.1.min(excess);
                last.1 -= k;
                excess -= k;
                if last.1 == 0 {
                    self.launches.pop();
                }
            }
        }
        self.asked.push((at, to));
    }

    /// The count asked for at `t`.
    pub fn asked_at(&self, t: i64) -> u32 {
        let i = self.asked.partition_point(|a| a.0 <= t);
        self.asked[i.saturating_sub(1)].1
    }

    /// Replicas serving now (for launches as they stand).
    pub fn ready_at(&self, t: i64) -> u32 {
        self.launches.iter().filter(|l| l.0 <= t).map(|l| l.1).sum()
    }
}

/// The replicas serving at each step when `asked[i]` is asked for from step `i` on, on a
/// [`Platform`] whose start-up is `delay` steps.
pub fn ready(asked: &[u32], delay: usize) -> Vec<u32> {
    let Some(&first) = asked.first() else {
        return Vec::new();
    };
    let mut platform = Platform::new(delay as i64, 0, first);
    asked
        .iter()
        .enumerate()
        .map(|(i, &want)| {
            let i = i as i64;
            if want != platform.asked_at(i) {
                platform.scale(i, want);
            }
            platform.ready_at(i)
        })
        .collect()
}

/// How a scaler did on a trace.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    /// Requests above the serving capacity, % of all requests.
    pub lost_pct: f64,
    /// Steps with demand above the serving capacity, % of steps.
    pub under_provisioned_pct: f64,
    /// Serving replicas × hours.
    pub replica_hours: f64,
    /// Steps at which the count asked for changed.
    pub scale_changes: u32,
}

impl Score {
    /// Scores `asked` (and what it leaves `serving`) against the trace, from step `from` on.
    pub fn of(
        trace: &Trace,
        capacity_rps: f64,
        asked: &[u32],
        serving: &[u32],
        from: usize,
    ) -> Self {
        let (mut lost, mut total, mut under, mut n, mut replica_steps) = (0.0, 0.0, 0, 0, 0.0);
        for (i, &r) in serving.iter().enumerate().skip(from) {
            if i >= trace.counts.len() {
                break;
            }
            let d = trace.rps(i);
            let r = f64::from(r);
            replica_steps += r;
            n += 1;
            if !d.is_finite() {
                continue;
            }
            let supply = r * capacity_rps;
            total += d;
            if d > supply * (1.0 + 1e-9) {
                under += 1;
                lost += d - supply;
            }
        }
        let from = from.min(asked.len());
        let changes = asked[from..].windows(2).filter(|w| w[0] != w[1]).count();
        Self {
            lost_pct: if total > 0.0 {
                100.0 * lost / total
            } else {
                0.0
            },
            under_provisioned_pct: if n > 0 {
                100.0 * f64::from(under) / f64::from(n)
            } else {
                0.0
            },
            replica_hours: replica_steps * trace.step as f64 / 3600.0,
            scale_changes: changes as u32,
        }
    }
}

/// The target utilisations of the HPA baseline.
pub const HPA_UTILIZATIONS: [f64; 5] = [0.5, 0.6, 0.7, 0.8, 0.9];

/// Scores of prescale and its references on one trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Seconds between steps.
    pub step_seconds: i64,
    /// Requests/s per replica.
    pub capacity_rps: f64,
    /// Seconds from asking to serving.
    pub startup_seconds: u64,
    /// Seconds of warm-up left out of the scores.
    pub skip_seconds: i64,
    /// prescale.
    pub prescale: Score,
    /// The HPA at each target utilisation, keyed `hpa@0.7`.
    pub hpa: BTreeMap<String, Score>,
    /// The clairvoyant scaler.
    pub clairvoyant: Score,
}

impl Summary {
    /// Scores `rows` (a backtest of `trace` with `target`) and runs the references,
    /// leaving the first `skip` seconds out of the scores.
    pub fn of(trace: &Trace, target: &TargetConfig, rows: &[Row], skip: i64) -> Self {
        let step = trace.step;
        let delay = (target.startup.as_secs() as i64 + step - 1) / step;
        let delay = delay.max(0) as usize;
        let from = ((skip + step - 1) / step).max(0) as usize;
        let cap = capacity(target);
        let asked: Vec<u32> = rows.iter().map(|r| r.replicas).collect();
        let prescale = Score::of(trace, cap, &asked, &ready(&asked, delay), from);
        let hpa = HPA_UTILIZATIONS
            .iter()
            .map(|&u| {
                let asked = self::hpa(trace, target, u);
                let s = Score::of(trace, cap, &asked, &ready(&asked, delay), from);
                (format!("hpa@{u}"), s)
            })
            .collect();
        let oracle = clairvoyant(trace, target);
        Self {
            step_seconds: step,
            capacity_rps: cap,
            startup_seconds: target.startup.as_secs(),
            skip_seconds: skip,
            prescale,
            hpa,
            clairvoyant: Score::of(trace, cap, &oracle, &oracle, from),
        }
    }

    /// A table for people.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = format!(
            "{:<12} {:>8} {:>8} {:>12} {:>8}\n",
            "scaler", "lost%", "under%", "replica-h", "changes"
        );
        let mut line = |name: &str, v: &Score| {
            let _ = writeln!(
                s,
                "{name:<12} {:>8.3} {:>8.2} {:>12.1} {:>8}",
                v.lost_pct, v.under_provisioned_pct, v.replica_hours, v.scale_changes
            );
        };
        line("prescale", &self.prescale);
        for (k, v) in &self.hpa {
            line(k, v);
        }
        line("clairvoyant", &self.clairvoyant);
        s
    }
}
