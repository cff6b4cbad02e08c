//! Unit tests of the decision engine: each policy, missing data, stabilisation, rate limits
//! and scheduled bounds.

use super::*;
use crate::forecast::Point;

fn policy() -> Policy {
    Policy {
        capacity_rps: 10.0,
        target_utilization: 1.0,
        prediction_utilization: 1.0,
        interval_share: 1.0,
        tolerance: 0.1,
        min_replicas: 2,
        max_replicas: 20,
        lookahead: 300,
        interval: 60,
        headroom: 0.0,
        scale_up: Rules::default_scale_up(),
        scale_down: Rules::default_scale_down(),
        recurring_scale_in: None,
        change_cost: 0,
        schedule: Vec::new(),
    }
}

fn flat(now: i64, upper: f64) -> Forecast {
    Forecast {
        generated_at: now,
        step_seconds: 60,
        model: "test",
        level: 0.95,
        planned: None,
        points: (1..=10)
            .map(|k| Point {
                timestamp: now + 60 * k,
                value: upper * 0.8,
                lower: 0.0,
                upper,
            })
            .collect(),
    }
}

fn obs(replicas: u32, demand: f64) -> Observed {
    Observed::demand(replicas, Some(demand))
}

/// (replicas now, upper forecast, demand now, degraded) → (replicas asked, reasons)
#[test]
fn single_decisions() {
    let check = |replicas: u32, upper: f64, demand: f64, degraded: bool, want: u32, codes: &str| {
        let mut st = DecideState::default();
        let o = Observed {
            degraded,
            ..obs(replicas, demand)
        };
        let d = decide(&policy(), Some(&flat(0, upper)), o, &mut st, 0);
        assert_eq!((d.to, d.reason_codes().as_str()), (want, codes), "{d:?}");
    };
    check(5, 95.0, 50.0, false, 10, "Prediction");
    check(5, 100.0, 50.0, false, 10, "Prediction");
    check(5, 40.0, 120.0, false, 12, "Demand");
    // Prediction holds within the tolerance (11 is within 10 % of 10), moves past it.
    check(10, 105.0, 50.0, false, 10, "Prediction");
    check(10, 115.0, 50.0, false, 12, "Prediction");
    check(10, 79.0, 50.0, false, 8, "Prediction");
    // Within the tolerance the demand policy holds; prediction still scales in.
    check(5, 10.0, 54.0, false, 5, "Demand");
    check(5, 500.0, 50.0, false, 20, "Prediction+TooManyReplicas");
    // No earlier recommendation to hold on to: down at once, to the minimum.
    check(5, 1.0, 1.0, false, 2, "Prediction+TooFewReplicas");
    check(5, 20.0, 20.0, true, 5, "Prediction+Degraded");
    check(5, 90.0, 20.0, true, 9, "Prediction+Degraded");
}

/// The HPA formula and its tolerance, as in the Kubernetes documentation ("Algorithm
/// details"): `ceil(current × metric / target)`, skipped within 10 % of the target.
/// (replicas, demand rps) → replicas, with 10 rps per replica at utilisation 1.
#[test]
fn demand_policy_is_the_hpa_formula() {
    let check = |replicas: u32, demand: f64, want: u32| {
        let mut st = DecideState::default();
        let d = decide(&policy(), None, obs(replicas, demand), &mut st, 0);
        assert_eq!(
            (d.to, d.reasons[0].code),
            (want, ReasonCode::Demand),
            "{replicas} replicas at {demand} rps: {d:?}"
        );
    };
    check(4, 80.0, 8); // 200 % of target: double
    check(4, 20.0, 2); // 50 %: halve
    check(5, 54.0, 5); // 108 %: within the tolerance
    check(5, 46.0, 5); // 92 %: within
    check(5, 56.0, 6); // 112 %: past it
    check(10, 85.0, 9); // 85 %: past it, down
    check(0, 5.0, 2); // nothing running: the formula, then min_replicas
}

