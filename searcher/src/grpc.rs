//! The gRPC face of [`SearcherService`]: converts types and nothing else.

use std::sync::Arc;

use quiver_cluster::ReplicaPhase;
use quiver_index::SearchParams;
use quiver_proto::v1::{
    self, searcher_server::Searcher, HostedReplica, Point, QueryResult, ReplicaDeleteRequest,
    ReplicaGetRequest, ReplicaGetResponse, ReplicaStatusRequest, ReplicaStatusResponse,
    ReplicaUpsertRequest, ReplicaWriteResponse, ScoredPoint, ShardFailure, ShardSearchRequest,
    ShardSearchResponse,
};
use tonic::{Request, Response, Status};

use std::time::Instant;

use crate::{
    point::PointData,
    replica::ReplicaCounters,
    service::{SearcherService, ShardSearch},
};

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

fn point_from_proto(point: Point) -> PointData {
    PointData {
        id: point.id,
        vector: point.vector,
        payload: (!point.payload_json.is_empty()).then_some(point.payload_json),
    }
}

fn write_response(affected: usize, counters: ReplicaCounters) -> ReplicaWriteResponse {
    ReplicaWriteResponse {
        affected: affected as u32,
        point_count: counters.point_count,
        applied_seq: counters.applied_seq,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Searcher for SearcherGrpc {
    type CopySnapshotStream =
        tokio_stream::wrappers::ReceiverStream<Result<v1::SnapshotChunk, Status>>;

    async fn pull_log(
        &self,
        _request: Request<v1::PullLogRequest>,
    ) -> Result<Response<v1::PullLogResponse>, Status> {
        Err(Status::unimplemented("replication is not wired yet"))
    }

    async fn fence(
        &self,
        _request: Request<v1::FenceRequest>,
    ) -> Result<Response<v1::FenceResponse>, Status> {
        Err(Status::unimplemented("replication is not wired yet"))
    }

    async fn copy_snapshot(
        &self,
        _request: Request<v1::CopySnapshotRequest>,
    ) -> Result<Response<Self::CopySnapshotStream>, Status> {
        Err(Status::unimplemented("replication is not wired yet"))
    }

    async fn search(
        &self,
        request: Request<ShardSearchRequest>,
    ) -> Result<Response<ShardSearchResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            let request = request.into_inner();
            let params = request.params.unwrap_or_default();
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
                })
                .await?;
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
                    .into_iter()
                    .map(|(shard, error)| ShardFailure {
                        shard,
                        searcher_id: self.searcher_id.clone(),
                        code: quiver_proto::code_name(error.code()).to_string(),
                        message: error.to_string(),
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
            let request = request.into_inner();
            let points = request.points.into_iter().map(point_from_proto).collect();
            let (affected, counters) = self
                .service
                .upsert(&request.collection, request.shard, points)
                .await?;
            Ok(Response::new(write_response(affected, counters)))
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
            let request = request.into_inner();
            let (affected, counters) = self
                .service
                .delete(&request.collection, request.shard, request.ids)
                .await?;
            Ok(Response::new(write_response(affected, counters)))
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
                points: points
                    .into_iter()
                    .map(|point| Point {
                        id: point.id,
                        vector: point.vector,
                        payload_json: point.payload.unwrap_or_default(),
                    })
                    .collect(),
            }))
        }
        .await;
        crate::metrics::REQUESTS.observe("get", started, result)
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
                        ..Default::default()
                    })
                    .collect(),
            }))
        }
        .await;
        crate::metrics::REQUESTS.observe("replica_status", started, result)
    }
}
