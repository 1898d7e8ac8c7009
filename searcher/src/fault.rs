//! TEST ONLY: fault injection on the search path, so that tests of the Merger's deadlines,
//! retries and hedging can make a real Searcher process slow or failing on demand; and a
//! boot gate ([`FaultConfig::boot_gate`]) that holds replicas BOOTING, for readiness tests.
//!
//! [`FaultInjecting`] wraps a [`SearcherService`] and, for a configured fraction of search
//! calls, waits before searching or answers UNAVAILABLE without searching. Writes, gets and
//! status calls pass through untouched. Which calls are hit is deterministic, not random:
//! with fraction `f`, call `n` (counting from 0) is hit when `floor((n + 1) f) > floor(n f)`,
//! so exactly `f` of every run of calls is hit, evenly spread (1.0: every call, 0.5: every
//! other call, 0.0: none). Tests then need no luck to see the faults they asked for.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;

use crate::{
    error::{Error, Result},
    point::PointData,
    replica::ScrollPage,
    replication::{PullOutcome, PullRequest},
    service::{
        ExportedSnapshot, ReplicaReport, SearcherService, ShardScroll, ShardSearch,
        ShardSearchOutcome, ShardWrite, ShardWriteOutcome,
    },
};

/// Which faults to inject into search calls. The default injects none.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// How long a delayed call waits before it searches.
    pub delay: Duration,
    /// The fraction of search calls (0 to 1) that wait `delay`.
    pub delay_fraction: f64,
    /// The fraction of search calls (0 to 1) that fail with UNAVAILABLE.
    pub fail_fraction: f64,
    /// While this file exists, every replica this Searcher hosts is published BOOTING
    /// instead of ACTIVE (so Mergers do not search it and the Searcher is not ready); for
    /// readiness tests. Removing the file lets the replicas turn ACTIVE at the next
    /// status pass.
    pub boot_gate: Option<std::path::PathBuf>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            delay: Duration::ZERO,
            delay_fraction: 1.0,
            fail_fraction: 0.0,
            boot_gate: None,
        }
    }
}

impl FaultConfig {
    pub fn is_enabled(&self) -> bool {
        self.delays() || self.fail_fraction > 0.0
    }

    fn delays(&self) -> bool {
        !self.delay.is_zero() && self.delay_fraction > 0.0
    }

    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("fault delay fraction", self.delay_fraction),
            ("fault fail fraction", self.fail_fraction),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(Error::InvalidArgument(format!(
                    "{name} must be between 0 and 1, got {value}"
                )));
            }
        }
        Ok(())
    }
}

/// Picks exactly `fraction` of the calls it is asked about, evenly spread.
#[derive(Debug)]
struct EvenPicker {
    fraction: f64,
    calls: AtomicU64,
}

impl EvenPicker {
    fn new(fraction: f64) -> EvenPicker {
        EvenPicker {
            fraction,
            calls: AtomicU64::new(0),
        }
    }

    fn pick(&self) -> bool {
        if self.fraction <= 0.0 {
            return false;
        }
        let call = self.calls.fetch_add(1, Ordering::Relaxed) as f64;
        ((call + 1.0) * self.fraction).floor() > (call * self.fraction).floor()
    }
}

/// A [`SearcherService`] that injects [`FaultConfig`]'s faults into searches.
pub struct FaultInjecting {
    inner: Arc<dyn SearcherService>,
    delay: Duration,
    delays: EvenPicker,
    failures: EvenPicker,
}

impl FaultInjecting {
    pub fn new(inner: Arc<dyn SearcherService>, config: &FaultConfig) -> FaultInjecting {
        FaultInjecting {
            inner,
            delay: config.delay,
            delays: EvenPicker::new(if config.delay.is_zero() {
                0.0
            } else {
                config.delay_fraction
            }),
            failures: EvenPicker::new(config.fail_fraction),
        }
    }
}

#[async_trait]
impl SearcherService for FaultInjecting {
    async fn search(&self, request: ShardSearch) -> Result<ShardSearchOutcome> {
        if self.failures.pick() {
            return Err(Error::InjectedFault(
                "injected failure (test-only fault injection)".into(),
            ));
        }
        if self.delays.pick() {
            // An async sleep: a slow Searcher, not a busy one. A caller that gives up
            // (a cancelled hedge loser) drops this future and the wait with it.
            tokio::time::sleep(self.delay).await;
        }
        self.inner.search(request).await
    }

    async fn write(&self, write: ShardWrite) -> Result<ShardWriteOutcome> {
        self.inner.write(write).await
    }

    async fn get(
        &self,
        collection: &str,
        shard: u32,
        ids: Vec<String>,
        with_vectors: bool,
        with_payloads: bool,
    ) -> Result<Vec<PointData>> {
        self.inner
            .get(collection, shard, ids, with_vectors, with_payloads)
            .await
    }

    async fn count(
        &self,
        collection: &str,
        shards: Vec<u32>,
        filter: Option<quiver_payload::Filter>,
    ) -> Vec<(u32, Result<u64>)> {
        self.inner.count(collection, shards, filter).await
    }

    async fn scroll(&self, request: ShardScroll) -> Result<ScrollPage> {
        self.inner.scroll(request).await
    }

    async fn replica_status(&self, collection: Option<&str>) -> Vec<ReplicaReport> {
        self.inner.replica_status(collection).await
    }

    async fn pull_log(&self, request: PullRequest) -> Result<PullOutcome> {
        self.inner.pull_log(request).await
    }

