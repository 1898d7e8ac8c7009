//! What the Merger knows about each Searcher's load and speed, from its own calls: shard
//! searches in flight (outstanding), recent answer latencies, and recent transport failures.
//! Replica choice ([`crate::routing`]) and hedging ([`crate::fanout`]) read it.
//!
//! Every lock here is a short, synchronous critical section (a counter or a ring buffer
//! update); none is held across an `.await`.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

/// Latencies kept per Searcher (and for all Searchers together): recent by count, so a
/// busy Merger forgets quickly and an idle one remembers what it last saw.
pub const LATENCY_WINDOW: usize = 256;
/// A percentile from fewer samples than this is not trusted.
pub const MIN_SAMPLES: usize = 16;
/// How long a Searcher whose call failed at the transport is chosen only when no other
/// replica can serve: long enough to stop sending every first attempt to a dead process
/// while etcd still lists it, short enough to notice it is back.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);
/// Weight of the newest sample in the latency average replica choice compares.
const EWMA_WEIGHT: f64 = 0.25;
/// A cached percentile is recomputed after this many new samples.
const RECOMPUTE_EVERY: u64 = 16;

/// The most recent answer latencies, in microseconds.
#[derive(Debug)]
struct LatencyWindow {
    samples: Box<[u32; LATENCY_WINDOW]>,
    /// Samples ever recorded; the next goes to `recorded % LATENCY_WINDOW`.
    recorded: u64,
    /// The average replica choice compares; also raised by lower bounds (calls given up).
    ewma_micros: Option<f64>,
    /// (percentile, value, `recorded` when computed).
    cached: Option<(f64, Duration, u64)>,
}

impl LatencyWindow {
    fn new() -> LatencyWindow {
        LatencyWindow {
            samples: Box::new([0; LATENCY_WINDOW]),
            recorded: 0,
            ewma_micros: None,
            cached: None,
        }
    }

    fn record(&mut self, latency: Duration) {
        let micros = latency.as_micros().min(u128::from(u32::MAX)) as u32;
        self.samples[(self.recorded % LATENCY_WINDOW as u64) as usize] = micros;
        self.blend(f64::from(micros));
        self.recorded += 1;
    }

    /// A call given up after `latency` (cancelled as a hedge loser, or out of time) would
    /// have taken at least that long. It raises the average when above it, so that a
    /// replica that is always hedged away stops looking fast; it stays out of the window,
    /// so that it does not raise the hedge delay that made it lose.
    fn record_lower_bound(&mut self, latency: Duration) {
        let micros = latency.as_micros() as f64;
        if self.ewma_micros.is_none_or(|average| micros > average) {
            self.blend(micros);
        }
    }

    fn blend(&mut self, micros: f64) {
        self.ewma_micros = Some(match self.ewma_micros {
            None => micros,
            Some(average) => EWMA_WEIGHT * micros + (1.0 - EWMA_WEIGHT) * average,
        });
    }

    fn len(&self) -> usize {
        self.recorded.min(LATENCY_WINDOW as u64) as usize
    }

    /// The `percentile` (0 to 100) of the window, if it holds enough samples.
    fn percentile(&mut self, percentile: f64) -> Option<Duration> {
        let len = self.len();
        if len < MIN_SAMPLES {
            return None;
        }
        if let Some((cached_percentile, value, at)) = self.cached {
            if cached_percentile == percentile && self.recorded - at < RECOMPUTE_EVERY {
                return Some(value);
            }
        }
        let mut sorted: Vec<u32> = self.samples[..len].to_vec();
        let rank = ((percentile / 100.0 * len as f64).ceil() as usize).clamp(1, len) - 1;
        let (_, value, _) = sorted.select_nth_unstable(rank);
        let value = Duration::from_micros(u64::from(*value));
        self.cached = Some((percentile, value, self.recorded));
        Some(value)
    }
}

/// One Searcher's counters.
#[derive(Debug)]
pub struct SearcherLoad {
    /// Shard searches sent to it and not yet answered, failed or cancelled.
    outstanding: AtomicUsize,
    latencies: Mutex<LatencyWindow>,
    /// Milliseconds after [`SearcherLoads::epoch`] of the last transport failure, plus one
    /// (0: none).
    failed_at_millis: AtomicU64,
}

