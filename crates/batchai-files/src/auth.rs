//! Who may make a Files request: SharedKey signatures and shared access signatures (SAS).
//!
//! SharedKey is checked byte for byte the way the service checks it (`sdk-wire.md` §2): the
//! string to sign is rebuilt from the request as received — the path exactly as sent, so the
//! path-style account appears twice (`/acct/acct/share/…`) — and HMAC-SHA256'd with the
//! account's key. SAS tokens are checked for their signature, validity window, protocol, source
//! address, and whether their services, resource types and permissions cover the operation.

use std::collections::BTreeMap;
use std::net::IpAddr;

use axum::http::{HeaderMap, Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::error::{Result, StorageError};

/// How far a request's `x-ms-date` may be from the server's clock, as Azure allows.
const MAX_CLOCK_SKEW_SECS: i64 = 15 * 60;

/// The oldest SAS version whose string to sign we know.
const OLDEST_SAS_VERSION: &str = "2015-04-05";

/// Account SAS gained an (always empty for Files) encryption-scope line in this version.
const SAS_ENCRYPTION_SCOPE_VERSION: &str = "2020-12-06";

/// The level of the storage hierarchy an operation works on (account SAS `srt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Service,
    Share,
    Object,
}

/// What an operation needs from a SAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub level: Level,
    /// Any of these permission letters suffices.
    pub permissions: &'static str,
    /// Whether a file SAS (`sr=f`) can grant it.
    pub on_file: bool,
}

/// The request as authentication sees it.
pub struct Signed<'a> {
    pub method: &'a Method,
    /// The URI path exactly as sent (percent-encoded).
    pub raw_path: &'a str,
    /// Query parameters, decoded, in the order sent.
    pub query: &'a [(String, String)],
    pub headers: &'a HeaderMap,
    pub account: &'a str,
    /// The share and the path inside it, decoded (`None` for service-level requests).
    pub share: Option<&'a str>,
    pub path: &'a str,
    pub https: bool,
    pub peer: Option<IpAddr>,
}

/// Checks the request's credentials against `key` (the account key, raw bytes).
pub fn authorize(req: &Signed<'_>, key: &[u8], need: Need, now: DateTime<Utc>) -> Result<()> {
    if let Some(auth) = req.headers.get("authorization") {
        let auth = auth.to_str().map_err(|_| StorageError::auth("The Authorization header is malformed."))?;
        return shared_key(req, auth, key, now);
    }
    if req.query.iter().any(|(k, _)| k == "sig") {
        return sas(req, key, need, now);
    }
    Err(StorageError::new(
        StatusCode::UNAUTHORIZED,
        "NoAuthenticationInformation",
        "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.",
    ))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn mac(key: &[u8], text: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(text.as_bytes());
    mac
}

fn signature_matches(key: &[u8], text: &str, sig: &[u8]) -> bool {
    mac(key, text).verify_slice(sig).is_ok()
}

/// The SharedKey string to sign. `range` fills the Range slot, `culture_sort` orders the
/// `x-ms-*` headers as the service does (hyphens ignored first) instead of byte order: clients
/// differ on both (azure-storage-file 2.1.0 sorts by bytes, the 12.x SDKs like the service),
/// and they agree for every header name sent today.
fn string_to_sign(req: &Signed<'_>, range: &str, culture_sort: bool) -> String {
    let h = |name| header(req.headers, name);
    let length = match h("content-length") {
        "0" => "",
        other => other,
    };
    let mut s = format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
        req.method.as_str(),
        h("content-encoding"),
        h("content-language"),
        length,
        h("content-md5"),
        h("content-type"),
        h("date"),
        h("if-modified-since"),
        h("if-match"),
        h("if-none-match"),
        h("if-unmodified-since"),
        range,
    );
    let mut names: Vec<&str> = req.headers.keys().map(|k| k.as_str()).filter(|k| k.starts_with("x-ms-")).collect();
    if culture_sort {
        names.sort_by_key(|n| (n.replace('-', ""), n.to_string()));
    } else {
        names.sort_unstable();
    }
    for name in names {
        let values: Vec<&str> = req.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        s.push_str(name);
        s.push(':');
        s.push_str(&values.join(","));
        s.push('\n');
    }
    s.push('/');
    s.push_str(req.account);
    s.push_str(req.raw_path);
    let mut params: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (k, v) in req.query {
        params.entry(k.to_lowercase()).or_default().push(v);
    }
    for (k, mut vs) in params {
        vs.sort_unstable();
        s.push('\n');
        s.push_str(&k);
        s.push(':');
        s.push_str(&vs.join(","));
    }
    s
}

