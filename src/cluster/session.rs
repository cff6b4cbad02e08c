//! The cluster task: one session per lease. A session renews the lease (its own task),
//! watches the keys, and after every change (or a third of the TTL) reads the state and
//! does what [`View::plan`] says. When etcd says the lease is gone, a new session starts.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::etcd::{Etcd, Watch};
use super::view::{Member, Owner, View};
use super::{ClusterError, Shared};
use crate::config::ClusterConfig;

/// How a session ended.
enum End {
    /// [`super::Cluster::leave`] or the handle dropped.
    Stopped,
    /// etcd says the lease no longer exists.
    LeaseLost,
}

/// What the keep-alive task reports.
enum Renewal {
    /// Renewed after having lapsed locally.
    Regained,
    /// etcd answered that the lease is gone.
    Lost,
}

/// Aborts a task when dropped, so that a session's keep-alive never outlives it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Everything a session needs.
pub(super) struct Session {
    etcd: Etcd,
    shared: std::sync::Arc<Shared>,
    ttl: Duration,
    member: Member,
}

impl Session {
    pub(super) fn new(etcd: Etcd, config: &ClusterConfig, shared: std::sync::Arc<Shared>) -> Self {
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let member = Member {
            name: config.name.clone(),
            advertise: config.advertise.to_string(),
            started_at,
        };
        Self {
            etcd,
            shared,
            ttl: config.lease_ttl,
            member,
        }
    }

