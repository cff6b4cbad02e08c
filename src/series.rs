//! Time series as the pipeline sees them: step-aligned samples in a bounded buffer.
//!
//! Timestamps are Unix seconds. Every signal of a target is sampled on the target's `step`
//! grid; a missing step is a gap (never a zero), and the forecasters see it as `NaN`.

use std::collections::VecDeque;

/// One observation: the value of a signal at a step-aligned Unix time (seconds).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// Unix time in seconds, a multiple of the signal's step.
    #[serde(rename = "timestamp")]
    pub ts: i64,
    /// The value; always finite (non-finite samples are dropped at the source).
    pub value: f64,
}

/// A bounded buffer of one signal on a fixed step grid.
///
/// One `f32` per step from the oldest sample held to the newest (a gap is `NaN`), not a
/// timestamp and an `f64` per sample: 4 bytes a step, so 14 days at one minute take 80 KB.
/// `f32` keeps 7 significant digits, far finer than any rate, latency or count measured.
///
/// Appending keeps timestamps strictly increasing: a sample at or before the newest one is
/// ignored, so overlapping fetches never duplicate points. A sample off the grid (samples
/// are step-aligned by contract) is placed on the step at or before it. The buffer spans at
/// most `capacity` steps: the oldest go first; a sample further than that ahead starts it
/// anew.
#[derive(Debug, Clone)]
pub struct Series {
    step: i64,
    capacity: usize,
    /// Unix time of `values[0]`.
    start: i64,
    /// One value per step from `start`, oldest first; `NaN` is a gap. Empty, or finite at
    /// both ends.
    values: VecDeque<f32>,
    /// How many of `values` are finite: the samples held.
    len: usize,
}

impl Series {
    /// An empty series on a grid of `step` seconds spanning at most `capacity` steps.
    pub fn new(step: i64, capacity: usize) -> Self {
        Self {
            step: step.max(1),
            capacity: capacity.max(1),
            start: 0,
            values: VecDeque::new(),
            len: 0,
        }
    }

    /// The grid step in seconds.
    pub fn step(&self) -> i64 {
        self.step
    }

    /// How many samples are held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no sample is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The time of step `i < values.len()` of the buffer. It lies between `start` and the
    /// newest sample's own timestamp, so it fits an `i64` even when `i * step` does not;
    /// wrapping arithmetic then gives it exactly.
    fn ts_at(&self, i: usize) -> i64 {
        self.start.wrapping_add((i as i64).wrapping_mul(self.step))
    }

    /// The newest sample, if any.
    pub fn last(&self) -> Option<Sample> {
        let value = *self.values.back()?;
        Some(Sample {
            ts: self.ts_at(self.values.len() - 1),
            value: f64::from(value),
        })
    }

    /// Removes the newest sample and returns it.
    pub fn pop(&mut self) -> Option<Sample> {
        let last = self.last()?;
        self.values.pop_back();
        self.len -= 1;
        while self.values.back().is_some_and(|v| v.is_nan()) {
            self.values.pop_back();
        }
        Some(last)
    }

    /// Appends samples newer than the newest held one, dropping the oldest beyond capacity.
    /// Returns how many were added.
    pub fn extend<I: IntoIterator<Item = Sample>>(&mut self, new: I) -> usize {
        let mut added = 0;
        for s in new {
            if s.value.is_finite() && self.push(s) {
                added += 1;
            }
        }
        added
    }

    /// Puts older samples (sorted, oldest first) before the oldest held one, as far as the
    /// capacity allows: the newest of them are kept. Samples at or after the oldest held
    /// one, or within its step, are ignored; into an empty series they are appended.
    /// Returns how many were added.
    pub fn prepend<I>(&mut self, older: I) -> usize
    where
        I: IntoIterator<Item = Sample>,
        I::IntoIter: DoubleEndedIterator,
    {
        if self.values.is_empty() {
            return self.extend(older);
        }
        let mut added = 0;
        for s in older.into_iter().rev() {
            if !s.value.is_finite() || s.ts >= self.start {
                continue;
            }
            // `s.ts < start`: the difference is positive; it may not fit an i64.
            let steps = (i128::from(self.start) - i128::from(s.ts)) / i128::from(self.step);
            if steps == 0 {
                continue; // off the grid, within the oldest step
            }
            if steps + self.values.len() as i128 > self.capacity as i128 {
                break; // beyond the capacity, as every older one
            }
            let steps = steps as usize;
            for _ in 1..steps {
                self.values.push_front(f32::NAN);
            }
            self.values
                .push_front((s.value as f32).clamp(f32::MIN, f32::MAX));
            self.start = self
                .start
                .wrapping_sub((steps as i64).wrapping_mul(self.step));
            self.len += 1;
            added += 1;
        }
        added
    }

