//! One replica of one shard: its index, the mapping between user ids and index ids, the
//! payloads, and the durable files that let it come back after a crash.
//!
//! Files under the replica's directory:
//! - `replica.json`: which collection incarnation the files belong to; a mismatch (the
//!   collection was dropped and re-created while this Searcher was away) discards them.
//! - `wal/`: every acknowledged write since the last snapshot, in segments ([`crate::wal`]).
//! - `snapshot/`: the index as [`VectorIndex::save`] wrote it plus `points.bin` (ids,
//!   payloads, the sequence number the snapshot covers). Replaced atomically by renaming
//!   a complete `snapshot.tmp/` into place; the log is emptied only after that.
//!
//! Everything here is synchronous: the service runs it on the blocking pool.

use std::{
    collections::HashMap,
    fs,
    io::{self, Write},
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
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    point::PointData,
    wal::{Cursor, Wal, WalOp, WalOptions, WalRecord},
};

/// The log is folded into a snapshot once it grows past this, bounding restart replay time.
const CHECKPOINT_WAL_BYTES: u64 = 256 << 20;
const POINTS_MAGIC: &[u8; 8] = b"QVPTS001";
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
    internal_by_id: HashMap<String, u64>,
    points: HashMap<u64, StoredPoint>,
    next_internal: u64,
    applied_seq: u64,
}

struct WalState {
    wal: Wal,
    last_seq: u64,
}

pub struct Replica {
    config: ReplicaConfig,
    dir: PathBuf,
    data: RwLock<ReplicaData>,
    /// Serialises writers: a record is appended and applied under this lock, so the log
    /// order is the apply order. Searches never take it.
    wal: Mutex<WalState>,
    /// Mirrors of the data's counters, readable from async code without taking the data
    /// lock (which a long search batch may hold).
    point_count: AtomicU64,
    applied_seq: AtomicU64,
}

