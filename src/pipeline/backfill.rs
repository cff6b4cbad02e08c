//! The backfill in two stages, so that a restart of many targets is gentle on Prometheus
//! and every target decides soon: the first poll of a signal asks only for its recent
//! hours ([`RECENT_SECS`]); the older history follows, in chunks from the newest to the
//! oldest, loaded beside the cycles at [`Priority::History`](crate::source::Priority) (it
//! waits behind every target's polls and recent hours, and takes at most half the slots).
//!
//! Until a signal's older history is loaded the target is degraded
//! ([`crate::step::SignalHealth::loading`]): it may scale out on the evidence there is,
//! never in. A chunk that fails for a transient cause is asked again after a jittered,
//! growing pause; one that matches nothing is a stretch without data (a younger service);
//! after [`ATTEMPTS`] failures the rest of the history is given up, with a warning naming
//! the query, and the target decides on what it has.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::TargetLoop;
use crate::series::{Sample, align_down};
use crate::source::prometheus::MAX_POINTS_PER_REQUEST;
use crate::source::{Checked, SourceError};
use crate::store::Signal;

/// How much history the first poll of a signal asks for: its newest six hours.
pub(super) const RECENT_SECS: i64 = 6 * 3_600;

/// Attempts of one chunk of older history, when its failures are transient.
const ATTEMPTS: u32 = 5;

/// The pause before the first retry of a chunk; it doubles at each further one.
const FIRST_PAUSE: Duration = Duration::from_secs(2);

/// How a poll of a signal without samples fetches its history.
#[derive(Debug, Clone, Copy)]
pub(super) enum Backfill<'a> {
    /// All of it at once ([`TargetLoop::cycle`], driven cycle by cycle).
    Whole,
    /// The recent hours; the older history is sent here, to be loaded beside the cycles.
    Staged(&'a mpsc::UnboundedSender<Older>),
}

/// Older history of one signal, still to be loaded: `[from, before)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Older {
    /// The signal.
    pub(super) signal: Signal,
    /// Its query.
    pub(super) query: String,
    /// The start of the history (aligned).
    pub(super) from: i64,
    /// The oldest time already loaded (aligned): the chunks end a step before it.
    pub(super) before: i64,
}

/// Where the first poll of a signal starts: the recent hours before `end`, or the
/// start of the history if that is later.
pub(super) fn recent_start(earliest: i64, end: i64, step: i64) -> i64 {
    let step = step.max(1);
    align_down(end.saturating_sub(RECENT_SECS), step).max(earliest)
}

/// The requests covering `[from, before)` on the grid of `step`, newest first: disjoint,
/// consecutive, each of at most [`MAX_POINTS_PER_REQUEST`] points, the first ending a step
/// before `before`. Empty when there is nothing before `before`.
pub(super) fn older_chunks(from: i64, before: i64, step: i64) -> Vec<(i64, i64)> {
    let step = step.max(1);
    let from = align_down(from, step);
    let span = (MAX_POINTS_PER_REQUEST - 1).saturating_mul(step);
    let mut out = Vec::new();
    let mut to = align_down(before, step).saturating_sub(step);
    while to >= from {
        let start = to.saturating_sub(span).max(from);
        out.push((start, to));
        to = start.saturating_sub(step);
        if start == i64::MIN {
            break;
        }
    }
    out
}

