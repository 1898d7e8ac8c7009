//! An in-process [`MetadataStore`] for unit tests, faithful to the etcd behaviour Quiver
//! relies on: one revision per write (a transaction is one revision), create and mod
//! revisions, leases that expire on their TTL (tokio time) and take their keys with them,
//! watches that replay retained history from any revision not yet compacted, and
//! compaction.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, Weak},
};

use futures::StreamExt;
use tokio::{
    sync::broadcast::{self, error::RecvError},
    time::{Duration, Instant},
};

use super::{under_prefix, Compare, KeyValue, LeaseId, MetadataStore, Op, WatchEvent, WatchStream};
use crate::{Error, Result};

/// Retained watch history, in events, before the oldest revisions are compacted away by
/// themselves (etcd's auto-compaction plays the same role).
const MAX_HISTORY_EVENTS: usize = 100_000;

/// Batches a live watcher may fall behind by before it is told to re-list (as if its start
/// revision had been compacted).
const WATCH_CHANNEL_CAPACITY: usize = 4096;

/// The first lease id handed out; arbitrary but non-zero (0 means "no lease").
const FIRST_LEASE_ID: LeaseId = 0x1000;

/// An in-memory [`MetadataStore`]; clones share the same data.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Every committed revision's events, for live watchers. Sent while the state lock is
    /// held, so a watcher that subscribes under the lock sees exactly the revisions after
    /// the history it copied.
    events: broadcast::Sender<Arc<Batch>>,
}

/// The events of one revision.
struct Batch {
    revision: i64,
    events: Vec<WatchEvent>,
}

struct State {
    revision: i64,
    /// Watches may start at this revision or later.
    compact_revision: i64,
    keys: BTreeMap<String, Stored>,
    leases: HashMap<LeaseId, LeaseState>,
    next_lease_id: LeaseId,
    history: VecDeque<Arc<Batch>>,
    history_events: usize,
}

struct Stored {
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
    lease: LeaseId,
}

struct LeaseState {
    ttl_secs: i64,
    deadline: Instant,
    keys: BTreeSet<String>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        formatter
            .debug_struct("MemoryStore")
            .field("revision", &state.revision)
            .field("keys", &state.keys.len())
            .field("leases", &state.leases.len())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(WATCH_CHANNEL_CAPACITY);
        MemoryStore {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    // A fresh etcd is at revision 1.
                    revision: 1,
                    compact_revision: 0,
                    keys: BTreeMap::new(),
                    leases: HashMap::new(),
                    next_lease_id: FIRST_LEASE_ID,
                    history: VecDeque::new(),
                    history_events: 0,
                }),
                events,
            }),
        }
    }

    /// Drops the watch history before `revision`, as etcd's compaction does: watches from an
    /// earlier revision then fail with `Compacted`. Revisions past the current one are
    /// clamped to it.
    pub fn compact(&self, revision: i64) {
        let mut state = self.shared.lock();
        let revision = revision.min(state.revision);
        if revision <= state.compact_revision {
            return;
        }
        state.compact_revision = revision;
        while let Some(front) = state.history.front() {
            if front.revision >= revision {
                break;
            }
            let removed = front.events.len();
            state.history.pop_front();
            state.history_events -= removed;
        }
    }

    /// The current store revision.
    pub fn revision(&self) -> i64 {
        self.shared.lock().revision
    }

    /// Expires `lease` once its deadline has passed, even if nobody touches the store, so
    /// watchers see a dead node vanish on time. Holds only a weak reference: the task ends
    /// with the store.
    fn spawn_lease_reaper(&self, lease: LeaseId) {
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            loop {
                let deadline = {
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    let state = shared.lock();
                    match state.leases.get(&lease) {
                        Some(lease_state) => lease_state.deadline,
                        None => return,
                    }
                };
                tokio::time::sleep_until(deadline).await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let mut state = shared.lock();
                state.expire_due_leases(&shared.events);
                if !state.leases.contains_key(&lease) {
                    return;
                }
            }
        });
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock is a bug in this file; the data is still
        // consistent per operation, so later test assertions may as well run.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Locks the state with every lease whose deadline has passed already expired, so reads
    /// never see a key whose lease is gone even if the reaper task has not run yet.
    fn lock_current(&self) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        state.expire_due_leases(&self.events);
        state
    }
}

