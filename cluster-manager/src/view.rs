//! The watch-backed cluster view: an in-memory copy of everything under the prefix, kept
//! current by one watch. Mergers read it on the search path (never etcd); Searchers use it to
//! find their assignments.
//!
//! The pattern: list the prefix once (noting the revision), then watch from revision + 1.
//! When the watch reports a compacted start revision, breaks or ends, list again and watch
//! again, with a capped backoff while the store keeps failing.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    keys::Key,
    metrics::{self, Session},
    model::{
        decode, AssignmentRecord, CollectionRecord, ReplicaPhase, ReplicaRecord, SearcherRecord,
    },
    store::{KeyValue, MetadataStore, WatchEvent},
    Error, KeySchema, Result,
};

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Everything under the prefix, decoded, at one store revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    /// The store revision this state reflects.
    pub revision: i64,
    pub searchers: BTreeMap<String, SearcherRecord>,
    pub collections: BTreeMap<String, CollectionRecord>,
    /// Keyed by (collection, shard).
    pub assignments: BTreeMap<(String, u32), AssignmentRecord>,
    /// Keyed by (collection, shard, searcher).
    pub replicas: BTreeMap<(String, u32, String), ReplicaRecord>,
}

impl ClusterState {
    pub fn assignment(&self, collection: &str, shard: u32) -> Option<&AssignmentRecord> {
        self.assignments.get(&(collection.to_string(), shard))
    }

    pub fn replica(&self, collection: &str, shard: u32, searcher: &str) -> Option<&ReplicaRecord> {
        self.replicas
            .get(&(collection.to_string(), shard, searcher.to_string()))
    }

    /// Voting Searchers of the shard's assignment whose replica reports ACTIVE and which are
    /// live (present in searchers), in assignment order. Learners are never searched: their
    /// copies may still be catching up.
    pub fn active_replicas(&self, collection: &str, shard: u32) -> Vec<&SearcherRecord> {
        let Some(assignment) = self.assignment(collection, shard) else {
            return Vec::new();
        };
        assignment
            .replicas
            .iter()
            .filter(|searcher| {
                self.replica(collection, shard, searcher)
                    .is_some_and(|replica| replica.state == ReplicaPhase::Active)
            })
            .filter_map(|searcher| self.searchers.get(searcher))
            .collect()
    }

