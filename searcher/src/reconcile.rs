//! Makes the replicas hosted here follow the assignments in etcd.
//!
//! The loop wakes on every change of the watched cluster view and on a timer. Newly assigned
//! replicas are announced BOOTING and opened (log replay) on the blocking pool. A primary
//! turns ACTIVE at once, and takes writes once it began its epoch (after fencing its peers
//! and adopting the longest log, [`Replicator::recover_primary`]); a follower or learner
//! turns ACTIVE once it caught up with its primary ([`Replicator::follow`]). A replica whose
//! files are corrupt is announced FAILED with the reason; when a peer of the shard is ACTIVE
//! its files are moved into `quarantine/` and it is rebuilt from that peer. Replicas no
//! longer assigned here are announced DRAINING, closed after a short grace (so Mergers stop
//! routing to them first), and their status key deleted. Their files are deleted only after a fresh etcd read confirms the collection
//! is gone (or re-created) or the shard moved away: a view that merely lacks the record (a
//! malformed value, say) must never cost data. Status keys live under the Searcher's lease,
//! so a Searcher that dies takes them with it. Every status write goes through the
//! [`StatusPublisher`](crate::status::StatusPublisher), which also republishes point counts
//! shortly after writes, so they never wait for this loop's slower work.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use quiver_cluster::{
    model::{decode, AssignmentRecord, CollectionRecord},
    ClusterState, ClusterView, KeySchema, MetadataStore, ReplicaPhase,
};
use quiver_payload::PayloadSchema;
use tokio::sync::watch;

use crate::{
    error::Error,
    node::{Hosted, SearcherNode},
    replica::{Replica, ReplicaConfig, ReplicaCounters},
    replication::{PeerClients, QuorumMembers, Replicator},
    status::{Status, StatusHandle},
};
use quiver_cluster::ReplicaRole;
use tokio::task::JoinHandle;

/// How often the loop runs without a change (failed opens are retried then).
const PASS_INTERVAL: Duration = Duration::from_secs(2);
/// How soon a failed open is retried.
const OPEN_RETRY_BACKOFF: Duration = Duration::from_secs(5);

pub struct Reconciler {
    node: Arc<SearcherNode>,
    store: Arc<dyn MetadataStore>,
    view: ClusterView,
    status: StatusHandle,
    schema: KeySchema,
    open_failures: HashMap<(String, u32), (Instant, String)>,
    replicator: Arc<Replicator>,
    /// The follow or recovery task of each replica, whichever its role needs.
    tasks: HashMap<(String, u32), (TaskKind, JoinHandle<()>)>,
    /// The payload index builds in progress (one task for all replicas), if any.
    payload_builds: Option<JoinHandle<()>>,
    drain_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskKind {
    Follow,
    Recover(u64),
}

impl Reconciler {
    pub fn new(
        node: Arc<SearcherNode>,
        store: Arc<dyn MetadataStore>,
        view: ClusterView,
        status: StatusHandle,
        schema: KeySchema,
        drain_grace: Duration,
    ) -> Reconciler {
        let replicator = Arc::new(Replicator {
            host: Arc::clone(&node) as _,
            view: view.clone(),
            peers: Arc::new(PeerClients::default()),
        });
        Reconciler {
            node,
            store,
            view,
            status,
            schema,
            open_failures: HashMap::new(),
            replicator,
            tasks: HashMap::new(),
            payload_builds: None,
            drain_grace,
        }
    }

    /// Announces every hosted replica DRAINING (graceful stop): Mergers stop routing to
    /// them while in-flight work finishes.
    pub async fn drain_all(&mut self) {
        for (key, hosted) in self.node.hosted() {
            self.node.set_phase(&key.0, key.1, ReplicaPhase::Draining);
            let counters = hosted
                .replica
                .as_ref()
                .map_or_else(zero_counters, |replica| replica.counters());
            self.status
                .publish(&key, Status::Phase(ReplicaPhase::Draining, counters))
                .await;
        }
        for (_, (_, task)) in self.tasks.drain() {
            task.abort();
        }
    }

    /// Runs until `shutdown` turns true, then hands itself back for the drain.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Reconciler {
        let mut changes = self.view.subscribe();
        let mut ticker = tokio::time::interval(PASS_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow() {
                return self;
            }
            let state = self.view.current();
            self.reconcile(&state).await;
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        tracing::warn!("cluster view closed; stopping the reconciler");
                        return self;
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

        let abandoned: Vec<(String, u32)> = self
            .open_failures
            .keys()
            .filter(|key| !desired.contains_key(*key))
            .cloned()
            .collect();
        for key in abandoned {
            self.open_failures.remove(&key);
            self.status.unpublish(&key).await;
        }

        let hosted = self.node.hosted();
        for (key, config) in desired {
            if hosted.contains_key(&key) {
                continue;
            }
            if let Some((failed_at, _)) = self.open_failures.get(&key) {
                if failed_at.elapsed() < OPEN_RETRY_BACKOFF {
                    continue;
                }
            }
            self.open(key, config).await;
        }

        self.follow_roles(state);
        self.build_payload_indexes(state);
        // A pass may change what a record says (a primary ready for writes in a new epoch,
        // say): have the publisher look.
        self.node.writes_applied().notify_one();
    }

