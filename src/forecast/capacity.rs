//! Learned capacity: how many requests/s one replica serves within its latency SLO, from
//! observed `(requests per replica, latency)` pairs.
//!
//! The curve is queueing-shaped, `latency = a + b / (1 - load / c)` with `b ≥ 0` (so it rises
//! with load, monotonically) and `c` above the highest load seen. For each `c` on a grid the
//! model is linear in `(a, b)` and is fitted with `linfa-linear` on the median latency of
//! load bins (so a few slow requests or a deploy do not bend it); the `c` with the smallest
//! squared error wins. The capacity is the load at which the curve reaches the SLO, capped at
//! [`MAX_EXTRAPOLATION`] × the highest load seen: beyond the data, the curve is a guess.

use linfa::Dataset;
use linfa::traits::Fit;
use linfa_linear::LinearRegression;
use ndarray::{Array1, Array2};
use serde::Serialize;

use super::stats::quantile;

/// Pairs needed before a capacity is learned.
pub const MIN_PAIRS: usize = 120;
/// Load bins the curve is fitted on.
const BINS: usize = 24;
/// The learned capacity is at most this many times the highest load observed.
pub const MAX_EXTRAPOLATION: f64 = 1.5;

/// `latency = base + gain / (1 - load / saturation)`, seconds, for load in requests/s per
/// replica.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyCurve {
    /// `a`, seconds.
    pub base: f64,
    /// `b ≥ 0`, seconds.
    pub gain: f64,
    /// `c`, requests/s per replica at which latency diverges.
    pub saturation: f64,
}

impl LatencyCurve {
    /// Predicted latency (s) at `load` requests/s per replica; infinite at or past saturation.
    pub fn latency(&self, load: f64) -> f64 {
        if load >= self.saturation {
            f64::INFINITY
        } else {
            self.base + self.gain / (1.0 - load.max(0.0) / self.saturation)
        }
    }

    /// The load per replica at which latency reaches `slo` seconds; `None` when even an idle
    /// replica misses it.
    pub fn load_at(&self, slo: f64) -> Option<f64> {
        if slo <= self.base + self.gain {
            return None;
        }
        if self.gain <= 0.0 {
            return Some(f64::INFINITY);
        }
        Some(self.saturation * (1.0 - self.gain / (slo - self.base)))
    }
}

/// A learned capacity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Learned {
    /// The fitted curve.
    pub curve: LatencyCurve,
    /// Requests/s per replica within the SLO.
    pub capacity_rps: f64,
    /// Whether the capacity was capped at [`MAX_EXTRAPOLATION`] × the highest load seen.
    pub capped: bool,
    /// Pairs it was learned from.
    pub pairs: usize,
    /// Highest load per replica observed.
    pub max_load_rps: f64,
}

/// Why no capacity could be learned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CapacityError {
    /// Not enough pairs yet.
    #[error("{have} (load, latency) pairs, need {need}")]
    TooFewPairs {
        /// Usable pairs.
        have: usize,
        /// Pairs needed.
        need: usize,
    },
    /// The load barely varies, so the curve's shape cannot be seen.
    #[error("load per replica varies too little ({lo:.3} to {hi:.3} rps, 10th to 90th percentile)")]
    NoSpread {
        /// 10th percentile of load.
        lo: f64,
        /// 90th percentile of load.
        hi: f64,
    },
    /// Latency does not rise with load in the observed range.
    #[error("latency does not rise with load up to {max_load:.3} rps per replica")]
    NotRising {
        /// Highest load seen.
        max_load: f64,
    },
    /// Even at no load the curve misses the SLO.
    #[error("latency {idle:.3}s at no load already misses the SLO {slo:.3}s")]
    SloUnreachable {
        /// Predicted idle latency, s.
        idle: f64,
        /// The SLO, s.
        slo: f64,
    },
}

