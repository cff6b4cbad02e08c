//! Split-conformal prediction intervals from a model's held-out errors, with a width that
//! follows the phase of a short cycle when the errors have one.
//!
//! Errors are scaled by `max(forecast, floor)^p` (p = ½, Poisson-like, or 1,
//! multiplicative). When the scaled errors' size depends on where the target time sits in a
//! cycle shorter than a day (bursts every half hour, a batch job every two hours), found by
//! a one-way analysis of variance over candidate periods (the shortest that explains at
//! least half as much as the best: longer ones also fit its harmonics), each phase bin
//! gets a factor (its
//! mean absolute error over the overall mean, shrunk towards 1) and the errors are divided
//! by it before the quantiles are taken: intervals are then wide where bursts come and
//! narrow between them, at the same overall coverage. The power and the cycle (or none)
//! that give the narrowest intervals win.

use serde::{Deserialize, Serialize};

use super::stats::quantile;

/// Candidate cycle lengths (s): ten minutes to four hours.
const PERIODS: [i64; 10] = [
    600, 900, 1_200, 1_800, 2_400, 3_600, 5_400, 7_200, 10_800, 14_400,
];
/// Phase bins per cycle, at most (fewer when the step is coarser).
const MAX_BINS: i64 = 60;
/// Whole cycles the held-out window must hold for a period to be tried.
const MIN_CYCLES: i64 = 6;
/// The F statistic (between-bin over within-bin variance of the mean absolute error per
/// target time) a cycle must reach to be used. With no cycle it stays near 1 (NASA's and
/// AMZN's held-out windows: at most 2); the Twitter stream's half-hour bursts give 8–28.
const MIN_F: f64 = 4.0;
/// A shorter period is kept over the best-explaining one if its F is at least this share
/// of the best's.
const PARSIMONY: f64 = 0.5;
/// Shrinkage of a bin's factor towards 1, in target times: a bin seen this often is
/// halfway between its own mean and the overall one.
const SHRINK: f64 = 5.0;

/// One held-out forecast: what came, what was forecast, and the time it was for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Pair {
    pub(super) actual: f64,
    pub(super) predicted: f64,
    pub(super) ts: i64,
}

/// A short cycle in the errors' size: phase bins of `period` and each bin's factor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Cycle {
    /// Seconds.
    pub(super) period: i64,
    /// Factor per phase bin (bin `i` covers `[i, i + 1) × period / len` after the period's
    /// start on the Unix clock).
    pub(super) factors: Vec<f64>,
}

impl Cycle {
    fn bin(period: i64, bins: usize, ts: i64) -> usize {
        // phase < period ≤ 4 h and bins ≤ 60: the product cannot overflow.
        let phase = ts.rem_euclid(period);
        ((phase * bins as i64 / period) as usize).min(bins - 1)
    }

    /// How much wider than average the interval for a value at `ts` is (1 for a cycle no
    /// calibration makes, as a damaged model file may hold).
    fn factor(&self, ts: i64) -> f64 {
        let n = self.factors.len();
        let valid = (1..=PERIODS[PERIODS.len() - 1]).contains(&self.period)
            && (1..=MAX_BINS as usize).contains(&n);
        let f = if valid {
            self.factors[Self::bin(self.period, n, ts)]
        } else {
            1.0
        };
        if f.is_finite() && f > 0.0 { f } else { 1.0 }
    }
}

/// Interval calibration: scaled residual quantiles per horizon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Calibration {
    /// Residuals are divided by `max(forecast, floor)^power`.
    power: f64,
    floor: f64,
    /// Lower and upper quantiles per horizon step (index 0 = one step ahead).
    lo: Vec<f64>,
    hi: Vec<f64>,
    /// The short cycle the width follows, if the errors have one.
    #[serde(default)]
    pub(super) cycle: Option<Cycle>,
    /// Share of held-out actuals inside the calibrated interval, over all horizons.
    pub(super) coverage: f64,
    /// Held-out errors it was computed from.
    samples: usize,
}

impl Calibration {
    fn scale(&self, value: f64, ts: i64) -> f64 {
        let cycle = self.cycle.as_ref().map_or(1.0, |c| c.factor(ts));
        scale(value, self.floor, self.power) * cycle
    }

