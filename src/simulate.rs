//! Backtests: a trace replayed through the production forecast and decision code on a
//! virtual clock, a simulated platform, and the scores that compare it with the Kubernetes
//! HPA and a clairvoyant scaler.
//!
//! At each trace step `T` the forecaster sees only the buckets that ended by `T`, and the
//! decision made from them is the replica count asked for from `T` on. The platform serves
//! a new replica `startup` after it was asked for and removes one at once (cancelling
//! launches still in flight first). Nothing here reads a clock or does I/O; the CLI writes
//! the rows, the summary and the plot.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use crate::config::{ForecastConfig, TargetConfig};
use crate::decide::{self, DecideState, Observed};
use crate::forecast::{Forecaster, History, Settings};
use crate::source::replay::Trace;

pub mod plot;

/// The capacity a backtest sizes replicas by: the configured one (the CLI always sets it;
/// there is no latency to learn it from in a request trace).
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
    /// The decision's reason codes.
    pub reason: String,
}

/// Replays `trace` through forecast and decide with `target`'s policy. The target's
/// `interval` and `step` are taken to be the trace's step (one decision per bucket).
/// `progress` is called with the number of steps done, now and then.
pub fn backtest(
    trace: &Trace,
    target: &TargetConfig,
    level: f64,
    mut progress: impl FnMut(usize),
) -> Vec<Row> {
    let step = trace.step;
    let mut target = target.clone();
    target.interval = std::time::Duration::from_secs(step as u64);
    let policy = target.policy();
    let keep = (target.history.as_secs() as i64 / step).max(2) as usize;
    let rps: Vec<f64> = (0..trace.counts.len()).map(|i| trace.rps(i)).collect();

    let settings = ForecastConfig {
        level,
        ..ForecastConfig::default()
    }
    .settings(step, policy.lookahead);
    let mut forecaster = Forecaster::new(settings);
    let mut state = DecideState::default();
    let mut replicas = target.min_replicas;
    let mut rows = Vec::with_capacity(rps.len());
    for (i, &demand) in rps.iter().enumerate() {
        let now = trace.timestamp(i);
        // Buckets 0..i have ended by `now`.
        let lo = i.saturating_sub(keep);
        let seen = &rps[lo..i];
        let history = History {
            start: trace.timestamp(lo),
            step,
            values: seen,
        };
        let fc = match forecaster.update(history, now) {
            Ok(_) => forecaster.forecast(now, policy.lookahead).ok(),
            Err(_) => None,
        };
        let last = seen.last().copied().filter(|v| v.is_finite());
        let observed = Observed {
            degraded: last.is_none(),
            ..Observed::demand(replicas, last)
        };
        let d = decide::decide(&policy, fc.as_ref(), observed, &mut state, now);
        replicas = d.to;
        let first = fc.as_ref().and_then(|f| f.points.first().copied());
        rows.push(Row {
            timestamp: now,
            demand_rps: demand,
            forecast_rps: first.map_or(f64::NAN, |p| p.value),
            upper_rps: first.map_or(f64::NAN, |p| p.upper),
            replicas,
            reason: d.reason_codes(),
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
                replicas = decide::decide(&policy, None, observed, &mut state, now).to;
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

/// The replicas serving at each step when `asked[i]` is asked for from step `i` on: a new
/// replica serves `delay` steps later; a removal cancels launches in flight (newest
/// first), then removes serving replicas at once.
pub fn ready(asked: &[u32], delay: usize) -> Vec<u32> {
    let Some(&first) = asked.first() else {
        return Vec::new();
    };
    let mut serving = i64::from(first);
    // (step it serves from, count), oldest first.
    let mut pending: VecDeque<(usize, i64)> = VecDeque::new();
    let arrive = |i: usize, serving: &mut i64, pending: &mut VecDeque<(usize, i64)>| {
        while pending.front().is_some_and(|&(at, _)| at <= i) {
            *serving += pending.pop_front().map_or(0, |p| p.1);
        }
    };
    asked
        .iter()
        .enumerate()
        .map(|(i, &want)| {
            arrive(i, &mut serving, &mut pending);
            let want = i64::from(want);
            let in_flight: i64 = pending.iter().map(|p| p.1).sum();
            if want > serving + in_flight {
                pending.push_back((i + delay, want - serving - in_flight));
            } else if want < serving + in_flight {
                let mut excess = serving + in_flight - want;
                while excess > 0 {
                    let Some((at, n)) = pending.pop_back() else {
                        break;
                    };
                    let k = n.min(excess);
                    excess -= k;
                    if n > k {
                        pending.push_back((at, n - k));
                    }
                }
                serving -= excess;
            }
            arrive(i, &mut serving, &mut pending);
            serving.max(0) as u32
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

/// Rolling forecasts over `trace`, `horizon` seconds ahead of every step, through one
/// [`Forecaster`] updated each step and refitted on its schedule, exactly as the live
/// pipeline uses it. History is limited to `history` seconds.
pub fn rolling_forecasts(
    trace: &Trace,
    horizon: i64,
    history: i64,
    settings: Settings,
) -> Vec<ForecastRow> {
    let step = trace.step;
    let keep = (history / step).max(2) as usize;
    let rps: Vec<f64> = (0..trace.counts.len()).map(|i| trace.rps(i)).collect();
    let mut forecaster = Forecaster::new(settings);
    let mut rows = Vec::with_capacity(rps.len());
    for i in 1..rps.len() {
        let origin = trace.timestamp(i);
        let lo = i.saturating_sub(keep);
        let history = History {
            start: trace.timestamp(lo),
            step,
            values: &rps[lo..i],
        };
        if forecaster.update(history, origin).is_err() {
            continue;
        }
        let Ok(fc) = forecaster.forecast(origin, horizon) else {
            continue;
        };
        let target = origin + horizon;
        let Some(p) = fc.points.iter().find(|p| p.timestamp == target) else {
            continue;
        };
        let j = ((target - trace.start) / step) as usize;
        rows.push(ForecastRow {
            origin,
            timestamp: target,
            actual: rps.get(j).copied().unwrap_or(f64::NAN),
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
        }
    }

    #[test]
    fn one_row_per_step_and_capacity_ahead_of_demand() {
        let t = trace(3 * 1440);
        let target = TargetConfig::example("t", 1.0, Duration::from_secs(300));
        let rows = backtest(&t, &target, 0.95, |_| {});
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
        let full = backtest(&t, &target, 0.95, |_| {});
        let cut = backtest(&t.truncated(2000), &target, 0.95, |_| {});
        for (a, b) in cut.iter().zip(&full) {
            assert_eq!(
                (a.timestamp, a.replicas, &a.reason),
                (b.timestamp, b.replicas, &b.reason)
            );
        }
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
