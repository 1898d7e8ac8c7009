//! Ordered replication of a shard between its replicas.
//!
//! The primary gives every write the next sequence number, logs and applies it, and keeps
//! the newest records in memory ([`ShardLog`]). Followers and learners long-poll it with
//! `PullLog` for the records after the last one they applied; asking for them acknowledges
//! everything before, so the primary learns each follower's progress from the pulls alone
//! and answers a write once enough voting replicas hold it ([`ShardLog::await_quorum`]).
//!
//! A replica that is new, or whose log the primary can no longer serve (folded into a
//! snapshot) or that diverged (it holds a write an old primary never got acknowledged),
//! starts over from a snapshot streamed by a peer ([`copy_from_peer`]), then pulls the rest.
//!
//! A newly promoted primary first fences the shard's other replicas (they then refuse older
//! primaries) and adopts the longest log among enough of them that every acknowledged write
//! is seen ([`recover_primary`]); only then does it take writes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use quiver_cluster::{AssignmentRecord, ClusterState, ClusterView, ReplicaPhase};
use quiver_proto::v1::{
    searcher_client::SearcherClient, CopySnapshotRequest, FenceRequest, LogRecord, Point,
    PullLogRequest,
};
use tokio::sync::{watch, Notify};
use tonic::transport::{Channel, Endpoint};

use crate::{
    error::{Error, Result},
    point::PointData,
    replica::{storage, EpochHistory, Replica, ReplicaConfig, SnapshotInfo},
    service::SearcherNode,
    storage::wal::{WalOp, WalRecord},
};

/// Records kept in memory for followers; older ones are read back from the log on disk.
const RECENT_RECORDS: usize = 4096;
/// A follower that pulled within this long is in sync: a write waits a little for it even
/// after the quorum answered, so a search right after the write sees it on every replica.
const IN_SYNC_WINDOW: Duration = Duration::from_secs(1);
/// How long a write waits for in-sync followers beyond its quorum.
const IN_SYNC_GRACE: Duration = Duration::from_millis(100);
/// Records per PullLog answer, and about as many bytes.
pub const PULL_MAX_RECORDS: usize = 512;
pub const PULL_MAX_BYTES: usize = 16 << 20;
const PULL_WAIT: Duration = Duration::from_millis(500);
const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

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

/// Who a primary's acknowledgements count, taken from the assignment its view shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumMembers {
    /// The other voting replicas.
    pub voters: Vec<String>,
    /// Voting replicas beyond the replication factor, while a learner that just turned
    /// voter waits for a surplus replica to leave. Each raises the write quorum by one, so
    /// that the replicas left after the surplus goes still hold every acknowledged write
    /// `write_quorum` times over.
    pub extra_voters: usize,
    /// Learners whose Searcher is live; only these may be found in sync.
    pub live_learners: BTreeSet<String>,
}

