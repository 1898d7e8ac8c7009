//! The status page's data: one JSON snapshot of the cluster, built from the Merger's watched
//! [`ClusterState`] and the placement controller's two records. Pure: the same inputs give
//! the same JSON, so the page, `GET /api/status` and the tests all see one shape.
//!
//! Ring positions are fractions of the 64-bit ring (`position / 2^64`, in `[0, 1)`, six
//! decimals), computed here with the very functions placement uses, so the page never
//! re-implements the hash.

use std::collections::{BTreeMap, BTreeSet};

use quiver_cluster::{
    placement::{replica_load, shard_position, HashRing},
    ClusterState, LeaderRecord, RebalanceRecord, ReplicaPhase, ReplicaRole,
};
use quiver_payload::PayloadIndexSpec;
use serde::Serialize;

/// The controller's records as last read from etcd (the cluster view does not watch them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControllerRecords {
    pub leader: Option<LeaderRecord>,
    pub rebalance: Option<RebalanceRecord>,
    /// Why the latest read failed; the records are then the last ones read.
    pub error: Option<String>,
}

/// `GET /api/status`. See the README's "Status page" section for the shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusSnapshot {
    /// When this snapshot was built, RFC 3339.
    pub generated_at: String,
    /// The etcd revision the cluster view reflects.
    pub revision: i64,
    pub summary: Summary,
    pub controller: ControllerStatus,
    pub searchers: Vec<SearcherStatus>,
    pub collections: Vec<CollectionStatus>,
    pub ring: RingStatus,
    /// The latest rebalance as the controller recorded it, or `null` before the first.
    pub rebalance: Option<RebalanceRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub searchers_live: u64,
    /// Searchers some assignment names that are not registered (lease expired).
    pub searchers_offline: u64,
    pub collections: u64,
    pub shards: u64,
    pub replicas: u64,
    /// Every state, zero included: `ACTIVE`, `BOOTING`, `DRAINING`, `FAILED`, `OFFLINE`.
    pub replicas_by_state: BTreeMap<&'static str, u64>,
    /// Points over all collections, each shard counted once (its primary's count).
    pub vectors: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControllerStatus {
    /// The Merger whose placement controller acts, or `null` when none leads.
    pub leader: Option<LeaderRecord>,
    /// Why the controller's records could not be read just now (they are then the last
    /// ones read), or `null`.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearcherStatus {
    pub id: String,
    /// Empty when offline.
    pub address: String,
    pub version: String,
    pub started_at: String,
    /// `LIVE`; `DRAINING` when every replica it reports is draining; `OFFLINE` when it is
    /// not registered but some assignment still names it.
    pub state: &'static str,
    /// Replicas assigned to it (voting and learning).
    pub replicas: u64,
    /// Of which it leads.
    pub primaries: u64,
    /// Points over every replica it reports.
    pub vectors: u64,
    /// The fraction of the ring its virtual nodes own (four decimals).
    pub ring_share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectionStatus {
    pub name: String,
    pub dimension: u32,
    pub metric: quiver_index::Metric,
    pub index_spec: String,
    /// The declared payload indexes, `[{"key", "type"}]` in declaration order.
    pub payload_indexes: Vec<PayloadIndexSpec>,
    pub num_shards: u32,
    pub replication_factor: u32,
    pub created_at: String,
    /// Each shard counted once (its primary's count).
    pub vectors: u64,
    /// The most voting replicas of this collection one live Searcher holds, and the mean
    /// over the live Searchers (two decimals): placement keeps the most within one of the
    /// mean.
    pub max_replicas_per_searcher: u64,
    pub mean_replicas_per_searcher: f64,
    pub shards: Vec<ShardStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardStatus {
    pub shard: u32,
    /// The assignment's primary epoch (0 before the shard is assigned).
    pub epoch: u64,
    pub primary: String,
    /// Where the shard sits on the ring.
    pub ring_position: f64,
    /// Assigned replicas (primary, followers, learners), then any replica still reporting
    /// that the assignment no longer names.
    pub replicas: Vec<ReplicaStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaStatus {
    pub searcher: String,
    /// `PRIMARY`, `FOLLOWER`, `LEARNER`, or `UNASSIGNED` for a copy being dropped.
    pub role: &'static str,
    /// As the Searcher reports it; `OFFLINE` when it reports nothing.
    pub state: &'static str,
    pub points: u64,
    pub applied_seq: u64,
    pub epoch: u64,
    pub error: Option<String>,
    /// The Searcher's first virtual node clockwise from the shard: the ring point that
    /// placed this replica (`null` when the Searcher is not on the ring).
    pub ring_position: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RingStatus {
    pub virtual_nodes: u32,
    /// Every Searcher listed in `searchers`, in the same order.
    pub searchers: Vec<RingSearcher>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RingSearcher {
    pub id: String,
    /// Its virtual nodes' positions, ascending.
    pub positions: Vec<f64>,
}

const REPLICA_STATES: [&str; 5] = ["ACTIVE", "BOOTING", "DRAINING", "FAILED", "OFFLINE"];

fn phase_name(phase: ReplicaPhase) -> &'static str {
    match phase {
        ReplicaPhase::Active => "ACTIVE",
        ReplicaPhase::Booting => "BOOTING",
        ReplicaPhase::Draining => "DRAINING",
        ReplicaPhase::Failed => "FAILED",
    }
}

fn role_name(role: Option<ReplicaRole>) -> &'static str {
    match role {
        Some(ReplicaRole::Primary) => "PRIMARY",
        Some(ReplicaRole::Follower) => "FOLLOWER",
        Some(ReplicaRole::Learner) => "LEARNER",
        None => "UNASSIGNED",
    }
}

/// A ring position as a fraction of the ring, truncated to six decimals (so it stays
/// below 1).
fn ring_fraction(position: u64) -> f64 {
    let fraction = position as f64 / 18_446_744_073_709_551_616.0;
    (fraction * 1e6).floor() / 1e6
}

fn round4(value: f64) -> f64 {
    (value * 1e4).round() / 1e4
}

/// Builds the snapshot. The ring is drawn over every Searcher the page lists (live ones and
/// offline ones some assignment still names) with `virtual_nodes` points each, as
/// [`HashRing`] places them.
pub fn build_snapshot(
    state: &ClusterState,
    controller: &ControllerRecords,
    generated_at: String,
    virtual_nodes: u32,
) -> StatusSnapshot {
    let offline: BTreeSet<&String> = state
        .assignments
        .values()
        .flat_map(|assignment| assignment.members())
        .filter(|id| !state.searchers.contains_key(*id))
        .collect();
    let searcher_ids: Vec<String> = state
        .searchers
        .keys()
        .chain(offline.iter().copied())
        .cloned()
        .collect::<BTreeSet<String>>()
        .into_iter()
        .collect();
    let ring = HashRing::new(&searcher_ids, virtual_nodes);

    let collections: Vec<CollectionStatus> = state
        .collections
        .values()
        .map(|record| {
            let shards: Vec<ShardStatus> = (0..record.num_shards)
                .map(|shard| shard_status(state, &ring, &record.name, shard))
                .collect();
            let vectors = shards.iter().map(shard_vectors).sum();
            let live: Vec<String> = state.searchers.keys().cloned().collect();
            let (max, mean) = replica_load(
                (0..record.num_shards).filter_map(|shard| {
                    state
                        .assignment(&record.name, shard)
                        .map(|assignment| &assignment.replicas)
                }),
                &live,
            );
            CollectionStatus {
                name: record.name.clone(),
                dimension: record.dimension,
                metric: record.metric,
                index_spec: record.index_spec.clone(),
                payload_indexes: record.payload_indexes.clone(),
                num_shards: record.num_shards,
                replication_factor: record.replication_factor,
                created_at: record.created_at.clone(),
                vectors,
                max_replicas_per_searcher: max as u64,
                mean_replicas_per_searcher: (mean * 100.0).round() / 100.0,
                shards,
            }
        })
        .collect();

    let mut replicas_by_state: BTreeMap<&'static str, u64> =
        REPLICA_STATES.iter().map(|name| (*name, 0)).collect();
    for replica in collections
        .iter()
        .flat_map(|collection| &collection.shards)
        .flat_map(|shard| &shard.replicas)
    {
        *replicas_by_state.entry(replica.state).or_default() += 1;
    }

    let shares = ring_shares(&ring);
    let searchers: Vec<SearcherStatus> = searcher_ids
        .iter()
        .map(|id| searcher_status(state, id, shares.get(id.as_str()).copied()))
        .collect();
    let ring_status = RingStatus {
        virtual_nodes: virtual_nodes.max(1),
        searchers: searcher_ids
            .iter()
            .map(|id| RingSearcher {
                id: id.clone(),
                positions: ring
                    .points()
                    .filter(|(_, owner)| *owner == id.as_str())
                    .map(|(position, _)| ring_fraction(position))
                    .collect(),
            })
            .collect(),
    };

    StatusSnapshot {
        generated_at,
        revision: state.revision,
        summary: Summary {
            searchers_live: state.searchers.len() as u64,
            searchers_offline: offline.len() as u64,
            collections: collections.len() as u64,
            shards: collections
                .iter()
                .map(|collection| collection.shards.len() as u64)
                .sum(),
            replicas: replicas_by_state.values().sum(),
            replicas_by_state,
            vectors: collections
                .iter()
                .map(|collection| collection.vectors)
                .sum(),
        },
        controller: ControllerStatus {
            leader: controller.leader.clone(),
            error: controller.error.clone(),
        },
        searchers,
        collections,
        ring: ring_status,
        rebalance: controller.rebalance.clone(),
    }
}

fn shard_status(
    state: &ClusterState,
    ring: &HashRing,
    collection: &str,
    shard: u32,
) -> ShardStatus {
    let position = shard_position(collection, shard);
    let assignment = state.assignment(collection, shard);
    let mut members: Vec<String> = assignment
        .map(|assignment| {
            // Primary first, then the other voting replicas, then learners.
            let primary = assignment.primary().to_string();
            std::iter::once(primary.clone())
                .filter(|id| !id.is_empty() && assignment.replicas.contains(id))
                .chain(assignment.members().filter(|id| **id != primary).cloned())
                .collect()
        })
        .unwrap_or_default();
    // Copies still reporting that the assignment no longer names (a move's old replica).
    let reporting = state
        .replicas
        .range((collection.to_string(), shard, String::new())..)
        .take_while(|((name, number, _), _)| name == collection && *number == shard)
        .map(|((_, _, searcher), _)| searcher.clone());
    for searcher in reporting.collect::<Vec<_>>() {
        if !members.contains(&searcher) {
            members.push(searcher);
        }
    }
    let replicas = members
        .into_iter()
        .map(|searcher| {
            let reported = state.replica(collection, shard, &searcher);
            ReplicaStatus {
                role: role_name(assignment.and_then(|assignment| assignment.role_of(&searcher))),
                state: reported.map_or("OFFLINE", |record| phase_name(record.state)),
                points: reported.map_or(0, |record| record.point_count),
                applied_seq: reported.map_or(0, |record| record.applied_seq),
                epoch: reported.map_or(0, |record| record.epoch),
                error: reported.and_then(|record| record.error.clone()),
                ring_position: ring.next_point_of(&searcher, position).map(ring_fraction),
                searcher,
            }
        })
        .collect();
    ShardStatus {
        shard,
        epoch: assignment.map_or(0, |assignment| assignment.epoch),
        primary: assignment
            .map(|assignment| assignment.primary().to_string())
            .unwrap_or_default(),
        ring_position: ring_fraction(position),
        replicas,
    }
}

/// The primary's count, or the largest any replica reports when the primary reports none.
fn shard_vectors(shard: &ShardStatus) -> u64 {
    shard
        .replicas
        .iter()
        .find(|replica| replica.role == "PRIMARY" && replica.state != "OFFLINE")
        .map(|replica| replica.points)
        .unwrap_or_else(|| {
            shard
                .replicas
                .iter()
                .map(|replica| replica.points)
                .max()
                .unwrap_or(0)
        })
}

fn searcher_status(state: &ClusterState, id: &str, ring_share: Option<f64>) -> SearcherStatus {
    let record = state.searchers.get(id);
    let assigned: Vec<_> = state
        .assignments
        .values()
        .filter_map(|assignment| assignment.role_of(id))
        .collect();
    let reported: Vec<_> = state
        .replicas
        .iter()
        .filter(|((_, _, searcher), _)| searcher == id)
        .map(|(_, replica)| replica)
        .collect();
    let draining = !reported.is_empty()
        && reported
            .iter()
            .all(|replica| replica.state == ReplicaPhase::Draining);
    SearcherStatus {
        id: id.to_string(),
        address: record
            .map(|record| record.address.clone())
            .unwrap_or_default(),
        version: record
            .map(|record| record.version.clone())
            .unwrap_or_default(),
        started_at: record
            .map(|record| record.started_at.clone())
            .unwrap_or_default(),
        state: match (record, draining) {
            (None, _) => "OFFLINE",
            (Some(_), true) => "DRAINING",
            (Some(_), false) => "LIVE",
        },
        replicas: assigned.len() as u64,
        primaries: assigned
            .iter()
            .filter(|role| **role == ReplicaRole::Primary)
            .count() as u64,
        vectors: reported.iter().map(|replica| replica.point_count).sum(),
        ring_share: ring_share.map_or(0.0, round4),
    }
}

/// Each Searcher's share of the ring: the arcs that end at its points (a position on such an
/// arc walks clockwise to that point first).
fn ring_shares(ring: &HashRing) -> BTreeMap<&str, f64> {
    let points: Vec<(u64, &str)> = ring.points().collect();
    let mut shares: BTreeMap<&str, f64> = BTreeMap::new();
    for (index, (position, owner)) in points.iter().enumerate() {
        let previous = if index == 0 {
            points[points.len() - 1].0
        } else {
            points[index - 1].0
        };
        let arc = position.wrapping_sub(previous);
        // A single point owns the whole ring (its arc from itself wraps to 0).
        let arc = if points.len() == 1 {
            1.0
        } else {
            arc as f64 / 18_446_744_073_709_551_616.0
        };
        *shares.entry(owner).or_default() += arc;
    }
    shares
}

#[cfg(test)]
mod tests {
    use quiver_cluster::{
        rebalance::Move, AssignmentRecord, Capacity, CollectionRecord, ReplicaRecord,
        SearcherRecord,
    };

    use super::*;
    use quiver_cluster::DEFAULT_VIRTUAL_NODES;

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

    fn replica(
        state: ReplicaPhase,
        point_count: u64,
        applied_seq: u64,
        epoch: u64,
        role: ReplicaRole,
    ) -> ReplicaRecord {
        ReplicaRecord {
            state,
            point_count,
            applied_seq,
            epoch,
            role: Some(role),
            learners_in_sync: Vec::new(),
            error: None,
        }
    }

    /// Two live Searchers and one gone (s3) that shard 1 still names; shard 1 is also
    /// copying to a learner on s1.
    fn state() -> ClusterState {
        let mut state = ClusterState {
            revision: 42,
            ..ClusterState::default()
        };
        for id in ["s1", "s2"] {
            state.searchers.insert(id.to_string(), searcher(id));
        }
        state.collections.insert(
            "docs".to_string(),
            CollectionRecord {
                name: "docs".to_string(),
                dimension: 4,
                metric: quiver_index::Metric::L2,
                num_shards: 2,
                replication_factor: 2,
                index_spec: "flat".to_string(),
                created_at: "2024-05-01T10:00:01.000Z".to_string(),
                payload_indexes: vec![
                    PayloadIndexSpec {
                        key: "category".to_string(),
                        kind: quiver_payload::PayloadIndexType::Keyword,
                    },
                    PayloadIndexSpec {
                        key: "meta.price".to_string(),
                        kind: quiver_payload::PayloadIndexType::Float,
                    },
                ],
            },
        );
        let mut shard_0 = AssignmentRecord::new(vec!["s1".into(), "s2".into()]);
        shard_0.epoch = 3;
        state.assignments.insert(("docs".into(), 0), shard_0);
        let mut shard_1 = AssignmentRecord::new(vec!["s2".into(), "s3".into()]);
        shard_1.learners = vec!["s1".into()];
        state.assignments.insert(("docs".into(), 1), shard_1);
        for (shard, id, record) in [
            (
                0,
                "s1",
                replica(ReplicaPhase::Active, 10, 12, 3, ReplicaRole::Primary),
            ),
            (
                0,
                "s2",
                replica(ReplicaPhase::Active, 10, 12, 3, ReplicaRole::Follower),
            ),
            (
                1,
                "s2",
                replica(ReplicaPhase::Active, 7, 7, 1, ReplicaRole::Primary),
            ),
            (
                1,
                "s1",
                replica(ReplicaPhase::Booting, 3, 3, 1, ReplicaRole::Learner),
            ),
        ] {
            state
                .replicas
                .insert(("docs".into(), shard, id.into()), record);
        }
        state
    }

    fn controller() -> ControllerRecords {
        ControllerRecords {
            leader: Some(LeaderRecord {
                id: "merger-a".to_string(),
                since: "2024-05-01T09:59:00.000Z".to_string(),
            }),
            rebalance: Some(RebalanceRecord {
                started_at: "2024-05-01T10:05:00.000Z".to_string(),
                updated_at: "2024-05-01T10:05:01.000Z".to_string(),
                trigger: "searcher s3 left".to_string(),
                searchers: vec!["s1".into(), "s2".into()],
                moves: vec![Move {
                    collection: "docs".into(),
                    shard: 1,
                    from: Some("s3".into()),
                    to: "s1".into(),
                }],
                moves_omitted: 0,
                moved_replicas: 1,
                total_replicas: 4,
                moved_fraction: 0.25,
                pending_shards: 1,
                finished_at: None,
            }),
            error: None,
        }
    }

    #[test]
    fn snapshot_is_the_documented_json() {
        let snapshot = build_snapshot(
            &state(),
            &controller(),
            "2024-05-01T10:06:00.000Z".to_string(),
            2,
        );
        // Ring positions were checked by hand: each replica's is its Searcher's first point
        // clockwise from the shard's, and the shares are the arcs ending at each point.
        assert_eq!(
            serde_json::to_string_pretty(&snapshot).unwrap(),
            EXPECTED_JSON.trim()
        );
    }

    #[test]
    fn edge_cases_read_honestly() {
        let empty = build_snapshot(
            &ClusterState::default(),
            &ControllerRecords::default(),
            String::new(),
            DEFAULT_VIRTUAL_NODES,
        );
        assert_eq!(
            serde_json::to_value(&empty.summary).unwrap(),
            serde_json::json!({
                "searchers_live": 0, "searchers_offline": 0, "collections": 0, "shards": 0,
                "replicas": 0, "vectors": 0,
                "replicas_by_state": {"ACTIVE": 0, "BOOTING": 0, "DRAINING": 0, "FAILED": 0, "OFFLINE": 0},
            })
        );
        assert!(empty.ring.searchers.is_empty() && empty.rebalance.is_none());

        let mut state = state();
        // s2 drains; s3's old copy of shard 0 still reports after a move took it away; a new
        // collection's shard has no assignment yet.
        for ((_, _, id), record) in state.replicas.iter_mut() {
            if id == "s2" {
                record.state = ReplicaPhase::Draining;
            }
        }
        state.replicas.insert(
            ("docs".into(), 0, "s3".into()),
            replica(ReplicaPhase::Active, 9, 11, 2, ReplicaRole::Follower),
        );
        let mut fresh = state.collections["docs"].clone();
        fresh.name = "fresh".into();
        fresh.num_shards = 1;
        state.collections.insert("fresh".into(), fresh);
        let snapshot = build_snapshot(
            &state,
            &ControllerRecords {
                error: Some("etcd is away".into()),
                ..ControllerRecords::default()
            },
            String::new(),
            DEFAULT_VIRTUAL_NODES,
        );
        let states: Vec<(&str, &str)> = snapshot
            .searchers
            .iter()
            .map(|searcher| (searcher.id.as_str(), searcher.state))
            .collect();
        assert_eq!(
            states,
            [("s1", "LIVE"), ("s2", "DRAINING"), ("s3", "OFFLINE")]
        );
        let shard_0 = &snapshot.collections[0].shards[0];
        let roles: Vec<(&str, &str, &str)> = shard_0
            .replicas
            .iter()
            .map(|replica| (replica.searcher.as_str(), replica.role, replica.state))
            .collect();
        assert_eq!(
            roles,
            [
                ("s1", "PRIMARY", "ACTIVE"),
                ("s2", "FOLLOWER", "DRAINING"),
                ("s3", "UNASSIGNED", "ACTIVE"),
            ]
        );
        let fresh = &snapshot.collections[1];
        assert_eq!(fresh.name, "fresh");
        assert_eq!(fresh.shards[0].primary, "");
        assert!(fresh.shards[0].replicas.is_empty());
        assert_eq!(snapshot.controller.error.as_deref(), Some("etcd is away"));
        // The shares cover the ring; every Searcher has its virtual nodes, ascending.
        let total: f64 = snapshot
            .searchers
            .iter()
            .map(|searcher| searcher.ring_share)
            .sum();
        assert!((total - 1.0).abs() < 1e-3, "{total}");
        for searcher in &snapshot.ring.searchers {
            assert_eq!(searcher.positions.len(), DEFAULT_VIRTUAL_NODES as usize);
            assert!(searcher.positions.windows(2).all(|pair| pair[0] <= pair[1]));
            assert!(searcher
                .positions
                .iter()
                .all(|position| (0.0..1.0).contains(position)));
        }
    }

    const EXPECTED_JSON: &str = r#"
{
  "generated_at": "2024-05-01T10:06:00.000Z",
  "revision": 42,
  "summary": {
    "searchers_live": 2,
    "searchers_offline": 1,
    "collections": 1,
    "shards": 2,
    "replicas": 5,
    "replicas_by_state": {
      "ACTIVE": 3,
      "BOOTING": 1,
      "DRAINING": 0,
      "FAILED": 0,
      "OFFLINE": 1
    },
    "vectors": 17
  },
  "controller": {
    "leader": {
      "id": "merger-a",
      "since": "2024-05-01T09:59:00.000Z"
    },
    "error": null
  },
  "searchers": [
    {
      "id": "s1",
      "address": "http://s1:7001",
      "version": "0.1.0",
      "started_at": "2024-05-01T10:00:00.000Z",
      "state": "LIVE",
      "replicas": 2,
      "primaries": 1,
      "vectors": 13,
      "ring_share": 0.16
    },
    {
      "id": "s2",
      "address": "http://s2:7001",
      "version": "0.1.0",
      "started_at": "2024-05-01T10:00:00.000Z",
      "state": "LIVE",
      "replicas": 2,
      "primaries": 1,
      "vectors": 17,
      "ring_share": 0.4837
    },
    {
      "id": "s3",
      "address": "",
      "version": "",
      "started_at": "",
      "state": "OFFLINE",
      "replicas": 1,
      "primaries": 0,
      "vectors": 0,
      "ring_share": 0.3563
    }
  ],
  "collections": [
    {
      "name": "docs",
      "dimension": 4,
      "metric": "l2",
      "index_spec": "flat",
      "payload_indexes": [
        {
          "key": "category",
          "type": "keyword"
        },
        {
          "key": "meta.price",
          "type": "float"
        }
      ],
      "num_shards": 2,
      "replication_factor": 2,
      "created_at": "2024-05-01T10:00:01.000Z",
      "vectors": 17,
      "max_replicas_per_searcher": 2,
      "mean_replicas_per_searcher": 2.0,
      "shards": [
        {
          "shard": 0,
          "epoch": 3,
          "primary": "s1",
          "ring_position": 0.527667,
          "replicas": [
            {
              "searcher": "s1",
              "role": "PRIMARY",
              "state": "ACTIVE",
              "points": 10,
              "applied_seq": 12,
              "epoch": 3,
              "error": null,
              "ring_position": 0.91532
            },
            {
              "searcher": "s2",
              "role": "FOLLOWER",
              "state": "ACTIVE",
              "points": 10,
              "applied_seq": 12,
              "epoch": 3,
              "error": null,
              "ring_position": 0.911168
            }
          ]
        },
        {
          "shard": 1,
          "epoch": 1,
          "primary": "s2",
          "ring_position": 0.016826,
          "replicas": [
            {
              "searcher": "s2",
              "role": "PRIMARY",
              "state": "ACTIVE",
              "points": 7,
              "applied_seq": 7,
              "epoch": 1,
              "error": null,
              "ring_position": 0.520323
            },
            {
              "searcher": "s3",
              "role": "FOLLOWER",
              "state": "OFFLINE",
              "points": 0,
              "applied_seq": 0,
              "epoch": 0,
              "error": null,
              "ring_position": 0.648758
            },
            {
              "searcher": "s1",
              "role": "LEARNER",
              "state": "BOOTING",
              "points": 3,
              "applied_seq": 3,
              "epoch": 1,
              "error": null,
              "ring_position": 0.071171
            }
          ]
        }
      ]
    }
  ],
  "ring": {
    "virtual_nodes": 2,
    "searchers": [
      {
        "id": "s1",
        "positions": [
          0.071171,
          0.91532
        ]
      },
      {
        "id": "s2",
        "positions": [
          0.520323,
          0.911168
        ]
      },
      {
        "id": "s3",
        "positions": [
          0.648758,
          0.876611
        ]
      }
    ]
  },
  "rebalance": {
    "started_at": "2024-05-01T10:05:00.000Z",
    "updated_at": "2024-05-01T10:05:01.000Z",
    "trigger": "searcher s3 left",
    "searchers": [
      "s1",
      "s2"
    ],
    "moves": [
      {
        "collection": "docs",
        "shard": 1,
        "from": "s3",
        "to": "s1"
      }
    ],
    "moved_replicas": 1,
    "total_replicas": 4,
    "moved_fraction": 0.25,
    "pending_shards": 1
  }
}
"#;
}
