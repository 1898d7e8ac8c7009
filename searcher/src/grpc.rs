//! The gRPC face of [`SearcherService`]: converts types and nothing else.

use std::sync::Arc;

use quiver_cluster::ReplicaPhase;
use quiver_index::SearchParams;
use quiver_payload::{Filter, PayloadSchema};
use quiver_proto::v1::{
    self, searcher_server::Searcher, HostedReplica, Point, QueryResult, ReplicaDeleteRequest,
    ReplicaGetRequest, ReplicaGetResponse, ReplicaStatusRequest, ReplicaStatusResponse,
    ReplicaUpsertRequest, ReplicaWriteResponse, ScoredPoint, ShardCount, ShardCountRequest,
    ShardCountResponse, ShardFailure, ShardScrollRequest, ShardScrollResponse, ShardSearchRequest,
    ShardSearchResponse,
};
use tonic::{Request, Response, Status};

use std::time::Instant;

use crate::{
    error::Error,
    point::PointData,
    service::{
        ExportedSnapshot, SearcherService, ShardScroll, ShardSearch, ShardWrite, ShardWriteOutcome,
        WriteOp,
    },
};
use quiver_cluster::ReplicaRole;

/// Points one scroll call returns at most.
const MAX_SCROLL_PAGE: u32 = 10_000;

pub struct SearcherGrpc {
    service: Arc<dyn SearcherService>,
    searcher_id: String,
}

impl SearcherGrpc {
    pub fn new(service: Arc<dyn SearcherService>, searcher_id: String) -> SearcherGrpc {
        SearcherGrpc {
            service,
            searcher_id,
        }
    }
}

pub fn phase_to_proto(phase: ReplicaPhase) -> v1::ReplicaState {
    match phase {
        ReplicaPhase::Booting => v1::ReplicaState::Booting,
        ReplicaPhase::Active => v1::ReplicaState::Active,
        ReplicaPhase::Draining => v1::ReplicaState::Draining,
        ReplicaPhase::Failed => v1::ReplicaState::Failed,
    }
}

/// A request's filter, checked against the limits (the Merger checks it against the
/// collection's payload indexes); `None` when absent or empty.
fn filter_from_proto(filter: Option<&v1::Filter>) -> Result<Option<Filter>, Error> {
    let Some(filter) = filter else {
        return Ok(None);
    };
    let filter = quiver_payload::proto::from_proto(filter)?;
    filter.validate(&PayloadSchema::default())?;
    Ok((!filter.is_empty()).then_some(filter))
}

fn point_to_proto(point: PointData) -> Point {
    Point {
        id: point.id,
        vector: point.vector,
        payload_json: point.payload.unwrap_or_default(),
    }
}

fn shard_failure(searcher_id: &str, shard: u32, error: &Error) -> ShardFailure {
    ShardFailure {
        shard,
        searcher_id: searcher_id.to_string(),
        code: quiver_proto::code_name(error.code()).to_string(),
        message: error.to_string(),
    }
}

fn point_from_proto(point: Point) -> PointData {
    PointData {
        id: point.id,
        vector: point.vector,
        payload: (!point.payload_json.is_empty()).then_some(point.payload_json),
    }
}

fn write_response(outcome: ShardWriteOutcome) -> ReplicaWriteResponse {
    ReplicaWriteResponse {
        affected: outcome.affected as u32,
        point_count: outcome.counters.point_count,
        applied_seq: outcome.counters.applied_seq,
        seq: outcome.seq,
        acknowledged_by: outcome.acknowledged_by,
        write_quorum: outcome.write_quorum,
    }
}

pub fn role_to_proto(role: Option<ReplicaRole>) -> v1::ReplicaRole {
    match role {
        Some(ReplicaRole::Primary) => v1::ReplicaRole::Primary,
        Some(ReplicaRole::Follower) => v1::ReplicaRole::Follower,
        Some(ReplicaRole::Learner) => v1::ReplicaRole::Learner,
        None => v1::ReplicaRole::Unspecified,
    }
}

