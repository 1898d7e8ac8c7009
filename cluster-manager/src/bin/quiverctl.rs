//! quiverctl: administer a Quiver cluster through a Merger, and load or query benchmark data.

use std::{
    collections::HashSet,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use quiver_index::dataset::{self, Vectors};
use quiver_proto::v1::{
    merger_client::MergerClient, ClusterStatusRequest, CollectionConfig, CollectionDescription,
    CreateCollectionRequest, DescribeCollectionRequest, DropCollectionRequest,
    ListCollectionsRequest, Metric, Point, ReplicaState, SearchRequest, UpsertRequest, Vector,
};
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(
    name = "quiverctl",
    version,
    about = "Administer a Quiver cluster through a Merger"
)]
struct Args {
    /// The Merger's gRPC address.
    #[arg(
        long,
        env = "QUIVER_MERGER",
        default_value = "http://127.0.0.1:7000",
        global = true
    )]
    merger: String,
    /// Deadline of each call, in seconds.
    #[arg(long, default_value_t = 60, global = true)]
    timeout_secs: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a collection.
    Create {
        name: String,
        #[arg(long)]
        dimension: u32,
        /// l2, ip or cosine.
        #[arg(long, default_value = "l2")]
        metric: String,
        #[arg(long, default_value_t = 1)]
        shards: u32,
        #[arg(long, default_value_t = 1)]
        replication_factor: u32,
        #[arg(long, default_value = "flat")]
        index: String,
    },
    /// Drop a collection and its data.
    Drop { name: String },
    /// List collections.
    List,
    /// Show a collection's shards and replicas.
    Describe { name: String },
    /// Show live Searchers and collection health.
    Status,
    /// Upsert every vector of an .fvecs file; point ids are the row numbers.
    Load {
        name: String,
        #[arg(long)]
        fvecs: PathBuf,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Search with every vector of an .fvecs file and report recall against ground truth.
    Search {
        name: String,
        #[arg(long)]
        queries: PathBuf,
        /// .ivecs ground truth (row numbers of the base file).
        #[arg(long)]
        groundtruth: Option<PathBuf>,
        #[arg(long, default_value_t = 10)]
        k: u32,
        /// Queries per request.
        #[arg(long, default_value_t = 50)]
        batch: usize,
        /// How many queries' neighbours to print.
        #[arg(long, default_value_t = 1)]
        show: usize,
        /// Accept answers from at least this fraction of the shards (0 to 1; the server's
        /// default is 1: every shard, or an error).
        #[arg(long)]
        min_coverage: Option<f32>,
    },
    /// Write a synthetic data set (base, queries, exact L2 ground truth) in the .fvecs/.ivecs
    /// layout, for trying Quiver where no real data set is at hand.
    GenerateData {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        base: usize,
        #[arg(long, default_value_t = 100)]
        queries: usize,
        #[arg(long, default_value_t = 128)]
        dimension: usize,
        #[arg(long, default_value_t = 100)]
        k: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let timeout = Duration::from_secs(args.timeout_secs);
    if let Command::GenerateData {
        out,
        base,
        queries,
        dimension,
        k,
    } = &args.command
    {
        return generate_data(out, *base, *queries, *dimension, *k);
    }
    let channel = Channel::from_shared(args.merger.clone())
        .context("invalid --merger address")?
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot reach the merger at {}", args.merger))?;
    let mut client = MergerClient::new(channel)
        .max_decoding_message_size(quiver_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(quiver_proto::MAX_MESSAGE_BYTES);

    match args.command {
        Command::Create {
            name,
            dimension,
            metric,
            shards,
            replication_factor,
            index,
        } => {
            let metric = match metric.parse::<quiver_index::Metric>()? {
                quiver_index::Metric::L2 => Metric::L2,
                quiver_index::Metric::InnerProduct => Metric::InnerProduct,
                quiver_index::Metric::Cosine => Metric::Cosine,
            };
            let response = client
                .create_collection(CreateCollectionRequest {
                    config: Some(CollectionConfig {
                        name,
                        dimension,
                        metric: metric as i32,
                        num_shards: shards,
                        replication_factor,
                        index_spec: index,
                    }),
                })
                .await?
                .into_inner();
            if let Some(collection) = response.collection {
                print_description(&collection);
            }
        }
        Command::Drop { name } => {
            client
                .drop_collection(DropCollectionRequest { name: name.clone() })
                .await?;
            println!("dropped {name}");
        }
        Command::List => {
            let response = client
                .list_collections(ListCollectionsRequest {})
                .await?
                .into_inner();
            println!(
                "{:<24} {:>9} {:<7} {:>6} {:>3} index",
                "name", "dimension", "metric", "shards", "rf"
            );
            for config in response.collections {
                println!(
                    "{:<24} {:>9} {:<7} {:>6} {:>3} {}",
                    config.name,
                    config.dimension,
                    metric_name(config.metric),
                    config.num_shards,
                    config.replication_factor,
                    config.index_spec
                );
            }
        }
        Command::Describe { name } => {
            let response = client
                .describe_collection(DescribeCollectionRequest { name })
                .await?
                .into_inner();
            if let Some(collection) = response.collection {
                print_description(&collection);
            }
        }
        Command::Status => {
            let status = client
                .cluster_status(ClusterStatusRequest {})
                .await?
                .into_inner();
            println!("etcd revision {}", status.revision);
            println!(
                "{:<22} {:<28} {:>8}  started",
                "searcher", "address", "replicas"
            );
            for searcher in status.searchers {
                println!(
                    "{:<22} {:<28} {:>8}  {}",
                    searcher.id, searcher.address, searcher.replica_count, searcher.started_at
                );
            }
            println!(
                "{:<24} {:>6} {:>8} {:>17}",
                "collection", "shards", "serving", "fully replicated"
            );
            for collection in status.collections {
                println!(
                    "{:<24} {:>6} {:>8} {:>17}",
                    collection.name,
                    collection.num_shards,
                    collection.serving_shards,
                    collection.fully_replicated_shards
                );
            }
        }
        Command::Load { name, fvecs, batch } => {
            let base = dataset::read_fvecs(&fvecs)
                .with_context(|| format!("reading {}", fvecs.display()))?;
            load(&mut client, &name, &base, batch.max(1)).await?;
        }
        Command::Search {
            name,
            queries,
            groundtruth,
            k,
            batch,
            show,
            min_coverage,
        } => {
            let queries = dataset::read_fvecs(&queries)
                .with_context(|| format!("reading {}", queries.display()))?;
            let truth = match &groundtruth {
                Some(path) => Some(
                    dataset::read_ivecs(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                ),
                None => None,
            };
            search(
                &mut client,
                &name,
                &queries,
                truth.as_deref(),
                SearchOptions {
                    k,
                    batch: batch.max(1),
                    show,
                    min_coverage,
                },
            )
            .await?;
        }
        Command::GenerateData { .. } => unreachable!("handled before connecting"),
    }
    Ok(())
}

async fn load(
    client: &mut MergerClient<Channel>,
    name: &str,
    base: &Vectors,
    batch: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut written = 0usize;
    let mut failed_replicas = 0usize;
    for (batch_number, rows) in (0..base.len())
        .collect::<Vec<_>>()
        .chunks(batch)
        .enumerate()
    {
        let points = rows
            .iter()
            .map(|row| Point {
                id: row.to_string(),
                vector: base.row(*row).to_vec(),
                payload_json: format!(r#"{{"row":{row}}}"#),
            })
            .collect();
        let response = client
            .upsert(UpsertRequest {
                collection: name.to_string(),
                points,
                ..Default::default()
            })
            .await
            .with_context(|| format!("upsert batch {batch_number}"))?
            .into_inner();
        written += response.upserted as usize;
        failed_replicas += response.failed_replicas.len();
        for failure in response.failed_replicas {
            eprintln!(
                "warning: replica of shard {} on {} missed a write: {} {}",
                failure.shard, failure.searcher_id, failure.code, failure.message
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "upserted {written} points into {name} in {seconds:.2}s ({:.0} points/s); replica write failures: {failed_replicas}",
        written as f64 / seconds.max(1e-9)
    );
    Ok(())
}

/// How `quiverctl search` queries.
struct SearchOptions {
    k: u32,
    /// Queries per request.
    batch: usize,
    /// How many queries' neighbours to print.
    show: usize,
    min_coverage: Option<f32>,
}

async fn search(
    client: &mut MergerClient<Channel>,
    name: &str,
    queries: &Vectors,
    truth: Option<&[Vec<u32>]>,
    options: SearchOptions,
) -> anyhow::Result<()> {
    let SearchOptions {
        k,
        batch,
        show,
        min_coverage,
    } = options;
    let started = Instant::now();
    let mut found: Vec<Vec<u64>> = Vec::with_capacity(queries.len());
    let mut partial_responses = 0usize;
    let rows: Vec<usize> = (0..queries.len()).collect();
    for chunk in rows.chunks(batch) {
        let response = client
            .search(SearchRequest {
                collection: name.to_string(),
                queries: chunk
                    .iter()
                    .map(|row| Vector {
                        values: queries.row(*row).to_vec(),
                    })
                    .collect(),
                k,
                with_payloads: true,
                min_coverage,
                ..SearchRequest::default()
            })
            .await
            .context("search")?
            .into_inner();
        if response.partial {
            partial_responses += 1;
            eprintln!(
                "warning: only {} of {} shards answered (coverage {:.2})",
                response.shards_answered, response.shards_total, response.coverage
            );
            for failure in &response.failed_shards {
                eprintln!(
                    "  shard {} on {}: {} {}",
                    failure.shard, failure.searcher_id, failure.code, failure.message
                );
            }
        }
        for (offset, result) in response.results.iter().enumerate() {
            let query_number = chunk[offset];
            if query_number < show {
                println!("query {query_number}: top {k} neighbours");
                println!("{:>4}  {:>8}  {:>14}  payload", "rank", "id", "score");
                for (rank, neighbor) in result.neighbors.iter().enumerate() {
                    println!(
                        "{:>4}  {:>8}  {:>14.2}  {}",
                        rank + 1,
                        neighbor.id,
                        neighbor.score,
                        neighbor.payload_json
                    );
                }
            }
            found.push(
                result
                    .neighbors
                    .iter()
                    .map(|neighbor| neighbor.id.parse::<u64>().unwrap_or(u64::MAX))
                    .collect(),
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "searched {} queries (k = {k}) in {seconds:.2}s ({:.0} queries/s); partial responses: {partial_responses}",
        queries.len(),
        queries.len() as f64 / seconds.max(1e-9)
    );
    if let Some(truth) = truth {
        let recall = dataset::recall_at_k(&found, truth, k as usize);
        println!("recall@{k} against the ground truth: {recall:.3}");
    }
    Ok(())
}

fn metric_name(metric: i32) -> &'static str {
    match Metric::try_from(metric) {
        Ok(metric) => metric.as_config_str(),
        Err(_) => "?",
    }
}

fn state_name(state: i32) -> &'static str {
    match ReplicaState::try_from(state) {
        Ok(ReplicaState::Offline) => "OFFLINE",
        Ok(ReplicaState::Booting) => "BOOTING",
        Ok(ReplicaState::Active) => "ACTIVE",
        Ok(ReplicaState::Draining) => "DRAINING",
        _ => "UNKNOWN",
    }
}

fn print_description(collection: &CollectionDescription) {
    if let Some(config) = &collection.config {
        println!(
            "collection {}: dimension {}, metric {}, {} shards, replication factor {}, index {}",
            config.name,
            config.dimension,
            metric_name(config.metric),
            config.num_shards,
            config.replication_factor,
            config.index_spec
        );
    }
    println!(
        "{:>5}  {:<22} {:<9} {:>8} {:>8}  address",
        "shard", "searcher", "state", "points", "seq"
    );
    for shard in &collection.shards {
        for replica in &shard.replicas {
            println!(
                "{:>5}  {:<22} {:<9} {:>8} {:>8}  {}",
                shard.shard,
                replica.searcher_id,
                state_name(replica.state),
                replica.point_count,
                replica.applied_seq,
                replica.address
            );
        }
    }
}

fn generate_data(
    out: &Path,
    base_count: usize,
    query_count: usize,
    dimension: usize,
    k: usize,
) -> anyhow::Result<()> {
    if base_count == 0 || query_count == 0 || dimension == 0 || k == 0 || k > base_count {
        bail!("need base, queries, dimension >= 1 and 1 <= k <= base");
    }
    std::fs::create_dir_all(out)?;
    let base = dataset::synthetic(base_count, dimension, 1);
    let queries = dataset::synthetic(query_count, dimension, 2);
    let truth = dataset::ground_truth(&base, &queries, k, quiver_index::Metric::L2);
    write_vectors(&out.join("base.fvecs"), &base)?;
    write_vectors(&out.join("query.fvecs"), &queries)?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(out.join("groundtruth.ivecs"))?);
    for row in &truth {
        file.write_all(&(row.len() as i32).to_le_bytes())?;
        for id in row {
            file.write_all(&(*id as i32).to_le_bytes())?;
        }
    }
    file.flush()?;
    let distinct: HashSet<u64> = truth.iter().flatten().copied().collect();
    println!(
        "wrote {base_count} base vectors, {query_count} queries and top-{k} ground truth ({} distinct ids) of dimension {dimension} to {}",
        distinct.len(),
        out.display()
    );
    Ok(())
}

fn write_vectors(path: &Path, vectors: &Vectors) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for row in vectors.rows() {
        file.write_all(&(row.len() as i32).to_le_bytes())?;
        for value in row {
            file.write_all(&value.to_le_bytes())?;
        }
    }
    file.flush()?;
    Ok(())
}
