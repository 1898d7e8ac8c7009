//! Observability against real processes: exact values scraped from `/metrics` over plain
//! HTTP, the request id from the client through the Merger's and the Searchers' JSON logs
//! and back in the response metadata, and readiness (named gRPC health service and
//! `/ready`) following the replicas' states.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use quiver_integration_tests::{
    collection_config, http_get, search_request, wait_for, Cluster, ClusterOptions,
};
use quiver_proto::v1::{self, DeleteRequest, Point, UpsertRequest};
use tonic::Code;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

const PATIENCE: Duration = Duration::from_secs(30);

/// Every sample of a `/metrics` page, keyed by its series as printed
/// (`name{label="value",…}`, labels sorted by name, as the encoder writes them).
fn scrape(address: &str) -> HashMap<String, f64> {
    let (status, body) = http_get(address, "/metrics");
    assert!(status.contains("200"), "GET /metrics answered {status}");
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            (
                series.to_string(),
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("a value in {line}")),
            )
        })
        .collect()
}

/// The series key of `name` with `labels`, in the encoder's (sorted) label order.
fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let mut labels = labels.to_vec();
    labels.sort();
    let labels: Vec<String> = labels
        .iter()
        .map(|(key, value)| format!("{key}=\"{value}\""))
        .collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// The value of one series, failing (with what the page had of that family) when absent.
fn value(samples: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = series(name, labels);
    match samples.get(&key) {
        Some(value) => *value,
        None => {
            let mut family: Vec<&String> = samples
                .keys()
                .filter(|series| series.starts_with(name))
                .collect();
            family.sort();
            panic!("no series {key} on the page; the family has {family:?}")
        }
    }
}

/// Waits until the Searcher at `address` reports `expected` points for the replica `labels`
/// names.
async fn wait_for_replica_points(
    address: &str,
    labels: &[(&str, &str)],
    expected: f64,
    what: &str,
) {
    wait_for(PATIENCE, what, async || {
        let points = scrape(address)
            .get(&series("quiver_searcher_replica_points", labels))
            .copied();
        if points == Some(expected) {
            Ok(())
        } else {
            Err(format!(
                "{labels:?} on {address}: {points:?}, want {expected}"
            ))
        }
    })
    .await;
}

fn points(count: usize) -> Vec<Point> {
    (0..count)
        .map(|row| Point {
            id: row.to_string(),
            vector: vec![row as f32, 1.0, (row % 7) as f32, -1.0],
            payload_json: String::new(),
        })
        .collect()
}

