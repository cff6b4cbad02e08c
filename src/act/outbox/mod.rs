//! The durable outbox: every action is written here before it is sent.
//!
//! [`Outbox::enqueue`] commits the actions to an embedded [redb] file,
//! `<state dir>/outbox.redb`, and returns only once they are on disk; then it hands them
//! to the [`Worker`]. The worker delivers them through [`Receivers`]:
//!
//! - **In order, one at a time, per lane.** A lane is a target and an action kind (so a
//!   receiver): its oldest pending action is attempted, and the next only once that one
//!   is finished. Lanes proceed independently, up to [`MAX_IN_FLIGHT`] attempts at once.
//! - **Retries** with exponential backoff and jitter (`[delivery] initial_backoff`,
//!   `max_backoff`; a `Retry-After` is honoured), up to `max_attempts`, and no later than
//!   `max_age` after the action was decided; then the action is dead-lettered. A final
//!   refusal (4xx) is dead-lettered at once, with the receiver's answer.
//! - **Superseding.** A newer action of the same group ([`Action::supersede_group`]: the
//!   scale actions of a target; the alert of a target and signal) supersedes an older one
//!   not yet delivered; one in flight is superseded only if its attempt fails.
//! - **The same body and `Idempotency-Key` on every attempt**, also after a restart: both
//!   are stored with the action.
//! - **Restart resumes.** Actions still pending when the process stopped (or was killed)
//!   are loaded at start and delivered. An attempt that reached the receiver just before a
//!   crash is sent again with the same key: delivery is at least once, and exactly once
//!   for a receiver that drops repeated keys.
//!
//! - **Pause holds.** [`Outbox::set_paused`] commits a target's pause; from then on the
//!   worker starts no attempt of its scale and rebalance actions (they stay pending, can be
//!   superseded, and go out after it is resumed; their age counts from the resume, so a
//!   long pause expires nothing). Its alerts still go: they change nothing on the target.
//!   An attempt already in flight is not called back.
//! - **Control state.** Per target, the count last asked for (written with the scale
//!   action), the count last delivered (written with its outcome) and the pause flag live
//!   in the same file ([`Outbox::control`]) and are never pruned: a restarted process knows
//!   what it asked for and what runs even after the deliveries were deleted.
//!
//! Every state change is committed before the worker acts on it; outcomes that arrive
//! together are committed in one transaction. The worker reports each finished action to
//! the [`OutcomeSink`] it is given (`serve` keeps the last one per target in its store).
//!
//! **Time.** The outbox runs on the [`Clock`] it is opened with, the one the decisions
//! use: `created_at`, `next_attempt_at`, `finished_at`, the `max_age` expiry and the
//! retention are on that clock, like an action's `issued_at`. It reads the clock once, when
//! opened, and counts on from there in milliseconds with tokio's monotonic time at the
//! clock's speed — so it follows the demo's accelerated clock, and tokio's paused time in
//! tests, and a step of the system clock while running moves no age and no due time.
//! Backoff and attempt timeouts are real time, because receivers run in real time: a
//! backoff of `b` makes the next attempt due at `now + b × speed` on the clock, `b` later
//! in real time.
//!
//! **Storage faults.** A write that fails (a full disk, say) fails the call that made it:
//! [`Outbox::enqueue`] returns the error, and nothing is reported as written. The outbox
//! then shows a fault ([`Outbox::fault`], `prescale_outbox_healthy` 0, one ERROR line),
//! reopens the file at the next operation (redb refuses every write after an I/O error
//! until then), and the fault ends at the next write that succeeds; the worker keeps the
//! outcomes it could not write and writes them then, and probes while the fault lasts.
//!
//! **Dead letters** are retried by hand ([`Outbox::retry`]), unless a newer action of
//! their group was written since (sending the old one would undo it), or discarded
//! ([`Outbox::discard`]): kept for the API, never sent, no longer counted as dead.
//!
//! The parts: this handle; `types` (the deliveries, the control state, the worker's
//! hooks and the error); `storage` (the file, its tables and transactions); `file`
//! (reopening after an I/O error, and the fault); `index` (the pending actions by lane);
//! `worker` (the delivery loop).
//!
//! [redb]: https://docs.rs/redb

mod file;
mod index;
mod storage;
mod types;
mod worker;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Action, Receivers};
use crate::clock::Clock;
use file::{Access, File};
use storage::{Filter, Storage};
pub use types::{
    Control, Delivery, DeliveryOutcome, DeliveryRecord, DeliveryState, Fence, Hooks, OutboxError,
    OutcomeSink, ScaleMark, Settings, Verdict,
};
pub use worker::{DeliveryLabels, OutboxLabels, OutboxMetrics, Worker};

