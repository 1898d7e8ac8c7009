//! The Merger's Prometheus metrics, served at `/metrics` on its gRPC port.

use std::{sync::LazyLock, time::Instant};

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, HistogramVec,
    IntCounter, IntCounterVec,
};

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "quiver_merger_requests_total",
        "Client requests by method and gRPC code.",
        &["method", "code"]
    )
    .expect("metric registers once")
});

static REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "quiver_merger_request_duration_seconds",
        "Client request latency by method.",
        &["method"],
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
    )
    .expect("metric registers once")
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

static REPLICA_WRITE_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "quiver_merger_replica_write_failures_total",
        "Replica writes that failed, by gRPC code.",
        &["code"]
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

pub fn shard_failed(code: &str) {
    SHARD_FAILURES.with_label_values(&[code]).inc();
}

pub fn shards_retried(count: usize) {
    SEARCH_RETRIES.inc_by(count as u64);
}

pub fn replica_write_failed(code: &str) {
    REPLICA_WRITE_FAILURES.with_label_values(&[code]).inc();
}
