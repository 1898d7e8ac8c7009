//! Durable, self-healing shards, end to end: acknowledged writes survive a Searcher killed
//! mid-stream, the loss of a shard's primary, and the loss of the primary the moment a
//! learner was switched in for a voting replica; a corrupt log record is caught and healed
//! from a peer (or fails the replica loudly when there is none), SIGTERM drains without
//! failing a search, a restarted Searcher registers at once, and an etcd restart under load
//! costs searches nothing.
//!
//! The contract: a shard's primary (recorded with its epoch in `/quiver/assignments/…`)
//! orders its writes and replicates them; the Merger acknowledges a write once the write
//! quorum (a majority of the replication factor by default) made it durable, and says so in
//! `UpsertResponse.shards`. During a change of primary a write may fail with UNAVAILABLE or
//! FAILED_PRECONDITION: the writer here retries it as-is (writes are idempotent) before
//! sending the next, so the last acknowledged vector of each id is the truth every replica
//! must end up holding.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use quiver_cluster::placement::shard_of;
use quiver_index::dataset;
use quiver_integration_tests::{
    assert_every_replica_holds, collection_config, reference_results, search_request, upsert_rows,
    wait_for, Cluster, ClusterOptions, SearchLoad,
};
use quiver_proto::v1::{
    self, merger_client::MergerClient, DescribeCollectionRequest, Point, ReplicaRole, UpsertRequest,
};
use tonic::{transport::Channel, Code};

const DIM: usize = 8;

/// The vector of id number `id` written in round `round`: distinct for every (id, round)
/// and exactly representable, so a stale copy shows which round it holds.
fn vector_for(id: usize, round: usize) -> Vec<f32> {
    (0..DIM)
        .map(|dim| (id * 10_000 + round) as f32 + dim as f32 * 0.25)
        .collect()
}

fn point_id(id: usize) -> String {
    format!("p{id}")
}

/// Which round a vector written by [`vector_for`] for `id` came from.
fn round_of(id: usize, vector: &[f32]) -> Option<i64> {
    vector
        .first()
        .map(|value| *value as i64 - (id * 10_000) as i64)
}

/// What a [`Writer`] saw, shared with the test.
#[derive(Default)]
struct WriterState {
    /// The last acknowledged vector of every id.
    truth: HashMap<String, Vec<f32>>,
    /// Acknowledged writes (the first full load included).
    acknowledged: usize,
    /// Failed attempts, each retried: (when, code, message).
    failures: Vec<(Duration, Code, String)>,
    /// Acknowledgements that break the contract on `UpsertResponse.shards`.
    violations: Vec<String>,
    /// The primary the last acknowledged write named, per shard.
    last_primary: BTreeMap<u32, String>,
    /// Set when the writer gave up on one write.
    gave_up: Option<String>,
}

/// Streams upserts that overwrite a fixed set of ids with new vectors, one write in flight,
/// each retried as-is until acknowledged.
struct Writer {
    state: Arc<Mutex<WriterState>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Loads every id once (round 0), then keeps overwriting `batch` ids at a time.
    async fn start(
        client: MergerClient<Channel>,
        collection: &str,
        ids: usize,
        batch: usize,
        num_shards: u32,
    ) -> Writer {
        let state: Arc<Mutex<WriterState>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut writer = WriteLoop {
            client,
            collection: collection.to_string(),
            num_shards,
            state: Arc::clone(&state),
            started,
        };
        let all: Vec<usize> = (0..ids).collect();
        if let Err(reason) = writer.write_until_acknowledged(&all, 0).await {
            panic!("the initial load was never acknowledged: {reason}");
        }
        let task_stop = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut round = 1;
            while !task_stop.load(Ordering::SeqCst) {
                let first = (round * batch) % ids;
                let chosen: Vec<usize> = (0..batch).map(|offset| (first + offset) % ids).collect();
                if let Err(reason) = writer.write_until_acknowledged(&chosen, round).await {
                    writer.state.lock().unwrap().gave_up = Some(reason);
                    return;
                }
                round += 1;
            }
        });
        Writer { state, stop, task }
    }

    fn acknowledged(&self) -> usize {
        self.state.lock().unwrap().acknowledged
    }

    /// One line on where the writer is, for assertion messages.
    fn summary(&self) -> String {
        let state = self.state.lock().unwrap();
        format!(
            "{} writes acknowledged, {} failed attempts (last: {:?}), gave up: {:?}",
            state.acknowledged,
            state.failures.len(),
            state.failures.last(),
            state.gave_up
        )
    }

    /// Waits until `more` writes were acknowledged after this call.
    async fn wait_for_more(&self, more: usize, timeout: Duration, what: &str) {
        let target = self.acknowledged() + more;
        wait_for(timeout, what, async || {
            if self.acknowledged() >= target {
                Ok(())
            } else {
                Err(format!("want {target}: {}", self.summary()))
            }
        })
        .await;
    }

    /// Stops after the write in flight and returns everything it saw.
    async fn finish(self) -> WriterState {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("writer task");
        std::mem::take(&mut *self.state.lock().unwrap())
    }
}

