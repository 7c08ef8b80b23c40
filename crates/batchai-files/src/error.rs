//! The storage error: Azure Storage's status codes, `x-ms-error-code` and error XML.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error leaving a Files request, rendered as Azure Storage renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl StorageError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "AuthenticationFailed", message)
    }

    pub fn bad_header(name: &str, why: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidHeaderValue", format!("The value for header '{name}' {why}."))
    }

    pub fn missing_header(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "MissingRequiredHeader",
            format!("An HTTP header that's mandatory for this request is not specified: {name}."),
        )
    }

    pub fn bad_name(what: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidResourceName",
            format!("The specifed resource name contains invalid characters: {what}."),
        )
    }

    pub fn share_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "ShareNotFound", "The specified share does not exist.")
    }

    pub fn parent_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "ParentNotFound", "The specified parent path does not exist.")
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "ResourceNotFound", "The specified resource does not exist.")
    }

    pub fn type_mismatch() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "ResourceTypeMismatch",
            "The specified resource type does not match the type of the existing resource.",
        )
    }

    pub fn internal(e: &std::io::Error) -> Self {
        // The one place a file-system fault is logged; the client gets a generic message.
        tracing::error!(error = %e, "file system error in the Files endpoint");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "The server encountered an internal error. Please retry the request.",
        )
    }
}

/// Escapes text for an XML element or attribute.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

impl IntoResponse for StorageError {
    fn into_response(self) -> Response {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{}</Code><Message>{}</Message></Error>",
            self.code,
            xml_escape(&self.message)
        );
        let mut res = Response::new(Body::from(body));
        *res.status_mut() = self.status;
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        h.insert("x-ms-error-code", HeaderValue::from_static(self.code));
        res
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;
