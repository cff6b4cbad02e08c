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

use super::stats::{normal_cdf, normal_quantile, quantile};

mod bursts;
mod pair;

use bursts::Recurrence;
pub(super) use pair::Pair;

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
/// Where regimes of the cycle factor start, as shares of the held-out forecasts: the
/// calmest half, then the next quarter, the next 15%, and the top tenth in two halves are
/// calibrated apart (a regime needs [`MIN_REGIME`] errors per horizon).
const REGIME_SHARES: [f64; 4] = [0.5, 0.75, 0.9, 0.95];
/// Shares of the way from the point forecast to the upper bound whose quantiles are kept
/// (see [`Calibration::planned`]).
const LADDER: [f64; 3] = [0.25, 0.5, 0.75];
/// Held-out errors a regime needs at a horizon to be calibrated on its own.
const MIN_REGIME: usize = 30;
/// Shrinkage of a bin's factor towards 1, in target times: a bin seen this often is
/// halfway between its own mean and the overall one.
const SHRINK: f64 = 5.0;

/// A short cycle in the errors' size: phase bins of `period` and each bin's factor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Cycle {
    /// Seconds.
    pub(super) period: i64,
    /// Factor per phase bin (bin `i` covers `[i, i + 1) × period / len` after the period's
    /// start on the Unix clock).
    pub(super) factors: Vec<f64>,
    /// When the errors' size also follows the time since the last burst: factors per
    /// (periods since it, phase bin).
    #[serde(default)]
    recurrence: Option<Recurrence>,
}

impl Cycle {
    fn bin(period: i64, bins: usize, ts: i64) -> usize {
        super::stats::phase_bin(period, bins, ts)
    }

    /// How much wider than average the interval for a value at `ts` is when the last burst
    /// known was at `last` (1 for a cycle no calibration makes, as a damaged model file may
    /// hold).
    fn factor(&self, ts: i64, last: Option<i64>) -> f64 {
        let n = self.factors.len();
        let valid = (1..=PERIODS[PERIODS.len() - 1]).contains(&self.period)
            && (1..=MAX_BINS as usize).contains(&n);
        let f = if valid {
            let bin = Self::bin(self.period, n, ts);
            let gap = bursts::gap(self.period, ts, last);
            self.recurrence
                .as_ref()
                .and_then(|r| r.factor(self.period, n, bin, gap))
                .unwrap_or(self.factors[bin])
        } else {
            1.0
        };
        if f.is_finite() && f > 0.0 { f } else { 1.0 }
    }
}

/// Interval calibration: scaled residual quantiles per horizon, per regime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Calibration {
    /// Residuals are divided by `max(forecast, floor)^power` (and the cycle's factor).
    power: f64,
    floor: f64,
    /// Lower and upper quantiles per horizon step (index 0 = one step ahead), of the
    /// forecasts below the first regime.
    lo: Vec<f64>,
    hi: Vec<f64>,
    /// Upper quantiles per horizon step at the [`LADDER`]'s shares (empty in a model saved
    /// before there were any: plans are then linear in the share).
    #[serde(default)]
    mid: Vec<[f64; 3]>,
    /// Quantiles of the forecasts whose cycle factor is larger, by rising factor: each
    /// regime is calibrated on its own errors (Mondrian conformal), so a regime where
    /// errors are skewed (bursts come or not) gets its own shape, not a scaled copy.
    #[serde(default)]
    regimes: Vec<Regime>,
    /// The short cycle the width follows, if the errors have one.
    #[serde(default)]
    pub(super) cycle: Option<Cycle>,
    /// A value more than this share above its one-step forecast is a burst.
    #[serde(default)]
    burst_threshold: Option<f64>,
    /// Share of held-out actuals inside the calibrated interval, over all horizons.
    pub(super) coverage: f64,
    /// Held-out errors it was computed from.
    samples: usize,
}

