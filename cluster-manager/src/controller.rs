//! The placement controller: runs inside every Merger, acts only in the elected one. While
//! leader it moves every shard towards its target placement one safe change at a time (see
//! [`crate::rebalance`]) and records the rebalance at `<prefix>controller/rebalance`.
//!
//! Each pass (on every change of the cluster view, at most every [`MIN_PASS_GAP`], and
//! every `interval`):
//!
//! 1. Reads every assignment fresh from the store, for its mod revision.
//! 2. Notes when each member Searcher was first seen missing. A Searcher missing for less
//!    than the rebalance delay stays eligible (in the ring), so a restart moves nothing;
//!    after that its replicas are replaced. The clocks live in memory only: a new leader
//!    starts them again, which can only delay a replacement, never hasten one.
//! 3. Plans the one next change of every shard and writes all of them in one transaction
//!    (chunks of [`MAX_CHANGES_PER_TXN`]) guarded by each assignment's mod revision and by
//!    the leader key, so a change planned on a stale read, or by a leader that was deposed
//!    without noticing yet, is refused and planned again on the next pass.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use crate::{
    election::LeaderElection,
    keys::Key,
    metrics,
    model::{decode, encode, now_rfc3339, AssignmentRecord, RebalanceRecord, ReplicaRecord},
    rebalance::{
        plan_change_towards, plan_moves_to, target_placement, vouches_for, ChangeKind,
        PlannedChange,
    },
    store::{Compare, MetadataStore, Op},
    view::{ClusterState, ClusterView},
    KeySchema, Result,
};

/// Assignment writes per transaction: with their compares (one more for the leader key),
/// below etcd's default `--max-txn-ops` of 128.
pub const MAX_CHANGES_PER_TXN: usize = 100;

/// The shortest time between two passes woken by view changes, so a burst of replica status
/// updates costs one pass.
pub const MIN_PASS_GAP: Duration = Duration::from_millis(100);

/// How the placement controller runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerConfig {
    /// This candidate's id in the election, e.g. the Merger's id.
    pub candidate_id: String,
    /// The leader lease's TTL: a dead leader is replaced within about this long.
    pub election_ttl: Duration,
    /// How long a Searcher may be gone before its replicas are replaced elsewhere.
    pub rebalance_delay: Duration,
    /// How often the leader re-checks without a view change.
    pub interval: Duration,
}

impl ControllerConfig {
    pub const DEFAULT_ELECTION_TTL: Duration = Duration::from_secs(10);
    pub const DEFAULT_REBALANCE_DELAY: Duration = Duration::from_secs(30);
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

    /// The defaults: a 10 s election TTL, a 30 s rebalance delay, a 1 s interval.
    pub fn new(candidate_id: impl Into<String>) -> ControllerConfig {
        ControllerConfig {
            candidate_id: candidate_id.into(),
            election_ttl: Self::DEFAULT_ELECTION_TTL,
            rebalance_delay: Self::DEFAULT_REBALANCE_DELAY,
            interval: Self::DEFAULT_INTERVAL,
        }
    }
}

/// See the [module documentation](self).
pub struct PlacementController {
    store: Arc<dyn MetadataStore>,
    schema: KeySchema,
    view: ClusterView,
    config: ControllerConfig,
}

impl std::fmt::Debug for PlacementController {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PlacementController")
            .field("config", &self.config)
            .finish()
    }
}

impl PlacementController {
    pub fn new(
        store: Arc<dyn MetadataStore>,
        schema: KeySchema,
        view: ClusterView,
        config: ControllerConfig,
    ) -> PlacementController {
        PlacementController {
            store,
            schema,
            view,
            config,
        }
    }

    /// Campaigns, and leads while elected, until `shutdown` turns true (or its sender is
    /// dropped); then resigns, so another Merger takes over at once.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let election = LeaderElection::start(
            self.store.clone(),
            self.schema.clone(),
            self.config.candidate_id.clone(),
            self.config.election_ttl,
        );
        let mut is_leader = election.is_leader();
        loop {
            tokio::select! {
                _ = turns(&mut shutdown, true) => break,
                elected = turns(&mut is_leader, true) => if !elected { break },
            }
            metrics::set_leader(true);
            tracing::info!(candidate_id = %self.config.candidate_id, "placement controller leading");
            let stopped = Leadership::new(&self)
                .lead(&election, &mut is_leader, &mut shutdown)
                .await;
            metrics::set_leader(false);
            tracing::info!(candidate_id = %self.config.candidate_id, "placement controller no longer leading");
            if stopped {
                break;
            }
        }
        election.resign().await;
    }
}

