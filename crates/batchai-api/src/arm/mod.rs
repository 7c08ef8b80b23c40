//! The ARM API: one fallback handler that authenticates, checks the api-version, parses the
//! path into a [`route::Route`] and dispatches to [`resources`] (Microsoft.Resources) or
//! [`batchai`] (Microsoft.BatchAI).

mod batchai;
pub(crate) use batchai::{NOT_DECLARED, not_declared_message};
mod paging;
pub(crate) mod render;
mod resources;
pub mod route;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use batchai_core::{ApiError, ErrorCode};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::auth::{self, Caller};
use crate::{AppState, Error, Scheme};
use route::{Family, Route};

pub const BATCHAI_API_VERSIONS: &[&str] = &["2018-05-01"];
pub const RESOURCES_API_VERSIONS: &[&str] = &[
    "2021-04-01",
    "2021-01-01",
    "2020-10-01",
    "2020-06-01",
    "2019-10-01",
    "2019-08-01",
    "2019-07-01",
    "2019-05-10",
    "2019-05-01",
    "2019-03-01",
    "2018-05-01",
    "2018-02-01",
    "2017-05-10",
    "2016-09-01",
    "2016-07-01",
    "2016-06-01",
    "2016-02-01",
    "2015-11-01",
];
pub const SUBSCRIPTIONS_API_VERSIONS: &[&str] =
    &["2022-12-01", "2021-01-01", "2020-01-01", "2019-11-01", "2019-06-01", "2018-06-01", "2016-06-01", "2015-11-01"];

/// Everything a handler needs about the request.
pub(crate) struct Ctx {
    pub state: AppState,
    pub base: String,
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub api_version: String,
    pub body: Bytes,
    pub caller: Caller,
}

impl Ctx {
    /// A query parameter, matched ignoring case as ARM does.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON, `None` when empty.
    pub fn json_body(&self) -> Result<Option<Value>, ApiError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        batchai_core::validate::parse_json(&self.body, "").map(Some)
    }
}

/// The scheme, host and port clients reach us at, for absolute links.
pub fn base_url(state: &AppState, scheme: Scheme, headers: &HeaderMap) -> String {
    if let Some(url) = &state.settings.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).filter(|h| valid_host(h)).unwrap_or("localhost");
    format!("{}://{host}", scheme.as_str())
}

/// A Host header is echoed into links, so only plain host[:port] forms are trusted.
fn valid_host(h: &str) -> bool {
    !h.is_empty() && h.len() <= 255 && h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c))
}

pub(crate) fn json(status: StatusCode, value: Value) -> Response {
    let mut res = (status, axum::Json(value)).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    res
}

pub(crate) fn ok(value: Value) -> Response {
    json(StatusCode::OK, value)
}

/// Entry point for every path the token service does not own.
pub async fn handle(
    State(state): State<AppState>,
    axum::Extension(scheme): axum::Extension<Scheme>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let challenge = format!(
        "Bearer authorization_uri=\"{}/{}\", error=\"invalid_token\"",
        base_url(&state, scheme, &headers),
        state.keys.tenant
    );
    // Run to completion even if the client goes away: a request cancelled inside a database
    // transaction could hand its connection back mid-transaction.
    let outcome = tokio::spawn(handle_inner(state, scheme, method, uri, headers, body))
        .await
        .unwrap_or_else(|_| Err(ApiError::internal().into()));
    match outcome {
        Ok(res) => res,
        Err(e) => {
            let unauthenticated = e.0.code == ErrorCode::InvalidAuthenticationToken;
            let mut res = e.into_response();
            if unauthenticated && let Ok(v) = HeaderValue::from_str(&challenge) {
                res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            res
        }
    }
}

async fn handle_inner(
    state: AppState,
    scheme: Scheme,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let caller = auth::authenticate(state.store.as_ref(), &state.keys, &headers).await?;
    let route = route::parse(uri.path()).ok_or_else(|| {
        ApiError::new(ErrorCode::ResourceNotFound, format!("No resource or operation is served at '{}'.", uri.path()))
    })?;
    let query: Vec<(String, String)> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).map(|(k, v)| (k.into(), v.into())).collect();
    let api_version = check_api_version(&route, &query)?;
    if let Some(sub) = route.subscription() {
        caller.authorize(sub, &format!("{} {}", method, route_action(&route)))?;
    }
    let body = read_body(&state, &method, &headers, body).await?;
    let ctx = Ctx {
        base: base_url(&state, scheme, &headers),
        state,
        method,
        path: uri.path().to_owned(),
        query,
        api_version,
        body,
        caller,
    };
    match route.family() {
        Family::BatchAi => batchai::dispatch(&ctx, route).await,
        Family::Resources | Family::Subscriptions => resources::dispatch(&ctx, route).await,
    }
}

