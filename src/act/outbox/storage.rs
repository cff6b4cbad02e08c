//! The outbox file: its redb tables, the encoding of a record, and every transaction.
//!
//! All of it is blocking; the handle runs it on tokio's blocking pool. A record is the
//! [`Delivery`] as JSON (its enums as their documented names), keyed by id; the names have
//! not changed since the first version, so files written by older versions open as they are.
//!
//! Beside the deliveries, the `control` table keeps each target's [`Control`] (the count
//! last asked for and last delivered, and whether it is paused), written in the same
//! transaction as the action or outcome it follows from and never pruned. A file written
//! before that table existed gets it when opened, filled from the deliveries it still holds.

use std::borrow::Cow;
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use std::collections::BTreeMap;

use redb::{Database, ReadableTable, Table, TableDefinition, TableHandle, WriteTransaction};
use serde::Deserialize;
use tracing::{debug, info};

use super::{Control, Delivery, DeliveryState, FILE_NAME, OutboxError, ScaleMark};
use crate::act::{Action, ActionKind};

const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Idempotency key → id: an action identical to one already written (the same decision
/// made again, e.g. by a restarted process in the same second) is not written twice.
const KEYS: TableDefinition<&str, u64> = TableDefinition::new("keys");
const NEXT_ID: &str = "next_id";
/// Target name → its [`Control`] as JSON. Never pruned.
const CONTROL: TableDefinition<&str, &[u8]> = TableDefinition::new("control");
/// Rewritten by [`Storage::probe`]: a small real write, to learn whether writes succeed.
const PROBE: &str = "probe";

/// The few fields a listing filters on, read without decoding the whole record.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    target: Cow<'a, str>,
    state: DeliveryState,
}

/// What the retry of a dead record needs of the newer ones.
#[derive(Deserialize)]
struct Grouped<'a> {
    #[serde(borrow)]
    group: Option<Cow<'a, str>>,
    state: DeliveryState,
}

/// What pruning needs of a record.
#[derive(Deserialize)]
struct Finished<'a> {
    state: DeliveryState,
    finished_at_ms: Option<i64>,
    #[serde(borrow)]
    idempotency_key: Cow<'a, str>,
}

/// Which deliveries a listing shows.
#[derive(Debug, Clone, Default)]
pub(super) struct Filter {
    pub(super) state: Option<DeliveryState>,
    pub(super) target: Option<String>,
}

impl Filter {
    fn is_empty(&self) -> bool {
        self.state.is_none() && self.target.is_none()
    }

    fn keeps(&self, head: &Head<'_>) -> bool {
        self.state.is_none_or(|s| head.state == s)
            && self.target.as_deref().is_none_or(|t| head.target == t)
    }
}

/// The open outbox file.
pub(super) struct Storage {
    db: Database,
    path: PathBuf,
    /// An operation failed on the file itself (I/O): redb refuses every later one
    /// ("Previous I/O error occurred") until the file is closed and opened again.
    io_failed: AtomicBool,
}

impl Storage {
    /// Opens (or creates) `<dir>/outbox.redb`, creating `dir` if needed; on failure removes
    /// what this call created and leaves an existing file as it was.
    pub(super) fn open(dir: &Path) -> Result<Self, OutboxError> {
        let dir_err = |error: String| OutboxError::Dir {
            path: dir.to_owned(),
            error,
        };
        if dir.exists() && !dir.is_dir() {
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
        match Self::reopen(&path) {
            Ok(storage) => Ok(storage),
            Err(e) => {
                // Leave nothing half-written: remove what this call made.
                if let Some(top) = &created {
                    let _ = std::fs::remove_dir_all(top);
                } else if !file_existed {
                    let _ = std::fs::remove_file(&path);
                }
                Err(e)
            }
        }
    }

    /// Opens the outbox file at `path` (creating it if missing) and its tables: at start,
    /// and again after an I/O error. A file that is empty, damaged or not an outbox is
    /// refused with the reason, and left as it is.
    pub(super) fn reopen(path: &Path) -> Result<Self, OutboxError> {
        let error = |error: String| OutboxError::storage(path, error);
        // redb takes an empty file for a new one; an outbox is never empty, so this one was
        // cut short (or is not ours): its actions would be lost without a word.
        if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0) {
            return Err(error(
                "cannot open it as an outbox: the file is empty (0 bytes); move it away to \
                 start with an empty outbox"
                    .to_owned(),
            ));
        }
        // redb asserts (panics) on some damaged files, e.g. a truncated one.
        let opened = quietly(|| {
            Database::create(path)
                .map_err(DbError::from)
                .and_then(|db| init(&db).map(|()| db))
        });
        match opened {
            Ok(Ok(db)) => Ok(Self {
                db,
                path: path.to_owned(),
                io_failed: AtomicBool::new(false),
            }),
            Ok(Err(e)) => Err(error(match *e.0 {
                redb::Error::DatabaseAlreadyOpen => {
                    "in use by another process (another prescale on the same state directory?)"
                        .to_owned()
                }
                e => format!("cannot open it as an outbox: {e}"),
            })),
            Err(panic) => Err(error(format!(
                "cannot open it as an outbox: the file is truncated or damaged ({})",
                panic.split_whitespace().collect::<Vec<_>>().join(" ")
            ))),
        }
    }