/// What one leadership keeps between passes; a new leadership starts afresh.
struct Leadership<'a> {
    controller: &'a PlacementController,
    /// Member Searchers not live, and since when (as this leader saw it).
    missing_since: BTreeMap<String, Instant>,
    /// The rebalance record as last read or written; read at the first pass.
    rebalance: Option<RebalanceRecord>,
    rebalance_loaded: bool,
}

impl<'a> Leadership<'a> {
    fn new(controller: &'a PlacementController) -> Self {
        Leadership {
            controller,
            missing_since: BTreeMap::new(),
            rebalance: None,
            rebalance_loaded: false,
        }
    }

    /// Passes until leadership is lost (false) or shutdown is asked for (true).
    async fn lead(
        mut self,
        election: &LeaderElection,
        is_leader: &mut watch::Receiver<bool>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let interval = self
            .controller
            .config
            .interval
            .max(Duration::from_millis(10));
        let mut changes = self.controller.view.subscribe();
        let mut view_following = true;
        let mut next_tick = Instant::now();
        loop {
            tokio::select! {
                _ = turns(shutdown, true) => return true,
                lost = turns(is_leader, false) => return !lost,
                _ = tokio::time::sleep_until(next_tick) => {}
                changed = changes.changed(), if view_following => {
                    if changed.is_err() {
                        // The view stopped: the interval alone drives the passes now.
                        view_following = false;
                        continue;
                    }
                    tokio::time::sleep(MIN_PASS_GAP.min(interval)).await;
                    changes.borrow_and_update();
                }
            }
            next_tick = Instant::now() + interval;
            let Some(fence) = election.fence() else {
                continue;
            };
            if let Err(error) = self.pass(fence).await {
                tracing::warn!(%error, "placement pass failed; retrying at the next one");
            }
        }
    }

