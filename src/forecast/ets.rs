//! Exponential smoothing of the level on a robust multiplicative seasonal profile: an
//! MSTL-style decomposition (seasonal shape from medians, level by simple exponential
//! smoothing on the seasonally adjusted series), written to refit in milliseconds.
//!
//! - The daily profile is the per-phase median over the last (up to seven) complete days,
//!   each day first divided by its own mean, so that a weekend's lower level does not bend
//!   the shape and one burst cannot poison it. It is smoothed over ±`smooth` steps and
//!   normalised to mean 1.
//! - With two weeks of history, a factor per day of the week (median over weeks of the
//!   day's mean over the overall mean) carries the weekly cycle.
//! - The level follows `value / seasonal` with weight `alpha`. A jump more than four mean
//!   absolute innovations away is clipped, unless it persists (three steps the same way),
//!   so a single spike barely moves the level while a real shift is followed.
//! - A period with fewer than two cycles of history is dropped, and [`EtsFit::notes`] says so.

use serde::{Deserialize, Serialize};

use super::stats::{WARMUP, enough, fill_ring, normal_quantile, own_interval, quantile};

/// Days of history the daily profile looks at, at most.
const PROFILE_DAYS: usize = 7;
/// Weeks of history the weekday factors look at, at most.
const WEEK_FACTOR_WEEKS: usize = 4;
/// Innovations beyond this many mean absolute innovations are clipped.
const CLIP: f64 = 4.0;
/// Consecutive clipped innovations of one sign after which the shift is taken as real.
const PERSIST: u32 = 3;
/// Weight of the mean absolute innovation's update.
const SCALE_WEIGHT: f64 = 0.02;
/// Seasonal factors are floored at this (the profile has mean 1), so a quiet phase cannot
/// blow up the seasonally adjusted value.
const FLOOR: f64 = 0.05;

/// The model's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ets {
    /// Steps per day; 0 when the step does not divide a day (no seasonality).
    pub per_day: usize,
    /// Whether to use the daily profile (when history allows).
    pub daily: bool,
    /// Whether to add weekday factors (when history allows).
    pub weekly: bool,
    /// Smoothing weight of the level, in (0, 1].
    pub alpha: f64,
    /// Half-width of the profile's moving average, in steps.
    pub smooth: usize,
}

/// A fitted [`Ets`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EtsFit {
    spec: Ets,
    /// Per phase of the day, mean 1; empty without a daily period.
    profile: Vec<f64>,
    /// Per day of the week (index `(i / per_day) % 7`), mean 1; empty without.
    week: Vec<f64>,
    level: f64,
    /// Mean absolute innovation, in level units.
    scale: f64,
    /// Signed count of consecutive clipped innovations.
    clipped: i32,
    /// Index of the next value.
    next: usize,
    /// What was dropped and why.
    notes: Vec<String>,
}

impl Ets {
    /// Fits on `y` (index 0 at the start of a week; `NaN` marks a gap). `None` when `y` holds
    /// no finite value.
    pub fn fit(&self, y: &[f64]) -> Option<EtsFit> {
        let first = y.iter().position(|v| v.is_finite())?;
        let mut notes = Vec::new();
        let per_day = self.per_day;
        let days = if per_day > 0 {
            (y.len() - first) as f64 / per_day as f64
        } else {
            0.0
        };
        let use_daily = self.daily && per_day > 0 && enough(days, 1.0);
        if self.daily && !use_daily {
            notes.push(if per_day == 0 {
                "daily period dropped: the step does not divide a day".to_owned()
            } else {
                format!("daily period dropped: {days:.1} days of history < 2")
            });
        }
        let use_weekly = self.weekly && use_daily && enough(days, 7.0);
        if self.weekly && use_daily && !use_weekly {
            notes.push(format!(
                "weekly period dropped: {days:.1} days of history < 14"
            ));
        }
        let profile = if use_daily {
            daily_profile(y, first, per_day, self.smooth)
        } else {
            Vec::new()
        };
        let week = if use_weekly {
            weekday_factors(y, first, per_day)
        } else {
            Vec::new()
        };
        let mut fit = EtsFit {
            spec: *self,
            profile,
            week,
            level: 0.0,
            scale: 0.0,
            clipped: 0,
            next: first,
            notes,
        };
        // The level forgets in tens of steps: start it WARMUP steps from the end, at the
        // median of the first hour-or-so of adjusted values there.
        let start = y.len().saturating_sub(WARMUP).max(first);
        let start = (start..y.len())
            .find(|&i| y[i].is_finite())
            .unwrap_or(first);
        fit.next = start;
        let mut head: Vec<f64> = (start..y.len().min(start + 60))
            .filter(|&i| y[i].is_finite())
            .map(|i| y[i] / fit.seasonal(i))
            .collect();
        fit.level = quantile(&mut head, 0.5).unwrap_or(0.0);
        let mad: f64 =
            head.iter().map(|x| (x - fit.level).abs()).sum::<f64>() / head.len().max(1) as f64;
        fit.scale = mad;
        for &v in &y[start..] {
            fit.update(v);
        }
        Some(fit)
    }
}

