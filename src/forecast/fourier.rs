//! Trend plus Fourier seasonal terms (daily and weekly harmonics), fitted by least squares
//! with `linfa-linear`, plus an exponentially smoothed correction for the recent residual.
//!
//! The regression runs on at most `MAX_ROWS` evenly spaced finite points, so a 14-day
//! one-minute series fits in about a millisecond. It is fitted twice: points whose residual
//! is more than four robust standard deviations out (bursts, outliers) are left out of the
//! second fit. A period with fewer than two cycles of history is dropped and noted.

use linfa::Dataset;
use linfa::traits::Fit;
use linfa_linear::LinearRegression;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use super::stats::{WARMUP, enough, normal_quantile, own_interval, quantile};

/// Rows used by the regression, at most.
const MAX_ROWS: usize = 4_000;
/// Residuals beyond this many robust standard deviations are left out of the second fit.
const OUTLIER: f64 = 4.0;

/// The model's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fourier {
    /// Steps per day; 0 when the step does not divide a day.
    pub per_day: usize,
    /// Daily harmonics.
    pub daily: usize,
    /// Weekly harmonics.
    pub weekly: usize,
    /// Smoothing weight of the residual correction.
    pub alpha: f64,
}

/// A fitted [`Fourier`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FourierFit {
    spec: Fourier,
    /// Harmonics in use (0 when the period was dropped).
    daily: usize,
    weekly: usize,
    intercept: f64,
    /// Slope per step.
    trend: f64,
    /// Index the trend is measured from.
    t0: usize,
    /// `[a_1, b_1, a_2, b_2, …]`: daily then weekly coefficients of sin and cos.
    coef: Vec<f64>,
    /// Smoothed recent residual.
    correction: f64,
    /// Mean absolute innovation of the residual.
    scale: f64,
    next: usize,
    notes: Vec<String>,
}

impl Fourier {
    /// Fits on `y` (index 0 at the start of a week; `NaN` marks a gap). `None` when there is
    /// too little data or the regression fails.
    pub fn fit(&self, y: &[f64]) -> Option<FourierFit> {
        let first = y.iter().position(|v| v.is_finite())?;
        let days = if self.per_day > 0 {
            (y.len() - first) as f64 / self.per_day as f64
        } else {
            0.0
        };
        let mut notes = Vec::new();
        let daily = if enough(days, 1.0) { self.daily } else { 0 };
        if self.daily > 0 && daily == 0 {
            notes.push(format!(
                "daily period dropped: {days:.1} days of history < 2"
            ));
        }
        let weekly = if enough(days, 7.0) { self.weekly } else { 0 };
        if self.weekly > 0 && weekly == 0 && daily > 0 {
            notes.push(format!(
                "weekly period dropped: {days:.1} days of history < 14"
            ));
        }
        let mut fit = FourierFit {
            spec: *self,
            daily,
            weekly,
            intercept: 0.0,
            trend: 0.0,
            t0: first,
            coef: vec![0.0; 2 * (daily + weekly)],
            correction: 0.0,
            scale: 0.0,
            next: first,
            notes,
        };
        let finite: Vec<usize> = (first..y.len()).filter(|&i| y[i].is_finite()).collect();
        let stride = finite.len().div_ceil(MAX_ROWS).max(1);
        let mut rows: Vec<usize> = finite.iter().copied().step_by(stride).collect();
        let width = 1 + fit.coef.len();
        if rows.len() < 2 * width {
            return None;
        }
        fit.regress(y, &rows)?;
        let mut abs: Vec<f64> = rows.iter().map(|&i| (y[i] - fit.curve(i)).abs()).collect();
        let mad = quantile(&mut abs, 0.5).unwrap_or(0.0) * 1.4826;
        if mad > 0.0 {
            rows.retain(|&i| (y[i] - fit.curve(i)).abs() <= OUTLIER * mad);
            if rows.len() >= 2 * width {
                fit.regress(y, &rows)?;
            }
        }
        fit.scale = mad / 1.25;
        let start = y.len().saturating_sub(WARMUP).max(first);
        fit.next = start;
        for &v in &y[start..] {
            fit.update(v);
        }
        Some(fit)
    }
}

