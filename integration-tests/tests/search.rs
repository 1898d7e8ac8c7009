//! Distributed search is exact: a 4-shard, replication-factor-2 collection on 3 Searchers
//! answers every query exactly as brute force over the whole data set does.

use std::time::Duration;

use quiver_index::{
    dataset::{self, Vectors},
    Metric,
};
use quiver_integration_tests::{collection_config, eventually, shared_data, upsert_rows, Cluster};
use quiver_proto::v1::{self, DescribeCollectionRequest, ReplicaState, SearchRequest, Vector};

/// The exact top k of `query` over every row, ties broken by id as the API orders them.
fn brute_force(metric: Metric, base: &Vectors, query: &[f32], k: usize) -> Vec<(String, f32)> {
    quiver_integration_tests::brute_force(metric, base, query, k, |_| true)
}

async fn search_all(
    client: &mut v1::merger_client::MergerClient<tonic::transport::Channel>,
    collection: &str,
    queries: &Vectors,
    k: u32,
) -> Vec<Vec<(String, f32)>> {
    let mut results = Vec::new();
    let rows: Vec<usize> = (0..queries.len()).collect();
    for chunk in rows.chunks(25) {
        let response = client
            .search(SearchRequest {
                collection: collection.to_string(),
                queries: chunk
                    .iter()
                    .map(|row| Vector {
                        values: queries.row(*row).to_vec(),
                    })
                    .collect(),
                k,
                ..SearchRequest::default()
            })
            .await
            .expect("search")
            .into_inner();
        assert_eq!(response.shards_answered, response.shards_total);
        assert!(!response.partial);
        assert_eq!(response.coverage, 1.0);
        assert!(
            response.failed_shards.is_empty(),
            "{:?}",
            response.failed_shards
        );
        assert_eq!(response.shards.len() as u32, response.shards_total);
        for report in &response.shards {
            assert_eq!(report.outcome, v1::ShardOutcome::Ok as i32, "{report:?}");
            assert_eq!(report.code, "OK");
            assert!(!report.searcher_id.is_empty());
            assert!(report.attempts >= 1);
        }
        assert_eq!(response.results.len(), chunk.len());
        for result in response.results {
            results.push(
                result
                    .neighbors
                    .into_iter()
                    .map(|neighbor| (neighbor.id, neighbor.score))
                    .collect(),
            );
        }
    }
    results
}

fn assert_same_results(found: &[(String, f32)], expected: &[(String, f32)], query: usize) {
    quiver_integration_tests::assert_same_results(found, expected, &format!("query {query}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siftsmall_distributed_search_equals_brute_force() {
    let (base, queries, truth) = match shared_data("siftsmall") {
        Some(dir) => (
            dataset::read_fvecs(&dir.join("siftsmall_base.fvecs")).unwrap(),
            dataset::read_fvecs(&dir.join("siftsmall_query.fvecs")).unwrap(),
            Some(dataset::read_ivecs(&dir.join("siftsmall_groundtruth.ivecs")).unwrap()),
        ),
        None => {
            eprintln!("../shared/data/siftsmall is absent: using generated data of the same shape");
            (
                dataset::synthetic(10_000, 128, 1),
                dataset::synthetic(100, 128, 2),
                None,
            )
        }
    };
    let cluster = Cluster::start(3, 10).await;
    let mut client = cluster.client().await;

    let created = client
        .create_collection(collection_config("sift", 128, v1::Metric::L2, 4, 2))
        .await
        .expect("create")
        .into_inner()
        .collection
        .unwrap();
    assert_eq!(created.shards.len(), 4);
    for shard in &created.shards {
        assert_eq!(shard.replicas.len(), 2, "shard {} replicas", shard.shard);
        assert_ne!(shard.replicas[0].searcher_id, shard.replicas[1].searcher_id);
        for replica in &shard.replicas {
            assert_eq!(replica.state, ReplicaState::Active as i32);
        }
    }

    upsert_rows(&mut client, "sift", &base, 1000).await;
    let results = search_all(&mut client, "sift", &queries, 100).await;
    assert_eq!(results.len(), queries.len());
    for (query, found) in results.iter().enumerate() {
        let expected = brute_force(Metric::L2, &base, queries.row(query), 100);
        assert_same_results(found, &expected, query);
    }

    if let Some(truth) = truth {
        let found: Vec<Vec<u64>> = results
            .iter()
            .map(|neighbors| {
                neighbors
                    .iter()
                    .map(|(id, _)| id.parse().unwrap())
                    .collect()
            })
            .collect();
        let recall = dataset::recall_at_k(&found, &truth, 100);
        println!("siftsmall recall@100 through the cluster: {recall:.4}");
        assert_eq!(
            recall, 1.0,
            "the exact index must reproduce the ground truth"
        );
    }

    // Every replica reports all of its shard's points once the counters are republished.
    let mut client_for_counts = client.clone();
    let total = base.len() as u64;
    eventually(
        Duration::from_secs(15),
        "replica point counts",
        async || {
            let description = client_for_counts
                .describe_collection(DescribeCollectionRequest {
                    name: "sift".into(),
                })
                .await
                .ok()?
                .into_inner()
                .collection?;
            let mut sum = 0;
            for shard in &description.shards {
                let counts: Vec<u64> = shard
                    .replicas
                    .iter()
                    .map(|replica| replica.point_count)
                    .collect();
                if counts.iter().any(|count| *count != counts[0]) {
                    return None;
                }
                sum += counts[0];
            }
            (sum == total).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_merges_in_its_own_order() {
    let cluster = Cluster::start(2, 10).await;
    let mut client = cluster.client().await;
    // Few distinct values make exact score ties common, so the id tie-break is exercised.
    let mut base = dataset::synthetic(600, 8, 7);
    for value in &mut base.data {
        *value = (*value / 25.0).floor() - 1.5;
    }
    let queries = dataset::synthetic(20, 8, 8);
    for (name, metric, proto_metric) in [
        ("l2", Metric::L2, v1::Metric::L2),
        ("ip", Metric::InnerProduct, v1::Metric::InnerProduct),
        ("cosine", Metric::Cosine, v1::Metric::Cosine),
    ] {
        client
            .create_collection(collection_config(name, 8, proto_metric, 3, 1))
            .await
            .expect("create");
        upsert_rows(&mut client, name, &base, 250).await;
        let results = search_all(&mut client, name, &queries, 15).await;
        for (query, found) in results.iter().enumerate() {
            let expected = brute_force(metric, &base, queries.row(query), 15);
            assert_same_results(found, &expected, query);
        }
    }
}
