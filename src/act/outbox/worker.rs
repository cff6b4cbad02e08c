//! The delivery loop: takes each lane's head when it is due, attempts it, writes how the
//! attempt went, and reports finished actions to the metrics, the log and the
//! [`OutcomeSink`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, Id, JoinError, JoinSet};
use tracing::{debug, info, warn};

use super::index::Index;
use super::{
    Delivery, DeliveryOutcome, DeliveryState, Fence, MAX_IN_FLIGHT, Outbox, OutcomeSink, Settings,
    Time, ToWorker, Verdict,
};
use crate::act::webhook::backoff;
use crate::act::{ActionKind, Attempt, Receivers};

/// While a fence cannot tell whether this instance owns an action's target, how often it
/// asks again (real time).
const FENCE_HOLD: Duration = Duration::from_millis(500);
/// While attempts at fenced actions are in flight, how often the fence is asked again
/// about them (real time).
const CALL_BACK_EVERY: Duration = Duration::from_millis(200);
/// How often delivered and superseded actions past the retention are deleted (real time).
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);
/// While the outbox cannot be written, how often the worker tries again (real time): the
/// outcomes it could not write, or else a probe.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// Labels of a delivery outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// Target name.
    pub target: String,
    /// What the action asked for.
    pub kind: ActionKind,
    /// How it ended.
    pub outcome: DeliveryOutcome,
}

/// Labels of the outbox gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboxLabels {
    /// [`DeliveryState::Pending`] or [`DeliveryState::Dead`].
    pub state: DeliveryState,
}

/// What the worker counts. Cheap to clone: clones count into the same metrics.
#[derive(Clone, Debug)]
pub struct OutboxMetrics {
    /// Finished actions by target, kind and outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Actions in the outbox by state (`pending`, `dead`).
    pub outbox: Family<OutboxLabels, Gauge>,
    /// Seconds (on the outbox's clock) from an action's decision to its delivery.
    pub delivery_latency: Histogram,
    /// Writes to the outbox file that failed.
    pub write_errors: Counter,
    /// 1 while the outbox can be written; 0 from a failed write until one succeeds.
    pub healthy: Gauge,
}

impl OutboxMetrics {
    /// Fresh metrics, not registered anywhere.
    pub fn new() -> Self {
        Self {
            deliveries: Family::default(),
            outbox: Family::default(),
            delivery_latency: Histogram::new([
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
            ]),
            write_errors: Counter::default(),
            healthy: {
                // Healthy until a write fails.
                let g = Gauge::default();
                g.set(1);
                g
            },
        }
    }
}

impl Default for OutboxMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// What [`Outbox::worker`] hands over.
pub(super) struct Parts {
    pub(super) settings: Settings,
    pub(super) receivers: Receivers,
    pub(super) metrics: OutboxMetrics,
    pub(super) outcomes: Option<Box<dyn OutcomeSink>>,
    pub(super) fence: Option<Arc<dyn Fence>>,
    pub(super) from_handles: mpsc::UnboundedReceiver<ToWorker>,
    /// Pending at start, oldest first.
    pub(super) resumed: Vec<Delivery>,
    /// Dead at start.
    pub(super) dead: i64,
    /// Targets paused at start.
    pub(super) paused: Vec<String>,
}

/// How an action's turn ended, before it is written down.
enum Outcome {
    Attempted(Attempt),
    Expired,
    Superseded(u64),
    /// Its target is no longer owned at its epoch.
    Fenced(String),
}

/// The attempts in flight, and the action each is for.
#[derive(Default)]
struct InFlight {
    tasks: JoinSet<Attempt>,
    ids: HashMap<Id, u64>,
    /// Attempts at actions that carry an epoch: how to call each back, and its target
    /// and epoch, to ask the fence again while it is in flight.
    fenced: HashMap<Id, (AbortHandle, String, u64)>,
}

impl InFlight {
    fn room(&self) -> usize {
        MAX_IN_FLIGHT.saturating_sub(self.tasks.len())
    }

