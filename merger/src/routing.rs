//! Which Searcher answers for which shard. Pure functions over a [`ClusterState`] snapshot,
//! so the search path never reads etcd.

use std::collections::{BTreeMap, HashSet};

use quiver_cluster::ClusterState;

/// The calls of one search round: each Searcher gets one call covering all its shards.
#[derive(Debug, Default, PartialEq)]
pub struct SearchPlan {
    /// Searcher id → (address, shards).
    pub calls: BTreeMap<String, (String, Vec<u32>)>,
    /// Shards no eligible replica can serve, with why.
    pub unroutable: Vec<(u32, String)>,
}

/// Picks one ACTIVE replica per shard, rotating by `rotation` so that load spreads over
/// replicas, and skipping Searchers in `excluded(shard)` (those already tried).
pub fn plan_search(
    state: &ClusterState,
    collection: &str,
    shards: &[u32],
    rotation: u64,
    excluded: impl Fn(u32) -> HashSet<String>,
) -> SearchPlan {
    let mut plan = SearchPlan::default();
    for shard in shards {
        let skip = excluded(*shard);
        let candidates: Vec<_> = state
            .active_replicas(collection, *shard)
            .into_iter()
            .filter(|searcher| !skip.contains(&searcher.id))
            .collect();
        if candidates.is_empty() {
            let reason = if skip.is_empty() {
                "no ACTIVE replica on a live searcher"
            } else {
                "no other ACTIVE replica to retry on"
            };
            plan.unroutable.push((*shard, reason.to_string()));
            continue;
        }
        let chosen = candidates
            [(rotation.wrapping_add(u64::from(*shard)) % candidates.len() as u64) as usize];
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

/// ACTIVE replicas of a shard in rotated order, for reads that fall back one by one.
pub fn read_order(
    state: &ClusterState,
    collection: &str,
    shard: u32,
    rotation: u64,
) -> Vec<(String, String)> {
    let mut replicas: Vec<(String, String)> = state
        .active_replicas(collection, shard)
        .into_iter()
        .map(|searcher| (searcher.id.clone(), searcher.address.clone()))
        .collect();
    if !replicas.is_empty() {
        let offset = (rotation.wrapping_add(u64::from(shard)) % replicas.len() as u64) as usize;
        replicas.rotate_left(offset);
    }
    replicas
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
                AssignmentRecord {
                    replicas: replicas.iter().map(|id| id.to_string()).collect(),
                },
            );
            for searcher in replicas {
                state.replicas.insert(
                    ("c".into(), shard, searcher.to_string()),
                    ReplicaRecord {
                        state: ReplicaPhase::Active,
                        point_count: 0,
                        applied_seq: 0,
                    },
                );
            }
        }
        state
    }

    #[test]
    fn one_call_per_searcher_and_every_shard_routed() {
        let plan = plan_search(&state(), "c", &[0, 1, 2], 0, |_| HashSet::new());
        assert!(plan.unroutable.is_empty());
        let routed: usize = plan.calls.values().map(|(_, shards)| shards.len()).sum();
        assert_eq!(routed, 3);
    }

    #[test]
    fn rotation_spreads_reads_over_replicas() {
        let chosen: HashSet<String> = (0..4)
            .map(|rotation| {
                let plan = plan_search(&state(), "c", &[0], rotation, |_| HashSet::new());
                plan.calls.keys().next().unwrap().clone()
            })
            .collect();
        assert_eq!(chosen.len(), 2);
    }

    #[test]
    fn retry_excludes_tried_searchers_and_reports_exhaustion() {
        let plan = plan_search(&state(), "c", &[0], 0, |_| {
            HashSet::from(["s1".to_string()])
        });
        assert_eq!(plan.calls.keys().collect::<Vec<_>>(), vec!["s2"]);
        let plan = plan_search(&state(), "c", &[0], 0, |_| {
            HashSet::from(["s1".to_string(), "s2".to_string()])
        });
        assert!(plan.calls.is_empty());
        assert_eq!(plan.unroutable.len(), 1);
    }

    #[test]
    fn dead_searchers_are_not_routed_and_fail_writes() {
        let mut state = state();
        state.searchers.remove("s1");
        let plan = plan_search(&state, "c", &[0, 2], 0, |_| HashSet::new());
        assert!(!plan.calls.contains_key("s1"));
        assert!(plan.unroutable.is_empty());
        let targets = write_targets(&state, "c", 0);
        assert_eq!(targets[0], Err("s1".to_string()));
        assert!(targets[1].is_ok());
    }
}
