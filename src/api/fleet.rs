//! One API for the fleet (`[cluster]`): every instance answers for every target. A request
//! about one target owned by another live instance is forwarded to that owner's `advertise`
//! URL, and the owner's answer is relayed; lists ask each owner for its own view.
//!
//! A forwarded request carries `Prescale-Forwarded-By: <this instance>`, and an instance
//! answers such a request itself, whoever owns the target: a request is forwarded at most
//! once, so two instances that disagree for a moment about an owner cannot bounce it
//! between them. A target with no owner, or whose owner is not a live member, is answered
//! locally.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{ApiError, ApiState};
use crate::cluster::{Cluster, Member, Owner, bucket};

/// The header a forwarded request carries: the name of the instance that forwarded it.
pub(super) const FORWARDED_BY: HeaderName = HeaderName::from_static("prescale-forwarded-by");
/// The header of a relayed answer: the name of the instance that answered.
const SERVED_BY: HeaderName = HeaderName::from_static("prescale-served-by");

/// Time to connect to another instance.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for a forwarded request's whole answer (a forecast fitted from scratch for a long
/// horizon takes a while).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for another instance's list of targets or its `/readyz`: a slow member must not
/// hold up the whole answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest request body forwarded (the API's own bodies are empty).
const MAX_REQUEST_BYTES: usize = 1 << 20;
/// The largest answer relayed (14 days of one-minute history is some 1.5 MB).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// This instance's place in the fleet, for the API: its [`Cluster`] membership and an HTTP
/// client for the other instances. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    cluster: Arc<Cluster>,
    client: reqwest::Client,
}

impl Fleet {
    /// The API's view of `cluster`, with its own HTTP client (system proxy settings apply;
    /// redirects are not followed). Fails only if the TLS backend cannot be initialised.
    pub fn new(cluster: Arc<Cluster>) -> Result<Self, reqwest::Error> {
        Self::with_builder(cluster, reqwest::Client::builder())
    }

    /// [`Fleet::new`] with a client built from `builder` (e.g. `no_proxy()` in tests).
    pub fn with_builder(
        cluster: Arc<Cluster>,
        builder: reqwest::ClientBuilder,
    ) -> Result<Self, reqwest::Error> {
        // Already installed (by us or another client) is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = builder
            .user_agent(crate::act::webhook::USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { cluster, client })
    }

    /// The membership.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The owners and the live members, as this instance last read them.
    pub(super) fn owners(&self) -> Owners {
        Owners {
            me: self.cluster.name().to_owned(),
            owners: self.cluster.owners(),
            members: self
                .cluster
                .members()
                .into_iter()
                .map(|m| (m.name.clone(), m))
                .collect(),
        }
    }

    /// Sends `req` (method, path, query, body, `Authorization` and `Content-Type`) to
    /// `owner`, and relays its status, `Content-Type`, `WWW-Authenticate` and body; 502
    /// naming the owner and its URL when it does not answer.
    async fn forward(&self, target: &str, owner: &Member, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let body = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
            Ok(b) => b,
            Err(e) => return ApiError::bad_request(format!("request body: {e}")).into_response(),
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let sent = async {
            let url = peer_url(owner, path)?;
            let mut request = self
                .client
                .request(parts.method.clone(), url)
                .timeout(FORWARD_TIMEOUT)
                .header(FORWARDED_BY, self.cluster.name())
                .body(body);
            for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
                if let Some(value) = parts.headers.get(&name) {
                    request = request.header(name, value.clone());
                }
            }
            let res = request.send().await.map_err(|e| chain(&e.without_url()))?;
            relay(res, owner).await
        };
        match sent.await {
            Ok(res) => res,
            Err(why) => {
                tracing::warn!(%target, owner = %owner.name, error = %why, "cannot forward to the owner");
                owner_unreachable(target, owner, &why).into_response()
            }
        }
    }

    /// `GET <owner>/<path>` as JSON within [`PEER_TIMEOUT`], with `auth` as the
    /// `Authorization` header; the error says what went wrong (not naming the URL).
    pub(super) async fn get_json<T: DeserializeOwned>(
        &self,
        member: &Member,
        path: &str,
        auth: Option<&HeaderValue>,
    ) -> Result<(StatusCode, T), String> {
        let url = peer_url(member, path)?;
        let mut request = self
            .client
            .get(url)
            .timeout(PEER_TIMEOUT)
            .header(FORWARDED_BY, self.cluster.name());
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth.clone());
        }
        let res = request.send().await.map_err(|e| chain(&e.without_url()))?;
        let status = res.status();
        let body = read_capped(res).await?;
        serde_json::from_slice(&body)
            .map(|v| (status, v))
            .map_err(|e| {
                if status.is_success() {
                    format!("answered {status} with an unexpected body: {e}")
                } else {
                    format!("answered {status}")
                }
            })
    }
}

/// Who owns what, and who is live, as one instance read it at one moment.
pub(super) struct Owners {
    me: String,
    owners: BTreeMap<u16, Owner>,
    members: BTreeMap<String, Member>,
}

/// Where a request about a target is answered.
pub(super) enum Placement<'a> {
    /// Here: this instance owns it, or no live member does (the target is then idle and
    /// the local store holds what it last knew).
    Here,
    /// At this live member, which owns it.
    Remote(&'a Member),
}

impl Owners {
    /// This instance's name.
    pub(super) fn me(&self) -> &str {
        &self.me
    }

    /// The owner of `target`'s bucket, if any.
    pub(super) fn owner(&self, target: &str) -> Option<&Owner> {
        self.owners.get(&bucket(target))
    }

    /// The owner of each owned bucket.
    pub(super) fn buckets(&self) -> &BTreeMap<u16, Owner> {
        &self.owners
    }

