//! Where decisions go: actions, and the signed webhooks that carry them.
//!
//! An [`Action`] is what the pipeline asks of the outside world: a [`ScaleAction`] for the
//! platform (change the replica count) or a [`RebalanceAction`] for the balancer (change
//! per-instance weights). Its JSON body and its idempotency key are functions of its
//! content alone, so a retry, or a resend after a restart, carries the same body and key
//! and a receiver can drop duplicates.
//!
//! - [`webhook`]: HMAC-signed JSON POSTs with retries, and the signature scheme receivers
//!   verify.

pub mod webhook;

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::decide::{Decision, Peak, Reason};

/// The version of the webhook body; receivers should refuse versions they do not know.
pub const SCHEMA_VERSION: u32 = 1;

/// Ask the platform to run `to` replicas of `target`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleAction {
    /// The target's name.
    pub target: String,
    /// Replicas before.
    pub from: u32,
    /// Replicas asked for.
    pub to: u32,
    /// Why; the first reason set the count.
    pub reasons: Vec<Reason>,
    /// The forecast peak the count plans for, if a forecast was used.
    pub peak: Option<Peak>,
    /// The name of the forecast model.
    pub model: Option<String>,
    /// When the decision was made (Unix s); part of the idempotency key.
    pub issued_at: i64,
}

impl ScaleAction {
    /// The action carrying a decision about `target`, made with forecast model `model`.
    pub fn from_decision(target: &str, d: &Decision, model: Option<&str>) -> Self {
        Self {
            target: target.to_owned(),
            from: d.from,
            to: d.to,
            reasons: d.reasons.clone(),
            peak: d.peak,
            model: model.map(str::to_owned),
            issued_at: d.at,
        }
    }
}

/// Ask the balancer to weight the instances of `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebalanceAction {
    /// The target's name.
    pub target: String,
    /// Instance → weight, 0..=256 (HAProxy's range; 0 drains the instance). Sent as given.
    pub weights: BTreeMap<String, u32>,
    /// When the weights were computed (Unix s); part of the idempotency key.
    pub issued_at: i64,
}

/// Something to send to the outside world.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Change the replica count (goes to the platform webhook).
    Scale(ScaleAction),
    /// Change instance weights (goes to the balancer webhook).
    Rebalance(RebalanceAction),
}

impl Action {
    /// The target's name.
    pub fn target(&self) -> &str {
        match self {
            Self::Scale(a) => &a.target,
            Self::Rebalance(a) => &a.target,
        }
    }

