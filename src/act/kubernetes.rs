//! Scale actions through the Kubernetes API (`[target.platform] kind = "kubernetes"`), with
//! kube-rs's client and k8s-openapi's types.
//!
//! - `replicas` mode: the resource's `scale` subresource (`…/{name}/scale`) is read for the
//!   running count (`status.replicas`) and patched to the count asked for: a JSON merge
//!   patch (`application/merge-patch+json`) of `spec.replicas` carrying the
//!   `metadata.resourceVersion` just read, with `fieldManager=prescale`. Refused while a
//!   HorizontalPodAutoscaler targets the same resource: the two would fight.
//! - `hpa-floor` mode: the HPA that targets the resource (or the one named) gets its
//!   `spec.minReplicas` patched to the count asked for (within its `maxReplicas`), so the
//!   HPA keeps reacting above prescale's floor; [`Kubernetes::release`] gives the floor back
//!   (the target's `min_replicas`) when prescale stops acting on the target.
//!
//! A 409 Conflict (the object changed between the read and the patch) is read again and
//! retried, up to [`CONFLICT_ATTEMPTS`] times in one attempt. 403 and 404 are final (dead
//! letters carrying the API server's message); transport errors, 429 and 5xx are retried by
//! the outbox like a webhook's.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::Attempt;
use crate::config::{Credentials, KubernetesConfig, KubernetesMode};

mod floor;
pub use floor::release_action;

/// The `fieldManager` of every patch.
pub const FIELD_MANAGER: &str = "prescale";
/// Reads and patches tried within one attempt while the API server answers 409 Conflict.
pub const CONFLICT_ATTEMPTS: u32 = 5;

/// Why a call to the API server failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeError {
    /// The credentials or the kubeconfig could not be loaded.
    #[error("cannot load the Kubernetes credentials: {0}")]
    Credentials(String),
    /// The API server answered with a `Status` other than success.
    #[error("{what}: the API server answered {code} {reason}: {message}")]
    Api {
        /// The call, e.g. `PATCH deployments/web/scale in namespace shop`.
        what: String,
        /// The HTTP status.
        code: u16,
        /// The `Status` reason, e.g. `Forbidden`.
        reason: String,
        /// The `Status` message.
        message: String,
    },
    /// No answer (connection, TLS), or one that could not be read.
    #[error("{what}: {error}")]
    Transport {
        /// The call.
        what: String,
        /// What went wrong, with every cause.
        error: String,
    },
    /// No answer within the request timeout. A write may have reached the API server and
    /// been applied all the same: the next read of the object shows.
    #[error("{what}: timed out after {after:?} without an answer{}", may_apply(.what))]
    TimedOut {
        /// The call.
        what: String,
        /// The timeout.
        after: Duration,
    },
    /// `replicas` mode while an HPA targets the resource.
    #[error(
        "HorizontalPodAutoscaler `{hpa}` in namespace `{namespace}` already targets {resource}: \
         setting its replicas would fight it; use mode = \"hpa-floor\" to raise the HPA's \
         minReplicas instead, or remove the HPA"
    )]
    HpaInTheWay {
        /// The HPA.
        hpa: String,
        /// Its namespace.
        namespace: String,
        /// The resource, `Kind/name`.
        resource: String,
    },
    /// `hpa-floor` mode without an HPA targeting the resource.
    #[error(
        "no HorizontalPodAutoscaler in namespace `{namespace}` targets {resource}: mode = \
         \"hpa-floor\" raises an HPA's minReplicas; create one, or use mode = \"replicas\""
    )]
    NoHpa {
        /// The namespace.
        namespace: String,
        /// The resource, `Kind/name`.
        resource: String,
    },
    /// The object kept changing between read and patch.
    #[error("{what}: still 409 Conflict after {CONFLICT_ATTEMPTS} reads and patches")]
    Conflict {
        /// The call.
        what: String,
    },
    /// The object read lacks a field the call needs.
    #[error("{what}: the answer has no {field}")]
    Malformed {
        /// The call.
        what: String,
        /// The field.
        field: &'static str,
    },
}

