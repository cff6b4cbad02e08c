//! A stand-in for the Kubernetes API server, because no real API server can run on the
//! machines these tests run on. It follows the published API contract for the parts
//! prescale calls, and nothing more:
//!
//! - paths: `/apis/{group}/{version}/namespaces/{ns}/{resource}[/{name}[/{subresource}]]`
//!   (and `/api/v1/…` for the core group);
//! - the `scale` subresource of Deployments (and StatefulSets): `GET` answers an
//!   `autoscaling/v1` `Scale` (`apiVersion`, `kind`, `metadata.resourceVersion`,
//!   `spec.replicas`, `status.replicas`, `status.selector`); `PATCH` applies a JSON merge
//!   patch to `spec.replicas`;
//! - `autoscaling/v2` HorizontalPodAutoscalers: `GET` one, `LIST` (a
//!   `HorizontalPodAutoscalerList`, whose items carry no `apiVersion`/`kind`, as the API
//!   server's), `PATCH` (merge patch);
//! - optimistic concurrency: every write bumps the object's `metadata.resourceVersion`,
//!   and a patch carrying another `metadata.resourceVersion` is refused with 409 Conflict;
//! - errors are `Status` objects (`kind: Status`, `status: Failure`, `reason`, `message`
//!   worded as the API server words them, `details`, `code`): 404 for a missing object,
//!   403 for a verb the test denies, 409 for a stale `resourceVersion`, 415 for a patch
//!   that is not `application/merge-patch+json`; and, stricter than a real server, 400 for
//!   a patch without `fieldManager=prescale`, so that a test fails when it is missing.
//!
//! There is no controller: a Deployment's `status.replicas` follows its `spec.replicas`
//! at once. Every request is recorded as a [`Call`] (verb, group, resource, subresource,
//! content type, `fieldManager`, status), which the RBAC test compares with the Role of
//! `deploy/kubernetes/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::http::Server;

/// One request served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `get`, `list` or `patch` (RBAC's verbs).
    pub verb: String,
    /// The API group (`apps`, `autoscaling`; empty for the core group).
    pub group: String,
    /// The resource, with its subresource as RBAC names it: `deployments/scale`.
    pub resource: String,
    /// The namespace.
    pub namespace: String,
    /// The object's name (none for a list).
    pub name: Option<String>,
    /// The `Content-Type` of a patch.
    pub content_type: Option<String>,
    /// The `fieldManager` query parameter.
    pub field_manager: Option<String>,
    /// The answer's status.
    pub status: u16,
}

/// Objects by (resource, namespace, name), e.g. `("deployments", "shop", "web")`.
type Key = (String, String, String);

#[derive(Default)]
struct Cluster {
    objects: BTreeMap<Key, Value>,
    /// The last resourceVersion given out (one counter for all objects, as etcd's).
    version: u64,
    calls: Vec<Call>,
    /// (verb, resource as RBAC names it) answered 403.
    denied: BTreeSet<(String, String)>,
    /// Objects another writer changes right after each of the next N reads.
    interfere: BTreeMap<Key, u32>,
    /// (verb, resource as RBAC names it) applied but never answered: a server (or a
    /// network) that stalls after the write, so that the client times out.
    stalled: BTreeSet<(String, String)>,
}

impl Cluster {
    fn bump(&mut self, key: &Key) {
        self.version += 1;
        let v = self.version.to_string();
        if let Some(o) = self.objects.get_mut(key) {
            o["metadata"]["resourceVersion"] = json!(v);
        }
    }
}

/// The stand-in API server on a free 127.0.0.1 port. Stopped on drop.
pub struct KubeApi {
    server: Server,
    cluster: Arc<Mutex<Cluster>>,
}

