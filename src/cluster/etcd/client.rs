//! A small etcd v3 client over tonic, for the requests [`super::Etcd`] makes: each sent to
//! one of several endpoints (the next one once that one fails or does not answer), with a
//! token when etcd wants a user and password (fetched again when etcd says it expired),
//! and answered within a deadline. Its errors name the endpoint.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::config::{ClusterConfig, EtcdAuth};

/// The messages and clients generated from `proto/etcd/etcd.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub(crate) mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::auth_client::AuthClient;
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::watch_client::WatchClient;

/// Why a request failed, and where.
#[derive(Debug)]
pub(crate) enum Error {
    /// etcd, or the connection to it, answered with an error.
    Status {
        /// The endpoint asked.
        endpoint: String,
        /// Its answer.
        status: Status,
    },
    /// No answer within the deadline.
    Timeout {
        /// The endpoint asked.
        endpoint: String,
        /// The deadline.
        after: Duration,
    },
    /// An endpoint, or a TLS setting, that the transport refuses.
    Setup {
        /// The endpoint.
        endpoint: String,
        /// Why.
        error: String,
    },
    /// etcd ended a stream, or refused to open it.
    Ended {
        /// The endpoint.
        endpoint: String,
        /// etcd's reason, when it gave one.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Status { endpoint, status } => {
                write!(f, "{endpoint}: {:?}: {}", status.code(), status.message())?;
                // The transport's own errors (refused, reset, TLS) are the sources.
                let mut source = std::error::Error::source(status);
                while let Some(e) = source {
                    write!(f, ": {e}")?;
                    source = e.source();
                }
                Ok(())
            }
            Error::Timeout { endpoint, after } => {
                write!(f, "{endpoint}: no answer within {after:?}")
            }
            Error::Setup { endpoint, error } => write!(f, "{endpoint}: {error}"),
            Error::Ended { endpoint, reason } => write!(f, "{endpoint}: stream ended: {reason}"),
        }
    }
}

/// A client of one etcd cluster; cheap to clone.
#[derive(Clone)]
pub(crate) struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// Each endpoint (as written, for messages) and its channel, connected lazily.
    endpoints: Vec<(String, Channel)>,
    /// The endpoint requests go to, until it fails.
    current: AtomicUsize,
    credentials: Option<EtcdAuth>,
    /// The token from the last authentication. Locked briefly, never across an `.await`.
    token: Mutex<Option<AsciiMetadataValue>>,
    /// The deadline of one request.
    timeout: Duration,
}

