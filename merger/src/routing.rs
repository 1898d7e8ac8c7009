//! Which Searcher answers for which shard. Pure functions over a [`ClusterState`] snapshot,
//! so the search path never reads etcd.

use std::collections::{BTreeMap, HashMap, HashSet};

use quiver_cluster::{ClusterState, SearcherRecord};

use crate::load::LoadSnapshot;

/// The calls of one search round: each Searcher gets one call covering all its shards.
#[derive(Debug, Default, PartialEq)]
pub struct SearchPlan {
    /// Searcher id → (address, shards).
    pub calls: BTreeMap<String, (String, Vec<u32>)>,
    /// Shards no eligible replica can serve, with why.
    pub unroutable: Vec<(u32, String)>,
}

/// A shard's ACTIVE replicas on live Searchers, split by how many writes they applied.
struct ReadCandidates<'a> {
    /// Those whose `applied_seq` is the highest any ACTIVE replica of the shard reports, in
    /// assignment order.
    current: Vec<&'a SearcherRecord>,
    /// The rest, least behind first (assignment order among equals).
    lagging: Vec<&'a SearcherRecord>,
}

/// Replicas that missed writes (down or BOOTING while their peers took them) have no way to
/// catch up yet, so reading from one returns stale data: reads go to the replicas that
/// applied the most writes, and a lagging one serves only when none of those can, which
/// still beats not answering for the shard at all. `applied_seq` is republished with a
/// small delay after writes, so a replica that is merely a moment behind its peers is
/// skipped for that moment, which is harmless: the up-to-date peers serve instead.
fn read_candidates<'a>(
    state: &'a ClusterState,
    collection: &str,
    shard: u32,
) -> ReadCandidates<'a> {
    let with_seq: Vec<(&SearcherRecord, u64)> = state
        .active_replicas(collection, shard)
        .into_iter()
        .map(|searcher| {
            let applied_seq = state
                .replica(collection, shard, &searcher.id)
                .map_or(0, |record| record.applied_seq);
            (searcher, applied_seq)
        })
        .collect();
    let highest = with_seq.iter().map(|(_, seq)| *seq).max().unwrap_or(0);
    let (current, mut lagging): (Vec<_>, Vec<_>) =
        with_seq.into_iter().partition(|(_, seq)| *seq == highest);
    // Stable, so replicas equally far behind keep their assignment order.
    lagging.sort_by(|(_, left), (_, right)| right.cmp(left));
    ReadCandidates {
        current: current.into_iter().map(|(searcher, _)| searcher).collect(),
        lagging: lagging.into_iter().map(|(searcher, _)| searcher).collect(),
    }
}

/// Where rotation `rotation` starts for `shard` among `count` replicas.
fn rotation_offset(rotation: u64, shard: u32, count: usize) -> usize {
    debug_assert!(count > 0);
    (rotation.wrapping_add(u64::from(shard)) % count as u64) as usize
}

/// Picks one ACTIVE replica per shard, skipping Searchers in `excluded(shard)` (those
/// already asked for it). Among the up-to-date replicas (see [`read_candidates`]) the
/// choice is, in order:
///
/// 1. not one whose Searcher failed at the transport moments ago ([`LoadSnapshot`]);
/// 2. the fewest outstanding shard searches, counting those this plan already gave it, so
///    the shards of one search spread over Searchers and run in parallel;
/// 3. the lowest recent latency (unknown counts as none, so a new or returning Searcher
///    gets tried);
/// 4. only among exact equals, a rotation by `rotation`, so that idle replicas share work.
///
/// A lagging replica is picked only when no up-to-date one is left, the least behind first.
pub fn plan_search(
    state: &ClusterState,
    collection: &str,
    shards: &[u32],
    rotation: u64,
    excluded: impl Fn(u32) -> HashSet<String>,
    load: impl Fn(&str) -> LoadSnapshot,
) -> SearchPlan {
    let mut plan = SearchPlan::default();
    let mut planned: HashMap<String, usize> = HashMap::new();
    for shard in shards {
        let skip = excluded(*shard);
        let candidates = read_candidates(state, collection, *shard);
        let current: Vec<&SearcherRecord> = candidates
            .current
            .into_iter()
            .filter(|searcher| !skip.contains(&searcher.id))
            .collect();
        let chosen = if current.is_empty() {
            candidates
                .lagging
                .into_iter()
                .find(|searcher| !skip.contains(&searcher.id))
        } else {
            let offset = rotation_offset(rotation, *shard, current.len());
            current
                .iter()
                .enumerate()
                .map(|(position, searcher)| {
                    let snapshot = load(&searcher.id);
                    let outstanding = snapshot.outstanding
                        + planned.get(searcher.id.as_str()).copied().unwrap_or(0);
                    let rank = (position + current.len() - offset) % current.len();
                    (
                        (
                            snapshot.recently_failed,
                            outstanding,
                            snapshot.latency_micros.unwrap_or(0.0),
                            rank,
                        ),
                        *searcher,
                    )
                })
                .min_by(|(left, _), (right, _)| {
                    left.0
                        .cmp(&right.0)
                        .then(left.1.cmp(&right.1))
                        .then(left.2.total_cmp(&right.2))
                        .then(left.3.cmp(&right.3))
                })
                .map(|(_, searcher)| searcher)
        };
        let Some(chosen) = chosen else {
            let reason = if skip.is_empty() {
                "no ACTIVE replica on a live searcher"
            } else {
                "no other ACTIVE replica to try"
            };
            plan.unroutable.push((*shard, reason.to_string()));
            continue;
        };
        *planned.entry(chosen.id.clone()).or_default() += 1;
        plan.calls
            .entry(chosen.id.clone())
            .or_insert_with(|| (chosen.address.clone(), Vec::new()))
            .1
            .push(*shard);
    }
    plan
}

