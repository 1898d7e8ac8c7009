//! The query path under faults, with real etcd and real processes: a SIGKILLed replica,
//! shards that fail or time out (`min_coverage`, deadlines), and etcd down. (Hedging has a
//! test binary of its own, `hedging.rs`, so that no sibling test shares the CPU while it
//! measures latency.) Slow and failing Searchers come from the Searcher's test-only
//! fault injection (`--fault-delay-ms`, `--fault-fail-fraction`), which hits exactly the
//! fraction of calls asked for, so none of this depends on luck.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use quiver_cluster::placement::{place_collection, shard_of};
use quiver_index::{dataset, Metric};
use quiver_integration_tests::{
    assert_same_results, brute_force, collection_config, eventually, id_scores, metric_value,
    reference_results, search_request, upsert_rows, Cluster, ClusterOptions,
};
use quiver_proto::v1::{self, SearchResponse, ShardOutcome};

/// A collection of two shards at RF 1 on `searchers` and each shard's Searcher: placement is
/// a pure function and even, so the two land on two different Searchers.
fn name_with_shards_apart(prefix: &str, searchers: &[&str]) -> (String, [String; 2]) {
    let live: Vec<String> = searchers.iter().map(|id| id.to_string()).collect();
    let name = format!("{prefix}-0");
    let placed = place_collection(&live, &name, 2, 1).unwrap();
    let [first, second] = [placed[0][0].clone(), placed[1][0].clone()];
    assert_ne!(first, second, "two shards on {live:?}");
    (name, [first, second])
}