    /// `(lower, upper)` around `value`, forecast for `ts`, `k` steps ahead (1-based).
    pub(super) fn interval(&self, value: f64, k: usize, ts: i64) -> (f64, f64) {
        let n = self.lo.len().min(self.hi.len());
        if n == 0 {
            return (value, value); // no quantiles (a damaged model file): no band
        }
        let i = k.clamp(1, n) - 1;
        // Beyond the calibrated horizon, widen like a random walk.
        let grow = if k > n {
            (k as f64 / n as f64).sqrt()
        } else {
            1.0
        };
        let s = self.scale(value, ts) * grow;
        let lower = (value + self.lo[i] * s).max(0.0).min(value);
        let upper = (value + self.hi[i] * s).max(value);
        (lower, upper)
    }
}

/// Split-conformal quantiles per horizon from held-out pairs (`pairs[k]`: `k + 1` steps
/// ahead) made every `step` seconds; see the module docs.
pub(super) fn calibrate(pairs: &[Vec<Pair>], step: i64, level: f64) -> Option<Calibration> {
    let samples: usize = pairs.iter().map(Vec::len).sum();
    if pairs.iter().any(Vec::is_empty) {
        return None;
    }
    let mean = pairs.iter().flatten().map(|p| p.actual).sum::<f64>() / samples as f64;
    let floor = (0.05 * mean).max(1e-9);
    let mut best: Option<(f64, Calibration)> = None;
    for power in [0.5, 1.0] {
        // Without a cycle, and with one when the errors have one.
        let mut tries = vec![None];
        if let Some(found) = find_cycle(pairs, step, floor, power) {
            tries.push(Some(found));
        }
        for cycle in tries {
            let c = quantiles(pairs, level, floor, power, cycle);
            let width = c.mean_width(pairs);
            if best.as_ref().is_none_or(|(w, _)| width < *w) {
                best = Some((width, c));
            }
        }
    }
    best.map(|(_, c)| c)
}

/// The calibration at `power` (and `cycle`): the quantiles of the scaled errors per
/// horizon, smoothed across horizons and never narrowing as the horizon grows.
fn quantiles(
    pairs: &[Vec<Pair>],
    level: f64,
    floor: f64,
    power: f64,
    cycle: Option<Cycle>,
) -> Calibration {
    let mut c = Calibration {
        power,
        floor,
        lo: Vec::with_capacity(pairs.len()),
        hi: Vec::with_capacity(pairs.len()),
        cycle,
        coverage: 0.0,
        samples: 0,
    };
    let mut errs = Vec::new();
    let (mut lo, mut hi) = (Vec::new(), Vec::new());
    for ps in pairs {
        errs.clear();
        errs.extend(
            ps.iter()
                .map(|p| (p.actual - p.predicted) / c.scale(p.predicted, p.ts)),
        );
        let m = errs.len() as f64;
        // Finite-sample correction of split conformal.
        let tail = ((1.0 - level) / 2.0 * (m + 1.0) / m).min(0.5);
        lo.push(quantile(&mut errs, tail).unwrap_or(0.0));
        hi.push(quantile(&mut errs, 1.0 - tail).unwrap_or(0.0));
    }
    c.lo = monotone(smooth(&lo), f64::min);
    c.hi = monotone(smooth(&hi), f64::max);
    let mut inside = 0usize;
    for (k, ps) in pairs.iter().enumerate() {
        for p in ps {
            let e = (p.actual - p.predicted) / c.scale(p.predicted, p.ts);
            inside += usize::from(c.lo[k] <= e && e <= c.hi[k]);
        }
    }
    c.samples = pairs.iter().map(Vec::len).sum();
    c.coverage = inside as f64 / c.samples.max(1) as f64;
    c
}

impl Calibration {
    /// The mean width of its intervals over `pairs`.
    fn mean_width(&self, pairs: &[Vec<Pair>]) -> f64 {
        let width: f64 = pairs
            .iter()
            .enumerate()
            .flat_map(|(k, ps)| {
                ps.iter()
                    .map(move |p| (self.hi[k] - self.lo[k]) * self.scale(p.predicted, p.ts))
            })
            .sum();
        width / self.samples.max(1) as f64
    }
}

