//! A newly promoted primary's recovery: it fences the shard's other voting replicas (they
//! then refuse older primaries), adopts the longest log among enough of them that every
//! acknowledged write is seen, and only then begins its epoch and takes writes.

use std::sync::Arc;

use quiver_cluster::AssignmentRecord;
use quiver_proto::v1::{FenceRequest, PullLogRequest, PullLogResponse};

use super::{
    log::PULL_MAX_RECORDS,
    replicator::{blocking, status_error, Replicator, PEER_CALL_TIMEOUT, RETRY_MAX, RETRY_MIN},
    shard_state::ShardState,
    wire::record_from_proto,
};
use crate::{
    error::{Error, Result},
    replica::Replica,
    storage::wal::WalRecord,
};

/// A voting replica that answered the fence: (its id, its address, its applied sequence).
type FencedPeer = (String, String, u64);

impl Replicator {
    /// Makes this replica the ready primary of `epoch`: fences the other voting replicas,
    /// adopts the longest log among them, and begins the epoch. Retries until done, or
    /// until the assignment moves on.
    pub async fn recover_primary(self: Arc<Self>, collection: String, shard: u32, epoch: u64) {
        let mut backoff = RETRY_MIN;
        loop {
            let Some((replica, state)) = self.host.replica_and_state(&collection, shard) else {
                return;
            };
            match state.assignment() {
                Some(assignment)
                    if assignment.epoch == epoch && assignment.primary() == self.host.id() => {}
                _ => return,
            }
            match self
                .try_recover(&collection, shard, epoch, &replica, &state)
                .await
            {
                Ok(()) => {
                    state.log.forget_records();
                    state.lead(epoch, replica.counters().applied_seq);
                    self.host.replica_changed();
                    tracing::info!(%collection, shard, epoch, applied_seq = replica.counters().applied_seq, "primary ready for writes");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%collection, shard, epoch, %error, "primary recovery incomplete; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// One attempt: fence, adopt the longest log, begin the epoch.
    async fn try_recover(
        &self,
        collection: &str,
        shard: u32,
        epoch: u64,
        replica: &Arc<Replica>,
        state: &ShardState,
    ) -> Result<()> {
        let Some(assignment) = state.assignment() else {
            return Err(Error::Internal("no assignment".into()));
        };
        if replica.epochs().current() >= epoch {
            return Ok(());
        }
        let needed = self.fences_needed(collection, &assignment);
        let fenced = self
            .fence_peers(collection, shard, epoch, &assignment)
            .await;
        if fenced.len() + 1 < needed {
            return Err(Error::Internal(format!(
                "{} of {} voting replicas answered the fence; {needed} are needed to be sure no acknowledged write is missed",
                fenced.len() + 1,
                assignment.replicas.len()
            )));
        }
        // Fencing ourselves too: a write of an older epoch must not slip in now.
        fence_replica(Arc::clone(replica), epoch).await?;
        if let Some(longest) = fenced
            .iter()
            .max_by_key(|(_, _, applied)| *applied)
            .cloned()
        {
            self.adopt_log(collection, shard, epoch, replica, longest)
                .await?;
        }
        let target = Arc::clone(replica);
        blocking("epoch", move || target.begin_epoch(epoch)).await
    }

    /// How many voting replicas, this one included, must answer the fence. Every write
    /// acknowledged by a majority is on at least one of any (voters - majority + 1) voting
    /// replicas.
    fn fences_needed(&self, collection: &str, assignment: &AssignmentRecord) -> usize {
        let replication_factor = self
            .view
            .current()
            .collections
            .get(collection)
            .map_or(assignment.replicas.len() as u32, |record| {
                record.replication_factor
            });
        let majority = AssignmentRecord::majority(replication_factor) as usize;
        (assignment.replicas.len() + 1)
            .saturating_sub(majority)
            .max(1)
    }

    /// Fences the other voting replicas at `epoch`, all at once; returns those that
    /// answered.
    async fn fence_peers(
        &self,
        collection: &str,
        shard: u32,
        epoch: u64,
        assignment: &AssignmentRecord,
    ) -> Vec<FencedPeer> {
        let me = self.host.id().to_string();
        let fence_calls = assignment
            .replicas
            .iter()
            .filter(|id| **id != me)
            .map(|peer| {
                let me = me.clone();
                async move {
                    let address = self.address_of(peer)?;
                    let mut client = self.peers.client(&address).ok()?;
                    let mut request = tonic::Request::new(FenceRequest {
                        collection: collection.to_string(),
                        shard,
                        epoch,
                        primary: me.clone(),
                    });
                    request.set_timeout(PEER_CALL_TIMEOUT);
                    let response = client.fence(request).await.ok()?.into_inner();
                    Some((peer.clone(), address, response.applied_seq))
                }
            });
        futures::future::join_all(fence_calls)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Pulls from `peer` until this replica holds its whole log.
    async fn adopt_log(
        &self,
        collection: &str,
        shard: u32,
        epoch: u64,
        replica: &Arc<Replica>,
        (peer, address, longest): FencedPeer,
    ) -> Result<()> {
        while replica.counters().applied_seq < longest {
            let response = self
                .pull_for_recovery(collection, shard, epoch, replica, &address)
                .await?;
            if response.snapshot_required {
                // Its log no longer reaches back to ours (say, ours was lost to
                // corruption): take its snapshot, then the rest of its log.
                tracing::warn!(%collection, shard, %peer, reason = %response.reason, "adopting a peer's snapshot before the primary epoch begins");
                return self.adopt_snapshot(collection, shard, epoch, &peer).await;
            }
            if response.records.is_empty() {
                return Err(Error::Internal(format!(
                    "{peer} holds records up to {longest} but sent none"
                )));
            }
            let records: Vec<WalRecord> = response
                .records
                .into_iter()
                .map(record_from_proto)
                .collect();
            let target = Arc::clone(replica);
            blocking("apply", move || target.apply_replicated(records)).await?;
        }
        tracing::info!(%collection, shard, epoch, %peer, adopted_up_to = longest, "adopted the longest log of the shard");
        Ok(())
    }

    /// Asks the peer at `address` for the records after this replica's last one.
    async fn pull_for_recovery(
        &self,
        collection: &str,
        shard: u32,
        epoch: u64,
        replica: &Arc<Replica>,
        address: &str,
    ) -> Result<PullLogResponse> {
        let mut client = self.peers.client(address)?;
        let mut request = tonic::Request::new(PullLogRequest {
            collection: collection.to_string(),
            shard,
            searcher_id: self.host.id().to_string(),
            epoch,
            after_seq: replica.counters().applied_seq,
            last_epoch: replica.last_epoch(),
            max_wait_ms: 0,
            max_records: PULL_MAX_RECORDS as u32,
            recovery: true,
        });
        request.set_timeout(PEER_CALL_TIMEOUT);
        Ok(client
            .pull_log(request)
            .await
            .map_err(|status| status_error("recovery PullLog", status))?
            .into_inner())
    }

    /// Replaces this replica by `peer`'s snapshot and fences it again; always answers an
    /// error, so the next attempt continues with the rest of the peer's log.
    async fn adopt_snapshot(
        &self,
        collection: &str,
        shard: u32,
        epoch: u64,
        peer: &str,
    ) -> Result<()> {
        self.copy_from(collection, shard, peer).await?;
        let Some((current, _)) = self.host.replica_and_state(collection, shard) else {
            return Err(Error::Internal("replica closed during recovery".into()));
        };
        fence_replica(current, epoch).await?;
        Err(Error::Recovering(
            "snapshot adopted; continuing with the log".into(),
        ))
    }
}

/// Makes `replica` refuse primaries older than `epoch`.
async fn fence_replica(replica: Arc<Replica>, epoch: u64) -> Result<()> {
    blocking("fence", move || replica.fence(epoch).map(|_| ())).await
}
