//! The live loop on tokio's virtual time: no test here waits for real intervals.

use std::collections::BTreeMap;
use std::time::Duration;

use super::poll::merge_instances;
use super::*;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::source::replay::{ReplaySource, Trace};
use crate::source::{Checked, SourceError};

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

/// A source that answers as `inner` after `delay` (on tokio's clock), recording every
/// range asked for: `(start, end)`.
struct Slow {
    inner: ReplaySource,
    delay: Duration,
    asked: std::sync::Mutex<Vec<(i64, i64)>>,
}

impl Source for Slow {
    fn range_checked<'a>(
        &'a self,
        query: &'a str,
        start: i64,
        end: i64,
        step: i64,
    ) -> crate::source::BoxFuture<'a, Result<Checked<Vec<Sample>>, SourceError>> {
        Box::pin(async move {
            self.asked.lock().expect("asked").push((start, end));
            tokio::time::sleep(self.delay).await;
            self.inner.range_checked(query, start, end, step).await
        })
    }

    fn range_by_checked<'a>(
        &'a self,
        query: &'a str,
        label: &'a str,
        start: i64,
        end: i64,
        step: i64,
    ) -> crate::source::BoxFuture<'a, Result<Checked<crate::source::Grouped>, SourceError>> {
        self.inner.range_by_checked(query, label, start, end, step)
    }
}

/// `live_loop` over a [`Slow`] source answering after `delay`.
fn slow_loop(
    store: &Store,
    dir: &std::path::Path,
    end: i64,
    delay: Duration,
) -> (TargetLoop, Arc<Slow>) {
    let slow = Arc::new(Slow {
        inner: source(end + 3_600),
        delay,
        asked: std::sync::Mutex::default(),
    });
    let mut live = live_loop(store, dir, end);
    live.source = slow.clone();
    (live, slow)
}

/// Yields to the loop on paused time until `done` holds of the store.
async fn until(store: &Store, what: &str, done: impl Fn(&Store) -> bool) {
    for _ in 0..100_000 {
        if done(store) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never: {what}");
}

#[tokio::test(start_paused = true)]
async fn the_loop_decides_on_the_recent_hours_then_loads_the_older_history_newest_first() {
    let start = 1_800_000_000 / STEP * STEP;
    let clock = Clock::accelerated(start, 1.0);
    let target = TargetConfig::example("web", 1.0, Duration::from_secs(300));
    let store = Store::with_clock(std::slice::from_ref(&target), Metrics::new(), clock);
    let dir = tempfile::tempdir().expect("temporary directory");
    let (live, slow) = slow_loop(&store, dir.path(), start, Duration::from_secs(1));
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(live.run(stopped));
    until(&store, "a decision on the recent hours", |s| {
        s.target("web").is_some_and(|t| t.last_decision.is_some())
    })
    .await;
    {
        let t = store.target("web").expect("the target");
        assert!(t.backfill_tried);
        let loading = t.signals[&Signal::RequestRate].loading;
        assert!(loading.is_some(), "the older history is still loading");
        let why = t.degraded_reasons(store.now()).join("; ");
        assert!(why.contains("older history still loading"), "{why}");
    }
    until(&store, "the older history", |s| {
        s.target("web")
            .is_some_and(|t| t.signals[&Signal::RequestRate].loading.is_none())
    })
    .await;
    {
        let t = store.target("web").expect("the target");
        // All the trace has before the start: 47 hours (it ends an hour after it), the
        // history being longer (older chunks are empty).
        assert!(t.rate.len() >= 47 * 60, "{} points", t.rate.len());
        assert!(t.degraded_reasons(store.now()).is_empty());
    }
    stop.send(true).expect("stop");
    task.await.expect("the loop stops");
    let asked = slow.asked.lock().expect("asked").clone();
    let (first_start, first_end) = asked[0];
    assert!(
        first_end - first_start <= backfill::RECENT_SECS,
        "{asked:?}"
    );
    let older: Vec<(i64, i64)> = asked
        .iter()
        .copied()
        .filter(|a| a.1 < first_start)
        .collect();
    assert_eq!(
        older.first().map(|o| o.1),
        Some(first_start - STEP),
        "{asked:?}"
    );
    for w in older.windows(2) {
        assert_eq!(w[1].1, w[0].0 - STEP, "newest first: {asked:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_cycle_longer_than_the_interval_puts_the_loop_behind_schedule() {
    let start = 1_800_000_000 / STEP * STEP;
    let clock = Clock::accelerated(start, 1.0);
    let target = TargetConfig::example("web", 1.0, Duration::from_secs(300));
    let store = Store::with_clock(std::slice::from_ref(&target), Metrics::new(), clock);
    let dir = tempfile::tempdir().expect("temporary directory");
    // Each poll takes a minute and a half; cycles are due every minute.
    let (live, _) = slow_loop(&store, dir.path(), start, Duration::from_secs(90));
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(live.run(stopped));
    until(&store, "the loop behind schedule", |s| {
        s.cycles().lag().behind == 1
    })
    .await;
    let lag = store.cycles().lag();
    assert_eq!(lag.slowest.as_deref(), Some("web"));
    assert!(lag.max_lag_seconds >= 29.0, "{lag:?}");
    // The second cycle was due at a minute and started at a minute and a half.
    let text = store.metrics().encode();
    assert!(
        text.contains("prescale_cycle_lag_seconds{target=\"web\"} 30.0"),
        "{text}"
    );
    assert!(
        text.contains("prescale_cycle_duration_seconds_bucket{le=\"120.0\"} 2"),
        "{text}"
    );
    stop.send(true).expect("stop");
    task.await.expect("the loop stops");
    assert_eq!(
        store.cycles().lag().behind,
        0,
        "a stopped loop is behind no more"
    );
}
