//! The discovery task: each discovery's query when it is due, and a message on `changed`
//! whenever the discovered targets change.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Registry;
use crate::source::Source;

/// Runs every discovery's query each `refresh`, over the source `source` holds (a reload
/// may replace it), until `stop` turns true; bumps `changed` whenever the discovered
/// targets (names or tables) change, so that `serve` starts and stops their loops.
pub async fn run(
    registry: Registry,
    source: watch::Receiver<Arc<dyn Source>>,
    changed: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = registry.fingerprint();
    loop {
        if *stop.borrow() {
            return;
        }
        let due = registry.next_due();
        let wake = registry.reconfigured.clone();
        let at = due.as_ref().map(|d| d.at);
        tokio::select! {
            r = stop.changed() => if r.is_err() { return } else { continue },
            () = wake.notified() => {
                // `serve` applied the reload itself; compare from here.
                last = registry.fingerprint();
                continue;
            }
            () = sleep_until(at) => {}
        }
        let Some(due) = due else { continue };
        let src = source.borrow().clone();
        let result = tokio::select! {
            r = src.label_sets(&due.query) => r,
            r = stop.changed() => if r.is_err() { return } else { continue },
        };
        registry.observe(due.index, due.epoch, result);
        let now = registry.fingerprint();
        if now != last {
            last = now;
            changed.send_modify(|n| *n += 1);
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The discovery to refresh next.
pub(super) struct Due {
    pub(super) index: usize,
    pub(super) epoch: u64,
    pub(super) query: String,
    pub(super) at: Instant,
}

impl Registry {
    /// The discovery due first, if any.
    pub(super) fn next_due(&self) -> Option<Due> {
        let inner = self.lock();
        let (index, d) = inner
            .discoveries
            .iter()
            .enumerate()
            .min_by_key(|(_, d)| d.next)?;
        Some(Due {
            index,
            epoch: inner.epoch,
            query: d.config.query.clone(),
            at: d.next,
        })
    }

    /// Runs every discovery's query once now, one after the other (at start, so that the
    /// discovered targets, and the receivers of what their outbox lanes hold, are known
    /// before anything is delivered).
    pub async fn refresh_now(&self, source: &dyn Source) {
        let queries: Vec<(usize, u64, String)> = {
            let inner = self.lock();
            (inner.discoveries.iter().enumerate())
                .map(|(i, d)| (i, inner.epoch, d.config.query.clone()))
                .collect()
        };
        for (index, epoch, query) in queries {
            let result = source.label_sets(&query).await;
            self.observe(index, epoch, result);
        }
    }
}
