//! A Searcher's registration: its `searchers/<id>` key and its replica status keys, all under
//! one lease that a background task keeps alive, so that a dead Searcher vanishes from the
//! cluster by itself once the lease's TTL runs out.
//!
//! The pattern is the one Milvus sessions use: grant a lease, create the key with a
//! create-if-absent transaction, keep alive every TTL/3, and treat a keep-alive answer of
//! ttl <= 0 (or failures for longer than the TTL) as a lost lease — then register again under
//! a new lease and re-write every leased key.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{task::JoinHandle, time::Instant};

use crate::{
    keys::validate_name,
    metrics::Session,
    model::{encode, SearcherRecord},
    store::{Compare, LeaseId, MetadataStore, Op},
    Error, KeySchema, Result,
};

/// Keys re-written per transaction after a lost lease; well below etcd's default
/// `--max-txn-ops` of 128.
const REPUT_BATCH: usize = 64;

/// A Searcher's live registration. Dropping it stops the keep-alive (the keys then vanish
/// when the lease expires, as after a crash); [`Registration::shutdown`] removes them now.
pub struct Registration {
    inner: Arc<Inner>,
    keeper: JoinHandle<()>,
}

struct Inner {
    store: Arc<dyn MetadataStore>,
    record: SearcherRecord,
    searcher_key: String,
    ttl: Duration,
    ttl_secs: i64,
    /// The current lease, readable without waiting for `state`.
    lease_id: AtomicI64,
    /// Serialises re-registration with `put_leased`/`delete_leased`: both must see one lease
    /// and one set of leased keys. A tokio mutex because it is held across store calls.
    state: tokio::sync::Mutex<LeaseState>,
}

struct LeaseState {
    lease: LeaseId,
    /// Every key written with `put_leased` and not deleted since, with its latest value, to
    /// be re-written under a new lease.
    leased: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Registration")
            .field("searcher_id", &self.inner.record.id)
            .field("lease_id", &self.lease_id())
            .field("ttl", &self.inner.ttl)
            .finish()
    }
}