#[test]
fn missing_data_holds() {
    let mut st = DecideState::default();
    let o = Observed {
        degraded: true,
        ..Observed::demand(5, None)
    };
    let d = decide(&policy(), None, o, &mut st, 0);
    assert_eq!((d.to, d.reason_codes().as_str()), (5, "NoData+Degraded"));
    // Demand alone, without a forecast, still scales out.
    let d = decide(&policy(), None, obs(5, 90.0), &mut st, 60);
    assert_eq!((d.to, d.reason_codes().as_str()), (9, "Demand"));
}

#[test]
fn performance_policy() {
    let check = |latency: Latency, demand: f64, want: u32, first: ReasonCode| {
        let mut st = DecideState::default();
        let o = Observed {
            latency: Some(latency),
            ..obs(5, demand)
        };
        let d = decide(&policy(), Some(&flat(0, demand)), o, &mut st, 0);
        assert_eq!((d.to, d.reasons[0].code), (want, first), "{d:?}");
    };
    let slow = |p95: f64, curve: Option<f64>| Latency {
        p95,
        slo: 0.2,
        rps_per_replica_at_slo: curve,
        replicas: 5,
    };
    // Under the SLO: performance has nothing to say.
    check(slow(0.1, Some(5.0)), 50.0, 5, ReasonCode::Prediction);
    // Over it, with a curve: 50 rps at 6 rps per replica needs 9.
    check(slow(0.3, Some(6.0)), 50.0, 9, ReasonCode::Performance);
    // Without a curve: scaled by the excess, 5 × 0.3/0.2 → 8.
    check(slow(0.3, None), 50.0, 8, ReasonCode::Performance);
    // A curve that claims far more than is seen is not trusted beyond what is seen:
    // 8 rps per replica break the SLO now, so at most 8 × 0.2/0.3 are assumed → 8.
    check(slow(0.3, Some(100.0)), 40.0, 8, ReasonCode::Performance);
    // Far over the SLO, distrust of the curve at most doubles the serving count.
    check(slow(2.0, Some(100.0)), 40.0, 10, ReasonCode::Performance);
}

#[test]
fn scale_in_waits_for_the_stabilisation_window() {
    let mut st = DecideState::default();
    let mut replicas = 10;
    let mut at = Vec::new();
    for k in 0..12 {
        let now = k * 60;
        let upper = if k == 0 { 100.0 } else { 30.0 };
        let d = decide(
            &policy(),
            Some(&flat(now, upper)),
            obs(replicas, 10.0),
            &mut st,
            now,
        );
        if k > 0 && k < 5 {
            assert_eq!(
                d.reasons.last().unwrap().code,
                ReasonCode::ScaleDownStabilized
            );
        }
        replicas = d.to;
        at.push(replicas);
    }
    // The recommendation of 10 at t=0 holds while it is within the last 300 s.
    assert_eq!(at, [10, 10, 10, 10, 10, 3, 3, 3, 3, 3, 3, 3]);
}

#[test]
fn scale_up_rate_limit() {
    let mut p = policy();
    p.max_replicas = 1000;
    let mut st = DecideState::default();
    // Default policy over a 60 s interval: max(+100 %, +4) four times: 1 → 5 → 10 → 20 → 40.
    let d = decide(&p, Some(&flat(0, 1000.0)), obs(1, 5.0), &mut st, 0);
    assert_eq!(
        (d.to, d.reason_codes().as_str()),
        (40, "Prediction+ScaleUpLimit")
    );
}

#[test]
fn scale_down_rate_limit() {
    let mut p = policy();
    p.scale_down = Rules {
        stabilization_window: 0,
        select: Select::Max,
        policies: vec![RatePolicy {
            kind: RateKind::Pods,
            value: 2,
            period: 120,
        }],
    };
    let mut st = DecideState::default();
    let mut replicas = 12;
    let mut at = Vec::new();
    for k in 0..6 {
        let now = k * 60;
        let d = decide(
            &p,
            Some(&flat(now, 20.0)),
            obs(replicas, 20.0),
            &mut st,
            now,
        );
        // The rate limits count what was asked for.
        st.record_scale(now, d.from, d.to);
        replicas = d.to;
        at.push((replicas, d.reason_codes()));
    }
    let counts: Vec<u32> = at.iter().map(|a| a.0).collect();
    assert_eq!(counts, [10, 10, 8, 8, 6, 6], "{at:?}");
    assert_eq!(at[0].1, "Prediction+ScaleDownLimit");
}