    /// Gives every open replica the assignment the view shows and the task its role needs:
    /// a follow loop for followers and learners, a recovery for a primary of a new epoch.
    fn follow_roles(&mut self, state: &ClusterState) {
        let me = self.node.id().to_string();
        self.tasks.retain(|_, (_, task)| !task.is_finished());
        for (key, hosted) in self.node.hosted() {
            let assignment = state.assignment(&key.0, key.1).cloned();
            let members = assignment
                .as_ref()
                .map_or_else(QuorumMembers::default, |assignment| {
                    let replication_factor = state
                        .collections
                        .get(&key.0)
                        .map(|collection| collection.replication_factor);
                    QuorumMembers::of(assignment, &me, replication_factor, state)
                });
            hosted.state.set_assignment(assignment.clone(), members);
            let (Some(replica), Some(assignment)) = (hosted.replica, assignment) else {
                continue;
            };
            let wanted = match assignment.role_of(&me) {
                Some(ReplicaRole::Primary) => {
                    if hosted.state.ready_epoch() == assignment.epoch {
                        None
                    } else if replica.epochs().current() >= assignment.epoch {
                        hosted
                            .state
                            .lead(assignment.epoch, replica.counters().applied_seq);
                        None
                    } else {
                        Some(TaskKind::Recover(assignment.epoch))
                    }
                }
                Some(ReplicaRole::Follower | ReplicaRole::Learner) => {
                    hosted.state.stop_leading();
                    Some(TaskKind::Follow)
                }
                None => None,
            };
            if let Some((running, task)) = self.tasks.get(&key) {
                if Some(*running) == wanted {
                    continue;
                }
                task.abort();
                self.tasks.remove(&key);
            }
            let Some(kind) = wanted else {
                continue;
            };
            let replicator = Arc::clone(&self.replicator);
            let (collection, shard) = key.clone();
            let task = match kind {
                TaskKind::Follow => tokio::spawn(replicator.follow(collection, shard)),
                TaskKind::Recover(epoch) => {
                    tokio::spawn(replicator.recover_primary(collection, shard, epoch))
                }
            };
            self.tasks.insert(key, (kind, task));
        }
    }

    /// Gives every open replica the payload indexes its collection declares, building the
    /// missing ones from the stored payloads in one task on the blocking pool, apart from
    /// the pass: a replica without its indexes yet answers filters exactly (from payloads),
    /// so nothing waits for them. A pass while builds run leaves them be; the next one
    /// after looks again.
    fn build_payload_indexes(&mut self, state: &ClusterState) {
        if self
            .payload_builds
            .as_ref()
            .is_some_and(|builds| !builds.is_finished())
        {
            return;
        }
        let wanted: Vec<_> = self
            .node
            .hosted()
            .into_iter()
            .filter_map(|((collection, shard), hosted)| {
                let record = state.collections.get(&collection)?;
                let declared = PayloadSchema::from_specs(&record.payload_indexes);
                Some((collection, shard, hosted.replica?, declared))
            })
            .collect();
        if wanted.is_empty() {
            return;
        }
        // Each replica compares its schema under its own lock, which a write may hold for
        // a while: on the blocking pool too.
        self.payload_builds = Some(tokio::task::spawn_blocking(move || {
            for (collection, shard, replica, declared) in wanted {
                if let Err(error) = replica.set_payload_schema(&declared) {
                    tracing::warn!(%collection, shard, %error, "could not build payload indexes");
                }
            }
        }));
    }

