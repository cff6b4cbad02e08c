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
//! Every state change is committed before the worker acts on it; outcomes that arrive
//! together are committed in one transaction.
//!
//! [redb]: https://docs.rs/redb

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::webhook::backoff;
use super::{Action, Attempt, Receivers};
use crate::config::DeliveryConfig;
use crate::metrics::{DeliveryLabels, Metrics, OutboxLabels};
use crate::store::{DeliveryRecord, Store};

/// The most attempts in flight at once, across lanes.
pub const MAX_IN_FLIGHT: usize = 64;
/// The file in the state directory.
pub const FILE_NAME: &str = "outbox.redb";

const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Idempotency key → id: an action identical to one already written (the same decision
/// made again, e.g. by a restarted process in the same second) is not written twice.
const KEYS: TableDefinition<&str, u64> = TableDefinition::new("keys");
const NEXT_ID: &str = "next_id";

/// Where an action is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Written, not delivered yet: waiting for its turn or its next attempt.
    Pending,
    /// The receiver accepted it.
    Delivered,
    /// Given up: refused, out of attempts or too old. Can be retried by hand.
    Dead,
    /// A newer action of its group replaced it before it was delivered.
    Superseded,
}

impl DeliveryState {
    /// The name, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
            Self::Superseded => "superseded",
        }
    }

    /// Parses a name from the API.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Dead, Self::Superseded]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

/// One action in the outbox, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Increasing with the order of writing.
    pub id: u64,
    /// The target.
    pub target: String,
    /// `scale`, `rebalance` or `alert`.
    pub kind: String,
    /// Its supersede group, if any.
    pub group: Option<String>,
    /// The `Idempotency-Key`, the same on every attempt.
    pub idempotency_key: String,
    /// The body, byte for byte as sent.
    pub body: String,
    /// Where it is.
    pub state: DeliveryState,
    /// How it ended: `delivered`, `rejected`, `gave_up`, `expired` or `superseded`.
    pub outcome: Option<String>,
    /// When it was written (Unix ms): the decision.
    pub created_at_ms: i64,
    /// Its age counts from here (Unix ms): written, or retried by hand.
    pub age_from_ms: i64,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (Unix ms).
    pub next_attempt_ms: i64,
    /// What went wrong last.
    pub last_error: Option<String>,
    /// The last HTTP status.
    pub last_status: Option<u16>,
    /// The start of the receiver's answer to a refused action.
    pub response_body: Option<String>,
    /// When it reached its state (Unix ms), if not pending.
    pub finished_at_ms: Option<i64>,
    /// The action that superseded it.
    pub superseded_by: Option<u64>,
}

impl Delivery {
    fn lane(&self) -> Lane {
        (self.target.clone(), self.kind.clone())
    }
}

type Lane = (String, String);

/// What the outbox could not do.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The state directory cannot be created or used.
    #[error("state directory `{path}`: {error}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// The outbox file cannot be opened, read or written.
    #[error("outbox `{path}`: {error}")]
    Storage {
        /// The file.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// No action with this id.
    #[error("no delivery with id {0}")]
    NotFound(u64),
    /// Only dead letters can be retried.
    #[error("delivery {id} is {state}, not dead; only dead deliveries can be retried")]
    NotDead {
        /// The id.
        id: u64,
        /// Its state.
        state: &'static str,
    },
}

/// Settings of the worker.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Retries, backoff and age.
    pub delivery: DeliveryConfig,
    /// How long delivered and superseded actions are kept.
    pub retention: Duration,
}

/// The handle on the outbox: write actions, list and retry deliveries. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Shared>,
}

struct Shared {
    db: Arc<Database>,
    path: PathBuf,
    /// New and retried actions, for the worker.
    to_worker: mpsc::UnboundedSender<ToWorker>,
    /// The worker's end, until [`Outbox::worker`] takes it.
    from_handles: Mutex<Option<mpsc::UnboundedReceiver<ToWorker>>>,
}

/// What the handles tell the worker.
enum ToWorker {
    /// Newly written actions.
    New(Vec<Delivery>),
    /// A dead action put back by hand.
    Retried(Box<Delivery>),
}

