//! The placement controller's Prometheus metrics, in the default registry (served by each
//! Merger at `/metrics`, see [`crate::telemetry::with_metrics_route`]).

use std::sync::LazyLock;

use prometheus::{
    register_int_counter, register_int_counter_vec, register_int_gauge, IntCounter, IntCounterVec,
    IntGauge,
};

use crate::rebalance::ChangeKind;

static IS_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "quiver_controller_is_leader",
        "1 while this process's placement controller is the leader, else 0."
    )
    .expect("metric registers once")
});

static ASSIGNMENT_CHANGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let counter = register_int_counter_vec!(
        "quiver_controller_assignment_changes_total",
        "Assignment changes the placement controller wrote, by kind.",
        &["kind"]
    )
    .expect("metric registers once");
    // Every kind from the start, so rates exist before the first change.
    for kind in ChangeKind::ALL {
        counter.with_label_values(&[kind.as_str()]);
    }
    counter
});

static CONFLICTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "quiver_controller_write_conflicts_total",
        "Assignment transactions refused because an assignment (or the leadership) changed \
         since it was read; the shards are planned again on the next pass."
    )
    .expect("metric registers once")
});

static PENDING_SHARDS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "quiver_controller_pending_shards",
        "Shards not yet at their target placement, as the leader last saw them."
    )
    .expect("metric registers once")
});

pub(crate) fn set_leader(leads: bool) {
    IS_LEADER.set(i64::from(leads));
}

pub(crate) fn assignment_changed(kind: ChangeKind) {
    ASSIGNMENT_CHANGES.with_label_values(&[kind.as_str()]).inc();
}

pub(crate) fn write_conflict() {
    CONFLICTS.inc();
}

pub(crate) fn set_pending_shards(count: usize) {
    PENDING_SHARDS.set(count as i64);
}