/// The short cycle whose phase explains the most of the scaled errors' size, if one
/// explains enough (F ≥ [`MIN_F`]); with its factors per phase bin.
fn find_cycle(pairs: &[Vec<Pair>], step: i64, floor: f64, power: f64) -> Option<Cycle> {
    let sizes = sizes_per_time(pairs, step, floor, power);
    let n = sizes.len();
    let span = match (sizes.first(), sizes.last()) {
        (Some(a), Some(b)) => b.0 - a.0 + step,
        _ => return None,
    };
    let mean = sizes.iter().map(|s| s.1).sum::<f64>() / n as f64;
    let total: f64 = sizes.iter().map(|s| (s.1 - mean).powi(2)).sum();
    // (F, period, (sum, count) of the sizes per phase bin)
    type Fit = (f64, i64, Vec<(f64, f64)>);
    let mut found: Vec<Fit> = Vec::new();
    for period in PERIODS {
        let bins = (period / step.max(1)).min(MAX_BINS);
        if bins < 4 || span < MIN_CYCLES * period || n <= bins as usize {
            continue;
        }
        let bins = bins as usize;
        let mut acc = vec![(0.0, 0.0); bins];
        for &(ts, size) in &sizes {
            let b = Cycle::bin(period, bins, ts);
            acc[b].0 += size;
            acc[b].1 += 1.0;
        }
        let between: f64 = acc
            .iter()
            .filter(|a| a.1 > 0.0)
            .map(|a| a.1 * (a.0 / a.1 - mean).powi(2))
            .sum();
        let within = (total - between).max(f64::MIN_POSITIVE);
        let f = (between / (bins - 1) as f64) / (within / (n - bins) as f64);
        if f >= MIN_F {
            found.push((f, period, acc));
        }
    }
    // The shortest period that explains at least half as much as the best: a longer one
    // also fits the shorter one's harmonics, and follows a drifting phase worse.
    let top = found.iter().map(|c| c.0).fold(0.0, f64::max);
    let (_, period, acc) = found.into_iter().find(|c| c.0 >= PARSIMONY * top)?;
    let factors = acc
        .iter()
        .map(|&(sum, count)| (sum + SHRINK * mean) / (count + SHRINK) / mean)
        .collect();
    Some(Cycle { period, factors })
}

/// The mean absolute scaled error per target time (over every horizon that forecast it),
/// in time order: one value per time, so that horizons forecasting the same time do not
/// count as independent evidence.
fn sizes_per_time(pairs: &[Vec<Pair>], step: i64, floor: f64, power: f64) -> Vec<(i64, f64)> {
    let step = step.max(1);
    let all = || pairs.iter().flatten();
    let (Some(first), Some(last)) = (all().map(|p| p.ts).min(), all().map(|p| p.ts).max()) else {
        return Vec::new();
    };
    // (sum, count) per step from the first time: pairs are on the step grid.
    let mut acc = vec![(0.0, 0u32); ((last - first) / step) as usize + 1];
    for p in all() {
        let e = (p.actual - p.predicted) / scale(p.predicted, floor, power);
        let a = &mut acc[((p.ts - first) / step) as usize];
        a.0 += e.abs();
        a.1 += 1;
    }
    acc.iter()
        .enumerate()
        .filter(|(_, a)| a.1 > 0)
        .map(|(i, a)| (first + i as i64 * step, a.0 / f64::from(a.1)))
        .collect()
}

/// `max(value, floor)^power` for power ½ or 1, without `powf` (hot in calibration).
fn scale(value: f64, floor: f64, power: f64) -> f64 {
    let v = value.max(floor);
    if power == 1.0 { v } else { v.sqrt() }
}

/// A moving average over ±max(1, k/8) horizons, so neighbouring horizons share evidence.
fn smooth(xs: &[f64]) -> Vec<f64> {
    (0..xs.len())
        .map(|k| {
            let half = (k / 8).max(1);
            let lo = k.saturating_sub(half);
            let hi = (k + half + 1).min(xs.len());
            xs[lo..hi].iter().sum::<f64>() / (hi - lo) as f64
        })
        .collect()
}

