//! The metadata store: a narrow key-value interface with revisions, leases, transactions and
//! watches, with two backends — [`EtcdStore`] for real clusters and [`MemoryStore`] for unit
//! tests. The same conformance suite runs against both, so code tested on the memory store
//! behaves the same on etcd.

mod etcd;
mod memory;

#[cfg(test)]
pub(crate) mod conformance;

pub use etcd::EtcdStore;
pub use memory::MemoryStore;

use crate::Result;

/// An etcd lease id; 0 means "no lease".
pub type LeaseId = i64;

/// One stored key with etcd's revision bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The store revision at which the key was (last) created.
    pub create_revision: i64,
    /// The store revision of the key's last modification.
    pub mod_revision: i64,
    /// The lease the key is attached to; 0 for none.
    pub lease: LeaseId,
}

/// A condition of a [`MetadataStore::txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists.
    Present(String),
    /// The key's mod revision equals the given one (0 for an absent key, as in etcd).
    ModRevision(String, i64),
}

/// A write of a [`MetadataStore::txn`]. As in etcd, one transaction may not put the same key
/// twice nor put a key that one of its deletes covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete(String),
    DeletePrefix(String),
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    /// `mod_revision` is the revision of the deletion.
    Delete {
        key: String,
        mod_revision: i64,
    },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(key_value) => &key_value.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The store revision that produced the event.
    pub fn revision(&self) -> i64 {
        match self {
            WatchEvent::Put(key_value) => key_value.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// Batches of events in revision order, one item per etcd watch response (responses that
/// carry no events, such as the "created" notice, are not passed on). The stream ends after
/// an error: `Err(Error::Compacted { .. })` when the start revision was compacted away (list
/// again and re-watch), another error when the watch broke.
pub type WatchStream = futures::stream::BoxStream<'static, Result<Vec<WatchEvent>>>;

/// Everything Quiver needs from its coordinator. Every method is bounded by the backend's
/// request deadline except the items of a [`WatchStream`], which arrive whenever changes do.
#[async_trait::async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// All keys under prefix, sorted by key, plus the store revision the read reflects.
    async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)>;

    /// Writes `key`; with a lease, the key vanishes when the lease does. Putting under a
    /// lease that no longer exists fails with `LeaseLost`.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<()>;

    /// Deletes `key`; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Atomic: if every compare holds, apply all ops and return true; else apply nothing,
    /// return false.
    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<bool>;

    /// Grants a lease of `ttl_secs` seconds (etcd may round a very short TTL up to its
    /// minimum, about 2 s).
    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId>;

    /// One keep-alive; returns the remaining TTL in seconds (<= 0 means the lease is gone).
    async fn keep_alive(&self, lease: LeaseId) -> Result<i64>;

    /// Revokes the lease, deleting every key attached to it. Revoking a lease that is
    /// already gone succeeds, so a graceful stop after a lost lease is not an error.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;

    /// Events for keys under prefix from `from_revision` (inclusive) on, with previous values
    /// not required. `from_revision <= 0` means "changes after now".
    async fn watch_prefix(&self, prefix: &str, from_revision: i64) -> Result<WatchStream>;
}

/// Whether `key` lies under `prefix` in the byte-wise sense etcd uses.
pub(crate) fn under_prefix(key: &str, prefix: &str) -> bool {
    key.as_bytes().starts_with(prefix.as_bytes())
}
