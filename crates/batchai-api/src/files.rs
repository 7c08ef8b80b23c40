//! Job output files: where a job's output directory lives, listing it for `listOutputFiles`,
//! and the download links that listing hands out.
//!
//! Real Batch AI answered with Azure Files SAS URLs; clients fetch them with a plain GET and no
//! credentials, and `az batchai job file stream` polls them with `Range: bytes=<n>-` until a
//! non-2xx says there is nothing new (`batchai-api.md` §5.4). Here the files live under the
//! storage root (`batchai_core::contract::paths`), and a link is
//! `{base}/files/{path under the storage root}?se={expiry}&sig={signature}`. The HMAC over the
//! path and the expiry is the whole authorization: links need no bearer token, work on every
//! server sharing the database (the key derives from the stored signing key), and lapse at
//! their expiry.

use std::collections::BTreeMap;
use std::io::{ErrorKind, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use batchai_core::contract::paths::{Mount, expand, mount_sources, on_mounts};
use batchai_core::models::{ClusterSpec, JobSpec, MountVolumes};
use batchai_core::range::{Span, parse_range};
use batchai_core::time::{now_millis, to_rfc3339_secs};
use batchai_core::{ApiError, ErrorCode};
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::AppState;

/// Where download links are served.
const PREFIX: &str = "/files/";

/// The id `listOutputFiles` uses for the stdout/stderr folder.
pub const STDOUTERR: &str = "stdouterr";

/// Stand-ins for the node's mount roots while resolving a prefix on the server: only the part
/// after them matters, and no real path starts with `@`.
const MOUNT_ROOT: &str = "/@mounts";
const JOB_MOUNT_ROOT: &str = "/@jobmounts";

/// Path segments keep only unreserved characters as they are, so a link reaches us unchanged
/// whatever re-quoting a client applies.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Bytes read per chunk of a download.
const CHUNK: usize = 64 * 1024;

/// No bearer authentication on these routes: the link's signature is the authorization.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/files/{*path}", get(download).head(download))
}

/// Why a listing or a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("The download link is not valid: {0}.")]
    BadLink(&'static str),
    #[error("The download link has expired.")]
    Expired,
    #[error("The file does not exist.")]
    NotFound,
    #[error("The range is not satisfiable for a file of {0} bytes.")]
    RangeNotSatisfiable(u64),
    #[error("directory must be a relative path inside the output directory.")]
    BadDirectory,
    #[error("file system error: {0}")]
    Io(#[from] std::io::Error),
}

impl FilesError {
    /// The status and ARM error a client gets. Link failures are 403 `AuthenticationFailed`, as
    /// Azure Storage answers a bad or expired SAS (the ARM table's 401 would suggest that a
    /// bearer token could help).
    fn status_and_error(&self) -> (StatusCode, ApiError) {
        let message = self.to_string();
        match self {
            FilesError::BadLink(_) | FilesError::Expired => {
                (StatusCode::FORBIDDEN, ApiError::new(ErrorCode::AuthenticationFailed, message))
            }
            FilesError::NotFound => (StatusCode::NOT_FOUND, ApiError::new(ErrorCode::ResourceNotFound, message)),
            FilesError::RangeNotSatisfiable(_) => {
                (StatusCode::RANGE_NOT_SATISFIABLE, ApiError::invalid("Range", message))
            }
            FilesError::BadDirectory => (StatusCode::BAD_REQUEST, ApiError::invalid("directory", message)),
            FilesError::Io(e) => {
                // The one place a file-system fault is logged; the client gets a generic message.
                tracing::error!(error = %e, "file system error");
                (StatusCode::INTERNAL_SERVER_ERROR, ApiError::internal())
            }
        }
    }
}

impl From<FilesError> for crate::Error {
    fn from(e: FilesError) -> Self {
        Self(e.status_and_error().1)
    }
}

impl IntoResponse for FilesError {
    fn into_response(self) -> Response {
        let (status, e) = self.status_and_error();
        let mut res = crate::error::envelope(&e);
        *res.status_mut() = status;
        if let FilesError::RangeNotSatisfiable(len) = self {
            insert(&mut res, header::CONTENT_RANGE, format!("bytes */{len}"));
            res.headers_mut().insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        }
        res
    }
}

fn insert(res: &mut Response, name: HeaderName, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        res.headers_mut().insert(name, v);
    }
}