impl Registration {
    /// Grants a lease of `ttl`, creates `searchers/<id>` with a create-if-absent transaction
    /// and starts keeping the lease alive every `ttl / 3`.
    ///
    /// If the key exists (e.g. the previous process of the same id was SIGKILLed and its lease
    /// has not expired yet), retries until it is gone or `ttl * 2` elapses, then fails with
    /// `AlreadyExists`: a live process holds the id.
    ///
    /// `previous_lease` is the lease the previous process of this same data directory
    /// registered under, when the caller knows it and knows that process is gone (it holds
    /// the data directory's lock). If the key is still attached to exactly that lease, the
    /// lease is revoked and the registration goes ahead at once instead of waiting for it to
    /// expire. A key on any other lease is waited for as above.
    pub async fn register(
        store: Arc<dyn MetadataStore>,
        schema: KeySchema,
        record: SearcherRecord,
        ttl: Duration,
        previous_lease: Option<LeaseId>,
    ) -> Result<Registration> {
        validate_name("searcher", &record.id)?;
        if ttl < Duration::from_secs(1) {
            return Err(Error::InvalidArgument(format!(
                "the searcher lease ttl must be at least 1s, got {ttl:?}"
            )));
        }
        // etcd counts leases in whole seconds; round up so the lease is never shorter than
        // asked.
        let ttl_secs = ttl.as_secs() as i64 + i64::from(ttl.subsec_nanos() > 0);
        let searcher_key = schema.searcher(&record.id);
        let value = encode(&record);

        let mut lease = store.grant_lease(ttl_secs).await?;
        let deadline = Instant::now() + ttl * 2;
        let retry_interval =
            (ttl / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
        let mut announced_wait = false;
        let mut previous_lease = previous_lease.filter(|lease| *lease != 0);
        loop {
            let create = store
                .txn(
                    vec![Compare::Absent(searcher_key.clone())],
                    vec![Op::Put {
                        key: searcher_key.clone(),
                        value: value.clone(),
                        lease: Some(lease),
                    }],
                )
                .await;
            match create {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => {
                    revoke_quietly(store.as_ref(), lease).await;
                    return Err(error);
                }
            }
            // Only once: if the key is on another lease now, it is not ours to take.
            if let Some(previous) = previous_lease.take() {
                match revoke_if_held_by(store.as_ref(), &searcher_key, previous).await {
                    Ok(true) => {
                        tracing::info!(
                            searcher_id = %record.id,
                            previous_lease = previous,
                            "revoked the lease of this data directory's previous process"
                        );
                        continue;
                    }
                    Ok(false) => {}
                    Err(error) => {
                        revoke_quietly(store.as_ref(), lease).await;
                        return Err(error);
                    }
                }
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    searcher_id = %record.id,
                    waited = ?ttl * 2,
                    "searcher id is still registered by another live process; giving up"
                );
                revoke_quietly(store.as_ref(), lease).await;
                return Err(Error::AlreadyExists(format!("searcher {}", record.id)));
            }
            if !announced_wait {
                announced_wait = true;
                tracing::info!(
                    searcher_id = %record.id,
                    limit = ?ttl * 2,
                    "searcher key still held, likely by a previous process; waiting for its lease to expire"
                );
            }
            tokio::time::sleep(retry_interval).await;
            // Waiting can outlast our own lease's TTL: keep it alive meanwhile.
            match store.keep_alive(lease).await {
                Ok(remaining) if remaining > 0 => {}
                Ok(_) => lease = store.grant_lease(ttl_secs).await?,
                Err(error) => {
                    revoke_quietly(store.as_ref(), lease).await;
                    return Err(error);
                }
            }
        }
        tracing::info!(
            searcher_id = %record.id,
            address = %record.address,
            lease,
            ttl_secs,
            "searcher registered"
        );

        let inner = Arc::new(Inner {
            store,
            record,
            searcher_key,
            ttl,
            ttl_secs,
            lease_id: AtomicI64::new(lease),
            state: tokio::sync::Mutex::new(LeaseState {
                lease,
                leased: BTreeMap::new(),
            }),
        });
        crate::metrics::set_session_up(Session::Lease, true);
        let keeper = tokio::spawn(keep_alive_loop(inner.clone()));
        Ok(Registration { inner, keeper })
    }

    /// The lease currently backing the registration; it changes after a lost lease is
    /// replaced.
    pub fn lease_id(&self) -> LeaseId {
        self.inner.lease_id.load(Ordering::Acquire)
    }

    pub fn searcher_id(&self) -> &str {
        &self.inner.record.id
    }

    /// Puts a key under the current lease and remembers it for re-registration.
    ///
    /// If the lease turns out to be lost, re-registers first (new lease, searcher key and
    /// every remembered key re-written) and succeeds; if that fails too, the key stays
    /// remembered and is written by the next successful re-registration.
    pub async fn put_leased(&self, key: &str, value: Vec<u8>) -> Result<()> {
        let mut state = self.inner.state.lock().await;
        match self
            .inner
            .store
            .put(key, value.clone(), Some(state.lease))
            .await
        {
            Ok(()) => {
                state.leased.insert(key.to_string(), value);
                Ok(())
            }
            Err(Error::LeaseLost(lease)) => {
                tracing::warn!(
                    searcher_id = %self.inner.record.id,
                    lease,
                    key,
                    "lease lost while writing a leased key; re-registering"
                );
                state.leased.insert(key.to_string(), value);
                self.inner.reregister_locked(&mut state).await
            }
            Err(error) => Err(error),
        }
    }

