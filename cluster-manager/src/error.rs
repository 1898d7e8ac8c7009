//! The one error type of this crate and its mapping to gRPC status codes.

/// Everything a cluster-metadata operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("malformed value at {key}: {reason}")]
    MalformedValue { key: String, reason: String },
    #[error("watch history compacted at revision {compact_revision}")]
    Compacted { compact_revision: i64 },
    #[error("lease {0} expired or was revoked")]
    LeaseLost(i64),
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    /// The one place where this crate's errors become gRPC codes. Everything caused by the
    /// coordinator being slow, down or having moved on (compaction, a lost lease) is
    /// `UNAVAILABLE`, which callers treat as transient and may retry.
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::AlreadyExists(_) => tonic::Status::already_exists(message),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            Error::MalformedValue { .. } => tonic::Status::internal(message),
            Error::Etcd(_)
            | Error::Unavailable(_)
            | Error::LeaseLost(_)
            | Error::Compacted { .. } => tonic::Status::unavailable(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_its_grpc_code() {
        let cases = [
            (
                Error::NotFound("collection c".into()),
                tonic::Code::NotFound,
            ),
            (
                Error::AlreadyExists("collection c".into()),
                tonic::Code::AlreadyExists,
            ),
            (
                Error::FailedPrecondition("too few".into()),
                tonic::Code::FailedPrecondition,
            ),
            (
                Error::InvalidArgument("bad".into()),
                tonic::Code::InvalidArgument,
            ),
            (
                Error::MalformedValue {
                    key: "/k".into(),
                    reason: "eof".into(),
                },
                tonic::Code::Internal,
            ),
            (
                Error::Compacted {
                    compact_revision: 3,
                },
                tonic::Code::Unavailable,
            ),
            (Error::LeaseLost(7), tonic::Code::Unavailable),
            (Error::Unavailable("down".into()), tonic::Code::Unavailable),
            (
                Error::Etcd(etcd_client::Error::InvalidArgs("x".into())),
                tonic::Code::Unavailable,
            ),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message);
        }
    }
}
