//! How a replica is stored: every file format and durable file operation of the Searcher.
//!
//! - [`fs`]: the durable file operations (atomic replace, directory fsync, creating a
//!   directory durably, hard-linking a tree) every file here is written with.
//! - [`codec`]: the byte codec all formats share: a bounds-checked [`codec::Cursor`], the
//!   `put_*` writers, and the CRC-32 checks (a checksummed frame, a sealed file).
//! - [`points`]: `points.bin`, a snapshot's ids, payloads and the sequence number it covers.
//! - [`epochs`]: `epochs.json`, a replica's [`epochs::EpochHistory`].
//! - [`wal`]: the write-ahead log, a directory of segment files.
//!
//! Everything here is synchronous and knows nothing of replicas' in-memory state, the
//! service or replication: callers run it on the blocking pool and pass plain values in.
//! Failures are one [`StorageError`], which says where (the path, and for a damaged file the
//! byte offset) and whether the bytes on disk are unusable ([`StorageError::Corrupt`]).

pub mod codec;
pub mod epochs;
pub mod fs;
pub mod points;
pub mod wal;

use std::{
    io,
    path::{Path, PathBuf},
};

use crate::error::Error;

/// Every failure of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The operating system refused an operation on `path`.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The bytes of `path` (from `offset` on, where that is known; 0 otherwise) are not what
    /// was written, or they cannot be used without losing acknowledged writes.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The caller broke a contract (a log record out of order, a compaction past the end, a
    /// record over the size limit); nothing was written.
    #[error("{0}")]
    InvalidInput(String),
    /// A value could not be encoded (`what` names the file).
    #[error("encoding {what}: {reason}")]
    Encode { what: &'static str, reason: String },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

impl StorageError {
    pub(crate) fn io(path: &Path, source: io::Error) -> StorageError {
        StorageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> StorageError {
        StorageError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }

    /// The [`io::ErrorKind`] an [`io::Error`] for the same failure would have: corruption is
    /// `InvalidData`, a broken contract `InvalidInput`.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            StorageError::Io { source, .. } => source.kind(),
            StorageError::Corrupt { .. } => io::ErrorKind::InvalidData,
            StorageError::InvalidInput(_) => io::ErrorKind::InvalidInput,
            StorageError::Encode { .. } => io::ErrorKind::Other,
        }
    }

    /// The failure as an [`io::Error`] of [`StorageError::kind`]: the operating system's own
    /// error where there is one, the message otherwise.
    pub fn into_io(self) -> io::Error {
        match self {
            StorageError::Io { source, .. } => source,
            other => io::Error::new(other.kind(), other.to_string()),
        }
    }
}

/// Names the path an [`io::Result`] is about, turning it into a [`Result`].
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| StorageError::io(path, source))
    }
}

impl From<StorageError> for Error {
    fn from(error: StorageError) -> Error {
        match error {
            StorageError::Io { path, source } => Error::Storage {
                path: path.display().to_string(),
                source,
            },
            StorageError::Corrupt { path, reason, .. } => Error::Corrupt {
                path: path.display().to_string(),
                reason,
            },
            StorageError::InvalidInput(reason) => Error::Internal(reason),
            StorageError::Encode { what, reason } => {
                Error::Internal(format!("encoding {what}: {reason}"))
            }
        }
    }
}
