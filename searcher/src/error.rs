use tonic::{Code, Status};

/// Everything the Searcher can fail with; [`From<Error> for Status`] is the one place
/// where these become gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("replica {collection}/{shard} is not hosted on this searcher")]
    ReplicaNotHosted { collection: String, shard: u32 },
    #[error("replica {collection}/{shard} is {state} and not serving yet")]
    ReplicaNotReady {
        collection: String,
        shard: u32,
        state: &'static str,
    },
    #[error("{0}")]
    InvalidArgument(String),
    /// A filter that does not parse or breaks a limit; names the path in the filter.
    #[error(transparent)]
    Filter(#[from] quiver_payload::FilterError),
    #[error(transparent)]
    Index(#[from] quiver_index::Error),
    #[error("replica storage at {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("replica storage at {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error(transparent)]
    Cluster(#[from] quiver_cluster::Error),
    #[error("internal: {0}")]
    Internal(String),
    /// The caller's view of the shard's primary is out of date (wrong Searcher or epoch), or
    /// this replica was fenced by a newer primary; the caller retries once its view moved on.
    #[error("{0}")]
    NotPrimary(String),
    /// The write is durable on the primary but fewer replicas than its write quorum
    /// acknowledged it in time: it is not acknowledged, and a retry is safe (writes are
    /// idempotent).
    #[error("{0}")]
    QuorumNotReached(String),
    /// A newly promoted primary is still collecting the longest log from its peers.
    #[error("{0}")]
    Recovering(String),
    /// Test-only fault injection ([`crate::fault`]) failed the call on purpose.
    #[error("{0}")]
    InjectedFault(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::ReplicaNotHosted { .. } => Code::NotFound,
            Error::ReplicaNotReady { .. } => Code::Unavailable,
            Error::InvalidArgument(_) | Error::Filter(_) => Code::InvalidArgument,
            Error::Index(error) => match error {
                quiver_index::Error::DimensionMismatch { .. }
                | quiver_index::Error::InvalidArgument(_)
                | quiver_index::Error::InvalidSpec(_) => Code::InvalidArgument,
                quiver_index::Error::Unsupported(_) => Code::Unimplemented,
                quiver_index::Error::Corrupt(_) => Code::DataLoss,
                quiver_index::Error::Io(_) | quiver_index::Error::Backend(_) => Code::Internal,
            },
            Error::Storage { .. } => Code::Internal,
            Error::Corrupt { .. } => Code::DataLoss,
            // The Searcher meets etcd only off the request path (registration, watching).
            Error::Cluster(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
            Error::NotPrimary(_) => Code::FailedPrecondition,
            Error::QuorumNotReached(_) | Error::Recovering(_) => Code::Unavailable,
            Error::InjectedFault(_) => Code::Unavailable,
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        Status::new(error.code(), error.to_string())
    }
}
