//! Model selection at a refit. It holds out the most recent [`EVAL_WINDOW`] of history (at
//! most a third of it), fits every candidate on what comes before, then steps through the
//! held-out part as production would (update with each point; forecast `horizon` ahead
//! from every few origins). Each candidate is scored by an asymmetric loss: an
//! under-forecast weighs [`UNDER_WEIGHT`] times an over-forecast, since under-forecasting
//! loses requests. The winner's intervals are calibrated on its errors over the same
//! held-out part, and it is refitted on all the history.

use serde::{Deserialize, Serialize};

use super::calibration::{Calibration, Pair, calibrate};
use super::ets::Ets;
use super::fourier::Fourier;
use super::model::{Fitted, Spec};
use super::naive::SeasonalNaive;
use super::stats::enough;
use super::types::ForecastError;

const DAY: i64 = 86_400;
/// History held out for selection and calibration, at most.
pub const EVAL_WINDOW: i64 = 2 * DAY;
/// Weight of an under-forecast relative to an over-forecast in the selection loss.
pub const UNDER_WEIGHT: f64 = 2.0;
/// Forecast origins scored per candidate, about (evenly spaced over the held-out window).
const ORIGINS: usize = 240;
/// Forecast origins the winner's intervals are calibrated on, about.
const CALIBRATION_ORIGINS: usize = 1_440;

/// A candidate's score in the last selection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// The model's stable name.
    pub model: String,
    /// Its settings.
    pub description: String,
    /// Mean asymmetric loss over the held-out window (lower is better).
    pub loss: f64,
}

/// The candidates for a series with `per_day` steps per day and `days` of history.
fn candidates(per_day: usize, days: f64, step: i64) -> Vec<Spec> {
    let minutes = |m: i64| ((m * 60) as f64 / step as f64).round() as usize;
    let mut out = Vec::new();
    for alpha in [0.05, 0.15, 0.4] {
        for smooth in [minutes(3), minutes(15)] {
            out.push(Spec::Ets(Ets {
                per_day,
                daily: true,
                weekly: true,
                alpha,
                smooth,
            }));
            if enough(days, 7.0) {
                out.push(Spec::Ets(Ets {
                    per_day,
                    daily: true,
                    weekly: false,
                    alpha,
                    smooth,
                }));
            }
            if per_day == 0 || !enough(days, 1.0) {
                break; // without a profile, smoothing changes nothing
            }
        }
    }
    if per_day > 0 && enough(days, 1.0) {
        out.push(Spec::Fourier(Fourier {
            per_day,
            daily: 6,
            weekly: 3,
            alpha: 0.15,
        }));
        // No daily seasonal naive: on bursts whose time drifts from day to day, it wins the
        // held-out window by copying yesterday's bursts and then forecasts them where they
        // no longer come; the profile models cover a day that does repeat.
        if enough(days, 7.0) {
            out.push(Spec::Naive(SeasonalNaive {
                period: 7 * per_day,
            }));
        }
    }
    out
}

/// The default when there is too little history to select: level × profile, with every
/// period the history allows.
fn default_spec(per_day: usize, step: i64) -> Spec {
    Spec::Ets(Ets {
        per_day,
        daily: true,
        weekly: true,
        alpha: 0.15,
        smooth: ((900.0 / step as f64).round() as usize),
    })
}

/// The winner, its calibration, the scores and the newest burst in the held-out part.
pub(super) type Selected = (Fitted, Option<Calibration>, Vec<Score>, Option<i64>);

