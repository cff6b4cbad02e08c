//! Seasonal naive: the value one period earlier. The baseline every other model must beat.

use serde::{Deserialize, Serialize};

use super::stats::{fill_ring, normal_quantile, own_interval};

/// The seasonal naive model with a period in steps (one day or one week).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeasonalNaive {
    /// The period, in steps; at least 1.
    pub period: usize,
}

/// A fitted seasonal naive model: the last period of values, as a ring indexed by
/// `index % period`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NaiveFit {
    period: usize,
    ring: Vec<f64>,
    /// Index of the next value.
    next: usize,
    /// Mean absolute seasonal difference, for the model's own interval.
    scale: f64,
}

impl SeasonalNaive {
    /// Fits on `y` (index 0 at phase 0; `NaN` marks a gap). A gap takes the value one period
    /// earlier, else the nearest value before it in the ring. `None` when `y` holds no finite
    /// value.
    pub fn fit(&self, y: &[f64]) -> Option<NaiveFit> {
        let period = self.period.max(1);
        let first = y.iter().position(|v| v.is_finite())?;
        let mut ring = vec![f64::NAN; period];
        let (mut abs, mut count) = (0.0, 0usize);
        for (i, &v) in y.iter().enumerate().skip(first) {
            let slot = &mut ring[i % period];
            if v.is_finite() {
                if slot.is_finite() {
                    abs += (v - *slot).abs();
                    count += 1;
                }
                *slot = v;
            }
        }
        fill_ring(&mut ring);
        Some(NaiveFit {
            period,
            ring,
            next: y.len(),
            scale: if count > 0 { abs / count as f64 } else { 0.0 },
        })
    }
}

impl NaiveFit {
    /// Takes the next value (`NaN` for a gap: the ring keeps the value a period earlier).
    pub fn update(&mut self, v: f64) {
        if v.is_finite() {
            self.ring[self.next % self.period] = v;
        }
        self.next += 1;
    }

    /// Point forecasts for the next `horizon` values.
    pub fn predict_values(&self, horizon: usize, out: &mut Vec<f64>) {
        out.clear();
        out.extend((0..horizon).map(|k| self.ring[(self.next + k) % self.period]));
    }

    /// Point forecasts with the model's own interval at `level` (± z · 1.25 · mean absolute
    /// seasonal difference, growing with the number of periods ahead).
    pub fn predict(&self, horizon: usize, level: f64) -> Vec<(f64, f64, f64)> {
        let z = normal_quantile(0.5 + level / 2.0);
        let mut values = Vec::new();
        self.predict_values(horizon, &mut values);
        values
            .into_iter()
            .enumerate()
            .map(|(k, v)| {
                let periods = (k / self.period + 1) as f64;
                own_interval(v, z * 1.25 * self.scale * periods.sqrt())
            })
            .collect()
    }

    /// The period, in steps.
    pub fn period(&self) -> usize {
        self.period
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_the_last_period_and_fills_gaps() {
        // (series, period, horizon, expected forecast)
        let nan = f64::NAN;
        let cases: &[(&[f64], usize, usize, &[f64])] = &[
            (&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 4, &[4.0, 5.0, 6.0, 4.0]),
            // A gap takes the value one period earlier.
            (&[1.0, 2.0, 3.0, 4.0, nan, 6.0], 3, 3, &[4.0, 2.0, 6.0]),
            // Leading gaps are ignored; a phase never seen takes its neighbour's value.
            (&[nan, nan, 7.0, 8.0], 4, 4, &[8.0, 8.0, 7.0, 8.0]),
            (&[0.0; 5], 2, 3, &[0.0, 0.0, 0.0]),
        ];
        for &(y, period, h, want) in cases {
            let fit = SeasonalNaive { period }.fit(y).unwrap();
            let got: Vec<f64> = fit.predict(h, 0.9).iter().map(|p| p.0).collect();
            assert_eq!(got, want, "{y:?} period {period}");
        }
        assert!(SeasonalNaive { period: 2 }.fit(&[nan, nan]).is_none());
    }

    #[test]
    fn update_moves_the_ring() {
        let mut fit = SeasonalNaive { period: 2 }.fit(&[1.0, 2.0]).unwrap();
        fit.update(5.0);
        fit.update(f64::NAN);
        let got: Vec<f64> = fit.predict(2, 0.9).iter().map(|p| p.0).collect();
        assert_eq!(got, [5.0, 2.0]);
    }
}