/// The quantiles for forecasts whose cycle factor is at least `from`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Regime {
    from: f64,
    lo: Vec<f64>,
    hi: Vec<f64>,
    #[serde(default)]
    mid: Vec<[f64; 3]>,
}

/// One regime's quantiles per horizon step.
struct Quantiles {
    lo: Vec<f64>,
    hi: Vec<f64>,
    mid: Vec<[f64; 3]>,
}

impl Calibration {
    /// The cycle's factor for a value at `ts` when the newest burst seen was `last_burst`.
    fn factor(&self, ts: i64, last_burst: Option<i64>) -> f64 {
        self.cycle
            .as_ref()
            .map_or(1.0, |c| c.factor(ts, last_burst))
    }

    /// The lower and upper scaled quantiles at horizon index `i` (< `lo.len()`) for a
    /// forecast with cycle factor `f`; a regime of the wrong length (a damaged file) is
    /// passed over.
    fn band(&self, i: usize, f: f64) -> (f64, f64) {
        let (lo, hi, _) = self.regime(f);
        (lo[i], hi[i])
    }

    /// The quantiles of the regime a forecast with cycle factor `f` falls in.
    fn regime(&self, f: f64) -> (&[f64], &[f64], &[[f64; 3]]) {
        let n = self.lo.len();
        self.regimes
            .iter()
            .rev()
            .find(|r| f >= r.from && r.lo.len() == n && r.hi.len() == n)
            .map_or((&self.lo, &self.hi, &self.mid), |r| (&r.lo, &r.hi, &r.mid))
    }

    /// The load to plan for at `share` of the way from `value` (forecast for `ts`, `k`
    /// steps ahead, the newest burst at `last_burst`) to its upper bound, as a quantile:
    /// share 1 is the upper bound, and a share below it the quantile a normal error would
    /// put there (0.5: Φ(½ z)), read from the held-out errors of the forecast's regime. A
    /// bimodal regime (a burst comes or not) is then planned for whole or not at all,
    /// where a straight share would plan part of every burst. Above 1, the share scales
    /// the upper bound's distance.
    pub(super) fn planned(
        &self,
        value: f64,
        k: usize,
        ts: i64,
        last_burst: Option<i64>,
        share: f64,
    ) -> f64 {
        let (_, upper) = self.interval(value, k, ts, last_burst);
        let linear = value + share * (upper - value);
        let n = self.lo.len();
        let damaged = self.hi.len() != n; // a model file's: `interval` gives no band
        if n == 0 || damaged || share >= 1.0 || share.is_nan() || share <= 0.0 {
            return linear;
        }
        let f = self.factor(ts, last_burst);
        let (_, hi, mid) = self.regime(f);
        let i = k.clamp(1, n) - 1;
        let Some(m) = mid.get(i).filter(|_| mid.len() == n) else {
            return linear; // a model saved without the ladder
        };
        let knots = [0.0, m[0], m[1], m[2], hi[i]];
        let x = share * (knots.len() - 1) as f64;
        let j = (x.floor() as usize).min(knots.len() - 2);
        let offset = knots[j] + (x - j as f64) * (knots[j + 1] - knots[j]);
        let grow = if k > n {
            (k as f64 / n as f64).sqrt()
        } else {
            1.0
        };
        let planned = value + offset * scale(value, self.floor, self.power) * f * grow;
        planned.clamp(value, upper.max(value))
    }

    /// Whether `actual` is a burst against its one-step forecast `predicted` (tracked
    /// whether or not this calibration's width follows the time since one: the next may).
    pub(super) fn is_burst(&self, actual: f64, predicted: f64) -> bool {
        self.burst_threshold
            .is_some_and(|t| bursts::is_burst(actual, predicted, self.floor, t))
    }

