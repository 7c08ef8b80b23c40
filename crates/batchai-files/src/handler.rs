//! One Files request: which operation it is, whether its credentials allow it, doing it, and
//! the answer with the headers the service sends.

use std::io::SeekFrom;
use std::net::SocketAddr;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use batchai_core::range::{Span, parse_range};
use http_body_util::BodyExt;
use md5::{Digest, Md5};
use percent_encoding::percent_decode_str;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::auth::{Level, Need, Signed, authorize};
use crate::error::{Result, StorageError};
use crate::shares::{Loc, MAX_RANGE_BYTES, Page, Props, check_segment, check_share_name};
use crate::xml::{self, Listing, file_time, http_date};
use crate::{FilesState, PERMISSION_KEY, SERVICE_VERSION, SHARE_QUOTA_GIB};

/// Bytes read per chunk of a streamed download.
const CHUNK: usize = 1024 * 1024;

/// Downloads up to this size are read into memory at once.
const WHOLE_READ: u64 = 32 * 1024 * 1024;

/// Listings return at most this many entries per page, as the service does.
const MAX_PAGE: usize = 5000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    ListShares,
    CreateShare,
    DeleteShare,
    ShareProps,
    CreateDir,
    DeleteDir,
    DirProps,
    ListDir,
    CreateFile,
    PutRange,
    SetFileProps,
    GetFile,
    FileProps,
    DeleteFile,
}

impl Op {
    fn need(self) -> Need {
        let (level, permissions, on_file) = match self {
            Op::ListShares => (Level::Service, "l", false),
            Op::CreateShare => (Level::Share, "cw", false),
            Op::DeleteShare => (Level::Share, "d", false),
            Op::ShareProps => (Level::Share, "r", false),
            Op::ListDir => (Level::Share, "l", false),
            Op::CreateDir => (Level::Object, "cw", false),
            Op::DeleteDir => (Level::Object, "d", false),
            Op::DirProps => (Level::Object, "r", false),
            Op::CreateFile => (Level::Object, "cw", true),
            Op::PutRange | Op::SetFileProps => (Level::Object, "w", true),
            Op::GetFile | Op::FileProps => (Level::Object, "r", true),
            Op::DeleteFile => (Level::Object, "d", true),
        };
        Need { level, permissions, on_file }
    }
}

fn unsupported(what: &str) -> StorageError {
    StorageError::new(
        StatusCode::BAD_REQUEST,
        "UnsupportedQueryParameter",
        format!("{what} is not supported by this server."),
    )
}

/// Which operation a request is, from its method, `restype`, `comp` and depth.
fn route(method: &Method, restype: &str, comp: &str, has_share: bool, has_path: bool) -> Result<Op> {
    let op = match (method.as_str(), restype, comp, has_share, has_path) {
        ("GET", "", "list", false, _) => Op::ListShares,
        ("PUT", "share", "", true, false) => Op::CreateShare,
        ("DELETE", "share", "", true, false) => Op::DeleteShare,
        ("GET" | "HEAD", "share", "", true, false) => Op::ShareProps,
        ("GET", "directory", "list", true, _) => Op::ListDir,
        ("PUT", "directory", "", true, true) => Op::CreateDir,
        ("DELETE", "directory", "", true, true) => Op::DeleteDir,
        ("GET" | "HEAD", "directory", "", true, _) => Op::DirProps,
        ("PUT", "", "", true, true) => Op::CreateFile,
        ("PUT", "", "range", true, true) => Op::PutRange,
        ("PUT", "", "properties", true, true) => Op::SetFileProps,
        ("GET", "", "", true, true) => Op::GetFile,
        ("HEAD", "", "", true, true) => Op::FileProps,
        ("DELETE", "", "", true, true) => Op::DeleteFile,
        (_, _, c, _, _) if !c.is_empty() => return Err(unsupported(&format!("comp={c}"))),
        _ => {
            return Err(StorageError::new(
                StatusCode::BAD_REQUEST,
                "InvalidUri",
                "The requested URI does not represent any resource on the server.",
            ));
        }
    };
    Ok(op)
}

