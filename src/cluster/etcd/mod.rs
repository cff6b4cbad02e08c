//! The etcd side: keys, and each operation of the protocol as one request with a deadline.
//!
//! Keys under the prefix `P`:
//! - `P/members/<name>`: a [`Member`] as JSON, under the member's lease;
//! - `P/owners/<bucket>`: the owner's name, under the owner's lease; its `mod_revision` is
//!   the owner's epoch.
//! - `P/targets/<target>/<field>`: what a target's owner shares with the next one
//!   ([`super::shared`]), each written only while the writer owns the target's bucket at its
//!   epoch. Outside the range the instances watch, so that writing it wakes nobody.

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::warn;

use super::view::{BUCKETS, Member, Owner, Seen, View};
use super::{ClusterError, Op};
use crate::config::ClusterConfig;
use client::pb;
use client::pb::compare::{CompareResult, CompareTarget, TargetUnion};
pub(crate) use client::{KeepAlive, Watch};

mod client;

/// A connected etcd client and the keys of one cluster.
#[derive(Clone)]
pub(crate) struct Etcd {
    client: client::Client,
    prefix: String,
    /// Deadline of one request.
    timeout: Duration,
}

impl Etcd {
    /// Connects (lazily: no request is made unless etcd authentication is configured).
    pub(crate) async fn connect(config: &ClusterConfig) -> Result<Self, ClusterError> {
        let timeout = op_timeout(config.lease_ttl);
        let client = client::Client::connect(config, timeout)
            .await
            .map_err(failed(Op::Connect))?;
        Ok(Self {
            client,
            prefix: config.prefix.clone(),
            timeout,
        })
    }

