//! quiver-load: drives running Searchers (called directly, as a Merger would) and Mergers
//! with kNN searches over gRPC, and reports QPS and latency percentiles per target, side by
//! side. It starts nothing itself; `scripts/bench-query.sh` starts a cluster on loopback and
//! points it here.
//!
//! The machine these run on is noisy, so targets are measured in rounds: each round runs
//! every target at every concurrency, one after the other, and the report gives per target
//! the median over rounds, and the Merger's added p50 as the median of its per-round
//! difference to the direct Searcher target measured in the same round.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use quiver_index::dataset::{self, Vectors};
use quiver_proto::v1::{
    merger_client::MergerClient, searcher_client::SearcherClient, ReplicaState,
    ReplicaStatusRequest, SearchRequest, ShardSearchRequest, Vector,
};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

#[derive(Debug, Parser)]
#[command(
    name = "quiver-load",
    version,
    about = "Measure QPS and latency of Quiver Searchers and Mergers under concurrent load"
)]
struct Args {
    /// A target, as comma-separated key=value pairs:
    /// `kind=searcher|merger|ping,name=NAME,address=http://HOST:PORT,collection=NAME`, plus
    /// `searchers=N` (how many Searchers serve it, for the report). Repeat for each target.
    /// A searcher target is called exactly as a Merger calls it, for every shard of the
    /// collection it hosts; the first searcher target is the baseline of the "added p50"
    /// column. A ping target sends gRPC health checks (no collection needed): the cost of
    /// a bare gRPC round trip on this machine, the floor of what any extra hop adds.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Concurrent requests in flight, comma-separated: each is measured.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    concurrency: Vec<usize>,
    /// Seconds each target is measured per round and concurrency.
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,
    /// Seconds of unmeasured load before each measurement.
    #[arg(long, default_value_t = 0.5)]
    warmup_secs: f64,
    /// Rounds over all targets; the report gives medians over rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Dimension of the collection's vectors (the queries are random vectors of it).
    #[arg(long)]
    dimension: usize,
    #[arg(long, default_value_t = 10)]
    k: u32,
    /// Distinct query vectors, cycled through.
    #[arg(long, default_value_t = 256)]
    queries: usize,
    /// Deadline of each request, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Searcher,
    Merger,
    Ping,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    kind: Kind,
    name: String,
    address: String,
    collection: String,
    searchers: usize,
}

impl std::str::FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Target> {
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for pair in text.split(',') {
            let (key, value) = pair
                .split_once('=')
                .with_context(|| format!("{pair:?} in target {text:?} is not key=value"))?;
            fields.insert(key.trim(), value.trim());
        }
        let field = |key: &str| {
            fields
                .get(key)
                .copied()
                .with_context(|| format!("target {text:?} lacks {key}="))
        };
        let kind = match field("kind")? {
            "searcher" => Kind::Searcher,
            "merger" => Kind::Merger,
            "ping" => Kind::Ping,
            other => bail!("target kind {other:?} is not searcher, merger or ping"),
        };
        let searchers = match fields.get("searchers") {
            Some(count) => count
                .parse()
                .with_context(|| format!("searchers={count} in target {text:?}"))?,
            None => 1,
        };
        let address = field("address")?;
        Ok(Target {
            kind,
            name: field("name")?.to_string(),
            address: if address.contains("://") {
                address.to_string()
            } else {
                format!("http://{address}")
            },
            collection: match kind {
                Kind::Ping => fields.get("collection").copied().unwrap_or("").to_string(),
                _ => field("collection")?.to_string(),
            },
            searchers,
        })
    }
}

/// A connected target, ready to send one search.
#[derive(Clone)]
enum Caller {
    Searcher {
        client: SearcherClient<Channel>,
        collection: String,
        shards: Vec<u32>,
    },
    Merger {
        client: MergerClient<Channel>,
        collection: String,
    },
    Ping {
        client: HealthClient<Channel>,
    },
}

impl Caller {
    async fn connect(target: &Target) -> anyhow::Result<Caller> {
        let channel = Endpoint::from_shared(target.address.clone())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to {} at {}", target.name, target.address))?;
        Ok(match target.kind {
            Kind::Ping => Caller::Ping {
                client: HealthClient::new(channel),
            },
            Kind::Merger => Caller::Merger {
                client: MergerClient::new(channel),
                collection: target.collection.clone(),
            },
            Kind::Searcher => {
                let mut client = SearcherClient::new(channel);
                let status = client
                    .replica_status(ReplicaStatusRequest {
                        collection: target.collection.clone(),
                    })
                    .await
                    .with_context(|| format!("replica status of {}", target.name))?
                    .into_inner();
                let shards: Vec<u32> = status
                    .replicas
                    .iter()
                    .filter(|replica| replica.state == ReplicaState::Active as i32)
                    .map(|replica| replica.shard)
                    .collect();
                ensure!(
                    !shards.is_empty(),
                    "{} hosts no ACTIVE replica of {}",
                    target.name,
                    target.collection
                );
                Caller::Searcher {
                    client,
                    collection: target.collection.clone(),
                    shards,
                }
            }
        })
    }