impl FourierFit {
    fn features(&self, i: usize, out: &mut Vec<f64>) {
        out.clear();
        out.push(i as f64 - self.t0 as f64);
        let per_day = self.spec.per_day.max(1);
        for (harmonics, period) in [(self.daily, per_day), (self.weekly, 7 * per_day)] {
            if harmonics == 0 {
                continue;
            }
            let x = std::f64::consts::TAU * (i % period) as f64 / period as f64;
            let (s1, c1) = x.sin_cos();
            // Higher harmonics by the Chebyshev recurrence.
            let (mut s_prev, mut c_prev, mut s, mut c) = (0.0, 1.0, s1, c1);
            for _ in 0..harmonics {
                out.push(s);
                out.push(c);
                (s_prev, c_prev, s, c) = (s, c, 2.0 * c1 * s - s_prev, 2.0 * c1 * c - c_prev);
            }
        }
    }

    fn regress(&mut self, y: &[f64], rows: &[usize]) -> Option<()> {
        let width = 1 + self.coef.len();
        let mut x = Array2::<f64>::zeros((rows.len(), width));
        let mut f = Vec::with_capacity(width);
        for (r, &i) in rows.iter().enumerate() {
            self.features(i, &mut f);
            for (c, v) in f.iter().enumerate() {
                x[[r, c]] = *v;
            }
        }
        let targets = Array1::from_iter(rows.iter().map(|&i| y[i]));
        let model = LinearRegression::new()
            .fit(&Dataset::new(x, targets))
            .ok()?;
        let params = model.params();
        if !params.iter().all(|p| p.is_finite()) || !model.intercept().is_finite() {
            return None;
        }
        self.intercept = model.intercept();
        self.trend = params[0];
        for (c, p) in self.coef.iter_mut().zip(params.iter().skip(1)) {
            *c = *p;
        }
        Some(())
    }

    /// The periods in steps with their harmonics and coefficients.
    fn periods(&self) -> [(usize, &[f64]); 2] {
        let d = 2 * self.daily;
        let per_day = self.spec.per_day;
        [(per_day, &self.coef[..d]), (7 * per_day, &self.coef[d..])]
    }

    /// The regression's value at index `i`.
    fn curve(&self, i: usize) -> f64 {
        let mut v = self.intercept + self.trend * (i as f64 - self.t0 as f64);
        for (period, coef) in self.periods() {
            if !coef.is_empty() {
                let x = std::f64::consts::TAU * (i % period) as f64 / period as f64;
                let (s1, c1) = x.sin_cos();
                v += harmonic_sum(coef, s1, c1);
            }
        }
        v
    }

    /// Takes the next value (`NaN` for a gap: the correction holds).
    pub fn update(&mut self, v: f64) {
        let i = self.next;
        self.next += 1;
        if !v.is_finite() {
            return;
        }
        let r = v - self.curve(i) - self.correction;
        let lim = 4.0 * self.scale.max(1e-12);
        let rc = r.clamp(-lim, lim);
        self.correction += self.spec.alpha * rc;
        self.scale += 0.02 * (rc.abs() - self.scale);
    }

    /// Point forecasts for the next `horizon` values (never negative).
    pub fn predict_values(&self, horizon: usize, out: &mut Vec<f64>) {
        out.clear();
        // The first harmonic of each period rotates by a fixed angle per step: two `sin_cos`
        // per forecast instead of two per point.
        let mut phases = self.periods().map(|(period, coef)| {
            let x =
                std::f64::consts::TAU * (self.next % period.max(1)) as f64 / period.max(1) as f64;
            let d = std::f64::consts::TAU / period.max(1) as f64;
            (coef, x.sin_cos(), d.sin_cos())
        });
        for k in 0..horizon {
            let i = self.next + k;
            let mut v = self.intercept + self.trend * (i as f64 - self.t0 as f64);
            for (coef, (s1, c1), (sd, cd)) in &mut phases {
                if !coef.is_empty() {
                    v += harmonic_sum(coef, *s1, *c1);
                }
                (*s1, *c1) = (*s1 * *cd + *c1 * *sd, *c1 * *cd - *s1 * *sd);
            }
            out.push((v + self.correction).max(0.0));
        }
    }