    async fn open(&mut self, key: (String, u32), config: ReplicaConfig) {
        let (collection, shard) = key.clone();
        self.node.set_slot(
            &collection,
            shard,
            Some(Hosted::new(ReplicaPhase::Booting, None)),
        );
        self.status
            .publish(&key, Status::Phase(ReplicaPhase::Booting, zero_counters()))
            .await;
        let dir = self.node.replica_dir(&collection, shard);
        let wal_options = self.node.wal_options();
        let open_config = config.clone();
        let opened =
            tokio::task::spawn_blocking(move || Replica::open_with(&dir, open_config, wal_options))
                .await;
        match opened {
            Ok(Ok(replica)) => {
                let counters = replica.counters();
                let state = self.view.current();
                let role = state
                    .assignment(&collection, shard)
                    .and_then(|assignment| assignment.role_of(self.node.id()));
                // A follower serves once it caught up with its primary; a primary is the
                // reference.
                let phase = if role == Some(ReplicaRole::Primary) {
                    ReplicaPhase::Active
                } else {
                    ReplicaPhase::Booting
                };
                self.node.set_slot(
                    &collection,
                    shard,
                    Some(Hosted::new(phase, Some(Arc::new(replica)))),
                );
                self.open_failures.remove(&key);
                self.status
                    .publish(&key, Status::Phase(phase, counters))
                    .await;
                tracing::info!(%collection, shard, ?role, ?phase, applied_seq = counters.applied_seq, "replica opened");
            }
            Ok(Err(error)) => {
                let corrupt = matches!(
                    error,
                    Error::Corrupt { .. } | Error::Index(quiver_index::Error::Corrupt(_))
                );
                self.record_open_failure(key, &error.to_string(), corrupt)
                    .await
            }
            Err(error) => {
                self.record_open_failure(key, &error.to_string(), false)
                    .await
            }
        }
    }

    /// Reports the replica FAILED with the reason. Corrupt files are never served nor
    /// silently dropped: when another replica of the shard is ACTIVE they are moved into
    /// `quarantine/` and the replica is rebuilt from that peer at the next pass; otherwise
    /// they stay where they are and the replica stays FAILED.
    async fn record_open_failure(&mut self, key: (String, u32), reason: &str, corrupt: bool) {
        tracing::error!(collection = %key.0, shard = key.1, %reason, corrupt, "replica failed to open");
        self.node.set_slot(&key.0, key.1, None);
        self.status
            .publish(&key, Status::Failed(reason.to_string()))
            .await;
        crate::metrics::replica_open_failed(corrupt);
        let mut quarantined = false;
        if corrupt {
            let state = self.view.current();
            let peer_active = state.assignment(&key.0, key.1).is_some_and(|assignment| {
                assignment.replicas.iter().any(|id| {
                    id != self.node.id()
                        && state.searchers.contains_key(id)
                        && state
                            .replica(&key.0, key.1, id)
                            .is_some_and(|record| record.state == ReplicaPhase::Active)
                })
            });
            if peer_active {
                let dir = self.node.replica_dir(&key.0, key.1);
                let quarantine = self.node.quarantine_dir(&key.0, key.1);
                match tokio::task::spawn_blocking(move || quarantine_files(&dir, &quarantine)).await
                {
                    Ok(Ok(moved_to)) => {
                        tracing::warn!(collection = %key.0, shard = key.1, quarantine = %moved_to.display(), "corrupt replica files quarantined; rebuilding the replica from a peer");
                        quarantined = true;
                    }
                    Ok(Err(error)) => {
                        tracing::error!(collection = %key.0, shard = key.1, %error, "could not quarantine corrupt replica files")
                    }
                    Err(error) => {
                        tracing::error!(collection = %key.0, shard = key.1, %error, "quarantine task failed")
                    }
                }
            }
        }
        if quarantined {
            // Reopened (empty) at the next pass, then copied from the peer.
            self.open_failures.remove(&key);
        } else {
            self.open_failures
                .insert(key, (Instant::now(), reason.to_string()));
        }
    }

    async fn close(&mut self, key: &(String, u32), hosted: Hosted) {
        let (collection, shard) = key;
        tracing::info!(%collection, shard, "replica no longer assigned here; closing");
        if let Some((_, task)) = self.tasks.remove(key) {
            task.abort();
        }
        self.node
            .set_phase(collection, *shard, ReplicaPhase::Draining);
        self.status
            .publish(key, Status::Phase(ReplicaPhase::Draining, zero_counters()))
            .await;
        // Mergers route by what etcd says: give them a moment to see DRAINING before the
        // replica stops answering.
        if hosted.phase == ReplicaPhase::Active {
            tokio::time::sleep(self.drain_grace).await;
        }
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
        self.status.unpublish(key).await;
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

/// Moves a replica's files into `quarantine` (a fresh directory), keeping them for a
/// person to inspect; returns where they went.
fn quarantine_files(
    dir: &std::path::Path,
    quarantine: &std::path::Path,
) -> std::io::Result<std::path::PathBuf> {
    if let Some(parent) = quarantine.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(dir, quarantine)?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(quarantine.to_path_buf())
}

fn zero_counters() -> ReplicaCounters {
    ReplicaCounters {
        point_count: 0,
        applied_seq: 0,
    }
}