/// The parts of a path-style URI: account, share, path segments, checked. The path is decoded
/// before it is split: the 12.x SDK sends the `/` of a directory path as `%2F`.
fn parse_path(raw: &str) -> Result<(String, Option<String>, Vec<String>)> {
    let decoded =
        percent_decode_str(raw).decode_utf8().map_err(|_| StorageError::bad_name("a path that is not UTF-8"))?;
    // A trailing slash (`/acct/?comp=list`) names the same thing as none.
    let mut parts =
        decoded.trim_start_matches('/').strip_suffix('/').unwrap_or(decoded.trim_start_matches('/')).split('/');
    let account = parts.next().filter(|a| !a.is_empty()).ok_or_else(|| StorageError::bad_name("an empty account"))?;
    let share = parts.next().map(str::to_owned);
    if let Some(s) = &share {
        check_share_name(s)?;
    }
    let segments: Vec<String> = parts.map(str::to_owned).collect();
    for s in &segments {
        check_segment(s)?;
    }
    Ok((account.to_owned(), share, segments))
}

fn header_str<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// `bytes=a-b` from `x-ms-range` (or `Range`), both ends required, as Put Range wants.
fn write_range(h: &HeaderMap) -> Result<(u64, u64)> {
    let (name, raw) = match (header_str(h, "x-ms-range"), header_str(h, "range")) {
        (Some(r), _) => ("x-ms-range", r),
        (None, Some(r)) => ("Range", r),
        (None, None) => return Err(StorageError::missing_header("x-ms-range")),
    };
    let bad = || StorageError::bad_header(name, "must be bytes=<start>-<end>");
    let (a, b) = raw.trim().strip_prefix("bytes=").and_then(|r| r.split_once('-')).ok_or_else(bad)?;
    let (a, b): (u64, u64) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if a > b {
        return Err(bad());
    }
    if b - a + 1 > MAX_RANGE_BYTES {
        return Err(StorageError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestBodyTooLarge",
            "A range may hold at most 4 MiB.",
        ));
    }
    Ok((a, b))
}

fn content_length(h: &HeaderMap, name: &str) -> Result<u64> {
    let raw = header_str(h, name).ok_or_else(|| StorageError::missing_header(name))?;
    raw.trim().parse().map_err(|_| StorageError::bad_header(name, "must be a number of bytes"))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StorageError::internal(&std::io::Error::other(e.to_string()))))
}

pub async fn handle(State(state): State<FilesState>, req: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let client_id = req.headers().get("x-ms-client-request-id").cloned();
    let version = req.headers().get("x-ms-version").cloned();
    let span = tracing::info_span!("files", request.id = %request_id, method = %req.method(), path = %req.uri().path());
    let mut res = match tracing::Instrument::instrument(serve(&state, req), span.clone()).await {
        Ok(res) => res,
        Err(e) => {
            span.in_scope(|| tracing::debug!(status = e.status.as_u16(), code = e.code, "refused"));
            e.into_response()
        }
    };
    let h = res.headers_mut();
    for (name, value) in [
        ("x-ms-request-id", HeaderValue::from_str(&request_id).ok()),
        ("x-ms-version", version.or(Some(HeaderValue::from_static(SERVICE_VERSION)))),
        ("x-ms-client-request-id", client_id),
        ("date", HeaderValue::from_str(&http_date(std::time::SystemTime::now())).ok()),
    ] {
        if let Some(v) = value {
            h.insert(HeaderName::from_static(name), v);
        }
    }
    res
}

