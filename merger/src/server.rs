//! Wires a Merger process together: etcd connection, the watched cluster view, and the gRPC
//! server with the standard health and reflection services.

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use quiver_cluster::{ClusterView, EtcdStore, KeySchema, MetadataStore};
use quiver_proto::v1::merger_server::MergerServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::{
    error::{Error, Result},
    grpc::MergerGrpc,
    service::{Merger, MergerConfig, MergerService},
    status_page::StatusPage,
};

#[derive(Debug, Clone)]
pub struct MergerServerConfig {
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
    pub etcd_timeout: Duration,
    pub merger: MergerConfig,
    /// Written with the bound address once the Merger serves.
    pub ready_file: Option<PathBuf>,
    /// The placement controller's settings; `None` runs none in this Merger.
    pub controller: Option<quiver_cluster::ControllerConfig>,
}

pub async fn run(
    config: MergerServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let bound = listener
        .local_addr()
        .map_err(|error| Error::Internal(format!("listener has no local address: {error}")))?;
    let store: Arc<dyn MetadataStore> =
        Arc::new(EtcdStore::connect(&config.etcd_endpoints, config.etcd_timeout).await?);
    let schema = KeySchema::new(&config.etcd_prefix);
    let view = ClusterView::start(Arc::clone(&store), schema.clone()).await?;
    let (stop_controller, controller_stop_signal) = tokio::sync::watch::channel(false);
    let controller = config.controller.clone().map(|controller_config| {
        tracing::info!(candidate = %controller_config.candidate_id, "placement controller candidate");
        tokio::spawn(
            quiver_cluster::PlacementController::new(
                Arc::clone(&store),
                schema.clone(),
                view.clone(),
                controller_config,
            )
            .run(controller_stop_signal),
        )
    });
    let status_page = StatusPage::new(Arc::clone(&store), schema.clone(), view.clone());
    let merger: Arc<dyn MergerService> =
        Arc::new(Merger::new(store, schema, view, config.merger.clone()));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<MergerServer<MergerGrpc>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quiver_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| Error::Internal(format!("reflection service: {error}")))?;
    let merger_service = MergerServer::new(MergerGrpc::new(merger))
        .max_decoding_message_size(quiver_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(quiver_proto::MAX_MESSAGE_BYTES);

    if let Some(ready_file) = &config.ready_file {
        quiver_cluster::telemetry::write_ready_file(ready_file, &format!("http://{bound}"))
            .map_err(|error| {
                Error::Internal(format!("writing {}: {error}", ready_file.display()))
            })?;
    }
    tracing::info!(address = %bound, "merger serving");
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            quiver_proto::oversized_message_as_resource_exhausted,
        ))
        // Ignored for a listener handed in (tonic applies it only to addresses it binds
        // itself): the accepted sockets get TCP_NODELAY from TcpIncoming below. Without it
        // Nagle's algorithm holds a response behind the peer's delayed ACK, 40 ms a call.
        .tcp_nodelay(true)
        // HTTP/1 is for Prometheus scraping /metrics; gRPC stays on HTTP/2.
        .accept_http1(true)
        .add_routes(
            status_page.routes(quiver_cluster::telemetry::with_metrics_route(
                tonic::service::Routes::new(health_service)
                    .add_service(reflection)
                    .add_service(merger_service),
            )),
        )
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            status_page.ends_streams_on(shutdown),
        )
        .await
        .map_err(|error| Error::Internal(format!("grpc server: {error}")))?;
    // Resigns the controller leadership so another Merger takes over at once.
    let _ = stop_controller.send(true);
    if let Some(controller) = controller {
        let _ = controller.await;
    }
    tracing::info!("merger stopped");
    Ok(())
}