/// Signs and checks download links with a key derived from the installation's signing key.
pub struct LinkSigner {
    key: Vec<u8>,
}

impl LinkSigner {
    pub fn new(key: Vec<u8>) -> Self {
        Self { key }
    }

    /// The MAC of `path \n expiry`. A path may hold a newline but the expiry holds only digits,
    /// so the input splits one way only.
    fn mac(&self, rel_path: &str, expires_at: i64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(rel_path.as_bytes());
        mac.update(b"\n");
        mac.update(expires_at.to_string().as_bytes());
        mac
    }

    /// `{base}/files/{rel_path, segment by segment percent-encoded}?se={expires_at}&sig=…`;
    /// `rel_path` is `/`-separated and relative to the storage root.
    pub fn sign(&self, base_url: &str, rel_path: &str, expires_at: i64) -> String {
        let encoded: Vec<String> = rel_path.split('/').map(|s| utf8_percent_encode(s, SEGMENT).to_string()).collect();
        let sig = URL_SAFE_NO_PAD.encode(self.mac(rel_path, expires_at).finalize().into_bytes());
        format!("{}{PREFIX}{}?se={expires_at}&sig={sig}", base_url.trim_end_matches('/'), encoded.join("/"))
    }

    /// Checks the `se` and `sig` of a link's `query` for `rel_path` at `now` (Unix seconds).
    /// The signature is checked first, so an edited expiry reads as a bad link.
    pub fn verify(&self, rel_path: &str, query: Option<&str>, now: i64) -> Result<(), FilesError> {
        let (mut se, mut sig) = (None, None);
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match k.as_ref() {
                "se" => se = Some(v.into_owned()),
                "sig" => sig = Some(v.into_owned()),
                _ => {}
            }
        }
        let expires_at: i64 = se
            .ok_or(FilesError::BadLink("the expiry (se) is missing"))?
            .parse()
            .map_err(|_| FilesError::BadLink("the expiry (se) is malformed"))?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig.ok_or(FilesError::BadLink("the signature (sig) is missing"))?)
            .map_err(|_| FilesError::BadLink("the signature (sig) is malformed"))?;
        self.mac(rel_path, expires_at)
            .verify_slice(&sig)
            .map_err(|_| FilesError::BadLink("the signature does not match"))?;
        if now >= expires_at {
            return Err(FilesError::Expired);
        }
        Ok(())
    }
}

/// The storage-root-relative path a link's URI path names, decoded; `None` for what no signed
/// link contains (another prefix, empty, `.` or `..` segments, NUL, `/` inside a segment).
fn link_path(uri_path: &str) -> Option<String> {
    let raw = uri_path.strip_prefix(PREFIX)?;
    let mut segments = Vec::new();
    for s in raw.split('/') {
        let decoded = percent_decode_str(s).decode_utf8().ok()?;
        if decoded.is_empty() || decoded == "." || decoded == ".." || decoded.contains(['/', '\0']) {
            return None;
        }
        segments.push(decoded.into_owned());
    }
    Some(segments.join("/"))
}

/// Missing, or a path through a file: the caller sees a 404 for both.
fn is_missing(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::InvalidFilename)
}

/// The regular file `rel` names under `storage_root`, if it exists and stays inside the root
/// once symlinks are followed (a job can write a symlink to anywhere on its share).
async fn resolve(storage_root: &Path, rel: &str) -> Result<(PathBuf, std::fs::Metadata), FilesError> {
    let missing = |e: std::io::Error| if is_missing(&e) { FilesError::NotFound } else { FilesError::Io(e) };
    let root = tokio::fs::canonicalize(storage_root).await.map_err(missing)?;
    let path = tokio::fs::canonicalize(root.join(rel)).await.map_err(missing)?;
    if !path.starts_with(&root) {
        return Err(FilesError::NotFound);
    }
    let meta = tokio::fs::metadata(&path).await.map_err(missing)?;
    if !meta.is_file() {
        return Err(FilesError::NotFound);
    }
    Ok((path, meta))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

async fn download(State(state): State<AppState>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    match serve(&state, &method, &uri, &headers).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    }
}

