//! The load to plan for when bursts recur: a rolling baseline times a quantile of what
//! followed such a baseline before, at the same phase and the same time since a burst.
//!
//! When a target's errors follow a cycle shorter than a day (the calibration found one),
//! its load often comes in bursts a smooth model cannot place: several times the normal
//! load for a few minutes, at a recurring phase, but not every cycle. Scaling a calibrated
//! error by the phase plans part of every burst at a lean setting and too little of the
//! likely ones at a safe one. For such a target the load to plan for is read from its
//! own history instead:
//!
//! - the **baseline** is the median of the last hour of values (a burst hardly moves it);
//! - every value of the history, divided by the baseline at each of the origins up to
//!   [`FIT_STEPS`] before it, is grouped by (the value's phase bin in the cycle, the time
//!   from the last burst to the origin, in half periods up to [`SPAN`]);
//! - each group keeps the quantiles of its ratios at [`LEVELS`]; one seen fewer than
//!   [`MIN_GROUP`] times gives way to its phase bin's over every time since a burst, then
//!   to all ratios.
//!
//! A fit needs at least a day and 24 cycles of history ([`MIN_SPAN`], [`MIN_FIT_CYCLES`]):
//! a cycle found in a few hours of errors may be chance.
//!
//! The plan at quantile `q` is the baseline times the group's `q`-quantile: where a burst
//! is likely it is planned whole (or not at all, below its probability); where one has just
//! passed it is not. A **burst** starts when a value reaches [`BURST`] times the baseline
//! and ends when one falls below [`CALM`] times it.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::stats::{phase_bin, quantile};

/// The baseline is the median of the values of this many seconds.
const BASE_SECONDS: i64 = 3_600;
/// Values in the baseline's window, at most.
const MAX_WINDOW: usize = 240;
/// The longest cycle planned for (s): the calibration's longest.
const MAX_PERIOD: i64 = 4 * 3_600;
/// A value this many times the baseline starts a burst.
const BURST: f64 = 2.0;
/// A burst ends with a value below this many times the baseline.
const CALM: f64 = 1.3;
/// The time since the last burst is told apart up to this (s); longer, and none seen, share
/// one row.
const SPAN: i64 = 4 * 3_600;
/// Rows of time since the last burst, at most (before the open one).
const MAX_ROWS: i64 = 16;
/// Phase bins per cycle, at most.
const MAX_BINS: i64 = 60;
/// Ratios a group needs to be used on its own.
const MIN_GROUP: usize = 20;
/// Steps ahead of an origin whose values are counted (further points of a forecast use
/// the same groups: a ratio depends on the phase, not on how far ahead).
pub(super) const FIT_STEPS: usize = 15;
/// The history fitted on, at most (s).
const FIT_SPAN: i64 = 28 * 86_400;
/// The history a fit needs, at least: a day, and this many cycles. A cycle found in a few
/// hours of errors may be chance, and a few hours hold too few of each group.
const MIN_SPAN: i64 = 86_400;
const MIN_FIT_CYCLES: i64 = 24;
/// The quantile levels kept per group; a plan between two is interpolated, outside them
/// clamped.
const LEVELS: [f64; 16] = [
    0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.995, 0.999,
];

/// The recent values and bursts: what a plan is made from, kept up to date value by value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tracker {
    /// The newest values (finite, non-negative), at most `len`.
    recent: VecDeque<f64>,
    len: usize,
    /// When the newest burst started.
    last_burst: Option<i64>,
    in_burst: bool,
}

impl Tracker {
    fn new(step: i64) -> Self {
        let len = (BASE_SECONDS / step.max(1)).clamp(5, MAX_WINDOW as i64) as usize;
        Self {
            recent: VecDeque::with_capacity(len),
            len,
            last_burst: None,
            in_burst: false,
        }
    }

    /// Takes the value at `ts`; anything but a finite non-negative value is a gap.
    fn feed(&mut self, v: f64, ts: i64) {
        if !usable(v) {
            return;
        }
        self.push(v);
        if let Some(b) = self.baseline() {
            self.mark(v, ts, b);
        }
    }

