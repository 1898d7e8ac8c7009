//! A replica's status record in etcd (`replicas/<collection>/<shard>/<searcher>`: point
//! count, applied seq) follows its writes within a second of their acknowledgement, for the
//! primary and the followers alike: with a busy loop on every core, and while the same
//! Searchers spend seconds draining the replicas of a dropped collection.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use quiver_cluster::{
    model::ReplicaRecord, placement::shard_of, ClusterState, KeySchema, MetadataStore,
};
use quiver_index::dataset;
use quiver_integration_tests::{collection_config, upsert_points, Cluster, ClusterOptions};
use quiver_proto::v1::{self, Point};

const SHARDS: u32 = 4;
const REPLICATION_FACTOR: u32 = 2;
const BATCHES: usize = 10;
const BATCH: usize = 1000;
const WITHIN: Duration = Duration::from_secs(1);

/// Spins every core until dropped.
struct BusyCores {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl BusyCores {
    fn start() -> BusyCores {
        let stop = Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |cores| cores.get());
        let threads = (0..cores)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut spins = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        spins = std::hint::black_box(spins.wrapping_add(1));
                    }
                    spins
                })
            })
            .collect();
        BusyCores { stop, threads }
    }
}

impl Drop for BusyCores {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Writes `BATCHES` batches of `BATCH` points to `collection` and, after each
/// acknowledgement, waits until etcd shows every replica of every shard with the shard's
/// point count and the seq its primary gave the write; returns the longest wait.
async fn write_and_watch_status(cluster: &Cluster, collection: &str) -> Duration {
    let mut client = cluster.client().await;
    let store = cluster.etcd.connect_store().await.expect("connect to etcd");
    let schema = KeySchema::default();
    let base = dataset::synthetic(BATCHES * BATCH, 16, 71);
    let mut expected_points = [0u64; SHARDS as usize];
    let mut expected_seq = [0u64; SHARDS as usize];
    let mut longest = Duration::ZERO;
    for batch in 0..BATCHES {
        let rows = batch * BATCH..(batch + 1) * BATCH;
        let points: Vec<Point> = rows
            .clone()
            .map(|row| Point {
                id: format!("{collection}-{row}"),
                vector: base.row(row).to_vec(),
                payload_json: String::new(),
            })
            .collect();
        for point in &points {
            expected_points[shard_of(&point.id, SHARDS) as usize] += 1;
        }
        let response = upsert_points(&mut client, collection, points).await;
        let acknowledged = Instant::now();
        for shard in &response.shards {
            assert_eq!(
                shard.acknowledged_by.len(),
                REPLICATION_FACTOR as usize,
                "RF 2 at a majority quorum: both replicas hold the write at its ack: {shard:?}"
            );
            expected_seq[shard.shard as usize] = shard.seq;
        }
        let published = loop {
            let (listed, revision) = store
                .get_prefix(&format!("/quiver/replicas/{collection}/"))
                .await
                .expect("read the replica records");
            let state = ClusterState::from_listing(&schema, &listed, revision);
            let records: BTreeMap<(u32, String), ReplicaRecord> = state
                .replicas
                .iter()
                .map(|((_, shard, searcher), record)| ((*shard, searcher.clone()), record.clone()))
                .collect();
            let current = records.len() == (SHARDS * REPLICATION_FACTOR) as usize
                && records.iter().all(|((shard, _), record)| {
                    record.point_count == expected_points[*shard as usize]
                        && record.applied_seq == expected_seq[*shard as usize]
                });
            if current {
                break acknowledged.elapsed();
            }
            assert!(
                acknowledged.elapsed() < WITHIN,
                "batch {batch}: {:?} after the acknowledgement etcd shows {:?}, expected points \
                 {expected_points:?} at seqs {expected_seq:?}",
                acknowledged.elapsed(),
                records
                    .iter()
                    .map(|((shard, searcher), record)| format!(
                        "{shard}@{searcher} {:?} {} pts seq {}",
                        record.role, record.point_count, record.applied_seq
                    ))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        longest = longest.max(published);
    }
    longest
}

async fn create(cluster: &Cluster, name: &str) {
    cluster
        .client()
        .await
        .create_collection(collection_config(
            name,
            16,
            v1::Metric::L2,
            SHARDS,
            REPLICATION_FACTOR,
        ))
        .await
        .expect("create");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_writes_within_a_second_with_every_core_busy() {
    let cluster = Cluster::start(3, 10).await;
    create(&cluster, "fresh").await;
    let busy = BusyCores::start();
    let longest = write_and_watch_status(&cluster, "fresh").await;
    drop(busy);
    println!("with every core busy, etcd showed every replica's counters {longest:?} after the acknowledgement at the latest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_writes_while_the_same_searchers_drain_other_replicas() {
    // Closing a replica waits out the drain grace: 3 s here, per replica.
    let drain = ["--drain-grace-ms", "3000"];
    let options = (0..3).fold(ClusterOptions::new(3, 10), |options, index| {
        options.searcher_args(index, &drain)
    });
    let cluster = Cluster::start_with(options).await;
    for name in ["kept", "dropped"] {
        create(&cluster, name).await;
    }
    cluster
        .client()
        .await
        .drop_collection(v1::DropCollectionRequest {
            name: "dropped".to_string(),
        })
        .await
        .expect("drop");
    let longest = write_and_watch_status(&cluster, "kept").await;
    println!("while replicas drained, etcd showed every replica's counters {longest:?} after the acknowledgement at the latest");
}