/// Unix seconds of an RFC 3339 time.
fn at(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp()
}

/// A scheduled floor leads its window by the look-ahead and passes the scale-up rate
/// limits (a floor that arrives late defeats its purpose), as `min_replicas` does.
#[test]
fn a_scheduled_floor_leads_and_passes_the_rate_limits() {
    let mut p = policy();
    p.scale_up.policies = vec![RatePolicy {
        kind: RateKind::Pods,
        value: 1,
        period: 60,
    }];
    p.schedule = vec![schedule::window("0 8 * * *", "UTC", 3600, Some(15), None)];
    let check = |now: &str, replicas: u32, want: (u32, &str)| {
        let mut st = DecideState::default();
        let now = at(now);
        let d = decide(
            &p,
            Some(&flat(now, 20.0)),
            obs(replicas, 20.0),
            &mut st,
            now,
        );
        assert_eq!((d.to, d.reason_codes().as_str()), want, "{d:?}");
        d
    };
    check("2026-01-15T07:54:59Z", 2, (2, "Prediction"));
    // The recommendation is raised to the floor, the rate limits allow 3, and the floor
    // passes them.
    let d = check(
        "2026-01-15T07:55:00Z",
        2,
        (15, "Prediction+Scheduled+ScaleUpLimit+Scheduled"),
    );
    let m = &d.reasons[1].message;
    assert!(
        m.contains("`0 8 * * *` (UTC) opening at 2026-01-15T08:00:00+00:00"),
        "{m}"
    );
    check("2026-01-15T08:59:59Z", 15, (15, "Prediction+Scheduled"));
    // Without data the floor still comes.
    let mut st = DecideState::default();
    let d = decide(
        &p,
        None,
        Observed::demand(2, None),
        &mut st,
        at("2026-01-15T07:58:00Z"),
    );
    assert_eq!((d.to, d.reason_codes().as_str()), (15, "NoData+Scheduled"));
    // The window closed: its floor was remembered as a recommendation, so the count
    // comes down after the scale-in stabilisation window, not at once.
    let mut st = DecideState::default();
    let mut replicas = 2;
    let mut counts = Vec::new();
    for k in 0..10 {
        let now = at("2026-01-15T08:56:00Z") + 60 * k;
        let d = decide(
            &p,
            Some(&flat(now, 20.0)),
            obs(replicas, 20.0),
            &mut st,
            now,
        );
        replicas = d.to;
        counts.push(replicas);
    }
    // Open until 09:00 (k = 4); 15 recommended until 08:59, held for 300 s.
    assert_eq!(counts, [15, 15, 15, 15, 15, 15, 15, 15, 2, 2]);
}