impl Client {
    /// Sets up a channel to each endpoint (no connection is made yet), then authenticates
    /// when credentials are configured, trying each endpoint in turn while they fail.
    pub(crate) async fn connect(config: &ClusterConfig, timeout: Duration) -> Result<Self, Error> {
        let mut endpoints = Vec::with_capacity(config.etcd.len());
        for url in &config.etcd {
            // `scheme://host:port`: tonic wants no path.
            let host = url.host_str().unwrap_or_default();
            let port = url.port_or_known_default().unwrap_or(2379);
            let name = format!("{}://{host}:{port}", url.scheme());
            let channel = channel(&name, config, timeout).map_err(|error| Error::Setup {
                endpoint: name.clone(),
                error,
            })?;
            endpoints.push((name, channel));
        }
        let client = Self {
            inner: Arc::new(Inner {
                endpoints,
                current: AtomicUsize::new(0),
                credentials: config.auth.clone(),
                token: Mutex::new(None),
                timeout,
            }),
        };
        if client.inner.credentials.is_some() {
            let mut tries = client.inner.endpoints.len();
            loop {
                let at = client.current();
                let signed_in = client.within(at, client.authenticate(at)).await;
                match signed_in {
                    Ok(()) => break,
                    Err(e) if tries > 1 && client.failed_over(at, &e) => tries -= 1,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(client)
    }

    /// Keys in `[key, range_end)`, or `key` alone when `range_end` is empty.
    pub(crate) async fn range(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
    ) -> Result<pb::RangeResponse, Error> {
        let message = pb::RangeRequest {
            key,
            range_end,
            ..pb::RangeRequest::default()
        };
        self.unary(
            message,
            |ch, r| async move { KvClient::new(ch).range(r).await },
        )
        .await
    }

    /// Runs a transaction.
    pub(crate) async fn txn(&self, message: pb::TxnRequest) -> Result<pb::TxnResponse, Error> {
        self.unary(
            message,
            |ch, r| async move { KvClient::new(ch).txn(r).await },
        )
        .await
    }

    /// A new lease of `ttl` seconds.
    pub(crate) async fn lease_grant(&self, ttl: i64) -> Result<pb::LeaseGrantResponse, Error> {
        let message = pb::LeaseGrantRequest { ttl, id: 0 };
        self.unary(message, |ch, r| async move {
            LeaseClient::new(ch).lease_grant(r).await
        })
        .await
    }

    /// Revokes a lease, and the keys under it.
    pub(crate) async fn lease_revoke(&self, id: i64) -> Result<(), Error> {
        let message = pb::LeaseRevokeRequest { id };
        self.unary(message, |ch, r| async move {
            LeaseClient::new(ch).lease_revoke(r).await
        })
        .await
        .map(drop)
    }

    /// Opens a keep-alive stream for `lease`, renewing it once: `None` when etcd answers
    /// that the lease does not exist.
    pub(crate) async fn keep_alive(&self, lease: i64) -> Result<Option<KeepAlive>, Error> {
        let first = pb::LeaseKeepAliveRequest { id: lease };
        let (stream, answer) = self
            .open(first, |ch, r| async move {
                LeaseClient::new(ch).lease_keep_alive(r).await
            })
            .await?;
        Ok((answer.ttl > 0).then_some(KeepAlive { stream, lease }))
    }

    /// Watches the keys in `[key, range_end)` from the next revision on.
    pub(crate) async fn watch(&self, key: Vec<u8>, range_end: Vec<u8>) -> Result<Watch, Error> {
        let create = pb::WatchCreateRequest {
            key,
            range_end,
            start_revision: 0,
        };
        let first = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
        };
        let (stream, answer) = self
            .open(
                first,
                |ch, r| async move { WatchClient::new(ch).watch(r).await },
            )
            .await?;
        if answer.canceled || !answer.created {
            return Err(Error::Ended {
                endpoint: self.name(stream.at),
                reason: format!("the watch was not created: {}", answer.cancel_reason),
            });
        }
        Ok(Watch { stream })
    }

    /// Sends a unary request (again, with a new token, when etcd says the token is stale).
    async fn unary<Q, R, Fut>(
        &self,
        message: Q,
        send: impl Fn(Channel, Request<Q>) -> Fut,
    ) -> Result<R, Error>
    where
        Q: Clone,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let at = self.current();
        let answer = self
            .within(at, async {
                let mut signed_in = false;
                loop {
                    let token = self.token();
                    let channel = self.inner.endpoints[at].1.clone();
                    match send(channel, self.request(message.clone(), token.as_ref())).await {
                        Ok(r) => return Ok(r.into_inner()),
                        Err(s) if !signed_in && self.is_stale(&s) => {
                            signed_in = true;
                            self.authenticate_again(at, token).await?;
                        }
                        Err(status) => {
                            let endpoint = self.name(at);
                            return Err(Error::Status { endpoint, status });
                        }
                    }
                }
            })
            .await;
        answer.inspect_err(|e| {
            self.failed_over(at, e);
        })
    }

    /// Opens a stream with `first` as its first request, and reads the first answer.
    async fn open<Q, R, Fut>(
        &self,
        first: Q,
        call: impl Fn(Channel, Request<ReceiverStream<Q>>) -> Fut,
    ) -> Result<(Stream<Q, R>, R), Error>
    where
        Q: Clone,
        Fut: Future<Output = Result<Response<Streaming<R>>, Status>>,
    {
        let at = self.current();
        let opened = self
            .within(at, async {
                let mut signed_in = false;
                loop {
                    let token = self.token();
                    let (requests, rx) = mpsc::channel(4);
                    // Room for one: this cannot fail.
                    let _ = requests.try_send(first.clone());
                    let channel = self.inner.endpoints[at].1.clone();
                    let request = self.request(ReceiverStream::new(rx), token.as_ref());
                    let status = match call(channel, request).await {
                        Ok(r) => {
                            let mut stream = Stream {
                                client: self.clone(),
                                at,
                                requests,
                                responses: r.into_inner(),
                            };
                            match stream.responses.message().await {
                                Ok(Some(answer)) => return Ok((stream, answer)),
                                Ok(None) => return Err(stream.ended("no answer")),
                                Err(s) => s,
                            }
                        }
                        Err(s) => s,
                    };
                    if !signed_in && self.is_stale(&status) {
                        signed_in = true;
                        self.authenticate_again(at, token).await?;
                        continue;
                    }
                    let endpoint = self.name(at);
                    return Err(Error::Status { endpoint, status });
                }
            })
            .await;
        opened.inspect_err(|e| {
            self.failed_over(at, e);
        })
    }

    /// `fut` within the deadline; a timeout names endpoint `at`.
    async fn within<T>(
        &self,
        at: usize,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let after = self.inner.timeout;
        tokio::time::timeout(after, fut).await.unwrap_or_else(|_| {
            Err(Error::Timeout {
                endpoint: self.name(at),
                after,
            })
        })
    }

    /// A request with the token, and asking for an answer only from a member that has a
    /// leader (etcd's `hasleader` metadata): a member cut off from the others fails fast
    /// instead of leaving the request waiting.
    fn request<T>(&self, message: T, token: Option<&AsciiMetadataValue>) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert("hasleader", AsciiMetadataValue::from_static("true"));
        if let Some(token) = token {
            metadata.insert("token", token.clone());
        }
        request
    }

