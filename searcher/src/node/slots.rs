//! The replica slots: one per replica assigned here, from the moment it is assigned until
//! it is closed, and the lookups every operation starts with.

use std::{collections::HashMap, sync::Arc};

use quiver_cluster::{AssignmentRecord, ReplicaPhase};

use super::SearcherNode;
use crate::{
    error::{Error, Result},
    replica::{Replica, ReplicaCounters},
    replication::ShardState,
    service::ReplicaReport,
};

/// A replica slot: present from the moment the replica is assigned here until it is closed.
#[derive(Clone)]
pub(crate) struct Hosted {
    pub(crate) phase: ReplicaPhase,
    /// Set once the replica's files are open.
    pub(crate) replica: Option<Arc<Replica>>,
    /// Replication state; kept across phase changes and snapshot installs.
    pub(crate) state: Arc<ShardState>,
}

impl Hosted {
    pub(crate) fn new(phase: ReplicaPhase, replica: Option<Arc<Replica>>) -> Hosted {
        Hosted {
            phase,
            replica,
            state: Arc::new(ShardState::default()),
        }
    }
}

impl SearcherNode {
    pub(super) fn slot(&self, collection: &str, shard: u32) -> Option<Hosted> {
        self.replicas
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&(collection.to_string(), shard))
            .cloned()
    }

    pub(crate) fn shard_state(&self, collection: &str, shard: u32) -> Option<Arc<ShardState>> {
        Some(self.slot(collection, shard)?.state)
    }

    /// Changes a slot's phase, keeping its replica and replication state.
    pub(crate) fn set_phase(&self, collection: &str, shard: u32, phase: ReplicaPhase) {
        let mut replicas = self
            .replicas
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = replicas.get_mut(&(collection.to_string(), shard)) {
            slot.phase = phase;
        }
    }

    pub(crate) fn hosted(&self) -> HashMap<(String, u32), Hosted> {
        self.replicas
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(crate) fn set_slot(&self, collection: &str, shard: u32, slot: Option<Hosted>) {
        let mut replicas = self
            .replicas
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (collection.to_string(), shard);
        match slot {
            Some(slot) => replicas.insert(key, slot),
            None => replicas.remove(&key),
        };
    }

    /// The replica if it is ACTIVE; errors name why not. A BOOTING replica is still
    /// replaying its log, so it takes neither reads nor writes yet.
    pub(super) fn active_replica(&self, collection: &str, shard: u32) -> Result<Arc<Replica>> {
        let replicas = self
            .replicas
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(hosted) = replicas.get(&(collection.to_string(), shard)) else {
            return Err(Error::ReplicaNotHosted {
                collection: collection.to_string(),
                shard,
            });
        };
        match (&hosted.phase, &hosted.replica) {
            // A DRAINING replica still answers what Mergers routed before they saw it go.
            (ReplicaPhase::Active | ReplicaPhase::Draining, Some(replica)) => {
                Ok(Arc::clone(replica))
            }
            (phase, _) => Err(Error::ReplicaNotReady {
                collection: collection.to_string(),
                shard,
                state: match phase {
                    ReplicaPhase::Booting => "BOOTING",
                    ReplicaPhase::Active => "ACTIVE",
                    ReplicaPhase::Draining => "DRAINING",
                    ReplicaPhase::Failed => "FAILED",
                },
            }),
        }
    }

    /// The replica and its state if this Searcher is the shard's primary, ready for writes
    /// of `epoch` (0: whichever epoch it leads).
    pub(super) fn primary_replica(
        &self,
        collection: &str,
        shard: u32,
        epoch: u64,
    ) -> Result<(Arc<Replica>, Arc<ShardState>, AssignmentRecord)> {
        let Some(slot) = self.slot(collection, shard) else {
            return Err(Error::ReplicaNotHosted {
                collection: collection.to_string(),
                shard,
            });
        };
        let assignment = slot
            .state
            .assignment()
            .ok_or_else(|| Error::ReplicaNotReady {
                collection: collection.to_string(),
                shard,
                state: "BOOTING",
            })?;
        if assignment.primary() != self.id {
            return Err(Error::NotPrimary(format!(
                "{} is not the primary of {collection}/{shard}; {} is (epoch {})",
                self.id,
                assignment.primary(),
                assignment.epoch
            )));
        }
        if epoch != 0 && epoch != assignment.epoch {
            return Err(Error::NotPrimary(format!(
                "the write was routed for epoch {epoch} of {collection}/{shard}, which is at epoch {}",
                assignment.epoch
            )));
        }
        let Some(replica) = slot.replica else {
            return Err(Error::ReplicaNotReady {
                collection: collection.to_string(),
                shard,
                state: "BOOTING",
            });
        };
        if slot.state.ready_epoch() != assignment.epoch {
            return Err(Error::Recovering(format!(
                "the primary of {collection}/{shard} is collecting the longest log of epoch {} from its peers; retry shortly",
                assignment.epoch
            )));
        }
        Ok((replica, slot.state, assignment))
    }

    /// What each hosted replica (of `collection`, or all) is doing, sorted.
    pub(super) fn replica_reports(&self, collection: Option<&str>) -> Vec<ReplicaReport> {
        let mut reports: Vec<ReplicaReport> = self
            .hosted()
            .into_iter()
            .filter(|((name, _), _)| collection.is_none_or(|wanted| wanted == name))
            .map(|((name, shard), hosted)| ReplicaReport {
                collection: name,
                shard,
                phase: hosted.phase,
                counters: hosted.replica.map(|replica| replica.counters()).unwrap_or(
                    ReplicaCounters {
                        point_count: 0,
                        applied_seq: 0,
                    },
                ),
                role: hosted
                    .state
                    .assignment()
                    .and_then(|assignment| assignment.role_of(&self.id)),
                epoch: hosted
                    .state
                    .assignment()
                    .map_or(0, |assignment| assignment.epoch),
            })
            .collect();
        reports.sort_by(|left, right| {
            (&left.collection, left.shard).cmp(&(&right.collection, right.shard))
        });
        reports
    }
}
