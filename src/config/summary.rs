//! The human summary of a validated configuration that `check-config` prints.

use super::{Config, Mode, TargetConfig, redacted};

/// A human summary of a validated configuration, as `check-config` prints it.
pub fn summary(config: &Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let prom = config
        .prometheus
        .as_ref()
        .map_or("not configured".to_owned(), |p| redacted(&p.url));
    let _ = writeln!(s, "prometheus: {prom}");
    let _ = writeln!(s, "listen: {}", config.server.listen);
    if let Some(keda) = config.server.keda_listen {
        let _ = writeln!(s, "keda external scaler: {keda}");
    }
    let _ = writeln!(s, "state: {}", config.state.dir.display());
    if let Some(am) = &config.alertmanager {
        let _ = writeln!(s, "alertmanager: {}", redacted(&am.url));
    }
    if let Some(c) = &config.cluster {
        let _ = writeln!(
            s,
            "cluster: instance {} (advertised at {}) over {} etcd endpoint(s), prefix {}, lease {}",
            c.name,
            c.advertise,
            c.etcd.len(),
            c.prefix,
            humantime::format_duration(c.lease_ttl)
        );
    }
    let _ = writeln!(s, "targets: {}", config.targets.len());
    for d in &config.discovery {
        let _ = writeln!(
            s,
            "  discovery[{}]: targets `{}` from `{}` every {}, removed {} after their series goes",
            d.index,
            d.name_template,
            d.query,
            humantime::format_duration(d.refresh),
            humantime::format_duration(d.remove_after),
        );
    }
    if let Some(budget) = config.budget {
        let _ = writeln!(s, "budget: {budget} replicas across targets");
    }
    for t in &config.targets {
        let _ = writeln!(
            s,
            "  {}: {:?} mode, {}..={} replicas, {} rps/replica, startup {}, every {}, step {}, history {}{}{}",
            t.name,
            t.mode,
            t.min_replicas,
            t.max_replicas,
            t.capacity_rps
                .map_or("learned".to_owned(), |c| c.to_string()),
            humantime::format_duration(t.startup),
            humantime::format_duration(t.interval),
            humantime::format_duration(t.step),
            humantime::format_duration(t.history),
            match (&t.platform, &t.kubernetes) {
                (Some(_), _) => ", platform webhook".to_owned(),
                (None, Some(k)) => format!(
                    ", Kubernetes {} {} in namespace {}",
                    k.mode, k.resource, k.namespace
                ),
                (None, None) => String::new(),
            },
            if t.balancer.is_some() {
                ", balancer webhook"
            } else if t.haproxy.is_some() {
                ", HAProxy balancer"
            } else {
                ""
            },
        );
        if let Some(why) = silence(config, t) {
            let _ = writeln!(s, "    {why}");
        }
        for w in &t.schedule {
            let bound = |b: Option<u32>| b.map_or("-".to_owned(), |n| n.to_string());
            let _ = writeln!(
                s,
                "    schedule `{}` ({}) for {}: min {}, max {}",
                w.expression,
                w.timezone.name(),
                humantime::format_duration(std::time::Duration::from_secs(w.duration as u64)),
                bound(w.min_replicas),
                bound(w.max_replicas),
            );
        }
    }
    s
}

/// What a target will not send, and why, in plain words; `None` when it sends scale
/// actions to a platform that knows (or can learn) what runs.
fn silence(config: &Config, t: &TargetConfig) -> Option<String> {
    let alerts = if config.alertmanager.is_some() {
        "; predicted bottlenecks still go to Alertmanager"
    } else {
        ""
    };
    let scales = t.platform.is_some() || t.kubernetes.is_some();
    let balances = t.balancer.is_some() || t.haproxy.is_some();
    if t.mode == Mode::ForecastOnly {
        return Some(format!(
            "sends nothing: mode = \"forecast-only\" decides and shows only \
             (set mode = \"act\" to act){alerts}"
        ));
    }
    if !scales && !balances {
        let instead = match config.server.keda_listen {
            Some(addr) => format!("; KEDA may read its count from the external scaler on {addr}"),
            None => {
                "; add one to act (or set [server] keda_listen to let KEDA scale it)".to_owned()
            }
        };
        return Some(format!(
            "sends nothing: no [target.platform] and no [target.balancer]{instead}{alerts}"
        ));
    }
    if !scales {
        return Some(
            "sends no scale actions: no [target.platform] (rebalance actions go to the balancer)"
                .to_owned(),
        );
    }
    if !t.observes_replicas() && t.initial_replicas.is_none() {
        return Some(
            "asks for nothing until its running count is known: no `replicas` query and no \
             `initial_replicas` (a count remembered in the state directory also serves)"
                .to_owned(),
        );
    }
    None
}
