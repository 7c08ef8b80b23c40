//! Shares on a node without the shared filesystem (`storage_mode = "staged"`).
//!
//! The node keeps its own copy of the shares under a local storage root. Before a job starts,
//! every share it can see (its cluster's mounts and its own) is brought up to date from the
//! server: files missing here or newer there are fetched; a local file newer than the server's
//! is never overwritten. While the job runs, and once more after it ends (before its exit is
//! reported), files that changed here since the last push are pushed to the server with their
//! modification time, so the server's copy, `listOutputFiles` and the Files endpoint see the
//! job's logs and outputs. Deletions are not propagated; see `docs/storage.md`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use batchai_core::protocol::StagedFile;
use futures_util::StreamExt;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::io::AsyncWriteExt;

/// Path segments keep only unreserved characters as they are.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// How often a running job's changes are pushed.
pub const PUSH_EVERY: Duration = Duration::from_secs(5);

/// One share on this node: `{local root}/{account}/{share}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Share {
    pub account: String,
    pub share: String,
}

/// What was last pushed or fetched of each file, by path under the local root.
type Seen = HashMap<PathBuf, (u64, SystemTime)>;

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("{0}")]
    Http(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StagingError {
    let context = context.into();
    move |source| StagingError::Io { context, source }
}

/// Talks to the server's agent-storage routes for this node.
pub struct Stager {
    http: reqwest::Client,
    base: String,
    credential: String,
    /// This node's storage root.
    pub local_root: PathBuf,
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for Stager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the credential.
        f.debug_struct("Stager").field("base", &self.base).field("local_root", &self.local_root).finish()
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn stat(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::symlink_metadata(path).ok().filter(|m| m.is_file())?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Every regular file under `dir` (symlinks not followed), as absolute paths.
fn local_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

impl Stager {
    pub fn new(http: reqwest::Client, base: &str, credential: &str, local_root: PathBuf) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            credential: credential.to_owned(),
            local_root,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn url(&self, share: &Share, path: &str) -> String {
        let mut url = format!(
            "{}/agent/v1/storage/{}/{}",
            self.base,
            utf8_percent_encode(&share.account, SEGMENT),
            utf8_percent_encode(&share.share, SEGMENT)
        );
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            url.push('/');
            url.extend(utf8_percent_encode(seg, SEGMENT));
        }
        url
    }

    fn share_dir(&self, share: &Share) -> PathBuf {
        self.local_root.join(&share.account).join(&share.share)
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, StagingError> {
        let res = req.bearer_auth(&self.credential).send().await.map_err(|e| StagingError::Http(e.to_string()))?;
        if !res.status().is_success() {
            let status = res.status();
            let body = res.text().await.unwrap_or_default();
            return Err(StagingError::Http(format!("{status}: {body}")));
        }
        Ok(res)
    }

    /// Brings the local copy of `share` up to date with the server's; returns the files fetched.
    pub async fn pull(&self, share: &Share) -> Result<usize, StagingError> {
        let listing: Vec<StagedFile> = self
            .call(self.http.get(self.url(share, "")))
            .await?
            .json()
            .await
            .map_err(|e| StagingError::Http(format!("unreadable listing: {e}")))?;
        let dir = self.share_dir(share);
        let mut fetched = 0;
        for f in listing {
            let local = dir.join(&f.path);
            let theirs = SystemTime::UNIX_EPOCH + Duration::from_millis(f.modified_ms.max(0) as u64);
            if stat(&local).is_some_and(|(_, mine)| mine >= theirs) {
                continue;
            }
            // Streamed into a temporary file beside the target, then renamed: a file of any size
            // costs no memory, and a reader never sees it half fetched.
            let res = self.call(self.http.get(self.url(share, &f.path))).await?;
            let parent = local.parent().expect("inside the share").to_path_buf();
            tokio::fs::create_dir_all(&parent).await.map_err(io(format!("creating {}", parent.display())))?;
            let temp = parent.join(format!(".batchai-fetch-{}", std::process::id()));
            let mut out = tokio::fs::File::create(&temp).await.map_err(io(format!("writing {}", temp.display())))?;
            let mut body = res.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| StagingError::Http(format!("fetching {}: {e}", f.path)))?;
                out.write_all(&chunk).await.map_err(io(format!("writing {}", temp.display())))?;
            }
            out.flush().await.map_err(io(format!("writing {}", temp.display())))?;
            let out = out.into_std().await;
            let target = local.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                out.set_modified(theirs)?;
                drop(out);
                std::fs::rename(&temp, &target)
            })
            .await
            .map_err(|e| StagingError::Http(e.to_string()))?
            .map_err(io(format!("writing {}", local.display())))?;
            self.seen.lock().expect("seen lock").insert(local, (f.size, theirs));
            fetched += 1;
        }
        // What is here now counts as seen: only what changes from now on is pushed.
        let mut seen = self.seen.lock().expect("seen lock");
        for path in local_files(&dir) {
            if let Some(s) = stat(&path) {
                seen.entry(path).or_insert(s);
            }
        }
        Ok(fetched)
    }

    /// Pushes the files of `share` that changed here since they were last seen; returns how
    /// many.
    pub async fn push(&self, share: &Share) -> Result<usize, StagingError> {
        let dir = self.share_dir(share);
        let listed = dir.clone();
        let files = tokio::task::spawn_blocking(move || local_files(&listed))
            .await
            .map_err(|e| StagingError::Http(e.to_string()))?;
        let mut pushed = 0;
        for path in files {
            let Some(now) = stat(&path) else { continue };
            if self.seen.lock().expect("seen lock").get(&path) == Some(&now) {
                continue;
            }
            let rel = path.strip_prefix(&dir).expect("listed under the share").to_string_lossy().into_owned();
            // Streamed to its end, whatever its size (chunked: a job may still be appending). If
            // the file changes meanwhile, its new state differs from `now` and the next push
            // sends it again.
            let file = tokio::fs::File::open(&path).await.map_err(io(format!("reading {}", path.display())))?;
            let req = self
                .http
                .put(self.url(share, &rel))
                .header("x-batchai-modified-ms", millis(now.1).to_string())
                .body(reqwest::Body::from(file));
            self.call(req).await?;
            self.seen.lock().expect("seen lock").insert(path, now);
            pushed += 1;
        }
        Ok(pushed)
    }
}