    async fn search(&mut self, query: &[f32], k: u32, timeout: Duration) -> anyhow::Result<()> {
        let queries = vec![Vector {
            values: query.to_vec(),
        }];
        match self {
            Caller::Ping { client } => {
                let mut request = tonic::Request::new(HealthCheckRequest {
                    service: String::new(),
                });
                request.set_timeout(timeout);
                client.check(request).await?;
            }
            Caller::Merger { client, collection } => {
                let mut request = tonic::Request::new(SearchRequest {
                    collection: collection.clone(),
                    queries,
                    k,
                    ..SearchRequest::default()
                });
                request.set_timeout(timeout);
                let response = client.search(request).await?.into_inner();
                ensure!(!response.partial, "partial answer: {:?}", response.shards);
            }
            Caller::Searcher {
                client,
                collection,
                shards,
            } => {
                let mut request = tonic::Request::new(ShardSearchRequest {
                    collection: collection.clone(),
                    shards: shards.clone(),
                    queries,
                    k,
                    ..ShardSearchRequest::default()
                });
                request.set_timeout(timeout);
                let response = client.search(request).await?.into_inner();
                ensure!(
                    response.failed_shards.is_empty(),
                    "failed shards: {:?}",
                    response.failed_shards
                );
            }
        }
        Ok(())
    }
}

/// One measurement of one target at one concurrency.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Measurement {
    qps: f64,
    p50: Duration,
    p95: Duration,
    p99: Duration,
    errors: usize,
}

