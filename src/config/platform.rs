//! `[target.platform]`: a signed webhook (the default) or, with `kind = "kubernetes"`,
//! [`KubernetesConfig`]: the resource whose `scale` subresource prescale reads and sets (or
//! whose HPA floor it raises), and where its credentials come from.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::parse::{RawPlatform, RawScaleTarget, RawWebhook};
use super::{ConfigError, Validator, WebhookConfig};

/// Where a target's scale actions go: a webhook or Kubernetes.
pub(super) type PlatformConfig = (Option<WebhookConfig>, Option<KubernetesConfig>);

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
    /// `[target.platform]`: a webhook (default) or Kubernetes.
    pub(super) fn platform(
        &self,
        key: &str,
        p: RawPlatform,
        min_replicas: u32,
    ) -> Result<PlatformConfig, ConfigError> {
        match p.kind.as_deref().unwrap_or("webhook") {
            "webhook" => Ok((Some(self.webhook_platform(key, p)?), None)),
            "kubernetes" => Ok((None, Some(self.kubernetes(key, p, min_replicas)?))),
            other => Err(self.err(
                format!("{key}.kind"),
                format!("`{other}` is not a platform kind; expected `webhook` or `kubernetes`"),
            )),
        }
    }

    /// `[target.platform]` with `kind = "webhook"`: no Kubernetes keys.
    fn webhook_platform(&self, key: &str, p: RawPlatform) -> Result<WebhookConfig, ConfigError> {
        let stray = [
            ("namespace", p.namespace.is_some()),
            ("deployment", p.deployment.is_some()),
            ("scale_target", p.scale_target.is_some()),
            ("mode", p.mode.is_some()),
            ("hpa", p.hpa.is_some()),
            ("kubeconfig", p.kubeconfig.is_some()),
            ("context", p.context.is_some()),
        ];
        if let Some((k, _)) = stray.iter().find(|(_, set)| *set) {
            return Err(self.err(
                format!("{key}.{k}"),
                "belongs to kind = \"kubernetes\"; expected webhook keys (url, secret_env, secret_file)",
            ));
        }
        let url = p.url.ok_or_else(|| {
            self.err(
                format!("{key}.url"),
                "missing; expected the webhook URL (or kind = \"kubernetes\")",
            )
        })?;
        let w = RawWebhook {
            url,
            secret_env: p.secret_env,
            secret_file: p.secret_file,
            previous_secret_env: p.previous_secret_env,
            previous_secret_file: p.previous_secret_file,
        };
        self.webhook(key, w)
    }

    /// `[target.platform]` with `kind = "kubernetes"` (`key` is `target[NAME].platform`);
    /// `min_replicas` is the target's.
    fn kubernetes(
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    const TARGET: &str = r#"
[prometheus]
url = "http://127.0.0.1:9090"

[[target]]
name = "web"
request_rate = "sum(rate(http_requests_total[5m]))"
capacity_rps = 150
startup = "3m"
min_replicas = 0
max_replicas = 40

[target.platform]
kind = "kubernetes"
namespace = "shop"
"#;

    fn check(platform: &str, expected: Result<KubernetesConfig, &[&str]>) {
        let text = format!("{TARGET}{platform}\n");
        let parsed = Config::parse(&text, Path::new("/etc/prescale/p.toml"));
        match (parsed, expected) {
            (Ok(c), Ok(want)) => {
                let t = &c.targets[0];
                assert_eq!(t.kubernetes.as_ref(), Some(&want), "{platform}");
                assert!(t.platform.is_none() && t.reads_scale() && t.observes_replicas());
            }
            (Err(e), Err(parts)) => {
                let e = e.to_string();
                for p in parts {
                    assert!(e.contains(p), "{platform}: `{e}` lacks `{p}`");
                }
            }
            (got, want) => panic!("{platform}: got {got:?}, expected {want:?}"),
        }
    }

    fn web(mode: KubernetesMode, hpa: Option<&str>, credentials: Credentials) -> KubernetesConfig {
        KubernetesConfig {
            namespace: "shop".into(),
            resource: ScaleTargetRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: "web".into(),
            },
            mode,
            hpa: hpa.map(str::to_owned),
            restore_min: 1,
            credentials,
        }
    }

    #[test]
    fn kubernetes_platforms() {
        check(
            "deployment = \"web\"",
            Ok(web(KubernetesMode::Replicas, None, Credentials::InCluster)),
        );
        check(
            "deployment = \"web\"\nmode = \"hpa-floor\"\nhpa = \"web-cpu\"\nkubeconfig = \"kc\"\ncontext = \"prod\"",
            Ok(web(
                KubernetesMode::HpaFloor,
                Some("web-cpu"),
                Credentials::Kubeconfig {
                    path: Some("/etc/prescale/kc".into()),
                    context: Some("prod".into()),
                },
            )),
        );
        let mut db = web(
            KubernetesMode::Replicas,
            None,
            Credentials::Kubeconfig {
                path: None,
                context: Some("prod".into()),
            },
        );
        db.resource.kind = "StatefulSet".into();
        db.resource.name = "db".into();
        check(
            "scale_target = { kind = \"StatefulSet\", name = \"db\" }\ncontext = \"prod\"",
            Ok(db),
        );
    }

    #[test]
    fn kubernetes_errors_name_the_key() {
        let cases: &[(&str, &[&str])] = &[
            ("", &["target[web].platform.deployment", "missing"]),
            (
                "deployment = \"Web\"",
                &["target[web].platform.deployment", "not a Kubernetes name"],
            ),
            (
                "deployment = \"web\"\nscale_target = { kind = \"StatefulSet\", name = \"db\" }",
                &["target[web].platform.scale_target", "one of them"],
            ),
            (
                "scale_target = { kind = \"Rollout\", name = \"web\" }",
                &["target[web].platform.scale_target.api_version", "Rollout"],
            ),
            (
                "deployment = \"web\"\nhpa = \"web\"",
                &["target[web].platform.hpa", "hpa-floor"],
            ),
            (
                "deployment = \"web\"\nurl = \"http://x/\"",
                &["target[web].platform.url", "webhook"],
            ),
            (
                "deployment = \"web\"\nmode = \"floor\"",
                &["floor", "hpa-floor"],
            ),
        ];
        for (platform, parts) in cases {
            check(platform, Err(parts));
        }
        let text = TARGET.replace(
            "kind = \"kubernetes\"\nnamespace = \"shop\"",
            "kind = \"k8s\"",
        );
        let e = Config::parse(&text, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("target[web].platform.kind") && e.contains("kubernetes"),
            "{e}"
        );
        let text = TARGET.replace(
            "kind = \"kubernetes\"",
            "url = \"http://127.0.0.1:1/\"\nsecret_env = \"X\"",
        );
        let e = Config::parse(&text, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("target[web].platform.namespace") && e.contains("kubernetes"),
            "{e}"
        );
    }
}
