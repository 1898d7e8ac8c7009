//! The primary's side of the log: the newest records, kept in memory for followers, and
//! the ledger of what each follower acknowledged, from which it decides when a write is
//! acknowledged and which learners it vouches for.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::{watch, Notify};

use super::quorum::QuorumMembers;
use crate::storage::wal::WalRecord;

/// Records kept in memory for followers; older ones are read back from the log on disk.
const RECENT_RECORDS: usize = 4096;
/// A follower that pulled within this long is in sync: a write waits a little for it even
/// after the quorum answered, so a search right after the write sees it on every replica.
const IN_SYNC_WINDOW: Duration = Duration::from_secs(1);
/// How long a write waits for in-sync followers beyond its quorum.
const IN_SYNC_GRACE: Duration = Duration::from_millis(100);
/// Records per PullLog answer; a learner within this many records of the log's head is
/// one pull away from it.
pub const PULL_MAX_RECORDS: usize = 512;

#[derive(Debug, Clone, Copy)]
struct FollowerProgress {
    acked_seq: u64,
    last_seen: Instant,
}

/// What a primary's acknowledgement decisions read, kept under one lock so that each
/// decision sees one consistent state.
///
/// A learner goes through three sets on its way to being switched in (see
/// [`ShardLog::record_progress`]): `joining` once it is within one pull of the log's head
/// (writes after that point wait for it, so the acknowledged writes cannot keep running
/// ahead of it), `in_sync` once it holds every acknowledged write (every write waits for
/// it, and the primary publishes it: the placement controller switches a learner in only
/// on that word), and `retiring` when the primary stops vouching for it. A retiring learner
/// is still waited for until a record that no longer lists it is in etcd
/// ([`ShardLog::published`]); the controller's switch is guarded by that record's revision,
/// so it can never land on a vouch the primary has already stopped honouring.
#[derive(Debug, Default)]
struct Acks {
    followers: HashMap<String, FollowerProgress>,
    members: QuorumMembers,
    /// Learner → the log head when it joined: writes after it wait for the learner.
    joining: BTreeMap<String, u64>,
    in_sync: BTreeSet<String>,
    retiring: BTreeSet<String>,
    /// The highest sequence number acknowledged in this term; at the start of a term, the
    /// end of the log, since any of it may have been acknowledged by an earlier primary.
    acknowledged_seq: u64,
}

impl Acks {
    /// Whether the write `seq` must wait for `learner`.
    fn waits_for(&self, learner: &str, seq: u64) -> bool {
        self.in_sync.contains(learner)
            || self.retiring.contains(learner)
            || self.joining.get(learner).is_some_and(|head| seq > *head)
    }

    fn stop_vouching(&mut self, learner: &str) {
        if self.in_sync.remove(learner) {
            self.retiring.insert(learner.to_string());
        }
        self.joining.remove(learner);
    }
}

/// The primary side: recent records for followers and what each follower acknowledged.
pub struct ShardLog {
    recent: Mutex<BTreeMap<u64, WalRecord>>,
    appended: watch::Sender<u64>,
    acks: Mutex<Acks>,
    acks_changed: Notify,
}

impl ShardLog {
    pub(super) fn new() -> ShardLog {
        ShardLog {
            recent: Mutex::new(BTreeMap::new()),
            appended: watch::channel(0).0,
            acks: Mutex::new(Acks::default()),
            acks_changed: Notify::new(),
        }
    }

    fn acks(&self) -> std::sync::MutexGuard<'_, Acks> {
        self.acks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers a record the primary just logged. Concurrent writes may arrive here out of
    /// order; readers take only a consecutive run, and fall back to the log on disk.
    pub fn push(&self, record: WalRecord) {
        let seq = record.seq;
        {
            let mut recent = self
                .recent
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            recent.insert(seq, record);
            while recent.len() > RECENT_RECORDS {
                recent.pop_first();
            }
        }
        self.appended.send_if_modified(|last| {
            let grew = seq > *last;
            if grew {
                *last = seq;
            }
            grew
        });
    }

