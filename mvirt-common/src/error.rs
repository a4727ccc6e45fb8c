//! How typed errors become gRPC statuses.
//!
//! Each module keeps its own `thiserror` enum with a variant per failure. The enum implements
//! [`HasErrorKind`] to say which class each variant belongs to; [`to_status`] (or the
//! `impl_status_from!` macro) turns it into a `tonic::Status` at the edge with the full error
//! chain as the message. Internal errors are logged where they are mapped, so the cause is never
//! lost even if the client discards it.

use std::error::Error as StdError;
use std::fmt::Write as _;

/// The class of a failure, independent of transport. HTTP and gRPC codes both derive from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller sent something malformed or out of range.
    InvalidArgument,
    /// The named object does not exist.
    NotFound,
    /// The object exists with a different spec, or a unique name is taken.
    AlreadyExists,
    /// The object is in a state that forbids the operation (running, attached, has dependents).
    FailedPrecondition,
    /// The operation was aborted (cancelled job, conflicting concurrent change).
    Aborted,
    /// The operation cannot be performed right now; retrying may succeed.
    Unavailable,
    /// The operation is not supported here (driver, platform).
    Unimplemented,
    /// The caller is not allowed to do this.
    PermissionDenied,
    /// The caller did not authenticate.
    Unauthenticated,
    /// A resource is exhausted (capacity, quota).
    ResourceExhausted,
    /// Bug or unexpected failure of a dependency (I/O, database, external program).
    Internal,
}

impl ErrorKind {
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorKind::Aborted => tonic::Code::Aborted,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Unimplemented => tonic::Code::Unimplemented,
            ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorKind::Internal => tonic::Code::Internal,
        }
    }

    /// The HTTP status code for this class of error (used by the REST API).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidArgument => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::AlreadyExists | ErrorKind::FailedPrecondition | ErrorKind::Aborted => 409,
            ErrorKind::ResourceExhausted => 429,
            ErrorKind::Unimplemented => 501,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }

    /// Classifies a gRPC code received from a peer daemon.
    pub fn from_grpc_code(code: tonic::Code) -> Self {
        match code {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorKind::InvalidArgument,
            tonic::Code::NotFound => ErrorKind::NotFound,
            tonic::Code::AlreadyExists => ErrorKind::AlreadyExists,
            tonic::Code::FailedPrecondition => ErrorKind::FailedPrecondition,
            tonic::Code::Aborted | tonic::Code::Cancelled => ErrorKind::Aborted,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ErrorKind::Unavailable,
            tonic::Code::Unimplemented => ErrorKind::Unimplemented,
            tonic::Code::PermissionDenied => ErrorKind::PermissionDenied,
            tonic::Code::Unauthenticated => ErrorKind::Unauthenticated,
            tonic::Code::ResourceExhausted => ErrorKind::ResourceExhausted,
            _ => ErrorKind::Internal,
        }
    }
}

/// Implemented by every module error enum: which class a failure belongs to.
pub trait HasErrorKind: StdError {
    fn kind(&self) -> ErrorKind;
}

/// The error and every cause below it, joined with `: `.
pub fn error_chain(err: &dyn StdError) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            let _ = write!(out, ": {text}");
        }
        source = cause.source();
    }
    out
}

/// Maps a typed error to a `tonic::Status` carrying the whole error chain.
pub fn to_status<E: HasErrorKind>(err: &E) -> tonic::Status {
    let kind = err.kind();
    let message = error_chain(err);
    if kind == ErrorKind::Internal {
        tracing::error!(error = %message, "internal error");
    }
    tonic::Status::new(kind.grpc_code(), message)
}

/// `impl From<$ty> for tonic::Status` through [`to_status`].
#[macro_export]
macro_rules! impl_status_from {
    ($ty:ty) => {
        impl From<$ty> for ::tonic::Status {
            fn from(err: $ty) -> Self {
                $crate::error::to_status(&err)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum DemoError {
        #[error("volume {0} not found")]
        Missing(String),
        #[error("database failure")]
        Db(#[source] std::io::Error),
    }

    impl HasErrorKind for DemoError {
        fn kind(&self) -> ErrorKind {
            match self {
                DemoError::Missing(_) => ErrorKind::NotFound,
                DemoError::Db(_) => ErrorKind::Internal,
            }
        }
    }
    impl_status_from!(DemoError);

    #[test]
    fn typed_errors_map_to_grpc_codes_with_their_cause() {
        let status: tonic::Status = DemoError::Missing("v1".into()).into();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "volume v1 not found");

        let status: tonic::Status = DemoError::Db(std::io::Error::other("disk full")).into();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "database failure: disk full");
    }

    #[test]
    fn kinds_round_trip_through_grpc_codes() {
        for kind in [
            ErrorKind::InvalidArgument,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::FailedPrecondition,
            ErrorKind::Unavailable,
            ErrorKind::Internal,
        ] {
            assert_eq!(ErrorKind::from_grpc_code(kind.grpc_code()), kind);
        }
        assert_eq!(ErrorKind::AlreadyExists.http_status(), 409);
        assert_eq!(ErrorKind::Unavailable.http_status(), 503);
    }
}
