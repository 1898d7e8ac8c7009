//! Rebalance planning: where each shard's replicas should be, and the one next change that
//! brings a shard closer to it. Pure and deterministic (no I/O, no clocks): the placement
//! controller feeds it the cluster state and applies what it returns, and quiverctl uses it
//! for dry runs.
//!
//! A shard's target comes from its collection's even placement ([`balance_collection`]):
//! starting from where the replicas are now, over the eligible Searchers (the live ones
//! plus those gone for less than the rebalance delay, so a restarting Searcher moves no
//! data), every Searcher ends up holding between `floor(R / N)` and `ceil(R / N)` of the
//! collection's `R` replicas, and only what those bounds force moves. A shard gets to its target one change at a time,
//! each safe on its own: a missing target Searcher first joins as a learner (it copies the
//! shard but does not vote), and only once the primary vouches that it holds every
//! acknowledged write (and makes later writes wait for it) does it take the place of a
//! surplus voting replica, so a shard never has fewer voting replicas than
//! its replication factor while a replacement is in progress and never more than one
//! learner. A primary is never dropped: it hands off (a new epoch) first.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{
    model::{AssignmentRecord, ReplicaPhase, ReplicaRecord, ReplicaRole},
    placement::{balance_collection, replica_load, HashRing, DEFAULT_VIRTUAL_NODES},
    view::ClusterState,
};

/// `replicas` with `primary` first (when it is one of them), the rest in their order.
fn primary_first(replicas: &[String], primary: &str) -> Vec<String> {
    let mut ordered = Vec::with_capacity(replicas.len());
    ordered.extend(replicas.iter().find(|id| *id == primary).cloned());
    ordered.extend(replicas.iter().filter(|id| *id != primary).cloned());
    ordered
}

/// The target replicas of every shard of `collection` (index = shard, primary first), from
/// its current voting replicas in `state` (with `assignment` standing in for its shard's,
/// when given), over `ring`: see [`balance_collection`].
fn collection_targets(
    state: &ClusterState,
    ring: &HashRing,
    collection: &str,
    assignment: Option<(u32, &AssignmentRecord)>,
) -> Vec<Vec<String>> {
    let Some(record) = state.collections.get(collection) else {
        return Vec::new();
    };
    let current: Vec<Vec<String>> = (0..record.num_shards)
        .map(|shard| {
            let assignment = match assignment {
                Some((given, assignment)) if given == shard => Some(assignment),
                _ => state.assignment(collection, shard),
            };
            assignment
                .map(|assignment| primary_first(&assignment.replicas, assignment.primary()))
                .unwrap_or_default()
        })
        .collect();
    balance_collection(ring, collection, record.replication_factor, &current)
}

/// Every shard's target replicas, primary first, for the collections in `state`, over the
/// `eligible` Searchers, keyed by (collection, shard): each collection evenly spread, moved
/// as little as possible from its current voting replicas ([`balance_collection`]). A shard
/// gets all eligible Searchers when fewer than its replication factor are eligible, none
/// when none are.
pub fn target_placement(
    state: &ClusterState,
    eligible: &[String],
) -> BTreeMap<(String, u32), Vec<String>> {
    let ring = HashRing::new(eligible, DEFAULT_VIRTUAL_NODES);
    let mut targets = BTreeMap::new();
    for name in state.collections.keys() {
        for (shard, target) in collection_targets(state, &ring, name, None)
            .into_iter()
            .enumerate()
        {
            targets.insert((name.clone(), shard as u32), target);
        }
    }
    targets
}

/// What one planned change does to a shard's assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeKind {
    /// The primary's Searcher is gone: a live, ACTIVE voting replica takes over (new epoch).
    Promote,
    /// The primary's Searcher is leaving the shard: the primary moves first (new epoch).
    Handoff,
    /// A learner no longer in the target, or gone past the rebalance delay, is dropped.
    RemoveLearner,
    /// A caught-up learner takes the place of a surplus voting replica.
    ReplaceWithLearner,
    /// A caught-up learner becomes one more voting replica.
    LearnerToVoter,
    /// A target Searcher starts copying the shard as a learner.
    AddLearner,
    /// A surplus voting replica is dropped from a shard with more than its replication factor.
    Shrink,
}

impl ChangeKind {
    /// The metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Promote => "promote",
            ChangeKind::Handoff => "handoff",
            ChangeKind::RemoveLearner => "remove_learner",
            ChangeKind::ReplaceWithLearner => "replace",
            ChangeKind::LearnerToVoter => "learner_to_voter",
            ChangeKind::AddLearner => "add_learner",
            ChangeKind::Shrink => "shrink",
        }
    }

    pub const ALL: [ChangeKind; 7] = [
        ChangeKind::Promote,
        ChangeKind::Handoff,
        ChangeKind::RemoveLearner,
        ChangeKind::ReplaceWithLearner,
        ChangeKind::LearnerToVoter,
        ChangeKind::AddLearner,
        ChangeKind::Shrink,
    ];
}

impl std::fmt::Display for ChangeKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One change of one shard's assignment, with what it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedChange {
    pub kind: ChangeKind,
    /// The Searcher the change is about: the new primary, the learner, the dropped replica.
    pub searcher: String,
    /// The Searcher it displaces: the old primary of a promotion or handoff, the voting
    /// replica a learner replaces.
    pub replaced: Option<String>,
    /// The whole new assignment.
    pub record: AssignmentRecord,
}

