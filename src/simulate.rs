//! Backtests: a trace replayed through the production forecast and decision code on a
//! virtual clock.
//!
//! At each trace step `T` the forecaster sees only the buckets that ended by `T`, and the
//! decision made from them is the replica count asked for from `T` on. Nothing here reads a
//! clock or does I/O; the CLI writes the rows.

use serde::Serialize;

use crate::config::{ForecastConfig, TargetConfig};
use crate::decide::{self, DecideState, Observed, Policy};
use crate::forecast::{Forecaster, History, Settings};
use crate::source::replay::Trace;

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
pub fn backtest(trace: &Trace, target: &TargetConfig, level: f64) -> Vec<Row> {
    let step = trace.step;
    let mut target = target.clone();
    target.interval = std::time::Duration::from_secs(step as u64);
    let policy = Policy::of(&target);
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
        let observed = Observed {
            replicas,
            demand_rps: seen.last().copied().filter(|v| v.is_finite()),
            degraded: seen.last().is_none_or(|v| !v.is_finite()),
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
    }
    rows
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
        let rows = backtest(&t, &target, 0.95);
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
        let full = backtest(&t, &target, 0.95);
        let cut = backtest(&t.truncated(2000), &target, 0.95);
        for (a, b) in cut.iter().zip(&full) {
            assert_eq!(
                (a.timestamp, a.replicas, &a.reason),
                (b.timestamp, b.replicas, &b.reason)
            );
        }
    }
}