impl KubeError {
    /// What kind of error this is, as a stable word (`api`, `transport`, `hpa_in_the_way`,
    /// ...): a failure that persists is logged again when its kind changes.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Credentials(_) => "credentials",
            Self::Api { .. } => "api",
            Self::Transport { .. } => "transport",
            Self::TimedOut { .. } => "timed_out",
            Self::HpaInTheWay { .. } => "hpa_in_the_way",
            Self::NoHpa { .. } => "no_hpa",
            Self::Conflict { .. } => "conflict",
            Self::Malformed { .. } => "malformed",
        }
    }

    /// The attempt this error ends: final for refusals retrying cannot change (403, 404,
    /// other 4xx, an HPA in the way or missing, bad credentials), retried otherwise.
    pub fn attempt(self) -> Attempt {
        let status = match &self {
            Self::Api { code, .. } => Some(*code),
            _ => None,
        };
        let retry = match &self {
            Self::Api { code, .. } => matches!(code, 408 | 409 | 429) || *code >= 500,
            Self::Transport { .. } | Self::TimedOut { .. } | Self::Conflict { .. } => true,
            Self::Credentials(_)
            | Self::HpaInTheWay { .. }
            | Self::NoHpa { .. }
            | Self::Malformed { .. } => false,
        };
        let body = match &self {
            Self::Api { message, .. } => message.clone(),
            _ => String::new(),
        };
        let error = self.to_string();
        if retry {
            Attempt::Retry {
                error,
                status,
                retry_after: None,
            }
        } else {
            Attempt::Final {
                error,
                status,
                body,
            }
        }
    }
}

/// A target's Kubernetes platform: its configuration and a client made at first use (and
/// again after a failure to make one). Shared by the outbox worker, which delivers, and the
/// target's loop, which reads the running count.
pub struct Kubernetes {
    config: KubernetesConfig,
    timeout: Duration,
    client: OnceCell<Client>,
}

impl fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kubernetes")
            .field("config", &self.config)
            .field("timeout", &self.timeout)
            .field("connected", &self.client.initialized())
            .finish()
    }
}

