//! Leader election on etcd with the plain v3 RPCs every etcd since 3.0 has (lease grant,
//! keep-alive and revoke, txn, watch, get), not the v3election service.
//!
//! A candidate grants a lease and creates `<prefix>controller/leader` under it with a
//! create-if-absent transaction; whoever creates the key leads until its lease goes. The
//! leader keeps the lease alive every TTL/3 and watches its own key. A keep-alive answer of
//! ttl <= 0, keep-alive failures for longer than the TTL, or the key deleted or taken over
//! end the leadership: that is reported at once and the candidate campaigns again. The
//! others watch the key and campaign as soon as it is deleted, and also every TTL, since a
//! watch can break without saying so.
//!
//! Reporting is only as quick as the leader's next keep-alive or watch event, so two
//! candidates can both believe they lead for a moment. Writes that must come from the
//! leader only therefore carry [`LeaderElection::fence`] in their transaction: it holds
//! only while the leader key is still the one this candidate created.

use std::{
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::StreamExt;
use tokio::{sync::watch, task::JoinHandle, time::Instant};

use crate::{
    model::{encode, now_rfc3339, LeaderRecord},
    store::{Compare, LeaseId, MetadataStore, Op, WatchEvent, WatchStream},
    KeySchema, Result,
};

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One candidate's participation in the election. Dropping it resigns in the background
/// (the key is deleted as soon as the background task runs); [`LeaderElection::resign`]
/// waits until it is done.
pub struct LeaderElection {
    candidate_id: String,
    key: String,
    is_leader: watch::Receiver<bool>,
    /// The mod revision of the leader key this candidate created while it leads, else 0.
    fence_revision: Arc<AtomicI64>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LeaderElection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LeaderElection")
            .field("candidate_id", &self.candidate_id)
            .field("key", &self.key)
            .field("is_leader", &*self.is_leader.borrow())
            .finish()
    }
}

impl LeaderElection {
    /// Starts campaigning in a spawned task (so it must be called inside a tokio runtime).
    /// `ttl` is the leader lease's TTL, rounded up to whole seconds, at least 1 s (etcd may
    /// round it up to its own minimum): a leader that dies is replaced within about `ttl`.
    pub fn start(
        store: Arc<dyn MetadataStore>,
        schema: KeySchema,
        candidate_id: String,
        ttl: Duration,
    ) -> LeaderElection {
        let ttl = ttl.max(Duration::from_secs(1));
        let key = schema.controller_leader();
        let (is_leader_sender, is_leader) = watch::channel(false);
        let (stop, stop_signal) = watch::channel(false);
        let fence_revision = Arc::new(AtomicI64::new(0));
        let campaign = Campaign {
            store,
            key: key.clone(),
            candidate_id: candidate_id.clone(),
            ttl,
            ttl_secs: ttl.as_secs() as i64 + i64::from(ttl.subsec_nanos() > 0),
            is_leader: is_leader_sender,
            fence_revision: fence_revision.clone(),
            stop: stop_signal,
        };
        let task = tokio::spawn(campaign.run());
        LeaderElection {
            candidate_id,
            key,
            is_leader,
            fence_revision,
            stop,
            task: Some(task),
        }
    }

    /// Whether this candidate leads now; changes are published as soon as they are known.
    pub fn is_leader(&self) -> watch::Receiver<bool> {
        self.is_leader.clone()
    }

    pub fn candidate_id(&self) -> &str {
        &self.candidate_id
    }

    /// While this candidate leads: a transaction condition that holds only as long as the
    /// leader key is the one it created, so a deposed leader that has not noticed yet cannot
    /// write. `None` when it does not lead.
    pub fn fence(&self) -> Option<Compare> {
        let revision = self.fence_revision.load(Ordering::Acquire);
        (revision > 0).then(|| Compare::ModRevision(self.key.clone(), revision))
    }

    /// Stops campaigning; if leading, deletes the leader key (by revoking its lease) so
    /// another candidate takes over at once. Returns once that is done or has failed (the
    /// key then expires with its lease).
    pub async fn resign(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            if let Err(error) = task.await {
                tracing::warn!(candidate_id = %self.candidate_id, %error, "election task failed");
            }
        }
    }
}

impl Drop for LeaderElection {
    fn drop(&mut self) {
        // Not an abort: the task revokes its lease on the way out, so a dropped leader is
        // replaced at once rather than after its TTL.
        let _ = self.stop.send(true);
    }
}

