//! Nodes hosting ready primaries, and the writes and pulls the node's tests send them.

use std::{path::Path, sync::Arc};

use quiver_cluster::ReplicaPhase;
use quiver_index::Metric;

use super::{Hosted, SearcherNode};
use crate::{
    point::PointData,
    replica::{Replica, ReplicaConfig},
    replication::{PullRequest, QuorumMembers},
    service::{SearcherService, ShardWrite, WriteOp},
};

/// Hosts `c/<shard>` (4 dimensions, L2, flat) on `node` as the ready primary of epoch 1,
/// with `voters` (the node first) as its voting replicas.
pub(crate) fn host_primary(node: &SearcherNode, shard: u32, voters: &[&str]) {
    let config = ReplicaConfig {
        collection: "c".into(),
        shard,
        dimension: 4,
        metric: Metric::L2,
        index_spec: "flat".into(),
        incarnation: "t".into(),
    };
    let replica = Replica::open(&node.replica_dir("c", shard), config).unwrap();
    replica.begin_epoch(1).unwrap();
    let slot = Hosted::new(ReplicaPhase::Active, Some(Arc::new(replica)));
    let assignment =
        quiver_cluster::AssignmentRecord::new(voters.iter().map(|id| id.to_string()).collect());
    let members = QuorumMembers::of(
        &assignment,
        node.id(),
        Some(voters.len() as u32),
        &quiver_cluster::ClusterState::default(),
    );
    slot.state.set_assignment(Some(assignment), members);
    slot.state.lead(1, 0);
    node.set_slot("c", shard, Some(slot));
}

/// A node hosting `c/0` as the ready primary of epoch 1, with `s2` and `s3` voting.
pub(crate) fn primary_node(dir: &Path) -> SearcherNode {
    let node = SearcherNode::new("s1".into(), dir.to_path_buf());
    host_primary(&node, 0, &["s1", "s2", "s3"]);
    node
}

pub(crate) fn upsert(id: &str, epoch: u64, write_quorum: u32) -> ShardWrite {
    ShardWrite {
        collection: "c".into(),
        shard: 0,
        epoch,
        write_quorum,
        deadline: Some(std::time::Instant::now() + std::time::Duration::from_secs(5)),
        op: WriteOp::Upsert(vec![PointData {
            id: id.into(),
            vector: vec![1.0; 4],
            payload: None,
        }]),
    }
}

pub(crate) fn pull(after_seq: u64, last_epoch: u64) -> PullRequest {
    PullRequest {
        collection: "c".into(),
        shard: 0,
        searcher_id: "s2".into(),
        epoch: 1,
        after_seq,
        last_epoch,
        max_wait_ms: 0,
        max_records: 0,
        recovery: false,
    }
}

pub(crate) async fn node_with_replica(dir: &Path) -> SearcherNode {
    let node = primary_node(dir);
    node.write(upsert("a", 1, 1)).await.unwrap();
    node
}
