//! The stateful per-target forecaster: it holds the selected model and its state, takes new
//! points in O(1) between refits, re-selects on a schedule driven by the `now` passed in,
//! and answers forecasts with calibrated intervals. The live pipeline and the backtest call
//! it the same way: [`Forecaster::update`] with the history seen so far, then
//! [`Forecaster::forecast`].
//!
//! **Selection** is in `selection.rs`: rolling-origin scoring of the candidates on the
//! most recent history held out, and the winner's calibration there.
//!
//! **Intervals** are split-conformal (`calibration.rs`): the winner's held-out errors per
//! horizon, scaled by `forecast^p` (p = ½, Poisson-like, or 1, multiplicative) and, when
//! their size follows the phase of a cycle shorter than a day, by that phase's factor; the
//! narrowest at the configured level wins.

use serde::{Deserialize, Serialize};

use super::calibration::Calibration;
use super::model::Fitted;
use super::recurring::Recurring;
use super::selection::{Score, select};
use super::stats::{normal_cdf, normal_quantile};
use super::types::{Forecast, ForecastError, History, PlanBasis, Planned, Point};

const DAY: i64 = 86_400;
const WEEK: i64 = 7 * DAY;
/// Longest calibrated horizon, in steps.
const MAX_HORIZON_STEPS: usize = 1_440;
/// Longest forecast served, in steps.
const MAX_FORECAST_STEPS: usize = 200_000;
/// A gap in the data longer than this forces a refit instead of stepping through it.
const MAX_GAP: i64 = DAY;

/// How a forecaster works.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Seconds between values.
    pub step: i64,
    /// Prediction-interval level in (0, 1).
    pub level: f64,
    /// Horizon (s) that selection scores and intervals are calibrated for.
    pub horizon: i64,
    /// Seconds between refits (re-selection).
    pub refit_every: i64,
    /// Where on the `refit_every` grid this forecaster refits (seconds; only its remainder
    /// counts): forecasters with different phases refit in different cycles instead of
    /// all in the one after they started together.
    #[serde(default)]
    pub refit_phase: i64,
}

/// The first point after `now` of the grid of `every` seconds shifted by `phase`.
fn next_on_grid(now: i64, every: i64, phase: i64) -> i64 {
    let every = every.max(1);
    let phase = phase.rem_euclid(every);
    phase + ((now - phase).div_euclid(every) + 1) * every
}

/// Realised coverage of one-step-ahead intervals since the last refit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// Actuals inside the interval.
    pub inside: u64,
    /// Actuals checked.
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    fitted: Fitted,
    /// Timestamp of the last value fed.
    last_ts: i64,
    /// The `now` of the last refit.
    fitted_at: i64,
    /// When the next refit is due: the first point of the phase's grid after `fitted_at`
    /// (0 in a model saved before there was one: `fitted_at + refit_every`).
    #[serde(default)]
    due_at: i64,
    calibration: Option<Calibration>,
    scores: Vec<Score>,
    coverage: Coverage,
    /// The newest value that was a burst, when the calibration follows the time since one.
    #[serde(default)]
    last_burst: Option<i64>,
    /// The plan for recurring bursts, when the calibration found a short cycle.
    #[serde(default)]
    recurring: Option<Recurring>,
}

/// What [`Forecaster::update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updated {
    /// Re-selected and refitted on the whole history.
    Refitted,
    /// Took this many new values.
    Appended(usize),
    /// Nothing new.
    Unchanged,
}

/// The selected model of one target, what it knows, and how it did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    /// Stable name of the selected model.
    pub model: &'static str,
    /// Its settings and what it dropped.
    pub description: String,
    /// When it was last refitted (Unix s).
    pub fitted_at: i64,
    /// Timestamp of the newest value it has seen.
    pub last_observation: i64,
    /// Whether intervals are calibrated from held-out errors (else the model's own).
    pub calibrated: bool,
    /// Held-out coverage of the calibrated interval (all horizons).
    pub calibration_coverage: Option<f64>,
    /// One-step-ahead coverage since the refit.
    pub coverage: Option<f64>,
    /// Actuals behind `coverage`.
    pub coverage_samples: u64,
    /// Candidates and their held-out loss, best first.
    pub selection: Vec<Score>,
}

/// A per-target forecaster; see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecaster {
    settings: Settings,
    state: Option<State>,
}

