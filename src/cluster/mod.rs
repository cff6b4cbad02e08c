//! Several instances sharing the targets through etcd (`[cluster]`): who is live, and which
//! instance acts on which target, at which epoch.
//!
//! # The protocol
//!
//! - **Membership.** Each instance holds an etcd lease of `lease_ttl`, renewed every third
//!   of it, and registers `<prefix>/members/<name>` (JSON: name, advertise URL, start time)
//!   under it. A member is live while its key exists: it goes when the lease expires (a
//!   crash, a pause, a partition) or is revoked ([`Cluster::leave`]).
//! - **Buckets.** A target belongs to one of [`BUCKETS`] buckets by a stable hash of its
//!   name ([`bucket`]). A bucket is owned through `<prefix>/owners/<bucket>` (the owner's
//!   name) under the owner's lease; its `mod_revision` is the owner's **epoch**, which
//!   grows at every change of owner.
//! - **Taking.** A free bucket is taken in a transaction that creates its key only if it
//!   is absent. Each instance takes free buckets up to the fair share, ⌈buckets / live
//!   members⌉. A dead owner's keys vanish with its lease; the others take them.
//! - **Handing.** An instance above the share, when no bucket is free, hands its excess to
//!   the members furthest below it (each giver its part of their deficit, since all give
//!   at once): one transaction rewrites the owner key to the
//!   recipient, under the recipient's lease, if the key is still at the giver's epoch and
//!   the recipient is still a member under that lease. A joiner therefore gets its share
//!   with no bucket ever unowned. The giver stops acting on a bucket *before* sending the
//!   hand-off; if the hand-off fails or its outcome is unknown, the giver takes the bucket
//!   again at a new epoch (a guarded rewrite), which also fences a late hand-off.
//! - **Liveness.** An instance acts on a bucket only while etcd says it owns it and its
//!   lease is known to be live: until the time the last successful renewal was *sent*,
//!   plus the TTL etcd answered, minus a tenth of it or etcd's election timeout (1 s),
//!   whichever is more (a leader cut off from its quorum renews leases until it notices).
//!   So a paused or partitioned instance stops before its lease can expire, hence before
//!   anyone else can take its buckets, and all stop within `lease_ttl` of a lost quorum
//!   (a second more when the member left was the leader: it renews for up to two election
//!   timeouts).
//!   [`Cluster::epoch`] checks that clock on every call.
//! - **Recovery.** When etcd says the lease is gone, the instance grants a new one,
//!   registers again and takes buckets anew (at new epochs). While etcd is unreachable,
//!   nothing is acted on once the lease time is up; when it answers again before the lease
//!   expired, ownership resumes at the same epochs (nobody could have taken them).
//!
//! - **Shared state.** What a target's owner shares with the next one (the counts asked
//!   for and delivered, the pause, the model) is written only while it owns the target at
//!   its epoch ([`Cluster::share`]).
//!
//! Files: `view.rs` (the state as plain data and what to do about it, pure), `etcd/`
//! (keys and requests; `client.rs`, the etcd client they go through), `session.rs` (the
//! task: keep-alive, watch, reconcile), `shared.rs` (targets' shared state).

mod etcd;
mod session;
mod shared;
mod view;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ClusterConfig;
pub use shared::{Share, SharedCount, SharedState, Standing};
pub use view::{BUCKETS, Member, Owner, bucket};

/// What failed, for [`ClusterError`]: a closed set of the protocol's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Connecting (and authenticating) to etcd.
    Connect,
    /// Granting a lease.
    Grant,
    /// Writing the member key.
    Register,
    /// Reading the members and owners.
    Load,
    /// Taking a free bucket.
    Claim,
    /// Taking back a bucket given away.
    Retake,
    /// Handing a bucket to another instance.
    HandOff,
    /// Renewing the lease.
    KeepAlive,
    /// Watching the keys.
    Watch,
    /// Revoking the lease.
    Revoke,
    /// Reading a target's shared state.
    ReadShared,
    /// Writing a target's shared state.
    WriteShared,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Connect => "connect",
            Op::Grant => "grant a lease",
            Op::Register => "register the member",
            Op::Load => "read members and owners",
            Op::Claim => "take a bucket",
            Op::Retake => "take back a bucket",
            Op::HandOff => "hand a bucket over",
            Op::KeepAlive => "renew the lease",
            Op::Watch => "watch the keys",
            Op::Revoke => "revoke the lease",
            Op::ReadShared => "read a target's shared state",
            Op::WriteShared => "write a target's shared state",
        })
    }
}

/// A cluster error: the request and why it failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// etcd answered with an error, or could not be reached.
    #[error("etcd: cannot {op}: {error}")]
    Etcd {
        /// The request.
        op: Op,
        /// etcd's or the transport's message.
        error: String,
    },
    /// etcd did not answer in time.
    #[error("etcd: cannot {op}: no answer within {after:?}")]
    Timeout {
        /// The request.
        op: Op,
        /// The deadline.
        after: Duration,
    },
    /// Another live instance has this name.
    #[error(
        "instance name `{name}` is held by a live member (its key stayed for {waited:?}); expected a unique `[cluster] name`"
    )]
    NameTaken {
        /// The name.
        name: String,
        /// How long joining waited for the key to go (a crashed instance's lease expires).
        waited: Duration,
    },
    /// A shared write was refused: this instance no longer owns the target at the epoch.
    #[error("target `{target}` is no longer owned by this instance at epoch {epoch}")]
    NotOwner {
        /// The target.
        target: String,
        /// The epoch it was written at.
        epoch: u64,
    },
}