/// Rolling-origin selection and calibration on `y`; see the module docs.
pub(super) fn select(
    y: &[f64],
    per_day: usize,
    base: i64,
    (step, level): (i64, f64),
    h: usize,
) -> Result<Selected, ForecastError> {
    let n = y.len();
    let first = y
        .iter()
        .position(|v| v.is_finite())
        .ok_or(ForecastError::NoData)?;
    let window = ((EVAL_WINDOW / step) as usize).min((n - first) / 3);
    if window < h + 30 {
        let spec = default_spec(per_day, step);
        let fitted = spec.fit(y).ok_or(ForecastError::NoData)?;
        return Ok((fitted, None, Vec::new(), None));
    }
    let train = &y[..n - window];
    let days = if per_day > 0 {
        (train.len() - first) as f64 / per_day as f64
    } else {
        0.0
    };
    let stride = (window / ORIGINS).max(1);
    let mut scores: Vec<(Spec, Score)> = Vec::new();
    let mut buf = Vec::with_capacity(h);
    for spec in candidates(per_day, days, step) {
        let Some(mut fitted) = spec.fit(train) else {
            continue;
        };
        let (mut loss, mut count) = (0.0, 0usize);
        walk(
            &mut fitted,
            y,
            n - window,
            stride,
            h,
            &mut buf,
            |_, _, actual, predicted| {
                let e = actual - predicted;
                loss += if e > 0.0 { UNDER_WEIGHT * e } else { -e };
                count += 1;
            },
        );
        let loss = if count > 0 {
            loss / count as f64
        } else {
            f64::INFINITY
        };
        scores.push((
            spec,
            Score {
                model: fitted.name().to_owned(),
                description: fitted.describe(),
                loss,
            },
        ));
    }
    scores.sort_by(|a, b| a.1.loss.total_cmp(&b.1.loss));
    let Some((best, _)) = scores.first().cloned() else {
        let fitted = default_spec(per_day, step)
            .fit(y)
            .ok_or(ForecastError::NoData)?;
        return Ok((fitted, None, Vec::new(), None));
    };
    let (calibration, last_burst) = best.fit(train).map_or((None, None), |mut fitted| {
        let held_out = Held {
            y,
            start: n - window,
            base,
            step,
        };
        held_out.calibrate(&mut fitted, h, level)
    });
    let fitted = best.fit(y).ok_or(ForecastError::NoData)?;
    Ok((
        fitted,
        calibration,
        scores.into_iter().map(|(_, s)| s).collect(),
        last_burst,
    ))
}

/// The held-out part of a history: `y[start..]`, where `y[0]` is at `base` and values are
/// `step` seconds apart.
struct Held<'a> {
    y: &'a [f64],
    start: usize,
    base: i64,
    step: i64,
}

impl Held<'_> {
    /// The winner's (`fitted` on what comes before) intervals, calibrated on its errors
    /// over the held-out part from about [`CALIBRATION_ORIGINS`] origins; with the newest
    /// burst among them.
    fn calibrate(
        &self,
        fitted: &mut Fitted,
        h: usize,
        level: f64,
    ) -> (Option<Calibration>, Option<i64>) {
        let stride = ((self.y.len() - self.start) / CALIBRATION_ORIGINS).max(1);
        let mut pairs: Vec<Vec<Pair>> = vec![Vec::new(); h];
        let mut buf = Vec::with_capacity(h);
        walk(
            fitted,
            self.y,
            self.start,
            stride,
            h,
            &mut buf,
            |k, i, actual, predicted| {
                pairs[k].push(Pair {
                    actual,
                    predicted,
                    ts: self.base + i as i64 * self.step,
                    last_burst: None,
                });
            },
        );
        let Some(c) = calibrate(&mut pairs, self.step, level) else {
            return (None, None);
        };
        let last = pairs.first().and_then(|one| {
            one.iter()
                .filter(|p| c.is_burst(p.actual, p.predicted))
                .map(|p| p.ts)
                .max()
        });
        (Some(c), last)
    }
}

/// Steps `fitted` (fitted on `y[..start]`) through `y[start..]`, forecasting `h` ahead at
/// every `stride`-th origin and calling `seen(k, i, actual, forecast)` for each finite
/// actual `y[i]`, `k + 1` steps ahead.
fn walk(
    fitted: &mut Fitted,
    y: &[f64],
    start: usize,
    stride: usize,
    h: usize,
    buf: &mut Vec<f64>,
    mut seen: impl FnMut(usize, usize, f64, f64),
) {
    for o in start..y.len() {
        if (o - start).is_multiple_of(stride) {
            fitted.predict_values(h.min(y.len() - o), buf);
            for (k, &p) in buf.iter().enumerate() {
                let actual = y[o + k];
                if actual.is_finite() {
                    seen(k, o + k, actual, p);
                }
            }
        }
        fitted.update(y[o]);
    }
}
