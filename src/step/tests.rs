//! The step on hand-made inputs: each defect found in the old live loop's glue has a test
//! here that fails without its fix.

use super::*;
use crate::decide::budget::Claim;
use crate::decide::{ExternalChange, RateKind, RatePolicy, Rules, Select};

const STEP: i64 = 60;

fn policy() -> TargetPolicy {
    TargetPolicy {
        name: "web".to_owned(),
        mode: Mode::Act,
        decide: Policy {
            capacity_rps: 10.0,
            target_utilization: 1.0,
            prediction_utilization: 1.0,
            interval_share: 1.0,
            tolerance: 0.0,
            min_replicas: 1,
            max_replicas: 100,
            lookahead: 360,
            interval: STEP,
            headroom: 0.0,
            scale_up: Rules::default_scale_up(),
            scale_down: Rules {
                stabilization_window: 0,
                ..Rules::default_scale_down()
            },
            recurring_scale_in: None,
            change_cost: 0,
            schedule: Vec::new(),
        },
        forecast: forecast::Settings {
            step: STEP,
            level: 0.95,
            horizon: 3_600,
            refit_every: 3_600,
            refit_phase: 0,
        },
        step: STEP,
        stale_after: 240,
        startup: 300,
        latency_slo: None,
        capacity_rps: Some(10.0),
        learns_capacity: false,
        observes_replicas: false,
        // The world of these tests runs one replica when the step first sees it.
        initial_replicas: Some(1),
        scales: true,
        floor_only: false,
        balances: true,
        rebalance: balance::Settings::default(),
        priority: 0,
        alert: None,
        external_changes: ExternalChanges::Follow,
    }
}

/// A target's series and signal health, fed by hand.
struct World {
    rate: Series,
    latency: Series,
    replicas: Series,
    signals: BTreeMap<Signal, SignalHealth>,
    instances: BTreeMap<String, InstanceStats>,
    paused: bool,
}

impl World {
    fn new(signals: &[Signal]) -> Self {
        Self {
            rate: Series::new(STEP, 10_000),
            latency: Series::new(STEP, 10_000),
            replicas: Series::new(STEP, 10_000),
            signals: signals
                .iter()
                .map(|&s| (s, SignalHealth::default()))
                .collect(),
            instances: BTreeMap::new(),
            paused: false,
        }
    }

    /// Observes a sample of `signal` at `now`.
    fn observe(&mut self, signal: Signal, now: i64, value: f64) {
        let series = match signal {
            Signal::Latency => &mut self.latency,
            Signal::Replicas => &mut self.replicas,
            _ => &mut self.rate,
        };
        series.extend([Sample { ts: now, value }]);
        let h = self.signals.entry(signal).or_default();
        h.newest = Some(now);
        h.last_poll = Some(now);
    }

    fn step(&self, policy: &TargetPolicy, memory: &mut Memory, now: i64) -> Plan {
        let inputs = Inputs {
            now,
            rate: &self.rate,
            latency: &self.latency,
            replicas: &self.replicas,
            signals: &self.signals,
            instances: &self.instances,
            paused: self.paused,
            refit: false,
            budget: None,
        };
        step(policy, memory, &inputs)
    }
}

fn stats(latency: Option<f64>) -> InstanceStats {
    InstanceStats {
        rate: Some(5.0),
        latency,
        errors: None,
    }
}

