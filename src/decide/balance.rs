//! Balancer weights from per-instance observations (the first strategy: inversely
//! proportional to latency, equal without latency data).

use std::collections::BTreeMap;

/// The latest observations of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct InstanceStats {
    /// Requests/s.
    pub rate: Option<f64>,
    /// Latency, seconds.
    pub latency: Option<f64>,
}

/// The highest weight handed out.
pub const MAX_WEIGHT: u32 = 100;

/// Weights per instance in `1..=MAX_WEIGHT`: the fastest instance gets the most; without
/// latency data every instance gets the same.
pub fn weights(instances: &BTreeMap<String, InstanceStats>) -> BTreeMap<String, u32> {
    let fastest = instances
        .values()
        .filter_map(|s| s.latency.filter(|l| l.is_finite() && *l > 0.0))
        .fold(f64::INFINITY, f64::min);
    instances
        .iter()
        .map(|(name, s)| {
            let w = match s.latency {
                Some(l) if fastest.is_finite() && l.is_finite() && l > 0.0 => {
                    (f64::from(MAX_WEIGHT) * fastest / l).round().max(1.0) as u32
                }
                _ => MAX_WEIGHT,
            };
            (name.clone(), w)
        })
        .collect()
}

/// Whether `new` differs from `old` enough to send: another set of instances, or a weight
/// moved by more than `threshold`.
pub fn changed(old: &BTreeMap<String, u32>, new: &BTreeMap<String, u32>, threshold: u32) -> bool {
    old.len() != new.len()
        || old
            .iter()
            .zip(new)
            .any(|((ka, a), (kb, b))| ka != kb || a.abs_diff(*b) > threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(pairs: &[(&str, Option<f64>)]) -> BTreeMap<String, InstanceStats> {
        pairs
            .iter()
            .map(|(n, l)| {
                (
                    n.to_string(),
                    InstanceStats {
                        rate: Some(1.0),
                        latency: *l,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn slower_instances_get_less() {
        let check = |pairs: &[(&str, Option<f64>)], want: &[u32]| {
            let got: Vec<u32> = weights(&inst(pairs)).into_values().collect();
            assert_eq!(got, want, "{pairs:?}");
        };
        check(
            &[("a", Some(0.1)), ("b", Some(0.2)), ("c", Some(0.4))],
            &[100, 50, 25],
        );
        check(&[("a", None), ("b", None)], &[100, 100]);
        check(&[("a", Some(0.1)), ("b", None)], &[100, 100]);
        check(&[("a", Some(0.1)), ("b", Some(1000.0))], &[100, 1]);
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
    }
}
