//! The Searcher service: the trait the gRPC adapter calls, and the domain types it speaks.
//! `SearcherNode` (in `node/`) implements it; the gRPC adapter converts protobuf to these
//! types and back, so nothing here knows the wire.

use std::path::PathBuf;

use async_trait::async_trait;
use quiver_cluster::{ReplicaPhase, ReplicaRole};
use quiver_index::{filtered::Plan, SearchParams};
use quiver_payload::Filter;

use crate::{
    error::{Error, Result},
    point::{Hit, PointData},
    replica::{ReplicaCounters, ScrollPage, SnapshotInfo},
    replication::{PullOutcome, PullRequest},
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
    /// `after` (see [`crate::replica::Replica::scroll`]).
    async fn scroll(&self, request: ShardScroll) -> Result<ScrollPage>;
    async fn replica_status(&self, collection: Option<&str>) -> Vec<ReplicaReport>;
    /// Records after the asker's applied sequence number (see [`crate::replication::serve_pull`]).
    async fn pull_log(&self, request: PullRequest) -> Result<PullOutcome>;
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
