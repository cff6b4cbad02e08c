//! Balancer weights from per-instance observations, and failover.
//!
//! A [`Strategy`] turns each instance's rate, latency or configured capacity into a weight
//! in `1..=MAX_WEIGHT`. Failover then drains (weight 0) the instances whose latency or error
//! rate over a recent window is an outlier against their peers' — a robust z-score,
//! `0.6745 × (x − median) / MAD` — never more than a configured fraction at once, and
//! restores them once they are back in line. [`Balancer`] is pure: observations and `now`
//! in, weights out; it remembers only the window.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

/// The latest observations of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct InstanceStats {
    /// Requests/s.
    pub rate: Option<f64>,
    /// Latency, seconds.
    pub latency: Option<f64>,
    /// Error ratio (errors / requests), 0..=1.
    pub errors: Option<f64>,
}

/// The highest weight handed out.
pub const MAX_WEIGHT: u32 = 100;

/// How weights follow the instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The same weight for all (round robin).
    Equal,
    /// In proportion to each instance's configured capacity.
    Capacity,
    /// Inversely proportional to each instance's request rate.
    LeastRequests,
    /// Inversely proportional to each instance's latency.
    LeastResponseTime,
}

/// Rebalancing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How weights are set.
    pub strategy: Strategy,
    /// Relative capacity per instance for [`Strategy::Capacity`] (others count 1).
    pub capacity: BTreeMap<String, f64>,
    /// Whether outliers are drained.
    pub failover: bool,
    /// Seconds of observations the outlier test looks at.
    pub window: i64,
    /// Robust z-score above which an instance is an outlier.
    pub z_threshold: f64,
    /// Most instances drained at once, as a share of all, in [0, 1).
    pub max_drained_fraction: f64,
    /// A weight must move by more than this before new weights are sent.
    pub threshold: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            strategy: Strategy::LeastResponseTime,
            capacity: BTreeMap::new(),
            failover: true,
            window: 300,
            z_threshold: 3.5,
            max_drained_fraction: 0.34,
            threshold: 10,
        }
    }
}

/// Weights per instance in `1..=MAX_WEIGHT` with `strategy`; instances without the data
/// the strategy needs get `MAX_WEIGHT`.
pub fn weights(
    strategy: Strategy,
    capacity: &BTreeMap<String, f64>,
    instances: &BTreeMap<String, InstanceStats>,
) -> BTreeMap<String, u32> {
    let usable = |v: Option<f64>| v.filter(|x| x.is_finite() && *x > 0.0);
    // The value each instance's weight is proportional to.
    let score = |name: &str, s: &InstanceStats| -> Option<f64> {
        match strategy {
            Strategy::Equal => Some(1.0),
            Strategy::Capacity => Some(usable(capacity.get(name).copied()).unwrap_or(1.0)),
            Strategy::LeastRequests => usable(s.rate).map(|r| 1.0 / r),
            Strategy::LeastResponseTime => usable(s.latency).map(|l| 1.0 / l),
        }
    };
    let best = instances
        .iter()
        .filter_map(|(n, s)| score(n, s))
        .fold(0.0, f64::max);
    instances
        .iter()
        .map(|(name, s)| {
            let w = match score(name, s) {
                Some(v) if best > 0.0 => (f64::from(MAX_WEIGHT) * v / best).round().max(1.0) as u32,
                _ => MAX_WEIGHT,
            };
            (name.clone(), w)
        })
        .collect()
}

/// Whether `new` differs from `old` enough to send: another set of instances, a weight
/// moved by more than `threshold`, or an instance drained or restored.
pub fn changed(old: &BTreeMap<String, u32>, new: &BTreeMap<String, u32>, threshold: u32) -> bool {
    old.len() != new.len()
        || old.iter().zip(new).any(|((ka, a), (kb, b))| {
            ka != kb || a.abs_diff(*b) > threshold || ((*a == 0) != (*b == 0))
        })
}

