//! The Quiver Merger: the service clients call.
//!
//! - [`service`]: the [`service::MergerService`] trait and [`service::Merger`]: validation,
//!   routing, concurrent fan-out with one retry on another replica, the exact top-k merge,
//!   and replicated writes.
//! - [`routing`]: which replica answers for which shard, from the watched cluster view.
//! - [`validate`]: request checks and the documented limits.
//! - [`grpc`]: the thin gRPC adapter. [`server`]: one process.

pub mod clients;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod routing;
pub mod server;
pub mod service;
pub mod validate;

pub use error::{Error, Result};
pub use server::{run, MergerServerConfig};
pub use service::{Merger, MergerConfig, MergerService};
