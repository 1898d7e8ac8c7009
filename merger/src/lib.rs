//! The Quiver Merger: the service clients call.
//!
//! - [`service`]: the [`service::MergerService`] trait and [`service::Merger`]: validation,
//!   the exact top-k merge, coverage and partial results, and replicated writes.
//! - [`fanout`]: one search's calls to the Searchers: deadlines, one retry on another
//!   replica, hedging, and the per-shard report.
//! - [`load`]: per-Searcher outstanding calls and recent latencies, which replica choice
//!   and hedging read.
//! - [`routing`]: which replica answers for which shard, from the watched cluster view.
//! - [`validate`]: request checks and the documented limits.
//! - [`grpc`]: the thin gRPC adapter. [`server`]: one process. [`starting`]: the service
//!   until the cluster state is loaded.
//! - [`metrics`]: the Prometheus metrics served at `/metrics`.
//! - [`status_page`]: the live status page and its JSON, on the gRPC port over HTTP/1.

pub mod clients;
pub mod error;
pub mod fanout;
pub mod grpc;
pub mod load;
pub mod metrics;
pub mod routing;
pub mod server;
pub mod service;
pub mod starting;
pub mod status_page;
pub mod validate;

pub use error::{Error, Result};
pub use server::{run, MergerServerConfig};
pub use service::{Merger, MergerConfig, MergerService};
