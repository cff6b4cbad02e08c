//! The models directory: each target's fitted [`Forecaster`] (selected model, its state,
//! calibration and scores) in `<dir>/<target>.json`, so that a restart forecasts at once
//! without refitting.
//!
//! The format is versioned ([`FORMAT_VERSION`]); a file of another version, or one that does
//! not parse, is reported as an error for the caller to log and skip (the target is then
//! refitted and the file overwritten), never a crash.
//!
//! Saves may overlap (a refit asked through the API right after a scheduled one) and are
//! safe when they do:
//! - **Atomic.** Each write goes to a temporary file of its own in the same directory
//!   (named after the process and a counter, created exclusively), is synced, renamed over
//!   the old file, and the directory is synced: a reader sees the old file or the new one,
//!   whole, also after a crash.
//! - **In order.** [`ModelsDir::encode`] numbers what it encodes; writes through one
//!   [`ModelsDir`] (and its clones) take turns, and one never replaces the file with an
//!   older encoding than the last it wrote for that target: the newer model wins whatever
//!   order the writes run in.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::forecast::Forecaster;

/// The version of the file format written.
pub const FORMAT_VERSION: u32 = 1;

/// Why a model file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// Reading or writing failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file does not parse.
    #[error("{path}: corrupt model file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The forecaster could not be encoded.
    #[error("model of `{target}` cannot be encoded: {message}")]
    Encode {
        /// The target.
        target: String,
        /// The encoder's message.
        message: String,
    },
    /// The file is of another format version.
    #[error("{path}: model file format {found}, expected {FORMAT_VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found (0 when missing).
        found: u64,
    },
}

/// Numbers encodings in the order they are made: a larger one is newer.
static GENERATION: AtomicU64 = AtomicU64::new(1);
/// Makes temporary file names unique within the process.
static TEMPORARY: AtomicU64 = AtomicU64::new(1);

/// The file's content.
#[derive(Serialize, Deserialize)]
struct File {
    format_version: u32,
    target: String,
    /// When it was written (Unix s).
    saved_at: i64,
    forecaster: Forecaster,
}

/// A model file's content, ready to write, numbered in the order of encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    generation: u64,
    bytes: Vec<u8>,
}

impl Encoded {
    /// The content.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The file now holds this encoding.
    Saved,
    /// Left out: a newer encoding of the target was already written.
    Outdated,
}

/// A directory of model files. Clones share the order of writes.
#[derive(Debug, Clone)]
pub struct ModelsDir {
    dir: PathBuf,
    /// Target → the generation of the newest encoding written. Held for the whole of a
    /// write (blocking code, never across an `.await`), so writes take turns.
    newest: Arc<Mutex<HashMap<String, u64>>>,
}

impl ModelsDir {
    /// Model files in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            newest: Arc::default(),
        }
    }

    /// The file of `target`.
    pub fn path(&self, target: &str) -> PathBuf {
        self.dir.join(format!("{target}.json"))
    }

    /// The saved forecaster of `target`; `Ok(None)` when there is no file.
    pub fn load(&self, target: &str) -> Result<Option<Forecaster>, ModelsError> {
        let path = self.path(target);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(ModelsError::Io { path, error }),
        };
        Self::decode(path, &bytes).map(Some)
    }

    /// A forecaster from an encoding read elsewhere (`origin` names where, for errors): a
    /// model file's content, or the copy instances share through etcd.
    pub fn decode(origin: impl Into<PathBuf>, bytes: &[u8]) -> Result<Forecaster, ModelsError> {
        let path = origin.into();
        let corrupt = |e: serde_json::Error| ModelsError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        };
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(corrupt)?;
        let found = value
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if found != u64::from(FORMAT_VERSION) {
            return Err(ModelsError::Version { path, found });
        }
        let file: File = serde_json::from_value(value).map_err(corrupt)?;
        Ok(file.forecaster)
    }

    /// The file's content for `target`'s forecaster, saved at `now`; newer than every
    /// encoding made before.
    pub fn encode(target: &str, forecaster: &Forecaster, now: i64) -> Result<Encoded, ModelsError> {
        let file = File {
            format_version: FORMAT_VERSION,
            target: target.to_owned(),
            saved_at: now,
            forecaster: forecaster.clone(),
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| ModelsError::Encode {
            target: target.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Encoded {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            bytes,
        })
    }

    /// Writes `encoded` as `target`'s file, atomically, unless a newer encoding of
    /// `target` was written already. Blocking: run it off the async threads.
    pub fn write(&self, target: &str, encoded: &Encoded) -> Result<Written, ModelsError> {
        let mut newest = self.newest.lock().unwrap_or_else(PoisonError::into_inner);
        if newest.get(target).is_some_and(|g| *g > encoded.generation) {
            debug!(
                target,
                "a newer model is already saved; this older one is left out"
            );
            return Ok(Written::Outdated);
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |error| ModelsError::Io { path, error }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let tmp = self.dir.join(format!(
            ".{target}.json.{}-{}.tmp",
            std::process::id(),
            TEMPORARY.fetch_add(1, Ordering::Relaxed)
        ));
        let path = self.path(target);
        let written = write_synced(&tmp, &encoded.bytes)
            .map_err(io(&tmp))
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(io(&path)));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        // The rename is durable once the directory is synced.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        newest.insert(target.to_owned(), encoded.generation);
        Ok(Written::Saved)
    }

    /// Saves `target`'s forecaster at `now`.
    pub fn save(
        &self,
        target: &str,
        forecaster: &Forecaster,
        now: i64,
    ) -> Result<Written, ModelsError> {
        self.write(target, &Self::encode(target, forecaster, now)?)
    }
}