/// The `q`-quantile-free median of a non-empty slice (reordered).
fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Robust z-scores of `values` against each other: `0.6745 (x − median) / MAD`. The MAD is
/// floored at 5 % of the median and at `floor`, so that near-identical peers do not make a
/// small difference look extreme.
pub fn robust_z(values: &[f64], floor: f64) -> Vec<f64> {
    if values.is_empty() {
        return Vec::new();
    }
    let m = median(&mut values.to_vec());
    let mut dev: Vec<f64> = values.iter().map(|v| (v - m).abs()).collect();
    let mad = median(&mut dev).max(0.05 * m.abs()).max(floor).max(1e-9);
    values.iter().map(|v| 0.6745 * (v - m) / mad).collect()
}

/// (time, latency, error ratio) of one instance.
type Observation = (i64, Option<f64>, Option<f64>);

/// Rebalancing state of one target: the recent window per instance and who is drained.
#[derive(Debug, Clone, Default)]
pub struct Balancer {
    /// (time, latency, error ratio) per instance, oldest first.
    window: BTreeMap<String, VecDeque<Observation>>,
    drained: BTreeSet<String>,
}

/// The outcome of one rebalance pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Balance {
    /// Weight per instance; 0 = drained.
    pub weights: BTreeMap<String, u32>,
    /// Instances drained, with why.
    pub drained: BTreeMap<String, String>,
}

impl Balancer {
    /// Records `instances` at `now` and computes the weights.
    pub fn update(
        &mut self,
        settings: &Settings,
        instances: &BTreeMap<String, InstanceStats>,
        now: i64,
    ) -> Balance {
        self.window.retain(|k, _| instances.contains_key(k));
        self.drained.retain(|k| instances.contains_key(k));
        for (name, s) in instances {
            let w = self.window.entry(name.clone()).or_default();
            w.push_back((now, s.latency, s.errors));
            while w.front().is_some_and(|&(t, ..)| t <= now - settings.window) {
                w.pop_front();
            }
        }
        let mut weights = weights(settings.strategy, &settings.capacity, instances);
        let mut drained = BTreeMap::new();
        if settings.failover {
            drained = self.failover(settings);
            for name in drained.keys() {
                weights.insert(name.clone(), 0);
            }
        } else {
            self.drained.clear();
        }
        Balance { weights, drained }
    }