impl Kubernetes {
    /// The platform of `config`; each request to the API server times out after `timeout`.
    pub fn new(config: KubernetesConfig, timeout: Duration) -> Self {
        Self {
            config,
            timeout,
            client: OnceCell::new(),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &KubernetesConfig {
        &self.config
    }

    async fn client(&self) -> Result<Client, KubeError> {
        self.client
            .get_or_try_init(|| connect(&self.config.credentials, self.timeout))
            .await
            .cloned()
    }

    fn scale_api(&self, client: Client) -> Api<DynamicObject> {
        let r = &self.config.resource;
        let (group, version) = r.group_version();
        let gvk = GroupVersionKind::gvk(group, version, &r.kind);
        Api::namespaced_with(client, &self.config.namespace, &ApiResource::from_gvk(&gvk))
    }

    fn hpa_api(&self, client: Client) -> Api<HorizontalPodAutoscaler> {
        Api::namespaced(client, &self.config.namespace)
    }

    /// `VERB what` for errors.
    fn call(&self, verb: &str, what: &str) -> String {
        format!("{verb} {what} in namespace `{}`", self.config.namespace)
    }

    fn scale_path(&self) -> String {
        let r = &self.config.resource;
        format!("{}/{}/scale", r.kind, r.name)
    }

    /// The count running (the scale subresource's `status.replicas`). In `replicas` mode,
    /// an HPA that targets the resource is an error ([`KubeError::HpaInTheWay`]); in
    /// `hpa-floor` mode without a configured `hpa`, finding none is ([`KubeError::NoHpa`]).
    pub async fn running(&self) -> Result<u32, KubeError> {
        let client = self.client().await?;
        match (self.config.mode, &self.config.hpa) {
            (KubernetesMode::Replicas, _) => {
                if let Some(hpa) = self.find_hpa(&client).await? {
                    return Err(self.hpa_in_the_way(hpa));
                }
            }
            (KubernetesMode::HpaFloor, None) => {
                if self.find_hpa(&client).await?.is_none() {
                    return Err(self.no_hpa());
                }
            }
            (KubernetesMode::HpaFloor, Some(_)) => {}
        }
        let what = self.call("GET", &self.scale_path());
        let scale = self
            .scale_api(client)
            .get_scale(&self.config.resource.name)
            .await
            .map_err(|e| api_error(&what, self.timeout, e))?;
        let replicas = scale
            .status
            .map(|s| s.replicas)
            .ok_or(KubeError::Malformed {
                what,
                field: "status.replicas",
            })?;
        Ok(u32::try_from(replicas).unwrap_or(0))
    }

    /// One attempt at a scale action's `body` (its `to` is the count asked for).
    pub async fn attempt(&self, body: &[u8]) -> Attempt {
        let to = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|b| b["to"].as_u64())
            .and_then(|n| u32::try_from(n).ok());
        let Some(to) = to else {
            return Attempt::Final {
                error: "not a scale action: the body has no count `to`".to_owned(),
                status: None,
                body: String::new(),
            };
        };
        match self.scale_to(to).await {
            Ok(()) => Attempt::Success(Some(200)),
            Err(e) => e.attempt(),
        }
    }

    /// Asks for `to` replicas: the scale subresource's `spec.replicas` (`replicas`), or the
    /// HPA's `minReplicas` (`hpa-floor`).
    pub async fn scale_to(&self, to: u32) -> Result<(), KubeError> {
        let client = self.client().await?;
        match self.config.mode {
            KubernetesMode::Replicas => self.set_replicas(client, to).await,
            KubernetesMode::HpaFloor => self.set_floor(client, to).await.map(|_| ()),
        }
    }

    /// `hpa-floor` mode: gives the HPA its floor back (the target's `min_replicas`, within
    /// the HPA's `maxReplicas`) and returns it; `None` in `replicas` mode.
    pub async fn release(&self) -> Result<Option<u32>, KubeError> {
        if self.config.mode != KubernetesMode::HpaFloor {
            return Ok(None);
        }
        let client = self.client().await?;
        self.set_floor(client, self.config.restore_min)
            .await
            .map(Some)
    }

    async fn set_replicas(&self, client: Client, to: u32) -> Result<(), KubeError> {
        if let Some(hpa) = self.find_hpa(&client).await? {
            return Err(self.hpa_in_the_way(hpa));
        }
        let api = self.scale_api(client);
        let name = &self.config.resource.name;
        let path = self.scale_path();
        let params = patch_params();
        for _ in 0..CONFLICT_ATTEMPTS {
            let what = self.call("GET", &path);
            let scale = api
                .get_scale(name)
                .await
                .map_err(|e| api_error(&what, self.timeout, e))?;
            let version = scale
                .metadata
                .resource_version
                .ok_or(KubeError::Malformed {
                    what,
                    field: "metadata.resourceVersion",
                })?;
            let patch = json!({
                "metadata": { "resourceVersion": version },
                "spec": { "replicas": to },
            });
            let what = self.call("PATCH", &path);
            match api.patch_scale(name, &params, &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(()),
                Err(e) => match api_error(&what, self.timeout, e) {
                    KubeError::Api { code: 409, .. } => continue,
                    e => return Err(e),
                },
            }
        }
        Err(KubeError::Conflict {
            what: self.call("PATCH", &path),
        })
    }

    /// Patches the HPA's `minReplicas` to `to` within its `maxReplicas`; returns the floor set.
    async fn set_floor(&self, client: Client, to: u32) -> Result<u32, KubeError> {
        let api = self.hpa_api(client.clone());
        let name = match &self.config.hpa {
            Some(name) => name.clone(),
            None => self.find_hpa(&client).await?.ok_or_else(|| self.no_hpa())?,
        };
        let path = format!("HorizontalPodAutoscaler/{name}");
        let params = patch_params();
        for _ in 0..CONFLICT_ATTEMPTS {
            let what = self.call("GET", &path);
            let hpa = api
                .get(&name)
                .await
                .map_err(|e| api_error(&what, self.timeout, e))?;
            let version = hpa
                .metadata
                .resource_version
                .ok_or_else(|| KubeError::Malformed {
                    what: what.clone(),
                    field: "metadata.resourceVersion",
                })?;
            let max = hpa
                .spec
                .map(|s| u32::try_from(s.max_replicas).unwrap_or(1))
                .ok_or(KubeError::Malformed {
                    what,
                    field: "spec.maxReplicas",
                })?;
            let floor = to.clamp(1, max.max(1));
            let patch = json!({
                "metadata": { "resourceVersion": version },
                "spec": { "minReplicas": floor },
            });
            let what = self.call("PATCH", &path);
            match api.patch(&name, &params, &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(floor),
                Err(e) => match api_error(&what, self.timeout, e) {
                    KubeError::Api { code: 409, .. } => continue,
                    e => return Err(e),
                },
            }
        }
        Err(KubeError::Conflict {
            what: self.call("PATCH", &path),
        })
    }

    /// The name of an HPA in the namespace whose `scaleTargetRef` names the resource (the
    /// first by name), if any.
    async fn find_hpa(&self, client: &Client) -> Result<Option<String>, KubeError> {
        let what = self.call("LIST", "HorizontalPodAutoscalers");
        let list = self
            .hpa_api(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error(&what, self.timeout, e))?;
        let r = &self.config.resource;
        let (group, _) = r.group_version();
        let mut names: Vec<String> = list
            .items
            .into_iter()
            .filter(|h| {
                h.spec.as_ref().is_some_and(|s| {
                    let t = &s.scale_target_ref;
                    let same_group = t
                        .api_version
                        .as_deref()
                        .is_none_or(|v| v.split_once('/').map_or("", |(g, _)| g) == group);
                    t.kind == r.kind && t.name == r.name && same_group
                })
            })
            .filter_map(|h| h.metadata.name)
            .collect();
        names.sort();
        Ok(names.into_iter().next())
    }

    fn no_hpa(&self) -> KubeError {
        KubeError::NoHpa {
            namespace: self.config.namespace.clone(),
            resource: self.config.resource.to_string(),
        }
    }

    fn hpa_in_the_way(&self, hpa: String) -> KubeError {
        KubeError::HpaInTheWay {
            hpa,
            namespace: self.config.namespace.clone(),
            resource: self.config.resource.to_string(),
        }
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// The client of `credentials`, each request bounded by `timeout`.
async fn connect(credentials: &Credentials, timeout: Duration) -> Result<Client, KubeError> {
    let mut config = match credentials {
        Credentials::InCluster => kube::Config::incluster().map_err(|e| {
            KubeError::Credentials(format!(
                "the pod's service account ({e}); outside a cluster set `kubeconfig`"
            ))
        })?,
        Credentials::Kubeconfig { path, context } => {
            let file = match path {
                Some(p) => Kubeconfig::read_from(p).map_err(|e| {
                    KubeError::Credentials(format!("kubeconfig {}: {e}", p.display()))
                })?,
                None => Kubeconfig::read()
                    .map_err(|e| KubeError::Credentials(format!("the default kubeconfig: {e}")))?,
            };
            let options = KubeConfigOptions {
                context: context.clone(),
                ..KubeConfigOptions::default()
            };
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| KubeError::Credentials(format!("kubeconfig: {e}")))?
        }
    };
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    // Already installed (by us or another client) is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::try_from(config).map_err(|e| KubeError::Credentials(format!("the client: {e}")))
}

/// What a timed-out call adds: a write (`PATCH …`) may have been applied.
fn may_apply(what: &str) -> &'static str {
    if what.starts_with("PATCH") {
        "; it may have been applied nonetheless (the next read of the object shows)"
    } else {
        ""
    }
}

/// A kube error on `what` as a [`KubeError`]: the API server's `Status`, a timeout after
/// `timeout`, or another transport error with its causes (the client's own message alone,
/// "client error (SendRequest)", says neither what happened nor whether it was sent).
fn api_error(what: &str, timeout: Duration, e: kube::Error) -> KubeError {
    match e {
        kube::Error::Api(status) => KubeError::Api {
            what: what.to_owned(),
            code: status.code,
            reason: status.reason.clone(),
            message: status.message.clone(),
        },
        e if timed_out(&e) => KubeError::TimedOut {
            what: what.to_owned(),
            after: timeout,
        },
        e => KubeError::Transport {
            what: what.to_owned(),
            error: causes(&e),
        },
    }
}

/// Whether `e` or one of its causes is a timeout.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        let io_timeout = c
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        let text = c.to_string().to_ascii_lowercase();
        if io_timeout || text.contains("timed out") || text.contains("deadline has elapsed") {
            return true;
        }
        cause = c.source();
    }
    false
}

