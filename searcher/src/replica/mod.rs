//! One replica of one shard: its index, the mapping between user ids and index ids, the
//! payloads, and the durable files that let it come back after a crash.
//!
//! Files under the replica's directory:
//! - `replica.json`: which collection incarnation the files belong to; a mismatch (the
//!   collection was dropped and re-created while this Searcher was away) discards them.
//! - `wal/`: every acknowledged write since the last snapshot, in segments
//!   ([`crate::storage::wal`]).
//! - `snapshot/`: the index as [`VectorIndex::save`] wrote it plus `points.bin` (ids,
//!   payloads, the sequence number and epoch the snapshot covers;
//!   [`crate::storage::points`]). Replaced atomically by renaming a complete `snapshot.tmp/`
//!   into place; log segments it covers are deleted only after that.
//! - `epochs.json`: the replica's epoch history (where each primary epoch began in the
//!   log) and the highest epoch it was fenced at; see [`EpochHistory`]
//!   ([`crate::storage::epochs`]).
//!
//! The file formats and durable file operations are the storage layer's ([`crate::storage`]);
//! this module decides which files a replica has and when they change.
//!
//! Payload indexes (`payload_index`) are kept in memory only: rebuilt from the stored
//! payloads whenever the collection's declared indexes differ from what the replica holds,
//! which includes every open ([`Replica::set_payload_schema`]). Filters never depend on
//! them for their answers, only for their speed ([`query`]).
//!
//! Everything here is synchronous: the service runs it on the blocking pool.

mod query;

pub use query::{FilteredSearch, ScrollPage, SCROLL_PAGE_BYTES};

use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
};

use quiver_index::{
    build_index, load_index, validate_vector, IndexSpec, Metric, Neighbor, SearchParams,
    VectorIndex,
};
use quiver_payload::{PayloadIndex, RoaringTreemap};
use serde::{Deserialize, Serialize};

pub use crate::storage::epochs::EpochHistory;
use crate::{
    error::{Error, Result},
    point::PointData,
    storage::{
        epochs::{read_epochs, write_epochs},
        fs::{
            create_dir_durably, link_tree, remove_dir_contents, remove_dir_if_exists, sync_dir,
            write_file_atomically,
        },
        points::{read_points_file, write_points_file, PointsHeader},
        wal::{Wal, WalOp, WalOptions, WalRecord},
        StorageError,
    },
};

/// The log is folded into a snapshot once it grows past this, bounding restart replay time.
const CHECKPOINT_WAL_BYTES: u64 = 256 << 20;
/// Queries searched under one acquisition of the data lock.
const SEARCH_BLOCK_QUERIES: usize = 32;

/// What a replica needs to know about its collection; persisted as `replica.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaConfig {
    pub collection: String,
    pub shard: u32,
    pub dimension: usize,
    pub metric: Metric,
    pub index_spec: String,
    /// The collection's `created_at`: tells a re-created collection from the old one.
    pub incarnation: String,
}

/// A stored point's vector and payload, each present only when asked for.
pub type PointDetails = (Option<Vec<f32>>, Option<String>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaCounters {
    pub point_count: u64,
    pub applied_seq: u64,
}

struct StoredPoint {
    id: String,
    payload: Option<String>,
}

/// The in-memory state, guarded by one RwLock: searches share it, writes apply under it.
struct ReplicaData {
    index: Box<dyn VectorIndex>,
    /// Ordered by id: a scroll pages through a shard in id order.
    internal_by_id: BTreeMap<String, u64>,
    points: HashMap<u64, StoredPoint>,
    /// Every live internal id, for filters to resolve against.
    live: RoaringTreemap,
    next_internal: u64,
    applied_seq: u64,
    /// The epoch of the record `applied_seq`.
    last_epoch: u64,
}

struct WalState {
    wal: Wal,
    last_seq: u64,
    last_epoch: u64,
    /// The sequence number the current snapshot covers.
    snapshot_seq: u64,
}

/// What a snapshot copied to another replica covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub applied_seq: u64,
    pub last_epoch: u64,
    pub epochs: EpochHistory,
}

pub struct Replica {
    config: ReplicaConfig,
    dir: PathBuf,
    data: RwLock<ReplicaData>,
    /// The declared payload indexes over `data`'s points. Locked after `data` wherever both
    /// are held: a write updates it under both write locks; a rebuild reads `data` and
    /// swaps this, so searches go on while one runs.
    payload_index: RwLock<PayloadIndex>,
    /// Serialises writers: a record is appended and applied under this lock, so the log
    /// order is the apply order. Searches never take it.
    wal: Mutex<WalState>,
    /// Mirrors of the data's counters, readable from async code without taking the data
    /// lock (which a long search batch may hold).
    point_count: AtomicU64,
    applied_seq: AtomicU64,
    last_epoch: AtomicU64,
    /// Changed under the `wal` lock only, so it orders with appends.
    epochs: Mutex<EpochHistory>,
}

