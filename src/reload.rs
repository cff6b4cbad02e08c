//! Reloading the configuration while serving (SIGHUP): what changed between the running
//! configuration and the file read again, what cannot change without a restart, and the
//! HTTP service that always answers with the newest router.
//!
//! [`crate::serve_reloading`] does the reload itself: the file is read and validated again;
//! a bad file, or one that changes what [`needs_restart`] names, is refused and logged and
//! the running configuration stays. Otherwise the target loops are stopped and started
//! again with the new configuration, over the same outbox, outbox worker and HTTP listener.
//! A target whose own table did not change keeps its state (series, memory, decisions,
//! pause); a changed or added one starts as after a restart (its model from the models
//! directory, the count last asked for from the outbox), keeping only its pause and last
//! delivery.

use axum::Router;
use axum::extract::Request;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::config::{ClusterConfig, Config, TargetConfig};

/// What a reload changes: targets added, removed and changed (by name, in file order),
/// and the other tables that changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Targets only in the new configuration.
    pub added: Vec<String>,
    /// Targets only in the running one.
    pub removed: Vec<String>,
    /// Targets in both whose table differs.
    pub changed: Vec<String>,
    /// Tables other than `[[target]]` that differ, e.g. `prometheus`, `server`.
    pub sections: Vec<&'static str>,
}

impl Changes {
    /// What changes from `old` to `new`. Secrets are not compared: they are read again at
    /// every reload and always apply, and a target whose only change is a rotated secret
    /// keeps its state.
    pub fn between(old: &Config, new: &Config) -> Self {
        let mut c = Self::default();
        for t in &new.targets {
            match old.target(&t.name) {
                None => c.added.push(t.name.clone()),
                Some(o) if !same_target(o, t) => c.changed.push(t.name.clone()),
                Some(_) => {}
            }
        }
        c.removed = old
            .targets
            .iter()
            .filter(|t| new.target(&t.name).is_none())
            .map(|t| t.name.clone())
            .collect();
        let sections: [(&'static str, bool); 6] = [
            ("prometheus", same(&old.prometheus, &new.prometheus)),
            ("discovery", same(&old.discovery, &new.discovery)),
            ("server", same(&old.server, &new.server)),
            ("forecast", same(&old.forecast, &new.forecast)),
            ("alertmanager", same(&old.alertmanager, &new.alertmanager)),
            ("budget", old.budget == new.budget),
        ];
        c.sections = sections
            .into_iter()
            .filter(|(_, same)| !same)
            .map(|(name, _)| name)
            .collect();
        c
    }

    /// Whether target `name` keeps its state across the reload (it is in both
    /// configurations and its table did not change).
    pub fn keeps(&self, name: &str) -> bool {
        !self.added.iter().chain(&self.changed).any(|n| n == name)
    }
}

/// Whether two targets are configured alike (secrets aside, see [`Changes::between`]).
pub fn same_target(a: &TargetConfig, b: &TargetConfig) -> bool {
    same(a, b)
}

/// Compares validated values through their `Debug` form, which shows every field but
/// secrets (the configuration types hold floats and secrets and are not `PartialEq`).
fn same<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// The keys whose change needs a restart, as `table.key`, with old and new values: the
/// listen addresses of the API and of the KEDA external scaler (the listeners stay open
/// across a reload), the state directory and
/// retention (the outbox stays open), `[delivery]` (the outbox worker keeps running) and
/// `[cluster]` (how this instance shares the fleet). Empty when the reload may go ahead.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |key: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{key} ({a} → {b})"));
        }
    };
    check(
        "[server] listen",
        old.server.listen.to_string(),
        new.server.listen.to_string(),
    );
    let keda = |c: &Config| {
        c.server
            .keda_listen
            .map_or("none".to_owned(), |a| a.to_string())
    };
    check("[server] keda_listen", keda(old), keda(new));
    check(
        "[state] dir",
        old.state.dir.display().to_string(),
        new.state.dir.display().to_string(),
    );
    check(
        "[state] retention",
        humantime::format_duration(old.state.retention).to_string(),
        humantime::format_duration(new.state.retention).to_string(),
    );
    if old.delivery != new.delivery {
        out.push("[delivery]".to_owned());
    }
    match (&old.cluster, &new.cluster) {
        (Some(a), Some(b)) => out.extend(cluster_changes(a, b)),
        (a, b) if a.is_some() != b.is_some() => out.push("[cluster]".to_owned()),
        _ => {}
    }
    out
}

/// The keys of `[cluster]` that differ, compared by value: the password and the client
/// key as secrets (named, never shown), the CA and the client certificate by their
/// contents, so that a file replaced at the same path counts.
fn cluster_changes(a: &ClusterConfig, b: &ClusterConfig) -> Vec<String> {
    let auth = |c: &ClusterConfig| c.auth.as_ref().map(|a| a.username.clone());
    let password = |c: &ClusterConfig| c.auth.as_ref().map(|a| a.password.clone());
    let ca = |c: &ClusterConfig| c.tls.as_ref().map(|t| t.ca_pem.clone());
    let identity = |c: &ClusterConfig| c.tls.as_ref().and_then(|t| t.identity.clone());
    let keys = [
        ("etcd", a.etcd != b.etcd),
        ("name", a.name != b.name),
        ("advertise", a.advertise != b.advertise),
        ("lease_ttl", a.lease_ttl != b.lease_ttl),
        ("prefix", a.prefix != b.prefix),
        ("username", auth(a) != auth(b)),
        ("password (the secret changed)", password(a) != password(b)),
        ("ca_file (its contents changed)", ca(a) != ca(b)),
        (
            "cert_file/key_file (their contents changed)",
            identity(a) != identity(b),
        ),
    ];
    keys.into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(key, _)| format!("[cluster] {key}"))
        .collect()
}