async fn serve(state: &AppState, method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Response, FilesError> {
    let rel = link_path(uri.path()).ok_or(FilesError::BadLink("the path is malformed"))?;
    LinkSigner::new(state.keys.download_key()).verify(&rel, uri.query(), now_millis() / 1000)?;
    let (path, meta) = resolve(&state.settings.storage_root, &rel).await?;
    let len = meta.len();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, count) = match parse_range(range, len) {
        Span::Full => (StatusCode::OK, 0, len),
        Span::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Span::Unsatisfiable => return Err(FilesError::RangeNotSatisfiable(len)),
    };
    let body = if *method == Method::HEAD || count == 0 {
        Body::empty()
    } else {
        let mut file = tokio::fs::File::open(&path).await?;
        file.seek(SeekFrom::Start(start)).await?;
        // `take` keeps the body at the length announced even if the job is still appending.
        Body::from_stream(ReaderStream::with_capacity(file.take(count), CHUNK))
    };
    let mut res = Response::new(body);
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(modified) = meta.modified() {
        insert(&mut res, header::LAST_MODIFIED, http_date(modified));
    }
    if status == StatusCode::PARTIAL_CONTENT {
        insert(&mut res, header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", start + count - 1));
    }
    Ok(res)
}

/// One child of a listed directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub is_dir: bool,
    /// Bytes; 0 for directories.
    pub len: u64,
    pub modified: SystemTime,
    /// `/`-separated path under the storage root: what a download link names.
    pub rel_path: String,
}

