//! The Quiver Searcher: hosts shard replicas and answers the internal Searcher API.
//!
//! - [`replica`]: one replica's index, ids and payloads, and which durable files it keeps.
//! - [`storage`]: how those files are written and read: the write-ahead log, `points.bin`,
//!   `epochs.json` and the durable file operations, with one [`storage::StorageError`].
//! - [`service`]: the [`service::SearcherService`] trait and the domain types it speaks.
//! - [`node`]: [`node::SearcherNode`], which implements it over the replicas hosted here.
//! - [`grpc`]: the thin gRPC adapter.
//! - [`reconcile`]: follows the assignments in etcd, opening and closing replicas.
//! - [`status`]: publishes every hosted replica's status record to etcd.
//! - [`replication`]: primary → follower log shipping, fencing, recovery, snapshot copy;
//!   it sees the node only through [`replication::ReplicaHost`].
//! - [`server`]: wires one process together. [`readiness`]: when it is ready for traffic.
//! - [`metrics`]: the Prometheus metrics served at `/metrics`.
//! - [`fault`]: test-only fault injection (slow or failing searches, replicas held BOOTING).

pub mod error;
pub mod fault;
pub mod grpc;
pub mod metrics;
pub mod node;
pub mod point;
pub mod readiness;
pub mod reconcile;
pub mod replica;
pub mod replication;
pub mod server;
pub mod service;
pub mod status;
pub mod storage;

pub use error::{Error, Result};
pub use server::{run, SearcherConfig};
pub use storage::wal::{WalOptions, WalSync};
