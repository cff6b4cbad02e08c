//! The reference for `prescale forecast`: grafana's augurs MSTL (daily period) + AutoETS on
//! the trend, refitted every hour on the last 14 days, forecasting every step of the hour
//! from the hour's fit. Writes the same CSV as `prescale forecast`, one file per horizon.
//!
//! `cargo run --release --example augurs_reference -- TRACE OUT_PREFIX [SKIP_SECONDS]`
//! writes `OUT_PREFIX_15m.csv` and `OUT_PREFIX_1h.csv`.

use std::io::Write;

use augurs_core::{Fit, Predict};
use augurs_ets::AutoETS;
use augurs_mstl::MSTLModel;
use prescale::source::replay::Trace;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 3,
        "usage: augurs_reference TRACE OUT_PREFIX [SKIP_SECONDS]"
    );
    let trace = Trace::load(std::path::Path::new(&args[1]))?;
    let skip: i64 = args.get(3).map_or(Ok(604_800), |s| s.parse())?;
    let step = trace.step;
    let per_day = (86_400 / step) as usize;
    let keep = (14 * 86_400 / step) as usize;
    let per_hour = (3_600 / step).max(1) as usize;
    let horizons = [(900 / step) as usize, (3_600 / step) as usize];
    let rps: Vec<f64> = (0..trace.counts.len()).map(|i| trace.rps(i)).collect();
    let mut outs = Vec::new();
    for (name, _) in ["15m", "1h"].iter().zip(horizons) {
        let mut f = std::fs::File::create(format!("{}_{name}.csv", args[2]))?;
        writeln!(f, "origin,timestamp,actual,forecast,lower,upper,model")?;
        outs.push(f);
    }
    let first = ((skip / step) as usize)
        .saturating_sub(2 * per_hour)
        .max(2 * per_day);
    let mut fit_at = first;
    let started = std::time::Instant::now();
    let mut fits = 0;
    while fit_at < rps.len() {
        let lo = fit_at.saturating_sub(keep);
        let y = interpolate(&rps[lo..fit_at]);
        let model = MSTLModel::new(vec![per_day], AutoETS::non_seasonal().into_trend_model());
        let fc = model
            .fit(&y)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .predict(per_hour + horizons[1] + 1, 0.95)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        fits += 1;
        let iv = fc.intervals.as_ref();
        for o in fit_at..(fit_at + per_hour).min(rps.len()) {
            for (out, &h) in outs.iter_mut().zip(&horizons) {
                // Point k (0-based) is the bucket fit_at + k; the target is o + h.
                let k = o + h - fit_at;
                let t = trace.timestamp(o + h);
                let actual = rps.get(o + h).copied().unwrap_or(f64::NAN);
                let (lower, upper) =
                    iv.map_or((f64::NAN, f64::NAN), |iv| (iv.lower[k], iv.upper[k]));
                writeln!(
                    out,
                    "{},{t},{actual},{},{lower},{upper},augurs_mstl_autoets",
                    trace.timestamp(o),
                    fc.point[k]
                )?;
            }
        }
        fit_at += per_hour;
    }
    eprintln!(
        "{fits} fits, {:.3} s per fit",
        started.elapsed().as_secs_f64() / fits.max(1) as f64
    );
    Ok(())
}

/// Linear interpolation over gaps (augurs needs finite values); ends take the nearest value.
fn interpolate(xs: &[f64]) -> Vec<f64> {
    let mut out = xs.to_vec();
    let known: Vec<usize> = (0..xs.len()).filter(|&i| xs[i].is_finite()).collect();
    if known.is_empty() {
        return vec![0.0; xs.len()];
    }
    for (i, v) in out.iter_mut().enumerate() {
        if v.is_finite() {
            continue;
        }
        let after = known.partition_point(|&k| k < i);
        *v = match (after.checked_sub(1).map(|j| known[j]), known.get(after)) {
            (Some(a), Some(&b)) => xs[a] + (xs[b] - xs[a]) * (i - a) as f64 / (b - a) as f64,
            (Some(a), None) => xs[a],
            (None, Some(&b)) => xs[b],
            (None, None) => 0.0,
        };
    }
    out
}