    /// The deadline of one request.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn member_key(&self, name: &str) -> String {
        format!("{}/members/{name}", self.prefix)
    }

    fn owner_key(&self, bucket: u16) -> String {
        format!("{}/owners/{bucket}", self.prefix)
    }

    /// A new lease of `ttl`: its id and the TTL etcd granted.
    pub(crate) async fn grant(&self, ttl: Duration) -> Result<(i64, i64), ClusterError> {
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let r = (self.client.lease_grant(secs).await).map_err(failed(Op::Grant))?;
        Ok((r.id, r.ttl))
    }

    /// Writes `member` under `lease` unless its key exists under another lease: whether
    /// the key is now ours.
    pub(crate) async fn register(&self, member: &Member, lease: i64) -> Result<bool, ClusterError> {
        let key = self.member_key(&member.name);
        let value = serde_json::to_vec(member).map_err(|e| ClusterError::Etcd {
            op: Op::Register,
            error: e.to_string(),
        })?;
        let put = put(&key, value, lease);
        let ours = pb::TxnRequest {
            compare: vec![equal(&key, CompareTarget::Lease, TargetUnion::Lease(lease))],
            success: vec![put.clone()],
            failure: Vec::new(),
        };
        let txn = pb::TxnRequest {
            compare: vec![equal(&key, CompareTarget::Version, TargetUnion::Version(0))],
            success: vec![put],
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestTxn(ours)),
            }],
        };
        let r = (self.client.txn(txn).await).map_err(failed(Op::Register))?;
        if r.succeeded {
            return Ok(true);
        }
        // The nested transaction ran: it succeeded when the key was under our lease.
        Ok(r.responses.iter().any(|op| {
            matches!(
                &op.response,
                Some(pb::response_op::Response::ResponseTxn(t)) if t.succeeded
            )
        }))
    }

    /// The watched range: `P/members/` to `P/owners/` and everything between (nothing else
    /// is written there), as (first key, end key).
    fn membership_range(&self) -> (String, String) {
        // `0` follows `/`: the end key is just past every `P/owners/…`.
        (
            format!("{}/members/", self.prefix),
            format!("{}/owners0", self.prefix),
        )
    }

    /// The members and owners, at one revision.
    pub(crate) async fn load(&self) -> Result<View, ClusterError> {
        let (first, end) = self.membership_range();
        let prefix = format!("{}/", self.prefix);
        let r = (self.client.range(first.into(), end.into()).await).map_err(failed(Op::Load))?;
        let mut view = View {
            revision: revision(r.header.as_ref()),
            ..View::default()
        };
        for kv in &r.kvs {
            let key = String::from_utf8_lossy(&kv.key);
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            if let Some(name) = rest.strip_prefix("members/") {
                match serde_json::from_slice::<Member>(&kv.value) {
                    Ok(member) if member.name == name => {
                        let seen = Seen {
                            member,
                            lease: kv.lease,
                        };
                        view.members.insert(name.to_owned(), seen);
                    }
                    _ => warn!(key = %key, "member key does not hold this member as JSON; ignored"),
                }
            } else if let Some(bucket) = rest.strip_prefix("owners/") {
                match bucket.parse::<u16>() {
                    Ok(bucket) if bucket < BUCKETS => {
                        let owner = Owner {
                            member: String::from_utf8_lossy(&kv.value).into_owned(),
                            epoch: kv.mod_revision.max(0) as u64,
                        };
                        view.owners.insert(bucket, owner);
                        view.leases.insert(bucket, kv.lease);
                    }
                    _ => warn!(key = %key, buckets = BUCKETS, "owner key of no bucket; ignored"),
                }
            }
        }
        Ok(view)
    }

    /// Takes a free bucket under `lease`: its epoch, or `None` when it is not free.
    pub(crate) async fn claim(
        &self,
        bucket: u16,
        me: &str,
        lease: i64,
    ) -> Result<Option<u64>, ClusterError> {
        let key = self.owner_key(bucket);
        let free = equal(&key, CompareTarget::Version, TargetUnion::Version(0));
        self.guarded(Op::Claim, vec![free], put(&key, me, lease))
            .await
    }

    /// Takes again, under `lease`, a bucket still ours at `epoch`: its new epoch, or `None`
    /// when it changed meanwhile.
    pub(crate) async fn retake(
        &self,
        bucket: u16,
        epoch: u64,
        me: &str,
        lease: i64,
    ) -> Result<Option<u64>, ClusterError> {
        let key = self.owner_key(bucket);
        let unchanged = equal(
            &key,
            CompareTarget::Mod,
            TargetUnion::ModRevision(epoch as i64),
        );
        self.guarded(Op::Retake, vec![unchanged], put(&key, me, lease))
            .await
    }

    /// Hands a bucket ours at `epoch` to `to`, under its lease, in one transaction that
    /// holds only if the bucket is unchanged and `to` is still a member under that lease:
    /// the recipient's epoch, or `None` when either changed. The bucket always has an owner.
    pub(crate) async fn hand_off(
        &self,
        bucket: u16,
        epoch: u64,
        to: &str,
        to_lease: i64,
    ) -> Result<Option<u64>, ClusterError> {
        let key = self.owner_key(bucket);
        let guard = vec![
            equal(
                &key,
                CompareTarget::Mod,
                TargetUnion::ModRevision(epoch as i64),
            ),
            equal(
                &self.member_key(to),
                CompareTarget::Lease,
                TargetUnion::Lease(to_lease),
            ),
        ];
        self.guarded(Op::HandOff, guard, put(&key, to, to_lease))
            .await
    }

    /// Runs `then` if every compare of `guard` holds: the revision it committed at, or
    /// `None` when the guard did not hold.
    async fn guarded(
        &self,
        op: Op,
        guard: Vec<pb::Compare>,
        then: pb::RequestOp,
    ) -> Result<Option<u64>, ClusterError> {
        let txn = pb::TxnRequest {
            compare: guard,
            success: vec![then],
            failure: Vec::new(),
        };
        let r = (self.client.txn(txn).await).map_err(failed(op))?;
        Ok(r.succeeded.then(|| revision(r.header.as_ref())))
    }

    /// Opens a keep-alive stream for `lease`; `None` when etcd says the lease is gone (it
    /// expired while etcd could not be reached, say).
    pub(crate) async fn keep_alive(&self, lease: i64) -> Result<Option<KeepAlive>, ClusterError> {
        (self.client.keep_alive(lease).await).map_err(failed(Op::KeepAlive))
    }

    /// Renews a lease on its stream: the TTL etcd answered, 0 or less when the lease is
    /// gone.
    pub(crate) async fn renew(&self, keeper: &mut KeepAlive) -> Result<i64, ClusterError> {
        keeper.renew().await.map_err(failed(Op::KeepAlive))
    }

    /// Watches the members and owners.
    pub(crate) async fn watch(&self) -> Result<Watch, ClusterError> {
        let (first, end) = self.membership_range();
        (self.client.watch(first.into(), end.into()).await).map_err(failed(Op::Watch))
    }

    /// The key of a target's shared `field`.
    pub(crate) fn target_key(&self, target: &str, field: &str) -> String {
        format!("{}/targets/{target}/{field}", self.prefix)
    }

    /// Writes a target's shared `field` if `bucket` is still owned at `epoch`: whether it
    /// was written.
    pub(crate) async fn put_fenced(
        &self,
        op: Op,
        (bucket, epoch): (u16, u64),
        (target, field): (&str, &str),
        value: Vec<u8>,
    ) -> Result<bool, ClusterError> {
        let owned = equal(
            &self.owner_key(bucket),
            CompareTarget::Mod,
            TargetUnion::ModRevision(epoch as i64),
        );
        let write = put(&self.target_key(target, field), value, 0);
        Ok(self.guarded(op, vec![owned], write).await?.is_some())
    }

    /// A target's shared fields, by name.
    pub(crate) async fn target_fields(
        &self,
        target: &str,
    ) -> Result<BTreeMap<String, Vec<u8>>, ClusterError> {
        let prefix = self.target_key(target, "");
        let end = prefix_end(prefix.as_bytes());
        let r = (self.client.range(prefix.clone().into(), end).await)
            .map_err(failed(Op::ReadShared))?;
        Ok(r.kvs
            .into_iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(&kv.key);
                let field = key.strip_prefix(&prefix)?;
                Some((field.to_owned(), kv.value))
            })
            .collect())
    }

    /// Revokes `lease`: every key under it goes at once.
    pub(crate) async fn revoke(&self, lease: i64) -> Result<(), ClusterError> {
        (self.client.lease_revoke(lease).await).map_err(failed(Op::Revoke))
    }
}

