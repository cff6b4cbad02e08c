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

/// A bounded, ordered buffer of samples on a fixed step grid.
///
/// Appending keeps timestamps strictly increasing: a sample at or before the newest one is
/// ignored, so overlapping fetches never duplicate points. When full, the oldest samples go.
#[derive(Debug, Clone)]
pub struct Series {
    step: i64,
    capacity: usize,
    samples: VecDeque<Sample>,
}

impl Series {
    /// An empty series on a grid of `step` seconds holding at most `capacity` samples.
    pub fn new(step: i64, capacity: usize) -> Self {
        Self {
            step: step.max(1),
            capacity: capacity.max(1),
            samples: VecDeque::new(),
        }
    }

    /// The grid step in seconds.
    pub fn step(&self) -> i64 {
        self.step
    }

    /// How many samples are held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample is held.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The newest sample, if any.
    pub fn last(&self) -> Option<Sample> {
        self.samples.back().copied()
    }

    /// Removes the newest sample and returns it.
    pub fn pop(&mut self) -> Option<Sample> {
        self.samples.pop_back()
    }

    /// Appends samples newer than the newest held one, dropping the oldest beyond capacity.
    /// Returns how many were added.
    pub fn extend<I: IntoIterator<Item = Sample>>(&mut self, new: I) -> usize {
        let mut added = 0;
        for s in new {
            if !s.value.is_finite() || self.last().is_some_and(|l| s.ts <= l.ts) {
                continue;
            }
            self.samples.push_back(s);
            added += 1;
        }
        while self.samples.len() > self.capacity {
            self.samples.pop_front();
        }
        added
    }

    /// The samples, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Sample> + ExactSizeIterator {
        self.samples.iter()
    }

    /// The samples with `ts >= since`, oldest first.
    pub fn since(&self, since: i64) -> impl Iterator<Item = &Sample> {
        let start = self.samples.partition_point(|s| s.ts < since);
        self.samples.range(start..)
    }

    /// The series as a regular grid from its first sample (or `capacity` steps before its
    /// last, whichever is later) to its last: `(start, values)`,
    /// where `values[i]` is the value at `start + i * step` and a gap is `NaN`.
    pub fn to_grid(&self) -> Option<(i64, Vec<f64>)> {
        let last = self.samples.back()?.ts;
        // At most `capacity` steps back from the newest sample: an outlier timestamp can
        // never make the grid (an allocation) larger than the buffer.
        let span = (self.capacity as i64 - 1).saturating_mul(self.step);
        let first = self.samples.front()?.ts.max(last.saturating_sub(span));
        let n = ((last - first) / self.step) as usize + 1;
        let mut values = vec![f64::NAN; n];
        for s in self.since(first) {
            let i = ((s.ts - first) / self.step) as usize;
            if let Some(v) = values.get_mut(i) {
                *v = s.value;
            }
        }
        Some((first, values))
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
    fn the_grid_never_outgrows_the_buffer() {
        let mut series = Series::new(60, 10);
        // A sample a year ahead of the others (a misbehaving source).
        series.extend([s(0, 1.0), s(60, 2.0), s(365 * 86_400, 3.0)]);
        let (start, values) = series.to_grid().unwrap();
        assert_eq!(values.len(), 10);
        assert_eq!(start, 365 * 86_400 - 9 * 60);
        assert_eq!(values[9], 3.0);
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
