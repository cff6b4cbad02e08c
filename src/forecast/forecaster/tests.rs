use super::*;

const STEP: i64 = 300;
const PER_DAY: usize = (DAY / STEP) as usize;

fn settings() -> Settings {
    Settings {
        step: STEP,
        level: 0.9,
        horizon: 3_600,
        refit_every: 3_600,
        refit_phase: 0,
    }
}

/// Deterministic noise in [-1, 1].
fn noise(i: usize) -> f64 {
    // splitmix64's finaliser.
    let mut x = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

fn run(y: &[f64], fit_len: usize) -> Forecaster {
    let mut f = Forecaster::new(settings());
    let h = History {
        start: 0,
        step: STEP,
        values: &y[..fit_len],
    };
    f.update(h, h.end() + STEP).unwrap();
    f
}

/// Calls `edit` on every object in `v`, outermost first.
fn each_object(
    v: &mut serde_json::Value,
    edit: &mut impl FnMut(&mut serde_json::Map<String, serde_json::Value>),
) {
    match v {
        serde_json::Value::Object(m) => {
            edit(m);
            m.values_mut().for_each(|x| each_object(x, edit));
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| each_object(x, edit)),
        _ => {}
    }
}

/// Three days of 5-minute steps with a burst every two hours, fitted; with `now`.
fn bursty() -> (Vec<f64>, Forecaster, i64) {
    let y: Vec<f64> = (0..PER_DAY * 3)
        .map(|i| 100.0 + 5.0 * noise(i) + if i % 24 < 2 { 200.0 } else { 0.0 })
        .collect();
    let f = run(&y, y.len());
    let now = (y.len() as i64) * STEP;
    (y, f, now)
}

/// A model saved before regimes, bursts and the plan's quantiles loads, forecasts and
/// plans (linearly in the share, as it did), and tracks no bursts.
#[test]
fn a_model_saved_before_bursts_and_regimes_still_plans() {
    let (_, f, now) = bursty();
    let mut json = serde_json::to_value(&f).expect("serialises");
    each_object(&mut json, &mut |m| {
        for k in [
            "last_burst",
            "mid",
            "regimes",
            "burst_threshold",
            "recurrence",
            "recurring",
        ] {
            m.remove(k);
        }
    });
    let old: Forecaster = serde_json::from_value(json).expect("an old model loads");
    let planned = old
        .forecast_planned(now, 3_600, Some(0.5))
        .expect("forecasts");
    let made = planned.planned.as_ref().expect("planned values");
    for (p, &load) in planned.points.iter().zip(&made.values) {
        assert!(load.is_finite() && p.value <= load && load <= p.upper.max(p.value));
        let linear = p.value + 0.5 * (p.upper - p.value);
        assert!(
            (load - linear).abs() < 1e-6 * linear.max(1.0),
            "{load} {linear}"
        );
    }
    let state = old.state.as_ref().expect("fitted");
    assert_eq!(state.last_burst, None);
}

/// A model file whose regimes, ladder, burst tables or burst state were damaged by hand
/// loads, forecasts and plans without a panic: every planned load a finite non-negative
/// number, and between the point forecast and the upper bound unless the plan for
/// recurring bursts made it.
#[test]
fn a_damaged_burst_or_regime_in_a_model_file_never_panics() {
    let (y, f, now) = bursty();
    let damages = [
        ("mid", serde_json::json!([[1.0, 2.0, 3.0]])),
        (
            "mid",
            serde_json::Value::from(vec![vec![-5.0, 1e300, 0.0]; 12]),
        ),
        ("lo", serde_json::json!([])),
        ("hi", serde_json::json!([1.0])),
        ("factors", serde_json::json!([0.0, -1.0])),
        ("from", serde_json::json!(-1e300)),
        ("burst_threshold", serde_json::json!(-3.0)),
        ("last_burst", serde_json::json!(i64::MIN)),
        ("last_burst", serde_json::json!(i64::MAX)),
        ("period", serde_json::json!(i64::MAX)),
        ("table", serde_json::json!([[1.0, f64::MAX]])),
        (
            "table",
            serde_json::Value::from(vec![vec![-1.0; 16]; 24 * 10 + 1]),
        ),
        ("bins", serde_json::json!(0)),
        ("rows", serde_json::json!(0)),
        ("rows", serde_json::json!(u64::MAX)),
        ("len", serde_json::json!(0)),
        ("len", serde_json::json!(u64::MAX)),
        ("recent", serde_json::json!([-1.0, 1e308, 0.0])),
    ];
    for (key, to) in damages {
        let mut json = serde_json::to_value(&f).expect("serialises");
        each_object(&mut json, &mut |m| {
            if let Some(x) = m.get_mut(key) {
                *x = to.clone();
            }
        });
        let Ok(mut g) = serde_json::from_value::<Forecaster>(json) else {
            continue; // refused whole, as a model file that does not parse is
        };
        let h = History {
            start: 0,
            step: STEP,
            values: &y,
        };
        g.update(h, now).expect("updates");
        let planned = g
            .forecast_planned(now, 3_600, Some(0.5))
            .expect("forecasts");
        let made = planned.planned.as_ref().expect("planned values");
        let recurring = g.state.as_ref().and_then(|s| s.recurring.as_ref());
        for (p, &load) in planned.points.iter().zip(&made.values) {
            let bounded = recurring.is_some() || (p.value <= load && load <= p.upper.max(p.value));
            assert!(
                load.is_nan() || (load.is_finite() && load >= 0.0 && bounded),
                "{key}: {load} for {p:?}"
            );
        }
    }
}

/// Bursts every two hours are a short cycle, so the load is planned from the target's
/// history of them: the bursts' steps get about their whole load, the calm steps about
/// the calm load, where the calibrated quantile would put one width on every step.
#[test]
fn recurring_bursts_are_planned_from_their_history() {
    let (y, f, now) = bursty();
    let state = f.state.as_ref().expect("fitted");
    assert!(state.recurring.is_some(), "a cycle was found");
    let info = f.info().expect("fitted");
    assert!(
        info.description
            .ends_with("load planned from bursts recurring on a 7200 s cycle"),
        "{}",
        info.description
    );
    let planned = f
        .forecast_planned(now, 4 * 3_600, Some(1.0))
        .expect("forecasts");
    let made = planned.planned.as_ref().expect("planned values");
    for (p, load) in planned.points.iter().zip(&made.values) {
        let i = (p.timestamp / STEP) as usize;
        if i % 24 < 2 {
            assert!(*load > 270.0, "burst at {i}: {load}");
        } else {
            assert!(*load < 130.0, "calm at {i}: {load}");
        }
    }
    assert_eq!(y.len() as i64 * STEP, now);
}

/// Forecasters fitted in the same cycle refit in different ones when their phases
/// differ: the first refit comes at the next point of each one's grid, then every
/// `refit_every`; a model saved without a due time refits `refit_every` after its fit.
#[test]
fn refits_are_spread_by_phase() {
    let y: Vec<f64> = (0..PER_DAY * 2).map(|i| 100.0 + noise(i)).collect();
    let h = History {
        start: 0,
        step: STEP,
        values: &y,
    };
    let now = h.end() + 10;
    let due_after = |phase: i64| {
        let mut f = Forecaster::new(Settings {
            refit_phase: phase,
            ..settings()
        });
        f.update(h, now).unwrap();
        assert!(!f.refit_due(now), "just fitted");
        (now..now + 2 * 3_600).find(|t| f.refit_due(*t)).unwrap() - now
    };
    let (a, b) = (due_after(0), due_after(1_800));
    assert!(a > 0 && a <= 3_600 && b > 0 && b <= 3_600, "{a} {b}");
    assert_eq!((a - b).rem_euclid(3_600), 1_800, "{a} {b}");
    assert_eq!(next_on_grid(7_200, 3_600, 0), 10_800);
    assert_eq!(next_on_grid(7_199, 3_600, 0), 7_200);
    assert_eq!(next_on_grid(100, 3_600, -10), 3_590);

    let mut old = Forecaster::new(settings());
    old.update(h, now).unwrap();
    if let Some(s) = old.state.as_mut() {
        s.due_at = 0;
    }
    assert!(!old.refit_due(now + 3_599) && old.refit_due(now + 3_600));
}

/// The selected model on series whose best model is known.
#[test]
fn selects_the_model_that_fits() {
    type Gen = fn(usize) -> f64;
    // (name, series, models that may win)
    let cases: &[(&str, Gen, &[&str])] = &[
        // A sharp daily pattern repeating exactly: the seasonal naive (or a profile
        // smoothed too little to matter) reproduces it.
        (
            "exact daily repeat",
            |i| {
                if (i % PER_DAY) % 37 < 3 {
                    500.0
                } else {
                    50.0 + (i % PER_DAY) as f64 % 7.0
                }
            },
            &["ets"],
        ),
        // A smooth daily cycle with noise: the profile model wins.
        (
            "noisy daily cycle",
            |i| {
                100.0
                    * (1.5 + ((i % PER_DAY) as f64 / PER_DAY as f64 * std::f64::consts::TAU).sin())
                    * (1.0 + 0.2 * noise(i))
            },
            &["ets", "fourier"],
        ),
        // No seasonality at all: anything but the seasonal naive (which doubles the noise).
        (
            "constant with noise",
            |i| 40.0 + 4.0 * noise(i),
            &["ets", "level", "fourier"],
        ),
    ];
    for &(name, series, want) in cases {
        let y: Vec<f64> = (0..10 * PER_DAY).map(series).collect();
        let f = run(&y, y.len());
        let info = f.info().unwrap();
        assert!(
            want.contains(&info.model),
            "{name}: selected {} ({:?})",
            info.model,
            info.selection
        );
        assert!(info.calibrated, "{name}");
    }
}

/// Calibrated intervals cover about `level` of fresh data, and the forecast uses only
/// what was fed (refits and updates on the schedule).
#[test]
fn intervals_cover_about_the_level_and_updates_are_incremental() {
    let series = |i: usize| {
        200.0
            * (1.5 + ((i % PER_DAY) as f64 / PER_DAY as f64 * std::f64::consts::TAU).sin())
            * (1.0 + 0.15 * noise(i))
    };
    let y: Vec<f64> = (0..12 * PER_DAY).map(series).collect();
    let start = 8 * PER_DAY;
    let mut f = run(&y, start);
    let (mut inside, mut total, mut refits) = (0usize, 0usize, 0usize);
    for i in start + 1..y.len() - 12 {
        let h = History {
            start: 0,
            step: STEP,
            values: &y[..i],
        };
        let now = h.end() + STEP;
        match f.update(h, now).unwrap() {
            Updated::Refitted => refits += 1,
            Updated::Appended(n) => assert_eq!(n, 1),
            Updated::Unchanged => panic!("a new value each step"),
        }
        let fc = f.forecast(now, 3_600).unwrap();
        assert_eq!(fc.points.len(), 13);
        assert_eq!(fc.points[0].timestamp, h.end() + STEP);
        let p = fc.points[11];
        let actual = y[i + 11];
        inside += usize::from(p.lower <= actual && actual <= p.upper);
        total += 1;
    }
    let coverage = inside as f64 / total as f64;
    assert!((0.85..=0.96).contains(&coverage), "coverage {coverage}");
    // One refit an hour: every 12 steps.
    assert_eq!(refits, total / 12, "{refits} refits over {total} steps");
}

#[test]
fn short_constant_zero_and_gappy_histories_forecast() {
    let nan = f64::NAN;
    // (name, series, expected first value)
    let cases: Vec<(&str, Vec<f64>, f64)> = vec![
        ("three values", vec![5.0, 5.0, 5.0], 5.0),
        ("all zero", vec![0.0; 3 * PER_DAY], 0.0),
        ("constant", vec![7.0; 5 * PER_DAY], 7.0),
        (
            "gaps are not zeros",
            (0..3 * PER_DAY)
                .map(|i| if i % 5 == 0 { nan } else { 9.0 })
                .collect(),
            9.0,
        ),
        (
            "negative (counter reset) is a gap",
            (0..2 * PER_DAY)
                .map(|i| if i % 50 == 0 { -1e6 } else { 3.0 })
                .collect(),
            3.0,
        ),
    ];
    for (name, y, want) in cases {
        let f = run(&y, y.len());
        let fc = f.forecast((y.len() as i64) * STEP, 600).unwrap();
        let p = fc.points[0];
        assert!((p.value - want).abs() < 1e-6, "{name}: {p:?}");
        assert!(p.lower <= p.value && p.value <= p.upper, "{name}: {p:?}");
    }
    let mut f = Forecaster::new(settings());
    let h = History {
        start: 0,
        step: STEP,
        values: &[nan, nan],
    };
    assert_eq!(f.update(h, 600), Err(ForecastError::NoData));
    assert_eq!(f.forecast(600, 600), Err(ForecastError::NotFitted));
    let h = History {
        start: 0,
        step: 60,
        values: &[1.0],
    };
    assert_eq!(f.update(h, 600), Err(ForecastError::BadStep(60)));
}

/// Fed only the values after [`Forecaster::needs_since`], a forecaster ends where the
/// whole history would have taken it, through refits and a gap.
#[test]
fn the_tail_it_needs_does_what_the_whole_history_does() {
    let mut y: Vec<f64> = (0..4 * PER_DAY)
        .map(|i| 50.0 + 20.0 * ((i % PER_DAY) as f64 / 30.0).sin() + 3.0 * noise(i))
        .collect();
    y[3 * PER_DAY + 5] = f64::NAN;
    let (mut whole, mut tail) = (Forecaster::new(settings()), Forecaster::new(settings()));
    let mut tails = 0;
    for n in 2 * PER_DAY..y.len() {
        let h = History {
            start: 0,
            step: STEP,
            values: &y[..n],
        };
        let now = h.end() + STEP;
        let part = match tail.needs_since(now) {
            Some(since) => {
                tails += 1;
                let from = (since / STEP) as usize;
                History {
                    start: since,
                    step: STEP,
                    values: &y[from..n],
                }
            }
            None => h,
        };
        assert_eq!(whole.update(h, now), tail.update(part, now), "at {n}");
        assert_eq!(whole, tail, "at {n}");
    }
    assert!(tails > 400, "{tails} updates from the tail");
}

#[test]
fn short_history_says_which_periods_it_dropped() {
    let y: Vec<f64> = (0..PER_DAY * 3 / 2)
        .map(|i| 10.0 + (i % 12) as f64)
        .collect();
    let d = run(&y, y.len()).info().unwrap().description;
    assert!(
        d.contains("daily period dropped: 1.5 days of history < 2"),
        "{d}"
    );
}
