//! Who a primary's acknowledgements count.

use std::collections::BTreeSet;

use quiver_cluster::{AssignmentRecord, ClusterState};

/// Who a primary's acknowledgements count, taken from the assignment its view shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumMembers {
    /// The other voting replicas.
    pub voters: Vec<String>,
    /// Voting replicas beyond the replication factor, while a learner that just turned
    /// voter waits for a surplus replica to leave. Each raises the write quorum by one, so
    /// that the replicas left after the surplus goes still hold every acknowledged write
    /// `write_quorum` times over.
    pub extra_voters: usize,
    /// Learners whose Searcher is live; only these may be found in sync.
    pub live_learners: BTreeSet<String>,
}

impl QuorumMembers {
    /// The members of `assignment` as seen from `me`, against the collection's
    /// replication factor (`None` when the view has no collection record) and the live
    /// Searchers of `state`.
    pub fn of(
        assignment: &AssignmentRecord,
        me: &str,
        replication_factor: Option<u32>,
        state: &ClusterState,
    ) -> QuorumMembers {
        let replication_factor =
            replication_factor.map_or(assignment.replicas.len(), |rf| rf as usize);
        QuorumMembers {
            voters: assignment
                .replicas
                .iter()
                .filter(|id| *id != me)
                .cloned()
                .collect(),
            extra_voters: assignment.replicas.len().saturating_sub(replication_factor),
            live_learners: assignment
                .learners
                .iter()
                .filter(|id| state.searchers.contains_key(*id))
                .cloned()
                .collect(),
        }
    }
}
