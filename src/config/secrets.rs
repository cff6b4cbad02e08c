//! Secrets: [`Secret`], a string whose `Debug` output is redacted, and how one is read from
//! an environment variable or a file named by the configuration.

use std::fmt;
use std::path::Path;

use super::{ConfigError, Validator};

/// A secret string whose `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Validator<'_> {
    /// Resolves a secret given as `<key>_env` or `<key>_file`; at most one may be set. A
    /// relative file is read from the configuration file's directory; trailing whitespace
    /// is trimmed and an empty secret is refused.
    pub(super) fn secret(
        &self,
        key: &str,
        env: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Option<Secret>, ConfigError> {
        let value = match (env, file) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    key,
                    format!("both `{key}_env` and `{key}_file` are set; expected one"),
                ));
            }
            (Some(var), None) => std::env::var(var).map_err(|_| {
                self.err(
                    format!("{key}_env"),
                    format!(
                        "environment variable `{var}` is not set; expected it to hold the secret"
                    ),
                )
            })?,
            (None, Some(path)) => {
                let path = self.relative(path);
                std::fs::read_to_string(&path).map_err(|e| {
                    self.err(
                        format!("{key}_file"),
                        format!("cannot read `{}`: {e}", path.display()),
                    )
                })?
            }
            (None, None) => return Ok(None),
        };
        let value = value.trim_end().to_owned();
        if value.is_empty() {
            return Err(self.err(key, "the secret is empty; expected a non-empty value"));
        }
        Ok(Some(Secret(value)))
    }
}
