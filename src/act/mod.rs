//! Where decisions go: actions, and the signed webhooks that carry them.
//!
//! An [`Action`] is what the pipeline asks of the outside world: a [`ScaleAction`] for the
//! platform (change the replica count) or a [`RebalanceAction`] for the balancer (change
//! per-instance weights). Its JSON body and its idempotency key are functions of its
//! content alone, so a retry, or a resend after a restart, carries the same body and key
//! and a receiver can drop duplicates.
//!
//! An [`Action::Alert`] tells Alertmanager of a predicted bottleneck that scaling cannot
//! prevent.
//!
//! - [`outbox`]: every action is written to a durable outbox before it is sent; a worker
//!   delivers it, in order per target and receiver, with retries, superseding and dead
//!   letters.
//! - [`webhook`]: HMAC-signed JSON POSTs, and the signature scheme receivers verify.
//! - [`haproxy`]: balancer weights through HAProxy's runtime API.
//! - [`kubernetes`]: replicas, or an HPA's floor, through the Kubernetes API.
//! - [`alert`]: predicted bottlenecks and their Alertmanager body.
//! - [`Receivers`]: where each kind of action of each target goes, and one attempt at it.

pub mod alert;
pub mod haproxy;
pub mod kubernetes;
pub mod outbox;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::{AlertmanagerConfig, Config, HaproxyConfig, WebhookConfig};
use crate::decide::{Decision, Peak, Reason, ReasonCode};
pub use alert::AlertAction;
pub use outbox::DeliveryRecord;

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

/// What an action asks for, and so where it goes: `scale` (the platform), `rebalance` (the
/// balancer) or `alert` (Alertmanager). These names are the `kind` of a body, of a delivery
/// in the API, and of the metrics' `kind` label.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Change the replica count.
    Scale,
    /// Change instance weights.
    Rebalance,
    /// A predicted bottleneck, firing or resolved.
    Alert,
}

impl ActionKind {
    /// Every kind.
    pub const ALL: [Self; 3] = [Self::Scale, Self::Rebalance, Self::Alert];

    /// The name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scale => "scale",
            Self::Rebalance => "rebalance",
            Self::Alert => "alert",
        }
    }

    /// The kind of this name, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for ActionKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Something to send to the outside world.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Change the replica count (goes to the platform webhook).
    Scale(ScaleAction),
    /// Change instance weights (goes to the balancer: a webhook or HAProxy).
    Rebalance(RebalanceAction),
    /// A predicted bottleneck, firing or resolved (goes to Alertmanager).
    Alert(AlertAction),
}

impl Action {
    /// The target's name.
    pub fn target(&self) -> &str {
        match self {
            Self::Scale(a) => &a.target,
            Self::Rebalance(a) => &a.target,
            Self::Alert(a) => &a.bottleneck.target,
        }
    }

    /// Its kind: the `kind` of the body, and a label for logs and metrics.
    pub fn kind(&self) -> ActionKind {
        match self {
            Self::Scale(_) => ActionKind::Scale,
            Self::Rebalance(_) => ActionKind::Rebalance,
            Self::Alert(_) => ActionKind::Alert,
        }
    }

    /// The group within which a newer undelivered action supersedes an older one: scale
    /// actions of a target (only the newest count matters), and one alert of a target and
    /// signal (only its newest state matters). `None` for rebalance actions, which are all
    /// delivered in order.
    pub fn supersede_group(&self) -> Option<String> {
        match self {
            Self::Scale(a) => Some(format!("{}/scale", a.target)),
            Self::Rebalance(_) => None,
            Self::Alert(a) => Some(format!(
                "{}/alert/{}",
                a.bottleneck.target, a.bottleneck.signal
            )),
        }
    }

    /// Whether it is sent while its target is paused: the release of a platform's floor
    /// (a scale action whose first reason is `Released`), which is how prescale stops
    /// acting on the target. Every other scale and rebalance action waits for the resume.
    pub fn passes_pause(&self) -> bool {
        matches!(self, Self::Scale(a) if a.reasons.first().is_some_and(|r| r.code == ReasonCode::Released))
    }

    /// When it was issued (Unix s).
    pub fn issued_at(&self) -> i64 {
        match self {
            Self::Scale(a) => a.issued_at,
            Self::Rebalance(a) => a.issued_at,
            Self::Alert(a) => a.issued_at,
        }
    }