/// Running min or max, so intervals never narrow with the horizon.
fn monotone(mut xs: Vec<f64>, pick: fn(f64, f64) -> f64) -> Vec<f64> {
    for k in 1..xs.len() {
        xs[k] = pick(xs[k], xs[k - 1]);
    }
    xs
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: i64 = 60;
    const H: usize = 15;

    /// Uniform in [-1, 1), deterministic (splitmix64's finaliser).
    fn noise(i: u64) -> f64 {
        let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// Two days of held-out pairs at a level of 100: errors of ±10, and when `bursts`, an
    /// extra 0 to 200 in minutes :02 to :09 of every half hour.
    fn pairs(bursts: bool, from: u64) -> Vec<Vec<Pair>> {
        let start = 1_700_000_000 - 1_700_000_000 % 86_400;
        (0..H)
            .map(|k| {
                (0..2 * 1_440)
                    .map(|i| {
                        let ts = start + (i + k as i64) * STEP;
                        let seed = from + (i as u64) * 31 + k as u64;
                        let minute = ts.rem_euclid(1_800) / 60;
                        let burst = if bursts && (2..10).contains(&minute) {
                            100.0 * (noise(seed ^ 0xb0) + 1.0)
                        } else {
                            0.0
                        };
                        Pair {
                            actual: 100.0 + 10.0 * noise(seed) + burst,
                            predicted: 100.0,
                            ts,
                        }
                    })
                    .collect()
            })
            .collect()
    }

    fn coverage(c: &Calibration, pairs: &[Vec<Pair>]) -> f64 {
        let (mut inside, mut all) = (0usize, 0usize);
        for (k, ps) in pairs.iter().enumerate() {
            for p in ps {
                let (lo, hi) = c.interval(p.predicted, k + 1, p.ts);
                inside += usize::from(lo <= p.actual && p.actual <= hi);
                all += 1;
            }
        }
        inside as f64 / all as f64
    }

    #[test]
    fn half_hourly_bursts_widen_the_interval_only_where_they_come() {
        let held = pairs(true, 0);
        let c = calibrate(&held, STEP, 0.95).expect("calibrated");
        let cycle = c.cycle.as_ref().expect("a cycle is found");
        // Two hours fit the half-hour bursts too; the shortest period that fits is kept.
        assert_eq!(cycle.period, 1_800);
        let at = |minute: i64| c.interval(100.0, 1, 1_700_001_000 / 1_800 * 1_800 + minute * 60);
        let (burst, calm) = (at(5), at(20));
        assert!(
            burst.1 - burst.0 > 4.0 * (calm.1 - calm.0),
            "burst {burst:?}, calm {calm:?}"
        );
        // Calibrated on other days' draws of the same process: still about the level.
        let fresh = coverage(&c, &pairs(true, 1 << 40));
        assert!((0.93..=0.97).contains(&fresh), "coverage {fresh}");
        let plain = quantiles(&held, 0.95, c.floor, c.power, None);
        assert!(c.mean_width(&held) < 0.8 * plain.mean_width(&held));
    }

    #[test]
    fn errors_without_a_cycle_get_one_width_at_every_phase() {
        let held = pairs(false, 7);
        let c = calibrate(&held, STEP, 0.95).expect("calibrated");
        assert_eq!(c.cycle, None);
        let fresh = coverage(&c, &pairs(false, 1 << 41));
        assert!((0.93..=0.97).contains(&fresh), "coverage {fresh}");
    }

    #[test]
    fn a_damaged_cycle_or_calibration_from_a_file_widens_nothing_and_never_panics() {
        let mut c = calibrate(&pairs(true, 5), STEP, 0.95).expect("calibrated");
        let plain = quantiles(&pairs(true, 5), 0.95, c.floor, c.power, None);
        for (period, factors) in [
            (0, vec![2.0; 30]),
            (-1_800, vec![2.0; 30]),
            (i64::MAX, vec![2.0; 30]),
            (1_800, Vec::new()),
            (1_800, vec![f64::NAN; 30]),
            (1_800, vec![2.0; 100_000]),
        ] {
            c.cycle = Some(Cycle { period, factors });
            let c = Calibration {
                lo: plain.lo.clone(),
                hi: plain.hi.clone(),
                ..c.clone()
            };
            assert_eq!(
                c.interval(100.0, 3, 1_700_000_120),
                plain.interval(100.0, 3, 0)
            );
        }
        c.lo.clear();
        assert_eq!(c.interval(100.0, 3, 0), (100.0, 100.0));
    }

    #[test]
    fn a_cycle_needs_six_whole_periods_of_history() {
        let mut held = pairs(true, 3);
        for ps in &mut held {
            ps.truncate(100); // 100 minutes: no candidate period fits six times
        }
        let c = calibrate(&held, STEP, 0.95).expect("calibrated");
        assert!(c.cycle.as_ref().is_none_or(|c| c.period * 6 <= 100 * STEP));
    }
}
