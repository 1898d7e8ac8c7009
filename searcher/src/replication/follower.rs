//! A follower's or learner's loop: long-polls the shard's primary with `PullLog`, applies
//! what it sends, and turns the replica ACTIVE once it caught up.

use std::{sync::Arc, time::Duration};

use quiver_cluster::{AssignmentRecord, ReplicaPhase};
use quiver_proto::v1::{PullLogRequest, PullLogResponse};

use super::{
    log::PULL_MAX_RECORDS,
    replicator::{blocking, status_error, Replicator, PEER_CALL_TIMEOUT, RETRY_MAX, RETRY_MIN},
    wire::record_from_proto,
};
use crate::{
    error::{Error, Result},
    replica::Replica,
    storage::wal::WalRecord,
};

/// How long the primary holds a pull open when it has no records yet.
const PULL_WAIT: Duration = Duration::from_millis(500);

impl Replicator {
    /// Follows the shard's primary for as long as this replica is a follower or learner:
    /// pulls records, applies them, and turns the replica ACTIVE once it caught up.
    pub async fn follow(self: Arc<Self>, collection: String, shard: u32) {
        let me = self.host.id().to_string();
        let mut backoff = RETRY_MIN;
        let mut logged_failure = false;
        loop {
            let Some((replica, state)) = self.host.replica_and_state(&collection, shard) else {
                return;
            };
            let Some(assignment) = state.assignment() else {
                return;
            };
            let primary = assignment.primary().to_string();
            if primary == me || assignment.role_of(&me).is_none() {
                return;
            }
            let step = self
                .pull_once(&collection, shard, &replica, &assignment, &primary)
                .await;
            match step {
                Ok(progressed) => {
                    backoff = RETRY_MIN;
                    if logged_failure {
                        tracing::info!(%collection, shard, %primary, "replication resumed");
                        logged_failure = false;
                    }
                    if progressed {
                        self.host.replica_changed();
                    }
                }
                Err(error) => {
                    if !logged_failure {
                        tracing::warn!(%collection, shard, %primary, %error, "replication from the primary failed; retrying");
                        logged_failure = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// One PullLog round; true when the replica changed.
    async fn pull_once(
        &self,
        collection: &str,
        shard: u32,
        replica: &Arc<Replica>,
        assignment: &AssignmentRecord,
        primary: &str,
    ) -> Result<bool> {
        let applied_before = replica.counters().applied_seq;
        let response = self
            .pull_from_primary(
                collection,
                shard,
                replica,
                applied_before,
                assignment,
                primary,
            )
            .await?;
        if response.snapshot_required {
            tracing::warn!(%collection, shard, %primary, reason = %response.reason, "starting over from a peer's snapshot");
            self.copy_from_peer(collection, shard, assignment).await?;
            return Ok(true);
        }
        // A new replica starts from a peer's snapshot rather than replaying the shard's
        // whole history; when no peer has data yet, the log is all there is.
        if applied_before == 0
            && response.source_applied_seq > 0
            && response
                .records
                .first()
                .is_some_and(|record| record.seq == 1)
            && self
                .copy_from_peer(collection, shard, assignment)
                .await
                .is_ok()
        {
            return Ok(true);
        }
        self.apply_pulled(collection, shard, replica, applied_before, response)
            .await
    }

    /// Asks the primary for the records after `applied_seq`, this replica's last one,
    /// waiting up to [`PULL_WAIT`] for new ones.
    async fn pull_from_primary(
        &self,
        collection: &str,
        shard: u32,
        replica: &Arc<Replica>,
        applied_seq: u64,
        assignment: &AssignmentRecord,
        primary: &str,
    ) -> Result<PullLogResponse> {
        let address = self
            .address_of(primary)
            .ok_or_else(|| Error::Internal(format!("primary {primary} is not live")))?;
        let mut client = self.peers.client(&address)?;
        let mut request = tonic::Request::new(PullLogRequest {
            collection: collection.to_string(),
            shard,
            searcher_id: self.host.id().to_string(),
            epoch: assignment.epoch,
            after_seq: applied_seq,
            last_epoch: replica.last_epoch(),
            max_wait_ms: PULL_WAIT.as_millis() as u32,
            max_records: PULL_MAX_RECORDS as u32,
            recovery: false,
        });
        request.set_timeout(PULL_WAIT + PEER_CALL_TIMEOUT);
        Ok(client
            .pull_log(request)
            .await
            .map_err(|status| status_error("PullLog", status))?
            .into_inner())
    }

    /// Applies the pulled records, and turns a BOOTING replica ACTIVE once it holds all
    /// the primary had; true when the replica changed.
    async fn apply_pulled(
        &self,
        collection: &str,
        shard: u32,
        replica: &Arc<Replica>,
        applied_before: u64,
        response: PullLogResponse,
    ) -> Result<bool> {
        let progressed = !response.records.is_empty();
        let records: Vec<WalRecord> = response
            .records
            .into_iter()
            .map(record_from_proto)
            .collect();
        let applied = if progressed {
            let replica = Arc::clone(replica);
            let counters = blocking("apply", move || replica.apply_replicated(records)).await?;
            counters.applied_seq
        } else {
            applied_before
        };
        if applied >= response.source_applied_seq
            && self.host.phase_of(collection, shard) == Some(ReplicaPhase::Booting)
        {
            self.host.set_phase(collection, shard, ReplicaPhase::Active);
            tracing::info!(%collection, shard, applied_seq = applied, "replica caught up with its primary; active");
            return Ok(true);
        }
        Ok(progressed)
    }
}
