//! Kubernetes HPA v2 scaling behaviour: stabilisation windows and rate-limit policies.
//!
//! The semantics are those of `HorizontalPodAutoscaler.spec.behavior`: a recommendation
//! history gives, per direction, the bound over its stabilisation window (scale-up: the
//! lowest recommendation within the window; scale-down: the highest); rate-limit policies
//! (`Pods` or `Percent` per `period`) bound the change from the replica count at the start
//! of each period, and `select` picks the policy allowing the most change (`Max`), the
//! least (`Min`), or forbids scaling in that direction (`Disabled`).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// How a rate-limit policy counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateKind {
    /// An absolute number of replicas per period.
    Pods,
    /// A percentage of the replicas at the start of the period.
    Percent,
}

/// One rate-limit policy: at most `value` replicas (or percent) per `period` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RatePolicy {
    /// `Pods` or `Percent`.
    pub kind: RateKind,
    /// How many replicas, or percent.
    pub value: u32,
    /// The period, seconds (> 0).
    pub period: i64,
}

/// Which of several policies applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Select {
    /// The policy allowing the biggest change (Kubernetes' default).
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// Scaling rules of one direction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rules {
    /// Stabilisation window, seconds.
    pub stabilization_window: i64,
    /// Which policy applies.
    pub select: Select,
    /// Rate-limit policies; none means no rate limit.
    pub policies: Vec<RatePolicy>,
}

impl Rules {
    /// Kubernetes' default scale-up: no window, max(+100 %, +4 pods) per 15 s.
    pub fn default_scale_up() -> Self {
        Self {
            stabilization_window: 0,
            select: Select::Max,
            policies: vec![
                RatePolicy {
                    kind: RateKind::Percent,
                    value: 100,
                    period: 15,
                },
                RatePolicy {
                    kind: RateKind::Pods,
                    value: 4,
                    period: 15,
                },
            ],
        }
    }

    /// Kubernetes' default scale-down: a 300 s window, −100 % per 15 s.
    pub fn default_scale_down() -> Self {
        Self {
            stabilization_window: 300,
            select: Select::Max,
            policies: vec![RatePolicy {
                kind: RateKind::Percent,
                value: 100,
                period: 15,
            }],
        }
    }

    fn longest_period(&self) -> i64 {
        self.policies.iter().map(|p| p.period).max().unwrap_or(0)
    }
}

/// What behaviour remembers: recent recommendations and scale events.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// (time, recommendation), oldest first.
    recommendations: VecDeque<(i64, u32)>,
    /// (time, signed replica change), oldest first.
    events: VecDeque<(i64, i64)>,
}

impl History {
    /// Records a recommendation and drops what no window can reach any more.
    pub fn recommend(&mut self, now: i64, replicas: u32, up: &Rules, down: &Rules) {
        let keep = up.stabilization_window.max(down.stabilization_window);
        while self
            .recommendations
            .front()
            .is_some_and(|&(t, _)| t <= now - keep)
        {
            self.recommendations.pop_front();
        }
        self.recommendations.push_back((now, replicas));
        let keep = up.longest_period().max(down.longest_period());
        while self.events.front().is_some_and(|&(t, _)| t <= now - keep) {
            self.events.pop_front();
        }
    }

    /// Records a change of the replica count.
    pub fn scaled(&mut self, now: i64, from: u32, to: u32) {
        if from != to {
            self.events
                .push_back((now, i64::from(to) - i64::from(from)));
        }
    }

    /// The count stabilisation allows, given the newest recommendation was recorded: at
    /// least the lowest recommendation within the scale-up window and at most the highest
    /// within the scale-down window, as close to `current` as that allows.
    pub fn stabilized(&self, now: i64, current: u32, up: &Rules, down: &Rules) -> u32 {
        let within = |w: i64| {
            self.recommendations
                .iter()
                .filter(move |&&(t, _)| t > now - w || t == now)
                .map(|&(_, r)| r)
        };
        let up_bound = within(up.stabilization_window).min().unwrap_or(current);
        let down_bound = within(down.stabilization_window).max().unwrap_or(current);
        current.max(up_bound).min(down_bound)
    }

