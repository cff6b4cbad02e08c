//! A plain etcd client for the tests (prescale's own is private to the crate): the gRPC
//! client `build.rs` generates from `proto/etcd/etcd.proto`, and each request sent to the
//! members in turn until one answers (a test may have killed some).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

/// The messages and clients generated from `proto/etcd/etcd.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

use pb::auth_client::AuthClient;
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::watch_client::WatchClient;

/// A client of every member of one etcd cluster (plain HTTP), without credentials.
#[derive(Clone)]
pub struct EtcdClient {
    channels: Vec<Channel>,
}

impl EtcdClient {
    /// A client of `endpoints` (`http://host:port`); connects at the first request.
    pub fn new(endpoints: &[String]) -> Self {
        let channels = endpoints
            .iter()
            .map(|e| {
                Endpoint::from_shared(e.clone())
                    .expect("an etcd endpoint")
                    .connect_timeout(Duration::from_secs(2))
                    .connect_lazy()
            })
            .collect();
        Self { channels }
    }

    /// `send` to each member in turn until one answers; the last error when none does.
    async fn each<T, Fut>(&self, send: impl Fn(Channel) -> Fut) -> Result<T, Status>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut last = Status::unavailable("no etcd endpoint");
        for channel in &self.channels {
            match send(channel.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The value at `key` (its `kvs` empty when there is none) and the store's revision.
    pub async fn get(&self, key: &str) -> Result<pb::RangeResponse, Status> {
        self.range(key.into(), Vec::new()).await
    }

    /// The keys that start with `prefix`.
    pub async fn get_prefix(&self, prefix: &str) -> Result<pb::RangeResponse, Status> {
        self.range(prefix.into(), prefix_end(prefix)).await
    }

    async fn range(&self, key: Vec<u8>, range_end: Vec<u8>) -> Result<pb::RangeResponse, Status> {
        let request = pb::RangeRequest {
            key,
            range_end,
            ..pb::RangeRequest::default()
        };
        self.each(|ch| {
            let request = request.clone();
            async move { KvClient::new(ch).range(request).await }
        })
        .await
    }

    /// Writes `value` at `key`, under no lease.
    pub async fn put(&self, key: &str, value: &str) -> Result<(), Status> {
        let request = pb::PutRequest {
            key: key.into(),
            value: value.into(),
            lease: 0,
        };
        self.each(|ch| {
            let request = request.clone();
            async move { KvClient::new(ch).put(request).await }
        })
        .await
        .map(drop)
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) -> Result<(), Status> {
        let request = pb::DeleteRangeRequest {
            key: key.into(),
            range_end: Vec::new(),
        };
        self.each(|ch| {
            let request = request.clone();
            async move { KvClient::new(ch).delete_range(request).await }
        })
        .await
        .map(drop)
    }

    /// Revokes lease `id`: its keys go at once.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), Status> {
        self.each(|ch| async move {
            LeaseClient::new(ch)
                .lease_revoke(pb::LeaseRevokeRequest { id })
                .await
        })
        .await
        .map(drop)
    }

    /// Watches the keys that start with `prefix` from revision `start` on.
    pub async fn watch_prefix(&self, prefix: &str, start: i64) -> Result<Watch, Status> {
        let create = pb::WatchCreateRequest {
            key: prefix.into(),
            range_end: prefix_end(prefix),
            start_revision: start,
        };
        let first = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
        };
        let mut last = Status::unavailable("no etcd endpoint");
        for channel in &self.channels {
            let (requests, rx) = mpsc::channel(1);
            requests
                .try_send(first.clone())
                .expect("room for the first request");
            match WatchClient::new(channel.clone())
                .watch(ReceiverStream::new(rx))
                .await
            {
                Ok(r) => {
                    let mut watch = Watch {
                        _requests: requests,
                        responses: r.into_inner(),
                    };
                    // The first answer says the watch was created.
                    let created = watch.message().await?.expect("the watch's first answer");
                    assert!(created.created && !created.canceled, "{created:?}");
                    return Ok(watch);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The authentication service (users, roles), at the first member.
    pub fn auth(&self) -> AuthClient<Channel> {
        AuthClient::new(self.channels[0].clone())
    }
}

/// A watch: its events as etcd sends them.
pub struct Watch {
    /// Kept open: etcd ends the watch when the requests end.
    _requests: mpsc::Sender<pb::WatchRequest>,
    responses: Streaming<pb::WatchResponse>,
}

impl Watch {
    /// The next answer; `None` when etcd ended the watch.
    pub async fn message(&mut self) -> Result<Option<pb::WatchResponse>, Status> {
        self.responses.message().await
    }
}

/// The end of the range of keys that start with `prefix` (ASCII, not ending in 0xff).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}