/// `e` and its causes, each once, joined by `: `.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> KubeError {
        KubeError::Api {
            what: "PATCH Deployment/web/scale in namespace `shop`".into(),
            code,
            reason: "Forbidden".into(),
            message: "deployments.apps \"web\" is forbidden".into(),
        }
    }

    /// 403 and 404 are final with the server's message; conflicts, 429, 5xx and transport
    /// errors are retried; an HPA in the way is final.
    #[test]
    fn errors_become_attempts() {
        for code in [403, 404, 422] {
            match api(code).attempt() {
                Attempt::Final { status, body, .. } => {
                    assert_eq!(status, Some(code));
                    assert!(body.contains("forbidden"), "{body}");
                }
                a => panic!("{code}: {a:?}"),
            }
        }
        for code in [409, 429, 500, 503] {
            assert!(
                matches!(api(code).attempt(), Attempt::Retry { status: Some(c), .. } if c == code)
            );
        }
        let transport = KubeError::Transport {
            what: "GET".into(),
            error: "connection refused".into(),
        };
        assert!(matches!(transport.attempt(), Attempt::Retry { .. }));
        let hpa = KubeError::HpaInTheWay {
            hpa: "web".into(),
            namespace: "shop".into(),
            resource: "Deployment/web".into(),
        };
        match hpa.attempt() {
            Attempt::Final { error, .. } => assert!(error.contains("`web`"), "{error}"),
            a => panic!("{a:?}"),
        }
    }
}