/// The one next change of a shard's assignment towards its target over `eligible`, or
/// `None` when there is nothing to do now (see [`plan_change`] for the rules).
pub fn plan_step(
    collection: &str,
    shard: u32,
    replication_factor: u32,
    assignment: &AssignmentRecord,
    state: &ClusterState,
    eligible: &[String],
    departed_past_delay: &BTreeSet<String>,
) -> Option<AssignmentRecord> {
    plan_change(
        collection,
        shard,
        replication_factor,
        assignment,
        state,
        eligible,
        departed_past_delay,
    )
    .map(|change| change.record)
}

/// [`plan_step`] with what the change is. Rules, the first that applies wins:
///
/// 1. Promotion: the primary's Searcher is not live (not in `state.searchers`): the live
///    voting replica reporting ACTIVE with the highest applied seq (ties: `replicas` order)
///    becomes primary, first in `replicas`, epoch + 1. None qualifies: no change at all.
/// 2. Learners: one no longer in the target, or not live and in `departed_past_delay`, is
///    removed. One that is live, ACTIVE and vouched for by the primary ([`vouches_for`])
///    has caught up: it replaces a surplus (not in the target) voting replica other than the primary,
///    dead ones first; if the primary is the only surplus one, the primary first hands off
///    to the live, ACTIVE target voting replica with the highest applied seq (epoch + 1);
///    with nothing surplus, or nobody to hand off to, the learner becomes a voting replica.
/// 3. Adding: with no learner, a live ACTIVE voting replica to copy from, and a live target
///    Searcher that is no member, the first such (target order) joins as a learner.
/// 4. Shrinking: with more voting replicas than `replication_factor`, a surplus one other
///    than the primary (dead ones first) is removed if every other voting replica is live and
///    ACTIVE; if the primary is the only surplus one, it hands off first as in 2.
///
/// Members that are not live but not in `departed_past_delay` belong in `eligible`, so
/// they stay in the ring and keep their place: a restarting Searcher moves no data.
pub fn plan_change(
    collection: &str,
    shard: u32,
    replication_factor: u32,
    assignment: &AssignmentRecord,
    state: &ClusterState,
    eligible: &[String],
    departed_past_delay: &BTreeSet<String>,
) -> Option<PlannedChange> {
    let ring = HashRing::new(eligible, DEFAULT_VIRTUAL_NODES);
    let target = collection_targets(state, &ring, collection, Some((shard, assignment)))
        .into_iter()
        .nth(shard as usize)
        .unwrap_or_default();
    plan_change_towards(
        &target,
        collection,
        shard,
        replication_factor,
        assignment,
        state,
        departed_past_delay,
    )
}

/// [`plan_change`] with the target already computed (the controller builds one ring per
/// pass, not one per shard).
pub(crate) fn plan_change_towards(
    target: &[String],
    collection: &str,
    shard: u32,
    replication_factor: u32,
    assignment: &AssignmentRecord,
    state: &ClusterState,
    departed_past_delay: &BTreeSet<String>,
) -> Option<PlannedChange> {
    let shard = ShardFacts {
        collection,
        shard,
        state,
        target,
    };
    let primary = assignment.primary().to_string();

    if !shard.live(&primary) {
        let candidates = assignment
            .replicas
            .iter()
            .filter(|id| shard.live(id) && shard.active(id));
        let chosen = shard.highest_seq(candidates)?;
        return Some(PlannedChange {
            kind: ChangeKind::Promote,
            searcher: chosen.clone(),
            replaced: Some(primary),
            record: with_primary(assignment, chosen),
        });
    }

    if let Some(change) = plan_learners(&shard, assignment, &primary, departed_past_delay) {
        return Some(change);
    }

    if assignment.learners.is_empty() {
        let has_source = assignment
            .replicas
            .iter()
            .any(|id| shard.live(id) && shard.active(id));
        let newcomer = target
            .iter()
            .find(|id| shard.live(id) && !assignment.members().any(|member| member == *id));
        if let (true, Some(newcomer)) = (has_source, newcomer) {
            let mut record = assignment.clone();
            record.learners.push(newcomer.clone());
            return Some(PlannedChange {
                kind: ChangeKind::AddLearner,
                searcher: newcomer.clone(),
                replaced: None,
                record,
            });
        }
    }

    if assignment.replicas.len() > replication_factor as usize {
        let removable = assignment
            .replicas
            .iter()
            .filter(|id| **id != primary && !shard.in_target(id));
        if let Some(leaving) = shard.dead_first(removable) {
            let rest_healthy = assignment
                .replicas
                .iter()
                .filter(|id| *id != leaving)
                .all(|id| shard.live(id) && shard.active(id));
            if !rest_healthy {
                return None;
            }
            let mut record = assignment.clone();
            record.replicas.retain(|id| id != leaving);
            return Some(PlannedChange {
                kind: ChangeKind::Shrink,
                searcher: leaving.clone(),
                replaced: None,
                record,
            });
        }
        if !shard.in_target(&primary) {
            return shard.handoff(assignment, &primary);
        }
    }
    None
}

