//! The ARM error table.
//!
//! Every 4xx/5xx the API sends is an [`ApiError`]: a stable [`ErrorCode`] (the Python SDK and
//! scripts branch on `code`, never on the message), a human message and, for bad input, the
//! `target` field. Library crates convert their own errors into it at their edge; only the API
//! crate renders it as `{"error":{"code","message","target"}}`.

use std::fmt;

/// Stable ARM error codes with their HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    MissingApiVersionParameter,
    InvalidApiVersionParameter,
    InvalidParameter,
    InvalidRequestContent,
    UnsupportedMediaType,
    RequestEntityTooLarge,
    InvalidResourceName,
    InvalidAuthenticationToken,
    AuthenticationFailed,
    AuthorizationFailed,
    SubscriptionNotFound,
    ResourceGroupNotFound,
    WorkspaceNotFound,
    ExperimentNotFound,
    ClusterNotFound,
    JobNotFound,
    FileServerNotFound,
    OperationNotFound,
    ResourceNotFound,
    ProviderNotFound,
    Conflict,
    ResourceBeingDeleted,
    MethodNotAllowed,
    FeatureNotSupported,
    InternalServerError,
    ServiceUnavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            MissingApiVersionParameter => "MissingApiVersionParameter",
            InvalidApiVersionParameter => "InvalidApiVersionParameter",
            InvalidParameter => "InvalidParameter",
            InvalidRequestContent => "InvalidRequestContent",
            UnsupportedMediaType => "UnsupportedMediaType",
            RequestEntityTooLarge => "RequestEntityTooLarge",
            InvalidResourceName => "InvalidResourceName",
            InvalidAuthenticationToken => "InvalidAuthenticationToken",
            AuthenticationFailed => "AuthenticationFailed",
            AuthorizationFailed => "AuthorizationFailed",
            SubscriptionNotFound => "SubscriptionNotFound",
            ResourceGroupNotFound => "ResourceGroupNotFound",
            WorkspaceNotFound => "WorkspaceNotFound",
            ExperimentNotFound => "ExperimentNotFound",
            ClusterNotFound => "ClusterNotFound",
            JobNotFound => "JobNotFound",
            FileServerNotFound => "FileServerNotFound",
            OperationNotFound => "OperationNotFound",
            ResourceNotFound => "ResourceNotFound",
            ProviderNotFound => "InvalidResourceNamespace",
            Conflict => "Conflict",
            ResourceBeingDeleted => "ResourceBeingDeleted",
            MethodNotAllowed => "MethodNotAllowed",
            FeatureNotSupported => "FeatureNotSupported",
            InternalServerError => "InternalServerError",
            ServiceUnavailable => "ServiceUnavailable",
        }
    }

    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            MissingApiVersionParameter
            | InvalidApiVersionParameter
            | InvalidParameter
            | InvalidRequestContent
            | InvalidResourceName
            | FeatureNotSupported => 400,
            UnsupportedMediaType => 415,
            RequestEntityTooLarge => 413,
            InvalidAuthenticationToken | AuthenticationFailed => 401,
            AuthorizationFailed => 403,
            SubscriptionNotFound
            | ResourceGroupNotFound
            | WorkspaceNotFound
            | ExperimentNotFound
            | ClusterNotFound
            | JobNotFound
            | FileServerNotFound
            | OperationNotFound
            | ResourceNotFound
            | ProviderNotFound => 404,
            MethodNotAllowed => 405,
            Conflict | ResourceBeingDeleted => 409,
            InternalServerError => 500,
            ServiceUnavailable => 503,
        }
    }
}

/// An error as ARM reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub target: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), target: None }
    }

    /// A 400 `InvalidParameter` naming the offending field.
    pub fn invalid(target: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: ErrorCode::InvalidParameter, message: message.into(), target: Some(target.into()) }
    }

    pub fn with_target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    pub fn internal() -> Self {
        Self::new(ErrorCode::InternalServerError, "An internal error occurred; see the server log.")
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}