impl Replica {
    /// Opens the replica stored under `dir`, creating it empty if there is nothing there,
    /// and replays its log. Slow for large replicas: call from a blocking context.
    pub fn open(dir: &Path, config: ReplicaConfig) -> Result<Replica> {
        Replica::open_with(dir, config, WalOptions::default())
    }

    /// [`Replica::open`] with a log policy other than the default.
    pub fn open_with(
        dir: &Path,
        config: ReplicaConfig,
        wal_options: WalOptions,
    ) -> Result<Replica> {
        let index_spec: IndexSpec = config.index_spec.parse()?;
        create_dir_durably(dir)?;
        prepare_directory(dir, &config)?;

        let snapshot_dir = dir.join("snapshot");
        let mut data = if snapshot_dir.exists() {
            load_snapshot(&snapshot_dir, &index_spec, &config)?
        } else {
            ReplicaData {
                index: build_index(&index_spec, config.dimension, config.metric)?,
                internal_by_id: BTreeMap::new(),
                points: HashMap::new(),
                live: RoaringTreemap::new(),
                next_internal: 0,
                applied_seq: 0,
                last_epoch: 0,
            }
        };
        let snapshot_seq = data.applied_seq;
        let epochs = read_epochs(dir)?;

        let wal_path = dir.join("wal");
        let (wal, records) =
            Wal::open(&wal_path, wal_options, data.applied_seq).map_err(|error| match error {
                StorageError::Corrupt { .. } => Error::Corrupt {
                    path: wal_path.display().to_string(),
                    reason: format!("write-ahead log {error}"),
                },
                other => wal_error(&wal_path, other),
            })?;
        // The log file may be new: its directory entry must be durable before any write
        // in it is acknowledged.
        sync_dir(dir)?;
        let mut replayed = 0usize;
        // No payload index is declared yet: the first `set_payload_schema` builds them.
        let mut unindexed = PayloadIndex::default();
        for record in records {
            if record.seq <= data.applied_seq {
                continue;
            }
            data.apply(record.seq, record.epoch, record.op, &mut unindexed)?;
            replayed += 1;
        }
        tracing::info!(
            collection = %config.collection,
            shard = config.shard,
            points = data.points.len(),
            applied_seq = data.applied_seq,
            replayed_records = replayed,
            "replica opened"
        );
        let last_seq = data.applied_seq;
        let last_epoch = data.last_epoch;
        let point_count = data.points.len() as u64;
        Ok(Replica {
            config,
            dir: dir.to_path_buf(),
            data: RwLock::new(data),
            payload_index: RwLock::new(PayloadIndex::default()),
            wal: Mutex::new(WalState {
                wal,
                last_seq,
                last_epoch,
                snapshot_seq,
            }),
            point_count: AtomicU64::new(point_count),
            applied_seq: AtomicU64::new(last_seq),
            last_epoch: AtomicU64::new(last_epoch),
            epochs: Mutex::new(epochs),
        })
    }

    /// The epoch of the last record applied; lock-free.
    pub fn last_epoch(&self) -> u64 {
        self.last_epoch.load(Ordering::Acquire)
    }