    async fn pass(&mut self, fence: Compare) -> Result<()> {
        let store = self.controller.store.as_ref();
        let schema = &self.controller.schema;
        let view_state = self.controller.view.current();
        let assignments = read_assignments(store, schema).await?;

        let now = Instant::now();
        let (eligible, departed) = self.track_missing(&view_state, &assignments, now);
        let mut planning = ClusterState::clone(&view_state);
        planning.assignments = assignments
            .iter()
            .map(|(key, (assignment, _))| (key.clone(), assignment.clone()))
            .collect();
        let targets = target_placement(&planning, &eligible);

        let mut changes: Vec<(String, u32, Vec<Compare>, PlannedChange)> = Vec::new();
        let mut switches: Vec<(String, u32, Compare, PlannedChange)> = Vec::new();
        for ((collection, shard), target) in &targets {
            let Some((assignment, revision)) = assignments.get(&(collection.clone(), *shard))
            else {
                continue;
            };
            let replication_factor = planning.collections[collection].replication_factor;
            if let Some(change) = plan_change_towards(
                target,
                collection,
                *shard,
                replication_factor,
                assignment,
                &planning,
                &departed,
            ) {
                let guard = Compare::ModRevision(schema.assignment(collection, *shard), *revision);
                if matches!(
                    change.kind,
                    ChangeKind::ReplaceWithLearner | ChangeKind::LearnerToVoter
                ) {
                    switches.push((collection.clone(), *shard, guard, change));
                } else {
                    changes.push((collection.clone(), *shard, vec![guard], change));
                }
            }
        }

        for chunk in changes.chunks(MAX_CHANGES_PER_TXN) {
            if self.write_changes(chunk, &fence).await? {
                for (collection, shard, _, change) in chunk {
                    planning
                        .assignments
                        .insert((collection.clone(), *shard), change.record.clone());
                }
            }
        }
        // A primary republishes its record as its counters move, so each switch is written
        // on its own, its guard read just before: one record that moved fails only its own
        // switch, never a chunk of other shards' changes.
        for (collection, shard, guard, change) in switches {
            let assignment = &assignments[&(collection.clone(), shard)].0;
            let vouched = match switch_guard(store, schema, &collection, shard, assignment, &change)
                .await
            {
                Ok(Some(vouched)) => vouched,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%collection, shard, %error, "could not read the primary's record; switching at the next pass");
                    continue;
                }
            };
            let write = [(collection.clone(), shard, vec![guard, vouched], change)];
            if self.write_changes(&write, &fence).await? {
                let [(collection, shard, _, change)] = write;
                planning
                    .assignments
                    .insert((collection, shard), change.record);
            }
        }

        self.record_rebalance(&planning, &eligible, &targets, fence)
            .await
    }

    /// Writes `changes` in one transaction guarded by the leader key and each change's own
    /// guards; false (and planned again at the next pass) when a guard failed.
    async fn write_changes(
        &self,
        changes: &[(String, u32, Vec<Compare>, PlannedChange)],
        fence: &Compare,
    ) -> Result<bool> {
        let store = self.controller.store.as_ref();
        let schema = &self.controller.schema;
        let mut compares = vec![fence.clone()];
        let mut ops = Vec::with_capacity(changes.len());
        for (collection, shard, guards, change) in changes {
            compares.extend(guards.iter().cloned());
            ops.push(Op::Put {
                key: schema.assignment(collection, *shard),
                value: encode(&change.record),
                lease: None,
            });
        }
        if !store.txn(compares, ops).await? {
            metrics::write_conflict();
            tracing::info!(
                shards = changes.len(),
                "assignments, a primary's record or leadership changed since they were read; planning again"
            );
            return Ok(false);
        }
        for (collection, shard, _, change) in changes {
            let record = &change.record;
            tracing::info!(
                collection = %collection,
                shard,
                change = %change.kind,
                searcher = %change.searcher,
                replaced = change.replaced.as_deref().unwrap_or(""),
                primary = record.primary(),
                replicas = ?record.replicas,
                learners = ?record.learners,
                epoch = record.epoch,
                "assignment changed"
            );
            metrics::assignment_changed(change.kind);
        }
        Ok(true)
    }

    /// Updates the missing-since clocks from the live Searchers and the assignments'
    /// members; returns the eligible Searchers (sorted) and those gone past the delay.
    fn track_missing(
        &mut self,
        state: &ClusterState,
        assignments: &BTreeMap<(String, u32), (AssignmentRecord, i64)>,
        now: Instant,
    ) -> (Vec<String>, BTreeSet<String>) {
        let delay = self.controller.config.rebalance_delay;
        let members: BTreeSet<&String> = assignments
            .values()
            .flat_map(|(assignment, _)| assignment.members())
            .collect();
        self.missing_since
            .retain(|id, _| members.contains(id) && !state.searchers.contains_key(id));
        for member in &members {
            if !state.searchers.contains_key(*member) {
                self.missing_since
                    .entry((*member).clone())
                    .or_insert_with(|| {
                        tracing::info!(searcher = %member, ?delay, "member searcher missing");
                        now
                    });
            }
        }
        let mut eligible: BTreeSet<String> = state.searchers.keys().cloned().collect();
        let mut departed = BTreeSet::new();
        for (id, since) in &self.missing_since {
            if now.duration_since(*since) < delay {
                eligible.insert(id.clone());
            } else {
                departed.insert(id.clone());
            }
        }
        (eligible.into_iter().collect(), departed)
    }

    /// Starts a new rebalance record when the target placement differs from the one the
    /// current record was planned for, else updates its progress; writes only on change.
    async fn record_rebalance(
        &mut self,
        state: &ClusterState,
        eligible: &[String],
        targets: &BTreeMap<(String, u32), Vec<String>>,
        fence: Compare,
    ) -> Result<()> {
        let store = self.controller.store.as_ref();
        let key = self.controller.schema.controller_rebalance();
        if !self.rebalance_loaded {
            self.rebalance = match store.get(&key).await? {
                Some(stored) => match decode::<RebalanceRecord>(&key, &stored.value) {
                    Ok(record) => Some(record),
                    Err(error) => {
                        tracing::warn!(%error, "ignoring an unreadable rebalance record");
                        None
                    }
                },
                None => None,
            };
            self.rebalance_loaded = true;
        }
        let plan = plan_moves_to(state, targets);
        metrics::set_pending_shards(plan.pending_shards);
        let now = now_rfc3339();
        let planned_for = match &self.rebalance {
            Some(record) => target_placement(state, &record.searchers),
            None => current_placement(state, targets),
        };
        // As sets: a promotion reorders a shard's replicas without moving any.
        let next = if as_sets(&planned_for) != as_sets(targets) {
            let before: BTreeSet<String> = match &self.rebalance {
                Some(record) => record.searchers.iter().cloned().collect(),
                None => state
                    .assignments
                    .values()
                    .flat_map(|assignment| assignment.replicas.iter().cloned())
                    .collect(),
            };
            let trigger = describe_trigger(&before, eligible);
            let omitted = plan.moves.len().saturating_sub(RebalanceRecord::MAX_MOVES);
            let record = RebalanceRecord {
                started_at: now.clone(),
                updated_at: now.clone(),
                trigger,
                searchers: eligible.to_vec(),
                moves: plan
                    .moves
                    .iter()
                    .take(RebalanceRecord::MAX_MOVES)
                    .cloned()
                    .collect(),
                moves_omitted: omitted as u64,
                moved_replicas: plan.moved_replicas as u64,
                total_replicas: plan.total_replicas as u64,
                moved_fraction: (plan.moved_fraction * 10_000.0).round() / 10_000.0,
                pending_shards: plan.pending_shards as u64,
                finished_at: (plan.pending_shards == 0).then(|| now.clone()),
            };
            tracing::info!(
                trigger = %record.trigger,
                searchers = ?record.searchers,
                moved_replicas = record.moved_replicas,
                total_replicas = record.total_replicas,
                moved_fraction = record.moved_fraction,
                pending_shards = record.pending_shards,
                "rebalance planned"
            );
            record
        } else {
            let Some(current) = &self.rebalance else {
                return Ok(());
            };
            let pending = plan.pending_shards as u64;
            if current.pending_shards == pending && (pending > 0 || current.finished_at.is_some()) {
                return Ok(());
            }
            let mut record = current.clone();
            record.pending_shards = pending;
            record.updated_at = now.clone();
            if pending == 0 && record.finished_at.is_none() {
                record.finished_at = Some(now.clone());
                tracing::info!(
                    trigger = %record.trigger,
                    started_at = %record.started_at,
                    moved_replicas = record.moved_replicas,
                    "rebalance finished"
                );
            }
            record
        };
        let written = store
            .txn(
                vec![fence],
                vec![Op::Put {
                    key,
                    value: encode(&next),
                    lease: None,
                }],
            )
            .await?;
        if written {
            self.rebalance = Some(next);
        }
        Ok(())
    }
}