    /// `(lower, upper)` around `value`, forecast for `ts`, `k` steps ahead (1-based), when
    /// the newest burst seen was at `last_burst`.
    pub(super) fn interval(
        &self,
        value: f64,
        k: usize,
        ts: i64,
        last_burst: Option<i64>,
    ) -> (f64, f64) {
        if self.lo.is_empty() || self.hi.len() != self.lo.len() {
            return (value, value); // no quantiles (a damaged model file): no band
        }
        let n = self.lo.len();
        let i = k.clamp(1, n) - 1;
        // Beyond the calibrated horizon, widen like a random walk.
        let grow = if k > n {
            (k as f64 / n as f64).sqrt()
        } else {
            1.0
        };
        let f = self.factor(ts, last_burst);
        let (lo, hi) = self.band(i, f);
        let s = scale(value, self.floor, self.power) * f * grow;
        let lower = (value + lo * s).max(0.0).min(value);
        let upper = (value + hi * s).max(value);
        (lower, upper)
    }
}

/// Split-conformal quantiles per horizon from held-out pairs (`pairs[k]`: `k + 1` steps
/// ahead) made every `step` seconds; see the module docs. Marks each pair with the last
/// burst known when it was forecast.
pub(super) fn calibrate(pairs: &mut [Vec<Pair>], step: i64, level: f64) -> Option<Calibration> {
    let samples: usize = pairs.iter().map(Vec::len).sum();
    if pairs.iter().any(Vec::is_empty) {
        return None;
    }
    let mean = pairs.iter().flatten().map(|p| p.actual).sum::<f64>() / samples as f64;
    let floor = (0.05 * mean).max(1e-9);
    let threshold = bursts::threshold(&pairs[0], floor);
    if let Some(t) = threshold {
        bursts::mark(pairs, step, floor, t);
    }
    let pairs = &*pairs;
    let mut best: Option<(f64, Calibration)> = None;
    for power in [0.5, 1.0] {
        // Without a cycle, and with one when the errors have one: by phase alone, and by
        // phase and the time since the last burst.
        let mut tries = vec![None];
        if let Some(found) = find_cycle(pairs, step, floor, power) {
            if threshold.is_some() {
                let size =
                    |p: &Pair| (p.actual - p.predicted).abs() / scale(p.predicted, floor, power);
                let r = Recurrence::fit(pairs, found.period, &found.factors, size);
                tries.push(Some(Cycle {
                    recurrence: Some(r),
                    ..found.clone()
                }));
            }
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
    best.map(|(_, c)| Calibration {
        burst_threshold: threshold,
        ..c
    })
}

/// The calibration at `power` (and `cycle`): the quantiles of the scaled errors per
/// horizon and regime, smoothed across horizons and never narrowing as the horizon grows.
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
        lo: Vec::new(),
        hi: Vec::new(),
        mid: Vec::new(),
        regimes: Vec::new(),
        burst_threshold: None,
        cycle,
        coverage: 0.0,
        samples: pairs.iter().map(Vec::len).sum(),
    };
    // (factor, scaled error) per pair, per horizon.
    let scored: Vec<Vec<(f64, f64)>> = pairs
        .iter()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let f = c.factor(p.ts, p.last_burst);
                    let s = scale(p.predicted, floor, power) * f;
                    (f, (p.actual - p.predicted) / s)
                })
                .collect()
        })
        .collect();
    let bounds = if c.cycle.is_some() {
        regime_bounds(&scored)
    } else {
        Vec::new()
    };
    let first = bounds.first().copied().unwrap_or(f64::INFINITY);
    let q = regime_quantiles(&scored, level, |f| f < first);
    (c.lo, c.hi, c.mid) = (q.lo, q.hi, q.mid);
    for (j, &from) in bounds.iter().enumerate() {
        let upto = bounds.get(j + 1).copied().unwrap_or(f64::INFINITY);
        let q = regime_quantiles(&scored, level, |f| from <= f && f < upto);
        c.regimes.push(Regime {
            from,
            lo: q.lo,
            hi: q.hi,
            mid: q.mid,
        });
    }
    let inside: usize = scored
        .iter()
        .enumerate()
        .flat_map(|(k, ps)| ps.iter().map(move |&(f, e)| (k, f, e)))
        .filter(|&(k, f, e)| {
            let (lo, hi) = c.band(k, f);
            lo <= e && e <= hi
        })
        .count();
    c.coverage = inside as f64 / c.samples.max(1) as f64;
    c
}