fn shared_key(req: &Signed<'_>, auth: &str, key: &[u8], now: DateTime<Utc>) -> Result<()> {
    let (scheme, cred) = auth.split_once(' ').unwrap_or((auth, ""));
    if scheme != "SharedKey" {
        return Err(StorageError::auth(format!(
            "The authorization scheme '{scheme}' is not supported; use SharedKey or a SAS."
        )));
    }
    let (account, sig) =
        cred.trim().rsplit_once(':').ok_or_else(|| StorageError::auth("The SharedKey credential is malformed."))?;
    if account != req.account {
        return Err(StorageError::auth(format!(
            "The SharedKey is for account '{account}' but the request is for '{}'.",
            req.account
        )));
    }
    let sig = STANDARD.decode(sig).map_err(|_| StorageError::auth("The signature is not valid base64."))?;
    check_date(req.headers, now)?;
    let range = header(req.headers, "range");
    let matches = [(range, false), (range, true), ("", false), ("", true)]
        .iter()
        .any(|&(range, culture)| signature_matches(key, &string_to_sign(req, range, culture), &sig));
    if !matches {
        return Err(StorageError::auth(
            "Server failed to authenticate the request. Make sure the value of Authorization header is formed \
             correctly including the signature.",
        ));
    }
    Ok(())
}

/// A signed request must be recent: a captured one cannot be replayed later.
fn check_date(headers: &HeaderMap, now: DateTime<Utc>) -> Result<()> {
    let raw = match header(headers, "x-ms-date") {
        "" => header(headers, "date"),
        d => d,
    };
    if raw.is_empty() {
        return Err(StorageError::auth("The request carries neither x-ms-date nor Date."));
    }
    let date = DateTime::parse_from_rfc2822(raw)
        .map_err(|_| StorageError::auth(format!("The request date '{raw}' is not an RFC 1123 date.")))?;
    if (now - date.with_timezone(&Utc)).num_seconds().abs() > MAX_CLOCK_SKEW_SECS {
        return Err(StorageError::auth(format!(
            "Request date header too old or too far in the future: '{raw}' (the server's time is {}).",
            now.format("%a, %d %b %Y %H:%M:%S GMT")
        )));
    }
    Ok(())
}

/// A SAS time: `2026-11-28T07:00:00Z`, with or without seconds or fractions, or a bare date.
fn parse_sas_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%MZ") {
        return Some(t.and_utc());
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc())
}

