//! Wires a Merger process together: etcd connection, the watched cluster view, and the gRPC
//! server with the standard health and reflection services, `/metrics`, `/ready`, `/live`
//! and the status page.

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use quiver_cluster::{telemetry::Readiness, ClusterView, EtcdStore, KeySchema, MetadataStore};
use quiver_proto::v1::merger_server::MergerServer;
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::server::TcpIncoming;

use crate::{
    error::{Error, Result},
    grpc::MergerGrpc,
    service::{Merger, MergerConfig},
    starting::StartingMerger,
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

/// Serves until `shutdown` completes. The gRPC server (health, `/ready`, `/metrics`) starts
/// at once; the Merger connects to etcd and loads the cluster state meanwhile, retrying while
/// etcd cannot be reached, and only then reports ready (named health service SERVING, `GET
/// /ready` 200) and writes the ready file. Calls before that answer UNAVAILABLE.
pub async fn run(
    config: MergerServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let bound = listener
        .local_addr()
        .map_err(|error| Error::Internal(format!("listener has no local address: {error}")))?;
    crate::metrics::register_all();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = Readiness::new(
        health_reporter,
        <MergerServer<MergerGrpc> as tonic::server::NamedService>::NAME,
        "no cluster state from etcd yet",
    )
    .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quiver_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| Error::Internal(format!("reflection service: {error}")))?;
    let starting = Arc::new(StartingMerger::default());
    let merger_service = MergerServer::new(MergerGrpc::new(Arc::clone(&starting) as _))
        .max_decoding_message_size(quiver_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(quiver_proto::MAX_MESSAGE_BYTES);
    // Serves "no cluster state yet" until it follows the view loaded below.
    let status_page = StatusPage::new();

    let (stop_server, mut server_stop_signal) = watch::channel(false);
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tower::util::MapResponseLayer::new(
                quiver_proto::oversized_message_as_resource_exhausted,
            ))
            // A request id for every client call, on a span, sent on to the Searchers.
            .layer(quiver_cluster::request_id::RequestIdLayer::generating())
            // Ignored for a listener handed in (tonic applies it only to addresses it binds
            // itself): the accepted sockets get TCP_NODELAY from TcpIncoming below. Without it
            // Nagle's algorithm holds a response behind the peer's delayed ACK, 40 ms a call.
            .tcp_nodelay(true)
            // HTTP/1 is for Prometheus scraping /metrics, probes and the status page; gRPC
            // stays on HTTP/2.
            .accept_http1(true)
            .add_routes(
                status_page.routes(quiver_cluster::telemetry::with_http_routes(
                    tonic::service::Routes::new(health_service)
                        .add_service(reflection)
                        .add_service(merger_service),
                    readiness.clone(),
                )),
            )
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                status_page.ends_streams_on(async move {
                    let _ = server_stop_signal.wait_for(|stop| *stop).await;
                }),
            ),
    );
    tracing::info!(address = %bound, "merger listening");

    tokio::pin!(shutdown);
    let (stop_controller, controller_stop_signal) = watch::channel(false);
    let mut controller = None;
    let connected = tokio::select! {
        connected = connect_until_listed(&config) => Some(connected?),
        () = &mut shutdown => None,
        ended = &mut server => return Err(server_ended(ended)),
    };
    if let Some((store, schema, view)) = connected {
        controller = config.controller.clone().map(|controller_config| {
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
        status_page.follow(Arc::clone(&store), schema.clone(), view.clone());
        starting.start(Arc::new(Merger::new(
            store,
            schema,
            view,
            config.merger.clone(),
        )));
        readiness
            .set(true, "cluster state loaded from etcd and watched")
            .await;
        if let Some(ready_file) = &config.ready_file {
            quiver_cluster::telemetry::write_ready_file(ready_file, &format!("http://{bound}"))
                .map_err(|error| {
                    Error::Internal(format!("writing {}: {error}", ready_file.display()))
                })?;
        }
        tracing::info!(address = %bound, "merger serving");
        tokio::select! {
            () = &mut shutdown => {}
            ended = &mut server => return Err(server_ended(ended)),
        }
    }
    readiness.set(false, "stopping").await;
    // In-flight requests finish; new connections are refused.
    let _ = stop_server.send(true);
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "grpc server ended with an error"),
        Err(error) => tracing::warn!(%error, "grpc server task failed"),
    }
    // Resigns the controller leadership so another Merger takes over at once.
    let _ = stop_controller.send(true);
    if let Some(controller) = controller {
        let _ = controller.await;
    }
    tracing::info!("merger stopped");
    Ok(())
}

/// Why the server task ended before it was asked to stop.
fn server_ended(
    ended: std::result::Result<
        std::result::Result<(), tonic::transport::Error>,
        tokio::task::JoinError,
    >,
) -> Error {
    match ended {
        Ok(Ok(())) => Error::Internal("grpc server stopped unexpectedly".to_string()),
        Ok(Err(error)) => Error::Internal(format!("grpc server: {error}")),
        Err(error) => Error::Internal(format!("grpc server task failed: {error}")),
    }
}

/// Connects to etcd and lists the cluster state, retrying with a capped backoff while etcd
/// cannot be reached (the Merger stays up, not ready, meanwhile); fails only on a
/// configuration error.
async fn connect_until_listed(
    config: &MergerServerConfig,
) -> Result<(Arc<dyn MetadataStore>, KeySchema, ClusterView)> {
    const FIRST_RETRY: Duration = Duration::from_millis(250);
    const LAST_RETRY: Duration = Duration::from_secs(5);
    let schema = KeySchema::new(&config.etcd_prefix);
    let mut retry_in = FIRST_RETRY;
    loop {
        let attempt = async {
            let store: Arc<dyn MetadataStore> =
                Arc::new(EtcdStore::connect(&config.etcd_endpoints, config.etcd_timeout).await?);
            let view = ClusterView::start(Arc::clone(&store), schema.clone()).await?;
            Ok::<_, quiver_cluster::Error>((store, view))
        };
        match attempt.await {
            Ok((store, view)) => return Ok((store, schema, view)),
            Err(error @ quiver_cluster::Error::InvalidArgument(_)) => return Err(error.into()),
            Err(error) => {
                tracing::warn!(%error, ?retry_in, endpoints = ?config.etcd_endpoints, "cannot load the cluster state from etcd; retrying");
                tokio::time::sleep(retry_in).await;
                retry_in = (retry_in * 2).min(LAST_RETRY);
            }
        }
    }
}
