//! Secrets: [`Secret`], a string whose `Debug` output is redacted, and how one is read from
//! an environment variable or a file named by the configuration; and the key a webhook
//! secret gives the Standard Webhooks signature ([`Secret::standard_webhook_key`]).

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

use base64::Engine as _;

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

    /// The HMAC key of the Standard Webhooks signature (`webhook-signature`) made with this
    /// secret, following the convention of that standard's libraries: a secret written
    /// `whsec_<base64>` is the key its base64 decodes to; any other secret is its UTF-8
    /// bytes (a receiver then gives its library `"whsec_" + base64(secret)`). So a receiver
    /// hands a `whsec_` secret to the library exactly as it is written here.
    ///
    /// The `Prescale-Signature` is made with the secret as written, whatever it is, as it
    /// always was.
    pub fn standard_webhook_key(&self) -> Result<Cow<'_, [u8]>, WhsecError> {
        let Some(encoded) = self.0.strip_prefix(WHSEC_PREFIX) else {
            return Ok(Cow::Borrowed(self.0.as_bytes()));
        };
        // Standard alphabet with its padding: what the Python, JavaScript and other
        // libraries of the standard all decode alike (URL-safe or unpadded text is not).
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| WhsecError::NotBase64(describe(&e)))?;
        if key.is_empty() {
            return Err(WhsecError::Empty);
        }
        Ok(Cow::Owned(key))
    }
}

/// The prefix that marks a secret as a Standard Webhooks secret: base64 after it.
pub const WHSEC_PREFIX: &str = "whsec_";

/// Why a `whsec_` secret gives no key. Never holds any of the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhsecError {
    /// What follows `whsec_` is not standard, padded base64.
    #[error(
        "starts with `whsec_` but what follows is not standard base64 ({0}); expected \
         `whsec_` and the key in base64 with `+`, `/` and `=` padding (e.g. \
         `whsec_$(openssl rand -base64 32)`), or a secret that does not start with `whsec_`"
    )]
    NotBase64(String),
    /// Nothing follows `whsec_`.
    #[error("is `whsec_` alone; expected a key in base64 after it")]
    Empty,
}

/// Where base64 decoding failed, without the offending character (it is part of a secret).
fn describe(e: &base64::DecodeError) -> String {
    match e {
        base64::DecodeError::InvalidByte(at, _) => {
            format!(
                "a character outside the alphabet at position {} after `whsec_`",
                at + 1
            )
        }
        base64::DecodeError::InvalidLength(len) => {
            format!("{len} base64 characters, a length no padded base64 has")
        }
        base64::DecodeError::InvalidLastSymbol(at, _) => {
            format!(
                "the last character, at position {} after `whsec_`, leaves stray bits",
                at + 1
            )
        }
        base64::DecodeError::InvalidPadding => "missing or misplaced `=` padding".to_owned(),
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

    /// Refuses a webhook secret (read from `key`) that starts with `whsec_` but gives no
    /// Standard Webhooks key (see [`Secret::standard_webhook_key`]).
    pub(super) fn standard_webhook_key(
        &self,
        key: &str,
        secret: &Secret,
    ) -> Result<(), ConfigError> {
        match secret.standard_webhook_key() {
            Ok(_) => Ok(()),
            Err(e) => Err(self.err(key, format!("the secret {e}"))),
        }
    }
}
