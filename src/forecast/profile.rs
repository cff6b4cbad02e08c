//! The first model: the recent level times a robust daily profile.
//!
//! With two or more days of history, the profile is the per-time-of-day median over the
//! last (up to seven) days, smoothed over ±15 minutes; a median keeps one burst from
//! poisoning it. The level is the ratio of the last hour's demand to the profile over the
//! same hour, so today's traffic scales the usual shape. With less history the forecast is
//! flat at the last hour's mean. Intervals come from the empirical ratio of observed to
//! fitted values over the last day (multiplicative, since traffic noise grows with load).

use super::{History, Point, quantile};

const DAY: i64 = 86_400;
/// Days of history the profile looks at, at most.
const PROFILE_DAYS: usize = 7;
/// Seconds of recent history that set the level.
const LEVEL_WINDOW: i64 = 3_600;
/// Half-width (s) of the smoothing window over the profile.
const SMOOTH_HALF: i64 = 900;
/// Seconds of recent history whose residuals size the interval.
const RESIDUAL_WINDOW: i64 = DAY;

/// A fitted level × daily-profile model.
#[derive(Debug, Clone)]
pub struct DailyProfile {
    step: i64,
    last: i64,
    /// Value per phase of the day (phase = (t / step) mod steps-per-day); `None` when the
    /// history is too short, leaving a flat forecast.
    profile: Option<Vec<f64>>,
    /// Multiplier on the profile, or the flat level.
    level: f64,
    /// Observed / fitted ratios over the recent window, for the interval.
    ratios: Vec<f64>,
}

impl DailyProfile {
    /// Fits the model; `history` must hold at least one finite value.
    pub fn fit(history: History<'_>) -> Self {
        let step = history.step;
        let values = history.values;
        let per_day = (DAY % step == 0).then_some((DAY / step) as usize);
        let steps_in = |secs: i64| ((secs / step).max(1)) as usize;
        let level_n = steps_in(LEVEL_WINDOW).min(values.len());
        let recent = &values[values.len() - level_n..];

        let profile = per_day
            .filter(|&p| values.len() >= 2 * p)
            .map(|p| daily_profile(history, p, steps_in(SMOOTH_HALF)));
        let fitted_at = |i: usize| -> f64 {
            match &profile {
                Some(prof) => prof[phase(history.start + i as i64 * step, step, prof.len())],
                None => 1.0,
            }
        };

        // Level: recent demand over the profile's expectation for the same steps.
        let first_recent = values.len() - level_n;
        let (mut obs, mut exp) = (0.0, 0.0);
        for (k, v) in recent.iter().enumerate() {
            if v.is_finite() {
                obs += v;
                exp += fitted_at(first_recent + k);
            }
        }
        let last_finite = values
            .iter()
            .rev()
            .copied()
            .find(|v| v.is_finite())
            .unwrap_or(0.0);
        let level = if exp > 1e-12 {
            obs / exp
        } else if profile.is_some() {
            // The profile expects nothing now: fall back to a flat forecast.
            return Self::flat(history, last_finite);
        } else {
            last_finite
        };
        let level = if profile.is_some() {
            level.clamp(0.05, 20.0)
        } else {
            level
        };

        let res_n = steps_in(RESIDUAL_WINDOW).min(values.len());
        let ratios = (values.len() - res_n..values.len())
            .filter_map(|i| {
                let fit = level * fitted_at(i);
                let v = values[i];
                (v.is_finite() && fit > 1e-12).then_some(v / fit)
            })
            .collect();
        Self {
            step,
            last: history.end(),
            profile,
            level,
            ratios,
        }
    }

    fn flat(history: History<'_>, level: f64) -> Self {
        Self {
            step: history.step,
            last: history.end(),
            profile: None,
            level,
            ratios: Vec::new(),
        }
    }

    /// The model's name, as reported by the API.
    pub fn name(&self) -> &'static str {
        if self.profile.is_some() {
            "daily_profile"
        } else {
            "recent_level"
        }
    }

    /// `steps` points after the last observation with intervals at `level`.
    pub fn predict(&self, steps: usize, level: f64) -> Vec<Point> {
        let mut ratios = self.ratios.clone();
        let tail = (1.0 - level) / 2.0;
        let lo = quantile(&mut ratios, tail).unwrap_or(1.0).min(1.0);
        let hi = quantile(&mut ratios, 1.0 - tail).unwrap_or(1.0).max(1.0);
        (1..=steps as i64)
            .map(|k| {
                let timestamp = self.last + k * self.step;
                let base = match &self.profile {
                    Some(p) => p[phase(timestamp, self.step, p.len())],
                    None => 1.0,
                };
                let value = (self.level * base).max(0.0);
                Point {
                    timestamp,
                    value,
                    lower: value * lo,
                    upper: value * hi,
                }
            })
            .collect()
    }
}

fn phase(ts: i64, step: i64, per_day: usize) -> usize {
    (ts.div_euclid(step)).rem_euclid(per_day as i64) as usize
}

