//! Index specs through the whole cluster: each collection's spec decides what its replicas
//! build, approximate indexes meet their recall floors on siftsmall through the Merger,
//! per-query overrides reach the index, replicas reopen their index after a SIGKILL, and
//! specs no Searcher could build are refused at CreateCollection with nothing written.

use std::time::{Duration, Instant};

use quiver_index::dataset::{self, Vectors};
use quiver_integration_tests::{collection_config, shared_data, upsert_rows, Cluster};
use quiver_proto::v1::{
    self, merger_client::MergerClient, ListCollectionsRequest, SearchParams, SearchRequest, Vector,
};
use tonic::{transport::Channel, Code};

fn siftsmall() -> (Vectors, Vectors, Vec<Vec<u32>>) {
    match shared_data("siftsmall") {
        Some(dir) => (
            dataset::read_fvecs(&dir.join("siftsmall_base.fvecs")).unwrap(),
            dataset::read_fvecs(&dir.join("siftsmall_query.fvecs")).unwrap(),
            dataset::read_ivecs(&dir.join("siftsmall_groundtruth.ivecs")).unwrap(),
        ),
        None => {
            eprintln!(
                "../shared/data/siftsmall is absent: using generated data of the same shape \
                 and a low intrinsic dimension, like real embeddings"
            );
            let base = embedded(10_000, 1);
            let queries = embedded(100, 2);
            let truth = dataset::ground_truth(&base, &queries, 100, quiver_index::Metric::L2)
                .into_iter()
                .map(|row| row.into_iter().map(|id| id as u32).collect())
                .collect();
            (base, queries, truth)
        }
    }
}

/// `count` 128-dimensional points on a random 8-dimensional subspace. Uniform noise in
/// all 128 dimensions would make every distance nearly equal, a data set no approximate
/// index (or user) meets; real vectors have far fewer degrees of freedom than dimensions.
fn embedded(count: usize, seed: u64) -> Vectors {
    const LATENT: usize = 8;
    const DIM: usize = 128;
    let latent = dataset::synthetic(count, LATENT, seed);
    let basis = dataset::synthetic(LATENT, DIM, 99);
    let mut data = Vec::with_capacity(count * DIM);
    for point in latent.rows() {
        for column in 0..DIM {
            let value: f32 = (0..LATENT)
                .map(|k| point[k] * basis.row(k)[column] / 100.0)
                .sum();
            data.push(value);
        }
    }
    Vectors { dim: DIM, data }
}