    fn start(&mut self, receivers: &Receivers, d: Delivery) {
        let receivers = receivers.clone();
        let (id, target, epoch) = (d.id, d.target.clone(), d.epoch);
        let handle = self.tasks.spawn(async move {
            receivers
                .attempt(
                    (&d.target, d.kind),
                    d.body.as_bytes(),
                    &d.idempotency_key,
                    d.epoch,
                )
                .await
        });
        if let Some(epoch) = epoch {
            self.fenced
                .insert(handle.id(), (handle.clone(), target, epoch));
        }
        self.ids.insert(handle.id(), id);
    }

    /// Calls back the attempts the fence no longer lets through (this instance may not act
    /// on their target now, or not at their epoch): their actions go back to pending, to
    /// be held or superseded at their next turn. A request already received may still be
    /// acted on by its receiver; this narrows that window to the fence's renewal margin.
    fn call_back(&mut self, fence: &dyn Fence) {
        for (handle, target, epoch) in self.fenced.values() {
            if fence.verdict(target, *epoch) != Verdict::Deliver {
                handle.abort();
            }
        }
    }

    /// How `joined` went, and every other attempt finished by now.
    fn finished(&mut self, joined: Result<(Id, Attempt), JoinError>) -> Vec<(u64, Outcome)> {
        let mut outcomes = Vec::new();
        let mut take = |joined: Result<(Id, Attempt), JoinError>| {
            let (task, attempt) = joined.unwrap_or_else(|e| {
                let error = if e.is_cancelled() {
                    "called back in flight: this instance may no longer act on the target at \
                     the action's epoch"
                        .to_owned()
                } else {
                    format!("the attempt failed: {e}")
                };
                let retry = Attempt::Retry {
                    error,
                    status: None,
                    retry_after: None,
                };
                (e.id(), retry)
            });
            self.fenced.remove(&task);
            if let Some(id) = self.ids.remove(&task) {
                outcomes.push((id, Outcome::Attempted(attempt)));
            }
        };
        take(joined);
        while let Some(joined) = self.tasks.try_join_next_with_id() {
            take(joined);
        }
        outcomes
    }
}

/// Delivers what the outbox holds; see the module documentation. Run it with
/// [`Worker::run`].
pub struct Worker {
    outbox: Outbox,
    settings: Settings,
    receivers: Receivers,
    metrics: OutboxMetrics,
    outcomes: Option<Box<dyn OutcomeSink>>,
    fence: Option<Arc<dyn Fence>>,
    from_handles: mpsc::UnboundedReceiver<ToWorker>,
    index: Index,
    /// Pending at start, not yet in the index.
    resumed: Vec<Delivery>,
    dead: i64,
    /// Outcomes that could not be written (the file failed), by id: written with the next
    /// ones, or when the worker tries again.
    unwritten: BTreeMap<u64, Delivery>,
}

impl Worker {
    pub(super) fn new(outbox: Outbox, parts: Parts) -> Self {
        let mut index = Index::default();
        for target in &parts.paused {
            index.hold(target, true);
        }
        Self {
            outbox,
            settings: parts.settings,
            receivers: parts.receivers,
            metrics: parts.metrics,
            outcomes: parts.outcomes,
            fence: parts.fence,
            from_handles: parts.from_handles,
            index,
            resumed: parts.resumed,
            dead: parts.dead,
            unwritten: BTreeMap::new(),
        }
    }

    fn time(&self) -> Time {
        self.outbox.inner.time
    }

