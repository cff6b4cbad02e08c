//! What calibration works on: held-out forecasts.

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
