//! When instances share targets through etcd: a loop for each target this instance owns,
//! started when it takes the target (fresh state, resumed from what was shared) and
//! stopped when it loses it (its state forgotten, so another instance's later actions are
//! never judged from stale memory).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use super::{Ownership, TargetLoop};
use crate::cluster::{Cluster, Standing};
use crate::config::TargetConfig;
use crate::store::Store;

/// How often ownership is looked at even without a change reported (a backstop).
const RECHECK: Duration = Duration::from_secs(1);

/// A running loop: the epoch it acts at, and how to stop it.
struct Running {
    epoch: u64,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Runs a loop (made by `make`) for each of `targets` this instance owns, following
/// `cluster`'s changes, until `shutdown` flips; then stops them all.
pub async fn run_owned(
    cluster: Arc<Cluster>,
    targets: Vec<Arc<TargetConfig>>,
    store: Store,
    make: impl Fn(Arc<TargetConfig>, Ownership) -> TargetLoop,
    mut shutdown: watch::Receiver<bool>,
) {
    for t in &targets {
        forget(&store, &t.name, false);
    }
    let mut changes = cluster.changes();
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut recheck = tokio::time::interval(RECHECK);
    loop {
        for t in &targets {
            // A lapsed owner keeps its loop (polling, forecasting, not acting): it acts
            // again at the same epoch if its lease is renewed in time.
            let want = match cluster.standing(&t.name) {
                Standing::Owner(e) | Standing::Lapsed(e) => Some(e),
                Standing::Elsewhere => None,
            };
            let have = running
                .get(&t.name)
                .filter(|r| !r.task.is_finished())
                .map(|r| r.epoch);
            if have == want {
                continue;
            }
            if let Some(r) = running.remove(&t.name) {
                let epoch = r.epoch;
                r.stop().await;
                forget(&store, &t.name, false);
                info!(target = %t.name, epoch, "target released");
            }
            if let Some(epoch) = want {
                forget(&store, &t.name, true);
                let ownership = Ownership {
                    cluster: cluster.clone(),
                    epoch,
                };
                let (stop, stopped) = watch::channel(false);
                let task = tokio::spawn(make(t.clone(), ownership).run(stopped));
                running.insert(t.name.clone(), Running { epoch, stop, task });
                info!(target = %t.name, epoch, "target taken");
            }
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = changes.changed() => {}
            _ = recheck.tick() => {}
        }
    }
    for (_, r) in running {
        r.stop().await;
    }
}

/// Forgets what this instance knew of a target, which it now owns or not.
fn forget(store: &Store, name: &str, owned_here: bool) {
    if let Some(mut state) = store.target(name) {
        state.reset();
        state.owned_here = owned_here;
    }
}