    /// Whether an operation failed on the file itself, so that it must be reopened.
    pub(super) fn io_failed(&self) -> bool {
        self.io_failed.load(Ordering::Acquire)
    }

    /// The file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// An error of this file.
    pub(super) fn error(&self, error: impl std::fmt::Display) -> OutboxError {
        OutboxError::storage(&self.path, error)
    }

    /// Maps a redb error to an error of this file, noting an I/O error.
    fn db<E: Into<redb::Error>>(&self) -> impl Fn(E) -> OutboxError + '_ {
        move |e| {
            let e = e.into();
            if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
                self.io_failed.store(true, Ordering::Release);
            }
            self.error(e)
        }
    }

    fn unreadable(&self, id: u64, e: &serde_json::Error) -> OutboxError {
        self.error(format!("record {id} is not readable: {e}"))
    }

    fn decode(&self, id: u64, bytes: &[u8]) -> Result<Delivery, OutboxError> {
        serde_json::from_slice(bytes).map_err(|e| self.unreadable(id, &e))
    }

    /// Writes `actions` in one transaction, in order, as pending since `now` (ms); leaves
    /// out those whose idempotency key is already in the file; returns what was written.
    pub(super) fn insert(
        &self,
        actions: &[Action],
        epoch: Option<u64>,
        now: i64,
    ) -> Result<Vec<Delivery>, OutboxError> {
        let txn = self.db.begin_write().map_err(self.db())?;
        let mut out = Vec::with_capacity(actions.len());
        {
            let mut meta = txn.open_table(META).map_err(self.db())?;
            let mut table = txn.open_table(DELIVERIES).map_err(self.db())?;
            let mut keys = txn.open_table(KEYS).map_err(self.db())?;
            let mut control = txn.open_table(CONTROL).map_err(self.db())?;
            let mut next = meta
                .get(NEXT_ID)
                .map_err(self.db())?
                .map_or(1, |v| v.value());
            for a in actions {
                let key = a.idempotency_key_at(epoch);
                if let Some(id) = keys.get(key.as_str()).map_err(self.db())? {
                    debug!(target = a.target(), kind = %a.kind(), key = %key, id = id.value(),
                        "identical action already in the outbox; not written again");
                    continue;
                }
                keys.insert(key.as_str(), next).map_err(self.db())?;
                let d = Delivery::pending(next, (a, epoch), key, now);
                table
                    .insert(next, encode(&d).as_slice())
                    .map_err(self.db())?;
                if let Action::Scale(s) = a {
                    let asked = ScaleMark {
                        id: next,
                        replicas: s.to,
                        at: s.issued_at,
                    };
                    self.update_control(&mut control, &s.target, |c| c.asked = Some(asked))?;
                }
                out.push(d);
                next += 1;
            }
            meta.insert(NEXT_ID, next).map_err(self.db())?;
        }
        txn.commit().map_err(self.db())?;
        Ok(out)
    }

    /// One record.
    pub(super) fn get(&self, id: u64) -> Result<Delivery, OutboxError> {
        let txn = self.db.begin_read().map_err(self.db())?;
        let table = txn.open_table(DELIVERIES).map_err(self.db())?;
        match table.get(id).map_err(self.db())? {
            Some(v) => self.decode(id, v.value()),
            None => Err(OutboxError::NotFound(id)),
        }
    }

    /// Up to `limit` records that `filter` keeps, newest first, after skipping `offset` of
    /// them; and whether more follow. The skipped ones are not decoded (only the fields the
    /// filter reads), so a large offset costs a scan, not memory.
    pub(super) fn page(
        &self,
        filter: &Filter,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<Delivery>, bool), OutboxError> {
        let txn = self.db.begin_read().map_err(self.db())?;
        let table = txn.open_table(DELIVERIES).map_err(self.db())?;
        let mut skipped = 0usize;
        let mut out = Vec::with_capacity(limit.min(1_024));
        for item in table.iter().map_err(self.db())?.rev() {
            let (k, v) = item.map_err(self.db())?;
            let (id, bytes) = (k.value(), v.value());
            if !filter.is_empty() {
                let head: Head<'_> =
                    serde_json::from_slice(bytes).map_err(|e| self.unreadable(id, &e))?;
                if !filter.keeps(&head) {
                    continue;
                }
            }
            if skipped < offset {
                skipped += 1;
            } else if out.len() == limit {
                return Ok((out, true));
            } else {
                out.push(self.decode(id, bytes)?);
            }
        }
        Ok((out, false))
    }

    /// Puts dead record `id` back to pending with fresh attempts, due and aged from `now`.
    pub(super) fn retry(&self, id: u64, now: i64) -> Result<Delivery, OutboxError> {
        let not_dead = |state| OutboxError::NotDead { id, state };
        self.change_dead(id, not_dead, |table, d| {
            if let Some((by, state)) = self.newer_of_group(table, d)? {
                return Err(OutboxError::Superseded { id, by, state });
            }
            d.state = DeliveryState::Pending;
            d.outcome = None;
            d.attempts = 0;
            d.age_from_ms = now;
            d.next_attempt_ms = now;
            d.finished_at_ms = None;
            Ok(())
        })
    }

    /// Moves dead record `id` to discarded at `now` (ms): kept for the API, never sent.
    pub(super) fn discard(&self, id: u64, now: i64) -> Result<Delivery, OutboxError> {
        let not_dead = |state| OutboxError::NotDiscardable { id, state };
        self.change_dead(id, not_dead, |_, d| {
            d.state = DeliveryState::Discarded;
            d.finished_at_ms = Some(now);
            Ok(())
        })
    }

    /// Changes dead record `id` with `change` in one transaction, and returns it: `NotFound`
    /// when there is none, `not_dead(its state)` when it is not dead, and `change`'s error
    /// (nothing written) when it refuses.
    fn change_dead(
        &self,
        id: u64,
        not_dead: impl FnOnce(&'static str) -> OutboxError,
        change: impl FnOnce(&Table<'_, u64, &'static [u8]>, &mut Delivery) -> Result<(), OutboxError>,
    ) -> Result<Delivery, OutboxError> {
        let txn = self.db.begin_write().map_err(self.db())?;
        let d = {
            let mut table = txn.open_table(DELIVERIES).map_err(self.db())?;
            let mut d = match table.get(id).map_err(self.db())? {
                Some(v) => self.decode(id, v.value())?,
                None => return Err(OutboxError::NotFound(id)),
            };
            if d.state != DeliveryState::Dead {
                return Err(not_dead(d.state.as_str()));
            }
            change(&table, &mut d)?;
            table.insert(id, encode(&d).as_slice()).map_err(self.db())?;
            d
        };
        txn.commit().map_err(self.db())?;
        Ok(d)
    }

    /// The first action of `d`'s group written after it that was delivered, is pending or
    /// is dead, with its state: sending `d` again would undo it (or be undone by it).
    fn newer_of_group(
        &self,
        table: &impl ReadableTable<u64, &'static [u8]>,
        d: &Delivery,
    ) -> Result<Option<(u64, DeliveryState)>, OutboxError> {
        let Some(group) = d.group.as_deref() else {
            return Ok(None);
        };
        for item in table.range(d.id + 1..).map_err(self.db())? {
            let (k, v) = item.map_err(self.db())?;
            let (id, bytes) = (k.value(), v.value());
            let g: Grouped<'_> =
                serde_json::from_slice(bytes).map_err(|e| self.unreadable(id, &e))?;
            let counts = matches!(
                g.state,
                DeliveryState::Delivered | DeliveryState::Pending | DeliveryState::Dead
            );
            if counts && g.group.as_deref() == Some(group) {
                return Ok(Some((id, g.state)));
            }
        }
        Ok(None)
    }

    /// A small write (the time, `now` ms), to learn whether writes succeed again.
    pub(super) fn probe(&self, now: i64) -> Result<(), OutboxError> {
        let txn = self.db.begin_write().map_err(self.db())?;
        {
            let mut meta = txn.open_table(META).map_err(self.db())?;
            meta.insert(PROBE, u64::try_from(now).unwrap_or(0))
                .map_err(self.db())?;
        }
        txn.commit().map_err(self.db())
    }

    /// Overwrites `records` in one transaction; a delivered scale action becomes its
    /// target's count last delivered, unless a newer one was delivered already.
    pub(super) fn write(&self, records: &[Delivery]) -> Result<(), OutboxError> {
        let txn = self.db.begin_write().map_err(self.db())?;
        {
            let mut table = txn.open_table(DELIVERIES).map_err(self.db())?;
            for d in records {
                table
                    .insert(d.id, encode(d).as_slice())
                    .map_err(self.db())?;
            }
            self.mark_delivered(&txn, records)?;
        }
        txn.commit().map_err(self.db())
    }

    /// Records each delivered scale action in `records` as its target's count last
    /// delivered, if it is newer (a higher id) than the one recorded: a late delivery of an
    /// older action (a dead letter retried) never replaces a newer count.
    fn mark_delivered(
        &self,
        txn: &WriteTransaction,
        records: &[Delivery],
    ) -> Result<(), OutboxError> {
        let delivered: Vec<(&str, ScaleMark)> = records
            .iter()
            .filter(|d| d.state == DeliveryState::Delivered)
            .filter_map(|d| Some((d.target.as_str(), scale_mark(d)?)))
            .collect();
        if delivered.is_empty() {
            return Ok(());
        }
        let mut control = txn.open_table(CONTROL).map_err(self.db())?;
        for (target, mark) in delivered {
            self.update_control(&mut control, target, |c| {
                if c.delivered.is_none_or(|old| old.id < mark.id) {
                    c.delivered = Some(mark);
                }
            })?;
        }
        Ok(())
    }

    /// Reads `target`'s control record in `table`, changes it with `f` and writes it back.
    fn update_control(
        &self,
        table: &mut Table<'_, &str, &[u8]>,
        target: &str,
        f: impl FnOnce(&mut Control),
    ) -> Result<(), OutboxError> {
        let mut c = match table.get(target).map_err(self.db())? {
            Some(v) => self.decode_control(target, v.value())?,
            None => Control::default(),
        };
        f(&mut c);
        table
            .insert(target, encode_control(&c).as_slice())
            .map_err(self.db())?;
        Ok(())
    }

    fn decode_control(&self, target: &str, bytes: &[u8]) -> Result<Control, OutboxError> {
        serde_json::from_slice(bytes).map_err(|e| {
            self.error(format!(
                "the control record of target `{target}` is not readable: {e}"
            ))
        })
    }

    /// `target`'s control state, if anything was ever recorded for it.
    pub(super) fn control(&self, target: &str) -> Result<Option<Control>, OutboxError> {
        let txn = self.db.begin_read().map_err(self.db())?;
        let table = txn.open_table(CONTROL).map_err(self.db())?;
        let found = table.get(target).map_err(self.db())?;
        found
            .map(|v| self.decode_control(target, v.value()))
            .transpose()
    }

    /// Every target's control state, by name.
    pub(super) fn controls(&self) -> Result<BTreeMap<String, Control>, OutboxError> {
        let txn = self.db.begin_read().map_err(self.db())?;
        let table = txn.open_table(CONTROL).map_err(self.db())?;
        let mut out = BTreeMap::new();
        for item in table.iter().map_err(self.db())? {
            let (k, v) = item.map_err(self.db())?;
            let target = k.value();
            out.insert(target.to_owned(), self.decode_control(target, v.value())?);
        }
        Ok(out)
    }

    /// Sets whether `target` is paused, committed when this returns.
    pub(super) fn set_paused(&self, target: &str, paused: bool) -> Result<(), OutboxError> {
        let txn = self.db.begin_write().map_err(self.db())?;
        {
            let mut control = txn.open_table(CONTROL).map_err(self.db())?;
            self.update_control(&mut control, target, |c| c.paused = paused)?;
        }
        txn.commit().map_err(self.db())
    }

    /// The pending records, oldest first, and how many are dead.
    pub(super) fn at_start(&self) -> Result<(Vec<Delivery>, i64), OutboxError> {
        let txn = self.db.begin_read().map_err(self.db())?;
        let table = txn.open_table(DELIVERIES).map_err(self.db())?;
        let (mut pending, mut dead) = (Vec::new(), 0);
        for item in table.iter().map_err(self.db())? {
            let (k, v) = item.map_err(self.db())?;
            let (id, bytes) = (k.value(), v.value());
            let head: Head<'_> =
                serde_json::from_slice(bytes).map_err(|e| self.unreadable(id, &e))?;
            match head.state {
                DeliveryState::Pending => pending.push(self.decode(id, bytes)?),
                DeliveryState::Dead => dead += 1,
                DeliveryState::Delivered | DeliveryState::Superseded | DeliveryState::Discarded => {
                }
            }
        }
        Ok((pending, dead))
    }

    /// Deletes delivered, superseded and discarded records finished before `cutoff` (ms),
    /// with their idempotency keys; returns how many.
    pub(super) fn prune(&self, cutoff: i64) -> Result<usize, OutboxError> {
        let mut old = Vec::new();
        {
            let txn = self.db.begin_read().map_err(self.db())?;
            let table = txn.open_table(DELIVERIES).map_err(self.db())?;
            for item in table.iter().map_err(self.db())? {
                let (k, v) = item.map_err(self.db())?;
                let (id, bytes) = (k.value(), v.value());
                let f: Finished<'_> =
                    serde_json::from_slice(bytes).map_err(|e| self.unreadable(id, &e))?;
                let done = matches!(
                    f.state,
                    DeliveryState::Delivered | DeliveryState::Superseded | DeliveryState::Discarded
                );
                if done && f.finished_at_ms.is_some_and(|at| at < cutoff) {
                    old.push((id, f.idempotency_key.into_owned()));
                }
            }
        }
        if old.is_empty() {
            return Ok(0);
        }
        let txn = self.db.begin_write().map_err(self.db())?;
        {
            let mut table = txn.open_table(DELIVERIES).map_err(self.db())?;
            let mut keys = txn.open_table(KEYS).map_err(self.db())?;
            for (id, key) in &old {
                table.remove(id).map_err(self.db())?;
                keys.remove(key.as_str()).map_err(self.db())?;
            }
        }
        txn.commit().map_err(self.db())?;
        Ok(old.len())
    }
}

