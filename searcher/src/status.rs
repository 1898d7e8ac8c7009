//! Publishes the status record of every replica this Searcher hosts
//! (`replicas/<collection>/<shard>/<searcher>`, under the Searcher's lease): its phase, point
//! count, applied seq, epoch, role, and the learners a primary vouches for.
//!
//! One task does every status write, in order, so a record never overtakes the one before
//! it, and it is the only thing that task does: counters go out about
//! [`COUNTER_PUBLISH_DELAY`] after a write however long the reconciler spends opening a
//! replica or waiting out a drain grace. All the records that changed go in one etcd
//! transaction, not one put after another; a write that fails is tried again within
//! [`RETRY_MAX`] rather than at the next timer tick; and every [`STATUS_INTERVAL`] a record
//! that etcd (as the watched view shows it) holds differently from what was last written is
//! written again, so a put that etcd applied late, or lost, does not stand.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use quiver_cluster::{
    model::{encode, ReplicaRecord},
    ClusterView, KeySchema, Registration, ReplicaPhase, ReplicaRole,
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use crate::{node::SearcherNode, replica::ReplicaCounters, replication::ShardState};

/// Writes within this window share one status update.
pub const COUNTER_PUBLISH_DELAY: Duration = Duration::from_millis(100);
/// How often every record is compared with etcd and counters republished regardless.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// A failed write is tried again after `RETRY_MIN`, doubling up to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

type ReplicaKey = (String, u32);

/// What a replica's record says, before the assignment's epoch and role are added.
#[derive(Debug, Clone)]
pub enum Status {
    /// A phase with counters: BOOTING, ACTIVE, DRAINING.
    Phase(ReplicaPhase, ReplicaCounters),
    /// FAILED, with why.
    Failed(String),
}

enum Request {
    Publish {
        key: ReplicaKey,
        status: Status,
        done: oneshot::Sender<bool>,
    },
    Unpublish {
        key: ReplicaKey,
        done: oneshot::Sender<()>,
    },
}

/// How the reconciler hands lifecycle changes to the publisher. When every handle is
/// dropped the publisher finishes what it was given and stops.
#[derive(Clone)]
pub struct StatusHandle {
    requests: mpsc::UnboundedSender<Request>,
}

impl StatusHandle {
    /// Writes `status` for `key` now (after what was asked before); true once etcd holds it.
    pub async fn publish(&self, key: &ReplicaKey, status: Status) -> bool {
        let (done, answer) = oneshot::channel();
        let request = Request::Publish {
            key: key.clone(),
            status,
            done,
        };
        self.requests.send(request).is_ok() && answer.await.unwrap_or(false)
    }

    /// Deletes `key`'s record and forgets it.
    pub async fn unpublish(&self, key: &ReplicaKey) {
        let (done, answer) = oneshot::channel();
        let request = Request::Unpublish {
            key: key.clone(),
            done,
        };
        if self.requests.send(request).is_ok() {
            let _ = answer.await;
        }
    }
}

pub struct StatusPublisher {
    node: Arc<SearcherNode>,
    view: ClusterView,
    registration: Arc<Registration>,
    schema: KeySchema,
    /// What etcd was last told for each key, to skip unchanged records.
    published: HashMap<ReplicaKey, ReplicaRecord>,
    /// TEST ONLY (see [`crate::fault::FaultConfig::boot_gate`]): while this file exists,
    /// replicas are published BOOTING instead of ACTIVE.
    boot_gate: Option<PathBuf>,
    requests: mpsc::UnboundedReceiver<Request>,
}

/// A record to write, with what to do once etcd holds it.
struct Pending {
    key: ReplicaKey,
    record: ReplicaRecord,
    /// A primary's shard, told which learners etcd now shows it vouching for.
    vouching: Option<Arc<ShardState>>,
}

impl StatusPublisher {
    pub fn new(
        node: Arc<SearcherNode>,
        view: ClusterView,
        registration: Arc<Registration>,
        schema: KeySchema,
        boot_gate: Option<PathBuf>,
    ) -> (StatusPublisher, StatusHandle) {
        let (sender, requests) = mpsc::unbounded_channel();
        let publisher = StatusPublisher {
            node,
            view,
            registration,
            schema,
            published: HashMap::new(),
            boot_gate,
            requests,
        };
        (publisher, StatusHandle { requests: sender })
    }

