//! The Searcher's Prometheus metrics, served at `/metrics` on its gRPC port.

use std::{sync::LazyLock, time::Instant};

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, HistogramVec,
    IntCounterVec, IntGaugeVec,
};

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "quiver_searcher_requests_total",
        "Internal requests by method and gRPC code.",
        &["method", "code"]
    )
    .expect("metric registers once")
});

static REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "quiver_searcher_request_duration_seconds",
        "Internal request latency by method (writes include the log fsync).",
        &["method"],
        vec![0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]
    )
    .expect("metric registers once")
});

static REPLICA_POINTS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "quiver_searcher_replica_points",
        "Points held by each hosted replica.",
        &["collection", "shard"]
    )
    .expect("metric registers once")
});

pub fn observe_request(method: &str, started: Instant, code: tonic::Code) {
    REQUESTS
        .with_label_values(&[method, quiver_proto::code_name(code)])
        .inc();
    REQUEST_SECONDS
        .with_label_values(&[method])
        .observe(started.elapsed().as_secs_f64());
}

pub fn set_replica_points(collection: &str, shard: u32, points: u64) {
    REPLICA_POINTS
        .with_label_values(&[collection, &shard.to_string()])
        .set(points as i64);
}

pub fn forget_replica(collection: &str, shard: u32) {
    let _ = REPLICA_POINTS.remove_label_values(&[collection, &shard.to_string()]);
}