/// What replica choice compares, for one Searcher, at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSnapshot {
    /// A call to it failed at the transport within [`FAILURE_PENALTY`].
    pub recently_failed: bool,
    /// Shard searches in flight.
    pub outstanding: usize,
    /// Average recent answer latency in microseconds; `None` before its first answer.
    pub latency_micros: Option<f64>,
}

impl LoadSnapshot {
    /// An idle Searcher nothing is known about.
    pub const UNKNOWN: LoadSnapshot = LoadSnapshot {
        recently_failed: false,
        outstanding: 0,
        latency_micros: None,
    };
}

/// Every Searcher's [`SearcherLoad`], by Searcher id, plus the latencies of all Searchers
/// together.
#[derive(Debug)]
pub struct SearcherLoads {
    searchers: RwLock<HashMap<String, Arc<SearcherLoad>>>,
    all: Mutex<LatencyWindow>,
    epoch: Instant,
}

impl Default for SearcherLoads {
    fn default() -> Self {
        SearcherLoads::new()
    }
}

impl SearcherLoads {
    pub fn new() -> SearcherLoads {
        SearcherLoads {
            searchers: RwLock::new(HashMap::new()),
            all: Mutex::new(LatencyWindow::new()),
            epoch: Instant::now(),
        }
    }

    pub fn searcher(&self, searcher_id: &str) -> Arc<SearcherLoad> {
        if let Some(load) = self
            .searchers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(searcher_id)
        {
            return Arc::clone(load);
        }
        let mut searchers = self
            .searchers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(searchers.entry(searcher_id.to_string()).or_insert_with(|| {
            Arc::new(SearcherLoad {
                outstanding: AtomicUsize::new(0),
                latencies: Mutex::new(LatencyWindow::new()),
                failed_at_millis: AtomicU64::new(0),
            })
        }))
    }

    pub fn snapshot(&self, searcher_id: &str) -> LoadSnapshot {
        let searchers = self
            .searchers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(load) = searchers.get(searcher_id) else {
            return LoadSnapshot::UNKNOWN;
        };
        let failed_at = load.failed_at_millis.load(Ordering::Relaxed);
        let now = self.millis_since_epoch();
        let latencies = lock(&load.latencies);
        LoadSnapshot {
            recently_failed: failed_at > 0
                && now.saturating_sub(failed_at - 1) < FAILURE_PENALTY.as_millis() as u64,
            outstanding: load.outstanding.load(Ordering::Relaxed),
            latency_micros: latencies.ewma_micros,
        }
    }

    /// Counts `shards` shard searches as in flight on `searcher_id` until the guard drops
    /// (answered, failed or cancelled alike).
    pub fn begin(&self, searcher_id: &str, shards: usize) -> OutstandingGuard {
        let load = self.searcher(searcher_id);
        load.outstanding.fetch_add(shards, Ordering::Relaxed);
        OutstandingGuard { load, shards }
    }

    /// An answer arrived after `latency`.
    pub fn record_answer(&self, searcher_id: &str, latency: Duration) {
        let load = self.searcher(searcher_id);
        lock(&load.latencies).record(latency);
        lock(&self.all).record(latency);
    }

    /// A call was given up after `latency` without an answer (see
    /// [`LatencyWindow::record_lower_bound`]).
    pub fn record_given_up(&self, searcher_id: &str, latency: Duration) {
        let load = self.searcher(searcher_id);
        lock(&load.latencies).record_lower_bound(latency);
    }

    /// A call failed at the transport (the Searcher is unreachable or going away).
    pub fn record_failure(&self, searcher_id: &str) {
        let now = self.millis_since_epoch();
        self.searcher(searcher_id)
            .failed_at_millis
            .store(now + 1, Ordering::Relaxed);
    }

    /// The `percentile` of `searcher_id`'s recent answer latencies, if there are enough.
    pub fn searcher_percentile(&self, searcher_id: &str, percentile: f64) -> Option<Duration> {
        let load = self.searcher(searcher_id);
        let mut latencies = lock(&load.latencies);
        latencies.percentile(percentile)
    }

    /// The `percentile` of every Searcher's recent answer latencies together.
    pub fn overall_percentile(&self, percentile: f64) -> Option<Duration> {
        lock(&self.all).percentile(percentile)
    }

