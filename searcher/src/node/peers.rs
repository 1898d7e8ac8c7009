//! What the shard's other replicas ask of this node: the records after theirs (`PullLog`),
//! and to refuse older primaries (`Fence`).

use super::{blocking, SearcherNode};
use crate::{
    error::{Error, Result},
    replication::{self, PullOutcome, PullRequest},
};

impl SearcherNode {
    pub(super) async fn serve_pull_log(&self, request: PullRequest) -> Result<PullOutcome> {
        let Some(slot) = self.slot(&request.collection, request.shard) else {
            return Err(Error::ReplicaNotHosted {
                collection: request.collection.clone(),
                shard: request.shard,
            });
        };
        let replica = slot.replica.clone().ok_or_else(|| Error::ReplicaNotReady {
            collection: request.collection.clone(),
            shard: request.shard,
            state: "BOOTING",
        })?;
        if !request.recovery {
            // Only the current primary serves followers; their acknowledgements are counted
            // in `serve_pull`, once their log is known to match this one.
            self.primary_replica(&request.collection, request.shard, request.epoch)?;
        }
        let outcome = replication::serve_pull(&replica, &slot.state, &request).await?;
        if outcome.learner_in_sync {
            tracing::info!(collection = %request.collection, shard = request.shard, learner = %request.searcher_id, applied_seq = request.after_seq, "learner holds every acknowledged write; writes wait for it from now on");
            // Publish it soon: the placement controller switches a learner in only once
            // its primary vouches for it.
            self.writes_applied.notify_one();
        }
        Ok(outcome)
    }

    pub(super) async fn fence_replica(
        &self,
        collection: &str,
        shard: u32,
        epoch: u64,
    ) -> Result<(u64, u64)> {
        let Some(slot) = self.slot(collection, shard) else {
            return Err(Error::ReplicaNotHosted {
                collection: collection.to_string(),
                shard,
            });
        };
        let replica = slot.replica.ok_or_else(|| Error::ReplicaNotReady {
            collection: collection.to_string(),
            shard,
            state: "BOOTING",
        })?;
        // A primary of an older epoch stops taking writes here at once.
        if slot.state.ready_epoch() < epoch {
            slot.state.stop_leading();
        }
        blocking(move || replica.fence(epoch)).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{primary_node, pull, upsert};
    use crate::service::SearcherService;

    #[tokio::test]
    async fn a_follower_with_a_tail_the_primary_never_had_must_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let node = primary_node(dir.path());
        node.write(upsert("a", 1, 1)).await.unwrap();
        // The follower claims sequence 5 of epoch 1; the primary's epoch 1 ends at 1.
        let outcome = node.pull_log(pull(5, 1)).await.unwrap();
        assert!(outcome.snapshot_required.is_some());
        // Nor does its claim acknowledge a write it cannot hold.
        let mut write = upsert("b", 1, 2);
        write.deadline = Some(std::time::Instant::now() + std::time::Duration::from_millis(100));
        assert_eq!(
            node.write(write).await.unwrap_err().code(),
            tonic::Code::Unavailable
        );
        let fine = node.pull_log(pull(1, 1)).await.unwrap();
        assert!(fine.snapshot_required.is_none());
        let seqs: Vec<u64> = fine.records.iter().map(|record| record.seq).collect();
        assert_eq!(seqs, vec![2]);
    }
}
