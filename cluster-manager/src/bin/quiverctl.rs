//! quiverctl: administer a Quiver cluster through a Merger, load or query benchmark data, and
//! show the cluster's placement straight from etcd.

use std::{
    collections::HashSet,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use quiver_cluster::{
    model::decode, plan_moves, ClusterState, EtcdStore, KeySchema, LeaderRecord, MetadataStore,
    RebalanceRecord, ReplicaRole,
};
use quiver_index::dataset::{self, Vectors};
use quiver_proto::v1::{
    merger_client::MergerClient, CollectionConfig, CollectionDescription, CreateCollectionRequest,
    DescribeCollectionRequest, DropCollectionRequest, ListCollectionsRequest, Metric, Point,
    ReplicaState, SearchRequest, UpsertRequest, Vector,
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
    /// etcd endpoints, comma-separated (`status` and `rebalance` read etcd directly).
    #[arg(
        long,
        env = "QUIVER_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        global = true
    )]
    etcd_endpoints: Vec<String>,
    /// Prefix of every key Quiver keeps in etcd.
    #[arg(
        long,
        env = "QUIVER_ETCD_PREFIX",
        default_value = "/quiver/",
        global = true
    )]
    etcd_prefix: String,
    /// Deadline of each etcd call, in milliseconds.
    #[arg(
        long,
        env = "QUIVER_ETCD_TIMEOUT_MS",
        default_value_t = 5000,
        global = true
    )]
    etcd_timeout_ms: u64,
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
    /// Show the live Searchers, every replica's role and progress, the placement
    /// controller's leader and the last rebalance, read from etcd.
    Status,
    /// Show how far the placement is from its target over the live Searchers. Rebalances
    /// are applied by the placement controller inside the Mergers; only `--dry-run` is
    /// offered here.
    Rebalance {
        /// List the replicas that would move, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
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
    match &args.command {
        Command::Status => {
            let snapshot = read_snapshot(&args).await?;
            print!("{}", render_status(&snapshot));
            return Ok(());
        }
        Command::Rebalance { dry_run: false } => {
            eprintln!(
                "quiverctl does not apply rebalances: the placement controller inside the \
                 Mergers applies them automatically when Searchers join or leave (see \
                 `quiverctl status` for the last one). `quiverctl rebalance --dry-run` shows \
                 what is still to move."
            );
            std::process::exit(2);
        }
        Command::Rebalance { dry_run: true } => {
            let snapshot = read_snapshot(&args).await?;
            print!(
                "{}",
                render_dry_run(&snapshot.state, &snapshot.state.live_searcher_ids())
            );
            return Ok(());
        }
        _ => {}
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
        Command::GenerateData { .. } | Command::Status | Command::Rebalance { .. } => {
            unreachable!("handled before connecting")
        }
    }
    Ok(())
}

/// What `status` and `rebalance` show: one consistent read of everything under the prefix.
struct Snapshot {
    state: ClusterState,
    leader: Option<LeaderRecord>,
    rebalance: Option<RebalanceRecord>,
}

async fn read_snapshot(args: &Args) -> anyhow::Result<Snapshot> {
    let store = EtcdStore::connect(
        &args.etcd_endpoints,
        Duration::from_millis(args.etcd_timeout_ms.max(1)),
    )
    .await?;
    let schema = KeySchema::new(&args.etcd_prefix);
    let (listed, revision) = store.get_prefix(schema.prefix()).await.with_context(|| {
        format!(
            "cannot read {} from etcd at {}",
            schema.prefix(),
            args.etcd_endpoints.join(",")
        )
    })?;
    let state = ClusterState::from_listing(&schema, &listed, revision);
    let find = |key: String| listed.iter().find(|stored| stored.key == key).cloned();
    let leader = find(schema.controller_leader())
        .map(|stored| decode::<LeaderRecord>(&stored.key, &stored.value))
        .transpose()?;
    let rebalance = find(schema.controller_rebalance())
        .map(|stored| decode::<RebalanceRecord>(&stored.key, &stored.value))
        .transpose()?;
    Ok(Snapshot {
        state,
        leader,
        rebalance,
    })
}