    /// Decides who is drained now; updates `self.drained`.
    fn failover(&mut self, settings: &Settings) -> BTreeMap<String, String> {
        let names: Vec<&String> = self.window.keys().collect();
        // Per signal, each instance's mean over the window (None without data).
        let mean = |pick: fn(&Observation) -> Option<f64>| -> Vec<Option<f64>> {
            self.window
                .values()
                .map(|w| {
                    let xs: Vec<f64> = w
                        .iter()
                        .filter_map(pick)
                        .filter(|v| v.is_finite())
                        .collect();
                    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
                })
                .collect()
        };
        // The floors: 1 ms of latency, 1 percentage point of errors.
        let signals = [
            ("latency", mean(|e| e.1), 0.001),
            ("error rate", mean(|e| e.2), 0.01),
        ];
        // The worst z per instance and what it came from; at least three peers needed.
        let mut worst: Vec<(f64, String)> = vec![(f64::NEG_INFINITY, String::new()); names.len()];
        for (label, values, floor) in &signals {
            let idx: Vec<usize> = (0..names.len()).filter(|&i| values[i].is_some()).collect();
            if idx.len() < 3 {
                continue;
            }
            let xs: Vec<f64> = idx.iter().filter_map(|&i| values[i]).collect();
            let m = median(&mut xs.clone());
            for (k, z) in robust_z(&xs, *floor).into_iter().enumerate() {
                let i = idx[k];
                if z > worst[i].0 {
                    worst[i] = (
                        z,
                        format!(
                            "{label} {:.4} against a peer median of {m:.4} (robust z {z:.1})",
                            xs[k]
                        ),
                    );
                }
            }
        }
        let max_drained = (settings.max_drained_fraction * names.len() as f64).floor() as usize;
        // Drained instances stay drained until their z falls below half the threshold
        // (hysteresis); new outliers must pass the threshold. Instances without data in
        // the window (a drained one receives no traffic) are restored to be probed.
        let mut candidates: Vec<(f64, usize)> = (0..names.len())
            .filter(|&i| {
                let z = worst[i].0;
                if self.drained.contains(names[i]) {
                    z > settings.z_threshold / 2.0
                } else {
                    z > settings.z_threshold
                }
            })
            .map(|i| (worst[i].0, i))
            .collect();
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        candidates.truncate(max_drained);
        let out: BTreeMap<String, String> = candidates
            .into_iter()
            .map(|(_, i)| (names[i].clone(), worst[i].1.clone()))
            .collect();
        self.drained = out.keys().cloned().collect();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(latency: Option<f64>, rate: Option<f64>, errors: Option<f64>) -> InstanceStats {
        InstanceStats {
            rate,
            latency,
            errors,
        }
    }

    /// (strategy, instances as (name, latency, rate), capacities) → weights in name order.
    #[test]
    fn strategies() {
        let check = |strategy: Strategy,
                     pairs: &[(&str, Option<f64>, Option<f64>)],
                     caps: &[(&str, f64)],
                     want: &[u32]| {
            let inst = pairs
                .iter()
                .map(|(n, l, r)| (n.to_string(), stats(*l, *r, None)))
                .collect();
            let caps = caps.iter().map(|(n, c)| (n.to_string(), *c)).collect();
            let got: Vec<u32> = weights(strategy, &caps, &inst).into_values().collect();
            assert_eq!(got, want, "{strategy:?} {pairs:?}");
        };
        use Strategy::*;
        let three = [
            ("a", Some(0.1), Some(10.0)),
            ("b", Some(0.2), Some(20.0)),
            ("c", Some(0.4), Some(40.0)),
        ];
        check(LeastResponseTime, &three, &[], &[100, 50, 25]);
        check(LeastRequests, &three, &[], &[100, 50, 25]);
        check(Equal, &three, &[], &[100, 100, 100]);
        check(Capacity, &three, &[("a", 4.0), ("b", 2.0)], &[100, 50, 25]);
        check(
            LeastResponseTime,
            &[("a", None, None), ("b", None, None)],
            &[],
            &[100, 100],
        );
        check(
            LeastResponseTime,
            &[("a", Some(0.1), None), ("b", None, None)],
            &[],
            &[100, 100],
        );
        check(
            LeastResponseTime,
            &[("a", Some(0.1), None), ("b", Some(1000.0), None)],
            &[],
            &[100, 1],
        );
        check(
            LeastRequests,
            &[("a", None, Some(0.0)), ("b", None, Some(5.0))],
            &[],
            &[100, 100],
        );
    }

    #[test]
    fn change_threshold() {
        let a: BTreeMap<String, u32> = [("a".into(), 100), ("b".into(), 50)].into();
        let mut b = a.clone();
        assert!(!changed(&a, &b, 10));
        b.insert("b".into(), 61);
        assert!(changed(&a, &b, 10));
        b.insert("b".into(), 60);
        assert!(!changed(&a, &b, 10));
        b.insert("c".into(), 60);
        assert!(changed(&a, &b, 10));
        // Draining is always a change, however small the weight was.
        let c: BTreeMap<String, u32> = [("a".into(), 5)].into();
        let d: BTreeMap<String, u32> = [("a".into(), 0)].into();
        assert!(changed(&c, &d, 10));
    }

    #[test]
    fn robust_z_scores() {
        let z = robust_z(&[0.1, 0.1, 0.1, 0.1, 1.0], 0.001);
        assert!(z[4] > 3.5 && z[..4].iter().all(|z| z.abs() < 1e-9), "{z:?}");
        // Near-identical peers: the MAD floor keeps small differences small.
        let z = robust_z(&[0.100, 0.101, 0.099, 0.102], 0.001);
        assert!(z.iter().all(|z| z.abs() < 1.0), "{z:?}");
        // Error ratios near zero: the absolute floor keeps 1 % from looking extreme.
        let z = robust_z(&[0.0, 0.0, 0.01, 0.0], 0.01);
        assert!(z.iter().all(|z| z.abs() < 1.0), "{z:?}");
        assert!(robust_z(&[], 0.01).is_empty());
    }

    type Fleet<'a> = Vec<(&'a str, Option<f64>, Option<f64>)>;

