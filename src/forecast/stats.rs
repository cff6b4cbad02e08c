//! Small statistics the models share: quantiles, the normal quantile, intervals, gap
//! filling. The models import this module, never each other.

/// Steps a model's recursive state (the level, the residual correction) is run over before
/// the end of the fitted history.
pub(crate) const WARMUP: usize = 720;

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
pub(crate) fn normal_quantile(p: f64) -> f64 {
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

/// Fills `NaN`s in a ring with the nearest finite value before them (circularly).
pub(crate) fn fill_ring(xs: &mut [f64]) {
    let Some(start) = xs.iter().position(|v| v.is_finite()) else {
        return;
    };
    let n = xs.len();
    let mut prev = xs[start];
    for k in 1..n {
        let i = (start + k) % n;
        if xs[i].is_finite() {
            prev = xs[i];
        } else {
            xs[i] = prev;
        }
    }
}

/// The standard normal distribution function at `x`: [`normal_quantile`] inverted by
/// bisection (to 1e-12; called a few times per calibration, never per point).
pub(crate) fn normal_cdf(x: f64) -> f64 {
    let (mut lo, mut hi) = (1e-12, 1.0 - 1e-12);
    if x.is_nan() {
        return f64::NAN;
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if normal_quantile(mid) < x {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The `q`-quantile (0..=1) of `xs` by linear interpolation; `xs` is reordered. `None` when
/// empty.
pub(crate) fn quantile(xs: &mut [f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let pos = q.clamp(0.0, 1.0) * (xs.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let (_, &mut lo_v, _) = xs.select_nth_unstable_by(lo, f64::total_cmp);
    if hi == lo {
        return Some(lo_v);
    }
    // After selecting `lo`, the next larger value is the minimum of the upper part.
    let hi_v = xs[lo + 1..].iter().copied().fold(f64::INFINITY, f64::min);
    Some(lo_v + (hi_v - lo_v) * (pos - lo as f64))
}

/// The phase bin of `ts` among `bins` of a cycle of `period` seconds (both positive).
pub(crate) fn phase_bin(period: i64, bins: usize, ts: i64) -> usize {
    // phase < period ≤ 4 h and bins ≤ 60: the product cannot overflow.
    let phase = ts.rem_euclid(period);
    ((phase * bins as i64 / period) as usize).min(bins - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let check = |xs: &[f64], q: f64, want: Option<f64>| {
            let got = quantile(&mut xs.to_vec(), q);
            assert_eq!(got, want, "quantile({xs:?}, {q})");
        };
        check(&[], 0.5, None);
        check(&[3.0], 0.9, Some(3.0));
        check(&[5.0, 1.0, 3.0], 0.5, Some(3.0));
        check(&[4.0, 1.0, 3.0, 2.0], 0.5, Some(2.5));
        check(&[1.0, 2.0, 3.0, 4.0, 5.0], 1.0, Some(5.0));
        check(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.0, Some(1.0));
    }

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
            assert!((normal_cdf(want) - p).abs() < 1e-6, "{p}");
        }
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-9);
    }
}