    /// Replicas added (`up`) or removed within the last `period` seconds.
    fn changed_within(&self, now: i64, period: i64, up: bool) -> i64 {
        self.events
            .iter()
            .filter(|&&(t, c)| t > now - period && (c > 0) == up)
            .map(|&(_, c)| c.abs())
            .sum()
    }

    /// The most replicas scaling up may reach now. `elapsed` seconds have passed since the
    /// previous decision: when that spans several periods, the policy applies once per
    /// period, as it would for an HPA syncing every period.
    pub fn scale_up_limit(&self, now: i64, current: u32, elapsed: i64, rules: &Rules) -> u32 {
        if rules.select == Select::Disabled {
            return current;
        }
        if rules.policies.is_empty() {
            return u32::MAX;
        }
        let mut limit = i64::from(current);
        for k in 0..repeats(elapsed, rules) {
            let proposals = rules.policies.iter().map(|p| {
                let added = if k == 0 {
                    self.changed_within(now, p.period, true)
                } else {
                    0
                };
                let start = limit - added;
                match p.kind {
                    RateKind::Pods => start + i64::from(p.value),
                    RateKind::Percent => {
                        (start as f64 * (1.0 + f64::from(p.value) / 100.0)).ceil() as i64
                    }
                }
            });
            limit = match rules.select {
                Select::Min => proposals.min(),
                _ => proposals.max(),
            }
            .unwrap_or(limit)
            .max(limit)
            .min(i64::from(u32::MAX)); // many periods of doubling would overflow
        }
        limit.clamp(0, i64::from(u32::MAX)) as u32
    }

    /// The fewest replicas scaling down may reach now (see [`Self::scale_up_limit`]).
    pub fn scale_down_limit(&self, now: i64, current: u32, elapsed: i64, rules: &Rules) -> u32 {
        if rules.select == Select::Disabled {
            return current;
        }
        if rules.policies.is_empty() {
            return 0;
        }
        let mut limit = i64::from(current);
        for k in 0..repeats(elapsed, rules) {
            let proposals = rules.policies.iter().map(|p| {
                let removed = if k == 0 {
                    self.changed_within(now, p.period, false)
                } else {
                    0
                };
                let start = limit + removed;
                match p.kind {
                    RateKind::Pods => start - i64::from(p.value),
                    // Truncated, as Kubernetes does: the change is rounded up.
                    RateKind::Percent => (start as f64 * (1.0 - f64::from(p.value) / 100.0)) as i64,
                }
            });
            // Scaling down, the biggest change is the lowest count.
            limit = match rules.select {
                Select::Min => proposals.max(),
                _ => proposals.min(),
            }
            .unwrap_or(limit)
            .min(limit);
        }
        limit.clamp(0, i64::from(u32::MAX)) as u32
    }
}

