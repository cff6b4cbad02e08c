//! The models directory: each target's fitted [`Forecaster`] (selected model, its state,
//! calibration and scores) in `<dir>/<target>.json`, so that a restart forecasts at once
//! without refitting.
//!
//! The format is versioned ([`FORMAT_VERSION`]); a file of another version, or one that does
//! not parse, is reported as an error for the caller to log and skip (the target is then
//! refitted and the file overwritten), never a crash. Files are written atomically: to a
//! temporary file in the same directory, synced, then renamed over the old one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

#[derive(Serialize, Deserialize)]
struct Saved {
    format_version: u32,
    target: String,
    /// When it was written (Unix s).
    saved_at: i64,
    forecaster: Forecaster,
}

/// A directory of model files.
#[derive(Debug, Clone)]
pub struct ModelsDir {
    dir: PathBuf,
}

impl ModelsDir {
    /// Model files in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
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
        let corrupt = |e: serde_json::Error| ModelsError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(corrupt)?;
        let found = value
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if found != u64::from(FORMAT_VERSION) {
            return Err(ModelsError::Version { path, found });
        }
        let saved: Saved = serde_json::from_value(value).map_err(corrupt)?;
        Ok(Some(saved.forecaster))
    }

    /// The file's content for `target`'s forecaster, saved at `now`.
    pub fn encode(target: &str, forecaster: &Forecaster, now: i64) -> Result<Vec<u8>, ModelsError> {
        let saved = Saved {
            format_version: FORMAT_VERSION,
            target: target.to_owned(),
            saved_at: now,
            forecaster: forecaster.clone(),
        };
        serde_json::to_vec(&saved).map_err(|e| ModelsError::Encode {
            target: target.to_owned(),
            message: e.to_string(),
        })
    }

    /// Writes `bytes` as `target`'s file, atomically.
    pub fn write(&self, target: &str, bytes: &[u8]) -> Result<(), ModelsError> {
        let path = self.path(target);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |error| ModelsError::Io { path, error }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let tmp = self.dir.join(format!(".{target}.json.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Saves `target`'s forecaster at `now`.
    pub fn save(&self, target: &str, forecaster: &Forecaster, now: i64) -> Result<(), ModelsError> {
        self.write(target, &Self::encode(target, forecaster, now)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::{History, Settings};

    fn fitted() -> Forecaster {
        let values: Vec<f64> = (0..3 * 1440)
            .map(|i| 10.0 + (i % 1440) as f64 / 100.0)
            .collect();
        let mut f = Forecaster::new(Settings {
            step: 60,
            level: 0.9,
            horizon: 600,
            refit_every: 3_600,
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
                &ModelsDir::encode("web", &fitted(), 1).unwrap(),
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
}