/// Defect: a drained instance whose latency series disappears (it gets no traffic once
/// drained) was dropped, and never restored: no weight was sent for it again.
#[test]
fn a_drained_instance_whose_series_vanish_is_restored_and_its_weight_sent() {
    let p = policy();
    let mut w = World::new(&[Signal::RequestRate, Signal::InstanceLatency]);
    let mut m = Memory::default();
    let names = ["a", "b", "c", "d", "e"];
    let mut drained_at = None;
    for k in 0..10 {
        let now = k * STEP;
        w.observe(Signal::RequestRate, now, 20.0);
        for n in names {
            let latency = if n == "e" {
                2.0
            } else {
                0.1 + 0.001 * k as f64
            };
            w.instances.insert(n.to_owned(), stats(Some(latency)));
        }
        let plan = w.step(&p, &mut m, now);
        if let Some(r) = plan.rebalance.filter(|r| r.drained.contains_key("e")) {
            assert_eq!(r.weights.get("e"), Some(&0), "{r:?}");
            drained_at = Some(k);
            break;
        }
    }
    let drained_at = drained_at.expect("the outlier is drained");
    // Drained, `e` gets no traffic: it vanishes from every per-instance series.
    let mut restored = None;
    for k in drained_at + 1..drained_at + 20 {
        let now = k * STEP;
        w.observe(Signal::RequestRate, now, 20.0);
        w.instances.remove("e");
        let plan = w.step(&p, &mut m, now);
        if let Some(r) = plan.rebalance {
            assert!(plan.send_rebalance);
            if r.restored.contains(&"e".to_owned()) {
                restored = Some(r);
                break;
            }
        }
    }
    let r = restored.expect("the drained instance is restored");
    assert!(r.weights.get("e").is_some_and(|&w| w > 0), "{r:?}");
    assert!(!m.drained.contains_key("e"));
}

/// Defect: a per-instance signal with no series yet (`instance_errors` on a healthy fleet)
/// kept the whole target degraded, so it never scaled in.
#[test]
fn a_per_instance_signal_without_data_does_not_stop_scale_in() {
    let p = policy();
    let mut w = World::new(&[Signal::RequestRate, Signal::InstanceErrors]);
    // It asked for 10 an hour ago, and 10 run.
    let mut m = Memory {
        asked: Some(Asked {
            replicas: 10,
            at: -3_600,
        }),
        running: Some(10),
        ..Memory::default()
    };
    let mut last = None;
    for k in 0..5 {
        let now = k * STEP;
        w.observe(Signal::RequestRate, now, 20.0);
        let plan = w.step(&p, &mut m, now);
        assert!(plan.degraded.is_empty(), "{:?}", plan.degraded);
        last = Some(plan.decision);
    }
    let d = last.expect("decided");
    assert!(d.to < 10, "scaled in: {d:?}");
    // A failing target-level signal still degrades and holds.
    w.signals
        .get_mut(&Signal::RequestRate)
        .expect("configured")
        .error = Some("down".into());
    let plan = w.step(&p, &mut m, 5 * STEP);
    assert!(!plan.degraded.is_empty());
    assert!(
        plan.decision.to >= plan.decision.from,
        "{:?}",
        plan.decision
    );
}

/// A policy whose scale-up is limited to 4 more replicas per 10 minutes.
fn slow_scale_up() -> TargetPolicy {
    let mut p = policy();
    p.observes_replicas = true;
    p.decide.scale_up = Rules {
        stabilization_window: 0,
        select: Select::Max,
        policies: vec![RatePolicy {
            kind: RateKind::Pods,
            value: 4,
            period: 600,
        }],
    };
    p
}

/// Defect: while the running count lagged the count asked for, every cycle recorded the
/// same scale-up again, so the rate limits counted one scale-up many times and held back
/// the next real one.
#[test]
fn a_lagging_platform_does_not_count_one_scale_up_many_times() {
    let p = slow_scale_up();
    let mut w = World::new(&[Signal::RequestRate, Signal::Replicas]);
    let mut m = Memory::default();
    // Demand asks for 6; 2 run and the platform is slow.
    let mut sent = Vec::new();
    for k in 0..5 {
        let now = k * STEP;
        w.observe(Signal::RequestRate, now, 60.0);
        w.observe(Signal::Replicas, now, 2.0);
        let plan = w.step(&p, &mut m, now);
        if plan.scale {
            sent.push(plan.decision.to);
        }
    }
    assert_eq!(sent, [6], "asked once, not every cycle");
    // Eleven minutes after the first ask, the period is over: the next scale-up may add 4.
    let now = 11 * STEP;
    w.observe(Signal::RequestRate, now, 100.0);
    w.observe(Signal::Replicas, now, 6.0);
    let plan = w.step(&p, &mut m, now);
    assert!(plan.scale);
    assert_eq!(plan.decision.to, 10, "{:?}", plan.decision);
}