/// The caller's gRPC deadline, as an instant on this machine.
fn deadline_of<T>(request: &Request<T>) -> Option<std::time::Instant> {
    let header = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = header.split_at(header.len().checked_sub(1)?);
    let value: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => std::time::Duration::from_secs(value.saturating_mul(3600)),
        "M" => std::time::Duration::from_secs(value.saturating_mul(60)),
        "S" => std::time::Duration::from_secs(value),
        "m" => std::time::Duration::from_millis(value),
        "u" => std::time::Duration::from_micros(value),
        "n" => std::time::Duration::from_nanos(value),
        _ => return None,
    };
    // Answer a little early so the verdict (say, quorum not reached) reaches the caller
    // before its own deadline cancels the call.
    let margin = (timeout / 10).min(std::time::Duration::from_millis(50));
    Some(std::time::Instant::now() + timeout.saturating_sub(margin))
}

/// Bytes per streamed snapshot chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

async fn stream_snapshot(
    exported: ExportedSnapshot,
    sender: tokio::sync::mpsc::Sender<Result<v1::SnapshotChunk, Status>>,
) {
    use tokio::io::AsyncReadExt;
    let header = v1::SnapshotHeader {
        applied_seq: exported.info.applied_seq,
        last_epoch: exported.info.last_epoch,
        epochs: exported
            .info
            .epochs
            .starts
            .iter()
            .map(|(epoch, start_seq)| v1::EpochStart {
                epoch: *epoch,
                start_seq: *start_seq,
            })
            .collect(),
        incarnation: exported.incarnation.clone(),
        total_bytes: exported.files.iter().map(|(_, size)| size).sum(),
        file_count: exported.files.len() as u32,
    };
    if sender
        .send(Ok(v1::SnapshotChunk {
            header: Some(header),
            ..Default::default()
        }))
        .await
        .is_err()
    {
        return;
    }
    for (name, _) in &exported.files {
        let path = exported.dir.join(name);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(error) => {
                let _ = sender
                    .send(Err(Status::internal(format!("reading {name}: {error}"))))
                    .await;
                return;
            }
        };
        let mut offset = 0u64;
        loop {
            let mut buffer = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            let read = match file.read(&mut buffer).await {
                Ok(read) => read,
                Err(error) => {
                    let _ = sender
                        .send(Err(Status::internal(format!("reading {name}: {error}"))))
                        .await;
                    return;
                }
            };
            if read == 0 {
                break;
            }
            buffer.truncate(read);
            let chunk = v1::SnapshotChunk {
                header: None,
                file: name.clone(),
                offset,
                data: buffer,
            };
            offset += read as u64;
            if sender.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
        // An empty file still has to exist on the other side.
        if offset == 0
            && sender
                .send(Ok(v1::SnapshotChunk {
                    header: None,
                    file: name.clone(),
                    offset: 0,
                    data: Vec::new(),
                }))
                .await
                .is_err()
        {
            return;
        }
    }
    drop(exported);
}

#[tonic::async_trait]
impl Searcher for SearcherGrpc {
    type CopySnapshotStream =
        tokio_stream::wrappers::ReceiverStream<Result<v1::SnapshotChunk, Status>>;

    async fn pull_log(
        &self,
        request: Request<v1::PullLogRequest>,
    ) -> Result<Response<v1::PullLogResponse>, Status> {
        let outcome = self
            .service
            .pull_log(crate::replication::pull_request_from_proto(
                request.into_inner(),
            ))
            .await?;
        Ok(Response::new(v1::PullLogResponse {
            records: outcome
                .records
                .iter()
                .map(crate::replication::record_to_proto)
                .collect(),
            source_applied_seq: outcome.source_applied_seq,
            snapshot_required: outcome.snapshot_required.is_some(),
            reason: outcome.snapshot_required.unwrap_or_default(),
        }))
    }