/// The canonical form of `p`, `None` when it does not exist.
fn canonical(p: &Path) -> Result<Option<PathBuf>, FilesError> {
    match std::fs::canonicalize(p) {
        Ok(c) => Ok(Some(c)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The immediate children of `dir/directory`, sorted by name. `dir` is an output directory
/// under `storage_root`; `directory` is the client's relative path inside it, refused when
/// absolute, when it climbs with `..`, or when a symlink takes it outside `dir`. A directory
/// that does not exist (yet) lists as empty. Children whose names are not UTF-8 (they cannot be
/// named in JSON), that are neither files nor directories, or that are symlinks out of the
/// storage root are left out. Blocking: run it off the async threads.
pub fn list_dir(storage_root: &Path, dir: &Path, directory: &str) -> Result<Vec<FileEntry>, FilesError> {
    if directory.contains('\0') || directory.split(['/', '\\']).any(|s| s == "..") {
        return Err(FilesError::BadDirectory);
    }
    let mut inner = PathBuf::new();
    for c in Path::new(directory).components() {
        match c {
            Component::Normal(s) => inner.push(s),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(FilesError::BadDirectory),
        }
    }
    let Some(root) = canonical(storage_root)? else { return Ok(Vec::new()) };
    let Some(base) = canonical(dir)? else { return Ok(Vec::new()) };
    if !base.starts_with(&root) {
        tracing::warn!(path = %dir.display(), "an output directory resolves outside the storage root; not listed");
        return Ok(Vec::new());
    }
    let Some(target) = canonical(&base.join(&inner))? else { return Ok(Vec::new()) };
    if !target.starts_with(&base) {
        return Err(FilesError::BadDirectory);
    }
    if !target.is_dir() {
        return Ok(Vec::new());
    }
    let Some(rel_dir) = target.strip_prefix(&root).ok().and_then(Path::to_str).map(str::to_owned) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&target)? {
        // Entries can vanish while a job runs; what cannot be read is simply not listed.
        let Ok(entry) = entry else { continue };
        let Ok(name) = entry.file_name().into_string() else { continue };
        let Ok(kind) = entry.file_type() else { continue };
        let path = entry.path();
        if kind.is_symlink() && !canonical(&path).ok().flatten().is_some_and(|p| p.starts_with(&root)) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if !meta.is_file() && !meta.is_dir() {
            continue;
        }
        let rel_path = if rel_dir.is_empty() { name.clone() } else { format!("{rel_dir}/{name}") };
        out.push(FileEntry {
            is_dir: meta.is_dir(),
            len: if meta.is_file() { meta.len() } else { 0 },
            modified: meta.modified().unwrap_or(UNIX_EPOCH),
            name,
            rel_path,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The volumes of `m` that live under the storage root. Mount kinds the server cannot read
/// (file servers, unmanaged file systems) are dropped rather than failing the others.
pub(crate) fn readable_mounts(m: Option<&MountVolumes>, storage_root: &Path) -> Vec<Mount> {
    let Some(m) = m else { return Vec::new() };
    let shares = MountVolumes {
        azure_file_shares: m.azure_file_shares.clone(),
        azure_blob_file_systems: m.azure_blob_file_systems.clone(),
        ..Default::default()
    };
    mount_sources(&shares, storage_root).unwrap_or_default()
}

/// Where output directory `dir_id` (an `outputDirectories` id, or `stdouterr`) of a job lives
/// under `storage_root` (§5.2): its prefix, expanded with the mount roots, then
/// `<segment>/stdouterr` or `<segment>/outputs[/<pathSuffix>]`. `None` when the prefix is not
/// on one of the cluster's or the job's shares or containers: Batch AI could list only those
/// (§5.4), and the server can read nothing else. `cluster` is `None` once the cluster is gone.
pub fn output_location(
    job: &JobSpec,
    cluster: Option<&ClusterSpec>,
    segment: &str,
    dir_id: &str,
    storage_root: &Path,
) -> Option<PathBuf> {
    let (prefix, tail) = if dir_id.eq_ignore_ascii_case(STDOUTERR) {
        (job.std_out_err_path_prefix.as_str(), STDOUTERR.to_owned())
    } else {
        let d = job.output_directories.iter().flatten().find(|d| d.id.eq_ignore_ascii_case(dir_id))?;
        let tail = match d.path_suffix.as_deref().map(|s| s.trim_matches('/')).filter(|s| !s.is_empty()) {
            Some(suffix) => format!("outputs/{suffix}"),
            None => "outputs".to_owned(),
        };
        (d.path_prefix.as_str(), tail)
    };
    let vars: BTreeMap<String, String> = [
        ("AZ_BATCHAI_MOUNT_ROOT".to_owned(), MOUNT_ROOT.to_owned()),
        ("AZ_BATCHAI_JOB_MOUNT_ROOT".to_owned(), JOB_MOUNT_ROOT.to_owned()),
    ]
    .into_iter()
    .collect();
    let path = format!("{}/{segment}/{tail}", expand(prefix, &vars).trim_end_matches('/'));
    let cluster_mounts =
        readable_mounts(cluster.and_then(|c| c.node_setup.as_ref()?.mount_volumes.as_ref()), storage_root);
    let job_mounts = readable_mounts(job.mount_volumes.as_ref(), storage_root);
    on_mounts(&path, Path::new(MOUNT_ROOT), &cluster_mounts)
        .or_else(|| on_mounts(&path, Path::new(JOB_MOUNT_ROOT), &job_mounts))
}

/// The wire `File` of an entry: files get a download link valid until `expires_at` and their
/// properties; directories only a name and type, as the service sent them.
pub fn render_entry(e: &FileEntry, signer: &LinkSigner, base_url: &str, expires_at: i64) -> Value {
    if e.is_dir {
        return json!({"name": e.name, "fileType": "directory"});
    }
    let modified_ms = e.modified.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    json!({
        "name": e.name,
        "fileType": "file",
        "downloadUrl": signer.sign(base_url, &e.rel_path, expires_at),
        "properties": {"lastModified": to_rfc3339_secs(modified_ms), "contentLength": e.len},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> LinkSigner {
        LinkSigner::new(vec![7; 32])
    }

    /// The path and query of a signed link.
    fn split(url: &str) -> (String, String) {
        let rest = url.strip_prefix("http://h:1").unwrap();
        let (path, query) = rest.split_once('?').unwrap();
        (path.to_owned(), query.to_owned())
    }

    #[test]
    fn signed_links_round_trip_and_encode_each_segment() {
        let s = signer();
        let rel = "acct/share/sub/rg/jobs/j/u u%/stdouterr/ünï.txt";
        let url = s.sign("http://h:1/", rel, 1_000);
        let (path, query) = split(&url);
        assert_eq!(path, "/files/acct/share/sub/rg/jobs/j/u%20u%25/stdouterr/%C3%BCn%C3%AF.txt");
        assert_eq!(link_path(&path).as_deref(), Some(rel));
        assert!(query.starts_with("se=1000&sig="), "{query}");
        s.verify(rel, Some(&query), 999).unwrap();
    }

    #[test]
    fn tampered_expired_and_foreign_links_fail() {
        let s = signer();
        let (_, query) = split(&s.sign("http://h:1", "a/b.txt", 1_000));
        let bad_link = |r: Result<(), FilesError>| matches!(r, Err(FilesError::BadLink(_)));
        assert!(bad_link(s.verify("a/c.txt", Some(&query), 10)), "tampered path");
        let later = query.replace("se=1000", "se=9000");
        assert!(bad_link(s.verify("a/b.txt", Some(&later), 10)), "tampered expiry");
        assert!(matches!(s.verify("a/b.txt", Some(&query), 1_000), Err(FilesError::Expired)), "expired at se");
        assert!(matches!(s.verify("a/b.txt", Some(&query), 5_000), Err(FilesError::Expired)));
        let other = LinkSigner::new(vec![8; 32]);
        assert!(bad_link(other.verify("a/b.txt", Some(&query), 10)), "another installation's key");
        for q in [None, Some("se=1000"), Some("sig=abc"), Some("se=x&sig=abc"), Some("se=1000&sig=!!")] {
            assert!(bad_link(s.verify("a/b.txt", q, 10)), "{q:?}");
        }
    }

    #[test]
    fn link_paths_refuse_what_no_link_contains() {
        for p in [
            "/files/a/../b",
            "/files/a/./b",
            "/files//a",
            "/files/a/",
            "/files/a%2Fb",
            "/files/a%00b",
            "/other/a",
            "/files/%FF",
        ] {
            assert_eq!(link_path(p), None, "{p}");
        }
        assert_eq!(link_path("/files/a/b%2E.txt").as_deref(), Some("a/b..txt"));
    }

    fn write(p: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    #[test]
    fn lists_children_sorted_and_refuses_escapes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("storage");
        let dir = root.join("acct/share/seg/stdouterr");
        write(&dir.join("stdout.txt"), b"hi\n");
        write(&dir.join("b/inner.txt"), b"x");
        write(&root.join("acct/share/elsewhere.txt"), b"y");
        write(&tmp.path().join("secret.txt"), b"s");
        std::os::unix::fs::symlink(tmp.path().join("secret.txt"), dir.join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), dir.join("up")).unwrap();
        std::os::unix::fs::symlink(root.join("acct/share"), dir.join("sibling")).unwrap();
        std::os::unix::fs::symlink(root.join("acct/share/elsewhere.txt"), dir.join("inside.txt")).unwrap();

        let all = list_dir(&root, &dir, ".").unwrap();
        let names: Vec<_> = all.iter().map(|e| (e.name.as_str(), e.is_dir, e.len)).collect();
        assert_eq!(
            names,
            [("b", true, 0), ("inside.txt", false, 1), ("sibling", true, 0), ("stdout.txt", false, 3)],
            "symlinks out of the storage root are left out"
        );
        assert_eq!(all[3].rel_path, "acct/share/seg/stdouterr/stdout.txt");
        let sub = list_dir(&root, &dir, "b/").unwrap();
        assert_eq!((sub.len(), sub[0].rel_path.as_str()), (1, "acct/share/seg/stdouterr/b/inner.txt"));
        assert!(list_dir(&root, &dir, "missing").unwrap().is_empty());
        assert!(list_dir(&root, &dir, "stdout.txt").unwrap().is_empty(), "a file is not a directory");
        assert!(list_dir(&root, &root.join("nothing/yet"), ".").unwrap().is_empty());
        for bad in ["../x", "/etc", "a/../../b", "..\\x", "a\0b", "up", "sibling", "up/storage"] {
            assert!(matches!(list_dir(&root, &dir, bad), Err(FilesError::BadDirectory)), "{bad}");
        }
    }

    #[tokio::test]
    async fn resolves_only_files_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("storage");
        write(&root.join("a/f.txt"), b"data");
        write(&tmp.path().join("secret.txt"), b"s");
        std::os::unix::fs::symlink(tmp.path().join("secret.txt"), root.join("a/leak.txt")).unwrap();
        assert_eq!(resolve(&root, "a/f.txt").await.unwrap().1.len(), 4);
        for rel in ["a/leak.txt", "a", "a/missing", "a/f.txt/x"] {
            assert!(matches!(resolve(&root, rel).await, Err(FilesError::NotFound)), "{rel}");
        }
    }

    fn job(prefix: &str, outputs: Value, job_mounts: Value) -> JobSpec {
        serde_json::from_value(json!({
            "cluster": {"id": "c"}, "nodeCount": 1, "stdOutErrPathPrefix": prefix,
            "outputDirectories": outputs, "mountVolumes": job_mounts,
        }))
        .unwrap()
    }

    #[test]
    fn output_locations_follow_the_prefix_onto_a_mount() {
        let cluster: ClusterSpec = serde_json::from_value(json!({
            "vmSize": "STANDARD_NC6", "userAccountSettings": {"adminUserName": "a"},
            "nodeSetup": {"mountVolumes": {
                "azureFileShares": [{"accountName": "acct", "azureFileUrl": "https://acct.file.core.windows.net/share",
                    "credentials": {}, "relativeMountPath": "afs"}],
                "unmanagedFileSystems": [{"mountCommand": "mount x", "relativeMountPath": "nfs"}]}}
        }))
        .unwrap();
        let job_mounts = json!({"azureBlobFileSystems": [{"accountName": "acct", "containerName": "box",
            "credentials": {}, "relativeMountPath": "bfs"}]});
        let outputs = json!([
            {"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs/", "pathSuffix": "Models"},
            {"id": "JOBOUT", "pathPrefix": "${AZ_BATCHAI_JOB_MOUNT_ROOT}/bfs/x"},
            {"id": "NFS", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/nfs"},
            {"id": "LOCAL", "pathPrefix": "/tmp"},
        ]);
        let j = job("$AZ_BATCHAI_MOUNT_ROOT/afs", outputs, job_mounts);
        let root = Path::new("/s");
        let at = |id: &str, c: Option<&ClusterSpec>| output_location(&j, c, "sub/rg/jobs/j/u", id, root);
        assert_eq!(at("stdouterr", Some(&cluster)), Some(PathBuf::from("/s/acct/share/sub/rg/jobs/j/u/stdouterr")));
        assert_eq!(at("model", Some(&cluster)), Some(PathBuf::from("/s/acct/share/sub/rg/jobs/j/u/outputs/Models")));
        assert_eq!(at("JOBOUT", None), Some(PathBuf::from("/s/acct/box/x/sub/rg/jobs/j/u/outputs")));
        assert_eq!(at("stdouterr", None), None, "the cluster and its mounts are gone");
        assert_eq!(at("NFS", Some(&cluster)), None, "the server cannot read unmanaged file systems");
        assert_eq!(at("LOCAL", Some(&cluster)), None, "not on a mount");
        assert_eq!(at("UNKNOWN", Some(&cluster)), None);
        let climbing = job("$AZ_BATCHAI_MOUNT_ROOT/afs/../..", json!([]), Value::Null);
        assert_eq!(output_location(&climbing, Some(&cluster), "s", "stdouterr", root), None);
    }

    #[test]
    fn entries_render_as_the_service_sent_them() {
        let s = signer();
        let file = FileEntry {
            name: "stdout.txt".into(),
            is_dir: false,
            len: 32,
            modified: UNIX_EPOCH + std::time::Duration::from_millis(1_506_558_139_500),
            rel_path: "a/stdout.txt".into(),
        };
        let v = render_entry(&file, &s, "http://h:1", 2_000_000_000);
        assert_eq!(v["properties"], json!({"lastModified": "2017-09-28T00:22:19Z", "contentLength": 32}));
        assert_eq!(v["fileType"], "file");
        assert!(v["downloadUrl"].as_str().unwrap().starts_with("http://h:1/files/a/stdout.txt?se=2000000000&sig="));
        let dir = FileEntry { name: "counters".into(), is_dir: true, len: 0, rel_path: "a/counters".into(), ..file };
        assert_eq!(render_entry(&dir, &s, "http://h:1", 0), json!({"name": "counters", "fileType": "directory"}));
    }
}