fn sas(req: &Signed<'_>, key: &[u8], need: Need, now: DateTime<Utc>) -> Result<()> {
    let q = |name: &str| req.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("");
    let denied = |code: &'static str, message: String| StorageError::new(StatusCode::FORBIDDEN, code, message);
    let version = q("sv");
    if version < OLDEST_SAS_VERSION {
        return Err(StorageError::auth(format!("SAS version (sv) '{version}' is not supported.")));
    }
    if !q("si").is_empty() {
        return Err(StorageError::auth("Stored access policies (si) are not supported by this server."));
    }
    let sig = STANDARD.decode(q("sig")).map_err(|_| StorageError::auth("The SAS signature is not valid base64."))?;
    let account_sas = !q("ss").is_empty();
    let text = if account_sas {
        let mut t = [req.account, q("sp"), q("ss"), q("srt"), q("st"), q("se"), q("sip"), q("spr"), version].join("\n");
        t.push('\n');
        if version >= SAS_ENCRYPTION_SCOPE_VERSION {
            t.push('\n');
        }
        t
    } else {
        let resource = match (q("sr"), req.share) {
            ("s", Some(share)) => format!("/file/{}/{share}", req.account),
            ("f", Some(share)) => format!("/file/{}/{share}/{}", req.account, req.path),
            (sr, _) => {
                return Err(StorageError::auth(format!("The SAS resource (sr) '{sr}' does not cover this request.")));
            }
        };
        [
            q("sp"),
            q("st"),
            q("se"),
            &resource,
            q("si"),
            q("sip"),
            q("spr"),
            version,
            q("rscc"),
            q("rscd"),
            q("rsce"),
            q("rscl"),
            q("rsct"),
        ]
        .join("\n")
    };
    if !signature_matches(key, &text, &sig) {
        return Err(StorageError::auth(
            "Signature did not match: the SAS token was altered or signed with another key.",
        ));
    }
    let expiry =
        parse_sas_time(q("se")).ok_or_else(|| StorageError::auth("The SAS expiry (se) is missing or malformed."))?;
    if now >= expiry {
        return Err(StorageError::auth(format!("Signed expiry time [{}] has to be after the current time.", q("se"))));
    }
    if !q("st").is_empty() {
        let start = parse_sas_time(q("st")).ok_or_else(|| StorageError::auth("The SAS start (st) is malformed."))?;
        if now < start {
            return Err(StorageError::auth(format!("Signed start time [{}] is in the future.", q("st"))));
        }
    }
    if q("spr") == "https" && !req.https {
        return Err(denied("AuthorizationProtocolMismatch", "This SAS allows HTTPS requests only.".into()));
    }
    if !q("sip").is_empty() && !ip_allowed(q("sip"), req.peer) {
        return Err(denied(
            "AuthorizationSourceIPMismatch",
            "This SAS does not allow requests from this address.".into(),
        ));
    }
    if account_sas {
        if !q("ss").contains('f') {
            return Err(denied(
                "AuthorizationServiceMismatch",
                "This SAS does not grant access to the File service.".into(),
            ));
        }
        let letter = match need.level {
            Level::Service => 's',
            Level::Share => 'c',
            Level::Object => 'o',
        };
        if !q("srt").contains(letter) {
            return Err(denied(
                "AuthorizationResourceTypeMismatch",
                "This SAS does not grant access to this resource type (srt).".into(),
            ));
        }
    } else if need.level == Level::Service || (q("sr") == "f" && !need.on_file) {
        return Err(denied(
            "AuthorizationResourceTypeMismatch",
            "This SAS does not grant access to this resource.".into(),
        ));
    }
    if !q("sp").chars().any(|c| need.permissions.contains(c)) {
        return Err(denied(
            "AuthorizationPermissionMismatch",
            format!(
                "This SAS's permissions (sp={}) do not allow this operation (needs one of '{}').",
                q("sp"),
                need.permissions
            ),
        ));
    }
    Ok(())
}

