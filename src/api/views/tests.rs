//! Each view serialises exactly like the type it copies.

use serde::Serialize;

use super::*;
use crate::forecast::bottleneck::{Breach as CoreBreach, BreachSignal as CoreSignal};
use crate::forecast::capacity::{self as cap, CapacitySource as CoreSource};

/// The view of `core` serialises as `core` does.
fn check<C: Serialize + std::fmt::Debug, V: Serialize>(core: &C, view: V) {
    let want = serde_json::to_value(core).expect("core type serialises");
    let got = serde_json::to_value(view).expect("view serialises");
    assert_eq!(got, want, "view of {core:?}");
}

fn decision(reasons: usize, peak: bool) -> decide::Decision {
    decision_with(reasons, peak, crate::forecast::PlanBasis::Interval)
}

fn decision_with(
    reasons: usize,
    peak: bool,
    basis: crate::forecast::PlanBasis,
) -> decide::Decision {
    decide::Decision {
        at: 1_800_000_000,
        from: 2,
        to: 5,
        reasons: (0..reasons)
            .map(|k| decide::Reason::new(decide::ReasonCode::Prediction, format!("reason {k}")))
            .collect(),
        peak: peak.then_some(decide::Peak {
            timestamp: 1_800_000_600,
            value: 41.5,
            upper: 48.25,
            planned: 45.0,
            basis,
        }),
    }
}

#[test]
fn decisions_and_their_records() {
    let recurring = crate::forecast::PlanBasis::RecurringBursts { quantile: 0.9 };
    for d in [
        decision(0, false),
        decision(2, true),
        decision_with(1, true, recurring),
    ] {
        check(&d, Decision::from(&d));
        for mode in [config::Mode::Act, config::Mode::ForecastOnly] {
            let r = store::DecisionRecord::new("web", d.clone(), mode);
            check(&r, DecisionRecord::from(&r));
        }
    }
}

#[test]
fn capacities() {
    let learned = cap::Learned {
        curve: cap::LatencyCurve {
            base: 0.05,
            gain: 0.01,
            saturation: 14.0,
        },
        capacity_rps: 12.5,
        capped: true,
        pairs: 300,
        max_load_rps: 9.0,
    };
    for (source, learned) in [
        (CoreSource::Configured, Some(learned.clone())),
        (CoreSource::Learned, Some(learned)),
        (CoreSource::Unknown, None),
    ] {
        let c = cap::Capacity {
            effective_rps: learned.as_ref().map(|l| l.capacity_rps),
            source,
            reason: "why".into(),
            configured_rps: None,
            learned,
        };
        check(&c, Capacity::from(&c));
    }
}

#[test]
fn bottlenecks() {
    let breach = |signal, latency| CoreBreach {
        at: 1_800_000_600,
        seconds_to_breach: 600,
        signal,
        expected_shortfall_rps: 0.0,
        upper_shortfall_rps: 2.5,
        predicted_latency_seconds: latency,
    };
    for breach in [
        None,
        Some(breach(CoreSignal::RequestRate, None)),
        Some(breach(CoreSignal::Latency, Some(0.4))),
    ] {
        let b = forecast::bottleneck::Bottleneck {
            replicas: 3,
            capacity_rps: 30.0,
            headroom_now_rps: Some(-1.5),
            utilisation_now: None,
            horizon_end: 1_800_003_600,
            breach,
        };
        check(&b, Bottleneck::from(&b));
    }
}

#[test]
fn model_info() {
    let i = forecast::ModelInfo {
        model: "ets",
        description: "ets: level alpha 0.15".into(),
        fitted_at: 1_800_000_000,
        last_observation: 1_800_000_060,
        calibrated: true,
        calibration_coverage: Some(0.95),
        coverage: None,
        coverage_samples: 17,
        selection: vec![forecast::Score {
            model: "naive".into(),
            description: "seasonal naive".into(),
            loss: 6.25,
        }],
    };
    check(&i, ModelInfo::from(i.clone()));
}

#[test]
fn signals_instances_deliveries_points_samples() {
    let h = store::SignalHealth {
        newest: Some(1),
        last_poll: None,
        error: Some("boom".into()),
        loading: Some(0),
    };
    check(&h, SignalHealth::from(&h));
    let s = store::InstanceStats {
        rate: Some(3.0),
        latency: None,
        errors: Some(0.01),
    };
    check(&s, InstanceStats::from(&s));
    let d = store::DeliveryRecord {
        kind: crate::act::ActionKind::Scale,
        idempotency_key: "k".into(),
        outcome: crate::act::outbox::DeliveryOutcome::GaveUp,
        attempts: 3,
        error: Some("refused".into()),
        at: 7,
    };
    check(&d, DeliveryRecord::from(&d));
    let p = forecast::Point {
        timestamp: 60,
        value: 1.0,
        lower: 0.5,
        upper: 1.5,
    };
    check(&p, Point::from(&p));
    let s = series::Sample { ts: 60, value: 2.0 };
    check(&s, Sample::from(s));
    for m in [config::Mode::Act, config::Mode::ForecastOnly] {
        check(&m, Mode::from(m));
    }
}
