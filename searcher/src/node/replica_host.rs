//! The node as replication sees it: its replica slots, their directories, and a signal
//! that a replica changed.

use std::{path::PathBuf, sync::Arc};

use quiver_cluster::ReplicaPhase;

use super::SearcherNode;
use crate::{
    replica::{Replica, ReplicaConfig},
    replication::{ReplicaHost, ShardState},
    storage::wal::WalOptions,
};

impl ReplicaHost for SearcherNode {
    fn id(&self) -> &str {
        SearcherNode::id(self)
    }

    fn replica_and_state(
        &self,
        collection: &str,
        shard: u32,
    ) -> Option<(Arc<Replica>, Arc<ShardState>)> {
        let slot = self.slot(collection, shard)?;
        Some((slot.replica?, slot.state))
    }

    fn replica_config(&self, collection: &str, shard: u32) -> Option<ReplicaConfig> {
        Some(self.slot(collection, shard)?.replica?.config().clone())
    }

    fn phase_of(&self, collection: &str, shard: u32) -> Option<ReplicaPhase> {
        Some(self.slot(collection, shard)?.phase)
    }

    fn set_phase(&self, collection: &str, shard: u32, phase: ReplicaPhase) {
        SearcherNode::set_phase(self, collection, shard, phase);
    }

    fn replace_replica(&self, collection: &str, shard: u32, replica: Arc<Replica>) {
        let mut replicas = self
            .replicas
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = replicas.get_mut(&(collection.to_string(), shard)) {
            slot.replica = Some(replica);
        }
    }

    fn replica_dir(&self, collection: &str, shard: u32) -> PathBuf {
        SearcherNode::replica_dir(self, collection, shard)
    }

    fn staging_dir(&self) -> PathBuf {
        SearcherNode::staging_dir(self)
    }

    fn wal_options(&self) -> WalOptions {
        SearcherNode::wal_options(self)
    }

    fn replica_changed(&self) {
        self.writes_applied.notify_one();
    }
}