    pub fn epochs(&self) -> EpochHistory {
        self.epochs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Promises to refuse records from primaries older than `epoch`; returns the applied
    /// sequence number and its epoch at that moment, for the new primary to find the
    /// longest log.
    pub fn fence(&self, epoch: u64) -> Result<(u64, u64)> {
        let wal_state = self.lock_wal()?;
        let mut epochs = self
            .epochs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if epoch > epochs.fenced {
            let mut updated = epochs.clone();
            updated.fenced = epoch;
            write_epochs(&self.dir, &updated)?;
            *epochs = updated;
        }
        Ok((wal_state.last_seq, wal_state.last_epoch))
    }

    /// Starts primary epoch `epoch` at the next sequence number (once this replica holds the
    /// longest log of the shard). Idempotent.
    pub fn begin_epoch(&self, epoch: u64) -> Result<()> {
        let wal_state = self.lock_wal()?;
        let mut epochs = self
            .epochs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if epochs.current() >= epoch {
            return Ok(());
        }
        let mut updated = epochs.clone();
        updated.starts.push((epoch, wal_state.last_seq + 1));
        updated.fenced = updated.fenced.max(epoch);
        write_epochs(&self.dir, &updated)?;
        *epochs = updated;
        tracing::info!(
            collection = %self.config.collection,
            shard = self.config.shard,
            epoch,
            start_seq = wal_state.last_seq + 1,
            "primary epoch begins"
        );
        Ok(())
    }

    /// Applies records a primary shipped, in order, skipping those already applied. A gap
    /// is refused: the caller asks again from its applied sequence number.
    pub fn apply_replicated(&self, records: Vec<WalRecord>) -> Result<ReplicaCounters> {
        let mut wal_state = self.lock_wal()?;
        for record in records {
            if record.seq <= wal_state.last_seq {
                continue;
            }
            if record.seq != wal_state.last_seq + 1 {
                return Err(Error::Internal(format!(
                    "replicated record {} does not follow the applied sequence number {}",
                    record.seq, wal_state.last_seq
                )));
            }
            if let WalOp::Upsert(points) = &record.op {
                for point in points {
                    self.validate_point(point)?;
                }
            }
            self.log_and_apply(&mut wal_state, record)?;
        }
        self.checkpoint_if_large(&mut wal_state);
        Ok(self.counters())
    }

    /// Records after `after_seq` still in the log; `None` once a snapshot folded them away.
    pub fn read_log_after(
        &self,
        after_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<WalRecord>>> {
        let wal_state = self.lock_wal()?;
        if after_seq >= wal_state.last_seq {
            return Ok(Some(Vec::new()));
        }
        let wal_dir = wal_state.wal.dir().to_path_buf();
        wal_state
            .wal
            .read_after(after_seq, max_records, max_bytes)
            .map_err(|error| wal_error(&wal_dir, error))
    }

    /// Writes a snapshot of everything applied so far (unless the current one already
    /// covers it) and hard-links its files under `dest`, which then stays consistent
    /// whatever later checkpoints do.
    pub fn export_snapshot(&self, dest: &Path) -> Result<SnapshotInfo> {
        let mut wal_state = self.lock_wal()?;
        if wal_state.snapshot_seq < wal_state.last_seq || !self.dir.join("snapshot").exists() {
            self.checkpoint_locked(&mut wal_state)?;
        }
        link_tree(&self.dir.join("snapshot"), dest)?;
        Ok(SnapshotInfo {
            applied_seq: wal_state.last_seq,
            last_epoch: wal_state.last_epoch,
            epochs: self.epochs(),
        })
    }

    /// Replaces whatever is stored under `dir` by the snapshot staged at `staged` (as
    /// [`Replica::export_snapshot`] produced it elsewhere) and an empty log that continues
    /// after it. The replica at `dir` must not be open. Checks the snapshot loads before
    /// anything is replaced.
    pub fn install_snapshot(
        dir: &Path,
        config: &ReplicaConfig,
        staged: &Path,
        info: &SnapshotInfo,
    ) -> Result<()> {
        let index_spec: IndexSpec = config.index_spec.parse()?;
        let loaded = load_snapshot(staged, &index_spec, config)?;
        if loaded.applied_seq != info.applied_seq {
            return Err(Error::Corrupt {
                path: staged.display().to_string(),
                reason: format!(
                    "snapshot covers sequence number {}, its header says {}",
                    loaded.applied_seq, info.applied_seq
                ),
            });
        }
        drop(loaded);
        create_dir_durably(dir)?;
        remove_dir_contents(dir)?;
        fs::rename(staged, dir.join("snapshot")).map_err(|source| storage(staged, source))?;
        let mut epochs = info.epochs.clone();
        epochs.fenced = epochs.fenced.max(epochs.current());
        write_epochs(dir, &epochs)?;
        let wal_dir = dir.join("wal");
        let (mut wal, _) = Wal::open(&wal_dir, WalOptions::default(), info.applied_seq)
            .map_err(|error| wal_error(&wal_dir, error))?;
        wal.reset(info.applied_seq + 1)
            .map_err(|error| wal_error(&wal_dir, error))?;
        drop(wal);
        // Written last: until replica.json is there, a crash leaves files that are discarded.
        let json = serde_json::to_vec_pretty(config)
            .map_err(|error| Error::Internal(format!("encoding replica.json: {error}")))?;
        write_file_atomically(&dir.join("replica.json"), &json)?;
        Ok(sync_dir(dir)?)
    }

    fn lock_wal(&self) -> Result<MutexGuard<'_, WalState>> {
        self.wal
            .lock()
            .map_err(|_| Error::Internal("replica write lock poisoned".into()))
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    /// The index's memory estimate ([`VectorIndex::memory_bytes`]); `None` while a write
    /// holds the data, so async code may call it without waiting.
    pub fn index_memory_bytes(&self) -> Option<usize> {
        let data = self.data.try_read().ok()?;
        Some(data.index.memory_bytes())
    }

    /// Lock-free, so async code may call it.
    pub fn counters(&self) -> ReplicaCounters {
        ReplicaCounters {
            point_count: self.point_count.load(Ordering::Acquire),
            applied_seq: self.applied_seq.load(Ordering::Acquire),
        }
    }

    /// Makes the points durable, then visible. The whole batch is validated first, so a
    /// bad point rejects the batch with nothing written.
    pub fn upsert(&self, points: Vec<PointData>) -> Result<(usize, ReplicaCounters)> {
        let (_, affected, counters) = self.upsert_as_primary(0, points)?;
        Ok((affected, counters))
    }

    /// As primary of `epoch`: gives the write the next sequence number, logs and applies
    /// it, and returns the logged record for the followers.
    pub fn upsert_as_primary(
        &self,
        epoch: u64,
        points: Vec<PointData>,
    ) -> Result<(Option<WalRecord>, usize, ReplicaCounters)> {
        for point in &points {
            self.validate_point(point)?;
        }
        self.write(epoch, WalOp::Upsert(points))
    }

    /// Removes the ids that exist; returns how many did.
    pub fn delete(&self, ids: Vec<String>) -> Result<(usize, ReplicaCounters)> {
        let (_, affected, counters) = self.delete_as_primary(0, ids)?;
        Ok((affected, counters))
    }

    /// The delete counterpart of [`Replica::upsert_as_primary`]; no record when none of the
    /// ids exists.
    pub fn delete_as_primary(
        &self,
        epoch: u64,
        ids: Vec<String>,
    ) -> Result<(Option<WalRecord>, usize, ReplicaCounters)> {
        if ids.iter().any(|id| id.is_empty()) {
            return Err(Error::InvalidArgument("point ids must not be empty".into()));
        }
        // Deleting nothing needs no log record; the answer is the same.
        let any_exists = {
            let data = self.read_data()?;
            ids.iter().any(|id| data.internal_by_id.contains_key(id))
        };
        if !any_exists {
            return Ok((None, 0, self.counters()));
        }
        self.write(epoch, WalOp::Delete(ids))
    }

    /// Logs, applies and returns the record and how many points the write affected,
    /// counted at apply time.
    fn write(&self, epoch: u64, op: WalOp) -> Result<(Option<WalRecord>, usize, ReplicaCounters)> {
        let mut wal_state = self.lock_wal()?;
        self.write_locked(&mut wal_state, epoch, op)
    }

    /// [`Replica::write`] with the log lock already held.
    fn write_locked(
        &self,
        wal_state: &mut MutexGuard<'_, WalState>,
        epoch: u64,
        op: WalOp,
    ) -> Result<(Option<WalRecord>, usize, ReplicaCounters)> {
        let fenced = self
            .epochs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .fenced;
        if epoch < fenced {
            return Err(Error::NotPrimary(format!(
                "replica {}/{} was fenced at epoch {fenced}; epoch {epoch} no longer takes writes",
                self.config.collection, self.config.shard
            )));
        }
        let record = WalRecord {
            seq: wal_state.last_seq + 1,
            epoch,
            op,
        };
        let shipped = record.clone();
        let affected = self.log_and_apply(wal_state, record)?;
        self.checkpoint_if_large(wal_state);
        Ok((Some(shipped), affected, self.counters()))
    }

    /// Appends `record` durably, then applies it. Called with the `wal` lock held, so the
    /// log order is the apply order.
    fn log_and_apply(&self, wal_state: &mut WalState, record: WalRecord) -> Result<usize> {
        let wal_dir = wal_state.wal.dir().to_path_buf();
        wal_state
            .wal
            .append(&record)
            .map_err(|error| wal_error(&wal_dir, error))?;
        wal_state.last_seq = record.seq;
        wal_state.last_epoch = record.epoch;
        let mut data = self.write_data()?;
        let mut payload_index = self.write_payload_index()?;
        let affected = data.apply(record.seq, record.epoch, record.op, &mut payload_index)?;
        drop(payload_index);
        self.point_count
            .store(data.points.len() as u64, Ordering::Release);
        self.applied_seq.store(data.applied_seq, Ordering::Release);
        self.last_epoch.store(data.last_epoch, Ordering::Release);
        Ok(affected)
    }

    fn checkpoint_if_large(&self, wal_state: &mut MutexGuard<'_, WalState>) {
        if wal_state.wal.len_bytes() >= CHECKPOINT_WAL_BYTES {
            // The write is already durable in the log; a failed checkpoint only means a
            // longer replay, so it must not turn this acknowledged write into an error.
            if let Err(error) = self.checkpoint_locked(wal_state) {
                tracing::error!(
                    collection = %self.config.collection,
                    shard = self.config.shard,
                    %error,
                    "checkpoint failed; the log keeps every write and grows until one succeeds"
                );
            }
        }
    }

    /// Makes every logged write durable now (for log policies that sync lazily).
    pub fn sync_log(&self) -> Result<()> {
        let mut wal_state = self.lock_wal()?;
        let wal_dir = wal_state.wal.dir().to_path_buf();
        wal_state
            .wal
            .sync()
            .map_err(|error| wal_error(&wal_dir, error))
    }

    /// Folds the log into a fresh snapshot (on graceful close and when the log is large).
    pub fn checkpoint(&self) -> Result<()> {
        let mut wal_state = self.lock_wal()?;
        if wal_state.snapshot_seq == wal_state.last_seq && self.dir.join("snapshot").exists() {
            return Ok(());
        }
        self.checkpoint_locked(&mut wal_state)
    }

    fn checkpoint_locked(&self, wal_state: &mut MutexGuard<'_, WalState>) -> Result<()> {
        let temporary = self.dir.join("snapshot.tmp");
        let current = self.dir.join("snapshot");
        let previous = self.dir.join("snapshot.old");
        // An earlier checkpoint that failed between its renames left `snapshot.old` as the
        // only complete snapshot: put it back before anything is deleted.
        recover_interrupted_checkpoint(&self.dir)?;
        {
            let data = self.read_data()?;
            data.index.save(&temporary.join("index"))?;
            write_points(&temporary.join("points.bin"), &data)?;
        }
        sync_dir(&temporary)?;
        remove_dir_if_exists(&previous)?;
        if current.exists() {
            fs::rename(&current, &previous).map_err(|source| storage(&current, source))?;
        }
        fs::rename(&temporary, &current).map_err(|source| storage(&temporary, source))?;
        sync_dir(&self.dir)?;
        remove_dir_if_exists(&previous)?;
        wal_state.snapshot_seq = wal_state.last_seq;
        let covered = wal_state.last_seq;
        let wal_dir = wal_state.wal.dir().to_path_buf();
        wal_state
            .wal
            .compact(covered)
            .map_err(|error| wal_error(&wal_dir, error))?;
        tracing::info!(
            collection = %self.config.collection,
            shard = self.config.shard,
            seq = wal_state.last_seq,
            "replica checkpointed"
        );
        Ok(())
    }

    /// Top-k neighbours per query (queries row-major), with user ids. The data lock is taken
    /// per block of queries, so a large batch lets writes in between blocks instead of
    /// stalling them for its whole duration; each query still sees one consistent state.
    pub fn search(
        &self,
        queries: &[f32],
        k: usize,
        params: &SearchParams,
    ) -> Result<Vec<Vec<Neighbor<String>>>> {
        let dimension = self.config.dimension.max(1);
        let mut results = Vec::with_capacity(queries.len() / dimension);
        for block in queries.chunks(dimension * SEARCH_BLOCK_QUERIES) {
            let data = self.read_data()?;
            for neighbors in data.index.search_batch(block, k, params)? {
                results.push(query::named(&data, neighbors));
            }
        }
        Ok(results)
    }

    /// The stored vector (normalised for cosine) and payload of `id`, as asked.
    pub fn point(
        &self,
        id: &str,
        with_vector: bool,
        with_payload: bool,
    ) -> Result<Option<PointDetails>> {
        let data = self.read_data()?;
        let Some(internal) = data.internal_by_id.get(id) else {
            return Ok(None);
        };
        let vector = if with_vector {
            data.index.vector(*internal)
        } else {
            None
        };
        let payload = if with_payload {
            data.points
                .get(internal)
                .and_then(|point| point.payload.clone())
        } else {
            None
        };
        Ok(Some((vector, payload)))
    }

    fn validate_point(&self, point: &PointData) -> Result<()> {
        if point.id.is_empty() {
            return Err(Error::InvalidArgument("point ids must not be empty".into()));
        }
        validate_vector(&point.vector, self.config.dimension, self.config.metric)
            .map_err(|error| Error::InvalidArgument(format!("point {:?}: {error}", point.id)))
    }

    fn read_data(&self) -> Result<RwLockReadGuard<'_, ReplicaData>> {
        self.data
            .read()
            .map_err(|_| Error::Internal("replica data lock poisoned".into()))
    }

    fn write_data(&self) -> Result<RwLockWriteGuard<'_, ReplicaData>> {
        self.data
            .write()
            .map_err(|_| Error::Internal("replica data lock poisoned".into()))
    }