impl Outbox {
    /// Opens (or creates) `<dir>/outbox.redb`, creating `dir` if needed.
    ///
    /// Fails with the path and the reason when the directory cannot be created or is not
    /// a directory, or the file cannot be opened or is not an outbox; what this call
    /// created is removed again, and an existing file is left as it was.
    pub fn open(dir: &Path) -> Result<Self, OutboxError> {
        let dir_err = |error: String| OutboxError::Dir {
            path: dir.to_owned(),
            error,
        };
        let dir_existed = dir.exists();
        if dir_existed && !dir.is_dir() {
            return Err(dir_err("exists but is not a directory".to_owned()));
        }
        // The outermost directory this call creates, to remove again on failure.
        let created = dir
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
            .last()
            .map(Path::to_owned);
        if let Err(e) = std::fs::create_dir_all(dir) {
            if let Some(top) = &created {
                let _ = std::fs::remove_dir_all(top);
            }
            return Err(dir_err(format!("cannot create it: {e}")));
        }
        let path = dir.join(FILE_NAME);
        let file_existed = path.exists();
        let opened = Database::create(&path)
            .map_err(DbError::from)
            .and_then(|db| init(&db).map(|()| db));
        let db = match opened {
            Ok(db) => db,
            Err(e) => {
                // Leave nothing half-written: remove what this call made.
                if let Some(top) = &created {
                    let _ = std::fs::remove_dir_all(top);
                } else if !file_existed {
                    let _ = std::fs::remove_file(&path);
                }
                let why = match *e.0 {
                    redb::Error::DatabaseAlreadyOpen => {
                        "in use by another process (another prescale on the same state directory?)"
                            .to_owned()
                    }
                    e => format!("cannot open it as an outbox: {e}"),
                };
                return Err(OutboxError::Storage { path, error: why });
            }
        };
        let (to_worker, from_handles) = mpsc::unbounded_channel();
        Ok(Self {
            inner: Arc::new(Shared {
                db: Arc::new(db),
                path,
                to_worker,
                from_handles: Mutex::new(Some(from_handles)),
            }),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn storage(&self, e: impl std::fmt::Display) -> OutboxError {
        OutboxError::Storage {
            path: self.inner.path.clone(),
            error: e.to_string(),
        }
    }

    /// Runs a blocking closure over the database on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, OutboxError> + Send + 'static,
    ) -> Result<T, OutboxError> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| self.storage(format!("storage task failed: {e}")))?
    }

    /// Writes `actions` durably, in order, and hands them to the worker; returns what was
    /// written. An action whose idempotency key is already in the outbox (an identical
    /// action) is left out. When this returns, the actions survive a crash.
    pub async fn enqueue(&self, actions: Vec<Action>) -> Result<Vec<Delivery>, OutboxError> {
        if actions.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let path = self.inner.path.clone();
        let records = self
            .blocking(move |db| {
                let storage = |e: DbError| OutboxError::Storage {
                    path: path.clone(),
                    error: e.to_string(),
                };
                let write = || -> Result<Vec<Delivery>, DbError> {
                    let txn = db.begin_write()?;
                    let mut out = Vec::with_capacity(actions.len());
                    {
                        let mut meta = txn.open_table(META)?;
                        let mut table = txn.open_table(DELIVERIES)?;
                        let mut keys = txn.open_table(KEYS)?;
                        let mut next = meta.get(NEXT_ID)?.map_or(1, |v| v.value());
                        for a in &actions {
                            let key = a.idempotency_key();
                            if let Some(id) = keys.get(key.as_str())? {
                                debug!(target = a.target(), kind = a.kind(), key = %key, id = id.value(),
                                    "identical action already in the outbox; not written again");
                                continue;
                            }
                            keys.insert(key.as_str(), next)?;
                            let d = Delivery {
                                id: next,
                                target: a.target().to_owned(),
                                kind: a.kind().to_owned(),
                                group: a.supersede_group(),
                                idempotency_key: key,
                                body: String::from_utf8_lossy(&a.body()).into_owned(),
                                state: DeliveryState::Pending,
                                outcome: None,
                                created_at_ms: now,
                                age_from_ms: now,
                                attempts: 0,
                                next_attempt_ms: now,
                                last_error: None,
                                last_status: None,
                                response_body: None,
                                finished_at_ms: None,
                                superseded_by: None,
                            };
                            table.insert(next, encode(&d).as_slice())?;
                            out.push(d);
                            next += 1;
                        }
                        meta.insert(NEXT_ID, next)?;
                    }
                    txn.commit()?;
                    Ok(out)
                };
                write().map_err(storage)
            })
            .await?;
        // The worker may be gone (shutting down); the actions are on disk for the next start.
        let _ = self.inner.to_worker.send(ToWorker::New(records.clone()));
        Ok(records)
    }

