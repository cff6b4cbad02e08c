//! A target that saw someone else change its running count under
//! `external_changes = "hold"`: paused as by `POST /api/v1/targets/{name}/pause`, until
//! resumed through the API.

use tracing::{info, warn};

use super::TargetLoop;
use crate::cluster::Share;

impl TargetLoop {
    /// Pauses the target: shared through etcd at the owner's epoch when instances share
    /// targets, committed to the outbox (so it holds for actions already queued and
    /// survives a restart), then set in the store. A failure to share or commit is logged;
    /// the target is paused here all the same, so that the manual override wins.
    pub(super) async fn hold(&self, now: i64) {
        let name = &self.target.name;
        if let Some(o) = &self.ownership
            && let Err(e) = o.cluster.share(name, o.epoch, Share::Paused(true)).await
        {
            warn!(target = %name, error = %e, "external change: cannot share the pause");
        }
        if let Err(e) = self.outbox.set_paused(name, true).await {
            warn!(target = %name, error = %e, "external change: cannot record the pause in the outbox");
        }
        if let Some(mut state) = self.store.target(name) {
            state.paused = true;
        }
        info!(target = %name, at = now, "external change: paused until resumed (external_changes = \"hold\")");
    }
}
