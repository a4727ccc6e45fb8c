//! The error every layer of the control plane returns, and how it maps to HTTP and gRPC.
//!
//! An [`ApiError`] carries an [`ErrorCode`]: the REST `code` string of the error envelope
//! (`{"error":{"code","message","details"}}`). Each code belongs to one of the workspace's
//! [`ErrorKind`]s, which gives its gRPC code; the HTTP status is the kind's, except for the
//! few codes only REST has (412, 413, 415). Errors are matched by code, never by message.

use mvirt_common::error::{ErrorKind, HasErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::model::Kind;

/// What went wrong, as the `code` of the REST error envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    /// In use, or in the wrong state; `details` names what is in the way.
    Conflict,
    /// `If-Match` names another revision.
    PreconditionFailed,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// No Raft leader is elected or reachable right now.
    NoLeader,
    Unavailable,
    NotImplemented,
    Internal,
}

impl ErrorCode {
    /// The code as it appears in the JSON envelope.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::NoLeader => "no_leader",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::Internal => "internal",
        }
    }

    /// The class of failure this code belongs to.
    pub fn kind(self) -> ErrorKind {
        match self {
            ErrorCode::InvalidArgument
            | ErrorCode::PayloadTooLarge
            | ErrorCode::UnsupportedMediaType => ErrorKind::InvalidArgument,
            ErrorCode::Unauthenticated => ErrorKind::Unauthenticated,
            ErrorCode::PermissionDenied => ErrorKind::PermissionDenied,
            ErrorCode::NotFound => ErrorKind::NotFound,
            ErrorCode::AlreadyExists => ErrorKind::AlreadyExists,
            ErrorCode::Conflict | ErrorCode::PreconditionFailed => ErrorKind::FailedPrecondition,
            ErrorCode::NoLeader | ErrorCode::Unavailable => ErrorKind::Unavailable,
            ErrorCode::NotImplemented => ErrorKind::Unimplemented,
            ErrorCode::Internal => ErrorKind::Internal,
        }
    }

    /// The HTTP status of this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::PreconditionFailed => 412,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            other => other.kind().http_status(),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error every layer returns to REST/gRPC clients: `{"code","message","details"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default)]
    pub details: Value,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Value::Null,
        }
    }
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    pub fn not_found(kind: Kind, id: &str) -> Self {
        Self::new(
            ErrorCode::NotFound,
            format!("{} {id} not found", kind.as_str()),
        )
        .with_details(json!({"kind": kind.as_str(), "id": id}))
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn exists(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::AlreadyExists, message)
    }
    pub fn precondition(expected: u64, actual: u64) -> Self {
        Self::new(
            ErrorCode::PreconditionFailed,
            format!("If-Match revision {expected} does not match current revision {actual}"),
        )
        .with_details(json!({"expected": expected, "actual": actual}))
    }
    pub fn no_leader(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NoLeader, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PermissionDenied, message)
    }

    /// The HTTP status for this error.
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }

    pub fn grpc_code(&self) -> tonic::Code {
        self.code.kind().grpc_code()
    }
}

impl HasErrorKind for ApiError {
    fn kind(&self) -> ErrorKind {
        self.code.kind()
    }
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        tonic::Status::new(err.grpc_code(), err.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_code_and_statuses_follow_the_error_code() {
        let err = ApiError::precondition(1, 2);
        assert_eq!(
            serde_json::to_value(&err).unwrap()["code"],
            "precondition_failed"
        );
        assert_eq!(err.http_status(), 412);
        assert_eq!(err.grpc_code(), tonic::Code::FailedPrecondition);
        assert_eq!(ApiError::conflict("x").http_status(), 409);
        assert_eq!(
            ApiError::no_leader("x").grpc_code(),
            tonic::Code::Unavailable
        );
        let back: ApiError = serde_json::from_str(r#"{"code":"not_found","message":"m"}"#).unwrap();
        assert_eq!(back.code, ErrorCode::NotFound);
        assert_eq!(back.to_string(), "not_found: m");
    }
}
