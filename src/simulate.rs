//! Backtests: a trace replayed through the production forecast and decision code on a
//! virtual clock, a simulated platform, and the scores that compare it with the Kubernetes
//! HPA and a clairvoyant scaler.
//!
//! At each trace step `T` the forecaster sees only the buckets that ended by `T`, and the
//! decision made from them is the replica count asked for from `T` on. The platform serves
//! a new replica `startup` after it was asked for and removes one at once (cancelling
//! launches still in flight first). Nothing here reads a clock or does I/O; the CLI writes
//! the rows, the summary and the plot.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{ForecastConfig, TargetConfig};
use crate::decide::{self, DecideState, Observed};
use crate::forecast::capacity::Capacity;
use crate::series::{Sample, Series};
use crate::source::replay::Trace;
use crate::step::{self, Inputs, Memory, Signal, SignalHealth, TargetPolicy};

pub mod plot;

/// The capacity a backtest is scored by: the configured one, else `NaN`.
fn capacity(target: &TargetConfig) -> f64 {
    target.capacity_rps.unwrap_or(f64::NAN)
}

/// One backtest step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Start of the bucket the decision applies from (Unix s).
    pub timestamp: i64,
    /// The demand in that bucket, requests/s (what happened; not seen by the decision).
    pub demand_rps: f64,
    /// The point forecast for that bucket, requests/s.
    pub forecast_rps: f64,
    /// The upper bound for that bucket, requests/s.
    pub upper_rps: f64,
    /// The replica count asked for from `timestamp` on.
    pub replicas: u32,
    /// The capacity per replica decided with, requests/s (configured or learned; `NaN`
    /// while unknown).
    pub capacity_rps: f64,
    /// The decision's reason codes.
    pub reason: String,
}

/// The target a replay of `trace` runs: one decision per trace step, with the signals the
/// trace carries (request rate; latency and replicas when it has those columns).
pub fn replay_target(trace: &Trace, target: &TargetConfig) -> TargetConfig {
    let step = std::time::Duration::from_secs(trace.step.max(1) as u64);
    let mut t = target.clone();
    t.interval = step;
    t.step = step;
    let q = &mut t.queries;
    q.latency = trace.latency.is_some().then(|| "trace:latency".to_owned());
    q.replicas = trace
        .replicas
        .is_some()
        .then(|| "trace:replicas".to_owned());
    q.instance_rate = None;
    q.instance_latency = None;
    q.instance_errors = None;
    t
}

/// A trace replayed through [`step::step`]: the series as the live loop keeps them, fed one
/// bucket at a time. The sample at `t` covers the bucket that ended at `t`, as a Prometheus
/// rate does, so the step at `t` sees exactly what `serve` polling at `t` would.
pub struct Replay<'a> {
    trace: &'a Trace,
    /// The step's policy.
    pub policy: TargetPolicy,
    /// The step's memory.
    pub memory: Memory,
    rate: Series,
    latency: Series,
    replicas: Series,
    signals: BTreeMap<Signal, SignalHealth>,
    instances: BTreeMap<String, decide::balance::InstanceStats>,
    next: usize,
}

impl<'a> Replay<'a> {
    /// A replay of `trace` with `target` (see [`replay_target`]) and forecast settings.
    pub fn new(trace: &'a Trace, target: &TargetConfig, forecast: &ForecastConfig) -> Self {
        let t = replay_target(trace, target);
        let policy = t.step_policy(forecast, None);
        let (step, keep) = (t.step_secs(), t.history_points());
        let signals = t
            .signals()
            .into_iter()
            .map(|(s, _)| (s, SignalHealth::default()))
            .collect();
        Self {
            trace,
            policy,
            memory: Memory::default(),
            rate: Series::new(step, keep),
            latency: Series::new(step, keep),
            replicas: Series::new(step, keep),
            signals,
            instances: BTreeMap::new(),
            next: 0,
        }
    }