fn report(response: &SearchResponse, shard: u32) -> &v1::ShardReport {
    response
        .shards
        .iter()
        .find(|report| report.shard == shard)
        .unwrap_or_else(|| panic!("no report for shard {shard}: {response:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_searcher_costs_a_steady_search_stream_nothing() {
    let lease_ttl_secs = 2;
    let mut cluster = Cluster::start(3, lease_ttl_secs).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config("steady", 16, v1::Metric::L2, 4, 2))
        .await
        .expect("create");
    let base = dataset::synthetic(2000, 16, 21);
    upsert_rows(&mut client, "steady", &base, 500).await;
    let queries = dataset::synthetic(16, 16, 22);
    let reference = Arc::new(reference_results(&mut client, "steady", &base, &queries, 10).await);

    // Two clients search without pause; every answer must be complete and exact.
    let stop = Arc::new(AtomicBool::new(false));
    let searches = Arc::new(AtomicUsize::new(0));
    let problems: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut streams = Vec::new();
    for stream in 0..2 {
        let mut client = cluster.client().await;
        let queries = queries.clone();
        let (stop, searches, problems, reference) = (
            Arc::clone(&stop),
            Arc::clone(&searches),
            Arc::clone(&problems),
            Arc::clone(&reference),
        );
        streams.push(tokio::spawn(async move {
            let mut row = stream;
            while !stop.load(Ordering::SeqCst) {
                row = (row + 1) % queries.len();
                let mut request = search_request("steady", queries.row(row), 10);
                request.timeout_ms = 5000;
                match client.search(request).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        if response.partial || response.results[0] != reference[row] {
                            problems.lock().unwrap().push(format!(
                                "query {row}: partial {} or results differ: {:?}",
                                response.partial, response.shards
                            ));
                        }
                    }
                    Err(status) => problems
                        .lock()
                        .unwrap()
                        .push(format!("query {row} failed: {status:?}")),
                }
                searches.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_kill = searches.load(Ordering::SeqCst);
    let victim = cluster.searchers[1].id.clone();
    cluster.searchers[1].kill();
    // The stream goes on while etcd still lists the dead Searcher (its lease runs out) and
    // after it is gone.
    eventually(
        Duration::from_secs(lease_ttl_secs + 5),
        "the killed searcher's lease to expire",
        async || {
            (!cluster
                .etcd_keys("/quiver/searchers/")
                .iter()
                .any(|key| key.ends_with(&victim)))
            .then_some(())
        },
    )
    .await;
    let while_listed = searches.load(Ordering::SeqCst) - before_kill;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for stream in streams {
        stream.await.unwrap();
    }
    let total = searches.load(Ordering::SeqCst);
    println!(
        "{total} searches, {before_kill} before the SIGKILL, {while_listed} while etcd still listed the dead searcher"
    );
    let problems = problems.lock().unwrap();
    assert!(
        problems.is_empty(),
        "{} of {total} searches failed or differed; first: {:?}\nmerger log:\n{}",
        problems.len(),
        problems.iter().take(3).collect::<Vec<_>>(),
        cluster.log_tail("merger")
    );
    assert!(before_kill >= 10, "the stream ran before the kill");
    assert!(
        while_listed >= 10,
        "the stream ran while the dead searcher was still listed"
    );
    // The dead replica was asked and its shards were answered by the other replica, by a
    // retry after the failure or by a hedge sent while the call hung: the failure path ran,
    // not just routing around a Searcher etcd no longer lists. Which of the two depends on
    // whether the reset reached the Merger before the hedge delay.
    let retries = metric_value(
        &cluster.merger_address,
        "quiver_merger_search_retries_total",
    );
    let hedges_won = metric_value(&cluster.merger_address, "quiver_merger_hedges_won_total");
    println!("{retries} shards retried, {hedges_won} hedges won");
    assert!(
        retries + hedges_won >= 1.0,
        "no shard was retried or hedged: {retries} retries, {hedges_won} hedges won"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_coverage_chooses_between_a_flagged_partial_answer_and_unavailable() {
    let (name, hosts) = name_with_shards_apart("coverage", &["searcher-1", "searcher-2"]);
    // Every search call to searcher-2 fails with UNAVAILABLE; with one replica per shard,
    // its shard has nowhere to be retried.
    let mut cluster = Cluster::start_with(
        ClusterOptions::new(2, 10).searcher_args(1, &["--fault-fail-fraction", "1.0"]),
    )
    .await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config(&name, 8, v1::Metric::L2, 2, 1))
        .await
        .expect("create");
    let base = dataset::synthetic(400, 8, 41);
    upsert_rows(&mut client, &name, &base, 400).await;
    let failing = hosts.iter().position(|host| host == "searcher-2").unwrap() as u32;
    let healthy = 1 - failing;
    let query = base.row(7).to_vec();

    // Half the shards are enough: the healthy shard's exact results, flagged partial, the
    // missing shard named with its Searcher and code.
    let mut request = search_request(&name, &query, 10);
    request.min_coverage = Some(0.5);
    let response = client.search(request).await.expect("partial").into_inner();
    assert!(response.partial);
    assert_eq!(response.coverage, 0.5);
    assert_eq!((response.shards_answered, response.shards_total), (1, 2));
    let good = report(&response, healthy);
    assert_eq!(good.outcome, ShardOutcome::Ok as i32);
    assert_eq!(good.searcher_id, "searcher-1");
    let bad = report(&response, failing);
    assert_eq!(bad.outcome, ShardOutcome::Failed as i32, "{bad:?}");
    assert_eq!(bad.searcher_id, "searcher-2");
    assert_eq!(bad.code, "UNAVAILABLE");
    assert!(bad.message.contains("injected"), "{}", bad.message);
    assert_eq!(response.failed_shards.len(), 1);
    assert_eq!(response.failed_shards[0].shard, failing);
    let expected = brute_force(Metric::L2, &base, &query, 10, |row| {
        shard_of(&row.to_string(), 2) == healthy
    });
    assert_same_results(&id_scores(&response.results[0]), &expected, "partial");

    // All shards, explicitly or by default: UNAVAILABLE naming the shard.
    for min_coverage in [Some(1.0), None] {
        let mut request = search_request(&name, &query, 10);
        request.min_coverage = min_coverage;
        let error = client.search(request).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unavailable, "{error:?}");
        assert!(
            error.message().contains(&format!(
                "shard {failing} on searcher-2: FAILED UNAVAILABLE"
            )),
            "{}",
            error.message()
        );
        assert!(!error.message().contains(&format!("shard {healthy}")));
    }
    for bad_coverage in [0.0, 1.5, -1.0] {
        let mut request = search_request(&name, &query, 10);
        request.min_coverage = Some(bad_coverage);
        let error = client.search(request).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{bad_coverage}");
    }

    // With searcher-2 gone there is no replica to ask at all.
    cluster.searchers[1].stop();
    let response = eventually(
        Duration::from_secs(10),
        "the shard to have no live replica",
        async || {
            let mut request = search_request(&name, &query, 10);
            request.min_coverage = Some(0.5);
            let response = client.search(request).await.ok()?.into_inner();
            (report(&response, failing).outcome == ShardOutcome::NoLiveReplica as i32)
                .then_some(response)
        },
    )
    .await;
    let bad = report(&response, failing);
    assert_eq!((bad.attempts, bad.searcher_id.as_str()), (0, ""));
    assert_eq!(bad.code, "UNAVAILABLE");
    assert_same_results(&id_scores(&response.results[0]), &expected, "partial");
    let error = client
        .search(search_request(&name, &query, 10))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unavailable);
    assert!(
        error
            .message()
            .contains(&format!("shard {failing}: NO_LIVE_REPLICA")),
        "{}",
        error.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_bounds_a_search_and_names_the_shards_that_ran_out_of_time() {
    let (name, hosts) = name_with_shards_apart("deadline", &["searcher-1", "searcher-2"]);
    // searcher-2 takes 5 s to answer any search.
    let cluster = Cluster::start_with(
        ClusterOptions::new(2, 10).searcher_args(1, &["--fault-delay-ms", "5000"]),
    )
    .await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config(&name, 8, v1::Metric::L2, 2, 1))
        .await
        .expect("create");
    let base = dataset::synthetic(200, 8, 51);
    upsert_rows(&mut client, &name, &base, 200).await;
    let slow = hosts.iter().position(|host| host == "searcher-2").unwrap() as u32;

    let mut request = search_request(&name, base.row(3), 5);
    request.timeout_ms = 400;
    let started = Instant::now();
    let error = client.search(request.clone()).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(error.code(), tonic::Code::DeadlineExceeded, "{error:?}");
    assert!(
        error.message().contains(&format!(
            "shard {slow} on searcher-2: TIMED_OUT DEADLINE_EXCEEDED"
        )),
        "{}",
        error.message()
    );
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(2500),
        "the search took {elapsed:?} with a 400 ms deadline"
    );

    request.min_coverage = Some(0.5);
    let started = Instant::now();
    let response = client.search(request).await.expect("partial").into_inner();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    assert!(response.partial);
    let timed_out = report(&response, slow);
    assert_eq!(timed_out.outcome, ShardOutcome::TimedOut as i32);
    assert_eq!(timed_out.code, "DEADLINE_EXCEEDED");
    assert_eq!(timed_out.searcher_id, "searcher-2");
    assert!(timed_out.latency_us >= 350_000, "{timed_out:?}");
    assert_eq!(report(&response, 1 - slow).outcome, ShardOutcome::Ok as i32);

    // The client's own gRPC deadline bounds the search the same way, and the partial
    // answer arrives before the client gives up.
    let mut request = search_request(&name, base.row(3), 5);
    request.min_coverage = Some(0.5);
    let mut call = tonic::Request::new(request);
    call.set_timeout(Duration::from_millis(600));
    let started = Instant::now();
    let response = client
        .search(call)
        .await
        .expect("a partial answer within the client's deadline")
        .into_inner();
    assert!(started.elapsed() < Duration::from_millis(600));
    assert!(response.partial);
    assert_eq!(
        report(&response, slow).outcome,
        ShardOutcome::TimedOut as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_keep_succeeding_from_the_cached_state_while_etcd_is_down() {
    // A short lease, so that the outage outlasts every lease in etcd's eyes.
    let lease_ttl_secs = 2;
    let mut cluster = Cluster::start(2, lease_ttl_secs).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config("cached", 16, v1::Metric::L2, 2, 2))
        .await
        .expect("create");
    let base = dataset::synthetic(1000, 16, 61);
    upsert_rows(&mut client, "cached", &base, 500).await;
    let queries = dataset::synthetic(8, 16, 62);
    let reference = reference_results(&mut client, "cached", &base, &queries, 10).await;

    cluster.etcd.stop();
    let endpoint = cluster
        .etcd
        .endpoint
        .trim_start_matches("http://")
        .to_string();
    assert!(
        std::net::TcpStream::connect(&endpoint).is_err(),
        "etcd still answers"
    );
    let outage = Duration::from_secs(lease_ttl_secs * 2 + 1);
    let started = Instant::now();
    let mut searched = 0;
    let mut answered_by: HashMap<String, usize> = HashMap::new();
    while started.elapsed() < outage {
        let row = searched % queries.len();
        let response = client
            .search(search_request("cached", queries.row(row), 10))
            .await
            .unwrap_or_else(|status| {
                panic!(
                    "search {searched} failed {:?} into the etcd outage: {status:?}\nmerger log:\n{}",
                    started.elapsed(),
                    cluster.log_tail("merger")
                )
            })
            .into_inner();
        assert!(!response.partial);
        assert_eq!(response.results[0], reference[row], "query {row}");
        for report in &response.shards {
            *answered_by.entry(report.searcher_id.clone()).or_default() += 1;
        }
        searched += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{searched} searches during a {outage:?} etcd outage, shards answered by {answered_by:?}"
    );
    assert!(searched >= 50, "only {searched} searches");
}