/// The background side of a [`LeaderElection`].
struct Campaign {
    store: Arc<dyn MetadataStore>,
    key: String,
    candidate_id: String,
    ttl: Duration,
    ttl_secs: i64,
    is_leader: watch::Sender<bool>,
    fence_revision: Arc<AtomicI64>,
    stop: watch::Receiver<bool>,
}

/// Why a leadership ended.
enum HoldEnd {
    Stopped,
    Lost,
}

impl Campaign {
    async fn run(self) {
        let mut backoff = INITIAL_BACKOFF;
        while !self.stopping() {
            match self.try_acquire().await {
                Ok(Some((lease, revision))) => {
                    backoff = INITIAL_BACKOFF;
                    let end = self.hold(lease, revision).await;
                    // The lease may outlive a lost leadership (keep-alives failed on our
                    // side only); revoking it frees the key for the others now.
                    revoke_quietly(self.store.as_ref(), lease).await;
                    if let HoldEnd::Stopped = end {
                        tracing::info!(candidate_id = %self.candidate_id, lease, "resigned leadership");
                        return;
                    }
                }
                Ok(None) => match self.wait_for_vacancy().await {
                    Ok(()) => backoff = INITIAL_BACKOFF,
                    Err(error) => {
                        tracing::warn!(
                            candidate_id = %self.candidate_id,
                            %error,
                            retry_in = ?backoff,
                            "watching the leader key failed"
                        );
                        self.pause(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                },
                Err(error) => {
                    tracing::warn!(
                        candidate_id = %self.candidate_id,
                        %error,
                        retry_in = ?backoff,
                        "campaign failed"
                    );
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps for `duration` or until asked to stop.
    async fn pause(&self, duration: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = stopped(&mut stop) => {}
        }
    }

    /// Creates the leader key under a fresh lease if it is absent: the lease and the key's
    /// mod revision when it was, `None` when another candidate holds it.
    async fn try_acquire(&self) -> Result<Option<(LeaseId, i64)>> {
        let lease = self.store.grant_lease(self.ttl_secs).await?;
        let record = LeaderRecord {
            id: self.candidate_id.clone(),
            since: now_rfc3339(),
        };
        let created = self
            .store
            .txn(
                vec![Compare::Absent(self.key.clone())],
                vec![Op::Put {
                    key: self.key.clone(),
                    value: encode(&record),
                    lease: Some(lease),
                }],
            )
            .await;
        let created = match created {
            Ok(created) => created,
            Err(error) => {
                revoke_quietly(self.store.as_ref(), lease).await;
                return Err(error);
            }
        };
        if !created {
            revoke_quietly(self.store.as_ref(), lease).await;
            return Ok(None);
        }
        // The transaction does not say at which revision it wrote; the fence needs it.
        match self.store.get(&self.key).await {
            Ok(Some(stored)) if stored.lease == lease => Ok(Some((lease, stored.mod_revision))),
            Ok(_) => {
                // Gone again already (revoked from outside): campaign afresh.
                revoke_quietly(self.store.as_ref(), lease).await;
                Ok(None)
            }
            Err(error) => {
                revoke_quietly(self.store.as_ref(), lease).await;
                Err(error)
            }
        }
    }

    /// Leads until the lease or the key is lost or a stop is asked for.
    async fn hold(&self, lease: LeaseId, revision: i64) -> HoldEnd {
        self.fence_revision.store(revision, Ordering::Release);
        self.is_leader.send_replace(true);
        tracing::info!(
            candidate_id = %self.candidate_id,
            lease,
            revision,
            ttl_secs = self.ttl_secs,
            "became leader"
        );
        let end = self.keep_leading(lease, revision).await;
        // Reported before anything else, so the owner stops acting as leader at once.
        self.fence_revision.store(0, Ordering::Release);
        self.is_leader.send_replace(false);
        end
    }

    async fn keep_leading(&self, lease: LeaseId, revision: i64) -> HoldEnd {
        let mut stop = self.stop.clone();
        let keep_alive_interval = self.ttl / 3;
        let mut last_success = Instant::now();
        let mut next_keep_alive = Instant::now() + keep_alive_interval;
        let mut watch = self.watch_own_key(revision + 1).await;
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => return HoldEnd::Stopped,
                _ = tokio::time::sleep_until(next_keep_alive) => {
                    next_keep_alive = Instant::now() + keep_alive_interval;
                    match self.store.keep_alive(lease).await {
                        Ok(remaining) if remaining > 0 => last_success = Instant::now(),
                        Ok(remaining) => {
                            tracing::warn!(
                                candidate_id = %self.candidate_id,
                                lease,
                                remaining,
                                "leader lease expired or was revoked; leadership lost"
                            );
                            return HoldEnd::Lost;
                        }
                        Err(error) => {
                            let failing_for = last_success.elapsed();
                            // Past the TTL without a keep-alive, etcd has dropped the lease
                            // (or will before we reach it), and another candidate may lead.
                            let lost = failing_for > self.ttl;
                            tracing::warn!(
                                candidate_id = %self.candidate_id,
                                lease,
                                %error,
                                ?failing_for,
                                treating_as_lost = lost,
                                "leader lease keep-alive failed"
                            );
                            if lost {
                                return HoldEnd::Lost;
                            }
                        }
                    }
                    if watch.is_none() {
                        match self.check_own_key(lease).await {
                            Ok(Some(from_revision)) => {
                                watch = self.watch_own_key(from_revision).await;
                            }
                            Ok(None) => return HoldEnd::Lost,
                            // Checked again at the next keep-alive; the keep-alives decide.
                            Err(_) => {}
                        }
                    }
                }
                batch = next_batch(&mut watch) => match batch {
                    Some(Ok(events)) => {
                        if let Some(reason) = self.lost_by(&events, lease) {
                            tracing::warn!(
                                candidate_id = %self.candidate_id,
                                lease,
                                reason,
                                "leader key changed behind our back; leadership lost"
                            );
                            return HoldEnd::Lost;
                        }
                    }
                    Some(Err(error)) => {
                        tracing::debug!(candidate_id = %self.candidate_id, %error, "leader key watch broke");
                        watch = None;
                    }
                    None => watch = None,
                },
            }
        }
    }

    /// Whether `events` took the leader key away from `lease`, and how.
    fn lost_by(&self, events: &[WatchEvent], lease: LeaseId) -> Option<&'static str> {
        events
            .iter()
            .filter(|event| event.key() == self.key)
            .find_map(|event| match event {
                WatchEvent::Delete { .. } => Some("deleted"),
                WatchEvent::Put(stored) if stored.lease != lease => Some("overwritten"),
                WatchEvent::Put(_) => None,
            })
    }

    /// Opens a watch on the leader key; `None` (retried later) if it cannot start.
    async fn watch_own_key(&self, from_revision: i64) -> Option<WatchStream> {
        match self.store.watch_prefix(&self.key, from_revision).await {
            Ok(stream) => Some(stream),
            Err(error) => {
                tracing::debug!(candidate_id = %self.candidate_id, %error, "cannot watch the leader key");
                None
            }
        }
    }

    /// Whether the leader key still belongs to `lease`: the revision to watch from if so.
    async fn check_own_key(&self, lease: LeaseId) -> Result<Option<i64>> {
        let (listed, revision) = self.store.get_prefix(&self.key).await?;
        let ours = listed
            .iter()
            .any(|stored| stored.key == self.key && stored.lease == lease);
        Ok(ours.then_some(revision + 1))
    }

    /// Waits until the leader key is deleted, a TTL passes, or a stop is asked for. `Ok` means
    /// campaign now.
    async fn wait_for_vacancy(&self) -> Result<()> {
        let mut stop = self.stop.clone();
        let (listed, revision) = self.store.get_prefix(&self.key).await?;
        let Some(holder) = listed.iter().find(|stored| stored.key == self.key) else {
            return Ok(());
        };
        tracing::debug!(
            candidate_id = %self.candidate_id,
            leader = %String::from_utf8_lossy(&holder.value),
            "another candidate leads; watching the leader key"
        );
        let mut watch = Some(self.store.watch_prefix(&self.key, revision + 1).await?);
        let retry_at = Instant::now() + self.ttl;
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => return Ok(()),
                _ = tokio::time::sleep_until(retry_at) => return Ok(()),
                batch = next_batch(&mut watch) => match batch {
                    Some(Ok(events)) => {
                        let vacant = events.iter().any(|event| {
                            event.key() == self.key && matches!(event, WatchEvent::Delete { .. })
                        });
                        if vacant {
                            return Ok(());
                        }
                    }
                    Some(Err(error)) => return Err(error),
                    None => {
                        return Err(crate::Error::Unavailable(
                            "the leader key watch ended".to_string(),
                        ))
                    }
                },
            }
        }
    }
}

