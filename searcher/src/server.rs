//! Wires a Searcher process together: etcd connection, cluster view, gRPC server (with the
//! standard health and reflection services, `/metrics`, `/ready` and `/live`), registration
//! under a lease, the assignment reconciler, readiness, and a graceful stop.

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use quiver_cluster::{
    model::{now_rfc3339, Capacity, SearcherRecord},
    telemetry::Readiness,
    ClusterView, EtcdStore, KeySchema, MetadataStore, Registration,
};
use quiver_proto::v1::searcher_server::SearcherServer;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::transport::server::TcpIncoming;

use crate::{
    error::{Error, Result},
    fault::{FaultConfig, FaultInjecting},
    grpc::SearcherGrpc,
    node::SearcherNode,
    reconcile::Reconciler,
    status::StatusPublisher,
    storage::wal::{WalOptions, WalSync},
};

#[derive(Debug, Clone)]
pub struct SearcherConfig {
    /// Stable identity; when absent, read from (or first written to) `<data_dir>/searcher-id`.
    pub id: Option<String>,
    /// The address other processes dial, e.g. `http://10.0.0.7:7100`. When absent it is
    /// derived from the bound address, which must then be a specific IP.
    pub advertise_address: Option<String>,
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
    pub data_dir: PathBuf,
    pub lease_ttl: Duration,
    pub etcd_timeout: Duration,
    /// Written with the advertised address once the Searcher is registered and serving.
    pub ready_file: Option<PathBuf>,
    /// TEST ONLY: faults to inject into search calls; the default injects none.
    pub faults: FaultConfig,
    /// When the write-ahead log is fsynced, and its segment size.
    pub wal: WalOptions,
    /// How long replicas stay DRAINING (still answering) before they close, so Mergers stop
    /// routing to them first: on a graceful stop and when a replica moves away.
    pub drain_grace: Duration,
    /// Matching points up to which a filtered search scans them exactly rather than
    /// searching the vector index; 0 picks by dimension
    /// ([`quiver_index::filtered::default_exact_threshold`]).
    pub filter_exact_threshold: u64,
}

/// Serves until `shutdown` completes, then stops gracefully: announces every replica
/// DRAINING so Mergers stop routing here, finishes requests in flight, removes its keys from
/// etcd, and snapshots every replica.
pub async fn run(
    config: SearcherConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let (data_dir_lock, searcher_id) = prepare_data_dir(&config)?;
    config.faults.validate()?;
    let bound = listener
        .local_addr()
        .map_err(|error| Error::Internal(format!("listener has no local address: {error}")))?;
    let advertise_address = advertised(&config, bound)?;

    let store: Arc<dyn MetadataStore> =
        Arc::new(EtcdStore::connect(&config.etcd_endpoints, config.etcd_timeout).await?);
    let schema = KeySchema::new(&config.etcd_prefix);
    let view = ClusterView::start(Arc::clone(&store), schema.clone()).await?;
    let node = Arc::new(
        SearcherNode::with_wal_options(searcher_id.clone(), config.data_dir.clone(), config.wal)
            .with_filter_exact_threshold(config.filter_exact_threshold),
    );
    let server = serve_grpc(&config, &node, &searcher_id, listener).await?;
    let lease_file = config.data_dir.join("lease");
    let registration = register(
        &store,
        &schema,
        &searcher_id,
        &advertise_address,
        &config,
        &lease_file,
    )
    .await?;
    let background = Background::start(
        &config,
        &node,
        &store,
        &view,
        schema,
        &registration,
        &server.readiness,
    );
    // The ready file means "registered and serving" (what scripts and tests wait for);
    // readiness (the named health service, `/ready`) also waits for every assigned replica
    // to be ACTIVE, see `readiness`.
    if let Some(ready_file) = &config.ready_file {
        quiver_cluster::telemetry::write_ready_file(ready_file, &advertise_address).map_err(
            |source| Error::Storage {
                path: ready_file.display().to_string(),
                source,
            },
        )?;
    }

    shutdown.await;
    tracing::info!("searcher stopping");
    background.stop(config.drain_grace, &server.readiness).await;
    server.stop().await;
    release_registration(registration).await;
    let _ = std::fs::remove_file(&lease_file);
    checkpoint_all(&node).await;
    drop(data_dir_lock);
    tracing::info!("searcher stopped");
    Ok(())
}

/// Makes the data dir ready for this process: creates it, locks it, clears what a previous
/// process left behind, and reads (or first writes) the Searcher's id. Answers the lock,
/// held for the life of the process, and the id.
fn prepare_data_dir(config: &SearcherConfig) -> Result<(std::fs::File, String)> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::Storage {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    // Two processes on one data dir would corrupt each other's logs; the lock also lets a
    // restart take over the previous process's lease without waiting for it to expire.
    let data_dir_lock = lock_data_dir(&config.data_dir)?;
    sweep_trash(&config.data_dir);
    let _ = std::fs::remove_dir_all(config.data_dir.join("staging"));
    let searcher_id = match &config.id {
        Some(id) => id.clone(),
        None => load_or_create_id(&config.data_dir)?,
    };
    quiver_cluster::keys::validate_name("searcher id", &searcher_id)?;
    Ok((data_dir_lock, searcher_id))
}

