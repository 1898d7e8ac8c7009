use std::io;

/// Everything an index operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vector dimension mismatch: expected {expected}, got {actual}")]
    DimensionMismatch { expected: usize, actual: usize },
    #[error("invalid index spec: {0}")]
    InvalidSpec(String),
    #[error("index backend failed: {0}")]
    Backend(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("index files are corrupt or of another version: {0}")]
    Corrupt(String),
    #[error("index i/o failed: {0}")]
    Io(#[from] io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
