//! The Searcher service: the trait the gRPC adapter calls, and [`SearcherNode`], which
//! hosts this process's replicas and runs their CPU and disk work on the blocking pool.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use async_trait::async_trait;
use quiver_cluster::{ReplicaPhase, ReplicaRole};
use quiver_index::{filtered::Plan, merge_top_k, Neighbor, SearchParams};
use quiver_payload::Filter;
use quiver_proto::v1::PullLogRequest;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::{
    error::{Error, Result},
    point::{Hit, PointData},
    replica::{Replica, ReplicaConfig, ReplicaCounters, ScrollPage, SnapshotInfo},
    replication::{self, PullOutcome, ShardState},
    storage::wal::WalOptions,
};

/// A write for one shard, sent to its primary.
#[derive(Debug, Clone)]
pub struct ShardWrite {
    pub collection: String,
    pub shard: u32,
    /// The primary epoch the caller routed by; 0 accepts whatever this primary leads.
    pub epoch: u64,
    /// Replicas (this primary included) that must hold the write before it is acknowledged.
    pub write_quorum: u32,
    /// The caller's deadline; a server default applies without one.
    pub deadline: Option<std::time::Instant>,
    pub op: WriteOp,
}

/// What a write does. The log holds upserts and deletes of ids only: a delete by filter is
/// resolved by the primary into the ids it matched.
#[derive(Debug, Clone)]
pub enum WriteOp {
    Upsert(Vec<PointData>),
    Delete(Vec<String>),
    DeleteMatching(Filter),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShardWriteOutcome {
    /// Points upserted, or deleted ids that existed.
    pub affected: usize,
    pub counters: ReplicaCounters,
    /// 0 when the write changed nothing (a delete of absent ids) and needed no record.
    pub seq: u64,
    /// This Searcher first, then the followers that hold the write.
    pub acknowledged_by: Vec<String>,
    pub write_quorum: u32,
}

/// A consistent copy of a replica's snapshot, staged for streaming to a peer; the staged
/// hard links are removed when this is dropped.
pub struct ExportedSnapshot {
    pub info: SnapshotInfo,
    pub incarnation: String,
    pub dir: PathBuf,
    /// `(name relative to dir, '/'-separated; size in bytes)`, sorted.
    pub files: Vec<(String, u64)>,
}

impl Drop for ExportedSnapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How long a write may wait for its quorum when the caller set no deadline.
const DEFAULT_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A search over several shards hosted here.
#[derive(Debug, Clone)]
pub struct ShardSearch {
    pub collection: String,
    pub shards: Vec<u32>,
    pub queries: Vec<Vec<f32>>,
    pub k: usize,
    pub params: SearchParams,
    pub with_vectors: bool,
    pub with_payloads: bool,
    /// Only points that match; `None` (or an empty filter) for all.
    pub filter: Option<Filter>,
}

#[derive(Debug)]
pub struct ShardSearchOutcome {
    /// Per query, the top k over `searched_shards`, best first.
    pub results: Vec<Vec<Hit>>,
    pub searched_shards: Vec<u32>,
    pub failed_shards: Vec<(u32, Error)>,
    /// With a filter, per searched shard: how most of its queries ran, and how many of
    /// its points matched.
    pub plans: Vec<ShardPlan>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPlan {
    pub shard: u32,
    pub plan: Plan,
    pub matches: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaReport {
    pub collection: String,
    pub shard: u32,
    pub phase: ReplicaPhase,
    pub counters: ReplicaCounters,
    pub role: Option<ReplicaRole>,
    pub epoch: u64,
}

#[async_trait]
pub trait SearcherService: Send + Sync + 'static {
    async fn search(&self, request: ShardSearch) -> Result<ShardSearchOutcome>;
    /// Orders, logs and applies a write as the shard's primary, and answers once its
    /// quorum holds it.
    async fn write(&self, write: ShardWrite) -> Result<ShardWriteOutcome>;
    async fn get(
        &self,
        collection: &str,
        shard: u32,
        ids: Vec<String>,
        with_vectors: bool,
        with_payloads: bool,
    ) -> Result<Vec<PointData>>;
    /// Per shard named (each once), how many of its points `filter` matches, or why it
    /// could not be counted here.
    async fn count(
        &self,
        collection: &str,
        shards: Vec<u32>,
        filter: Option<Filter>,
    ) -> Vec<(u32, Result<u64>)>;
    /// Up to `limit` of one shard's points that `filter` matches, in id order after
    /// `after` (see [`Replica::scroll`]).
    async fn scroll(&self, request: ShardScroll) -> Result<ScrollPage>;
    async fn replica_status(&self, collection: Option<&str>) -> Vec<ReplicaReport>;
    /// Records after the asker's applied sequence number (see [`replication::serve_pull`]).
    async fn pull_log(&self, request: PullLogRequest) -> Result<PullOutcome>;
    /// Refuses older primaries from now on; answers (applied seq, its epoch).
    async fn fence(&self, collection: &str, shard: u32, epoch: u64) -> Result<(u64, u64)>;
    async fn export_snapshot(&self, collection: &str, shard: u32) -> Result<ExportedSnapshot>;
}

/// One page of one shard's matching points.
#[derive(Debug, Clone)]
pub struct ShardScroll {
    pub collection: String,
    pub shard: u32,
    pub filter: Option<Filter>,
    pub after: String,
    pub limit: usize,
    pub with_vectors: bool,
    pub with_payloads: bool,
}

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

pub struct SearcherNode {
    id: String,
    data_dir: PathBuf,
    replicas: RwLock<HashMap<(String, u32), Hosted>>,
    /// Bounds concurrent CPU-heavy searches to the cores there are, so a burst queues
    /// instead of oversubscribing the blocking pool. The permit travels into the blocking
    /// task: a caller that gives up does not free a core that is still busy.
    search_slots: Arc<Semaphore>,
    /// Signalled after every applied write, so replica counters reach etcd promptly.
    writes_applied: Notify,
    wal_options: WalOptions,
    /// Matching points up to which a filtered search scans exactly (0: by dimension).
    filter_exact_threshold: u64,
}

impl SearcherNode {
    pub fn new(id: String, data_dir: PathBuf) -> SearcherNode {
        SearcherNode::with_wal_options(id, data_dir, WalOptions::default())
    }

