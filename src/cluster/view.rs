//! What the instances see in etcd, as plain data: buckets, members, owners ([`View`]), and
//! what one instance should do about it ([`View::plan`]). No I/O here.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// How many buckets the targets are hashed into. Fixed: every instance must agree on it.
pub const BUCKETS: u16 = 256;

/// The bucket of a target: FNV-1a (64 bits) of its name, modulo [`BUCKETS`]. Stable across
/// versions, platforms and processes.
pub fn bucket(target: &str) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in target.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(BUCKETS)) as u16
}

/// One live instance, as it registered itself (`<prefix>/members/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its unique name.
    pub name: String,
    /// The URL of its API.
    pub advertise: String,
    /// When it joined, Unix seconds.
    pub started_at: i64,
}

/// Who owns a bucket, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    /// The owner's name.
    pub member: String,
    /// The etcd revision at which it took the bucket; grows at every change of owner.
    pub epoch: u64,
}

/// A member as seen in etcd: what it registered and the lease its keys live under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) member: Member,
    pub(crate) lease: i64,
}

/// The cluster's state as read from etcd at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct View {
    /// The etcd revision it was read at.
    pub(crate) revision: u64,
    /// Live members by name.
    pub(crate) members: BTreeMap<String, Seen>,
    /// Owned buckets.
    pub(crate) owners: BTreeMap<u16, Owner>,
    /// The lease each owner key lives under: a bucket is an instance's only under its
    /// current lease (a key left from a lost lease is about to vanish).
    pub(crate) leases: BTreeMap<u16, i64>,
}

/// What one instance should do next, from a [`View`].
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Register the member key again (it is missing while the lease lives).
    pub(crate) register: bool,
    /// Free buckets to take, in order.
    pub(crate) claim: Vec<u16>,
    /// Own buckets given away that are still ours (the hand-off failed or its outcome is
    /// unknown): take them again at a new epoch, which fences the old hand-off.
    pub(crate) retake: Vec<(u16, u64)>,
    /// Own buckets to hand to a member below its share: (bucket, our epoch, to whom, its
    /// lease).
    pub(crate) hand_off: Vec<HandOff>,
}

/// One bucket handed from this instance to another in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HandOff {
    pub(crate) bucket: u16,
    pub(crate) epoch: u64,
    pub(crate) to: String,
    pub(crate) lease: i64,
}

impl View {
    /// The fair share of each member: ⌈buckets / members⌉.
    pub(crate) fn share(&self) -> usize {
        usize::from(BUCKETS).div_ceil(self.members.len().max(1))
    }