/// This instance's membership in the cluster: which targets it owns, at which epoch.
/// Cheap to share behind an `Arc`; dropping it stops its task (the lease then expires
/// after `lease_ttl`); [`Cluster::leave`] revokes it at once.
pub struct Cluster {
    shared: Arc<Shared>,
    etcd: etcd::Etcd,
    changes: watch::Receiver<u64>,
    stop: watch::Sender<bool>,
    /// The task; taken by [`Cluster::leave`].
    task: Mutex<Option<JoinHandle<()>>>,
}

/// What the task and the handle share.
pub(crate) struct Shared {
    name: String,
    /// Locked briefly, never across an `.await`.
    local: Mutex<Local>,
    /// Bumped whenever [`Cluster::epoch`], `owners` or `members` may answer differently.
    changes: watch::Sender<u64>,
}

/// This instance's knowledge.
#[derive(Default)]
pub(crate) struct Local {
    /// The newest state read from etcd, with this instance's own takes applied.
    view: view::View,
    /// The lease, while it is believed to exist.
    lease: Option<i64>,
    /// Until when the lease is known to be live.
    live_until: Option<Instant>,
    /// Own buckets handed off or being handed off, by the epoch they were ours at.
    given: BTreeMap<u16, u64>,
}

impl Local {
    fn is_live(&self, now: Instant) -> bool {
        self.live_until.is_some_and(|t| now < t)
    }
}

impl Shared {
    fn local(&self) -> MutexGuard<'_, Local> {
        // A panic while holding it leaves plain data; keep serving it.
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
}

impl Cluster {
    /// Connects to etcd, takes a lease and registers this instance, then keeps both alive
    /// and takes its share of the buckets in a task. Waits up to `lease_ttl` plus a few
    /// seconds while another member holds the name (a crashed predecessor's lease expires
    /// in that time); fails when etcd cannot be reached.
    pub async fn join(config: &ClusterConfig) -> Result<Self, ClusterError> {
        let etcd = etcd::Etcd::connect(config).await?;
        let (tx, changes) = watch::channel(0);
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            local: Mutex::new(Local::default()),
            changes: tx,
        });
        let session = session::Session::new(etcd.clone(), config, shared.clone());
        let lease = session.open().await?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(session.run(lease, stopped));
        Ok(Self {
            shared,
            etcd,
            changes,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// This instance's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The epoch at which this instance owns `target`, while it does and its lease is known
    /// to be live; `None` otherwise. Check it before every action: it turns `None` before
    /// the lease can have expired.
    pub fn epoch(&self, target: &str) -> Option<u64> {
        self.bucket_epoch(bucket(target))
    }

    /// [`Cluster::epoch`] for a bucket.
    pub fn bucket_epoch(&self, bucket: u16) -> Option<u64> {
        let local = self.shared.local();
        if !local.is_live(Instant::now()) {
            return None;
        }
        let owner = local.view.owners.get(&bucket)?;
        // A key left from a lost lease names us too, until it vanishes.
        let ours = local.lease.is_some() && local.view.leases.get(&bucket) == local.lease.as_ref();
        (ours && owner.member == self.shared.name && local.given.get(&bucket) != Some(&owner.epoch))
            .then_some(owner.epoch)
    }

    /// The buckets this instance owns now, with their epochs ([`Cluster::bucket_epoch`] of
    /// each).
    pub fn owned(&self) -> BTreeMap<u16, u64> {
        (0..BUCKETS)
            .filter_map(|b| self.bucket_epoch(b).map(|e| (b, e)))
            .collect()
    }

    /// Whether this instance's lease is known to be live now.
    pub fn is_live(&self) -> bool {
        self.shared.local().is_live(Instant::now())
    }

    /// The live members as last read from etcd, by name.
    pub fn members(&self) -> Vec<Member> {
        let local = self.shared.local();
        local
            .view
            .members
            .values()
            .map(|s| s.member.clone())
            .collect()
    }

    /// The owner of each owned bucket as last read from etcd (another instance's view may
    /// be a moment newer or older; only [`Cluster::epoch`] decides whether to act).
    pub fn owners(&self) -> BTreeMap<u16, Owner> {
        self.shared.local().view.owners.clone()
    }

    /// A receiver that changes whenever [`Cluster::epoch`], [`Cluster::owners`] or
    /// [`Cluster::members`] may answer differently (ownership taken, handed or lost, the
    /// lease lapsing or renewed, members joining or leaving).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Leaves the cluster: stops acting at once, revokes the lease (the other instances
    /// take the buckets without waiting for it to expire) and stops the task. Once left,
    /// [`Cluster::epoch`] is always `None`.
    pub async fn leave(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let task = self
            .task
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            task.abort();
        }
        // Stop acting at once: nothing renews the lease any more.
        let mut local = self.shared.local();
        local.live_until = None;
        local.lease = None;
    }
}