/// `sip`: one address or an inclusive range `a-b` (IPv4).
fn ip_allowed(sip: &str, peer: Option<IpAddr>) -> bool {
    let Some(peer) = peer else { return false };
    let parse = |s: &str| s.trim().parse::<IpAddr>().ok();
    match sip.split_once('-') {
        Some((a, b)) => match (parse(a), parse(b), peer) {
            (Some(IpAddr::V4(a)), Some(IpAddr::V4(b)), IpAddr::V4(p)) => a <= p && p <= b,
            _ => false,
        },
        None => parse(sip) == Some(peer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const KEY: &[u8] = b"0123456789abcdef";

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-28T07:00:00Z").unwrap().with_timezone(&Utc)
    }

    fn sign(text: &str) -> String {
        STANDARD.encode(mac(KEY, text).finalize().into_bytes())
    }

    fn request<'a>(headers: &'a HeaderMap, query: &'a [(String, String)], path: &'a str) -> Signed<'a> {
        static PUT: Method = Method::PUT;
        Signed {
            method: &PUT,
            raw_path: "/acct/share/dir/f%20x.txt",
            query,
            headers,
            account: "acct",
            share: Some("share"),
            path,
            https: false,
            peer: Some("127.0.0.1".parse().unwrap()),
        }
    }

    const OBJECT_WRITE: Need = Need { level: Level::Object, permissions: "w", on_file: true };

    /// The string azure-storage-file 2.1.0 signs for a put range (recorded from the client).
    #[test]
    fn shared_key_matches_the_sdk_string_to_sign() {
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("5"));
        h.insert("x-ms-date", HeaderValue::from_static("Sat, 28 Nov 2026 07:00:00 GMT"));
        h.insert("x-ms-version", HeaderValue::from_static("2019-02-02"));
        h.insert("x-ms-range", HeaderValue::from_static("bytes=0-4"));
        h.insert("x-ms-write", HeaderValue::from_static("update"));
        let query = vec![("comp".to_string(), "range".to_string())];
        let expected = "PUT\n\n\n5\n\n\n\n\n\n\n\n\nx-ms-date:Sat, 28 Nov 2026 07:00:00 GMT\nx-ms-range:bytes=0-4\n\
                        x-ms-version:2019-02-02\nx-ms-write:update\n/acct/acct/share/dir/f%20x.txt\ncomp:range";
        h.insert("authorization", HeaderValue::from_str(&format!("SharedKey acct:{}", sign(expected))).unwrap());
        let req = request(&h, &query, "dir/f x.txt");
        assert_eq!(string_to_sign(&req, "", false), expected);
        authorize(&req, KEY, OBJECT_WRITE, now()).unwrap();

        let e = authorize(&req, b"another key", OBJECT_WRITE, now()).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::FORBIDDEN, "AuthenticationFailed"));
        let later = now() + chrono::Duration::minutes(16);
        assert!(authorize(&req, KEY, OBJECT_WRITE, later).unwrap_err().message.contains("too old"));
    }

    #[test]
    fn no_credentials_is_401() {
        let h = HeaderMap::new();
        let e = authorize(&request(&h, &[], "dir/f x.txt"), KEY, OBJECT_WRITE, now()).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::UNAUTHORIZED, "NoAuthenticationInformation"));
    }

    fn sas_query(pairs: &[(&str, &str)], text: &str) -> Vec<(String, String)> {
        let mut q: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        q.push(("sig".into(), sign(text)));
        q
    }

    #[test]
    fn file_sas_is_checked_for_signature_expiry_and_permissions() {
        let h = HeaderMap::new();
        let fields = [("se", "2026-11-28T08:00:00Z"), ("sp", "rw"), ("sv", "2019-02-02"), ("sr", "f")];
        let text = "rw\n\n2026-11-28T08:00:00Z\n/file/acct/share/dir/f x.txt\n\n\n\n2019-02-02\n\n\n\n\n";
        let q = sas_query(&fields, text);
        let req = request(&h, &q, "dir/f x.txt");
        authorize(&req, KEY, OBJECT_WRITE, now()).unwrap();
        let late = now() + chrono::Duration::hours(2);
        assert!(authorize(&req, KEY, OBJECT_WRITE, late).unwrap_err().message.contains("expiry"));
        let delete = Need { level: Level::Object, permissions: "d", on_file: true };
        assert_eq!(authorize(&req, KEY, delete, now()).unwrap_err().code, "AuthorizationPermissionMismatch");
        let other = request(&h, &q, "dir/other.txt");
        assert_eq!(authorize(&other, KEY, OBJECT_WRITE, now()).unwrap_err().code, "AuthenticationFailed");
        let list = Need { level: Level::Share, permissions: "l", on_file: false };
        assert_eq!(authorize(&req, KEY, list, now()).unwrap_err().code, "AuthorizationResourceTypeMismatch");
    }

    #[test]
    fn account_sas_covers_services_and_resource_types() {
        let h = HeaderMap::new();
        let fields = [
            ("ss", "f"),
            ("srt", "co"),
            ("sp", "rwl"),
            ("se", "2026-11-28T08:00Z"),
            ("sv", "2021-08-06"),
            ("spr", "https,http"),
        ];
        let text = "acct\nrwl\nf\nco\n\n2026-11-28T08:00Z\n\nhttps,http\n2021-08-06\n\n";
        let q = sas_query(&fields, text);
        let req = request(&h, &q, "dir/f x.txt");
        authorize(&req, KEY, OBJECT_WRITE, now()).unwrap();
        let service = Need { level: Level::Service, permissions: "l", on_file: false };
        assert_eq!(authorize(&req, KEY, service, now()).unwrap_err().code, "AuthorizationResourceTypeMismatch");
    }

    #[test]
    fn sas_source_addresses() {
        let p = Some("10.0.0.5".parse().unwrap());
        assert!(ip_allowed("10.0.0.5", p));
        assert!(ip_allowed("10.0.0.1-10.0.0.9", p));
        assert!(!ip_allowed("10.0.0.6-10.0.0.9", p));
        assert!(!ip_allowed("10.0.0.5", None));
    }
}
