//! `serve` with `[cluster]`: the glue between [`crate::cluster`] and the outbox. The
//! worker asks [`Owners`] before every attempt, and [`share_delivered`] tells the next
//! owner of a target which count was delivered.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::act::outbox::{Fence, ScaleMark, Verdict};
use crate::cluster::{Cluster, ClusterError, Share, SharedCount, Standing};

/// The fence of a cluster member: an action is delivered only while this instance owns its
/// target at the action's epoch and knows it; held while its lease is not known live;
/// superseded once another instance, or another epoch, owns the target.
pub struct Owners(pub Arc<Cluster>);

impl Fence for Owners {
    fn verdict(&self, target: &str, epoch: u64) -> Verdict {
        match self.0.standing(target) {
            Standing::Owner(e) if e == epoch => Verdict::Deliver,
            Standing::Lapsed(e) if e == epoch => Verdict::Hold,
            Standing::Owner(e) | Standing::Lapsed(e) => Verdict::Supersede(format!(
                "decided at epoch {epoch}; this instance owns the target at epoch {e} now"
            )),
            Standing::Elsewhere => Verdict::Supersede(format!(
                "decided at epoch {epoch}; this instance no longer owns the target"
            )),
        }
    }
}

/// A delivered scale count to share: target, count, epoch.
pub type Delivered = (String, ScaleMark, u64);

/// Shares each delivered count, in the order delivered, until the senders are gone. A
/// count this instance may no longer write (it lost the target) is left to the new owner.
pub async fn share_delivered(
    cluster: Arc<Cluster>,
    mut delivered: mpsc::UnboundedReceiver<Delivered>,
) {
    while let Some((target, mark, epoch)) = delivered.recv().await {
        let count = SharedCount {
            replicas: mark.replicas,
            at: mark.at,
            epoch,
        };
        match cluster.share(&target, epoch, Share::Delivered(count)).await {
            Ok(()) => debug!(%target, replicas = mark.replicas, epoch, "delivered count shared"),
            Err(e @ ClusterError::NotOwner { .. }) => {
                debug!(%target, error = %e, "delivered count not shared")
            }
            Err(e) => {
                warn!(%target, error = %e, "cannot share the delivered count; the next owner takes the count asked for as running")
            }
        }
    }
}
