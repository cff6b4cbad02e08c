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

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};
use tracing::warn;

use super::view::{BUCKETS, Member, Owner, Seen, View};
use super::{ClusterError, Op};
use crate::config::ClusterConfig;

/// A connected etcd client and the keys of one cluster.
#[derive(Clone)]
pub(crate) struct Etcd {
    client: Client,
    prefix: String,
    /// Deadline of one request.
    timeout: Duration,
}

impl Etcd {
    /// Connects (lazily: no request is made unless etcd authentication is configured).
    pub(crate) async fn connect(config: &ClusterConfig) -> Result<Self, ClusterError> {
        let timeout = op_timeout(config.lease_ttl);
        let mut options = ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout)
            .with_keep_alive(timeout, timeout)
            .with_keep_alive_while_idle(true)
            // Fail fast on a member that lost its leader instead of waiting on it.
            .with_require_leader(true);
        if let Some(auth) = &config.auth {
            // etcd's tokens expire (5 minutes by default): fetch a new one when they do.
            options = options
                .with_user(&auth.username, auth.password.expose())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &config.tls {
            let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(Identity::from_pem(cert, key.expose()));
            }
            options = options.with_tls(t);
        }
        // `host:port` with the scheme: tonic wants no path.
        let endpoints: Vec<String> = config
            .etcd
            .iter()
            .map(|u| {
                let host = u.host_str().unwrap_or_default();
                let port = u.port_or_known_default().unwrap_or(2379);
                format!("{}://{host}:{port}", u.scheme())
            })
            .collect();
        let client = deadline(
            Op::Connect,
            timeout,
            Client::connect(endpoints, Some(options)),
        )
        .await?;
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
        let r = deadline(
            Op::Grant,
            self.timeout,
            self.client.clone().lease_grant(secs, None),
        )
        .await?;
        Ok((r.id(), r.ttl()))
    }

    /// Writes `member` under `lease` unless its key exists under another lease: whether
    /// the key is now ours.
    pub(crate) async fn register(&self, member: &Member, lease: i64) -> Result<bool, ClusterError> {
        let key = self.member_key(&member.name);
        let value = serde_json::to_vec(member).map_err(|e| ClusterError::Etcd {
            op: Op::Register,
            error: e.to_string(),
        })?;
        let put = TxnOp::put(
            key.clone(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        );
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([put.clone()])
            .or_else([TxnOp::txn(
                Txn::new()
                    .when([Compare::lease(key, CompareOp::Equal, lease)])
                    .and_then([put]),
            )]);
        let r = deadline(Op::Register, self.timeout, self.client.clone().txn(txn)).await?;
        if r.succeeded() {
            return Ok(true);
        }
        // The nested transaction ran: it succeeded when the key was under our lease.
        Ok(r.op_responses().iter().any(|op| match op {
            etcd_client::TxnOpResponse::Txn(t) => t.succeeded(),
            _ => false,
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
        let options = GetOptions::new().with_range(end);
        let prefix = format!("{}/", self.prefix);
        let r = deadline(
            Op::Load,
            self.timeout,
            self.client.clone().get(first, Some(options)),
        )
        .await?;
        let mut view = View {
            revision: r.header().map_or(0, |h| h.revision().max(0) as u64),
            ..View::default()
        };
        for kv in r.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            if let Some(name) = rest.strip_prefix("members/") {
                match serde_json::from_slice::<Member>(kv.value()) {
                    Ok(member) if member.name == name => {
                        let seen = Seen {
                            member,
                            lease: kv.lease(),
                        };
                        view.members.insert(name.to_owned(), seen);
                    }
                    _ => warn!(key = %key, "member key does not hold this member as JSON; ignored"),
                }
            } else if let Some(bucket) = rest.strip_prefix("owners/") {
                match bucket.parse::<u16>() {
                    Ok(bucket) if bucket < BUCKETS => {
                        let owner = Owner {
                            member: String::from_utf8_lossy(kv.value()).into_owned(),
                            epoch: kv.mod_revision().max(0) as u64,
                        };
                        view.owners.insert(bucket, owner);
                        view.leases.insert(bucket, kv.lease());
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
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                me,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        self.guarded(Op::Claim, txn).await
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
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                epoch as i64,
            )])
            .and_then([TxnOp::put(
                key,
                me,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        self.guarded(Op::Retake, txn).await
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
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.clone(), CompareOp::Equal, epoch as i64),
                Compare::lease(self.member_key(to), CompareOp::Equal, to_lease),
            ])
            .and_then([TxnOp::put(
                key,
                to,
                Some(PutOptions::new().with_lease(to_lease)),
            )]);
        self.guarded(Op::HandOff, txn).await
    }

    /// Runs a guarded transaction: the revision it committed at, or `None` when its guard
    /// did not hold.
    async fn guarded(&self, op: Op, txn: Txn) -> Result<Option<u64>, ClusterError> {
        let r = deadline(op, self.timeout, self.client.clone().txn(txn)).await?;
        Ok(r.succeeded()
            .then(|| r.header().map_or(0, |h| h.revision().max(0) as u64)))
    }

    /// Opens a keep-alive stream for `lease`; `None` when etcd says the lease is gone (it
    /// expired while etcd could not be reached, say).
    pub(crate) async fn keep_alive(
        &self,
        lease: i64,
    ) -> Result<Option<(LeaseKeeper, LeaseKeepAliveStream)>, ClusterError> {
        let opened =
            tokio::time::timeout(self.timeout, self.client.clone().lease_keep_alive(lease)).await;
        match opened {
            Ok(Ok(pair)) => Ok(Some(pair)),
            // The client opens the stream with one renewal, and answers a TTL of 0 (the
            // lease is unknown) with this error.
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) if e == "lease not found" => {
                Ok(None)
            }
            Ok(Err(e)) => Err(ClusterError::Etcd {
                op: Op::KeepAlive,
                error: e.to_string(),
            }),
            Err(_) => Err(ClusterError::Timeout {
                op: Op::KeepAlive,
                after: self.timeout,
            }),
        }
    }

    /// Watches the members and owners.
    pub(crate) async fn watch(&self) -> Result<WatchStream, ClusterError> {
        let (first, end) = self.membership_range();
        let options = WatchOptions::new().with_range(end);
        deadline(
            Op::Watch,
            self.timeout,
            self.client.clone().watch(first, Some(options)),
        )
        .await
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
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.owner_key(bucket),
                CompareOp::Equal,
                epoch as i64,
            )])
            .and_then([TxnOp::put(self.target_key(target, field), value, None)]);
        Ok(self.guarded(op, txn).await?.is_some())
    }

    /// A target's shared fields, by name.
    pub(crate) async fn target_fields(
        &self,
        target: &str,
    ) -> Result<BTreeMap<String, Vec<u8>>, ClusterError> {
        let prefix = self.target_key(target, "");
        let options = GetOptions::new().with_prefix();
        let r = deadline(
            Op::ReadShared,
            self.timeout,
            self.client.clone().get(prefix.clone(), Some(options)),
        )
        .await?;
        Ok(r.kvs()
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let field = key.strip_prefix(&prefix)?;
                Some((field.to_owned(), kv.value().to_vec()))
            })
            .collect())
    }

    /// Revokes `lease`: every key under it goes at once.
    pub(crate) async fn revoke(&self, lease: i64) -> Result<(), ClusterError> {
        deadline(
            Op::Revoke,
            self.timeout,
            self.client.clone().lease_revoke(lease),
        )
        .await
        .map(drop)
    }
}

/// The deadline of one request: a third of the lease (so that a few fit in one TTL), at
/// least half a second.
pub(crate) fn op_timeout(lease_ttl: Duration) -> Duration {
    (lease_ttl / 3).max(Duration::from_millis(500))
}

/// `fut` within `after`, its errors naming `op`.
pub(crate) async fn deadline<T>(
    op: Op,
    after: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ClusterError::Etcd {
            op,
            error: e.to_string(),
        }),
        Err(_) => Err(ClusterError::Timeout { op, after }),
    }
}