    async fn fence(&self, collection: &str, shard: u32, epoch: u64) -> Result<(u64, u64)> {
        self.inner.fence(collection, shard, epoch).await
    }

    async fn export_snapshot(&self, collection: &str, shard: u32) -> Result<ExportedSnapshot> {
        self.inner.export_snapshot(collection, shard).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(fraction: f64, calls: usize) -> Vec<bool> {
        let picker = EvenPicker::new(fraction);
        (0..calls).map(|_| picker.pick()).collect()
    }

    #[test]
    fn picker_hits_exactly_the_fraction_evenly() {
        assert!(picks(1.0, 10).iter().all(|hit| *hit));
        assert!(picks(0.0, 10).iter().all(|hit| !*hit));
        assert_eq!(
            picks(0.5, 6),
            vec![false, true, false, true, false, true],
            "every other call"
        );
        let hits = picks(0.1, 1000).iter().filter(|hit| **hit).count();
        assert_eq!(hits, 100);
        let hits = picks(0.25, 8).iter().filter(|hit| **hit).count();
        assert_eq!(hits, 2);
    }

    #[test]
    fn config_is_validated_and_off_by_default() {
        assert!(!FaultConfig::default().is_enabled());
        let delayed = FaultConfig {
            delay: Duration::from_millis(300),
            ..FaultConfig::default()
        };
        assert!(delayed.is_enabled());
        // A delay fraction without a delay injects nothing.
        let no_delay = FaultConfig {
            delay_fraction: 0.5,
            ..FaultConfig::default()
        };
        assert!(!no_delay.is_enabled());
        let bad = FaultConfig {
            fail_fraction: 1.5,
            ..FaultConfig::default()
        };
        assert!(bad.validate().is_err());
        assert!(FaultConfig {
            delay_fraction: -0.1,
            ..FaultConfig::default()
        }
        .validate()
        .is_err());
        assert!(delayed.validate().is_ok());
    }

    struct Answers;

    #[async_trait]
    impl SearcherService for Answers {
        async fn search(&self, request: ShardSearch) -> Result<ShardSearchOutcome> {
            Ok(ShardSearchOutcome {
                results: vec![Vec::new(); request.queries.len()],
                searched_shards: request.shards,
                failed_shards: Vec::new(),
                plans: Vec::new(),
            })
        }
        async fn write(&self, write: ShardWrite) -> Result<ShardWriteOutcome> {
            Ok(ShardWriteOutcome {
                affected: match write.op {
                    crate::service::WriteOp::Upsert(points) => points.len(),
                    crate::service::WriteOp::Delete(ids) => ids.len(),
                    crate::service::WriteOp::DeleteMatching(_) => 0,
                },
                counters: crate::replica::ReplicaCounters {
                    point_count: 0,
                    applied_seq: 0,
                },
                seq: 1,
                acknowledged_by: vec!["s1".into()],
                write_quorum: write.write_quorum,
            })
        }
        async fn pull_log(&self, _: PullRequest) -> Result<PullOutcome> {
            Ok(PullOutcome::default())
        }
        async fn fence(&self, _: &str, _: u32, _: u64) -> Result<(u64, u64)> {
            Ok((0, 0))
        }
        async fn export_snapshot(&self, _: &str, _: u32) -> Result<ExportedSnapshot> {
            Err(Error::Internal("no snapshots here".into()))
        }
        async fn get(
            &self,
            _: &str,
            _: u32,
            _: Vec<String>,
            _: bool,
            _: bool,
        ) -> Result<Vec<PointData>> {
            Ok(Vec::new())
        }
        async fn count(
            &self,
            _: &str,
            shards: Vec<u32>,
            _: Option<quiver_payload::Filter>,
        ) -> Vec<(u32, Result<u64>)> {
            shards.into_iter().map(|shard| (shard, Ok(0))).collect()
        }
        async fn scroll(&self, _: ShardScroll) -> Result<ScrollPage> {
            Ok(ScrollPage::default())
        }
        async fn replica_status(&self, _: Option<&str>) -> Vec<ReplicaReport> {
            Vec::new()
        }
    }

    fn search() -> ShardSearch {
        ShardSearch {
            collection: "c".into(),
            shards: vec![0],
            queries: vec![vec![1.0]],
            k: 1,
            params: Default::default(),
            with_vectors: false,
            with_payloads: false,
            filter: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn searches_fail_or_wait_as_configured_and_writes_pass() {
        let failing = FaultInjecting::new(
            Arc::new(Answers),
            &FaultConfig {
                fail_fraction: 0.5,
                ..FaultConfig::default()
            },
        );
        let first = failing.search(search()).await;
        let second = failing.search(search()).await.unwrap_err();
        assert!(first.is_ok());
        assert_eq!(second.code(), tonic::Code::Unavailable);
        assert!(second.to_string().contains("injected"));
        let write = ShardWrite {
            collection: "c".into(),
            shard: 0,
            epoch: 1,
            write_quorum: 1,
            deadline: None,
            op: crate::service::WriteOp::Upsert(Vec::new()),
        };
        assert_eq!(failing.write(write).await.unwrap().affected, 0);

        let slow = FaultInjecting::new(
            Arc::new(Answers),
            &FaultConfig {
                delay: Duration::from_millis(300),
                ..FaultConfig::default()
            },
        );
        let started = tokio::time::Instant::now();
        slow.search(search()).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        let started = tokio::time::Instant::now();
        slow.get("c", 0, Vec::new(), false, false).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