/// The gRPC server task, and how to stop it.
struct GrpcServer {
    task: JoinHandle<std::result::Result<(), tonic::transport::Error>>,
    stop: watch::Sender<bool>,
    /// The named health service and `/ready`; NOT_SERVING until registered.
    readiness: Readiness,
}

impl GrpcServer {
    /// Lets in-flight requests finish and refuses new connections.
    async fn stop(self) {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "grpc server ended with an error"),
            Err(error) => tracing::warn!(%error, "grpc server task failed"),
        }
    }
}

/// Serves the Searcher API on `listener`, with the standard health and reflection services,
/// `/metrics`, `/ready` and `/live`.
async fn serve_grpc(
    config: &SearcherConfig,
    node: &Arc<SearcherNode>,
    searcher_id: &str,
    listener: TcpListener,
) -> Result<GrpcServer> {
    crate::metrics::register_all();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = Readiness::new(
        health_reporter,
        <SearcherServer<SearcherGrpc> as tonic::server::NamedService>::NAME,
        "not registered in etcd yet",
    )
    .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quiver_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| Error::Internal(format!("reflection service: {error}")))?;
    let mut service: Arc<dyn crate::service::SearcherService> = Arc::clone(node) as _;
    if config.faults.is_enabled() {
        tracing::warn!(
            delay_ms = config.faults.delay.as_millis() as u64,
            delay_fraction = config.faults.delay_fraction,
            fail_fraction = config.faults.fail_fraction,
            "TEST-ONLY fault injection is enabled: searches will be delayed or failed on purpose"
        );
        service = Arc::new(FaultInjecting::new(service, &config.faults));
    }
    let searcher_service = SearcherServer::new(SearcherGrpc::new(service, searcher_id.to_string()))
        .max_decoding_message_size(quiver_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(quiver_proto::MAX_MESSAGE_BYTES);

    let (stop, mut server_stop_signal) = watch::channel(false);
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tower::util::MapResponseLayer::new(
                quiver_proto::oversized_message_as_resource_exhausted,
            ))
            // The Merger's request id, when a call carries one, on a span around the call.
            .layer(quiver_cluster::request_id::RequestIdLayer::passing())
            // Ignored for a listener handed in (tonic applies it only to addresses it binds
            // itself): the accepted sockets get TCP_NODELAY from TcpIncoming below. Without it
            // Nagle's algorithm holds a response behind the peer's delayed ACK, 40 ms a call.
            .tcp_nodelay(true)
            // HTTP/1 is for Prometheus scraping /metrics; gRPC stays on HTTP/2.
            .accept_http1(true)
            .add_routes(quiver_cluster::telemetry::with_http_routes(
                tonic::service::Routes::new(health_service)
                    .add_service(reflection)
                    .add_service(searcher_service),
                readiness.clone(),
            ))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move {
                    let _ = server_stop_signal.wait_for(|stop| *stop).await;
                },
            ),
    );
    Ok(GrpcServer {
        task,
        stop,
        readiness,
    })
}

/// Registers this Searcher in etcd under a lease, taking over the lease a previous process
/// on this data dir left in `lease_file`, and remembers the new one there.
async fn register(
    store: &Arc<dyn MetadataStore>,
    schema: &KeySchema,
    searcher_id: &str,
    advertise_address: &str,
    config: &SearcherConfig,
    lease_file: &Path,
) -> Result<Arc<Registration>> {
    let record = SearcherRecord {
        id: searcher_id.to_string(),
        address: advertise_address.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: now_rfc3339(),
        capacity: Capacity {
            cpus: std::thread::available_parallelism()
                .map(|count| count.get() as u32)
                .unwrap_or(1),
            memory_bytes: total_memory_bytes(),
        },
    };
    let previous_lease = std::fs::read_to_string(lease_file)
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok());
    let registration = Arc::new(
        Registration::register(
            Arc::clone(store),
            schema.clone(),
            record,
            config.lease_ttl,
            previous_lease,
        )
        .await?,
    );
    if let Err(error) = std::fs::write(lease_file, format!("{}\n", registration.lease_id())) {
        tracing::warn!(%error, "could not remember the lease; a restart will wait for it to expire");
    }
    tracing::info!(searcher_id = %searcher_id, address = %advertise_address, "searcher registered");
    Ok(registration)
}

/// Revokes the lease, so this Searcher's keys vanish at once.
async fn release_registration(registration: Arc<Registration>) {
    match Arc::try_unwrap(registration) {
        Ok(registration) => {
            if let Err(error) = registration.shutdown().await {
                tracing::warn!(%error, "could not revoke the lease; keys expire with it");
            }
        }
        Err(_) => tracing::warn!("registration still shared at stop; keys expire with the lease"),
    }
}

