//! Makes the replicas hosted here follow the assignments in etcd.
//!
//! The loop wakes on every change of the watched cluster view and on a timer. Newly assigned
//! replicas are announced BOOTING, opened (log replay) on the blocking pool, then announced
//! ACTIVE; replicas no longer assigned here are announced DRAINING, closed, and their status
//! key deleted. Their files are deleted only after a fresh etcd read confirms the collection
//! is gone (or re-created) or the shard moved away: a view that merely lacks the record (a
//! malformed value, say) must never cost data. Status keys live under the Searcher's lease,
//! so a Searcher that dies takes them with it. Point counts are republished shortly after
//! writes (coalesced) and on the timer, never on the write path itself.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use quiver_cluster::{
    model::{decode, encode, AssignmentRecord, CollectionRecord, ReplicaRecord},
    ClusterState, ClusterView, KeySchema, MetadataStore, Registration, ReplicaPhase,
};
use tokio::sync::watch;

use crate::{
    replica::{Replica, ReplicaConfig, ReplicaCounters},
    service::{Hosted, SearcherNode},
};

/// How often counters are republished and failed opens retried.
const STATUS_INTERVAL: Duration = Duration::from_secs(2);
const OPEN_RETRY_BACKOFF: Duration = Duration::from_secs(5);
/// Writes arriving within this window share one status update.
const COUNTER_PUBLISH_DELAY: Duration = Duration::from_millis(300);

pub struct Reconciler {
    node: Arc<SearcherNode>,
    store: Arc<dyn MetadataStore>,
    view: ClusterView,
    registration: Arc<Registration>,
    schema: KeySchema,
    /// What was last written to each status key, to skip unchanged republishing.
    published: HashMap<(String, u32), ReplicaRecord>,
    open_failures: HashMap<(String, u32), Instant>,
}

