use tonic::{Code, Status};

/// Everything the Merger can fail with. [`Error::code`] is the one place where these become
/// gRPC codes; [`Error::from_searcher`] is the way back, for statuses Searchers return.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Cluster(#[from] quiver_cluster::Error),
    /// A filter or payload index request that does not hold; names the path.
    #[error(transparent)]
    Filter(#[from] quiver_payload::FilterError),
    /// A Searcher's own answer, passed through when every replica of a shard gave it.
    #[error("{message}")]
    Searcher { code: Code, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Unavailable(_) => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Internal(_) => Code::Internal,
            Error::Cluster(error) => cluster_code(error),
            Error::Filter(_) => Code::InvalidArgument,
            Error::Searcher { code, .. } => *code,
        }
    }

    pub fn from_searcher(status: &Status) -> Error {
        Error::Searcher {
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

fn cluster_code(error: &quiver_cluster::Error) -> Code {
    use quiver_cluster::Error as E;
    match error {
        E::NotFound(_) => Code::NotFound,
        E::AlreadyExists(_) => Code::AlreadyExists,
        E::FailedPrecondition(_) => Code::FailedPrecondition,
        E::InvalidArgument(_) => Code::InvalidArgument,
        E::MalformedValue { .. } => Code::Internal,
        _ => Code::Unavailable,
    }
}

/// Whether a failed call to one replica is worth trying on another: the replica moved,
/// is starting, or its Searcher is unreachable. Never after the deadline passed, and never
/// for answers about the request itself, which another replica would repeat.
pub fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::NotFound | Code::Aborted | Code::Unknown | Code::Cancelled
    )
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        Status::new(error.code(), error.to_string())
    }
}