    /// Up to `limit` deliveries, newest first, optionally only in `state` and of `target`.
    pub async fn list(
        &self,
        state: Option<DeliveryState>,
        target: Option<String>,
        limit: usize,
    ) -> Result<Vec<Delivery>, OutboxError> {
        let path = self.inner.path.clone();
        self.blocking(move |db| {
            let mut out = Vec::new();
            scan(db, &path, true, |d| {
                let keep = state.is_none_or(|s| d.state == s)
                    && target.as_deref().is_none_or(|t| d.target == t);
                if keep {
                    out.push(d);
                }
                out.len() < limit
            })?;
            Ok(out)
        })
        .await
    }

    /// One delivery.
    pub async fn get(&self, id: u64) -> Result<Delivery, OutboxError> {
        let path = self.inner.path.clone();
        self.blocking(move |db| read_one(db, &path, id)).await
    }

    /// Puts a dead delivery back in its lane with fresh attempts and age; returns it.
    pub async fn retry(&self, id: u64) -> Result<Delivery, OutboxError> {
        let path = self.inner.path.clone();
        let now = now_ms();
        let d = self
            .blocking(move |db| {
                let storage = |e: DbError| OutboxError::Storage {
                    path: path.clone(),
                    error: e.to_string(),
                };
                let txn = db.begin_write().map_err(|e| storage(e.into()))?;
                let d = {
                    let mut table = txn.open_table(DELIVERIES).map_err(|e| storage(e.into()))?;
                    let mut d = match table.get(id).map_err(|e| storage(e.into()))? {
                        Some(v) => decode(&path, id, v.value())?,
                        None => return Err(OutboxError::NotFound(id)),
                    };
                    if d.state != DeliveryState::Dead {
                        return Err(OutboxError::NotDead {
                            id,
                            state: d.state.as_str(),
                        });
                    }
                    d.state = DeliveryState::Pending;
                    d.outcome = None;
                    d.attempts = 0;
                    d.age_from_ms = now;
                    d.next_attempt_ms = now;
                    d.finished_at_ms = None;
                    table
                        .insert(id, encode(&d).as_slice())
                        .map_err(|e| storage(e.into()))?;
                    d
                };
                txn.commit().map_err(|e| storage(e.into()))?;
                Ok(d)
            })
            .await?;
        info!(id, target = %d.target, kind = %d.kind, "dead delivery put back for retry");
        let _ = self
            .inner
            .to_worker
            .send(ToWorker::Retried(Box::new(d.clone())));
        Ok(d)
    }

    /// The worker that delivers through `receivers`, counting in `metrics` and recording
    /// each target's last delivery in `store`, with the pending actions loaded (so that an
    /// unreadable outbox fails here, at start). Only one worker per outbox.
    pub async fn worker(
        &self,
        settings: Settings,
        receivers: Receivers,
        metrics: Metrics,
        store: Option<Store>,
    ) -> Result<Worker, OutboxError> {
        let path = self.inner.path.clone();
        let (resumed, dead) = self
            .blocking(move |db| {
                let mut pending = Vec::new();
                let mut dead = 0;
                scan(db, &path, false, |d| {
                    match d.state {
                        DeliveryState::Pending => pending.push(d),
                        DeliveryState::Dead => dead += 1,
                        _ => {}
                    }
                    true
                })?;
                Ok((pending, dead))
            })
            .await?;
        let from_handles = self
            .inner
            .from_handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| self.storage("already has a worker"))?;
        Ok(Worker {
            outbox: self.clone(),
            settings,
            receivers,
            metrics,
            store,
            from_handles,
            index: Index::default(),
            resumed,
            dead,
        })
    }
}

