//! Credentials: signed access tokens, long-lived API tokens, service principals.
//!
//! Access tokens are HS256 JWTs signed with a key kept in the store, so they survive restarts
//! and any server sharing the database accepts them. They carry the principal's subscriptions,
//! so checking one needs no database read; as with AAD, deleting a principal stops new tokens
//! at once and existing ones lapse at their expiry (`token_lifetime_secs`). Principal secrets and API tokens are 256
//! random bits shown once; only their SHA-256 is stored (a slow hash buys nothing for values of
//! that entropy, and a fast one keeps per-request checks cheap).

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use batchai_core::time::{Millis, now_millis};
use batchai_core::{ApiError, ErrorCode};
use batchai_store::{ApiToken, Principal, Store, StoreError};
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const SIGNING_KEY: &str = "jwt_signing_key";
const TENANT: &str = "tenant_id";
/// Prefix of API tokens, so they are recognisable in a leaked-secret scan.
pub const API_TOKEN_PREFIX: &str = "bai_";

/// The installation's signing key and tenant id.
pub struct Keys {
    signing_key: Vec<u8>,
    pub tenant: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("tenant", &self.tenant).finish_non_exhaustive()
    }
}

impl Keys {
    pub async fn load(store: &dyn Store) -> Result<Self, StoreError> {
        let fresh = STANDARD.encode(random_bytes());
        let key = store.meta_get_or_insert(SIGNING_KEY, &fresh).await?;
        let signing_key = STANDARD.decode(key).map_err(|e| StoreError::Corrupt(format!("signing key: {e}")))?;
        let tenant = store.meta_get_or_insert(TENANT, &uuid::Uuid::new_v4().to_string()).await?;
        Ok(Self { signing_key, tenant })
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.signing_key).expect("HMAC accepts any key length")
    }

    /// The key download links are signed with. Derived rather than the signing key itself, so
    /// a link signature can never pass for a token's, and every server sharing the database
    /// derives the same one.
    pub(crate) fn download_key(&self) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(b"batchai download links v1");
        mac.finalize().into_bytes().to_vec()
    }

    /// Signs an access token for `client_id`, valid for `subscriptions`.
    pub fn issue(
        &self,
        client_id: &str,
        subscriptions: &[String],
        audience: &str,
        issuer: &str,
        lifetime_secs: i64,
    ) -> (String, i64) {
        let now = now_millis() / 1000;
        let exp = now + lifetime_secs;
        let claims = Claims {
            aud: audience.to_owned(),
            iss: issuer.to_owned(),
            iat: now,
            nbf: now,
            exp,
            appid: client_id.to_owned(),
            oid: client_id.to_owned(),
            sub: client_id.to_owned(),
            tid: self.tenant.clone(),
            ver: "1.0".into(),
            subs: subscriptions.to_vec(),
        };
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signing_input = format!("{header}.{body}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        (format!("{signing_input}.{sig}"), exp)
    }

    /// Checks signature and lifetime; returns the caller the token was issued to.
    pub fn verify(&self, token: &str) -> Result<Caller, &'static str> {
        let mut parts = token.split('.');
        let (Some(h), Some(b), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err("the token is malformed");
        };
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or("the token header is malformed")?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err("the token is not signed by this server");
        }
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| "the token signature is malformed")?;
        let mut mac = self.mac();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(b.as_bytes());
        mac.verify_slice(&sig).map_err(|_| "the token signature is invalid")?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(b)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or("the token claims are malformed")?;
        let now = now_millis() / 1000;
        if claims.exp <= now {
            return Err("the token has expired");
        }
        if claims.nbf > now + 300 {
            return Err("the token is not valid yet");
        }
        Ok(Caller { client_id: claims.appid, subscriptions: claims.subs })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    aud: String,
    iss: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    appid: String,
    oid: String,
    sub: String,
    tid: String,
    ver: String,
    /// Subscriptions the principal may use (a batchai claim).
    #[serde(default)]
    subs: Vec<String>,
}

fn random_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b
}

/// A new random secret (URL-safe, 43 characters).
pub fn new_secret() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes())
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without an early exit, so timing says nothing about how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The principal whose client id and secret these are, if they match.
pub async fn check_client_secret(
    store: &dyn Store,
    client_id: &str,
    secret: &str,
) -> Result<Option<Principal>, StoreError> {
    let Some(p) = store.get_principal(client_id).await? else { return Ok(None) };
    Ok(constant_time_eq(hash_secret(secret).as_bytes(), p.secret_hash.as_bytes()).then_some(p))
}