    /// Point forecasts with the model's own interval at `level`.
    pub fn predict(&self, horizon: usize, level: f64) -> Vec<(f64, f64, f64)> {
        let z = normal_quantile(0.5 + level / 2.0);
        let a2 = self.spec.alpha * self.spec.alpha;
        let mut values = Vec::new();
        self.predict_values(horizon, &mut values);
        values
            .into_iter()
            .enumerate()
            .map(|(k, v)| own_interval(v, z * 1.25 * self.scale * (1.0 + k as f64 * a2).sqrt()))
            .collect()
    }

    /// Harmonics in use: (daily, weekly).
    pub fn harmonics(&self) -> (usize, usize) {
        (self.daily, self.weekly)
    }

    /// What was dropped and why.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

/// `Σ a_k sin(kx) + b_k cos(kx)` over `coef = [a_1, b_1, a_2, b_2, …]` from `sin x`, `cos x`,
/// by the Chebyshev recurrence.
fn harmonic_sum(coef: &[f64], s1: f64, c1: f64) -> f64 {
    let (mut s_prev, mut c_prev, mut s, mut c) = (0.0, 1.0, s1, c1);
    let mut v = 0.0;
    for pair in coef.chunks_exact(2) {
        v += pair[0] * s + pair[1] * c;
        (s_prev, c_prev, s, c) = (s, c, 2.0 * c1 * s - s_prev, 2.0 * c1 * c - c_prev);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::TAU;

    const PER_DAY: usize = 96;

    #[test]
    fn recovers_trend_and_harmonics() {
        // (name, truth, days, daily harmonics, weekly harmonics)
        type Truth = fn(usize) -> f64;
        let cases: &[(&str, Truth, usize, usize, usize)] = &[
            (
                "one daily harmonic",
                |i| 50.0 + 20.0 * (TAU * (i % PER_DAY) as f64 / PER_DAY as f64).sin(),
                3,
                3,
                0,
            ),
            (
                "trend and two harmonics",
                |i| {
                    let x = TAU * (i % PER_DAY) as f64 / PER_DAY as f64;
                    80.0 + 0.01 * i as f64 + 10.0 * x.cos() + 5.0 * (2.0 * x).sin()
                },
                4,
                4,
                0,
            ),
            (
                "weekly",
                |i| {
                    let w = TAU * (i % (7 * PER_DAY)) as f64 / (7 * PER_DAY) as f64;
                    60.0 + 15.0 * w.sin()
                },
                15,
                2,
                2,
            ),
        ];
        for &(name, truth, days, d, w) in cases {
            let n = days * PER_DAY;
            let mut y: Vec<f64> = (0..n).map(truth).collect();
            y[n / 2] = 10_000.0; // an outlier, left out of the second fit
            y[n / 3] = f64::NAN; // a gap
            let spec = Fourier {
                per_day: PER_DAY,
                daily: d,
                weekly: w,
                alpha: 0.1,
            };
            let fit = spec.fit(&y).unwrap();
            for (k, p) in fit.predict(PER_DAY, 0.9).iter().enumerate() {
                let want = truth(n + k);
                assert!(
                    (p.0 - want).abs() < 0.5,
                    "{name}: step {k}: {} vs {want}",
                    p.0
                );
            }
        }
    }

    #[test]
    fn short_history_drops_the_daily_period() {
        let y: Vec<f64> = (0..PER_DAY).map(|i| i as f64).collect();
        let fit = Fourier {
            per_day: PER_DAY,
            daily: 3,
            weekly: 2,
            alpha: 0.1,
        }
        .fit(&y)
        .unwrap();
        assert_eq!(fit.harmonics(), (0, 0));
        assert!(
            fit.notes()[0].contains("1.0 days of history < 2"),
            "{:?}",
            fit.notes()
        );
    }
}