    /// A fleet over time: each step, (name, latency, errors) per instance → who is drained.
    fn replay(settings: &Settings, steps: &[Fleet<'_>]) -> Vec<Vec<String>> {
        let mut b = Balancer::default();
        steps
            .iter()
            .enumerate()
            .map(|(k, fleet)| {
                let inst = fleet
                    .iter()
                    .map(|(n, l, e)| (n.to_string(), stats(*l, Some(10.0), *e)))
                    .collect();
                let out = b.update(settings, &inst, k as i64 * 60);
                for n in out.drained.keys() {
                    assert_eq!(out.weights[n], 0);
                }
                out.drained.into_keys().collect()
            })
            .collect()
    }

    fn fleet(slow: f64, errors: f64) -> Vec<(&'static str, Option<f64>, Option<f64>)> {
        vec![
            ("a", Some(0.10), Some(0.0)),
            ("b", Some(0.11), Some(0.0)),
            ("c", Some(0.09), Some(0.01)),
            ("d", Some(slow), Some(errors)),
        ]
    }

    #[test]
    fn a_slow_instance_is_drained_and_restored_when_it_recovers() {
        let s = Settings {
            window: 180,
            ..Settings::default()
        };
        let steps = vec![
            fleet(0.10, 0.0),
            fleet(0.10, 0.0),
            fleet(1.5, 0.0), // slows down: the window mean jumps
            fleet(1.5, 0.0),
            fleet(0.10, 0.0), // recovers; the window still remembers
            fleet(0.10, 0.0),
            fleet(0.10, 0.0),
            fleet(0.10, 0.0),
        ];
        let drained = replay(&s, &steps);
        let d: Vec<bool> = drained.iter().map(|v| v == &["d"]).collect();
        assert_eq!(
            d,
            [false, false, true, true, true, true, false, false],
            "{drained:?}"
        );
        assert!(drained.iter().all(|v| v.is_empty() || v == &["d"]));
    }

    #[test]
    fn a_failing_instance_is_drained() {
        let s = Settings::default();
        let drained = replay(&s, &[fleet(0.10, 0.0), fleet(0.10, 0.5), fleet(0.10, 0.5)]);
        assert_eq!(
            drained,
            [vec![], vec!["d".to_owned()], vec!["d".to_owned()]]
        );
    }

    #[test]
    fn never_more_than_the_fraction_at_once() {
        let s = Settings {
            max_drained_fraction: 0.25,
            ..Settings::default()
        };
        // Eight instances, three slow: only two (25 %) may go, the slowest first.
        let mut big: Vec<(&str, Option<f64>, Option<f64>)> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| (*n, Some(0.1), None))
            .collect();
        big.extend([
            ("x", Some(2.0), None),
            ("y", Some(3.0), None),
            ("z", Some(1.0), None),
        ]);
        let drained = replay(&s, &[big]);
        assert_eq!(drained[0], ["x", "y"]);
        // Failover off: nobody is drained.
        let off = Settings {
            failover: false,
            ..Settings::default()
        };
        assert!(replay(&off, &[fleet(5.0, 1.0)])[0].is_empty());
    }

    #[test]
    fn too_few_peers_to_judge() {
        let two = vec![("a", Some(0.1), Some(0.0)), ("b", Some(5.0), Some(1.0))];
        assert!(replay(&Settings::default(), &[two])[0].is_empty());
    }
}