impl Replica {
    /// Opens the replica stored under `dir`, creating it empty if there is nothing there,
    /// and replays its log. Slow for large replicas: call from a blocking context.
    pub fn open(dir: &Path, config: ReplicaConfig) -> Result<Replica> {
        let index_spec: IndexSpec = config.index_spec.parse()?;
        create_dir_all_durably(dir)?;
        prepare_directory(dir, &config)?;

        let snapshot_dir = dir.join("snapshot");
        let mut data = if snapshot_dir.exists() {
            load_snapshot(&snapshot_dir, &index_spec, &config)?
        } else {
            ReplicaData {
                index: build_index(&index_spec, config.dimension, config.metric)?,
                internal_by_id: HashMap::new(),
                points: HashMap::new(),
                next_internal: 0,
                applied_seq: 0,
            }
        };

        let wal_path = dir.join("wal");
        let (options, after_seq) = (WalOptions::default(), data.applied_seq);
        let (wal, records) = Wal::open(&wal_path, options, after_seq).map_err(|source| {
            if source.kind() == io::ErrorKind::InvalidData {
                Error::Corrupt {
                    path: wal_path.display().to_string(),
                    reason: source.to_string(),
                }
            } else {
                storage(&wal_path, source)
            }
        })?;
        // The log file may be new: its directory entry must be durable before any write
        // in it is acknowledged.
        sync_dir(dir)?;
        let mut replayed = 0usize;
        for record in records {
            if record.seq <= data.applied_seq {
                continue;
            }
            data.apply(record.seq, record.op)?;
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
        let point_count = data.points.len() as u64;
        Ok(Replica {
            config,
            dir: dir.to_path_buf(),
            data: RwLock::new(data),
            wal: Mutex::new(WalState { wal, last_seq }),
            point_count: AtomicU64::new(point_count),
            applied_seq: AtomicU64::new(last_seq),
        })
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.config
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
        for point in &points {
            self.validate_point(point)?;
        }
        self.write(WalOp::Upsert(points))
    }

    /// Removes the ids that exist; returns how many did.
    pub fn delete(&self, ids: Vec<String>) -> Result<(usize, ReplicaCounters)> {
        if ids.iter().any(|id| id.is_empty()) {
            return Err(Error::InvalidArgument("point ids must not be empty".into()));
        }
        // Deleting nothing needs no log record; the answer is the same.
        let any_exists = {
            let data = self.read_data()?;
            ids.iter().any(|id| data.internal_by_id.contains_key(id))
        };
        if !any_exists {
            return Ok((0, self.counters()));
        }
        self.write(WalOp::Delete(ids))
    }

    /// Logs, applies and returns how many points the write affected, counted at apply time.
    fn write(&self, op: WalOp) -> Result<(usize, ReplicaCounters)> {
        let mut wal_state = self
            .wal
            .lock()
            .map_err(|_| Error::Internal("replica write lock poisoned".into()))?;
        let record = WalRecord {
            seq: wal_state.last_seq + 1,
            epoch: 0,
            op,
        };
        let wal_path = wal_state.wal.dir().to_path_buf();
        wal_state
            .wal
            .append(&record)
            .map_err(|source| storage(&wal_path, source))?;
        wal_state.last_seq = record.seq;
        let (affected, counters) = {
            let mut data = self.write_data()?;
            let affected = data.apply(record.seq, record.op)?;
            let counters = ReplicaCounters {
                point_count: data.points.len() as u64,
                applied_seq: data.applied_seq,
            };
            self.point_count
                .store(counters.point_count, Ordering::Release);
            self.applied_seq
                .store(counters.applied_seq, Ordering::Release);
            (affected, counters)
        };
        if wal_state.wal.len_bytes() >= CHECKPOINT_WAL_BYTES {
            // The write is already durable in the log; a failed checkpoint only means a
            // longer replay, so it must not turn this acknowledged write into an error.
            if let Err(error) = self.checkpoint_locked(&mut wal_state) {
                tracing::error!(
                    collection = %self.config.collection,
                    shard = self.config.shard,
                    %error,
                    "checkpoint failed; the log keeps every write and grows until one succeeds"
                );
            }
        }
        Ok((affected, counters))
    }

    /// Folds the log into a fresh snapshot (on graceful close and when the log is large).
    pub fn checkpoint(&self) -> Result<()> {
        let mut wal_state = self
            .wal
            .lock()
            .map_err(|_| Error::Internal("replica write lock poisoned".into()))?;
        if wal_state.wal.first_seq().is_none() {
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
            write_points_file(&temporary.join("points.bin"), &data)?;
        }
        sync_dir(&temporary)?;
        remove_dir_if_exists(&previous)?;
        if current.exists() {
            fs::rename(&current, &previous).map_err(|source| storage(&current, source))?;
        }
        fs::rename(&temporary, &current).map_err(|source| storage(&temporary, source))?;
        sync_dir(&self.dir)?;
        remove_dir_if_exists(&previous)?;
        let wal_path = wal_state.wal.dir().to_path_buf();
        let covered_seq = wal_state.last_seq;
        wal_state
            .wal
            .compact(covered_seq)
            .map_err(|source| storage(&wal_path, source))?;
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
                results.push(
                    neighbors
                        .into_iter()
                        .filter_map(|neighbor| {
                            let point = data.points.get(&neighbor.id)?;
                            Some(Neighbor {
                                id: point.id.clone(),
                                score: neighbor.score,
                            })
                        })
                        .collect(),
                );
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
}

impl ReplicaData {
    /// Applies one log record and returns how many points it affected.
    fn apply(&mut self, seq: u64, op: WalOp) -> Result<usize> {
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
                    self.points.remove(internal);
                }
                self.index.remove(&internals)?;
                internals.len()
            }
        };
        self.applied_seq = seq;
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
    write_file_atomically(&identity_path, &json)
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
    remove_dir_if_exists(&previous)
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
    let bytes = fs::read(&points_path).map_err(|source| storage(&points_path, source))?;
    let corrupt = |reason: &str| Error::Corrupt {
        path: points_path.display().to_string(),
        reason: reason.to_string(),
    };
    if bytes.len() < POINTS_MAGIC.len() + 4 || &bytes[..POINTS_MAGIC.len()] != POINTS_MAGIC {
        return Err(corrupt("missing header"));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 4);
    let expected_crc = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
    if crc32fast::hash(body) != expected_crc {
        return Err(corrupt("checksum mismatch"));
    }
    let mut cursor = Cursor {
        bytes: &body[POINTS_MAGIC.len()..],
    };
    let applied_seq = cursor.u64().ok_or_else(|| corrupt("truncated"))?;
    let next_internal = cursor.u64().ok_or_else(|| corrupt("truncated"))?;
    let count = cursor.u64().ok_or_else(|| corrupt("truncated"))?;
    let mut internal_by_id = HashMap::new();
    let mut points = HashMap::new();
    for _ in 0..count {
        let internal = cursor.u64().ok_or_else(|| corrupt("truncated"))?;
        let id = cursor.string().ok_or_else(|| corrupt("truncated id"))?;
        let payload = match cursor.u8().ok_or_else(|| corrupt("truncated"))? {
            0 => None,
            1 => Some(
                cursor
                    .string()
                    .ok_or_else(|| corrupt("truncated payload"))?,
            ),
            _ => return Err(corrupt("bad payload flag")),
        };
        internal_by_id.insert(id.clone(), internal);
        points.insert(internal, StoredPoint { id, payload });
    }
    if points.len() != index.len() {
        return Err(corrupt("point count differs from the index"));
    }
    Ok(ReplicaData {
        index,
        internal_by_id,
        points,
        next_internal,
        applied_seq,
    })
}

