//! When bursts recur: the time since the last burst as a second key of an interval's
//! width, beside the phase of a short cycle.
//!
//! A short cycle says *where* in the cycle bursts may come (minutes :02 to :10 of every
//! half hour); the time since the last one often says *whether* the next may come yet (a
//! batch job every 90 to 150 minutes never bursts half an hour after the last run). A
//! **burst** is a value whose one-step-ahead error, relative to the forecast, is in the
//! upper tail of the held-out errors ([`BURST_TAIL`]). The held-out errors are then grouped
//! by (whole periods from the last burst known when the forecast was made, phase bin), and
//! each group gets a factor: its mean absolute error over the overall mean, shrunk towards
//! the phase bin's own factor. Intervals are then wide where a burst is due and narrow where
//! one just passed. The calibration keeps this only when it makes its intervals narrower.

use serde::{Deserialize, Serialize};

use super::pair::Pair;
use crate::forecast::stats::{phase_bin, quantile};

/// How far back the time since the last burst is told apart: rows of one period each up
/// to this, then one row for all longer (and none seen).
const SPAN: i64 = 4 * 3_600;
/// Rows of one period, at most (a ten-minute cycle's four hours would be 24).
const MAX_ROWS: i64 = 16;

/// The rows of the table for a cycle of `period` seconds: 0 to `rows - 2` periods since
/// the last burst (rounded), then one for all longer.
pub(super) fn rows(period: i64) -> usize {
    (SPAN / period.max(1)).clamp(2, MAX_ROWS) as usize + 1
}
/// How many robust standard deviations (1.4826 × the median absolute deviation) above
/// the median a one-step relative error must be to be a burst: an outlier in the
/// Hampel sense, by a wide margin.
const BURST_SIGMAS: f64 = 5.0;
/// The least relative error that is a burst, whatever the noise: a quarter above the
/// forecast.
const MIN_BURST: f64 = 0.25;
/// Shrinkage of a group's factor towards its phase bin's, in target times.
const SHRINK: f64 = 5.0;

/// Factors per (periods since the last burst, phase bin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Recurrence {
    /// Row-major: `factors[gap * bins + bin]`, [`rows`] rows.
    pub(super) factors: Vec<f64>,
}

impl Recurrence {
    /// The factor for phase `bin` of `bins` of a cycle of `period` seconds when the last
    /// burst known was `gap` rows ago; `None` for a table no fit makes (a damaged model
    /// file).
    pub(super) fn factor(&self, period: i64, bins: usize, bin: usize, gap: usize) -> Option<f64> {
        if self.factors.len() != rows(period) * bins {
            return None;
        }
        self.factors
            .get(gap * bins + bin)
            .copied()
            .filter(|f| f.is_finite() && *f > 0.0)
    }

    /// Fits the table for a cycle of `period` seconds whose phase bins have `phase`
    /// factors, from `pairs` marked by [`mark`], with `size` the scaled absolute error.
    pub(super) fn fit(
        pairs: &[Vec<Pair>],
        period: i64,
        phase: &[f64],
        size: impl Fn(&Pair) -> f64,
    ) -> Self {
        let bins = phase.len();
        let mut acc = vec![(0.0, 0.0); rows(period) * bins];
        let (mut total, mut count) = (0.0, 0.0);
        for p in pairs.iter().flatten() {
            let e = size(p);
            let i = gap(period, p.ts, p.last_burst) * bins + phase_bin(period, bins, p.ts);
            acc[i].0 += e;
            acc[i].1 += 1.0;
            total += e;
            count += 1.0;
        }
        let mean = (total / count).max(f64::MIN_POSITIVE);
        // Each target time is forecast once per horizon: shrink in target times.
        let shrink = SHRINK * pairs.len() as f64;
        let factors = acc
            .iter()
            .enumerate()
            .map(|(i, &(sum, n))| (sum + shrink * phase[i % bins] * mean) / (n + shrink) / mean)
            .collect();
        Self { factors }
    }
}

/// Whether `actual` is a burst against its one-step forecast `predicted`, for `threshold`
/// (a share above the forecast) and the calibration's `floor`.
pub(super) fn is_burst(actual: f64, predicted: f64, floor: f64, threshold: f64) -> bool {
    (actual - predicted) / predicted.max(floor) > threshold
}

/// The burst threshold from held-out one-step pairs: [`BURST_SIGMAS`] robust standard
/// deviations of their relative errors above the median, at least [`MIN_BURST`].
pub(super) fn threshold(one_step: &[Pair], floor: f64) -> Option<f64> {
    let mut errs: Vec<f64> = one_step
        .iter()
        .map(|p| (p.actual - p.predicted) / p.predicted.max(floor))
        .collect();
    let median = quantile(&mut errs, 0.5)?;
    for e in &mut errs {
        *e = (*e - median).abs();
    }
    let mad = quantile(&mut errs, 0.5)?;
    let t = (median + BURST_SIGMAS * 1.4826 * mad).max(MIN_BURST);
    t.is_finite().then_some(t)
}

