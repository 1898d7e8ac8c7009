//! [`Replicator`]: what the follower and recovery tasks share. Its work is split by
//! operation: following a primary (`follower.rs`), recovering as a new primary
//! (`recovery.rs`), and copying a peer's snapshot (`snapshot_copy.rs`).

use std::{sync::Arc, time::Duration};

use quiver_cluster::ClusterView;

use super::{peer_clients::PeerClients, replica_host::ReplicaHost};
use crate::error::{Error, Result};

/// The deadline of one call to a peer Searcher (beyond a long poll's wait).
pub(super) const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A failed round is tried again after `RETRY_MIN`, doubling up to `RETRY_MAX`.
pub(super) const RETRY_MIN: Duration = Duration::from_millis(100);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(1);

/// Everything a follower or recovery task needs.
pub struct Replicator {
    pub host: Arc<dyn ReplicaHost>,
    pub view: ClusterView,
    pub peers: Arc<PeerClients>,
}

impl Replicator {
    /// The address of a live Searcher, as the view shows it.
    pub(super) fn address_of(&self, searcher: &str) -> Option<String> {
        self.view
            .current()
            .searchers
            .get(searcher)
            .map(|record| record.address.clone())
    }
}

/// A peer's refusal, as an error of ours naming the call.
pub(super) fn status_error(what: &str, status: tonic::Status) -> Error {
    Error::Internal(format!("{what}: {} {}", status.code(), status.message()))
}

/// Runs replica file work on the blocking pool; `what` names the task in the error a
/// panicked task becomes.
pub(super) async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Internal(format!("{what} task failed: {error}")))?
}
