//! The pending actions as the worker sees them: by lane (a target and an action kind, so a
//! receiver), each lane in the order of writing, with the lanes that have an attempt in
//! flight and the targets whose scale and rebalance lanes are held (paused). Pure data;
//! the worker is its only user.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{Delivery, DeliveryState};
use crate::act::ActionKind;

/// A target and an action kind: the actions that go, in order, to one receiver.
pub(super) type Lane = (String, ActionKind);

impl Delivery {
    pub(super) fn lane(&self) -> Lane {
        (self.target.clone(), self.kind)
    }
}

/// The pending actions, by lane.
#[derive(Default)]
pub(super) struct Index {
    pending: BTreeMap<u64, Delivery>,
    lanes: HashMap<Lane, BTreeSet<u64>>,
    /// Lanes with an attempt in flight, and the id being attempted.
    busy: HashMap<Lane, u64>,
    /// Paused targets: their scale and rebalance lanes start no attempt (their actions
    /// stay pending and can still be superseded); alerts still go.
    held: HashSet<String>,
}

impl Index {
    /// How many actions are pending.
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    /// The pending action `id`.
    pub(super) fn get(&self, id: u64) -> Option<&Delivery> {
        self.pending.get(&id)
    }

    /// Adds pending records; returns the older ones they supersede (not in flight), with
    /// the newest that supersedes each. Those stay in the index until their outcome is
    /// written.
    pub(super) fn add(&mut self, records: Vec<Delivery>) -> Vec<(u64, u64)> {
        let mut superseded: BTreeMap<u64, u64> = BTreeMap::new();
        for d in records {
            if d.state != DeliveryState::Pending || self.pending.contains_key(&d.id) {
                continue;
            }
            let lane = d.lane();
            if let Some(group) = &d.group {
                let in_flight = self.busy.get(&lane).copied();
                let older: Vec<u64> = self
                    .lanes
                    .get(&lane)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|id| *id < d.id && Some(*id) != in_flight)
                    .filter(|id| {
                        self.pending
                            .get(id)
                            .is_some_and(|o| o.group.as_ref() == Some(group))
                    })
                    .collect();
                for id in older {
                    superseded.insert(id, d.id);
                }
            }
            self.lanes.entry(lane).or_default().insert(d.id);
            self.pending.insert(d.id, d);
        }
        superseded.into_iter().collect()
    }

    /// Takes a record still pending after an attempt: it replaces the indexed one, and its
    /// lane is free again.
    pub(super) fn update(&mut self, d: Delivery) {
        let lane = d.lane();
        if self.busy.get(&lane) == Some(&d.id) {
            self.busy.remove(&lane);
        }
        if let Some(p) = self.pending.get_mut(&d.id) {
            *p = d;
        }
    }

    /// Removes a finished action; frees its lane if it was in flight.
    pub(super) fn remove(&mut self, id: u64) -> Option<Delivery> {
        let d = self.pending.remove(&id)?;
        let lane = d.lane();
        if let Some(ids) = self.lanes.get_mut(&lane) {
            ids.remove(&id);
            if ids.is_empty() {
                self.lanes.remove(&lane);
            }
        }
        if self.busy.get(&lane) == Some(&id) {
            self.busy.remove(&lane);
        }
        Some(d)
    }

    /// Whether a newer pending action of `d`'s group exists.
    pub(super) fn has_newer(&self, d: &Delivery) -> Option<u64> {
        let group = d.group.as_ref()?;
        self.lanes
            .get(&d.lane())?
            .range(d.id + 1..)
            .copied()
            .find(|id| {
                self.pending
                    .get(id)
                    .is_some_and(|o| o.group.as_ref() == Some(group))
            })
    }

    /// The heads of idle lanes due at `now`, longest due first (so no lane starves when
    /// there is not room for all), at most `room`; marks their lanes busy.
    pub(super) fn take_due(&mut self, now: i64, room: usize) -> Vec<Delivery> {
        let mut due: Vec<&Delivery> = self
            .idle_heads()
            .filter(|d| d.next_attempt_ms <= now)
            .collect();
        due.sort_by_key(|d| (d.next_attempt_ms, d.id));
        let due: Vec<Delivery> = due.into_iter().take(room).cloned().collect();
        for d in &due {
            self.busy.insert(d.lane(), d.id);
        }
        due
    }

    /// When the next idle lane's head is due (ms on the outbox's clock).
    pub(super) fn next_wake(&self) -> Option<i64> {
        self.idle_heads().map(|d| d.next_attempt_ms).min()
    }

    /// The pending actions of `target`'s scale and rebalance lanes with no attempt in
    /// flight, oldest first.
    pub(super) fn idle_of(&self, target: &str) -> Vec<Delivery> {
        self.pending
            .values()
            .filter(|d| d.target == target && d.kind != ActionKind::Alert)
            .filter(|d| self.busy.get(&d.lane()) != Some(&d.id))
            .cloned()
            .collect()
    }

    /// Holds (`true`) or releases `target`'s scale and rebalance lanes.
    pub(super) fn hold(&mut self, target: &str, held: bool) {
        if held {
            self.held.insert(target.to_owned());
        } else {
            self.held.remove(target);
        }
    }

    /// Whether a lane is held: a paused target's scale or rebalance lane. Alerts change
    /// nothing on the target, so they are never held.
    fn is_held(&self, (target, kind): &Lane) -> bool {
        *kind != ActionKind::Alert && self.held.contains(target)
    }

    /// The heads of the lanes with no attempt in flight; a held lane's head only when it
    /// passes the pause (a floor's release).
    fn idle_heads(&self) -> impl Iterator<Item = &Delivery> {
        self.lanes
            .iter()
            .filter(|(lane, _)| !self.busy.contains_key(*lane))
            .filter_map(|(lane, ids)| {
                let head = ids.first().and_then(|id| self.pending.get(id))?;
                (head.passes_pause || !self.is_held(lane)).then_some(head)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: u64, target: &str, kind: ActionKind, group: bool, next: i64) -> Delivery {
        Delivery {
            id,
            target: target.into(),
            kind,
            group: group.then(|| format!("{target}/{kind}")),
            idempotency_key: format!("k{id}"),
            body: "{}".into(),
            state: DeliveryState::Pending,
            outcome: None,
            created_at_ms: 0,
            age_from_ms: 0,
            attempts: 0,
            next_attempt_ms: next,
            last_error: None,
            last_status: None,
            response_body: None,
            finished_at_ms: None,
            superseded_by: None,
            epoch: None,
            passes_pause: false,
        }
    }

    fn ids(v: &[Delivery]) -> Vec<u64> {
        let mut ids: Vec<u64> = v.iter().map(|d| d.id).collect();
        ids.sort();
        ids
    }

    use ActionKind::{Rebalance, Scale};

    /// One head per lane, only when due, never while the lane is busy.
    #[test]
    fn lanes_take_their_head_one_at_a_time() {
        let mut ix = Index::default();
        let none = ix.add(vec![
            d(1, "a", Rebalance, false, 0),
            d(2, "a", Rebalance, false, 0),
            d(3, "b", Rebalance, false, 50),
            d(4, "a", Scale, true, 0),
        ]);
        assert!(none.is_empty(), "rebalance is never superseded");
        assert_eq!(ids(&ix.take_due(10, 64)), [1, 4], "b is not due yet");
        assert_eq!(ix.next_wake(), Some(50));
        assert!(
            ix.take_due(100, 64).iter().all(|d| d.id == 3),
            "busy lanes wait"
        );
        ix.remove(1);
        assert_eq!(ids(&ix.take_due(100, 64)), [2]);
        assert_eq!(ix.take_due(100, 64).len(), 0);
        let mut ix2 = Index::default();
        ix2.add(
            (1..=5)
                .map(|i| d(i, &format!("t{i}"), Scale, true, 10 - i as i64))
                .collect(),
        );
        assert_eq!(
            ids(&ix2.take_due(10, 2)),
            [4, 5],
            "at most `room` at once, longest due first"
        );
    }

    /// A record still pending after its attempt frees its lane and is due when it says.
    #[test]
    fn an_update_frees_the_lane_until_the_next_attempt() {
        let mut ix = Index::default();
        ix.add(vec![d(1, "a", Scale, true, 0)]);
        let mut one = ix.take_due(0, 64).remove(0);
        assert_eq!(ix.next_wake(), None, "in flight");
        one.attempts = 1;
        one.next_attempt_ms = 40;
        ix.update(one);
        assert_eq!(ix.next_wake(), Some(40));
        assert!(ix.take_due(39, 64).is_empty());
        assert_eq!(ix.take_due(40, 64)[0].attempts, 1);
    }

    /// A held target's scale and rebalance lanes start nothing, its alerts still go, its
    /// pending actions are still superseded; released, its heads are due again.
    #[test]
    fn held_lanes_wait_until_released() {
        let mut ix = Index::default();
        ix.hold("a", true);
        ix.add(vec![
            d(1, "a", Scale, true, 0),
            d(2, "a", Rebalance, false, 0),
            d(3, "a", ActionKind::Alert, true, 0),
            d(4, "b", Scale, true, 0),
        ]);
        assert_eq!(ids(&ix.take_due(10, 64)), [3, 4]);
        assert_eq!(ix.next_wake(), None, "held lanes wake nothing");
        assert_eq!(ix.add(vec![d(5, "a", Scale, true, 0)]), [(1, 5)]);
        ix.remove(1);
        ix.hold("a", false);
        assert_eq!(ix.next_wake(), Some(0));
        assert_eq!(ids(&ix.take_due(10, 64)), [2, 5]);
    }

    /// A floor's release goes while its target is held, replacing the scale action that
    /// waited; the held rebalance lane still waits.
    #[test]
    fn a_release_passes_the_pause() {
        let mut ix = Index::default();
        ix.hold("a", true);
        ix.add(vec![
            d(1, "a", Scale, true, 0),
            d(2, "a", Rebalance, false, 0),
        ]);
        assert!(ix.take_due(10, 64).is_empty());
        let release = Delivery {
            passes_pause: true,
            ..d(3, "a", Scale, true, 0)
        };
        assert_eq!(
            ix.add(vec![release]),
            [(1, 3)],
            "the waiting scale is replaced"
        );
        ix.remove(1);
        assert_eq!(ix.next_wake(), Some(0));
        assert_eq!(ids(&ix.take_due(10, 64)), [3]);
        ix.remove(3);
        assert!(ix.take_due(10, 64).is_empty(), "rebalance still held");
    }

    /// A newer action of a group supersedes older pending ones, but not one in flight;
    /// that one learns of the newer one when its attempt fails.
    #[test]
    fn newer_of_a_group_supersedes() {
        let mut ix = Index::default();
        ix.add(vec![d(1, "a", Scale, true, 0)]);
        assert_eq!(ix.take_due(0, 64)[0].id, 1);
        assert!(
            ix.add(vec![d(2, "a", Scale, true, 0)]).is_empty(),
            "1 is in flight"
        );
        assert_eq!(ix.add(vec![d(3, "a", Scale, true, 0)]), [(2, 3)]);
        let one = ix.pending[&1].clone();
        assert_eq!(
            ix.has_newer(&one),
            Some(2),
            "2 is still indexed until written"
        );
        ix.remove(2);
        assert_eq!(ix.has_newer(&one), Some(3));
        assert_eq!(
            ix.add(vec![d(4, "b", Scale, true, 0), d(5, "b", Scale, true, 0)]),
            [(4, 5)],
            "within one batch too"
        );
    }
}
