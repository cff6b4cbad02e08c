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

/// Whether `days` of history hold two cycles of a period of `period_days`, give or take 1 %
/// (so that a 14-day history whose first sample is a gap still counts two weeks).
pub(crate) fn enough(days: f64, period_days: f64) -> bool {
    days >= 2.0 * period_days * 0.99
}

/// `(value, lower, upper)` with a symmetric half-width, the lower bound floored at 0.
pub(crate) fn own_interval(value: f64, half: f64) -> (f64, f64, f64) {
    (value, (value - half).max(0.0), value + half)
}

/// The standard normal quantile at `p` in (0, 1) (Acklam's rational approximation, relative
/// error below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantiles() {
        for (p, want) in [
            (0.5, 0.0),
            (0.975, 1.959_964),
            (0.025, -1.959_964),
            (0.995, 2.575_829),
            (0.9, 1.281_552),
        ] {
            assert!((normal_quantile(p) - want).abs() < 1e-5, "{p}");
        }
    }
}