impl EtsFit {
    /// The seasonal factor at index `i`.
    fn seasonal(&self, i: usize) -> f64 {
        let per_day = self.spec.per_day;
        let mut s = 1.0;
        if !self.profile.is_empty() {
            s *= self.profile[i % per_day];
        }
        if !self.week.is_empty() {
            s *= self.week[(i / per_day) % 7];
        }
        s.max(FLOOR)
    }

    /// Takes the next value (`NaN` for a gap: the level holds).
    pub fn update(&mut self, v: f64) {
        let s = self.seasonal(self.next);
        self.next += 1;
        if !v.is_finite() {
            return;
        }
        let r = v / s - self.level;
        let lim = CLIP * self.scale.max(1e-6 * self.level.abs()).max(1e-12);
        let rc = if r.abs() <= lim {
            self.clipped = 0;
            r
        } else {
            let sign = if r > 0.0 { 1 } else { -1 };
            self.clipped = if self.clipped.signum() == sign {
                self.clipped + sign
            } else {
                sign
            };
            if self.clipped.unsigned_abs() >= PERSIST {
                r
            } else {
                r.clamp(-lim, lim)
            }
        };
        self.level = (self.level + self.spec.alpha * rc).max(0.0);
        self.scale += SCALE_WEIGHT * (rc.abs().min(lim) - self.scale);
    }

    /// Point forecasts for the next `horizon` values.
    pub fn predict_values(&self, horizon: usize, out: &mut Vec<f64>) {
        out.clear();
        out.extend((0..horizon).map(|k| self.level * self.seasonal(self.next + k)));
    }

    /// Point forecasts with the model's own interval at `level` (simple exponential
    /// smoothing's variance, from the mean absolute innovation).
    pub fn predict(&self, horizon: usize, level: f64) -> Vec<(f64, f64, f64)> {
        let z = normal_quantile(0.5 + level / 2.0);
        let sd = 1.25 * self.scale;
        let a2 = self.spec.alpha * self.spec.alpha;
        (0..horizon)
            .map(|k| {
                let s = self.seasonal(self.next + k);
                let half = z * sd * (1.0 + k as f64 * a2).sqrt() * s;
                own_interval(self.level * s, half)
            })
            .collect()
    }

    /// The settings.
    pub fn spec(&self) -> &Ets {
        &self.spec
    }

    /// Whether a daily profile is in use.
    pub fn has_daily(&self) -> bool {
        !self.profile.is_empty()
    }

    /// Whether weekday factors are in use.
    pub fn has_weekly(&self) -> bool {
        !self.week.is_empty()
    }

    /// What was dropped and why.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The current (seasonally adjusted) level.
    pub fn level(&self) -> f64 {
        self.level
    }
}

/// Mean of the finite values of a day block, with how many there were.
fn day_mean(day: &[f64]) -> (f64, usize) {
    let (sum, n) = day
        .iter()
        .filter(|v| v.is_finite())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (if n > 0 { sum / n as f64 } else { 0.0 }, n)
}