    pub fn with_wal_options(
        id: String,
        data_dir: PathBuf,
        wal_options: WalOptions,
    ) -> SearcherNode {
        let cores = std::thread::available_parallelism()
            .map(|count| count.get())
            .unwrap_or(2);
        SearcherNode {
            id,
            data_dir,
            replicas: RwLock::new(HashMap::new()),
            search_slots: Arc::new(Semaphore::new(cores)),
            writes_applied: Notify::new(),
            wal_options,
            filter_exact_threshold: 0,
        }
    }

    /// Sets the matching points up to which a filtered search scans exactly instead of
    /// searching the index (0: [`quiver_index::filtered::default_exact_threshold`]).
    pub fn with_filter_exact_threshold(mut self, threshold: u64) -> SearcherNode {
        self.filter_exact_threshold = threshold;
        self
    }

    pub fn wal_options(&self) -> WalOptions {
        self.wal_options
    }

    /// A fresh directory for a snapshot on its way in or out, on the data dir's file
    /// system so that hard links and renames work.
    pub fn staging_dir(&self) -> PathBuf {
        self.data_dir
            .join("staging")
            .join(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Where a corrupt replica's files are moved: a fresh directory per incident.
    pub fn quarantine_dir(&self, collection: &str, shard: u32) -> PathBuf {
        self.data_dir.join("quarantine").join(format!(
            "{collection}-{shard}-{}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string()
                .replace(':', "")
        ))
    }

    fn slot(&self, collection: &str, shard: u32) -> Option<Hosted> {
        self.replicas
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&(collection.to_string(), shard))
            .cloned()
    }

    pub(crate) fn replica_and_state(
        &self,
        collection: &str,
        shard: u32,
    ) -> Option<(Arc<Replica>, Arc<ShardState>)> {
        let slot = self.slot(collection, shard)?;
        Some((slot.replica?, slot.state))
    }

    pub(crate) fn shard_state(&self, collection: &str, shard: u32) -> Option<Arc<ShardState>> {
        Some(self.slot(collection, shard)?.state)
    }

    pub(crate) fn replica_config(&self, collection: &str, shard: u32) -> Option<ReplicaConfig> {
        Some(self.slot(collection, shard)?.replica?.config().clone())
    }

    pub(crate) fn phase_of(&self, collection: &str, shard: u32) -> Option<ReplicaPhase> {
        Some(self.slot(collection, shard)?.phase)
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

    /// Swaps in a replica rebuilt from a peer's snapshot; searches in flight keep the old
    /// one until they end.
    pub(crate) fn replace_replica(&self, collection: &str, shard: u32, replica: Arc<Replica>) {
        let mut replicas = self
            .replicas
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = replicas.get_mut(&(collection.to_string(), shard)) {
            slot.replica = Some(replica);
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn writes_applied(&self) -> &Notify {
        &self.writes_applied
    }

    pub fn replica_dir(&self, collection: &str, shard: u32) -> PathBuf {
        replica_dir(&self.data_dir, collection, shard)
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
    /// One of the slots that cap concurrent searches, counts and scrolls at the number of
    /// cores (each runs on the blocking pool).
    async fn search_slot(&self) -> Result<OwnedSemaphorePermit> {
        Arc::clone(&self.search_slots)
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("search slots closed".into()))
    }

    fn active_replica(&self, collection: &str, shard: u32) -> Result<Arc<Replica>> {
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
    fn primary_replica(
        &self,
        collection: &str,
        shard: u32,
        epoch: u64,
    ) -> Result<(
        Arc<Replica>,
        Arc<ShardState>,
        quiver_cluster::AssignmentRecord,
    )> {
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
}

pub fn replica_dir(data_dir: &Path, collection: &str, shard: u32) -> PathBuf {
    data_dir
        .join("collections")
        .join(collection)
        .join(shard.to_string())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Internal(format!("blocking task failed: {error}")))?
}

#[async_trait]
impl SearcherService for SearcherNode {
    async fn search(&self, request: ShardSearch) -> Result<ShardSearchOutcome> {
        crate::metrics::search_asked_for(request.shards.len());
        let mut replicas = Vec::new();
        let mut failed_shards = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for shard in &request.shards {
            if !seen.insert(*shard) {
                continue;
            }
            match self.active_replica(&request.collection, *shard) {
                Ok(replica) => replicas.push((*shard, replica)),
                Err(error) => failed_shards.push((*shard, error)),
            }
        }
        if let Some((_, replica)) = replicas.first() {
            // Queries are flattened for the index, so one of the wrong length would shift
            // every query after it: refuse the request instead.
            let config = replica.config();
            for (number, query) in request.queries.iter().enumerate() {
                quiver_index::validate_vector(query, config.dimension, config.metric)
                    .map_err(|error| Error::InvalidArgument(format!("query {number}: {error}")))?;
            }
        }
        if replicas.is_empty() {
            return Ok(ShardSearchOutcome {
                results: vec![Vec::new(); request.queries.len()],
                searched_shards: Vec::new(),
                failed_shards,
                plans: Vec::new(),
            });
        }
        let slot = self.search_slot().await?;
        let exact_threshold = self.filter_exact_threshold;
        let mut outcome = blocking(move || {
            let _slot = slot;
            Ok(search_replicas(&request, &replicas, exact_threshold))
        })
        .await?;
        outcome.failed_shards.append(&mut failed_shards);
        outcome.failed_shards.sort_by_key(|(shard, _)| *shard);
        Ok(outcome)
    }

    async fn write(&self, write: ShardWrite) -> Result<ShardWriteOutcome> {
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
        let epoch = assignment.epoch;
        let target = Arc::clone(&replica);
        let shipping = Arc::clone(&state);
        let (record, affected, counters) = blocking(move || {
            let (records, affected, counters) = match write.op {
                WriteOp::Upsert(points) => {
                    let (record, affected, counters) = target.upsert_as_primary(epoch, points)?;
                    (Vec::from_iter(record), affected, counters)
                }
                WriteOp::Delete(ids) => {
                    let (record, affected, counters) = target.delete_as_primary(epoch, ids)?;
                    (Vec::from_iter(record), affected, counters)
                }
                WriteOp::DeleteMatching(filter) => {
                    target.delete_matching_as_primary(epoch, &filter)?
                }
            };
            for record in &records {
                shipping.log.push(record.clone());
            }
            // Followers apply in log order, so the quorum on the last record covers all.
            Ok((records.into_iter().last(), affected, counters))
        })
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
        let deadline = write
            .deadline
            .unwrap_or_else(|| std::time::Instant::now() + DEFAULT_WRITE_TIMEOUT);
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
                write.collection,
                write.shard,
                acknowledged_by.len(),
                acknowledged_by.join(", ")
            )));
        }
        Ok(ShardWriteOutcome {
            affected,
            counters: replica.counters(),
            seq: record.seq,
            acknowledged_by,
            write_quorum,
        })
    }

    async fn pull_log(&self, request: PullLogRequest) -> Result<PullOutcome> {
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

    async fn fence(&self, collection: &str, shard: u32, epoch: u64) -> Result<(u64, u64)> {
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

    async fn export_snapshot(&self, collection: &str, shard: u32) -> Result<ExportedSnapshot> {
        let replica = self.active_replica(collection, shard)?;
        let dir = self.staging_dir();
        blocking(move || {
            let info = replica.export_snapshot(&dir)?;
            let mut exported = ExportedSnapshot {
                info,
                incarnation: replica.config().incarnation.clone(),
                dir: dir.clone(),
                files: Vec::new(),
            };
            list_files(&dir, "", &mut exported.files)?;
            exported.files.sort();
            Ok(exported)
        })
        .await
    }

    async fn get(
        &self,
        collection: &str,
        shard: u32,
        ids: Vec<String>,
        with_vectors: bool,
        with_payloads: bool,
    ) -> Result<Vec<PointData>> {
        let replica = self.active_replica(collection, shard)?;
        blocking(move || {
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some((vector, payload)) = replica.point(&id, with_vectors, with_payloads)? {
                    found.push(PointData {
                        id,
                        vector: vector.unwrap_or_default(),
                        payload,
                    });
                }
            }
            Ok(found)
        })
        .await
    }

    async fn count(
        &self,
        collection: &str,
        shards: Vec<u32>,
        filter: Option<Filter>,
    ) -> Vec<(u32, Result<u64>)> {
        let mut replicas = Vec::new();
        let mut counts = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for shard in shards {
            if !seen.insert(shard) {
                continue;
            }
            match self.active_replica(collection, shard) {
                Ok(replica) => replicas.push((shard, replica)),
                Err(error) => counts.push((shard, Err(error))),
            }
        }
        if !replicas.is_empty() {
            let slot = match self.search_slot().await {
                Ok(slot) => slot,
                Err(error) => return vec![(u32::MAX, Err(error))],
            };
            let counted = blocking(move || {
                let _slot = slot;
                Ok(replicas
                    .into_iter()
                    .map(|(shard, replica)| (shard, replica.count(filter.as_ref())))
                    .collect::<Vec<_>>())
            })
            .await;
            match counted {
                Ok(mut counted) => counts.append(&mut counted),
                Err(error) => return vec![(u32::MAX, Err(error))],
            }
        }
        counts.sort_by_key(|(shard, _)| *shard);
        counts
    }

    async fn scroll(&self, request: ShardScroll) -> Result<ScrollPage> {
        let replica = self.active_replica(&request.collection, request.shard)?;
        let slot = self.search_slot().await?;
        blocking(move || {
            let _slot = slot;
            replica.scroll(
                request.filter.as_ref(),
                &request.after,
                request.limit,
                request.with_vectors,
                request.with_payloads,
            )
        })
        .await
    }

    async fn replica_status(&self, collection: Option<&str>) -> Vec<ReplicaReport> {
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

fn list_files(dir: &Path, prefix: &str, out: &mut Vec<(String, u64)>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|source| crate::replica::storage(dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| crate::replica::storage(dir, source))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let relative = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let metadata = entry
            .metadata()
            .map_err(|source| crate::replica::storage(&entry.path(), source))?;
        if metadata.is_dir() {
            list_files(&entry.path(), &relative, out)?;
        } else {
            out.push((relative, metadata.len()));
        }
    }
    Ok(())
}

/// Searches each replica (among the points the filter matches, when there is one),
/// merges per query, then fetches vectors and payloads for the winners only.
fn search_replicas(
    request: &ShardSearch,
    replicas: &[(u32, Arc<Replica>)],
    exact_threshold: u64,
) -> ShardSearchOutcome {
    let flat_queries: Vec<f32> = request.queries.iter().flatten().copied().collect();
    let filter = request.filter.as_ref().filter(|filter| !filter.is_empty());
    let mut per_replica = Vec::with_capacity(replicas.len());
    let mut searched = Vec::new();
    let mut failed = Vec::new();
    let mut plans = Vec::new();
    for (shard, replica) in replicas {
        let started = std::time::Instant::now();
        let searched_shard = match filter {
            None => replica.search(&flat_queries, request.k, &request.params),
            Some(filter) => replica
                .search_filtered(
                    &flat_queries,
                    request.k,
                    &request.params,
                    filter,
                    exact_threshold,
                )
                .map(|found| {
                    for plan in &found.plans {
                        crate::metrics::filtered_search(*plan);
                    }
                    let by_index = found
                        .plans
                        .iter()
                        .filter(|plan| **plan == Plan::Index)
                        .count();
                    plans.push(ShardPlan {
                        shard: *shard,
                        plan: if by_index * 2 > found.plans.len() {
                            Plan::Index
                        } else {
                            Plan::ExactScan
                        },
                        matches: found.matches,
                    });
                    found.results
                }),
        };
        match searched_shard {
            Ok(results) => {
                crate::metrics::shard_searched(&request.collection, *shard, started.elapsed());
                searched.push(*shard);
                per_replica.push((Arc::clone(replica), results));
            }
            Err(error) => failed.push((*shard, error)),
        }
    }
    let Some((_, first)) = replicas.first() else {
        return ShardSearchOutcome {
            results: vec![Vec::new(); request.queries.len()],
            searched_shards: searched,
            failed_shards: failed,
            plans,
        };
    };
    let metric = first.config().metric;
    let mut merged = Vec::with_capacity(request.queries.len());
    for query_number in 0..request.queries.len() {
        let mut owner: HashMap<String, &Arc<Replica>> = HashMap::new();
        let lists: Vec<Vec<Neighbor<String>>> = per_replica
            .iter()
            .map(|(replica, results)| {
                let list = results.get(query_number).cloned().unwrap_or_default();
                for neighbor in &list {
                    owner.insert(neighbor.id.clone(), replica);
                }
                list
            })
            .collect();
        let top = merge_top_k(metric, request.k, lists);
        let hits = top
            .into_iter()
            .map(|neighbor| {
                let (vector, payload) = if request.with_vectors || request.with_payloads {
                    owner
                        .get(&neighbor.id)
                        .and_then(|replica| {
                            replica
                                .point(&neighbor.id, request.with_vectors, request.with_payloads)
                                .ok()
                                .flatten()
                        })
                        .unwrap_or((None, None))
                } else {
                    (None, None)
                };
                Hit {
                    id: neighbor.id,
                    score: neighbor.score,
                    vector,
                    payload,
                }
            })
            .collect();
        merged.push(hits);
    }
    ShardSearchOutcome {
        results: merged,
        searched_shards: searched,
        failed_shards: failed,
        plans,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{replica::ReplicaConfig, replication::QuorumMembers};
    use quiver_index::Metric;

    /// Hosts `c/<shard>` (4 dimensions, L2, flat) on `node` as the ready primary of epoch 1,
    /// with `voters` (the node first) as its voting replicas.
    pub(crate) fn host_primary(node: &SearcherNode, shard: u32, voters: &[&str]) {
        let config = ReplicaConfig {
            collection: "c".into(),
            shard,
            dimension: 4,
            metric: Metric::L2,
            index_spec: "flat".into(),
            incarnation: "t".into(),
        };
        let replica = Replica::open(&node.replica_dir("c", shard), config).unwrap();
        replica.begin_epoch(1).unwrap();
        let slot = Hosted::new(ReplicaPhase::Active, Some(Arc::new(replica)));
        let assignment =
            quiver_cluster::AssignmentRecord::new(voters.iter().map(|id| id.to_string()).collect());
        let members = QuorumMembers::of(
            &assignment,
            node.id(),
            Some(voters.len() as u32),
            &quiver_cluster::ClusterState::default(),
        );
        slot.state.set_assignment(Some(assignment), members);
        slot.state.lead(1, 0);
        node.set_slot("c", shard, Some(slot));
    }

    /// A node hosting `c/0` as the ready primary of epoch 1, with `s2` and `s3` voting.
    fn primary_node(dir: &Path) -> SearcherNode {
        let node = SearcherNode::new("s1".into(), dir.to_path_buf());
        host_primary(&node, 0, &["s1", "s2", "s3"]);
        node
    }

    fn upsert(id: &str, epoch: u64, write_quorum: u32) -> ShardWrite {
        ShardWrite {
            collection: "c".into(),
            shard: 0,
            epoch,
            write_quorum,
            deadline: Some(std::time::Instant::now() + std::time::Duration::from_secs(5)),
            op: WriteOp::Upsert(vec![PointData {
                id: id.into(),
                vector: vec![1.0; 4],
                payload: None,
            }]),
        }
    }

    fn pull(after_seq: u64, last_epoch: u64) -> PullLogRequest {
        PullLogRequest {
            collection: "c".into(),
            shard: 0,
            searcher_id: "s2".into(),
            epoch: 1,
            after_seq,
            last_epoch,
            max_wait_ms: 0,
            max_records: 0,
            recovery: false,
        }
    }

    async fn node_with_replica(dir: &Path) -> SearcherNode {
        let node = primary_node(dir);
        node.write(upsert("a", 1, 1)).await.unwrap();
        node
    }

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

    fn request(queries: Vec<Vec<f32>>, shards: Vec<u32>) -> ShardSearch {
        ShardSearch {
            collection: "c".into(),
            shards,
            queries,
            k: 3,
            params: SearchParams::default(),
            with_vectors: false,
            with_payloads: false,
            filter: None,
        }
    }

    #[tokio::test]
    async fn misaligned_queries_are_refused_not_reinterpreted() {
        let dir = tempfile::tempdir().unwrap();
        let node = node_with_replica(dir.path()).await;
        // 3 + 5 floats make two rows of 4 once flattened; that must not pass for two queries.
        let error = node
            .search(request(vec![vec![1.0; 3], vec![1.0; 5]], vec![0]))
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn shards_not_hosted_or_not_active_are_reported_per_shard() {
        let dir = tempfile::tempdir().unwrap();
        let node = node_with_replica(dir.path()).await;
        node.set_slot("c", 1, Some(Hosted::new(ReplicaPhase::Booting, None)));
        let outcome = node
            .search(request(vec![vec![1.0; 4]], vec![0, 1, 2]))
            .await
            .unwrap();
        assert_eq!(outcome.searched_shards, vec![0]);
        assert_eq!(outcome.results[0][0].id, "a");
        let failures: Vec<(u32, tonic::Code)> = outcome
            .failed_shards
            .iter()
            .map(|(shard, error)| (*shard, error.code()))
            .collect();
        assert_eq!(
            failures,
            vec![(1, tonic::Code::Unavailable), (2, tonic::Code::NotFound)]
        );
    }
}