impl KubeApi {
    /// An empty cluster.
    pub fn start() -> Self {
        let cluster = Arc::new(Mutex::new(Cluster::default()));
        let router = Router::new().fallback(serve).with_state(cluster.clone());
        Self {
            server: Server::start(router),
            cluster,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Writes a kubeconfig whose context `stand-in` (the current one) points at this
    /// server with a bearer token, into `dir`; returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: stand-in\nclusters:\n\
             - name: stand-in\n  cluster:\n    server: {}\ncontexts:\n\
             - name: stand-in\n  context:\n    cluster: stand-in\n    user: prescale\n    namespace: shop\n\
             users:\n- name: prescale\n  user:\n    token: test-token\n",
            self.url()
        );
        let path = dir.join("kubeconfig");
        std::fs::write(&path, text).expect("write the kubeconfig");
        path
    }

    fn insert(&self, resource: &str, namespace: &str, name: &str, mut object: Value) {
        let mut c = self.lock();
        c.version += 1;
        object["metadata"] = json!({
            "name": name,
            "namespace": namespace,
            "uid": format!("uid-{resource}-{name}"),
            "resourceVersion": c.version.to_string(),
            "creationTimestamp": "2026-01-01T00:00:00Z",
        });
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        c.objects.insert(key, object);
    }

    /// Adds a Deployment running `replicas`.
    pub fn add_deployment(&self, namespace: &str, name: &str, replicas: u32) {
        self.add_scalable("deployments", "Deployment", namespace, name, replicas);
    }

    /// Adds an `apps/v1` object of `kind` (`resource`, e.g. `statefulsets`) with a `scale`
    /// subresource, running `replicas`.
    pub fn add_scalable(
        &self,
        resource: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        replicas: u32,
    ) {
        let object = json!({
            "apiVersion": "apps/v1",
            "kind": kind,
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": { "app": name } },
            },
            "status": { "replicas": replicas },
        });
        self.insert(resource, namespace, name, object);
    }

    /// Adds an `autoscaling/v2` HPA named `name` scaling Deployment `target`.
    pub fn add_hpa(&self, namespace: &str, name: &str, target: &str, min: u32, max: u32) {
        let object = json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "spec": {
                "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": target },
                "minReplicas": min,
                "maxReplicas": max,
                "metrics": [{
                    "type": "Resource",
                    "resource": { "name": "cpu", "target": { "type": "Utilization", "averageUtilization": 70 } },
                }],
            },
            "status": { "currentReplicas": min, "desiredReplicas": min },
        });
        self.insert("horizontalpodautoscalers", namespace, name, object);
    }

    /// A Deployment's `spec.replicas`.
    pub fn replicas(&self, namespace: &str, name: &str) -> Option<u64> {
        let key = (
            "deployments".to_owned(),
            namespace.to_owned(),
            name.to_owned(),
        );
        self.lock().objects.get(&key)?["spec"]["replicas"].as_u64()
    }

    /// Another writer (a person with `kubectl scale`) sets a Deployment's `spec.replicas`
    /// and, as there is no controller, its `status.replicas`; the resourceVersion moves on.
    pub fn set_replicas(&self, namespace: &str, name: &str, replicas: u32) {
        let key = (
            "deployments".to_owned(),
            namespace.to_owned(),
            name.to_owned(),
        );
        let mut c = self.lock();
        let o = c.objects.get_mut(&key).expect("the Deployment exists");
        o["spec"]["replicas"] = json!(replicas);
        o["status"]["replicas"] = json!(replicas);
        c.bump(&key);
    }

    /// An HPA's `spec.minReplicas`.
    pub fn hpa_min(&self, namespace: &str, name: &str) -> Option<u64> {
        let key = (
            "horizontalpodautoscalers".to_owned(),
            namespace.to_owned(),
            name.to_owned(),
        );
        self.lock().objects.get(&key)?["spec"]["minReplicas"].as_u64()
    }

    /// Answers 403 to `verb` on `resource` (as RBAC names it, e.g. `deployments/scale`).
    pub fn deny(&self, verb: &str, resource: &str) {
        self.lock()
            .denied
            .insert((verb.to_owned(), resource.to_owned()));
    }

    /// Applies `verb` on `resource` (as RBAC names it) and never answers it, as an API
    /// server whose answer is lost after the write: the client times out.
    pub fn stall(&self, verb: &str, resource: &str) {
        self.lock()
            .stalled
            .insert((verb.to_owned(), resource.to_owned()));
    }

    /// Answers `verb` on `resource` again (see [`KubeApi::stall`]).
    pub fn unstall(&self, verb: &str, resource: &str) {
        self.lock()
            .stalled
            .remove(&(verb.to_owned(), resource.to_owned()));
    }

    /// Another writer changes the object right after each of the next `reads` reads of
    /// it, so a patch made from that read carries a stale resourceVersion (409).
    pub fn interfere(&self, resource: &str, namespace: &str, name: &str, reads: u32) {
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        self.lock().interfere.insert(key, reads);
    }

    /// Every request served, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }
}