impl QuorumMembers {
    /// The members of `assignment` as seen from `me`, against the collection's
    /// replication factor (`None` when the view has no collection record) and the live
    /// Searchers of `state`.
    pub fn of(
        assignment: &AssignmentRecord,
        me: &str,
        replication_factor: Option<u32>,
        state: &ClusterState,
    ) -> QuorumMembers {
        let replication_factor =
            replication_factor.map_or(assignment.replicas.len(), |rf| rf as usize);
        QuorumMembers {
            voters: assignment
                .replicas
                .iter()
                .filter(|id| *id != me)
                .cloned()
                .collect(),
            extra_voters: assignment.replicas.len().saturating_sub(replication_factor),
            live_learners: assignment
                .learners
                .iter()
                .filter(|id| state.searchers.contains_key(*id))
                .cloned()
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct FollowerProgress {
    acked_seq: u64,
    last_seen: Instant,
}

/// What a primary's acknowledgement decisions read, kept under one lock so that each
/// decision sees one consistent state.
///
/// A learner goes through three sets on its way to being switched in (see
/// [`ShardLog::record_progress`]): `joining` once it is within one pull of the log's head
/// (writes after that point wait for it, so the acknowledged writes cannot keep running
/// ahead of it), `in_sync` once it holds every acknowledged write (every write waits for
/// it, and the primary publishes it: the placement controller switches a learner in only
/// on that word), and `retiring` when the primary stops vouching for it. A retiring learner
/// is still waited for until a record that no longer lists it is in etcd
/// ([`ShardLog::published`]); the controller's switch is guarded by that record's revision,
/// so it can never land on a vouch the primary has already stopped honouring.
#[derive(Debug, Default)]
struct Acks {
    followers: HashMap<String, FollowerProgress>,
    members: QuorumMembers,
    /// Learner → the log head when it joined: writes after it wait for the learner.
    joining: BTreeMap<String, u64>,
    in_sync: BTreeSet<String>,
    retiring: BTreeSet<String>,
    /// The highest sequence number acknowledged in this term; at the start of a term, the
    /// end of the log, since any of it may have been acknowledged by an earlier primary.
    acknowledged_seq: u64,
}

impl Acks {
    /// Whether the write `seq` must wait for `learner`.
    fn waits_for(&self, learner: &str, seq: u64) -> bool {
        self.in_sync.contains(learner)
            || self.retiring.contains(learner)
            || self.joining.get(learner).is_some_and(|head| seq > *head)
    }

    fn stop_vouching(&mut self, learner: &str) {
        if self.in_sync.remove(learner) {
            self.retiring.insert(learner.to_string());
        }
        self.joining.remove(learner);
    }
}

/// The primary side: recent records for followers and what each follower acknowledged.
pub struct ShardLog {
    recent: Mutex<BTreeMap<u64, WalRecord>>,
    appended: watch::Sender<u64>,
    acks: Mutex<Acks>,
    acks_changed: Notify,
}

impl ShardLog {
    fn new() -> ShardLog {
        ShardLog {
            recent: Mutex::new(BTreeMap::new()),
            appended: watch::channel(0).0,
            acks: Mutex::new(Acks::default()),
            acks_changed: Notify::new(),
        }
    }

    fn acks(&self) -> std::sync::MutexGuard<'_, Acks> {
        self.acks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers a record the primary just logged. Concurrent writes may arrive here out of
    /// order; readers take only a consecutive run, and fall back to the log on disk.
    pub fn push(&self, record: WalRecord) {
        let seq = record.seq;
        {
            let mut recent = self
                .recent
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            recent.insert(seq, record);
            while recent.len() > RECENT_RECORDS {
                recent.pop_first();
            }
        }
        self.appended.send_if_modified(|last| {
            let grew = seq > *last;
            if grew {
                *last = seq;
            }
            grew
        });
    }

    /// The consecutive records after `after_seq` held in memory; `None` when the next one
    /// is not here (evicted, or not pushed yet).
    fn recent_after(&self, after_seq: u64, max_records: usize) -> Option<Vec<WalRecord>> {
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let records: Vec<WalRecord> = (after_seq + 1..)
            .zip(recent.range(after_seq + 1..))
            .take_while(|(expected, (seq, _))| *expected == **seq)
            .take(max_records)
            .map(|(_, (_, record))| record.clone())
            .collect();
        if records.is_empty() {
            return None;
        }
        Some(records)
    }

    fn forget_records(&self) {
        self.recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }

    fn set_members(&self, members: QuorumMembers) {
        let mut acks = self.acks();
        if acks.members == members {
            return;
        }
        // A learner that turned voter, left, or lost its Searcher is vouched for no longer.
        let gone: Vec<String> = acks
            .in_sync
            .iter()
            .chain(acks.joining.keys())
            .filter(|learner| !members.live_learners.contains(*learner))
            .cloned()
            .collect();
        for learner in gone {
            acks.stop_vouching(&learner);
        }
        acks.members = members;
        drop(acks);
        self.acks_changed.notify_waiters();
    }

    fn begin_term(&self, applied_seq: u64) {
        let mut acks = self.acks();
        // A vouch names its epoch, and the controller honours only the current one.
        acks.followers.clear();
        acks.joining.clear();
        acks.in_sync.clear();
        acks.retiring.clear();
        acks.acknowledged_seq = applied_seq;
        drop(acks);
        self.acks_changed.notify_waiters();
    }

    /// The learners to publish as in sync: each holds every write this primary
    /// acknowledged, and every write waits for it. One that has not pulled for
    /// [`IN_SYNC_WINDOW`] is vouched for no longer, so a learner that died or stalled
    /// holds writes up only until the record without it is published.
    pub fn learners_to_vouch_for(&self) -> Vec<String> {
        let mut acks = self.acks();
        let silent: Vec<String> = acks
            .in_sync
            .iter()
            .chain(acks.joining.keys())
            .filter(|learner| {
                acks.followers
                    .get(*learner)
                    .is_none_or(|progress| progress.last_seen.elapsed() >= IN_SYNC_WINDOW)
            })
            .cloned()
            .collect();
        for learner in silent {
            acks.stop_vouching(&learner);
        }
        acks.in_sync.iter().cloned().collect()
    }

    /// Called once etcd holds a record of this replica listing `vouched` as in sync:
    /// the learners retiring and not listed are waited for no longer.
    pub fn published(&self, vouched: &[String]) {
        let mut acks = self.acks();
        let before = acks.retiring.len();
        acks.retiring
            .retain(|learner| vouched.iter().any(|id| id == learner));
        let changed = acks.retiring.len() != before;
        drop(acks);
        if changed {
            self.acks_changed.notify_waiters();
        }
    }

    /// Notes that `follower` holds every record up to `acked_seq`. A live learner within
    /// one pull of the log's head joins (writes after the head wait for it); one that holds
    /// every acknowledged write becomes in sync, and then this returns true: the primary
    /// should publish it.
    pub fn record_progress(&self, follower: &str, acked_seq: u64) -> bool {
        let mut acks = self.acks();
        acks.followers.insert(
            follower.to_string(),
            FollowerProgress {
                acked_seq,
                last_seen: Instant::now(),
            },
        );
        let mut now_in_sync = false;
        if acks.members.live_learners.contains(follower) && !acks.in_sync.contains(follower) {
            if acked_seq >= acks.acknowledged_seq {
                acks.joining.remove(follower);
                acks.in_sync.insert(follower.to_string());
                now_in_sync = true;
            } else if !acks.joining.contains_key(follower) {
                // Read under the lock that acknowledgements are decided under: a write
                // past this head is decided after the join, and waits for the learner.
                let head = *self.appended.borrow();
                if acked_seq + PULL_MAX_RECORDS as u64 >= head {
                    acks.joining.insert(follower.to_string(), head);
                }
            }
        }
        drop(acks);
        self.acks_changed.notify_waiters();
        now_in_sync
    }

    /// Waits until the write `seq` (which the primary holds already) is held by
    /// `write_quorum` voting replicas, the primary included, plus one more per voting
    /// replica beyond the replication factor, and by every learner it must wait for
    /// (see [`Acks`]); then a little
    /// longer for voters that are in sync. Gives up at `deadline`. The members are read
    /// afresh at every step, so an assignment that changes while the write waits counts at
    /// once. Returns the replicas other than the primary that hold the write and whether
    /// it is acknowledged.
    pub async fn await_quorum(
        &self,
        seq: u64,
        write_quorum: usize,
        deadline: tokio::time::Instant,
    ) -> (Vec<String>, bool) {
        let mut grace_until: Option<tokio::time::Instant> = None;
        loop {
            let notified = self.acks_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = tokio::time::Instant::now();
            {
                let mut acks = self.acks();
                let holds = |id: &String| {
                    acks.followers
                        .get(id)
                        .is_some_and(|progress| progress.acked_seq >= seq)
                };
                let mut acked: Vec<String> = acks
                    .members
                    .voters
                    .iter()
                    .filter(|id| holds(id))
                    .cloned()
                    .collect();
                let voters_holding = acked.len();
                let waited_for: Vec<&String> = acks
                    .members
                    .live_learners
                    .iter()
                    .chain(acks.in_sync.iter())
                    .chain(acks.retiring.iter())
                    .filter(|learner| acks.waits_for(learner, seq))
                    .collect();
                let learners_hold = waited_for.iter().all(|learner| holds(learner));
                for learner in waited_for {
                    if holds(learner) && !acked.contains(learner) {
                        acked.push(learner.clone());
                    }
                }
                let in_sync_missing = acks
                    .members
                    .voters
                    .iter()
                    .filter(|id| {
                        acks.followers.get(*id).is_some_and(|progress| {
                            progress.acked_seq < seq
                                && progress.last_seen.elapsed() < IN_SYNC_WINDOW
                        })
                    })
                    .count();
                let needed = write_quorum + acks.members.extra_voters;
                let reached = voters_holding + 1 >= needed && learners_hold;
                if reached {
                    let grace = *grace_until.get_or_insert(now + IN_SYNC_GRACE);
                    if in_sync_missing == 0 || now >= grace || now >= deadline {
                        // Decided under the lock, so a learner found in sync after this
                        // point holds this write too.
                        acks.acknowledged_seq = acks.acknowledged_seq.max(seq);
                        return (acked, true);
                    }
                } else if now >= deadline {
                    return (acked, false);
                }
            }
            let wake = grace_until.map_or(deadline, |grace| grace.min(deadline));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

/// Gives up waiting for the records after `after_seq` after `wait`; returns whether some
/// arrived.
async fn wait_for_records(log: &ShardLog, after_seq: u64, wait: Duration) -> bool {
    let mut appended = log.appended.subscribe();
    let arrived = tokio::time::timeout(wait, appended.wait_for(|last| *last > after_seq))
        .await
        .is_ok();
    arrived
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
    request: &PullLogRequest,
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
        if wait_for_records(&state.log, after_seq, wait).await {
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

pub fn record_to_proto(record: &WalRecord) -> LogRecord {
    match &record.op {
        WalOp::Upsert(points) => LogRecord {
            seq: record.seq,
            epoch: record.epoch,
            upsert: points
                .iter()
                .map(|point| Point {
                    id: point.id.clone(),
                    vector: point.vector.clone(),
                    payload_json: point.payload.clone().unwrap_or_default(),
                })
                .collect(),
            ..Default::default()
        },
        WalOp::Delete(ids) => LogRecord {
            seq: record.seq,
            epoch: record.epoch,
            delete: ids.clone(),
            is_delete: true,
            ..Default::default()
        },
    }
}

pub fn record_from_proto(record: LogRecord) -> WalRecord {
    let op = if record.is_delete {
        WalOp::Delete(record.delete)
    } else {
        WalOp::Upsert(
            record
                .upsert
                .into_iter()
                .map(|point| PointData {
                    id: point.id,
                    vector: point.vector,
                    payload: (!point.payload_json.is_empty()).then_some(point.payload_json),
                })
                .collect(),
        )
    };
    WalRecord {
        seq: record.seq,
        epoch: record.epoch,
        op,
    }
}

/// One lazily connected channel per peer Searcher.
#[derive(Default)]
pub struct PeerClients {
    channels: Mutex<HashMap<String, Channel>>,
}

impl PeerClients {
    pub fn client(&self, address: &str) -> Result<SearcherClient<Channel>> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let channel = match channels.get(address) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Endpoint::from_shared(address.to_string())
                    .map_err(|error| {
                        Error::Internal(format!("peer address {address:?} is invalid: {error}"))
                    })?
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(20))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .connect_lazy();
                channels.insert(address.to_string(), channel.clone());
                channel
            }
        };
        Ok(SearcherClient::new(channel)
            .max_decoding_message_size(quiver_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(quiver_proto::MAX_MESSAGE_BYTES))
    }
}

fn status_error(what: &str, status: tonic::Status) -> Error {
    Error::Internal(format!("{what}: {} {}", status.code(), status.message()))
}

/// Everything a follower or recovery task needs.
pub struct Replicator {
    pub node: Arc<SearcherNode>,
    pub view: ClusterView,
    pub peers: Arc<PeerClients>,
}

impl Replicator {
    fn address_of(&self, searcher: &str) -> Option<String> {
        self.view
            .current()
            .searchers
            .get(searcher)
            .map(|record| record.address.clone())
    }

    /// Follows the shard's primary for as long as this replica is a follower or learner:
    /// pulls records, applies them, and turns the replica ACTIVE once it caught up.
    pub async fn follow(self: Arc<Self>, collection: String, shard: u32) {
        let me = self.node.id().to_string();
        let mut backoff = RETRY_MIN;
        let mut logged_failure = false;
        loop {
            let Some((replica, state)) = self.node.replica_and_state(&collection, shard) else {
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
                        self.node.writes_applied().notify_one();
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
        let address = self
            .address_of(primary)
            .ok_or_else(|| Error::Internal(format!("primary {primary} is not live")))?;
        let counters = replica.counters();
        let mut client = self.peers.client(&address)?;
        let mut request = tonic::Request::new(PullLogRequest {
            collection: collection.to_string(),
            shard,
            searcher_id: self.node.id().to_string(),
            epoch: assignment.epoch,
            after_seq: counters.applied_seq,
            last_epoch: replica.last_epoch(),
            max_wait_ms: PULL_WAIT.as_millis() as u32,
            max_records: PULL_MAX_RECORDS as u32,
            recovery: false,
        });
        request.set_timeout(PULL_WAIT + PEER_CALL_TIMEOUT);
        let response = client
            .pull_log(request)
            .await
            .map_err(|status| status_error("PullLog", status))?
            .into_inner();
        if response.snapshot_required {
            tracing::warn!(%collection, shard, %primary, reason = %response.reason, "starting over from a peer's snapshot");
            self.copy_from_peer(collection, shard, assignment).await?;
            return Ok(true);
        }
        // A new replica starts from a peer's snapshot rather than replaying the shard's
        // whole history; when no peer has data yet, the log is all there is.
        if counters.applied_seq == 0
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
        let progressed = !response.records.is_empty();
        let records: Vec<WalRecord> = response
            .records
            .into_iter()
            .map(record_from_proto)
            .collect();
        let applied = if progressed {
            let replica = Arc::clone(replica);
            let counters = tokio::task::spawn_blocking(move || replica.apply_replicated(records))
                .await
                .map_err(|error| Error::Internal(format!("apply task failed: {error}")))??;
            counters.applied_seq
        } else {
            counters.applied_seq
        };
        if applied >= response.source_applied_seq
            && self.node.phase_of(collection, shard) == Some(ReplicaPhase::Booting)
        {
            self.node.set_phase(collection, shard, ReplicaPhase::Active);
            tracing::info!(%collection, shard, applied_seq = applied, "replica caught up with its primary; active");
            return Ok(true);
        }
        Ok(progressed)
    }

    /// Replaces this replica by a snapshot of an ACTIVE peer (another voting replica when
    /// there is one, to spare the primary), then lets the pull loop catch up from there.
    async fn copy_from_peer(
        &self,
        collection: &str,
        shard: u32,
        assignment: &AssignmentRecord,
    ) -> Result<()> {
        let me = self.node.id();
        let state = self.view.current();
        // The ACTIVE voting replica that applied the most, a non-primary on a tie to spare
        // the primary; an empty peer has nothing worth copying.
        let source = assignment
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
            .map(|(_, _, id)| id.clone());
        let Some(source) = source else {
            return Err(Error::Internal(
                "no ACTIVE peer with data to copy a snapshot from".into(),
            ));
        };
        self.copy_from(collection, shard, &source).await
    }

    /// Replaces this replica by a snapshot streamed from `source`.
    async fn copy_from(&self, collection: &str, shard: u32, source: &str) -> Result<()> {
        let source = source.to_string();
        let address = self
            .address_of(&source)
            .ok_or_else(|| Error::Internal(format!("peer {source} is not live")))?;
        let Some(config) = self.node.replica_config(collection, shard) else {
            return Err(Error::Internal("replica closed during the copy".into()));
        };
        let started = Instant::now();
        let staging = self.node.staging_dir();
        let (info, bytes) = receive_snapshot(
            &self.peers,
            &address,
            collection,
            shard,
            self.node.id(),
            &config,
            &staging,
        )
        .await?;
        let dir = self.node.replica_dir(collection, shard);
        let snapshot_dir = staging.join("snapshot");
        let install_config = config.clone();
        let wal_options = self.node.wal_options();
        let replica = tokio::task::spawn_blocking(move || {
            let outcome = Replica::install_snapshot(&dir, &install_config, &snapshot_dir, &info)
                .and_then(|()| Replica::open_with(&dir, install_config, wal_options));
            let _ = std::fs::remove_dir_all(&staging);
            outcome
        })
        .await
        .map_err(|error| Error::Internal(format!("install task failed: {error}")))??;
        let counters = replica.counters();
        self.node
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

    /// Makes this replica the ready primary of `epoch`: fences the other voting replicas,
    /// adopts the longest log among them, and begins the epoch. Retries until done, or
    /// until the assignment moves on.
    pub async fn recover_primary(self: Arc<Self>, collection: String, shard: u32, epoch: u64) {
        let mut backoff = RETRY_MIN;
        loop {
            let Some((replica, state)) = self.node.replica_and_state(&collection, shard) else {
                return;
            };
            match state.assignment() {
                Some(assignment)
                    if assignment.epoch == epoch && assignment.primary() == self.node.id() => {}
                _ => return,
            }
            match self
                .try_recover(&collection, shard, epoch, &replica, &state)
                .await
            {
                Ok(()) => {
                    state.log.forget_records();
                    state.lead(epoch, replica.counters().applied_seq);
                    self.node.writes_applied().notify_one();
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
        let me = self.node.id().to_string();
        let replication_factor = self
            .view
            .current()
            .collections
            .get(collection)
            .map_or(assignment.replicas.len() as u32, |record| {
                record.replication_factor
            });
        // Every write acknowledged by a majority is on at least one of any
        // (voters - majority + 1) voting replicas, this one included.
        let majority = AssignmentRecord::majority(replication_factor) as usize;
        let needed = (assignment.replicas.len() + 1)
            .saturating_sub(majority)
            .max(1);
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
        let fenced: Vec<(String, String, u64)> = futures::future::join_all(fence_calls)
            .await
            .into_iter()
            .flatten()
            .collect();
        if fenced.len() + 1 < needed {
            return Err(Error::Internal(format!(
                "{} of {} voting replicas answered the fence; {needed} are needed to be sure no acknowledged write is missed",
                fenced.len() + 1,
                assignment.replicas.len()
            )));
        }
        // Fencing ourselves too: a write of an older epoch must not slip in now.
        {
            let replica = Arc::clone(replica);
            tokio::task::spawn_blocking(move || replica.fence(epoch))
                .await
                .map_err(|error| Error::Internal(format!("fence task failed: {error}")))??;
        }
        if let Some((peer, address, longest)) = fenced
            .iter()
            .max_by_key(|(_, _, applied)| *applied)
            .cloned()
        {
            while replica.counters().applied_seq < longest {
                let mut client = self.peers.client(&address)?;
                let mut request = tonic::Request::new(PullLogRequest {
                    collection: collection.to_string(),
                    shard,
                    searcher_id: me.clone(),
                    epoch,
                    after_seq: replica.counters().applied_seq,
                    last_epoch: replica.last_epoch(),
                    max_wait_ms: 0,
                    max_records: PULL_MAX_RECORDS as u32,
                    recovery: true,
                });
                request.set_timeout(PEER_CALL_TIMEOUT);
                let response = client
                    .pull_log(request)
                    .await
                    .map_err(|status| status_error("recovery PullLog", status))?
                    .into_inner();
                if response.snapshot_required {
                    // Its log no longer reaches back to ours (say, ours was lost to
                    // corruption): take its snapshot, then the rest of its log.
                    tracing::warn!(%collection, shard, %peer, reason = %response.reason, "adopting a peer's snapshot before the primary epoch begins");
                    self.copy_from(collection, shard, &peer).await?;
                    let Some((current, _)) = self.node.replica_and_state(collection, shard) else {
                        return Err(Error::Internal("replica closed during recovery".into()));
                    };
                    tokio::task::spawn_blocking(move || current.fence(epoch))
                        .await
                        .map_err(|error| {
                            Error::Internal(format!("fence task failed: {error}"))
                        })??;
                    return Err(Error::Recovering(
                        "snapshot adopted; continuing with the log".into(),
                    ));
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
                tokio::task::spawn_blocking(move || target.apply_replicated(records))
                    .await
                    .map_err(|error| Error::Internal(format!("apply task failed: {error}")))??;
            }
            tracing::info!(%collection, shard, epoch, %peer, adopted_up_to = longest, "adopted the longest log of the shard");
        }
        let target = Arc::clone(replica);
        tokio::task::spawn_blocking(move || target.begin_epoch(epoch))
            .await
            .map_err(|error| Error::Internal(format!("epoch task failed: {error}")))?
    }
}

/// Streams a peer's snapshot into `staging/snapshot`; returns what it covers and its size.
async fn receive_snapshot(
    peers: &PeerClients,
    address: &str,
    collection: &str,
    shard: u32,
    me: &str,
    config: &ReplicaConfig,
    staging: &Path,
) -> Result<(SnapshotInfo, u64)> {
    let mut client = peers.client(address)?;
    let request = tonic::Request::new(CopySnapshotRequest {
        collection: collection.to_string(),
        shard,
        searcher_id: me.to_string(),
    });
    let mut stream = client
        .copy_snapshot(request)
        .await
        .map_err(|status| status_error("CopySnapshot", status))?
        .into_inner();
    let snapshot_dir = staging.join("snapshot");
    tokio::fs::create_dir_all(&snapshot_dir)
        .await
        .map_err(|source| storage(&snapshot_dir, source))?;
    let mut header = None;
    let mut received = 0u64;
    let mut open: Option<(String, tokio::fs::File)> = None;
    // A stalled peer must not hold the replica BOOTING forever.
    let idle = Duration::from_secs(30);
    loop {
        let chunk = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => return Err(Error::Internal("snapshot stream stalled".into())),
            Ok(None) => break,
            Ok(Some(chunk)) => {
                chunk.map_err(|status| status_error("CopySnapshot stream", status))?
            }
        };
        if let Some(first) = chunk.header {
            if first.incarnation != config.incarnation {
                return Err(Error::Internal(
                    "the peer's snapshot belongs to another incarnation of the collection".into(),
                ));
            }
            header = Some(first);
        }
        if chunk.file.is_empty() {
            continue;
        }
        let relative = safe_relative_path(&chunk.file)?;
        let needs_open = open.as_ref().is_none_or(|(name, _)| *name != chunk.file);
        if needs_open {
            if let Some((_, mut file)) = open.take() {
                finish_file(&mut file, &snapshot_dir).await?;
            }
            let path = snapshot_dir.join(&relative);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|source| storage(parent, source))?;
            }
            let file = tokio::fs::File::create(&path)
                .await
                .map_err(|source| storage(&path, source))?;
            open = Some((chunk.file.clone(), file));
        }
        let (_, file) = open.as_mut().expect("opened above");
        use tokio::io::AsyncWriteExt;
        file.write_all(&chunk.data)
            .await
            .map_err(|source| storage(&snapshot_dir, source))?;
        received += chunk.data.len() as u64;
    }
    if let Some((_, mut file)) = open.take() {
        finish_file(&mut file, &snapshot_dir).await?;
    }
    let header = header.ok_or_else(|| Error::Internal("snapshot stream had no header".into()))?;
    if received != header.total_bytes {
        return Err(Error::Internal(format!(
            "snapshot stream ended after {received} of {} bytes",
            header.total_bytes
        )));
    }
    let epochs = EpochHistory {
        fenced: 0,
        starts: header
            .epochs
            .iter()
            .map(|start| (start.epoch, start.start_seq))
            .collect(),
    };
    Ok((
        SnapshotInfo {
            applied_seq: header.applied_seq,
            last_epoch: header.last_epoch,
            epochs,
        },
        received,
    ))
}

async fn finish_file(file: &mut tokio::fs::File, path: &Path) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    file.flush()
        .await
        .and(file.sync_all().await)
        .map_err(|source| storage(path, source))
}

/// A peer names files relative to its snapshot; nothing may escape the staging directory.
fn safe_relative_path(name: &str) -> Result<PathBuf> {
    let path = PathBuf::from(name);
    let safe = path
        .components()
        .all(|component| matches!(component, std::path::Component::Normal(_)));
    if !safe || name.is_empty() {
        return Err(Error::Internal(format!(
            "snapshot file name {name:?} is not a plain relative path"
        )));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(seq: u64) -> WalRecord {
        WalRecord {
            seq,
            epoch: 1,
            op: WalOp::Delete(vec![format!("p{seq}")]),
        }
    }

    #[test]
    fn recent_records_are_served_only_as_a_consecutive_run() {
        let log = ShardLog::new();
        log.push(upsert(1));
        log.push(upsert(3));
        assert_eq!(log.recent_after(0, 10).unwrap().len(), 1);
        assert!(log.recent_after(1, 10).is_none(), "2 is missing");
        log.push(upsert(2));
        let seqs: Vec<u64> = log
            .recent_after(0, 10)
            .unwrap()
            .iter()
            .map(|record| record.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(log.recent_after(0, 2).unwrap().len(), 2);
        assert_eq!(*log.appended.borrow(), 3);
    }

    fn members(voters: &[&str], extra_voters: usize, learners: &[&str]) -> QuorumMembers {
        QuorumMembers {
            voters: voters.iter().map(|id| id.to_string()).collect(),
            extra_voters,
            live_learners: learners.iter().map(|id| id.to_string()).collect(),
        }
    }

    fn in_5s() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(5)
    }

    /// Starts waiting for `seq` with `write_quorum` in a task of its own.
    fn wait_for(
        log: &Arc<ShardLog>,
        seq: u64,
        write_quorum: usize,
    ) -> tokio::task::JoinHandle<(Vec<String>, bool)> {
        let log = Arc::clone(log);
        tokio::spawn(async move { log.await_quorum(seq, write_quorum, in_5s()).await })
    }

    async fn still_waiting(waiter: &tokio::task::JoinHandle<(Vec<String>, bool)>) -> bool {
        tokio::time::sleep(Duration::from_millis(30)).await;
        !waiter.is_finished()
    }

    #[tokio::test]
    async fn a_write_waits_for_its_quorum_and_reports_who_acknowledged() {
        let log = Arc::new(ShardLog::new());
        log.set_members(members(&["b", "c"], 0, &[]));
        let waiter = wait_for(&log, 7, 2);
        tokio::time::sleep(Duration::from_millis(20)).await;
        log.record_progress("b", 6);
        assert!(still_waiting(&waiter).await, "6 does not acknowledge 7");
        log.record_progress("b", 7);
        let (acked, reached) = waiter.await.unwrap();
        assert!(reached);
        assert_eq!(acked, vec!["b".to_string()]);
    }

    #[tokio::test]
    async fn a_write_without_its_quorum_gives_up_at_the_deadline() {
        let log = ShardLog::new();
        log.set_members(members(&["b"], 0, &[]));
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        let (acked, reached) = log.await_quorum(1, 2, deadline).await;
        assert!(!reached);
        assert!(acked.is_empty());
    }

    #[tokio::test]
    async fn a_learner_in_sync_is_waited_for_until_it_votes() {
        let log = Arc::new(ShardLog::new());
        log.set_members(members(&["b", "c"], 0, &["d"]));
        // Write 1 is acknowledged without the learner, which has not pulled yet.
        log.push(upsert(1));
        log.record_progress("b", 1);
        assert!(log.await_quorum(1, 2, in_5s()).await.1);
        assert!(
            !log.record_progress("d", 0),
            "d misses acknowledged write 1"
        );
        assert!(log.learners_to_vouch_for().is_empty());
        assert!(
            log.record_progress("d", 1),
            "d holds every acknowledged write"
        );
        assert_eq!(log.learners_to_vouch_for(), ["d"]);
        assert!(!log.record_progress("d", 1), "announced once");

        // From now on a voting quorum is not enough: d must hold each write too.
        log.push(upsert(2));
        let waiter = wait_for(&log, 2, 2);
        log.record_progress("b", 2);
        log.record_progress("c", 2);
        assert!(
            still_waiting(&waiter).await,
            "the learner in sync lacks write 2"
        );
        log.record_progress("d", 2);
        let (mut acked, reached) = waiter.await.unwrap();
        acked.sort();
        assert!(reached);
        assert_eq!(acked, ["b", "c", "d"].map(String::from));

        // d replaced c. Until a record that no longer vouches for d is in etcd, a switch
        // planned on the old one could still land, so writes still wait for d.
        log.set_members(members(&["b", "d"], 0, &[]));
        assert!(log.learners_to_vouch_for().is_empty());
        log.push(upsert(3));
        let waiter = wait_for(&log, 3, 2);
        log.record_progress("b", 3);
        assert!(still_waiting(&waiter).await, "d is retiring, not retired");
        log.published(&[]);
        assert!(waiter.await.unwrap().1, "a voter now, d counts like one");
    }

    #[tokio::test]
    async fn a_write_waiting_on_the_old_members_sees_the_learner_join() {
        let log = Arc::new(ShardLog::new());
        log.set_members(members(&["b", "c"], 0, &["d"]));
        log.push(upsert(1));
        let waiter = wait_for(&log, 1, 2);
        // d pulls before anything was acknowledged: in sync, so write 1 now needs it.
        assert!(log.record_progress("d", 0));
        log.record_progress("b", 1);
        assert!(
            still_waiting(&waiter).await,
            "write 1 was not acknowledged before d joined, so it waits for d"
        );
        log.record_progress("d", 1);
        assert!(waiter.await.unwrap().1);
    }

    #[tokio::test]
    async fn a_learner_trailing_a_stream_of_writes_catches_it() {
        let log = Arc::new(ShardLog::new());
        log.set_members(members(&["b", "c"], 0, &["d"]));
        for seq in 1..=6 {
            log.push(upsert(seq));
        }
        log.record_progress("b", 5);
        assert!(log.await_quorum(5, 2, in_5s()).await.1);
        // d trails the acknowledged writes but is within a pull of the head (6): it joins,
        // so write 6 may go without it but write 7 may not, and acknowledgements stop
        // running ahead of it.
        assert!(!log.record_progress("d", 3));
        log.record_progress("b", 6);
        assert!(log.await_quorum(6, 2, in_5s()).await.1);
        log.push(upsert(7));
        let waiter = wait_for(&log, 7, 2);
        log.record_progress("b", 7);
        assert!(still_waiting(&waiter).await, "d joined before write 7");
        assert!(!log.record_progress("d", 5), "write 6 was acknowledged");
        assert!(
            log.record_progress("d", 7),
            "d holds every acknowledged write"
        );
        assert!(waiter.await.unwrap().1);
        assert_eq!(log.learners_to_vouch_for(), ["d"]);
    }

    #[tokio::test]
    async fn a_learner_far_behind_is_not_waited_for() {
        let log = Arc::new(ShardLog::new());
        log.set_members(members(&["b"], 0, &["d"]));
        log.push(upsert(5000));
        log.record_progress("b", 5000);
        assert!(log.await_quorum(5000, 2, in_5s()).await.1);
        assert!(!log.record_progress("d", 10));
        log.push(upsert(5001));
        log.record_progress("b", 5001);
        assert!(log.await_quorum(5001, 2, in_5s()).await.1);
    }

    #[tokio::test]
    async fn a_learner_that_leaves_or_is_gone_is_not_waited_for_once_published() {
        let log = Arc::new(ShardLog::new());
        log.set_members(members(&["b", "c"], 0, &["d"]));
        assert!(log.record_progress("d", 0));
        log.push(upsert(1));
        let waiter = wait_for(&log, 1, 2);
        log.record_progress("b", 1);
        assert!(still_waiting(&waiter).await);
        // d's Searcher vanished from the view; the record still vouching for it is in etcd
        // until the next publish, and writes wait for d until then.
        log.set_members(members(&["b", "c"], 0, &[]));
        assert!(log.learners_to_vouch_for().is_empty());
        assert!(still_waiting(&waiter).await);
        log.published(&["d".to_string()]);
        assert!(
            still_waiting(&waiter).await,
            "that record still vouches for d"
        );
        log.published(&[]);
        assert!(waiter.await.unwrap().1);
        assert!(!log.record_progress("d", 1), "not a live learner");
    }

    #[tokio::test]
    async fn a_silent_learner_is_vouched_for_no_longer() {
        let log = Arc::new(ShardLog::new());
        log.set_members(members(&["b"], 0, &["d"]));
        assert!(log.record_progress("d", 0));
        assert_eq!(log.learners_to_vouch_for(), ["d"]);
        tokio::time::sleep(IN_SYNC_WINDOW + Duration::from_millis(100)).await;
        assert!(log.learners_to_vouch_for().is_empty(), "d stopped pulling");
        log.push(upsert(1));
        log.record_progress("b", 1);
        let quick = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(
            !log.await_quorum(1, 2, quick).await.1,
            "retiring until published"
        );
        log.published(&[]);
        assert!(log.await_quorum(1, 2, in_5s()).await.1);
    }

    #[tokio::test]
    async fn a_voter_beyond_the_replication_factor_raises_the_quorum() {
        let log = Arc::new(ShardLog::new());
        // Replication factor 3 with a fourth voter waiting for a surplus one to leave: a
        // majority write needs 3 of the 4, so any 3 left after one goes hold it twice.
        log.set_members(members(&["b", "c", "d"], 1, &[]));
        let waiter = wait_for(&log, 1, 2);
        log.record_progress("b", 1);
        assert!(still_waiting(&waiter).await, "2 of 4 is not enough");
        log.record_progress("d", 1);
        assert!(waiter.await.unwrap().1);
    }

    #[tokio::test]
    async fn a_new_term_counts_its_whole_log_as_acknowledged() {
        let log = Arc::new(ShardLog::new());
        log.set_members(members(&["b", "c"], 0, &["d"]));
        // Promoted with 40 records, any of which an earlier primary may have acknowledged.
        log.begin_term(40);
        log.push(upsert(40));
        assert!(!log.record_progress("d", 39));
        assert!(log.record_progress("d", 40));
        // A follower's progress from an earlier term does not carry over.
        log.record_progress("b", 42);
        log.begin_term(41);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(!log.await_quorum(42, 2, deadline).await.1);
    }

    #[test]
    fn snapshot_file_names_cannot_escape() {
        assert!(safe_relative_path("index/graph.bin").is_ok());
        for bad in ["", "../x", "/etc/passwd", "a/../../b"] {
            assert!(safe_relative_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn records_round_trip_through_the_wire_form() {
        let record = WalRecord {
            seq: 4,
            epoch: 2,
            op: WalOp::Upsert(vec![PointData {
                id: "a".into(),
                vector: vec![1.0, 2.0],
                payload: Some("{}".into()),
            }]),
        };
        assert_eq!(record_from_proto(record_to_proto(&record)), record);
        let delete = upsert(5);
        assert_eq!(record_from_proto(record_to_proto(&delete)), delete);
    }
}