async fn serve(state: &FilesState, req: Request) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let raw_path = parts.uri.path().to_owned();
    let query: Vec<(String, String)> = parts.uri.query().map(query_pairs).unwrap_or_default();
    let q = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("");
    let (account, share, segments) = parse_path(&raw_path)?;
    let op = route(&parts.method, q("restype"), q("comp"), share.is_some(), !segments.is_empty())?;
    if parts.headers.keys().any(|k| k.as_str().starts_with("x-ms-meta-")) {
        return Err(unsupported("Metadata (x-ms-meta-*)"));
    }
    let key = state
        .accounts
        .key(&account)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "reading a storage account");
            StorageError::internal(&std::io::Error::other("storage account unavailable"))
        })?
        .ok_or_else(|| StorageError::auth(format!("The storage account '{account}' does not exist on this server.")))?;
    let path = segments.join("/");
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let signed = Signed {
        method: &parts.method,
        raw_path: &raw_path,
        query: &query,
        headers: &parts.headers,
        account: &account,
        share: share.as_deref(),
        path: &path,
        https: state.https,
        peer,
    };
    authorize(&signed, &key, op.need(), chrono::Utc::now())?;

    let h = &parts.headers;
    let endpoint = {
        let scheme = if state.https { "https" } else { "http" };
        let host = header_str(h, "host").unwrap_or("localhost");
        format!("{scheme}://{host}/{account}/")
    };
    let shares = state.shares.clone();
    let loc = Loc { account: account.clone(), share: share.clone().unwrap_or_default(), segments };
    let max = q("maxresults").parse::<usize>().ok().filter(|&m| m > 0);
    let listing =
        |prefix: &str, marker: &str| (prefix.to_owned(), marker.to_owned(), max.unwrap_or(MAX_PAGE).min(MAX_PAGE));
    match op {
        Op::ListShares => {
            let (prefix, marker, limit) = listing(q("prefix"), q("marker"));
            let (p, m) = (prefix.clone(), marker.clone());
            let page = blocking(move || shares.list_shares(&account, &p, &m, limit)).await?;
            let l = Listing { service_endpoint: &endpoint, prefix: &prefix, marker: &marker, max_results: max };
            Ok(xml_response(xml::shares(&l, &page)))
        }
        Op::CreateShare => {
            let props = blocking(move || shares.create_share(&loc)).await?;
            Ok(entity(StatusCode::CREATED, &props))
        }
        Op::DeleteShare => {
            blocking(move || shares.delete_share(&loc)).await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
        Op::ShareProps => {
            let props = blocking(move || shares.share_props(&loc)).await?;
            let mut res = entity(StatusCode::OK, &props);
            res.headers_mut().insert("x-ms-share-quota", HeaderValue::from(SHARE_QUOTA_GIB));
            Ok(res)
        }
        Op::CreateDir => {
            let props = blocking(move || shares.create_dir(&loc)).await?;
            Ok(file_entity(StatusCode::CREATED, &props))
        }
        Op::DeleteDir => {
            blocking(move || shares.delete_dir(&loc)).await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
        Op::DirProps => {
            let (_, props) = blocking(move || match shares.props(&loc, true) {
                Err(e) if e.code == "ResourceNotFound" && loc.segments.is_empty() => {
                    Err(StorageError::share_not_found())
                }
                other => other,
            })
            .await?;
            Ok(file_entity(StatusCode::OK, &props))
        }
        Op::ListDir => {
            let (prefix, marker, limit) = listing(q("prefix"), q("marker"));
            let (p, m) = (prefix.clone(), marker.clone());
            let (share_name, dir_path) = (loc.share.clone(), loc.path());
            let (dir, page): (Props, Page) = blocking(move || {
                let page = shares.list_dir(&loc, &p, &m, limit)?;
                Ok((shares.props(&loc, true)?.1, page))
            })
            .await?;
            let l = Listing { service_endpoint: &endpoint, prefix: &prefix, marker: &marker, max_results: max };
            Ok(xml_response(xml::directory(&l, &share_name, &dir_path, &dir, &page)))
        }
        Op::CreateFile => {
            if header_str(h, "x-ms-type").is_some_and(|t| !t.eq_ignore_ascii_case("file")) {
                return Err(StorageError::bad_header("x-ms-type", "must be 'file'"));
            }
            let size = content_length(h, "x-ms-content-length")?;
            let lp = loc.clone();
            let props = blocking(move || shares.create_file(&lp, size)).await?;
            Ok(file_entity(StatusCode::CREATED, &props))
        }
        Op::PutRange => put_range(state, loc, h, body).await,
        Op::SetFileProps => {
            if let Some(size) = header_str(h, "x-ms-content-length") {
                let size = size
                    .trim()
                    .parse()
                    .map_err(|_| StorageError::bad_header("x-ms-content-length", "must be a number"))?;
                let (lp, sh) = (loc.clone(), shares.clone());
                blocking(move || sh.resize(&lp, size)).await?;
            }
            let (_, props) = blocking(move || shares.file(&loc)).await?;
            Ok(file_entity(StatusCode::OK, &props))
        }
        Op::GetFile | Op::FileProps => {
            let (file, props) = blocking(move || shares.file(&loc)).await?;
            get_file(file, &props, h, op == Op::FileProps, &query).await
        }
        Op::DeleteFile => {
            blocking(move || shares.delete_file(&loc)).await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
    }
}

/// Query parameters decoded as form data: azure-storage-file 2.1.0 sends a space as `+`.
fn query_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

async fn put_range(state: &FilesState, loc: Loc, h: &HeaderMap, mut body: Body) -> Result<Response> {
    let (start, end) = write_range(h)?;
    let clear = match header_str(h, "x-ms-write").map(str::to_ascii_lowercase).as_deref() {
        Some("update") => false,
        Some("clear") => true,
        Some(_) => return Err(StorageError::bad_header("x-ms-write", "must be update or clear")),
        None => return Err(StorageError::missing_header("x-ms-write")),
    };
    let want = if clear { 0 } else { end - start + 1 };
    let declared = content_length(h, "content-length")?;
    if declared != want {
        return Err(StorageError::bad_header(
            "Content-Length",
            &format!("must be {want} for this range and x-ms-write (it is {declared})"),
        ));
    }
    // The body is kept as the frames it arrived in: joining them into one buffer would copy
    // every byte once more on its way to the disk.
    let (mut frames, mut got) = (Vec::new(), 0u64);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            StorageError::new(StatusCode::BAD_REQUEST, "InvalidInput", "The body could not be read to its end.")
        })?;
        if let Ok(data) = frame.into_data() {
            got += data.len() as u64;
            if got > want {
                return Err(StorageError::new(
                    StatusCode::BAD_REQUEST,
                    "InvalidInput",
                    "The body is longer than Content-Length.",
                ));
            }
            frames.push(data);
        }
    }
    if got != want {
        return Err(StorageError::new(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            "The body is shorter than Content-Length.",
        ));
    }
    let sent_md5 = header_str(h, "content-md5").map(str::to_owned);
    if let Some(sent) = &sent_md5
        && !clear
    {
        let mut md5 = Md5::new();
        frames.iter().for_each(|f| md5.update(f));
        if STANDARD.encode(md5.finalize()) != sent.trim() {
            return Err(StorageError::new(
                StatusCode::BAD_REQUEST,
                "Md5Mismatch",
                "The MD5 value specified in the request did not match the MD5 value calculated by the server.",
            ));
        }
    }
    let shares = state.shares.clone();
    let props = blocking(move || shares.put_range(&loc, start, end, (!clear).then_some(&frames[..]))).await?;
    let mut res = entity(StatusCode::CREATED, &props);
    if let Some(m) = sent_md5.and_then(|m| HeaderValue::from_str(&m).ok()) {
        res.headers_mut().insert("content-md5", m);
    }
    res.headers_mut().insert("x-ms-request-server-encrypted", HeaderValue::from_static("false"));
    Ok(res)
}