/// A redb error, boxed (redb's own error type is large).
struct DbError(Box<redb::Error>);

impl<E: Into<redb::Error>> From<E> for DbError {
    fn from(e: E) -> Self {
        Self(Box::new(e.into()))
    }
}

/// Creates the tables; a file written before the `control` table existed gets it, filled
/// from its deliveries (see [`migrate_control`]).
fn init(db: &Database) -> Result<(), DbError> {
    let txn = db.begin_write()?;
    let had_control = txn.list_tables()?.any(|t| t.name() == CONTROL.name());
    txn.open_table(DELIVERIES)?;
    txn.open_table(META)?;
    txn.open_table(KEYS)?;
    txn.open_table(CONTROL)?;
    if !had_control {
        migrate_control(&txn)?;
    }
    txn.commit()?;
    Ok(())
}

/// Fills the `control` table of a file written by an older version from the deliveries
/// it still holds: per target, the newest scale action delivered or pending is the count
/// last asked for, and the newest delivered one the count last delivered. (Older versions
/// found the count this way at every start; what retention pruned is lost to both.)
/// Records that cannot be read are left for the start to report.
fn migrate_control(txn: &WriteTransaction) -> Result<(), DbError> {
    let mut found: BTreeMap<String, Control> = BTreeMap::new();
    {
        let table = txn.open_table(DELIVERIES)?;
        for item in table.iter()?.rev() {
            let (_, v) = item?;
            let Ok(d) = serde_json::from_slice::<Delivery>(v.value()) else {
                continue;
            };
            let Some(mark) = scale_mark(&d) else {
                continue;
            };
            let c = found.entry(d.target.clone()).or_default();
            let live = matches!(d.state, DeliveryState::Delivered | DeliveryState::Pending);
            if live && c.asked.is_none() {
                c.asked = Some(mark);
            }
            if d.state == DeliveryState::Delivered && c.delivered.is_none() {
                c.delivered = Some(mark);
            }
        }
    }
    let mut control = txn.open_table(CONTROL)?;
    for (target, c) in &found {
        control.insert(target.as_str(), encode_control(c).as_slice())?;
    }
    if !found.is_empty() {
        info!(
            targets = found.len(),
            "control state taken from the deliveries of an older outbox file"
        );
    }
    Ok(())
}