    fn read_payload_index(&self) -> Result<RwLockReadGuard<'_, PayloadIndex>> {
        self.payload_index
            .read()
            .map_err(|_| Error::Internal("replica payload index lock poisoned".into()))
    }

    fn write_payload_index(&self) -> Result<RwLockWriteGuard<'_, PayloadIndex>> {
        self.payload_index
            .write()
            .map_err(|_| Error::Internal("replica payload index lock poisoned".into()))
    }
}

impl ReplicaData {
    /// Applies one log record, payload indexes included, and returns how many points it
    /// affected.
    fn apply(
        &mut self,
        seq: u64,
        epoch: u64,
        op: WalOp,
        payload_index: &mut PayloadIndex,
    ) -> Result<usize> {
        debug_assert!(seq > self.applied_seq, "log records apply in order");
        let affected = match op {
            WalOp::Upsert(points) => {
                let dimension = self.index.dim();
                let mut internals = Vec::with_capacity(points.len());
                let mut vectors = Vec::with_capacity(points.len() * dimension);
                for point in points {
                    let internal = match self.internal_by_id.get(&point.id) {
                        Some(internal) => *internal,
                        None => {
                            let internal = self.next_internal;
                            self.next_internal += 1;
                            self.internal_by_id.insert(point.id.clone(), internal);
                            internal
                        }
                    };
                    internals.push(internal);
                    vectors.extend_from_slice(&point.vector);
                    if !payload_index.is_empty() {
                        if let Some(old) = self.points.get(&internal) {
                            payload_index.remove(internal, old.payload.as_deref());
                        }
                        payload_index.insert(internal, point.payload.as_deref());
                    }
                    self.live.insert(internal);
                    self.points.insert(
                        internal,
                        StoredPoint {
                            id: point.id,
                            payload: point.payload,
                        },
                    );
                }
                self.index.upsert(&internals, &vectors)?;
                internals.len()
            }
            WalOp::Delete(ids) => {
                let internals: Vec<u64> = ids
                    .iter()
                    .filter_map(|id| self.internal_by_id.remove(id))
                    .collect();
                for internal in &internals {
                    if let Some(old) = self.points.remove(internal) {
                        payload_index.remove(*internal, old.payload.as_deref());
                    }
                    self.live.remove(*internal);
                }
                self.index.remove(&internals)?;
                internals.len()
            }
        };
        self.applied_seq = seq;
        self.last_epoch = epoch;
        debug_assert_eq!(self.points.len(), self.index.len());
        Ok(affected)
    }
}

