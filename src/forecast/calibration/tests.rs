use super::*;

const STEP: i64 = 60;
const H: usize = 15;

/// Uniform in [-1, 1), deterministic (splitmix64's finaliser).
fn noise(i: u64) -> f64 {
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

/// Two days of held-out pairs at a level of 100: errors of ±10, and when `bursts`, an
/// extra 0 to 200 in minutes :02 to :09 of every half hour.
fn pairs(bursts: bool, from: u64) -> Vec<Vec<Pair>> {
    let start = 1_700_000_000 - 1_700_000_000 % 86_400;
    (0..H)
        .map(|k| {
            (0..2 * 1_440)
                .map(|i| {
                    let ts = start + (i + k as i64) * STEP;
                    let seed = from + (i as u64) * 31 + k as u64;
                    let minute = ts.rem_euclid(1_800) / 60;
                    let burst = if bursts && (2..10).contains(&minute) {
                        100.0 * (noise(seed ^ 0xb0) + 1.0)
                    } else {
                        0.0
                    };
                    Pair {
                        actual: 100.0 + 10.0 * noise(seed) + burst,
                        predicted: 100.0,
                        ts,
                        last_burst: None,
                    }
                })
                .collect()
        })
        .collect()
}

fn coverage(c: &Calibration, pairs: &[Vec<Pair>]) -> f64 {
    let (mut inside, mut all) = (0usize, 0usize);
    for (k, ps) in pairs.iter().enumerate() {
        for p in ps {
            let (lo, hi) = c.interval(p.predicted, k + 1, p.ts, p.last_burst);
            inside += usize::from(lo <= p.actual && p.actual <= hi);
            all += 1;
        }
    }
    inside as f64 / all as f64
}

#[test]
fn half_hourly_bursts_widen_the_interval_only_where_they_come() {
    let mut held = pairs(true, 0);
    let c = calibrate(&mut held, STEP, 0.95).expect("calibrated");
    let cycle = c.cycle.as_ref().expect("a cycle is found");
    // Two hours fit the half-hour bursts too; the shortest period that fits is kept.
    assert_eq!(cycle.period, 1_800);
    let at = |minute: i64| c.interval(100.0, 1, 1_700_001_000 / 1_800 * 1_800 + minute * 60, None);
    let (burst, calm) = (at(5), at(20));
    assert!(
        burst.1 - burst.0 > 4.0 * (calm.1 - calm.0),
        "burst {burst:?}, calm {calm:?}"
    );
    // Calibrated on other days' draws of the same process: still about the level.
    let fresh = coverage(&c, &marked(&c, pairs(true, 1 << 40)));
    assert!((0.93..=0.97).contains(&fresh), "coverage {fresh}");
    let plain = quantiles(&held, 0.95, c.floor, c.power, None);
    assert!(c.mean_width(&held) < 0.8 * plain.mean_width(&held));
}

#[test]
fn errors_without_a_cycle_get_one_width_at_every_phase() {
    let mut held = pairs(false, 7);
    let c = calibrate(&mut held, STEP, 0.95).expect("calibrated");
    assert_eq!(c.cycle, None);
    let fresh = coverage(&c, &pairs(false, 1 << 41));
    assert!((0.93..=0.97).contains(&fresh), "coverage {fresh}");
}

#[test]
fn a_damaged_cycle_or_calibration_from_a_file_widens_nothing_and_never_panics() {
    let mut c = calibrate(&mut pairs(true, 5), STEP, 0.95).expect("calibrated");
    let plain = quantiles(&pairs(true, 5), 0.95, c.floor, c.power, None);
    for (period, factors) in [
        (0, vec![2.0; 30]),
        (-1_800, vec![2.0; 30]),
        (i64::MAX, vec![2.0; 30]),
        (1_800, Vec::new()),
        (1_800, vec![f64::NAN; 30]),
        (1_800, vec![2.0; 100_000]),
    ] {
        c.cycle = Some(Cycle {
            period,
            factors,
            recurrence: None,
        });
        // The regimes are the plain calibration's too (none): a damaged cycle's factor
        // is 1 and must not widen the plain band.
        let c = Calibration {
            lo: plain.lo.clone(),
            hi: plain.hi.clone(),
            regimes: plain.regimes.clone(),
            ..c.clone()
        };
        assert_eq!(
            c.interval(100.0, 3, 1_700_000_120, None),
            plain.interval(100.0, 3, 0, None)
        );
    }
    c.lo.clear();
    assert_eq!(c.interval(100.0, 3, 0, None), (100.0, 100.0));
}

#[test]
fn a_cycle_needs_six_whole_periods_of_history() {
    let mut held = pairs(true, 3);
    for ps in &mut held {
        ps.truncate(100); // 100 minutes: no candidate period fits six times
    }
    let c = calibrate(&mut held, STEP, 0.95).expect("calibrated");
    assert!(c.cycle.as_ref().is_none_or(|c| c.period * 6 <= 100 * STEP));
}

const START: i64 = 1_700_000_000 - 1_700_000_000 % 7_200;

/// A series at about 100 with a burst to about 300 in minutes :02 to :09 of a half
/// hour every 90, 120 or 150 minutes (a batch job whose phase drifts), forecast flat
/// at 100; with the bursts' half hours.
fn recurring(from: u64) -> (Vec<Vec<Pair>>, Vec<i64>) {
    let mut starts = vec![START];
    while let Some(&last) = starts.last().filter(|&&l| l < START + 4 * 86_400) {
        let periods = 3 + ((noise(from ^ last as u64) + 1.0) * 1.5).floor().min(2.0) as i64;
        starts.push(last + periods * 1_800);
    }
    let actual = |ts: i64| {
        let seed = from + (ts - START) as u64;
        let bursting = starts.iter().any(|&s| (s + 120..s + 600).contains(&ts));
        let burst = if bursting { 200.0 } else { 0.0 };
        100.0 + 10.0 * noise(seed) + burst * (1.0 + 0.1 * noise(seed ^ 0xb1))
    };
    let pairs = (0..H)
        .map(|k| {
            (0..3 * 1_440)
                .map(|i| {
                    let ts = START + (i + k as i64) * STEP;
                    Pair {
                        actual: actual(ts),
                        predicted: 100.0,
                        ts,
                        last_burst: None,
                    }
                })
                .collect()
        })
        .collect();
    (pairs, starts)
}

/// `fresh` marked with the bursts `c` sees, as production marks them.
fn marked(c: &Calibration, mut fresh: Vec<Vec<Pair>>) -> Vec<Vec<Pair>> {
    if let Some(t) = c.burst_threshold {
        bursts::mark(&mut fresh, STEP, c.floor, t);
    }
    fresh
}

/// Where a burst may come (four half hours after the last) the load planned for at a
/// share below 1 is the burst; where one just passed, at the same phase, it is the
/// calm level: the time since the last burst tells them apart, and the plan is a
/// quantile (the whole burst or none of it), not a share of every burst.
#[test]
fn bursts_that_recur_are_planned_for_only_when_due() {
    let (mut held, starts) = recurring(0);
    assert!(starts.windows(2).any(|w| w[1] - w[0] == 5_400));
    assert!(starts.windows(2).any(|w| w[1] - w[0] == 9_000));
    let c = calibrate(&mut held, STEP, 0.95).expect("calibrated");
    let cycle = c.cycle.as_ref().expect("a cycle is found");
    assert!(cycle.recurrence.is_some(), "period {}", cycle.period);
    assert!(c.is_burst(300.0, 100.0) && !c.is_burst(110.0, 100.0));
    // A burst's last minute, and the burst phase 30 minutes and 2 hours on.
    let last = START + 9 * 60;
    let (soon, due) = (START + 1_800 + 5 * 60, START + 7_200 + 5 * 60);
    let plan = |ts: i64, share: f64| c.planned(100.0, 1, ts, Some(last), share);
    assert!(plan(due, 0.5) > 250.0, "due: {}", plan(due, 0.5));
    assert!(plan(soon, 0.5) < 130.0, "soon: {}", plan(soon, 0.5));
    // The share moves the plan one way, from the forecast to the upper bound.
    let shares = [0.0, 0.1, 0.25, 0.4, 0.5, 0.75, 0.9, 1.0];
    for ts in [soon, due] {
        let plans: Vec<f64> = shares.iter().map(|&s| plan(ts, s)).collect();
        assert!(plans.windows(2).all(|w| w[0] <= w[1]), "{plans:?}");
        assert_eq!(plans[0], 100.0);
        assert_eq!(plans[7], c.interval(100.0, 1, ts, Some(last)).1);
    }
    assert!(plan(due, 1.5) > plan(due, 1.0));
    // Fresh draws of the same process, marked as production marks them.
    let got = coverage(&c, &marked(&c, recurring(1 << 40).0));
    assert!((0.93..=0.97).contains(&got), "coverage {got}");
}

/// A model saved before the ladder plans linearly, as it did; one saved before the
/// burst threshold tracks no bursts.
#[test]
fn a_calibration_saved_before_the_ladder_plans_linearly() {
    let mut c = calibrate(&mut recurring(3).0, STEP, 0.95).expect("calibrated");
    c.mid.clear();
    for r in &mut c.regimes {
        r.mid.clear();
    }
    c.burst_threshold = None;
    let ts = 1_700_000_000;
    let (_, upper) = c.interval(100.0, 2, ts, None);
    let half = c.planned(100.0, 2, ts, None, 0.5);
    assert!((half - (100.0 + 0.5 * (upper - 100.0))).abs() < 1e-9);
    assert!(!c.is_burst(1e9, 1.0));
}