    /// The JSON body.
    ///
    /// Common fields: `schema_version` (1), `kind`, `target`, `issued_at`. A scale action
    /// adds `from`, `to`, `reasons` (`[{code, message}]`) and `forecast`
    /// (`{model, peak_timestamp, peak_value_rps, peak_upper_rps}`, or `null` when no
    /// forecast peak was used); a rebalance action adds `weights` (`{instance: weight}`).
    /// An alert's body is Alertmanager's instead ([`AlertAction::payload`]).
    pub fn payload(&self) -> Value {
        if let Self::Alert(a) = self {
            return a.payload();
        }
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
            Self::Alert(_) => Value::Null,
        };
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        body
    }

    /// The body as sent: compact JSON, byte-for-byte the same for the same action.
    pub fn body(&self) -> Vec<u8> {
        self.body_at(None)
    }

    /// The body of an action decided by the owner of its target at `epoch` (instances
    /// sharing targets through etcd): a webhook body gains `epoch`; an alert's
    /// (Alertmanager's) is unchanged.
    pub fn body_at(&self, epoch: Option<u64>) -> Vec<u8> {
        let mut body = self.payload();
        if let (Some(epoch), Value::Object(fields)) = (epoch, &mut body) {
            fields.insert("epoch".to_owned(), json!(epoch));
        }
        // `Value`'s Display is compact JSON and cannot fail; object keys are sorted, and
        // non-finite floats became `null` when the payload was built.
        body.to_string().into_bytes()
    }

    /// A key for receivers to drop duplicates: the first 32 hex digits of SHA-256 over the
    /// body (which holds kind, target, `issued_at` and the content). The same action gives
    /// the same key on every attempt and after a restart; a different one, a different key.
    pub fn idempotency_key(&self) -> String {
        self.idempotency_key_at(None)
    }

    /// [`Action::idempotency_key`] of [`Action::body_at`].
    pub fn idempotency_key_at(&self, epoch: Option<u64>) -> String {
        let digest = Sha256::digest(self.body_at(epoch));
        let mut key = hex::encode(digest);
        key.truncate(32);
        key
    }
}

/// How one attempt to deliver an action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Delivered; the receiver's status, when it has one (HTTP).
    Success(Option<u16>),
    /// Worth another try: a connection error, a timeout, a 5xx, 408 or 429.
    Retry {
        /// What went wrong.
        error: String,
        /// The HTTP status, if any.
        status: Option<u16>,
        /// The receiver's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// Refused for good (a 4xx, a 3xx, a backend or server that does not exist): retrying
    /// would not help.
    Final {
        /// What went wrong.
        error: String,
        /// The HTTP status, if any.
        status: Option<u16>,
        /// The start of the receiver's answer.
        body: String,
    },
}

/// Where one kind of action of one target goes (`scale`: a webhook or Kubernetes;
/// `rebalance`: a webhook or HAProxy; `alert`: Alertmanager).
#[derive(Debug, Clone)]
pub enum Destination {
    /// A signed webhook.
    Webhook(WebhookConfig),
    /// The Kubernetes API: the scale subresource, or an HPA's floor.
    Kubernetes(Arc<kubernetes::Kubernetes>),
    /// HAProxy's runtime API.
    Haproxy(HaproxyConfig),
    /// Alertmanager's v2 API.
    Alertmanager(AlertmanagerConfig),
}

/// Every configured receiver, by target and action kind, and the clients to reach them.
///
/// Clones share them: [`Receivers::replace`] changes where every clone sends (a reload of
/// the configuration, while the outbox worker keeps running).
#[derive(Debug, Clone)]
pub struct Receivers {
    current: Arc<RwLock<Arc<Routes>>>,
}

/// The receivers at one time.
#[derive(Debug)]
struct Routes {
    routes: HashMap<(String, ActionKind), Destination>,
    webhooks: webhook::WebhookSender,
}

impl Receivers {
    /// The receivers of `config`: each target's platform (scale), balancer (rebalance:
    /// webhook or HAProxy) and, when configured, Alertmanager (alert).
    pub fn new(config: &Config, webhooks: webhook::WebhookSender) -> Self {
        let mut routes = HashMap::new();
        for t in &config.targets {
            if let Some(h) = &t.platform {
                routes.insert(
                    (t.name.clone(), ActionKind::Scale),
                    Destination::Webhook(h.clone()),
                );
            }
            if let Some(k) = &t.kubernetes {
                let k = kubernetes::Kubernetes::new(k.clone(), config.delivery.timeout);
                routes.insert(
                    (t.name.clone(), ActionKind::Scale),
                    Destination::Kubernetes(Arc::new(k)),
                );
            }
            if let Some(h) = &t.balancer {
                routes.insert(
                    (t.name.clone(), ActionKind::Rebalance),
                    Destination::Webhook(h.clone()),
                );
            }
            if let Some(h) = &t.haproxy {
                routes.insert(
                    (t.name.clone(), ActionKind::Rebalance),
                    Destination::Haproxy(h.clone()),
                );
            }
            if let Some(am) = &config.alertmanager {
                routes.insert(
                    (t.name.clone(), ActionKind::Alert),
                    Destination::Alertmanager(am.clone()),
                );
            }
        }
        Self::from_map(routes, webhooks)
    }

