//! [`SearcherNode`]: hosts this process's replicas and implements
//! [`SearcherService`] over them, running their CPU and disk work on the blocking pool.
//!
//! One file per kind of operation: `slots.rs` (the replica slots and the lookups every
//! operation starts with), `search.rs`, `reads.rs` (get, count, scroll), `write.rs` (the
//! primary's write path), `peers.rs` (what peers ask: PullLog and Fence),
//! `snapshot_export.rs`, and `replica_host.rs` (the node as replication sees it).

mod peers;
mod reads;
mod replica_host;
mod search;
mod slots;
mod snapshot_export;
#[cfg(test)]
pub(crate) mod test_support;
mod write;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use async_trait::async_trait;
use quiver_payload::Filter;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

pub(crate) use self::slots::Hosted;
use crate::{
    error::{Error, Result},
    point::PointData,
    replica::ScrollPage,
    replication::{PullOutcome, PullRequest},
    service::{
        ExportedSnapshot, ReplicaReport, SearcherService, ShardScroll, ShardSearch,
        ShardSearchOutcome, ShardWrite, ShardWriteOutcome,
    },
    storage::wal::WalOptions,
};

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

    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn writes_applied(&self) -> &Notify {
        &self.writes_applied
    }

    pub fn replica_dir(&self, collection: &str, shard: u32) -> PathBuf {
        replica_dir(&self.data_dir, collection, shard)
    }

    /// One of the slots that cap concurrent searches, counts and scrolls at the number of
    /// cores (each runs on the blocking pool).
    async fn search_slot(&self) -> Result<OwnedSemaphorePermit> {
        Arc::clone(&self.search_slots)
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("search slots closed".into()))
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

/// Each operation lives in the file of its kind; see the module documentation.
#[async_trait]
impl SearcherService for SearcherNode {
    async fn search(&self, request: ShardSearch) -> Result<ShardSearchOutcome> {
        self.search_hosted(request).await
    }

    async fn write(&self, write: ShardWrite) -> Result<ShardWriteOutcome> {
        self.write_as_primary(write).await
    }

    async fn get(
        &self,
        collection: &str,
        shard: u32,
        ids: Vec<String>,
        with_vectors: bool,
        with_payloads: bool,
    ) -> Result<Vec<PointData>> {
        self.get_points(collection, shard, ids, with_vectors, with_payloads)
            .await
    }

    async fn count(
        &self,
        collection: &str,
        shards: Vec<u32>,
        filter: Option<Filter>,
    ) -> Vec<(u32, Result<u64>)> {
        self.count_points(collection, shards, filter).await
    }

    async fn scroll(&self, request: ShardScroll) -> Result<ScrollPage> {
        self.scroll_points(request).await
    }

    async fn replica_status(&self, collection: Option<&str>) -> Vec<ReplicaReport> {
        self.replica_reports(collection)
    }

    async fn pull_log(&self, request: PullRequest) -> Result<PullOutcome> {
        self.serve_pull_log(request).await
    }

    async fn fence(&self, collection: &str, shard: u32, epoch: u64) -> Result<(u64, u64)> {
        self.fence_replica(collection, shard, epoch).await
    }

    async fn export_snapshot(&self, collection: &str, shard: u32) -> Result<ExportedSnapshot> {
        self.export_replica_snapshot(collection, shard).await
    }
}