    /// Appends one finite sample if it is newer than the newest held one.
    fn push(&mut self, s: Sample) -> bool {
        // Beyond `f32`'s range a value is clamped, never made infinite.
        let value = (s.value as f32).clamp(f32::MIN, f32::MAX);
        let Some(last) = self.last() else {
            self.restart(s.ts, value);
            return true;
        };
        if s.ts <= last.ts {
            return false;
        }
        // `s.ts > last.ts`, so the difference is positive; it may not fit an i64.
        let steps = match s.ts.checked_sub(last.ts) {
            Some(d) => i128::from(d / self.step),
            None => (i128::from(s.ts) - i128::from(last.ts)) / i128::from(self.step),
        };
        if steps == 0 {
            return false; // off the grid, within the newest step
        }
        if steps >= self.capacity as i128 {
            self.restart(s.ts, value);
            return true;
        }
        // `0 < steps < capacity`. Room first: the buffer never grows past its capacity.
        let steps = steps as usize;
        while self.values.len() + steps > self.capacity {
            self.drop_oldest();
        }
        for _ in 1..steps {
            self.values.push_back(f32::NAN);
        }
        self.values.push_back(value);
        self.len += 1;
        true
    }

    /// Holds only `value` at `ts`.
    fn restart(&mut self, ts: i64, value: f32) {
        self.values.clear();
        // Once, the whole buffer: growing it by doubling would leave up to half unused.
        self.values.reserve_exact(self.capacity);
        self.values.push_back(value);
        self.start = ts;
        self.len = 1;
    }

    /// Drops the oldest step, and the gap after it.
    fn drop_oldest(&mut self) {
        if let Some(v) = self.values.pop_front() {
            self.start += self.step;
            self.len -= usize::from(!v.is_nan());
        }
        while self.values.front().is_some_and(|v| v.is_nan()) {
            self.values.pop_front();
            self.start += self.step;
        }
    }

    /// The index of the first step at or after `ts` (the length when none is).
    fn index_from(&self, ts: i64) -> usize {
        if ts <= self.start {
            return 0;
        }
        let steps = (i128::from(ts) - i128::from(self.start) + i128::from(self.step) - 1)
            / i128::from(self.step);
        usize::try_from(steps).map_or(self.values.len(), |i| i.min(self.values.len()))
    }

    /// The samples from step `from` on, oldest first.
    fn samples_from(&self, from: usize) -> impl DoubleEndedIterator<Item = Sample> + '_ {
        self.values
            .range(from..)
            .enumerate()
            .filter(|(_, v)| !v.is_nan())
            .map(move |(i, v)| Sample {
                ts: self.ts_at(from + i),
                value: f64::from(*v),
            })
    }

    /// The samples, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Sample> + '_ {
        self.samples_from(0)
    }

    /// The samples with `ts >= since`, oldest first.
    pub fn since(&self, since: i64) -> impl DoubleEndedIterator<Item = Sample> + '_ {
        self.samples_from(self.index_from(since))
    }

    /// The series as a regular grid from its first sample to its last: `(start, values)`,
    /// where `values[i]` is the value at `start + i * step` and a gap is `NaN`. It is never
    /// longer than `capacity`.
    pub fn to_grid(&self) -> Option<(i64, Vec<f64>)> {
        self.grid_from(0)
    }

    /// [`Series::to_grid`] from the first step at or after `since` (the whole series when
    /// `since` is before it); `None` when no step is. What an up-to-date forecaster needs,
    /// without copying the whole history every cycle.
    pub fn to_grid_since(&self, since: i64) -> Option<(i64, Vec<f64>)> {
        self.grid_from(self.index_from(since))
    }

    fn grid_from(&self, from: usize) -> Option<(i64, Vec<f64>)> {
        if from >= self.values.len() {
            return None;
        }
        let values = self.values.range(from..).map(|v| f64::from(*v)).collect();
        Some((self.ts_at(from), values))
    }
}