    fn from_map(
        routes: HashMap<(String, ActionKind), Destination>,
        webhooks: webhook::WebhookSender,
    ) -> Self {
        let routes = Arc::new(Routes { routes, webhooks });
        Self {
            current: Arc::new(RwLock::new(routes)),
        }
    }

    /// Sends, from now on, where `other` sends, in this and every clone (an attempt under
    /// way finishes where it started).
    pub fn replace(&self, other: &Receivers) {
        let routes = other.routes();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = routes;
    }

    /// The receivers now (the lock is held only to clone the `Arc`).
    fn routes(&self) -> Arc<Routes> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Receivers from an explicit list of `(target, kind, destination)`.
    pub fn from_routes(
        routes: impl IntoIterator<Item = (String, ActionKind, Destination)>,
        webhooks: webhook::WebhookSender,
    ) -> Self {
        let routes = routes.into_iter().map(|(t, k, d)| ((t, k), d)).collect();
        Self::from_map(routes, webhooks)
    }

    /// The Kubernetes platform of `target`, if its scale actions go to one (its loop reads
    /// the running count through the same client).
    pub fn kubernetes(&self, target: &str) -> Option<Arc<kubernetes::Kubernetes>> {
        match self.routes().route(target, ActionKind::Scale) {
            Some(Destination::Kubernetes(k)) => Some(k.clone()),
            _ => None,
        }
    }

    /// Whether actions of `kind` for `target` have somewhere to go.
    pub fn has(&self, target: &str, kind: ActionKind) -> bool {
        self.routes().route(target, kind).is_some()
    }

    /// One attempt to deliver `body` (an action of `kind` for `target`, decided at `epoch`
    /// when instances share targets) with idempotency key `key`.
    pub async fn attempt(
        &self,
        (target, kind): (&str, ActionKind),
        body: &[u8],
        key: &str,
        epoch: Option<u64>,
    ) -> Attempt {
        let now = self.routes();
        match now.route(target, kind) {
            None => Attempt::Final {
                error: format!("no receiver configured for {kind} actions of target `{target}`"),
                status: None,
                body: String::new(),
            },
            Some(Destination::Webhook(h)) => now.webhooks.attempt(h, body, key, epoch).await,
            Some(Destination::Kubernetes(k)) => k.attempt(body).await,
            Some(Destination::Haproxy(h)) => haproxy::apply_body(h, body).await,
            Some(Destination::Alertmanager(am)) => {
                let mut url = am.url.clone();
                let path = format!("{}/api/v2/alerts", url.path().trim_end_matches('/'));
                url.set_path(&path);
                now.webhooks.post_json(&url, body).await
            }
        }
    }
}

impl Routes {
    fn route(&self, target: &str, kind: ActionKind) -> Option<&Destination> {
        self.routes.get(&(target.to_owned(), kind))
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
                    code: crate::decide::ReasonCode::Prediction,
                    message: "upper forecast needs 7".into(),
                },
                Reason {
                    code: crate::decide::ReasonCode::TooFewReplicas,
                    message: "raised".into(),
                },
            ],
            peak: Some(Peak {
                timestamp: 1_700_000_180,
                value: 80.5,
                upper: 101.25,
                planned: 101.25,
                basis: crate::forecast::PlanBasis::Interval,
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
        assert_eq!((a.kind(), a.target()), (ActionKind::Rebalance, "web"));
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

    /// The kinds' names are their serialisation (the body's `kind`, as documented), and
    /// parse back.
    #[test]
    fn kinds_are_named_as_documented() {
        let names: Vec<&str> = ActionKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, ["scale", "rebalance", "alert"]);
        for k in ActionKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(ActionKind::parse(k.as_str()), Some(k));
            assert_eq!(k.to_string(), k.as_str());
        }
        assert_eq!(ActionKind::parse("Scale"), None);
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
