//! Hedging against a stalled Searcher, with real etcd and real processes. In a test binary
//! of its own, so that no sibling test shares the CPU while latencies are measured.

use std::time::{Duration, Instant};

use quiver_index::dataset;
use quiver_integration_tests::{
    collection_config, metric_value, reference_results, search_request, upsert_rows, Cluster,
    ClusterOptions,
};
use quiver_proto::v1::{self, merger_client::MergerClient, QueryResult};
use tonic::transport::Channel;

/// The nearest-rank percentile: p99 of 200 is the 198th fastest.
fn percentile(latencies: &[Duration], percentile: f64) -> Duration {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let rank = ((percentile / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_keeps_the_tail_fast_when_one_searcher_stalls() {
    // searcher-2 answers every search 300 ms late; both hold both shards. Replica choice
    // spreads a search's two shards over the two Searchers (fewest outstanding first), so
    // every search has a shard on searcher-2: without hedging each one waits for it.
    let cluster = Cluster::start_with(
        ClusterOptions::new(2, 10).searcher_args(1, &["--fault-delay-ms", "300"]),
    )
    .await;
    let unhedged = cluster.start_merger("merger-unhedged", &["--hedging", "false"]);
    let mut hedged_client = cluster.client().await;
    let mut unhedged_client = unhedged.client().await;
    hedged_client
        .create_collection(collection_config("stall", 16, v1::Metric::L2, 2, 2))
        .await
        .expect("create");
    let base = dataset::synthetic(1000, 16, 31);
    upsert_rows(&mut hedged_client, "stall", &base, 500).await;
    let queries = dataset::synthetic(8, 16, 32);
    let reference = reference_results(&mut hedged_client, "stall", &base, &queries, 10).await;

    // Sequential searches, as latency is measured; the first ones warm up the latency
    // statistics hedging uses and are not counted.
    async fn measure(
        client: &mut MergerClient<Channel>,
        queries: &dataset::Vectors,
        reference: &[QueryResult],
        warm_up: usize,
        count: usize,
    ) -> Vec<Duration> {
        let mut latencies = Vec::with_capacity(count);
        for number in 0..warm_up + count {
            let row = number % queries.len();
            let started = Instant::now();
            let response = client
                .search(search_request("stall", queries.row(row), 10))
                .await
                .expect("search")
                .into_inner();
            let latency = started.elapsed();
            assert!(!response.partial, "{:?}", response.shards);
            assert_eq!(response.results[0], reference[row], "query {row}");
            if number >= warm_up {
                latencies.push(latency);
            }
        }
        latencies
    }
    let with_hedging = measure(&mut hedged_client, &queries, &reference, 20, 200).await;
    let without_hedging = measure(&mut unhedged_client, &queries, &reference, 5, 200).await;
    let summary = |latencies: &[Duration]| {
        format!(
            "p50 {:?}, p99 {:?}, max {:?}",
            percentile(latencies, 50.0),
            percentile(latencies, 99.0),
            percentile(latencies, 100.0)
        )
    };
    println!("with hedging:    {}", summary(&with_hedging));
    println!("without hedging: {}", summary(&without_hedging));
    assert!(
        percentile(&with_hedging, 99.0) < Duration::from_millis(100),
        "with hedging: {}",
        summary(&with_hedging)
    );
    assert!(
        percentile(&without_hedging, 99.0) >= Duration::from_millis(300),
        "without hedging: {}",
        summary(&without_hedging)
    );
    let sent = metric_value(&cluster.merger_address, "quiver_merger_hedges_sent_total");
    let won = metric_value(&cluster.merger_address, "quiver_merger_hedges_won_total");
    println!("hedging merger: {sent} hedges sent, {won} won");
    assert!(won >= 200.0, "{won} hedges won");
    assert_eq!(
        metric_value(&unhedged.address, "quiver_merger_hedges_sent_total"),
        0.0
    );
}