fn prepare_directory(dir: &Path, config: &ReplicaConfig) -> Result<()> {
    let identity_path = dir.join("replica.json");
    match fs::read(&identity_path) {
        Ok(bytes) => {
            let stored: Option<ReplicaConfig> = serde_json::from_slice(&bytes).ok();
            if stored.as_ref() == Some(config) {
                recover_interrupted_checkpoint(dir)?;
                return Ok(());
            }
            tracing::warn!(
                dir = %dir.display(),
                "replica files belong to another collection incarnation; discarding them"
            );
            remove_dir_contents(dir)?;
        }
        // Files without an identity are the remains of an interrupted removal or of another
        // incarnation: serving them could return another collection's points.
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            if fs::read_dir(dir)
                .map_err(|source| storage(dir, source))?
                .next()
                .is_some()
            {
                tracing::warn!(dir = %dir.display(), "replica files without replica.json; discarding them");
                remove_dir_contents(dir)?;
            }
        }
        Err(source) => return Err(storage(&identity_path, source)),
    }
    let json = serde_json::to_vec_pretty(config)
        .map_err(|error| Error::Internal(format!("encoding replica.json: {error}")))?;
    Ok(write_file_atomically(&identity_path, &json)?)
}

/// A crash between the two renames of a checkpoint leaves only `snapshot.old`; it is still
/// complete, and the log was not emptied yet, so it is the one to use.
fn recover_interrupted_checkpoint(dir: &Path) -> Result<()> {
    let current = dir.join("snapshot");
    let previous = dir.join("snapshot.old");
    if !current.exists() && previous.exists() {
        fs::rename(&previous, &current).map_err(|source| storage(&previous, source))?;
    }
    remove_dir_if_exists(&dir.join("snapshot.tmp"))?;
    Ok(remove_dir_if_exists(&previous)?)
}

