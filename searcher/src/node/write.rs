//! The primary's write path: order, log and apply a write, hand its records to the
//! followers, and answer once its quorum holds it.

use std::{sync::Arc, time::Duration};

use super::{blocking, SearcherNode};
use crate::{
    error::{Error, Result},
    replica::{Replica, ReplicaCounters},
    replication::ShardState,
    service::{ShardWrite, ShardWriteOutcome, WriteOp},
    storage::wal::WalRecord,
};

/// How long a write may wait for its quorum when the caller set no deadline.
const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

impl SearcherNode {
    pub(super) async fn write_as_primary(&self, write: ShardWrite) -> Result<ShardWriteOutcome> {
        let (replica, state, assignment) =
            self.primary_replica(&write.collection, write.shard, write.epoch)?;
        let write_quorum = write.write_quorum.max(1);
        if write_quorum as usize > assignment.replicas.len() {
            return Err(Error::InvalidArgument(format!(
                "write quorum {write_quorum} exceeds the {} voting replicas of {}/{}",
                assignment.replicas.len(),
                write.collection,
                write.shard
            )));
        }
        let (record, affected, counters) = log_and_apply(
            Arc::clone(&replica),
            Arc::clone(&state),
            assignment.epoch,
            write.op,
        )
        .await?;
        self.writes_applied.notify_one();
        let Some(record) = record else {
            return Ok(ShardWriteOutcome {
                affected,
                counters,
                seq: 0,
                acknowledged_by: vec![self.id.clone()],
                write_quorum,
            });
        };
        let acknowledged_by = self
            .await_acknowledgement(
                &write.collection,
                write.shard,
                write.deadline,
                &state,
                &record,
                write_quorum,
            )
            .await?;
        Ok(ShardWriteOutcome {
            affected,
            counters: replica.counters(),
            seq: record.seq,
            acknowledged_by,
            write_quorum,
        })
    }

    /// Waits until `write_quorum` replicas hold `record` (see
    /// [`crate::replication::ShardLog::await_quorum`]); answers who holds it, this Searcher
    /// first, or why the write is not acknowledged.
    async fn await_acknowledgement(
        &self,
        collection: &str,
        shard: u32,
        deadline: Option<std::time::Instant>,
        state: &ShardState,
        record: &WalRecord,
        write_quorum: u32,
    ) -> Result<Vec<String>> {
        let deadline =
            deadline.unwrap_or_else(|| std::time::Instant::now() + DEFAULT_WRITE_TIMEOUT);
        let (followers, reached) = state
            .log
            .await_quorum(
                record.seq,
                write_quorum as usize,
                tokio::time::Instant::from_std(deadline),
            )
            .await;
        let mut acknowledged_by = vec![self.id.clone()];
        acknowledged_by.extend(followers);
        if !reached {
            crate::metrics::write_quorum_missed();
            return Err(Error::QuorumNotReached(format!(
                "write {} of {}/{} is durable on {} of the {write_quorum} replicas its quorum needs ({}); it is not acknowledged, retry it (writes are idempotent)",
                record.seq,
                collection,
                shard,
                acknowledged_by.len(),
                acknowledged_by.join(", ")
            )));
        }
        Ok(acknowledged_by)
    }
}

/// Logs and applies `op` as the primary of `epoch` on the blocking pool and hands its
/// records to the followers; answers the last record (none when nothing changed), the
/// points affected and the replica's counters.
async fn log_and_apply(
    replica: Arc<Replica>,
    state: Arc<ShardState>,
    epoch: u64,
    op: WriteOp,
) -> Result<(Option<WalRecord>, usize, ReplicaCounters)> {
    blocking(move || {
        let (records, affected, counters) = match op {
            WriteOp::Upsert(points) => {
                let (record, affected, counters) = replica.upsert_as_primary(epoch, points)?;
                (Vec::from_iter(record), affected, counters)
            }
            WriteOp::Delete(ids) => {
                let (record, affected, counters) = replica.delete_as_primary(epoch, ids)?;
                (Vec::from_iter(record), affected, counters)
            }
            WriteOp::DeleteMatching(filter) => {
                replica.delete_matching_as_primary(epoch, &filter)?
            }
        };
        for record in &records {
            state.log.push(record.clone());
        }
        // Followers apply in log order, so the quorum on the last record covers all.
        Ok((records.into_iter().last(), affected, counters))
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::test_support::{primary_node, pull, upsert};
    use super::*;
    use crate::service::SearcherService;

    #[tokio::test]
    async fn the_primary_orders_writes_and_answers_after_its_quorum() {
        let dir = tempfile::tempdir().unwrap();
        let node = Arc::new(primary_node(dir.path()));
        let first = node.write(upsert("a", 1, 1)).await.unwrap();
        assert_eq!(first.seq, 1);
        assert_eq!(first.acknowledged_by, vec!["s1".to_string()]);

        let writer = {
            let node = Arc::clone(&node);
            tokio::spawn(async move { node.write(upsert("b", 1, 2)).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!writer.is_finished(), "quorum 2 needs a follower");
        // s2 pulls: gets both records, and its next pull acknowledges them.
        let pulled = node.pull_log(pull(0, 0)).await.unwrap();
        let seqs: Vec<u64> = pulled.records.iter().map(|record| record.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(pulled.source_applied_seq, 2);
        node.pull_log(pull(2, 1)).await.unwrap();
        let second = writer.await.unwrap().unwrap();
        assert_eq!(second.seq, 2);
        assert_eq!(
            second.acknowledged_by,
            vec!["s1".to_string(), "s2".to_string()]
        );
        assert_eq!(second.write_quorum, 2);
    }

    #[tokio::test]
    async fn writes_the_primary_cannot_take_are_refused_with_the_right_code() {
        let dir = tempfile::tempdir().unwrap();
        let node = primary_node(dir.path());
        let stale = node.write(upsert("a", 7, 1)).await.unwrap_err();
        assert_eq!(stale.code(), tonic::Code::FailedPrecondition);
        let too_many = node.write(upsert("a", 1, 4)).await.unwrap_err();
        assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
        let mut short = upsert("a", 1, 2);
        short.deadline = Some(std::time::Instant::now() + std::time::Duration::from_millis(50));
        let unacknowledged = node.write(short).await.unwrap_err();
        assert_eq!(unacknowledged.code(), tonic::Code::Unavailable);
        // Fenced by a newer primary: no more writes here.
        node.fence("c", 0, 2).await.unwrap();
        let fenced = node.write(upsert("b", 1, 1)).await.unwrap_err();
        assert!(
            matches!(
                fenced.code(),
                tonic::Code::Unavailable | tonic::Code::FailedPrecondition
            ),
            "{fenced}"
        );
        let other = SearcherNode::new("s9".into(), dir.path().join("other"));
        let missing = other.write(upsert("a", 1, 1)).await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
    }
}