/// A scheduled maximum below the running count scales in only through the scale-in
/// stabilisation; one above `max_replicas` lets the count rise to it.
#[test]
fn a_scheduled_maximum_scales_in_through_the_stabilisation() {
    let mut p = policy();
    p.schedule = vec![
        schedule::window("0 22 * * *", "UTC", 3600, None, Some(3)),
        schedule::window("0 12 * * *", "UTC", 3600, None, Some(30)),
    ];
    let mut st = DecideState::default();
    let mut replicas = 10;
    let mut seen = Vec::new();
    for k in 0..9 {
        let now = at("2026-01-15T21:58:00Z") + 60 * k;
        let d = decide(
            &p,
            Some(&flat(now, 100.0)),
            obs(replicas, 100.0),
            &mut st,
            now,
        );
        replicas = d.to;
        seen.push((replicas, d.reason_codes()));
    }
    let counts: Vec<u32> = seen.iter().map(|s| s.0).collect();
    // 10 recommended until 21:59, held while within the last 300 s; the window's 3
    // from 22:04.
    assert_eq!(counts, [10, 10, 10, 10, 10, 10, 3, 3, 3], "{seen:?}");
    assert_eq!(seen[2].1, "Prediction+Scheduled+ScaleDownStabilized");
    assert_eq!(seen[6].1, "Prediction+Scheduled");
    // Midday: up to the window's 30 over max_replicas 20.
    let mut st = DecideState::default();
    let now = at("2026-01-15T12:10:00Z");
    let d = decide(&p, Some(&flat(now, 500.0)), obs(20, 500.0), &mut st, now);
    assert_eq!(
        (d.to, d.reason_codes().as_str()),
        (30, "Prediction+Scheduled")
    );
    let now = at("2026-01-15T13:10:00Z");
    let d = decide(&p, Some(&flat(now, 500.0)), obs(20, 500.0), &mut st, now);
    assert_eq!(
        (d.to, d.reason_codes().as_str()),
        (20, "Prediction+TooManyReplicas")
    );
}

/// A load planned from the target's recurring bursts is planned for as given, even below
/// the point forecast, and the reason says where it came from; at a share of 1 one from
/// the interval is the upper bound.
#[test]
fn the_prediction_says_where_its_planned_load_came_from() {
    let plan = |basis: PlanBasis, values: Vec<f64>| {
        let mut f = flat(0, 100.0);
        f.planned = Some(crate::forecast::Planned {
            share: 1.0,
            values,
            basis,
        });
        let d = decide(
            &policy(),
            Some(&f),
            obs(5, 20.0),
            &mut DecideState::default(),
            0,
        );
        let prediction = d.reasons.iter().find(|r| r.code == ReasonCode::Prediction);
        (
            d.to,
            prediction.map(|r| r.message.clone()).unwrap_or_default(),
        )
    };
    let recurring = PlanBasis::RecurringBursts { quantile: 0.975 };
    let (to, why) = plan(recurring, vec![30.0; 10]);
    assert_eq!(to, 3, "{why}");
    assert!(
        why.contains("97.5% quantile") && why.contains("recurring bursts"),
        "{why}"
    );
    let (to, why) = plan(PlanBasis::Interval, vec![100.0; 10]);
    assert_eq!(to, 10, "{why}");
    assert!(why.starts_with("upper forecast 100.000 rps"), "{why}");
    // A plan made for another share is not used: the upper bound is, and said so.
    let mut f = flat(0, 100.0);
    f.planned = Some(crate::forecast::Planned {
        share: 0.5,
        values: vec![30.0; 10],
        basis: recurring,
    });
    assert_eq!(f.plan_basis(1.0), PlanBasis::Interval);
    assert_eq!(f.plan_basis(0.5), recurring);
}

/// While the load planned for comes from the target's recurring bursts, scale-in waits
/// only the leanest window (that plan already keeps capacity where a burst may come back);
/// a plan from the interval, or a window configured by hand, keeps the full window.
#[test]
fn a_plan_from_recurring_bursts_scales_in_after_the_shorter_window() {
    let run = |basis: PlanBasis, recurring_scale_in: Option<i64>| {
        let p = Policy {
            recurring_scale_in,
            ..policy()
        };
        let mut st = DecideState::default();
        let planned = |upper: f64, now: i64| {
            let mut f = flat(now, upper);
            f.planned = Some(crate::forecast::Planned {
                share: 1.0,
                values: vec![upper; 10],
                basis,
            });
            f
        };
        let first = decide(&p, Some(&planned(100.0, 0)), obs(5, 20.0), &mut st, 0);
        assert_eq!(first.to, 10);
        decide(&p, Some(&planned(30.0, 120)), obs(10, 20.0), &mut st, 120).to
    };
    let recurring = PlanBasis::RecurringBursts { quantile: 0.975 };
    assert_eq!(run(recurring, Some(75)), 3);
    assert_eq!(run(recurring, None), 10);
    assert_eq!(run(PlanBasis::Interval, Some(75)), 10);
}