/// Per-phase median over the last whole days, gaps skipped, then a circular moving average.
fn daily_profile(history: History<'_>, per_day: usize, half: usize) -> Vec<f64> {
    let values = history.values;
    let days = (values.len() / per_day).min(PROFILE_DAYS);
    let first = values.len() - days * per_day;
    let mut medians = vec![f64::NAN; per_day];
    let mut column = Vec::with_capacity(days);
    for off in 0..per_day {
        column.clear();
        column.extend(
            (0..days)
                .map(|d| values[first + d * per_day + off])
                .filter(|v| v.is_finite()),
        );
        if let Some(m) = quantile(&mut column, 0.5) {
            let p = phase(
                history.start + (first + off) as i64 * history.step,
                history.step,
                per_day,
            );
            medians[p] = m;
        }
    }
    fill_circular_gaps(&mut medians);
    smooth_circular(&medians, half)
}

/// Replaces NaNs by the nearest finite value before them (circularly); all-NaN becomes 0.
fn fill_circular_gaps(xs: &mut [f64]) {
    let Some(start) = xs.iter().position(|v| v.is_finite()) else {
        xs.fill(0.0);
        return;
    };
    let n = xs.len();
    let mut prev = xs[start];
    for k in 1..n {
        let i = (start + k) % n;
        if xs[i].is_finite() {
            prev = xs[i];
        } else {
            xs[i] = prev;
        }
    }
}

/// Moving average over ±`half` with wrap-around, via prefix sums.
fn smooth_circular(xs: &[f64], half: usize) -> Vec<f64> {
    let n = xs.len();
    let half = half.min((n.saturating_sub(1)) / 2);
    let width = 2 * half + 1;
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0);
    for &x in xs {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + x);
    }
    let total = prefix[n];
    let sum = |a: usize, b: usize| prefix[b] - prefix[a]; // sum of xs[a..b]
    (0..n)
        .map(|i| {
            let lo = i as isize - half as isize;
            let hi = i + half + 1;
            let s = if lo < 0 {
                sum(0, hi) + total - prefix[(n as isize + lo) as usize]
            } else if hi > n {
                sum(lo as usize, n) + prefix[hi - n]
            } else {
                sum(lo as usize, hi)
            };
            s / width as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[f64], step: i64) -> History<'_> {
        History {
            start: 0,
            step,
            values,
        }
    }

    /// A series with a known daily shape: the profile must reproduce it, scaled by today's
    /// level.
    #[test]
    fn follows_the_daily_shape_at_todays_level() {
        let step = 300;
        let per_day = (DAY / step) as usize;
        let shape = |i: usize| {
            100.0 + 50.0 * ((i % per_day) as f64 / per_day as f64 * std::f64::consts::TAU).sin()
        };
        // Three days; the last half day runs at twice the usual level.
        let n = 3 * per_day;
        let values: Vec<f64> = (0..n)
            .map(|i| {
                if i >= n - per_day / 2 {
                    2.0 * shape(i)
                } else {
                    shape(i)
                }
            })
            .collect();
        let m = DailyProfile::fit(hist(&values, step));
        assert_eq!(m.name(), "daily_profile");
        assert!((m.level - 2.0).abs() < 0.1, "level {}", m.level);
        let pts = m.predict(per_day, 0.95);
        for (k, p) in pts.iter().enumerate().step_by(24) {
            let want = 2.0 * shape(n + k);
            assert!(
                (p.value - want).abs() / want < 0.08,
                "step {k}: {} vs {want}",
                p.value
            );
            assert!(p.lower <= p.value && p.value <= p.upper);
        }
    }

    #[test]
    fn a_burst_does_not_poison_the_profile() {
        let step = 600;
        let per_day = (DAY / step) as usize;
        let mut values = vec![10.0; 4 * per_day];
        // A burst in one day, at the time of day the forecast will cover.
        for v in &mut values[per_day + 10..per_day + 20] {
            *v = 1000.0;
        }
        let m = DailyProfile::fit(hist(&values, step));
        let pts = m.predict(per_day, 0.9);
        assert!(
            pts.iter().all(|p| (p.value - 10.0).abs() < 1e-6),
            "{:?}",
            &pts[..20]
        );
    }

    #[test]
    fn short_history_is_flat_at_the_recent_level_and_skips_gaps() {
        let mut values = vec![5.0; 120];
        values.extend([f64::NAN; 10]);
        values.extend([7.0; 60]);
        let m = DailyProfile::fit(hist(&values, 60));
        assert_eq!(m.name(), "recent_level");
        let pts = m.predict(3, 0.95);
        assert!(pts.iter().all(|p| (p.value - 7.0).abs() < 1e-9), "{pts:?}");
    }

    #[test]
    fn all_zero_series_forecasts_zero() {
        let values = vec![0.0; 3 * 288];
        let m = DailyProfile::fit(hist(&values, 300));
        assert!(
            m.predict(10, 0.95)
                .iter()
                .all(|p| p.value == 0.0 && p.upper == 0.0)
        );
    }

    #[test]
    fn interval_widens_with_noise() {
        let calm: Vec<f64> = (0..600).map(|i| 100.0 + (i % 2) as f64).collect();
        let noisy: Vec<f64> = (0..600)
            .map(|i| 100.0 + 40.0 * ((i * 7919 % 13) as f64 - 6.0) / 6.0)
            .collect();
        let width = |v: &[f64]| {
            let p = DailyProfile::fit(hist(v, 60)).predict(1, 0.95)[0];
            p.upper - p.lower
        };
        assert!(width(&noisy) > 5.0 * width(&calm));
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
