//! The loop of a target shared through etcd ([`super::Ownership`]): resuming from what the
//! previous owner shared, sharing the count asked for before its action is written, and
//! sharing each refitted model.

use tracing::{debug, info, warn};

use super::TargetLoop;
use super::durable::NotWritten;
use crate::act::Action;
use crate::cluster::{ClusterError, Share, SharedCount};
use crate::models::{Encoded, ModelsDir};
use crate::step::Asked;

impl TargetLoop {
    /// Writes a cycle's actions: with an owner, the count asked for is shared first (a
    /// failover then resumes from at least it), and every action carries the epoch.
    pub(super) async fn write(&self, actions: Vec<Action>) -> Result<(), NotWritten> {
        let epoch = self.ownership.as_ref().map(|o| o.epoch);
        if let Some(o) = &self.ownership
            && let Some(Action::Scale(s)) = actions.iter().find(|a| matches!(a, Action::Scale(_)))
        {
            let asked = SharedCount {
                replicas: s.to,
                at: s.issued_at,
                epoch: o.epoch,
            };
            o.cluster
                .share(&self.target.name, o.epoch, Share::Asked(asked))
                .await
                .map_err(|e| {
                    NotWritten::Coordination(format!("cannot share the count asked for: {e}"))
                })?;
        }
        self.outbox
            .enqueue_at(actions, epoch)
            .await
            .map(drop)
            .map_err(NotWritten::Outbox)
    }

    /// Takes up the target from what its previous owner shared: the model (or the local
    /// file when none is shared), the pause (also held by this instance's outbox worker),
    /// and the counts asked for and delivered: decisions start from the count last asked
    /// for, and without a `replicas` query the count taken as running is never fewer than
    /// may run. A failover therefore never scales in by itself.
    pub(super) async fn resume_shared(&self) -> Result<(), ClusterError> {
        let Some(o) = &self.ownership else {
            return Ok(());
        };
        let t = &self.target;
        let shared = o.cluster.shared_state(&t.name).await?;
        let model = shared.model.as_deref().and_then(|bytes| {
            let origin = format!("etcd: the shared model of target `{}`", t.name);
            ModelsDir::decode(origin, bytes)
                .inspect_err(|e| warn!(target = %t.name, error = %e, "shared model skipped; the local file or a refit is used"))
                .ok()
        });
        if model.is_none() {
            self.load_model();
        }
        if let Err(e) = self.outbox.set_paused(&t.name, shared.paused).await {
            warn!(target = %t.name, error = %e, "cannot hold the paused target's actions in the outbox");
        }
        let policy = t.step_policy(&self.forecast, self.alerts.as_ref());
        let now = self.store.now();
        let running = shared.running();
        let asked = shared.asked.or(shared.delivered).map(|a| Asked {
            replicas: a.replicas,
            at: a.at,
        });
        if let Some(mut state) = self.store.target(&t.name) {
            if let Some(f) = model {
                state.memory.forecaster = Some(f);
            }
            state.paused = shared.paused;
            if let Some(asked) = asked {
                state.memory.resume(&policy, asked, running, now);
                if let (None, Some(r)) = (&t.queries.replicas, running) {
                    state.replicas = r;
                }
            }
        }
        match asked {
            Some(asked) => info!(target = %t.name, epoch = o.epoch, asked = asked.replicas,
                running = ?running, paused = shared.paused, "taken up from the shared state"),
            None => {
                // Nothing shared yet (the first owner, say, of a target run by one process
                // before): what this instance's own outbox remembers, if anything.
                info!(target = %t.name, epoch = o.epoch, paused = shared.paused,
                    "taken up; nothing shared was asked for: resuming from this instance's outbox");
                self.resume().await;
            }
        }
        Ok(())
    }

    /// Shares a refitted model, for the next owner.
    pub(super) async fn share_model(&self, bytes: &Encoded) {
        let Some(o) = &self.ownership else {
            return;
        };
        let share = Share::Model(bytes.as_bytes().to_vec());
        match o.cluster.share(&self.target.name, o.epoch, share).await {
            Ok(()) => debug!(target = %self.target.name, "model shared"),
            Err(e) => {
                warn!(target = %self.target.name, error = %e, "cannot share the model; the next owner refits")
            }
        }
    }
}