/// A redb error, boxed (redb's own error type is large).
#[derive(Debug)]
struct DbError(Box<redb::Error>);

impl<E: Into<redb::Error>> From<E> for DbError {
    fn from(e: E) -> Self {
        Self(Box::new(e.into()))
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

fn init(db: &Database) -> Result<(), DbError> {
    let txn = db.begin_write()?;
    txn.open_table(DELIVERIES)?;
    txn.open_table(META)?;
    txn.open_table(KEYS)?;
    txn.commit()?;
    Ok(())
}

fn encode(d: &Delivery) -> Vec<u8> {
    // Strings, numbers and enums only: serialising cannot fail.
    serde_json::to_vec(d).unwrap_or_default()
}

fn decode(path: &Path, id: u64, bytes: &[u8]) -> Result<Delivery, OutboxError> {
    serde_json::from_slice(bytes).map_err(|e| OutboxError::Storage {
        path: path.to_owned(),
        error: format!("record {id} is not readable: {e}"),
    })
}

fn read_one(db: &Database, path: &Path, id: u64) -> Result<Delivery, OutboxError> {
    let storage = |e: DbError| OutboxError::Storage {
        path: path.to_owned(),
        error: e.to_string(),
    };
    let txn = db.begin_read().map_err(|e| storage(e.into()))?;
    let table = txn.open_table(DELIVERIES).map_err(|e| storage(e.into()))?;
    match table.get(id).map_err(|e| storage(e.into()))? {
        Some(v) => decode(path, id, v.value()),
        None => Err(OutboxError::NotFound(id)),
    }
}

/// Calls `f` on every record (newest first when `rev`) until it returns false.
fn scan(
    db: &Database,
    path: &Path,
    rev: bool,
    mut f: impl FnMut(Delivery) -> bool,
) -> Result<(), OutboxError> {
    let storage = |e: DbError| OutboxError::Storage {
        path: path.to_owned(),
        error: e.to_string(),
    };
    let txn = db.begin_read().map_err(|e| storage(e.into()))?;
    let table = txn.open_table(DELIVERIES).map_err(|e| storage(e.into()))?;
    let iter = table.iter().map_err(|e| storage(e.into()))?;
    let mut step =
        |item: Result<(redb::AccessGuard<u64>, redb::AccessGuard<&[u8]>), redb::StorageError>| {
            let (k, v) = item.map_err(|e| storage(e.into()))?;
            Ok::<_, OutboxError>(f(decode(path, k.value(), v.value())?))
        };
    if rev {
        for item in iter.rev() {
            if !step(item)? {
                break;
            }
        }
    } else {
        for item in iter {
            if !step(item)? {
                break;
            }
        }
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The pending actions, by lane, as the worker sees them.
#[derive(Default)]
struct Index {
    pending: BTreeMap<u64, Delivery>,
    lanes: HashMap<Lane, BTreeSet<u64>>,
    /// Lanes with an attempt in flight, and the id being attempted.
    busy: HashMap<Lane, u64>,
}

impl Index {
    /// Adds pending records; returns the older ones they supersede (not in flight), with
    /// the newest that supersedes each. Those stay in the index until their outcome is
    /// written.
    fn add(&mut self, records: Vec<Delivery>) -> Vec<(u64, u64)> {
        let mut superseded: BTreeMap<u64, u64> = BTreeMap::new();
        for d in records {
            if d.state != DeliveryState::Pending || self.pending.contains_key(&d.id) {
                continue;
            }
            let lane = d.lane();
            if let Some(group) = &d.group {
                let in_flight = self.busy.get(&lane).copied();
                let older: Vec<u64> = self
                    .lanes
                    .get(&lane)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|id| *id < d.id && Some(*id) != in_flight)
                    .filter(|id| {
                        self.pending
                            .get(id)
                            .is_some_and(|o| o.group.as_ref() == Some(group))
                    })
                    .collect();
                for id in older {
                    superseded.insert(id, d.id);
                }
            }
            self.lanes.entry(lane).or_default().insert(d.id);
            self.pending.insert(d.id, d);
        }
        superseded.into_iter().collect()
    }

    fn remove(&mut self, id: u64) -> Option<Delivery> {
        let d = self.pending.remove(&id)?;
        let lane = d.lane();
        if let Some(ids) = self.lanes.get_mut(&lane) {
            ids.remove(&id);
            if ids.is_empty() {
                self.lanes.remove(&lane);
            }
        }
        if self.busy.get(&lane) == Some(&id) {
            self.busy.remove(&lane);
        }
        Some(d)
    }

    /// Whether a newer pending action of `d`'s group exists.
    fn has_newer(&self, d: &Delivery) -> Option<u64> {
        let group = d.group.as_ref()?;
        self.lanes
            .get(&d.lane())?
            .range(d.id + 1..)
            .copied()
            .find(|id| {
                self.pending
                    .get(id)
                    .is_some_and(|o| o.group.as_ref() == Some(group))
            })
    }

    /// The heads of idle lanes due at `now`, longest due first (so no lane starves when
    /// there is not room for all), at most `room`; marks their lanes busy.
    fn take_due(&mut self, now: i64, room: usize) -> Vec<Delivery> {
        let mut due: Vec<&Delivery> = self
            .lanes
            .iter()
            .filter(|(lane, _)| !self.busy.contains_key(*lane))
            .filter_map(|(_, ids)| ids.first().and_then(|id| self.pending.get(id)))
            .filter(|d| d.next_attempt_ms <= now)
            .collect();
        due.sort_by_key(|d| (d.next_attempt_ms, d.id));
        let due: Vec<Delivery> = due.into_iter().take(room).cloned().collect();
        for d in &due {
            self.busy.insert(d.lane(), d.id);
        }
        due
    }

    /// When the next idle lane's head is due (Unix ms).
    fn next_wake(&self) -> Option<i64> {
        self.lanes
            .iter()
            .filter(|(lane, _)| !self.busy.contains_key(*lane))
            .filter_map(|(_, ids)| ids.first().and_then(|id| self.pending.get(id)))
            .map(|d| d.next_attempt_ms)
            .min()
    }
}

/// How an action's turn ended, before it is written down.
enum Outcome {
    Attempted(Attempt),
    Expired,
    Superseded(u64),
}

/// Delivers what the outbox holds; see the module documentation. Run it with
/// [`Worker::run`].
pub struct Worker {
    outbox: Outbox,
    settings: Settings,
    receivers: Receivers,
    metrics: Metrics,
    store: Option<Store>,
    from_handles: mpsc::UnboundedReceiver<ToWorker>,
    index: Index,
    /// Pending at start, not yet in the index.
    resumed: Vec<Delivery>,
    dead: i64,
}

impl Worker {
    /// Loads the pending actions, then delivers until `shutdown` flips. Attempts in flight
    /// at shutdown are abandoned; their actions stay pending for the next start.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.resume().await;
        let mut in_flight: JoinSet<Attempt> = JoinSet::new();
        let mut attempting: HashMap<tokio::task::Id, u64> = HashMap::new();
        let mut next_prune = now_ms();
        loop {
            let now = now_ms();
            if now >= next_prune {
                self.prune(now).await;
                next_prune = now + 3_600_000;
            }
            let mut finished = Vec::new();
            for d in self
                .index
                .take_due(now, MAX_IN_FLIGHT.saturating_sub(in_flight.len()))
            {
                let max_age = self.settings.delivery.max_age.as_millis() as i64;
                if now - d.age_from_ms >= max_age {
                    finished.push((d.id, Outcome::Expired));
                    continue;
                }
                let receivers = self.receivers.clone();
                let handle = in_flight.spawn(async move {
                    receivers
                        .attempt(&d.target, &d.kind, d.body.as_bytes(), &d.idempotency_key)
                        .await
                });
                attempting.insert(handle.id(), d.id);
            }
            if !finished.is_empty() {
                self.record(finished).await;
                continue;
            }
            let wake = self
                .index
                .next_wake()
                .map_or(next_prune, |w| w.min(next_prune));
            let sleep = Duration::from_millis((wake - now).clamp(0, 3_600_000) as u64);
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(first) = self.from_handles.recv() => {
                    let mut records = Vec::new();
                    let mut take = |msg| match msg {
                        ToWorker::New(new) => records.extend(new),
                        ToWorker::Retried(d) => {
                            self.dead -= 1;
                            records.push(*d);
                        }
                    };
                    take(first);
                    while let Ok(more) = self.from_handles.try_recv() {
                        take(more);
                    }
                    self.admit(records).await;
                }
                Some(joined) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                    let mut outcomes = Vec::new();
                    let mut take = |joined: Result<(tokio::task::Id, Attempt), tokio::task::JoinError>| {
                        let (task, attempt) = match joined {
                            Ok((task, a)) => (task, a),
                            Err(e) => (e.id(), Attempt::Retry {
                                error: format!("the attempt failed: {e}"),
                                status: None,
                                retry_after: None,
                            }),
                        };
                        if let Some(id) = attempting.remove(&task) {
                            outcomes.push((id, Outcome::Attempted(attempt)));
                        }
                    };
                    take(joined);
                    while let Some(joined) = in_flight.try_join_next_with_id() {
                        take(joined);
                    }
                    self.record(outcomes).await;
                }
                () = tokio::time::sleep(sleep) => {}
            }
        }
        in_flight.abort_all();
        debug!("outbox worker stopped");
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
    /// the store.
    async fn record(&mut self, outcomes: Vec<(u64, Outcome)>) {
        let now = now_ms();
        let cfg = self.settings.delivery;
        let mut updated = Vec::with_capacity(outcomes.len());
        for (id, outcome) in outcomes {
            let Some(mut d) = self.index.pending.get(&id).cloned() else {
                continue;
            };
            match outcome {
                Outcome::Superseded(by) => {
                    d.state = DeliveryState::Superseded;
                    d.outcome = Some("superseded".into());
                    d.superseded_by = Some(by);
                }
                Outcome::Expired => {
                    d.state = DeliveryState::Dead;
                    d.outcome = Some("expired".into());
                    d.last_error = Some(format!(
                        "not delivered within max_age {}",
                        humantime::format_duration(cfg.max_age)
                    ));
                }
                Outcome::Attempted(Attempt::Success(status)) => {
                    d.attempts += 1;
                    d.state = DeliveryState::Delivered;
                    d.outcome = Some("delivered".into());
                    d.last_status = status;
                }
                Outcome::Attempted(Attempt::Final {
                    error,
                    status,
                    body,
                }) => {
                    d.attempts += 1;
                    d.state = DeliveryState::Dead;
                    d.outcome = Some("rejected".into());
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
                    let wait = backoff(&cfg, d.attempts, rand::random::<f64>());
                    let wait =
                        retry_after.map_or(wait, |ra| ra.clamp(wait, cfg.max_backoff.max(wait)));
                    if let Some(newer) = self.index.has_newer(&d) {
                        d.state = DeliveryState::Superseded;
                        d.outcome = Some("superseded".into());
                        d.superseded_by = Some(newer);
                    } else if d.attempts >= cfg.max_attempts.max(1) {
                        d.state = DeliveryState::Dead;
                        d.outcome = Some("gave_up".into());
                    } else if now + wait.as_millis() as i64 - d.age_from_ms
                        >= cfg.max_age.as_millis() as i64
                    {
                        d.state = DeliveryState::Dead;
                        d.outcome = Some("expired".into());
                    } else {
                        d.next_attempt_ms = now + wait.as_millis() as i64;
                        debug!(id, target = %d.target, kind = %d.kind, attempts = d.attempts,
                            error = d.last_error.as_deref().unwrap_or_default(),
                            backoff_ms = wait.as_millis() as u64, "delivery attempt failed; will retry");
                    }
                }
            }
            if d.state != DeliveryState::Pending {
                d.finished_at_ms = Some(now);
            }
            updated.push(d);
        }
        if updated.is_empty() {
            return;
        }
        let path = self.outbox.inner.path.clone();
        let to_write = updated.clone();
        let written = self
            .outbox
            .blocking(move |db| {
                let write = || -> Result<(), DbError> {
                    let txn = db.begin_write()?;
                    {
                        let mut table = txn.open_table(DELIVERIES)?;
                        for d in &to_write {
                            table.insert(d.id, encode(d).as_slice())?;
                        }
                    }
                    txn.commit()?;
                    Ok(())
                };
                write().map_err(|e| OutboxError::Storage {
                    path,
                    error: e.to_string(),
                })
            })
            .await;
        if let Err(e) = written {
            // The attempts happened; keep the index true to them so nothing is re-sent in
            // a loop. After a restart the file's older state is resumed.
            error!(error = %e, "cannot record delivery outcomes");
        }
        for d in updated {
            self.apply(d);
        }
        self.update_gauges();
    }

    /// Takes a written outcome into the index, the metrics, the store and the log.
    fn apply(&mut self, d: Delivery) {
        if d.state == DeliveryState::Pending {
            if let Some(p) = self.index.pending.get_mut(&d.id) {
                *p = d.clone();
            }
            let lane = d.lane();
            if self.index.busy.get(&lane) == Some(&d.id) {
                self.index.busy.remove(&lane);
            }
            return;
        }
        self.index.remove(d.id);
        let outcome = d.outcome.clone().unwrap_or_default();
        self.metrics
            .deliveries
            .get_or_create(&DeliveryLabels {
                target: d.target.clone(),
                kind: d.kind.clone(),
                outcome: outcome.clone(),
            })
            .inc();
        match d.state {
            DeliveryState::Delivered => {
                let secs =
                    (d.finished_at_ms.unwrap_or(d.created_at_ms) - d.created_at_ms) as f64 / 1000.0;
                self.metrics.delivery_latency.observe(secs.max(0.0));
                info!(id = d.id, target = %d.target, kind = %d.kind, attempts = d.attempts,
                    key = %d.idempotency_key, "delivered");
            }
            DeliveryState::Dead => {
                self.dead += 1;
                warn!(id = d.id, target = %d.target, kind = %d.kind, attempts = d.attempts,
                    outcome = %outcome, error = d.last_error.as_deref().unwrap_or_default(),
                    response = d.response_body.as_deref().unwrap_or_default(), "dead-lettered");
            }
            _ => {
                debug!(id = d.id, target = %d.target, kind = %d.kind, by = ?d.superseded_by, "superseded");
            }
        }
        if let Some(store) = &self.store
            && let Some(mut t) = store.target(&d.target)
        {
            t.last_delivery = Some(DeliveryRecord {
                kind: static_kind(&d.kind),
                idempotency_key: d.idempotency_key.clone(),
                outcome: static_outcome(&outcome),
                attempts: d.attempts,
                error: d
                    .last_error
                    .clone()
                    .filter(|_| d.state != DeliveryState::Delivered),
                at: d.finished_at_ms.unwrap_or_default() / 1000,
            });
        }
    }

    fn update_gauges(&self) {
        let set = |state: &str, v: i64| {
            self.metrics
                .outbox
                .get_or_create(&OutboxLabels {
                    state: state.to_owned(),
                })
                .set(v);
        };
        set("pending", self.index.pending.len() as i64);
        set("dead", self.dead);
    }

    /// Deletes delivered and superseded actions older than the retention.
    async fn prune(&mut self, now: i64) {
        let cutoff = now - self.settings.retention.as_millis() as i64;
        let path = self.outbox.inner.path.clone();
        let pruned = self
            .outbox
            .blocking(move |db| {
                let mut old = Vec::new();
                scan(db, &path, false, |d| {
                    let done = matches!(
                        d.state,
                        DeliveryState::Delivered | DeliveryState::Superseded
                    );
                    if done && d.finished_at_ms.is_some_and(|f| f < cutoff) {
                        old.push((d.id, d.idempotency_key));
                    }
                    true
                })?;
                if old.is_empty() {
                    return Ok(0);
                }
                let write = || -> Result<usize, DbError> {
                    let txn = db.begin_write()?;
                    {
                        let mut table = txn.open_table(DELIVERIES)?;
                        let mut keys = txn.open_table(KEYS)?;
                        for (id, key) in &old {
                            table.remove(id)?;
                            keys.remove(key.as_str())?;
                        }
                    }
                    txn.commit()?;
                    Ok(old.len())
                };
                write().map_err(|e| OutboxError::Storage {
                    path,
                    error: e.to_string(),
                })
            })
            .await;
        match pruned {
            Ok(0) => {}
            Ok(n) => info!(deleted = n, "pruned old deliveries"),
            Err(e) => warn!(error = %e, "cannot prune old deliveries"),
        }
    }
}

fn static_kind(kind: &str) -> &'static str {
    match kind {
        "scale" => "scale",
        "rebalance" => "rebalance",
        "alert" => "alert",
        _ => "unknown",
    }
}