/// The count and decision time of a scale action, read from its body.
pub(super) fn scale_mark(d: &Delivery) -> Option<ScaleMark> {
    if d.kind != ActionKind::Scale {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&d.body).ok()?;
    Some(ScaleMark {
        id: d.id,
        replicas: u32::try_from(v.get("to")?.as_u64()?).ok()?,
        at: v.get("issued_at")?.as_i64()?,
    })
}

thread_local! {
    /// Set while [`quietly`] runs on this thread: its panics are not printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into its message, without printing it: redb asserts on some
/// damaged files, and a damaged file is an error to report, not a crash. The panic hook is
/// wrapped once, and stays silent only on this thread while `f` runs.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static WRAP_HOOK: Once = Once::new();
    WRAP_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "redb panicked".to_owned())
    })
}

fn encode(d: &Delivery) -> Vec<u8> {
    // Strings, numbers and enums only: serialising cannot fail.
    serde_json::to_vec(d).unwrap_or_default()
}

fn encode_control(c: &Control) -> Vec<u8> {
    // Numbers and a flag only: serialising cannot fail.
    serde_json::to_vec(c).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::DeliveryOutcome;
    use super::*;
    use crate::act::ActionKind;

    /// A record as the first version wrote it (string kind and outcome) reads as the same
    /// enums, and is written back with the same names.
    #[test]
    fn records_of_the_first_version_read_and_write_the_same() {
        let old = r#"{"id":7,"target":"web","kind":"scale","group":"web/scale",
            "idempotency_key":"0123","body":"{}","state":"dead","outcome":"gave_up",
            "created_at_ms":1000,"age_from_ms":1000,"attempts":6,"next_attempt_ms":2000,
            "last_error":"HTTP 503","last_status":503,"response_body":null,
            "finished_at_ms":3000,"superseded_by":null}"#;
        let d: Delivery = serde_json::from_str(old).expect("an old record reads");
        assert_eq!(
            (d.kind, d.state, d.outcome),
            (
                ActionKind::Scale,
                DeliveryState::Dead,
                Some(DeliveryOutcome::GaveUp)
            )
        );
        let again: serde_json::Value = serde_json::from_slice(&encode(&d)).unwrap();
        let old: serde_json::Value = serde_json::from_str(old).unwrap();
        assert_eq!(again, old);
    }

    /// A dead letter can be retried unless an action of its group written after it was
    /// delivered, is pending or is dead; superseded and discarded ones, and other groups,
    /// do not count.
    #[test]
    fn a_retry_is_refused_by_a_newer_action_of_its_group() {
        use DeliveryState::{Dead, Delivered, Discarded, Pending, Superseded};
        let scale = |target: &str, at: i64| {
            Action::Scale(crate::act::ScaleAction {
                target: target.into(),
                from: 1,
                to: 2,
                reasons: Vec::new(),
                peak: None,
                model: None,
                issued_at: at,
            })
        };
        // The states of the actions of `a` written after the dead one (id 1), then a
        // pending one of `b`: who refuses the retry.
        let check = |newer: &[DeliveryState], refused_by: Option<u64>| {
            let dir = tempfile::tempdir().unwrap();
            let s = Storage::open(dir.path()).unwrap();
            let mut actions: Vec<Action> =
                (0..=newer.len() as i64).map(|i| scale("a", i)).collect();
            actions.push(scale("b", 99));
            let mut written = s.insert(&actions, None, 0).unwrap();
            written[0].state = Dead;
            for (d, state) in written[1..].iter_mut().zip(newer) {
                d.state = *state;
            }
            s.write(&written).unwrap();
            match (s.retry(1, 5), refused_by) {
                (Ok(d), None) => assert_eq!(d.state, Pending, "{newer:?}"),
                (Err(OutboxError::Superseded { id: 1, by, state }), Some(want)) => {
                    assert_eq!(
                        (by, Some(state)),
                        (want, newer.get(want as usize - 2).copied())
                    );
                }
                (other, _) => panic!("{newer:?}: {other:?}"),
            }
        };
        check(&[], None);
        check(&[Superseded], None);
        check(&[Discarded], None);
        check(&[Delivered], Some(2));
        check(&[Pending], Some(2));
        check(&[Dead], Some(2));
        check(&[Superseded, Discarded, Delivered], Some(4));
    }

    /// A page skips without decoding, tells whether more follow, and never overflows.
    #[test]
    fn pages_skip_filter_and_say_whether_more_follow() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let actions: Vec<Action> = (0..10)
            .map(|i| {
                Action::Rebalance(crate::act::RebalanceAction {
                    target: if i % 2 == 0 { "a" } else { "b" }.into(),
                    weights: [("x".to_owned(), 1)].into(),
                    issued_at: i,
                })
            })
            .collect();
        s.insert(&actions, None, 5).unwrap();
        let ids = |f: &Filter, offset, limit| {
            let (page, more) = s.page(f, offset, limit).unwrap();
            (page.iter().map(|d| d.id).collect::<Vec<_>>(), more)
        };
        let all = Filter::default();
        assert_eq!(ids(&all, 0, 3), (vec![10, 9, 8], true));
        assert_eq!(ids(&all, 8, 3), (vec![2, 1], false));
        assert_eq!(ids(&all, 7, 3), (vec![3, 2, 1], false));
        assert_eq!(ids(&all, usize::MAX, usize::MAX), (vec![], false));
        assert_eq!(ids(&all, 0, 0), (vec![], true));
        let b = Filter {
            target: Some("b".into()),
            ..Filter::default()
        };
        assert_eq!(ids(&b, 1, 2), (vec![8, 6], true));
        assert_eq!(ids(&b, 3, usize::MAX), (vec![4, 2], false));
        let dead = Filter {
            state: Some(DeliveryState::Dead),
            ..Filter::default()
        };
        assert_eq!(ids(&dead, 0, 10), (vec![], false));
    }

    fn scale(target: &str, to: u32, at: i64) -> Action {
        Action::Scale(crate::act::ScaleAction {
            target: target.into(),
            from: 1,
            to,
            reasons: Vec::new(),
            peak: None,
            model: None,
            issued_at: at,
        })
    }

    fn mark(id: u64, replicas: u32, at: i64) -> Option<ScaleMark> {
        Some(ScaleMark { id, replicas, at })
    }

    /// The count asked for is written with its scale action, in the same transaction;
    /// other kinds and other targets leave it alone.
    #[test]
    fn the_count_asked_for_is_written_with_the_action() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        assert_eq!(s.control("web").unwrap(), None);
        s.insert(&[scale("web", 5, 100), scale("api", 3, 100)], None, 0)
            .unwrap();
        let rebalance = Action::Rebalance(crate::act::RebalanceAction {
            target: "web".into(),
            weights: [("x".to_owned(), 1)].into(),
            issued_at: 110,
        });
        s.insert(&[scale("web", 8, 120), rebalance], None, 0)
            .unwrap();
        let web = s.control("web").unwrap().unwrap();
        assert_eq!(
            (web.asked, web.delivered, web.paused),
            (mark(3, 8, 120), None, false)
        );
        assert_eq!(s.control("api").unwrap().unwrap().asked, mark(2, 3, 100));
        // An identical action (same key) is not written again, nor counted as asked.
        s.insert(&[scale("web", 5, 100)], None, 0).unwrap();
        assert_eq!(s.control("web").unwrap().unwrap().asked, mark(3, 8, 120));
    }

    /// A delivered scale action is the count last delivered only if newer than the one
    /// recorded; failed and superseded outcomes change nothing; both survive pruning.
    #[test]
    fn the_count_delivered_is_only_replaced_by_a_newer_one_and_survives_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let written = s
            .insert(&[scale("web", 5, 100), scale("web", 9, 160)], None, 0)
            .unwrap();
        let finish = |d: &Delivery, state: DeliveryState| {
            let mut d = d.clone();
            d.state = state;
            d.finished_at_ms = Some(1_000);
            d
        };
        s.write(&[finish(&written[1], DeliveryState::Delivered)])
            .unwrap();
        assert_eq!(
            s.control("web").unwrap().unwrap().delivered,
            mark(2, 9, 160)
        );
        // The older one delivered late (a dead letter retried): still 9.
        s.write(&[finish(&written[0], DeliveryState::Delivered)])
            .unwrap();
        assert_eq!(
            s.control("web").unwrap().unwrap().delivered,
            mark(2, 9, 160)
        );
        let later = s.insert(&[scale("web", 4, 200)], None, 0).unwrap();
        s.write(&[finish(&later[0], DeliveryState::Dead)]).unwrap();
        let c = s.control("web").unwrap().unwrap();
        assert_eq!((c.asked, c.delivered), (mark(3, 4, 200), mark(2, 9, 160)));
        assert_eq!(
            s.prune(i64::MAX).unwrap(),
            2,
            "both delivered records pruned"
        );
        assert!(matches!(s.get(2), Err(OutboxError::NotFound(2))));
        assert_eq!(
            s.control("web").unwrap().unwrap(),
            c,
            "the control state stays"
        );
    }

    /// The pause flag is committed, read back, kept beside the counts, and survives
    /// reopening the file.
    #[test]
    fn the_pause_is_kept_across_opening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open(dir.path()).unwrap();
            s.insert(&[scale("web", 5, 100)], None, 0).unwrap();
            s.set_paused("web", true).unwrap();
            s.set_paused("api", true).unwrap();
            s.set_paused("api", false).unwrap();
        }
        let s = Storage::open(dir.path()).unwrap();
        let all = s.controls().unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["api", "web"]);
        assert!(all["web"].paused && !all["api"].paused);
        assert_eq!(all["web"].asked, mark(1, 5, 100), "the count is kept");
    }

    /// A file written before the `control` table existed opens, and its control state is
    /// taken from its deliveries: the newest delivered or pending scale action is the
    /// count asked for (a dead one is not), the newest delivered one the count delivered.
    #[test]
    fn a_file_without_the_control_table_opens_with_the_counts_of_its_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(DELIVERIES).unwrap();
                let states = [
                    (1, "web", 5, DeliveryState::Delivered),
                    (2, "web", 9, DeliveryState::Pending),
                    (3, "web", 2, DeliveryState::Dead),
                    (4, "api", 7, DeliveryState::Delivered),
                ];
                for (id, target, to, state) in states {
                    let a = scale(target, to, 100 + id as i64);
                    let mut d = Delivery::pending(id, (&a, None), format!("k{id}"), 0);
                    d.state = state;
                    t.insert(id, encode(&d).as_slice()).unwrap();
                }
                txn.open_table(META).unwrap().insert(NEXT_ID, 5).unwrap();
                txn.open_table(KEYS).unwrap();
            }
            txn.commit().unwrap();
        }
        let s = Storage::open(dir.path()).unwrap();
        let web = s.control("web").unwrap().unwrap();
        assert_eq!(
            (web.asked, web.delivered),
            (mark(2, 9, 102), mark(1, 5, 101))
        );
        assert_eq!(s.control("api").unwrap().unwrap().asked, mark(4, 7, 104));
        assert_eq!(
            s.at_start().unwrap().0.len(),
            1,
            "its deliveries read as before"
        );
    }
}