    /// The consecutive records after `after_seq` held in memory; `None` when the next one
    /// is not here (evicted, or not pushed yet).
    pub(super) fn recent_after(
        &self,
        after_seq: u64,
        max_records: usize,
    ) -> Option<Vec<WalRecord>> {
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let records: Vec<WalRecord> = (after_seq + 1..)
            .zip(recent.range(after_seq + 1..))
            .take_while(|(expected, (seq, _))| *expected == **seq)
            .take(max_records)
            .map(|(_, (_, record))| record.clone())
            .collect();
        if records.is_empty() {
            return None;
        }
        Some(records)
    }

    pub(super) fn forget_records(&self) {
        self.recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }

    pub(super) fn set_members(&self, members: QuorumMembers) {
        let mut acks = self.acks();
        if acks.members == members {
            return;
        }
        // A learner that turned voter, left, or lost its Searcher is vouched for no longer.
        let gone: Vec<String> = acks
            .in_sync
            .iter()
            .chain(acks.joining.keys())
            .filter(|learner| !members.live_learners.contains(*learner))
            .cloned()
            .collect();
        for learner in gone {
            acks.stop_vouching(&learner);
        }
        acks.members = members;
        drop(acks);
        self.acks_changed.notify_waiters();
    }

    pub(super) fn begin_term(&self, applied_seq: u64) {
        let mut acks = self.acks();
        // A vouch names its epoch, and the controller honours only the current one.
        acks.followers.clear();
        acks.joining.clear();
        acks.in_sync.clear();
        acks.retiring.clear();
        acks.acknowledged_seq = applied_seq;
        drop(acks);
        self.acks_changed.notify_waiters();
    }

    /// The learners to publish as in sync: each holds every write this primary
    /// acknowledged, and every write waits for it. One that has not pulled for
    /// [`IN_SYNC_WINDOW`] is vouched for no longer, so a learner that died or stalled
    /// holds writes up only until the record without it is published.
    pub fn learners_to_vouch_for(&self) -> Vec<String> {
        let mut acks = self.acks();
        let silent: Vec<String> = acks
            .in_sync
            .iter()
            .chain(acks.joining.keys())
            .filter(|learner| {
                acks.followers
                    .get(*learner)
                    .is_none_or(|progress| progress.last_seen.elapsed() >= IN_SYNC_WINDOW)
            })
            .cloned()
            .collect();
        for learner in silent {
            acks.stop_vouching(&learner);
        }
        acks.in_sync.iter().cloned().collect()
    }

    /// Called once etcd holds a record of this replica listing `vouched` as in sync:
    /// the learners retiring and not listed are waited for no longer.
    pub fn published(&self, vouched: &[String]) {
        let mut acks = self.acks();
        let before = acks.retiring.len();
        acks.retiring
            .retain(|learner| vouched.iter().any(|id| id == learner));
        let changed = acks.retiring.len() != before;
        drop(acks);
        if changed {
            self.acks_changed.notify_waiters();
        }
    }

    /// Notes that `follower` holds every record up to `acked_seq`. A live learner within
    /// one pull of the log's head joins (writes after the head wait for it); one that holds
    /// every acknowledged write becomes in sync, and then this returns true: the primary
    /// should publish it.
    pub fn record_progress(&self, follower: &str, acked_seq: u64) -> bool {
        let mut acks = self.acks();
        acks.followers.insert(
            follower.to_string(),
            FollowerProgress {
                acked_seq,
                last_seen: Instant::now(),
            },
        );
        let mut now_in_sync = false;
        if acks.members.live_learners.contains(follower) && !acks.in_sync.contains(follower) {
            if acked_seq >= acks.acknowledged_seq {
                acks.joining.remove(follower);
                acks.in_sync.insert(follower.to_string());
                now_in_sync = true;
            } else if !acks.joining.contains_key(follower) {
                // Read under the lock that acknowledgements are decided under: a write
                // past this head is decided after the join, and waits for the learner.
                let head = *self.appended.borrow();
                if acked_seq + PULL_MAX_RECORDS as u64 >= head {
                    acks.joining.insert(follower.to_string(), head);
                }
            }
        }
        drop(acks);
        self.acks_changed.notify_waiters();
        now_in_sync
    }