/// Rule 2 of [`plan_change`].
fn plan_learners(
    shard: &ShardFacts<'_>,
    assignment: &AssignmentRecord,
    primary: &str,
    departed_past_delay: &BTreeSet<String>,
) -> Option<PlannedChange> {
    let stale = assignment.learners.iter().find(|learner| {
        !shard.in_target(learner)
            || (!shard.live(learner) && departed_past_delay.contains(*learner))
    });
    if let Some(stale) = stale {
        let mut record = assignment.clone();
        record.learners.retain(|id| id != stale);
        return Some(PlannedChange {
            kind: ChangeKind::RemoveLearner,
            searcher: stale.clone(),
            replaced: None,
            record,
        });
    }

    // Published sequence numbers cannot tell that a learner caught up: the primary may have
    // acknowledged more since it published, on replicas the switch is about to drop. Its
    // own word can: it vouches for a learner once the learner holds every write it
    // acknowledged, and waits for the learner on every write after.
    let primary_record = shard.record(primary)?;
    let caught_up = assignment.learners.iter().find(|learner| {
        shard.live(learner)
            && shard.active(learner)
            && vouches_for(primary_record, assignment.epoch, learner)
    })?;
    let surplus = assignment
        .replicas
        .iter()
        .filter(|id| *id != primary && !shard.in_target(id));
    if let Some(leaving) = shard.dead_first(surplus) {
        let mut record = assignment.clone();
        for id in record.replicas.iter_mut() {
            if id == leaving {
                *id = caught_up.clone();
            }
        }
        record.learners.retain(|id| id != caught_up);
        return Some(PlannedChange {
            kind: ChangeKind::ReplaceWithLearner,
            searcher: caught_up.clone(),
            replaced: Some(leaving.clone()),
            record,
        });
    }
    if !shard.in_target(primary) {
        if let Some(handoff) = shard.handoff(assignment, primary) {
            return Some(handoff);
        }
    }
    // Nothing to replace, or no voting replica fit to take the primary over: the learner
    // votes, and shrinking (with a handoff first, to it if need be) removes the surplus.
    let mut record = assignment.clone();
    record.learners.retain(|id| id != caught_up);
    record.replicas.push(caught_up.clone());
    Some(PlannedChange {
        kind: ChangeKind::LearnerToVoter,
        searcher: caught_up.clone(),
        replaced: None,
        record,
    })
}

/// Whether `primary_record`, the record of the primary of an assignment of `epoch`, vouches
/// that `learner` holds every write it acknowledged (and that its writes wait for the
/// learner from then on): only then may the learner take a voting replica's place.
pub fn vouches_for(primary_record: &ReplicaRecord, epoch: u64, learner: &str) -> bool {
    primary_record.state == ReplicaPhase::Active
        && primary_record.role == Some(ReplicaRole::Primary)
        && primary_record.epoch == epoch
        && primary_record
            .learners_in_sync
            .iter()
            .any(|id| id == learner)
}

/// What the rules need to know about one shard.
struct ShardFacts<'a> {
    collection: &'a str,
    shard: u32,
    state: &'a ClusterState,
    target: &'a [String],
}

impl ShardFacts<'_> {
    fn live(&self, searcher: &str) -> bool {
        self.state.searchers.contains_key(searcher)
    }

    fn in_target(&self, searcher: &str) -> bool {
        self.target.iter().any(|id| id == searcher)
    }

    fn active(&self, searcher: &str) -> bool {
        self.state
            .replica(self.collection, self.shard, searcher)
            .is_some_and(|record| record.state == ReplicaPhase::Active)
    }

    fn record(&self, searcher: &str) -> Option<&ReplicaRecord> {
        self.state.replica(self.collection, self.shard, searcher)
    }

    fn record_seq(&self, searcher: &str) -> Option<u64> {
        self.record(searcher).map(|record| record.applied_seq)
    }

    /// The candidate with the highest published applied seq; the first of equals.
    fn highest_seq<'c>(&self, candidates: impl Iterator<Item = &'c String>) -> Option<&'c String> {
        let mut best: Option<(&String, u64)> = None;
        for candidate in candidates {
            let seq = self.record_seq(candidate).unwrap_or(0);
            if best.is_none_or(|(_, best_seq)| seq > best_seq) {
                best = Some((candidate, seq));
            }
        }
        best.map(|(candidate, _)| candidate)
    }

    /// The first candidate that is not live, else the first.
    fn dead_first<'c>(&self, candidates: impl Iterator<Item = &'c String>) -> Option<&'c String> {
        let candidates: Vec<&String> = candidates.collect();
        candidates
            .iter()
            .find(|id| !self.live(id))
            .or(candidates.first())
            .copied()
    }

    /// The primary moves to the live, ACTIVE target voting replica with the highest seq.
    fn handoff(&self, assignment: &AssignmentRecord, primary: &str) -> Option<PlannedChange> {
        let candidates = assignment
            .replicas
            .iter()
            .filter(|id| *id != primary && self.in_target(id) && self.live(id) && self.active(id));
        let chosen = self.highest_seq(candidates)?;
        Some(PlannedChange {
            kind: ChangeKind::Handoff,
            searcher: chosen.clone(),
            replaced: Some(primary.to_string()),
            record: with_primary(assignment, chosen),
        })
    }
}

/// `assignment` with `primary` (one of its voting replicas) leading, first in `replicas`,
/// in the next epoch.
fn with_primary(assignment: &AssignmentRecord, primary: &str) -> AssignmentRecord {
    debug_assert!(assignment.replicas.iter().any(|id| id == primary));
    let replicas = primary_first(&assignment.replicas, primary);
    AssignmentRecord {
        replicas,
        primary: primary.to_string(),
        epoch: assignment.epoch + 1,
        learners: assignment.learners.clone(),
    }
}

/// One replica that must move for a shard to reach its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub collection: String,
    pub shard: u32,
    /// The voting replica it replaces; `None` when the shard only gains one.
    pub from: Option<String>,
    pub to: String,
}

/// How far the cluster is from its target placement.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RebalancePlan {
    /// In (collection, shard) order.
    pub moves: Vec<Move>,
    /// Target replicas not yet among their shard's voting replicas (`moves.len()`).
    pub moved_replicas: usize,
    /// Target replicas of every shard.
    pub total_replicas: usize,
    /// `moved_replicas / total_replicas`; 0 without replicas.
    pub moved_fraction: f64,
    /// Shards whose voting replicas differ from their target or that have learners.
    pub pending_shards: usize,
}