fn load_snapshot(
    snapshot_dir: &Path,
    index_spec: &IndexSpec,
    config: &ReplicaConfig,
) -> Result<ReplicaData> {
    let index = load_index(index_spec, &snapshot_dir.join("index"))?;
    if index.dim() != config.dimension || index.metric() != config.metric {
        return Err(Error::Corrupt {
            path: snapshot_dir.display().to_string(),
            reason: "snapshot index does not match the collection's dimension or metric".into(),
        });
    }
    let points_path = snapshot_dir.join("points.bin");
    let mut internal_by_id = BTreeMap::new();
    let mut points = HashMap::new();
    let header = read_points_file(&points_path, |internal, id, payload| {
        internal_by_id.insert(id.clone(), internal);
        points.insert(internal, StoredPoint { id, payload });
    })?;
    if points.len() != index.len() {
        return Err(Error::Corrupt {
            path: points_path.display().to_string(),
            reason: "point count differs from the index".into(),
        });
    }
    let live = points.keys().copied().collect();
    Ok(ReplicaData {
        index,
        internal_by_id,
        points,
        live,
        next_internal: header.next_internal,
        applied_seq: header.applied_seq,
        last_epoch: header.last_epoch,
    })
}

fn write_points(path: &Path, data: &ReplicaData) -> Result<()> {
    let header = PointsHeader {
        applied_seq: data.applied_seq,
        last_epoch: data.last_epoch,
        next_internal: data.next_internal,
    };
    let points = data
        .points
        .iter()
        .map(|(internal, point)| (*internal, point.id.as_str(), point.payload.as_deref()));
    Ok(write_points_file(path, &header, points)?)
}

/// A failure of the log at `wal_dir`, as the replica has always reported it: under the log's
/// directory, with the storage layer's message.
fn wal_error(wal_dir: &Path, error: StorageError) -> Error {
    let source = match error {
        StorageError::Io { source, .. } => source,
        StorageError::Corrupt { .. } => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("write-ahead log {error}"),
        ),
        other => io::Error::new(other.kind(), other.to_string()),
    };
    storage(wal_dir, source)
}