/// A series that mostly repeats itself (the replica count at each decision), kept as runs
/// of one value: a run is the value and the times of its first, next-to-last and last
/// samples, 16 bytes however many samples it stands for. Values are kept as `f32` (counts
/// exactly up to 2²⁴), times as seconds after the first sample held (up to 136 years; a
/// sample further on starts the history anew).
///
/// Its samples are shown as the first and last of each run ([`Runs::since`]): drawn as
/// steps, the same line as every sample, in a few points. Runs that ended more than `span`
/// seconds before the newest sample go, and at most `capacity` runs are kept.
#[derive(Debug, Clone)]
pub struct Runs {
    span: i64,
    capacity: usize,
    /// The time the runs' times count from.
    origin: i64,
    runs: VecDeque<Run>,
}

/// One value over consecutive samples; times in seconds after [`Runs::origin`].
#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    value: f32,
    first: u32,
    /// The sample before `last` (`first` while there are one or two).
    before_last: u32,
    last: u32,
}

impl Runs {
    /// An empty history of at most `span` seconds and `capacity` runs.
    pub fn new(span: i64, capacity: usize) -> Self {
        Self {
            span: span.max(0),
            capacity: capacity.max(1),
            origin: 0,
            runs: VecDeque::new(),
        }
    }

    /// The time of an offset from the origin.
    fn at(&self, offset: u32) -> i64 {
        self.origin.saturating_add(i64::from(offset))
    }

    /// The newest sample, if any.
    pub fn last(&self) -> Option<Sample> {
        self.runs.back().map(|r| Sample {
            ts: self.at(r.last),
            value: f64::from(r.value),
        })
    }

    /// Removes the newest sample and returns it. (The sample before it becomes the newest;
    /// the one before that is then taken to be its run's first.)
    pub fn pop(&mut self) -> Option<Sample> {
        let last = self.last()?;
        let run = self.runs.back_mut()?;
        if run.first == run.last {
            self.runs.pop_back();
        } else {
            run.last = run.before_last;
            run.before_last = run.first;
        }
        Some(last)
    }

    /// Appends samples newer than the newest held one (non-finite ones are skipped), and
    /// drops the runs that ended more than `span` before the newest. Returns how many were
    /// added.
    pub fn extend<I: IntoIterator<Item = Sample>>(&mut self, new: I) -> usize {
        let mut added = 0;
        for s in new {
            if !s.value.is_finite() || self.last().is_some_and(|l| s.ts <= l.ts) {
                continue;
            }
            added += 1;
            let value = (s.value as f32).clamp(f32::MIN, f32::MAX);
            let offset =
                s.ts.checked_sub(self.origin)
                    .and_then(|d| u32::try_from(d).ok())
                    .filter(|_| !self.runs.is_empty());
            let Some(offset) = offset else {
                self.origin = s.ts;
                self.runs.clear();
                self.runs.push_back(Run {
                    value,
                    first: 0,
                    before_last: 0,
                    last: 0,
                });
                continue;
            };
            match self.runs.back_mut() {
                Some(run) if run.value == value => {
                    run.before_last = run.last;
                    run.last = offset;
                }
                _ => self.runs.push_back(Run {
                    value,
                    first: offset,
                    before_last: offset,
                    last: offset,
                }),
            }
        }
        let oldest = self
            .last()
            .map_or(i64::MIN, |l| l.ts.saturating_sub(self.span));
        while self.runs.len() > self.capacity
            || self.runs.front().is_some_and(|r| self.at(r.last) < oldest)
        {
            self.runs.pop_front();
        }
        added
    }

    /// The first and last sample of each run with samples at or after `since`, oldest
    /// first; the run in force at `since` starts at `since`.
    pub fn since(&self, since: i64) -> impl Iterator<Item = Sample> + '_ {
        self.runs
            .iter()
            .filter(move |r| self.at(r.last) >= since)
            .flat_map(move |r| {
                let first = self.at(r.first).max(since);
                let last = self.at(r.last);
                let value = f64::from(r.value);
                [Some(first), (last != first).then_some(last)]
                    .into_iter()
                    .flatten()
                    .map(move |ts| Sample { ts, value })
            })
    }
}