impl Reconciler {
    pub fn new(
        node: Arc<SearcherNode>,
        store: Arc<dyn MetadataStore>,
        view: ClusterView,
        registration: Arc<Registration>,
        schema: KeySchema,
    ) -> Reconciler {
        Reconciler {
            node,
            store,
            view,
            registration,
            schema,
            published: HashMap::new(),
            open_failures: HashMap::new(),
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.view.subscribe();
        let mut ticker = tokio::time::interval(STATUS_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let state = self.view.current();
            self.reconcile(&state).await;
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        tracing::warn!("cluster view closed; stopping the reconciler");
                        return;
                    }
                }
                _ = ticker.tick() => {}
                _ = self.node.writes_applied().notified() => {
                    tokio::time::sleep(COUNTER_PUBLISH_DELAY).await;
                }
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn reconcile(&mut self, state: &ClusterState) {
        let desired = desired_replicas(state, self.node.id());
        let hosted = self.node.hosted();

        for (key, hosted_replica) in &hosted {
            let still_wanted = desired.get(key).is_some_and(|config| {
                hosted_replica
                    .replica
                    .as_ref()
                    .is_none_or(|replica| replica.config() == config)
            });
            if !still_wanted {
                self.close(key, hosted_replica.clone()).await;
            }
        }

        let hosted = self.node.hosted();
        for (key, config) in desired {
            if hosted.contains_key(&key) {
                continue;
            }
            if let Some(failed_at) = self.open_failures.get(&key) {
                if failed_at.elapsed() < OPEN_RETRY_BACKOFF {
                    continue;
                }
            }
            self.open(key, config).await;
        }

        self.publish_counters().await;
    }

    async fn open(&mut self, key: (String, u32), config: ReplicaConfig) {
        let (collection, shard) = key.clone();
        self.node.set_slot(
            &collection,
            shard,
            Some(Hosted {
                phase: ReplicaPhase::Booting,
                replica: None,
            }),
        );
        self.publish(&key, ReplicaPhase::Booting, zero_counters())
            .await;
        let dir = self.node.replica_dir(&collection, shard);
        let opened = tokio::task::spawn_blocking(move || Replica::open(&dir, config)).await;
        match opened {
            Ok(Ok(replica)) => {
                let counters = replica.counters();
                self.node.set_slot(
                    &collection,
                    shard,
                    Some(Hosted {
                        phase: ReplicaPhase::Active,
                        replica: Some(Arc::new(replica)),
                    }),
                );
                self.open_failures.remove(&key);
                self.publish(&key, ReplicaPhase::Active, counters).await;
                tracing::info!(%collection, shard, "replica active");
            }
            Ok(Err(error)) => self.record_open_failure(key, &error.to_string()).await,
            Err(error) => self.record_open_failure(key, &error.to_string()).await,
        }
    }

    async fn record_open_failure(&mut self, key: (String, u32), reason: &str) {
        tracing::error!(collection = %key.0, shard = key.1, %reason, "replica failed to open");
        self.node.set_slot(&key.0, key.1, None);
        self.unpublish(&key).await;
        self.open_failures.insert(key, Instant::now());
    }

    async fn close(&mut self, key: &(String, u32), hosted: Hosted) {
        let (collection, shard) = key;
        tracing::info!(%collection, shard, "replica no longer assigned here; closing");
        self.node.set_slot(
            collection,
            *shard,
            Some(Hosted {
                phase: ReplicaPhase::Draining,
                replica: hosted.replica.clone(),
            }),
        );
        self.publish(key, ReplicaPhase::Draining, zero_counters())
            .await;
        self.node.set_slot(collection, *shard, None);
        let incarnation = hosted
            .replica
            .as_ref()
            .map(|replica| replica.config().incarnation.clone());
        // Searches in flight hold their own Arc; the replica closes when the last one ends.
        drop(hosted);
        if let Some(incarnation) = incarnation {
            if self
                .files_are_obsolete(collection, *shard, &incarnation)
                .await
            {
                let dir = self.node.replica_dir(collection, *shard);
                match tokio::task::spawn_blocking(move || remove_replica_dir(&dir)).await {
                    Ok(Ok(())) => tracing::info!(%collection, shard, "replica files removed"),
                    Ok(Err(error)) => {
                        tracing::warn!(%collection, shard, %error, "could not remove replica files")
                    }
                    Err(error) => tracing::warn!(%collection, shard, %error, "removal task failed"),
                }
            } else {
                tracing::warn!(
                    %collection,
                    shard,
                    "replica closed but its files are kept: etcd does not confirm it is gone"
                );
            }
        }
        self.unpublish(key).await;
    }

    /// True only when etcd itself says the files can never be needed again: the collection
    /// is absent or is a newer incarnation, or this shard is assigned elsewhere. Anything
    /// uncertain (etcd unreachable, a value that does not decode) keeps the files.
    async fn files_are_obsolete(&self, collection: &str, shard: u32, incarnation: &str) -> bool {
        let collection_key = self.schema.collection(collection);
        let record = match self.store.get(&collection_key).await {
            Ok(None) => return true,
            Ok(Some(entry)) => match decode::<CollectionRecord>(&collection_key, &entry.value) {
                Ok(record) => record,
                Err(_) => return false,
            },
            Err(_) => return false,
        };
        if record.created_at != incarnation {
            return true;
        }
        let assignment_key = self.schema.assignment(collection, shard);
        match self.store.get(&assignment_key).await {
            Ok(Some(entry)) => decode::<AssignmentRecord>(&assignment_key, &entry.value)
                .is_ok_and(|assignment| !assignment.replicas.iter().any(|id| id == self.node.id())),
            _ => false,
        }
    }

    async fn publish_counters(&mut self) {
        for (key, hosted) in self.node.hosted() {
            let (ReplicaPhase::Active, Some(replica)) = (hosted.phase, hosted.replica) else {
                continue;
            };
            self.publish(&key, ReplicaPhase::Active, replica.counters())
                .await;
        }
    }

    async fn publish(
        &mut self,
        key: &(String, u32),
        phase: ReplicaPhase,
        counters: ReplicaCounters,
    ) {
        let record = ReplicaRecord {
            state: phase,
            point_count: counters.point_count,
            applied_seq: counters.applied_seq,
            ..Default::default()
        };
        if self.published.get(key) == Some(&record) {
            return;
        }
        let etcd_key = self.schema.replica(&key.0, key.1, self.node.id());
        match self
            .registration
            .put_leased(&etcd_key, encode(&record))
            .await
        {
            Ok(()) => {
                crate::metrics::set_replica_points(&key.0, key.1, record.point_count);
                self.published.insert(key.clone(), record);
            }
            Err(error) => {
                // Retried on the next tick, since `published` still holds the old value.
                tracing::warn!(key = %etcd_key, %error, "could not publish replica status");
            }
        }
    }

    async fn unpublish(&mut self, key: &(String, u32)) {
        let etcd_key = self.schema.replica(&key.0, key.1, self.node.id());
        if let Err(error) = self.registration.delete_leased(&etcd_key).await {
            tracing::warn!(key = %etcd_key, %error, "could not delete replica status");
        }
        self.published.remove(key);
        crate::metrics::forget_replica(&key.0, key.1);
    }
}

/// The replicas etcd assigns to `searcher_id`, with what each needs to open.
pub fn desired_replicas(
    state: &ClusterState,
    searcher_id: &str,
) -> HashMap<(String, u32), ReplicaConfig> {
    let mut seen = HashSet::new();
    state
        .assigned_to(searcher_id)
        .into_iter()
        .filter(|key| seen.insert(key.clone()))
        .filter_map(|(collection, shard)| {
            let record = state.collections.get(&collection)?;
            let config = ReplicaConfig {
                collection: collection.clone(),
                shard,
                dimension: record.dimension as usize,
                metric: record.metric,
                index_spec: record.index_spec.clone(),
                incarnation: record.created_at.clone(),
            };
            Some(((collection, shard), config))
        })
        .collect()
}

/// Renames the directory aside first, so a crash midway never leaves a half-deleted replica
/// under its real name, then deletes it.
fn remove_replica_dir(dir: &std::path::Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let trash = dir.with_file_name(format!(
        ".trash-{}-{}",
        dir.file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("replica"),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::rename(dir, &trash)?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    std::fs::remove_dir_all(&trash)
}

fn zero_counters() -> ReplicaCounters {
    ReplicaCounters {
        point_count: 0,
        applied_seq: 0,
    }
}
