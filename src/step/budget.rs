//! The shared budget as the step sees it: the other targets' claims ([`BudgetView`]), a
//! target's own [`claim`], and its decision limited to its share of the allocation
//! (`decide::budget`).

use crate::decide::budget::{self, Claim};
use crate::decide::explain::Grant;
use crate::decide::{Decision, Explain, ReasonCode};

use super::TargetPolicy;

/// The other targets' claims on a shared budget.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetView {
    /// Most replicas across all targets.
    pub total: u32,
    /// Every target's claim in a fixed order; the entry at `mine` is this target's and is
    /// replaced by its fresh one.
    pub claims: Vec<Claim>,
    /// This target's index in `claims`.
    pub mine: usize,
}

/// A target's claim on the budget: it wants `want` and is always granted its
/// `min_replicas` — and, when degraded, what it runs now (up to `want`): missing data never
/// scales in, not even for the budget.
pub fn claim(priority: u32, min_replicas: u32, running: u32, want: u32, degraded: bool) -> Claim {
    let min = if degraded {
        min_replicas.max(running.min(want))
    } else {
        min_replicas
    };
    Claim {
        priority,
        min,
        want,
    }
}

/// Limits the decision to this target's share of the budget; returns the share when it
/// limited it. A degraded target's floor is what it runs now: missing data never scales
/// in, not even for the budget.
pub(super) fn apply_budget(
    view: &BudgetView,
    policy: &TargetPolicy,
    decision: &mut Decision,
    explain: &mut Explain,
    degraded: bool,
) -> Option<u32> {
    let mut claims = view.claims.clone();
    let mine = claims.get_mut(view.mine)?;
    *mine = claim(
        policy.priority,
        policy.decide.bounds(decision.at).min,
        decision.from,
        decision.to,
        degraded,
    );
    let total: u64 = claims.iter().map(|c| u64::from(c.want)).sum();
    let granted = *budget::allocate(view.total, &claims).get(view.mine)?;
    explain.inputs.budget = Some(Grant {
        total: view.total,
        wanted: decision.to,
        granted: granted.min(decision.to),
    });
    (granted < decision.to).then(|| {
        let message = format!(
            "{} limited to {granted} by the budget of {} replicas across targets (asked for in all: {total})",
            decision.to, view.total
        );
        explain.clamp(ReasonCode::BudgetLimited, decision.to, granted, &message);
        decision.limit_to(granted, message);
        granted
    })
}
