//! The gRPC face of [`MergerService`]: reads the client's deadline, converts errors, and
//! nothing else.

use std::{sync::Arc, time::Duration};

use quiver_proto::v1::{
    merger_server::Merger, ClusterStatusRequest, ClusterStatusResponse, CountRequest,
    CountResponse, CreateCollectionRequest, CreateCollectionResponse, CreatePayloadIndexRequest,
    CreatePayloadIndexResponse, DeleteRequest, DeleteResponse, DescribeCollectionRequest,
    DescribeCollectionResponse, DropCollectionRequest, DropCollectionResponse,
    DropPayloadIndexRequest, DropPayloadIndexResponse, GetRequest, GetResponse,
    ListCollectionsRequest, ListCollectionsResponse, ScrollRequest, ScrollResponse, SearchRequest,
    SearchResponse, UpsertRequest, UpsertResponse,
};
use tonic::{Request, Response, Status};

use std::time::Instant;

use crate::service::MergerService;

pub struct MergerGrpc {
    service: Arc<dyn MergerService>,
}

impl MergerGrpc {
    pub fn new(service: Arc<dyn MergerService>) -> MergerGrpc {
        MergerGrpc { service }
    }
}

/// The deadline a gRPC client sent in the `grpc-timeout` header: digits plus a unit
/// (H, M, S, m, u, n), per the gRPC HTTP/2 protocol.
pub fn client_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let text = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(text)
}

fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[tonic::async_trait]
impl Merger for MergerGrpc {
    async fn create_collection(
        &self,
        request: Request<CreateCollectionRequest>,
    ) -> Result<Response<CreateCollectionResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            let timeout = client_timeout(&request);
            Ok(Response::new(
                self.service
                    .create_collection(request.into_inner(), timeout)
                    .await?,
            ))
        }
        .await;
        crate::metrics::REQUESTS.observe("create_collection", started, result)
    }

    async fn drop_collection(
        &self,
        request: Request<DropCollectionRequest>,
    ) -> Result<Response<DropCollectionResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            Ok(Response::new(
                self.service
                    .drop_collection(&request.into_inner().name)
                    .await?,
            ))
        }
        .await;
        crate::metrics::REQUESTS.observe("drop_collection", started, result)
    }

    async fn list_collections(
        &self,
        _request: Request<ListCollectionsRequest>,
    ) -> Result<Response<ListCollectionsResponse>, Status> {
        let started = Instant::now();
        let result = async move { Ok(Response::new(self.service.list_collections().await?)) }.await;
        crate::metrics::REQUESTS.observe("list_collections", started, result)
    }

    async fn describe_collection(
        &self,
        request: Request<DescribeCollectionRequest>,
    ) -> Result<Response<DescribeCollectionResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            Ok(Response::new(
                self.service
                    .describe_collection(&request.into_inner().name)
                    .await?,
            ))
        }
        .await;
        crate::metrics::REQUESTS.observe("describe_collection", started, result)
    }

    async fn upsert(
        &self,
        request: Request<UpsertRequest>,
    ) -> Result<Response<UpsertResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            let timeout = client_timeout(&request);
            Ok(Response::new(
                self.service.upsert(request.into_inner(), timeout).await?,
            ))
        }
        .await;
        crate::metrics::REQUESTS.observe("upsert", started, result)
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            let timeout = client_timeout(&request);
            Ok(Response::new(
                self.service.delete(request.into_inner(), timeout).await?,
            ))
        }
        .await;
        crate::metrics::REQUESTS.observe("delete", started, result)
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            let timeout = client_timeout(&request);
            Ok(Response::new(
                self.service.get(request.into_inner(), timeout).await?,
            ))
        }
        .await;
        crate::metrics::REQUESTS.observe("get", started, result)
    }

    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            let timeout = client_timeout(&request);
            Ok(Response::new(
                self.service.search(request.into_inner(), timeout).await?,
            ))
        }
        .await;
        crate::metrics::REQUESTS.observe("search", started, result)
    }

    async fn count(
        &self,
        request: Request<CountRequest>,
    ) -> Result<Response<CountResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            let timeout = client_timeout(&request);
            Ok(Response::new(
                self.service.count(request.into_inner(), timeout).await?,
            ))
        }
        .await;
        crate::metrics::REQUESTS.observe("count", started, result)
    }

    async fn scroll(
        &self,
        request: Request<ScrollRequest>,
    ) -> Result<Response<ScrollResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            let timeout = client_timeout(&request);
            Ok(Response::new(
                self.service.scroll(request.into_inner(), timeout).await?,
            ))
        }
        .await;
        crate::metrics::REQUESTS.observe("scroll", started, result)
    }

    async fn create_payload_index(
        &self,
        request: Request<CreatePayloadIndexRequest>,
    ) -> Result<Response<CreatePayloadIndexResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            Ok(Response::new(
                self.service
                    .create_payload_index(request.into_inner())
                    .await?,
            ))
        }
        .await;
        crate::metrics::REQUESTS.observe("create_payload_index", started, result)
    }

    async fn drop_payload_index(
        &self,
        request: Request<DropPayloadIndexRequest>,
    ) -> Result<Response<DropPayloadIndexResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            Ok(Response::new(
                self.service
                    .drop_payload_index(request.into_inner())
                    .await?,
            ))
        }
        .await;
        crate::metrics::REQUESTS.observe("drop_payload_index", started, result)
    }

    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let started = Instant::now();
        let result = async move { Ok(Response::new(self.service.cluster_status().await?)) }.await;
        crate::metrics::REQUESTS.observe("cluster_status", started, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_units() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }
}
