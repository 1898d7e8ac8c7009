//! The Merger service while the process starts: the gRPC server (with health, `/ready` and
//! `/metrics`) serves before etcd is reachable, and until the cluster state is loaded every
//! call answers UNAVAILABLE, which clients retry. Then every call goes to the real
//! [`crate::Merger`].

use std::{sync::Arc, sync::OnceLock, time::Duration};

use async_trait::async_trait;
use quiver_proto::v1::{
    ClusterStatusResponse, CountRequest, CountResponse, CreateCollectionRequest,
    CreateCollectionResponse, CreatePayloadIndexRequest, CreatePayloadIndexResponse, DeleteRequest,
    DeleteResponse, DescribeCollectionResponse, DropCollectionResponse, DropPayloadIndexRequest,
    DropPayloadIndexResponse, GetRequest, GetResponse, ListCollectionsResponse, ScrollRequest,
    ScrollResponse, SearchRequest, SearchResponse, UpsertRequest, UpsertResponse,
};

use crate::{
    error::{Error, Result},
    service::MergerService,
};

/// A [`MergerService`] set once, after start.
#[derive(Default)]
pub struct StartingMerger {
    merger: OnceLock<Arc<dyn MergerService>>,
}

impl StartingMerger {
    /// Hands every call from now on to `merger`; only the first call has an effect.
    pub fn start(&self, merger: Arc<dyn MergerService>) {
        let _ = self.merger.set(merger);
    }

    fn merger(&self) -> Result<&Arc<dyn MergerService>> {
        self.merger.get().ok_or_else(|| {
            Error::Unavailable(
                "the merger is starting: it has not loaded the cluster state from etcd yet"
                    .to_string(),
            )
        })
    }
}

#[async_trait]
impl MergerService for StartingMerger {
    async fn create_collection(
        &self,
        request: CreateCollectionRequest,
        client_timeout: Option<Duration>,
    ) -> Result<CreateCollectionResponse> {
        self.merger()?
            .create_collection(request, client_timeout)
            .await
    }

    async fn drop_collection(&self, name: &str) -> Result<DropCollectionResponse> {
        self.merger()?.drop_collection(name).await
    }

    async fn list_collections(&self) -> Result<ListCollectionsResponse> {
        self.merger()?.list_collections().await
    }

    async fn describe_collection(&self, name: &str) -> Result<DescribeCollectionResponse> {
        self.merger()?.describe_collection(name).await
    }

    async fn upsert(
        &self,
        request: UpsertRequest,
        client_timeout: Option<Duration>,
    ) -> Result<UpsertResponse> {
        self.merger()?.upsert(request, client_timeout).await
    }

    async fn delete(
        &self,
        request: DeleteRequest,
        client_timeout: Option<Duration>,
    ) -> Result<DeleteResponse> {
        self.merger()?.delete(request, client_timeout).await
    }

    async fn get(
        &self,
        request: GetRequest,
        client_timeout: Option<Duration>,
    ) -> Result<GetResponse> {
        self.merger()?.get(request, client_timeout).await
    }

    async fn search(
        &self,
        request: SearchRequest,
        client_timeout: Option<Duration>,
    ) -> Result<SearchResponse> {
        self.merger()?.search(request, client_timeout).await
    }

    async fn count(
        &self,
        request: CountRequest,
        client_timeout: Option<Duration>,
    ) -> Result<CountResponse> {
        self.merger()?.count(request, client_timeout).await
    }

    async fn scroll(
        &self,
        request: ScrollRequest,
        client_timeout: Option<Duration>,
    ) -> Result<ScrollResponse> {
        self.merger()?.scroll(request, client_timeout).await
    }

    async fn create_payload_index(
        &self,
        request: CreatePayloadIndexRequest,
    ) -> Result<CreatePayloadIndexResponse> {
        self.merger()?.create_payload_index(request).await
    }

    async fn drop_payload_index(
        &self,
        request: DropPayloadIndexRequest,
    ) -> Result<DropPayloadIndexResponse> {
        self.merger()?.drop_payload_index(request).await
    }

    async fn cluster_status(&self) -> Result<ClusterStatusResponse> {
        self.merger()?.cluster_status().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_are_unavailable_until_started() {
        let starting = StartingMerger::default();
        let error = starting.list_collections().await.unwrap_err();
        assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
    }
}