/// Learns the capacity per replica from `(requests/s per replica, latency s)` pairs and the
/// latency SLO in seconds. Non-finite or non-positive pairs are ignored.
pub fn learn(pairs: &[(f64, f64)], slo: f64) -> Result<Learned, CapacityError> {
    let mut ps: Vec<(f64, f64)> = pairs
        .iter()
        .copied()
        .filter(|&(x, l)| x.is_finite() && l.is_finite() && x > 0.0 && l > 0.0)
        .collect();
    if ps.len() < MIN_PAIRS {
        return Err(CapacityError::TooFewPairs {
            have: ps.len(),
            need: MIN_PAIRS,
        });
    }
    ps.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = ps.len();
    let (lo, hi) = (ps[n / 10].0, ps[n * 9 / 10].0);
    if hi < 1.3 * lo {
        return Err(CapacityError::NoSpread { lo, hi });
    }
    let max_load = ps[n - 1].0;
    // Median load and latency per bin of equal counts.
    let mut bins = Vec::with_capacity(BINS);
    for b in 0..BINS {
        let chunk = &ps[b * n / BINS..(b + 1) * n / BINS];
        let mut xs: Vec<f64> = chunk.iter().map(|p| p.0).collect();
        let mut ls: Vec<f64> = chunk.iter().map(|p| p.1).collect();
        if let (Some(x), Some(l)) = (quantile(&mut xs, 0.5), quantile(&mut ls, 0.5)) {
            bins.push((x, l));
        }
    }
    let top = bins.iter().map(|b| b.0).fold(0.0, f64::max);
    let mut best: Option<(f64, LatencyCurve)> = None;
    for factor in [
        1.02, 1.05, 1.1, 1.2, 1.35, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0, 20.0,
    ] {
        let c = top * factor;
        let Some((a, b)) = fit_linear(&bins, c) else {
            continue;
        };
        let (a, b) = if b < 0.0 {
            // Monotone: no rise means a flat curve at the median latency.
            let mut ls: Vec<f64> = bins.iter().map(|p| p.1).collect();
            (quantile(&mut ls, 0.5).unwrap_or(0.0), 0.0)
        } else {
            (a, b)
        };
        let curve = LatencyCurve {
            base: a,
            gain: b,
            saturation: c,
        };
        let sse: f64 = bins
            .iter()
            .map(|&(x, l)| (curve.latency(x) - l).powi(2))
            .sum();
        if best.as_ref().is_none_or(|(e, _)| sse < *e) {
            best = Some((sse, curve));
        }
    }
    let Some((_, curve)) = best else {
        return Err(CapacityError::NotRising { max_load });
    };
    // A rise of under 5 % across the observed range is no evidence of where the SLO breaks.
    if curve.latency(top) < 1.05 * curve.latency(bins[0].0) && curve.latency(top) < slo {
        return Err(CapacityError::NotRising { max_load });
    }
    let load = curve.load_at(slo).ok_or(CapacityError::SloUnreachable {
        idle: curve.base + curve.gain,
        slo,
    })?;
    let limit = MAX_EXTRAPOLATION * max_load;
    Ok(Learned {
        curve,
        capacity_rps: load.min(limit),
        capped: load > limit,
        pairs: n,
        max_load_rps: max_load,
    })
}

/// Least squares of `latency = a + b · 1/(1 - x/c)` with linfa; `None` when degenerate.
fn fit_linear(bins: &[(f64, f64)], c: f64) -> Option<(f64, f64)> {
    let z = Array2::from_shape_vec(
        (bins.len(), 1),
        bins.iter().map(|&(x, _)| 1.0 / (1.0 - x / c)).collect(),
    )
    .ok()?;
    let l = Array1::from_iter(bins.iter().map(|b| b.1));
    let model = LinearRegression::new().fit(&Dataset::new(z, l)).ok()?;
    let (a, b) = (model.intercept(), model.params()[0]);
    (a.is_finite() && b.is_finite()).then_some((a, b))
}

/// Where the capacity used for deciding comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacitySource {
    /// `capacity_rps` in the configuration.
    Configured,
    /// Learned from latency under load.
    Learned,
    /// Neither: the target holds its replica count.
    Unknown,
}

/// The capacity in use and the evidence for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capacity {
    /// Requests/s per replica used for deciding, when known.
    pub effective_rps: Option<f64>,
    /// Where it comes from.
    pub source: CapacitySource,
    /// Why, for people.
    pub reason: String,
    /// The configured value, if any.
    pub configured_rps: Option<f64>,
    /// The learned value and curve, if learned.
    pub learned: Option<Learned>,
}