    /// Loads the pending actions, then delivers until `shutdown` flips. Attempts in flight
    /// at shutdown are abandoned; their actions stay pending for the next start.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.resume().await;
        let mut in_flight = InFlight::default();
        let time = self.time();
        let prune_every = time.clock_ms(PRUNE_EVERY).max(1);
        let recheck_every = time.clock_ms(RECHECK_EVERY).max(1);
        let mut next_prune = time.now_ms();
        let mut next_recheck = next_prune;
        loop {
            let now = time.now_ms();
            if now >= next_prune {
                self.prune(now).await;
                next_prune = now.saturating_add(prune_every);
            }
            let faulty = self.is_faulty();
            if faulty && now >= next_recheck {
                self.recheck(now).await;
                next_recheck = now.saturating_add(recheck_every);
            }
            let expired = self.start_due(now, &mut in_flight);
            if !expired.is_empty() {
                self.record(expired).await;
                continue;
            }
            let next = if faulty {
                next_prune.min(next_recheck)
            } else {
                next_prune
            };
            let wake = self.index.next_wake().map_or(next, |w| w.min(next));
            let mut sleep = time.real(wake.saturating_sub(now).min(prune_every));
            if let Some(fence) = &self.fence
                && !in_flight.fenced.is_empty()
            {
                in_flight.call_back(fence.as_ref());
                sleep = sleep.min(CALL_BACK_EVERY);
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(first) = self.from_handles.recv() => self.take_messages(first).await,
                Some(joined) = in_flight.tasks.join_next_with_id(), if !in_flight.tasks.is_empty() => {
                    let outcomes = in_flight.finished(joined);
                    self.record(outcomes).await;
                }
                () = tokio::time::sleep(sleep) => {}
            }
        }
        in_flight.tasks.abort_all();
        debug!("outbox worker stopped");
    }

    /// Starts an attempt at each lane head due at `now`; returns those too old to try.
    fn start_due(&mut self, now: i64, in_flight: &mut InFlight) -> Vec<(u64, Outcome)> {
        let max_age = duration_ms(self.settings.delivery.max_age);
        let mut expired = Vec::new();
        for mut d in self.index.take_due(now, in_flight.room()) {
            if now.saturating_sub(d.age_from_ms) >= max_age {
                expired.push((d.id, Outcome::Expired));
                continue;
            }
            match self.verdict(&d) {
                Verdict::Deliver => in_flight.start(&self.receivers, d),
                Verdict::Hold => {
                    d.next_attempt_ms = now.saturating_add(self.time().clock_ms(FENCE_HOLD));
                    self.index.update(d);
                }
                Verdict::Supersede(why) => {
                    warn!(id = d.id, target = %d.target, kind = %d.kind, epoch = ?d.epoch, why = %why,
                        "not delivered: the target's ownership was lost");
                    expired.push((d.id, Outcome::Fenced(why)));
                }
            }
        }
        expired
    }

    /// The fence's verdict on `d`; an action without an epoch (one instance) is delivered.
    fn verdict(&self, d: &Delivery) -> Verdict {
        match (&self.fence, d.epoch) {
            (Some(fence), Some(epoch)) => fence.verdict(&d.target, epoch),
            (Some(_), None) => Verdict::Supersede(
                "written by a single instance; instances now share targets".to_owned(),
            ),
            (None, _) => Verdict::Deliver,
        }
    }

    /// Takes new and retried actions from the handles: `first` and any others waiting.
    async fn take_messages(&mut self, first: ToWorker) {
        let mut records = Vec::new();
        let mut released = Vec::new();
        let mut take = |msg| match msg {
            ToWorker::New(new) => records.extend(new),
            ToWorker::Retried(d) => {
                self.dead -= 1;
                records.push(*d);
            }
            ToWorker::Paused { target, paused } => {
                debug!(target = %target, paused, "lanes held or released");
                self.index.hold(&target, paused);
                if !paused {
                    released.push(target);
                }
            }
            ToWorker::Discarded => self.dead -= 1,
        };
        take(first);
        while let Ok(more) = self.from_handles.try_recv() {
            take(more);
        }
        for target in released {
            self.release(&target).await;
        }
        self.admit(records).await;
    }

    /// A paused target was resumed: the age of its actions that waited counts from now, so
    /// a long pause does not expire them (`max_age` is for receivers that do not take
    /// them, not for a pause). Written before they are attempted.
    async fn release(&mut self, target: &str) {
        let now = self.time().now_ms();
        let waited: Vec<Delivery> = self
            .index
            .idle_of(target)
            .into_iter()
            .map(|mut d| {
                d.age_from_ms = d.age_from_ms.max(now);
                d
            })
            .collect();
        if waited.is_empty() {
            return;
        }
        let to_write = waited.clone();
        if let Err(e) = self.outbox.blocking(move |s| s.write(&to_write)).await {
            // Kept in the index all the same: the file's older age only matters after a
            // restart, when it is held or expired as it would have been.
            warn!(target = %target, error = %e, "cannot record the age of resumed actions");
        }
        for d in waited {
            self.index.update(d);
        }
    }

    /// Takes the actions pending at start into the index.
    async fn resume(&mut self) {
        let pending = std::mem::take(&mut self.resumed);
        if !pending.is_empty() {
            info!(pending = pending.len(), "resuming pending deliveries");
        }
        // Older pending actions of a group were superseded while the process was down.
        self.admit(pending).await;
    }

    /// Puts actions into the index and records those they supersede.
    async fn admit(&mut self, records: Vec<Delivery>) {
        let superseded = self.index.add(records);
        self.update_gauges();
        if !superseded.is_empty() {
            let outcomes = superseded
                .into_iter()
                .map(|(old, new)| (old, Outcome::Superseded(new)))
                .collect();
            self.record(outcomes).await;
        }
    }

    /// Writes the outcomes in one transaction, then updates the index, the metrics and
    /// the sink.
    async fn record(&mut self, outcomes: Vec<(u64, Outcome)>) {
        let now = self.time().now_ms();
        let updated: Vec<Delivery> = outcomes
            .into_iter()
            .filter_map(|(id, outcome)| {
                let d = self.index.get(id)?.clone();
                Some(self.settle(d, outcome, now))
            })
            .collect();
        if updated.is_empty() {
            return;
        }
        // The attempts happened; the index follows them even when they cannot be written,
        // so nothing is re-sent in a loop. The file catches up when it can be written (a
        // restart before then resumes its older state: at least once).
        self.unwritten
            .extend(updated.iter().map(|d| (d.id, d.clone())));
        self.write_outcomes().await;
        for d in updated {
            self.apply(d);
        }
        self.update_gauges();
    }

    /// Writes the outcomes not yet written, in one transaction; keeps them on failure.
    async fn write_outcomes(&mut self) {
        let to_write: Vec<Delivery> = self.unwritten.values().cloned().collect();
        match self.outbox.blocking(move |s| s.write(&to_write)).await {
            Ok(()) => self.unwritten.clear(),
            // The outbox logs the fault once; this is every attempt.
            Err(e) => {
                debug!(error = %e, unwritten = self.unwritten.len(),
                    "cannot record delivery outcomes; kept to write when the outbox can be written");
            }
        }
    }

    /// Whether the outbox cannot be written, or outcomes wait to be.
    fn is_faulty(&self) -> bool {
        !self.unwritten.is_empty() || self.outbox.fault().is_some()
    }

    /// While the outbox cannot be written: writes the outcomes that wait, or else probes,
    /// so that the fault ends once writes succeed even when nothing else is written.
    async fn recheck(&mut self, now: i64) {
        if !self.unwritten.is_empty() {
            self.write_outcomes().await;
        } else if let Err(e) = self.outbox.blocking(move |s| s.probe(now)).await {
            debug!(error = %e, "the outbox still cannot be written");
        }
    }

    /// The record of `d` after `outcome` at `now`.
    fn settle(&self, mut d: Delivery, outcome: Outcome, now: i64) -> Delivery {
        let finish = |d: &mut Delivery, outcome: DeliveryOutcome| {
            d.state = outcome.state();
            d.outcome = Some(outcome);
        };
        match outcome {
            Outcome::Superseded(by) => {
                finish(&mut d, DeliveryOutcome::Superseded);
                d.superseded_by = Some(by);
            }
            Outcome::Fenced(why) => {
                finish(&mut d, DeliveryOutcome::Superseded);
                d.last_error = Some(why);
            }
            Outcome::Expired => {
                finish(&mut d, DeliveryOutcome::Expired);
                d.last_error = Some(format!(
                    "not delivered within max_age {}",
                    humantime::format_duration(self.settings.delivery.max_age)
                ));
            }
            Outcome::Attempted(Attempt::Success(status)) => {
                d.attempts += 1;
                finish(&mut d, DeliveryOutcome::Delivered);
                d.last_status = status;
            }
            Outcome::Attempted(Attempt::Final {
                error,
                status,
                body,
            }) => {
                d.attempts += 1;
                finish(&mut d, DeliveryOutcome::Rejected);
                d.last_error = Some(error);
                d.last_status = status;
                d.response_body = Some(body);
            }
            Outcome::Attempted(Attempt::Retry {
                error,
                status,
                retry_after,
            }) => {
                d.attempts += 1;
                d.last_error = Some(error);
                d.last_status = status;
                self.retry_later(&mut d, retry_after, now);
            }
        }
        if d.state != DeliveryState::Pending {
            d.finished_at_ms = Some(now);
        }
        d
    }

    /// After a failed attempt at `now`: superseded if a newer action of its group waits,
    /// dead if out of attempts or if the next attempt would come after `max_age`, or due
    /// again after a backoff (real time, so `backoff × speed` on the clock).
    fn retry_later(&self, d: &mut Delivery, retry_after: Option<Duration>, now: i64) {
        let cfg = self.settings.delivery;
        let wait = backoff(&cfg, d.attempts, rand::random::<f64>());
        let wait = retry_after.map_or(wait, |ra| ra.clamp(wait, cfg.max_backoff.max(wait)));
        let next = now.saturating_add(self.time().clock_ms(wait));
        if let Some(newer) = self.index.has_newer(d) {
            d.state = DeliveryState::Superseded;
            d.outcome = Some(DeliveryOutcome::Superseded);
            d.superseded_by = Some(newer);
        } else if d.attempts >= cfg.max_attempts.max(1) {
            d.state = DeliveryState::Dead;
            d.outcome = Some(DeliveryOutcome::GaveUp);
        } else if next.saturating_sub(d.age_from_ms) >= duration_ms(cfg.max_age) {
            d.state = DeliveryState::Dead;
            d.outcome = Some(DeliveryOutcome::Expired);
        } else {
            d.next_attempt_ms = next;
            debug!(id = d.id, target = %d.target, kind = %d.kind, attempts = d.attempts,
                error = d.last_error.as_deref().unwrap_or_default(),
                backoff_ms = wait.as_millis() as u64, "delivery attempt failed; will retry");
        }
    }

    /// Takes a written outcome into the index, the metrics, the log and the sink.
    fn apply(&mut self, d: Delivery) {
        if d.state == DeliveryState::Pending {
            self.index.update(d);
            return;
        }
        self.index.remove(d.id);
        let Some(record) = d.record() else {
            return;
        };
        self.metrics
            .deliveries
            .get_or_create(&DeliveryLabels {
                target: d.target.clone(),
                kind: d.kind,
                outcome: record.outcome,
            })
            .inc();
        match d.state {
            DeliveryState::Delivered => {
                let ms = d.finished_at_ms.unwrap_or(d.created_at_ms) - d.created_at_ms;
                let secs = ms as f64 / 1000.0;
                self.metrics.delivery_latency.observe(secs.max(0.0));
                info!(id = d.id, target = %d.target, kind = %d.kind, attempts = d.attempts,
                    key = %d.idempotency_key, "delivered");
            }
            DeliveryState::Dead => {
                self.dead += 1;
                warn!(id = d.id, target = %d.target, kind = %d.kind, attempts = d.attempts,
                    outcome = %record.outcome, error = d.last_error.as_deref().unwrap_or_default(),
                    response = d.response_body.as_deref().unwrap_or_default(), "dead-lettered");
            }
            DeliveryState::Superseded | DeliveryState::Pending | DeliveryState::Discarded => {
                debug!(id = d.id, target = %d.target, kind = %d.kind, by = ?d.superseded_by, "superseded");
            }
        }
        if let Some(sink) = &self.outcomes {
            if d.state == DeliveryState::Delivered
                && let Some(mark) = super::storage::scale_mark(&d)
            {
                sink.delivered_scale(&d.target, mark, d.epoch);
            }
            sink.finished(&d.target, record);
        }
    }

    fn update_gauges(&self) {
        let set = |state, v: usize| {
            self.metrics
                .outbox
                .get_or_create(&OutboxLabels { state })
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(DeliveryState::Pending, self.index.len());
        set(DeliveryState::Dead, usize::try_from(self.dead).unwrap_or(0));
    }

    /// Deletes delivered and superseded actions older than the retention.
    async fn prune(&mut self, now: i64) {
        let cutoff = now.saturating_sub(duration_ms(self.settings.retention));
        match self.outbox.blocking(move |s| s.prune(cutoff)).await {
            Ok(0) => {}
            Ok(n) => info!(deleted = n, "pruned old deliveries"),
            Err(e) => warn!(error = %e, "cannot prune old deliveries"),
        }
    }
}

/// A configured duration in ms (of the outbox's clock).
fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