/// How evenly one collection's voting replicas are spread, now and at the target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectionLoad {
    pub collection: String,
    /// Its voting replicas at the target.
    pub replicas: usize,
    /// The most any eligible Searcher holds now, and at the target.
    pub max_now: usize,
    pub max_target: usize,
    /// Replicas per eligible Searcher at the target.
    pub mean: f64,
}

/// [`CollectionLoad`] of every collection in `state`, over `eligible`.
pub fn collection_loads(state: &ClusterState, eligible: &[String]) -> Vec<CollectionLoad> {
    let targets = target_placement(state, eligible);
    state
        .collections
        .values()
        .map(|record| {
            let shards = 0..record.num_shards;
            let now = shards.clone().filter_map(|shard| {
                state
                    .assignment(&record.name, shard)
                    .map(|assignment| &assignment.replicas)
            });
            let target = shards.map(|shard| &targets[&(record.name.clone(), shard)]);
            let replicas = target.clone().map(Vec::len).sum();
            let (max_now, _) = replica_load(now, eligible);
            let (max_target, mean) = replica_load(target, eligible);
            CollectionLoad {
                collection: record.name.clone(),
                replicas,
                max_now,
                max_target,
                mean,
            }
        })
        .collect()
}

/// Compares every shard's voting replicas in `state` with its target over `eligible`.
pub fn plan_moves(state: &ClusterState, eligible: &[String]) -> RebalancePlan {
    plan_moves_to(state, &target_placement(state, eligible))
}