    /// Takes a lease and registers the member under it. While another lease holds the
    /// name, waits for it to go; while etcd does not answer (a member down, a leader being
    /// elected), tries again: either at most `lease_ttl` plus five seconds.
    pub(super) async fn open(&self) -> Result<i64, ClusterError> {
        let started = Instant::now();
        let patience = self.ttl + Duration::from_secs(5);
        loop {
            let sent = Instant::now();
            let registered = match self.etcd.grant(self.ttl).await {
                Ok((lease, granted)) => self
                    .etcd
                    .register(&self.member, lease)
                    .await
                    .map(|ours| (lease, granted, ours)),
                Err(e) => Err(e),
            };
            let (lease, granted, ours) = match registered {
                Ok(r) => r,
                Err(e) if started.elapsed() < patience => {
                    debug!(error = %e, "cannot join yet; trying again");
                    tokio::time::sleep(self.etcd.timeout() / 2).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if ours {
                let mut local = self.shared.local();
                local.lease = Some(lease);
                local.live_until = Some(live_until(sent, granted));
                local.given.clear();
                drop(local);
                self.shared.changed();
                info!(name = %self.member.name, lease, "joined the cluster");
                return Ok(lease);
            }
            // Someone holds the name: free our lease and wait for theirs to expire.
            let _ = self.etcd.revoke(lease).await;
            if started.elapsed() > patience {
                return Err(ClusterError::NameTaken {
                    name: self.member.name.clone(),
                    waited: started.elapsed(),
                });
            }
            debug!(name = %self.member.name, "instance name held by a live lease; waiting");
            tokio::time::sleep(self.etcd.timeout()).await;
        }
    }

    /// Serves sessions until stopped; then revokes the lease.
    pub(super) async fn run(self, mut lease: i64, mut stopped: watch::Receiver<bool>) {
        loop {
            match self.serve(lease, &mut stopped).await {
                End::Stopped => {
                    self.drop_ownership();
                    if let Err(e) = self.etcd.revoke(lease).await {
                        warn!(error = %e, "leaving the cluster: the lease will expire instead");
                    }
                    return;
                }
                End::LeaseLost => {
                    warn!(name = %self.member.name, lease, "lease lost: joining again");
                    self.drop_ownership();
                }
            }
            lease = loop {
                tokio::select! {
                    _ = stopped.changed() => return,
                    opened = self.open() => match opened {
                        Ok(lease) => break lease,
                        Err(e) => {
                            warn!(error = %e, "cannot join the cluster; retrying");
                            tokio::time::sleep(self.etcd.timeout()).await;
                        }
                    }
                }
            };
        }
    }

    /// Stops acting on anything, at once.
    fn drop_ownership(&self) {
        let mut local = self.shared.local();
        local.lease = None;
        local.live_until = None;
        local.given.clear();
        drop(local);
        self.shared.changed();
    }

    /// One session: renew, watch, reconcile, until the lease is lost or the task stopped.
    async fn serve(&self, lease: i64, stopped: &mut watch::Receiver<bool>) -> End {
        let (tx, mut renewals) = mpsc::channel(4);
        let keeper = keep_alive(self.etcd.clone(), lease, self.shared.clone(), self.ttl, tx);
        let _keeper = AbortOnDrop(tokio::spawn(keeper));
        let mut watch = None;
        // A watch that failed is opened again at the next tick, not at once: without a
        // leader etcd ends each new watch straight away.
        let mut may_watch = true;
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *stopped.borrow() {
                return End::Stopped;
            }
            if watch.is_none() && may_watch {
                may_watch = false;
                watch = self
                    .etcd
                    .watch()
                    .await
                    .inspect_err(|e| debug!(error = %e, "cannot watch; reading on a timer"))
                    .ok();
            }
            if let Err(e) = self.reconcile(lease).await {
                debug!(error = %e, "cannot reconcile; retrying");
            }
            // Tell the watchers when the lease lapses locally (nothing else changes then).
            let now = Instant::now();
            let lapse = self.shared.local().live_until.filter(|t| *t > now);
            tokio::select! {
                _ = stopped.changed() => return End::Stopped,
                renewal = renewals.recv() => match renewal {
                    Some(Renewal::Regained) => {}
                    Some(Renewal::Lost) | None => return End::LeaseLost,
                },
                alive = next_event(&mut watch) => if !alive {
                    watch = None;
                },
                _ = tick.tick() => may_watch = true,
                () = sleep_until(lapse) => {
                    warn!(name = %self.member.name, "lease not renewed in time: acting on nothing");
                    self.shared.changed();
                }
            }
        }
    }

    /// Reads the state, then claims, retakes and hands buckets as the plan says.
    async fn reconcile(&self, lease: i64) -> Result<(), ClusterError> {
        let view = self.etcd.load().await?;
        let Some(plan) = self.adopt(view, lease) else {
            return Ok(());
        };
        let me = &self.member.name;
        if plan.register {
            self.etcd.register(&self.member, lease).await?;
            return Ok(());
        }
        for (bucket, epoch) in plan.retake {
            if let Some(epoch) = self.etcd.retake(bucket, epoch, me, lease).await? {
                self.took(bucket, epoch, lease);
            }
        }
        for bucket in plan.claim {
            if let Some(epoch) = self.etcd.claim(bucket, me, lease).await? {
                self.took(bucket, epoch, lease);
            }
        }
        for h in plan.hand_off {
            // Stop acting on it before anyone else can start.
            self.shared.local().given.insert(h.bucket, h.epoch);
            self.shared.changed();
            if let Some(epoch) = self
                .etcd
                .hand_off(h.bucket, h.epoch, &h.to, h.lease)
                .await?
            {
                debug!(bucket = h.bucket, to = %h.to, epoch, "bucket handed over");
            }
        }
        Ok(())
    }

    /// Takes `view` as the newest state; the plan, when this instance may act.
    fn adopt(&self, view: View, lease: i64) -> Option<super::view::Plan> {
        let me = &self.member.name;
        let mut local = self.shared.local();
        // A given bucket stays given while it is still ours at the epoch we gave.
        local.given.retain(|b, e| {
            view.owners
                .get(b)
                .is_some_and(|o| &o.member == me && o.epoch == *e)
        });
        let changed = local.view.members != view.members
            || local.view.owners != view.owners
            || local.view.leases != view.leases;
        local.view = view;
        let plan = (local.lease == Some(lease) && local.is_live(Instant::now()))
            .then(|| local.view.plan(me, &local.given));
        drop(local);
        if changed {
            self.shared.changed();
        }
        plan
    }

    fn took(&self, bucket: u16, epoch: u64, lease: i64) {
        let owner = Owner {
            member: self.member.name.clone(),
            epoch,
        };
        let mut local = self.shared.local();
        local.given.remove(&bucket);
        local.view.owners.insert(bucket, owner);
        local.view.leases.insert(bucket, lease);
        drop(local);
        self.shared.changed();
    }
}

/// Until when a lease renewed by a request sent at `sent` and answered with `ttl` seconds
/// is surely live, and this instance may act: etcd received the request after `sent`, so
/// the lease expires no earlier than `sent + ttl`. The margin, a tenth of the TTL and at
/// least [`ELECTION_MARGIN`], covers clocks that run at different rates and a leader cut
/// off from its quorum, which renews leases until it notices (one to two election
/// timeouts): so acting stops within `ttl` of losing the quorum, or a second more when
/// the surviving member was the leader.
fn live_until(sent: Instant, ttl: i64) -> Instant {
    let ttl = Duration::from_secs(ttl.max(0) as u64);
    sent + ttl.saturating_sub((ttl / 10).max(ELECTION_MARGIN))
}

/// The pause before renewing again after a first failure.
const RETRY_AT_ONCE: Duration = Duration::from_millis(50);

/// etcd's default election timeout.
const ELECTION_MARGIN: Duration = Duration::from_secs(1);

/// Renews `lease` every third of `ttl` on a keep-alive stream (reopened after an error),
/// extending the shared `live_until`; reports a lapse healed, and the lease gone.
async fn keep_alive(
    etcd: Etcd,
    lease: i64,
    shared: std::sync::Arc<Shared>,
    ttl: Duration,
    report: mpsc::Sender<Renewal>,
) {
    let every = ttl / 3;
    // Failures in a row: the first is retried at once (a member that died takes its
    // stream with it, and another member answers), the next ones after half a period.
    let mut failures = 0u32;
    let backoff = |failures: u32| {
        if failures <= 1 {
            RETRY_AT_ONCE
        } else {
            every / 2
        }
    };
    loop {
        let mut keeper = match etcd.keep_alive(lease).await {
            Ok(Some(keeper)) => keeper,
            Ok(None) => {
                let _ = report.send(Renewal::Lost).await;
                return;
            }
            Err(e) => {
                failures += 1;
                debug!(error = %e, failures, "cannot open the keep-alive stream; retrying");
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
        };
        loop {
            let sent = Instant::now();
            let answer = etcd.renew(&mut keeper).await;
            match answer {
                Ok(ttl) if ttl > 0 => {
                    failures = 0;
                    let was_live = {
                        let mut local = shared.local();
                        let was_live = local.is_live(Instant::now());
                        let until = live_until(sent, ttl);
                        local.live_until = Some(local.live_until.map_or(until, |t| t.max(until)));
                        was_live
                    };
                    if !was_live {
                        shared.changed();
                        let _ = report.send(Renewal::Regained).await;
                    }
                }
                Ok(_) => {
                    let _ = report.send(Renewal::Lost).await;
                    return;
                }
                Err(e) => {
                    failures += 1;
                    debug!(error = %e, failures, "keep-alive failed; reopening the stream");
                    tokio::time::sleep(backoff(failures)).await;
                    break;
                }
            }
            tokio::time::sleep_until((sent + every).into()).await;
        }
    }
}

/// Whether the watch delivered an event and still works; pending forever without a watch.
async fn next_event(watch: &mut Option<Watch>) -> bool {
    let Some(w) = watch else {
        return std::future::pending().await;
    };
    match w.message().await {
        Ok(Some(r)) => !r.canceled,
        Ok(None) | Err(_) => false,
    }
}

/// Sleeps until `at`; pending forever for `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
