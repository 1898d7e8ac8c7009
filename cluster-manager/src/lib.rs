//! Quiver's cluster coordination on etcd.
//!
//! - [`keys`]: the key schema under a configurable prefix (default `/quiver/`).
//! - [`model`]: the JSON records stored there.
//! - [`store`]: the [`MetadataStore`] trait with its etcd and in-memory backends.
//! - [`membership`]: a Searcher's registration under a kept-alive lease.
//! - [`view`]: the watch-backed, in-memory [`ClusterView`] Mergers search from.
//! - [`placement`]: point → shard hashing and even, consistent-hash replica placement.
//! - [`catalog`]: collection create and drop.
//! - [`election`]: leader election among the Mergers on plain etcd RPCs.
//! - [`rebalance`]: pure planning of each shard's next step towards its target placement.
//! - [`controller`]: the placement controller the elected Merger runs.
//! - [`telemetry`]: logging, `/metrics`, `/ready`, readiness and the stop signal shared by
//!   the binaries.
//! - [`request_id`]: the `x-request-id` carried from the Merger to the Searchers.
//! - [`testing`]: a throw-away real etcd for tests (this crate's and others').
//!
//! Desired state (collections, assignments) is persistent; live state (searchers, replica
//! status) always lives under a lease, so a dead node vanishes by itself.

pub mod catalog;
pub mod controller;
pub mod election;
mod error;
pub mod keys;
pub mod membership;
mod metrics;
pub mod model;
pub mod placement;
pub mod rebalance;
pub mod request_id;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod view;

pub use catalog::{create_collection, drop_collection, get_collection, list_collections};
pub use controller::{ControllerConfig, PlacementController};
pub use election::LeaderElection;
pub use error::{Error, Result};
pub use keys::{validate_name, Key, KeySchema};
pub use membership::Registration;
pub use model::{
    now_rfc3339, AssignmentRecord, Capacity, CollectionRecord, LeaderRecord, RebalanceRecord,
    ReplicaPhase, ReplicaRecord, ReplicaRole, SearcherRecord,
};
pub use placement::{
    balance_collection, place_collection, replica_load, shard_of, shard_position, stable_hash64,
    virtual_node_position, HashRing, LoadBounds, DEFAULT_VIRTUAL_NODES,
};
pub use rebalance::{
    collection_loads, plan_moves, plan_step, target_placement, CollectionLoad, Move, RebalancePlan,
};
pub use store::{
    Compare, EtcdStore, KeyValue, LeaseId, MemoryStore, MetadataStore, Op, WatchEvent, WatchStream,
};
pub use view::{ClusterState, ClusterView};