impl Forecaster {
    /// A forecaster that has seen nothing yet.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            state: None,
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Changes the settings; a different step, level or horizon (which the model and its
    /// calibration depend on) drops the model, so the next update refits.
    pub fn set_settings(&mut self, settings: Settings) {
        if settings.step != self.settings.step
            || settings.horizon != self.settings.horizon
            || settings.level != self.settings.level
        {
            self.state = None;
        }
        self.settings = settings;
    }

    /// Whether a model is fitted.
    pub fn is_fitted(&self) -> bool {
        self.state.is_some()
    }

    /// The history the next [`update`](Self::update) at `now` needs: from this time on
    /// (the newest value it has seen) when it will step through new values, `None` when it
    /// may refit (then all of it). Passing only that part makes a cycle cost the new
    /// values, not a copy of the whole history.
    pub fn needs_since(&self, now: i64) -> Option<i64> {
        let s = self.state.as_ref()?;
        (!self.refit_due(now)).then_some(s.last_ts)
    }

    /// Whether the next [`update`](Self::update) at `now` will refit.
    pub fn refit_due(&self, now: i64) -> bool {
        let every = self.settings.refit_every;
        self.state.as_ref().is_none_or(|s| {
            let due = s.fitted_at + every;
            let due = if s.due_at > 0 { s.due_at.min(due) } else { due };
            now >= due || now < s.fitted_at
        })
    }

    /// Brings the model up to date with `history` at `now`: refits when due (or when the
    /// data jumped), else feeds the values newer than the last one seen, O(1) each. Negative
    /// values (a counter reset read as a rate) are treated as gaps.
    pub fn update(&mut self, history: History<'_>, now: i64) -> Result<Updated, ForecastError> {
        let step = self.settings.step;
        if history.step != step || step <= 0 {
            return Err(ForecastError::BadStep(history.step));
        }
        if history.values.is_empty() {
            return Err(ForecastError::NoData);
        }
        let end = history.end();
        let refit = match &self.state {
            None => true,
            Some(s) => {
                self.refit_due(now)
                    || end < s.last_ts
                    || history.start - s.last_ts > MAX_GAP
                    || (s.last_ts - history.start) % step != 0
            }
        };
        if refit {
            self.refit(history, now)?;
            return Ok(Updated::Refitted);
        }
        let Some(s) = self.state.as_mut() else {
            return Err(ForecastError::NoData);
        };
        if end == s.last_ts {
            return Ok(Updated::Unchanged);
        }
        let mut one = Vec::with_capacity(1);
        let mut fed = 0;
        let mut ts = s.last_ts + step;
        while ts <= end {
            let v = value_at(history, ts);
            if v.is_finite()
                && let Some(c) = &s.calibration
            {
                s.fitted.predict_values(1, &mut one);
                let (lo, hi) = c.interval(one[0], 1, ts, s.last_burst);
                s.coverage.total += 1;
                s.coverage.inside += u64::from(lo <= v && v <= hi);
                if c.is_burst(v, one[0]) {
                    s.last_burst = Some(ts);
                }
            }
            if let Some(r) = &mut s.recurring {
                r.feed(v, ts);
            }
            s.fitted.update(v);
            fed += 1;
            ts += step;
        }
        s.last_ts = end;
        Ok(Updated::Appended(fed))
    }

    /// Re-selects and refits on `history` now.
    pub fn refit(&mut self, history: History<'_>, now: i64) -> Result<(), ForecastError> {
        let settings = self.settings;
        let (y, per_day) = align(history, settings.step);
        if !y.iter().any(|v| v.is_finite()) {
            return Err(ForecastError::NoData);
        }
        let h = horizon_steps(&settings);
        // The time of `y[0]`: the history starts after the padding.
        let base = history.start - (y.len() - history.values.len()) as i64 * settings.step;
        let (fitted, calibration, scores, last_burst) =
            select(&y, per_day, base, (settings.step, settings.level), h)?;
        let recurring = calibration
            .as_ref()
            .and_then(|c| c.cycle.as_ref())
            .and_then(|c| Recurring::fit(&y, base, settings.step, c.period));
        self.state = Some(State {
            fitted,
            last_ts: history.end(),
            fitted_at: now,
            due_at: next_on_grid(now, settings.refit_every, settings.refit_phase),
            calibration,
            scores,
            coverage: Coverage::default(),
            last_burst,
            recurring,
        });
        Ok(())
    }

    /// Forecasts from the step after the last value seen up to `now + horizon` seconds.
    pub fn forecast(&self, now: i64, horizon: i64) -> Result<Forecast, ForecastError> {
        self.forecast_planned(now, horizon, None)
    }

    /// [`forecast`](Self::forecast), and with a `share` the load to plan for at each point
    /// (`share` of the way to the upper bound, as a calibrated quantile: see
    /// [`Forecast::peak_planned`]).
    pub fn forecast_planned(
        &self,
        now: i64,
        horizon: i64,
        share: Option<f64>,
    ) -> Result<Forecast, ForecastError> {
        let s = self.state.as_ref().ok_or(ForecastError::NotFitted)?;
        let step = self.settings.step;
        let steps = ((now + horizon - s.last_ts) as f64 / step as f64)
            .ceil()
            .clamp(1.0, MAX_FORECAST_STEPS as f64) as usize;
        let level = self.settings.level;
        let raw = s.fitted.predict(steps, level);
        let points = raw
            .into_iter()
            .enumerate()
            .map(|(k, (value, lo, hi))| {
                let timestamp = s.last_ts + (k as i64 + 1) * step;
                let (lower, upper) = match &s.calibration {
                    Some(c) => c.interval(value, k + 1, timestamp, s.last_burst),
                    None => (lo, hi),
                };
                Point {
                    timestamp,
                    value,
                    lower,
                    upper,
                }
            })
            .collect::<Vec<_>>();
        let planned = share.and_then(|share| self.planned(s, &points, share));
        Ok(Forecast {
            generated_at: now,
            step_seconds: step,
            model: s.fitted.name(),
            level,
            points,
            planned,
        })
    }

    /// The load to plan for at each of `points` at `share`: from the plan for recurring
    /// bursts at the quantile `share` stands for (Φ(share × z) at the interval's `z`), or
    /// from the calibration.
    fn planned(&self, s: &State, points: &[Point], share: f64) -> Option<Planned> {
        let quantile = normal_cdf(share * normal_quantile(0.5 + self.settings.level / 2.0));
        let recurring = s.recurring.as_ref().and_then(|r| {
            let targets: Vec<i64> = points.iter().map(|p| p.timestamp).collect();
            r.plan(s.last_ts, &targets, quantile)
        });
        if let Some(values) = recurring {
            let basis = PlanBasis::RecurringBursts { quantile };
            return Some(Planned {
                share,
                values,
                basis,
            });
        }
        let c = s.calibration.as_ref()?;
        let values = points
            .iter()
            .enumerate()
            .map(|(k, p)| c.planned(p.value, k + 1, p.timestamp, s.last_burst, share))
            .collect();
        Some(Planned {
            share,
            values,
            basis: PlanBasis::Interval,
        })
    }

    /// What is selected and how it does; `None` before the first fit.
    pub fn info(&self) -> Option<ModelInfo> {
        let s = self.state.as_ref()?;
        Some(ModelInfo {
            model: s.fitted.name(),
            description: match &s.recurring {
                Some(r) => format!(
                    "{}; load planned from bursts recurring on a {} s cycle",
                    s.fitted.describe(),
                    r.period()
                ),
                None => s.fitted.describe(),
            },
            fitted_at: s.fitted_at,
            last_observation: s.last_ts,
            calibrated: s.calibration.is_some(),
            calibration_coverage: s.calibration.as_ref().map(|c| c.coverage),
            coverage: (s.coverage.total > 0)
                .then(|| s.coverage.inside as f64 / s.coverage.total as f64),
            coverage_samples: s.coverage.total,
            selection: s.scores.clone(),
        })
    }
}

fn horizon_steps(s: &Settings) -> usize {
    ((s.horizon as f64 / s.step as f64).ceil() as usize).clamp(1, MAX_HORIZON_STEPS)
}

fn value_at(history: History<'_>, ts: i64) -> f64 {
    if ts < history.start {
        return f64::NAN;
    }
    let i = ((ts - history.start) / history.step) as usize;
    history
        .values
        .get(i)
        .copied()
        .filter(|v| *v >= 0.0)
        .unwrap_or(f64::NAN)
}

/// The history padded in front with gaps so that index 0 starts a week (phases then line
/// up across refits), negative values as gaps; with the steps per day (0 when the step does
/// not divide a day).
fn align(history: History<'_>, step: i64) -> (Vec<f64>, usize) {
    let per_day = if DAY % step == 0 {
        (DAY / step) as usize
    } else {
        0
    };
    let pad = if per_day > 0 {
        ((history.start - history.start.div_euclid(WEEK) * WEEK) / step) as usize
    } else {
        0
    };
    let mut y = Vec::with_capacity(pad + history.values.len());
    y.resize(pad, f64::NAN);
    y.extend(
        history
            .values
            .iter()
            .map(|&v| if v >= 0.0 { v } else { f64::NAN }),
    );
    (y, per_day)
}

#[cfg(test)]
mod tests;