/// The tasks that run beside the server while the Searcher is registered.
struct Background {
    stop_reconciler: watch::Sender<bool>,
    readiness_follower: JoinHandle<()>,
    publisher: JoinHandle<()>,
    reconciler: JoinHandle<Reconciler>,
    log_syncer: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts readiness, the status publisher, the reconciler and, with the `interval` log
    /// policy, the log syncer.
    fn start(
        config: &SearcherConfig,
        node: &Arc<SearcherNode>,
        store: &Arc<dyn MetadataStore>,
        view: &ClusterView,
        schema: KeySchema,
        registration: &Arc<Registration>,
        readiness: &Readiness,
    ) -> Background {
        let searcher_id = node.id().to_string();
        let (stop_reconciler, reconciler_stop_signal) = watch::channel(false);
        let readiness_follower = tokio::spawn(crate::readiness::follow(
            view.clone(),
            searcher_id,
            readiness.clone(),
            reconciler_stop_signal.clone(),
        ));
        let (publisher, status) = StatusPublisher::new(
            Arc::clone(node),
            view.clone(),
            Arc::clone(registration),
            schema.clone(),
            config.faults.boot_gate.clone(),
        );
        let publisher = tokio::spawn(publisher.run());
        let reconciler = tokio::spawn(
            Reconciler::new(
                Arc::clone(node),
                Arc::clone(store),
                view.clone(),
                status,
                schema,
                config.drain_grace,
            )
            .run(reconciler_stop_signal),
        );
        let log_syncer = match config.wal.sync {
            WalSync::Interval(period) => {
                Some(tokio::spawn(sync_logs_every(Arc::clone(node), period)))
            }
            _ => None,
        };
        Background {
            stop_reconciler,
            readiness_follower,
            publisher,
            reconciler,
            log_syncer,
        }
    }

    /// Reports NOT_SERVING, drains every replica and waits out the drain grace, then stops
    /// the status publisher (which lets go of the registration) and the log syncer.
    async fn stop(self, drain_grace: Duration, readiness: &Readiness) {
        let _ = self.stop_reconciler.send(true);
        let _ = self.readiness_follower.await;
        readiness.set(false, "stopping").await;
        if let Ok(mut reconciler) = self.reconciler.await {
            reconciler.drain_all().await;
            drop(reconciler);
            tokio::time::sleep(drain_grace).await;
        }
        // Its last handle went with the reconciler: it stops, and lets go of the registration.
        let _ = self.publisher.await;
        if let Some(syncer) = self.log_syncer {
            syncer.abort();
        }
    }
}

/// Fsyncs every replica's log each `period` (the `interval` log policy).
async fn sync_logs_every(node: Arc<SearcherNode>, period: Duration) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for ((collection, shard), hosted) in node.hosted() {
            let Some(replica) = hosted.replica else {
                continue;
            };
            match tokio::task::spawn_blocking(move || replica.sync_log()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%collection, shard, %error, "log fsync failed"),
                Err(error) => tracing::error!(%collection, shard, %error, "log fsync task failed"),
            }
        }
    }
}

/// Takes an exclusive lock on `<data_dir>/LOCK` for the life of the process.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File> {
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| Error::Storage {
            path: path.display().to_string(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::InvalidArgument(format!(
            "data dir {} is in use by another Searcher process",
            data_dir.display()
        ))),
        Err(std::fs::TryLockError::Error(source)) => Err(Error::Storage {
            path: path.display().to_string(),
            source,
        }),
    }
}

async fn checkpoint_all(node: &Arc<SearcherNode>) {
    for ((collection, shard), hosted) in node.hosted() {
        let Some(replica) = hosted.replica else {
            continue;
        };
        match tokio::task::spawn_blocking(move || replica.checkpoint()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%collection, shard, %error, "checkpoint at stop failed; the log still holds every write")
            }
            Err(error) => tracing::warn!(%collection, shard, %error, "checkpoint task failed"),
        }
    }
}

/// Removes replica directories a crash left behind between their rename and deletion.
fn sweep_trash(data_dir: &Path) {
    let Ok(collections) = std::fs::read_dir(data_dir.join("collections")) else {
        return;
    };
    for collection in collections.flatten() {
        let Ok(entries) = std::fs::read_dir(collection.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".trash-") {
                if let Err(error) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), %error, "could not remove leftover replica files");
                }
            }
        }
    }
}

fn advertised(config: &SearcherConfig, bound: SocketAddr) -> Result<String> {
    if let Some(address) = &config.advertise_address {
        return Ok(if address.contains("://") {
            address.clone()
        } else {
            format!("http://{address}")
        });
    }
    if bound.ip().is_unspecified() {
        return Err(Error::InvalidArgument(format!(
            "listening on {bound} (all interfaces): pass --advertise-address with the address other processes should dial"
        )));
    }
    Ok(format!("http://{bound}"))
}

fn load_or_create_id(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("searcher-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Storage {
                path: path.display().to_string(),
                source,
            })
        }
    }
    let id = format!(
        "searcher-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    std::fs::write(&path, format!("{id}\n")).map_err(|source| Error::Storage {
        path: path.display().to_string(),
        source,
    })?;
    Ok(id)
}

fn total_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}
