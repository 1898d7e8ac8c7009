//! Quiver's gRPC API, `quiver.v1`, generated from `protos/quiver/v1/*.proto`.
//!
//! Clients in other languages generate their stubs from the same files, or read them from
//! the servers through gRPC reflection ([`FILE_DESCRIPTOR_SET`]).

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod v1 {
    tonic::include_proto!("quiver.v1");
}

/// The encoded descriptors of every Quiver service, for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quiver_descriptor");

pub use v1::{Metric, ReplicaState};

impl v1::Metric {
    /// The name used in etcd values and on the command line.
    pub fn as_config_str(self) -> &'static str {
        match self {
            v1::Metric::Unspecified => "unspecified",
            v1::Metric::L2 => "l2",
            v1::Metric::InnerProduct => "ip",
            v1::Metric::Cosine => "cosine",
        }
    }
}

/// The canonical upper-case name of a gRPC code ("UNAVAILABLE"), as carried in
/// `ShardFailure.code` and `ReplicaFailure.code` so that clients in any language can match it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The inverse of [`code_name`]; names it does not know read as `UNKNOWN`.
pub fn code_from_name(name: &str) -> tonic::Code {
    use tonic::Code;
    const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];
    ALL.into_iter()
        .find(|code| code_name(*code) == name)
        .unwrap_or(Code::Unknown)
}

/// The largest gRPC message either service accepts or sends; a bigger upsert batch is
/// refused with RESOURCE_EXHAUSTED before it is decoded.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

#[cfg(test)]
mod tests {
    #[test]
    fn code_names_are_the_canonical_grpc_names() {
        assert_eq!(super::code_name(tonic::Code::Unavailable), "UNAVAILABLE");
        assert_eq!(
            super::code_name(tonic::Code::DeadlineExceeded),
            "DEADLINE_EXCEEDED"
        );
        assert_eq!(super::code_name(tonic::Code::Ok), "OK");
        for value in 0..17 {
            let code = tonic::Code::from_i32(value);
            assert_eq!(super::code_from_name(super::code_name(code)), code);
        }
        assert_eq!(super::code_from_name("NONSENSE"), tonic::Code::Unknown);
    }
}
