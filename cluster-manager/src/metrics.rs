//! The Prometheus metrics of this library, in the default registry (served by each process
//! at `/metrics`, see [`crate::telemetry::with_metrics_route`]): the placement controller's
//! (in Mergers) and the etcd session's (in both services).
//!
//! The etcd session metrics are named `quiver_etcd_*`, not `quiver_<service>_*`: the same
//! library code runs in both services, and the scrape's `job`/`instance` labels say which
//! process a series comes from.

use std::sync::LazyLock;

use prometheus::{
    register_int_counter, register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
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

/// The etcd sessions a process holds: `watch` (the cluster view's watch, both services) and
/// `lease` (a Searcher's registration lease and its keep-alive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Session {
    Watch,
    Lease,
}

impl Session {
    fn as_str(self) -> &'static str {
        match self {
            Session::Watch => "watch",
            Session::Lease => "lease",
        }
    }
}

static SESSION_UP: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "quiver_etcd_session_up",
        "1 while this process's etcd session is healthy (watch: the cluster view's watch is \
         delivering; lease: the last keep-alive succeeded), else 0.",
        &["session"]
    )
    .expect("metric registers once")
});

static SESSION_RECONNECTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "quiver_etcd_session_reconnects_total",
        "Times this process re-established an etcd session after losing it (watch: listed \
         and watched again after the watch broke; lease: re-registered under a new lease).",
        &["session"]
    )
    .expect("metric registers once")
});

pub(crate) fn set_session_up(session: Session, up: bool) {
    SESSION_UP
        .with_label_values(&[session.as_str()])
        .set(i64::from(up));
    // The counter exists from the session's start, at zero.
    SESSION_RECONNECTS.with_label_values(&[session.as_str()]);
}

pub(crate) fn session_reconnected(session: Session) {
    SESSION_RECONNECTS
        .with_label_values(&[session.as_str()])
        .inc();
}
