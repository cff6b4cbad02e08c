//! Forecasting speed: a full fit (selection, calibration, refit) plus a 1 h forecast of a
//! 14-day one-minute series; the same with half-hourly bursts, planned for (the plan for
//! recurring bursts is fitted too); one poll cycle (update + forecast) for 1,000 targets;
//! and the reference, augurs MSTL + AutoETS fitted to the same series.
//!
//! `cargo bench --bench forecast` (add `-- --quick` on a busy machine).

use augurs_core::{Fit, Predict};
use augurs_ets::AutoETS;
use augurs_mstl::MSTLModel;
use criterion::{BatchSize, Criterion, criterion_main};
use prescale::forecast::{Forecaster, History, Settings};

const STEP: i64 = 60;
const N: usize = 14 * 1440;

/// Fourteen days of one-minute traffic: a daily cycle, weekends lower, deterministic noise.
fn series(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let day = (i % 1440) as f64 / 1440.0 * std::f64::consts::TAU;
            let weekend = if (i / 1440) % 7 >= 5 { 0.6 } else { 1.0 };
            let noise = ((i.wrapping_mul(2_654_435_761) >> 7) % 1000) as f64 / 1000.0 - 0.5;
            weekend * (100.0 + 60.0 * day.sin()) * (1.0 + 0.2 * noise)
        })
        .collect()
}

/// The same with a burst of 4× the load at minutes 2 to 7 of every other half hour.
fn bursty(n: usize) -> Vec<f64> {
    let mut y = series(n);
    for (i, v) in y.iter_mut().enumerate() {
        if (2..8).contains(&(i % 60)) {
            *v *= 4.0;
        }
    }
    y
}

fn settings() -> Settings {
    Settings {
        step: STEP,
        level: 0.95,
        horizon: 3_600,
        refit_every: 3_600,
        refit_phase: 0,
    }
}

fn benches(c: &mut Criterion) {
    let y = series(N + 1);
    let history = History {
        start: 0,
        step: STEP,
        values: &y[..N],
    };
    let now = history.end() + STEP;

    c.bench_function("fit_and_forecast_1h_14d_1min", |b| {
        b.iter(|| {
            let mut f = Forecaster::new(settings());
            f.update(history, now).expect("fit");
            f.forecast(now, 3_600).expect("forecast")
        })
    });

    let b = bursty(N);
    let bursts = History {
        start: 0,
        step: STEP,
        values: &b,
    };
    c.bench_function("fit_and_plan_1h_14d_1min_bursty", |bench| {
        bench.iter(|| {
            let mut f = Forecaster::new(settings());
            f.update(bursts, now).expect("fit");
            f.forecast_planned(now, 3_600, Some(1.0)).expect("forecast")
        })
    });

    // 1,000 fitted targets; one cycle takes one new point each and forecasts 1 h.
    let mut fitted = Forecaster::new(settings());
    fitted.update(history, now).expect("fit");
    let targets: Vec<Forecaster> = vec![fitted; 1_000];
    let next = History {
        start: 0,
        step: STEP,
        values: &y[..N + 1],
    };
    c.bench_function("poll_cycle_update_and_forecast_1000_targets", |b| {
        b.iter_batched(
            || targets.clone(),
            |mut ts| {
                for f in &mut ts {
                    f.update(next, now + 1).expect("update");
                    f.forecast(now + 1, 3_600).expect("forecast");
                }
                ts
            },
            BatchSize::LargeInput,
        )
    });

    let mut group = c.benchmark_group("reference");
    group.sample_size(10);
    group.bench_function("augurs_mstl_autoets_fit_and_forecast_1h_14d_1min", |b| {
        b.iter(|| {
            let model = MSTLModel::new(vec![1440], AutoETS::non_seasonal().into_trend_model());
            model
                .fit(&y[..N])
                .expect("augurs fit")
                .predict(60, 0.95)
                .expect("augurs predict")
        })
    });
    group.finish();
}

mod group {
    #![allow(missing_docs)]
    criterion::criterion_group!(forecast, super::benches);
}
criterion_main!(group::forecast);