    /// Runs until every [`StatusHandle`] is dropped.
    pub async fn run(mut self) {
        let mut ticker = tokio::time::interval(STATUS_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the counters are next due: set by a write (after the coalescing delay) or by
        // a failed attempt (after the retry delay).
        let mut due: Option<Instant> = None;
        let mut retry = RETRY_MIN;
        loop {
            let publish_counters = tokio::select! {
                biased;
                request = self.requests.recv() => {
                    let Some(request) = request else { return };
                    self.serve(request).await;
                    false
                }
                _ = self.node.writes_applied().notified(), if due.is_none() => {
                    due = Some(Instant::now() + COUNTER_PUBLISH_DELAY);
                    false
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    due = None;
                    true
                }
                _ = ticker.tick() => {
                    self.forget_what_etcd_lacks();
                    true
                }
            };
            if !publish_counters {
                continue;
            }
            if self.publish_counters().await {
                retry = RETRY_MIN;
            } else {
                due = Some(Instant::now() + retry);
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }

    async fn serve(&mut self, request: Request) {
        match request {
            Request::Publish { key, status, done } => {
                let pending = self.record(&key, status);
                let written = self.write(vec![pending]).await;
                let _ = done.send(written);
            }
            Request::Unpublish { key, done } => {
                let etcd_key = self.schema.replica(&key.0, key.1, self.node.id());
                if let Err(error) = self.registration.delete_leased(&etcd_key).await {
                    tracing::warn!(key = %etcd_key, %error, "could not delete replica status");
                }
                self.published.remove(&key);
                crate::metrics::forget_replica(&key.0, key.1);
                let _ = done.send(());
            }
        }
    }

    /// The record of every open replica that is not draining, written where it changed;
    /// true when etcd holds them all.
    async fn publish_counters(&mut self) -> bool {
        let mut pending = Vec::new();
        for (key, hosted) in self.node.hosted() {
            let Some(replica) = hosted.replica else {
                continue;
            };
            if hosted.phase == ReplicaPhase::Draining {
                continue;
            }
            let counters = replica.counters();
            // The local truth, whether or not etcd takes the record below.
            crate::metrics::set_replica_points(&key.0, key.1, counters.point_count);
            if let Some(bytes) = replica.index_memory_bytes() {
                crate::metrics::set_replica_index_bytes(&key.0, key.1, bytes);
            }
            if let Some(bytes) = replica.payload_index_memory_bytes() {
                crate::metrics::set_replica_payload_index_bytes(&key.0, key.1, bytes);
            }
            pending.push(self.record(&key, Status::Phase(hosted.phase, counters)));
        }
        self.write(pending).await
    }

    /// The full record of `key` with `status`, as the current assignment makes it.
    fn record(&self, key: &ReplicaKey, status: Status) -> Pending {
        let assignment = self.view.current().assignment(&key.0, key.1).cloned();
        let epoch = assignment.as_ref().map_or(0, |assignment| assignment.epoch);
        let role = assignment.and_then(|assignment| assignment.role_of(self.node.id()));
        let (phase, counters, error) = match status {
            Status::Phase(phase, counters) => (phase, counters, None),
            Status::Failed(reason) => (
                ReplicaPhase::Failed,
                ReplicaCounters {
                    point_count: 0,
                    applied_seq: 0,
                },
                Some(reason),
            ),
        };
        if error.is_some() {
            return Pending {
                key: key.clone(),
                record: ReplicaRecord {
                    state: phase,
                    error,
                    ..Default::default()
                },
                vouching: None,
            };
        }
        let gated = phase == ReplicaPhase::Active
            && self.boot_gate.as_ref().is_some_and(|gate| gate.exists());
        // Only a primary ready for writes in the assignment's epoch vouches for learners.
        let shard = self.node.shard_state(&key.0, key.1).filter(|shard| {
            phase == ReplicaPhase::Active
                && role == Some(ReplicaRole::Primary)
                && shard.ready_epoch() == epoch
        });
        let learners_in_sync = shard
            .as_ref()
            .map(|shard| shard.log.learners_to_vouch_for())
            .unwrap_or_default();
        Pending {
            key: key.clone(),
            record: ReplicaRecord {
                state: if gated { ReplicaPhase::Booting } else { phase },
                point_count: counters.point_count,
                applied_seq: counters.applied_seq,
                epoch,
                role,
                learners_in_sync,
                error: None,
            },
            vouching: shard,
        }
    }

    /// Writes the records etcd does not hold yet, all in one go; true when etcd holds them
    /// all.
    async fn write(&mut self, pending: Vec<Pending>) -> bool {
        let changed: Vec<Pending> = pending
            .into_iter()
            .filter(|pending| self.published.get(&pending.key) != Some(&pending.record))
            .collect();
        if changed.is_empty() {
            return true;
        }
        let me = self.node.id().to_string();
        let entries = changed
            .iter()
            .map(|pending| {
                let (collection, shard) = &pending.key;
                (
                    self.schema.replica(collection, *shard, &me),
                    encode(&pending.record),
                )
            })
            .collect();
        if let Err(error) = self.registration.put_leased_many(entries).await {
            // Some may have been written; the next attempt writes them all again.
            tracing::warn!(records = changed.len(), %error, "could not publish replica status; retrying");
            return false;
        }
        for Pending {
            key,
            record,
            vouching,
        } in changed
        {
            crate::metrics::set_replica_points(&key.0, key.1, record.point_count);
            crate::metrics::set_replica_state(&key.0, key.1, record.state, record.role);
            if let Some(shard) = vouching {
                shard.log.published(&record.learners_in_sync);
            }
            self.published.insert(key, record);
        }
        true
    }

    /// Forgets every record that the watched view shows differently from what was last
    /// written (or not at all), so that the next pass writes it again.
    fn forget_what_etcd_lacks(&mut self) {
        let state = self.view.current();
        let me = self.node.id();
        self.published.retain(|(collection, shard), record| {
            state.replica(collection, *shard, me) == Some(&*record)
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use quiver_cluster::{
        model::{decode, AssignmentRecord, Capacity, CollectionRecord, SearcherRecord},
        store::{Compare, KeyValue, LeaseId, Op, WatchStream},
        MemoryStore, MetadataStore,
    };
    use quiver_index::Metric;

    use super::*;
    use crate::{
        point::PointData,
        service::{SearcherService, ShardWrite},
    };

    /// A memory store whose next `failures` transactions fail, the way a put that times out
    /// against a slow etcd does.
    struct Flaky {
        inner: MemoryStore,
        failures: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl MetadataStore for Flaky {
        async fn get(&self, key: &str) -> quiver_cluster::Result<Option<KeyValue>> {
            self.inner.get(key).await
        }
        async fn get_prefix(&self, prefix: &str) -> quiver_cluster::Result<(Vec<KeyValue>, i64)> {
            self.inner.get_prefix(prefix).await
        }
        async fn put(
            &self,
            key: &str,
            value: Vec<u8>,
            lease: Option<LeaseId>,
        ) -> quiver_cluster::Result<()> {
            self.inner.put(key, value, lease).await
        }
        async fn delete(&self, key: &str) -> quiver_cluster::Result<bool> {
            self.inner.delete(key).await
        }
        async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> quiver_cluster::Result<bool> {
            let failing = self
                .failures
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                    left.checked_sub(1)
                })
                .is_ok();
            if failing {
                return Err(quiver_cluster::Error::Unavailable(
                    "etcd txn: Timeout expired".to_string(),
                ));
            }
            self.inner.txn(compares, ops).await
        }
        async fn grant_lease(&self, ttl_secs: i64) -> quiver_cluster::Result<LeaseId> {
            self.inner.grant_lease(ttl_secs).await
        }
        async fn keep_alive(&self, lease: LeaseId) -> quiver_cluster::Result<i64> {
            self.inner.keep_alive(lease).await
        }
        async fn revoke_lease(&self, lease: LeaseId) -> quiver_cluster::Result<()> {
            self.inner.revoke_lease(lease).await
        }
        async fn watch_prefix(
            &self,
            prefix: &str,
            from_revision: i64,
        ) -> quiver_cluster::Result<WatchStream> {
            self.inner.watch_prefix(prefix, from_revision).await
        }
    }

    /// A node hosting `c/0` and `c/1` as the ready primary of epoch 1 at RF 1.
    fn node(dir: &std::path::Path) -> Arc<SearcherNode> {
        let node = SearcherNode::new("s1".into(), dir.to_path_buf());
        for shard in 0..2 {
            crate::node::test_support::host_primary(&node, shard, &["s1"]);
        }
        Arc::new(node)
    }

    fn write(shard: u32, id: &str) -> ShardWrite {
        ShardWrite {
            collection: "c".into(),
            shard,
            epoch: 1,
            write_quorum: 1,
            deadline: Some(std::time::Instant::now() + Duration::from_secs(5)),
            op: crate::service::WriteOp::Upsert(vec![PointData {
                id: id.into(),
                vector: vec![1.0; 4],
                payload: None,
            }]),
        }
    }

    async fn published(store: &Flaky, schema: &KeySchema, shard: u32) -> Option<ReplicaRecord> {
        let key = schema.replica("c", shard, "s1");
        let stored = store.get(&key).await.unwrap()?;
        Some(decode(&key, &stored.value).unwrap())
    }

    #[tokio::test]
    async fn counters_reach_etcd_within_a_second_even_when_a_write_to_etcd_fails() {
        let store = Arc::new(Flaky {
            inner: MemoryStore::new(),
            failures: AtomicUsize::new(0),
        });
        let schema = KeySchema::default();
        let collection = CollectionRecord {
            name: "c".into(),
            dimension: 4,
            metric: Metric::L2,
            num_shards: 2,
            replication_factor: 1,
            index_spec: "flat".into(),
            created_at: "t".into(),
            payload_indexes: Vec::new(),
        };
        store
            .put(&schema.collection("c"), encode(&collection), None)
            .await
            .unwrap();
        for shard in 0..2 {
            store
                .put(
                    &schema.assignment("c", shard),
                    encode(&AssignmentRecord::new(vec!["s1".into()])),
                    None,
                )
                .await
                .unwrap();
        }
        let shared: Arc<dyn MetadataStore> = store.clone();
        let registration = Arc::new(
            Registration::register(
                Arc::clone(&shared),
                schema.clone(),
                SearcherRecord {
                    id: "s1".into(),
                    address: "http://127.0.0.1:1".into(),
                    version: "0".into(),
                    started_at: "t".into(),
                    capacity: Capacity {
                        cpus: 1,
                        memory_bytes: 1,
                    },
                },
                Duration::from_secs(10),
                None,
            )
            .await
            .unwrap(),
        );
        let view = ClusterView::start(Arc::clone(&shared), schema.clone())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let node = node(dir.path());
        let (publisher, handle) =
            StatusPublisher::new(Arc::clone(&node), view, registration, schema.clone(), None);
        let task = tokio::spawn(publisher.run());
        for shard in 0..2 {
            assert!(
                handle
                    .publish(
                        &("c".into(), shard),
                        Status::Phase(ReplicaPhase::Active, node_counters(&node, shard))
                    )
                    .await
            );
        }

        // The next two writes to etcd fail; both shards' counters still arrive, together,
        // well within a second of the acknowledgement.
        store.failures.store(2, Ordering::Release);
        let started = std::time::Instant::now();
        for shard in 0..2 {
            node.write(write(shard, &format!("p{shard}")))
                .await
                .unwrap();
        }
        loop {
            let records = [
                published(&store, &schema, 0).await,
                published(&store, &schema, 1).await,
            ];
            if records.iter().all(|record| {
                record
                    .as_ref()
                    .is_some_and(|record| record.point_count == 1 && record.applied_seq == 1)
            }) {
                let record = records[0].as_ref().unwrap();
                assert_eq!(record.role, Some(ReplicaRole::Primary));
                assert_eq!(record.epoch, 1);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "published after the acknowledgement: {records:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.failures.load(Ordering::Acquire), 0);

        // Unpublishing deletes the record; the publisher stops with its last handle.
        handle.unpublish(&("c".into(), 1)).await;
        assert_eq!(published(&store, &schema, 1).await, None);
        node.set_slot("c", 1, None);
        drop(handle);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the publisher stops once its handles are gone")
            .unwrap();
    }

    fn node_counters(node: &SearcherNode, shard: u32) -> ReplicaCounters {
        node.hosted()[&("c".to_string(), shard)]
            .replica
            .as_ref()
            .unwrap()
            .counters()
    }
}
