//! The outbox file as the handles use it: the open [`Storage`], closed and opened again
//! after an I/O error, and whether writes fail.
//!
//! redb refuses every operation after one that failed on the file ("Previous I/O error
//! occurred"), also once the cause (a full disk, say) is gone: the file must be closed and
//! opened again. So after such an error the next operation first reopens it (which replays
//! redb's recovery); while that fails, operations fail with its reason, and the next one
//! tries again.
//!
//! A failed write starts a *fault*: it is logged at ERROR once, counted in
//! `prescale_outbox_write_errors_total`, shown by `prescale_outbox_healthy` 0, and
//! [`File::fault`] names the file and the error (for `/readyz` and the targets). The next
//! write that succeeds ends it.

use std::path::Path;
use std::sync::{Mutex, OnceLock, RwLock, RwLockReadGuard};

use tracing::{debug, error, info};

use super::storage::Storage;
use super::{OutboxError, OutboxMetrics};

/// Whether an operation writes: only a write that succeeds ends a fault (reads succeed on a
/// full disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// Reads only.
    Read,
    /// Writes (or may).
    Write,
}

/// The outbox file, reopened after an I/O error; see the module documentation.
pub(super) struct File {
    path: std::path::PathBuf,
    /// The open file; `None` after it was closed for a reopen that failed.
    open: RwLock<Option<Storage>>,
    /// Why writes fail, from a failed write until one succeeds.
    fault: Mutex<Option<String>>,
    /// Where faults are counted, once the worker is made.
    metrics: OnceLock<OutboxMetrics>,
}

impl File {
    /// The file `storage` has open.
    pub(super) fn new(storage: Storage) -> Self {
        Self {
            path: storage.path().to_owned(),
            open: RwLock::new(Some(storage)),
            fault: Mutex::new(None),
            metrics: OnceLock::new(),
        }
    }

    /// The file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// An error of this file.
    pub(super) fn error(&self, error: impl std::fmt::Display) -> OutboxError {
        OutboxError::storage(&self.path, error)
    }

    /// Why writes fail (the file and the error), from a failed write until one succeeds.
    pub(super) fn fault(&self) -> Option<String> {
        self.fault.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts faults into `metrics` from now on (the first call wins).
    pub(super) fn count_into(&self, metrics: &OutboxMetrics) {
        let _ = self.metrics.set(metrics.clone());
        metrics.healthy.set(i64::from(self.fault().is_none()));
    }

    /// Runs `f` on the open file, reopening it first after an I/O error, and keeps the
    /// fault up to date. Blocking.
    pub(super) fn run<T>(
        &self,
        access: Access,
        f: impl FnOnce(&Storage) -> Result<T, OutboxError>,
    ) -> Result<T, OutboxError> {
        let (result, on_file) = self.attempt(f);
        match (&result, access) {
            (Err(e), Access::Write) if on_file => self.failed(e),
            (Ok(_), Access::Write) => self.succeeded(),
            _ => {}
        }
        result
    }

    /// `f`'s result, and whether it failed on the file itself (I/O, or the reopen).
    fn attempt<T>(
        &self,
        f: impl FnOnce(&Storage) -> Result<T, OutboxError>,
    ) -> (Result<T, OutboxError>, bool) {
        let open = match self.current() {
            Ok(open) => open,
            Err(e) => return (Err(e), true),
        };
        match open.as_ref() {
            Some(storage) => {
                let result = f(storage);
                let on_file = result.is_err() && storage.io_failed();
                (result, on_file)
            }
            // Another thread's reopen failed just now.
            None => (
                Err(self.error("the file is closed after an I/O error")),
                true,
            ),
        }
    }

    /// The open file, reopened first if an I/O error spoiled it.
    fn current(&self) -> Result<RwLockReadGuard<'_, Option<Storage>>, OutboxError> {
        let read = || self.open.read().unwrap_or_else(|e| e.into_inner());
        {
            let open = read();
            if open.as_ref().is_some_and(|s| !s.io_failed()) {
                return Ok(open);
            }
        }
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        if open.as_ref().is_none_or(Storage::io_failed) {
            // Closed first: the file is locked while open.
            *open = None;
            *open = Some(Storage::reopen(&self.path)?);
            // Every operation while the fault lasts: the fault itself is logged once.
            debug!(path = %self.path.display(), "outbox reopened after an I/O error");
        }
        drop(open);
        Ok(read())
    }

    fn failed(&self, e: &OutboxError) {
        let mut fault = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        let first = fault.is_none();
        *fault = Some(e.to_string());
        drop(fault);
        if let Some(m) = self.metrics.get() {
            m.write_errors.inc();
            m.healthy.set(0);
        }
        if first {
            error!(path = %self.path.display(), error = %e,
                "cannot write to the outbox: nothing is sent as written until it can be; \
                 the targets whose actions are not written are degraded and ask again");
        } else {
            debug!(path = %self.path.display(), error = %e, "outbox write failed again");
        }
    }

    fn succeeded(&self) {
        let mut fault = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        if fault.take().is_some() {
            drop(fault);
            if let Some(m) = self.metrics.get() {
                m.healthy.set(1);
            }
            info!(path = %self.path.display(), "the outbox can be written again (reopened after the I/O error)");
        }
    }
}