    /// The live members, by name.
    pub(super) fn members(&self) -> &BTreeMap<String, Member> {
        &self.members
    }

    /// Where a request about `target` is answered.
    pub(super) fn placement(&self, target: &str) -> Placement<'_> {
        match self.owner(target) {
            Some(o) if o.member != self.me => self
                .members
                .get(&o.member)
                .map_or(Placement::Here, Placement::Remote),
            _ => Placement::Here,
        }
    }
}

/// The 502 of an owner that did not answer.
pub(super) fn owner_unreachable(target: &str, owner: &Member, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "owner_unreachable",
        format!(
            "target `{target}` is owned by instance `{}` at {}, which did not answer: {why}",
            owner.name,
            shown(owner)
        ),
    )
}

/// `owner`'s advertised URL as shown (credentials redacted).
pub(super) fn shown(owner: &Member) -> String {
    url::Url::parse(&owner.advertise).map_or_else(
        |_| crate::config::redact_text(&owner.advertise),
        |u| crate::config::redacted(&u),
    )
}

/// `path` (with its query) under `member`'s advertised URL, keeping a path prefix.
fn peer_url(member: &Member, path: &str) -> Result<url::Url, String> {
    let base = member.advertise.trim_end_matches('/');
    url::Url::parse(&format!("{base}{path}"))
        .map_err(|e| format!("its advertised URL is not a URL: {e}"))
}

/// The owner's answer as ours, with [`SERVED_BY`] naming it.
async fn relay(res: reqwest::Response, owner: &Member) -> Result<Response, String> {
    let status = res.status();
    let mut headers = HeaderMap::new();
    for name in [header::CONTENT_TYPE, header::WWW_AUTHENTICATE] {
        if let Some(value) = res.headers().get(&name) {
            headers.insert(name, value.clone());
        }
    }
    if let Ok(value) = HeaderValue::from_str(&owner.name) {
        headers.insert(SERVED_BY, value);
    }
    let body = read_capped(res).await?;
    Ok((status, headers, Body::from(body)).into_response())
}

/// An answer's body, up to [`MAX_ANSWER_BYTES`].
async fn read_capped(mut res: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| chain(&e.without_url()))? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!("its answer is over {MAX_ANSWER_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error and its causes, `: `-separated (reqwest's own message says little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Middleware of the routes about the target named in the path: forwards the request to
/// the target's owner when that is another live instance.
pub(super) async fn forward_by_path(
    State(state): State<ApiState>,
    Path(params): Path<BTreeMap<String, String>>,
    req: Request,
    next: Next,
) -> Response {
    match params.get("name") {
        Some(target) => to_owner(&state, target, req, next).await,
        None => next.run(req).await,
    }
}

/// The `target` query parameter of a list.
#[derive(Deserialize)]
struct TargetParam {
    target: Option<String>,
}

/// Middleware of a list about one target (`?target=`): forwards it to the target's owner
/// when that is another live instance. Without `target` the list is this instance's.
pub(super) async fn forward_by_query(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    // A malformed query is answered (refused) here.
    match Query::<TargetParam>::try_from_uri(req.uri()) {
        Ok(Query(TargetParam {
            target: Some(target),
        })) => to_owner(&state, &target, req, next).await,
        _ => next.run(req).await,
    }
}

/// Forwards `req` to `target`'s owner, or runs it here: without a cluster, when it was
/// forwarded already, for an unknown target, and when no other live member owns it.
async fn to_owner(state: &ApiState, target: &str, req: Request, next: Next) -> Response {
    let Some(fleet) = &state.fleet else {
        return next.run(req).await;
    };
    if req.headers().contains_key(FORWARDED_BY) || state.store.target(target).is_none() {
        return next.run(req).await;
    }
    let owners = fleet.owners();
    match owners.placement(target) {
        Placement::Remote(owner) => fleet.forward(target, owner, req).await,
        Placement::Here => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str) -> Member {
        Member {
            name: name.to_owned(),
            advertise: format!("http://127.0.0.1:9/{name}/"),
            started_at: 0,
        }
    }

    #[test]
    fn placement_forwards_only_to_another_live_owner() {
        let owner = |member: &str| Owner {
            member: member.to_owned(),
            epoch: 7,
        };
        // Three targets whose buckets differ.
        let (mine, theirs, dead) = ("t0", "t1", "t2");
        let distinct: std::collections::BTreeSet<u16> =
            [mine, theirs, dead].iter().map(|t| bucket(t)).collect();
        assert_eq!(distinct.len(), 3, "pick targets in distinct buckets");
        let owners = Owners {
            me: "a".into(),
            owners: [
                (bucket(mine), owner("a")),
                (bucket(theirs), owner("b")),
                (bucket(dead), owner("gone")),
            ]
            .into(),
            members: [("a".into(), member("a")), ("b".into(), member("b"))].into(),
        };
        let remote = |t| match owners.placement(t) {
            Placement::Remote(m) => Some(m.name.clone()),
            Placement::Here => None,
        };
        assert_eq!(remote(mine), None);
        assert_eq!(remote(theirs), Some("b".to_owned()));
        assert_eq!(remote(dead), None, "an owner that is not live is not asked");
        let unowned = (0..)
            .map(|i| format!("u{i}"))
            .find(|t| !distinct.contains(&bucket(t)))
            .expect("a name in another bucket");
        assert_eq!(remote(&unowned), None);
    }

    #[test]
    fn peer_urls_keep_the_advertised_prefix() {
        let url = peer_url(&member("b"), "/api/v1/targets?scope=local").expect("a URL");
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/b/api/v1/targets?scope=local"
        );
        let bad = Member {
            advertise: "not a url".into(),
            ..member("c")
        };
        assert!(peer_url(&bad, "/readyz").is_err());
    }
}