struct WriteLoop {
    client: MergerClient<Channel>,
    collection: String,
    num_shards: u32,
    state: Arc<Mutex<WriterState>>,
    started: Instant,
}

impl WriteLoop {
    async fn write_until_acknowledged(
        &mut self,
        ids: &[usize],
        round: usize,
    ) -> Result<(), String> {
        let points: Vec<Point> = ids
            .iter()
            .map(|id| Point {
                id: point_id(*id),
                vector: vector_for(*id, round),
                payload_json: String::new(),
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut request = tonic::Request::new(UpsertRequest {
                collection: self.collection.clone(),
                points: points.clone(),
                ..Default::default()
            });
            request.set_timeout(Duration::from_secs(15));
            match self.client.upsert(request).await {
                Ok(response) => {
                    let response = response.into_inner();
                    self.record_acknowledged(&points, &response);
                    return Ok(());
                }
                Err(status) => {
                    let message = status.message().to_string();
                    self.state.lock().unwrap().failures.push((
                        self.started.elapsed(),
                        status.code(),
                        message.clone(),
                    ));
                    if matches!(
                        status.code(),
                        Code::InvalidArgument | Code::NotFound | Code::Unimplemented
                    ) {
                        return Err(format!("round {round}: not retryable: {status:?}"));
                    }
                    if Instant::now() > deadline {
                        return Err(format!(
                            "round {round} still not acknowledged after 60 s of retries; last: {status:?}"
                        ));
                    }
                    // Back off a little before retrying, as a client would.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn record_acknowledged(&self, points: &[Point], response: &v1::UpsertResponse) {
        let mut state = self.state.lock().unwrap();
        let mut touched: Vec<u32> = points
            .iter()
            .map(|point| shard_of(&point.id, self.num_shards))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        if response.upserted as usize != points.len() {
            state.violations.push(format!(
                "acknowledged {} of {} points",
                response.upserted,
                points.len()
            ));
        }
        for shard in &touched {
            match response.shards.iter().find(|write| write.shard == *shard) {
                None => state.violations.push(format!(
                    "acknowledged write without a ShardWrite for shard {shard}: {:?}",
                    response.shards
                )),
                Some(write) => {
                    if write.write_quorum == 0
                        || (write.acknowledged_by.len() as u32) < write.write_quorum
                        || write.acknowledged_by.first() != Some(&write.primary)
                        || write.seq == 0
                    {
                        state.violations.push(format!(
                            "shard {shard}: acknowledged with too few acknowledgements or no primary first: {write:?}"
                        ));
                    }
                    state.last_primary.insert(*shard, write.primary.clone());
                }
            }
        }
        for point in points {
            state.truth.insert(point.id.clone(), point.vector.clone());
        }
        state.acknowledged += 1;
    }
}

/// Words a vector that differs from the last acknowledged one by the rounds they carry.
fn stale_round(id: &str, held: &[f32], want: &[f32]) -> String {
    let number: usize = id[1..].parse().unwrap();
    format!(
        "{id} holds round {:?}, last acknowledged round {:?}",
        round_of(number, held),
        round_of(number, want)
    )
}

fn assignment(cluster: &Cluster, collection: &str, shard: u32) -> serde_json::Value {
    cluster
        .etcd_json(&format!("/quiver/assignments/{collection}/{shard}"))
        .unwrap_or_else(|| panic!("no assignment for {collection}/{shard}"))
}

/// Waits until etcd names another primary than `old_primary` for the shard, in a later
/// epoch than `old_epoch`; returns it and its epoch.
async fn wait_for_new_primary(
    cluster: &Cluster,
    collection: &str,
    shard: u32,
    old_primary: &str,
    old_epoch: u64,
) -> (String, u64) {
    wait_for(
        Duration::from_secs(30),
        &format!(
            "{collection}/{shard} to get a new primary after {old_primary} (epoch {old_epoch}) was killed"
        ),
        async || {
            let current = assignment(cluster, collection, shard);
            let primary = current["primary"].as_str().unwrap_or_default().to_string();
            let epoch = current["epoch"].as_u64().unwrap_or_default();
            if epoch > old_epoch && !primary.is_empty() && primary != old_primary {
                Ok((primary, epoch))
            } else {
                Err(format!("assignment {current}"))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_searcher_sigkilled_during_a_write_stream_loses_no_acknowledged_write() {
    // A short lease, so etcd notices the dead Searcher (and any primary it held moves) fast;
    // the Merger's default --rebalance-delay-ms (30 s) keeps its replicas where they are.
    let lease_ttl_secs = 2;
    let mut cluster = Cluster::start(3, lease_ttl_secs).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config(
            "stream",
            DIM as u32,
            v1::Metric::L2,
            2,
            3,
        ))
        .await
        .expect("create");

    let ids = 120;
    let writer = Writer::start(cluster.client().await, "stream", ids, 30, 2).await;
    writer
        .wait_for_more(5, Duration::from_secs(20), "writes before the kill")
        .await;

    let victim = cluster.searcher_index("searcher-2");
    cluster.searchers[victim].kill();
    let before_outage = writer.acknowledged();
    // The outage lasts until etcd noticed (the lease ran out, so a primary searcher-2 held
    // had to move) and writes went on without it.
    wait_for(
        Duration::from_secs(lease_ttl_secs + 10),
        "searcher-2's key to vanish after its SIGKILL",
        async || {
            let keys = cluster.etcd_keys("/quiver/searchers/");
            if keys.iter().any(|key| key.ends_with("/searcher-2")) {
                Err(format!("still listed: {keys:?}"))
            } else {
                Ok(())
            }
        },
    )
    .await;
    writer
        .wait_for_more(
            10,
            Duration::from_secs(30),
            "writes acknowledged while searcher-2 is down (2 of 3 replicas make a majority)",
        )
        .await;
    let during_outage = writer.acknowledged() - before_outage;

    cluster.restart_searcher(victim);
    writer
        .wait_for_more(10, Duration::from_secs(30), "writes after the restart")
        .await;
    let state = writer.finish().await;
    println!(
        "{} writes acknowledged, {during_outage} while searcher-2 was down; {} failed attempts, retried: {:?}",
        state.acknowledged,
        state.failures.len(),
        state.failures.iter().take(5).collect::<Vec<_>>()
    );
    assert!(state.gave_up.is_none(), "{:?}", state.gave_up);
    assert!(
        during_outage > 0,
        "no write was acknowledged while searcher-2 was down"
    );

    let replicas = cluster
        .wait_caught_up("stream", 3, Duration::from_secs(60))
        .await;
    assert_every_replica_holds(&cluster, "stream", 2, &state.truth, &replicas, stale_round).await;
    assert!(
        state.violations.is_empty(),
        "acknowledgements break the write contract: {:?}",
        &state.violations[..state.violations.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_primary_mid_ingest_promotes_another_and_loses_no_acknowledged_write() {
    let lease_ttl_secs = 2;
    let mut cluster = Cluster::start(3, lease_ttl_secs).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config(
            "failover",
            DIM as u32,
            v1::Metric::L2,
            2,
            3,
        ))
        .await
        .expect("create");
    let before = assignment(&cluster, "failover", 0);
    let old_primary = before["primary"]
        .as_str()
        .filter(|primary| !primary.is_empty())
        .unwrap_or_else(|| panic!("the assignment names no primary: {before}"))
        .to_string();
    let old_epoch = before["epoch"]
        .as_u64()
        .unwrap_or_else(|| panic!("the assignment has no epoch: {before}"));

    let writer = Writer::start(cluster.client().await, "failover", 120, 30, 2).await;
    writer
        .wait_for_more(5, Duration::from_secs(20), "writes before the kill")
        .await;
    let victim = cluster.searcher_index(&old_primary);
    cluster.searchers[victim].kill();

    let (new_primary, new_epoch) =
        wait_for_new_primary(&cluster, "failover", 0, &old_primary, old_epoch).await;
    writer
        .wait_for_more(
            10,
            Duration::from_secs(30),
            "writes acknowledged under the new primary",
        )
        .await;
    let state = writer.finish().await;
    println!(
        "shard 0: primary {old_primary} (epoch {old_epoch}) -> {new_primary} (epoch {new_epoch}); {} writes acknowledged, {} failed attempts: {:?}",
        state.acknowledged,
        state.failures.len(),
        state.failures.iter().take(5).collect::<Vec<_>>()
    );
    assert!(state.gave_up.is_none(), "{:?}", state.gave_up);

    // The Merger's view (it watches etcd) agrees.
    wait_for(
        Duration::from_secs(10),
        &format!("DescribeCollection to show shard 0 led by {new_primary} in epoch {new_epoch}"),
        async || {
            let description = client
                .describe_collection(DescribeCollectionRequest {
                    name: "failover".into(),
                })
                .await
                .map_err(|status| format!("{status:?}"))?
                .into_inner()
                .collection
                .ok_or("no collection in the answer")?;
            match description.shards.iter().find(|shard| shard.shard == 0) {
                Some(shard) if shard.primary == new_primary && shard.epoch == new_epoch => Ok(()),
                other => Err(format!("shard 0: {other:?}")),
            }
        },
    )
    .await;

    // Every surviving replica (the new primary first) holds every acknowledged write.
    let replicas = cluster
        .wait_caught_up("failover", 2, Duration::from_secs(60))
        .await;
    let (first, replica) = &replicas[&0][0];
    assert_eq!(first, &new_primary);
    assert_eq!(replica.role, ReplicaRole::Primary as i32);
    assert_eq!(
        replica.epoch, new_epoch,
        "the new primary's epoch: {replica:?}"
    );
    assert_every_replica_holds(
        &cluster,
        "failover",
        2,
        &state.truth,
        &replicas,
        stale_round,
    )
    .await;
    assert!(
        state.violations.is_empty(),
        "acknowledgements break the write contract: {:?}",
        &state.violations[..state.violations.len().min(5)]
    );
    assert_eq!(
        state.last_primary.get(&0),
        Some(&new_primary),
        "the last acknowledged write of shard 0 names its primary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_as_a_learner_switches_in_loses_no_acknowledged_write() {
    // A learner takes a voting replica's place only once the primary vouches that it holds
    // every acknowledged write; here the primary dies the moment a switch is seen, so the
    // shard's acknowledged writes must be on the replicas the switch left it.
    let lease_ttl_secs = 2;
    let num_shards = 4;
    let mut cluster = Cluster::start(3, lease_ttl_secs).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config(
            "switch",
            DIM as u32,
            v1::Metric::L2,
            num_shards,
            3,
        ))
        .await
        .expect("create");
    let writer = Writer::start(cluster.client().await, "switch", 120, 30, num_shards).await;
    writer
        .wait_for_more(5, Duration::from_secs(20), "writes before searcher-4 joins")
        .await;
    let added = cluster.add_searcher(&[]);
    assert_eq!(cluster.searchers[added].id, "searcher-4");

    let (shard, switched) = wait_for(
        Duration::from_secs(60),
        "a shard to take searcher-4 in as a voting replica",
        async || {
            let mut seen = Vec::new();
            for shard in 0..num_shards {
                let current = assignment(&cluster, "switch", shard);
                let votes = current["replicas"]
                    .as_array()
                    .is_some_and(|ids| ids.iter().any(|id| id == "searcher-4"));
                if votes {
                    return Ok((shard, current));
                }
                seen.push(current);
            }
            Err(format!("assignments {seen:?}; {}", writer.summary()))
        },
    )
    .await;
    let primary = switched["primary"]
        .as_str()
        .filter(|primary| !primary.is_empty() && *primary != "searcher-4")
        .unwrap_or_else(|| panic!("shard {shard} switched in searcher-4 as: {switched}"))
        .to_string();
    let epoch = switched["epoch"].as_u64().unwrap_or_default();
    let victim = cluster.searcher_index(&primary);
    cluster.searchers[victim].kill();
    let acknowledged_at_kill = writer.acknowledged();

    let (promoted, _) = wait_for_new_primary(&cluster, "switch", shard, &primary, epoch).await;
    writer
        .wait_for_more(
            10,
            Duration::from_secs(30),
            "writes acknowledged after the primary died",
        )
        .await;
    let state = writer.finish().await;
    println!(
        "shard {shard}: searcher-4 switched in under primary {primary} (epoch {epoch}), killed after {acknowledged_at_kill} acknowledged writes; {promoted} promoted; {} writes acknowledged, {} failed attempts",
        state.acknowledged,
        state.failures.len(),
    );
    assert!(state.gave_up.is_none(), "{:?}", state.gave_up);
    let replicas = cluster
        .wait_caught_up("switch", 2, Duration::from_secs(60))
        .await;
    assert!(
        replicas[&shard].iter().any(|(id, _)| id == "searcher-4"),
        "searcher-4 holds shard {shard}: {:?}",
        replicas[&shard]
            .iter()
            .map(|(id, _)| id)
            .collect::<Vec<_>>()
    );
    assert_every_replica_holds(
        &cluster,
        "switch",
        num_shards,
        &state.truth,
        &replicas,
        stale_round,
    )
    .await;
    assert!(
        state.violations.is_empty(),
        "acknowledgements break the write contract: {:?}",
        &state.violations[..state.violations.len().min(5)]
    );
}

/// The standard CRC-32 (IEEE, as `crc32fast` computes it).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Where each record of a log segment lies: `(frame offset, payload length)` for frames
/// `[len u32 LE][crc32 u32 LE][payload]` that follow a header and run exactly to the end of
/// the file with valid checksums. The header's size is not part of the contract, so every
/// offset is tried and the first that parses wins.
fn frames(segment: &[u8]) -> Option<Vec<(usize, usize)>> {
    'header: for header in 0..segment.len().min(4096) {
        let mut frames = Vec::new();
        let mut position = header;
        while position < segment.len() {
            let Some(head) = segment.get(position..position + 8) else {
                continue 'header;
            };
            let length = u32::from_le_bytes(head[0..4].try_into().unwrap()) as usize;
            let checksum = u32::from_le_bytes(head[4..8].try_into().unwrap());
            let Some(payload) = segment.get(position + 8..position + 8 + length) else {
                continue 'header;
            };
            if length == 0 || crc32(payload) != checksum {
                continue 'header;
            }
            frames.push((position, length));
            position += 8 + length;
        }
        if !frames.is_empty() {
            return Some(frames);
        }
    }
    None
}

/// The log segments of one replica: `wal/*.log` in order (the contract's layout), or a
/// single `wal.log` (the layout before segments).
fn log_segments(replica_dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(replica_dir.join("wal"))
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
                .collect()
        })
        .unwrap_or_default();
    segments.sort();
    if segments.is_empty() && replica_dir.join("wal.log").exists() {
        segments.push(replica_dir.join("wal.log"));
    }
    segments
}

fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(list_files(&path));
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A damaged log segment: where it was and what it held after the damage.
struct Corruption {
    segment: PathBuf,
    /// The segment's path relative to the data directory (`collections/<c>/<shard>/wal/…`),
    /// which the Searcher's log line must name.
    relative: String,
    damaged: Vec<u8>,
}

/// Flips one bit in the middle of the payload of the first record of the first segment of
/// `collection`/`shard` under `data_dir` that holds at least two records: a record with
/// data after it, which a torn append cannot explain. `None` when no segment has two.
fn corrupt_a_middle_record(data_dir: &Path, collection: &str, shard: u32) -> Option<Corruption> {
    let replica_dir = data_dir
        .join("collections")
        .join(collection)
        .join(shard.to_string());
    let segments = log_segments(&replica_dir);
    assert!(
        !segments.is_empty(),
        "no log segment under {}: files there: {:?}",
        replica_dir.display(),
        list_files(&replica_dir)
    );
    for segment in segments {
        let mut bytes = std::fs::read(&segment).unwrap();
        let Some(frames) = frames(&bytes) else {
            panic!(
                "{} ({} bytes) does not parse as a header and [len][crc32][payload] frames; first bytes {:02x?}",
                segment.display(),
                bytes.len(),
                &bytes[..bytes.len().min(64)]
            );
        };
        if frames.len() < 2 {
            continue;
        }
        let (offset, length) = frames[0];
        bytes[offset + 8 + length / 2] ^= 0x10;
        std::fs::write(&segment, &bytes).unwrap();
        let relative = segment
            .strip_prefix(data_dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        return Some(Corruption {
            segment,
            relative,
            damaged: bytes,
        });
    }
    None
}

/// Asserts that the damaged segment was moved aside into `<data_dir>/quarantine/` (some
/// file there holds its damaged bytes) and is no longer in place.
fn assert_quarantined(data_dir: &Path, corruption: &Corruption) {
    let quarantine = data_dir.join("quarantine");
    let files = list_files(&quarantine);
    assert!(
        files
            .iter()
            .any(|file| std::fs::read(file).is_ok_and(|bytes| bytes == corruption.damaged)),
        "the damaged segment {} is not in {}; files there: {files:?}",
        corruption.segment.display(),
        quarantine.display()
    );
    assert!(
        std::fs::read(&corruption.segment).map_or(true, |bytes| bytes != corruption.damaged),
        "the damaged segment is still in place at {}",
        corruption.segment.display()
    );
}

/// Asserts that the Searcher's log has a line with "corrupt" naming the damaged segment.
fn assert_logged_corruption(cluster: &Cluster, searcher: &str, corruption: &Corruption) {
    let log = cluster.log_text(searcher);
    let corrupt_lines: Vec<&str> = log
        .lines()
        .filter(|line| line.to_lowercase().contains("corrupt"))
        .collect();
    assert!(
        corrupt_lines
            .iter()
            .any(|line| line.contains(&corruption.relative)),
        "no log line of {searcher} says \"corrupt\" and names {}; lines with \"corrupt\": {corrupt_lines:?}\nlog tail:\n{}",
        corruption.relative,
        cluster.log_tail(searcher)
    );
}

/// Writes `batches` upserts of `per_batch` new points each (so each shard's log gets about
/// `batches` records); returns every point written, by id.
async fn write_batches(
    client: &mut MergerClient<Channel>,
    collection: &str,
    batches: usize,
    per_batch: usize,
) -> HashMap<String, Vec<f32>> {
    let mut written = HashMap::new();
    for batch in 0..batches {
        let points: Vec<Point> = (0..per_batch)
            .map(|offset| {
                let id = batch * per_batch + offset;
                Point {
                    id: point_id(id),
                    vector: vector_for(id, 0),
                    payload_json: String::new(),
                }
            })
            .collect();
        for point in &points {
            written.insert(point.id.clone(), point.vector.clone());
        }
        client
            .upsert(UpsertRequest {
                collection: collection.into(),
                points,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("batch {batch}: {status:?}"));
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_log_record_without_a_peer_fails_the_replica_and_keeps_its_files() {
    let mut cluster = Cluster::start(1, 10).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config(
            "damaged",
            DIM as u32,
            v1::Metric::L2,
            2,
            1,
        ))
        .await
        .expect("create");
    let written = write_batches(&mut client, "damaged", 6, 20).await;

    // SIGKILL: nothing is folded into a snapshot at exit, the records stay in the log.
    cluster.searchers[0].kill();
    let data_dir = cluster.searcher_data_dir(0).to_path_buf();
    let (shard, corruption) = (0..2)
        .find_map(|shard| {
            corrupt_a_middle_record(&data_dir, "damaged", shard).map(|found| (shard, found))
        })
        .expect("a log segment with at least two records");
    let other_shard = 1 - shard;
    cluster.restart_searcher(0);

    let key = format!("/quiver/replicas/damaged/{shard}/searcher-1");
    let record = wait_for(
        Duration::from_secs(30),
        &format!("{key} to show FAILED with an error"),
        async || match cluster.etcd_json(&key) {
            Some(record)
                if record["state"] == "FAILED"
                    && record["error"]
                        .as_str()
                        .is_some_and(|error| !error.is_empty()) =>
            {
                Ok(record)
            }
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    println!("{key}: {record}");
    assert_logged_corruption(&cluster, "searcher-1", &corruption);
    // With no other copy of the shard, its only files stay exactly where they are, for an
    // operator: nothing is moved, truncated or replaced by an empty replica.
    assert_eq!(
        std::fs::read(&corruption.segment).expect("the damaged segment is still in place"),
        corruption.damaged,
        "the damaged segment changed"
    );
    assert!(
        list_files(&data_dir.join("quarantine")).is_empty(),
        "nothing is quarantined without a peer to rebuild from"
    );

    // No other copy has the shard: it fails rather than serving incomplete data, while the
    // undamaged shard answers.
    let query = vector_for(3, 0);
    for attempt in 0..5 {
        let mut request = search_request("damaged", &query, 10);
        request.shards = vec![shard];
        match client.search(request).await {
            Err(status) => assert_eq!(
                status.code(),
                Code::Unavailable,
                "search {attempt} of the damaged shard: {status:?}"
            ),
            Ok(response) => panic!(
                "search {attempt} of the damaged shard {shard} answered instead of failing UNAVAILABLE: {:?}",
                response.into_inner()
            ),
        }
    }
    let status = client
        .search(search_request("damaged", &query, 10))
        .await
        .expect_err("a search of every shard must fail with one shard FAILED");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    wait_for(
        Duration::from_secs(20),
        &format!("the undamaged shard {other_shard} to answer"),
        async || {
            let mut request = search_request("damaged", &query, 10);
            request.shards = vec![other_shard];
            client
                .search(request)
                .await
                .map(|_| ())
                .map_err(|status| format!("{status:?}"))
        },
    )
    .await;
    let ids: Vec<String> = written
        .keys()
        .filter(|id| shard_of(id, 2) == shard)
        .cloned()
        .collect();
    let direct = cluster.searchers[0]
        .replica_get("damaged", shard, &ids)
        .await;
    assert!(
        direct.is_err(),
        "the FAILED replica served a direct Get: {} points",
        direct.map(|points| points.len()).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_log_record_is_rebuilt_from_a_peer() {
    let mut cluster = Cluster::start(2, 4).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config(
            "healed",
            DIM as u32,
            v1::Metric::L2,
            2,
            2,
        ))
        .await
        .expect("create");
    let written = write_batches(&mut client, "healed", 6, 20).await;
    cluster
        .wait_caught_up("healed", 2, Duration::from_secs(30))
        .await;

    cluster.searchers[0].kill();
    let data_dir = cluster.searcher_data_dir(0).to_path_buf();
    let (shard, corruption) = (0..2)
        .find_map(|shard| {
            corrupt_a_middle_record(&data_dir, "healed", shard).map(|found| (shard, found))
        })
        .expect("a log segment of searcher-1 with at least two records");
    cluster.restart_searcher(0);

    let key = format!("/quiver/replicas/healed/{shard}/searcher-1");
    wait_for(
        Duration::from_secs(60),
        &format!("{key} to be rebuilt from searcher-2 and turn ACTIVE"),
        async || match cluster.etcd_json(&key) {
            Some(record) if record["state"] == "ACTIVE" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert_logged_corruption(&cluster, "searcher-1", &corruption);
    assert_quarantined(&data_dir, &corruption);

    let replicas = cluster
        .wait_caught_up("healed", 2, Duration::from_secs(30))
        .await;
    assert!(
        replicas[&shard].iter().any(|(id, _)| id == "searcher-1"),
        "searcher-1 hosts no replica of shard {shard}: {replicas:?}"
    );
    assert_every_replica_holds(&cluster, "healed", 2, &written, &replicas, stale_round).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_searcher_without_failing_a_search() {
    let mut cluster = Cluster::start(3, 10).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config("drain", 16, v1::Metric::L2, 4, 2))
        .await
        .expect("create");
    let base = dataset::synthetic(600, 16, 71);
    upsert_rows(&mut client, "drain", &base, 300).await;
    let queries = dataset::synthetic(12, 16, 72);
    let reference = reference_results(&mut client, "drain", &base, &queries, 10).await;
    let retries_before = quiver_integration_tests::metric_value(
        &cluster.merger_address,
        "quiver_merger_search_retries_total",
    );

    let load = SearchLoad::start(&cluster.merger_address, "drain", &queries, reference, 2).await;
    load.wait_for_more(20, Duration::from_secs(20)).await;
    let victim = cluster.searcher_index("searcher-2");
    let status = cluster.searchers[victim].terminate(Duration::from_secs(30));
    // Right after the exit, before any lease could run out: the keys were removed.
    let left: Vec<String> = cluster
        .etcd_keys("/quiver/")
        .into_iter()
        .filter(|key| {
            (key.starts_with("/quiver/searchers/") || key.starts_with("/quiver/replicas/"))
                && key.ends_with("/searcher-2")
        })
        .collect();
    assert!(
        status.is_some_and(|status| status.success()),
        "searcher-2 did not exit 0 within 30 s of SIGTERM: {status:?}\nlog:\n{}",
        cluster.log_tail("searcher-2")
    );
    assert!(
        left.is_empty(),
        "keys of searcher-2 still in etcd right after it exited: {left:?}"
    );
    load.wait_for_more(20, Duration::from_secs(20)).await;
    let (searches, problems) = load.finish().await;
    println!("{searches} searches around the drain of searcher-2");
    assert!(
        problems.is_empty(),
        "{} of {searches} searches failed or differed around the drain; first: {:?}\nmerger log:\n{}",
        problems.len(),
        &problems[..problems.len().min(3)],
        cluster.log_tail("merger")
    );
    // A drained Searcher is taken out of routing before it stops answering: no search call
    // to it failed and had to be retried elsewhere.
    let retries = quiver_integration_tests::metric_value(
        &cluster.merger_address,
        "quiver_merger_search_retries_total",
    ) - retries_before;
    assert_eq!(
        retries, 0.0,
        "{retries} shard searches failed on the draining searcher and were retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_searcher_registers_at_once() {
    let lease_ttl_secs = 10;
    let mut cluster = Cluster::start(2, lease_ttl_secs).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config("again", 8, v1::Metric::L2, 2, 1))
        .await
        .expect("create");
    let base = dataset::synthetic(200, 8, 81);
    upsert_rows(&mut client, "again", &base, 200).await;
    let old_address = cluster.searchers[0].address.clone();

    // SIGKILL leaves the old key under a lease that has 10 s to run.
    cluster.searchers[0].kill();
    let restarted = Instant::now();
    cluster.restart_searcher(0);
    let new_address = cluster.searchers[0].address.clone();
    assert_ne!(old_address, new_address);
    let same = |left: &str, right: &str| {
        left.trim_start_matches("http://") == right.trim_start_matches("http://")
    };
    wait_for(
        Duration::from_secs(5),
        "searcher-1's key to name its new address",
        async || match cluster.etcd_json("/quiver/searchers/searcher-1") {
            Some(record) if same(record["address"].as_str().unwrap_or_default(), &new_address) => {
                Ok(())
            }
            other => Err(format!(
                "{other:?} ({:?} since the restart)",
                restarted.elapsed()
            )),
        },
    )
    .await;
    let registered_after = restarted.elapsed();
    println!("re-registered {registered_after:?} after the restart (lease TTL {lease_ttl_secs} s)");
    assert!(
        registered_after < Duration::from_secs(5),
        "searcher-1 re-registered {registered_after:?} after its restart: it waited for the old lease ({lease_ttl_secs} s)"
    );
    // And it serves its shards again.
    wait_for(
        Duration::from_secs(20),
        "a complete search after the restart",
        async || {
            client
                .search(search_request("again", base.row(0), 5))
                .await
                .map_err(|status| format!("{status:?}"))
                .and_then(|response| {
                    let response = response.into_inner();
                    if response.partial {
                        Err(format!("partial: {:?}", response.shards))
                    } else {
                        Ok(())
                    }
                })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_under_load_costs_searches_nothing_and_searchers_reregister() {
    let lease_ttl_secs = 2;
    let mut cluster = Cluster::start_with(ClusterOptions::new(2, lease_ttl_secs)).await;
    let mut client = cluster.client().await;
    client
        .create_collection(collection_config("outage", 16, v1::Metric::L2, 2, 2))
        .await
        .expect("create");
    let base = dataset::synthetic(500, 16, 91);
    upsert_rows(&mut client, "outage", &base, 250).await;
    let queries = dataset::synthetic(8, 16, 92);
    let reference = reference_results(&mut client, "outage", &base, &queries, 10).await;
    let load = SearchLoad::start(&cluster.merger_address, "outage", &queries, reference, 1).await;
    load.wait_for_more(10, Duration::from_secs(20)).await;

    cluster.etcd_stop();
    let stopped = Instant::now();
    let before_outage = load.searches();
    let mut request = tonic::Request::new(collection_config("during", 8, v1::Metric::L2, 1, 1));
    request.set_timeout(Duration::from_secs(30));
    match client.create_collection(request).await {
        Err(status) => assert_eq!(
            status.code(),
            Code::Unavailable,
            "CreateCollection with etcd down: {status:?}"
        ),
        Ok(response) => panic!(
            "CreateCollection succeeded with etcd down: {:?}",
            response.into_inner()
        ),
    }
    // The outage outlasts every lease.
    let outage = Duration::from_secs(lease_ttl_secs * 2 + 1);
    tokio::time::sleep(outage.saturating_sub(stopped.elapsed())).await;
    let during_outage = load.searches() - before_outage;
    cluster.etcd_restart();

    let expected: Vec<String> = cluster
        .searchers
        .iter()
        .map(|searcher| format!("/quiver/searchers/{}", searcher.id))
        .collect();
    wait_for(
        Duration::from_secs(30),
        "every searcher's key to reappear without a restart",
        async || {
            let keys = cluster.etcd_keys("/quiver/searchers/");
            let missing: Vec<&String> = expected.iter().filter(|key| !keys.contains(key)).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing {missing:?}, present {keys:?}"))
            }
        },
    )
    .await;
    for searcher in &mut cluster.searchers {
        let exited = searcher.exit_status();
        assert!(
            searcher.is_running() && exited.is_none(),
            "{} exited: {exited:?}",
            searcher.id
        );
    }
    load.wait_for_more(10, Duration::from_secs(20)).await;
    let (searches, problems) = load.finish().await;
    println!("{searches} searches, {during_outage} during the {outage:?} etcd outage");
    assert!(
        problems.is_empty(),
        "{} of {searches} searches failed or differed around the etcd outage; first: {:?}\nmerger log:\n{}",
        problems.len(),
        &problems[..problems.len().min(3)],
        cluster.log_tail("merger")
    );
    assert!(
        during_outage >= 10,
        "only {during_outage} searches during the outage"
    );

    // Writes and reads work again.
    let far = vec![1000.0; 16];
    wait_for(
        Duration::from_secs(20),
        "an upsert after the outage",
        async || {
            client
                .upsert(UpsertRequest {
                    collection: "outage".into(),
                    points: vec![Point {
                        id: "after-outage".into(),
                        vector: far.clone(),
                        payload_json: String::new(),
                    }],
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|status| format!("{status:?}"))
        },
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "a search to find the point written after the outage",
        async || {
            let response = client
                .search(search_request("outage", &far, 1))
                .await
                .map_err(|status| format!("{status:?}"))?
                .into_inner();
            match response
                .results
                .first()
                .and_then(|result| result.neighbors.first())
            {
                Some(neighbor) if neighbor.id == "after-outage" => Ok(()),
                other => Err(format!("nearest {other:?}")),
            }
        },
    )
    .await;
}
