//! Pure forecasting: a regular series in, a forecast with prediction intervals out.
//!
//! No I/O and no clock: `now` is passed in, so the backtest runs the very code that runs in
//! production. One file per model (`naive.rs`, `ets.rs`, `fourier.rs`); `model.rs` puts
//! them behind one interface; [`Forecaster`] (`forecaster.rs`) selects among them per
//! target, keeps the winner's state between refits and calibrates its intervals
//! (`calibration.rs`). [`capacity`] learns how much load a replica takes within its latency SLO, and
//! [`bottleneck`] predicts when a target runs out of it. `types.rs` holds the data in and
//! out; `stats.rs` the small statistics the models share.
//!
//! Inside, dependencies run one way: the models (`naive`, `ets`, `fourier`) use `stats`
//! and `types`, never each other; `model` wraps the models; `calibration` turns held-out
//! errors into intervals; `forecaster` selects among them and uses both; this file
//! declares, re-exports and offers the one-off [`forecast`].

pub mod bottleneck;
mod calibration;
pub mod capacity;
pub mod ets;
mod forecaster;
pub mod fourier;
pub mod model;
pub mod naive;
mod recurring;
mod selection;
mod stats;
mod types;

pub use forecaster::{Coverage, Forecaster, ModelInfo, Settings, Updated};
pub use selection::{EVAL_WINDOW, Score, UNDER_WEIGHT};
pub use types::{Forecast, ForecastError, History, PlanBasis, Planned, Point};

/// Forecasts `history` from its last value to `now + horizon` seconds with intervals at
/// `level` (in (0, 1)): a one-off [`Forecaster`] fitted on the spot.
pub fn forecast(
    history: History<'_>,
    now: i64,
    horizon: i64,
    level: f64,
) -> Result<Forecast, ForecastError> {
    if history.step <= 0 {
        return Err(ForecastError::BadStep(history.step));
    }
    if !history.values.iter().any(|v| v.is_finite()) {
        return Err(ForecastError::NoData);
    }
    let mut f = Forecaster::new(Settings {
        step: history.step,
        level,
        horizon: horizon.max(history.step),
        refit_every: 3_600,
        refit_phase: 0,
    });
    f.update(history, now)?;
    f.forecast(now, horizon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forecast_spans_to_now_plus_horizon() {
        let values = vec![10.0; 120];
        let h = History {
            start: 0,
            step: 60,
            values: &values,
        };
        // Last value at 7140; now 7200; horizon 600 → points 7200..=7800.
        let f = forecast(h, 7200, 600, 0.95).unwrap();
        assert_eq!(f.points.first().unwrap().timestamp, 7200);
        assert_eq!(f.points.last().unwrap().timestamp, 7800);
        assert!(f.points.iter().all(|p| (p.value - 10.0).abs() < 1e-9));
    }

    #[test]
    fn all_gaps_is_no_data() {
        let values = vec![f64::NAN; 10];
        let h = History {
            start: 0,
            step: 60,
            values: &values,
        };
        assert_eq!(forecast(h, 600, 60, 0.95), Err(ForecastError::NoData));
    }
}
