//! The API error: renders [`ApiError`] as the ARM envelope and logs server faults once.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use batchai_core::{ApiError, ErrorCode};
use batchai_store::StoreError;

/// An error leaving a handler.
#[derive(Debug)]
pub struct Error(pub ApiError);

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self(ApiError::new(ErrorCode::Conflict, "The resource already exists.")),
            StoreError::RequiredGone => Self(ApiError::new(
                ErrorCode::InvalidParameter,
                "A resource this request refers to is missing or being deleted.",
            )),
            StoreError::ParentGone => {
                Self(ApiError::new(ErrorCode::ResourceBeingDeleted, "The parent resource is missing or being deleted."))
            }
            other => {
                // The one place a store fault is logged; the client gets a generic message.
                tracing::error!(error = %other, "store error");
                let code =
                    if other.is_unavailable() { ErrorCode::ServiceUnavailable } else { ErrorCode::InternalServerError };
                Self(ApiError { code, ..ApiError::internal() })
            }
        }
    }
}

/// Renders the ARM error envelope.
pub fn envelope(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = serde_json::json!({"code": e.code.as_str(), "message": e.message});
    if let Some(t) = &e.target {
        body["target"] = t.clone().into();
    }
    let mut res = (status, axum::Json(serde_json::json!({ "error": body }))).into_response();
    if e.code == ErrorCode::ServiceUnavailable {
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    res
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        envelope(&self.0)
    }
}
