//! Payload filters for Quiver.
//!
//! - [`filter`]: the filter language ([`Filter`]) and its validation against the limits and
//!   a collection's declared payload indexes ([`PayloadSchema`]).
//! - [`json`]: the filter's JSON form, for the CLI, HTTP clients and the docs.
//! - [`proto`]: conversion from and to `quiver.v1.Filter`.
//! - [`eval`]: evaluation against one JSON payload: the reference semantics.
//! - [`index`]: payload indexes over roaring bitmaps of internal ids.
//! - [`resolve`]: a filter to the exact set of matching points on one replica.
//!
//! Nothing here knows about vectors: the Searcher hands the resolved set to the vector index
//! as an allow-list.

mod error;
pub mod eval;
pub mod filter;
pub mod index;
pub mod json;
pub mod proto;
pub mod resolve;
mod schema;

pub use error::{FilterError, Result};
pub use filter::{
    validate_key, Condition, FieldCondition, FieldTest, Filter, MatchAny, MatchValue, Range,
};
pub use index::PayloadIndex;
pub use resolve::{resolve, PointSource};
pub use roaring::RoaringTreemap;
pub use schema::{PayloadIndexSpec, PayloadIndexType, PayloadSchema};
