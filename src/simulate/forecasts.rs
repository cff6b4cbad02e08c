//! Rolling forecasts over a trace, made by the per-target step, and their accuracy.

use serde::Serialize;

use super::Replay;
use crate::config::{ForecastConfig, TargetConfig};
use crate::source::replay::Trace;

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
/// `progress` is called with the number of steps done, now and then.
pub fn rolling_forecasts(
    trace: &Trace,
    horizon: i64,
    target: &TargetConfig,
    forecast: &ForecastConfig,
    mut progress: impl FnMut(usize),
) -> Vec<ForecastRow> {
    let step = trace.step;
    let mut forecast = forecast.clone();
    let far = (horizon + step).max(0) as u64;
    forecast.horizon = forecast.horizon.max(std::time::Duration::from_secs(far));
    let mut replay = Replay::new(trace, target, &forecast);
    let mut rows = Vec::with_capacity(trace.counts.len());
    let mut steps = 0;
    while let Some(plan) = replay.step() {
        steps += 1;
        if steps % 1024 == 0 {
            progress(steps);
        }
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
    progress(steps);
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
