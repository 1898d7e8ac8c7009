//! Starting over from a peer's snapshot: picks the peer, streams its snapshot in (see
//! `snapshot_receive.rs`), installs it in place of this replica's files and swaps the
//! rebuilt replica in. The follower then pulls the records after it.

use std::{path::PathBuf, sync::Arc, time::Instant};

use quiver_cluster::{AssignmentRecord, ClusterState, ReplicaPhase};

use super::{
    replicator::{blocking, Replicator},
    snapshot_receive::receive_snapshot,
};
use crate::{
    error::{Error, Result},
    replica::{Replica, ReplicaConfig, SnapshotInfo},
};

impl Replicator {
    /// Replaces this replica by a snapshot of an ACTIVE peer (another voting replica when
    /// there is one, to spare the primary), then lets the pull loop catch up from there.
    pub(super) async fn copy_from_peer(
        &self,
        collection: &str,
        shard: u32,
        assignment: &AssignmentRecord,
    ) -> Result<()> {
        let state = self.view.current();
        let source = snapshot_source(&state, assignment, collection, shard, self.host.id());
        let Some(source) = source else {
            return Err(Error::Internal(
                "no ACTIVE peer with data to copy a snapshot from".into(),
            ));
        };
        self.copy_from(collection, shard, &source).await
    }

    /// Replaces this replica by a snapshot streamed from `source`.
    pub(super) async fn copy_from(&self, collection: &str, shard: u32, source: &str) -> Result<()> {
        let source = source.to_string();
        let address = self
            .address_of(&source)
            .ok_or_else(|| Error::Internal(format!("peer {source} is not live")))?;
        let Some(config) = self.host.replica_config(collection, shard) else {
            return Err(Error::Internal("replica closed during the copy".into()));
        };
        let started = Instant::now();
        let staging = self.host.staging_dir();
        let (info, bytes) = receive_snapshot(
            &self.peers,
            &address,
            collection,
            shard,
            self.host.id(),
            &config,
            &staging,
        )
        .await?;
        let replica = self
            .install_snapshot(collection, shard, config, staging, info)
            .await?;
        let counters = replica.counters();
        self.host
            .replace_replica(collection, shard, Arc::new(replica));
        tracing::info!(
            %collection,
            shard,
            %source,
            bytes,
            applied_seq = counters.applied_seq,
            points = counters.point_count,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "replica copied from a peer's snapshot"
        );
        Ok(())
    }

    /// Installs the snapshot received into `staging/snapshot` as the replica's files and
    /// opens them; the staging directory is removed either way.
    async fn install_snapshot(
        &self,
        collection: &str,
        shard: u32,
        config: ReplicaConfig,
        staging: PathBuf,
        info: SnapshotInfo,
    ) -> Result<Replica> {
        let dir = self.host.replica_dir(collection, shard);
        let snapshot_dir = staging.join("snapshot");
        let wal_options = self.host.wal_options();
        blocking("install", move || {
            let outcome = Replica::install_snapshot(&dir, &config, &snapshot_dir, &info)
                .and_then(|()| Replica::open_with(&dir, config, wal_options));
            let _ = std::fs::remove_dir_all(&staging);
            outcome
        })
        .await
    }
}

/// The ACTIVE voting replica that applied the most, a non-primary on a tie to spare the
/// primary; an empty peer has nothing worth copying.
fn snapshot_source(
    state: &ClusterState,
    assignment: &AssignmentRecord,
    collection: &str,
    shard: u32,
    me: &str,
) -> Option<String> {
    assignment
        .replicas
        .iter()
        .filter(|id| id.as_str() != me && state.searchers.contains_key(*id))
        .filter_map(|id| {
            let record = state.replica(collection, shard, id)?;
            (record.state == ReplicaPhase::Active && record.applied_seq > 0).then_some((
                record.applied_seq,
                id.as_str() != assignment.primary(),
                id,
            ))
        })
        .max()
        .map(|(_, _, id)| id.clone())
}