    /// (collection, shard) pairs this searcher should host, in order: as a voting replica
    /// or as a learner (a learner builds its copy before it may vote or serve).
    pub fn assigned_to(&self, searcher_id: &str) -> Vec<(String, u32)> {
        self.assignments
            .iter()
            .filter(|(_, assignment)| assignment.members().any(|id| id == searcher_id))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The ids of the live Searchers, sorted.
    pub fn live_searcher_ids(&self) -> Vec<String> {
        self.searchers.keys().cloned().collect()
    }

    /// Builds the state from a full listing.
    pub fn from_listing(schema: &KeySchema, key_values: &[KeyValue], revision: i64) -> Self {
        let mut state = ClusterState {
            revision,
            ..ClusterState::default()
        };
        for key_value in key_values {
            state.apply_put(schema, &key_value.key, &key_value.value);
        }
        state
    }

    /// Applies one batch of watch events; the state's revision becomes the batch's.
    pub fn apply_events(&mut self, schema: &KeySchema, events: &[WatchEvent]) {
        for event in events {
            match event {
                WatchEvent::Put(key_value) => {
                    self.apply_put(schema, &key_value.key, &key_value.value)
                }
                WatchEvent::Delete { key, .. } => self.apply_delete(schema, key),
            }
            self.revision = self.revision.max(event.revision());
        }
    }

    fn apply_put(&mut self, schema: &KeySchema, key: &str, value: &[u8]) {
        let Some(parsed) = schema.parse(key) else {
            tracing::debug!(key, "ignoring a key outside the schema");
            return;
        };
        if let Err(error) = self.insert(&parsed, key, value) {
            // The old value is stale and the new one unreadable: the record is dropped
            // rather than kept at a value the store no longer has.
            tracing::warn!(key, %error, "skipping a malformed value");
            self.remove(parsed);
        }
    }

    fn insert(&mut self, parsed: &Key, key: &str, value: &[u8]) -> Result<()> {
        match parsed {
            Key::Searcher { id } => {
                self.searchers.insert(id.clone(), decode(key, value)?);
            }
            Key::Collection { name } => {
                self.collections.insert(name.clone(), decode(key, value)?);
            }
            Key::Assignment { collection, shard } => {
                self.assignments
                    .insert((collection.clone(), *shard), decode(key, value)?);
            }
            Key::Replica {
                collection,
                shard,
                searcher,
            } => {
                self.replicas.insert(
                    (collection.clone(), *shard, searcher.clone()),
                    decode(key, value)?,
                );
            }
        }
        Ok(())
    }

    fn apply_delete(&mut self, schema: &KeySchema, key: &str) {
        if let Some(parsed) = schema.parse(key) {
            self.remove(parsed);
        }
    }

    fn remove(&mut self, parsed: Key) {
        match parsed {
            Key::Searcher { id } => {
                self.searchers.remove(&id);
            }
            Key::Collection { name } => {
                self.collections.remove(&name);
            }
            Key::Assignment { collection, shard } => {
                self.assignments.remove(&(collection, shard));
            }
            Key::Replica {
                collection,
                shard,
                searcher,
            } => {
                self.replicas.remove(&(collection, shard, searcher));
            }
        }
    }
}

/// A live view of the cluster. Clones are cheap and share one watcher; the watcher stops
/// when the last clone is dropped (or on [`ClusterView::shutdown`]).
#[derive(Clone)]
pub struct ClusterView {
    shared: Arc<Shared>,
}

struct Shared {
    receiver: watch::Receiver<Arc<ClusterState>>,
    task: JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for ClusterView {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ClusterView")
            .field("revision", &self.shared.receiver.borrow().revision)
            .finish()
    }
}

impl ClusterView {
    /// Lists the whole prefix once (noting the revision), builds the state, then watches from
    /// revision + 1 in a spawned task. On `Compacted` (or a broken watch) it lists again and
    /// watches again, with a capped backoff on errors. Malformed values are logged and
    /// skipped. Fails only if the first listing fails.
    pub async fn start(store: Arc<dyn MetadataStore>, schema: KeySchema) -> Result<ClusterView> {
        let (key_values, revision) = store.get_prefix(schema.prefix()).await?;
        let state = ClusterState::from_listing(&schema, &key_values, revision);
        tracing::info!(
            prefix = schema.prefix(),
            revision,
            searchers = state.searchers.len(),
            collections = state.collections.len(),
            "cluster view listed"
        );
        let (sender, receiver) = watch::channel(Arc::new(state));
        metrics::set_session_up(Session::Watch, true);
        let task = tokio::spawn(follow(store, schema, sender));
        Ok(ClusterView {
            shared: Arc::new(Shared { receiver, task }),
        })
    }

    /// The latest state; cheap (an `Arc` clone), never touches the store.
    pub fn current(&self) -> Arc<ClusterState> {
        self.shared.receiver.borrow().clone()
    }

    /// For tasks that react to changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.shared.receiver.clone()
    }

    /// Waits until `predicate(state)` holds or `timeout` passes (`Unavailable`, saying so).
    pub async fn wait_until(
        &self,
        timeout: Duration,
        predicate: impl Fn(&ClusterState) -> bool,
    ) -> Result<Arc<ClusterState>> {
        let mut receiver = self.shared.receiver.clone();
        let waiting = async {
            loop {
                let state = receiver.borrow_and_update().clone();
                if predicate(&state) {
                    return Ok(state);
                }
                if receiver.changed().await.is_err() {
                    return Err(Error::Unavailable(
                        "the cluster view stopped following the store".to_string(),
                    ));
                }
            }
        };
        match tokio::time::timeout(timeout, waiting).await {
            Ok(result) => result,
            Err(_) => Err(Error::Unavailable(format!(
                "the cluster state did not reach the expected condition within {timeout:?} \
                 (at revision {})",
                self.current().revision
            ))),
        }
    }