/// A `Status` object, as the API server answers an error.
fn status(code: StatusCode, reason: &str, message: String, details: Value) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

/// What a path names.
struct Target {
    group: String,
    namespace: String,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
        ["api", _version, rest @ ..] => (String::new(), rest),
        _ => return None,
    };
    match rest {
        ["namespaces", ns, resource, more @ ..] if more.len() <= 2 => Some(Target {
            group,
            namespace: (*ns).to_owned(),
            resource: (*resource).to_owned(),
            name: more.first().map(|s| (*s).to_owned()),
            subresource: more.get(1).map(|s| (*s).to_owned()),
        }),
        _ => None,
    }
}

async fn serve(
    State(cluster): State<Arc<Mutex<Cluster>>>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(t) = parse_path(uri.path()) else {
        let msg = format!(
            "the server could not find the requested resource ({})",
            uri.path()
        );
        return status(StatusCode::NOT_FOUND, "NotFound", msg, json!({}));
    };
    let verb = match (&method, &t.name) {
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::PATCH, Some(_)) => "patch",
        _ => "unsupported",
    };
    let rbac_resource = match &t.subresource {
        Some(sub) => format!("{}/{sub}", t.resource),
        None => t.resource.clone(),
    };
    let field_manager = query.as_deref().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "fieldManager")
            .map(|(_, v)| v.into_owned())
    });
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (response, stalled) = {
        let mut c = cluster.lock().unwrap_or_else(|e| e.into_inner());
        let response = answer(
            &mut c,
            &t,
            verb,
            &rbac_resource,
            &content_type,
            &field_manager,
            &body,
        );
        let stalled = c
            .stalled
            .contains(&(verb.to_owned(), rbac_resource.clone()));
        c.calls.push(Call {
            verb: verb.to_owned(),
            group: t.group.clone(),
            resource: rbac_resource,
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            content_type: (verb == "patch").then_some(content_type).flatten(),
            field_manager,
            status: response.status().as_u16(),
        });
        (response, stalled)
    };
    if stalled {
        // Never answered; dropping the server closes the connection.
        std::future::pending::<()>().await;
    }
    response
}

/// `deployments.apps`, as messages name a resource.
fn qualified(t: &Target) -> String {
    if t.group.is_empty() {
        t.resource.clone()
    } else {
        format!("{}.{}", t.resource, t.group)
    }
}