/// Waits until `flag` holds `value`: true then, false if its sender is gone first.
async fn turns(flag: &mut watch::Receiver<bool>, value: bool) -> bool {
    flag.wait_for(|now| *now == value).await.is_ok()
}

/// The condition a change that switches a learner in for a voting replica is written
/// under, or `None` when a fresh read of the primary's record no longer supports it.
///
/// The plan rests on the primary's record, read from the view, vouching for the learner.
/// A primary that stops vouching keeps waiting for the learner on every write until a
/// record that no longer lists it is in etcd (`searcher/src/replication.rs`), so the
/// vouch holds for as long as the record that carries it is the current one: the switch
/// is written only if the primary's record, freshly read, vouches, and has not changed
/// since. (The assignment's own revision is the other guard.)
async fn switch_guard(
    store: &dyn MetadataStore,
    schema: &KeySchema,
    collection: &str,
    shard: u32,
    assignment: &AssignmentRecord,
    change: &PlannedChange,
) -> Result<Option<Compare>> {
    let primary_key = schema.replica(collection, shard, assignment.primary());
    let Some(primary) = store.get(&primary_key).await? else {
        return Ok(None);
    };
    let vouched = decode::<ReplicaRecord>(&primary_key, &primary.value)
        .is_ok_and(|record| vouches_for(&record, assignment.epoch, &change.searcher));
    Ok(vouched.then_some(Compare::ModRevision(primary_key, primary.mod_revision)))
}

/// Every assignment with its mod revision, keyed by (collection, shard); malformed ones are
/// skipped (and left alone) with a warning.
async fn read_assignments(
    store: &dyn MetadataStore,
    schema: &KeySchema,
) -> Result<BTreeMap<(String, u32), (AssignmentRecord, i64)>> {
    let (listed, _) = store.get_prefix(&schema.all_assignments_prefix()).await?;
    let mut assignments = BTreeMap::new();
    for stored in listed {
        let Some(Key::Assignment { collection, shard }) = schema.parse(&stored.key) else {
            continue;
        };
        match decode::<AssignmentRecord>(&stored.key, &stored.value) {
            Ok(assignment) => {
                assignments.insert((collection, shard), (assignment, stored.mod_revision));
            }
            Err(error) => tracing::warn!(%error, "skipping a malformed assignment"),
        }
    }
    Ok(assignments)
}

/// The voting replicas of every shard in `targets`, as they are now.
fn current_placement(
    state: &ClusterState,
    targets: &BTreeMap<(String, u32), Vec<String>>,
) -> BTreeMap<(String, u32), Vec<String>> {
    targets
        .keys()
        .map(|(collection, shard)| {
            let current = state
                .assignment(collection, *shard)
                .map(|assignment| assignment.replicas.clone())
                .unwrap_or_default();
            ((collection.clone(), *shard), current)
        })
        .collect()
}

fn as_sets(
    placement: &BTreeMap<(String, u32), Vec<String>>,
) -> BTreeMap<&(String, u32), BTreeSet<&String>> {
    placement
        .iter()
        .map(|(shard, replicas)| (shard, replicas.iter().collect()))
        .collect()
}