async fn recall(
    client: &mut MergerClient<Channel>,
    collection: &str,
    queries: &Vectors,
    truth: &[Vec<u32>],
    params: Option<SearchParams>,
) -> f64 {
    try_recall(client, collection, queries, truth, params)
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

/// recall@10 of one complete search, or why the search was not complete.
async fn try_recall(
    client: &mut MergerClient<Channel>,
    collection: &str,
    queries: &Vectors,
    truth: &[Vec<u32>],
    params: Option<SearchParams>,
) -> Result<f64, String> {
    let response = client
        .search(SearchRequest {
            collection: collection.into(),
            queries: queries
                .rows()
                .map(|row| Vector {
                    values: row.to_vec(),
                })
                .collect(),
            k: 10,
            params,
            ..SearchRequest::default()
        })
        .await
        .map_err(|status| format!("{collection}: {status:?}"))?
        .into_inner();
    if response.shards_answered != response.shards_total {
        return Err(format!(
            "{collection}: {} of {} shards answered",
            response.shards_answered, response.shards_total
        ));
    }
    let found: Vec<Vec<u64>> = response
        .results
        .iter()
        .map(|result| {
            result
                .neighbors
                .iter()
                .map(|neighbor| neighbor.id.parse().unwrap())
                .collect()
        })
        .collect();
    Ok(dataset::recall_at_k(&found, truth, 10))
}

async fn create(client: &mut MergerClient<Channel>, name: &str, shards: u32, spec: &str) {
    let mut request = collection_config(name, 128, v1::Metric::L2, shards, 1);
    request.config.as_mut().unwrap().index_spec = spec.into();
    let created = client
        .create_collection(request)
        .await
        .unwrap_or_else(|status| panic!("{spec}: {status:?}"))
        .into_inner()
        .collection
        .unwrap();
    // What etcd holds (and Describe returns) is the canonical form with every parameter.
    let expected: quiver_index::IndexSpec = spec.parse().unwrap();
    assert_eq!(created.config.unwrap().index_spec, expected.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approximate_indexes_meet_their_recall_floors_through_the_cluster() {
    let (base, queries, truth) = siftsmall();
    let mut cluster = Cluster::start(2, 10).await;
    let mut client = cluster.client().await;

    let mut collections = vec![
        (
            "hnsw",
            2,
            "hnsw m=16 ef_construction=100 ef_search=64",
            0.95,
        ),
        ("ivf-flat", 2, "ivf_flat nlist=32 nprobe=8", 0.95),
        // One shard, so the shard holds enough points to train 256 PQ centroids.
        (
            "ivf-pq",
            1,
            "ivf_pq nlist=32 m=16 nbits=8 nprobe=8 rerank=10",
            0.90,
        ),
    ];
    if quiver_index::FAISS_AVAILABLE {
        collections.push((
            "faiss-hnsw",
            2,
            "faiss factory=HNSW16 params=efSearch=64",
            0.95,
        ));
        collections.push((
            "faiss-ivf",
            2,
            "faiss factory=IVF32,Flat params=nprobe=8",
            0.95,
        ));
    }
    for (name, shards, spec, _) in &collections {
        create(&mut client, name, *shards, spec).await;
        upsert_rows(&mut client, name, &base, 2_000).await;
    }
    let mut before = Vec::new();
    for (name, _, spec, floor) in &collections {
        let recall = recall(&mut client, name, &queries, &truth, None).await;
        println!("{spec}: recall@10 through the cluster {recall:.4}");
        assert!(recall >= *floor, "{spec}: recall@10 {recall:.4} < {floor}");
        before.push(recall);
    }

    // A narrow beam per query lowers HNSW recall; a wide one raises it: the override
    // reaches the index on every replica.
    let narrow = recall(
        &mut client,
        "hnsw",
        &queries,
        &truth,
        Some(SearchParams {
            ef_search: 10,
            nprobe: 0,
        }),
    )
    .await;
    let wide = recall(
        &mut client,
        "hnsw",
        &queries,
        &truth,
        Some(SearchParams {
            ef_search: 400,
            nprobe: 0,
        }),
    )
    .await;
    assert!(
        narrow < before[0] && before[0] <= wide,
        "ef 10 {narrow}, default {}, ef 400 {wide}",
        before[0]
    );
    let one_probe = recall(
        &mut client,
        "ivf-flat",
        &queries,
        &truth,
        Some(SearchParams {
            ef_search: 0,
            nprobe: 1,
        }),
    )
    .await;
    assert!(
        one_probe < before[1],
        "nprobe 1 {one_probe} vs default {}",
        before[1]
    );

    // SIGKILL both Searchers and bring them back: every replica reopens its index from its
    // snapshot and log, and answers at least as well as before.
    cluster.restart_searcher(0);
    cluster.restart_searcher(1);
    // Until the restarted processes re-publish them, etcd still holds the killed ones'
    // leased keys (ACTIVE, old addresses) for up to the lease TTL, so searches may fail for
    // a while; what must hold is that they then answer as well as before.
    for ((name, _, spec, floor), previous) in collections.iter().zip(&before) {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            let last = match try_recall(&mut client, name, &queries, &truth, None).await {
                // Replaying the log re-inserts points, and FAISS inserts into its HNSW
                // graph on several threads, so a rebuilt graph (or the other replica's)
                // can be better than the one measured before; only worse is a defect.
                Ok(recall) if recall >= *floor && recall >= previous - 0.02 => break,
                Ok(recall) => format!("recall {recall:.4} after restart, {previous:.4} before"),
                Err(error) => error,
            };
            assert!(Instant::now() < deadline, "{spec}: {last}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbuildable_specs_are_refused_and_nothing_is_written() {
    let cluster = Cluster::start(1, 10).await;
    let mut client = cluster.client().await;
    let mut refused = vec![
        ("ivf_pq m=5", "must divide the dimension 128"),
        ("hnsw m=0", "hnsw m"),
        ("hnsw m=16 typo=3", "unknown hnsw parameter"),
        ("ivf_flat nlist=16 nprobe=32", "nprobe"),
        ("annoy", "unknown index kind"),
        ("faiss", "factory"),
    ];
    if quiver_index::FAISS_AVAILABLE {
        refused.push(("faiss factory=NoSuchIndex", "index_factory"));
        refused.push(("faiss factory=HNSW16 params=noSuchKnob=1", "noSuchKnob"));
    }
    for (spec, needle) in refused {
        let mut request = collection_config("refused", 128, v1::Metric::L2, 2, 1);
        request.config.as_mut().unwrap().index_spec = spec.into();
        let status = client.create_collection(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{spec}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{spec}: {}",
            status.message()
        );
    }
    let listed = client
        .list_collections(ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.collections.is_empty(), "{listed:?}");
    assert!(cluster.etcd_keys("/quiver/collections/").is_empty());
    assert!(cluster.etcd_keys("/quiver/assignments/").is_empty());

    // Per-query overrides past the spec bounds are refused too.
    create(&mut client, "bounded", 1, "hnsw").await;
    let status = client
        .search(SearchRequest {
            collection: "bounded".into(),
            queries: vec![Vector {
                values: vec![0.0; 128],
            }],
            k: 10,
            params: Some(SearchParams {
                ef_search: 10_000_000,
                nprobe: 0,
            }),
            ..SearchRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("ef_search"),
        "{}",
        status.message()
    );
}