/// The shares the links under `roots` (the mount roots) point into, below `storage_root`.
pub fn linked_shares(roots: &[PathBuf], storage_root: &Path) -> Vec<Share> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_symlink()
                && let Ok(target) = std::fs::read_link(e.path())
                && let Ok(rel) = target.strip_prefix(storage_root)
            {
                let mut parts = rel.iter().filter_map(|p| p.to_str());
                if let (Some(account), Some(share)) = (parts.next(), parts.next()) {
                    out.push(Share { account: account.to_owned(), share: share.to_owned() });
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_found_from_the_mount_links() {
        let dir = tempfile::tempdir().unwrap();
        let (root, mounts) = (dir.path().join("storage"), dir.path().join("mounts"));
        std::fs::create_dir_all(mounts.join("nested")).unwrap();
        std::os::unix::fs::symlink(root.join("acct/share"), mounts.join("afs")).unwrap();
        std::os::unix::fs::symlink(root.join("acct/data"), mounts.join("nested/bfs")).unwrap();
        std::os::unix::fs::symlink("/elsewhere", mounts.join("other")).unwrap();
        let shares = linked_shares(&[mounts], &root);
        let names: Vec<(&str, &str)> = shares.iter().map(|s| (s.account.as_str(), s.share.as_str())).collect();
        assert_eq!(names, [("acct", "data"), ("acct", "share")]);
    }
}
