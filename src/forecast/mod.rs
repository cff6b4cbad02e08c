//! Pure forecasting: a regular series in, a forecast with prediction intervals out.
//!
//! No I/O and no clock: `now` is passed in, so the backtest runs the very code that runs in
//! production. One file per model (`naive.rs`, `ets.rs`, `fourier.rs`); `model.rs` puts
//! them behind one interface; [`Forecaster`] (`forecaster.rs`) selects among them per
//! target, keeps the winner's state between refits and calibrates its intervals.
//! [`capacity`] learns how much load a replica takes within its latency SLO, and
//! [`bottleneck`] predicts when a target runs out of it.

use serde::Serialize;

pub mod bottleneck;
pub mod capacity;
pub mod ets;
mod forecaster;
pub mod fourier;
pub mod model;
pub mod naive;

pub use forecaster::{
    Coverage, EVAL_WINDOW, Forecaster, ModelInfo, Score, Settings, UNDER_WEIGHT, Updated,
};

/// A regular series: `values[i]` is the value at `start + i * step`; `NaN` marks a gap.
#[derive(Debug, Clone, Copy)]
pub struct History<'a> {
    /// Unix time (s) of `values[0]`.
    pub start: i64,
    /// Seconds between values.
    pub step: i64,
    /// The values, oldest first.
    pub values: &'a [f64],
}

impl History<'_> {
    /// Unix time (s) of the last value.
    pub fn end(&self) -> i64 {
        self.start + (self.values.len() as i64 - 1) * self.step
    }
}

/// One forecast point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Unix time (s) the point is for.
    pub timestamp: i64,
    /// Point forecast.
    pub value: f64,
    /// Lower bound of the prediction interval.
    pub lower: f64,
    /// Upper bound of the prediction interval.
    pub upper: f64,
}

/// A forecast of one signal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forecast {
    /// The `now` it was made at (Unix s).
    pub generated_at: i64,
    /// Seconds between points.
    pub step_seconds: i64,
    /// Which model made it (stable name).
    pub model: &'static str,
    /// Interval level, e.g. 0.95.
    pub level: f64,
    /// Points from the step after the last observation up to `now + horizon`.
    pub points: Vec<Point>,
}

impl Forecast {
    /// The point with the highest upper bound within `[from, to]`, if any.
    pub fn peak_upper(&self, from: i64, to: i64) -> Option<Point> {
        self.points
            .iter()
            .filter(|p| p.timestamp >= from && p.timestamp <= to)
            .copied()
            .max_by(|a, b| a.upper.total_cmp(&b.upper))
    }

    /// The points up to `to` (inclusive).
    pub fn until(&self, to: i64) -> impl Iterator<Item = &Point> {
        self.points.iter().take_while(move |p| p.timestamp <= to)
    }

    /// How it did against what happened: `(absolute error, inside the interval)` for each
    /// observed sample it had a point for.
    pub fn score<'a>(
        &'a self,
        observed: impl IntoIterator<Item = &'a crate::series::Sample> + 'a,
    ) -> impl Iterator<Item = (f64, bool)> + 'a {
        observed.into_iter().filter_map(|s| {
            let i = self
                .points
                .binary_search_by_key(&s.ts, |p| p.timestamp)
                .ok()?;
            let p = self.points[i];
            Some((
                (s.value - p.value).abs(),
                p.lower <= s.value && s.value <= p.upper,
            ))
        })
    }
}

/// Why no forecast could be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForecastError {
    /// The history holds no finite value.
    #[error("no data to forecast from")]
    NoData,
    /// The step is not positive, or not the forecaster's.
    #[error("step {0}s is not usable; expected the forecaster's positive step")]
    BadStep(i64),
    /// No model has been fitted yet.
    #[error("no model fitted yet")]
    NotFitted,
}

/// Forecasts `history` from its last value to `now + horizon` seconds with intervals at
/// `level` (in (0, 1)): a one-off [`Forecaster`] fitted on the spot.
pub fn forecast(
    history: History<'_>,
    now: i64,
    horizon: i64,
    level: f64,
) -> Result<Forecast, ForecastError> {
    if history.step <= 0 {
        return Err(ForecastError::BadStep(history.step));
    }
    if !history.values.iter().any(|v| v.is_finite()) {
        return Err(ForecastError::NoData);
    }
    let mut f = Forecaster::new(Settings {
        step: history.step,
        level,
        horizon: horizon.max(history.step),
        refit_every: 3_600,
    });
    f.update(history, now)?;
    f.forecast(now, horizon)
}

/// The `q`-quantile (0..=1) of `xs` by linear interpolation; `xs` is reordered. `None` when
/// empty.
pub(crate) fn quantile(xs: &mut [f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let pos = q.clamp(0.0, 1.0) * (xs.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let (_, &mut lo_v, _) = xs.select_nth_unstable_by(lo, f64::total_cmp);
    if hi == lo {
        return Some(lo_v);
    }
    // After selecting `lo`, the next larger value is the minimum of the upper part.
    let hi_v = xs[lo + 1..].iter().copied().fold(f64::INFINITY, f64::min);
    Some(lo_v + (hi_v - lo_v) * (pos - lo as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let check = |xs: &[f64], q: f64, want: Option<f64>| {
            let got = quantile(&mut xs.to_vec(), q);
            assert_eq!(got, want, "quantile({xs:?}, {q})");
        };
        check(&[], 0.5, None);
        check(&[3.0], 0.9, Some(3.0));
        check(&[5.0, 1.0, 3.0], 0.5, Some(3.0));
        check(&[4.0, 1.0, 3.0, 2.0], 0.5, Some(2.5));
        check(&[1.0, 2.0, 3.0, 4.0, 5.0], 1.0, Some(5.0));
        check(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.0, Some(1.0));
    }

    #[test]
    fn forecast_spans_to_now_plus_horizon() {
        let values = vec![10.0; 120];
        let h = History {
            start: 0,
            step: 60,
            values: &values,
        };
        // Last value at 7140; now 7200; horizon 600 → points 7200..=7800.
        let f = forecast(h, 7200, 600, 0.95).unwrap();
        assert_eq!(f.points.first().unwrap().timestamp, 7200);
        assert_eq!(f.points.last().unwrap().timestamp, 7800);
        assert!(f.points.iter().all(|p| (p.value - 10.0).abs() < 1e-9));
    }

    #[test]
    fn score_matches_points_by_timestamp() {
        let f = Forecast {
            generated_at: 0,
            step_seconds: 60,
            model: "t",
            level: 0.9,
            points: (1..=3)
                .map(|k| Point {
                    timestamp: 60 * k,
                    value: 10.0,
                    lower: 8.0,
                    upper: 12.0,
                })
                .collect(),
        };
        let observed = [
            crate::series::Sample {
                ts: 60,
                value: 11.0,
            },
            crate::series::Sample {
                ts: 90,
                value: 50.0,
            },
            crate::series::Sample {
                ts: 180,
                value: 14.0,
            },
        ];
        let got: Vec<(f64, bool)> = f.score(&observed).collect();
        assert_eq!(got, [(1.0, true), (4.0, false)]);
    }

    #[test]
    fn all_gaps_is_no_data() {
        let values = vec![f64::NAN; 10];
        let h = History {
            start: 0,
            step: 60,
            values: &values,
        };
        assert_eq!(forecast(h, 600, 60, 0.95), Err(ForecastError::NoData));
    }
}