    /// Puts several keys under the current lease in as few round trips as etcd allows (one
    /// transaction per [`REPUT_BATCH`] keys) and remembers them, like
    /// [`Registration::put_leased`] for each: a Searcher publishes all its replicas' status
    /// at once rather than one put after another. On an error the keys of the batches
    /// written so far are in etcd and the rest are not; putting them all again is safe.
    pub async fn put_leased_many(&self, entries: Vec<(String, Vec<u8>)>) -> Result<()> {
        let mut state = self.inner.state.lock().await;
        for batch in entries.chunks(REPUT_BATCH) {
            let ops = batch
                .iter()
                .map(|(key, value)| Op::Put {
                    key: key.clone(),
                    value: value.clone(),
                    lease: Some(state.lease),
                })
                .collect();
            match self.inner.store.txn(Vec::new(), ops).await {
                Ok(_) => {
                    for (key, value) in batch {
                        state.leased.insert(key.clone(), value.clone());
                    }
                }
                Err(Error::LeaseLost(lease)) => {
                    tracing::warn!(
                        searcher_id = %self.inner.record.id,
                        lease,
                        keys = entries.len(),
                        "lease lost while writing leased keys; re-registering"
                    );
                    // Re-registration writes every remembered key under the new lease.
                    for (key, value) in &entries {
                        state.leased.insert(key.clone(), value.clone());
                    }
                    return self.inner.reregister_locked(&mut state).await;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Deletes a leased key and forgets it.
    pub async fn delete_leased(&self, key: &str) -> Result<()> {
        let mut state = self.inner.state.lock().await;
        // Forget first: even if the delete fails, the key must not come back on
        // re-registration, and it vanishes with the lease at the latest.
        state.leased.remove(key);
        self.inner.store.delete(key).await?;
        Ok(())
    }

    /// Stops keep-alive and revokes the lease so every leased key vanishes now (graceful
    /// stop).
    pub async fn shutdown(mut self) -> Result<()> {
        self.keeper.abort();
        // Wait for the task to be gone so it cannot re-register behind our back.
        let _ = (&mut self.keeper).await;
        let state = self.inner.state.lock().await;
        crate::metrics::set_session_up(Session::Lease, false);
        self.inner.store.revoke_lease(state.lease).await?;
        tracing::info!(
            searcher_id = %self.inner.record.id,
            lease = state.lease,
            "searcher deregistered"
        );
        Ok(())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl Inner {
    /// Replaces a lost lease: a new lease, the searcher key claimed under it (if it is absent
    /// or still ours), and every remembered key re-written under it.
    async fn reregister_locked(&self, state: &mut LeaseState) -> Result<()> {
        let old_lease = state.lease;
        let new_lease = self.store.grant_lease(self.ttl_secs).await?;
        if let Err(error) = self.claim_under(state, old_lease, new_lease).await {
            revoke_quietly(self.store.as_ref(), new_lease).await;
            return Err(error);
        }
        state.lease = new_lease;
        self.lease_id.store(new_lease, Ordering::Release);
        crate::metrics::session_reconnected(Session::Lease);
        crate::metrics::set_session_up(Session::Lease, true);
        // If the old lease is in fact still alive (keep-alives failed only on our side), its
        // keys now belong to the new one; revoking it just stops it lingering.
        revoke_quietly(self.store.as_ref(), old_lease).await;
        tracing::info!(
            searcher_id = %self.record.id,
            old_lease,
            new_lease,
            leased_keys = state.leased.len(),
            "searcher re-registered under a new lease"
        );
        Ok(())
    }

    async fn claim_under(
        &self,
        state: &LeaseState,
        old_lease: LeaseId,
        new_lease: LeaseId,
    ) -> Result<()> {
        // The key is ours to overwrite if it is gone or still on our old lease; anything
        // else means another process registered this id meanwhile.
        let expected_revision = match self.store.get(&self.searcher_key).await? {
            None => 0,
            Some(current) if current.lease == old_lease => current.mod_revision,
            Some(current) => {
                tracing::error!(
                    searcher_id = %self.record.id,
                    other_lease = current.lease,
                    "searcher id was registered by another process while our lease was lost"
                );
                return Err(Error::AlreadyExists(format!("searcher {}", self.record.id)));
            }
        };
        let claimed = self
            .store
            .txn(
                vec![Compare::ModRevision(
                    self.searcher_key.clone(),
                    expected_revision,
                )],
                vec![Op::Put {
                    key: self.searcher_key.clone(),
                    value: encode(&self.record),
                    lease: Some(new_lease),
                }],
            )
            .await?;
        if !claimed {
            return Err(Error::Unavailable(format!(
                "searcher key {} changed during re-registration",
                self.searcher_key
            )));
        }
        let puts: Vec<Op> = state
            .leased
            .iter()
            .map(|(key, value)| Op::Put {
                key: key.clone(),
                value: value.clone(),
                lease: Some(new_lease),
            })
            .collect();
        for batch in puts.chunks(REPUT_BATCH) {
            self.store.txn(vec![], batch.to_vec()).await?;
        }
        Ok(())
    }
}

/// Revokes `lease` if `key` is attached to it; whether it was.
async fn revoke_if_held_by(store: &dyn MetadataStore, key: &str, lease: LeaseId) -> Result<bool> {
    match store.get(key).await? {
        Some(current) if current.lease == lease => {
            store.revoke_lease(lease).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

async fn revoke_quietly(store: &dyn MetadataStore, lease: LeaseId) {
    if let Err(error) = store.revoke_lease(lease).await {
        tracing::debug!(lease, %error, "lease revoke failed; it will expire by itself");
    }
}

/// Keeps the lease alive every TTL/3 and replaces it once it is lost. Runs until aborted.
async fn keep_alive_loop(inner: Arc<Inner>) {
    let interval = (inner.ttl / 3).max(Duration::from_millis(100));
    let mut last_success = Instant::now();
    loop {
        tokio::time::sleep(interval).await;
        let lease = inner.lease_id.load(Ordering::Acquire);
        let lost = match inner.store.keep_alive(lease).await {
            Ok(remaining) if remaining > 0 => {
                last_success = Instant::now();
                crate::metrics::set_session_up(Session::Lease, true);
                false
            }
            Ok(remaining) => {
                crate::metrics::set_session_up(Session::Lease, false);
                tracing::warn!(
                    searcher_id = %inner.record.id,
                    lease,
                    remaining,
                    "lease expired or was revoked; re-registering"
                );
                true
            }
            Err(error) => {
                crate::metrics::set_session_up(Session::Lease, false);
                let failing_for = last_success.elapsed();
                // Past the TTL without a successful keep-alive, etcd has dropped the lease
                // (or will before we can reach it): act as if it is gone.
                let lost = failing_for > inner.ttl;
                tracing::warn!(
                    searcher_id = %inner.record.id,
                    lease,
                    %error,
                    ?failing_for,
                    treating_as_lost = lost,
                    "lease keep-alive failed"
                );
                lost
            }
        };
        if !lost {
            continue;
        }
        let mut state = inner.state.lock().await;
        if state.lease != lease {
            // `put_leased` replaced it while we waited for the lock.
            last_success = Instant::now();
            continue;
        }
        match inner.reregister_locked(&mut state).await {
            Ok(()) => last_success = Instant::now(),
            Err(error) => tracing::warn!(
                searcher_id = %inner.record.id,
                %error,
                "re-registration failed; retrying at the next keep-alive"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{decode, Capacity},
        store::{EtcdStore, MemoryStore},
        testing::EtcdServer,
    };

    const TTL: Duration = Duration::from_secs(2);

    fn record(id: &str) -> SearcherRecord {
        SearcherRecord {
            id: id.to_string(),
            address: "http://127.0.0.1:7001".to_string(),
            version: "0.1.0".to_string(),
            started_at: crate::model::now_rfc3339(),
            capacity: Capacity {
                cpus: 2,
                memory_bytes: 1 << 30,
            },
        }
    }

    async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !check().await {
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn registers_keeps_alive_and_shuts_down(store: Arc<dyn MetadataStore>) {
        let schema = KeySchema::default();
        let registration =
            Registration::register(store.clone(), schema.clone(), record("s1"), TTL, None)
                .await
                .unwrap();
        let stored = store.get(&schema.searcher("s1")).await.unwrap().unwrap();
        assert_eq!(stored.lease, registration.lease_id());
        assert_eq!(
            decode::<SearcherRecord>(&stored.key, &stored.value)
                .unwrap()
                .id,
            "s1"
        );

        let replica_key = schema.replica("docs", 0, "s1");
        registration
            .put_leased(&replica_key, b"{}".to_vec())
            .await
            .unwrap();
        let other_key = schema.replica("docs", 1, "s1");
        registration
            .put_leased(&other_key, b"{}".to_vec())
            .await
            .unwrap();
        registration.delete_leased(&other_key).await.unwrap();
        assert_eq!(store.get(&other_key).await.unwrap(), None);

        // Well past the TTL: the keep-alive task holds the keys.
        tokio::time::sleep(TTL * 2 + Duration::from_millis(500)).await;
        assert!(store.get(&schema.searcher("s1")).await.unwrap().is_some());
        assert_eq!(
            store.get(&replica_key).await.unwrap().unwrap().lease,
            registration.lease_id()
        );

        registration.shutdown().await.unwrap();
        assert_eq!(store.get(&schema.searcher("s1")).await.unwrap(), None);
        assert_eq!(store.get(&replica_key).await.unwrap(), None);
    }

    async fn duplicate_live_id_is_already_exists(store: Arc<dyn MetadataStore>) {
        let schema = KeySchema::default();
        let first = Registration::register(store.clone(), schema.clone(), record("s1"), TTL, None)
            .await
            .unwrap();
        let started = Instant::now();
        let error = Registration::register(store.clone(), schema.clone(), record("s1"), TTL, None)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::AlreadyExists(_)), "{error}");
        assert_eq!(error.to_string(), "searcher s1 already exists");
        assert!(
            started.elapsed() >= TTL * 2,
            "gave up after {:?}",
            started.elapsed()
        );
        // The live registration is untouched.
        let stored = store.get(&schema.searcher("s1")).await.unwrap().unwrap();
        assert_eq!(stored.lease, first.lease_id());
        first.shutdown().await.unwrap();
    }

    async fn restart_after_crash_waits_for_the_old_lease(store: Arc<dyn MetadataStore>) {
        let schema = KeySchema::default();
        let crashed =
            Registration::register(store.clone(), schema.clone(), record("s1"), TTL, None)
                .await
                .unwrap();
        let old_lease = crashed.lease_id();
        // Like SIGKILL: the keep-alive stops, nothing is revoked.
        drop(crashed);
        let started = Instant::now();
        let restarted =
            Registration::register(store.clone(), schema.clone(), record("s1"), TTL, None)
                .await
                .unwrap();
        assert!(started.elapsed() < TTL * 2, "took {:?}", started.elapsed());
        let stored = store.get(&schema.searcher("s1")).await.unwrap().unwrap();
        assert_eq!(stored.lease, restarted.lease_id());
        assert_ne!(stored.lease, old_lease);
        restarted.shutdown().await.unwrap();
    }

    async fn restart_with_the_previous_lease_registers_at_once(store: Arc<dyn MetadataStore>) {
        let schema = KeySchema::default();
        // A long TTL, so waiting it out would show.
        let ttl = Duration::from_secs(10);
        let crashed =
            Registration::register(store.clone(), schema.clone(), record("s1"), ttl, None)
                .await
                .unwrap();
        let old_lease = crashed.lease_id();
        let replica_key = schema.replica("docs", 0, "s1");
        crashed
            .put_leased(&replica_key, b"{}".to_vec())
            .await
            .unwrap();
        drop(crashed);
        let started = Instant::now();
        let restarted = Registration::register(
            store.clone(),
            schema.clone(),
            record("s1"),
            ttl,
            Some(old_lease),
        )
        .await
        .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        let stored = store.get(&schema.searcher("s1")).await.unwrap().unwrap();
        assert_eq!(stored.lease, restarted.lease_id());
        assert_ne!(stored.lease, old_lease);
        assert_eq!(
            store.get(&replica_key).await.unwrap(),
            None,
            "the previous process's leased keys went with its lease"
        );

        // A lease that is not the key's is never revoked: a live process keeps its id.
        let other_lease = store.grant_lease(10).await.unwrap();
        let started = Instant::now();
        let error = Registration::register(
            store.clone(),
            schema.clone(),
            record("s1"),
            TTL,
            Some(other_lease),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, Error::AlreadyExists(_)), "{error}");
        assert!(started.elapsed() >= TTL * 2);
        assert_eq!(
            store
                .get(&schema.searcher("s1"))
                .await
                .unwrap()
                .unwrap()
                .lease,
            restarted.lease_id()
        );
        assert!(store.keep_alive(other_lease).await.unwrap() > 0);
        restarted.shutdown().await.unwrap();
    }

    async fn lost_lease_is_replaced_and_keys_rewritten(store: Arc<dyn MetadataStore>) {
        let schema = KeySchema::default();
        let registration =
            Registration::register(store.clone(), schema.clone(), record("s1"), TTL, None)
                .await
                .unwrap();
        let replica_key = schema.replica("docs", 0, "s1");
        registration
            .put_leased(&replica_key, b"{\"v\":1}".to_vec())
            .await
            .unwrap();
        let old_lease = registration.lease_id();

        // Someone (an operator, a partition that outlasted the TTL) kills the lease.
        store.revoke_lease(old_lease).await.unwrap();
        assert_eq!(store.get(&replica_key).await.unwrap(), None);

        wait_for(
            "re-registration by the keep-alive task",
            TTL * 3,
            async || registration.lease_id() != old_lease,
        )
        .await;
        let new_lease = registration.lease_id();
        let searcher = store.get(&schema.searcher("s1")).await.unwrap().unwrap();
        assert_eq!(searcher.lease, new_lease);
        let replica = store.get(&replica_key).await.unwrap().unwrap();
        assert_eq!(replica.lease, new_lease);
        assert_eq!(replica.value, b"{\"v\":1}");

        // A write that meets a lost lease re-registers on the spot.
        store.revoke_lease(new_lease).await.unwrap();
        let later_key = schema.replica("docs", 1, "s1");
        registration
            .put_leased(&later_key, b"{}".to_vec())
            .await
            .unwrap();
        let newest = registration.lease_id();
        assert_ne!(newest, new_lease);
        for key in [
            schema.searcher("s1"),
            replica_key.clone(),
            later_key.clone(),
        ] {
            assert_eq!(
                store.get(&key).await.unwrap().unwrap().lease,
                newest,
                "{key}"
            );
        }
        registration.shutdown().await.unwrap();
        assert_eq!(store.get_prefix("/quiver/").await.unwrap().0, vec![]);
    }

    async fn many_keys_go_in_batches_and_come_back_after_a_lost_lease(
        store: Arc<dyn MetadataStore>,
    ) {
        let schema = KeySchema::default();
        let registration =
            Registration::register(store.clone(), schema.clone(), record("s1"), TTL, None)
                .await
                .unwrap();
        // More keys than one transaction takes.
        let entries: Vec<(String, Vec<u8>)> = (0..REPUT_BATCH as u32 + 7)
            .map(|shard| {
                (
                    schema.replica("docs", shard, "s1"),
                    format!("{{\"shard\":{shard}}}").into_bytes(),
                )
            })
            .collect();
        registration.put_leased_many(entries.clone()).await.unwrap();
        for (key, value) in &entries {
            let stored = store.get(key).await.unwrap().unwrap();
            assert_eq!(
                (&stored.value, stored.lease),
                (value, registration.lease_id())
            );
        }
        // A lost lease met by the batch: it re-registers and every key is back under the
        // new lease, the ones of this batch included.
        let old_lease = registration.lease_id();
        store.revoke_lease(old_lease).await.unwrap();
        let newer: Vec<(String, Vec<u8>)> = entries
            .iter()
            .take(3)
            .map(|(key, _)| (key.clone(), b"{\"v\":2}".to_vec()))
            .collect();
        registration.put_leased_many(newer.clone()).await.unwrap();
        let new_lease = registration.lease_id();
        assert_ne!(new_lease, old_lease);
        for (index, (key, value)) in entries.iter().enumerate() {
            let stored = store.get(key).await.unwrap().unwrap();
            let expected = if index < 3 { &newer[index].1 } else { value };
            assert_eq!(
                (&stored.value, stored.lease),
                (expected, new_lease),
                "{key}"
            );
        }
        registration.shutdown().await.unwrap();
        assert_eq!(store.get_prefix("/quiver/").await.unwrap().0, vec![]);
    }

    async fn invalid_ids_and_ttls_are_rejected(store: Arc<dyn MetadataStore>) {
        let schema = KeySchema::default();
        let error = Registration::register(store.clone(), schema.clone(), record("a/b"), TTL, None)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)), "{error}");
        let error = Registration::register(
            store.clone(),
            schema,
            record("s1"),
            Duration::from_millis(10),
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)), "{error}");
    }

    fn memory() -> Arc<dyn MetadataStore> {
        Arc::new(MemoryStore::new())
    }

    async fn etcd() -> (EtcdServer, Arc<dyn MetadataStore>) {
        let server = EtcdServer::start().expect("start etcd");
        let store: EtcdStore = server.connect_store().await.unwrap();
        (server, Arc::new(store))
    }

    #[tokio::test]
    async fn memory_registration_lifecycle() {
        registers_keeps_alive_and_shuts_down(memory()).await;
    }

    #[tokio::test]
    async fn memory_registration_duplicate_id() {
        duplicate_live_id_is_already_exists(memory()).await;
    }

    #[tokio::test]
    async fn memory_registration_restart_after_crash() {
        restart_after_crash_waits_for_the_old_lease(memory()).await;
    }

    #[tokio::test]
    async fn memory_registration_restart_with_the_previous_lease() {
        restart_with_the_previous_lease_registers_at_once(memory()).await;
    }

    #[tokio::test]
    async fn memory_registration_lost_lease() {
        lost_lease_is_replaced_and_keys_rewritten(memory()).await;
    }

    #[tokio::test]
    async fn memory_registration_puts_many_keys() {
        many_keys_go_in_batches_and_come_back_after_a_lost_lease(memory()).await;
    }

    #[tokio::test]
    async fn etcd_registration_puts_many_keys() {
        let (_server, store) = etcd().await;
        many_keys_go_in_batches_and_come_back_after_a_lost_lease(store).await;
    }

    #[tokio::test]
    async fn memory_registration_rejects_invalid_input() {
        invalid_ids_and_ttls_are_rejected(memory()).await;
    }

    #[tokio::test]
    async fn etcd_registration_lifecycle() {
        let (_server, store) = etcd().await;
        registers_keeps_alive_and_shuts_down(store).await;
    }

    #[tokio::test]
    async fn etcd_registration_duplicate_id() {
        let (_server, store) = etcd().await;
        duplicate_live_id_is_already_exists(store).await;
    }

    #[tokio::test]
    async fn etcd_registration_restart_after_crash() {
        let (_server, store) = etcd().await;
        restart_after_crash_waits_for_the_old_lease(store).await;
    }

    #[tokio::test]
    async fn etcd_registration_restart_with_the_previous_lease() {
        let (_server, store) = etcd().await;
        restart_with_the_previous_lease_registers_at_once(store).await;
    }

    #[tokio::test]
    async fn etcd_registration_survives_an_etcd_outage_longer_than_the_ttl() {
        let mut server = EtcdServer::start().expect("start etcd");
        let store: Arc<dyn MetadataStore> = Arc::new(server.connect_store().await.unwrap());
        let schema = KeySchema::default();
        let registration =
            Registration::register(store.clone(), schema.clone(), record("s1"), TTL, None)
                .await
                .unwrap();
        let replica_key = schema.replica("docs", 0, "s1");
        registration
            .put_leased(&replica_key, b"{}".to_vec())
            .await
            .unwrap();

        server.stop();
        tokio::time::sleep(TTL * 2).await;
        server.restart().expect("restart etcd");

        // Whether the old lease survived the restart or was replaced, both keys end up
        // present under the registration's current lease.
        wait_for(
            "registration after the outage",
            Duration::from_secs(20),
            async || {
                let lease = registration.lease_id();
                let (Ok(Some(searcher)), Ok(Some(replica))) = (
                    store.get(&schema.searcher("s1")).await,
                    store.get(&replica_key).await,
                ) else {
                    return false;
                };
                searcher.lease == lease && replica.lease == lease
            },
        )
        .await;
        // And it stays registered.
        tokio::time::sleep(TTL * 2).await;
        let searcher = store.get(&schema.searcher("s1")).await.unwrap().unwrap();
        assert_eq!(searcher.lease, registration.lease_id());
        registration.shutdown().await.unwrap();
        assert_eq!(store.get(&replica_key).await.unwrap(), None);
    }

    #[tokio::test]
    async fn etcd_registration_lost_lease() {
        let (_server, store) = etcd().await;
        lost_lease_is_replaced_and_keys_rewritten(store).await;
    }
}
