//! What a target's owner shares with the next one through etcd: the count last asked for
//! and the count last delivered (so a new owner resumes from them and a failover never
//! scales in by itself), the pause, and the fitted model (so it forecasts at once).
//!
//! Each field is its own key, `<prefix>/targets/<target>/<field>`, written only in a
//! transaction that holds while the writer owns the target's bucket at its epoch: an
//! instance that lost the target can no longer write it.

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{Cluster, ClusterError, Op, bucket};

/// A scale count as shared: how many, when it was decided, by which epoch's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedCount {
    /// The count.
    pub replicas: u32,
    /// When it was decided (Unix s).
    pub at: i64,
    /// The epoch of the owner that decided it.
    pub epoch: u64,
}

/// A target's shared state, as read by a new owner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SharedState {
    /// The newest count asked for: written before the action is queued, so it may not have
    /// been delivered.
    pub asked: Option<SharedCount>,
    /// The newest count delivered.
    pub delivered: Option<SharedCount>,
    /// Acting is paused.
    pub paused: bool,
    /// The fitted model, as the models directory encodes it.
    pub model: Option<Vec<u8>>,
}

impl SharedState {
    /// The count that may be running: the one delivered, or the one asked for after it
    /// when more (it may have been delivered without being recorded). Never fewer than may
    /// run.
    pub fn running(&self) -> Option<u32> {
        let asked = self.asked.filter(|a| {
            self.delivered
                .is_none_or(|d| (a.epoch, a.at) >= (d.epoch, d.at))
        });
        [self.delivered, asked]
            .into_iter()
            .flatten()
            .map(|c| c.replicas)
            .max()
    }
}

/// One field to share.
#[derive(Debug, Clone, PartialEq)]
pub enum Share {
    /// The count asked for, before its action is queued.
    Asked(SharedCount),
    /// The count delivered.
    Delivered(SharedCount),
    /// The pause.
    Paused(bool),
    /// The fitted model.
    Model(Vec<u8>),
}

impl Share {
    fn field(&self) -> &'static str {
        match self {
            Self::Asked(_) => ASKED,
            Self::Delivered(_) => DELIVERED,
            Self::Paused(_) => PAUSED,
            Self::Model(_) => MODEL,
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        match self {
            // A plain struct of numbers always serialises.
            Self::Asked(c) | Self::Delivered(c) => serde_json::to_vec(&c).unwrap_or_default(),
            Self::Paused(p) => {
                if p {
                    b"true".to_vec()
                } else {
                    b"false".to_vec()
                }
            }
            Self::Model(m) => m,
        }
    }
}

const ASKED: &str = "asked";
const DELIVERED: &str = "delivered";
const PAUSED: &str = "paused";
const MODEL: &str = "model";

/// Where this instance stands with a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// It owns the target at this epoch, and its lease is known live: it may act.
    Owner(u64),
    /// It owned the target at this epoch when its lease was last known live: it must not
    /// act now, and takes it up again at the same epoch if the lease is renewed in time.
    Lapsed(u64),
    /// Another instance owns it, or nobody does.
    Elsewhere,
}

impl Cluster {
    /// Where this instance stands with `target` now.
    pub fn standing(&self, target: &str) -> Standing {
        let b = bucket(target);
        if let Some(epoch) = self.bucket_epoch(b) {
            return Standing::Owner(epoch);
        }
        let local = self.shared.local();
        let ours = local.lease.is_some() && local.view.leases.get(&b) == local.lease.as_ref();
        match local.view.owners.get(&b) {
            Some(o) if ours && o.member == self.shared.name && !local.given.contains_key(&b) => {
                Standing::Lapsed(o.epoch)
            }
            _ => Standing::Elsewhere,
        }
    }

    /// `target`'s shared state. A count or pause that cannot be read is an error naming its
    /// key (acting on a guess could scale in); a model that cannot be read is the loader's
    /// to skip.
    pub async fn shared_state(&self, target: &str) -> Result<SharedState, ClusterError> {
        let fields = self.etcd.target_fields(target).await?;
        let mut state = SharedState::default();
        for (field, value) in fields {
            let unreadable = |expected: &str| ClusterError::Etcd {
                op: Op::ReadShared,
                error: format!(
                    "key `{}` holds `{}`; expected {expected}",
                    self.etcd.target_key(target, &field),
                    String::from_utf8_lossy(&value)
                        .chars()
                        .take(80)
                        .collect::<String>()
                ),
            };
            let count = || {
                serde_json::from_slice::<SharedCount>(&value)
                    .map_err(|_| unreadable("JSON of a count: {\"replicas\", \"at\", \"epoch\"}"))
            };
            match field.as_str() {
                ASKED => state.asked = Some(count()?),
                DELIVERED => state.delivered = Some(count()?),
                PAUSED => {
                    state.paused = match &value[..] {
                        b"true" => true,
                        b"false" => false,
                        _ => return Err(unreadable("`true` or `false`")),
                    }
                }
                MODEL => state.model = Some(value),
                _ => warn!(%target, field, "unknown shared field; ignored"),
            }
        }
        Ok(state)
    }

    /// Shares one field of `target`, if this instance still owns it at `epoch`.
    pub async fn share(&self, target: &str, epoch: u64, share: Share) -> Result<(), ClusterError> {
        let field = share.field();
        let written = self
            .etcd
            .put_fenced(
                Op::WriteShared,
                (bucket(target), epoch),
                (target, field),
                share.into_bytes(),
            )
            .await?;
        if written {
            Ok(())
        } else {
            Err(ClusterError::NotOwner {
                target: target.to_owned(),
                epoch,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(replicas: u32, at: i64, epoch: u64) -> Option<SharedCount> {
        Some(SharedCount {
            replicas,
            at,
            epoch,
        })
    }

    #[test]
    fn the_running_count_is_never_fewer_than_may_run() {
        let state = |asked, delivered| SharedState {
            asked,
            delivered,
            ..SharedState::default()
        };
        assert_eq!(state(None, None).running(), None);
        assert_eq!(state(count(4, 10, 1), None).running(), Some(4));
        // A scale-in asked for after the delivery may not have happened.
        assert_eq!(state(count(3, 20, 1), count(8, 10, 1)).running(), Some(8));
        // A scale-out asked for after it may have.
        assert_eq!(state(count(9, 20, 1), count(8, 10, 1)).running(), Some(9));
        // An older ask (delivered since, as a newer count) is not running.
        assert_eq!(state(count(9, 10, 1), count(5, 20, 1)).running(), Some(5));
        // A later epoch is newer whatever the clocks say.
        assert_eq!(state(count(9, 5, 2), count(5, 20, 1)).running(), Some(9));
    }
}