fn route_action(route: &Route) -> &'static str {
    match route.family() {
        Family::BatchAi => "Microsoft.BatchAI",
        Family::Resources => "Microsoft.Resources",
        Family::Subscriptions => "Microsoft.Resources/subscriptions",
    }
}

fn check_api_version(route: &Route, query: &[(String, String)]) -> Result<String, ApiError> {
    let supported = match route.family() {
        Family::BatchAi => BATCHAI_API_VERSIONS,
        Family::Resources => RESOURCES_API_VERSIONS,
        Family::Subscriptions => SUBSCRIPTIONS_API_VERSIONS,
    };
    let given = query.iter().find(|(k, _)| k.eq_ignore_ascii_case("api-version")).map(|(_, v)| v.as_str());
    match given {
        None | Some("") => Err(ApiError::new(
            ErrorCode::MissingApiVersionParameter,
            "The api-version query parameter (?api-version=) is required for all requests.",
        )),
        Some(v) if supported.contains(&v) => Ok(v.to_owned()),
        Some(v) => Err(ApiError::new(
            ErrorCode::InvalidApiVersionParameter,
            format!(
                "The api-version '{}' is invalid. The supported versions are '{}'.",
                v.chars().take(40).collect::<String>(),
                supported.join(",")
            ),
        )),
    }
}

/// How much of a body over the limit is read and thrown away before the 413 goes out, and for
/// how long at most. A server that answers and closes while the client is still sending leaves
/// unread data that makes the kernel reset the connection, and clients then report the reset
/// instead of the answer; reading on a little lets them see the error envelope.
const DRAIN_BYTES: usize = 16 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

async fn drain(mut body: Body) {
    let read = async {
        let mut left = DRAIN_BYTES;
        while left > 0
            && let Some(Ok(frame)) = body.frame().await
        {
            left = left.saturating_sub(frame.data_ref().map_or(0, Bytes::len));
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

/// Reads the body under the size limit; a body must be JSON when it says what it is.
pub(crate) async fn read_body(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    mut body: Body,
) -> Result<Bytes, ApiError> {
    let limit = state.settings.max_body_bytes;
    let too_large =
        || ApiError::new(ErrorCode::RequestEntityTooLarge, format!("The request body is larger than {limit} bytes."));
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > limit
    {
        drain(body).await;
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|_| ApiError::new(ErrorCode::InvalidRequestContent, "The request body could not be read."))?;
        let Some(data) = frame.data_ref() else { continue };
        if bytes.len() + data.len() > limit {
            drain(body).await;
            return Err(too_large());
        }
        bytes.extend_from_slice(data);
    }
    let has_body = !bytes.iter().all(u8::is_ascii_whitespace);
    if has_body
        && matches!(*method, Method::PUT | Method::PATCH | Method::POST)
        && let Some(ct) = headers.get(header::CONTENT_TYPE)
    {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        let mime = ct.split(';').next().unwrap_or_default().trim();
        if mime != "application/json" && !mime.ends_with("+json") && mime != "text/json" {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!("The content type '{mime}' is not supported; send application/json."),
            ));
        }
    }
    Ok(Bytes::from(bytes))
}

pub(crate) fn method_not_allowed(ctx: &Ctx) -> Error {
    ApiError::new(ErrorCode::MethodNotAllowed, format!("The method '{}' is not supported here.", ctx.method)).into()
}