/// Defect: while paused, each cycle's decision was recorded as a scale event, so right
/// after a resume the rate limits held back the first real scale-up.
#[test]
fn a_pause_records_nothing_for_the_rate_limits() {
    let p = slow_scale_up();
    let mut w = World::new(&[Signal::RequestRate, Signal::Replicas]);
    let mut m = Memory::default();
    w.paused = true;
    for k in 0..3 {
        let now = k * STEP;
        w.observe(Signal::RequestRate, now, 60.0);
        w.observe(Signal::Replicas, now, 2.0);
        let plan = w.step(&p, &mut m, now);
        assert!(!plan.scale, "nothing is asked while paused");
    }
    w.paused = false;
    let now = 3 * STEP;
    w.observe(Signal::RequestRate, now, 60.0);
    w.observe(Signal::Replicas, now, 2.0);
    let plan = w.step(&p, &mut m, now);
    assert!(plan.scale);
    assert_eq!(plan.decision.to, 6, "{:?}", plan.decision);
}

/// A platform that never converges is asked again once a start-up has passed.
#[test]
fn a_lost_ask_is_repeated_after_the_startup() {
    let p = slow_scale_up();
    let mut w = World::new(&[Signal::RequestRate, Signal::Replicas]);
    let mut m = Memory::default();
    let mut asks = Vec::new();
    for k in 0..15 {
        let now = k * STEP;
        w.observe(Signal::RequestRate, now, 40.0);
        w.observe(Signal::Replicas, now, 2.0);
        if w.step(&p, &mut m, now).scale {
            asks.push(now);
        }
    }
    // Asked at 0, then again once startup + interval (360 s) passed without it running.
    assert_eq!(asks, [0, 360, 720], "{asks:?}");
}

/// Forecast-only: nothing is sent, but the count that would be asked for is remembered.
#[test]
fn forecast_only_sends_nothing() {
    let mut p = policy();
    p.mode = Mode::ForecastOnly;
    let mut w = World::new(&[Signal::RequestRate]);
    let mut m = Memory::default();
    w.observe(Signal::RequestRate, 0, 60.0);
    let plan = w.step(&p, &mut m, 0);
    assert!(!plan.scale);
    assert_eq!((plan.decision.to, plan.replicas), (6, Some(6)));
}

/// Without a capacity the step holds and says why.
#[test]
fn no_capacity_holds() {
    let mut p = policy();
    p.capacity_rps = None;
    p.decide.capacity_rps = f64::NAN;
    let mut w = World::new(&[Signal::RequestRate]);
    let mut m = Memory::default();
    w.observe(Signal::RequestRate, 0, 60.0);
    let plan = w.step(&p, &mut m, 0);
    assert_eq!(plan.decision.reasons[0].code, ReasonCode::NoCapacity);
    assert!(!plan.scale);
}

/// The budget limits the step's count to its share and says so.
#[test]
fn the_budget_limits_the_count() {
    let p = policy();
    let mut w = World::new(&[Signal::RequestRate]);
    let mut m = Memory::default();
    w.observe(Signal::RequestRate, 0, 100.0);
    let view = BudgetView {
        total: 8,
        claims: vec![
            Claim {
                priority: 1,
                min: 1,
                want: 5,
            },
            Claim {
                priority: 0,
                min: 1,
                want: 1,
            },
        ],
        mine: 1,
    };
    let inputs = Inputs {
        now: 0,
        rate: &w.rate,
        latency: &w.latency,
        replicas: &w.replicas,
        signals: &w.signals,
        instances: &w.instances,
        paused: false,
        refit: false,
        budget: Some(&view),
    };
    let plan = step(&p, &mut m, &inputs);
    assert_eq!(
        (plan.wanted, plan.decision.to),
        (10, 3),
        "{:?}",
        plan.decision
    );
    assert!(
        plan.decision
            .reasons
            .iter()
            .any(|r| r.code == ReasonCode::BudgetLimited)
    );
}