fn static_outcome(outcome: &str) -> &'static str {
    match outcome {
        "delivered" => "delivered",
        "rejected" => "rejected",
        "gave_up" => "gave_up",
        "expired" => "expired",
        "superseded" => "superseded",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: u64, target: &str, kind: &str, group: bool, next: i64) -> Delivery {
        Delivery {
            id,
            target: target.into(),
            kind: kind.into(),
            group: group.then(|| format!("{target}/{kind}")),
            idempotency_key: format!("k{id}"),
            body: "{}".into(),
            state: DeliveryState::Pending,
            outcome: None,
            created_at_ms: 0,
            age_from_ms: 0,
            attempts: 0,
            next_attempt_ms: next,
            last_error: None,
            last_status: None,
            response_body: None,
            finished_at_ms: None,
            superseded_by: None,
        }
    }

    fn ids(v: &[Delivery]) -> Vec<u64> {
        let mut ids: Vec<u64> = v.iter().map(|d| d.id).collect();
        ids.sort();
        ids
    }

    /// One head per lane, only when due, never while the lane is busy.
    #[test]
    fn lanes_take_their_head_one_at_a_time() {
        let mut ix = Index::default();
        let none = ix.add(vec![
            d(1, "a", "rebalance", false, 0),
            d(2, "a", "rebalance", false, 0),
            d(3, "b", "rebalance", false, 50),
            d(4, "a", "scale", true, 0),
        ]);
        assert!(none.is_empty(), "rebalance is never superseded");
        assert_eq!(ids(&ix.take_due(10, 64)), [1, 4], "b is not due yet");
        assert_eq!(ix.next_wake(), Some(50));
        assert!(
            ix.take_due(100, 64).iter().all(|d| d.id == 3),
            "busy lanes wait"
        );
        ix.remove(1);
        assert_eq!(ids(&ix.take_due(100, 64)), [2]);
        assert_eq!(ix.take_due(100, 64).len(), 0);
        let mut ix2 = Index::default();
        ix2.add(
            (1..=5)
                .map(|i| d(i, &format!("t{i}"), "scale", true, 10 - i as i64))
                .collect(),
        );
        assert_eq!(
            ids(&ix2.take_due(10, 2)),
            [4, 5],
            "at most `room` at once, longest due first"
        );
    }

    /// A newer action of a group supersedes older pending ones, but not one in flight;
    /// that one learns of the newer one when its attempt fails.
    #[test]
    fn newer_of_a_group_supersedes() {
        let mut ix = Index::default();
        ix.add(vec![d(1, "a", "scale", true, 0)]);
        assert_eq!(ix.take_due(0, 64)[0].id, 1);
        assert!(
            ix.add(vec![d(2, "a", "scale", true, 0)]).is_empty(),
            "1 is in flight"
        );
        assert_eq!(ix.add(vec![d(3, "a", "scale", true, 0)]), [(2, 3)]);
        let one = ix.pending[&1].clone();
        assert_eq!(
            ix.has_newer(&one),
            Some(2),
            "2 is still indexed until written"
        );
        ix.remove(2);
        assert_eq!(ix.has_newer(&one), Some(3));
        assert_eq!(
            ix.add(vec![
                d(4, "b", "scale", true, 0),
                d(5, "b", "scale", true, 0)
            ]),
            [(4, 5)],
            "within one batch too"
        );
    }

    #[test]
    fn states_round_trip_their_names() {
        for s in [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Dead,
            DeliveryState::Superseded,
        ] {
            assert_eq!(DeliveryState::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeliveryState::parse("lost"), None);
    }
}