/// Creates a service principal; returns it with its secret (shown once).
pub async fn create_principal(
    store: &dyn Store,
    name: &str,
    subscriptions: &[String],
) -> Result<(Principal, String), StoreError> {
    let now = now_millis();
    for s in subscriptions {
        store.ensure_subscription(s, now).await?;
    }
    let secret = new_secret();
    let p = Principal {
        client_id: uuid::Uuid::new_v4().to_string(),
        name: name.to_owned(),
        secret_hash: hash_secret(&secret),
        subscriptions: subscriptions.to_vec(),
        created_at: now,
    };
    store.create_principal(&p).await?;
    Ok((p, secret))
}

/// Creates an API token; returns it with its clear text (shown once).
pub async fn create_api_token(
    store: &dyn Store,
    name: &str,
    subscriptions: &[String],
    expires_at: Option<Millis>,
) -> Result<(ApiToken, String), StoreError> {
    let now = now_millis();
    for s in subscriptions {
        store.ensure_subscription(s, now).await?;
    }
    let token = format!("{API_TOKEN_PREFIX}{}", new_secret());
    let t = ApiToken {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_owned(),
        token_hash: hash_secret(&token),
        subscriptions: subscriptions.to_vec(),
        created_at: now,
        expires_at,
        revoked_at: None,
    };
    store.create_token(&t).await?;
    Ok((t, token))
}

/// Who is calling, and which subscriptions they may touch.
#[derive(Debug, Clone)]
pub struct Caller {
    pub client_id: String,
    pub subscriptions: Vec<String>,
}

impl Caller {
    /// 403 unless the caller may act on `subscription`.
    pub fn authorize(&self, subscription: &str, action: &str) -> Result<(), ApiError> {
        if self.subscriptions.iter().any(|s| s.eq_ignore_ascii_case(subscription)) {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::AuthorizationFailed,
            format!(
                "The client '{}' does not have authorization to perform action '{action}' over scope \
                 '/subscriptions/{subscription}' or the scope is invalid.",
                self.client_id
            ),
        ))
    }
}

fn unauthenticated(why: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidAuthenticationToken, format!("The access token is invalid: {why}."))
}

/// Authenticates the `Authorization: Bearer` header.
pub async fn authenticate(store: &dyn Store, keys: &Keys, headers: &HeaderMap) -> Result<Caller, crate::Error> {
    let raw = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthenticated("the Authorization header is missing"))?
        .to_str()
        .map_err(|_| unauthenticated("the Authorization header is not text"))?;
    let token = raw
        .strip_prefix("Bearer ")
        .or_else(|| raw.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthenticated("expected 'Bearer <token>'"))?;
    if token.starts_with(API_TOKEN_PREFIX) {
        let t = store.find_token(&hash_secret(token)).await?.ok_or_else(|| unauthenticated("unknown token"))?;
        if t.revoked_at.is_some() {
            return Err(unauthenticated("the token has been revoked").into());
        }
        if t.expires_at.is_some_and(|e| e <= now_millis()) {
            return Err(unauthenticated("the token has expired").into());
        }
        return Ok(Caller { client_id: format!("token:{}", t.id), subscriptions: t.subscriptions });
    }
    Ok(keys.verify(token).map_err(unauthenticated)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys { signing_key: vec![7; 32], tenant: "t".into() }
    }

    #[test]
    fn issued_tokens_verify() {
        let k = keys();
        let subs = vec!["s1".to_owned()];
        let (tok, _) = k.issue("client", &subs, "https://management.core.windows.net/", "iss", 60);
        let caller = k.verify(&tok).unwrap();
        assert_eq!((caller.client_id.as_str(), caller.subscriptions), ("client", subs));
    }

    #[test]
    fn tampered_expired_and_foreign_tokens_fail() {
        let k = keys();
        let (tok, _) = k.issue("client", &[], "aud", "iss", 60);
        let mut parts: Vec<&str> = tok.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"aud":"a","iss":"i","iat":0,"nbf":0,"exp":99999999999,"appid":"admin","oid":"admin","sub":"admin","tid":"t","ver":"1.0"}"#);
        parts[1] = &forged;
        assert_eq!(k.verify(&parts.join(".")).unwrap_err(), "the token signature is invalid");
        let (old, _) = k.issue("client", &[], "aud", "iss", -1);
        assert_eq!(k.verify(&old).unwrap_err(), "the token has expired");
        let other = Keys { signing_key: vec![8; 32], tenant: "t".into() };
        assert!(other.verify(&tok).is_err());
        assert!(k.verify("garbage").is_err());
        let none_alg = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), parts[1]);
        assert!(k.verify(&none_alg).is_err());
    }

    #[test]
    fn secrets_hash_stably_and_compare() {
        let s = new_secret();
        assert_eq!(s.len(), 43);
        assert_eq!(hash_secret(&s), hash_secret(&s));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
