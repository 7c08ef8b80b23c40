//! Shares for nodes without the shared filesystem (the agent's `storage_mode = "staged"`): the
//! agent fetches a job's inputs before it starts and pushes what the job writes during and
//! after it, through these routes, authenticated with the node's credential.
//!
//! - `GET /agent/v1/storage/{account}/{share}`: every file of the share as JSON
//!   (`[{path, size, modified_ms}]`), symlinks not followed;
//! - `GET /agent/v1/storage/{account}/{share}/{path}`: a file;
//! - `PUT /agent/v1/storage/{account}/{share}/{path}`: replaces a file atomically (staged beside
//!   the storage root, then renamed), with `x-batchai-modified-ms` as its modification time so
//!   both sides agree on what is newer.
//!
//! A node reaches only the shares and containers its current cluster and job mount.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use batchai_core::models::{ClusterSpec, JobSpec};
use batchai_core::protocol::StagedFile;
use batchai_core::{ApiError, ErrorCode};
use futures_util::TryStreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use crate::auth::hash_secret;
use crate::files::readable_mounts;
use crate::{AppState, Error};

/// Sent with a file pushed by an agent: its modification time on the node, in ms.
pub const MODIFIED_HEADER: &str = "x-batchai-modified-ms";

pub fn routes() -> Router<AppState> {
    Router::new().route("/agent/v1/storage/{*path}", get(read).put(write))
}

fn denied(msg: impl Into<String>) -> Error {
    ApiError::new(ErrorCode::AuthorizationFailed, msg).into()
}

fn io_error(e: std::io::Error) -> Error {
    // The one place such a fault is logged; the agent gets a generic message and retries.
    tracing::error!(error = %e, "agent storage");
    ApiError::internal().into()
}

/// The share directories the node may reach: those its cluster and its job mount.
async fn allowed(state: &AppState, headers: &HeaderMap) -> Result<Vec<PathBuf>, Error> {
    let credential = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::new(ErrorCode::AuthenticationFailed, "A node credential is required."))?;
    let Some(node) = state.store.node_by_credential(&hash_secret(credential)).await? else {
        return Err(ApiError::new(ErrorCode::AuthenticationFailed, "The node credential is unknown.").into());
    };
    let root = &state.settings.storage_root;
    let mut dirs = Vec::new();
    if let Some(key) = &node.cluster_key
        && let Some(spec) = state.store.get_resource(key).await?.and_then(|r| r.spec)
        && let Ok(spec) = serde_json::from_value::<ClusterSpec>(spec)
    {
        let volumes = spec.node_setup.as_ref().and_then(|s| s.mount_volumes.as_ref());
        dirs.extend(readable_mounts(volumes, root).into_iter().map(|m| m.source));
    }
    if let Some(key) = &node.job_key
        && let Some(spec) = state.store.get_resource(key).await?.and_then(|r| r.spec)
        && let Ok(spec) = serde_json::from_value::<JobSpec>(spec)
    {
        dirs.extend(readable_mounts(spec.mount_volumes.as_ref(), root).into_iter().map(|m| m.source));
    }
    Ok(dirs)
}

/// `{account}/{share}[/path]` checked: no empty, `.` or `..` segments; and the share it names
/// must be one of `allowed`. Returns the share directory and the path inside it.
fn locate(rel: &str, allowed: &[PathBuf], root: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let bad = || Error::from(ApiError::invalid("path", format!("'{rel}' is not a share path")));
    let mut parts = rel.split('/');
    let (account, share) = (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?);
    let inner: PathBuf = parts.collect::<Vec<_>>().join("/").into();
    let ok = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('\0');
    if !ok(account) || !ok(share) || inner.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(bad());
    }
    let dir = root.join(account.to_lowercase()).join(share.to_lowercase());
    if !allowed.contains(&dir) {
        return Err(denied(format!("This node's cluster and job do not mount {account}/{share}.")));
    }
    Ok((dir, inner))
}

