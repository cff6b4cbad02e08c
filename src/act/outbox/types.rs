//! The outbox's types: a delivery as stored ([`Delivery`]), its state and outcome and
//! their names, a target's control state ([`Control`], [`ScaleMark`]), the outcome in
//! short ([`DeliveryRecord`]), what the worker reports to and asks ([`OutcomeSink`],
//! [`Fence`], [`Hooks`]), its [`Settings`], and the [`OutboxError`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use serde::{Deserialize, Serialize};

use crate::act::{Action, ActionKind};
use crate::config::DeliveryConfig;

/// Where an action is in its life.
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
pub enum DeliveryState {
    /// Written, not delivered yet: waiting for its turn or its next attempt.
    Pending,
    /// The receiver accepted it.
    Delivered,
    /// Given up: refused, out of attempts or too old. Can be retried by hand.
    Dead,
    /// A newer action of its group replaced it before it was delivered.
    Superseded,
    /// A dead letter discarded by hand: kept for the API, never sent.
    Discarded,
}

impl DeliveryState {
    /// Every state.
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Delivered,
        Self::Dead,
        Self::Superseded,
        Self::Discarded,
    ];

    /// The name, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
            Self::Superseded => "superseded",
            Self::Discarded => "discarded",
        }
    }

    /// Parses a name from the API.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// How a delivery ended.
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
pub enum DeliveryOutcome {
    /// The receiver accepted it.
    Delivered,
    /// The receiver refused it for good (a 4xx, a 3xx, no such receiver): dead.
    Rejected,
    /// Out of attempts: dead.
    GaveUp,
    /// Not delivered within `max_age`: dead.
    Expired,
    /// A newer action of its group replaced it.
    Superseded,
}

impl DeliveryOutcome {
    /// Every outcome.
    pub const ALL: [Self; 5] = [
        Self::Delivered,
        Self::Rejected,
        Self::GaveUp,
        Self::Expired,
        Self::Superseded,
    ];

    /// The name, as in the API and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Rejected => "rejected",
            Self::GaveUp => "gave_up",
            Self::Expired => "expired",
            Self::Superseded => "superseded",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// The state an action with this outcome is in.
    pub fn state(self) -> DeliveryState {
        match self {
            Self::Delivered => DeliveryState::Delivered,
            Self::Rejected | Self::GaveUp | Self::Expired => DeliveryState::Dead,
            Self::Superseded => DeliveryState::Superseded,
        }
    }
}

macro_rules! name_as_label {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
                fmt::Write::write_str(encoder, self.as_str())
            }
        }
    )*};
}
name_as_label!(DeliveryState, DeliveryOutcome);

/// One action in the outbox, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Increasing with the order of writing.
    pub id: u64,
    /// The target.
    pub target: String,
    /// What it asks for.
    pub kind: ActionKind,
    /// Its supersede group, if any.
    pub group: Option<String>,
    /// The `Idempotency-Key`, the same on every attempt.
    pub idempotency_key: String,
    /// The body, byte for byte as sent.
    pub body: String,
    /// Where it is.
    pub state: DeliveryState,
    /// How it ended, once it has.
    pub outcome: Option<DeliveryOutcome>,
    /// When it was written (Unix ms on the outbox's clock): the decision.
    pub created_at_ms: i64,
    /// Its age counts from here (Unix ms): written, or retried by hand.
    pub age_from_ms: i64,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (Unix ms on the outbox's clock).
    pub next_attempt_ms: i64,
    /// What went wrong last.
    pub last_error: Option<String>,
    /// The last HTTP status.
    pub last_status: Option<u16>,
    /// The start of the receiver's answer to a refused action.
    pub response_body: Option<String>,
    /// When it reached its state (Unix ms on the outbox's clock), if not pending.
    pub finished_at_ms: Option<i64>,
    /// The action that superseded it.
    pub superseded_by: Option<u64>,
    /// The epoch of the target's owner that decided it, when instances share targets: it
    /// is delivered only while this instance still owns the target at that epoch. Left out
    /// of the record without one, as the first version wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Sent even while its target is paused: the release of a platform's floor
    /// ([`Action::passes_pause`]). Left out of the record when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passes_pause: bool,
}

impl Delivery {
    /// `action`, decided at `epoch`, written as `id` at `now` (ms), due at once.
    pub(super) fn pending(
        id: u64,
        (action, epoch): (&Action, Option<u64>),
        idempotency_key: String,
        now: i64,
    ) -> Self {
        Self {
            id,
            target: action.target().to_owned(),
            kind: action.kind(),
            group: action.supersede_group(),
            idempotency_key,
            body: String::from_utf8_lossy(&action.body_at(epoch)).into_owned(),
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
            epoch,
            passes_pause: action.passes_pause(),
        }
    }