/// A forecast made at `now` for the next hour, planning `load(t)` at each minute `t`.
fn shaped(now: i64, load: impl Fn(i64) -> f64) -> Forecast {
    Forecast {
        generated_at: now,
        step_seconds: 60,
        model: "test",
        level: 0.95,
        planned: None,
        points: (1..=60)
            .map(|k| {
                let t = now + 60 * k;
                Point {
                    timestamp: t,
                    value: load(t),
                    lower: 0.0,
                    upper: load(t),
                }
            })
            .collect(),
    }
}

/// The counts asked for each minute from 0 to `until`, the demand staying at 50 rps
/// (5 replicas) and each decision planning from a forecast of `load`.
fn counts(change_cost: i64, until: i64, load: &dyn Fn(i64) -> f64) -> Vec<u32> {
    let p = Policy {
        change_cost,
        ..policy()
    };
    let mut st = DecideState::default();
    let mut replicas = 5;
    let mut seen = Vec::new();
    for now in (0..=until).step_by(60) {
        let d = decide(
            &p,
            Some(&shaped(now, load)),
            obs(replicas, 50.0),
            &mut st,
            now,
        );
        st.record_scale(now, d.from, d.to);
        replicas = d.to;
        seen.push(replicas);
    }
    seen
}

fn changes(counts: &[u32]) -> usize {
    counts.windows(2).filter(|w| w[0] != w[1]).count()
}

/// A burst planned for (at minute 20, ramping up over three minutes and its tail leaving
/// over six) that never comes: the HPA's behaviour follows the plan up and down in steps;
/// with a cost per change the count rises once and falls once.
#[test]
fn a_burst_cycle_gives_one_rise_and_one_fall() {
    let burst = |t: i64| match (t - 1200) / 60 {
        0 => 100.0,
        1 => 150.0,
        2 => 200.0,
        3 => 180.0,
        4 => 150.0,
        5 => 120.0,
        6 => 100.0,
        7 => 80.0,
        8 => 60.0,
        _ => 50.0,
    };
    let hpa = counts(0, 3600, &burst);
    let calm = counts(300, 3600, &burst);
    assert!(changes(&hpa) > 2, "{hpa:?}");
    assert_eq!(changes(&calm), 2, "{calm:?}");
    // The same peak is served, and the count comes back to where it started.
    assert_eq!(calm.iter().max(), hpa.iter().max());
    assert_eq!((calm[0], calm[calm.len() - 1]), (5, 5));
    // It holds more replica-time than the staircase, never less at any minute before
    // the fall.
    let fall = calm.iter().rposition(|&c| c > 5).expect("a rise");
    assert!(
        calm[..fall]
            .iter()
            .zip(&hpa)
            .all(|(c, h)| c >= h || *h == 5)
    );
}

/// At 10 replicas with demand for 5, a scale-in is held when the plan asks for 10 again
/// within a few minutes (a fall and a rise would cost more than the replicas held), with
/// the reason `Calm`; when it asks again only after half an hour, or without a cost per
/// change, the count falls.
#[test]
fn a_scale_in_is_held_when_the_plan_asks_for_the_count_again_soon() {
    let check = |change_cost: i64, back_at: i64, want: u32, codes: &str| {
        let p = Policy {
            change_cost,
            ..policy()
        };
        let f = shaped(0, |t| if t >= back_at { 100.0 } else { 50.0 });
        let d = decide(&p, Some(&f), obs(10, 50.0), &mut DecideState::default(), 0);
        assert_eq!(
            (d.to, d.reason_codes().as_str()),
            (want, codes),
            "cost {change_cost}, back at {back_at}: {d:?}"
        );
    };
    check(300, 720, 10, "Prediction+Calm");
    check(300, 2400, 5, "Prediction");
    check(0, 720, 5, "Prediction");
}