    /// Authenticates at endpoint `at` and keeps the token.
    async fn authenticate(&self, at: usize) -> Result<(), Error> {
        let Some(auth) = &self.inner.credentials else {
            return Ok(());
        };
        let message = pb::AuthenticateRequest {
            name: auth.username.clone(),
            password: auth.password.expose().to_owned(),
        };
        let channel = self.inner.endpoints[at].1.clone();
        let endpoint = || self.name(at);
        let answer = AuthClient::new(channel)
            .authenticate(self.request(message, None))
            .await
            .map_err(|status| Error::Status {
                endpoint: endpoint(),
                status,
            })?;
        let token =
            AsciiMetadataValue::try_from(answer.into_inner().token).map_err(|_| Error::Setup {
                endpoint: endpoint(),
                error: "etcd's auth token is not ASCII".to_owned(),
            })?;
        *self.inner.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token);
        Ok(())
    }

    /// Authenticates again after etcd refused token `stale`, unless another request
    /// already did.
    async fn authenticate_again(
        &self,
        at: usize,
        stale: Option<AsciiMetadataValue>,
    ) -> Result<(), Error> {
        if self.token() != stale {
            return Ok(());
        }
        self.authenticate(at).await
    }

    /// Whether etcd refused the request for its token (expired, or older than a change of
    /// users or roles), and credentials can fetch a new one.
    fn is_stale(&self, status: &Status) -> bool {
        self.inner.credentials.is_some()
            && match status.code() {
                Code::Unauthenticated => true,
                Code::InvalidArgument => status.message().contains("revision of auth store is old"),
                _ => false,
            }
    }

    fn token(&self) -> Option<AsciiMetadataValue> {
        self.inner
            .token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The endpoint requests go to now.
    fn current(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len()
    }

    fn name(&self, at: usize) -> String {
        self.inner.endpoints[at].0.clone()
    }

    /// Moves on to the next endpoint when `e` says endpoint `at` is down, unreachable,
    /// cut off from its leader or too slow (once, however many requests saw it fail):
    /// whether it did.
    fn failed_over(&self, at: usize, e: &Error) -> bool {
        let down = match e {
            Error::Status { status, .. } => matches!(
                status.code(),
                Code::Unavailable
                    | Code::Unknown
                    | Code::Internal
                    | Code::Cancelled
                    | Code::DeadlineExceeded
            ),
            Error::Timeout { .. } | Error::Ended { .. } => true,
            Error::Setup { .. } => false,
        };
        if down {
            let next = (at + 1) % self.inner.endpoints.len();
            let _ = (self.inner.current).compare_exchange(
                at,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        down
    }
}

/// A lazily connected channel to `endpoint`, with TLS when it is `https`.
fn channel(endpoint: &str, config: &ClusterConfig, timeout: Duration) -> Result<Channel, String> {
    let mut e = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        // Notice a dead connection within about two deadlines, even while idle.
        .http2_keep_alive_interval(timeout)
        .keep_alive_timeout(timeout)
        .keep_alive_while_idle(true);
    if let (Some(tls), true) = (&config.tls, endpoint.starts_with("https://")) {
        let mut t = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(cert, key.expose()));
        }
        e = e.tls_config(t).map_err(|e| format!("TLS: {e}"))?;
    }
    Ok(e.connect_lazy())
}

/// A bidirectional stream to one endpoint.
struct Stream<Q, R> {
    client: Client,
    /// The endpoint.
    at: usize,
    /// Kept open: etcd ends the stream when the requests end.
    requests: mpsc::Sender<Q>,
    responses: Streaming<R>,
}

impl<Q, R> Stream<Q, R> {
    /// The next answer; `None` when etcd ended the stream.
    async fn message(&mut self) -> Result<Option<R>, Error> {
        self.responses.message().await.map_err(|status| {
            let e = Error::Status {
                endpoint: self.client.name(self.at),
                status,
            };
            self.client.failed_over(self.at, &e);
            e
        })
    }

    fn ended(&self, reason: &str) -> Error {
        let e = Error::Ended {
            endpoint: self.client.name(self.at),
            reason: reason.to_owned(),
        };
        self.client.failed_over(self.at, &e);
        e
    }
}

/// A lease's keep-alive stream.
pub(crate) struct KeepAlive {
    stream: Stream<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>,
    lease: i64,
}

impl KeepAlive {
    /// Renews the lease within the deadline: the TTL etcd answered, 0 or less when the
    /// lease no longer exists.
    pub(crate) async fn renew(&mut self) -> Result<i64, Error> {
        let (client, at) = (self.stream.client.clone(), self.stream.at);
        let renewed = client.within(at, async {
            let request = pb::LeaseKeepAliveRequest { id: self.lease };
            if self.stream.requests.send(request).await.is_err() {
                return Err(self.stream.ended("the request stream closed"));
            }
            match self.stream.message().await? {
                Some(answer) => Ok(answer.ttl),
                None => Err(self.stream.ended("etcd closed it")),
            }
        });
        renewed.await.inspect_err(|e| {
            client.failed_over(at, e);
        })
    }
}

/// A watch on a range of keys.
pub(crate) struct Watch {
    stream: Stream<pb::WatchRequest, pb::WatchResponse>,
}

impl Watch {
    /// The next change (or notice); `None` when etcd ended the watch.
    pub(crate) async fn message(&mut self) -> Result<Option<pb::WatchResponse>, Error> {
        self.stream.message().await
    }
}