    /// Its outcome in short, once it has one.
    pub fn record(&self) -> Option<DeliveryRecord> {
        let outcome = self.outcome?;
        Some(DeliveryRecord {
            kind: self.kind,
            idempotency_key: self.idempotency_key.clone(),
            outcome,
            attempts: self.attempts,
            error: self
                .last_error
                .clone()
                .filter(|_| outcome != DeliveryOutcome::Delivered),
            at: self
                .finished_at_ms
                .unwrap_or(self.created_at_ms)
                .div_euclid(1000),
        })
    }
}

/// A scale action as the control state remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleMark {
    /// The action's id (higher is newer).
    pub id: u64,
    /// The count it asks for.
    pub replicas: u32,
    /// When it was decided (its `issued_at`, Unix s).
    pub at: i64,
}

/// What the outbox keeps of a target across restarts, never pruned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    /// The newest scale action written (committed with it).
    #[serde(default)]
    pub asked: Option<ScaleMark>,
    /// The newest scale action delivered (committed with its outcome; an older one
    /// delivered late does not replace it).
    #[serde(default)]
    pub delivered: Option<ScaleMark>,
    /// Acting on the target is paused.
    #[serde(default)]
    pub paused: bool,
}

/// The outcome of a target's last finished delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryRecord {
    /// What the action asked for.
    pub kind: ActionKind,
    /// The action's idempotency key.
    pub idempotency_key: String,
    /// How it ended.
    pub outcome: DeliveryOutcome,
    /// Attempts made.
    pub attempts: u32,
    /// The error, when not delivered.
    pub error: Option<String>,
    /// When it ended (Unix s on the outbox's clock).
    pub at: i64,
}

/// Where the worker reports each finished action: its target and its outcome in short.
///
/// Called by the worker after the outcome is written, once per action; it should return at
/// once (take a short lock, or send on a channel). A closure
/// `Fn(&str, DeliveryRecord) + Send + Sync` is one.
pub trait OutcomeSink: Send + Sync + 'static {
    /// `target`'s action finished with `record`.
    fn finished(&self, target: &str, record: DeliveryRecord);

    /// `target`'s scale action `mark`, decided at `epoch` (instances sharing targets),
    /// was delivered. Called before [`OutcomeSink::finished`].
    fn delivered_scale(&self, _target: &str, _mark: ScaleMark, _epoch: Option<u64>) {}
}

/// Whether an action decided by the owner of its target at an epoch may be delivered now
/// (instances sharing targets): asked before every attempt.
pub trait Fence: Send + Sync + 'static {
    /// The verdict for an action of `target` decided at `epoch`.
    fn verdict(&self, target: &str, epoch: u64) -> Verdict;
}

/// What the worker reports to and asks ([`Outbox::fenced_worker`]).
///
/// [`Outbox::fenced_worker`]: super::Outbox::fenced_worker
#[derive(Default)]
pub struct Hooks {
    /// Told of each finished action.
    pub outcomes: Option<Box<dyn OutcomeSink>>,
    /// Asked before every attempt at an action that carries an epoch.
    pub fence: Option<Arc<dyn Fence>>,
}

/// A [`Fence`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// This instance owns the target at the epoch, and knows it: attempt it.
    Deliver,
    /// Ownership cannot be known now (the lease is not known live): wait and ask again.
    Hold,
    /// This instance no longer owns the target at the epoch: never attempt it (it is
    /// superseded, with this reason).
    Supersede(String),
}

impl<F> OutcomeSink for F
where
    F: Fn(&str, DeliveryRecord) + Send + Sync + 'static,
{
    fn finished(&self, target: &str, record: DeliveryRecord) {
        self(target, record);
    }
}

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
    /// Only dead letters can be discarded.
    #[error("delivery {id} is {state}, not dead; only dead deliveries can be discarded")]
    NotDiscardable {
        /// The id.
        id: u64,
        /// Its state.
        state: &'static str,
    },
    /// A dead letter older than an action of its group that was written since: sending it
    /// would undo that one.
    #[error(
        "delivery {id} is older than delivery {by} of the same target and kind, which is \
         {state}; retrying it would send a stale action (discard it instead)"
    )]
    Superseded {
        /// The id.
        id: u64,
        /// The newer action.
        by: u64,
        /// The newer action's state.
        state: DeliveryState,
    },
}

impl OutboxError {
    /// An error of the outbox file at `path`.
    pub(super) fn storage(path: &Path, error: impl std::fmt::Display) -> Self {
        Self::Storage {
            path: path.to_owned(),
            error: error.to_string(),
        }
    }
}

/// Settings of the worker.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Retries, backoff and age.
    pub delivery: DeliveryConfig,
    /// How long delivered and superseded actions are kept.
    pub retention: Duration,
}
