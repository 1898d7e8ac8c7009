//! The Merger's Prometheus metrics, served at `/metrics` on its gRPC port.

use std::sync::LazyLock;

use quiver_cluster::telemetry::RequestMetrics;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
};

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, Histogram, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec,
};
use quiver_cluster::{ClusterState, ReplicaPhase};

/// The method labels of [`REQUESTS`]: the gRPC adapter's names for the Merger's methods.
pub const METHODS: &[&str] = &[
    "create_collection",
    "drop_collection",
    "list_collections",
    "describe_collection",
    "upsert",
    "delete",
    "get",
    "search",
    "count",
    "scroll",
    "create_payload_index",
    "drop_payload_index",
    "cluster_status",
];

/// Client requests: count and latency by method and code.
pub static REQUESTS: LazyLock<RequestMetrics> = LazyLock::new(|| {
    RequestMetrics::register(
        "merger",
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ],
        METHODS,
    )
});

static SHARD_SEARCH_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "quiver_merger_shard_search_duration_seconds",
        "Seconds from a search's fan-out start until a shard's answer arrived, as the Merger \
         saw it (answered shards only; retries and hedges included), by collection and shard.",
        &["collection", "shard"],
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
    )
    .expect("metric registers once")
});

const FAN_OUT_BUCKETS: &[f64] = &[
    1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0, 128.0,
];

static FAN_OUT_CALLS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "quiver_merger_search_fanout_calls",
        "Searcher calls one search made (first calls, retries and hedges).",
        FAN_OUT_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

static FAN_OUT_SHARDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "quiver_merger_search_fanout_shards",
        "Shards one search covered.",
        FAN_OUT_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

static REPLICAS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "quiver_merger_replicas",
        "Shard replicas in the cluster by state (BOOTING, ACTIVE, DRAINING, FAILED), as this \
         Merger's watched view of etcd shows them.",
        &["state"]
    )
    .expect("metric registers once")
});

static SEARCHERS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "quiver_merger_searchers",
        "Searchers registered in etcd, as this Merger's watched view shows them."
    )
    .expect("metric registers once")
});

/// The (collection, shard) series of the per-shard histogram, to drop those of collections
/// that are gone.
static SHARD_SERIES: LazyLock<Mutex<BTreeSet<(String, u32)>>> = LazyLock::new(Mutex::default);

/// Creates every series that does not depend on a request, at zero, so that they exist from
/// the start (called once the Merger serves).
pub fn register_all() {
    LazyLock::force(&REQUESTS);
    for metric in [
        &*SEARCH_RETRIES,
        &*HEDGES_SENT,
        &*HEDGES_WON,
        &*PARTIAL_RESULTS,
    ] {
        metric.get();
    }
    LazyLock::force(&SHARD_FAILURES);
    LazyLock::force(&REPLICA_WRITE_FAILURES);
    LazyLock::force(&FAN_OUT_CALLS);
    LazyLock::force(&FAN_OUT_SHARDS);
    LazyLock::force(&SHARD_SEARCH_SECONDS);
    observe_cluster_state(&ClusterState::default());
}

/// Brings the cluster-wide gauges and the per-shard series in line with `state`: replica
/// counts by state, live Searchers, and one (empty) latency series per existing shard.
pub fn observe_cluster_state(state: &ClusterState) {
    let mut by_state: BTreeMap<ReplicaPhase, i64> =
        ReplicaPhase::ALL.iter().map(|phase| (*phase, 0)).collect();
    for record in state.replicas.values() {
        *by_state.entry(record.state).or_default() += 1;
    }
    for (phase, count) in by_state {
        REPLICAS.with_label_values(&[phase.as_str()]).set(count);
    }
    SEARCHERS.set(state.searchers.len() as i64);

    let shards: BTreeSet<(String, u32)> = state
        .collections
        .values()
        .flat_map(|record| (0..record.num_shards).map(|shard| (record.name.clone(), shard)))
        .collect();
    let mut series = SHARD_SERIES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for (collection, shard) in series.difference(&shards) {
        let _ = SHARD_SEARCH_SECONDS.remove_label_values(&[collection, &shard.to_string()]);
    }
    for (collection, shard) in shards.difference(&series) {
        SHARD_SEARCH_SECONDS.with_label_values(&[collection, &shard.to_string()]);
    }
    *series = shards;
}

pub fn shard_answered(collection: &str, shard: u32, latency: std::time::Duration) {
    SHARD_SEARCH_SECONDS
        .with_label_values(&[collection, &shard.to_string()])
        .observe(latency.as_secs_f64());
}

pub fn search_fanned_out(calls: usize, shards: usize) {
    FAN_OUT_CALLS.observe(calls as f64);
    FAN_OUT_SHARDS.observe(shards as f64);
}

static SHARD_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "quiver_merger_shard_failures_total",
        "Shards missing from search answers (failed or timed out), by the gRPC code of their \
         last failure.",
        &["code"]
    )
    .expect("metric registers once")
});

static SEARCH_RETRIES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "quiver_merger_search_retries_total",
        "Shards retried on another replica after a transient failure (shards, not calls)."
    )
    .expect("metric registers once")
});

static HEDGES_SENT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "quiver_merger_hedges_sent_total",
        "Hedge calls: still-missing shards of a slow Searcher call sent to another replica."
    )
    .expect("metric registers once")
});

static HEDGES_WON: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "quiver_merger_hedges_won_total",
        "Hedge calls that answered a shard before the call they hedged."
    )
    .expect("metric registers once")
});

static PARTIAL_RESULTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "quiver_merger_partial_results_total",
        "Searches answered with some shards missing (coverage below 1, at or above min_coverage)."
    )
    .expect("metric registers once")
});

static REPLICA_WRITE_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "quiver_merger_replica_write_failures_total",
        "Shard writes the Merger could not get acknowledged by the shard's primary, by gRPC code.",
        &["code"]
    )
    .expect("metric registers once")
});

pub fn shard_failed(code: &str) {
    SHARD_FAILURES.with_label_values(&[code]).inc();
}

pub fn shards_retried(count: usize) {
    SEARCH_RETRIES.inc_by(count as u64);
}

pub fn hedge_sent() {
    HEDGES_SENT.inc();
}

pub fn hedge_won() {
    HEDGES_WON.inc();
}

pub fn partial_result() {
    PARTIAL_RESULTS.inc();
}

pub fn replica_write_failed(code: &str) {
    REPLICA_WRITE_FAILURES.with_label_values(&[code]).inc();
}