/// The deadline of one request: a third of the lease (so that a few fit in one TTL), at
/// least half a second.
pub(crate) fn op_timeout(lease_ttl: Duration) -> Duration {
    (lease_ttl / 3).max(Duration::from_millis(500))
}

/// A client error as the error of `op`.
fn failed(op: Op) -> impl Fn(client::Error) -> ClusterError {
    move |e| match e {
        client::Error::Timeout { after, .. } => ClusterError::Timeout { op, after },
        e => ClusterError::Etcd {
            op,
            error: e.to_string(),
        },
    }
}

/// The revision of an answer's header.
fn revision(header: Option<&pb::ResponseHeader>) -> u64 {
    header.map_or(0, |h| h.revision.max(0) as u64)
}

/// A comparison: `key`'s `target` equals `value`.
fn equal(key: &str, target: CompareTarget, value: TargetUnion) -> pb::Compare {
    pb::Compare {
        result: CompareResult::Equal.into(),
        target: target.into(),
        key: key.into(),
        target_union: Some(value),
    }
}

/// Writes `value` at `key`, under `lease` (none when 0).
fn put(key: &str, value: impl Into<Vec<u8>>, lease: i64) -> pb::RequestOp {
    let put = pb::PutRequest {
        key: key.into(),
        value: value.into(),
        lease,
    };
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(put)),
    }
}

/// The end of the range of keys that start with `prefix`: the prefix with its last byte
/// below 0xff incremented and what follows it dropped (`\0`, every key, when there is
/// none).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_range_ends_past_every_key_that_starts_with_it() {
        assert_eq!(prefix_end(b"/p/targets/web/"), b"/p/targets/web0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
