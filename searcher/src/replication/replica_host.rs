//! What replication needs from the process that hosts the replicas.

use std::{path::PathBuf, sync::Arc};

use quiver_cluster::ReplicaPhase;

use super::shard_state::ShardState;
use crate::{
    replica::{Replica, ReplicaConfig},
    storage::wal::WalOptions,
};

/// The replica slots of one Searcher, as the follower and recovery tasks see them. A slot
/// exists from the moment a replica is assigned here until it is closed; its replica is
/// there once the replica's files are open.
pub trait ReplicaHost: Send + Sync + 'static {
    /// This Searcher's id.
    fn id(&self) -> &str;
    /// The open replica of a slot and its replication state.
    fn replica_and_state(
        &self,
        collection: &str,
        shard: u32,
    ) -> Option<(Arc<Replica>, Arc<ShardState>)>;
    fn replica_config(&self, collection: &str, shard: u32) -> Option<ReplicaConfig>;
    fn phase_of(&self, collection: &str, shard: u32) -> Option<ReplicaPhase>;
    /// Changes a slot's phase, keeping its replica and replication state.
    fn set_phase(&self, collection: &str, shard: u32, phase: ReplicaPhase);
    /// Swaps in a replica rebuilt from a peer's snapshot; searches in flight keep the old
    /// one until they end.
    fn replace_replica(&self, collection: &str, shard: u32, replica: Arc<Replica>);
    /// Where a replica's files live.
    fn replica_dir(&self, collection: &str, shard: u32) -> PathBuf;
    /// A fresh directory for a snapshot on its way in, on the file system of the replicas'
    /// directories so that renames work.
    fn staging_dir(&self) -> PathBuf;
    fn wal_options(&self) -> WalOptions;
    /// Says that a replica changed (records applied, a snapshot installed, a phase or an
    /// epoch begun), so its status reaches etcd promptly.
    fn replica_changed(&self);
}
