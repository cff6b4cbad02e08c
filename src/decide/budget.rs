//! A global replica budget shared by targets: pure allocation by priority, then in
//! proportion to need, never below a target's minimum.

/// What one target asks of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// Higher is served first.
    pub priority: u32,
    /// Its `min_replicas`: always granted, even beyond the budget.
    pub min: u32,
    /// The count its decision asks for.
    pub want: u32,
}

/// Replicas granted per claim (same order) within `budget` total: every claim gets
/// `min(min, want)`… then, from the highest priority down, each priority's claims get what
/// they want while the budget lasts; the priority where it runs out shares the rest in
/// proportion to each claim's need above its minimum (largest remainders first).
pub fn allocate(budget: u32, claims: &[Claim]) -> Vec<u32> {
    let mut granted: Vec<u32> = claims.iter().map(|c| c.min.min(c.want)).collect();
    let floor: u64 = granted.iter().map(|&g| u64::from(g)).sum();
    let mut left = u64::from(budget).saturating_sub(floor);
    let mut priorities: Vec<u32> = claims.iter().map(|c| c.priority).collect();
    priorities.sort_unstable_by(|a, b| b.cmp(a));
    priorities.dedup();
    for p in priorities {
        let group: Vec<usize> = (0..claims.len())
            .filter(|&i| claims[i].priority == p)
            .collect();
        let need = |i: usize| u64::from(claims[i].want - granted[i]);
        let total: u64 = group.iter().map(|&i| need(i)).sum();
        if total <= left {
            for &i in &group {
                granted[i] = claims[i].want;
            }
            left -= total;
            continue;
        }
        // Share `left` in proportion to need: floors first, then the largest remainders.
        let mut shares: Vec<(usize, u64, u64)> = group
            .iter()
            .map(|&i| {
                let exact = need(i) * left;
                (i, exact / total, exact % total)
            })
            .collect();
        let mut given: u64 = shares.iter().map(|s| s.1).sum();
        shares.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        for s in &mut shares {
            if given < left && s.1 < need(s.0) {
                s.1 += 1;
                given += 1;
            }
        }
        for (i, share, _) in shares {
            granted[i] += share as u32;
        }
        break;
    }
    granted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(priority: u32, min: u32, want: u32) -> Claim {
        Claim {
            priority,
            min,
            want,
        }
    }

    #[test]
    fn allocation() {
        let check = |budget: u32, claims: &[Claim], want: &[u32]| {
            assert_eq!(
                allocate(budget, claims),
                want,
                "budget {budget}, {claims:?}"
            );
        };
        // Within budget: everyone gets what they want.
        check(20, &[claim(1, 1, 5), claim(1, 1, 10)], &[5, 10]);
        // Priority first: the important target is served in full.
        check(12, &[claim(1, 1, 10), claim(2, 1, 10)], &[2, 10]);
        // Same priority: in proportion to need above the minimum (4 and 8 of 12 extra
        // needed; 6 to share → 2 and 4).
        check(8, &[claim(1, 1, 5), claim(1, 1, 9)], &[3, 5]);
        // Minimums hold even beyond the budget.
        check(3, &[claim(1, 2, 5), claim(2, 2, 5)], &[2, 2]);
        // Remainders go to the largest fractions; the total is the budget exactly.
        check(
            7,
            &[claim(1, 0, 3), claim(1, 0, 3), claim(1, 0, 3)],
            &[3, 2, 2],
        );
        // A claim below its minimum is not raised here (the decision already was).
        check(10, &[claim(1, 4, 2)], &[2]);
        // Nothing asked, nothing given.
        check(10, &[], &[]);
    }
}