fn write_points_file(path: &Path, data: &ReplicaData) -> Result<()> {
    let mut out = Vec::with_capacity(32 + data.points.len() * 32);
    out.extend_from_slice(POINTS_MAGIC);
    out.extend_from_slice(&data.applied_seq.to_le_bytes());
    out.extend_from_slice(&data.next_internal.to_le_bytes());
    out.extend_from_slice(&(data.points.len() as u64).to_le_bytes());
    for (internal, point) in &data.points {
        out.extend_from_slice(&internal.to_le_bytes());
        out.extend_from_slice(&(point.id.len() as u32).to_le_bytes());
        out.extend_from_slice(point.id.as_bytes());
        match &point.payload {
            Some(payload) => {
                out.push(1);
                out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                out.extend_from_slice(payload.as_bytes());
            }
            None => out.push(0),
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let mut file = fs::File::create(path).map_err(|source| storage(path, source))?;
    file.write_all(&out)
        .and_then(|()| file.sync_all())
        .map_err(|source| storage(path, source))
}

fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = fs::File::create(&temporary).map_err(|source| storage(&temporary, source))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| storage(&temporary, source))?;
    fs::rename(&temporary, path).map_err(|source| storage(path, source))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

fn remove_dir_contents(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|source| storage(dir, source))? {
        let path = entry.map_err(|source| storage(dir, source))?.path();
        if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        }
        .map_err(|source| storage(&path, source))?;
    }
    Ok(())
}

/// Creates `dir` and any missing parents, fsyncing each parent that gained an entry, so a
/// replica directory created before an acknowledged write survives a power loss.
fn create_dir_all_durably(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            create_dir_all_durably(parent)?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(source) => return Err(storage(dir, source)),
    }
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| storage(dir, source))
}

fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(storage(dir, source)),
    }
}

fn storage(path: &Path, source: io::Error) -> Error {
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
        let wal_path = dir.path().join("wal").join(format!("{:020}.log", 1));
        let mut bytes = fs::read(&wal_path).unwrap();
        // Inside the second of three equal records: corruption with data behind it.
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xFF;
        fs::write(&wal_path, &bytes).unwrap();
        let error = Replica::open(dir.path(), config(Metric::L2)).err().unwrap();
        assert_eq!(error.code(), tonic::Code::DataLoss);
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
