//! One cycle of the per-target step, as `serve` runs it for every target every interval: a
//! target with 14 days of one-minute history and a fitted forecaster takes one new sample
//! and steps (grid, update, forecast, capacity, bottleneck, decision, balancing).
//!
//! `cargo bench --bench step` (add `-- --quick` on a busy machine).

use std::collections::BTreeMap;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_main};
use prescale::config::{ForecastConfig, TargetConfig};
use prescale::series::{Sample, Series};
use prescale::step::{self, Inputs, Memory, Signal, SignalHealth};

const STEP: i64 = 60;
const N: usize = 14 * 1440;

/// Fourteen days of one-minute traffic: a daily cycle, weekends lower, deterministic noise.
fn value(i: usize) -> f64 {
    let day = (i % 1440) as f64 / 1440.0 * std::f64::consts::TAU;
    let weekend = if (i / 1440) % 7 >= 5 { 0.6 } else { 1.0 };
    let noise = ((i.wrapping_mul(2_654_435_761) >> 7) % 1000) as f64 / 1000.0 - 0.5;
    weekend * (100.0 + 60.0 * day.sin()) * (1.0 + 0.2 * noise)
}

fn benches(c: &mut Criterion) {
    let target = TargetConfig::example("web", 10.0, Duration::from_secs(300));
    let policy = target.step_policy(&ForecastConfig::default(), None);
    let mut rate = Series::new(STEP, target.history_points());
    rate.extend((0..N).map(|i| Sample {
        ts: (i as i64 + 1) * STEP,
        value: value(i),
    }));
    let empty = Series::new(STEP, 1);
    let now = N as i64 * STEP;
    let health = |newest| {
        BTreeMap::from([(
            Signal::RequestRate,
            SignalHealth {
                newest: Some(newest),
                last_poll: Some(newest),
                error: None,
                loading: None,
            },
        )])
    };
    let instances = BTreeMap::new();
    let signals = health(now);
    // Fitted once, as a target is after its first cycle.
    let mut memory = Memory::default();
    step::step(
        &policy,
        &mut memory,
        &step_inputs(&rate, &empty, &signals, &instances, now),
    );
    assert!(memory.forecaster.as_ref().is_some_and(|f| f.is_fitted()));

    let next_signals = health(now + STEP);
    c.bench_function("step_one_target_14d_1min", |b| {
        b.iter_batched(
            || (memory.clone(), rate.clone()),
            |(mut memory, mut rate)| {
                rate.extend([Sample {
                    ts: now + STEP,
                    value: value(N),
                }]);
                let plan = step::step(
                    &policy,
                    &mut memory,
                    &step_inputs(&rate, &empty, &next_signals, &instances, now + STEP),
                );
                (plan, memory)
            },
            BatchSize::LargeInput,
        )
    });
}

/// A cycle's inputs with only a request rate.
fn step_inputs<'a>(
    rate: &'a Series,
    empty: &'a Series,
    signals: &'a BTreeMap<Signal, SignalHealth>,
    instances: &'a BTreeMap<String, prescale::decide::balance::InstanceStats>,
    now: i64,
) -> Inputs<'a> {
    Inputs {
        now,
        rate,
        latency: empty,
        replicas: empty,
        signals,
        instances,
        paused: false,
        refit: false,
        budget: None,
    }
}

mod group {
    #![allow(missing_docs)]
    criterion::criterion_group!(step, super::benches);
}
criterion_main!(group::step);
