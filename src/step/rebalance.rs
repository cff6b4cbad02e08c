//! Rebalancing around the step: the balancer's weights and failover's drained instances,
//! and when a changed set of weights is sent ([`Rebalance`]).

use std::collections::BTreeMap;

use crate::decide::Mode;
use crate::decide::balance;

use super::{Inputs, Memory, TargetPolicy};

/// A rebalance to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebalance {
    /// Weight per instance; 0 = drained.
    pub weights: BTreeMap<String, u32>,
    /// Instances newly drained, with why.
    pub drained: BTreeMap<String, String>,
    /// Instances restored from drained.
    pub restored: Vec<String>,
}

/// Rebalances: the weights when they changed past the threshold, and whether to send them.
///
/// The balancer sees every instance seen by any per-instance signal, plus those it drained
/// (a drained instance gets no traffic, so its latency series may vanish): a drained
/// instance without data is restored to be probed, and its weight is sent.
pub(super) fn rebalance(
    policy: &TargetPolicy,
    memory: &mut Memory,
    inputs: &Inputs<'_>,
) -> (Option<Rebalance>, bool) {
    let instance_error = inputs
        .signals
        .iter()
        .any(|(s, h)| s.per_instance() && h.error.is_some());
    if instance_error {
        // Without fresh per-instance data, hold the weights in force.
        return (None, false);
    }
    let mut instances = inputs.instances.clone();
    for name in memory.drained.keys() {
        instances.entry(name.clone()).or_default();
    }
    let balance = memory
        .balancer
        .update(&policy.rebalance, &instances, inputs.now);
    let newly: BTreeMap<String, String> = balance
        .drained
        .iter()
        .filter(|(k, _)| !memory.drained.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let restored: Vec<String> = memory
        .drained
        .keys()
        .filter(|k| !balance.drained.contains_key(*k))
        .cloned()
        .collect();
    memory.drained = balance.drained;
    let weights = balance.weights;
    let changed = !restored.is_empty()
        || (!weights.is_empty()
            && balance::changed(&memory.weights, &weights, policy.rebalance.threshold));
    if !changed {
        return (None, false);
    }
    let acting = policy.mode == Mode::Act && policy.balances;
    if acting && inputs.paused {
        // Nothing is sent while paused: the weights in force stay the last ones sent, so
        // the first rebalance after a resume sends what changed meanwhile.
        return (None, false);
    }
    memory.weights = weights.clone();
    let r = Rebalance {
        weights,
        drained: newly,
        restored,
    };
    (Some(r), acting)
}