/// Writes `bytes` to a new file at `path` (failing if one exists) and syncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::{History, Settings};

    fn fitted() -> Forecaster {
        fitted_from(10.0)
    }

    /// A forecaster fitted to a daily ramp starting at `base`.
    fn fitted_from(base: f64) -> Forecaster {
        let values: Vec<f64> = (0..3 * 1440)
            .map(|i| base + (i % 1440) as f64 / 100.0)
            .collect();
        let mut f = Forecaster::new(Settings {
            step: 60,
            level: 0.9,
            horizon: 600,
            refit_every: 3_600,
            refit_phase: 0,
        });
        let h = History {
            start: 0,
            step: 60,
            values: &values,
        };
        f.update(h, h.end() + 60).unwrap();
        f
    }

    #[test]
    fn round_trips_and_forecasts_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let models = ModelsDir::new(dir.path().join("models"));
        assert!(models.load("web").unwrap().is_none());
        let f = fitted();
        models.save("web", &f, 1).unwrap();
        let back = models.load("web").unwrap().unwrap();
        assert_eq!(back, f);
        let now = 3 * 86_400;
        assert_eq!(
            back.forecast(now, 600).unwrap(),
            f.forecast(now, 600).unwrap()
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("models"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["web.json"]);
    }

    #[test]
    fn corrupt_and_old_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let models = ModelsDir::new(dir.path());
        let mut good = serde_json::to_value(
            serde_json::from_slice::<serde_json::Value>(
                ModelsDir::encode("web", &fitted(), 1).unwrap().as_bytes(),
            )
            .unwrap(),
        )
        .unwrap();
        good["format_version"] = 0.into();
        let cases: &[(&[u8], &str)] = &[
            (b"{not json", "corrupt model file"),
            (
                b"{\"format_version\": 1, \"target\": \"web\"}",
                "corrupt model file",
            ),
            (&serde_json::to_vec(&good).unwrap(), "format 0, expected 1"),
        ];
        for (bytes, want) in cases {
            std::fs::write(models.path("web"), bytes).unwrap();
            let e = models.load("web").unwrap_err().to_string();
            assert!(e.contains("web.json") && e.contains(want), "{e}");
        }
    }

    /// Two threads saving different forecasters of one target at once, over and over,
    /// while a third reads: every read finds a whole file, no write fails, and the newer
    /// encoding is in the file afterwards whichever write ran last.
    #[test]
    fn overlapping_saves_never_corrupt_and_the_newer_wins() {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Barrier};

        let dir = tempfile::tempdir().unwrap();
        let models = ModelsDir::new(dir.path());
        let (a, b) = (fitted_from(10.0), fitted_from(50.0));
        assert_ne!(a, b);
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (models, done) = (models.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    models.load("web").map_err(|e| e.to_string())?;
                    reads += 1;
                }
                Ok::<_, String>(reads)
            })
        };
        for round in 0..100 {
            let (older, newer) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
            let older_bytes = ModelsDir::encode("web", older, round).unwrap();
            let newer_bytes = ModelsDir::encode("web", newer, round).unwrap();
            let start = Arc::new(Barrier::new(2));
            let writers: Vec<_> = [newer_bytes, older_bytes]
                .into_iter()
                .map(|bytes| {
                    let (models, start) = (models.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        models
                            .write("web", &bytes)
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    })
                })
                .collect();
            for w in writers {
                let written = w.join().expect("a writer thread");
                assert_eq!(written, Ok(()), "round {round}");
            }
            let saved = models.load("web");
            let saved = saved.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert!(
                saved.as_ref() == Some(newer),
                "round {round}: the older model replaced the newer one"
            );
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = reader.join().expect("the reader thread");
        assert!(reads.is_ok(), "a read found a broken file: {reads:?}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["web.json"], "no temporary file is left behind");
    }
}