    /// Waits until the write `seq` (which the primary holds already) is held by
    /// `write_quorum` voting replicas, the primary included, plus one more per voting
    /// replica beyond the replication factor, and by every learner it must wait for
    /// (see [`Acks`]); then a little
    /// longer for voters that are in sync. Gives up at `deadline`. The members are read
    /// afresh at every step, so an assignment that changes while the write waits counts at
    /// once. Returns the replicas other than the primary that hold the write and whether
    /// it is acknowledged.
    pub async fn await_quorum(
        &self,
        seq: u64,
        write_quorum: usize,
        deadline: tokio::time::Instant,
    ) -> (Vec<String>, bool) {
        let mut grace_until: Option<tokio::time::Instant> = None;
        loop {
            let notified = self.acks_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = tokio::time::Instant::now();
            {
                let mut acks = self.acks();
                let holds = |id: &String| {
                    acks.followers
                        .get(id)
                        .is_some_and(|progress| progress.acked_seq >= seq)
                };
                let mut acked: Vec<String> = acks
                    .members
                    .voters
                    .iter()
                    .filter(|id| holds(id))
                    .cloned()
                    .collect();
                let voters_holding = acked.len();
                let waited_for: Vec<&String> = acks
                    .members
                    .live_learners
                    .iter()
                    .chain(acks.in_sync.iter())
                    .chain(acks.retiring.iter())
                    .filter(|learner| acks.waits_for(learner, seq))
                    .collect();
                let learners_hold = waited_for.iter().all(|learner| holds(learner));
                for learner in waited_for {
                    if holds(learner) && !acked.contains(learner) {
                        acked.push(learner.clone());
                    }
                }
                let in_sync_missing = acks
                    .members
                    .voters
                    .iter()
                    .filter(|id| {
                        acks.followers.get(*id).is_some_and(|progress| {
                            progress.acked_seq < seq
                                && progress.last_seen.elapsed() < IN_SYNC_WINDOW
                        })
                    })
                    .count();
                let needed = write_quorum + acks.members.extra_voters;
                let reached = voters_holding + 1 >= needed && learners_hold;
                if reached {
                    let grace = *grace_until.get_or_insert(now + IN_SYNC_GRACE);
                    if in_sync_missing == 0 || now >= grace || now >= deadline {
                        // Decided under the lock, so a learner found in sync after this
                        // point holds this write too.
                        acks.acknowledged_seq = acks.acknowledged_seq.max(seq);
                        return (acked, true);
                    }
                } else if now >= deadline {
                    return (acked, false);
                }
            }
            let wake = grace_until.map_or(deadline, |grace| grace.min(deadline));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Gives up waiting for the records after `after_seq` after `wait`; returns whether some
    /// arrived.
    pub(super) async fn wait_for_records(&self, after_seq: u64, wait: Duration) -> bool {
        let mut appended = self.appended.subscribe();
        let arrived = tokio::time::timeout(wait, appended.wait_for(|last| *last > after_seq))
            .await
            .is_ok();
        arrived
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::wal::test_record;

    #[test]
    fn recent_records_are_served_only_as_a_consecutive_run() {
        let log = ShardLog::new();
        log.push(test_record(1));
        log.push(test_record(3));
        assert_eq!(log.recent_after(0, 10).unwrap().len(), 1);
        assert!(log.recent_after(1, 10).is_none(), "2 is missing");
        log.push(test_record(2));
        let seqs: Vec<u64> = log
            .recent_after(0, 10)
            .unwrap()
            .iter()
            .map(|record| record.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(log.recent_after(0, 2).unwrap().len(), 2);
        assert_eq!(*log.appended.borrow(), 3);
    }

    fn members(voters: &[&str], extra_voters: usize, learners: &[&str]) -> QuorumMembers {
        QuorumMembers {
            voters: voters.iter().map(|id| id.to_string()).collect(),
            extra_voters,
            live_learners: learners.iter().map(|id| id.to_string()).collect(),
        }
    }

    fn in_5s() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(5)
    }

    /// Starts waiting for `seq` with `write_quorum` in a task of its own.
    fn wait_for(
        log: &Arc<ShardLog>,
        seq: u64,
        write_quorum: usize,
    ) -> tokio::task::JoinHandle<(Vec<String>, bool)> {
        let log = Arc::clone(log);
        tokio::spawn(async move { log.await_quorum(seq, write_quorum, in_5s()).await })
    }

    async fn still_waiting(waiter: &tokio::task::JoinHandle<(Vec<String>, bool)>) -> bool {
        tokio::time::sleep(Duration::from_millis(30)).await;
        !waiter.is_finished()
    }

    #[tokio::test]
    async fn a_write_waits_for_its_quorum_and_reports_who_acknowledged() {
        let log = Arc::new(ShardLog::new());
        log.set_members(members(&["b", "c"], 0, &[]));
        let waiter = wait_for(&log, 7, 2);
        tokio::time::sleep(Duration::from_millis(20)).await;
        log.record_progress("b", 6);
        assert!(still_waiting(&waiter).await, "6 does not acknowledge 7");
        log.record_progress("b", 7);
        let (acked, reached) = waiter.await.unwrap();
        assert!(reached);
        assert_eq!(acked, vec!["b".to_string()]);
    }

    #[tokio::test]
    async fn a_write_without_its_quorum_gives_up_at_the_deadline() {
        let log = ShardLog::new();
        log.set_members(members(&["b"], 0, &[]));
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        let (acked, reached) = log.await_quorum(1, 2, deadline).await;
        assert!(!reached);
        assert!(acked.is_empty());
    }

    #[tokio::test]
    async fn a_learner_in_sync_is_waited_for_until_it_votes() {
        let log = Arc::new(ShardLog::new());
        log.set_members(members(&["b", "c"], 0, &["d"]));
        // Write 1 is acknowledged without the learner, which has not pulled yet.
        log.push(test_record(1));
        log.record_progress("b", 1);
        assert!(log.await_quorum(1, 2, in_5s()).await.1);
        assert!(
            !log.record_progress("d", 0),
            "d misses acknowledged write 1"
        );
        assert!(log.learners_to_vouch_for().is_empty());
        assert!(
            log.record_progress("d", 1),
            "d holds every acknowledged write"
        );
        assert_eq!(log.learners_to_vouch_for(), ["d"]);
        assert!(!log.record_progress("d", 1), "announced once");

        // From now on a voting quorum is not enough: d must hold each write too.
        log.push(test_record(2));
        let waiter = wait_for(&log, 2, 2);
        log.record_progress("b", 2);
        log.record_progress("c", 2);
        assert!(
            still_waiting(&waiter).await,
            "the learner in sync lacks write 2"
        );
        log.record_progress("d", 2);
        let (mut acked, reached) = waiter.await.unwrap();
        acked.sort();
        assert!(reached);
        assert_eq!(acked, ["b", "c", "d"].map(String::from));

        // d replaced c. Until a record that no longer vouches for d is in etcd, a switch
        // planned on the old one could still land, so writes still wait for d.
        log.set_members(members(&["b", "d"], 0, &[]));
        assert!(log.learners_to_vouch_for().is_empty());
        log.push(test_record(3));
        let waiter = wait_for(&log, 3, 2);
        log.record_progress("b", 3);
        assert!(still_waiting(&waiter).await, "d is retiring, not retired");
        log.published(&[]);
        assert!(waiter.await.unwrap().1, "a voter now, d counts like one");
    }

    #[tokio::test]
    async fn a_write_waiting_on_the_old_members_sees_the_learner_join() {
        let log = Arc::new(ShardLog::new());
        log.set_members(members(&["b", "c"], 0, &["d"]));
        log.push(test_record(1));
        let waiter = wait_for(&log, 1, 2);
        // d pulls before anything was acknowledged: in sync, so write 1 now needs it.
        assert!(log.record_progress("d", 0));
        log.record_progress("b", 1);
        assert!(
            still_waiting(&waiter).await,
            "write 1 was not acknowledged before d joined, so it waits for d"
        );
        log.record_progress("d", 1);
        assert!(waiter.await.unwrap().1);
    }

    #[tokio::test]
    async fn a_learner_trailing_a_stream_of_writes_catches_it() {
        let log = Arc::new(ShardLog::new());
        log.set_members(members(&["b", "c"], 0, &["d"]));
        for seq in 1..=6 {
            log.push(test_record(seq));
        }
        log.record_progress("b", 5);
        assert!(log.await_quorum(5, 2, in_5s()).await.1);
        // d trails the acknowledged writes but is within a pull of the head (6): it joins,
        // so write 6 may go without it but write 7 may not, and acknowledgements stop
        // running ahead of it.
        assert!(!log.record_progress("d", 3));
        log.record_progress("b", 6);
        assert!(log.await_quorum(6, 2, in_5s()).await.1);
        log.push(test_record(7));
        let waiter = wait_for(&log, 7, 2);
        log.record_progress("b", 7);
        assert!(still_waiting(&waiter).await, "d joined before write 7");
        assert!(!log.record_progress("d", 5), "write 6 was acknowledged");
        assert!(
            log.record_progress("d", 7),
            "d holds every acknowledged write"
        );
        assert!(waiter.await.unwrap().1);
        assert_eq!(log.learners_to_vouch_for(), ["d"]);
    }

    #[tokio::test]
    async fn a_learner_far_behind_is_not_waited_for() {
        let log = Arc::new(ShardLog::new());
        log.set_members(members(&["b"], 0, &["d"]));
        log.push(test_record(5000));
        log.record_progress("b", 5000);
        assert!(log.await_quorum(5000, 2, in_5s()).await.1);
        assert!(!log.record_progress("d", 10));
        log.push(test_record(5001));
        log.record_progress("b", 5001);
        assert!(log.await_quorum(5001, 2, in_5s()).await.1);
    }

    #[tokio::test]
    async fn a_learner_that_leaves_or_is_gone_is_not_waited_for_once_published() {
        let log = Arc::new(ShardLog::new());
        log.set_members(members(&["b", "c"], 0, &["d"]));
        assert!(log.record_progress("d", 0));
        log.push(test_record(1));
        let waiter = wait_for(&log, 1, 2);
        log.record_progress("b", 1);
        assert!(still_waiting(&waiter).await);
        // d's Searcher vanished from the view; the record still vouching for it is in etcd
        // until the next publish, and writes wait for d until then.
        log.set_members(members(&["b", "c"], 0, &[]));
        assert!(log.learners_to_vouch_for().is_empty());
        assert!(still_waiting(&waiter).await);
        log.published(&["d".to_string()]);
        assert!(
            still_waiting(&waiter).await,
            "that record still vouches for d"
        );
        log.published(&[]);
        assert!(waiter.await.unwrap().1);
        assert!(!log.record_progress("d", 1), "not a live learner");
    }

    #[tokio::test]
    async fn a_silent_learner_is_vouched_for_no_longer() {
        let log = Arc::new(ShardLog::new());
        log.set_members(members(&["b"], 0, &["d"]));
        assert!(log.record_progress("d", 0));
        assert_eq!(log.learners_to_vouch_for(), ["d"]);
        tokio::time::sleep(IN_SYNC_WINDOW + Duration::from_millis(100)).await;
        assert!(log.learners_to_vouch_for().is_empty(), "d stopped pulling");
        log.push(test_record(1));
        log.record_progress("b", 1);
        let quick = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(
            !log.await_quorum(1, 2, quick).await.1,
            "retiring until published"
        );
        log.published(&[]);
        assert!(log.await_quorum(1, 2, in_5s()).await.1);
    }

    #[tokio::test]
    async fn a_voter_beyond_the_replication_factor_raises_the_quorum() {
        let log = Arc::new(ShardLog::new());
        // Replication factor 3 with a fourth voter waiting for a surplus one to leave: a
        // majority write needs 3 of the 4, so any 3 left after one goes hold it twice.
        log.set_members(members(&["b", "c", "d"], 1, &[]));
        let waiter = wait_for(&log, 1, 2);
        log.record_progress("b", 1);
        assert!(still_waiting(&waiter).await, "2 of 4 is not enough");
        log.record_progress("d", 1);
        assert!(waiter.await.unwrap().1);
    }

    #[tokio::test]
    async fn a_new_term_counts_its_whole_log_as_acknowledged() {
        let log = Arc::new(ShardLog::new());
        log.set_members(members(&["b", "c"], 0, &["d"]));
        // Promoted with 40 records, any of which an earlier primary may have acknowledged.
        log.begin_term(40);
        log.push(test_record(40));
        assert!(!log.record_progress("d", 39));
        assert!(log.record_progress("d", 40));
        // A follower's progress from an earlier term does not carry over.
        log.record_progress("b", 42);
        log.begin_term(41);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(!log.await_quorum(42, 2, deadline).await.1);
    }
}
