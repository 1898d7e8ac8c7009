//! The replication state of one hosted replica.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    RwLock,
};

use quiver_cluster::AssignmentRecord;

use super::{log::ShardLog, quorum::QuorumMembers};

/// The replication state of one hosted replica; it outlives the replica's files being
/// swapped (a snapshot installed) and its role changing.
pub struct ShardState {
    /// The shard's assignment as this Searcher's view last showed it.
    assignment: RwLock<Option<AssignmentRecord>>,
    /// The epoch for which this replica is a primary ready for writes; 0 when it is not.
    ready_epoch: AtomicU64,
    pub log: ShardLog,
}

impl Default for ShardState {
    fn default() -> Self {
        ShardState {
            assignment: RwLock::new(None),
            ready_epoch: AtomicU64::new(0),
            log: ShardLog::new(),
        }
    }
}

impl ShardState {
    pub fn assignment(&self) -> Option<AssignmentRecord> {
        self.assignment
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Takes the assignment the view shows, and who the primary's acknowledgements count
    /// under it.
    pub fn set_assignment(&self, assignment: Option<AssignmentRecord>, members: QuorumMembers) {
        *self
            .assignment
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = assignment;
        self.log.set_members(members);
    }

    pub fn ready_epoch(&self) -> u64 {
        self.ready_epoch.load(Ordering::Acquire)
    }

    /// Stops taking writes as a primary.
    pub fn stop_leading(&self) {
        self.ready_epoch.store(0, Ordering::Release);
    }

    /// Starts taking writes as the primary of `epoch`, with `applied_seq` the end of its
    /// log. Acknowledgement bookkeeping starts over when the epoch is a new one: progress a
    /// follower reported to an earlier term proves nothing about this one.
    pub fn lead(&self, epoch: u64, applied_seq: u64) {
        if self.ready_epoch.swap(epoch, Ordering::AcqRel) != epoch {
            self.log.begin_term(applied_seq);
        }
    }
}