async fn get_file(
    path: PathBuf,
    props: &Props,
    h: &HeaderMap,
    head: bool,
    query: &[(String, String)],
) -> Result<Response> {
    let len = props.len;
    let range = header_str(h, "x-ms-range").or_else(|| header_str(h, "range"));
    let (status, start, count) = match parse_range(range, len) {
        Span::Full => (StatusCode::OK, 0, len),
        Span::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Span::Unsatisfiable => {
            let mut res = StorageError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                "The range specified is invalid for the current size of the resource.",
            )
            .into_response();
            insert(&mut res, header::CONTENT_RANGE, format!("bytes */{len}"));
            return Ok(res);
        }
    };
    let want_md5 = header_str(h, "x-ms-range-get-content-md5").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if want_md5 && (status != StatusCode::PARTIAL_CONTENT || count > MAX_RANGE_BYTES) {
        return Err(StorageError::bad_header("x-ms-range-get-content-md5", "needs a range of at most 4 MiB"));
    }
    let mut md5 = None;
    let body = if head || count == 0 {
        Body::empty()
    } else if count <= WHOLE_READ {
        // The ranges clients download in (4 to 32 MiB) are read in one go: one trip to the
        // blocking pool instead of one per chunk, into spare capacity (`read_to_end` does not
        // zero it first).
        let buf = blocking(move || {
            use std::io::{Read, Seek};
            let mut buf = Vec::with_capacity(count as usize);
            let mut f = std::fs::File::open(&path).map_err(|e| StorageError::internal(&e))?;
            f.seek(SeekFrom::Start(start))
                .and_then(|_| f.take(count).read_to_end(&mut buf))
                .map_err(|e| StorageError::internal(&e))?;
            if (buf.len() as u64) < count {
                return Err(StorageError::internal(&std::io::Error::from(std::io::ErrorKind::UnexpectedEof)));
            }
            Ok(buf)
        })
        .await?;
        if want_md5 {
            md5 = Some(STANDARD.encode(Md5::digest(&buf)));
        }
        Body::from(buf)
    } else {
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| StorageError::internal(&e))?;
        file.seek(SeekFrom::Start(start)).await.map_err(|e| StorageError::internal(&e))?;
        // `take` keeps the body at the length announced even if a job is still appending.
        Body::from_stream(ReaderStream::with_capacity(file.take(count), CHUNK))
    };
    let mut res = file_entity(status, props);
    *res.body_mut() = body;
    let hs = res.headers_mut();
    hs.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    hs.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    hs.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    hs.insert("x-ms-type", HeaderValue::from_static("File"));
    if status == StatusCode::PARTIAL_CONTENT {
        insert(&mut res, header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", start + count - 1));
    }
    if let Some(m) = md5 {
        insert(&mut res, HeaderName::from_static("content-md5"), m);
    }
    // A service SAS may override response headers (rscc, rscd, rsce, rscl, rsct).
    for (param, name) in [
        ("rscc", header::CACHE_CONTROL),
        ("rscd", header::CONTENT_DISPOSITION),
        ("rsce", header::CONTENT_ENCODING),
        ("rscl", header::CONTENT_LANGUAGE),
        ("rsct", header::CONTENT_TYPE),
    ] {
        if let Some((_, v)) = query.iter().find(|(k, v)| k == param && !v.is_empty()) {
            insert(&mut res, name, v.clone());
        }
    }
    Ok(res)
}

