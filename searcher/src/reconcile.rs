//! Makes the replicas hosted here follow the assignments in etcd.
//!
//! The loop wakes on every change of the watched cluster view and on a timer. Newly assigned
//! replicas are announced BOOTING, opened (log replay) on the blocking pool, then announced
//! ACTIVE; replicas no longer assigned here are announced DRAINING, closed, their files
//! removed, and their status key deleted. Status keys live under the Searcher's lease, so a
//! Searcher that dies takes them with it. Point counts are republished on the timer when
//! they changed, never on the write path.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use quiver_cluster::{
    model::{encode, ReplicaRecord},
    ClusterState, ClusterView, KeySchema, Registration, ReplicaPhase,
};
use tokio::sync::watch;

use crate::{
    replica::{Replica, ReplicaConfig, ReplicaCounters},
    service::{Hosted, SearcherNode},
};

/// How often counters are republished and failed opens retried.
const STATUS_INTERVAL: Duration = Duration::from_secs(2);
const OPEN_RETRY_BACKOFF: Duration = Duration::from_secs(5);

pub struct Reconciler {
    node: Arc<SearcherNode>,
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
        view: ClusterView,
        registration: Arc<Registration>,
        schema: KeySchema,
    ) -> Reconciler {
        Reconciler {
            node,
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
                let counters = replica.counters().unwrap_or(zero_counters());
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
        // Searches in flight hold their own Arc; the files go once the last one finishes.
        self.node.set_slot(collection, *shard, None);
        if let Some(replica) = hosted.replica {
            let dir = self.node.replica_dir(collection, *shard);
            let removed = tokio::task::spawn_blocking(move || {
                drop(replica);
                std::fs::remove_dir_all(&dir)
            })
            .await;
            if let Ok(Err(error)) = removed {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(%collection, shard, %error, "could not remove replica files");
                }
            }
        }
        self.unpublish(key).await;
    }

    async fn publish_counters(&mut self) {
        for (key, hosted) in self.node.hosted() {
            let (ReplicaPhase::Active, Some(replica)) = (hosted.phase, hosted.replica) else {
                continue;
            };
            let Ok(counters) = replica.counters() else {
                continue;
            };
            self.publish(&key, ReplicaPhase::Active, counters).await;
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

fn zero_counters() -> ReplicaCounters {
    ReplicaCounters {
        point_count: 0,
        applied_seq: 0,
    }
}