/// More run than was asked for (someone scaled up by hand): the count asked for is asked
/// again once a start-up has passed, but not while data is missing or stale, when that
/// would be a scale-in.
#[test]
fn no_scale_in_is_asked_again_while_degraded() {
    let p = slow_scale_up();
    let mut w = World::new(&[Signal::RequestRate, Signal::Replicas]);
    let mut m = Memory {
        asked: Some(Asked {
            replicas: 4,
            at: -3_600,
        }),
        ..Memory::default()
    };
    w.observe(Signal::RequestRate, 0, 40.0);
    w.observe(Signal::Replicas, 0, 9.0);
    w.signals
        .get_mut(&Signal::RequestRate)
        .expect("configured")
        .error = Some("down".into());
    let plan = w.step(&p, &mut m, 0);
    assert!(!plan.degraded.is_empty());
    assert!(
        !plan.scale,
        "no scale-in asked again while degraded: {:?}",
        plan.decision
    );
    w.signals
        .get_mut(&Signal::RequestRate)
        .expect("configured")
        .error = None;
    let plan = w.step(&p, &mut m, 60);
    assert!(plan.scale, "asked again once healthy: {:?}", plan.decision);
    assert_eq!(plan.decision.to, 4);
}

/// Defect: without a `replicas` query and with nothing remembered, `min_replicas` was taken
/// as running, so a restart asked "from 1 to 5" while 20 ran. Now the count is unknown:
/// the step decides and shows, asks for nothing, says `ReplicasUnknown` and is degraded
/// with what to do; `initial_replicas` lets it act from the count it names.
#[test]
fn an_unknown_running_count_asks_for_nothing_until_initial_replicas_names_it() {
    let mut p = policy();
    p.initial_replicas = None;
    let mut w = World::new(&[Signal::RequestRate]);
    let mut m = Memory::default();
    for k in 0..3 {
        let now = k * STEP;
        w.observe(Signal::RequestRate, now, 200.0);
        let plan = w.step(&p, &mut m, now);
        assert!(
            !plan.scale,
            "asked from an unknown count: {:?}",
            plan.decision
        );
        let last = plan.decision.reasons.last().expect("reasons");
        assert_eq!(
            last.code,
            ReasonCode::ReplicasUnknown,
            "{:?}",
            plan.decision
        );
        assert!(plan.replicas.is_none());
        assert!(
            plan.degraded.iter().any(|r| r.contains("initial_replicas")),
            "{:?}",
            plan.degraded
        );
        assert_eq!(
            m.unknown_running.as_deref(),
            plan.degraded.last().map(String::as_str)
        );
        assert!(m.asked.is_none(), "nothing recorded as asked");
    }
    p.initial_replicas = Some(8);
    let plan = w.step(&p, &mut m, 3 * STEP);
    assert!(plan.scale, "{:?}", plan.decision);
    assert_eq!(
        plan.decision.from, 8,
        "from the count named: {:?}",
        plan.decision
    );
    assert!(plan.degraded.is_empty() && m.unknown_running.is_none());
    assert!(
        plan.decision
            .reasons
            .iter()
            .all(|r| r.code != ReasonCode::ReplicasUnknown)
    );
    // Once asked for, that count is what runs; `initial_replicas` is not used again.
    let asked = plan.decision.to;
    p.initial_replicas = Some(2);
    let plan = w.step(&p, &mut m, 4 * STEP);
    assert_eq!((plan.decision.from, plan.replicas), (asked, Some(asked)));
}

