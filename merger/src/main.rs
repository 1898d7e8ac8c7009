use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use quiver_merger::{fanout::HedgeConfig, run, MergerConfig, MergerServerConfig};

/// Quiver Merger: the gRPC service clients call. Stateless; run as many as you like.
#[derive(Debug, Parser)]
#[command(name = "quiver-merger", version)]
struct Args {
    /// Address to listen on for gRPC.
    #[arg(long, env = "QUIVER_LISTEN", default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "QUIVER_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    etcd_endpoints: Vec<String>,
    /// Prefix of every key Quiver keeps in etcd.
    #[arg(long, env = "QUIVER_ETCD_PREFIX", default_value = "/quiver/")]
    etcd_prefix: String,
    /// Deadline of each etcd call, in milliseconds.
    #[arg(long, env = "QUIVER_ETCD_TIMEOUT_MS", default_value_t = 5000)]
    etcd_timeout_ms: u64,
    /// Deadline of a search that sets none, in milliseconds.
    #[arg(long, env = "QUIVER_SEARCH_TIMEOUT_MS", default_value_t = 10_000)]
    search_timeout_ms: u64,
    /// Deadline of a write or get that sets none, in milliseconds.
    #[arg(long, env = "QUIVER_WRITE_TIMEOUT_MS", default_value_t = 30_000)]
    write_timeout_ms: u64,
    /// Hedge slow Searcher calls: send the shards of a call that has not answered within
    /// its hedge delay to a second replica; the first answer wins, the other is cancelled.
    /// `--hedging false` turns it off.
    #[arg(long, env = "QUIVER_HEDGING", default_value_t = true, action = clap::ArgAction::Set)]
    hedging: bool,
    /// A fixed hedge delay in milliseconds instead of the adaptive one (a percentile of
    /// recent Searcher latencies, see --hedge-percentile).
    #[arg(long, env = "QUIVER_HEDGE_AFTER_MS")]
    hedge_after_ms: Option<u64>,
    /// The adaptive hedge delay: this percentile of recent answer latencies, the lower of
    /// the called Searcher's own and all Searchers' together.
    #[arg(long, env = "QUIVER_HEDGE_PERCENTILE", default_value_t = 95.0)]
    hedge_percentile: f64,
    /// The shortest adaptive hedge delay, in milliseconds.
    #[arg(long, env = "QUIVER_HEDGE_MIN_DELAY_MS", default_value_t = 2)]
    hedge_min_delay_ms: u64,
    /// Replicas per shard (its primary included) that must hold a write before it is
    /// acknowledged, unless a request names its own: `majority` (of the replication
    /// factor), `all`, or a count.
    #[arg(long, env = "QUIVER_WRITE_QUORUM", default_value = "majority")]
    write_quorum: quiver_merger::service::WriteQuorum,
    /// Write the bound address to this file once serving.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "QUIVER_LOG_JSON")]
    log_json: bool,
    /// Threads running the async work (gRPC serving, fan-out); default: one per core. Each
    /// search hops between several tasks (server stream, fan-out, client connection), and
    /// hops across threads cost latency, so fewer workers can answer a lone search sooner;
    /// measure before relying on it (docs/benchmarks.md). Big merges run on a separate
    /// blocking pool either way.
    #[arg(long, env = "QUIVER_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Run the placement controller (one Merger leads it at a time, elected in etcd):
    /// promotes new primaries, and moves and restores replicas as Searchers come and go.
    /// `--controller false` leaves it to the other Mergers.
    #[arg(long, env = "QUIVER_CONTROLLER", default_value_t = true, action = clap::ArgAction::Set)]
    controller: bool,
    /// This Merger's name in the controller election; default `merger-<host>-<random>`.
    #[arg(long, env = "QUIVER_MERGER_ID")]
    merger_id: Option<String>,
    /// How long a Searcher may be gone before the controller rebuilds its replicas on
    /// other Searchers (a restart within this time moves no data), in milliseconds.
    #[arg(long, env = "QUIVER_REBALANCE_DELAY_MS", default_value_t = 30_000)]
    rebalance_delay_ms: u64,
    /// The controller leader's lease TTL in seconds: how long a crashed leader keeps the
    /// role before another Merger takes over.
    #[arg(long, env = "QUIVER_CONTROLLER_TTL_SECS", default_value_t = 10)]
    controller_ttl_secs: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.worker_threads {
        anyhow::ensure!(threads > 0, "--worker-threads must be at least 1");
        runtime.worker_threads(threads);
    }
    runtime.enable_all().build()?.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    quiver_cluster::telemetry::init_logging(args.log_json);
    anyhow::ensure!(
        args.hedge_percentile > 0.0 && args.hedge_percentile <= 100.0,
        "--hedge-percentile must be above 0 and at most 100"
    );
    let hedging = HedgeConfig {
        enabled: args.hedging,
        fixed_delay: args.hedge_after_ms.map(Duration::from_millis),
        percentile: args.hedge_percentile,
        min_delay: Duration::from_millis(args.hedge_min_delay_ms),
        ..HedgeConfig::default()
    };
    tracing::info!(?hedging, "search hedging");
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let config = MergerServerConfig {
        etcd_endpoints: args.etcd_endpoints,
        etcd_prefix: args.etcd_prefix,
        etcd_timeout: Duration::from_millis(args.etcd_timeout_ms),
        merger: MergerConfig {
            search_timeout: Duration::from_millis(args.search_timeout_ms),
            write_timeout: Duration::from_millis(args.write_timeout_ms),
            write_quorum: args.write_quorum,
            hedging,
            ..MergerConfig::default()
        },
        ready_file: args.ready_file,
        controller: args.controller.then(|| {
            let mut controller = quiver_cluster::ControllerConfig::new(
                args.merger_id.clone().unwrap_or_else(default_merger_id),
            );
            controller.rebalance_delay = Duration::from_millis(args.rebalance_delay_ms);
            controller.election_ttl = Duration::from_secs(args.controller_ttl_secs.max(1));
            controller
        }),
    };
    run(
        config,
        listener,
        quiver_cluster::telemetry::shutdown_signal(),
    )
    .await?;
    Ok(())
}

fn default_merger_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "host".to_string());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("merger-{host}-{suffix}")
}