/// [`plan_moves`] against targets already computed.
pub(crate) fn plan_moves_to(
    state: &ClusterState,
    targets: &BTreeMap<(String, u32), Vec<String>>,
) -> RebalancePlan {
    let mut plan = RebalancePlan::default();
    let no_assignment = AssignmentRecord::new(Vec::new());
    for ((collection, shard), target) in targets {
        let assignment = state
            .assignment(collection, *shard)
            .unwrap_or(&no_assignment);
        let current = &assignment.replicas;
        plan.total_replicas += target.len();
        let mut leaving = current.iter().filter(|id| !target.contains(id));
        let mut pending = !assignment.learners.is_empty();
        for arriving in target.iter().filter(|id| !current.contains(id)) {
            plan.moves.push(Move {
                collection: collection.clone(),
                shard: *shard,
                from: leaving.next().cloned(),
                to: arriving.clone(),
            });
            pending = true;
        }
        // Surplus replicas left over once every arrival is paired.
        pending |= leaving.next().is_some();
        plan.pending_shards += usize::from(pending);
    }
    plan.moved_replicas = plan.moves.len();
    plan.moved_fraction = if plan.total_replicas == 0 {
        0.0
    } else {
        plan.moved_replicas as f64 / plan.total_replicas as f64
    };
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Capacity, CollectionRecord, ReplicaRecord, SearcherRecord},
        placement::{place_collection, LoadBounds},
    };

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    fn searcher(id: &str) -> SearcherRecord {
        SearcherRecord {
            id: id.to_string(),
            address: format!("http://{id}:7001"),
            version: "0.1.0".to_string(),
            started_at: "2024-05-01T10:00:00.000Z".to_string(),
            capacity: Capacity {
                cpus: 2,
                memory_bytes: 1 << 30,
            },
        }
    }

    fn collection(name: &str, num_shards: u32, replication_factor: u32) -> CollectionRecord {
        CollectionRecord {
            name: name.to_string(),
            dimension: 4,
            metric: quiver_index::Metric::L2,
            num_shards,
            replication_factor,
            index_spec: "flat".to_string(),
            created_at: "2024-05-01T10:00:00.000Z".to_string(),
            payload_indexes: Vec::new(),
        }
    }

    /// A cluster whose `live` Searchers host `collections` at their placement over
    /// `placed_on` (as created there), every replica ACTIVE at `seq`.
    fn cluster(
        live: &[&str],
        placed_on: &[&str],
        collections: &[(&str, u32, u32)],
        seq: u64,
    ) -> ClusterState {
        let mut state = ClusterState::default();
        for id in live {
            state.searchers.insert(id.to_string(), searcher(id));
        }
        for (name, num_shards, replication_factor) in collections {
            state.collections.insert(
                name.to_string(),
                collection(name, *num_shards, *replication_factor),
            );
            let placement = if placed_on.is_empty() {
                vec![Vec::new(); *num_shards as usize]
            } else {
                place_collection(&ids(placed_on), name, *num_shards, *replication_factor).unwrap()
            };
            for (shard, replicas) in (0..*num_shards).zip(placement) {
                for id in &replicas {
                    set_replica(&mut state, name, shard, id, ReplicaPhase::Active, seq);
                }
                state
                    .assignments
                    .insert((name.to_string(), shard), AssignmentRecord::new(replicas));
            }
        }
        state
    }

    /// Makes the record of the assignment's primary that of a ready primary vouching for
    /// `learners`.
    fn vouch(
        state: &mut ClusterState,
        collection: &str,
        shard: u32,
        assignment: &AssignmentRecord,
        learners: &[String],
    ) {
        let key = (
            collection.to_string(),
            shard,
            assignment.primary().to_string(),
        );
        if let Some(record) = state.replicas.get_mut(&key) {
            record.role = Some(ReplicaRole::Primary);
            record.epoch = assignment.epoch;
            record.learners_in_sync = learners.to_vec();
        }
    }

    fn set_replica(
        state: &mut ClusterState,
        collection: &str,
        shard: u32,
        searcher: &str,
        phase: ReplicaPhase,
        seq: u64,
    ) {
        state.replicas.insert(
            (collection.to_string(), shard, searcher.to_string()),
            ReplicaRecord {
                state: phase,
                point_count: seq,
                applied_seq: seq,
                ..Default::default()
            },
        );
    }

    #[test]
    fn targets_keep_a_placement_and_shrink_to_the_eligible() {
        let four = ids(&["s1", "s2", "s3", "s4"]);
        let state = cluster(
            &["s1", "s2", "s3", "s4"],
            &["s1", "s2", "s3", "s4"],
            &[("docs", 20, 3)],
            1,
        );
        let placed = place_collection(&four, "docs", 20, 3).unwrap();
        let targets = target_placement(&state, &four);
        for (shard, replicas) in placed.iter().enumerate() {
            assert_eq!(targets[&("docs".to_string(), shard as u32)], *replicas);
        }
        let two = ids(&["s1", "s2"]);
        for target in target_placement(&state, &two).values() {
            assert_eq!(target.len(), 2);
            assert!(two.iter().all(|id| target.contains(id)));
        }
        assert!(target_placement(&state, &[]).values().all(Vec::is_empty));
    }

    #[test]
    fn a_lopsided_placement_is_evened_out() {
        // 8 shards x RF 2 as plain consistent hashing left them on five Searchers: 6/4/3/3/0.
        let five = ids(&["s1", "s2", "s3", "s4", "s5"]);
        let mut state = cluster(&["s1", "s2", "s3", "s4", "s5"], &[], &[("docs", 8, 2)], 1);
        let lopsided = [
            ["s1", "s2"],
            ["s1", "s3"],
            ["s1", "s4"],
            ["s1", "s2"],
            ["s1", "s3"],
            ["s1", "s4"],
            ["s2", "s3"],
            ["s2", "s4"],
        ];
        for (shard, replicas) in lopsided.iter().enumerate() {
            state.assignments.insert(
                ("docs".into(), shard as u32),
                AssignmentRecord::new(ids(replicas)),
            );
        }
        let plan = plan_moves(&state, &five);
        let targets = target_placement(&state, &five);
        let bounds = LoadBounds::new(16, 5);
        for id in &five {
            let load = targets
                .values()
                .filter(|target| target.contains(id))
                .count();
            assert!((bounds.floor..=bounds.cap).contains(&load), "{id}: {load}");
        }
        // s5 takes three (the floor): s1 sheds two to the cap, one more comes from a
        // Searcher above the floor. Nothing else moves.
        assert_eq!(plan.moved_replicas, 3, "{plan:?}");
        assert!(
            plan.moves.iter().all(|planned| planned.to == "s5"),
            "{plan:?}"
        );
    }

    #[test]
    fn a_fourth_searcher_moves_about_a_quarter_of_the_replicas() {
        let state = cluster(
            &["s1", "s2", "s3", "s4"],
            &["s1", "s2", "s3"],
            &[("docs", 256, 2), ("images", 128, 3)],
            7,
        );
        assert_eq!(
            plan_moves(&state, &ids(&["s1", "s2", "s3"])).moved_replicas,
            0
        );
        let plan = plan_moves(&state, &ids(&["s1", "s2", "s3", "s4"]));
        println!(
            "join 3→4: moved {} of {} replicas ({:.1}%, ideal 25%), {} shards pending",
            plan.moved_replicas,
            plan.total_replicas,
            plan.moved_fraction * 100.0,
            plan.pending_shards
        );
        assert_eq!(plan.total_replicas, 256 * 2 + 128 * 3);
        assert!(
            (0.15..=0.35).contains(&plan.moved_fraction),
            "{}",
            plan.moved_fraction
        );
        assert_eq!(plan.pending_shards, plan.moved_replicas);
        for planned in &plan.moves {
            assert_eq!(planned.to, "s4", "{planned:?}");
            let from = planned.from.as_deref().expect("a full shard swaps one out");
            assert!(["s1", "s2", "s3"].contains(&from), "{planned:?}");
        }
        // Ordered by (collection, shard), deterministic.
        assert_eq!(plan, plan_moves(&state, &ids(&["s4", "s3", "s2", "s1"])));
    }

    #[test]
    fn a_dead_primary_is_replaced_by_the_most_advanced_active_replica() {
        let mut state = cluster(&["b", "c", "d"], &[], &[("docs", 1, 3)], 0);
        let assignment = AssignmentRecord {
            epoch: 4,
            learners: ids(&["d"]),
            ..AssignmentRecord::new(ids(&["a", "b", "c"]))
        };
        set_replica(&mut state, "docs", 0, "b", ReplicaPhase::Active, 5);
        set_replica(&mut state, "docs", 0, "c", ReplicaPhase::Active, 9);
        set_replica(&mut state, "docs", 0, "d", ReplicaPhase::Active, 50);
        let eligible = ids(&["a", "b", "c", "d"]);
        let none = BTreeSet::new();
        let change = plan_change("docs", 0, 3, &assignment, &state, &eligible, &none).unwrap();
        assert_eq!(change.kind, ChangeKind::Promote);
        assert_eq!(change.searcher, "c");
        assert_eq!(change.replaced.as_deref(), Some("a"));
        assert_eq!(
            change.record,
            AssignmentRecord {
                replicas: ids(&["c", "a", "b"]),
                primary: "c".into(),
                epoch: 5,
                learners: ids(&["d"]),
            },
            "the learner never becomes primary, and stays a learner"
        );

        // Ties go to the earlier replica; a BOOTING replica never qualifies.
        set_replica(&mut state, "docs", 0, "b", ReplicaPhase::Active, 9);
        let record = plan_step("docs", 0, 3, &assignment, &state, &eligible, &none).unwrap();
        assert_eq!(record.primary(), "b");
        set_replica(&mut state, "docs", 0, "b", ReplicaPhase::Booting, 90);
        let record = plan_step("docs", 0, 3, &assignment, &state, &eligible, &none).unwrap();
        assert_eq!(record.primary(), "c");

        // Nobody fit to lead: no change at all, even if other rules would apply.
        set_replica(&mut state, "docs", 0, "c", ReplicaPhase::Failed, 9);
        assert_eq!(
            plan_step("docs", 0, 3, &assignment, &state, &eligible, &none),
            None
        );
        state.searchers.remove("b");
        set_replica(&mut state, "docs", 0, "b", ReplicaPhase::Active, 90);
        assert_eq!(
            plan_step("docs", 0, 3, &assignment, &state, &eligible, &none),
            None,
            "an ACTIVE record of a Searcher that is not live does not count"
        );
    }

    #[test]
    fn a_restarting_searcher_changes_nothing() {
        let mut state = cluster(
            &["s1", "s2", "s3", "s4"],
            &["s1", "s2", "s3", "s4"],
            &[("docs", 64, 2)],
            3,
        );
        // s3 restarts: its key and replica records are gone for a while.
        state.searchers.remove("s3");
        state
            .replicas
            .retain(|(_, _, searcher), _| searcher != "s3");
        let eligible = ids(&["s1", "s2", "s3", "s4"]);
        let none = BTreeSet::new();
        let mut followers_of_s3 = 0;
        for ((name, shard), assignment) in &state.assignments {
            let change = plan_change(name, *shard, 2, assignment, &state, &eligible, &none);
            if assignment.primary() == "s3" {
                // A primary must be replaced at once (writes need one), but only the
                // primary moves: the membership is untouched.
                let change = change.expect("a dead primary is replaced");
                assert_eq!(change.kind, ChangeKind::Promote);
                let mut before = assignment.replicas.clone();
                let mut after = change.record.replicas.clone();
                before.sort();
                after.sort();
                assert_eq!(before, after);
            } else {
                followers_of_s3 += usize::from(assignment.replicas.contains(&"s3".to_string()));
                assert_eq!(change, None, "shard {shard}");
            }
        }
        assert!(followers_of_s3 > 0);
        // Nor does the dry-run plan see any move.
        assert_eq!(plan_moves(&state, &eligible).moved_replicas, 0);
    }

    /// Plays a shard's changes until there are none, like a controller pass after pass,
    /// with every learner catching up two passes after it was added. Checks the invariants
    /// at each change and returns the kinds of change in order.
    fn converge(
        state: &mut ClusterState,
        collection: &str,
        shard: u32,
        replication_factor: u32,
        eligible: &[String],
        departed: &BTreeSet<String>,
    ) -> Vec<ChangeKind> {
        let mut kinds = Vec::new();
        let mut booting_for: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..50 {
            // Learners catch up: BOOTING for two passes, then at the primary's seq.
            let assignment = state.assignment(collection, shard).unwrap().clone();
            let primary_seq = state
                .replica(collection, shard, assignment.primary())
                .map_or(0, |record| record.applied_seq);
            for learner in &assignment.learners {
                let passes = booting_for.entry(learner.clone()).or_insert(0);
                *passes += 1;
                let phase = if *passes > 2 {
                    ReplicaPhase::Active
                } else {
                    ReplicaPhase::Booting
                };
                if state.searchers.contains_key(learner) {
                    set_replica(state, collection, shard, learner, phase, primary_seq);
                }
            }
            // The primary vouches for the learners that caught up.
            let caught_up: Vec<String> = assignment
                .learners
                .iter()
                .filter(|learner| {
                    state.searchers.contains_key(*learner)
                        && booting_for.get(*learner).is_some_and(|passes| *passes > 2)
                })
                .cloned()
                .collect();
            vouch(state, collection, shard, &assignment, &caught_up);
            let Some(change) = plan_change(
                collection,
                shard,
                replication_factor,
                &assignment,
                state,
                eligible,
                departed,
            ) else {
                let catching_up = assignment.learners.iter().any(|learner| {
                    state.searchers.contains_key(learner)
                        && booting_for.get(learner).is_some_and(|passes| *passes <= 2)
                });
                if catching_up {
                    continue;
                }
                return kinds;
            };
            let before = &assignment;
            let after = &change.record;
            assert!(after.learners.len() <= 1, "{kinds:?} then {change:?}");
            assert!(
                after.replicas.iter().any(|id| id == after.primary()),
                "the primary votes: {change:?}"
            );
            assert_eq!(after.replicas[0], after.primary(), "primary first");
            if after.primary() != before.primary() {
                assert!(matches!(
                    change.kind,
                    ChangeKind::Promote | ChangeKind::Handoff
                ));
                assert_eq!(after.epoch, before.epoch + 1);
            } else {
                assert_eq!(after.epoch, before.epoch, "{change:?}");
                assert!(
                    after.replicas.contains(&before.primary().to_string()),
                    "the primary is never dropped without a handoff: {change:?}"
                );
            }
            if before.replicas.len() >= replication_factor as usize {
                assert!(
                    after.replicas.len() >= replication_factor as usize,
                    "never fewer voters than the replication factor: {change:?}"
                );
            }
            kinds.push(change.kind);
            state
                .assignments
                .insert((collection.to_string(), shard), change.record);
        }
        panic!("no convergence: {kinds:?}");
    }

    #[test]
    fn learners_join_catch_up_and_take_over() {
        let mut state = cluster(
            &["s1", "s2", "s3", "s4"],
            &["s1", "s2", "s3"],
            &[("docs", 64, 2)],
            11,
        );
        // s1 leads every shard it holds (after some earlier promotions): when it has to
        // give shards up to the newcomer, it can only give up primaries, which hand off
        // first. (A Searcher with followers gives those up first.)
        for shard in 0..64 {
            let assignment = state.assignment("docs", shard).unwrap();
            if assignment.replicas.contains(&"s1".to_string()) && assignment.primary() != "s1" {
                let promoted = with_primary(assignment, "s1");
                state.assignments.insert(("docs".into(), shard), promoted);
            }
        }
        let eligible = ids(&["s1", "s2", "s3", "s4"]);
        let none = BTreeSet::new();
        // The target is computed once here and must hold while the shards move one by one.
        let targets = target_placement(&state, &eligible);
        let mut seen: BTreeSet<ChangeKind> = BTreeSet::new();
        for shard in 0..64 {
            let before = state.assignment("docs", shard).unwrap().clone();
            let kinds = converge(&mut state, "docs", shard, 2, &eligible, &none);
            let after = state.assignment("docs", shard).unwrap();
            let target = targets[&("docs".to_string(), shard)].clone();
            let mut voting = after.replicas.clone();
            voting.sort();
            let mut wanted = target.clone();
            wanted.sort();
            assert_eq!(voting, wanted, "shard {shard}: {kinds:?}");
            assert!(after.learners.is_empty());
            if before.replicas.iter().all(|id| target.contains(id)) {
                assert!(kinds.is_empty());
            } else if target.contains(&before.primary().to_string()) {
                assert_eq!(
                    kinds,
                    [ChangeKind::AddLearner, ChangeKind::ReplaceWithLearner],
                    "shard {shard}"
                );
            } else {
                assert_eq!(
                    kinds,
                    [
                        ChangeKind::AddLearner,
                        ChangeKind::Handoff,
                        ChangeKind::ReplaceWithLearner
                    ],
                    "shard {shard}"
                );
            }
            seen.extend(kinds);
        }
        assert!(seen.contains(&ChangeKind::Handoff), "{seen:?}");
        assert_eq!(plan_moves(&state, &eligible).pending_shards, 0);
    }

    #[test]
    fn a_learner_switches_in_only_on_its_primarys_word() {
        let mut state = cluster(&["s1", "s2", "s3"], &["s1", "s2"], &[("docs", 1, 2)], 9);
        let none = BTreeSet::new();
        let shard = 0;
        let mut assignment = state.assignment("docs", shard).unwrap().clone();
        assignment.replicas = ids(&["s1", "s2"]);
        assignment.primary = "s1".into();
        assignment.learners = ids(&["s3"]);
        // Whatever the ring says, make s2 surplus by targeting s1 and s3.
        let target = ids(&["s1", "s3"]);
        state
            .assignments
            .insert(("docs".into(), shard), assignment.clone());
        set_replica(&mut state, "docs", shard, "s3", ReplicaPhase::Active, 7);
        let plan = |state: &ClusterState| {
            plan_change_towards(&target, "docs", shard, 2, &assignment, state, &none)
                .map(|change| change.kind)
        };
        // At the primary's published seq, ACTIVE, yet the primary may have acknowledged
        // more since, on s2 alone: not yet.
        assert_eq!(plan(&state), None);
        // A vouch from an earlier epoch, or from a record that is not the primary's, does
        // not count.
        let mut earlier = assignment.clone();
        earlier.epoch -= 1;
        vouch(&mut state, "docs", shard, &earlier, &ids(&["s3"]));
        assert_eq!(plan(&state), None);
        state
            .replicas
            .get_mut(&("docs".to_string(), shard, "s1".to_string()))
            .unwrap()
            .role = Some(ReplicaRole::Follower);
        assert_eq!(plan(&state), None);
        vouch(&mut state, "docs", shard, &assignment, &ids(&["s3"]));
        assert_eq!(plan(&state), Some(ChangeKind::ReplaceWithLearner));
        // Vouched for, but BOOTING again (it started over from a snapshot) or gone: no.
        set_replica(&mut state, "docs", shard, "s3", ReplicaPhase::Booting, 7);
        assert_eq!(plan(&state), None);
        set_replica(&mut state, "docs", shard, "s3", ReplicaPhase::Active, 7);
        state.searchers.remove("s3");
        assert_eq!(plan(&state), None);
    }

    #[test]
    fn a_departed_searcher_is_replaced() {
        let mut state = cluster(
            &["s1", "s2", "s3", "s4"],
            &["s1", "s2", "s3", "s4"],
            &[("docs", 32, 3)],
            5,
        );
        state.searchers.remove("s2");
        state
            .replicas
            .retain(|(_, _, searcher), _| searcher != "s2");
        let departed: BTreeSet<String> = ["s2".to_string()].into();
        let eligible = ids(&["s1", "s3", "s4"]);
        let mut replaced = 0;
        for shard in 0..32 {
            let before = state.assignment("docs", shard).unwrap().clone();
            let kinds = converge(&mut state, "docs", shard, 3, &eligible, &departed);
            let after = state.assignment("docs", shard).unwrap();
            let mut voting = after.replicas.clone();
            voting.sort();
            assert_eq!(voting, eligible, "shard {shard}: {kinds:?}");
            if before.replicas.contains(&"s2".to_string()) {
                replaced += 1;
                assert!(
                    kinds.ends_with(&[ChangeKind::AddLearner, ChangeKind::ReplaceWithLearner]),
                    "{kinds:?}"
                );
                assert_eq!(
                    kinds.first() == Some(&ChangeKind::Promote),
                    before.primary() == "s2"
                );
            } else {
                assert!(kinds.is_empty(), "{kinds:?}");
            }
        }
        assert!(replaced > 0);
    }

    #[test]
    fn a_departed_searcher_without_a_replacement_keeps_its_place() {
        let mut state = cluster(&["a", "b", "c"], &["a", "b", "c"], &[("docs", 16, 3)], 5);
        state.searchers.remove("c");
        state.replicas.retain(|(_, _, searcher), _| searcher != "c");
        let departed: BTreeSet<String> = ["c".to_string()].into();
        let eligible = ids(&["a", "b"]);
        for shard in 0..16 {
            let before = state.assignment("docs", shard).unwrap().clone();
            let kinds = converge(&mut state, "docs", shard, 3, &eligible, &departed);
            let after = state.assignment("docs", shard).unwrap();
            // Dropping c would leave fewer voters than the replication factor, and there
            // is nowhere to copy it to: it stays, only no longer as primary.
            let expected: &[ChangeKind] = if before.primary() == "c" {
                &[ChangeKind::Promote]
            } else {
                &[]
            };
            assert_eq!(kinds, expected);
            assert_eq!(after.replicas.len(), 3);
            assert_ne!(after.primary(), "c");
        }
    }

    #[test]
    fn a_single_replica_moves_through_a_handoff() {
        // Both shards of a collection at RF 1 on a; b joins and takes one of them.
        let both = ids(&["a", "b"]);
        let mut state = cluster(&["a", "b"], &["a"], &[("docs", 2, 1)], 4);
        let targets = target_placement(&state, &both);
        let shard = (0..2)
            .find(|shard| targets[&("docs".to_string(), *shard)] == ["b"])
            .unwrap();
        let kinds = converge(&mut state, "docs", shard, 1, &both, &BTreeSet::new());
        assert_eq!(
            kinds,
            [
                ChangeKind::AddLearner,
                ChangeKind::LearnerToVoter,
                ChangeKind::Handoff,
                ChangeKind::Shrink
            ]
        );
        let after = state.assignment("docs", shard).unwrap();
        assert_eq!(after.replicas, ["b"]);
        assert_eq!(after.epoch, 2);
    }

    #[test]
    fn stale_learners_are_removed() {
        let mut state = cluster(&["s1", "s2", "s3"], &["s1", "s2"], &[("docs", 8, 2)], 1);
        let none = BTreeSet::new();
        let two = ids(&["s1", "s2"]);
        for shard in 0..8 {
            // s3 is not in any target over s1 and s2.
            let assignment = AssignmentRecord {
                learners: ids(&["s3"]),
                ..state.assignment("docs", shard).unwrap().clone()
            };
            let change = plan_change("docs", shard, 2, &assignment, &state, &two, &none).unwrap();
            assert_eq!(change.kind, ChangeKind::RemoveLearner);
            assert!(change.record.learners.is_empty());
            assert_eq!(change.record.replicas, assignment.replicas);
        }
        // A learner in the target that has been gone too long is dropped; one just
        // restarting is kept.
        let three = ids(&["s1", "s2", "s3"]);
        let targets = target_placement(&state, &three);
        let shard = (0..8)
            .find(|shard| targets[&("docs".to_string(), *shard)].contains(&"s3".into()))
            .unwrap();
        let assignment = AssignmentRecord {
            learners: ids(&["s3"]),
            ..state.assignment("docs", shard).unwrap().clone()
        };
        state.searchers.remove("s3");
        assert_eq!(
            plan_step("docs", shard, 2, &assignment, &state, &three, &none),
            None
        );
        let departed: BTreeSet<String> = ["s3".to_string()].into();
        let change = plan_change("docs", shard, 2, &assignment, &state, &three, &departed).unwrap();
        assert_eq!(change.kind, ChangeKind::RemoveLearner);
        // And no learner is added on a Searcher that is not live.
        let bare = AssignmentRecord {
            learners: Vec::new(),
            ..assignment
        };
        assert_eq!(
            plan_step("docs", shard, 2, &bare, &state, &three, &none),
            None
        );
    }

    #[test]
    fn shrinking_waits_for_healthy_voters() {
        let mut state = cluster(&["a", "b", "c"], &[], &[("docs", 1, 2)], 0);
        let eligible = ids(&["a", "b", "c"]);
        // Three voters for two places: the target keeps two of them.
        let assignment = AssignmentRecord::new(eligible.clone());
        state
            .assignments
            .insert(("docs".into(), 0), assignment.clone());
        let target = target_placement(&state, &eligible)[&("docs".to_string(), 0)].clone();
        assert_eq!(target.len(), 2);
        assert_eq!(target[0], "a", "the primary stays");
        let extra = eligible.iter().find(|id| !target.contains(id)).unwrap();
        for id in &eligible {
            set_replica(&mut state, "docs", 0, id, ReplicaPhase::Active, 3);
        }
        set_replica(&mut state, "docs", 0, &target[1], ReplicaPhase::Booting, 3);
        let none = BTreeSet::new();
        assert_eq!(
            plan_step("docs", 0, 2, &assignment, &state, &eligible, &none),
            None
        );
        set_replica(&mut state, "docs", 0, &target[1], ReplicaPhase::Active, 3);
        let change = plan_change("docs", 0, 2, &assignment, &state, &eligible, &none).unwrap();
        assert_eq!(change.kind, ChangeKind::Shrink);
        assert_eq!(change.searcher, *extra);
        assert_eq!(change.record.replicas, target);
    }
}