/// Every regular file under `dir`, relative to it; symlinks are not followed.
fn walk(dir: &Path) -> std::io::Result<Vec<StagedFile>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let entries = match std::fs::read_dir(dir.join(&rel)) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            let child = rel.join(entry.file_name());
            if meta.is_dir() {
                stack.push(child);
            } else if meta.is_file()
                && let Some(path) = child.to_str()
            {
                let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                let modified_ms =
                    modified.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
                out.push(StagedFile { path: path.to_owned(), size: meta.len(), modified_ms });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

async fn read(
    State(state): State<AppState>,
    UrlPath(rel): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let allowed = allowed(&state, &headers).await?;
    let (dir, inner) = locate(&rel, &allowed, &state.settings.storage_root)?;
    if inner.as_os_str().is_empty() {
        let files = tokio::task::spawn_blocking(move || walk(&dir))
            .await
            .map_err(|e| io_error(std::io::Error::other(e.to_string())))?
            .map_err(io_error)?;
        return Ok(Json(files).into_response());
    }
    let path = dir.join(&inner);
    let not_found = || Error::from(ApiError::new(ErrorCode::ResourceNotFound, format!("No file {rel}.")));
    // A symlink a job left must not lead out of its share.
    let (real, share) = match (tokio::fs::canonicalize(&path).await, tokio::fs::canonicalize(&dir).await) {
        (Ok(r), Ok(s)) => (r, s),
        _ => return Err(not_found()),
    };
    if !real.starts_with(&share) || !real.is_file() {
        return Err(not_found());
    }
    let file = tokio::fs::File::open(&real).await.map_err(io_error)?;
    Ok(Body::from_stream(ReaderStream::with_capacity(file, 256 * 1024)).into_response())
}

async fn write(
    State(state): State<AppState>,
    UrlPath(rel): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let allowed = allowed(&state, &headers).await?;
    let root = state.settings.storage_root.clone();
    let (dir, inner) = locate(&rel, &allowed, &root)?;
    if inner.as_os_str().is_empty() {
        return Err(ApiError::invalid("path", "a file path inside the share is needed").into());
    }
    let modified = headers
        .get(MODIFIED_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
    let staging = root.join(".batchai-uploads");
    tokio::fs::create_dir_all(&staging).await.map_err(io_error)?;
    let temp = staging.join(format!("agent-{}", uuid::Uuid::new_v4()));
    let mut file = tokio::fs::File::create(&temp).await.map_err(io_error)?;
    let mut stream = body.into_data_stream();
    let copied: Result<(), std::io::Error> = async {
        while let Some(chunk) = stream.try_next().await.map_err(std::io::Error::other)? {
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok(())
    }
    .await;
    if let Err(e) = copied {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(ApiError::invalid("body", format!("the upload did not complete: {e}")).into());
    }
    let file = file.into_std().await;
    let target = dir.join(&inner);
    let placed = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        file.sync_all()?;
        if let Some(t) = modified {
            file.set_modified(t)?;
        }
        drop(file);
        let parent = target.parent().expect("a file inside the share has a parent");
        std::fs::create_dir_all(parent)?;
        // The parent, once it exists, must still be inside the share (not a job's symlink).
        let (real_parent, real_share) = (std::fs::canonicalize(parent)?, std::fs::canonicalize(&dir)?);
        if !real_parent.starts_with(&real_share) {
            return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "outside the share"));
        }
        std::fs::rename(&temp, real_parent.join(target.file_name().expect("named")))
    })
    .await
    .map_err(|e| io_error(std::io::Error::other(e.to_string())))?;
    match placed {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(denied(format!("{rel} leaves its share."))),
        Err(e) => Err(io_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_an_allowed_share_and_stay_in_it() {
        let root = Path::new("/s");
        let allowed = vec![PathBuf::from("/s/acct/share")];
        let (dir, inner) = locate("acct/share/a/b.txt", &allowed, root).unwrap();
        assert_eq!((dir, inner), (PathBuf::from("/s/acct/share"), PathBuf::from("a/b.txt")));
        assert_eq!(locate("Acct/Share", &allowed, root).unwrap().1, PathBuf::new());
        for bad in ["acct", "acct/share/../x", "acct/share/./x", "../acct/share", "acct/other/x", "acct/share//x"] {
            assert!(locate(bad, &allowed, root).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_walk_lists_files_but_follows_no_symlink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f.txt"), "xy").unwrap();
        std::fs::write(dir.path().join("top"), "").unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();
        let files = walk(dir.path()).unwrap();
        let got: Vec<(&str, u64)> = files.iter().map(|f| (f.path.as_str(), f.size)).collect();
        assert_eq!(got, [("a/b/f.txt", 2), ("top", 0)]);
    }
}