/// The most attempts in flight at once, across lanes.
pub const MAX_IN_FLIGHT: usize = 64;
/// The file in the state directory.
pub const FILE_NAME: &str = "outbox.redb";

/// The outbox's time: the [`Clock`] it was opened with, read once and counted on in
/// milliseconds with tokio's monotonic time at the clock's speed (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Time {
    /// The clock's reading when opened (Unix ms; the clock has whole seconds).
    origin_ms: i64,
    origin: tokio::time::Instant,
    /// Clock seconds per real second (> 0).
    speed: f64,
}

impl Time {
    fn new(clock: Clock) -> Self {
        Self {
            origin_ms: clock.now().saturating_mul(1000),
            origin: tokio::time::Instant::now(),
            speed: clock.speed(),
        }
    }

    /// Now, in Unix ms on the clock.
    fn now_ms(&self) -> i64 {
        self.origin_ms
            .saturating_add(self.clock_ms(self.origin.elapsed()))
    }

    /// How many of the clock's ms a real duration lasts.
    fn clock_ms(&self, real: Duration) -> i64 {
        // A float-to-int `as` saturates.
        (real.as_secs_f64() * self.speed * 1000.0) as i64
    }

    /// How long `ms` of the clock's ms last in real time, rounded up to a whole ms (so a
    /// sleep until a due time never wakes just before it).
    fn real(&self, ms: i64) -> Duration {
        let real_ms = (ms.max(0) as f64 / self.speed).ceil();
        Duration::from_millis(real_ms.min(u64::MAX as f64) as u64)
    }
}

/// The handle on the outbox: write actions, list and retry deliveries. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Shared>,
}

struct Shared {
    file: Arc<File>,
    time: Time,
    /// New and retried actions, for the worker.
    to_worker: mpsc::UnboundedSender<ToWorker>,
    /// The worker's end, until [`Outbox::worker`] takes it.
    from_handles: Mutex<Option<mpsc::UnboundedReceiver<ToWorker>>>,
    /// Held while a pause is committed and told to the worker, so the worker learns pauses
    /// in the order they were committed.
    pausing: Mutex<()>,
}

/// What the handles tell the worker.
enum ToWorker {
    /// Newly written actions.
    New(Vec<Delivery>),
    /// A dead action put back by hand.
    Retried(Box<Delivery>),
    /// A target paused or resumed.
    Paused {
        /// The target.
        target: String,
        /// Whether it is paused now.
        paused: bool,
    },
    /// A dead action discarded by hand.
    Discarded,
}

impl Outbox {
    /// [`Outbox::open_with_clock`] on the system clock.
    pub fn open(dir: &Path) -> Result<Self, OutboxError> {
        Self::open_with_clock(dir, Clock::system())
    }