/// Indices of the complete (≥ 90 % finite, positive mean) day blocks from `first` on, newest
/// last.
fn complete_days(y: &[f64], first: usize, per_day: usize) -> Vec<(usize, f64)> {
    let first_day = first.div_ceil(per_day);
    (first_day..y.len() / per_day)
        .filter_map(|d| {
            let (mean, n) = day_mean(&y[d * per_day..(d + 1) * per_day]);
            (n * 10 >= per_day * 9 && mean > 0.0).then_some((d, mean))
        })
        .collect()
}

/// The per-phase median of the day-normalised values over the last complete days, filled,
/// smoothed and normalised to mean 1. Flat when no day is complete or all are zero.
fn daily_profile(y: &[f64], first: usize, per_day: usize, smooth: usize) -> Vec<f64> {
    let days = complete_days(y, first, per_day);
    let days = &days[days.len().saturating_sub(PROFILE_DAYS)..];
    if days.is_empty() {
        return vec![1.0; per_day];
    }
    let mut medians = vec![f64::NAN; per_day];
    let mut column = Vec::with_capacity(days.len());
    for (phase, m) in medians.iter_mut().enumerate() {
        column.clear();
        column.extend(
            days.iter()
                .map(|&(d, mean)| y[d * per_day + phase] / mean)
                .filter(|v| v.is_finite()),
        );
        if let Some(q) = quantile(&mut column, 0.5) {
            *m = q;
        }
    }
    fill_ring(&mut medians);
    let mut smoothed = smooth_circular(&medians, smooth);
    let mean = smoothed.iter().sum::<f64>() / per_day as f64;
    if mean.is_nan() || mean <= 0.0 {
        return vec![1.0; per_day];
    }
    for v in &mut smoothed {
        *v /= mean;
    }
    smoothed
}

/// Per weekday, the median over the last weeks of (that day's mean / mean of all days),
/// normalised to mean 1.
fn weekday_factors(y: &[f64], first: usize, per_day: usize) -> Vec<f64> {
    let days = complete_days(y, first, per_day);
    let days = &days[days.len().saturating_sub(7 * WEEK_FACTOR_WEEKS)..];
    let overall = days.iter().map(|d| d.1).sum::<f64>() / days.len().max(1) as f64;
    let mut factors = vec![f64::NAN; 7];
    for (wd, f) in factors.iter_mut().enumerate() {
        let mut ratios: Vec<f64> = days
            .iter()
            .filter(|(d, _)| d % 7 == wd)
            .map(|(_, m)| m / overall)
            .collect();
        if let Some(q) = quantile(&mut ratios, 0.5) {
            *f = q;
        }
    }
    if factors.iter().all(|f| !f.is_finite()) || overall.is_nan() || overall <= 0.0 {
        return vec![1.0; 7];
    }
    for f in &mut factors {
        if !f.is_finite() {
            *f = 1.0;
        }
    }
    let mean = factors.iter().sum::<f64>() / 7.0;
    factors.iter().map(|f| f / mean).collect()
}

