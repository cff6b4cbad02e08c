//! The candidate models behind one interface: [`Spec`] (settings) fits to a [`Fitted`]
//! (state), which takes new values one at a time and predicts.

use serde::{Deserialize, Serialize};

use super::ets::{Ets, EtsFit};
use super::fourier::{Fourier, FourierFit};
use super::naive::{NaiveFit, SeasonalNaive};

/// A model's settings: what [`Spec::fit`] fits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Spec {
    /// Seasonal naive.
    Naive(SeasonalNaive),
    /// Level × robust seasonal profile.
    Ets(Ets),
    /// Trend + Fourier terms (linfa).
    Fourier(Fourier),
}

/// A fitted model: its state after the values it has seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fitted {
    /// Seasonal naive.
    Naive(NaiveFit),
    /// Level × robust seasonal profile.
    Ets(EtsFit),
    /// Trend + Fourier terms.
    Fourier(FourierFit),
}

impl Spec {
    /// Fits on `y`: index 0 at the start of a week (so that phases line up), `NaN` for a
    /// gap. `None` when the model cannot be fitted to this data.
    pub fn fit(&self, y: &[f64]) -> Option<Fitted> {
        match self {
            Self::Naive(m) => m.fit(y).map(Fitted::Naive),
            Self::Ets(m) => m.fit(y).map(Fitted::Ets),
            Self::Fourier(m) => m.fit(y).map(Fitted::Fourier),
        }
    }
}

impl Fitted {
    /// Takes the next value, in O(1) (`NaN` for a gap).
    pub fn update(&mut self, v: f64) {
        match self {
            Self::Naive(m) => m.update(v),
            Self::Ets(m) => m.update(v),
            Self::Fourier(m) => m.update(v),
        }
    }

    /// Point forecasts for the next `horizon` values, into `out`.
    pub fn predict_values(&self, horizon: usize, out: &mut Vec<f64>) {
        match self {
            Self::Naive(m) => m.predict_values(horizon, out),
            Self::Ets(m) => m.predict_values(horizon, out),
            Self::Fourier(m) => m.predict_values(horizon, out),
        }
    }

    /// `(value, lower, upper)` for the next `horizon` values, with the model's own
    /// (uncalibrated) interval at `level`.
    pub fn predict(&self, horizon: usize, level: f64) -> Vec<(f64, f64, f64)> {
        match self {
            Self::Naive(m) => m.predict(horizon, level),
            Self::Ets(m) => m.predict(horizon, level),
            Self::Fourier(m) => m.predict(horizon, level),
        }
    }

    /// The model's stable name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Naive(m) if m.period() % 7 == 0 && m.period() >= 7 * 24 => {
                "seasonal_naive_weekly"
            }
            Self::Naive(_) => "seasonal_naive_daily",
            Self::Ets(m) if !m.has_daily() => "level",
            Self::Ets(_) => "ets",
            Self::Fourier(_) => "fourier",
        }
    }

    /// The model with its settings and what it dropped, for people.
    pub fn describe(&self) -> String {
        let (head, notes): (String, &[String]) = match self {
            Self::Naive(m) => (format!("seasonal naive, period {} steps", m.period()), &[]),
            Self::Ets(m) => {
                let s = m.spec();
                let mut parts = vec![format!("level alpha {}", s.alpha)];
                if m.has_daily() {
                    parts.push(format!("daily profile smoothed ±{} steps", s.smooth));
                }
                if m.has_weekly() {
                    parts.push("weekday factors".into());
                }
                (format!("ets: {}", parts.join(", ")), m.notes())
            }
            Self::Fourier(m) => {
                let (d, w) = m.harmonics();
                (
                    format!(
                        "trend + Fourier ({d} daily, {w} weekly harmonics) + smoothed residual"
                    ),
                    m.notes(),
                )
            }
        };
        if notes.is_empty() {
            head
        } else {
            format!("{head}; {}", notes.join("; "))
        }
    }
}