/// The pause before retry `retry` (0 for the first) of a chunk: [`FIRST_PAUSE`] doubled at
/// each retry, times a factor in [0.5, 1) from `jitter` in [0, 1).
fn pause(retry: u32, jitter: f64) -> Duration {
    let base = FIRST_PAUSE.saturating_mul(1 << retry.min(10));
    base.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

/// How a chunk ended.
enum Chunk {
    /// Its samples (none where it matched nothing).
    Loaded(Vec<Sample>),
    /// It failed for good.
    Failed(SourceError),
}

impl TargetLoop {
    /// Queues the older history a previous loop of this target left half loaded (the
    /// state outlives a reload): its signals still marked loading.
    pub(super) fn resume_older(&self, queue: &mpsc::UnboundedSender<Older>, now: i64) {
        let t = &self.target;
        let Some(state) = self.store.target(&t.name) else {
            return;
        };
        let step = t.step_secs();
        let from = align_down(now - t.history.as_secs() as i64, step);
        for (signal, query) in t.signals() {
            if let Some(before) = state.signals.get(&signal).and_then(|h| h.loading) {
                let _ = queue.send(Older {
                    signal,
                    query: query.to_owned(),
                    from,
                    before,
                });
            }
        }
    }

    /// Loads the older history queued, one signal after the other, until the queue
    /// closes.
    pub(super) async fn load_older(&self, mut queue: mpsc::UnboundedReceiver<Older>) {
        while let Some(older) = queue.recv().await {
            self.load(&older).await;
        }
    }

    /// Loads one signal's older history chunk by chunk, newest first, each put before
    /// what the series holds.
    async fn load(&self, older: &Older) {
        let (name, signal) = (&self.target.name, older.signal);
        let step = self.target.step_secs();
        let mut points = 0;
        for (from, to) in older_chunks(older.from, older.before, step) {
            match self.chunk(older, from, to).await {
                Chunk::Loaded(samples) => {
                    let Some(mut state) = self.store.target(name) else {
                        return;
                    };
                    points += state.series_mut(signal).map_or(0, |s| s.prepend(samples));
                    state.signals.entry(signal).or_default().loading = Some(from);
                }
                Chunk::Failed(e) => {
                    warn!(target = %name, signal = signal.as_str(), error = %e, loaded = points,
                        "older history not loaded; deciding on the history there is");
                    break;
                }
            }
        }
        let Some(mut state) = self.store.target(name) else {
            return;
        };
        state.signals.entry(signal).or_default().loading = None;
        if signal == Signal::RequestRate && points > 0 {
            // The model was chosen on the recent hours: choose again on the whole history.
            state.refit_requested = true;
        }
        info!(target = %name, signal = signal.as_str(), points, "older history loaded");
    }

    /// One chunk of older history, asked again after a pause while it fails for a
    /// transient cause.
    async fn chunk(&self, older: &Older, from: i64, to: i64) -> Chunk {
        let step = self.target.step_secs();
        let mut retry = 0;
        loop {
            let result = self
                .source
                .history_checked(&older.query, from, to, step)
                .await;
            self.count_dropped(older.signal, &result);
            match result {
                Ok(Checked { value, .. }) => return Chunk::Loaded(value),
                Err(SourceError::Empty { .. } | SourceError::Unusable { .. }) => {
                    return Chunk::Loaded(Vec::new());
                }
                Err(e) if retry + 1 < ATTEMPTS && transient(&e) => {
                    let wait = pause(retry, rand::random::<f64>());
                    debug!(target = %self.target.name, signal = older.signal.as_str(), error = %e,
                        wait_ms = wait.as_millis() as u64, "a chunk of older history failed; asking again");
                    tokio::time::sleep(wait).await;
                    retry += 1;
                }
                Err(e) => return Chunk::Failed(e),
            }
        }
    }
}

/// Whether a chunk that failed may succeed when asked again later: Prometheus was slow,
/// unreachable or overloaded, not refusing the query.
fn transient(e: &SourceError) -> bool {
    match e {
        SourceError::Timeout { .. } | SourceError::Unreachable { .. } => true,
        SourceError::Http { status, .. } => *status == 429 || *status >= 500,
        SourceError::Prometheus { error_type, .. } => {
            matches!(error_type.as_str(), "timeout" | "unavailable" | "canceled")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_poll_asks_for_the_recent_hours() {
        #[track_caller]
        fn check(input: (i64, i64, i64), expected: i64) {
            let (earliest, end, step) = input;
            assert_eq!(recent_start(earliest, end, step), expected, "{input:?}");
        }
        let day = 86_400;
        check((0, 14 * day, 60), 14 * day - RECENT_SECS);
        // A history shorter than the recent hours is asked for whole.
        check((14 * day - 3_600, 14 * day, 60), 14 * day - 3_600);
        // Aligned down to the step.
        check((0, 100_000, 7), (100_000 - RECENT_SECS) / 7 * 7);
    }

    #[test]
    fn older_chunks_go_from_the_newest_to_the_oldest() {
        #[track_caller]
        fn check(input: (i64, i64, i64), expected: &[(i64, i64)]) {
            let (from, before, step) = input;
            assert_eq!(older_chunks(from, before, step), expected, "{input:?}");
        }
        let n = MAX_POINTS_PER_REQUEST;
        check((0, 0, 60), &[]);
        check((120, 60, 60), &[]);
        check((0, 60, 60), &[(0, 0)]);
        check((0, 600, 60), &[(0, 540)]);
        // Exactly one full chunk before `before`, then one point more.
        check((0, n * 60, 60), &[(0, (n - 1) * 60)]);
        check((0, (n + 1) * 60, 60), &[(60, n * 60), (0, 0)]);
        // Unaligned ends are aligned down.
        check((61, 659, 60), &[(60, 540)]);
    }

    #[test]
    fn older_chunks_cover_the_history_once() {
        for (from, before, step) in [(0, 14 * 86_400, 60), (13, 2_000_000, 15), (5, 9, 1)] {
            let cs = older_chunks(from, before, step);
            let (from, before) = (align_down(from, step), align_down(before, step));
            assert_eq!(cs.first().map(|c| c.1), Some(before - step));
            assert_eq!(cs.last().map(|c| c.0), Some(from));
            for w in cs.windows(2) {
                assert_eq!(w[1].1, w[0].0 - step, "consecutive, newest first");
            }
            assert!(
                cs.iter()
                    .all(|(a, b)| (b - a) / step < MAX_POINTS_PER_REQUEST)
            );
            let total: i64 = cs.iter().map(|(a, b)| (b - a) / step + 1).sum();
            assert_eq!(total, (before - from) / step);
        }
    }

    #[test]
    fn chunk_retries_pause_longer_each_time() {
        assert_eq!(pause(0, 0.0), Duration::from_secs(1));
        assert_eq!(pause(1, 0.0), Duration::from_secs(2));
        assert_eq!(pause(3, 0.5), Duration::from_secs(12));
        assert!(pause(2, 0.999) < Duration::from_secs(8));
    }
}