/// Moving average over ±`half` with wrap-around, via prefix sums.
fn smooth_circular(xs: &[f64], half: usize) -> Vec<f64> {
    let n = xs.len();
    let half = half.min(n.saturating_sub(1) / 2);
    if half == 0 {
        return xs.to_vec();
    }
    let width = (2 * half + 1) as f64;
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0);
    for &x in xs {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + x);
    }
    let total = prefix[n];
    (0..n)
        .map(|i| {
            let lo = i as isize - half as isize;
            let hi = i + half + 1;
            let s = if lo < 0 {
                prefix[hi] + total - prefix[(n as isize + lo) as usize]
            } else if hi > n {
                prefix[n] - prefix[lo as usize] + prefix[hi - n]
            } else {
                prefix[hi] - prefix[lo as usize]
            };
            s / width
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::TAU;

    const PER_DAY: usize = 144; // ten-minute steps

    fn spec(daily: bool, weekly: bool) -> Ets {
        Ets {
            per_day: PER_DAY,
            daily,
            weekly,
            alpha: 0.2,
            smooth: 1,
        }
    }

    fn shape(i: usize) -> f64 {
        100.0 + 50.0 * ((i % PER_DAY) as f64 / PER_DAY as f64 * TAU).sin()
    }

    fn weekday(i: usize) -> f64 {
        if (i / PER_DAY) % 7 >= 5 { 0.5 } else { 1.0 }
    }

    /// Series with a known seasonal shape: the forecast must reproduce it.
    #[test]
    fn reproduces_known_seasonal_shapes() {
        // (series, spec, days, truth, tolerance)
        type Truth = fn(usize) -> f64;
        let cases: &[(&str, Ets, usize, Truth, f64)] = &[
            ("daily sine", spec(true, false), 4, shape, 0.03),
            (
                "daily sine with weekends",
                spec(true, true),
                21,
                |i| shape(i) * weekday(i),
                0.05,
            ),
            ("constant", spec(true, true), 3, |_| 42.0, 1e-9),
            ("all zero", spec(true, true), 15, |_| 0.0, 1e-9),
        ];
        for &(name, spec, days, truth, tol) in cases {
            let n = days * PER_DAY;
            let y: Vec<f64> = (0..n).map(truth).collect();
            let fit = spec.fit(&y).unwrap();
            let pts = fit.predict(2 * PER_DAY, 0.95);
            for (k, p) in pts.iter().enumerate() {
                let want = truth(n + k);
                let err = (p.0 - want).abs() / want.max(1.0);
                assert!(err <= tol, "{name}: step {k}: {} vs {want}", p.0);
                assert!(p.1 <= p.0 && p.0 <= p.2, "{name}: {p:?}");
            }
        }
    }

    #[test]
    fn a_burst_does_not_poison_the_profile_and_a_spike_barely_moves_the_level() {
        let n = 5 * PER_DAY;
        let mut y: Vec<f64> = (0..n).map(shape).collect();
        for v in &mut y[PER_DAY + 10..PER_DAY + 20] {
            *v = 5_000.0; // a burst on day 2
        }
        y[n - 2] = 10_000.0; // a single spike one step before the end
        let fit = spec(true, false).fit(&y).unwrap();
        for (k, p) in fit.predict(PER_DAY, 0.9).iter().enumerate() {
            let want = shape(n + k);
            assert!(
                (p.0 - want).abs() / want < 0.05,
                "step {k}: {} vs {want}",
                p.0
            );
        }
    }

    #[test]
    fn a_persistent_shift_is_followed() {
        let mut y = vec![10.0; 300];
        y.extend([30.0; 40]);
        let fit = Ets {
            per_day: 0,
            daily: false,
            weekly: false,
            alpha: 0.3,
            smooth: 0,
        }
        .fit(&y)
        .unwrap();
        assert!((fit.level() - 30.0).abs() < 0.5, "level {}", fit.level());
    }

    #[test]
    fn short_history_drops_periods_and_says_so() {
        let y: Vec<f64> = (0..PER_DAY * 3 / 2).map(shape).collect();
        let fit = spec(true, true).fit(&y).unwrap();
        assert!(!fit.has_daily() && !fit.has_weekly());
        assert!(
            fit.notes()[0].contains("daily period dropped: 1.5 days"),
            "{:?}",
            fit.notes()
        );
        let y: Vec<f64> = (0..PER_DAY * 9).map(shape).collect();
        let fit = spec(true, true).fit(&y).unwrap();
        assert!(fit.has_daily() && !fit.has_weekly());
        assert!(
            fit.notes()[0].contains("weekly period dropped: 9.0 days"),
            "{:?}",
            fit.notes()
        );
    }

    #[test]
    fn gaps_are_skipped_not_read_as_zero() {
        let mut y: Vec<f64> = (0..3 * PER_DAY).map(shape).collect();
        let n = y.len();
        for v in &mut y[n - 30..n - 5] {
            *v = f64::NAN;
        }
        let fit = spec(true, false).fit(&y).unwrap();
        let p = fit.predict(1, 0.9)[0].0;
        assert!(
            (p - shape(n)).abs() / shape(n) < 0.03,
            "{p} vs {}",
            shape(n)
        );
    }

    #[test]
    fn smoothing_wraps_around() {
        let xs = [3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0];
        let s = smooth_circular(&xs, 1);
        assert!(
            (s[0] - 2.0).abs() < 1e-12 && (s[6] - 2.0).abs() < 1e-12,
            "{s:?}"
        );
        assert!((s.iter().sum::<f64>() - 6.0).abs() < 1e-12);
    }
}
