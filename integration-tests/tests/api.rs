//! The client API over real gRPC: every bad input gets its status code with nothing
//! written, reads and writes round-trip, and etcd holds JSON a person can read.

use quiver_integration_tests::{collection_config, http_get, Cluster};
use quiver_proto::v1::{
    self, merger_client::MergerClient, CollectionConfig, CreateCollectionRequest, DeleteRequest,
    DescribeCollectionRequest, DropCollectionRequest, GetRequest, ListCollectionsRequest, Point,
    SearchRequest, UpsertRequest, Vector,
};
use tonic::{transport::Channel, Code};

fn point(id: &str, vector: Vec<f32>, payload: &str) -> Point {
    Point {
        id: id.to_string(),
        vector,
        payload_json: payload.to_string(),
    }
}

fn search(collection: &str, queries: Vec<Vec<f32>>, k: u32) -> SearchRequest {
    SearchRequest {
        collection: collection.to_string(),
        queries: queries
            .into_iter()
            .map(|values| Vector { values })
            .collect(),
        k,
        ..SearchRequest::default()
    }
}

async fn expect_code<T: std::fmt::Debug>(
    what: &str,
    expected: Code,
    result: Result<tonic::Response<T>, tonic::Status>,
) -> tonic::Status {
    let status = result.expect_err(what);
    assert_eq!(
        status.code(),
        expected,
        "{what}: got {:?} {:?}",
        status.code(),
        status.message()
    );
    assert!(
        !status.message().is_empty(),
        "{what}: the message must say why"
    );
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_code_and_writes_nothing() {
    let cluster = Cluster::start(2, 10).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config("c", 4, v1::Metric::Cosine, 2, 1))
        .await
        .expect("create");

    // Collections.
    expect_code(
        "duplicate collection",
        Code::AlreadyExists,
        client
            .create_collection(collection_config("c", 4, v1::Metric::L2, 1, 1))
            .await,
    )
    .await;
    let status = expect_code(
        "replication factor above live searchers",
        Code::FailedPrecondition,
        client
            .create_collection(collection_config("wide", 4, v1::Metric::L2, 1, 3))
            .await,
    )
    .await;
    assert!(
        status.message().contains('3') && status.message().contains('2'),
        "the message names both counts: {}",
        status.message()
    );
    let mut bad_configs = vec![
        (
            "dimension 0",
            collection_config("d0", 0, v1::Metric::L2, 1, 1),
        ),
        (
            "name with a slash",
            collection_config("a/b", 4, v1::Metric::L2, 1, 1),
        ),
        ("empty name", collection_config("", 4, v1::Metric::L2, 1, 1)),
        (
            "metric unspecified",
            collection_config("m", 4, v1::Metric::Unspecified, 1, 1),
        ),
        ("no config", CreateCollectionRequest { config: None }),
    ];
    let mut unknown_index = collection_config("ix", 4, v1::Metric::L2, 1, 1);
    unknown_index.config.as_mut().unwrap().index_spec = "bogus".into();
    bad_configs.push(("unknown index", unknown_index));
    bad_configs.push((
        "unknown metric value",
        CreateCollectionRequest {
            config: Some(CollectionConfig {
                name: "mv".into(),
                dimension: 4,
                metric: 99,
                num_shards: 1,
                replication_factor: 1,
                index_spec: String::new(),
                payload_indexes: Vec::new(),
            }),
        },
    ));
    for (what, request) in bad_configs {
        expect_code(
            what,
            Code::InvalidArgument,
            client.create_collection(request).await,
        )
        .await;
    }
    let listed = client
        .list_collections(ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.collections.len(),
        1,
        "no refused collection was created"
    );

    // Unknown names.
    expect_code(
        "search unknown collection",
        Code::NotFound,
        client.search(search("nope", vec![vec![1.0; 4]], 1)).await,
    )
    .await;
    expect_code(
        "upsert unknown collection",
        Code::NotFound,
        client
            .upsert(UpsertRequest {
                collection: "nope".into(),
                points: vec![point("a", vec![1.0; 4], "")],
                ..Default::default()
            })
            .await,
    )
    .await;
    expect_code(
        "describe unknown collection",
        Code::NotFound,
        client
            .describe_collection(DescribeCollectionRequest {
                name: "nope".into(),
            })
            .await,
    )
    .await;
    expect_code(
        "drop unknown collection",
        Code::NotFound,
        client
            .drop_collection(DropCollectionRequest {
                name: "nope".into(),
            })
            .await,
    )
    .await;

    // Upserts: each batch starts with a valid point that must not be written.
    let good = |case: usize| point(&format!("good-{case}"), vec![1.0, 0.0, 0.0, 0.0], "");
    let bad_points: Vec<(&str, Point)> = vec![
        ("wrong dimension", point("x", vec![1.0; 3], "")),
        ("NaN", point("x", vec![1.0, f32::NAN, 0.0, 0.0], "")),
        (
            "infinity",
            point("x", vec![f32::INFINITY, 0.0, 0.0, 0.0], ""),
        ),
        ("zero vector under cosine", point("x", vec![0.0; 4], "")),
        ("empty id", point("", vec![1.0; 4], "")),
        (
            "id over 256 bytes",
            point(&"i".repeat(257), vec![1.0; 4], ""),
        ),
        ("payload not an object", point("x", vec![1.0; 4], "[1, 2]")),
        ("payload not JSON", point("x", vec![1.0; 4], "{oops")),
        ("duplicate id in batch", point("good-8", vec![1.0; 4], "")),
    ];
    let mut written_ids = Vec::new();
    for (case, (what, bad)) in bad_points.into_iter().enumerate() {
        written_ids.push(format!("good-{case}"));
        expect_code(
            what,
            Code::InvalidArgument,
            client
                .upsert(UpsertRequest {
                    collection: "c".into(),
                    points: vec![good(case), bad],
                    ..Default::default()
                })
                .await,
        )
        .await;
    }
    let oversized: Vec<Point> = (0..10_001)
        .map(|index| point(&index.to_string(), vec![1.0; 4], ""))
        .collect();
    expect_code(
        "batch over the limit",
        Code::InvalidArgument,
        client
            .upsert(UpsertRequest {
                collection: "c".into(),
                points: oversized,
                ..Default::default()
            })
            .await,
    )
    .await;
    expect_code(
        "empty batch",
        Code::InvalidArgument,
        client
            .upsert(UpsertRequest {
                collection: "c".into(),
                points: vec![],
                ..Default::default()
            })
            .await,
    )
    .await;
    // A message above the 64 MiB limit is refused before it is decoded.
    let mut unlimited: MergerClient<Channel> = client.clone().max_encoding_message_size(usize::MAX);
    expect_code(
        "message over 64 MiB",
        Code::ResourceExhausted,
        unlimited
            .upsert(UpsertRequest {
                collection: "c".into(),
                points: vec![point("huge", vec![1.0; 17 << 20], "")],
                ..Default::default()
            })
            .await,
    )
    .await;

    let found = client
        .get(GetRequest {
            collection: "c".into(),
            ids: written_ids,
            with_vectors: false,
            with_payloads: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        found.points.is_empty(),
        "refused batches wrote {:?}",
        found.points
    );
    let description = client
        .describe_collection(DescribeCollectionRequest { name: "c".into() })
        .await
        .unwrap()
        .into_inner()
        .collection
        .unwrap();
    for shard in description.shards {
        for replica in shard.replicas {
            assert_eq!(replica.applied_seq, 0, "no write reached any replica");
        }
    }

    // Searches.
    let bad_searches = vec![
        ("k = 0", search("c", vec![vec![1.0; 4]], 0)),
        ("k over 1024", search("c", vec![vec![1.0; 4]], 1025)),
        ("wrong query dimension", search("c", vec![vec![1.0; 5]], 3)),
        (
            "NaN query",
            search("c", vec![vec![f32::NAN, 1.0, 1.0, 1.0]], 3),
        ),
        (
            "zero query under cosine",
            search("c", vec![vec![0.0; 4]], 3),
        ),
        ("no queries", search("c", vec![], 3)),
        ("too many queries", search("c", vec![vec![1.0; 4]; 1025], 3)),
        ("shard out of range", {
            let mut request = search("c", vec![vec![1.0; 4]], 3);
            request.shards = vec![7];
            request
        }),
    ];
    for (what, request) in bad_searches {
        expect_code(what, Code::InvalidArgument, client.search(request).await).await;
    }

    // Deletes and gets.
    expect_code(
        "delete with an empty id",
        Code::InvalidArgument,
        client
            .delete(DeleteRequest {
                collection: "c".into(),
                ids: vec!["a".into(), String::new()],
                ..Default::default()
            })
            .await,
    )
    .await;
    expect_code(
        "get with no ids",
        Code::InvalidArgument,
        client
            .get(GetRequest {
                collection: "c".into(),
                ids: vec![],
                with_vectors: false,
                with_payloads: false,
            })
            .await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reads_and_drop_round_trip() {
    let cluster = Cluster::start(2, 10).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config("books", 3, v1::Metric::L2, 3, 2))
        .await
        .expect("create");
    let points: Vec<Point> = (0..30)
        .map(|index| {
            point(
                &format!("book-{index}"),
                vec![index as f32, 0.0, 0.0],
                &format!(r#"{{ "title": "Book {index}", "year": {} }}"#, 2000 + index),
            )
        })
        .collect();
    let response = client
        .upsert(UpsertRequest {
            collection: "books".into(),
            points,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.upserted, 30);
    assert!(response.failed_replicas.is_empty());

    let got = client
        .get(GetRequest {
            collection: "books".into(),
            ids: vec!["book-7".into(), "missing".into(), "book-2".into()],
            with_vectors: true,
            with_payloads: true,
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = got.points.iter().map(|point| point.id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["book-7", "book-2"],
        "request order, missing ids left out"
    );
    assert_eq!(got.points[0].vector, vec![7.0, 0.0, 0.0]);
    assert_eq!(
        got.points[0].payload_json,
        r#"{"title":"Book 7","year":2007}"#
    );

    let mut request = search("books", vec![vec![10.2, 0.0, 0.0]], 3);
    request.with_payloads = true;
    request.with_vectors = true;
    let response = client.search(request).await.unwrap().into_inner();
    let neighbors = &response.results[0].neighbors;
    let ids: Vec<&str> = neighbors
        .iter()
        .map(|neighbor| neighbor.id.as_str())
        .collect();
    assert_eq!(ids, vec!["book-10", "book-11", "book-9"]);
    assert!(
        (neighbors[0].score - 0.04).abs() < 1e-4,
        "squared L2 distance"
    );
    assert_eq!(neighbors[1].vector, vec![11.0, 0.0, 0.0]);
    assert_eq!(
        neighbors[2].payload_json,
        r#"{"title":"Book 9","year":2009}"#
    );

    // Searching a subset of shards returns only points of those shards.
    let mut request = search("books", vec![vec![10.0, 0.0, 0.0]], 30);
    request.shards = vec![1];
    let response = client.search(request).await.unwrap().into_inner();
    assert_eq!((response.shards_total, response.shards_answered), (1, 1));
    for neighbor in &response.results[0].neighbors {
        assert_eq!(quiver_cluster::placement::shard_of(&neighbor.id, 3), 1);
    }

    let deleted = client
        .delete(DeleteRequest {
            collection: "books".into(),
            ids: vec!["book-10".into(), "never-was".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    let response = client
        .search(search("books", vec![vec![10.2, 0.0, 0.0]], 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.results[0].neighbors[0].id, "book-11");

    // Both services expose Prometheus metrics on their gRPC port over plain HTTP/1.1.
    let (status, body) = http_get(&cluster.merger_address, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(
        body.contains(r#"quiver_merger_requests_total{code="OK",method="search"}"#),
        "{body}"
    );
    assert!(body.contains("quiver_merger_request_duration_seconds_bucket"));
    // Writes reach the Searchers through each shard's primary; with three shards on two
    // Searchers, some Searcher leads at least one of them.
    let mut bodies = Vec::new();
    for searcher in &cluster.searchers {
        let (status, body) = http_get(&searcher.address, "/metrics");
        assert!(status.contains("200"), "{status}");
        bodies.push(body);
    }
    assert!(
        bodies
            .iter()
            .any(|body| body
                .contains(r#"quiver_searcher_requests_total{code="OK",method="upsert"}"#)),
        "{bodies:?}"
    );

    client
        .drop_collection(DropCollectionRequest {
            name: "books".into(),
        })
        .await
        .unwrap();
    expect_code(
        "search after drop",
        Code::NotFound,
        client.search(search("books", vec![vec![1.0; 3]], 1)).await,
    )
    .await;
    assert!(cluster.etcd_keys("/quiver/collections/").is_empty());
    assert!(cluster.etcd_keys("/quiver/assignments/").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_reads_the_cluster_state_as_json() {
    let cluster = Cluster::start(2, 10).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config(
            "docs",
            16,
            v1::Metric::InnerProduct,
            2,
            2,
        ))
        .await
        .expect("create");

    let output = cluster.etcdctl(&["get", "--prefix", "/quiver/"]);
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len() % 2, 0, "etcdctl prints key and value lines");
    let mut kinds = std::collections::BTreeMap::new();
    for pair in lines.chunks(2) {
        let (key, value) = (pair[0], pair[1]);
        let json: serde_json::Value = serde_json::from_str(value)
            .unwrap_or_else(|error| panic!("{key} holds no JSON ({error}): {value}"));
        assert!(json.is_object(), "{key}: {value}");
        let kind = key
            .trim_start_matches("/quiver/")
            .split('/')
            .next()
            .unwrap();
        *kinds.entry(kind.to_string()).or_insert(0) += 1;
        match kind {
            "searchers" => {
                assert!(json["address"]
                    .as_str()
                    .unwrap()
                    .starts_with("http://127.0.0.1:"));
                assert!(json["started_at"].is_string() && json["version"].is_string());
                assert_eq!(
                    key,
                    format!("/quiver/searchers/{}", json["id"].as_str().unwrap())
                );
            }
            "collections" => {
                assert_eq!(key, "/quiver/collections/docs");
                assert_eq!(json["dimension"], 16);
                assert_eq!(json["metric"], "ip");
                assert_eq!(json["num_shards"], 2);
                assert_eq!(json["replication_factor"], 2);
                assert_eq!(json["index_spec"], "flat");
            }
            "assignments" => {
                let replicas = json["replicas"].as_array().unwrap();
                assert_eq!(replicas.len(), 2);
                assert_ne!(replicas[0], replicas[1]);
                assert_eq!(
                    json["primary"], replicas[0],
                    "{key}: the primary is listed first"
                );
                assert_eq!(json["epoch"], 1, "{key}");
            }
            "replicas" => {
                assert_eq!(json["state"], "ACTIVE");
                assert!(json["point_count"].is_u64() && json["applied_seq"].is_u64());
                assert_eq!(json["epoch"], 1, "{key}");
                assert!(
                    json["role"] == "PRIMARY" || json["role"] == "FOLLOWER",
                    "{key}: {json}"
                );
            }
            "controller" => {
                // Only the election key: no Searcher joined or left after the collection.
                assert_eq!(key, "/quiver/controller/leader");
                assert!(
                    json["id"].as_str().unwrap().starts_with("merger-"),
                    "{json}"
                );
                assert!(json["since"].is_string());
            }
            other => panic!("unexpected key kind {other} in {key}"),
        }
    }
    assert_eq!(kinds.get("searchers"), Some(&2));
    assert_eq!(kinds.get("collections"), Some(&1));
    assert_eq!(kinds.get("assignments"), Some(&2));
    assert_eq!(kinds.get("replicas"), Some(&4));
}
