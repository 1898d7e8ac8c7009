//! Placement end to end: a new collection is spread evenly over real Searchers whatever
//! they are named; a Searcher joining gets exactly its fair share of replicas (copied as
//! learners, then promoted) and only that share moves, and a Searcher gone for good has its
//! replicas rebuilt elsewhere, evenly, while searches stay exact throughout.
//!
//! The controller runs inside the Mergers and records each rebalance at
//! `/quiver/controller/rebalance`: `{"started_at","updated_at","trigger","searchers",
//! "moves":[{"collection","shard","from","to"}],"moved_replicas","total_replicas",
//! "moved_fraction","pending_shards","finished_at"}`.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use quiver_index::dataset::{self, Vectors};
use quiver_integration_tests::{
    assert_every_replica_holds, collection_config, reference_results, upsert_rows, wait_for,
    Cluster, ClusterOptions, SearchLoad,
};
use quiver_proto::v1::{self, HostedReplica, ReplicaState};
use serde_json::Value;

const REBALANCE_KEY: &str = "/quiver/controller/rebalance";

/// Every replica in `replicas` holds exactly the rows of `base` (ids are row numbers) that
/// hash to its shard.
async fn assert_replicas_hold_rows(
    cluster: &Cluster,
    collection: &str,
    num_shards: u32,
    base: &Vectors,
    replicas: &std::collections::BTreeMap<u32, Vec<(String, HostedReplica)>>,
) {
    let rows: HashMap<String, Vec<f32>> = (0..base.len())
        .map(|row| (row.to_string(), base.row(row).to_vec()))
        .collect();
    assert_every_replica_holds(
        cluster,
        collection,
        num_shards,
        &rows,
        replicas,
        |id, _, _| id.to_string(),
    )
    .await;
}