    /// What `me` should do. `given`: own buckets (with their epochs) handed off or being
    /// handed off, no longer acted on.
    ///
    /// Free buckets are taken up to the share, starting at a place that depends on the
    /// name so that joiners do not all race for the same ones. Buckets above the share are
    /// handed (not released: no bucket is ever without an owner) to the members furthest
    /// below it, and only once no bucket is free, so that a joiner first takes what is free.
    pub(crate) fn plan(&self, me: &str, given: &BTreeMap<u16, u64>) -> Plan {
        let Some(my_lease) = self.members.get(me).map(|m| m.lease) else {
            return Plan {
                register: true,
                ..Plan::default()
            };
        };
        let mut plan = Plan::default();
        let share = self.share();
        let mut counts: BTreeMap<&str, usize> =
            self.members.keys().map(|m| (m.as_str(), 0)).collect();
        for held in self.owners.values() {
            *counts.entry(held.member.as_str()).or_default() += 1;
        }
        let mine: BTreeSet<u16> = self
            .owners
            .iter()
            .filter(|(b, h)| h.member == me && self.leases.get(b) == Some(&my_lease))
            .map(|(b, _)| *b)
            .collect();
        plan.retake = mine
            .iter()
            .filter_map(|b| {
                let epoch = self.owners[b].epoch;
                (given.get(b) == Some(&epoch)).then_some((*b, epoch))
            })
            .collect();
        let start = bucket(me);
        let free: Vec<u16> = (0..BUCKETS)
            .map(|i| (start + i) % BUCKETS)
            .filter(|b| !self.owners.contains_key(b))
            .collect();
        plan.claim = free
            .iter()
            .take(share.saturating_sub(mine.len()))
            .copied()
            .collect();
        if !free.is_empty() || mine.len() <= share {
            return plan;
        }
        let mut excess = mine.len() - share;
        // Every member above the share gives at once, each from the same view: each gives a
        // recipient only its part of the deficit, so that they do not all fill it.
        let givers = counts.values().filter(|c| **c > share).count().max(1);
        let mut below: Vec<(usize, &str)> = counts
            .iter()
            .filter(|(m, c)| **m != me && **c < share)
            .map(|(m, c)| (*c, *m))
            .collect();
        below.sort_unstable();
        let mut spare = mine.iter().rev().filter(|b| !given.contains_key(b));
        for (count, to) in below {
            let lease = self.members[to].lease;
            for _ in 0..(share - count).div_ceil(givers).min(excess) {
                let Some(&b) = spare.next() else {
                    return plan;
                };
                plan.hand_off.push(HandOff {
                    bucket: b,
                    epoch: self.owners[&b].epoch,
                    to: to.to_owned(),
                    lease,
                });
                excess -= 1;
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(members: &[&str], owners: &[(&str, std::ops::Range<u16>)]) -> View {
        let mut v = View::default();
        for (i, m) in members.iter().enumerate() {
            let member = Member {
                name: (*m).to_owned(),
                advertise: format!("http://{m}"),
                started_at: 0,
            };
            v.members.insert(
                (*m).to_owned(),
                Seen {
                    member,
                    lease: i as i64 + 100,
                },
            );
        }
        for (m, range) in owners {
            for b in range.clone() {
                let held = Owner {
                    member: (*m).to_owned(),
                    epoch: u64::from(b) + 1,
                };
                v.owners.insert(b, held);
                v.leases.insert(b, v.members[*m].lease);
            }
        }
        v
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        // Fixed values: a change of hash would move every target at an upgrade.
        assert_eq!(bucket(""), (0xcbf2_9ce4_8422_2325_u64 % 256) as u16);
        assert_eq!(bucket("web"), bucket("web"));
        let mut seen = BTreeSet::new();
        for i in 0..2_000 {
            seen.insert(bucket(&format!("svc-{i}")));
        }
        assert!(
            seen.len() > 240,
            "2,000 names fill only {} buckets",
            seen.len()
        );
    }

    #[test]
    fn alone_takes_everything() {
        let plan = view(&["a"], &[]).plan("a", &BTreeMap::new());
        assert_eq!(plan.claim.len(), usize::from(BUCKETS));
        assert!(plan.hand_off.is_empty() && !plan.register);
    }

    #[test]
    fn unregistered_does_nothing_but_register() {
        let plan = view(&["b"], &[]).plan("a", &BTreeMap::new());
        assert_eq!(
            plan,
            Plan {
                register: true,
                ..Plan::default()
            }
        );
    }

    #[test]
    fn a_joiner_takes_free_buckets_first_then_is_handed_its_share() {
        // a holds everything; b joins: a hands b its share (128), nothing is free.
        let v = view(&["a", "b"], &[("a", 0..256)]);
        assert!(v.plan("b", &BTreeMap::new()).claim.is_empty());
        let plan = v.plan("a", &BTreeMap::new());
        assert_eq!(plan.hand_off.len(), 128);
        assert!(plan.hand_off.iter().all(|h| h.to == "b" && h.lease == 101));
        // With free buckets around, a hands nothing: b takes those first.
        let v = view(&["a", "b"], &[("a", 0..200)]);
        assert!(v.plan("a", &BTreeMap::new()).hand_off.is_empty());
        assert_eq!(v.plan("b", &BTreeMap::new()).claim.len(), 56);
    }

    #[test]
    fn fair_shares_are_stable() {
        // 256 over 3: share 86; 86 + 86 + 84 is fair, nobody moves.
        let v = view(
            &["a", "b", "c"],
            &[("a", 0..86), ("b", 86..172), ("c", 172..256)],
        );
        for m in ["a", "b", "c"] {
            assert_eq!(v.plan(m, &BTreeMap::new()), Plan::default(), "{m}");
        }
    }

    #[test]
    fn excess_goes_to_the_furthest_below() {
        // a 100, b 86, c 70 (share 86): a hands 14 to c, none to b.
        let v = view(
            &["a", "b", "c"],
            &[("a", 0..100), ("b", 100..186), ("c", 186..256)],
        );
        let plan = v.plan("a", &BTreeMap::new());
        assert_eq!(plan.hand_off.len(), 14);
        assert!(plan.hand_off.iter().all(|h| h.to == "c"));
    }

    #[test]
    fn givers_split_a_deficit_instead_of_all_filling_it() {
        // a, b, c hold 86, 86, 84; d and e join (share 52). Each giver gives each joiner
        // its part: together about the deficit, not three times it.
        let v = view(
            &["a", "b", "c", "d", "e"],
            &[("a", 0..86), ("b", 86..172), ("c", 172..256)],
        );
        let mut to: BTreeMap<String, usize> = BTreeMap::new();
        for giver in ["a", "b", "c"] {
            for h in v.plan(giver, &BTreeMap::new()).hand_off {
                *to.entry(h.to).or_default() += 1;
            }
        }
        assert!(to["d"] <= 54 && to["e"] <= 54, "{to:?}");
        assert!(to["d"] + to["e"] >= 100, "{to:?}");
    }

    #[test]
    fn keys_left_from_a_lost_lease_are_neither_ours_nor_free() {
        // a's key of bucket 0 is from a lease it lost: not counted as a's, not free.
        let mut v = view(&["a", "b"], &[("a", 0..128), ("b", 128..256)]);
        v.leases.insert(0, 7);
        let plan = v.plan("a", &BTreeMap::new());
        assert!(
            plan.claim.is_empty() && plan.hand_off.is_empty(),
            "{plan:?}"
        );
        v.owners.remove(&0);
        assert_eq!(v.plan("a", &BTreeMap::new()).claim, vec![0]);
    }

    #[test]
    fn given_buckets_still_ours_are_retaken_not_given_twice() {
        let v = view(&["a", "b"], &[("a", 0..256)]);
        let given: BTreeMap<u16, u64> = [(255, 256), (254, 1)].into();
        let plan = v.plan("a", &given);
        // 255 is still ours at the epoch we gave: retake; 254 has another epoch now.
        assert_eq!(plan.retake, vec![(255, 256)]);
        assert!(
            plan.hand_off
                .iter()
                .all(|h| h.bucket != 255 && h.bucket != 254)
        );
    }
}