/// A text table: columns padded to their widest cell, two spaces apart, numbers right-aligned.
struct Table {
    headers: Vec<&'static str>,
    right_aligned: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// `columns`: header and whether the column is right-aligned.
    fn new(columns: &[(&'static str, bool)]) -> Table {
        Table {
            headers: columns.iter().map(|(header, _)| *header).collect(),
            right_aligned: columns.iter().map(|(_, right)| *right).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|header| header.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|header| header.to_string())
            .collect();
        let mut text = String::new();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .zip(&self.right_aligned)
                .map(|((cell, width), right)| {
                    if *right {
                        format!("{cell:>width$}")
                    } else {
                        format!("{cell:<width$}")
                    }
                })
                .collect();
            text.push_str(cells.join("  ").trim_end());
            text.push('\n');
        }
        text
    }
}

fn render_status(snapshot: &Snapshot) -> String {
    let state = &snapshot.state;
    let mut text = format!("etcd revision {}\n\n", state.revision);

    let mut searchers = Table::new(&[
        ("searcher", false),
        ("address", false),
        ("version", false),
        ("started", false),
        ("replicas", true),
    ]);
    for (id, searcher) in &state.searchers {
        searchers.row(vec![
            id.clone(),
            searcher.address.clone(),
            searcher.version.clone(),
            searcher.started_at.clone(),
            state.assigned_to(id).len().to_string(),
        ]);
    }
    text.push_str(&searchers.render());

    for (name, collection) in &state.collections {
        text.push_str(&format!(
            "\ncollection {name}: {} shards, replication factor {}, index {}\n",
            collection.num_shards, collection.replication_factor, collection.index_spec
        ));
        let mut replicas = Table::new(&[
            ("collection", false),
            ("shard", true),
            ("searcher", false),
            ("role", false),
            ("state", false),
            ("points", true),
            ("applied seq", true),
            ("epoch", true),
        ]);
        for shard in 0..collection.num_shards {
            let assignment = state.assignment(name, shard);
            let mut hosts: Vec<(String, String)> = assignment
                .map(|assignment| {
                    assignment
                        .members()
                        .map(|id| {
                            let role = match assignment.role_of(id) {
                                Some(ReplicaRole::Primary) => "primary",
                                Some(ReplicaRole::Follower) => "follower",
                                Some(ReplicaRole::Learner) => "learner",
                                None => "-",
                            };
                            (id.clone(), role.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
            // Replicas still reported but no longer assigned (being closed).
            for (collection, replica_shard, id) in state.replicas.keys() {
                if collection == name
                    && *replica_shard == shard
                    && !hosts.iter().any(|(host, _)| host == id)
                {
                    hosts.push((id.clone(), "unassigned".to_string()));
                }
            }
            for (id, role) in hosts {
                let record = state.replica(name, shard, &id);
                let phase = if !state.searchers.contains_key(&id) {
                    "OFFLINE".to_string()
                } else {
                    match record {
                        Some(record) => phase_name(record.state).to_string(),
                        None => "UNKNOWN".to_string(),
                    }
                };
                let number = |value: Option<u64>| value.map_or("-".to_string(), |v| v.to_string());
                replicas.row(vec![
                    name.clone(),
                    shard.to_string(),
                    id,
                    role,
                    phase,
                    number(record.map(|record| record.point_count)),
                    number(record.map(|record| record.applied_seq)),
                    number(assignment.map(|assignment| assignment.epoch)),
                ]);
            }
        }
        text.push_str(&replicas.render());
    }

    text.push('\n');
    match &snapshot.leader {
        Some(leader) => text.push_str(&format!(
            "controller leader: {} (since {})\n",
            leader.id, leader.since
        )),
        None => text.push_str("controller leader: none\n"),
    }
    match &snapshot.rebalance {
        Some(record) => {
            let progress = match &record.finished_at {
                Some(finished_at) => format!("finished {finished_at}"),
                None => format!("in progress, {} shards pending", record.pending_shards),
            };
            text.push_str(&format!(
                "last rebalance: {} (started {}): moved {} of {} replicas ({:.1}%), {progress}\n",
                record.trigger,
                record.started_at,
                record.moved_replicas,
                record.total_replicas,
                record.moved_fraction * 100.0
            ));
        }
        None => text.push_str("last rebalance: none\n"),
    }
    text
}

fn phase_name(phase: quiver_cluster::ReplicaPhase) -> &'static str {
    match phase {
        quiver_cluster::ReplicaPhase::Booting => "BOOTING",
        quiver_cluster::ReplicaPhase::Active => "ACTIVE",
        quiver_cluster::ReplicaPhase::Draining => "DRAINING",
        quiver_cluster::ReplicaPhase::Failed => "FAILED",
    }
}

fn render_dry_run(state: &ClusterState, eligible: &[String]) -> String {
    let plan = plan_moves(state, eligible);
    let mut text = format!(
        "target placement over {} live searchers: {}\n",
        eligible.len(),
        eligible.join(", ")
    );
    if !plan.moves.is_empty() {
        let mut moves = Table::new(&[
            ("collection", false),
            ("shard", true),
            ("from", false),
            ("to", false),
        ]);
        for planned in &plan.moves {
            moves.row(vec![
                planned.collection.clone(),
                planned.shard.to_string(),
                planned.from.clone().unwrap_or_else(|| "-".to_string()),
                planned.to.clone(),
            ]);
        }
        text.push_str(&moves.render());
    }
    text.push_str(&format!(
        "moved {} of {} replicas ({:.1}%)\n",
        plan.moved_replicas,
        plan.total_replicas,
        plan.moved_fraction * 100.0
    ));
    text
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

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_cluster::{
        rebalance::Move, AssignmentRecord, Capacity, CollectionRecord, ReplicaPhase, ReplicaRecord,
        SearcherRecord,
    };

    fn searcher(id: &str, port: u16) -> SearcherRecord {
        SearcherRecord {
            id: id.to_string(),
            address: format!("http://127.0.0.1:{port}"),
            version: "0.1.0".to_string(),
            started_at: "2024-05-01T10:00:00.000Z".to_string(),
            capacity: Capacity {
                cpus: 2,
                memory_bytes: 1 << 30,
            },
        }
    }

    fn replica(state: ReplicaPhase, points: u64, seq: u64) -> ReplicaRecord {
        ReplicaRecord {
            state,
            point_count: points,
            applied_seq: seq,
            epoch: 2,
            ..Default::default()
        }
    }

    fn cluster() -> ClusterState {
        let mut state = ClusterState {
            revision: 42,
            ..ClusterState::default()
        };
        for (id, port) in [
            ("searcher-1", 7101),
            ("searcher-2", 7102),
            ("searcher-10", 7110),
        ] {
            state.searchers.insert(id.to_string(), searcher(id, port));
        }
        state.collections.insert(
            "docs".to_string(),
            CollectionRecord {
                name: "docs".to_string(),
                dimension: 4,
                metric: quiver_index::Metric::L2,
                num_shards: 2,
                replication_factor: 2,
                index_spec: "flat".to_string(),
                created_at: "2024-05-01T10:00:00.000Z".to_string(),
            },
        );
        state.assignments.insert(
            ("docs".to_string(), 0),
            AssignmentRecord {
                epoch: 2,
                learners: vec!["searcher-10".to_string()],
                ..AssignmentRecord::new(vec!["searcher-2".to_string(), "searcher-1".to_string()])
            },
        );
        state.assignments.insert(
            ("docs".to_string(), 1),
            AssignmentRecord::new(vec!["searcher-1".to_string(), "searcher-3".to_string()]),
        );
        let records = [
            (0, "searcher-2", replica(ReplicaPhase::Active, 1500, 1502)),
            (0, "searcher-1", replica(ReplicaPhase::Active, 1500, 1502)),
            (0, "searcher-10", replica(ReplicaPhase::Booting, 12, 12)),
            (1, "searcher-1", replica(ReplicaPhase::Active, 7, 9)),
            (1, "searcher-2", replica(ReplicaPhase::Draining, 7, 9)),
        ];
        for (shard, id, record) in records {
            state
                .replicas
                .insert(("docs".to_string(), shard, id.to_string()), record);
        }
        state
    }

    #[test]
    fn status_prints_aligned_tables() {
        let snapshot = Snapshot {
            state: cluster(),
            leader: Some(LeaderRecord {
                id: "merger-1".to_string(),
                since: "2024-05-01T10:05:00.000Z".to_string(),
            }),
            rebalance: Some(RebalanceRecord {
                started_at: "2024-05-01T10:06:00.000Z".to_string(),
                updated_at: "2024-05-01T10:06:01.000Z".to_string(),
                trigger: "searcher searcher-10 joined".to_string(),
                searchers: vec![],
                moves: vec![Move {
                    collection: "docs".to_string(),
                    shard: 0,
                    from: Some("searcher-1".to_string()),
                    to: "searcher-10".to_string(),
                }],
                moves_omitted: 0,
                moved_replicas: 1,
                total_replicas: 4,
                moved_fraction: 0.25,
                pending_shards: 1,
                finished_at: None,
            }),
        };
        let expected = "\
etcd revision 42

searcher     address                version  started                   replicas
searcher-1   http://127.0.0.1:7101  0.1.0    2024-05-01T10:00:00.000Z         2
searcher-10  http://127.0.0.1:7110  0.1.0    2024-05-01T10:00:00.000Z         1
searcher-2   http://127.0.0.1:7102  0.1.0    2024-05-01T10:00:00.000Z         1

collection docs: 2 shards, replication factor 2, index flat
collection  shard  searcher     role        state     points  applied seq  epoch
docs            0  searcher-2   primary     ACTIVE      1500         1502      2
docs            0  searcher-1   follower    ACTIVE      1500         1502      2
docs            0  searcher-10  learner     BOOTING       12           12      2
docs            1  searcher-1   primary     ACTIVE         7            9      1
docs            1  searcher-3   follower    OFFLINE        -            -      1
docs            1  searcher-2   unassigned  DRAINING       7            9      1

controller leader: merger-1 (since 2024-05-01T10:05:00.000Z)
last rebalance: searcher searcher-10 joined (started 2024-05-01T10:06:00.000Z): moved 1 of 4 replicas (25.0%), in progress, 1 shards pending
";
        assert_eq!(render_status(&snapshot), expected);

        let bare = Snapshot {
            state: ClusterState::default(),
            leader: None,
            rebalance: None,
        };
        assert_eq!(
            render_status(&bare),
            "etcd revision 0\n\nsearcher  address  version  started  replicas\n\n\
             controller leader: none\nlast rebalance: none\n"
        );
    }

    #[test]
    fn dry_run_lists_every_move() {
        let mut state = cluster();
        // Settle the placement on the three live Searchers, then add a fourth.
        let three: Vec<String> = state.live_searcher_ids();
        for shard in 0..2 {
            let target = quiver_cluster::target_replicas(&three, "docs", shard, 2);
            state
                .assignments
                .insert(("docs".to_string(), shard), AssignmentRecord::new(target));
        }
        let settled = render_dry_run(&state, &three);
        assert_eq!(
            settled,
            "target placement over 3 live searchers: searcher-1, searcher-10, searcher-2\n\
             moved 0 of 4 replicas (0.0%)\n"
        );

        let mut four = three.clone();
        four.push("searcher-4".to_string());
        let plan = plan_moves(&state, &four);
        let text = render_dry_run(&state, &four);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            1 + usize::from(!plan.moves.is_empty()) + plan.moves.len() + 1
        );
        assert_eq!(
            *lines.last().unwrap(),
            format!(
                "moved {} of 4 replicas ({:.1}%)",
                plan.moved_replicas,
                plan.moved_fraction * 100.0
            )
        );
        for (line, planned) in lines[2..].iter().zip(&plan.moves) {
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(
                cells,
                [
                    "docs",
                    &planned.shard.to_string(),
                    planned.from.as_deref().unwrap_or("-"),
                    &planned.to
                ]
            );
        }
    }
}