/// Marks each pair with the newest burst known when it was forecast: pairs `k + 1` steps
/// ahead (`pairs[k]`) were forecast `(k + 1) × step` before their time.
pub(super) fn mark(pairs: &mut [Vec<Pair>], step: i64, floor: f64, threshold: f64) {
    let Some(one) = pairs.first() else { return };
    let mut bursts: Vec<i64> = one
        .iter()
        .filter(|p| is_burst(p.actual, p.predicted, floor, threshold))
        .map(|p| p.ts)
        .collect();
    bursts.sort_unstable();
    for (k, ps) in pairs.iter_mut().enumerate() {
        let ahead = (k as i64 + 1) * step;
        for p in ps {
            let known = bursts.partition_point(|&b| b <= p.ts - ahead);
            p.last_burst = known.checked_sub(1).map(|i| bursts[i]);
        }
    }
}

/// Periods from `last` to `ts`, rounded, as a row of the table. `last` is a burst's last
/// value, so a burst that recurs a whole number of periods after the last one started
/// comes a little less than that many periods after `last`: rounding puts it in that row
/// whatever the bursts' length (up to half a period).
pub(super) fn gap(period: i64, ts: i64, last: Option<i64>) -> usize {
    let open = rows(period) - 1;
    last.map_or(open, |l| {
        let period = period.max(1);
        let periods = ts.saturating_sub(l).max(0).saturating_add(period / 2) / period;
        usize::try_from(periods).map_or(open, |g| g.min(open))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(ts: i64, actual: f64) -> Pair {
        Pair {
            actual,
            predicted: 100.0,
            ts,
            last_burst: None,
        }
    }

    #[test]
    fn a_burst_is_far_above_the_usual_one_step_error() {
        // Errors of -3 to +3 %, and one value three times the forecast.
        let mut one: Vec<Pair> = (0..600)
            .map(|i| pair(i * 60, 100.0 + f64::from((i % 7) as i32 - 3)))
            .collect();
        one[300].actual = 300.0;
        let t = threshold(&one, 1.0).expect("a threshold");
        assert!((MIN_BURST..1.0).contains(&t), "{t}");
        assert!(is_burst(300.0, 100.0, 1.0, t) && !is_burst(104.0, 100.0, 1.0, t));
        // A forecast of 0 is read at the floor, never divided by.
        assert!(is_burst(5.0, 0.0, 1.0, t));
    }

    #[test]
    fn pairs_know_only_the_bursts_before_they_were_forecast() {
        let one = vec![pair(60, 100.0), pair(120, 300.0), pair(180, 100.0)];
        let two = vec![pair(120, 100.0), pair(180, 100.0), pair(240, 100.0)];
        let mut pairs = vec![one, two];
        mark(&mut pairs, 60, 1.0, 0.5);
        let known: Vec<Vec<Option<i64>>> = pairs
            .iter()
            .map(|ps| ps.iter().map(|p| p.last_burst).collect())
            .collect();
        // One step ahead of 180 was forecast at 120, after the burst was seen; two steps
        // ahead of 180 at 60, before it.
        assert_eq!(known[0], vec![None, None, Some(120)]);
        assert_eq!(known[1], vec![None, None, Some(120)]);
    }

    #[test]
    fn gaps_round_to_whole_periods_and_end_in_one_open_row() {
        // A burst that ended at 1_000 and recurs two periods after it started, 8 min
        // before that.
        assert_eq!(gap(1_800, 1_000 + 3_600 - 480, Some(1_000)), 2);
        assert_eq!(gap(1_800, 1_000 + 600, Some(1_000)), 0);
        assert_eq!(rows(1_800), 9);
        assert_eq!(gap(1_800, 1_000 + 100 * 1_800, Some(1_000)), 8);
        assert_eq!(gap(1_800, 1_000, None), 8);
        assert_eq!((rows(600), rows(14_400)), (17, 3));
        assert_eq!(gap(1_800, 0, Some(1_000)), 0); // a burst after the time: never panics
        assert_eq!(gap(0, i64::MAX, Some(i64::MIN)), rows(0) - 1);
    }

    #[test]
    fn a_table_of_the_wrong_size_gives_no_factor() {
        let r = Recurrence {
            factors: vec![2.0; 9 * 30],
        };
        assert_eq!(r.factor(1_800, 30, 3, 4), Some(2.0));
        assert_eq!(r.factor(1_800, 20, 3, 4), None);
        assert_eq!(r.factor(3_600, 30, 3, 4), None);
        let nan = Recurrence {
            factors: vec![f64::NAN; 9 * 30],
        };
        assert_eq!(nan.factor(1_800, 30, 3, 4), None);
    }
}