    /// `"scale"` or `"rebalance"`: the `kind` of the body, and a label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Scale(_) => "scale",
            Self::Rebalance(_) => "rebalance",
        }
    }

    /// When it was issued (Unix s).
    pub fn issued_at(&self) -> i64 {
        match self {
            Self::Scale(a) => a.issued_at,
            Self::Rebalance(a) => a.issued_at,
        }
    }

    /// The JSON body.
    ///
    /// Common fields: `schema_version` (1), `kind`, `target`, `issued_at`. A scale action
    /// adds `from`, `to`, `reasons` (`[{code, message}]`) and `forecast`
    /// (`{model, peak_timestamp, peak_value_rps, peak_upper_rps}`, or `null` when no
    /// forecast peak was used); a rebalance action adds `weights` (`{instance: weight}`).
    pub fn payload(&self) -> Value {
        let mut body = json!({
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind(),
            "target": self.target(),
            "issued_at": self.issued_at(),
        });
        let extra = match self {
            Self::Scale(a) => {
                let reasons: Vec<Value> = a
                    .reasons
                    .iter()
                    .map(|r| json!({ "code": r.code, "message": r.message }))
                    .collect();
                let forecast = a.peak.map(|p| {
                    json!({
                        "model": a.model,
                        "peak_timestamp": p.timestamp,
                        "peak_value_rps": p.value,
                        "peak_upper_rps": p.upper,
                    })
                });
                json!({ "from": a.from, "to": a.to, "reasons": reasons, "forecast": forecast })
            }
            Self::Rebalance(a) => json!({ "weights": a.weights }),
        };
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        body
    }

    /// The body as sent: compact JSON, byte-for-byte the same for the same action.
    pub fn body(&self) -> Vec<u8> {
        // `Value`'s Display is compact JSON and cannot fail; object keys are sorted, and
        // non-finite floats became `null` when the payload was built.
        self.payload().to_string().into_bytes()
    }

    /// A key for receivers to drop duplicates: the first 32 hex digits of SHA-256 over the
    /// body (which holds kind, target, `issued_at` and the content). The same action gives
    /// the same key on every attempt and after a restart; a different one, a different key.
    pub fn idempotency_key(&self) -> String {
        let digest = Sha256::digest(self.body());
        let mut key = hex::encode(digest);
        key.truncate(32);
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision() -> Decision {
        Decision {
            at: 1_700_000_000,
            from: 4,
            to: 7,
            reasons: vec![
                Reason {
                    code: "Prediction",
                    message: "upper forecast needs 7".into(),
                },
                Reason {
                    code: "TooFewReplicas",
                    message: "raised".into(),
                },
            ],
            peak: Some(Peak {
                timestamp: 1_700_000_180,
                value: 80.5,
                upper: 101.25,
            }),
        }
    }

    #[test]
    fn scale_payload_shape() {
        let a = Action::Scale(ScaleAction::from_decision(
            "web",
            &decision(),
            Some("profile"),
        ));
        assert_eq!(
            a.payload(),
            json!({
                "schema_version": 1,
                "kind": "scale",
                "target": "web",
                "issued_at": 1_700_000_000,
                "from": 4,
                "to": 7,
                "reasons": [
                    { "code": "Prediction", "message": "upper forecast needs 7" },
                    { "code": "TooFewReplicas", "message": "raised" },
                ],
                "forecast": {
                    "model": "profile",
                    "peak_timestamp": 1_700_000_180,
                    "peak_value_rps": 80.5,
                    "peak_upper_rps": 101.25,
                },
            })
        );
        let body: Value = serde_json::from_slice(&a.body()).expect("body is JSON");
        assert_eq!(body, a.payload());

        let no_peak = Decision {
            peak: None,
            ..decision()
        };
        let a = Action::Scale(ScaleAction::from_decision("web", &no_peak, None));
        assert_eq!(a.payload()["forecast"], Value::Null);
    }

    #[test]
    fn rebalance_payload_shape() {
        let weights = [
            ("10.0.0.1:80".to_owned(), 256),
            ("10.0.0.2:80".to_owned(), 0),
        ]
        .into();
        let a = Action::Rebalance(RebalanceAction {
            target: "web".into(),
            weights,
            issued_at: 42,
        });
        assert_eq!((a.kind(), a.target()), ("rebalance", "web"));
        assert_eq!(
            a.payload(),
            json!({
                "schema_version": 1,
                "kind": "rebalance",
                "target": "web",
                "issued_at": 42,
                "weights": { "10.0.0.1:80": 256, "10.0.0.2:80": 0 },
            })
        );
    }

    #[test]
    fn idempotency_key_follows_content() {
        let a = Action::Scale(ScaleAction::from_decision(
            "web",
            &decision(),
            Some("profile"),
        ));
        let key = a.idempotency_key();
        assert_eq!(key.len(), 32);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
        assert_eq!(key, a.clone().idempotency_key());

        let others = [
            Decision {
                to: 8,
                ..decision()
            },
            Decision {
                at: 1_700_000_030,
                ..decision()
            },
        ];
        for d in &others {
            let b = Action::Scale(ScaleAction::from_decision("web", d, Some("profile")));
            assert_ne!(b.idempotency_key(), key, "{d:?}");
        }
        let b = Action::Scale(ScaleAction::from_decision(
            "api",
            &decision(),
            Some("profile"),
        ));
        assert_ne!(b.idempotency_key(), key);
    }
}
