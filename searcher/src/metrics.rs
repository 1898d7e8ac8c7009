//! The Searcher's Prometheus metrics, served at `/metrics` on its gRPC port.

use std::sync::LazyLock;

use quiver_cluster::telemetry::RequestMetrics;

use prometheus::{register_int_gauge_vec, IntGaugeVec};

/// Internal requests: count by method and code, latency by method (writes include the
/// log fsync).
pub static REQUESTS: LazyLock<RequestMetrics> = LazyLock::new(|| {
    RequestMetrics::register(
        "searcher",
        vec![
            0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
        ],
    )
});

static REPLICA_POINTS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "quiver_searcher_replica_points",
        "Points held by each hosted replica.",
        &["collection", "shard"]
    )
    .expect("metric registers once")
});

pub fn set_replica_points(collection: &str, shard: u32, points: u64) {
    REPLICA_POINTS
        .with_label_values(&[collection, &shard.to_string()])
        .set(points as i64);
}

pub fn forget_replica(collection: &str, shard: u32) {
    let _ = REPLICA_POINTS.remove_label_values(&[collection, &shard.to_string()]);
}

static WRITE_QUORUM_MISSED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "quiver_searcher_write_quorum_missed_total",
        "Writes this primary logged that did not reach their quorum before the deadline (not acknowledged)."
    )
    .expect("metric registers once")
});

static REPLICA_OPEN_FAILURES: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    prometheus::register_int_counter_vec!(
        "quiver_searcher_replica_open_failures_total",
        "Replicas that failed to open, by whether their files were corrupt (checksum or format).",
        &["corrupt"]
    )
    .expect("metric registers once")
});

pub fn write_quorum_missed() {
    WRITE_QUORUM_MISSED.inc();
}

pub fn replica_open_failed(corrupt: bool) {
    REPLICA_OPEN_FAILURES
        .with_label_values(&[if corrupt { "true" } else { "false" }])
        .inc();
}