    /// Opens (or creates) `<dir>/outbox.redb`, creating `dir` if needed, on `clock` (the
    /// one decisions are made on).
    ///
    /// Fails with the path and the reason when the directory cannot be created or is not
    /// a directory, or the file cannot be opened or is not an outbox; what this call
    /// created is removed again, and an existing file is left as it was.
    pub fn open_with_clock(dir: &Path, clock: Clock) -> Result<Self, OutboxError> {
        let storage = Storage::open(dir)?;
        let (to_worker, from_handles) = mpsc::unbounded_channel();
        Ok(Self {
            inner: Arc::new(Shared {
                file: Arc::new(File::new(storage)),
                time: Time::new(clock),
                to_worker,
                from_handles: Mutex::new(Some(from_handles)),
                pausing: Mutex::new(()),
            }),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.inner.file.path()
    }

    /// Why the outbox cannot be written (the file and the error), from a write that failed
    /// until one succeeds; `None` while writes succeed.
    pub fn fault(&self) -> Option<String> {
        self.inner.file.fault()
    }

    /// Now, in Unix ms on the outbox's clock.
    pub fn now_ms(&self) -> i64 {
        self.inner.time.now_ms()
    }

    /// Runs a blocking closure that writes (or may) over the file on the blocking pool: an
    /// I/O error starts a fault, success ends one (see [`file`]).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Storage) -> Result<T, OutboxError> + Send + 'static,
    ) -> Result<T, OutboxError> {
        self.on_file(Access::Write, f).await
    }

    /// [`Outbox::blocking`] for a closure that only reads.
    async fn reading<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Storage) -> Result<T, OutboxError> + Send + 'static,
    ) -> Result<T, OutboxError> {
        self.on_file(Access::Read, f).await
    }

    async fn on_file<T: Send + 'static>(
        &self,
        access: Access,
        f: impl FnOnce(&Storage) -> Result<T, OutboxError> + Send + 'static,
    ) -> Result<T, OutboxError> {
        let file = self.inner.file.clone();
        tokio::task::spawn_blocking(move || file.run(access, f))
            .await
            .map_err(|e| self.inner.file.error(format!("storage task failed: {e}")))?
    }

    /// Writes `actions` durably, in order, and hands them to the worker; returns what was
    /// written. An action whose idempotency key is already in the outbox (an identical
    /// action) is left out. When this returns, the actions survive a crash.
    pub async fn enqueue(&self, actions: Vec<Action>) -> Result<Vec<Delivery>, OutboxError> {
        self.enqueue_at(actions, None).await
    }

    /// [`Outbox::enqueue`] for actions decided by the owner of their target at `epoch`
    /// (instances sharing targets): each carries it, and the worker delivers it only while
    /// its [`Fence`] says this instance still owns the target at that epoch.
    pub async fn enqueue_at(
        &self,
        actions: Vec<Action>,
        epoch: Option<u64>,
    ) -> Result<Vec<Delivery>, OutboxError> {
        if actions.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.now_ms();
        let to_worker = self.inner.to_worker.clone();
        // The worker is told in the same blocking task as the write, so that a caller that
        // stops waiting (a target loop stopped by a reload) cannot leave written actions
        // unknown to a worker that keeps running. The worker may be gone (shutting down);
        // the actions are on disk for the next start.
        self.blocking(move |s| {
            let records = s.insert(&actions, epoch, now)?;
            let _ = to_worker.send(ToWorker::New(records.clone()));
            Ok(records)
        })
        .await
    }

    /// Up to `limit` deliveries, newest first, optionally only in `state` and of `target`.
    pub async fn list(
        &self,
        state: Option<DeliveryState>,
        target: Option<String>,
        limit: usize,
    ) -> Result<Vec<Delivery>, OutboxError> {
        Ok(self.list_page(state, target, 0, limit).await?.0)
    }

    /// A page of deliveries, newest first, optionally only in `state` and of `target`: up
    /// to `limit` of them after skipping the `offset` newest, and whether more follow.
    ///
    /// The skipped ones are passed over in the file without being loaded, so a large
    /// `offset` costs a scan, not memory; any `offset` and `limit` are fine.
    pub async fn list_page(
        &self,
        state: Option<DeliveryState>,
        target: Option<String>,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<Delivery>, bool), OutboxError> {
        let filter = Filter { state, target };
        self.reading(move |s| s.page(&filter, offset, limit)).await
    }

    /// One delivery.
    pub async fn get(&self, id: u64) -> Result<Delivery, OutboxError> {
        self.reading(move |s| s.get(id)).await
    }

    /// Puts a dead delivery back in its lane with fresh attempts and age; returns it.
    ///
    /// Refused ([`OutboxError::Superseded`]) when an action of its group (a newer scale
    /// action of the target, say) was written after it and was delivered, is pending or is
    /// dead: sending this one now would undo that one.
    pub async fn retry(&self, id: u64) -> Result<Delivery, OutboxError> {
        let now = self.now_ms();
        let d = self.blocking(move |s| s.retry(id, now)).await?;
        tracing::info!(id, target = %d.target, kind = %d.kind, "dead delivery put back for retry");
        let _ = self
            .inner
            .to_worker
            .send(ToWorker::Retried(Box::new(d.clone())));
        Ok(d)
    }

    /// `target`'s control state: the counts last asked for and delivered, and the pause;
    /// `None` when nothing was ever recorded for it.
    pub async fn control(&self, target: &str) -> Result<Option<Control>, OutboxError> {
        let target = target.to_owned();
        self.reading(move |s| s.control(&target)).await
    }

    /// Every target's control state, by name.
    pub async fn controls(&self) -> Result<BTreeMap<String, Control>, OutboxError> {
        self.reading(Storage::controls).await
    }

    /// Pauses (or resumes) delivering `target`'s scale and rebalance actions: committed
    /// when this returns (so it survives a restart), then told to the worker, which holds
    /// the target's pending actions from its next turn (and, on resume, is woken to send
    /// them).
    pub async fn set_paused(&self, target: &str, paused: bool) -> Result<(), OutboxError> {
        let inner = self.inner.clone();
        let target = target.to_owned();
        tokio::task::spawn_blocking(move || {
            let _order = inner.pausing.lock().unwrap_or_else(|e| e.into_inner());
            inner
                .file
                .run(Access::Write, |s| s.set_paused(&target, paused))?;
            // The worker may be gone (shutting down); the flag is on disk for the next start.
            let _ = inner.to_worker.send(ToWorker::Paused { target, paused });
            Ok(())
        })
        .await
        .map_err(|e| self.inner.file.error(format!("storage task failed: {e}")))?
    }

    /// Discards a dead delivery: it becomes [`DeliveryState::Discarded`], is kept for the
    /// API (and pruned with the delivered ones), is never sent and no longer counts as dead.
    pub async fn discard(&self, id: u64) -> Result<Delivery, OutboxError> {
        let now = self.now_ms();
        let d = self.blocking(move |s| s.discard(id, now)).await?;
        tracing::info!(id, target = %d.target, kind = %d.kind, "dead delivery discarded");
        let _ = self.inner.to_worker.send(ToWorker::Discarded);
        Ok(d)
    }

    /// The worker that delivers through `receivers`, counting in `metrics` and reporting
    /// each finished action to `outcomes`, with the pending actions loaded (so that an
    /// unreadable outbox fails here, at start). Only one worker per outbox.
    pub async fn worker(
        &self,
        settings: Settings,
        receivers: Receivers,
        metrics: impl Into<OutboxMetrics>,
        outcomes: Option<Box<dyn OutcomeSink>>,
    ) -> Result<Worker, OutboxError> {
        let hooks = Hooks {
            outcomes,
            fence: None,
        };
        self.fenced_worker(settings, receivers, metrics, hooks)
            .await
    }

    /// [`Outbox::worker`] that asks `fence` before every attempt at an action that carries
    /// an epoch ([`Outbox::enqueue_at`]).
    pub async fn fenced_worker(
        &self,
        settings: Settings,
        receivers: Receivers,
        metrics: impl Into<OutboxMetrics>,
        Hooks { outcomes, fence }: Hooks,
    ) -> Result<Worker, OutboxError> {
        let (resumed, dead) = self.reading(Storage::at_start).await?;
        let paused = self.controls().await?;
        let paused = paused
            .into_iter()
            .filter_map(|(target, c)| c.paused.then_some(target))
            .collect();
        let from_handles = self
            .inner
            .from_handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| self.inner.file.error("already has a worker"))?;
        let metrics = metrics.into();
        self.inner.file.count_into(&metrics);
        Ok(Worker::new(
            self.clone(),
            worker::Parts {
                settings,
                receivers,
                metrics,
                outcomes,
                fence,
                from_handles,
                resumed,
                dead,
                paused,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are the serialisation, and round-trip.
    #[test]
    fn names_are_the_serialisation_and_round_trip() {
        for s in DeliveryState::ALL {
            assert_eq!(DeliveryState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(DeliveryState::parse("lost"), None);
        for o in DeliveryOutcome::ALL {
            assert_eq!(DeliveryOutcome::parse(o.as_str()), Some(o));
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
            assert_eq!(o.to_string(), o.as_str());
        }
        let names: Vec<&str> = DeliveryOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            names,
            ["delivered", "rejected", "gave_up", "expired", "superseded"],
            "as documented in docs/http-api.md and docs/delivery.md"
        );
    }

    /// The outbox's time starts at the clock's reading and runs at its speed; real
    /// durations and clock durations convert both ways, rounding up to real ms.
    #[tokio::test(start_paused = true)]
    async fn time_follows_the_clock_it_is_given() {
        let t = Time::new(Clock::accelerated(1_000_000, 60.0));
        let start = t.now_ms();
        // The clock itself runs in real time: allow a busy machine a real second.
        assert!((1_000_000_000..=1_000_060_000).contains(&start), "{start}");
        assert_eq!(start % 1000, 0, "read at the clock's resolution");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(
            t.now_ms() - start,
            30_000,
            "half a real second is 30 clock seconds"
        );
        assert_eq!(t.clock_ms(Duration::from_secs(2)), 120_000);
        assert_eq!(t.real(120_000), Duration::from_secs(2));
        assert_eq!(t.real(1), Duration::from_millis(1), "rounded up");
        assert_eq!(t.real(-5), Duration::ZERO);
        let system = Time::new(Clock::system());
        assert!((system.now_ms() - Clock::system().now() * 1000).abs() <= 1_000);
    }
}
