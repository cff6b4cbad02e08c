//! The live loop on tokio's virtual time: no test here waits for real intervals.

use std::collections::BTreeMap;
use std::time::Duration;

use super::poll::merge_instances;
use super::*;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::source::replay::{ReplaySource, Trace};

const STEP: i64 = 60;

/// Two days of a smooth daily cycle, replayed so that its last bucket ends at `end`.
fn source(end: i64) -> ReplaySource {
    let n = 2 * 1440;
    let counts = (0..n)
        .map(|i| 600.0 + 300.0 * ((i % 1440) as f64 / 1440.0 * std::f64::consts::TAU).sin())
        .collect();
    let trace = Trace {
        start: 0,
        step: STEP,
        counts,
        ..Trace::default()
    };
    // Later buckets than `end` are never shown: the clock has not reached them.
    ReplaySource::new(trace, end - n as i64 * STEP)
}

fn live_loop(store: &Store, dir: &std::path::Path, end: i64) -> TargetLoop {
    let mut t = TargetConfig::example("web", 1.0, Duration::from_secs(300));
    t.interval = Duration::from_secs(STEP as u64);
    t.queries.request_rate = "demand".to_owned();
    TargetLoop {
        target: Arc::new(t),
        source: Arc::new(source(end + 3_600)),
        store: store.clone(),
        outbox: Outbox::open(&dir.join("state")).expect("outbox"),
        alerts: None,
        budget: None,
        forecast: ForecastConfig::default(),
        models: ModelsDir::new(dir.join("models")),
        ownership: None,
        kubernetes: None,
        persisting: Default::default(),
    }
}

/// Waits, yielding to the loop, until the store has logged `n` decisions.
async fn decisions(store: &Store, n: usize) -> Vec<DecisionRecord> {
    for _ in 0..10_000 {
        let (log, _) = store.decisions(Some("web"), 0, usize::MAX);
        if log.iter().map(|r| r.repeats).sum::<u64>() >= n as u64 {
            return log;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("fewer than {n} decisions");
}

#[tokio::test(start_paused = true)]
async fn the_loop_decides_once_per_interval_on_virtual_time() {
    let start = 1_800_000_000 / STEP * STEP;
    let clock = Clock::accelerated(start, 1.0);
    let target = TargetConfig::example("web", 1.0, Duration::from_secs(300));
    let store = Store::with_clock(std::slice::from_ref(&target), Metrics::new(), clock);
    let dir = tempfile::tempdir().expect("temporary directory");
    let live = live_loop(&store, dir.path(), start);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(live.run(stopped));
    // The first cycle runs at once; then one per virtual minute, each at its minute (a
    // cycle may start a second late when its sleep wakes late).
    for k in 1..=11 {
        decisions(&store, k).await;
        let at = store
            .target("web")
            .and_then(|s| s.last_decision.as_ref().map(|d| d.at - start));
        let want = (k as i64 - 1) * STEP;
        assert!(
            at.is_some_and(|t| (want..=want + 1).contains(&t)),
            "cycle {k} at {at:?}"
        );
        tokio::time::advance(Duration::from_secs(STEP as u64)).await;
    }
    {
        let state = store.target("web").expect("the target");
        assert!(
            state.backfill_tried,
            "the first cycle backfilled the history"
        );
        assert!(state.last_decision.as_ref().is_some_and(|d| d.to > 1));
    }
    stop.send(true).expect("stop");
    task.await.expect("the loop stops");
}

/// A per-instance signal losing an instance (a drained one gets no traffic, so its latency
/// series vanishes) clears only that signal's value; the instance stays while another
/// signal reports it.
#[test]
fn instances_stay_while_any_signal_reports_them() {
    let mut instances = BTreeMap::new();
    let rate: BTreeMap<String, f64> = [("a".to_owned(), 5.0), ("b".to_owned(), 0.0)].into();
    let latency: BTreeMap<String, f64> = [("a".to_owned(), 0.1)].into();
    merge_instances(&mut instances, Signal::InstanceRate, &rate);
    merge_instances(&mut instances, Signal::InstanceLatency, &latency);
    assert_eq!(instances.len(), 2, "{instances:?}");
    assert_eq!(instances["b"].latency, None);
    assert_eq!(instances["b"].rate, Some(0.0));
    merge_instances(&mut instances, Signal::InstanceRate, &BTreeMap::new());
    assert_eq!(instances.keys().collect::<Vec<_>>(), ["a"]);
}