/// A service that hands every request to the router last sent on `current`, so that a
/// reload can replace the API (its store, its token) without closing the listener. A
/// request already being answered finishes with the router it started with.
pub fn current_router(current: watch::Receiver<Router>) -> Router {
    let service = tower::service_fn(move |req: Request| {
        let router = current.borrow().clone();
        async move { router.oneshot(req).await }
    });
    Router::new().fallback_service(service)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str, targets: &[(&str, u32)]) -> Config {
        let mut text = format!(
            "[prometheus]\nurl = \"http://127.0.0.1:9090\"\n[server]\nlisten = \"127.0.0.1:8080\"\n{extra}\n"
        );
        for (name, max) in targets {
            text.push_str(&format!(
                "[[target]]\nname = \"{name}\"\nrequest_rate = \"up\"\ncapacity_rps = 1\nstartup = \"1m\"\nmax_replicas = {max}\n"
            ));
        }
        Config::parse(&text, Path::new("/etc/prescale.toml")).expect("a valid configuration")
    }

    #[test]
    fn changes_name_targets_added_removed_and_changed() {
        let old = config("", &[("web", 10), ("api", 10), ("db", 5)]);
        let new = config(
            "[budget]\nmax_replicas = 20",
            &[("web", 10), ("api", 12), ("queue", 3)],
        );
        let c = Changes::between(&old, &new);
        assert_eq!(c.added, ["queue"]);
        assert_eq!(c.removed, ["db"]);
        assert_eq!(c.changed, ["api"]);
        assert_eq!(c.sections, ["budget"]);
        assert!(c.keeps("web") && !c.keeps("api") && !c.keeps("queue"));
        assert_eq!(Changes::between(&old, &old), Changes::default());
    }

    #[test]
    fn the_listen_address_state_delivery_and_cluster_need_a_restart() {
        let old = config("", &[("web", 10)]);
        assert!(needs_restart(&old, &config("", &[("web", 3)])).is_empty());
        let moved = config("[state]\ndir = \"/elsewhere\"", &[("web", 10)]);
        let found = needs_restart(&old, &moved);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("[state] dir") && found[0].contains("/elsewhere"));
        let mut listen = old.clone();
        listen.server.listen = "127.0.0.1:9999".parse().expect("address");
        assert!(needs_restart(&old, &listen)[0].contains("127.0.0.1:9999"));
        let mut keda = old.clone();
        keda.server.keda_listen = Some("127.0.0.1:9090".parse().expect("address"));
        assert_eq!(
            needs_restart(&old, &keda),
            ["[server] keda_listen (none → 127.0.0.1:9090)"]
        );
        let delivery = config("[delivery]\nmax_attempts = 2", &[("web", 10)]);
        assert_eq!(needs_restart(&old, &delivery), ["[delivery]"]);
        let cluster = config(
            "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nname = \"a\"",
            &[("web", 10)],
        );
        assert_eq!(needs_restart(&old, &cluster), ["[cluster]"]);
        assert_eq!(needs_restart(&cluster, &old), ["[cluster]"]);
    }

    /// `[cluster]` is compared by value: a new etcd password, or a new CA in the same file,
    /// needs a restart (their `Debug` text, which hides both, once let such a reload pass
    /// and apply nothing); the line names the key, never the secret.
    #[test]
    fn a_new_cluster_secret_or_ca_in_the_same_file_needs_a_restart() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (password, ca) = (dir.path().join("password"), dir.path().join("ca.pem"));
        let pem = |body: &str| {
            format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n")
        };
        let cluster = || {
            config(
                &format!(
                    "[cluster]\netcd = [\"https://127.0.0.1:2379\"]\nname = \"a\"\n\
                     username = \"prescale\"\npassword_file = \"{}\"\nca_file = \"{}\"",
                    password.display(),
                    ca.display()
                ),
                &[("web", 10)],
            )
        };
        std::fs::write(&password, "first-secret").expect("write");
        std::fs::write(&ca, pem("Zmlyc3Q=")).expect("write");
        let old = cluster();
        assert!(needs_restart(&old, &cluster()).is_empty(), "the same files");
        std::fs::write(&password, "second-secret").expect("write");
        let rotated = needs_restart(&old, &cluster());
        assert_eq!(rotated, ["[cluster] password (the secret changed)"]);
        std::fs::write(&password, "first-secret").expect("write");
        std::fs::write(&ca, pem("c2Vjb25k")).expect("write");
        assert_eq!(
            needs_restart(&old, &cluster()),
            ["[cluster] ca_file (its contents changed)"]
        );
        std::fs::write(&password, "second-secret").expect("write");
        let both = needs_restart(&old, &cluster()).join(", ");
        assert!(!both.contains("second-secret"), "{both}");
    }
}
