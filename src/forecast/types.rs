//! The data forecasting takes and gives: a [`History`] in, a [`Forecast`] of [`Point`]s
//! out, or a [`ForecastError`] saying why not.

use serde::Serialize;

use crate::series::Sample;

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
    /// The load to plan for at each point, when the forecaster was asked for one.
    #[serde(skip)]
    pub planned: Option<Planned>,
}

/// The load to plan for at each point of a forecast, at one share of the way to the upper
/// bound, read from the calibrated quantiles of the forecast's errors.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// The share it was made for.
    pub share: f64,
    /// One per point.
    pub values: Vec<f64>,
    /// Where they come from.
    pub basis: PlanBasis,
}

/// Where the load planned for comes from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PlanBasis {
    /// The share of the way from the point forecast to its upper bound, as a quantile of
    /// the calibrated errors (or straight, when the forecaster made no plan).
    Interval,
    /// The target's recurring bursts: the last hour's median times the `quantile` of
    /// what followed such a median at the same phase of the cycle and the same time since
    /// the last burst.
    RecurringBursts {
        /// In (0, 1).
        quantile: f64,
    },
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

    /// The point within `[from, to]` with the highest planned load, and that load: the
    /// forecaster's [`Planned`] values when made for `share`, else
    /// `value + share × (upper − value)` (at share 1: the highest upper bound).
    pub fn peak_planned(&self, from: i64, to: i64, share: f64) -> Option<(Point, f64)> {
        let made = self
            .planned
            .as_ref()
            .filter(|p| p.share == share && p.values.len() == self.points.len());
        self.points
            .iter()
            .enumerate()
            .filter(|(_, p)| p.timestamp >= from && p.timestamp <= to)
            .map(|(i, p)| {
                let load = made.map_or(p.value + share * (p.upper - p.value), |m| m.values[i]);
                (*p, load)
            })
            .filter(|(_, load)| load.is_finite())
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Where [`peak_planned`](Self::peak_planned)'s load at `share` comes from.
    pub fn plan_basis(&self, share: f64) -> PlanBasis {
        self.planned
            .as_ref()
            .filter(|p| p.share == share && p.values.len() == self.points.len())
            .map_or(PlanBasis::Interval, |p| p.basis)
    }

    /// The points up to `to` (inclusive).
    pub fn until(&self, to: i64) -> impl Iterator<Item = &Point> {
        self.points.iter().take_while(move |p| p.timestamp <= to)
    }

    /// How it did against what happened: `(absolute error, inside the interval)` for each
    /// observed sample it had a point for.
    pub fn score<'a>(
        &'a self,
        observed: impl IntoIterator<Item = Sample> + 'a,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_matches_points_by_timestamp() {
        let f = Forecast {
            generated_at: 0,
            step_seconds: 60,
            model: "t",
            level: 0.9,
            planned: None,
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
            Sample {
                ts: 60,
                value: 11.0,
            },
            Sample {
                ts: 90,
                value: 50.0,
            },
            Sample {
                ts: 180,
                value: 14.0,
            },
        ];
        let got: Vec<(f64, bool)> = f.score(observed).collect();
        assert_eq!(got, [(1.0, true), (4.0, false)]);
    }
}