    /// Forgets Searchers that are no longer live, so that the map does not grow forever
    /// with the ids of Searchers long gone.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.searchers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|searcher_id, load| {
                live(searcher_id) || load.outstanding.load(Ordering::Relaxed) > 0
            });
    }

    fn millis_since_epoch(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

fn lock(window: &Mutex<LatencyWindow>) -> std::sync::MutexGuard<'_, LatencyWindow> {
    window
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Holds shard searches counted as outstanding on one Searcher.
#[derive(Debug)]
pub struct OutstandingGuard {
    load: Arc<SearcherLoad>,
    shards: usize,
}

impl Drop for OutstandingGuard {
    fn drop(&mut self) {
        self.load
            .outstanding
            .fetch_sub(self.shards, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_need_enough_samples_and_follow_the_window() {
        let loads = SearcherLoads::new();
        for _ in 0..MIN_SAMPLES - 1 {
            loads.record_answer("s1", Duration::from_millis(1));
        }
        assert_eq!(loads.searcher_percentile("s1", 95.0), None);
        loads.record_answer("s1", Duration::from_millis(1));
        assert_eq!(
            loads.searcher_percentile("s1", 95.0),
            Some(Duration::from_millis(1))
        );
        // 100 samples of 1..=100 ms: p95 is the 95th.
        let loads = SearcherLoads::new();
        for millis in 1..=100 {
            loads.record_answer("s1", Duration::from_millis(millis));
        }
        assert_eq!(
            loads.searcher_percentile("s1", 95.0),
            Some(Duration::from_millis(95))
        );
        assert_eq!(
            loads.searcher_percentile("s1", 50.0),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            loads.overall_percentile(100.0),
            Some(Duration::from_millis(100))
        );
        // The window keeps the newest samples only.
        for _ in 0..LATENCY_WINDOW {
            loads.record_answer("s1", Duration::from_micros(300));
        }
        assert_eq!(
            loads.searcher_percentile("s1", 95.0),
            Some(Duration::from_micros(300))
        );
        assert_eq!(loads.searcher_percentile("s2", 95.0), None);
    }

    #[test]
    fn outstanding_counts_until_the_guard_drops() {
        let loads = SearcherLoads::new();
        assert_eq!(loads.snapshot("s1"), LoadSnapshot::UNKNOWN);
        let first = loads.begin("s1", 3);
        let second = loads.begin("s1", 1);
        assert_eq!(loads.snapshot("s1").outstanding, 4);
        drop(first);
        assert_eq!(loads.snapshot("s1").outstanding, 1);
        // A Searcher that left is kept while calls to it are in flight.
        loads.retain(|_| false);
        assert_eq!(loads.snapshot("s1").outstanding, 1);
        drop(second);
        assert_eq!(loads.snapshot("s1").outstanding, 0);
        loads.retain(|_| false);
        assert!(loads.searchers.read().unwrap().is_empty());
    }

    #[test]
    fn latency_average_and_failures_show_in_the_snapshot() {
        let loads = SearcherLoads::new();
        loads.record_answer("s1", Duration::from_micros(1000));
        assert_eq!(loads.snapshot("s1").latency_micros, Some(1000.0));
        loads.record_answer("s1", Duration::from_micros(2000));
        assert_eq!(loads.snapshot("s1").latency_micros, Some(1250.0));
        assert!(!loads.snapshot("s1").recently_failed);
        loads.record_failure("s1");
        assert!(loads.snapshot("s1").recently_failed);
    }

    #[test]
    fn calls_given_up_raise_the_average_but_not_the_hedge_percentile() {
        let loads = SearcherLoads::new();
        loads.record_given_up("stalled", Duration::from_millis(5));
        assert_eq!(loads.snapshot("stalled").latency_micros, Some(5000.0));
        assert_eq!(loads.searcher_percentile("stalled", 95.0), None);
        // A lower bound below the average says nothing new.
        loads.record_given_up("stalled", Duration::from_millis(1));
        assert_eq!(loads.snapshot("stalled").latency_micros, Some(5000.0));
        for _ in 0..MIN_SAMPLES {
            loads.record_answer("s1", Duration::from_millis(1));
        }
        loads.record_given_up("s1", Duration::from_millis(9));
        assert_eq!(loads.snapshot("s1").latency_micros, Some(3000.0));
        assert_eq!(
            loads.searcher_percentile("s1", 100.0),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            loads.overall_percentile(100.0),
            Some(Duration::from_millis(1))
        );
    }
}