/// The Searcher id each shard's assignment names first (the primary with RF 1).
fn shard_owners(cluster: &Cluster, collection: &str, shards: u32) -> BTreeMap<u32, String> {
    (0..shards)
        .map(|shard| {
            let assignment = cluster
                .etcd_json(&format!("/quiver/assignments/{collection}/{shard}"))
                .expect("an assignment");
            (
                shard,
                assignment["replicas"][0]
                    .as_str()
                    .expect("a replica id")
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exist_from_the_start_and_count_exactly() {
    let cluster = Cluster::start(2, 10).await;

    // Before any request: the series exist, at zero, and the etcd sessions are up.
    let merger = scrape(&cluster.merger_address);
    for method in ["search", "upsert", "get", "create_collection"] {
        let labels = [("method", method), ("code", "OK")];
        assert_eq!(value(&merger, "quiver_merger_requests_total", &labels), 0.0);
        assert_eq!(
            value(
                &merger,
                "quiver_merger_request_duration_seconds_count",
                &labels
            ),
            0.0
        );
    }
    assert_eq!(
        value(&merger, "quiver_merger_partial_results_total", &[]),
        0.0
    );
    assert_eq!(
        value(&merger, "quiver_merger_search_fanout_calls_count", &[]),
        0.0
    );
    assert_eq!(
        value(&merger, "quiver_merger_replicas", &[("state", "ACTIVE")]),
        0.0
    );
    assert_eq!(value(&merger, "quiver_merger_searchers", &[]), 2.0);
    assert_eq!(
        value(&merger, "quiver_etcd_session_up", &[("session", "watch")]),
        1.0
    );
    assert_eq!(
        value(
            &merger,
            "quiver_etcd_session_reconnects_total",
            &[("session", "watch")]
        ),
        0.0
    );
    for searcher in &cluster.searchers {
        let page = scrape(&searcher.address);
        for session in ["watch", "lease"] {
            assert_eq!(
                value(&page, "quiver_etcd_session_up", &[("session", session)]),
                1.0,
                "{} {session}",
                searcher.id
            );
        }
        assert_eq!(
            value(
                &page,
                "quiver_searcher_requests_total",
                &[("method", "search"), ("code", "OK")]
            ),
            0.0
        );
        assert_eq!(
            value(&page, "quiver_searcher_search_shards_count", &[]),
            0.0
        );
    }

    // Four shards, one replica each, on two Searchers; 200 points.
    const SHARDS: u32 = 4;
    const POINTS: usize = 200;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config("obs", 4, v1::Metric::L2, SHARDS, 1))
        .await
        .expect("create");
    client
        .upsert(UpsertRequest {
            collection: "obs".into(),
            points: points(POINTS),
            ..Default::default()
        })
        .await
        .expect("upsert");
    let owners = shard_owners(&cluster, "obs", SHARDS);
    let mut per_shard: BTreeMap<u32, u64> = BTreeMap::new();
    for row in 0..POINTS {
        *per_shard
            .entry(quiver_cluster::shard_of(&row.to_string(), SHARDS))
            .or_default() += 1;
    }
    let searcher_of = |id: &str| &cluster.searchers[cluster.searcher_index(id)];

    // Each replica's points, index memory and state, on the Searcher that hosts it.
    for (shard, owner) in &owners {
        let shard_label = shard.to_string();
        let labels = [("collection", "obs"), ("shard", shard_label.as_str())];
        let expected = per_shard.get(shard).copied().unwrap_or(0) as f64;
        wait_for_replica_points(
            &searcher_of(owner).address,
            &labels,
            expected,
            "replica points to reach the loaded count",
        )
        .await;
        let page = scrape(&searcher_of(owner).address);
        assert!(
            value(&page, "quiver_searcher_replica_index_memory_bytes", &labels) > 0.0,
            "index memory of shard {shard}"
        );
        // The collection declares no payload index.
        assert_eq!(
            value(
                &page,
                "quiver_searcher_replica_payload_index_memory_bytes",
                &labels
            ),
            0.0,
            "payload index memory of shard {shard}"
        );
        assert_eq!(
            value(
                &page,
                "quiver_searcher_replica_state",
                &[
                    ("collection", "obs"),
                    ("shard", &shard_label),
                    ("state", "ACTIVE"),
                    ("role", "PRIMARY"),
                ]
            ),
            1.0
        );
        // The other Searcher has no series for it.
        for other in cluster.searchers.iter().filter(|other| &other.id != owner) {
            assert!(!scrape(&other.address)
                .contains_key(&series("quiver_searcher_replica_points", &labels)));
        }
    }
    wait_for(
        PATIENCE,
        "the Merger's view to count 4 ACTIVE replicas",
        async || {
            let page = scrape(&cluster.merger_address);
            let active = page.get(&series("quiver_merger_replicas", &[("state", "ACTIVE")]));
            if active == Some(&4.0) {
                Ok(())
            } else {
                Err(format!("{active:?}"))
            }
        },
    )
    .await;

    // Searches: counted once each, by method and code, with their latency.
    const SEARCHES: usize = 5;
    for _ in 0..SEARCHES {
        let response = client
            .search(search_request("obs", &[1.0, 1.0, 1.0, -1.0], 3))
            .await
            .expect("search")
            .into_inner();
        assert!(!response.partial);
    }
    let not_found = client
        .search(search_request("nowhere", &[1.0, 1.0, 1.0, -1.0], 3))
        .await
        .expect_err("an unknown collection");
    assert_eq!(not_found.code(), Code::NotFound);

    let merger = scrape(&cluster.merger_address);
    let ok = [("method", "search"), ("code", "OK")];
    let missing = [("method", "search"), ("code", "NOT_FOUND")];
    let n = SEARCHES as f64;
    assert_eq!(value(&merger, "quiver_merger_requests_total", &ok), n);
    assert_eq!(
        value(&merger, "quiver_merger_requests_total", &missing),
        1.0
    );
    assert_eq!(
        value(&merger, "quiver_merger_request_duration_seconds_count", &ok),
        n
    );
    assert_eq!(
        value(
            &merger,
            "quiver_merger_request_duration_seconds_count",
            &missing
        ),
        1.0
    );
    // The unknown collection is refused before any fan-out.
    assert_eq!(
        value(&merger, "quiver_merger_search_fanout_shards_count", &[]),
        n
    );
    assert_eq!(
        value(&merger, "quiver_merger_search_fanout_shards_sum", &[]),
        n * f64::from(SHARDS)
    );
    // One call per Searcher per search (one replica per shard: nothing to hedge to).
    let searchers_used = owners
        .values()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(
        value(&merger, "quiver_merger_search_fanout_calls_count", &[]),
        n
    );
    assert_eq!(
        value(&merger, "quiver_merger_search_fanout_calls_sum", &[]),
        n * searchers_used as f64
    );
    assert_eq!(
        value(&merger, "quiver_merger_partial_results_total", &[]),
        0.0
    );
    for (shard, owner) in &owners {
        let shard_label = shard.to_string();
        let labels = [("collection", "obs"), ("shard", shard_label.as_str())];
        assert_eq!(
            value(
                &merger,
                "quiver_merger_shard_search_duration_seconds_count",
                &labels
            ),
            n,
            "the Merger's latency of shard {shard}"
        );
        let page = scrape(&searcher_of(owner).address);
        assert_eq!(
            value(
                &page,
                "quiver_searcher_shard_search_duration_seconds_count",
                &labels
            ),
            n,
            "{owner}'s latency of shard {shard}"
        );
    }
    let mut searcher_calls = 0.0;
    for searcher in &cluster.searchers {
        let page = scrape(&searcher.address);
        let calls = value(
            &page,
            "quiver_searcher_requests_total",
            &[("method", "search"), ("code", "OK")],
        );
        assert_eq!(
            value(
                &page,
                "quiver_searcher_request_duration_seconds_count",
                &[("method", "search"), ("code", "OK")]
            ),
            calls
        );
        assert_eq!(
            value(&page, "quiver_searcher_search_shards_count", &[]),
            calls
        );
        searcher_calls += calls;
    }
    assert_eq!(searcher_calls, n * searchers_used as f64);

    // Deletes show in the replica points.
    let deleted: Vec<String> = (0..50).map(|row| row.to_string()).collect();
    client
        .delete(DeleteRequest {
            collection: "obs".into(),
            ids: deleted.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    for (shard, owner) in &owners {
        let shard_label = shard.to_string();
        let labels = [("collection", "obs"), ("shard", shard_label.as_str())];
        let gone = deleted
            .iter()
            .filter(|id| quiver_cluster::shard_of(id, SHARDS) == *shard)
            .count() as u64;
        let expected = (per_shard.get(shard).copied().unwrap_or(0) - gone) as f64;
        wait_for_replica_points(
            &searcher_of(owner).address,
            &labels,
            expected,
            "replica points to drop after the delete",
        )
        .await;
    }
}

/// The JSON log lines of `name` whose `request` span carries `request_id`, parsed.
fn lines_with_request_id(
    cluster: &Cluster,
    name: &str,
    request_id: &str,
) -> Vec<serde_json::Value> {
    cluster
        .log_text(name)
        .lines()
        .filter(|line| line.contains(request_id))
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|error| {
                panic!("{name} wrote a line that is not JSON ({error}): {line}")
            })
        })
        .filter(|line: &serde_json::Value| line["span"]["request_id"] == request_id)
        .collect()
}

fn has_message(lines: &[serde_json::Value], message: &str) -> bool {
    lines
        .iter()
        .any(|line| line["fields"]["message"] == message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_reaches_every_log_and_comes_back() {
    let options = ClusterOptions::new(2, 10)
        .searcher_args(0, &["--log-json"])
        .searcher_args(1, &["--log-json"])
        .merger_args(&["--log-json"])
        .env("RUST_LOG", "info,quiver_merger=debug,quiver_searcher=debug");
    let cluster = Cluster::start_with(options).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config("ids", 4, v1::Metric::L2, 4, 1))
        .await
        .expect("create");
    client
        .upsert(UpsertRequest {
            collection: "ids".into(),
            points: points(40),
            ..Default::default()
        })
        .await
        .expect("upsert");
    let owners = shard_owners(&cluster, "ids", 4);

    // A client's id is kept, echoed, and logged by the Merger and every Searcher it called.
    let mut request = tonic::Request::new(search_request("ids", &[1.0, 1.0, 1.0, -1.0], 3));
    request
        .metadata_mut()
        .insert("x-request-id", "obs-test-42".parse().unwrap());
    let response = client.search(request).await.expect("search");
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "obs-test-42"
    );
    let mut searchers_called: Vec<&String> = owners.values().collect();
    searchers_called.sort();
    searchers_called.dedup();
    wait_for(PATIENCE, "the id in every log", async || {
        let merger = lines_with_request_id(&cluster, "merger", "obs-test-42");
        if !has_message(&merger, "search served") {
            return Err(format!("merger lines with the id: {merger:?}"));
        }
        for searcher in &searchers_called {
            let lines = lines_with_request_id(&cluster, searcher, "obs-test-42");
            if !has_message(&lines, "search served") {
                return Err(format!("{searcher} lines with the id: {lines:?}"));
            }
        }
        Ok(())
    })
    .await;

    // Without an id (or with an invalid one) the Merger makes one, returns it and logs it.
    for sent in [None, Some("two words")] {
        let mut request = tonic::Request::new(search_request("ids", &[1.0, 1.0, 1.0, -1.0], 3));
        if let Some(sent) = sent {
            request
                .metadata_mut()
                .insert("x-request-id", sent.parse().unwrap());
        }
        let response = client.search(request).await.expect("search");
        let generated = response
            .metadata()
            .get("x-request-id")
            .expect("a generated id")
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(generated.len(), 36, "a UUID: {generated}");
        assert_eq!(generated.matches('-').count(), 4, "a UUID: {generated}");
        wait_for(PATIENCE, "the generated id in the logs", async || {
            let merger = lines_with_request_id(&cluster, "merger", &generated);
            let searcher = lines_with_request_id(&cluster, searchers_called[0], &generated);
            if has_message(&merger, "search served") && has_message(&searcher, "search served") {
                Ok(())
            } else {
                Err(format!("merger: {merger:?}; searcher: {searcher:?}"))
            }
        })
        .await;
    }

    // Errors carry it back too.
    let mut request = tonic::Request::new(search_request("nowhere", &[1.0, 1.0, 1.0, -1.0], 3));
    request
        .metadata_mut()
        .insert("x-request-id", "obs-error-7".parse().unwrap());
    let status = client
        .search(request)
        .await
        .expect_err("unknown collection");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        status.metadata().get("x-request-id").unwrap(),
        "obs-error-7"
    );
}

async fn named_health(address: &str, service: &str) -> Result<ServingStatus, String> {
    let channel = tonic::transport::Channel::from_shared(address.to_string())
        .map_err(|error| error.to_string())?
        .connect()
        .await
        .map_err(|error| format!("connect: {error}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|status| format!("check: {status:?}"))?;
    Ok(response.into_inner().status())
}

/// Waits until `service` on `address` reports `want`, and `/ready` answers accordingly.
async fn wait_readiness(address: &str, service: &str, want: ServingStatus) -> String {
    wait_for(
        PATIENCE,
        &format!("{service} at {address} to be {want:?}"),
        async || {
            let status = named_health(address, service).await?;
            let (http_status, body) = http_get(address, "/ready");
            let http_ready = http_status.contains(" 200 ");
            let http_not_ready = http_status.contains(" 503 ");
            match want {
                ServingStatus::Serving if status == want && http_ready => Ok(body),
                ServingStatus::NotServing if status == want && http_not_ready => Ok(body),
                _ => Err(format!("health {status:?}, /ready {http_status}: {body}")),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_every_assigned_replica_to_be_active() {
    let mut cluster = Cluster::start(1, 10).await;
    let merger_body = wait_readiness(
        &cluster.merger_address,
        "quiver.v1.Merger",
        ServingStatus::Serving,
    )
    .await;
    assert!(
        merger_body.starts_with("ready: cluster state loaded"),
        "{merger_body}"
    );
    let (live, body) = http_get(&cluster.merger_address, "/live");
    assert!(live.contains(" 200 "), "{live} {body}");

    let mut client = cluster.client().await;
    client
        .create_collection(collection_config("first", 4, v1::Metric::L2, 2, 1))
        .await
        .expect("create");
    let first = cluster.searchers[0].address.clone();
    let body = wait_readiness(&first, "quiver.v1.Searcher", ServingStatus::Serving).await;
    assert_eq!(
        body.trim(),
        "ready: registered; all 2 assigned replicas ACTIVE"
    );

    // A second Searcher whose replicas are held BOOTING: alive, registered, not ready.
    let gate = cluster.searcher_data_dir(0).with_file_name("boot-gate");
    std::fs::write(&gate, b"hold").expect("write the gate file");
    let gate_arg = gate.display().to_string();
    let index = cluster.add_searcher(&["--fault-boot-gate", &gate_arg]);
    let second = cluster.searchers[index].address.clone();
    let second_id = cluster.searchers[index].id.clone();
    // Replication factor 2 on two Searchers: one replica of each shard lands on it.
    let mut create = tonic::Request::new(collection_config("second", 4, v1::Metric::L2, 2, 2));
    create.set_timeout(Duration::from_secs(3));
    // The create waits for every replica to be ACTIVE, which this one will not be: its
    // answer may come after the deadline; the collection is created either way.
    let _ = client.create_collection(create).await;
    wait_for(
        PATIENCE,
        "a replica BOOTING on the gated Searcher",
        async || {
            let record = cluster.etcd_json(&format!("/quiver/replicas/second/0/{second_id}"));
            match record {
                Some(record) if record["state"] == "BOOTING" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let body = wait_readiness(&second, "quiver.v1.Searcher", ServingStatus::NotServing).await;
    // It names one replica of its own that etcd shows BOOTING: one of `second`'s, or the
    // shard of `first` that even placement moved onto it (two replicas on two Searchers).
    let named = body
        .trim()
        .strip_prefix("not ready: replica ")
        .and_then(|rest| rest.strip_suffix(" is BOOTING"))
        .and_then(|replica| replica.split_once('/'))
        .unwrap_or_else(|| panic!("{body}"));
    let record = cluster.etcd_json(&format!(
        "/quiver/replicas/{}/{}/{second_id}",
        named.0, named.1
    ));
    assert_eq!(
        record.as_ref().map(|record| record["state"].clone()),
        Some("BOOTING".into()),
        "{body}: {record:?}"
    );
    // Liveness is not readiness.
    assert_eq!(
        named_health(&second, "").await.expect("health"),
        ServingStatus::Serving
    );
    let (live, _) = http_get(&second, "/live");
    assert!(live.contains(" 200 "), "{live}");
    let page = scrape(&second);
    assert_eq!(
        value(
            &page,
            "quiver_searcher_replica_state",
            &[
                ("collection", "second"),
                ("shard", "0"),
                ("state", "BOOTING"),
                (
                    "role",
                    if cluster.etcd_json("/quiver/assignments/second/0").unwrap()["primary"]
                        == second_id.as_str()
                    {
                        "PRIMARY"
                    } else {
                        "FOLLOWER"
                    }
                ),
            ]
        ),
        1.0
    );

    // Open the gate: the replicas turn ACTIVE and the Searcher ready.
    std::fs::remove_file(&gate).expect("remove the gate file");
    let body = wait_readiness(&second, "quiver.v1.Searcher", ServingStatus::Serving).await;
    let assigned = ["first", "second"]
        .iter()
        .flat_map(|collection| {
            (0..2).map(move |shard| format!("/quiver/assignments/{collection}/{shard}"))
        })
        .filter(|key| {
            // Voting replicas and learners: readiness counts every replica it hosts.
            cluster.etcd_json(key).is_some_and(|assignment| {
                ["replicas", "learners"].iter().any(|members| {
                    assignment[members]
                        .as_array()
                        .is_some_and(|ids| ids.iter().any(|id| *id == second_id.as_str()))
                })
            })
        })
        .count();
    assert_eq!(
        body.trim(),
        format!("ready: registered; all {assigned} assigned replicas ACTIVE")
    );
    wait_readiness(&first, "quiver.v1.Searcher", ServingStatus::Serving).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_session_gauges_follow_an_etcd_outage() {
    let mut cluster = Cluster::start(1, 4).await;
    let searcher = cluster.searchers[0].address.clone();
    let session = |address: &str, session: &str| {
        let page = scrape(address);
        (
            page.get(&series("quiver_etcd_session_up", &[("session", session)]))
                .copied(),
            page.get(&series(
                "quiver_etcd_session_reconnects_total",
                &[("session", session)],
            ))
            .copied(),
        )
    };
    assert_eq!(session(&searcher, "lease"), (Some(1.0), Some(0.0)));
    assert_eq!(session(&searcher, "watch"), (Some(1.0), Some(0.0)));
    assert_eq!(
        session(&cluster.merger_address, "watch"),
        (Some(1.0), Some(0.0))
    );

    cluster.etcd_stop();
    wait_for(PATIENCE, "the sessions to read down", async || {
        let seen = (
            session(&searcher, "lease"),
            session(&cluster.merger_address, "watch"),
        );
        if seen.0 .0 == Some(0.0) && seen.1 .0 == Some(0.0) {
            Ok(())
        } else {
            Err(format!("searcher lease, merger watch: {seen:?}"))
        }
    })
    .await;
    cluster.etcd_restart();
    wait_for(PATIENCE, "the sessions to come back, counted", async || {
        let seen = (
            session(&searcher, "lease"),
            session(&cluster.merger_address, "watch"),
        );
        let (merger_up, merger_reconnects) = seen.1;
        if seen.0 .0 == Some(1.0)
            && merger_up == Some(1.0)
            && merger_reconnects.is_some_and(|count| count >= 1.0)
        {
            Ok(())
        } else {
            Err(format!("searcher lease, merger watch: {seen:?}"))
        }
    })
    .await;
}