/// Every shard's assignment: `replication_factor` voting replicas, none of them `gone`, no
/// learner left, and each replica's key ACTIVE. Err says what is not so yet.
fn fully_replicated(
    cluster: &Cluster,
    collection: &str,
    num_shards: u32,
    replication_factor: usize,
    gone: Option<&str>,
) -> Result<Vec<Value>, String> {
    let mut assignments = Vec::new();
    for shard in 0..num_shards {
        let assignment = cluster
            .etcd_json(&format!("/quiver/assignments/{collection}/{shard}"))
            .ok_or_else(|| format!("no assignment for shard {shard}"))?;
        let replicas: Vec<&str> = assignment["replicas"]
            .as_array()
            .map(|replicas| replicas.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let learners = assignment["learners"]
            .as_array()
            .map(Vec::len)
            .unwrap_or_default();
        if replicas.len() != replication_factor
            || learners != 0
            || gone.is_some_and(|gone| replicas.contains(&gone))
        {
            return Err(format!("shard {shard}: assignment {assignment}"));
        }
        for searcher in replicas {
            let key = format!("/quiver/replicas/{collection}/{shard}/{searcher}");
            match cluster.etcd_json(&key) {
                Some(record) if record["state"] == "ACTIVE" => {}
                other => return Err(format!("{key}: {other:?}")),
            }
        }
        assignments.push(assignment);
    }
    Ok(assignments)
}

/// How many voting replicas of `collection` each Searcher holds, from the assignments in
/// etcd; every Searcher in `searchers` is listed, those holding none with 0.
fn replicas_per_searcher(
    cluster: &Cluster,
    collection: &str,
    num_shards: u32,
    searchers: &[String],
) -> BTreeMap<String, usize> {
    let mut load: BTreeMap<String, usize> = searchers.iter().map(|id| (id.clone(), 0)).collect();
    for shard in 0..num_shards {
        let assignment = cluster
            .etcd_json(&format!("/quiver/assignments/{collection}/{shard}"))
            .unwrap_or_else(|| panic!("no assignment for {collection}/{shard}"));
        for id in assignment["replicas"].as_array().into_iter().flatten() {
            *load
                .entry(id.as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    load
}

/// The quickstart's 4 shards x RF 2 on 3 Searchers (once 4/2/2), 3 x 3 on 3, 6 x 2 on 4 and
/// 8 x 2 on 5 (once 6/4/3/3/0), created through the Merger, each hold at most
/// ceil(replicas / searchers) per Searcher, with two ways of naming the Searchers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_collections_are_spread_evenly_whatever_the_searchers_are_named() {
    let layouts: [(usize, &[(u32, u32)]); 3] =
        [(3, &[(4, 2), (3, 3)]), (4, &[(6, 2)]), (5, &[(8, 2)])];
    let namings: [fn(usize) -> String; 2] = [
        |index| format!("s{}", index + 1),
        |index| format!("quiver-searcher-{index}"),
    ];
    for naming in namings {
        for (count, collections) in layouts {
            let ids: Vec<String> = (0..count).map(naming).collect();
            let names: Vec<&str> = ids.iter().map(String::as_str).collect();
            let cluster =
                Cluster::start_with(ClusterOptions::new(count, 4).searcher_ids(&names)).await;
            let mut client = cluster.client().await;
            for (shards, replication_factor) in collections {
                let name = format!("even-{shards}x{replication_factor}");
                client
                    .create_collection(collection_config(
                        &name,
                        8,
                        v1::Metric::L2,
                        *shards,
                        *replication_factor,
                    ))
                    .await
                    .expect("create");
                let load = replicas_per_searcher(&cluster, &name, *shards, &ids);
                let replicas = (shards * replication_factor) as usize;
                let cap = replicas.div_ceil(count);
                println!("{shards} x {replication_factor} on {ids:?}: {load:?}");
                assert_eq!(load.values().sum::<usize>(), replicas, "{load:?}");
                assert!(
                    load.values().all(|held| *held <= cap && *held + 1 >= cap),
                    "{shards} x RF {replication_factor} on {ids:?}: {load:?} (cap {cap})"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_searcher_takes_a_fair_share_while_searches_stay_exact() {
    let mut cluster = Cluster::start(3, 4).await;
    let mut client = cluster.client().await;
    let (shards, replication_factor) = (8, 2);
    client
        .create_collection(collection_config(
            "grow",
            16,
            v1::Metric::L2,
            shards,
            replication_factor,
        ))
        .await
        .expect("create");
    let base = dataset::synthetic(600, 16, 101);
    upsert_rows(&mut client, "grow", &base, 300).await;
    let queries = dataset::synthetic(16, 16, 102);
    let reference = reference_results(&mut client, "grow", &base, &queries, 10).await;
    let before = cluster.etcd_json(REBALANCE_KEY);

    let load = SearchLoad::start(&cluster.merger_address, "grow", &queries, reference, 2).await;
    load.wait_for_more(20, Duration::from_secs(20)).await;
    let added = cluster.add_searcher(&[]);
    assert_eq!(cluster.searchers[added].id, "searcher-4");

    let record = wait_for(
        Duration::from_secs(60),
        "a finished rebalance that includes searcher-4",
        async || {
            let record = cluster.etcd_json(REBALANCE_KEY);
            match &record {
                Some(current)
                    if record != before
                        && current["searchers"]
                            .as_array()
                            .is_some_and(|ids| ids.iter().any(|id| id == "searcher-4"))
                        && current["finished_at"]
                            .as_str()
                            .is_some_and(|at| !at.is_empty()) =>
                {
                    Ok(current.clone())
                }
                _ => Err(format!("{REBALANCE_KEY} = {record:?}")),
            }
        },
    )
    .await;
    println!("rebalance: {record}");
    // 16 replicas on three Searchers sit 6/5/5; on four, 4 each: exactly the newcomer's
    // four move.
    assert_eq!(record["moved_replicas"], 4, "{record}");
    assert_eq!(record["pending_shards"], 0, "{record}");
    assert_eq!(
        record["total_replicas"],
        shards * replication_factor,
        "{record}"
    );
    let moves = record["moves"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        record["moved_replicas"].as_u64(),
        Some(moves.len() as u64),
        "moved_replicas against the moves listed: {record}"
    );
    assert!(
        moves.iter().any(|one| one["to"] == "searcher-4"),
        "no replica moved to searcher-4: {record}"
    );

    let hosted = wait_for(
        Duration::from_secs(30),
        "searcher-4 to host an ACTIVE replica of grow",
        async || {
            let replicas = cluster.searchers[added].replica_status("grow").await?;
            let active: Vec<HostedReplica> = replicas
                .iter()
                .filter(|replica| replica.state == ReplicaState::Active as i32)
                .cloned()
                .collect();
            if active.is_empty() {
                Err(format!("searcher-4 reports {replicas:?}"))
            } else {
                Ok(active)
            }
        },
    )
    .await;
    println!(
        "searcher-4 hosts shards {:?}",
        hosted
            .iter()
            .map(|replica| replica.shard)
            .collect::<Vec<_>>()
    );
    wait_for(
        Duration::from_secs(30),
        "every shard to have 2 ACTIVE voting replicas and no learner",
        async || fully_replicated(&cluster, "grow", shards, 2, None),
    )
    .await;
    let ids: Vec<String> = cluster
        .searchers
        .iter()
        .map(|searcher| searcher.id.clone())
        .collect();
    let held = replicas_per_searcher(&cluster, "grow", shards, &ids);
    assert!(held.values().all(|count| *count == 4), "{held:?}");
    let replicas = cluster
        .wait_caught_up("grow", replication_factor as usize, Duration::from_secs(30))
        .await;
    load.wait_for_more(20, Duration::from_secs(20)).await;
    let (searches, problems) = load.finish().await;
    assert!(
        problems.is_empty(),
        "{} of {searches} searches failed or differed while searcher-4 joined; first: {:?}\nmerger log:\n{}",
        problems.len(),
        &problems[..problems.len().min(3)],
        cluster.log_tail("merger")
    );
    // The copies are exact.
    assert_replicas_hold_rows(&cluster, "grow", shards, &base, &replicas).await;

    // Nothing is left to move: the dry run plans against the same live Searchers.
    let output = cluster.quiverctl(&["rebalance", "--dry-run"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "quiverctl rebalance --dry-run failed ({}): {text}",
        output.status
    );
    assert!(
        text.contains("moved 0 of 16 replicas (0.0%)"),
        "quiverctl rebalance --dry-run should report nothing left to move, printed: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_searcher_gone_for_good_has_its_replicas_rebuilt_elsewhere() {
    let (shards, replication_factor) = (4, 2);
    let mut cluster = Cluster::start_with(
        ClusterOptions::new(3, 4).merger_args(&["--rebalance-delay-ms", "2000"]),
    )
    .await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config(
            "shrink",
            16,
            v1::Metric::L2,
            shards,
            replication_factor,
        ))
        .await
        .expect("create");
    let base = dataset::synthetic(600, 16, 111);
    upsert_rows(&mut client, "shrink", &base, 300).await;
    let queries = dataset::synthetic(16, 16, 112);
    let reference = reference_results(&mut client, "shrink", &base, &queries, 10).await;
    let hosted_by_leaver: Vec<u32> = (0..shards)
        .filter(|shard| {
            cluster
                .etcd_json(&format!("/quiver/assignments/shrink/{shard}"))
                .is_some_and(|assignment| {
                    assignment["replicas"]
                        .as_array()
                        .is_some_and(|ids| ids.iter().any(|id| id == "searcher-3"))
                })
        })
        .collect();
    assert!(
        !hosted_by_leaver.is_empty(),
        "placement gave searcher-3 no replica of shrink: nothing to rebuild"
    );

    let load = SearchLoad::start(&cluster.merger_address, "shrink", &queries, reference, 2).await;
    load.wait_for_more(20, Duration::from_secs(20)).await;
    let leaver = cluster.searcher_index("searcher-3");
    let status = cluster.searchers[leaver].terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|status| status.success()),
        "searcher-3 did not exit 0 after SIGTERM: {status:?}"
    );

    let assignments = wait_for(
        Duration::from_secs(60),
        &format!(
            "shards {hosted_by_leaver:?} of searcher-3 to be rebuilt: {replication_factor} ACTIVE voting replicas on live searchers"
        ),
        async || fully_replicated(&cluster, "shrink", shards, 2, Some("searcher-3")),
    )
    .await;
    println!("assignments after searcher-3 left: {assignments:?}");
    let rest = ["searcher-1".to_string(), "searcher-2".to_string()];
    let held = replicas_per_searcher(&cluster, "shrink", shards, &rest);
    assert_eq!(held.get("searcher-1"), Some(&4), "{held:?}");
    assert_eq!(held.get("searcher-2"), Some(&4), "{held:?}");
    let replicas = cluster
        .wait_caught_up(
            "shrink",
            replication_factor as usize,
            Duration::from_secs(30),
        )
        .await;
    load.wait_for_more(20, Duration::from_secs(20)).await;
    let (searches, problems) = load.finish().await;
    assert!(
        problems.is_empty(),
        "{} of {searches} searches failed or differed while searcher-3's replicas were rebuilt; first: {:?}\nmerger log:\n{}",
        problems.len(),
        &problems[..problems.len().min(3)],
        cluster.log_tail("merger")
    );
    assert_replicas_hold_rows(&cluster, "shrink", shards, &base, &replicas).await;

    let record = cluster
        .etcd_json(REBALANCE_KEY)
        .unwrap_or_else(|| panic!("no {REBALANCE_KEY} after searcher-3's replicas moved"));
    assert!(
        record["finished_at"]
            .as_str()
            .is_some_and(|at| !at.is_empty())
            && record["moves"]
                .as_array()
                .is_some_and(|moves| moves.iter().any(|one| one["from"] == "searcher-3")),
        "the rebalance record does not show a finished move away from searcher-3: {record}"
    );
}