/// Rounds `ts` down to a multiple of `step`.
pub fn align_down(ts: i64, step: i64) -> i64 {
    ts.div_euclid(step) * step
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ts: i64, value: f64) -> Sample {
        Sample { ts, value }
    }

    #[test]
    fn prepend_puts_older_samples_first_within_the_capacity() {
        let s = |ts, value| Sample { ts, value };
        let mut series = Series::new(60, 6);
        assert_eq!(
            series.prepend([s(240, 4.0), s(300, 5.0)]),
            2,
            "into an empty one"
        );
        // Older ones before, a gap kept; ones not older, or non-finite, ignored.
        let older = [
            s(0, 0.0),
            s(60, f64::NAN),
            s(120, 2.0),
            s(240, 9.0),
            s(270, 9.0),
        ];
        assert_eq!(series.prepend(older), 2);
        let held: Vec<_> = series.iter().collect();
        assert_eq!(held, [s(0, 0.0), s(120, 2.0), s(240, 4.0), s(300, 5.0)]);
        assert_eq!(series.len(), 4);
        // Six steps at most: the oldest that do not fit are left out.
        let mut series = Series::new(60, 3);
        series.extend([s(600, 6.0)]);
        assert_eq!(series.prepend([s(300, 3.0), s(420, 4.0), s(480, 5.0)]), 1);
        assert_eq!(
            series.iter().collect::<Vec<_>>(),
            [s(480, 5.0), s(600, 6.0)]
        );
        series.extend([s(660, 7.0)]);
        let held: Vec<_> = series.iter().collect();
        assert_eq!(held, [s(600, 6.0), s(660, 7.0)], "appending still works");
    }

    #[test]
    fn extend_skips_old_duplicate_and_non_finite_samples() {
        let mut series = Series::new(60, 10);
        assert_eq!(series.extend([s(60, 1.0), s(120, 2.0)]), 2);
        assert_eq!(
            series.extend([s(120, 9.0), s(180, f64::NAN), s(240, 4.0)]),
            1
        );
        let ts: Vec<i64> = series.iter().map(|s| s.ts).collect();
        assert_eq!(ts, [60, 120, 240]);
    }

    #[test]
    fn extend_drops_oldest_beyond_capacity() {
        let mut series = Series::new(1, 3);
        series.extend((0..5).map(|i| s(i, i as f64)));
        let ts: Vec<i64> = series.iter().map(|s| s.ts).collect();
        assert_eq!(ts, [2, 3, 4]);
    }

    #[test]
    fn a_sample_beyond_the_buffer_starts_it_anew() {
        let mut series = Series::new(60, 10);
        // A sample a year ahead of the others (a misbehaving source), then the extremes.
        series.extend([s(0, 1.0), s(60, 2.0), s(365 * 86_400, 3.0)]);
        assert_eq!(series.to_grid(), Some((365 * 86_400, vec![3.0])));
        assert_eq!(series.len(), 1);
        series.extend([s(i64::MIN, 1.0)]);
        series.extend([s(i64::MAX, 4.0)]);
        assert_eq!(series.last(), Some(s(i64::MAX, 4.0)));
        assert_eq!(series.to_grid(), Some((i64::MAX, vec![4.0])));
        let mut series = Series::new(60, 10);
        series.extend([s(i64::MIN, 1.0), s(i64::MAX, 2.0)]);
        assert_eq!(series.iter().collect::<Vec<_>>(), [s(i64::MAX, 2.0)]);
        // Steps whose product with their index is past an i64, times that are not.
        let step = i64::MAX / 4;
        let mut series = Series::new(step, 10);
        // Seven steps on, in two parts: `7 * step` alone is past an i64.
        let newest = i64::MIN + 1 + 3 * step + 4 * step;
        series.extend([s(i64::MIN + 1, 1.0), s(newest, 2.0)]);
        assert_eq!(series.last(), Some(s(newest, 2.0)));
        assert_eq!(series.iter().count(), 2);
    }

    #[test]
    fn the_buffer_spans_capacity_steps_and_counts_its_samples() {
        let mut series = Series::new(60, 5);
        // Steps 0..=4 with a gap at 2, then step 6 (a gap at 5): the oldest two go, and
        // the gap that became the oldest with them.
        series.extend([s(0, 1.0), s(60, 2.0), s(180, 4.0), s(240, 5.0)]);
        assert_eq!(series.len(), 4);
        series.extend([s(360, 7.0)]);
        let (start, values) = series.to_grid().unwrap();
        assert_eq!(start, 180);
        assert_eq!(values.len(), 4);
        assert!(values[2].is_nan());
        assert_eq!(series.len(), 3);
        // Off the grid: placed on the step before it, or ignored within the newest step.
        series.extend([s(390, 9.0), s(430, 8.0)]);
        assert_eq!(series.last(), Some(s(420, 8.0)));
        assert_eq!(series.pop(), Some(s(420, 8.0)));
        assert_eq!(series.pop(), Some(s(360, 7.0)));
        assert_eq!(series.last(), Some(s(240, 5.0)));
        assert_eq!(series.len(), 2);
    }

    #[test]
    fn values_are_kept_as_f32_and_never_become_infinite() {
        let mut series = Series::new(60, 10);
        series.extend([s(0, 0.1), s(60, 1e300), s(120, -1e300)]);
        let got: Vec<f64> = series.iter().map(|s| s.value).collect();
        assert_eq!(
            got,
            [f64::from(0.1f32), f64::from(f32::MAX), f64::from(f32::MIN)]
        );
    }

    #[test]
    fn grid_since_takes_the_tail() {
        let mut series = Series::new(60, 10);
        series.extend([s(0, 1.0), s(60, 2.0), s(180, 4.0)]);
        let tail = |since| {
            series
                .to_grid_since(since)
                .map(|(start, v)| (start, v.len()))
        };
        assert_eq!(tail(-600), Some((0, 4)));
        assert_eq!(tail(60), Some((60, 3)));
        assert_eq!(tail(61), Some((120, 2)));
        assert_eq!(tail(180), Some((180, 1)));
        assert_eq!(tail(181), None);
    }

    #[test]
    fn runs_keep_the_first_and_last_sample_of_each_count() {
        let mut runs = Runs::new(600, 100);
        runs.extend((0..5).map(|i| s(i * 30, 2.0)));
        runs.extend([s(150, 3.0), s(180, 3.0), s(210, 2.0)]);
        let got = |runs: &Runs, since| runs.since(since).collect::<Vec<_>>();
        assert_eq!(
            got(&runs, 0),
            [
                s(0, 2.0),
                s(120, 2.0),
                s(150, 3.0),
                s(180, 3.0),
                s(210, 2.0)
            ]
        );
        // The run in force at `since` starts there.
        assert_eq!(
            got(&runs, 60),
            [
                s(60, 2.0),
                s(120, 2.0),
                s(150, 3.0),
                s(180, 3.0),
                s(210, 2.0)
            ]
        );
        assert_eq!(got(&runs, 200), [s(210, 2.0)]);
        // Older or repeated samples are ignored; so are non-finite ones.
        assert_eq!(runs.extend([s(210, 5.0), s(100, 5.0), s(240, f64::NAN)]), 0);
        // Popping the newest, then putting back another value in its place.
        assert_eq!(runs.pop(), Some(s(210, 2.0)));
        assert_eq!(runs.pop(), Some(s(180, 3.0)));
        runs.extend([s(180, 4.0)]);
        assert_eq!(runs.last(), Some(s(180, 4.0)));
        assert_eq!(
            got(&runs, 100),
            [s(100, 2.0), s(120, 2.0), s(150, 3.0), s(180, 4.0)]
        );
        // Runs that ended more than `span` before the newest sample go.
        runs.extend([s(1_000, 4.0), s(1_100, 6.0)]);
        assert_eq!(got(&runs, 0), [s(180, 4.0), s(1_000, 4.0), s(1_100, 6.0)]);
        // A sample past what the offsets reach starts anew; so does one after all popped.
        runs.extend([s(i64::MAX, 7.0)]);
        assert_eq!(got(&runs, i64::MIN), [s(i64::MAX, 7.0)]);
        assert_eq!(runs.pop(), Some(s(i64::MAX, 7.0)));
        runs.extend([s(i64::MIN, 8.0), s(i64::MIN + 60, 8.0)]);
        assert_eq!(
            got(&runs, i64::MIN),
            [s(i64::MIN, 8.0), s(i64::MIN + 60, 8.0)]
        );
        // At most `capacity` runs.
        let mut runs = Runs::new(i64::MAX, 3);
        runs.extend((0..10).map(|i| s(i, i as f64)));
        assert_eq!(got(&runs, 0), [s(7, 7.0), s(8, 8.0), s(9, 9.0)]);
    }

    #[test]
    fn grid_marks_gaps_as_nan() {
        let mut series = Series::new(60, 10);
        series.extend([s(0, 1.0), s(60, 2.0), s(240, 5.0)]);
        let (start, values) = series.to_grid().unwrap();
        assert_eq!(start, 0);
        assert_eq!(values.len(), 5);
        assert!(values[2].is_nan() && values[3].is_nan());
        assert_eq!(values[4], 5.0);
    }

    #[test]
    fn since_and_align() {
        let mut series = Series::new(60, 10);
        series.extend([s(0, 1.0), s(60, 2.0), s(120, 3.0)]);
        assert_eq!(series.since(60).count(), 2);
        assert_eq!(align_down(119, 60), 60);
        assert_eq!(align_down(-1, 60), -60);
    }
}
