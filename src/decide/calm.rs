//! A change must be worth what it costs: every change of the count starts or stops pods, so
//! a count the plan will ask for again soon is held, and changes that would follow each
//! other within a few steps are made as one.
//!
//! The counts the prediction policy will ask for over the forecast's horizon are read from
//! the plan (each step's highest planned load over its look-ahead), after the count the
//! HPA's behaviour allows now. Of the paths of counts that never fall below them, the one
//! with the least replica-time plus a fixed cost per change is taken, and its first count
//! is asked for now. So:
//! - a scale-in is held when the count comes back within the horizon at less cost than a
//!   fall and a rise (a burst that recurs is held through, not scaled in and out around);
//! - a fall in steps (a burst's tail leaving the look-ahead) is made in fewer, larger
//!   steps, and a rise in steps as one, a step or two early.
//!
//! It only ever keeps more replicas than the behaviour allows, never fewer, and asks again
//! each decision from the newest plan (a receding horizon): a burst that comes, or a plan
//! that changes, is followed as before.

/// The cheapest path's first count: `asks[0]` is the count the behaviour allows now,
/// `asks[k]` the count the plan asks for `k` steps on; the count is `current` now; a change
/// costs `cost` replica-steps. The path never falls below `asks`; of equal paths, the one
/// that asks for the fewest replicas now.
pub fn cheapest_first(current: u32, asks: &[u32], cost: f64) -> u32 {
    let Some(&now) = asks.first() else {
        return current;
    };
    if cost <= 0.0 || asks.len() < 2 {
        return now;
    }
    // An optimal path only ever holds the count it starts from or one the plan asks for.
    let mut levels: Vec<u32> = asks.iter().copied().chain([current]).collect();
    levels.sort_unstable();
    levels.dedup();
    // Per level: the least cost of a path ending there, and that path's first count.
    let mut best: Vec<(f64, u32)> = levels
        .iter()
        .map(|&v| {
            let change = if v == current { 0.0 } else { cost };
            let c = if v >= now {
                f64::from(v) + change
            } else {
                f64::INFINITY
            };
            (c, v)
        })
        .collect();
    for &ask in &asks[1..] {
        let cheapest = best
            .iter()
            .copied()
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
            .unwrap_or((f64::INFINITY, now));
        for (&v, b) in levels.iter().zip(best.iter_mut()) {
            *b = if v < ask {
                (f64::INFINITY, b.1)
            } else if b.0 <= cheapest.0 + cost {
                (b.0 + f64::from(v), b.1)
            } else {
                (cheapest.0 + cost + f64::from(v), cheapest.1)
            };
        }
    }
    best.iter()
        .copied()
        .filter(|b| b.0.is_finite())
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map_or(now, |b| b.1)
}

#[cfg(test)]
mod tests {
    use super::cheapest_first;

    /// (count now, asks, cost per change in replica-steps) → the count asked for now.
    #[test]
    fn paths() {
        let check = |current: u32, asks: &[u32], cost: f64, want: u32| {
            assert_eq!(
                cheapest_first(current, asks, cost),
                want,
                "{current} {asks:?} {cost}"
            );
        };
        // No cost, or no plan beyond now: the behaviour's count.
        check(8, &[4, 8, 8], 0.0, 4);
        check(8, &[4], 50.0, 4);
        // The count comes back within the horizon: held, when a fall and a rise cost more.
        check(8, &[4, 4, 8, 8], 5.0, 8);
        check(8, &[4, 4, 4, 4, 4, 4, 4, 8], 5.0, 4);
        // A rise in two steps is made as one.
        check(4, &[6, 8, 8, 8], 5.0, 8);
        check(4, &[6, 8, 8, 8], 1.0, 6);
        // A fall in steps: fewer, larger steps.
        check(10, &[9, 8, 7, 6, 2, 2, 2, 2, 2, 2], 5.0, 10);
        check(10, &[9, 8, 7, 6, 2, 2, 2, 2, 2, 2], 0.5, 9);
        // Never below the behaviour's count.
        check(2, &[6, 2, 2, 2], 100.0, 6);
    }
}