/// Where regimes start: the factors at [`REGIME_SHARES`] of the forecasts, each above the
/// last.
fn regime_bounds(scored: &[Vec<(f64, f64)>]) -> Vec<f64> {
    let mut factors: Vec<f64> = scored.iter().flatten().map(|s| s.0).collect();
    let mut bounds: Vec<f64> = Vec::new();
    for share in REGIME_SHARES {
        let Some(b) = quantile(&mut factors, share) else {
            break;
        };
        let above = bounds.last().copied().unwrap_or(f64::NEG_INFINITY);
        if b > above && factors.iter().any(|&f| f < b) {
            bounds.push(b);
        }
    }
    bounds
}

/// Split-conformal lower and upper quantiles per horizon of the scaled errors whose factor
/// is `within` (all of the horizon's, when it has fewer than [`MIN_REGIME`]), and the
/// upper quantiles at the [`LADDER`]'s shares.
fn regime_quantiles(
    scored: &[Vec<(f64, f64)>],
    level: f64,
    within: impl Fn(f64) -> bool,
) -> Quantiles {
    // The quantile a normal error puts at each share of the way to the upper bound.
    let z = normal_quantile(0.5 + level / 2.0);
    let levels = LADDER.map(|s| normal_cdf(s * z));
    let mut errs = Vec::new();
    let (mut lo, mut hi) = (Vec::new(), Vec::new());
    let mut mid: [Vec<f64>; 3] = Default::default();
    for ps in scored {
        errs.clear();
        errs.extend(ps.iter().filter(|s| within(s.0)).map(|s| s.1));
        if errs.len() < MIN_REGIME {
            errs.clear();
            errs.extend(ps.iter().map(|s| s.1));
        }
        let m = errs.len() as f64;
        // Finite-sample correction of split conformal.
        let tail = ((1.0 - level) / 2.0 * (m + 1.0) / m).min(0.5);
        lo.push(quantile(&mut errs, tail).unwrap_or(0.0));
        hi.push(quantile(&mut errs, 1.0 - tail).unwrap_or(0.0));
        for (m, l) in mid.iter_mut().zip(levels) {
            m.push(quantile(&mut errs, l).unwrap_or(0.0));
        }
    }
    let hi = monotone(smooth(&hi), f64::max);
    let mid = mid.map(|m| monotone(smooth(&m), f64::max));
    // Never below the point forecast, never above the upper bound, rising with the share.
    let mid = (0..hi.len())
        .map(|i| {
            let mut rung = [0.0; 3];
            let mut below = 0.0;
            for (j, r) in rung.iter_mut().enumerate() {
                *r = mid[j][i].clamp(below, hi[i].max(below));
                below = *r;
            }
            rung
        })
        .collect();
    Quantiles {
        lo: monotone(smooth(&lo), f64::min),
        hi,
        mid,
    }
}

impl Calibration {
    /// The mean width of its intervals over `pairs`.
    fn mean_width(&self, pairs: &[Vec<Pair>]) -> f64 {
        let width: f64 = pairs
            .iter()
            .enumerate()
            .flat_map(|(k, ps)| {
                ps.iter().map(move |p| {
                    let f = self.factor(p.ts, p.last_burst);
                    let (lo, hi) = self.band(k, f);
                    (hi - lo) * scale(p.predicted, self.floor, self.power) * f
                })
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
    Some(Cycle {
        period,
        factors,
        recurrence: None,
    })
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
mod tests;
