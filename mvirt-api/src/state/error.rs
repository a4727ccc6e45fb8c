//! The error every layer of the control plane returns, and how it maps to HTTP and gRPC.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::model::Kind;

/// The error every layer returns to REST/gRPC clients: `{"code","message","details"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub details: Value,
}

impl ApiError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            details: Value::Null,
        }
    }
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid_argument", message)
    }
    pub fn not_found(kind: Kind, id: &str) -> Self {
        Self::new("not_found", format!("{} {id} not found", kind.as_str()))
            .with_details(json!({"kind": kind.as_str(), "id": id}))
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new("conflict", message)
    }
    pub fn exists(message: impl Into<String>) -> Self {
        Self::new("already_exists", message)
    }
    pub fn precondition(expected: u64, actual: u64) -> Self {
        Self::new(
            "precondition_failed",
            format!("If-Match revision {expected} does not match current revision {actual}"),
        )
        .with_details(json!({"expected": expected, "actual": actual}))
    }
    pub fn no_leader(message: impl Into<String>) -> Self {
        Self::new("no_leader", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("internal", message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new("unauthenticated", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new("permission_denied", message)
    }

    /// The HTTP status for this error code.
    pub fn http_status(&self) -> u16 {
        match self.code.as_str() {
            "invalid_argument" => 400,
            "unauthenticated" => 401,
            "permission_denied" => 403,
            "not_found" => 404,
            "already_exists" | "conflict" => 409,
            "precondition_failed" => 412,
            "payload_too_large" => 413,
            "unsupported_media_type" => 415,
            "no_leader" | "unavailable" => 503,
            "not_implemented" => 501,
            _ => 500,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self.code.as_str() {
            "invalid_argument" | "payload_too_large" => tonic::Code::InvalidArgument,
            "unauthenticated" => tonic::Code::Unauthenticated,
            "permission_denied" => tonic::Code::PermissionDenied,
            "not_found" => tonic::Code::NotFound,
            "already_exists" => tonic::Code::AlreadyExists,
            "conflict" | "precondition_failed" => tonic::Code::FailedPrecondition,
            "no_leader" | "unavailable" => tonic::Code::Unavailable,
            _ => tonic::Code::Internal,
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        tonic::Status::new(err.grpc_code(), err.message)
    }
}