/// Completes once `stop` is true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The next batch of an optional watch; pending forever without one, so a `select!` arm on
/// it simply never fires.
async fn next_batch(watch: &mut Option<WatchStream>) -> Option<Result<Vec<WatchEvent>>> {
    match watch {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

async fn revoke_quietly(store: &dyn MetadataStore, lease: LeaseId) {
    if let Err(error) = store.revoke_lease(lease).await {
        tracing::debug!(lease, %error, "lease revoke failed; it will expire by itself");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::decode, store::MemoryStore, testing::EtcdServer};

    const TTL: Duration = Duration::from_secs(2);
    const PATIENCE: Duration = Duration::from_secs(5);

    async fn wait_leader(election: &LeaderElection, leads: bool, limit: Duration) {
        let mut receiver = election.is_leader();
        tokio::time::timeout(limit, receiver.wait_for(|now| *now == leads))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not become {} within {limit:?}",
                    election.candidate_id(),
                    if leads { "leader" } else { "a follower" }
                )
            })
            .expect("the election task runs");
    }

    async fn leader_in_store(store: &dyn MetadataStore) -> Option<(String, LeaseId)> {
        let key = KeySchema::default().controller_leader();
        let stored = store.get(&key).await.unwrap()?;
        let record: LeaderRecord = decode(&key, &stored.value).unwrap();
        humantime::parse_rfc3339(&record.since).unwrap();
        Some((record.id, stored.lease))
    }

    /// Watches both candidates and fails the test if both ever report leading at once.
    fn never_both(first: &LeaderElection, second: &LeaderElection) -> JoinHandle<()> {
        let mut first = first.is_leader();
        let mut second = second.is_leader();
        tokio::spawn(async move {
            loop {
                assert!(
                    !(*first.borrow_and_update() && *second.borrow_and_update()),
                    "two leaders at once"
                );
                tokio::select! {
                    changed = first.changed() => if changed.is_err() { return },
                    changed = second.changed() => if changed.is_err() { return },
                }
            }
        })
    }

    async fn one_leader_and_handover(store: Arc<dyn MetadataStore>) {
        let schema = KeySchema::default();
        let first = LeaderElection::start(store.clone(), schema.clone(), "merger-a".into(), TTL);
        wait_leader(&first, true, PATIENCE).await;
        let second = LeaderElection::start(store.clone(), schema.clone(), "merger-b".into(), TTL);
        let monitor = never_both(&first, &second);
        // Longer than a TTL: the leader keeps its lease, the other keeps waiting.
        tokio::time::sleep(TTL * 2).await;
        assert!(*first.is_leader().borrow());
        assert!(!*second.is_leader().borrow());
        assert!(second.fence().is_none());
        let (leader, _) = leader_in_store(store.as_ref()).await.unwrap();
        assert_eq!(leader, "merger-a");

        // A fence of the deposed leader no longer holds.
        let old_fence = first.fence().expect("the leader has a fence");
        assert!(store.txn(vec![old_fence.clone()], vec![]).await.unwrap());
        let resigned_at = Instant::now();
        first.resign().await;
        wait_leader(&second, true, PATIENCE).await;
        assert!(
            resigned_at.elapsed() < TTL,
            "handover took {:?}; resigning must not wait for the lease to expire",
            resigned_at.elapsed()
        );
        let (leader, _) = leader_in_store(store.as_ref()).await.unwrap();
        assert_eq!(leader, "merger-b");
        assert!(!store.txn(vec![old_fence], vec![]).await.unwrap());
        let new_fence = second.fence().unwrap();
        assert!(store.txn(vec![new_fence], vec![]).await.unwrap());
        monitor.abort();

        // Dropping the leader hands over at once too.
        let third = LeaderElection::start(store.clone(), schema.clone(), "merger-c".into(), TTL);
        let monitor = never_both(&second, &third);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!*third.is_leader().borrow());
        let dropped_at = Instant::now();
        drop(second);
        wait_leader(&third, true, PATIENCE).await;
        assert!(
            dropped_at.elapsed() < TTL,
            "handover took {:?}",
            dropped_at.elapsed()
        );
        assert_eq!(leader_in_store(store.as_ref()).await.unwrap().0, "merger-c");
        monitor.abort();
        third.resign().await;
        assert_eq!(leader_in_store(store.as_ref()).await, None);
    }

    async fn lost_lease_is_reported_and_leadership_retaken(store: Arc<dyn MetadataStore>) {
        let schema = KeySchema::default();
        let only = LeaderElection::start(store.clone(), schema.clone(), "merger-a".into(), TTL);
        wait_leader(&only, true, PATIENCE).await;
        let (_, lease) = leader_in_store(store.as_ref()).await.unwrap();
        let mut leads = only.is_leader();
        leads.borrow_and_update();
        // An operator revokes the lease: the key goes, the leader must notice. It may take
        // the key again before this test looks, so what is awaited is a change of the flag
        // (a report of the loss), not the value false.
        store.revoke_lease(lease).await.unwrap();
        tokio::time::timeout(PATIENCE, leads.changed())
            .await
            .expect("the lost leadership is reported")
            .unwrap();
        // Nobody else campaigns, so it leads again under a new lease.
        wait_leader(&only, true, PATIENCE).await;
        let (leader, new_lease) = leader_in_store(store.as_ref()).await.unwrap();
        assert_eq!(leader, "merger-a");
        assert_ne!(new_lease, lease);

        // Deleting the key (with the lease alive) is noticed as well.
        let mut leads = only.is_leader();
        leads.borrow_and_update();
        store.delete(&schema.controller_leader()).await.unwrap();
        tokio::time::timeout(PATIENCE, leads.changed())
            .await
            .expect("the deleted key is reported")
            .unwrap();
        wait_leader(&only, true, PATIENCE).await;
        let (_, newest_lease) = leader_in_store(store.as_ref()).await.unwrap();
        assert_ne!(newest_lease, new_lease);
        only.resign().await;
    }

    #[tokio::test]
    async fn memory_election_has_one_leader_and_hands_over() {
        one_leader_and_handover(Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test]
    async fn memory_election_reports_a_lost_lease() {
        lost_lease_is_reported_and_leadership_retaken(Arc::new(MemoryStore::new())).await;
    }

    async fn etcd() -> (EtcdServer, Arc<dyn MetadataStore>) {
        let server = EtcdServer::start().expect("start etcd");
        let store = server.connect_store().await.unwrap();
        (server, Arc::new(store))
    }

    #[tokio::test]
    async fn etcd_election_has_one_leader_and_hands_over() {
        let (_server, store) = etcd().await;
        one_leader_and_handover(store).await;
    }

    #[tokio::test]
    async fn etcd_election_reports_a_lost_lease() {
        let (_server, store) = etcd().await;
        lost_lease_is_reported_and_leadership_retaken(store).await;
    }

    #[tokio::test]
    async fn etcd_election_survives_an_outage_longer_than_the_ttl() {
        let mut server = EtcdServer::start().expect("start etcd");
        let store: Arc<dyn MetadataStore> = Arc::new(server.connect_store().await.unwrap());
        let schema = KeySchema::default();
        let first = LeaderElection::start(store.clone(), schema.clone(), "merger-a".into(), TTL);
        wait_leader(&first, true, PATIENCE).await;
        let second = LeaderElection::start(store.clone(), schema.clone(), "merger-b".into(), TTL);

        server.stop();
        // Keep-alives fail for longer than the TTL: the leader must step down by itself.
        wait_leader(&first, false, TTL * 3).await;
        assert!(!*second.is_leader().borrow());
        server.restart().expect("restart etcd");

        // Exactly one of them leads again, and the key names it.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leaders: Vec<&LeaderElection> = [&first, &second]
                .into_iter()
                .filter(|election| *election.is_leader().borrow())
                .collect();
            if let [leader] = leaders.as_slice() {
                if let Ok(Some(stored)) = store.get(&schema.controller_leader()).await {
                    let record: LeaderRecord = decode("leader", &stored.value).unwrap();
                    if record.id == leader.candidate_id() {
                        break;
                    }
                }
            }
            assert!(leaders.len() <= 1, "two leaders after the outage");
            assert!(Instant::now() < deadline, "no leader after the outage");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        first.resign().await;
        second.resign().await;
    }
}
