//! Ordered replication of a shard between its replicas.
//!
//! The primary gives every write the next sequence number, logs and applies it, and keeps
//! the newest records in memory ([`ShardLog`]). Followers and learners long-poll it with
//! `PullLog` for the records after the last one they applied; asking for them acknowledges
//! everything before, so the primary learns each follower's progress from the pulls alone
//! and answers a write once enough voting replicas hold it ([`ShardLog::await_quorum`]).
//!
//! A replica that is new, or whose log the primary can no longer serve (folded into a
//! snapshot) or that diverged (it holds a write an old primary never got acknowledged),
//! starts over from a snapshot streamed by a peer (`snapshot_copy`), then pulls the rest.
//!
//! A newly promoted primary first fences the shard's other replicas (they then refuse older
//! primaries) and adopts the longest log among enough of them that every acknowledged write
//! is seen ([`Replicator::recover_primary`]); only then does it take writes.
//!
//! One file per concept; none of them imports this one, and the module never imports the
//! node or the service: what it needs from the process hosting the replicas is
//! [`ReplicaHost`].
//!
//! - [`shard_state`]: [`ShardState`], the replication state of one hosted replica.
//! - [`quorum`]: [`QuorumMembers`], who a primary's acknowledgements count.
//! - [`log`]: [`ShardLog`], the primary's recent records and its acknowledgement ledger.
//! - [`pull_server`]: the primary's side of `PullLog` ([`serve_pull`]).
//! - [`wire`]: log records and pull requests to and from their protobuf form.
//! - [`replica_host`]: [`ReplicaHost`]. [`peer_clients`]: channels to peer Searchers.
//! - [`replicator`]: [`Replicator`], the follower and recovery tasks' shared context; its
//!   work is in [`follower`], [`recovery`] and [`snapshot_copy`], which installs what
//!   [`snapshot_receive`] streams in.

pub mod follower;
pub mod log;
pub mod peer_clients;
pub mod pull_server;
pub mod quorum;
pub mod recovery;
pub mod replica_host;
pub mod replicator;
pub mod shard_state;
pub mod snapshot_copy;
pub mod snapshot_receive;
pub mod wire;

pub use log::{ShardLog, PULL_MAX_RECORDS};
pub use peer_clients::PeerClients;
pub use pull_server::{serve_pull, PullOutcome, PullRequest, PULL_MAX_BYTES};
pub use quorum::QuorumMembers;
pub use replica_host::ReplicaHost;
pub use replicator::Replicator;
pub use shard_state::ShardState;
pub use wire::{pull_request_from_proto, record_from_proto, record_to_proto};