/// With a `replicas` query, the count is unknown until its first sample (or
/// `initial_replicas`); a target that sends no scale action (no platform, or
/// `forecast-only`) is never held for it and shows no degraded reason.
#[test]
fn a_replicas_query_without_a_sample_holds_and_targets_that_send_nothing_never_do() {
    let mut p = policy();
    p.observes_replicas = true;
    p.initial_replicas = None;
    let mut w = World::new(&[Signal::RequestRate, Signal::Replicas]);
    let mut m = Memory::default();
    w.observe(Signal::RequestRate, 0, 200.0);
    let plan = w.step(&p, &mut m, 0);
    assert!(!plan.scale);
    assert_eq!(
        plan.decision.reasons.last().map(|r| r.code),
        Some(ReasonCode::ReplicasUnknown)
    );
    assert!(m.unknown_running.is_none(), "the replicas signal says it");
    w.observe(Signal::Replicas, STEP, 12.0);
    w.observe(Signal::RequestRate, STEP, 200.0);
    let plan = w.step(&p, &mut m, STEP);
    assert!(
        plan.scale && plan.decision.from == 12,
        "{:?}",
        plan.decision
    );

    for (mode, scales) in [(Mode::Act, false), (Mode::ForecastOnly, true)] {
        let mut p = policy();
        (p.initial_replicas, p.mode, p.scales) = (None, mode, scales);
        let mut w = World::new(&[Signal::RequestRate]);
        let mut m = Memory::default();
        w.observe(Signal::RequestRate, 0, 60.0);
        let plan = w.step(&p, &mut m, 0);
        assert!(plan.degraded.is_empty(), "{mode:?}: {:?}", plan.degraded);
        assert_eq!((plan.decision.from, plan.decision.to), (1, 6), "{mode:?}");
    }
}

/// After a restart without a `replicas` query: decisions start from the count last asked
/// for, and the count remembered as running is what runs; when they differ (the ask was
/// lost), the count is asked for again once a start-up has passed since it was asked.
#[test]
fn a_resumed_target_starts_from_the_count_asked_for_and_repeats_a_lost_ask() {
    let p = policy();
    let mut w = World::new(&[Signal::RequestRate]);
    let mut m = Memory::default();
    // Asked for 20 long ago (delivered); 20 run; demand needs 20 at 10 rps each.
    m.resume(
        &p,
        Asked {
            replicas: 20,
            at: -7_200,
        },
        Some(20),
        0,
    );
    w.observe(Signal::RequestRate, 0, 200.0);
    let plan = w.step(&p, &mut m, 0);
    assert_eq!((plan.decision.from, plan.replicas), (20, Some(20)));
    assert!(!plan.scale, "nothing new to ask: {:?}", plan.decision);
    // Asked for 20 (a dead letter) but only 15 were delivered: 20 is asked for again.
    let mut m = Memory::default();
    m.resume(
        &p,
        Asked {
            replicas: 20,
            at: -7_200,
        },
        Some(15),
        0,
    );
    let plan = w.step(&p, &mut m, 0);
    assert!(plan.scale, "{:?}", plan.decision);
    assert_eq!((plan.decision.from, plan.decision.to), (20, 20));
}