/// `searcher searcher-4 joined`, `searchers a, b left`, both joined by `; `, or
/// `placement changed` when the Searchers are the same.
fn describe_trigger(before: &BTreeSet<String>, eligible: &[String]) -> String {
    let after: BTreeSet<String> = eligible.iter().cloned().collect();
    let joined: Vec<&str> = after.difference(before).map(String::as_str).collect();
    let left: Vec<&str> = before.difference(&after).map(String::as_str).collect();
    let mut parts = Vec::new();
    for (ids, verb) in [(joined, "joined"), (left, "left")] {
        match ids.as_slice() {
            [] => {}
            [one] => parts.push(format!("searcher {one} {verb}")),
            many => parts.push(format!("searchers {} {verb}", many.join(", "))),
        }
    }
    if parts.is_empty() {
        "placement changed".to_string()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        catalog::create_collection,
        model::{
            Capacity, CollectionRecord, ReplicaPhase, ReplicaRecord, ReplicaRole, SearcherRecord,
        },
        store::LeaseId,
        testing::EtcdServer,
    };

    const PATIENCE: Duration = Duration::from_secs(20);

    #[tokio::test]
    async fn a_switch_is_written_only_while_the_primary_still_vouches() {
        use crate::store::MemoryStore;
        let store = MemoryStore::new();
        let schema = KeySchema::default();
        let mut assignment = AssignmentRecord::new(vec!["s1".into(), "s2".into()]);
        assignment.learners = vec!["s3".into()];
        let mut switched = assignment.clone();
        switched.replicas[1] = "s3".into();
        switched.learners.clear();
        let change = PlannedChange {
            kind: ChangeKind::ReplaceWithLearner,
            searcher: "s3".into(),
            replaced: Some("s2".into()),
            record: switched,
        };
        let primary_key = schema.replica("docs", 0, "s1");
        let put_primary = async |learners: &[&str]| {
            let record = ReplicaRecord {
                state: ReplicaPhase::Active,
                point_count: 5,
                applied_seq: 5,
                epoch: assignment.epoch,
                role: Some(ReplicaRole::Primary),
                learners_in_sync: learners.iter().map(|id| id.to_string()).collect(),
                error: None,
            };
            store
                .put(&primary_key, encode(&record), None)
                .await
                .unwrap();
        };
        let guard = async || switch_guard(&store, &schema, "docs", 0, &assignment, &change).await;

        // No word from the primary, or a word that does not vouch: no switch.
        assert_eq!(guard().await.unwrap(), None);
        put_primary(&[]).await;
        assert_eq!(guard().await.unwrap(), None, "the primary does not vouch");

        put_primary(&["s3"]).await;
        let vouched = guard().await.unwrap().expect("vouched for");
        // The primary republishes between the plan and the write, no longer vouching (the
        // learner stalled or left, or the primary restarted): the guarded write is refused.
        put_primary(&[]).await;
        let put = Op::Put {
            key: schema.assignment("docs", 0),
            value: encode(&change.record),
            lease: None,
        };
        assert!(!store.txn(vec![vouched], vec![put.clone()]).await.unwrap());
        put_primary(&["s3"]).await;
        let vouched = guard().await.unwrap().expect("vouched for again");
        assert!(store.txn(vec![vouched], vec![put]).await.unwrap());
    }

    #[test]
    fn triggers_name_who_joined_and_left() {
        let before: BTreeSet<String> = ["s1", "s2", "s3"].map(String::from).into();
        let ids = |names: &[&str]| {
            names
                .iter()
                .map(|name| name.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            describe_trigger(&before, &ids(&["s1", "s2", "s3", "s4"])),
            "searcher s4 joined"
        );
        assert_eq!(
            describe_trigger(&before, &ids(&["s1", "s3"])),
            "searcher s2 left"
        );
        assert_eq!(
            describe_trigger(&before, &ids(&["s1", "s4", "s5"])),
            "searchers s4, s5 joined; searchers s2, s3 left"
        );
        assert_eq!(
            describe_trigger(&before, &ids(&["s1", "s2", "s3"])),
            "placement changed"
        );
    }

    /// A fake cluster written straight to etcd, the way Searchers and quiverctl would.
    struct FakeCluster {
        store: Arc<dyn MetadataStore>,
        schema: KeySchema,
        /// One lease per Searcher, as a real one registers under.
        leases: BTreeMap<String, LeaseId>,
    }

    impl FakeCluster {
        async fn add_searcher(&mut self, id: &str) {
            // Long enough for the test; the lease is revoked to make the Searcher vanish.
            let lease = self.store.grant_lease(600).await.unwrap();
            let record = SearcherRecord {
                id: id.to_string(),
                address: format!("http://{id}:7001"),
                version: "0.1.0".to_string(),
                started_at: now_rfc3339(),
                capacity: Capacity {
                    cpus: 2,
                    memory_bytes: 1 << 30,
                },
            };
            self.store
                .put(&self.schema.searcher(id), encode(&record), Some(lease))
                .await
                .unwrap();
            self.leases.insert(id.to_string(), lease);
        }

        /// Like a SIGKILL past the lease: the searcher key and its replica records go.
        async fn kill_searcher(&mut self, id: &str) {
            let lease = self.leases.remove(id).unwrap();
            self.store.revoke_lease(lease).await.unwrap();
        }

        async fn publish(&self, collection: &str, shard: u32, searcher: &str, seq: u64) {
            let record = ReplicaRecord {
                state: ReplicaPhase::Active,
                point_count: seq,
                applied_seq: seq,
                epoch: 1,
                role: None,
                learners_in_sync: Vec::new(),
                error: None,
            };
            self.store
                .put(
                    &self.schema.replica(collection, shard, searcher),
                    encode(&record),
                    Some(self.leases[searcher]),
                )
                .await
                .unwrap();
        }

        /// Publishes the record of the shard's current primary, as a ready primary that
        /// vouches for every learner of its assignment (as a real one does once each
        /// learner holds every write it acknowledged).
        async fn vouch(&self, collection: &str, shard: u32) {
            let assignment = self.assignment(collection, shard).await;
            let primary = assignment.primary().to_string();
            let record = ReplicaRecord {
                state: ReplicaPhase::Active,
                point_count: 10,
                applied_seq: 10,
                epoch: assignment.epoch,
                role: Some(ReplicaRole::Primary),
                learners_in_sync: assignment.learners.clone(),
                error: None,
            };
            let Some(lease) = self.leases.get(&primary) else {
                return;
            };
            self.store
                .put(
                    &self.schema.replica(collection, shard, &primary),
                    encode(&record),
                    Some(*lease),
                )
                .await
                .unwrap();
        }

        async fn assignment(&self, collection: &str, shard: u32) -> AssignmentRecord {
            let key = self.schema.assignment(collection, shard);
            let stored = self.store.get(&key).await.unwrap().unwrap();
            decode(&key, &stored.value).unwrap()
        }

        /// The target placement over `eligible` of the collections and assignments in etcd
        /// now, keyed by shard of `docs`.
        async fn targets(&self, eligible: &[String]) -> BTreeMap<u32, Vec<String>> {
            let mut state = ClusterState::default();
            let (collections, _) = self
                .store
                .get_prefix(&self.schema.collections_prefix())
                .await
                .unwrap();
            for stored in collections {
                let record: CollectionRecord = decode(&stored.key, &stored.value).unwrap();
                state.collections.insert(record.name.clone(), record);
            }
            for (key, (assignment, _)) in read_assignments(self.store.as_ref(), &self.schema)
                .await
                .unwrap()
            {
                state.assignments.insert(key, assignment);
            }
            target_placement(&state, eligible)
                .into_iter()
                .filter(|((collection, _), _)| collection == "docs")
                .map(|((_, shard), target)| (shard, target))
                .collect()
        }

        async fn rebalance(&self) -> Option<RebalanceRecord> {
            let key = self.schema.controller_rebalance();
            let stored = self.store.get(&key).await.unwrap()?;
            Some(decode(&key, &stored.value).unwrap())
        }

        async fn wait_for<T>(
            &self,
            what: &str,
            mut check: impl AsyncFnMut(&FakeCluster) -> Option<T>,
        ) -> T {
            let deadline = Instant::now() + PATIENCE;
            loop {
                if let Some(found) = check(self).await {
                    return found;
                }
                assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// etcd with `searchers` registered and a collection of `num_shards` at replication
    /// factor 2 placed on them, every replica ACTIVE at seq 10.
    async fn fake_cluster(server: &EtcdServer, searchers: &[&str], num_shards: u32) -> FakeCluster {
        let store: Arc<dyn MetadataStore> = Arc::new(server.connect_store().await.unwrap());
        let mut cluster = FakeCluster {
            store,
            schema: KeySchema::default(),
            leases: BTreeMap::new(),
        };
        for id in searchers {
            cluster.add_searcher(id).await;
        }
        let record = CollectionRecord {
            name: "docs".to_string(),
            dimension: 4,
            metric: quiver_index::Metric::L2,
            num_shards,
            replication_factor: 2,
            index_spec: "flat".to_string(),
            created_at: now_rfc3339(),
            payload_indexes: Vec::new(),
        };
        let live: Vec<String> = searchers.iter().map(|id| id.to_string()).collect();
        let assignments =
            create_collection(cluster.store.as_ref(), &cluster.schema, &record, &live)
                .await
                .unwrap();
        for (shard, assignment) in assignments.iter().enumerate() {
            for id in &assignment.replicas {
                cluster.publish("docs", shard as u32, id, 10).await;
            }
        }
        cluster
    }

    async fn start_controller(
        cluster: &FakeCluster,
        rebalance_delay: Duration,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let view = ClusterView::start(cluster.store.clone(), cluster.schema.clone())
            .await
            .unwrap();
        let config = ControllerConfig {
            election_ttl: Duration::from_secs(2),
            rebalance_delay,
            interval: Duration::from_millis(200),
            ..ControllerConfig::new("merger-1")
        };
        let controller =
            PlacementController::new(cluster.store.clone(), cluster.schema.clone(), view, config);
        let (stop, stop_signal) = watch::channel(false);
        let task = tokio::spawn(controller.run(stop_signal));
        (stop, task)
    }

    #[tokio::test]
    async fn etcd_controller_promotes_when_a_primary_dies() {
        let server = EtcdServer::start().expect("start etcd");
        let mut cluster = fake_cluster(&server, &["s1", "s2", "s3"], 4).await;
        // A long delay: only promotions may happen.
        let (stop, task) = start_controller(&cluster, Duration::from_secs(600)).await;
        let before = cluster.assignment("docs", 0).await;
        let (old_primary, follower) = (before.replicas[0].clone(), before.replicas[1].clone());
        cluster.publish("docs", 0, &follower, 12).await;
        cluster.kill_searcher(&old_primary).await;

        let after = cluster
            .wait_for("a promotion", async |cluster| {
                let now = cluster.assignment("docs", 0).await;
                (now.primary() != old_primary).then_some(now)
            })
            .await;
        assert_eq!(after.primary(), follower);
        assert_eq!(after.replicas, [follower.clone(), old_primary.clone()]);
        assert_eq!(after.epoch, before.epoch + 1);
        // Every other shard of the dead Searcher got a new primary too, and nothing else
        // changed: it is only missing, not departed.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for shard in 0..4 {
            let assignment = cluster.assignment("docs", shard).await;
            assert_ne!(assignment.primary(), old_primary, "shard {shard}");
            assert!(assignment.learners.is_empty(), "shard {shard}");
            assert_eq!(assignment.replicas.len(), 2);
        }
        let leader = cluster
            .store
            .get(&cluster.schema.controller_leader())
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&leader.value).contains("\"id\":\"merger-1\""));
        stop.send(true).unwrap();
        task.await.unwrap();
        // Resigned on the way out.
        assert_eq!(
            cluster
                .store
                .get(&cluster.schema.controller_leader())
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn etcd_controller_moves_replicas_to_a_new_searcher() {
        let server = EtcdServer::start().expect("start etcd");
        let mut cluster = fake_cluster(&server, &["s1", "s2", "s3"], 16).await;
        let (stop, task) = start_controller(&cluster, Duration::from_secs(600)).await;
        // Settled: nothing to do, no rebalance recorded.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(cluster.rebalance().await, None);

        cluster.add_searcher("s4").await;
        let four: Vec<String> = ["s1", "s2", "s3", "s4"].map(String::from).to_vec();
        let targets = cluster.targets(&four).await;
        let moving: Vec<u32> = (0..16)
            .filter(|shard| targets[shard].contains(&"s4".into()))
            .collect();
        assert!(!moving.is_empty());

        // Learners first; the voting replicas are untouched meanwhile.
        for shard in &moving {
            let assignment = cluster
                .wait_for("a learner on s4", async |cluster| {
                    let now = cluster.assignment("docs", *shard).await;
                    (now.learners == ["s4"]).then_some(now)
                })
                .await;
            assert_eq!(assignment.replicas.len(), 2);
            assert!(!assignment.replicas.contains(&"s4".to_string()));
        }
        let record = cluster
            .wait_for("the rebalance record", async |cluster| {
                cluster.rebalance().await
            })
            .await;
        assert_eq!(record.trigger, "searcher s4 joined");
        assert_eq!(record.searchers, four);
        assert_eq!(record.moved_replicas, moving.len() as u64);
        assert_eq!(record.total_replicas, 32);
        assert!((record.moved_fraction - moving.len() as f64 / 32.0).abs() < 1e-4);
        assert!(record.moves.iter().all(|planned| planned.to == "s4"));
        assert_eq!(record.pending_shards, moving.len() as u64);
        assert_eq!(record.finished_at, None);

        // s4 catches up: ACTIVE at its primary's applied seq. That is not enough to take a
        // voting replica's place: the primary may have acknowledged more since.
        for shard in &moving {
            cluster.publish("docs", *shard, "s4", 10).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for shard in &moving {
            let assignment = cluster.assignment("docs", *shard).await;
            assert_eq!(
                assignment.learners,
                ["s4"],
                "shard {shard} switched unvouched"
            );
            assert!(!assignment.replicas.contains(&"s4".to_string()));
        }
        // Its primary vouches for it (again after a handoff): it switches in.
        for shard in 0..16 {
            let target = targets[&shard].clone();
            cluster
                .wait_for("the target placement", async |cluster| {
                    cluster.vouch("docs", shard).await;
                    let now = cluster.assignment("docs", shard).await;
                    let mut voting = now.replicas.clone();
                    voting.sort();
                    let mut wanted = target.clone();
                    wanted.sort();
                    (voting == wanted && now.learners.is_empty()).then_some(())
                })
                .await;
        }
        let record = cluster
            .wait_for("the finished rebalance", async |cluster| {
                cluster
                    .rebalance()
                    .await
                    .filter(|record| record.finished_at.is_some())
            })
            .await;
        assert_eq!(record.pending_shards, 0);
        assert_eq!(record.trigger, "searcher s4 joined");
        println!(
            "rebalance record: {}",
            String::from_utf8(encode(&record)).unwrap()
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn etcd_controller_replaces_a_departed_searcher_after_the_delay() {
        let server = EtcdServer::start().expect("start etcd");
        let mut cluster = fake_cluster(&server, &["s1", "s2", "s3", "s4"], 8).await;
        let delay = Duration::from_secs(2);
        let (stop, task) = start_controller(&cluster, delay).await;
        let hosted: Vec<u32> = {
            let mut hosted = Vec::new();
            for shard in 0..8 {
                if cluster
                    .assignment("docs", shard)
                    .await
                    .replicas
                    .contains(&"s4".to_string())
                {
                    hosted.push(shard);
                }
            }
            hosted
        };
        assert!(!hosted.is_empty());
        let killed_at = Instant::now();
        cluster.kill_searcher("s4").await;
        let three: Vec<String> = ["s1", "s2", "s3"].map(String::from).to_vec();
        // Within the delay, s4 keeps its place (only lost primaries move).
        tokio::time::sleep(delay / 2).await;
        for shard in &hosted {
            let assignment = cluster.assignment("docs", *shard).await;
            assert!(assignment.learners.is_empty(), "shard {shard}");
            assert!(assignment.replicas.contains(&"s4".to_string()));
        }
        for shard in &hosted {
            let learner = cluster
                .wait_for("a replacement learner", async |cluster| {
                    cluster
                        .assignment("docs", *shard)
                        .await
                        .learners
                        .first()
                        .cloned()
                })
                .await;
            assert!(killed_at.elapsed() >= delay);
            cluster.publish("docs", *shard, &learner, 10).await;
        }
        let targets = cluster.targets(&three).await;
        for shard in &hosted {
            cluster
                .wait_for("s4 replaced", async |cluster| {
                    cluster.vouch("docs", *shard).await;
                    let now = cluster.assignment("docs", *shard).await;
                    (!now.replicas.contains(&"s4".to_string()) && now.learners.is_empty())
                        .then_some(())
                })
                .await;
            let mut voting = cluster.assignment("docs", *shard).await.replicas;
            voting.sort();
            let mut wanted = targets[shard].clone();
            wanted.sort();
            assert_eq!(voting, wanted);
        }
        let record = cluster
            .wait_for("the finished rebalance", async |cluster| {
                cluster
                    .rebalance()
                    .await
                    .filter(|record| record.finished_at.is_some())
            })
            .await;
        assert_eq!(record.trigger, "searcher s4 left");
        assert_eq!(record.searchers, three);
        assert_eq!(record.moved_replicas, hosted.len() as u64);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn etcd_controllers_elect_one_and_hand_over() {
        let server = EtcdServer::start().expect("start etcd");
        let mut cluster = fake_cluster(&server, &["s1", "s2"], 2).await;
        let (first_stop, first) = start_controller(&cluster, Duration::from_secs(600)).await;
        cluster
            .wait_for("a leader", async |cluster| {
                cluster
                    .store
                    .get(&cluster.schema.controller_leader())
                    .await
                    .unwrap()
            })
            .await;
        let view = ClusterView::start(cluster.store.clone(), cluster.schema.clone())
            .await
            .unwrap();
        let second = PlacementController::new(
            cluster.store.clone(),
            cluster.schema.clone(),
            view,
            ControllerConfig {
                election_ttl: Duration::from_secs(2),
                interval: Duration::from_millis(200),
                ..ControllerConfig::new("merger-2")
            },
        );
        let (second_stop, second_signal) = watch::channel(false);
        let second = tokio::spawn(second.run(second_signal));
        // The first stops; the second takes over and acts.
        first_stop.send(true).unwrap();
        first.await.unwrap();
        let before = cluster.assignment("docs", 0).await;
        cluster.kill_searcher(&before.replicas[0].clone()).await;
        cluster
            .wait_for("merger-2 leads and promotes", async |cluster| {
                let leader = cluster
                    .store
                    .get(&cluster.schema.controller_leader())
                    .await
                    .unwrap()?;
                let promoted = cluster.assignment("docs", 0).await.epoch == before.epoch + 1;
                (String::from_utf8_lossy(&leader.value).contains("merger-2") && promoted)
                    .then_some(())
            })
            .await;
        second_stop.send(true).unwrap();
        second.await.unwrap();
    }
}