    /// Adds `v` (usable) to the window; returns the value it pushed out.
    fn push(&mut self, v: f64) -> Option<f64> {
        let out = (self.recent.len() >= self.len.max(1))
            .then(|| self.recent.pop_front())
            .flatten();
        self.recent.push_back(v);
        out
    }

    /// Starts or ends a burst at `ts` by `v` against the baseline `b`.
    fn mark(&mut self, v: f64, ts: i64, b: f64) {
        if v >= BURST * b && !self.in_burst {
            self.last_burst = Some(ts);
            self.in_burst = true;
        } else if v < CALM * b {
            self.in_burst = false;
        }
    }

    /// Whether the window holds enough values for a baseline: half of it.
    fn enough(&self) -> bool {
        self.recent.len() * 2 >= self.len
    }

    /// The median of the recent values, once at least half the window is seen and it is
    /// positive.
    fn baseline(&self) -> Option<f64> {
        if !self.enough() {
            return None;
        }
        let mut values: Vec<f64> = self.recent.iter().copied().collect();
        quantile(&mut values, 0.5).filter(|b| *b > 0.0)
    }
}

/// A target's plan for recurring bursts; see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Recurring {
    /// The cycle's length (s) and the series' step (s).
    period: i64,
    step: i64,
    bins: usize,
    rows: usize,
    /// The quantiles at [`LEVELS`] per group: `rows × bins` (row-major), then one per phase
    /// bin, then one over all; empty for a group seen too rarely. Single precision: a
    /// ratio needs no more, and a bursty target's model is half the size.
    table: Vec<Vec<f32>>,
    tracker: Tracker,
}

impl Recurring {
    /// Fits on `y` (values `step` seconds apart, `y[0]` at `base`) for a cycle of `period`
    /// seconds; `None` when the cycle has too few steps to bin or nothing is seen.
    pub(super) fn fit(y: &[f64], base: i64, step: i64, period: i64) -> Option<Self> {
        let bins = (period / step.max(1)).min(MAX_BINS);
        if bins < 4 || !(1..=MAX_PERIOD).contains(&period) {
            return None;
        }
        let bins = bins as usize;
        let half = (period / 2).max(step);
        let rows = (SPAN / half).clamp(1, MAX_ROWS) as usize + 1;
        let mut fit = Self {
            period,
            step,
            bins,
            rows,
            table: Vec::new(),
            tracker: Tracker::new(step),
        };
        let mut groups = vec![Vec::new(); rows * bins];
        let from = y.len().saturating_sub((FIT_SPAN / step.max(1)) as usize);
        let seen = y[from..].iter().filter(|v| usable(**v)).count() as i64;
        if seen * step < MIN_SPAN.max(MIN_FIT_CYCLES * period) {
            return None;
        }
        let mut window = Sorted::default();
        for (i, &v) in y.iter().enumerate().skip(from) {
            let ts = base + i as i64 * step;
            if usable(v) {
                window.replace(fit.tracker.push(v), v);
            }
            let Some(b) = window.median().filter(|b| fit.tracker.enough() && *b > 0.0) else {
                continue;
            };
            if usable(v) {
                fit.tracker.mark(v, ts, b);
            }
            let row = fit.row(ts);
            for (h, &later) in y.iter().enumerate().skip(i + 1).take(FIT_STEPS) {
                if usable(later) {
                    let bin = phase_bin(period, bins, base + h as i64 * step);
                    groups[row * bins + bin].push(later / b);
                }
            }
        }
        fit.table = ladders(groups, bins);
        fit.table
            .last()
            .is_some_and(|all| !all.is_empty())
            .then_some(fit)
    }

    /// The cycle's length (s).
    pub(super) fn period(&self) -> i64 {
        self.period
    }

    /// Takes the value at `ts` (after the last one fed).
    pub(super) fn feed(&mut self, v: f64, ts: i64) {
        if self.valid() {
            self.tracker.feed(v, ts);
        }
    }