/// A storage failure at `path`, for every file operation of a replica.
pub(crate) fn storage(path: &Path, source: io::Error) -> Error {
    Error::Storage {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(metric: Metric) -> ReplicaConfig {
        ReplicaConfig {
            collection: "things".into(),
            shard: 3,
            dimension: 3,
            metric,
            index_spec: "flat".into(),
            incarnation: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn point(id: &str, vector: [f32; 3], payload: Option<&str>) -> PointData {
        PointData {
            id: id.into(),
            vector: vector.to_vec(),
            payload: payload.map(str::to_string),
        }
    }

    fn ids(replica: &Replica, query: [f32; 3], k: usize) -> Vec<String> {
        replica.search(&query, k, &SearchParams::default()).unwrap()[0]
            .iter()
            .map(|neighbor| neighbor.id.clone())
            .collect()
    }

    #[test]
    fn writes_survive_reopen_through_the_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let replica = Replica::open(dir.path(), config(Metric::L2)).unwrap();
            replica
                .upsert(vec![
                    point("a", [0.0, 0.0, 0.0], Some(r#"{"n":1}"#)),
                    point("b", [1.0, 0.0, 0.0], None),
                    point("c", [5.0, 0.0, 0.0], None),
                ])
                .unwrap();
            replica
                .upsert(vec![point("b", [9.0, 0.0, 0.0], None)])
                .unwrap();
            let (deleted, counters) = replica.delete(vec!["c".into(), "zz".into()]).unwrap();
            assert_eq!(deleted, 1);
            assert_eq!(counters.point_count, 2);
            assert_eq!(counters.applied_seq, 3);
        }
        let replica = Replica::open(dir.path(), config(Metric::L2)).unwrap();
        assert_eq!(
            replica.counters(),
            ReplicaCounters {
                point_count: 2,
                applied_seq: 3
            }
        );
        assert_eq!(ids(&replica, [8.0, 0.0, 0.0], 10), vec!["b", "a"]);
        let (_, payload) = replica.point("a", false, true).unwrap().unwrap();
        assert_eq!(payload.as_deref(), Some(r#"{"n":1}"#));
    }

    #[test]
    fn checkpoint_then_more_writes_reopen_identically() {
        let dir = tempfile::tempdir().unwrap();
        {
            let replica = Replica::open(dir.path(), config(Metric::L2)).unwrap();
            replica
                .upsert(vec![point("a", [1.0, 1.0, 1.0], None)])
                .unwrap();
            replica.checkpoint().unwrap();
            replica
                .upsert(vec![point("b", [2.0, 2.0, 2.0], Some(r#"{}"#))])
                .unwrap();
        }
        let replica = Replica::open(dir.path(), config(Metric::L2)).unwrap();
        assert_eq!(replica.counters().applied_seq, 2);
        assert_eq!(ids(&replica, [2.0, 2.0, 2.0], 5), vec!["b", "a"]);
    }

    #[test]
    fn invalid_point_rejects_the_whole_batch() {
        let dir = tempfile::tempdir().unwrap();
        let replica = Replica::open(dir.path(), config(Metric::Cosine)).unwrap();
        let error = replica
            .upsert(vec![
                point("good", [1.0, 0.0, 0.0], None),
                point("zero", [0.0, 0.0, 0.0], None),
            ])
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        let error = replica
            .upsert(vec![point("nan", [f32::NAN, 0.0, 0.0], None)])
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert_eq!(replica.counters().point_count, 0);
        assert_eq!(replica.counters().applied_seq, 0);
    }

    #[test]
    fn a_checkpoint_interrupted_between_its_renames_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let replica = Replica::open(dir.path(), config(Metric::L2)).unwrap();
            replica
                .upsert(vec![point("a", [1.0, 1.0, 1.0], None)])
                .unwrap();
            replica.checkpoint().unwrap();
            replica
                .upsert(vec![point("b", [2.0, 2.0, 2.0], None)])
                .unwrap();
            // A crash after `snapshot` became `snapshot.old` and before the new one moved in.
            fs::rename(dir.path().join("snapshot"), dir.path().join("snapshot.old")).unwrap();
            replica
                .upsert(vec![point("c", [3.0, 3.0, 3.0], None)])
                .unwrap();
        }
        let replica = Replica::open(dir.path(), config(Metric::L2)).unwrap();
        assert_eq!(replica.counters().point_count, 3);
        assert_eq!(ids(&replica, [0.0, 0.0, 0.0], 5), vec!["a", "b", "c"]);
        fs::rename(dir.path().join("snapshot"), dir.path().join("snapshot.old")).unwrap();
        replica.checkpoint().unwrap();
        drop(replica);
        let replica = Replica::open(dir.path(), config(Metric::L2)).unwrap();
        assert_eq!(replica.counters().point_count, 3);
    }

    #[test]
    fn files_without_an_identity_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let replica = Replica::open(dir.path(), config(Metric::L2)).unwrap();
            replica
                .upsert(vec![point("a", [1.0, 1.0, 1.0], None)])
                .unwrap();
            replica.checkpoint().unwrap();
        }
        fs::remove_file(dir.path().join("replica.json")).unwrap();
        let replica = Replica::open(dir.path(), config(Metric::L2)).unwrap();
        assert_eq!(replica.counters().point_count, 0);
    }

    #[test]
    fn a_corrupt_log_record_in_the_middle_is_data_loss_not_silence() {
        let dir = tempfile::tempdir().unwrap();
        {
            let replica = Replica::open(dir.path(), config(Metric::L2)).unwrap();
            for index in 0..3 {
                replica
                    .upsert(vec![point(&index.to_string(), [1.0, 1.0, 1.0], None)])
                    .unwrap();
            }
        }
        let segment = fs::read_dir(dir.path().join("wal"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = fs::read(&segment).unwrap();
        // The middle of three records: damaged, with an intact record behind it.
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xFF;
        fs::write(&segment, &bytes).unwrap();
        let error = Replica::open(dir.path(), config(Metric::L2)).err().unwrap();
        assert_eq!(error.code(), tonic::Code::DataLoss);
        assert!(error.to_string().contains("corrupt"), "{error}");
    }

    #[test]
    fn an_exported_snapshot_installs_elsewhere_and_the_log_continues_after_it() {
        let source_dir = tempfile::tempdir().unwrap();
        let source = Replica::open(source_dir.path(), config(Metric::L2)).unwrap();
        source.begin_epoch(1).unwrap();
        source
            .upsert_as_primary(1, vec![point("a", [1.0, 0.0, 0.0], Some("{}"))])
            .unwrap();
        source
            .upsert_as_primary(1, vec![point("b", [2.0, 0.0, 0.0], None)])
            .unwrap();
        let staged = tempfile::tempdir().unwrap();
        let info = source
            .export_snapshot(&staged.path().join("snapshot"))
            .unwrap();
        assert_eq!(info.applied_seq, 2);
        assert_eq!(info.epochs.starts, vec![(1, 1)]);
        // Later writes at the source do not change the exported files.
        let (record, _, _) = source
            .upsert_as_primary(1, vec![point("c", [3.0, 0.0, 0.0], None)])
            .unwrap();
        source.checkpoint().unwrap();

        let target_dir = tempfile::tempdir().unwrap();
        Replica::install_snapshot(
            target_dir.path(),
            &config(Metric::L2),
            &staged.path().join("snapshot"),
            &info,
        )
        .unwrap();
        let target = Replica::open(target_dir.path(), config(Metric::L2)).unwrap();
        assert_eq!(target.counters().applied_seq, 2);
        assert_eq!(target.last_epoch(), 1);
        assert_eq!(target.epochs().starts, vec![(1, 1)]);
        assert_eq!(ids(&target, [0.0, 0.0, 0.0], 5), vec!["a", "b"]);
        // A gap is refused; the next record applies, and survives a reopen.
        let mut gap = record.clone().unwrap();
        gap.seq = 9;
        assert!(target.apply_replicated(vec![gap]).is_err());
        target.apply_replicated(vec![record.unwrap()]).unwrap();
        drop(target);
        let target = Replica::open(target_dir.path(), config(Metric::L2)).unwrap();
        assert_eq!(target.counters().applied_seq, 3);
        assert_eq!(ids(&target, [0.0, 0.0, 0.0], 5), vec!["a", "b", "c"]);
    }

    #[test]
    fn fencing_persists_and_stops_writes_of_older_epochs() {
        let dir = tempfile::tempdir().unwrap();
        {
            let replica = Replica::open(dir.path(), config(Metric::L2)).unwrap();
            replica.begin_epoch(1).unwrap();
            replica
                .upsert_as_primary(1, vec![point("a", [1.0, 0.0, 0.0], None)])
                .unwrap();
            assert_eq!(replica.fence(2).unwrap(), (1, 1));
            let refused = replica
                .upsert_as_primary(1, vec![point("b", [1.0, 0.0, 0.0], None)])
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        }
        let replica = Replica::open(dir.path(), config(Metric::L2)).unwrap();
        assert_eq!(replica.epochs().fenced, 2);
        replica.begin_epoch(2).unwrap();
        assert_eq!(replica.epochs().starts, vec![(1, 1), (2, 2)]);
        assert_eq!(replica.epochs().end_of(1, 5), 1);
        assert_eq!(replica.epochs().end_of(2, 5), 5);
    }

    #[test]
    fn a_batch_spanning_several_lock_blocks_matches_single_queries() {
        let dir = tempfile::tempdir().unwrap();
        let replica = Replica::open(dir.path(), config(Metric::L2)).unwrap();
        let points = (0..50)
            .map(|index| point(&format!("p{index}"), [index as f32, 1.0, -1.0], None))
            .collect();
        replica.upsert(points).unwrap();
        let queries: Vec<f32> = (0..(SEARCH_BLOCK_QUERIES * 2 + 5))
            .flat_map(|index| [index as f32 * 0.7, 1.0, -1.0])
            .collect();
        let batch = replica
            .search(&queries, 4, &SearchParams::default())
            .unwrap();
        assert_eq!(batch.len(), SEARCH_BLOCK_QUERIES * 2 + 5);
        for (number, query) in queries.chunks(3).enumerate() {
            let single = replica.search(query, 4, &SearchParams::default()).unwrap();
            assert_eq!(batch[number], single[0], "query {number}");
        }
    }

    #[test]
    fn files_of_another_incarnation_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let replica = Replica::open(dir.path(), config(Metric::L2)).unwrap();
            replica
                .upsert(vec![point("a", [1.0, 1.0, 1.0], None)])
                .unwrap();
        }
        let mut recreated = config(Metric::L2);
        recreated.incarnation = "2026-02-02T00:00:00Z".into();
        let replica = Replica::open(dir.path(), recreated).unwrap();
        assert_eq!(replica.counters().point_count, 0);
    }
}
