//! The release of an `hpa-floor` target's floor, as an action: how prescale stops acting
//! on a target whose HPA it raised.

use crate::act::ScaleAction;
use crate::config::{KubernetesMode, TargetConfig};
use crate::decide::{Reason, ReasonCode};

/// The action giving an `hpa-floor` target's floor back (its `min_replicas`) because
/// prescale stops acting on it (`why`: paused, removed), when a floor was asked for
/// (`asked`) and is not that one already; `None` otherwise (another platform, or nothing
/// to give back). A scale action with the reason `Released`, which the outbox worker
/// sends while the target is paused ([`crate::act::Action::passes_pause`]).
pub fn release_action(
    target: &TargetConfig,
    asked: Option<u32>,
    now: i64,
    why: &str,
) -> Option<ScaleAction> {
    let k = target.kubernetes.as_ref()?;
    let asked = asked?;
    if k.mode != KubernetesMode::HpaFloor || asked == k.restore_min {
        return None;
    }
    let message = format!(
        "{why}: the HPA's minReplicas is given back ({} → {}, the target's min_replicas); \
         the HPA scales on its own",
        asked, k.restore_min
    );
    Some(ScaleAction {
        target: target.name.clone(),
        from: asked,
        to: k.restore_min,
        reasons: vec![Reason::new(ReasonCode::Released, message)],
        peak: None,
        model: None,
        issued_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(mode: &str) -> TargetConfig {
        let text = format!(
            r#"
[prometheus]
url = "http://127.0.0.1:9090"

[[target]]
name = "web"
request_rate = "sum(rate(http_requests_total[5m]))"
capacity_rps = 150
startup = "3m"
min_replicas = 2
max_replicas = 40

[target.platform]
kind = "kubernetes"
namespace = "shop"
deployment = "web"
mode = "{mode}"
"#
        );
        let c = crate::config::Config::parse(&text, std::path::Path::new("p.toml")).expect("valid");
        c.targets[0].clone()
    }

    /// Given back from the count asked for to `min_replicas`, once: not again while the
    /// count asked for is that floor, never without an ask, never in `replicas` mode.
    #[test]
    fn released_once_from_the_count_asked_for() {
        let t = target("hpa-floor");
        let a = release_action(&t, Some(9), 100, "paused").expect("a release");
        assert_eq!((a.from, a.to, a.issued_at), (9, 2, 100));
        assert_eq!(a.reasons[0].code, ReasonCode::Released);
        assert!(
            a.reasons[0].message.starts_with("paused: "),
            "{}",
            a.reasons[0].message
        );
        assert!(crate::act::Action::Scale(a).passes_pause());
        assert_eq!(release_action(&t, Some(2), 100, "paused"), None);
        assert_eq!(release_action(&t, None, 100, "paused"), None);
        let r = target("replicas");
        assert_eq!(release_action(&r, Some(9), 100, "paused"), None);
    }
}