    async fn fence(
        &self,
        request: Request<v1::FenceRequest>,
    ) -> Result<Response<v1::FenceResponse>, Status> {
        let request = request.into_inner();
        tracing::info!(collection = %request.collection, shard = request.shard, epoch = request.epoch, primary = %request.primary, "fenced by a new primary");
        let (applied_seq, last_epoch) = self
            .service
            .fence(&request.collection, request.shard, request.epoch)
            .await?;
        Ok(Response::new(v1::FenceResponse {
            applied_seq,
            last_epoch,
        }))
    }

    async fn copy_snapshot(
        &self,
        request: Request<v1::CopySnapshotRequest>,
    ) -> Result<Response<Self::CopySnapshotStream>, Status> {
        let request = request.into_inner();
        let exported = self
            .service
            .export_snapshot(&request.collection, request.shard)
            .await?;
        tracing::info!(
            collection = %request.collection,
            shard = request.shard,
            to = %request.searcher_id,
            applied_seq = exported.info.applied_seq,
            files = exported.files.len(),
            "streaming a snapshot to a peer"
        );
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(stream_snapshot(exported, sender));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        )))
    }

    async fn search(
        &self,
        request: Request<ShardSearchRequest>,
    ) -> Result<Response<ShardSearchResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            let request = request.into_inner();
            let params = request.params.unwrap_or_default();
            let collection = request.collection.clone();
            let asked = request.shards.len();
            let filter = filter_from_proto(request.filter.as_ref())?;
            let outcome = self
                .service
                .search(ShardSearch {
                    collection: request.collection,
                    shards: request.shards,
                    queries: request
                        .queries
                        .into_iter()
                        .map(|query| query.values)
                        .collect(),
                    k: request.k as usize,
                    params: SearchParams {
                        ef_search: params.ef_search,
                        nprobe: params.nprobe,
                    },
                    with_vectors: request.with_vectors,
                    with_payloads: request.with_payloads,
                    filter,
                })
                .await?;
            tracing::debug!(
                %collection,
                shards = asked,
                searched = outcome.searched_shards.len(),
                failed = outcome.failed_shards.len(),
                latency_us = started.elapsed().as_micros() as u64,
                "search served"
            );
            Ok(Response::new(ShardSearchResponse {
                results: outcome
                    .results
                    .into_iter()
                    .map(|hits| QueryResult {
                        neighbors: hits
                            .into_iter()
                            .map(|hit| ScoredPoint {
                                id: hit.id,
                                score: hit.score,
                                vector: hit.vector.unwrap_or_default(),
                                payload_json: hit.payload.unwrap_or_default(),
                            })
                            .collect(),
                    })
                    .collect(),
                searched_shards: outcome.searched_shards,
                failed_shards: outcome
                    .failed_shards
                    .iter()
                    .map(|(shard, error)| shard_failure(&self.searcher_id, *shard, error))
                    .collect(),
                plans: outcome
                    .plans
                    .into_iter()
                    .map(|plan| v1::ShardPlan {
                        shard: plan.shard,
                        plan: plan.plan.as_str().to_string(),
                        matches: plan.matches,
                    })
                    .collect(),
            }))
        }
        .await;
        crate::metrics::REQUESTS.observe("search", started, result)
    }

    async fn upsert(
        &self,
        request: Request<ReplicaUpsertRequest>,
    ) -> Result<Response<ReplicaWriteResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            let deadline = deadline_of(&request);
            let request = request.into_inner();
            let points = request.points.into_iter().map(point_from_proto).collect();
            let outcome = self
                .service
                .write(ShardWrite {
                    collection: request.collection,
                    shard: request.shard,
                    epoch: request.epoch,
                    write_quorum: request.write_quorum,
                    deadline,
                    op: WriteOp::Upsert(points),
                })
                .await?;
            Ok(Response::new(write_response(outcome)))
        }
        .await;
        crate::metrics::REQUESTS.observe("upsert", started, result)
    }

    async fn delete(
        &self,
        request: Request<ReplicaDeleteRequest>,
    ) -> Result<Response<ReplicaWriteResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            let deadline = deadline_of(&request);
            let request = request.into_inner();
            let op = match filter_from_proto(request.filter.as_ref())? {
                Some(_) if !request.ids.is_empty() => {
                    return Err(Error::InvalidArgument(
                        "give ids or a filter to delete, not both".into(),
                    )
                    .into())
                }
                Some(filter) => WriteOp::DeleteMatching(filter),
                None => WriteOp::Delete(request.ids),
            };
            let outcome = self
                .service
                .write(ShardWrite {
                    collection: request.collection,
                    shard: request.shard,
                    epoch: request.epoch,
                    write_quorum: request.write_quorum,
                    deadline,
                    op,
                })
                .await?;
            Ok(Response::new(write_response(outcome)))
        }
        .await;
        crate::metrics::REQUESTS.observe("delete", started, result)
    }

    async fn get(
        &self,
        request: Request<ReplicaGetRequest>,
    ) -> Result<Response<ReplicaGetResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            let request = request.into_inner();
            let points = self
                .service
                .get(
                    &request.collection,
                    request.shard,
                    request.ids,
                    request.with_vectors,
                    request.with_payloads,
                )
                .await?;
            Ok(Response::new(ReplicaGetResponse {
                points: points.into_iter().map(point_to_proto).collect(),
            }))
        }
        .await;
        crate::metrics::REQUESTS.observe("get", started, result)
    }

    async fn count(
        &self,
        request: Request<ShardCountRequest>,
    ) -> Result<Response<ShardCountResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            let request = request.into_inner();
            let filter = filter_from_proto(request.filter.as_ref())?;
            let counted = self
                .service
                .count(&request.collection, request.shards, filter)
                .await;
            let mut response = ShardCountResponse::default();
            for (shard, count) in counted {
                match count {
                    Ok(count) => response.counts.push(ShardCount { shard, count }),
                    Err(error) => {
                        response
                            .failed_shards
                            .push(shard_failure(&self.searcher_id, shard, &error))
                    }
                }
            }
            Ok::<_, Status>(Response::new(response))
        }
        .await;
        crate::metrics::REQUESTS.observe("count", started, result)
    }

    async fn scroll(
        &self,
        request: Request<ShardScrollRequest>,
    ) -> Result<Response<ShardScrollResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            let request = request.into_inner();
            let filter = filter_from_proto(request.filter.as_ref())?;
            let page = self
                .service
                .scroll(ShardScroll {
                    collection: request.collection,
                    shard: request.shard,
                    filter,
                    after: request.after_id,
                    limit: request.limit.clamp(1, MAX_SCROLL_PAGE) as usize,
                    with_vectors: request.with_vectors,
                    with_payloads: request.with_payloads,
                })
                .await?;
            Ok(Response::new(ShardScrollResponse {
                points: page.points.into_iter().map(point_to_proto).collect(),
                end: page.end,
            }))
        }
        .await;
        crate::metrics::REQUESTS.observe("scroll", started, result)
    }

    async fn replica_status(
        &self,
        request: Request<ReplicaStatusRequest>,
    ) -> Result<Response<ReplicaStatusResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            let request = request.into_inner();
            let filter = (!request.collection.is_empty()).then_some(request.collection.as_str());
            let reports = self.service.replica_status(filter).await;
            Ok(Response::new(ReplicaStatusResponse {
                replicas: reports
                    .into_iter()
                    .map(|report| HostedReplica {
                        collection: report.collection,
                        shard: report.shard,
                        state: phase_to_proto(report.phase) as i32,
                        point_count: report.counters.point_count,
                        applied_seq: report.counters.applied_seq,
                        role: role_to_proto(report.role) as i32,
                        epoch: report.epoch,
                    })
                    .collect(),
            }))
        }
        .await;
        crate::metrics::REQUESTS.observe("replica_status", started, result)
    }
}
