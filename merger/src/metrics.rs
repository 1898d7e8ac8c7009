//! The Merger's Prometheus metrics, served at `/metrics` on its gRPC port.

use std::sync::LazyLock;

use quiver_cluster::telemetry::RequestMetrics;

use prometheus::{register_int_counter, register_int_counter_vec, IntCounter, IntCounterVec};

/// Client requests: count by method and code, latency by method.
pub static REQUESTS: LazyLock<RequestMetrics> = LazyLock::new(|| {
    RequestMetrics::register(
        "merger",
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ],
    )
});

static SHARD_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "quiver_merger_shard_failures_total",
        "Shards missing from search answers, by the gRPC code of their last failure.",
        &["code"]
    )
    .expect("metric registers once")
});

static SEARCH_RETRIES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "quiver_merger_search_retries_total",
        "Shards retried on another replica after a transient failure."
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
        "Replica writes that failed, by gRPC code.",
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
