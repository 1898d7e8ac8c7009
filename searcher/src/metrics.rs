//! The Searcher's Prometheus metrics, served at `/metrics` on its gRPC port.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
    time::Duration,
};

use quiver_cluster::{telemetry::RequestMetrics, ReplicaPhase, ReplicaRole};

use prometheus::{
    register_histogram, register_histogram_vec, register_int_gauge_vec, Histogram, HistogramVec,
    IntGaugeVec,
};

/// The method labels of [`REQUESTS`]: the gRPC adapter's names for the Searcher's methods
/// the Merger calls.
pub const METHODS: &[&str] = &[
    "search",
    "upsert",
    "delete",
    "get",
    "count",
    "scroll",
    "replica_status",
];

/// Internal requests: count and latency by method and code (writes include the log fsync
/// and, on a primary, waiting for the write quorum).
pub static REQUESTS: LazyLock<RequestMetrics> = LazyLock::new(|| {
    RequestMetrics::register(
        "searcher",
        vec![
            0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
        ],
        METHODS,
    )
});

static REPLICA_POINTS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "quiver_searcher_replica_points",
        "Points (vectors) held by each hosted replica.",
        &["collection", "shard"]
    )
    .expect("metric registers once")
});

static REPLICA_INDEX_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "quiver_searcher_replica_index_memory_bytes",
        "Bytes of memory each hosted replica's index holds (vectors, graph, codes, id maps; \
         an estimate from capacities).",
        &["collection", "shard"]
    )
    .expect("metric registers once")
});

static REPLICA_PAYLOAD_INDEX_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "quiver_searcher_replica_payload_index_memory_bytes",
        "Bytes of memory each hosted replica's payload indexes hold (posting lists; an \
         estimate from their serialized sizes).",
        &["collection", "shard"]
    )
    .expect("metric registers once")
});

static REPLICA_STATE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "quiver_searcher_replica_state",
        "1 for each hosted replica, labelled with the state (BOOTING, ACTIVE, DRAINING, \
         FAILED) and role (PRIMARY, FOLLOWER, LEARNER, NONE) this Searcher last published \
         for it in etcd.",
        &["collection", "shard", "state", "role"]
    )
    .expect("metric registers once")
});

static SHARD_SEARCH_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "quiver_searcher_shard_search_duration_seconds",
        "Seconds one hosted replica's index took to answer the queries of one search call, \
         by collection and shard.",
        &["collection", "shard"],
        vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            5.0
        ]
    )
    .expect("metric registers once")
});

static SEARCH_SHARDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "quiver_searcher_search_shards",
        "Shards one search call asked this Searcher for.",
        vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0]
    )
    .expect("metric registers once")
});

/// (collection, shard) → the (state, role) labels of its state series.
type StateLabels = HashMap<(String, u32), (String, String)>;

/// The (state, role) series each replica has, to drop it when either changes.
static PUBLISHED_STATES: LazyLock<Mutex<StateLabels>> = LazyLock::new(Mutex::default);

/// Creates every series that does not depend on a request or a replica, at zero, so that
/// they exist from the start.
pub fn register_all() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REPLICA_POINTS);
    LazyLock::force(&REPLICA_INDEX_BYTES);
    LazyLock::force(&REPLICA_STATE);
    LazyLock::force(&SHARD_SEARCH_SECONDS);
    LazyLock::force(&SEARCH_SHARDS);
    LazyLock::force(&WRITE_QUORUM_MISSED);
    for corrupt in ["true", "false"] {
        REPLICA_OPEN_FAILURES.with_label_values(&[corrupt]);
    }
    for plan in [
        quiver_index::filtered::Plan::ExactScan,
        quiver_index::filtered::Plan::Index,
    ] {
        FILTERED_SEARCHES.with_label_values(&[plan.as_str()]);
    }
}

pub fn set_replica_points(collection: &str, shard: u32, points: u64) {
    REPLICA_POINTS
        .with_label_values(&[collection, &shard.to_string()])
        .set(points as i64);
}

pub fn set_replica_index_bytes(collection: &str, shard: u32, bytes: usize) {
    REPLICA_INDEX_BYTES
        .with_label_values(&[collection, &shard.to_string()])
        .set(bytes as i64);
}

pub fn set_replica_payload_index_bytes(collection: &str, shard: u32, bytes: usize) {
    REPLICA_PAYLOAD_INDEX_BYTES
        .with_label_values(&[collection, &shard.to_string()])
        .set(bytes as i64);
}

/// Records the state and role just published for a replica (its latency series is created
/// with it, empty).
pub fn set_replica_state(
    collection: &str,
    shard: u32,
    phase: ReplicaPhase,
    role: Option<ReplicaRole>,
) {
    let shard_label = shard.to_string();
    let labels = (
        phase.as_str().to_string(),
        role.map_or("NONE", ReplicaRole::as_str).to_string(),
    );
    let mut published = PUBLISHED_STATES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((state, role)) = published.insert((collection.to_string(), shard), labels.clone()) {
        if (state.as_str(), role.as_str()) != (labels.0.as_str(), labels.1.as_str()) {
            let _ = REPLICA_STATE.remove_label_values(&[collection, &shard_label, &state, &role]);
        }
    }
    REPLICA_STATE
        .with_label_values(&[collection, &shard_label, &labels.0, &labels.1])
        .set(1);
    SHARD_SEARCH_SECONDS.with_label_values(&[collection, &shard_label]);
}

/// Drops every series of a replica that is no longer hosted here.
pub fn forget_replica(collection: &str, shard: u32) {
    let shard_label = shard.to_string();
    let _ = REPLICA_POINTS.remove_label_values(&[collection, &shard_label]);
    let _ = REPLICA_INDEX_BYTES.remove_label_values(&[collection, &shard_label]);
    let _ = REPLICA_PAYLOAD_INDEX_BYTES.remove_label_values(&[collection, &shard_label]);
    let _ = SHARD_SEARCH_SECONDS.remove_label_values(&[collection, &shard_label]);
    let published = PUBLISHED_STATES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .remove(&(collection.to_string(), shard));
    if let Some((state, role)) = published {
        let _ = REPLICA_STATE.remove_label_values(&[collection, &shard_label, &state, &role]);
    }
}

pub fn shard_searched(collection: &str, shard: u32, took: Duration) {
    SHARD_SEARCH_SECONDS
        .with_label_values(&[collection, &shard.to_string()])
        .observe(took.as_secs_f64());
}

pub fn search_asked_for(shards: usize) {
    SEARCH_SHARDS.observe(shards as f64);
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

static FILTERED_SEARCHES: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    prometheus::register_int_counter_vec!(
        "quiver_searcher_filtered_searches_total",
        "Filtered queries searched on this Searcher, per shard, by plan: exact_scan (the matching points scored exactly) or index (the vector index skipping the rest).",
        &["plan"]
    )
    .expect("metric registers once")
});

pub fn filtered_search(plan: quiver_index::filtered::Plan) {
    FILTERED_SEARCHES.with_label_values(&[plan.as_str()]).inc();
}
