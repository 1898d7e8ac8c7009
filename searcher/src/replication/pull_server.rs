//! The primary's side of `PullLog`: the records after what the asker applied, from memory
//! or the log on disk, or word that it must start over from a snapshot.

use std::{sync::Arc, time::Duration};

use super::{log::PULL_MAX_RECORDS, shard_state::ShardState};
use crate::{
    error::{Error, Result},
    replica::Replica,
    storage::wal::WalRecord,
};

/// About the most bytes of records one PullLog answer carries.
pub const PULL_MAX_BYTES: usize = 16 << 20;

/// A follower's or a recovering primary's request for the records after its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullRequest {
    pub collection: String,
    pub shard: u32,
    /// Who asks; its pull acknowledges every record up to `after_seq`.
    pub searcher_id: String,
    /// The primary epoch the asker follows.
    pub epoch: u64,
    /// The last record the asker applied, and the epoch it was written in.
    pub after_seq: u64,
    pub last_epoch: u64,
    /// How long to wait for records when there are none yet (at most 5 s).
    pub max_wait_ms: u32,
    /// 0: [`PULL_MAX_RECORDS`]; never more.
    pub max_records: u32,
    /// A new primary adopting the longest log: answered by any replica, acknowledges
    /// nothing and never waits.
    pub recovery: bool,
}

/// What a PullLog call answers.
#[derive(Debug, Default)]
pub struct PullOutcome {
    pub records: Vec<WalRecord>,
    pub source_applied_seq: u64,
    pub snapshot_required: Option<String>,
    /// This pull made the asker, a learner, in sync: the primary should publish it.
    pub learner_in_sync: bool,
}

/// Serves a PullLog: the records after `after_seq` from memory or the log, waiting up to
/// `wait` when there are none yet.
pub async fn serve_pull(
    replica: &Arc<Replica>,
    state: &ShardState,
    request: &PullRequest,
) -> Result<PullOutcome> {
    let after_seq = request.after_seq;
    let applied = replica.counters().applied_seq;
    let mut learner_in_sync = false;
    if !request.recovery {
        let epochs = replica.epochs();
        let end = epochs.end_of(request.last_epoch, applied);
        if after_seq > end || request.last_epoch > epochs.current().max(replica.last_epoch()) {
            return Ok(PullOutcome {
                source_applied_seq: applied,
                snapshot_required: Some(format!(
                    "the asker's log (sequence {after_seq} of epoch {}) diverged from the primary's, whose epoch {} ends at {end}",
                    request.last_epoch, request.last_epoch
                )),
                ..PullOutcome::default()
            });
        }
        // Its log matches ours up to `after_seq`: that much is acknowledged.
        learner_in_sync = state.log.record_progress(&request.searcher_id, after_seq);
    }
    let max_records = match request.max_records {
        0 => PULL_MAX_RECORDS,
        wanted => (wanted as usize).min(PULL_MAX_RECORDS),
    };
    let mut records = fetch_records(replica, state, after_seq, max_records).await?;
    if matches!(&records, Some(found) if found.is_empty()) && !request.recovery {
        let wait =
            Duration::from_millis(u64::from(request.max_wait_ms)).min(Duration::from_secs(5));
        if state.log.wait_for_records(after_seq, wait).await {
            records = fetch_records(replica, state, after_seq, max_records).await?;
        }
    }
    let source_applied_seq = replica.counters().applied_seq;
    match records {
        Some(records) => Ok(PullOutcome {
            records,
            source_applied_seq,
            snapshot_required: None,
            learner_in_sync,
        }),
        None => Ok(PullOutcome {
            source_applied_seq,
            snapshot_required: Some(format!(
                "the records after {after_seq} were folded into a snapshot"
            )),
            learner_in_sync,
            ..PullOutcome::default()
        }),
    }
}

async fn fetch_records(
    replica: &Arc<Replica>,
    state: &ShardState,
    after_seq: u64,
    max_records: usize,
) -> Result<Option<Vec<WalRecord>>> {
    if after_seq >= replica.counters().applied_seq {
        return Ok(Some(Vec::new()));
    }
    if let Some(records) = state.log.recent_after(after_seq, max_records) {
        return Ok(Some(records));
    }
    let replica = Arc::clone(replica);
    tokio::task::spawn_blocking(move || {
        replica.read_log_after(after_seq, max_records, PULL_MAX_BYTES)
    })
    .await
    .map_err(|error| Error::Internal(format!("log read task failed: {error}")))?
}