/// A scheduled floor is the target's floor under the budget, and holds without a capacity.
#[test]
fn a_scheduled_floor_holds_under_the_budget_and_without_capacity() {
    let mut p = policy();
    // Open from 00:00 UTC on 1 January 1970 (now = 0) for an hour: at least 7.
    p.decide.schedule = vec![crate::decide::schedule::window(
        "0 0 * * *",
        "UTC",
        3600,
        Some(7),
        None,
    )];
    let mut w = World::new(&[Signal::RequestRate]);
    w.observe(Signal::RequestRate, 0, 100.0);
    let view = BudgetView {
        total: 8,
        claims: vec![
            Claim {
                priority: 1,
                min: 1,
                want: 5,
            },
            Claim {
                priority: 0,
                min: 1,
                want: 1,
            },
        ],
        mine: 1,
    };
    let inputs = Inputs {
        now: 0,
        rate: &w.rate,
        latency: &w.latency,
        replicas: &w.replicas,
        signals: &w.signals,
        instances: &w.instances,
        paused: false,
        refit: false,
        budget: Some(&view),
    };
    let plan = step(&p, &mut Memory::default(), &inputs);
    // Without the window the budget grants 3 (see the_budget_limits_the_count).
    assert_eq!(
        (plan.wanted, plan.decision.to),
        (10, 7),
        "{:?}",
        plan.decision
    );

    p.capacity_rps = None;
    p.decide.capacity_rps = f64::NAN;
    let plan = w.step(&p, &mut Memory::default(), 0);
    assert_eq!(
        (plan.decision.to, plan.decision.reason_codes().as_str()),
        (7, "NoCapacity+Scheduled")
    );
}

/// A target that observes its running count and scales in by at most 2 per minute after
/// a 5-minute stabilisation window; demand needs 8 (80 rps at 10 rps per replica).
fn observed_target(then: ExternalChanges) -> (TargetPolicy, World, Memory) {
    let mut p = policy();
    p.observes_replicas = true;
    p.initial_replicas = None;
    p.external_changes = then;
    p.decide.scale_down = Rules {
        stabilization_window: 300,
        select: Select::Max,
        policies: vec![RatePolicy {
            kind: RateKind::Pods,
            value: 2,
            period: 60,
        }],
    };
    let w = World::new(&[Signal::RequestRate, Signal::Replicas]);
    let m = Memory {
        asked: Some(Asked {
            replicas: 8,
            at: -3_600,
        }),
        ..Memory::default()
    };
    (p, w, m)
}

/// Steps at `now` with `running` observed and 80 rps.
fn step_observed(p: &TargetPolicy, w: &mut World, m: &mut Memory, now: i64, running: u32) -> Plan {
    w.observe(Signal::Replicas, now, f64::from(running));
    w.observe(Signal::RequestRate, now, 80.0);
    w.step(p, m, now)
}

fn has(plan: &Plan, code: ReasonCode) -> bool {
    plan.decision.reasons.iter().any(|r| r.code == code)
}

/// Defect: someone scaled to 30 during an incident and the next decision read `30 -> 8`
/// at once, with no stabilisation. Now the change is recorded as `External`, decisions
/// start from the observed count, scale-in waits the stabilisation window and then goes
/// through the rate limits; every decision's `from` is the count observed.
#[test]
fn an_external_scale_out_is_followed_and_scaled_in_only_after_the_window() {
    let (p, mut w, mut m) = observed_target(ExternalChanges::Follow);
    let plan = step_observed(&p, &mut w, &mut m, 0, 8);
    assert!(
        plan.external.is_none() && !plan.scale,
        "{:?}",
        plan.decision
    );
    let plan = step_observed(&p, &mut w, &mut m, STEP, 30);
    assert_eq!(
        plan.external,
        Some(ExternalChange {
            from: 8,
            to: 30,
            at: STEP
        })
    );
    assert!(has(&plan, ReasonCode::External), "{:?}", plan.decision);
    assert_eq!(plan.explain.inputs.external, plan.external);
    assert_eq!((plan.decision.from, plan.decision.to), (30, 30));
    assert!(!plan.scale && !plan.hold);
    // Held for the window (30 recommended at 60 s, until 360 s), then 2 per minute.
    let mut running = 30;
    let mut asked = Vec::new();
    for k in 2..12 {
        let now = k * STEP;
        let plan = step_observed(&p, &mut w, &mut m, now, running);
        assert!(!has(&plan, ReasonCode::External), "{:?}", plan.decision);
        assert_eq!(plan.decision.from, running, "{:?}", plan.decision);
        if now < STEP + 300 {
            assert!(
                !plan.scale,
                "scale-in within the window: {:?}",
                plan.decision
            );
            assert!(
                has(&plan, ReasonCode::ScaleDownStabilized),
                "{:?}",
                plan.decision
            );
        }
        if plan.scale {
            asked.push((now, plan.decision.to));
            running = plan.decision.to;
        }
    }
    assert_eq!(
        asked,
        [
            (360, 28),
            (420, 26),
            (480, 24),
            (540, 22),
            (600, 20),
            (660, 18)
        ]
    );
}