impl State {
    fn key_value(&self, key: &str) -> Option<KeyValue> {
        self.keys.get(key).map(|stored| KeyValue {
            key: key.to_string(),
            value: stored.value.clone(),
            create_revision: stored.create_revision,
            mod_revision: stored.mod_revision,
            lease: stored.lease,
        })
    }

    fn holds(&self, compare: &Compare) -> bool {
        match compare {
            Compare::Absent(key) => !self.keys.contains_key(key),
            Compare::Present(key) => self.keys.contains_key(key),
            Compare::ModRevision(key, revision) => {
                self.keys.get(key).map_or(0, |stored| stored.mod_revision) == *revision
            }
        }
    }

    fn expire_due_leases(&mut self, events: &broadcast::Sender<Arc<Batch>>) {
        let now = Instant::now();
        let due: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for lease in due {
            self.revoke(lease, events);
        }
    }

    /// Removes the lease and deletes its keys in one revision; false if it did not exist.
    fn revoke(&mut self, lease: LeaseId, events: &broadcast::Sender<Arc<Batch>>) -> bool {
        let Some(lease_state) = self.leases.remove(&lease) else {
            return false;
        };
        let ops = lease_state.keys.into_iter().map(Op::Delete).collect();
        self.apply(ops, events);
        true
    }

    /// Applies the ops as one revision (none if nothing changed) and publishes the events.
    /// Callers have checked that every lease named exists.
    fn apply(&mut self, ops: Vec<Op>, events: &broadcast::Sender<Arc<Batch>>) {
        let revision = self.revision + 1;
        let mut batch = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let lease = lease.unwrap_or(0);
                    let previous = self
                        .keys
                        .get(&key)
                        .map(|old| (old.create_revision, old.lease));
                    let create_revision = match previous {
                        Some((create_revision, old_lease)) => {
                            if old_lease != lease {
                                self.detach(&key, old_lease);
                            }
                            create_revision
                        }
                        None => revision,
                    };
                    if lease != 0 {
                        if let Some(lease_state) = self.leases.get_mut(&lease) {
                            lease_state.keys.insert(key.clone());
                        }
                    }
                    self.keys.insert(
                        key.clone(),
                        Stored {
                            value: value.clone(),
                            create_revision,
                            mod_revision: revision,
                            lease,
                        },
                    );
                    batch.push(WatchEvent::Put(KeyValue {
                        key,
                        value,
                        create_revision,
                        mod_revision: revision,
                        lease,
                    }));
                }
                Op::Delete(key) => {
                    if let Some(old) = self.keys.remove(&key) {
                        self.detach(&key, old.lease);
                        batch.push(WatchEvent::Delete {
                            key,
                            mod_revision: revision,
                        });
                    }
                }
                Op::DeletePrefix(prefix) => {
                    let doomed: Vec<String> = self
                        .keys
                        .range(prefix.clone()..)
                        .take_while(|(key, _)| under_prefix(key, &prefix))
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in doomed {
                        if let Some(old) = self.keys.remove(&key) {
                            self.detach(&key, old.lease);
                        }
                        batch.push(WatchEvent::Delete {
                            key,
                            mod_revision: revision,
                        });
                    }
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        self.revision = revision;
        let batch = Arc::new(Batch {
            revision,
            events: batch,
        });
        self.history_events += batch.events.len();
        self.history.push_back(batch.clone());
        while self.history_events > MAX_HISTORY_EVENTS {
            let Some(oldest) = self.history.pop_front() else {
                break;
            };
            self.history_events -= oldest.events.len();
            self.compact_revision = self.compact_revision.max(oldest.revision + 1);
        }
        // No receivers is fine: nobody is watching.
        let _ = events.send(batch);
    }

    fn detach(&mut self, key: &str, lease: LeaseId) {
        if lease == 0 {
            return;
        }
        if let Some(lease_state) = self.leases.get_mut(&lease) {
            lease_state.keys.remove(key);
        }
    }