/// The `percentile` of sorted `latencies` (nearest rank).
fn percentile(sorted: &[Duration], percentile: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((percentile / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median_duration(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn median_f64(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs `concurrency` loops of back-to-back searches against `caller` for `duration`.
async fn measure(
    caller: &Caller,
    queries: &Arc<Vectors>,
    args: &Args,
    concurrency: usize,
    duration: Duration,
) -> Measurement {
    let started = Instant::now();
    let until = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let mut caller = caller.clone();
            let queries = Arc::clone(queries);
            let (k, timeout) = (args.k, Duration::from_millis(args.timeout_ms));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut row = worker * 7919;
                while Instant::now() < until {
                    row = (row + 1) % queries.len();
                    let sent = Instant::now();
                    match caller.search(queries.row(row), k, timeout).await {
                        Ok(()) => latencies.push(sent.elapsed()),
                        Err(error) => {
                            if errors == 0 {
                                eprintln!("warning: a search failed: {error:#}");
                            }
                            errors += 1;
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (worker_latencies, worker_errors) = worker.await.expect("load worker");
        latencies.extend(worker_latencies);
        errors += worker_errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    Measurement {
        qps: latencies.len() as f64 / elapsed,
        p50: percentile(&latencies, 50.0),
        p95: percentile(&latencies, 95.0),
        p99: percentile(&latencies, 99.0),
        errors,
    }
}

fn micros(duration: Duration) -> String {
    format!("{} µs", duration.as_micros())
}

/// The report: per target and concurrency, medians over rounds.
fn table(
    targets: &[Target],
    concurrencies: &[usize],
    rounds: &[BTreeMap<(usize, usize), Measurement>],
) -> String {
    let baseline = targets
        .iter()
        .position(|target| target.kind == Kind::Searcher);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| target | Searchers | concurrency | QPS | p50 | p95 | p99 | added p50 over direct | errors |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for &concurrency in concurrencies {
        for (index, target) in targets.iter().enumerate() {
            let runs: Vec<Measurement> = rounds
                .iter()
                .filter_map(|round| round.get(&(index, concurrency)).copied())
                .collect();
            if runs.is_empty() {
                continue;
            }
            let mut qps: Vec<f64> = runs.iter().map(|run| run.qps).collect();
            let mut p50: Vec<Duration> = runs.iter().map(|run| run.p50).collect();
            let mut p95: Vec<Duration> = runs.iter().map(|run| run.p95).collect();
            let mut p99: Vec<Duration> = runs.iter().map(|run| run.p99).collect();
            let errors: usize = runs.iter().map(|run| run.errors).sum();
            let added = match baseline {
                Some(baseline) if target.kind == Kind::Merger => {
                    let mut differences: Vec<f64> = rounds
                        .iter()
                        .filter_map(|round| {
                            let own = round.get(&(index, concurrency))?;
                            let direct = round.get(&(baseline, concurrency))?;
                            Some(own.p50.as_secs_f64() - direct.p50.as_secs_f64())
                        })
                        .collect();
                    if differences.is_empty() {
                        "-".to_string()
                    } else {
                        format!("{:+.0} µs", median_f64(&mut differences) * 1e6)
                    }
                }
                _ => "-".to_string(),
            };
            let kind = match target.kind {
                Kind::Searcher => "Searcher, direct",
                Kind::Merger => "Merger",
                Kind::Ping => "gRPC health check",
            };
            let _ = writeln!(
                out,
                "| {} ({kind}) | {} | {concurrency} | {:.0} | {} | {} | {} | {added} | {errors} |",
                target.name,
                target.searchers,
                median_f64(&mut qps),
                micros(median_duration(&mut p50)),
                micros(median_duration(&mut p95)),
                micros(median_duration(&mut p99)),
            );
        }
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure!(
        args.concurrency.iter().all(|concurrency| *concurrency > 0),
        "every --concurrency must be at least 1"
    );
    let targets: Vec<Target> = args
        .targets
        .iter()
        .map(|text| text.parse())
        .collect::<anyhow::Result<_>>()?;
    let mut callers = Vec::new();
    for target in &targets {
        callers.push(Caller::connect(target).await?);
    }
    let queries = Arc::new(dataset::synthetic(
        args.queries.max(1),
        args.dimension,
        4242,
    ));
    let duration = Duration::from_secs_f64(args.duration_secs);
    let warmup = Duration::from_secs_f64(args.warmup_secs);
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let mut measured = BTreeMap::new();
        for &concurrency in &args.concurrency {
            for (index, (target, caller)) in targets.iter().zip(&callers).enumerate() {
                if !warmup.is_zero() {
                    measure(caller, &queries, &args, concurrency, warmup).await;
                }
                let measurement = measure(caller, &queries, &args, concurrency, duration).await;
                eprintln!(
                    "round {}/{}: {} at concurrency {concurrency}: {:.0} QPS, p50 {}, p99 {}",
                    round + 1,
                    args.rounds,
                    target.name,
                    measurement.qps,
                    micros(measurement.p50),
                    micros(measurement.p99)
                );
                measured.insert((index, concurrency), measurement);
            }
        }
        rounds.push(measured);
    }
    print!("{}", table(&targets, &args.concurrency, &rounds));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_from_key_value_pairs() {
        let target: Target =
            "kind=merger,name=m2,address=127.0.0.1:7000,collection=bench,searchers=2"
                .parse()
                .unwrap();
        assert_eq!(
            target,
            Target {
                kind: Kind::Merger,
                name: "m2".into(),
                address: "http://127.0.0.1:7000".into(),
                collection: "bench".into(),
                searchers: 2,
            }
        );
        assert!("kind=proxy,name=x,address=a,collection=c"
            .parse::<Target>()
            .is_err());
        assert!("kind=merger,name=x".parse::<Target>().is_err());
        assert!("nonsense".parse::<Target>().is_err());
    }

    fn measurement(p50_micros: u64) -> Measurement {
        Measurement {
            qps: 1000.0,
            p50: Duration::from_micros(p50_micros),
            p95: Duration::from_micros(p50_micros * 2),
            p99: Duration::from_micros(p50_micros * 3),
            errors: 0,
        }
    }

    #[test]
    fn the_table_gives_medians_and_the_added_p50_of_each_round() {
        let targets: Vec<Target> = [
            "kind=searcher,name=direct,address=a,collection=c",
            "kind=merger,name=m1,address=b,collection=c",
        ]
        .iter()
        .map(|text| text.parse().unwrap())
        .collect();
        // Rounds where everything was slow together: the difference stays 60 µs.
        let rounds: Vec<BTreeMap<(usize, usize), Measurement>> =
            [(100, 160), (300, 360), (200, 260)]
                .iter()
                .map(|(direct, merger)| {
                    BTreeMap::from([
                        ((0, 1), measurement(*direct)),
                        ((1, 1), measurement(*merger)),
                    ])
                })
                .collect();
        let report = table(&targets, &[1], &rounds);
        assert!(
            report.contains(
                "| direct (Searcher, direct) | 1 | 1 | 1000 | 200 µs | 400 µs | 600 µs | - | 0 |"
            ),
            "{report}"
        );
        assert!(
            report
                .contains("| m1 (Merger) | 1 | 1 | 1000 | 260 µs | 520 µs | 780 µs | +60 µs | 0 |"),
            "{report}"
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }
}