/// Defect: a count set to 0 by someone else was folded into an `8 -> 8` hold. Now it is
/// recorded, decisions start from 0 and scale out through the scale-up rate limits; no
/// message prints `inf%` or `NaN`.
#[test]
fn an_external_scale_to_zero_is_recorded_and_scaled_out_from_zero() {
    let (p, mut w, mut m) = observed_target(ExternalChanges::Follow);
    step_observed(&p, &mut w, &mut m, 0, 8);
    let plan = step_observed(&p, &mut w, &mut m, STEP, 0);
    assert_eq!(plan.external.map(|c| (c.from, c.to)), Some((8, 0)));
    // From 0, the default scale-up allows 4 pods per 15 s, then doubling: 8 in a minute.
    assert_eq!((plan.decision.from, plan.decision.to), (0, 8));
    assert!(plan.scale);
    for r in &plan.decision.reasons {
        assert!(
            !r.message.contains("inf") && !r.message.contains("NaN"),
            "{r:?}"
        );
    }
}

/// With `external_changes = "hold"`, an external change pauses the target: nothing is
/// asked for at that step, and the plan says to pause.
#[test]
fn an_external_change_under_hold_asks_for_nothing_and_pauses() {
    let (p, mut w, mut m) = observed_target(ExternalChanges::Hold);
    step_observed(&p, &mut w, &mut m, 0, 8);
    let plan = step_observed(&p, &mut w, &mut m, STEP, 0);
    assert!(plan.hold && !plan.scale, "{:?}", plan.decision);
    assert!(has(&plan, ReasonCode::External));
    assert_eq!(plan.decision.from, 0);
}

/// Under an HPA's floor (`hpa-floor`) the HPA sets the count above the floor: its changes
/// are never someone else's, so they neither pause a `hold` target nor reset its asks.
#[test]
fn the_hpas_own_changes_above_a_floor_are_not_external() {
    let (mut p, mut w, mut m) = observed_target(ExternalChanges::Hold);
    p.floor_only = true;
    step_observed(&p, &mut w, &mut m, 0, 8);
    for (k, running) in [(1, 30), (2, 12), (3, 0)] {
        let plan = step_observed(&p, &mut w, &mut m, k * STEP, running);
        assert!(plan.external.is_none() && !plan.hold, "{:?}", plan.decision);
        assert!(!has(&plan, ReasonCode::External), "{:?}", plan.decision);
    }
}

/// prescale's own scale-out still rolling out (the observed count lags the ask) is not an
/// external change, and is not asked for again before a start-up has passed.
#[test]
fn prescales_own_scale_rolling_out_is_not_external() {
    let (p, mut w, mut m) = observed_target(ExternalChanges::Follow);
    step_observed(&p, &mut w, &mut m, 0, 8);
    w.observe(Signal::RequestRate, STEP, 200.0);
    w.observe(Signal::Replicas, STEP, 8.0);
    let plan = w.step(&p, &mut m, STEP);
    assert!(plan.scale, "{:?}", plan.decision);
    let to = plan.decision.to;
    assert!(to > 8);
    for (k, running) in [(2, 9), (3, to - 1), (4, to)] {
        w.observe(Signal::RequestRate, k * STEP, 200.0);
        w.observe(Signal::Replicas, k * STEP, f64::from(running));
        let plan = w.step(&p, &mut m, k * STEP);
        assert!(plan.external.is_none(), "{:?}", plan.decision);
        assert_eq!(plan.decision.from, running);
    }
}