    /// The load to plan for at each of `targets` (timestamps after the newest value, at
    /// `origin`) at quantile `q`; `None` without a baseline yet, or with a table or state
    /// no fit makes (a damaged model file's).
    pub(super) fn plan(&self, origin: i64, targets: &[i64], q: f64) -> Option<Vec<f64>> {
        if !self.valid() {
            return None;
        }
        let b = self.tracker.baseline()?;
        let (bins, rows) = (self.bins, self.rows);
        let row = self.row(origin);
        targets
            .iter()
            .map(|&ts| {
                let bin = phase_bin(self.period, bins, ts);
                [row * bins + bin, rows * bins + bin, (rows + 1) * bins]
                    .iter()
                    .find_map(|&g| self.table.get(g).filter(|l| l.len() == LEVELS.len()))
                    .map(|ladder| b * at(ladder, q))
                    .filter(|v| v.is_finite() && *v >= 0.0)
            })
            .collect()
    }

    /// Whether its shape is one a fit makes (a model file may have been edited).
    fn valid(&self) -> bool {
        (1..=MAX_PERIOD).contains(&self.period)
            && self.step > 0
            && (4..=MAX_BINS as usize).contains(&self.bins)
            && (2..=MAX_ROWS as usize + 1).contains(&self.rows)
            && self.table.len() == (self.rows + 1) * self.bins + 1
            && (1..=MAX_WINDOW).contains(&self.tracker.len)
    }

    /// The row of the time from the last burst to `ts`.
    fn row(&self, ts: i64) -> usize {
        let open = self.rows.saturating_sub(1);
        let half = (self.period / 2).max(self.step).max(1);
        self.tracker.last_burst.map_or(open, |l| {
            usize::try_from(ts.saturating_sub(l).max(0) / half).map_or(open, |r| r.min(open))
        })
    }
}

/// The quantiles at [`LEVELS`] of each group with enough ratios, then of each phase bin
/// over every row, then of all.
fn ladders(groups: Vec<Vec<f64>>, bins: usize) -> Vec<Vec<f32>> {
    let mut per_bin = vec![Vec::new(); bins];
    let mut table: Vec<Vec<f32>> = Vec::with_capacity(groups.len() + bins + 1);
    for (g, ratios) in groups.into_iter().enumerate() {
        per_bin[g % bins].extend_from_slice(&ratios);
        table.push(ladder(ratios));
    }
    let all: Vec<f64> = per_bin.iter().flatten().copied().collect();
    table.extend(per_bin.into_iter().map(ladder));
    table.push(ladder(all));
    table
}

/// The quantiles at [`LEVELS`] of `ratios`; empty when there are fewer than [`MIN_GROUP`].
/// Each rank needed is selected in what lies above the one before, not sorted: a fit
/// builds a ladder for every group, every phase bin and all ratios.
fn ladder(mut ratios: Vec<f64>) -> Vec<f32> {
    if ratios.len() < MIN_GROUP {
        return Vec::new();
    }
    let last = (ratios.len() - 1) as f64;
    let mut placed = 0;
    let mut rank = |r: usize, ratios: &mut [f64]| {
        if r >= placed {
            ratios[placed..].select_nth_unstable_by(r - placed, f64::total_cmp);
            placed = r + 1;
        }
        ratios[r]
    };
    LEVELS
        .iter()
        .map(|&q| {
            let pos = q * last;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            let lo_v = rank(lo, &mut ratios);
            let hi_v = rank(hi, &mut ratios);
            (lo_v + (hi_v - lo_v) * (pos - lo as f64)) as f32
        })
        .collect()
}

/// A value a plan can use: finite and non-negative; anything else is a gap.
fn usable(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}

/// The baseline's window kept sorted while a fit walks the history: its median in a
/// binary search a value, not a selection.
#[derive(Debug, Default)]
struct Sorted(Vec<f64>);

impl Sorted {
    /// Removes `out` (when the window pushed one out) and inserts `v`.
    fn replace(&mut self, out: Option<f64>, v: f64) {
        if let Some(o) = out {
            let i = self.0.partition_point(|x| x.total_cmp(&o).is_lt());
            self.0.remove(i);
        }
        let i = self.0.partition_point(|x| x.total_cmp(&v).is_lt());
        self.0.insert(i, v);
    }

    /// The median, interpolated as [`quantile`] does.
    fn median(&self) -> Option<f64> {
        let last = self.0.len().checked_sub(1)?;
        let pos = 0.5 * last as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        Some(self.0[lo] + (self.0[hi] - self.0[lo]) * (pos - lo as f64))
    }
}

