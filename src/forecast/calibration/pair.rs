//! What calibration works on: held-out forecasts, and where a time falls in a cycle.

/// One held-out forecast: what came, what was forecast, and the time it was for (seen
/// outside `forecast` no further than `calibration` re-exports it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pair {
    pub(crate) actual: f64,
    pub(crate) predicted: f64,
    pub(crate) ts: i64,
    /// The newest burst known when it was forecast (see `bursts.rs`), filled in by
    /// `calibrate`.
    pub(crate) last_burst: Option<i64>,
}

/// The phase bin of `ts` among `bins` of a cycle of `period` seconds (both positive).
pub(super) fn phase_bin(period: i64, bins: usize, ts: i64) -> usize {
    // phase < period ≤ 4 h and bins ≤ 60: the product cannot overflow.
    let phase = ts.rem_euclid(period);
    ((phase * bins as i64 / period) as usize).min(bins - 1)
}
