//! How politely prescale asks: at most `[prometheus] max_concurrency` requests in flight at
//! once, whoever asks (backfill, polls, discovery), and retries of a transient failure after
//! a jittered, growing pause.
//!
//! A request waits for a slot rather than failing: the slots are a tokio [`Semaphore`],
//! which serves waiters in the order they came, and the request's timeout counts from the
//! moment it has its slot. Older history ([`Priority::History`]) takes at most half the
//! slots (rounded up), through a second semaphore taken first, so polls and the recent
//! hours of a backfill never wait behind more than that many history requests.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::source::{Priority, SourceError};

/// Attempts of one request in all, when its failures are transient.
pub(super) const ATTEMPTS: u32 = 3;

/// The pause before the first retry; it doubles at each further one.
const FIRST_PAUSE: Duration = Duration::from_millis(500);

/// The slots of one Prometheus server, shared by every clone of its client.
#[derive(Debug, Clone)]
pub(super) struct Slots {
    /// Every request holds one of these while it is in flight.
    all: Arc<Semaphore>,
    /// A history request holds one of these too, taken before its slot in `all`.
    history: Arc<Semaphore>,
}

/// A request's right to be in flight; given back when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    _all: Option<OwnedSemaphorePermit>,
    _history: Option<OwnedSemaphorePermit>,
}

impl Slots {
    /// `max` slots in all (at least one), of which history may take half, rounded up.
    pub(super) fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            all: Arc::new(Semaphore::new(max)),
            history: Arc::new(Semaphore::new(max.div_ceil(2))),
        }
    }

    /// Waits for a slot for a request of `priority`.
    pub(super) async fn take(&self, priority: Priority) -> Slot {
        // The semaphores are never closed, so `acquire_owned` cannot fail; were it to,
        // the request would go without a slot rather than not at all.
        let history = match priority {
            Priority::History => self.history.clone().acquire_owned().await.ok(),
            Priority::Poll => None,
        };
        let all = self.all.clone().acquire_owned().await.ok();
        Slot {
            _all: all,
            _history: history,
        }
    }

    /// Slots free now.
    #[cfg(test)]
    fn free(&self) -> usize {
        self.all.available_permits()
    }
}

/// Whether a failed request is worth sending again at once (after a short pause): the
/// server was unreachable, overloaded or restarting. A timeout is not: the query may still
/// be running in Prometheus, and asking again would only add to its load (the next cycle
/// asks again, for a shorter range).
pub(super) fn worth_retrying(e: &SourceError) -> bool {
    match e {
        SourceError::Unreachable { .. } => true,
        SourceError::Http { status, .. } => matches!(status, 429 | 502 | 503 | 504),
        SourceError::Prometheus { error_type, .. } => error_type == "unavailable",
        _ => false,
    }
}

/// The pause before retry `retry` (0 for the first): `FIRST_PAUSE` doubled at each retry,
/// times a factor in [0.5, 1) from `jitter` in [0, 1), so that the targets that failed
/// together do not come back together.
pub(super) fn pause(retry: u32, jitter: f64) -> Duration {
    let base = FIRST_PAUSE.saturating_mul(1 << retry.min(10));
    base.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_and_are_jittered() {
        #[track_caller]
        fn check(input: (u32, f64), expected_ms: u64) {
            assert_eq!(
                pause(input.0, input.1).as_millis() as u64,
                expected_ms,
                "{input:?}"
            );
        }
        check((0, 0.0), 250);
        check((0, 0.999), 499);
        check((1, 0.0), 500);
        check((2, 0.5), 1500);
        check((40, 0.0), 256_000);
    }

    #[test]
    fn transient_failures_are_retried_timeouts_are_not() {
        let http = |status| SourceError::Http {
            query: "q".into(),
            url: "u".into(),
            status,
            body: String::new(),
        };
        let refused = |error_type: &str| SourceError::Prometheus {
            query: "q".into(),
            error_type: error_type.into(),
            message: String::new(),
        };
        let timeout = SourceError::Timeout {
            query: "q".into(),
            url: "u".into(),
            timeout_ms: 10,
        };
        let unreachable = SourceError::Unreachable {
            query: "q".into(),
            url: "u".into(),
            message: "reset".into(),
        };
        for (e, want) in [
            (http(503), true),
            (http(429), true),
            (http(500), false),
            (http(404), false),
            (refused("unavailable"), true),
            (refused("bad_data"), false),
            (refused("timeout"), false),
            (timeout, false),
            (unreachable, true),
        ] {
            assert_eq!(worth_retrying(&e), want, "{e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn history_takes_at_most_half_the_slots() {
        let slots = Slots::new(5);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(slots.take(Priority::History).await);
        }
        assert_eq!(slots.free(), 2);
        // On paused time the timeout fires only once nothing else can run.
        let fourth = tokio::time::timeout(Duration::from_secs(60), slots.take(Priority::History));
        assert!(fourth.await.is_err(), "a fourth history request waits");
        held.push(slots.take(Priority::Poll).await);
        held.push(slots.take(Priority::Poll).await);
        assert_eq!(slots.free(), 0);
        held.clear();
        assert_eq!(slots.free(), 5);
    }
}
