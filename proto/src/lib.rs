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

/// Rewrites tonic's answer to a request message over the size limit (OUT_OF_RANGE) into
/// RESOURCE_EXHAUSTED, the code gRPC specifies for it and other implementations send, so
/// clients in every language see the same code. Other responses pass through untouched.
/// Installed on both servers as a response-mapping layer.
pub fn oversized_message_as_resource_exhausted<B: Default>(
    response: http::Response<B>,
) -> http::Response<B> {
    let oversized = response
        .extensions()
        .get::<tonic::Status>()
        .is_some_and(|status| {
            status.code() == tonic::Code::OutOfRange
                && status.message().contains("message length too large")
        });
    if !oversized {
        return response;
    }
    let message = response
        .extensions()
        .get::<tonic::Status>()
        .map(|status| status.message().to_string())
        .unwrap_or_default();
    tonic::Status::resource_exhausted(message).into_http()
}

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

    #[test]
    fn only_the_oversized_message_answer_is_rewritten() {
        let oversized = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 70000000 bytes, the limit is: 67108864 bytes",
        )
        .into_http::<String>();
        let rewritten = super::oversized_message_as_resource_exhausted(oversized);
        assert_eq!(rewritten.headers()["grpc-status"], "8");
        let other = tonic::Status::out_of_range("shard 9 out of range").into_http::<String>();
        let untouched = super::oversized_message_as_resource_exhausted(other);
        assert_eq!(untouched.headers()["grpc-status"], "11");
    }
}
