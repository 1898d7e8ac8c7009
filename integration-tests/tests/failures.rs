//! Searchers dying: leased keys vanish by themselves, reads fail over to other replicas,
//! writes report the replicas they missed, and acknowledged writes survive a SIGKILL.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use quiver_index::dataset;
use quiver_integration_tests::{collection_config, eventually, upsert_rows, Cluster};
use quiver_proto::v1::{
    self, DeleteRequest, DescribeCollectionRequest, GetRequest, Point, ReplicaState, SearchRequest,
    UpsertRequest, Vector,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_searcher_vanishes_within_ttl_and_reads_fail_over() {
    let lease_ttl_secs = 2;
    let mut cluster = Cluster::start(3, lease_ttl_secs).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config("c", 16, v1::Metric::L2, 4, 2))
        .await
        .expect("create");
    let base = dataset::synthetic(2000, 16, 3);
    upsert_rows(&mut client, "c", &base, 500).await;
    let victim = cluster.searchers[1].id.clone();
    assert!(cluster
        .etcd_keys("/quiver/")
        .iter()
        .any(|key| key.ends_with(&format!("/{victim}"))));

    let query = Vector {
        values: base.row(42).to_vec(),
    };
    let before = client
        .search(SearchRequest {
            collection: "c".into(),
            queries: vec![query.clone()],
            k: 10,
            ..SearchRequest::default()
        })
        .await
        .unwrap()
        .into_inner();

    cluster.searchers[1].kill();
    let killed_at = Instant::now();

    // Before etcd notices, the Merger still routes to the dead Searcher and must retry on
    // the other replica: the answer stays complete and identical.
    for _ in 0..5 {
        let after = client
            .search(SearchRequest {
                collection: "c".into(),
                queries: vec![query.clone()],
                k: 10,
                ..SearchRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            after.shards_answered, 4,
            "failed: {:?}",
            after.failed_shards
        );
        assert_eq!(after.results, before.results);
    }

    // With one of two replicas gone a majority quorum (2) cannot be met, but a write that
    // asks for one acknowledgement reaches the surviving replica of each shard (promoted to
    // primary where the dead Searcher led), is acknowledged, and names the replicas it
    // missed.
    let response = client
        .upsert(UpsertRequest {
            collection: "c".into(),
            points: (0..50)
                .map(|index| Point {
                    id: format!("late-{index}"),
                    vector: base.row(index).to_vec(),
                    payload_json: String::new(),
                })
                .collect(),
            write_quorum: Some(1),
        })
        .await
        .expect("a write with one live replica per shard is acknowledged")
        .into_inner();
    assert_eq!(response.upserted, 50);
    if !response.failed_replicas.is_empty() {
        assert!(response
            .failed_replicas
            .iter()
            .all(|failure| failure.searcher_id == victim));
    }

    let vanished_after = eventually(
        Duration::from_secs(lease_ttl_secs + 5),
        "the killed searcher's keys to vanish",
        async || {
            let keys = cluster.etcd_keys("/quiver/");
            let left: Vec<&String> = keys
                .iter()
                .filter(|key| {
                    key.starts_with("/quiver/searchers/") || key.starts_with("/quiver/replicas/")
                })
                .filter(|key| key.ends_with(&format!("/{victim}")))
                .collect();
            left.is_empty().then(|| killed_at.elapsed())
        },
    )
    .await;
    println!("keys of the SIGKILLed searcher vanished after {vanished_after:?} (lease TTL {lease_ttl_secs}s)");
    assert!(vanished_after <= Duration::from_secs(lease_ttl_secs + 3));
    // Assignments are desired state: they stay.
    assert!(cluster
        .etcdctl(&["get", "--prefix", "/quiver/assignments/c/"])
        .contains(&victim));

    let description = client
        .describe_collection(DescribeCollectionRequest { name: "c".into() })
        .await
        .unwrap()
        .into_inner()
        .collection
        .unwrap();
    for shard in description.shards {
        for replica in shard.replicas {
            if replica.searcher_id == victim {
                assert_eq!(replica.state, ReplicaState::Offline as i32);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_and_restart() {
    let mut cluster = Cluster::start(2, 4).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config("durable", 8, v1::Metric::L2, 2, 1))
        .await
        .expect("create");
    let base = dataset::synthetic(500, 8, 11);
    upsert_rows(&mut client, "durable", &base, 100).await;
    let deleted_ids: Vec<String> = (0..100).map(|row| row.to_string()).collect();
    let deleted = client
        .delete(DeleteRequest {
            collection: "durable".into(),
            ids: deleted_ids.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 100);

    // SIGKILL both Searchers: nothing is flushed at exit, so only the log can bring it back.
    cluster.searchers[0].kill();
    cluster.searchers[1].kill();
    cluster.restart_searcher(0);
    cluster.restart_searcher(1);

    let all_ids: Vec<String> = (0..500).map(|row| row.to_string()).collect();
    let mut client_for_wait = client.clone();
    let points = eventually(Duration::from_secs(30), "replicas to reopen", async || {
        let response = client_for_wait
            .get(GetRequest {
                collection: "durable".into(),
                ids: all_ids.clone(),
                with_vectors: true,
                with_payloads: true,
            })
            .await
            .ok()?
            .into_inner();
        response.failed_shards.is_empty().then_some(response.points)
    })
    .await;
    assert_eq!(points.len(), 400);
    let deleted_set: HashSet<&String> = deleted_ids.iter().collect();
    for point in &points {
        assert!(
            !deleted_set.contains(&point.id),
            "deleted {} came back",
            point.id
        );
        let row: usize = point.id.parse().unwrap();
        assert_eq!(point.vector, base.row(row).to_vec());
        assert_eq!(point.payload_json, format!(r#"{{"row":{row}}}"#));
    }

    let response = client
        .search(SearchRequest {
            collection: "durable".into(),
            queries: vec![Vector {
                values: base.row(5).to_vec(),
            }],
            k: 5,
            ..SearchRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.shards_answered, 2);
    assert!(response.results[0]
        .neighbors
        .iter()
        .all(|neighbor| !deleted_set.contains(&neighbor.id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_removes_keys_at_once_and_search_reports_missing_shards() {
    let mut cluster = Cluster::start(2, 30).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config("partial", 4, v1::Metric::L2, 4, 1))
        .await
        .expect("create");
    let base = dataset::synthetic(400, 4, 5);
    upsert_rows(&mut client, "partial", &base, 400).await;

    // SIGTERM revokes the lease: the keys go now, not after the 30 s TTL.
    let stopped = cluster.searchers[0].id.clone();
    let started = Instant::now();
    cluster.searchers[0].stop();
    eventually(
        Duration::from_secs(5),
        "the stopped searcher's keys to go",
        async || {
            let keys = cluster.etcd_keys("/quiver/searchers/");
            (!keys.iter().any(|key| key.ends_with(&stopped))).then_some(())
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));

    let query = || Vector {
        values: base.row(0).to_vec(),
    };
    // Partial results only when asked for: any one shard will do here.
    let response = eventually(Duration::from_secs(5), "a partial answer", async || {
        let response = client
            .search(SearchRequest {
                collection: "partial".into(),
                queries: vec![query()],
                k: 10,
                min_coverage: Some(0.25),
                ..SearchRequest::default()
            })
            .await
            .ok()?
            .into_inner();
        (response.shards_answered < response.shards_total).then_some(response)
    })
    .await;
    assert_eq!(response.shards_total, 4);
    assert!(response.shards_answered >= 1);
    assert!(response.partial);
    assert_eq!(
        response.coverage,
        f64::from(response.shards_answered) / f64::from(response.shards_total)
    );
    assert_eq!(
        response.failed_shards.len() as u32,
        response.shards_total - response.shards_answered
    );
    for failure in &response.failed_shards {
        assert_eq!(failure.code, "UNAVAILABLE");
        assert_eq!(failure.searcher_id, "", "no replica was live to ask");
    }
    for report in &response.shards {
        let missing = response
            .failed_shards
            .iter()
            .any(|failure| failure.shard == report.shard);
        let expected = if missing {
            v1::ShardOutcome::NoLiveReplica
        } else {
            v1::ShardOutcome::Ok
        };
        assert_eq!(report.outcome, expected as i32, "{report:?}");
    }

    // By default every shard must answer.
    let strict = client
        .search(SearchRequest {
            collection: "partial".into(),
            queries: vec![query()],
            k: 10,
            ..SearchRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(strict.code(), tonic::Code::Unavailable);
    for failure in &response.failed_shards {
        assert!(
            strict
                .message()
                .contains(&format!("shard {}", failure.shard)),
            "{}",
            strict.message()
        );
    }

    // A write to a shard with no live replica is not acknowledged.
    let error = client
        .upsert(UpsertRequest {
            collection: "partial".into(),
            points: (0..40)
                .map(|index| Point {
                    id: format!("p{index}"),
                    vector: base.row(index).to_vec(),
                    payload_json: String::new(),
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unavailable);
    assert!(
        error.message().contains("not acknowledged"),
        "{}",
        error.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_etcd_value_never_deletes_replica_data() {
    let cluster = Cluster::start(2, 10).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config("keep", 4, v1::Metric::L2, 2, 1))
        .await
        .expect("create");
    let base = dataset::synthetic(100, 4, 9);
    upsert_rows(&mut client, "keep", &base, 100).await;
    let good_value = cluster.etcdctl(&["get", "/quiver/collections/keep", "--print-value-only"]);

    // A hand edit gone wrong: the view cannot decode the collection, so Searchers close it.
    cluster.etcdctl(&["put", "/quiver/collections/keep", "{not json"]);
    eventually(
        Duration::from_secs(10),
        "replicas of keep to close",
        async || {
            cluster
                .etcd_keys("/quiver/replicas/keep/")
                .is_empty()
                .then_some(())
        },
    )
    .await;

    // Put right, the replicas reopen from the files they kept.
    cluster.etcdctl(&["put", "/quiver/collections/keep", good_value.trim()]);
    let ids: Vec<String> = (0..100).map(|row| row.to_string()).collect();
    let points = eventually(
        Duration::from_secs(15),
        "replicas to reopen with their data",
        async || {
            let response = client
                .get(GetRequest {
                    collection: "keep".into(),
                    ids: ids.clone(),
                    with_vectors: false,
                    with_payloads: false,
                })
                .await
                .ok()?
                .into_inner();
            response.failed_shards.is_empty().then_some(response.points)
        },
    )
    .await;
    assert_eq!(
        points.len(),
        100,
        "every point survived the malformed value"
    );
}