    /// The leases the ops put under that do not exist.
    fn missing_lease(&self, ops: &[Op]) -> Option<LeaseId> {
        ops.iter().find_map(|op| match op {
            Op::Put {
                lease: Some(lease), ..
            } if *lease != 0 && !self.leases.contains_key(lease) => Some(*lease),
            _ => None,
        })
    }
}

/// etcd refuses a transaction that puts one key twice or puts a key one of its deletes
/// covers; mirror it so tests catch such transactions before they meet etcd.
fn check_ops(ops: &[Op]) -> Result<()> {
    let mut put_keys = BTreeSet::new();
    for op in ops {
        if let Op::Put { key, .. } = op {
            if !put_keys.insert(key.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "duplicate key given in txn request: {key}"
                )));
            }
        }
    }
    for op in ops {
        let covered = |put_key: &&&str| match op {
            Op::Delete(key) => **put_key == key,
            Op::DeletePrefix(prefix) => under_prefix(put_key, prefix),
            Op::Put { .. } => false,
        };
        if let Some(key) = put_keys.iter().find(covered) {
            return Err(Error::InvalidArgument(format!(
                "duplicate key given in txn request: {key} is both put and deleted"
            )));
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl MetadataStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.shared.lock_current().key_value(key))
    }

    async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let state = self.shared.lock_current();
        let key_values = state
            .keys
            .range(prefix.to_string()..)
            .take_while(|(key, _)| under_prefix(key, prefix))
            .filter_map(|(key, _)| state.key_value(key))
            .collect();
        Ok((key_values, state.revision))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<()> {
        let ops = vec![Op::Put {
            key: key.to_string(),
            value,
            lease,
        }];
        let mut state = self.shared.lock_current();
        if let Some(lease) = state.missing_lease(&ops) {
            return Err(Error::LeaseLost(lease));
        }
        state.apply(ops, &self.shared.events);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let mut state = self.shared.lock_current();
        if !state.keys.contains_key(key) {
            return Ok(false);
        }
        state.apply(vec![Op::Delete(key.to_string())], &self.shared.events);
        Ok(true)
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<bool> {
        check_ops(&ops)?;
        let mut state = self.shared.lock_current();
        if !compares.iter().all(|compare| state.holds(compare)) {
            return Ok(false);
        }
        if let Some(lease) = state.missing_lease(&ops) {
            return Err(Error::LeaseLost(lease));
        }
        state.apply(ops, &self.shared.events);
        Ok(true)
    }

    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId> {
        if ttl_secs <= 0 {
            return Err(Error::InvalidArgument(format!(
                "lease ttl must be at least 1 second, got {ttl_secs}"
            )));
        }
        let lease = {
            let mut state = self.shared.lock_current();
            let lease = state.next_lease_id;
            state.next_lease_id += 1;
            state.leases.insert(
                lease,
                LeaseState {
                    ttl_secs,
                    deadline: Instant::now() + Duration::from_secs(ttl_secs as u64),
                    keys: BTreeSet::new(),
                },
            );
            lease
        };
        self.spawn_lease_reaper(lease);
        Ok(lease)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<i64> {
        let mut state = self.shared.lock_current();
        match state.leases.get_mut(&lease) {
            Some(lease_state) => {
                lease_state.deadline =
                    Instant::now() + Duration::from_secs(lease_state.ttl_secs as u64);
                Ok(lease_state.ttl_secs)
            }
            None => Ok(0),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        let mut state = self.shared.lock_current();
        state.revoke(lease, &self.shared.events);
        Ok(())
    }

    async fn watch_prefix(&self, prefix: &str, from_revision: i64) -> Result<WatchStream> {
        let state = self.shared.lock_current();
        let start = if from_revision <= 0 {
            state.revision + 1
        } else {
            from_revision
        };
        if start < state.compact_revision {
            let compact_revision = state.compact_revision;
            return Ok(futures::stream::iter([Err(Error::Compacted { compact_revision })]).boxed());
        }
        let select = {
            let prefix = prefix.to_string();
            move |batch: &Batch| -> Option<Vec<WatchEvent>> {
                if batch.revision < start {
                    return None;
                }
                let events: Vec<WatchEvent> = batch
                    .events
                    .iter()
                    .filter(|event| under_prefix(event.key(), &prefix))
                    .cloned()
                    .collect();
                (!events.is_empty()).then_some(events)
            }
        };
        let backlog: Vec<Result<Vec<WatchEvent>>> = state
            .history
            .iter()
            .filter_map(|batch| select(batch))
            .map(Ok)
            .collect();
        // Subscribing under the lock: the channel then carries exactly the revisions after
        // the history copied above.
        let receiver = self.shared.events.subscribe();
        drop(state);

        let shared: Weak<Shared> = Arc::downgrade(&self.shared);
        let live = futures::stream::unfold(Some(receiver), move |receiver| {
            let select = select.clone();
            let shared = shared.clone();
            async move {
                let mut receiver = receiver?;
                loop {
                    match receiver.recv().await {
                        Ok(batch) => {
                            if let Some(events) = select(&batch) {
                                return Some((Ok(events), Some(receiver)));
                            }
                        }
                        Err(RecvError::Lagged(_)) => {
                            // Events were lost to this watcher: like a compacted start
                            // revision, the cure is to list again and re-watch.
                            let revision =
                                shared.upgrade().map_or(0, |shared| shared.lock().revision);
                            let error = Error::Compacted {
                                compact_revision: revision,
                            };
                            return Some((Err(error), None));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(futures::stream::iter(backlog).chain(live).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    #[tokio::test]
    async fn memory_store_get_put_delete() {
        conformance::get_put_delete(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn memory_store_get_prefix_is_sorted_and_bounded() {
        conformance::get_prefix_is_sorted_and_bounded(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn memory_store_txn_absent_succeeds_once() {
        conformance::txn_absent_succeeds_once(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn memory_store_txn_is_all_or_nothing() {
        conformance::txn_is_all_or_nothing(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn memory_store_txn_mod_revision_and_present() {
        conformance::txn_mod_revision_and_present(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn memory_store_delete_prefix() {
        conformance::delete_prefix(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn memory_store_lease_revoke_deletes_keys() {
        conformance::lease_revoke_deletes_keys(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn memory_store_lease_expiry_deletes_keys() {
        conformance::lease_expiry_deletes_keys(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn memory_store_keep_alive_extends_and_reports_lost_leases() {
        conformance::keep_alive_extends_and_reports_lost_leases(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn memory_store_watch_sees_puts_and_deletes_in_order() {
        conformance::watch_sees_puts_and_deletes_in_order(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn memory_store_watch_from_compacted_revision_fails() {
        let store = MemoryStore::new();
        conformance::watch_from_compacted_revision_fails(&store, |revision| {
            let store = store.clone();
            async move {
                store.compact(revision);
            }
        })
        .await;
    }

    #[tokio::test]
    async fn memory_store_rejects_conflicting_txn_ops() {
        let store = MemoryStore::new();
        let put = |key: &str| Op::Put {
            key: key.into(),
            value: b"v".to_vec(),
            lease: None,
        };
        let error = store
            .txn(vec![], vec![put("/a"), put("/a")])
            .await
            .unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)), "{error}");
        let error = store
            .txn(vec![], vec![Op::DeletePrefix("/a/".into()), put("/a/b")])
            .await
            .unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)), "{error}");
        assert_eq!(store.revision(), 1, "nothing was applied");
    }

    #[tokio::test(start_paused = true)]
    async fn memory_store_leases_follow_tokio_time() {
        let store = MemoryStore::new();
        let lease = store.grant_lease(10).await.unwrap();
        store.put("/k", b"v".to_vec(), Some(lease)).await.unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(store.keep_alive(lease).await.unwrap(), 10);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(store.get("/k").await.unwrap().is_some(), "kept alive");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(store.get("/k").await.unwrap().is_none(), "expired");
        assert_eq!(store.keep_alive(lease).await.unwrap(), 0);
    }
}