fn answer(
    c: &mut Cluster,
    t: &Target,
    verb: &str,
    rbac_resource: &str,
    content_type: &Option<String>,
    field_manager: &Option<String>,
    body: &[u8],
) -> Response {
    if c.denied
        .contains(&(verb.to_owned(), rbac_resource.to_owned()))
    {
        let msg = format!(
            "{} {}is forbidden: User \"system:serviceaccount:prescale:prescale\" cannot {verb} \
             resource \"{rbac_resource}\" in API group \"{}\" in the namespace \"{}\"",
            qualified(t),
            t.name
                .as_deref()
                .map_or(String::new(), |n| format!("\"{n}\" ")),
            t.group,
            t.namespace
        );
        let details = json!({ "name": t.name, "group": t.group, "kind": t.resource });
        return status(StatusCode::FORBIDDEN, "Forbidden", msg, details);
    }
    let Some(name) = t.name.clone() else {
        return list(c, t, verb);
    };
    let key = (t.resource.clone(), t.namespace.clone(), name.clone());
    let details = json!({ "name": name, "group": t.group, "kind": t.resource });
    if !c.objects.contains_key(&key) {
        let msg = format!("{} \"{name}\" not found", qualified(t));
        return status(StatusCode::NOT_FOUND, "NotFound", msg, details);
    }
    match verb {
        "get" => {
            let shown = view(&c.objects[&key], t);
            if let Some(n) = c.interfere.get_mut(&key).filter(|n| **n > 0) {
                *n -= 1;
                c.bump(&key);
            }
            (StatusCode::OK, axum::Json(shown)).into_response()
        }
        "patch" => {
            if content_type.as_deref() != Some("application/merge-patch+json") {
                let msg = format!(
                    "the body of the request was in an unknown format - accepted media types include: \
                     application/merge-patch+json (stand-in: got {content_type:?})"
                );
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    msg,
                    details,
                );
            }
            if field_manager.as_deref() != Some("prescale") {
                let msg =
                    format!("stand-in: expected fieldManager=prescale, got {field_manager:?}");
                return status(StatusCode::BAD_REQUEST, "BadRequest", msg, details);
            }
            patch(c, t, &key, body, details)
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".to_owned(),
            details,
        ),
    }
}

fn list(c: &Cluster, t: &Target, verb: &str) -> Response {
    if verb != "list" || t.resource != "horizontalpodautoscalers" {
        let msg = "the server does not allow this method on the requested resource".to_owned();
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            msg,
            json!({}),
        );
    }
    let items: Vec<Value> = c
        .objects
        .iter()
        .filter(|((r, ns, _), _)| *r == t.resource && *ns == t.namespace)
        .map(|(_, o)| {
            let mut item = o.clone();
            if let Some(fields) = item.as_object_mut() {
                fields.remove("apiVersion");
                fields.remove("kind");
            }
            item
        })
        .collect();
    let body = json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscalerList",
        "metadata": { "resourceVersion": c.version.to_string() },
        "items": items,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// The object as `t` shows it: itself, or its `Scale`.
fn view(object: &Value, t: &Target) -> Value {
    if t.subresource.as_deref() != Some("scale") {
        return object.clone();
    }
    let m = &object["metadata"];
    let app = object["spec"]["selector"]["matchLabels"]["app"]
        .as_str()
        .unwrap_or_default();
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": m["name"],
            "namespace": m["namespace"],
            "uid": m["uid"],
            "resourceVersion": m["resourceVersion"],
            "creationTimestamp": m["creationTimestamp"],
        },
        "spec": { "replicas": object["spec"]["replicas"] },
        "status": { "replicas": object["status"]["replicas"], "selector": format!("app={app}") },
    })
}

fn patch(c: &mut Cluster, t: &Target, key: &Key, body: &[u8], details: Value) -> Response {
    let Ok(mut patch) = serde_json::from_slice::<Value>(body) else {
        let msg = "error decoding patch: invalid JSON".to_owned();
        return status(StatusCode::BAD_REQUEST, "BadRequest", msg, details);
    };
    let current = c.objects[key]["metadata"]["resourceVersion"].clone();
    let asked = patch["metadata"]["resourceVersion"].clone();
    if !asked.is_null() && asked != current {
        let msg = format!(
            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please \
             apply your changes to the latest version and try again",
            qualified(t),
            key.2
        );
        return status(StatusCode::CONFLICT, "Conflict", msg, details);
    }
    if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    let object = c.objects.get_mut(key).expect("checked above");
    if t.subresource.as_deref() == Some("scale") {
        // A patch of the Scale: only `spec.replicas` goes through to the Deployment.
        if let Some(n) = patch["spec"]["replicas"].as_u64() {
            object["spec"]["replicas"] = json!(n);
            object["status"]["replicas"] = json!(n);
        }
    } else {
        json_patch::merge(object, &patch);
    }
    c.bump(key);
    let shown = view(&c.objects[key], t);
    (StatusCode::OK, axum::Json(shown)).into_response()
}
