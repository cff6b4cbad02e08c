//! `[target.platform]` with `kind = "kubernetes"`: [`KubernetesConfig`], the resource whose
//! `scale` subresource prescale reads and sets (or whose HPA floor it raises), and where
//! its credentials come from.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::parse::{RawPlatform, RawScaleTarget};
use super::{ConfigError, Validator};

/// How prescale acts on a Kubernetes resource (`mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KubernetesMode {
    /// Set `spec.replicas` through the resource's `scale` subresource; refused while an
    /// HPA targets the same resource (the two would fight).
    #[default]
    Replicas,
    /// Leave replicas to the HPA that targets the resource (or KEDA's), and raise its
    /// `spec.minReplicas` to prescale's count, within its `maxReplicas`.
    HpaFloor,
}

impl KubernetesMode {
    /// The name, as configured.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replicas => "replicas",
            Self::HpaFloor => "hpa-floor",
        }
    }
}

impl fmt::Display for KubernetesMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resource with a `scale` subresource, as an HPA's `scaleTargetRef` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleTargetRef {
    /// `group/version` (`apps/v1`), or `v1` for the core group.
    pub api_version: String,
    /// E.g. `Deployment`, `StatefulSet`.
    pub kind: String,
    /// The object's name.
    pub name: String,
}

impl ScaleTargetRef {
    /// The API group (empty for the core group) and version.
    pub fn group_version(&self) -> (&str, &str) {
        self.api_version
            .split_once('/')
            .unwrap_or(("", self.api_version.as_str()))
    }
}

impl fmt::Display for ScaleTargetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// Where the API server and the credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`, the mounted token and CA).
    InCluster,
    /// A kubeconfig file (`None`: `KUBECONFIG` or `~/.kube/config`), at a context (`None`:
    /// its current context).
    Kubeconfig {
        /// The file.
        path: Option<PathBuf>,
        /// The context.
        context: Option<String>,
    },
}

/// A validated Kubernetes platform of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// The resource's namespace.
    pub namespace: String,
    /// The resource scaled.
    pub resource: ScaleTargetRef,
    /// Set replicas, or raise the HPA's floor.
    pub mode: KubernetesMode,
    /// The HPA whose floor is raised (`hpa-floor`); `None`: the one in the namespace whose
    /// `scaleTargetRef` names the resource.
    pub hpa: Option<String>,
    /// The floor given back to the HPA when prescale stops acting on the target: the
    /// target's `min_replicas` (at least 1, the HPA's own lowest).
    pub restore_min: u32,
    /// The API server and credentials.
    pub credentials: Credentials,
}

/// The `apiVersion` of the kinds that need none configured.
fn default_api_version(kind: &str) -> Option<&'static str> {
    match kind {
        "Deployment" | "StatefulSet" | "ReplicaSet" => Some("apps/v1"),
        "ReplicationController" => Some("v1"),
        _ => None,
    }
}

/// A DNS-1123 label or subdomain, as Kubernetes names are: lower-case letters, digits,
/// `-` and `.`, starting and ending with a letter or digit, at most 253 characters.
fn is_object_name(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && edge(s.chars().next())
        && edge(s.chars().last())
}

impl Validator<'_> {
    /// `[target.platform]` with `kind = "kubernetes"` (`key` is `target[NAME].platform`);
    /// `min_replicas` is the target's.
    pub(super) fn kubernetes(
        &self,
        key: &str,
        p: RawPlatform,
        min_replicas: u32,
    ) -> Result<KubernetesConfig, ConfigError> {
        let stray = [
            ("url", p.url.is_some()),
            ("secret_env", p.secret_env.is_some()),
            ("secret_file", p.secret_file.is_some()),
            ("previous_secret_env", p.previous_secret_env.is_some()),
            ("previous_secret_file", p.previous_secret_file.is_some()),
        ];
        if let Some((k, _)) = stray.iter().find(|(_, set)| *set) {
            return Err(self.err(
                format!("{key}.{k}"),
                "belongs to kind = \"webhook\"; expected namespace and deployment (or scale_target)",
            ));
        }
        let name = |k: &str, v: Option<String>| -> Result<String, ConfigError> {
            let v = v.ok_or_else(|| self.err(format!("{key}.{k}"), "missing"))?;
            if is_object_name(&v) {
                Ok(v)
            } else {
                Err(self.err(
                    format!("{key}.{k}"),
                    format!(
                        "`{v}` is not a Kubernetes name; expected lower-case letters, digits, `-` and `.`"
                    ),
                ))
            }
        };
        let namespace = name("namespace", p.namespace)?;
        let resource = self.scale_target(key, p.deployment, p.scale_target)?;
        let mode = p.mode.unwrap_or_default();
        let hpa = p.hpa.map(|h| name("hpa", Some(h))).transpose()?;
        if hpa.is_some() && mode == KubernetesMode::Replicas {
            return Err(self.err(
                format!("{key}.hpa"),
                "is set with mode = \"replicas\"; expected mode = \"hpa-floor\" (or no `hpa`)",
            ));
        }
        let credentials = match (p.kubeconfig, p.context) {
            (None, None) => Credentials::InCluster,
            (path, context) => Credentials::Kubeconfig {
                path: path.map(|p| self.relative(&p)),
                context,
            },
        };
        Ok(KubernetesConfig {
            namespace,
            resource,
            mode,
            hpa,
            restore_min: min_replicas.max(1),
            credentials,
        })
    }

    /// `deployment = "web"`, or `scale_target = { kind, name, api_version }`: one of them.
    fn scale_target(
        &self,
        key: &str,
        deployment: Option<String>,
        target: Option<RawScaleTarget>,
    ) -> Result<ScaleTargetRef, ConfigError> {
        let (kind, name, api_version, k) = match (deployment, target) {
            (Some(name), None) => ("Deployment".to_owned(), name, None, "deployment"),
            (None, Some(t)) => (t.kind, t.name, t.api_version, "scale_target.name"),
            (Some(_), Some(_)) => {
                return Err(self.err(
                    format!("{key}.scale_target"),
                    "is set together with `deployment`; expected one of them",
                ));
            }
            (None, None) => {
                return Err(self.err(
                    format!("{key}.deployment"),
                    "missing; expected the Deployment's name, or `scale_target = { kind, name }` \
                     for another resource with a scale subresource",
                ));
            }
        };
        if !is_object_name(&name) {
            return Err(self.err(
                format!("{key}.{k}"),
                format!(
                    "`{name}` is not a Kubernetes name; expected lower-case letters, digits, `-` and `.`"
                ),
            ));
        }
        if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(self.err(
                format!("{key}.scale_target.kind"),
                format!("`{kind}` is not a kind; expected e.g. `StatefulSet`"),
            ));
        }
        let api_version = match api_version {
            Some(v) if !v.is_empty() && v.split('/').count() <= 2 && !v.contains(' ') => v,
            Some(v) => {
                return Err(self.err(
                    format!("{key}.scale_target.api_version"),
                    format!("`{v}` is not an apiVersion; expected `group/version` or `v1`"),
                ));
            }
            None => default_api_version(&kind)
                .map(str::to_owned)
                .ok_or_else(|| {
                    self.err(
                        format!("{key}.scale_target.api_version"),
                        format!(
                            "missing; expected the apiVersion of kind `{kind}`, e.g. `apps/v1`"
                        ),
                    )
                })?,
        };
        Ok(ScaleTargetRef {
            api_version,
            kind,
            name,
        })
    }
}
