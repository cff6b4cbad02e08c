//! The Standard Webhooks signature (<https://www.standardwebhooks.com>), sent beside
//! `Prescale-Signature` on every signed webhook so that a receiver can check it with one of
//! that standard's maintained libraries (`standardwebhooks` on PyPI and on npm, and others):
//!
//! - `webhook-id`: the delivery's idempotency key, the same on every attempt (hex, so never
//!   a `.`, which the signed text uses as its separator);
//! - `webhook-timestamp`: when this attempt was sent, Unix seconds;
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, one
//!   per secret, separated by single spaces (the current secret first while rotating).
//!
//! The key of each secret is [`Secret::standard_webhook_key`]: a `whsec_<base64>` secret's
//! decoded bytes, any other secret's UTF-8 bytes.

use base64::Engine as _;
use hmac::Mac;

use super::HmacSha256;
use crate::config::{Secret, WebhookConfig, WhsecError};

/// The header carrying the delivery's id (its idempotency key).
pub const ID_HEADER: &str = "webhook-id";
/// The header carrying the attempt's time, Unix seconds.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// The header carrying the signatures.
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// The `webhook-signature` value for `body` sent as delivery `id` at `timestamp` (Unix s),
/// signed with each of `keys` in order: `v1,<base64>[ v1,<base64>…]`.
pub fn sign(keys: &[&[u8]], id: &str, timestamp: i64, body: &[u8]) -> String {
    let signed = keys.iter().map(|key| {
        // HMAC takes keys of any length; `new_from_slice` fails only for fixed-size-key MACs.
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag)
        )
    });
    signed.collect::<Vec<_>>().join(" ")
}

/// The three headers of an attempt at `hook`: `(name, value)` for the id, the timestamp and
/// the signatures with the current secret and, while rotating, the previous one. Fails only
/// for a `whsec_` secret that is not base64, which validating the configuration refuses.
pub fn headers(
    hook: &WebhookConfig,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<[(&'static str, String); 3], WhsecError> {
    let secrets = std::iter::once(&hook.secret).chain(hook.previous_secret.as_ref());
    let keys = secrets
        .map(Secret::standard_webhook_key)
        .collect::<Result<Vec<_>, _>>()?;
    let keys: Vec<&[u8]> = keys.iter().map(AsRef::as_ref).collect();
    Ok([
        (ID_HEADER, id.to_owned()),
        (TIMESTAMP_HEADER, timestamp.to_string()),
        (SIGNATURE_HEADER, sign(&keys, id, timestamp, body)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signing vector published with the standard's Python library
    /// (`libraries/python/tests/test_webhooks.py`, `test_sign_function`), not one computed
    /// by this code: the `whsec_` secret's base64 is the key.
    #[test]
    fn signs_the_published_vector() {
        let secret = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let key = secret
            .standard_webhook_key()
            .expect("a valid whsec_ secret");
        assert_eq!(
            sign(
                &[&key],
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    /// With a previous secret, one `v1,` per secret, space-separated, the current first,
    /// each what that secret alone signs.
    #[test]
    fn rotation_signs_with_each_secret_in_order() {
        let hook = WebhookConfig {
            url: "http://127.0.0.1:9/h".parse().expect("url"),
            secret: Secret::new("new"),
            previous_secret: Some(Secret::new("whsec_b2xkLWtleQ==")),
        };
        let [(id_name, id), (ts_name, ts), (sig_name, sig)] =
            headers(&hook, "abc123", 1000, b"{}").expect("valid secrets");
        assert_eq!(
            (id_name, id.as_str(), ts_name, ts.as_str(), sig_name),
            (
                "webhook-id",
                "abc123",
                "webhook-timestamp",
                "1000",
                "webhook-signature"
            )
        );
        let new = sign(&[b"new"], "abc123", 1000, b"{}");
        let old = sign(&[b"old-key"], "abc123", 1000, b"{}");
        assert_eq!(sig, format!("{new} {old}"));
        assert_ne!(new, old);
        for one in [&new, &old] {
            assert!(one.starts_with("v1,") && one.len() == 3 + 44, "{one}");
        }
    }

    /// A `whsec_` secret that validation would refuse gives no headers rather than
    /// a signature made with some other key.
    #[test]
    fn a_malformed_whsec_secret_gives_no_headers() {
        let hook = WebhookConfig {
            url: "http://127.0.0.1:9/h".parse().expect("url"),
            secret: Secret::new("whsec_not-base64!"),
            previous_secret: None,
        };
        assert!(matches!(
            headers(&hook, "id", 1, b"{}"),
            Err(WhsecError::NotBase64(_))
        ));
    }
}