/// The value of `ladder` (quantiles at [`LEVELS`]) at level `q`, interpolated; clamped to
/// the ends.
fn at(ladder: &[f32], q: f64) -> f64 {
    let j = LEVELS.partition_point(|&l| l <= q);
    if j == 0 {
        return f64::from(ladder[0]);
    }
    if j == LEVELS.len() {
        return f64::from(ladder[j - 1]);
    }
    let (l0, l1) = (LEVELS[j - 1], LEVELS[j]);
    let (a, b) = (f64::from(ladder[j - 1]), f64::from(ladder[j]));
    a + (b - a) * (q - l0) / (l1 - l0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: i64 = 60;
    const HALF_HOUR: i64 = 1_800;

    /// Minutes at about 100 with a burst of 400 at minutes 2 to 7 of every hour: at that
    /// phase of the half hour, every other cycle bursts.
    fn minute(i: usize) -> f64 {
        if (2..8).contains(&(i % 60)) {
            400.0
        } else {
            100.0 + (i % 7) as f64
        }
    }

    fn fitted(len: usize) -> Recurring {
        let y: Vec<f64> = (0..len).map(minute).collect();
        Recurring::fit(&y, 0, STEP, HALF_HOUR).expect("a cycle of 30 bins fits")
    }

    fn targets(from: usize, n: usize) -> Vec<i64> {
        (from..from + n).map(|i| i as i64 * STEP).collect()
    }

    /// The time since the last burst tells the half hours that burst from those that do
    /// not: at the top of an hour the next minutes 2 to 7 are planned whole even at the
    /// median, at the half hour not even at 0.99; the plan never falls as the quantile grows.
    #[test]
    fn plans_a_burst_when_one_is_due_and_not_when_one_just_passed() {
        let n = 6 * 1_440;
        let mut r = fitted(n);
        let top = r
            .plan((n as i64 - 1) * STEP, &targets(n, 10), 0.5)
            .expect("a baseline");
        for (k, load) in top.iter().enumerate() {
            if (2..8).contains(&k) {
                assert!(*load > 350.0, "minute {k}: {load}");
            } else {
                assert!(*load < 115.0, "minute {k}: {load}");
            }
        }
        for i in n..n + 30 {
            r.feed(minute(i), i as i64 * STEP);
        }
        r.feed(f64::NAN, (n + 30) as i64 * STEP);
        r.feed(-5.0, (n + 30) as i64 * STEP);
        let half = r
            .plan((n as i64 + 29) * STEP, &targets(n + 30, 10), 0.99)
            .expect("a baseline");
        assert!(half.iter().all(|l| *l < 115.0), "{half:?}");
        let mut last = vec![0.0; 10];
        for q in [0.0, 0.3, 0.5, 0.77, 0.9, 0.975, 0.999, 1.0] {
            let plan = r
                .plan((n as i64 - 1) * STEP, &targets(n, 10), q)
                .expect("a baseline");
            for (a, b) in last.iter().zip(&plan) {
                assert!(b >= a, "{q}: {plan:?} after {last:?}");
            }
            last = plan;
        }
    }

    /// No plan from a cycle of fewer than four steps, from nothing, from under a day or
    /// under 24 cycles of history, or before the baseline has half its window.
    #[test]
    fn needs_bins_values_history_and_a_baseline() {
        let y: Vec<f64> = (0..2_000).map(minute).collect();
        assert!(Recurring::fit(&y[..1_400], 0, STEP, HALF_HOUR).is_none());
        assert!(Recurring::fit(&y[..1_440], 0, STEP, HALF_HOUR).is_some());
        assert!(Recurring::fit(&y, 0, STEP, 2 * 3_600).is_none());
        assert!(Recurring::fit(&y, 0, STEP, 180).is_none());
        assert!(Recurring::fit(&y, 0, STEP, i64::MAX).is_none());
        assert!(Recurring::fit(&[f64::NAN; 2_000], 0, STEP, HALF_HOUR).is_none());
        let mut r = fitted(2_000);
        r.tracker.recent.truncate(29);
        assert!(r.plan(0, &targets(0, 3), 0.5).is_none());
        r.feed(100.0, 0);
        assert!(r.plan(0, &targets(0, 3), 0.5).is_some());
    }
}