    /// Stops following the store; `current` keeps answering with the last state.
    pub fn shutdown(&self) {
        self.shared.task.abort();
    }
}

/// Follows the store until aborted: watch from the published revision + 1 until the watch
/// fails, then list again (publishing the fresh state), and watch again.
async fn follow(
    store: Arc<dyn MetadataStore>,
    schema: KeySchema,
    sender: watch::Sender<Arc<ClusterState>>,
) {
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let failure = watch_until_broken(store.as_ref(), &schema, &sender, &mut backoff).await;
        let failure_was_compaction = matches!(failure, WatchEnd::Compacted);
        match failure {
            // Not a failure of the store: list again at once.
            WatchEnd::Compacted => {}
            WatchEnd::Failed => {
                metrics::set_session_up(Session::Watch, false);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        loop {
            match store.get_prefix(schema.prefix()).await {
                Ok((key_values, revision)) => {
                    let state = ClusterState::from_listing(&schema, &key_values, revision);
                    tracing::info!(revision, "cluster view listed again");
                    if !failure_was_compaction {
                        metrics::session_reconnected(Session::Watch);
                    }
                    metrics::set_session_up(Session::Watch, true);
                    sender.send_if_modified(|current| {
                        if **current == state {
                            return false;
                        }
                        *current = Arc::new(state);
                        true
                    });
                    break;
                }
                Err(error) => {
                    metrics::set_session_up(Session::Watch, false);
                    tracing::warn!(%error, retry_in = ?backoff, "cluster view listing failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

enum WatchEnd {
    /// The history the watch needed is gone; the state must be listed again.
    Compacted,
    /// The watch could not start, broke or ended; back off, then list again.
    Failed,
}

/// Applies watch batches to the published state until the watch stops delivering.
async fn watch_until_broken(
    store: &dyn MetadataStore,
    schema: &KeySchema,
    sender: &watch::Sender<Arc<ClusterState>>,
    backoff: &mut Duration,
) -> WatchEnd {
    let from_revision = sender.borrow().revision + 1;
    let mut stream = match store.watch_prefix(schema.prefix(), from_revision).await {
        Ok(stream) => stream,
        Err(Error::Compacted { compact_revision }) => {
            tracing::info!(
                compact_revision,
                "cluster view watch history compacted; listing again"
            );
            return WatchEnd::Compacted;
        }
        Err(error) => {
            tracing::warn!(%error, retry_in = ?backoff, "cluster view watch failed to start");
            return WatchEnd::Failed;
        }
    };
    tracing::debug!(from_revision, "cluster view watching");
    loop {
        match stream.next().await {
            Some(Ok(events)) => {
                // The backoff resets only once a watch delivers, so a watch that fails
                // straight away keeps backing off.
                *backoff = INITIAL_BACKOFF;
                sender.send_modify(|current| {
                    let mut next = ClusterState::clone(current);
                    next.apply_events(schema, &events);
                    *current = Arc::new(next);
                });
            }
            Some(Err(Error::Compacted { compact_revision })) => {
                tracing::info!(
                    compact_revision,
                    "cluster view watch history compacted; listing again"
                );
                return WatchEnd::Compacted;
            }
            Some(Err(error)) => {
                tracing::warn!(%error, retry_in = ?backoff, "cluster view watch broke");
                return WatchEnd::Failed;
            }
            None => {
                tracing::warn!(retry_in = ?backoff, "cluster view watch ended");
                return WatchEnd::Failed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{encode, Capacity},
        store::{EtcdStore, MemoryStore},
        testing::EtcdServer,
    };

    const PATIENCE: Duration = Duration::from_secs(10);

    fn searcher(id: &str) -> SearcherRecord {
        SearcherRecord {
            id: id.to_string(),
            address: format!("http://{id}:7001"),
            version: "0.1.0".to_string(),
            started_at: "2024-05-01T10:00:00.000Z".to_string(),
            capacity: Capacity {
                cpus: 2,
                memory_bytes: 1 << 30,
            },
        }
    }

    fn replica(state: ReplicaPhase) -> ReplicaRecord {
        ReplicaRecord {
            state,
            point_count: 0,
            applied_seq: 0,
            ..Default::default()
        }
    }

    #[test]
    fn state_queries_follow_assignments_replicas_and_liveness() {
        let schema = KeySchema::default();
        let listing: Vec<KeyValue> = [
            (schema.searcher("s1"), encode(&searcher("s1"))),
            (schema.searcher("s2"), encode(&searcher("s2"))),
            (
                schema.assignment("docs", 0),
                encode(&AssignmentRecord::new(vec![
                    "s2".into(),
                    "s1".into(),
                    "s3".into(),
                ])),
            ),
            (
                schema.assignment("docs", 1),
                encode(&AssignmentRecord {
                    learners: vec!["s2".into()],
                    ..AssignmentRecord::new(vec!["s1".into()])
                }),
            ),
            (
                schema.replica("docs", 1, "s2"),
                encode(&replica(ReplicaPhase::Active)),
            ),
            (
                schema.replica("docs", 0, "s1"),
                encode(&replica(ReplicaPhase::Active)),
            ),
            (
                schema.replica("docs", 0, "s2"),
                encode(&replica(ReplicaPhase::Active)),
            ),
            // Active but not live (its searcher key is gone).
            (
                schema.replica("docs", 0, "s3"),
                encode(&replica(ReplicaPhase::Active)),
            ),
            (
                schema.replica("docs", 1, "s1"),
                encode(&replica(ReplicaPhase::Booting)),
            ),
            (format!("{}unknown/x", schema.prefix()), b"junk".to_vec()),
            (schema.searcher("broken"), b"{not json".to_vec()),
        ]
        .into_iter()
        .map(|(key, value)| KeyValue {
            key,
            value,
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        })
        .collect();
        let state = ClusterState::from_listing(&schema, &listing, 9);
        assert_eq!(state.revision, 9);
        assert_eq!(state.live_searcher_ids(), ["s1", "s2"]);
        let active: Vec<&str> = state
            .active_replicas("docs", 0)
            .iter()
            .map(|record| record.id.as_str())
            .collect();
        assert_eq!(
            active,
            ["s2", "s1"],
            "assignment order, live and ACTIVE only"
        );
        assert!(
            state.active_replicas("docs", 1).is_empty(),
            "BOOTING is not active, and an ACTIVE learner is never searched"
        );
        assert!(state.active_replicas("nope", 0).is_empty());
        assert_eq!(
            state.assigned_to("s1"),
            [("docs".to_string(), 0), ("docs".to_string(), 1)]
        );
        assert_eq!(
            state.assigned_to("s2"),
            [("docs".to_string(), 0), ("docs".to_string(), 1)],
            "a learner hosts the shard too"
        );
        assert_eq!(state.assigned_to("s3"), [("docs".to_string(), 0)]);
        assert!(state.assigned_to("s9").is_empty());
        assert_eq!(
            state.replica("docs", 1, "s1").unwrap().state,
            ReplicaPhase::Booting
        );
    }

    async fn reflects_puts_and_deletes(store: Arc<dyn MetadataStore>) {
        let schema = KeySchema::default();
        store
            .put(&schema.searcher("s1"), encode(&searcher("s1")), None)
            .await
            .unwrap();
        let view = ClusterView::start(store.clone(), schema.clone())
            .await
            .unwrap();
        assert!(view.current().searchers.contains_key("s1"));

        let collection = CollectionRecord {
            name: "docs".into(),
            dimension: 4,
            metric: quiver_index::Metric::L2,
            num_shards: 1,
            replication_factor: 1,
            index_spec: "flat".into(),
            created_at: "2024-05-01T10:00:00.000Z".into(),
            payload_indexes: Vec::new(),
        };
        store
            .put(&schema.collection("docs"), encode(&collection), None)
            .await
            .unwrap();
        store
            .put(
                &schema.assignment("docs", 0),
                encode(&AssignmentRecord::new(vec!["s1".into()])),
                None,
            )
            .await
            .unwrap();
        store
            .put(
                &schema.replica("docs", 0, "s1"),
                encode(&replica(ReplicaPhase::Active)),
                None,
            )
            .await
            .unwrap();
        let state = view
            .wait_until(PATIENCE, |state| {
                state.active_replicas("docs", 0).len() == 1
            })
            .await
            .unwrap();
        assert_eq!(state.collections["docs"], collection);
        let (_, revision) = store.get_prefix(schema.prefix()).await.unwrap();
        assert_eq!(state.revision, revision);

        // A malformed value is skipped, and the watcher keeps going.
        store
            .put(&schema.searcher("s1"), b"{oops".to_vec(), None)
            .await
            .unwrap();
        view.wait_until(PATIENCE, |state| !state.searchers.contains_key("s1"))
            .await
            .unwrap();
        store
            .put(&schema.searcher("s1"), encode(&searcher("s1")), None)
            .await
            .unwrap();
        view.wait_until(PATIENCE, |state| {
            state.active_replicas("docs", 0).len() == 1
        })
        .await
        .unwrap();

        let mut changes = view.subscribe();
        store
            .delete(&schema.replica("docs", 0, "s1"))
            .await
            .unwrap();
        tokio::time::timeout(PATIENCE, changes.changed())
            .await
            .unwrap()
            .unwrap();
        let state = view
            .wait_until(PATIENCE, |state| state.replicas.is_empty())
            .await
            .unwrap();
        assert!(state.active_replicas("docs", 0).is_empty());
        assert_eq!(state.assigned_to("s1"), [("docs".to_string(), 0)]);

        let error = view
            .wait_until(Duration::from_millis(200), |state| {
                state.collections.len() == 2
            })
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Unavailable(_)), "{error}");
    }

    async fn leased_searcher_expires_from_the_view(store: Arc<dyn MetadataStore>) {
        let schema = KeySchema::default();
        let view = ClusterView::start(store.clone(), schema.clone())
            .await
            .unwrap();
        let lease = store.grant_lease(2).await.unwrap();
        store
            .put(&schema.searcher("s1"), encode(&searcher("s1")), Some(lease))
            .await
            .unwrap();
        view.wait_until(PATIENCE, |state| state.searchers.contains_key("s1"))
            .await
            .unwrap();
        // Nobody keeps the lease alive: the searcher vanishes by itself.
        view.wait_until(PATIENCE, |state| !state.searchers.contains_key("s1"))
            .await
            .unwrap();
    }

    async fn converges_after_compaction<Compact, Done>(
        store: Arc<dyn MetadataStore>,
        compact: Compact,
    ) where
        Compact: Fn(i64) -> Done,
        Done: std::future::Future<Output = ()>,
    {
        let schema = KeySchema::default();
        let view = ClusterView::start(store.clone(), schema.clone())
            .await
            .unwrap();
        // Stop the first view from following, change the store behind its back and compact
        // the history it would need; a second view started at the old revision must then
        // list again. Simulated by driving `follow` directly from a stale state.
        view.shutdown();
        let stale_revision = view.current().revision;
        for index in 0..5 {
            store
                .put(
                    &schema.searcher(&format!("s{index}")),
                    encode(&searcher(&format!("s{index}"))),
                    None,
                )
                .await
                .unwrap();
        }
        store.delete(&schema.searcher("s0")).await.unwrap();
        let (_, revision) = store.get_prefix(schema.prefix()).await.unwrap();
        compact(revision).await;

        let stale = ClusterState {
            revision: stale_revision,
            ..ClusterState::default()
        };
        let (sender, mut receiver) = watch::channel(Arc::new(stale));
        let task = tokio::spawn(follow(store.clone(), schema.clone(), sender));
        let state = tokio::time::timeout(PATIENCE, async {
            loop {
                let state = receiver.borrow_and_update().clone();
                if state.searchers.len() == 4 {
                    return state;
                }
                receiver.changed().await.unwrap();
            }
        })
        .await
        .expect("the view re-lists after compaction");
        task.abort();
        assert!(!state.searchers.contains_key("s0"));
        assert!(state.revision >= revision);

        // And a view that is running through a compaction keeps converging.
        let live = ClusterView::start(store.clone(), schema.clone())
            .await
            .unwrap();
        store
            .put(&schema.searcher("late"), encode(&searcher("late")), None)
            .await
            .unwrap();
        let (_, revision) = store.get_prefix(schema.prefix()).await.unwrap();
        compact(revision).await;
        store.delete(&schema.searcher("s1")).await.unwrap();
        live.wait_until(PATIENCE, |state| {
            state.searchers.contains_key("late") && !state.searchers.contains_key("s1")
        })
        .await
        .unwrap();
    }

    async fn stops_when_the_last_clone_is_dropped(store: Arc<dyn MetadataStore>) {
        let view = ClusterView::start(store, KeySchema::default())
            .await
            .unwrap();
        let clone = view.clone();
        let mut receiver = view.subscribe();
        drop(view);
        assert!(!clone.shared.task.is_finished());
        drop(clone);
        // The task is aborted and the sender with it: the receiver sees the end.
        tokio::time::timeout(PATIENCE, async {
            while receiver.changed().await.is_ok() {}
        })
        .await
        .expect("the watcher stops");
    }

    #[tokio::test]
    async fn memory_view_reflects_puts_and_deletes() {
        reflects_puts_and_deletes(Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test]
    async fn memory_view_drops_expired_searchers() {
        leased_searcher_expires_from_the_view(Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test]
    async fn memory_view_converges_after_compaction() {
        let store = MemoryStore::new();
        converges_after_compaction(Arc::new(store.clone()), |revision| {
            let store = store.clone();
            async move { store.compact(revision) }
        })
        .await;
    }

    #[tokio::test]
    async fn memory_view_stops_with_its_last_clone() {
        stops_when_the_last_clone_is_dropped(Arc::new(MemoryStore::new())).await;
    }

    async fn etcd() -> (EtcdServer, EtcdStore) {
        let server = EtcdServer::start().expect("start etcd");
        let store = server.connect_store().await.unwrap();
        (server, store)
    }

    #[tokio::test]
    async fn etcd_view_reflects_puts_and_deletes() {
        let (_server, store) = etcd().await;
        reflects_puts_and_deletes(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn etcd_view_drops_expired_searchers() {
        let (_server, store) = etcd().await;
        leased_searcher_expires_from_the_view(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn etcd_view_converges_after_compaction() {
        let (_server, store) = etcd().await;
        converges_after_compaction(Arc::new(store.clone()), |revision| {
            let store = store.clone();
            async move { store.compact(revision).await.unwrap() }
        })
        .await;
    }

    #[tokio::test]
    async fn etcd_view_recovers_after_an_etcd_restart() {
        let (mut server, store) = etcd().await;
        let schema = KeySchema::default();
        let store: Arc<dyn MetadataStore> = Arc::new(store);
        store
            .put(&schema.searcher("s1"), encode(&searcher("s1")), None)
            .await
            .unwrap();
        let view = ClusterView::start(store.clone(), schema.clone())
            .await
            .unwrap();
        server.stop();
        // The watch breaks; the last state keeps serving meanwhile.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(view.current().searchers.contains_key("s1"));
        server.restart().expect("restart etcd");
        store
            .put(&schema.searcher("s2"), encode(&searcher("s2")), None)
            .await
            .unwrap();
        store.delete(&schema.searcher("s1")).await.unwrap();
        view.wait_until(Duration::from_secs(20), |state| {
            state.live_searcher_ids() == ["s2"]
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn etcd_view_stops_with_its_last_clone() {
        let (_server, store) = etcd().await;
        stops_when_the_last_clone_is_dropped(Arc::new(store)).await;
    }
}
