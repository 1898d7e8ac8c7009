use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use quiver_searcher::{fault::FaultConfig, run, SearcherConfig};

/// Quiver Searcher: hosts shard replicas of collections and registers itself in etcd.
#[derive(Debug, Parser)]
#[command(name = "quiver-searcher", version)]
struct Args {
    /// Address to listen on for gRPC.
    #[arg(long, env = "QUIVER_LISTEN", default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// Address Mergers dial (host:port or http://host:port); defaults to the bound address.
    #[arg(long, env = "QUIVER_ADVERTISE_ADDRESS")]
    advertise_address: Option<String>,
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "QUIVER_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    etcd_endpoints: Vec<String>,
    /// Prefix of every key Quiver writes in etcd.
    #[arg(long, env = "QUIVER_ETCD_PREFIX", default_value = "/quiver/")]
    etcd_prefix: String,
    /// Where replicas keep their files.
    #[arg(long, env = "QUIVER_DATA_DIR", default_value = "./quiver-data")]
    data_dir: PathBuf,
    /// Searcher id; defaults to one generated once and kept in the data dir.
    #[arg(long, env = "QUIVER_SEARCHER_ID")]
    id: Option<String>,
    /// Lease TTL in seconds: a Searcher that stops answering vanishes from etcd this long after.
    #[arg(long, env = "QUIVER_LEASE_TTL_SECS", default_value_t = 10)]
    lease_ttl_secs: u64,
    /// Deadline of each etcd call, in milliseconds.
    #[arg(long, env = "QUIVER_ETCD_TIMEOUT_MS", default_value_t = 5000)]
    etcd_timeout_ms: u64,
    /// Write the advertised address to this file once registered and serving.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// When the write-ahead log is fsynced: `always` (before every write is acknowledged),
    /// `interval:<ms>` (at most that long after; a power loss may lose the last writes), or
    /// `never` (left to the OS; survives a process crash, not a power loss).
    #[arg(long, env = "QUIVER_WAL_SYNC", default_value = "always")]
    wal_sync: quiver_searcher::WalSync,
    /// Size at which the write-ahead log starts a new segment, in MiB.
    #[arg(long, env = "QUIVER_WAL_SEGMENT_MIB", default_value_t = 64)]
    wal_segment_mib: u64,
    /// How long replicas stay DRAINING, still answering, before they close (on SIGTERM and
    /// when a replica moves away), so Mergers stop routing to them first.
    #[arg(long, env = "QUIVER_DRAIN_GRACE_MS", default_value_t = 1000)]
    drain_grace_ms: u64,
    /// Matching points up to which a filtered search scores them exactly instead of
    /// searching the vector index; 0 picks by dimension (4096 up to 128 dimensions, less
    /// above, at least 1024). Filters passing under 1% of a shard are scanned exactly up to
    /// 256 times this.
    #[arg(long, env = "QUIVER_FILTER_EXACT_THRESHOLD", default_value_t = 0)]
    filter_exact_threshold: u64,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "QUIVER_LOG_JSON")]
    log_json: bool,
    /// TEST ONLY (fault injection): delay this many milliseconds before answering a search.
    #[arg(long, env = "QUIVER_FAULT_DELAY_MS", default_value_t = 0)]
    fault_delay_ms: u64,
    /// TEST ONLY (fault injection): the fraction (0 to 1) of searches that are delayed.
    #[arg(long, env = "QUIVER_FAULT_DELAY_FRACTION", default_value_t = 1.0)]
    fault_delay_fraction: f64,
    /// TEST ONLY (fault injection): the fraction (0 to 1) of searches that fail with
    /// UNAVAILABLE. Hits are evenly spread and deterministic (1.0: every search).
    #[arg(long, env = "QUIVER_FAULT_FAIL_FRACTION", default_value_t = 0.0)]
    fault_fail_fraction: f64,
    /// TEST ONLY (fault injection): while this file exists, replicas are reported BOOTING
    /// instead of ACTIVE (the Searcher stays not ready); remove it to let them turn ACTIVE.
    #[arg(long, env = "QUIVER_FAULT_BOOT_GATE")]
    fault_boot_gate: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    quiver_cluster::telemetry::init_logging(args.log_json);
    anyhow::ensure!(
        args.lease_ttl_secs >= 2,
        "--lease-ttl-secs must be at least 2"
    );
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let config = SearcherConfig {
        id: args.id,
        advertise_address: args.advertise_address,
        etcd_endpoints: args.etcd_endpoints,
        etcd_prefix: args.etcd_prefix,
        data_dir: args.data_dir,
        lease_ttl: Duration::from_secs(args.lease_ttl_secs),
        etcd_timeout: Duration::from_millis(args.etcd_timeout_ms),
        ready_file: args.ready_file,
        faults: FaultConfig {
            delay: Duration::from_millis(args.fault_delay_ms),
            delay_fraction: args.fault_delay_fraction,
            fail_fraction: args.fault_fail_fraction,
            boot_gate: args.fault_boot_gate,
        },
        wal: quiver_searcher::WalOptions {
            sync: args.wal_sync,
            segment_bytes: args.wal_segment_mib.max(1) << 20,
        },
        drain_grace: Duration::from_millis(args.drain_grace_ms),
        filter_exact_threshold: args.filter_exact_threshold,
    };
    run(
        config,
        listener,
        quiver_cluster::telemetry::shutdown_signal(),
    )
    .await?;
    Ok(())
}