/// Picks the capacity to decide with: the configured one when set (the learned one is
/// reported beside it), else the learned one once there is enough evidence.
pub fn resolve(
    configured: Option<f64>,
    learned: Option<&Result<Learned, CapacityError>>,
) -> Capacity {
    let ok = learned.and_then(|r| r.as_ref().ok()).cloned();
    let why_not = match learned {
        None => "no latency SLO, latency query and replicas query to learn from".to_owned(),
        Some(Ok(_)) => String::new(),
        Some(Err(e)) => e.to_string(),
    };
    match (configured, &ok) {
        (Some(c), Some(l)) => Capacity {
            effective_rps: Some(c),
            source: CapacitySource::Configured,
            reason: format!(
                "capacity_rps is configured ({c}); learned {:.3} from {} pairs is reported only",
                l.capacity_rps, l.pairs
            ),
            configured_rps: Some(c),
            learned: ok,
        },
        (Some(c), None) => Capacity {
            effective_rps: Some(c),
            source: CapacitySource::Configured,
            reason: format!("capacity_rps is configured ({c}); not learned: {why_not}"),
            configured_rps: Some(c),
            learned: None,
        },
        (None, Some(l)) => Capacity {
            effective_rps: Some(l.capacity_rps),
            source: CapacitySource::Learned,
            reason: format!(
                "capacity_rps is not configured; learned from {} pairs{}",
                l.pairs,
                if l.capped {
                    ", capped at 1.5 x the highest load seen"
                } else {
                    ""
                }
            ),
            configured_rps: None,
            learned: ok,
        },
        (None, None) => Capacity {
            effective_rps: None,
            source: CapacitySource::Unknown,
            reason: format!("capacity_rps is not configured and not learned yet: {why_not}"),
            configured_rps: None,
            learned: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(curve: LatencyCurve, max_load: f64, n: usize) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| {
                let x = max_load * (0.1 + 0.9 * i as f64 / n as f64);
                // Deterministic ±2 % noise.
                let noise = 1.0 + 0.02 * (((i * 7919) % 11) as f64 - 5.0) / 5.0;
                (x, curve.latency(x) * noise)
            })
            .collect()
    }

    #[test]
    fn learns_the_load_at_the_slo() {
        // (truth, max load seen, slo, tolerance on capacity)
        let truth = LatencyCurve {
            base: 0.05,
            gain: 0.05,
            saturation: 100.0,
        };
        // At slo 0.2: x = 100 (1 - 0.05/0.15) = 66.7.
        let cases = [
            (truth, 90.0, 0.2, 66.7, 0.08),
            (truth, 80.0, 0.3, 80.0, 0.08),
        ];
        for (truth, max_load, slo, want, tol) in cases {
            let l = learn(&pairs(truth, max_load, 600), slo).unwrap();
            assert!(
                (l.capacity_rps - want).abs() / want < tol,
                "slo {slo}: {} vs {want} ({:?})",
                l.capacity_rps,
                l.curve
            );
        }
        // Seen only up to about 40 rps: the answer is capped at 1.5 × the highest load.
        let l = learn(&pairs(truth, 40.0, 600), 0.3).unwrap();
        assert!(
            l.capped && (l.capacity_rps - 1.5 * l.max_load_rps).abs() < 1e-9,
            "{l:?}"
        );
    }

    #[test]
    fn says_why_it_cannot_learn() {
        let flat: Vec<(f64, f64)> = (0..300).map(|i| (1.0 + i as f64, 0.1)).collect();
        let narrow: Vec<(f64, f64)> = (0..300)
            .map(|i| (10.0 + (i % 3) as f64 * 0.1, 0.1))
            .collect();
        let check = |p: &[(f64, f64)], slo: f64, want: &str| {
            let e = learn(p, slo).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        };
        check(&flat[..50], 0.2, "50 (load, latency) pairs, need 120");
        check(&flat, 0.2, "does not rise");
        check(&narrow, 0.2, "varies too little");
        let slow = pairs(
            LatencyCurve {
                base: 0.5,
                gain: 0.1,
                saturation: 100.0,
            },
            90.0,
            300,
        );
        check(&slow, 0.2, "misses the SLO");
    }

    #[test]
    fn configured_wins_and_learned_is_reported() {
        let l = learn(
            &pairs(
                LatencyCurve {
                    base: 0.05,
                    gain: 0.05,
                    saturation: 100.0,
                },
                90.0,
                300,
            ),
            0.2,
        );
        let c = resolve(Some(50.0), Some(&l));
        assert_eq!(
            (c.effective_rps, c.source),
            (Some(50.0), CapacitySource::Configured)
        );
        assert!(
            c.learned.is_some() && c.reason.contains("reported only"),
            "{}",
            c.reason
        );
        let c = resolve(None, Some(&l));
        assert_eq!(c.source, CapacitySource::Learned);
        let c = resolve(
            None,
            Some(&Err(CapacityError::TooFewPairs {
                have: 3,
                need: MIN_PAIRS,
            })),
        );
        assert_eq!((c.effective_rps, c.source), (None, CapacitySource::Unknown));
        assert!(c.reason.contains("3 (load, latency) pairs"), "{}", c.reason);
        assert!(resolve(None, None).reason.contains("no latency SLO"));
    }
}