fn insert(res: &mut Response, name: HeaderName, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        res.headers_mut().insert(name, v);
    }
}

fn empty(status: StatusCode) -> Response {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = status;
    res
}

fn xml_response(body: String) -> Response {
    let mut res = Response::new(Body::from(body));
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    res
}

/// ETag and Last-Modified: what every share, directory and file answer carries.
fn entity(status: StatusCode, p: &Props) -> Response {
    let mut res = empty(status);
    insert(&mut res, header::ETAG, p.etag());
    insert(&mut res, header::LAST_MODIFIED, http_date(p.modified));
    res
}

/// [`entity`] plus the SMB properties files and directories report.
fn file_entity(status: StatusCode, p: &Props) -> Response {
    let mut res = entity(status, p);
    let attributes = if p.is_dir { "Directory" } else { "Archive" };
    for (name, value) in [
        ("x-ms-file-attributes", attributes.to_string()),
        ("x-ms-file-creation-time", file_time(p.created)),
        ("x-ms-file-last-write-time", file_time(p.modified)),
        ("x-ms-file-change-time", file_time(p.modified)),
        ("x-ms-file-permission-key", PERMISSION_KEY.to_string()),
        ("x-ms-file-id", p.id.to_string()),
        ("x-ms-file-parent-id", "0".to_string()),
        ("x-ms-server-encrypted", "false".to_string()),
        ("x-ms-request-server-encrypted", "false".to_string()),
    ] {
        insert(&mut res, HeaderName::from_static(name), value);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_account_share_and_checked_segments() {
        assert_eq!(parse_path("/acct").unwrap(), ("acct".into(), None, vec![]));
        assert_eq!(parse_path("/acct/").unwrap(), ("acct".into(), None, vec![]));
        assert_eq!(
            parse_path("/acct/share/dir/f%20x.txt").unwrap(),
            ("acct".into(), Some("share".into()), vec!["dir".into(), "f x.txt".into()])
        );
        assert_eq!(parse_path("/acct/share/a%2Fb").unwrap().2, ["a", "b"], "12.x sends directory paths so");
        for bad in [
            "/acct/share/..",
            "/acct/share/a/%2E%2E/b",
            "/acct/share/..%2F..%2Fx",
            "/acct/Share",
            "/acct/share/%FF",
            "/",
            "/acct/share//x",
        ] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn operations_route_by_method_and_query() {
        use Method as M;
        assert_eq!(route(&M::GET, "", "list", false, false).unwrap(), Op::ListShares);
        assert_eq!(route(&M::PUT, "share", "", true, false).unwrap(), Op::CreateShare);
        assert_eq!(route(&M::PUT, "directory", "", true, true).unwrap(), Op::CreateDir);
        assert_eq!(route(&M::GET, "directory", "list", true, false).unwrap(), Op::ListDir);
        assert_eq!(route(&M::PUT, "", "range", true, true).unwrap(), Op::PutRange);
        assert_eq!(route(&M::HEAD, "", "", true, true).unwrap(), Op::FileProps);
        assert_eq!(route(&M::PUT, "", "metadata", true, true).unwrap_err().code, "UnsupportedQueryParameter");
        assert_eq!(route(&M::POST, "", "", true, true).unwrap_err().code, "InvalidUri");
    }

    #[test]
    fn write_ranges_need_both_ends_and_at_most_4_mib() {
        let h = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-ms-range", HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(write_range(&h("bytes=0-4194303")).unwrap(), (0, 4194303));
        assert_eq!(write_range(&h("bytes=0-4194304")).unwrap_err().code, "RequestBodyTooLarge");
        for bad in ["bytes=5-1", "bytes=1-", "0-1", "bytes=a-b"] {
            assert_eq!(write_range(&h(bad)).unwrap_err().code, "InvalidHeaderValue", "{bad}");
        }
        assert_eq!(write_range(&HeaderMap::new()).unwrap_err().code, "MissingRequiredHeader");
    }
}