/// The replicas a write to `shard` goes to: every assigned replica, primary first. Those on
/// a Searcher that is not live come back as `Err(searcher id)`, since they cannot take it.
pub fn write_targets(
    state: &ClusterState,
    collection: &str,
    shard: u32,
) -> Vec<Result<(String, String), String>> {
    let Some(assignment) = state.assignment(collection, shard) else {
        return Vec::new();
    };
    assignment
        .replicas
        .iter()
        .map(|searcher_id| match state.searchers.get(searcher_id) {
            Some(searcher) => Ok((searcher_id.clone(), searcher.address.clone())),
            None => Err(searcher_id.clone()),
        })
        .collect()
}

/// ACTIVE replicas of a shard for reads that fall back one by one: the up-to-date ones in
/// rotated order, then the lagging ones, least behind first (see [`read_candidates`]).
pub fn read_order(
    state: &ClusterState,
    collection: &str,
    shard: u32,
    rotation: u64,
) -> Vec<(String, String)> {
    let ReadCandidates {
        mut current,
        lagging,
    } = read_candidates(state, collection, shard);
    if !current.is_empty() {
        let offset = rotation_offset(rotation, shard, current.len());
        current.rotate_left(offset);
    }
    current
        .into_iter()
        .chain(lagging)
        .map(|searcher| (searcher.id.clone(), searcher.address.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_cluster::model::{AssignmentRecord, Capacity, ReplicaRecord, SearcherRecord};
    use quiver_cluster::ReplicaPhase;

    fn state() -> ClusterState {
        let mut state = ClusterState::default();
        for id in ["s1", "s2", "s3"] {
            state.searchers.insert(
                id.into(),
                SearcherRecord {
                    id: id.into(),
                    address: format!("http://{id}:1"),
                    version: "0".into(),
                    started_at: "t".into(),
                    capacity: Capacity {
                        cpus: 1,
                        memory_bytes: 1,
                    },
                },
            );
        }
        let layout = [(0, ["s1", "s2"]), (1, ["s2", "s3"]), (2, ["s3", "s1"])];
        for (shard, replicas) in layout {
            state.assignments.insert(
                ("c".into(), shard),
                AssignmentRecord::new(replicas.iter().map(|id| id.to_string()).collect()),
            );
            for searcher in replicas {
                state.replicas.insert(
                    ("c".into(), shard, searcher.to_string()),
                    ReplicaRecord {
                        state: ReplicaPhase::Active,
                        point_count: 0,
                        applied_seq: 0,
                        ..Default::default()
                    },
                );
            }
        }
        state
    }

    fn idle(_: &str) -> LoadSnapshot {
        LoadSnapshot::UNKNOWN
    }

    fn loaded(
        outstanding: &[(&str, usize)],
        latency: &[(&str, f64)],
    ) -> impl Fn(&str) -> LoadSnapshot {
        let outstanding: HashMap<String, usize> = outstanding
            .iter()
            .map(|(id, count)| (id.to_string(), *count))
            .collect();
        let latency: HashMap<String, f64> = latency
            .iter()
            .map(|(id, micros)| (id.to_string(), *micros))
            .collect();
        move |id: &str| LoadSnapshot {
            recently_failed: false,
            outstanding: outstanding.get(id).copied().unwrap_or(0),
            latency_micros: latency.get(id).copied(),
        }
    }

    #[test]
    fn fewest_outstanding_first_then_lowest_latency() {
        // Shard 0 lives on s1 and s2.
        for rotation in 0..4 {
            let plan = plan_search(
                &state(),
                "c",
                &[0],
                rotation,
                |_| HashSet::new(),
                loaded(&[("s1", 3), ("s2", 1)], &[("s1", 100.0), ("s2", 900.0)]),
            );
            assert_eq!(chosen(&plan), vec!["s2"], "fewer outstanding wins");
            let plan = plan_search(
                &state(),
                "c",
                &[0],
                rotation,
                |_| HashSet::new(),
                loaded(&[("s1", 2), ("s2", 2)], &[("s1", 900.0), ("s2", 100.0)]),
            );
            assert_eq!(chosen(&plan), vec!["s2"], "equal load: the faster wins");
            let plan = plan_search(
                &state(),
                "c",
                &[0],
                rotation,
                |_| HashSet::new(),
                loaded(&[], &[("s1", 400.0)]),
            );
            assert_eq!(chosen(&plan), vec!["s2"], "an unknown latency gets tried");
        }
    }

    #[test]
    fn a_recently_failed_searcher_is_avoided_but_still_used_when_alone() {
        let failed = |id: &str| LoadSnapshot {
            recently_failed: id == "s1",
            ..LoadSnapshot::UNKNOWN
        };
        for rotation in 0..4 {
            let plan = plan_search(&state(), "c", &[0], rotation, |_| HashSet::new(), failed);
            assert_eq!(chosen(&plan), vec!["s2"]);
        }
        let plan = plan_search(
            &state(),
            "c",
            &[0],
            0,
            |_| HashSet::from(["s2".to_string()]),
            failed,
        );
        assert_eq!(chosen(&plan), vec!["s1"]);
    }

    #[test]
    fn the_shards_of_one_search_spread_over_searchers() {
        // Every searcher holds both shards: the second goes where the first did not.
        let mut state = state();
        state.assignments.insert(
            ("c".into(), 1),
            AssignmentRecord::new(vec!["s1".into(), "s2".into()]),
        );
        state.replicas.insert(
            ("c".into(), 1, "s1".to_string()),
            ReplicaRecord {
                state: ReplicaPhase::Active,
                point_count: 0,
                applied_seq: 0,
                ..Default::default()
            },
        );
        let plan = plan_search(
            &state,
            "c",
            &[0, 1],
            0,
            |_| HashSet::new(),
            loaded(&[], &[("s1", 100.0), ("s2", 300_000.0)]),
        );
        assert_eq!(plan.calls["s1"].1, vec![0]);
        assert_eq!(plan.calls["s2"].1, vec![1]);
    }

    #[test]
    fn one_call_per_searcher_and_every_shard_routed() {
        let plan = plan_search(&state(), "c", &[0, 1, 2], 0, |_| HashSet::new(), idle);
        assert!(plan.unroutable.is_empty());
        let routed: usize = plan.calls.values().map(|(_, shards)| shards.len()).sum();
        assert_eq!(routed, 3);
    }

    #[test]
    fn rotation_spreads_reads_over_replicas() {
        let chosen: HashSet<String> = (0..4)
            .map(|rotation| {
                let plan = plan_search(&state(), "c", &[0], rotation, |_| HashSet::new(), idle);
                plan.calls.keys().next().unwrap().clone()
            })
            .collect();
        assert_eq!(chosen.len(), 2);
    }

    #[test]
    fn retry_excludes_tried_searchers_and_reports_exhaustion() {
        let plan = plan_search(
            &state(),
            "c",
            &[0],
            0,
            |_| HashSet::from(["s1".to_string()]),
            idle,
        );
        assert_eq!(plan.calls.keys().collect::<Vec<_>>(), vec!["s2"]);
        let plan = plan_search(
            &state(),
            "c",
            &[0],
            0,
            |_| HashSet::from(["s1".to_string(), "s2".to_string()]),
            idle,
        );
        assert!(plan.calls.is_empty());
        assert_eq!(plan.unroutable.len(), 1);
    }

    #[test]
    fn dead_searchers_are_not_routed_and_fail_writes() {
        let mut state = state();
        state.searchers.remove("s1");
        let plan = plan_search(&state, "c", &[0, 2], 0, |_| HashSet::new(), idle);
        assert!(!plan.calls.contains_key("s1"));
        assert!(plan.unroutable.is_empty());
        let targets = write_targets(&state, "c", 0);
        assert_eq!(targets[0], Err("s1".to_string()));
        assert!(targets[1].is_ok());
    }

    /// Shard 3 has three replicas; `seqs` gives each one's applied_seq, in s1, s2, s3 order.
    fn with_shard_3(seqs: [u64; 3]) -> ClusterState {
        let mut state = state();
        state.assignments.insert(
            ("c".into(), 3),
            AssignmentRecord::new(vec!["s1".into(), "s2".into(), "s3".into()]),
        );
        for (searcher, applied_seq) in ["s1", "s2", "s3"].into_iter().zip(seqs) {
            state.replicas.insert(
                ("c".into(), 3, searcher.to_string()),
                ReplicaRecord {
                    state: ReplicaPhase::Active,
                    point_count: 0,
                    applied_seq,
                    ..Default::default()
                },
            );
        }
        state
    }

    fn chosen(plan: &SearchPlan) -> Vec<&str> {
        plan.calls.keys().map(String::as_str).collect()
    }

    #[test]
    fn lagging_replica_is_never_read_while_an_up_to_date_one_is_available() {
        let state = with_shard_3([4, 2, 4]);
        let mut seen = HashSet::new();
        for rotation in 0..100 {
            let plan = plan_search(&state, "c", &[3], rotation, |_| HashSet::new(), idle);
            assert!(plan.unroutable.is_empty());
            let searcher = chosen(&plan)[0].to_string();
            assert_ne!(
                searcher, "s2",
                "rotation {rotation} read the lagging replica"
            );
            seen.insert(searcher);
        }
        // Rotation still spreads reads over the up-to-date replicas.
        assert_eq!(seen, HashSet::from(["s1".to_string(), "s3".to_string()]));
    }

    #[test]
    fn lagging_replica_serves_the_retry_when_the_up_to_date_ones_were_tried() {
        let state = with_shard_3([4, 2, 4]);
        for rotation in 0..4 {
            let plan = plan_search(
                &state,
                "c",
                &[3],
                rotation,
                |_| HashSet::from(["s1".to_string(), "s3".to_string()]),
                idle,
            );
            assert_eq!(chosen(&plan), vec!["s2"]);
            assert!(plan.unroutable.is_empty());
        }
        // Two lagging replicas: the least behind is asked first.
        let state = with_shard_3([9, 2, 5]);
        let plan = plan_search(
            &state,
            "c",
            &[3],
            0,
            |_| HashSet::from(["s1".to_string()]),
            idle,
        );
        assert_eq!(chosen(&plan), vec!["s3"]);
        let plan = plan_search(
            &state,
            "c",
            &[3],
            0,
            |_| HashSet::from(["s1".to_string(), "s3".to_string()]),
            idle,
        );
        assert_eq!(chosen(&plan), vec!["s2"]);
        let plan = plan_search(
            &state,
            "c",
            &[3],
            0,
            |_| HashSet::from(["s1".to_string(), "s2".to_string(), "s3".to_string()]),
            idle,
        );
        assert!(plan.calls.is_empty());
        assert_eq!(plan.unroutable.len(), 1);
    }

    #[test]
    fn only_active_replicas_on_live_searchers_set_the_bar() {
        // s1 is ahead but its Searcher is gone: s3 is the most up to date that can serve.
        let mut state = with_shard_3([9, 2, 5]);
        state.searchers.remove("s1");
        for rotation in 0..4 {
            let plan = plan_search(&state, "c", &[3], rotation, |_| HashSet::new(), idle);
            assert_eq!(chosen(&plan), vec!["s3"]);
        }
        // A BOOTING replica does not count either.
        let mut state = with_shard_3([9, 2, 5]);
        state
            .replicas
            .get_mut(&("c".to_string(), 3, "s1".to_string()))
            .unwrap()
            .state = ReplicaPhase::Booting;
        assert_eq!(
            read_order(&state, "c", 3, 0)
                .into_iter()
                .map(|(id, _)| id)
                .collect::<Vec<_>>(),
            vec!["s3", "s2"]
        );
    }

    #[test]
    fn read_order_puts_up_to_date_replicas_first_rotated_then_lagging_ones() {
        let ids = |state: &ClusterState, rotation| -> Vec<String> {
            read_order(state, "c", 3, rotation)
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        let state = with_shard_3([4, 2, 4]);
        // Rotation starts at (rotation + shard) % 2 among s1 and s3.
        assert_eq!(ids(&state, 0), vec!["s3", "s1", "s2"]);
        assert_eq!(ids(&state, 1), vec!["s1", "s3", "s2"]);
        let state = with_shard_3([1, 3, 2]);
        assert_eq!(ids(&state, 0), vec!["s2", "s3", "s1"]);
        assert_eq!(ids(&state, 1), vec!["s2", "s3", "s1"]);
        // All equal: plain rotation over every replica.
        let state = with_shard_3([6, 6, 6]);
        assert_eq!(ids(&state, 0), vec!["s1", "s2", "s3"]);
        assert_eq!(ids(&state, 1), vec!["s2", "s3", "s1"]);
        let addresses: Vec<String> = read_order(&state, "c", 3, 0)
            .into_iter()
            .map(|(_, address)| address)
            .collect();
        assert_eq!(addresses[0], "http://s1:1");
    }
}
