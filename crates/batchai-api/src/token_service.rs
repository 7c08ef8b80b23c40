//! An AAD-compatible token service for the client-credentials grant.
//!
//! adal (behind msrestazure's `ServicePrincipalCredentials`) posts to `{authority}/oauth2/token`;
//! with an authority ending in `/adfs` it skips instance discovery, so clients use
//! `https://host/adfs` and post to `/adfs/oauth2/token` (the `{tenant}` route with tenant `adfs`). MSAL (azure-identity) reads the v2 OpenID configuration and posts to the v2 endpoint.
//! Errors use the OAuth2 shape (`error`, `error_description`), as those libraries expect.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::json;

use crate::{AppState, Scheme, auth};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/{tenant}/oauth2/token", post(token))
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/{tenant}/v2.0/.well-known/openid-configuration", get(openid_configuration))
        .route("/{tenant}/.well-known/openid-configuration", get(openid_configuration))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, axum::Json(json!({"error": error, "error_description": description}))).into_response()
}

/// The fields of a client-credentials request, from the form or a Basic header.
struct Grant {
    client_id: String,
    client_secret: String,
    /// v1 `resource` or v2 `scope` without `/.default`.
    audience: String,
}

fn parse_grant(headers: &HeaderMap, body: &[u8], v2: bool) -> Result<Grant, Box<Response>> {
    let mut grant_type = None;
    let (mut client_id, mut client_secret, mut audience) = (None, None, None);
    for (k, v) in form_urlencoded::parse(body) {
        match k.as_ref() {
            "grant_type" => grant_type = Some(v.into_owned()),
            "client_id" => client_id = Some(v.into_owned()),
            "client_secret" => client_secret = Some(v.into_owned()),
            "resource" if !v2 => audience = Some(v.into_owned()),
            "scope" if v2 => {
                let first = v.split_whitespace().next().unwrap_or_default().to_owned();
                audience = Some(first.trim_end_matches("/.default").to_owned());
            }
            _ => {}
        }
    }
    if let Some((id, secret)) = basic_credentials(headers) {
        client_id.get_or_insert(id);
        client_secret.get_or_insert(secret);
    }
    if grant_type.as_deref() != Some("client_credentials") {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Only the client_credentials grant is supported.",
        )));
    }
    let (Some(client_id), Some(client_secret)) = (client_id, client_secret) else {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_id and client_secret are required.",
        )));
    };
    let audience = audience.unwrap_or_else(|| "https://management.core.windows.net/".into());
    Ok(Grant { client_id, client_secret, audience })
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let raw = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = raw.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let dec = |s: &str| form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    Some((dec(id)?, dec(secret)?))
}

async fn issue(state: &AppState, scheme: Scheme, headers: &HeaderMap, body: &[u8], v2: bool) -> Response {
    let grant = match parse_grant(headers, body, v2) {
        Ok(g) => g,
        Err(res) => return *res,
    };
    let principal = match auth::check_client_secret(state.store.as_ref(), &grant.client_id, &grant.client_secret).await
    {
        Ok(Some(p)) => p,
        Ok(None) => {
            tracing::info!(client.id = %grant.client_id, "token request with bad client credentials");
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "AADSTS7000215: Invalid client secret or unknown client id.",
            );
        }
        Err(e) => return crate::Error::from(e).into_response(),
    };
    let base = crate::arm::base_url(state, scheme, headers);
    let issuer = format!("{base}/{}/", state.keys.tenant);
    let lifetime = state.settings.token_lifetime.as_secs() as i64;
    let (token, exp) = state.keys.issue(&grant.client_id, &principal.subscriptions, &grant.audience, &issuer, lifetime);
    let now = exp - lifetime;
    let body = if v2 {
        json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token})
    } else {
        json!({
            "token_type": "Bearer",
            "expires_in": lifetime.to_string(),
            "ext_expires_in": lifetime.to_string(),
            "expires_on": exp.to_string(),
            "not_before": now.to_string(),
            "resource": grant.audience,
            "access_token": token,
        })
    };
    let mut res = axum::Json(body).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    res
}

/// v1 (`resource`) and v2 (`scope`) token requests; the path says which.
async fn token(
    State(state): State<AppState>,
    axum::Extension(scheme): axum::Extension<Scheme>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let v2 = uri.path().ends_with("/oauth2/v2.0/token");
    issue(&state, scheme, &headers, &body, v2).await
}

async fn openid_configuration(
    State(state): State<AppState>,
    axum::Extension(scheme): axum::Extension<Scheme>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let base = crate::arm::base_url(&state, scheme, &headers);
    axum::Json(json!({
        "issuer": format!("{base}/{tenant}/v2.0"),
        "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
        "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/devicecode"),
        "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "response_types_supported": ["token"],
        "grant_types_supported": ["client_credentials"],
        "tenant_region_scope": null,
        "cloud_instance_name": "batchai.local",
    }))
    .into_response()
}