/// How many times the policies apply over `elapsed` seconds: once per shortest period,
/// at least once, at most 64 times (beyond that nothing limits anyway).
fn repeats(elapsed: i64, rules: &Rules) -> i64 {
    let shortest = rules
        .policies
        .iter()
        .map(|p| p.period)
        .min()
        .unwrap_or(1)
        .max(1);
    (elapsed / shortest).clamp(1, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(select: Select, window: i64, policies: &[(RateKind, u32, i64)]) -> Rules {
        Rules {
            stabilization_window: window,
            select,
            policies: policies
                .iter()
                .map(|&(kind, value, period)| RatePolicy {
                    kind,
                    value,
                    period,
                })
                .collect(),
        }
    }

    use RateKind::{Percent, Pods};

    /// Rate limits, from the examples in the Kubernetes documentation
    /// ("Scaling policies", "Default behavior") and the HPA controller's rounding:
    /// (rules, current, elapsed since the last decision, earlier events) → (up, down) limit.
    #[test]
    fn rate_limits() {
        let check =
            |r: &Rules, current: u32, elapsed: i64, events: &[(i64, i64)], want: (u32, u32)| {
                let mut h = History::default();
                for &(t, c) in events {
                    h.events.push_back((t, c));
                }
                let got = (
                    h.scale_up_limit(1000, current, elapsed, r),
                    h.scale_down_limit(1000, current, elapsed, r),
                );
                assert_eq!(got, want, "{r:?} current {current} events {events:?}");
            };
        // Default scale-up: max(+100 %, +4 pods) per 15 s.
        let up = Rules::default_scale_up();
        check(&up, 1, 15, &[], (5, 0)); // 4 pods beat 100 % of 1
        check(&up, 10, 15, &[], (20, 0)); // 100 % beats 4 pods
        check(&up, 10, 30, &[], (40, 0)); // two periods: 10 → 20 → 40
        check(&up, 10, 960, &[], (u32::MAX, 0)); // 64 periods of doubling: no overflow
        check(&up, 10, 15, &[(990, 6)], (10, 0)); // 6 added within 15 s: from 4 the limit is 8, below 10: hold
        // Default scale-down: −100 % per 15 s, so down to 0 at once.
        let down = Rules::default_scale_down();
        check(&down, 10, 15, &[], (20, 0));
        // Docs: Pods 4 / 60 s and Percent 10 / 60 s, Max: with 80 replicas 8 go (10 %),
        // then with 72 again 8 (7.2 rounded up).
        let docs = rules(Select::Max, 300, &[(Pods, 4, 60), (Percent, 10, 60)]);
        check(&docs, 80, 15, &[], (88, 72));
        check(&docs, 72, 15, &[], (80, 64));
        // Below 40 replicas the Pods policy allows more: 4 go.
        check(&docs, 30, 15, &[], (34, 26));
        // Events within the period count against it: 8 already gone from 80 within 60 s.
        check(&docs, 72, 15, &[(950, -8)], (80, 72));
        // An event older than the period does not.
        check(&docs, 72, 15, &[(900, -8)], (80, 64));
        // Min selects the policy allowing the least change.
        let min = rules(Select::Min, 300, &[(Pods, 4, 60), (Percent, 10, 60)]);
        check(&min, 80, 15, &[], (84, 76));
        check(&min, 30, 15, &[], (33, 27));
        // Disabled: no change in that direction.
        let off = rules(Select::Disabled, 300, &[(Pods, 4, 60)]);
        check(&off, 7, 15, &[], (7, 7));
        // Docs: Percent 900 lets 1 pod become 10.
        let fast = rules(Select::Max, 0, &[(Percent, 900, 60)]);
        check(&fast, 1, 15, &[], (10, 0));
    }

    /// Stabilisation windows, as in the documentation: scale-down takes the highest
    /// recommendation within the window, scale-up the lowest.
    #[test]
    fn stabilisation() {
        let check = |up_w: i64, down_w: i64, recs: &[(i64, u32)], current: u32, want: u32| {
            let up = rules(Select::Max, up_w, &[]);
            let down = rules(Select::Max, down_w, &[]);
            let mut h = History::default();
            for &(t, r) in recs {
                h.recommend(t, r, &up, &down);
            }
            let now = recs.last().map_or(0, |r| r.0);
            assert_eq!(h.stabilized(now, current, &up, &down), want, "{recs:?}");
        };
        // Scale-down waits for the highest recommendation of the last 300 s.
        check(0, 300, &[(0, 10), (60, 4), (120, 4)], 10, 10);
        check(0, 300, &[(0, 10), (60, 6), (300, 4)], 10, 6);
        check(0, 300, &[(0, 10), (60, 6), (360, 4)], 10, 4);
        // Without a scale-up window, scale-up is immediate.
        check(0, 300, &[(0, 4), (60, 12)], 4, 12);
        // A scale-up window of 120 s takes the lowest recommendation within it.
        check(120, 300, &[(0, 4), (60, 12), (120, 14)], 4, 12);
        check(120, 300, &[(0, 4), (60, 12), (179, 14)], 4, 12);
        check(120, 300, &[(0, 4), (60, 12), (200, 14)], 4, 14);
        // Within both bounds, nothing moves.
        check(0, 300, &[(0, 8), (60, 5)], 8, 8);
    }
}