    /// Whether every bucket has been stepped.
    pub fn done(&self) -> bool {
        self.next >= self.trace.counts.len()
    }

    /// Steps at the start of the next bucket, after the one before it has ended.
    pub fn step(&mut self) -> Option<step::Plan> {
        let i = self.next;
        if i >= self.trace.counts.len() {
            return None;
        }
        self.next += 1;
        let now = self.trace.timestamp(i);
        if i > 0 {
            self.observe(i - 1, now);
        }
        let inputs = Inputs {
            now,
            rate: &self.rate,
            latency: &self.latency,
            replicas: &self.replicas,
            signals: &self.signals,
            instances: &self.instances,
            paused: false,
            refit: false,
            budget: None,
        };
        Some(step::step(&self.policy, &mut self.memory, &inputs))
    }

    /// Bucket `j`, ended at `now`, becomes the newest sample of each signal.
    fn observe(&mut self, j: usize, now: i64) {
        let t = self.trace;
        let values = [
            (Signal::RequestRate, t.rps(j)),
            (Signal::Latency, t.latency(j)),
            (Signal::Replicas, t.replicas(j)),
        ];
        for (signal, value) in values {
            let series = match signal {
                Signal::Latency => &mut self.latency,
                Signal::Replicas => &mut self.replicas,
                _ => &mut self.rate,
            };
            series.extend([Sample { ts: now, value }]);
            if let Some(h) = self.signals.get_mut(&signal) {
                h.newest = series.last().map(|s| s.ts);
                h.last_poll = Some(now);
            }
        }
    }

    /// The capacity in use now.
    pub fn capacity(&self) -> Option<&Capacity> {
        self.memory.capacity.as_ref()
    }
}

