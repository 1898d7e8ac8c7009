//! When a Searcher is ready for traffic: registered in etcd, and every replica etcd assigns
//! to it ACTIVE (as this Searcher published it). A replica still BOOTING (opening, building
//! its index, copying from a peer or catching up with its primary), DRAINING or FAILED
//! makes the Searcher not ready: FAILED too, because the shard then has one replica fewer
//! than it should, and a rolling restart must not take down another Searcher meanwhile.
//! Replicas of collections that no longer exist are not counted.
//!
//! Readiness says whether this Searcher does its whole share, not whether it is alive: the
//! plain `""` health service (liveness) stays SERVING while the process runs.

use quiver_cluster::{telemetry::Readiness, ClusterState, ClusterView, ReplicaPhase};
use tokio::sync::watch;

/// `Ok(reason)` when ready, `Err(reason)` naming the first replica (or the registration)
/// that is not.
pub fn check(state: &ClusterState, searcher_id: &str) -> Result<String, String> {
    if !state.searchers.contains_key(searcher_id) {
        return Err(format!("searcher {searcher_id} is not registered in etcd"));
    }
    let assigned: Vec<(String, u32)> = state
        .assigned_to(searcher_id)
        .into_iter()
        .filter(|(collection, _)| state.collections.contains_key(collection))
        .collect();
    for (collection, shard) in &assigned {
        match state.replica(collection, *shard, searcher_id) {
            Some(record) if record.state == ReplicaPhase::Active => {}
            Some(record) => {
                return Err(format!(
                    "replica {collection}/{shard} is {}",
                    record.state.as_str()
                ))
            }
            None => {
                return Err(format!(
                    "replica {collection}/{shard} is assigned here but not reported yet"
                ))
            }
        }
    }
    Ok(format!(
        "registered; all {} assigned replicas ACTIVE",
        assigned.len()
    ))
}

/// Keeps `readiness` up to date with the cluster view until `stop` turns true.
pub async fn follow(
    view: ClusterView,
    searcher_id: String,
    readiness: Readiness,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = view.subscribe();
    loop {
        let state = changes.borrow_and_update().clone();
        match check(&state, &searcher_id) {
            Ok(reason) => readiness.set(true, reason).await,
            Err(reason) => readiness.set(false, reason).await,
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use quiver_cluster::{
        model::{encode, Capacity},
        AssignmentRecord, CollectionRecord, KeySchema, KeyValue, ReplicaRecord, SearcherRecord,
    };

    use super::*;

    fn state(replicas: &[(u32, ReplicaPhase)], registered: bool) -> ClusterState {
        let schema = KeySchema::default();
        let mut listing: Vec<(String, Vec<u8>)> = Vec::new();
        if registered {
            listing.push((
                schema.searcher("s1"),
                encode(&SearcherRecord {
                    id: "s1".into(),
                    address: "http://s1:7100".into(),
                    version: "0".into(),
                    started_at: "2024-05-01T10:00:00.000Z".into(),
                    capacity: Capacity {
                        cpus: 1,
                        memory_bytes: 1,
                    },
                }),
            ));
        }
        let collection = CollectionRecord {
            name: "docs".into(),
            dimension: 2,
            metric: quiver_index::Metric::L2,
            num_shards: 3,
            replication_factor: 1,
            index_spec: "flat".into(),
            created_at: "2024-05-01T10:00:00.000Z".into(),
            payload_indexes: Vec::new(),
        };
        listing.push((schema.collection("docs"), encode(&collection)));
        for shard in 0..3 {
            listing.push((
                schema.assignment("docs", shard),
                encode(&AssignmentRecord::new(vec!["s1".into()])),
            ));
        }
        // An assignment of a collection that is gone does not count.
        listing.push((
            schema.assignment("gone", 0),
            encode(&AssignmentRecord::new(vec!["s1".into()])),
        ));
        for (shard, phase) in replicas {
            listing.push((
                schema.replica("docs", *shard, "s1"),
                encode(&ReplicaRecord {
                    state: *phase,
                    ..Default::default()
                }),
            ));
        }
        let key_values: Vec<KeyValue> = listing
            .into_iter()
            .map(|(key, value)| KeyValue {
                key,
                value,
                create_revision: 1,
                mod_revision: 1,
                lease: 0,
            })
            .collect();
        ClusterState::from_listing(&schema, &key_values, 1)
    }

    #[test]
    fn ready_only_when_registered_and_every_assigned_replica_is_active() {
        use ReplicaPhase::*;
        let all_active = [(0, Active), (1, Active), (2, Active)];
        assert_eq!(
            check(&state(&all_active, true), "s1"),
            Ok("registered; all 3 assigned replicas ACTIVE".to_string())
        );
        assert!(check(&state(&all_active, false), "s1")
            .unwrap_err()
            .contains("not registered"));
        for phase in [Booting, Draining, Failed] {
            let reason =
                check(&state(&[(0, Active), (1, phase), (2, Active)], true), "s1").unwrap_err();
            assert_eq!(reason, format!("replica docs/1 is {}", phase.as_str()));
        }
        assert!(check(&state(&[(0, Active), (1, Active)], true), "s1")
            .unwrap_err()
            .contains("docs/2 is assigned here but not reported yet"));
    }
}