/// Replays `trace` through the per-target step with `target`'s policy. The target's
/// `interval` and `step` are taken to be the trace's step (one decision per bucket).
/// `progress` is called with the number of steps done, now and then.
pub fn backtest(
    trace: &Trace,
    target: &TargetConfig,
    forecast: &ForecastConfig,
    mut progress: impl FnMut(usize),
) -> Vec<Row> {
    let mut replay = Replay::new(trace, target, forecast);
    let mut rows = Vec::with_capacity(trace.counts.len());
    while let Some(plan) = replay.step() {
        let i = rows.len();
        let first = plan
            .forecast
            .as_ref()
            .and_then(|f| f.points.first().copied());
        rows.push(Row {
            timestamp: plan.decision.at,
            demand_rps: trace.rps(i),
            forecast_rps: first.map_or(f64::NAN, |p| p.value),
            upper_rps: first.map_or(f64::NAN, |p| p.upper),
            replicas: plan.decision.to,
            capacity_rps: replay
                .capacity()
                .and_then(|c| c.effective_rps)
                .unwrap_or(f64::NAN),
            reason: plan.decision.reason_codes(),
        });
        if i % 1024 == 1023 {
            progress(i + 1);
        }
    }
    progress(rows.len());
    rows
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
    (0..trace.counts.len())
        .map(|i| {
            if i > 0 {
                let last = Some(trace.rps(i - 1)).filter(|v| v.is_finite());
                let observed = Observed {
                    degraded: last.is_none(),
                    ..Observed::demand(replicas, last)
                };
                let now = trace.timestamp(i);
                let d = decide::decide(&policy, None, observed, &mut state, now);
                if d.to != d.from {
                    state.record_scale(now, d.from, d.to);
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

/// One rolling forecast: made at `origin` from the buckets that ended by then, for the
/// bucket starting at `timestamp` (= origin + horizon).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForecastRow {
    /// When the forecast was made (Unix s).
    pub origin: i64,
    /// Start of the bucket forecast (Unix s).
    pub timestamp: i64,
    /// What happened there, requests/s (`NaN` when the trace has no such bucket).
    pub actual: f64,
    /// Point forecast, requests/s.
    pub forecast: f64,
    /// Lower bound, requests/s.
    pub lower: f64,
    /// Upper bound, requests/s.
    pub upper: f64,
    /// The model that made it.
    pub model: &'static str,
}

/// Rolling forecasts over `trace`, `horizon` seconds ahead of every step, made by the
/// per-target step exactly as the live loop makes them (one forecaster updated each step
/// and refitted on its schedule), with `target`'s history and `forecast`'s settings.
pub fn rolling_forecasts(
    trace: &Trace,
    horizon: i64,
    target: &TargetConfig,
    forecast: &ForecastConfig,
) -> Vec<ForecastRow> {
    let step = trace.step;
    let mut forecast = forecast.clone();
    let far = (horizon + step).max(0) as u64;
    forecast.horizon = forecast.horizon.max(std::time::Duration::from_secs(far));
    let mut replay = Replay::new(trace, target, &forecast);
    let mut rows = Vec::with_capacity(trace.counts.len());
    while let Some(plan) = replay.step() {
        let origin = plan.decision.at;
        let Some(fc) = plan.forecast else {
            continue;
        };
        // The point at `t` covers the bucket that ends at `t`.
        let bucket = origin + horizon;
        let Some(p) = fc.points.iter().find(|p| p.timestamp == bucket + step) else {
            continue;
        };
        let j = (bucket - trace.start) / step;
        let actual = usize::try_from(j)
            .ok()
            .filter(|&j| j < trace.counts.len())
            .map_or(f64::NAN, |j| trace.rps(j));
        rows.push(ForecastRow {
            origin,
            timestamp: bucket,
            actual,
            forecast: p.value,
            lower: p.lower,
            upper: p.upper,
            model: fc.model,
        });
    }
    rows
}

/// Accuracy of rolling forecasts of one model (or of all, `model = "all"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Accuracy {
    /// The model.
    pub model: &'static str,
    /// Rows scored (those with an actual and an actual one day earlier).
    pub rows: usize,
    /// MAE over the MAE of the daily seasonal naive on the same rows.
    pub mase: f64,
    /// Symmetric MAPE, %.
    pub smape: f64,
    /// Share of actuals inside the interval, %.
    pub coverage: f64,
}

/// Scores `rows` per model and overall against the daily seasonal naive of `trace`,
/// skipping rows whose timestamp is before `trace.start + skip`.
pub fn accuracy(trace: &Trace, rows: &[ForecastRow], skip: i64) -> Vec<Accuracy> {
    let day = (86_400 / trace.step) as usize;
    let mut acc: std::collections::BTreeMap<&'static str, [f64; 5]> = Default::default();
    for r in rows {
        let j = ((r.timestamp - trace.start) / trace.step) as usize;
        if r.timestamp < trace.start + skip || !r.actual.is_finite() || j < day {
            continue;
        }
        let naive = trace.rps(j - day);
        if !naive.is_finite() {
            continue;
        }
        let (y, f) = (r.actual, r.forecast);
        let smape = if y == 0.0 && f == 0.0 {
            0.0
        } else {
            200.0 * (y - f).abs() / (y.abs() + f.abs())
        };
        let inside = f64::from(u8::from(r.lower <= y && y <= r.upper));
        for key in [r.model, "all"] {
            let a = acc.entry(key).or_default();
            a[0] += 1.0;
            a[1] += (y - f).abs();
            a[2] += (y - naive).abs();
            a[3] += smape;
            a[4] += inside;
        }
    }
    acc.into_iter()
        .map(|(model, a)| Accuracy {
            model,
            rows: a[0] as usize,
            mase: if a[2] > 0.0 { a[1] / a[2] } else { f64::NAN },
            smape: a[3] / a[0],
            coverage: 100.0 * a[4] / a[0],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn trace(n: usize) -> Trace {
        let counts = (0..n)
            .map(|i| {
                600.0
                    + 300.0 * ((i % 1440) as f64 / 1440.0 * std::f64::consts::TAU).sin()
                    + (i * 37 % 11) as f64
            })
            .collect();
        Trace {
            start: 1_000_020,
            step: 60,
            counts,
            ..Trace::default()
        }
    }

    #[test]
    fn one_row_per_step_and_capacity_ahead_of_demand() {
        let t = trace(3 * 1440);
        let target = TargetConfig::example("t", 1.0, Duration::from_secs(300));
        let rows = backtest(&t, &target, &ForecastConfig::default(), |_| {});
        assert_eq!(rows.len(), t.counts.len());
        assert_eq!(rows[0].timestamp, t.start);
        // After two days of warm-up, the smooth daily cycle is covered nearly always.
        let late = &rows[2 * 1440..];
        let short = late
            .iter()
            .filter(|r| f64::from(r.replicas) < r.demand_rps)
            .count();
        assert!(
            short * 100 < late.len(),
            "{short} of {} steps short",
            late.len()
        );
    }

    #[test]
    fn no_look_ahead() {
        let t = trace(2 * 1440 + 300);
        let target = TargetConfig::example("t", 1.0, Duration::from_secs(300));
        let full = backtest(&t, &target, &ForecastConfig::default(), |_| {});
        let cut = backtest(
            &t.truncated(2000),
            &target,
            &ForecastConfig::default(),
            |_| {},
        );
        for (a, b) in cut.iter().zip(&full) {
            assert_eq!(
                (a.timestamp, a.replicas, &a.reason),
                (b.timestamp, b.replicas, &b.reason)
            );
        }
    }

    #[test]
    fn platform_starts_late_and_stops_at_once() {
        let mut p = Platform::new(180, 0, 2);
        p.scale(1_000, 5);
        assert_eq!(
            (p.ready_at(1_100), p.ready_at(1_180), p.asked_at(1_100)),
            (2, 5, 5)
        );
        // Scaling in cancels what is still in flight first.
        p.scale(1_200, 8);
        p.scale(1_250, 4);
        assert_eq!(
            (p.ready_at(1_300), p.ready_at(2_000), p.asked_at(1_260)),
            (4, 4, 4)
        );
        assert_eq!(p.asked_at(500), 2);
    }

    /// Three days of a daily cycle served by 10 replicas whose latency follows a queueing
    /// curve that meets a 100 ms SLO at 30 rps per replica, with a two-hour latency
    /// incident at a moderate load on the third day.
    fn trace_with_latency() -> Trace {
        let n = 3 * 1440;
        let mut t = trace(n);
        let mut latency = Vec::with_capacity(n);
        for (i, c) in t.counts.iter_mut().enumerate() {
            let daily = ((i % 1440) as f64 / 1440.0 * std::f64::consts::TAU).sin();
            *c = 60.0 * (200.0 + 150.0 * daily + (i * 37 % 11) as f64);
            let load = *c / 60.0 / 10.0;
            let incident = (2 * 1440 + 900..2 * 1440 + 1020).contains(&i);
            latency.push(if incident {
                0.3
            } else {
                0.05 + 0.02 / (1.0 - load / 50.0)
            });
        }
        t.latency = Some(latency);
        t.replicas = Some(vec![10.0; n]);
        t
    }

    #[test]
    fn a_backtest_with_latency_learns_capacity_and_acts_on_the_slo() {
        let t = trace_with_latency();
        let mut target = TargetConfig::example("t", 1.0, Duration::from_secs(300));
        target.capacity_rps = None;
        target.latency_slo = Some(Duration::from_millis(100));
        let mut replay = Replay::new(&t, &target, &ForecastConfig::default());
        let mut performance = Vec::new();
        let mut i = 0;
        while let Some(plan) = replay.step() {
            if plan.decision.reasons[0].code == crate::decide::ReasonCode::Performance {
                performance.push(i);
            }
            i += 1;
        }
        let c = replay.capacity().expect("resolved");
        assert_eq!(
            c.source,
            crate::forecast::capacity::CapacitySource::Learned,
            "{c:?}"
        );
        let learned = c.effective_rps.expect("learned");
        assert!(
            (learned - 30.0).abs() < 4.0,
            "learned {learned} rps per replica"
        );
        // The incident (a p95 three times the SLO at 20-30 rps per replica) is acted on.
        let incident = 2 * 1440 + 901..2 * 1440 + 1021;
        let acted = performance.iter().filter(|i| incident.contains(*i)).count();
        assert!(
            acted > 60,
            "{acted} Performance decisions in the incident: {performance:?}"
        );
        let rows = backtest(&t, &target, &ForecastConfig::default(), |_| {});
        assert!(
            rows.last()
                .is_some_and(|r| (r.capacity_rps - learned).abs() < 1e-9)
        );
    }

    /// (asked per step, delay in steps) → serving per step.
    #[test]
    fn platform_serves_after_startup_and_removes_at_once() {
        let check = |asked: &[u32], delay: usize, want: &[u32]| {
            assert_eq!(ready(asked, delay), want, "{asked:?} delay {delay}");
        };
        check(&[2, 4, 4, 4, 4], 2, &[2, 2, 2, 4, 4]);
        check(&[2, 4, 6, 6, 6], 2, &[2, 2, 2, 4, 6]);
        // Removal at once.
        check(&[5, 5, 2, 2], 3, &[5, 5, 2, 2]);
        // A removal cancels the launches in flight first, newest first.
        check(&[2, 4, 6, 3, 3, 3], 2, &[2, 2, 2, 3, 3, 3]);
        check(&[2, 4, 6, 5, 5, 5], 2, &[2, 2, 2, 4, 5, 5]);
        check(&[], 2, &[]);
        check(&[3, 4], 0, &[3, 4]);
    }

    #[test]
    fn scores() {
        let t = Trace {
            start: 0,
            step: 60,
            counts: vec![600.0, 1200.0, f64::NAN, 600.0],
            ..Trace::default()
        };
        // 10, 20, gap, 10 rps against 15 rps of capacity: 5 of 40 lost.
        let s = Score::of(&t, 5.0, &[3, 3, 3, 4], &[3, 3, 3, 3], 0);
        assert!((s.lost_pct - 12.5).abs() < 1e-9, "{s:?}");
        assert!((s.under_provisioned_pct - 25.0).abs() < 1e-9, "{s:?}");
        assert!((s.replica_hours - 0.2).abs() < 1e-9, "{s:?}");
        assert_eq!(s.scale_changes, 1);
        // Skipping the first two steps leaves nothing lost.
        assert_eq!(
            Score::of(&t, 5.0, &[3, 3, 3, 4], &[3, 3, 3, 3], 2).lost_pct,
            0.0
        );
    }

    #[test]
    fn hpa_baseline_reacts_a_step_late_and_waits_to_scale_in() {
        let mut counts = vec![600.0; 5];
        counts.extend([1800.0; 5]);
        counts.extend([600.0; 10]);
        let t = Trace {
            start: 0,
            step: 60,
            counts,
            ..Trace::default()
        };
        let target = TargetConfig::example("t", 1.0, Duration::from_secs(120));
        let asked = hpa(&t, &target, 0.5);
        // 10 rps at 0.5 → 20; 30 rps → 60 one step after it starts; back to 20 only after
        // the 300 s window.
        assert_eq!(asked[..6], [20, 20, 20, 20, 20, 20]);
        assert_eq!(asked[6], 60);
        assert_eq!(asked[10..15], [60, 60, 60, 60, 60]);
        assert!(asked[15..].iter().all(|&r| r == 20), "{asked:?}");
        let oracle = clairvoyant(&t, &target);
        assert_eq!((oracle[0], oracle[5]), (10, 30));
    }
}
