//! Shares as directories: `{storage_root}/{account}/{share}/…`, the same directories clusters
//! and jobs mount, so what a client uploads is what a job reads and what a job writes can be
//! downloaded.
//!
//! Uploads are atomic. Azure's protocol has no commit (create a file of N bytes, then write
//! ranges), so a file is staged outside the share (`{storage_root}/.batchai-uploads/`) and
//! renamed into place, after an fsync, once ranges have covered all N bytes: a job or a reader
//! sees the previous version or the whole new one, never a half-written file. Staged uploads
//! are recorded on disk (the target and size in `{id}.json`, each written range appended to
//! `{id}.ranges`), so an upload survives a server restart and finishes after it.
//!
//! Every path is checked twice: names by Azure's rules (no `..`, no separators), and the
//! resolved path must stay inside the share once symlinks are followed (a job can leave a
//! symlink to anywhere in its share).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};

/// Where staged uploads live, under the storage root. Account names are lower-case letters
/// and digits, so no account directory can be called this.
const STAGING_DIR: &str = ".batchai-uploads";

/// Staged uploads nobody finished within this long are discarded at startup.
const ABANDONED_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// Azure's largest file.
pub const MAX_FILE_BYTES: u64 = 4 << 40;

/// Azure's largest range per Put Range.
pub const MAX_RANGE_BYTES: u64 = 4 << 20;

/// A validated location: an account's share and a path inside it (empty for the share itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub account: String,
    pub share: String,
    pub segments: Vec<String>,
}

impl Loc {
    /// `dir/file` inside the share.
    pub fn path(&self) -> String {
        self.segments.join("/")
    }

    pub fn name(&self) -> &str {
        self.segments.last().map(String::as_str).unwrap_or(&self.share)
    }
}

/// Azure's share names: 3–63 lower-case letters, digits and single hyphens, starting and
/// ending with a letter or digit.
pub fn check_share_name(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = (3..=63).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !name.contains("--");
    if ok { Ok(()) } else { Err(StorageError::bad_name(&format!("share name '{name}'"))) }
}

/// Azure's directory and file names: up to 255 characters, none of `"\/:|<>*?` or control
/// characters, and not `.` or `..`.
pub fn check_segment(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c.is_control() || "\"\\/:|<>*?".contains(c));
    if ok { Ok(()) } else { Err(StorageError::bad_name(&format!("'{name}'"))) }
}

/// What a listing or a properties request shows of a file or directory.
#[derive(Debug, Clone)]
pub struct Props {
    pub is_dir: bool,
    pub len: u64,
    pub modified: SystemTime,
    pub created: SystemTime,
    /// The inode: Azure's `x-ms-file-id`.
    pub id: u64,
}

impl Props {
    fn of(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        Self {
            is_dir: meta.is_dir(),
            len: if meta.is_dir() { 0 } else { meta.len() },
            modified,
            created: meta.created().unwrap_or(modified),
            id: meta.ino(),
        }
    }

    /// Changes whenever the content or its time does, as ETags must.
    pub fn etag(&self) -> String {
        let nanos = self.modified.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        format!("\"0x{:X}{:X}\"", nanos, self.len)
    }
}

/// One child in a listing.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub props: Props,
}

/// A page of a listing: entries from `marker` on, and where the next page starts.
#[derive(Debug, Clone)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub next_marker: Option<String>,
}

/// What a staged upload records about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UploadRecord {
    /// Relative to the storage root.
    target: PathBuf,
    size: u64,
}

struct Upload {
    staged: PathBuf,
    ranges_log: PathBuf,
    record: PathBuf,
    size: u64,
    /// Written byte ranges, half-open, sorted and merged.
    covered: Mutex<Vec<(u64, u64)>>,
}

impl Upload {
    fn complete(covered: &[(u64, u64)], size: u64) -> bool {
        covered.first().is_some_and(|&(a, b)| a == 0 && b >= size)
    }

    fn discard(&self) {
        for p in [&self.staged, &self.ranges_log, &self.record] {
            let _ = fs::remove_file(p);
        }
    }
}

/// Starts writing `len` bytes at `start` of a staged upload to disk without waiting, so the
/// fsync that publishes the upload finds little left to write instead of the whole file: the
/// disk works while later ranges are still on the wire. Linux starts writeback of the dirty
/// pages of a range on `POSIX_FADV_DONTNEED` (and drops only pages already clean); PostgreSQL
/// uses it the same way where `sync_file_range` is missing. Only a hint: errors are ignored.
fn start_writeback(f: &File, start: u64, len: u64) {
    let (Ok(start), Ok(len)) = (i64::try_from(start), i64::try_from(len)) else { return };
    let _ = nix::fcntl::posix_fadvise(f, start, len, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
}

/// Adds `[start, end)` to a sorted, merged list of ranges.
fn cover(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    ranges.push((start, end));
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(a, b) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    *ranges = merged;
}

fn io(e: std::io::Error) -> StorageError {
    StorageError::internal(&e)
}

fn missing(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

/// The file system behind the Files endpoint. Blocking: call it off the async threads.
pub struct Shares {
    root: PathBuf,
    staging: PathBuf,
    uploads: Mutex<HashMap<PathBuf, Arc<Upload>>>,
}

impl Shares {
    /// Opens the storage root, picking up uploads a previous run left unfinished.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let root = fs::canonicalize(root)?;
        let staging = root.join(STAGING_DIR);
        fs::create_dir_all(&staging)?;
        let shares = Self { root, staging, uploads: Mutex::new(HashMap::new()) };
        shares.resume_uploads()?;
        Ok(shares)
    }

    fn resume_uploads(&self) -> std::io::Result<()> {
        for entry in fs::read_dir(&self.staging)? {
            let path = entry?.path();
            let Some(id) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let upload = self.upload_paths(id, 0);
            let record: Option<UploadRecord> = fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let age = fs::metadata(&path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            let (Some(record), Some(age)) = (record, age) else {
                upload.discard();
                continue;
            };
            if age > ABANDONED_AFTER || !upload.staged.exists() {
                tracing::info!(target = %record.target.display(), "discarding an abandoned upload");
                upload.discard();
                continue;
            }
            let mut covered = Vec::new();
            for line in fs::read_to_string(&upload.ranges_log).unwrap_or_default().lines() {
                if let Some((a, b)) = line.split_once(' ')
                    && let (Ok(a), Ok(b)) = (a.parse(), b.parse())
                {
                    cover(&mut covered, a, b);
                }
            }
            let upload = Upload { size: record.size, covered: Mutex::new(covered), ..upload };
            self.uploads.lock().expect("uploads lock").insert(self.root.join(record.target), Arc::new(upload));
        }
        Ok(())
    }

    fn upload_paths(&self, id: &str, size: u64) -> Upload {
        Upload {
            staged: self.staging.join(id),
            ranges_log: self.staging.join(format!("{id}.ranges")),
            record: self.staging.join(format!("{id}.json")),
            size,
            covered: Mutex::new(Vec::new()),
        }
    }

    fn account_dir(&self, account: &str) -> PathBuf {
        self.root.join(account)
    }

    fn share_dir(&self, loc: &Loc) -> PathBuf {
        self.account_dir(&loc.account).join(&loc.share)
    }

    /// The share's real directory (`ShareNotFound` when it does not exist).
    fn share_real(&self, loc: &Loc) -> Result<PathBuf> {
        match fs::canonicalize(self.share_dir(loc)) {
            Ok(p) if p.is_dir() => Ok(p),
            Ok(_) => Err(StorageError::share_not_found()),
            Err(e) if missing(&e) => Err(StorageError::share_not_found()),
            Err(e) => Err(io(e)),
        }
    }

    /// The existing file or directory `loc` names, resolved, if it stays inside its share.
    fn existing(&self, loc: &Loc) -> Result<(PathBuf, fs::Metadata)> {
        let share = self.share_real(loc)?;
        let mut p = share.clone();
        p.extend(&loc.segments);
        let real = match fs::canonicalize(&p) {
            Ok(r) => r,
            Err(e) if missing(&e) => return Err(StorageError::not_found()),
            Err(e) => return Err(io(e)),
        };
        if !real.starts_with(&share) {
            return Err(StorageError::not_found());
        }
        let meta = fs::metadata(&real).map_err(io)?;
        Ok((real, meta))
    }

    /// Where a new entry `loc` goes: its parent must be an existing directory in the share.
    fn new_entry(&self, loc: &Loc) -> Result<PathBuf> {
        let (name, parents) = loc.segments.split_last().expect("an entry has a name");
        let parent = Loc { segments: parents.to_vec(), ..loc.clone() };
        let (dir, meta) = match self.existing(&parent) {
            Err(e) if e.code == "ResourceNotFound" => return Err(StorageError::parent_not_found()),
            other => other?,
        };
        if !meta.is_dir() {
            return Err(StorageError::parent_not_found());
        }
        Ok(dir.join(name))
    }

    pub fn list_shares(&self, account: &str, prefix: &str, marker: &str, max: usize) -> Result<Page> {
        let mut entries = Vec::new();
        match fs::read_dir(self.account_dir(account)) {
            Ok(rd) => {
                for e in rd.flatten() {
                    let Ok(name) = e.file_name().into_string() else { continue };
                    if check_share_name(&name).is_err() || !name.starts_with(prefix) || name.as_str() < marker {
                        continue;
                    }
                    if let Ok(meta) = fs::metadata(e.path())
                        && meta.is_dir()
                    {
                        entries.push(Entry { name, props: Props::of(&meta) });
                    }
                }
            }
            Err(e) if missing(&e) => {}
            Err(e) => return Err(io(e)),
        }
        Ok(page(entries, max))
    }

    pub fn create_share(&self, loc: &Loc) -> Result<Props> {
        fs::create_dir_all(self.account_dir(&loc.account)).map_err(io)?;
        match fs::create_dir(self.share_dir(loc)) {
            Ok(()) => self.share_props(loc),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(StorageError::new(
                StatusCode::CONFLICT,
                "ShareAlreadyExists",
                "The specified share already exists.",
            )),
            Err(e) => Err(io(e)),
        }
    }

    pub fn share_props(&self, loc: &Loc) -> Result<Props> {
        let dir = self.share_real(loc)?;
        Ok(Props::of(&fs::metadata(dir).map_err(io)?))
    }

    /// Moves the share out of sight at once and removes its files in the background.
    pub fn delete_share(&self, loc: &Loc) -> Result<()> {
        self.share_real(loc)?;
        let trash = self.staging.join(format!("deleted-{}", uuid::Uuid::new_v4()));
        fs::rename(self.share_dir(loc), &trash).map_err(io)?;
        let prefix = self.share_dir(loc);
        self.uploads.lock().expect("uploads lock").retain(|target, up| {
            let keep = !target.starts_with(&prefix);
            if !keep {
                up.discard();
            }
            keep
        });
        std::thread::spawn(move || {
            if let Err(e) = fs::remove_dir_all(&trash) {
                tracing::warn!(error = %e, path = %trash.display(), "removing a deleted share");
            }
        });
        Ok(())
    }

    pub fn create_dir(&self, loc: &Loc) -> Result<Props> {
        let path = self.new_entry(loc)?;
        match fs::create_dir(&path) {
            Ok(()) => Ok(Props::of(&fs::metadata(&path).map_err(io)?)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                if path.is_dir() {
                    Err(StorageError::new(
                        StatusCode::CONFLICT,
                        "ResourceAlreadyExists",
                        "The specified resource already exists.",
                    ))
                } else {
                    Err(StorageError::type_mismatch())
                }
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Properties of a directory (`dir = true`) or a file.
    pub fn props(&self, loc: &Loc, dir: bool) -> Result<(PathBuf, Props)> {
        let (path, meta) = self.existing(loc)?;
        if meta.is_dir() != dir {
            return Err(StorageError::not_found());
        }
        Ok((path, Props::of(&meta)))
    }

    pub fn delete_dir(&self, loc: &Loc) -> Result<()> {
        let (path, _) = self.props(loc, true)?;
        match fs::remove_dir(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => Err(StorageError::new(
                StatusCode::CONFLICT,
                "DirectoryNotEmpty",
                "The specified directory is not empty.",
            )),
            Err(e) => Err(io(e)),
        }
    }

    pub fn list_dir(&self, loc: &Loc, prefix: &str, marker: &str, max: usize) -> Result<Page> {
        let (path, _) = match self.props(loc, true) {
            Err(e) if e.code == "ResourceNotFound" && loc.segments.is_empty() => {
                return Err(StorageError::share_not_found());
            }
            other => other?,
        };
        let mut entries = Vec::new();
        for e in fs::read_dir(&path).map_err(io)?.flatten() {
            let Ok(name) = e.file_name().into_string() else { continue };
            if !name.starts_with(prefix) || name.as_str() < marker || check_segment(&name).is_err() {
                continue;
            }
            // Symlinks are followed only when they stay inside the share.
            let child = Loc { segments: [loc.segments.clone(), vec![name.clone()]].concat(), ..loc.clone() };
            if let Ok((_, meta)) = self.existing(&child)
                && (meta.is_dir() || meta.is_file())
            {
                entries.push(Entry { name, props: Props::of(&meta) });
            }
        }
        Ok(page(entries, max))
    }

    /// Starts an upload of `size` bytes to `loc`. An upload of nothing is published at once.
    /// The properties are the staged file's: what the finished file will have.
    pub fn create_file(&self, loc: &Loc, size: u64) -> Result<Props> {
        if size > MAX_FILE_BYTES {
            return Err(StorageError::bad_header("x-ms-content-length", "exceeds the largest file size (4 TiB)"));
        }
        let target = self.new_entry(loc)?;
        if target.is_dir() {
            return Err(StorageError::type_mismatch());
        }
        let id = uuid::Uuid::new_v4().to_string();
        let upload = self.upload_paths(&id, size);
        let staged = File::create(&upload.staged).map_err(io)?;
        staged.set_len(size).map_err(io)?;
        let props = Props::of(&staged.metadata().map_err(io)?);
        if size == 0 {
            return self.publish(&upload, &target).map(|()| props);
        }
        let rel = target.strip_prefix(&self.root).expect("shares live under the root").to_path_buf();
        let record = serde_json::to_vec(&UploadRecord { target: rel, size }).expect("serializable");
        fs::write(&upload.record, record).map_err(io)?;
        if let Some(old) = self.uploads.lock().expect("uploads lock").insert(target, Arc::new(upload)) {
            old.discard();
        }
        Ok(props)
    }

    fn publish(&self, upload: &Upload, target: &Path) -> Result<()> {
        File::open(&upload.staged).and_then(|f| f.sync_all()).map_err(io)?;
        let renamed = fs::rename(&upload.staged, target);
        upload.discard();
        match renamed {
            Ok(()) => Ok(()),
            Err(e) if missing(&e) => Err(StorageError::parent_not_found()),
            Err(e) => Err(io(e)),
        }
    }

    /// Writes `data` (the request body's frames, in order) at `start` (Put Range with
    /// `x-ms-write: update`), or zeros when `data` is `None` (`clear`), into the upload in flight
    /// for `loc` or else the existing file; returns the properties of what was written to.
    pub fn put_range<B: AsRef<[u8]>>(&self, loc: &Loc, start: u64, end: u64, data: Option<&[B]>) -> Result<Props> {
        let target = self.new_entry(loc)?;
        let upload = self.uploads.lock().expect("uploads lock").get(&target).cloned();
        let write = |f: &File| {
            match data {
                Some(frames) => {
                    let mut at = start;
                    for frame in frames {
                        let frame = frame.as_ref();
                        f.write_all_at(frame, at)?;
                        at += frame.len() as u64;
                    }
                }
                None => f.write_all_at(&vec![0u8; (end - start + 1) as usize], start)?,
            }
            Ok(())
        };
        let Some(upload) = upload else {
            let (path, props) = self.props(loc, false)?;
            check_end(end, props.len)?;
            let f = OpenOptions::new().write(true).open(path).map_err(io)?;
            write(&f).map_err(io)?;
            return Ok(Props::of(&f.metadata().map_err(io)?));
        };
        check_end(end, upload.size)?;
        let f = OpenOptions::new().write(true).open(&upload.staged).map_err(io)?;
        write(&f).map_err(io)?;
        start_writeback(&f, start, end + 1 - start);
        let props = Props::of(&f.metadata().map_err(io)?);
        let mut covered = upload.covered.lock().expect("coverage lock");
        cover(&mut covered, start, end + 1);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&upload.ranges_log)
            .and_then(|mut log| writeln!(log, "{start} {}", end + 1))
            .map_err(io)?;
        if Upload::complete(&covered, upload.size) {
            let mut uploads = self.uploads.lock().expect("uploads lock");
            // Only the upload still registered for the target is published; a newer Create
            // File has replaced (and discarded) an older one.
            if uploads.get(&target).is_some_and(|u| Arc::ptr_eq(u, &upload)) {
                uploads.remove(&target);
                drop(uploads);
                return self.publish(&upload, &target).map(|()| props);
            }
        }
        Ok(props)
    }

    /// The file to read for `loc`, with its properties.
    pub fn file(&self, loc: &Loc) -> Result<(PathBuf, Props)> {
        self.props(loc, false)
    }

    /// Deletes a file, and any upload in flight to it.
    pub fn delete_file(&self, loc: &Loc) -> Result<()> {
        let target = self.new_entry(loc)?;
        let pending = self.uploads.lock().expect("uploads lock").remove(&target);
        if let Some(up) = &pending {
            up.discard();
        }
        match self.props(loc, false) {
            Ok((path, _)) => fs::remove_file(path).map_err(io),
            Err(e) if e.code == "ResourceNotFound" && pending.is_some() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets a file's length (Set File Properties with `x-ms-content-length`).
    pub fn resize(&self, loc: &Loc, size: u64) -> Result<()> {
        if size > MAX_FILE_BYTES {
            return Err(StorageError::bad_header("x-ms-content-length", "exceeds the largest file size (4 TiB)"));
        }
        let (path, _) = self.props(loc, false)?;
        OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(size)).map_err(io)
    }
}

fn check_end(end: u64, len: u64) -> Result<()> {
    if end >= len {
        return Err(StorageError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "InvalidRange",
            format!("The range specified is invalid for the current size of the resource ({len} bytes)."),
        ));
    }
    Ok(())
}

fn page(mut entries: Vec<Entry>, max: usize) -> Page {
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let next_marker = if entries.len() > max { Some(entries[max].name.clone()) } else { None };
    entries.truncate(max);
    Page { entries, next_marker }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(path: &str) -> Loc {
        let segments = path.split('/').filter(|s| !s.is_empty()).map(String::from).collect();
        Loc { account: "acct".into(), share: "share".into(), segments }
    }

    fn open() -> (tempfile::TempDir, Shares) {
        let dir = tempfile::tempdir().unwrap();
        let shares = Shares::open(dir.path()).unwrap();
        shares.create_share(&loc("")).unwrap();
        (dir, shares)
    }

    #[test]
    fn names_follow_azure() {
        for ok in ["abc", "batchaiquickstart", "a-b-c", "x1"] {
            assert_eq!(check_share_name(ok).is_ok(), ok.len() >= 3, "{ok}");
        }
        for bad in ["Abc", "-ab", "ab-", "a--b", "a_b", "a.b"] {
            assert!(check_share_name(bad).is_err(), "{bad}");
        }
        for ok in ["f.txt", "with space", "ümlaut", ".hidden", "a..b"] {
            check_segment(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a\\b", "a:b", "a\0b", "a*"] {
            assert!(check_segment(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_upload_appears_only_when_every_byte_is_written() {
        let (dir, shares) = open();
        let f = loc("data.bin");
        shares.create_file(&f, 10).unwrap();
        assert_eq!(shares.file(&f).unwrap_err().code, "ResourceNotFound");
        shares.put_range(&f, 5, 9, Some(&[&b"56"[..], &b"789"[..]])).unwrap();
        shares.put_range(&f, 0, 2, Some(&[b"012"])).unwrap();
        assert!(shares.file(&f).is_err(), "bytes 3-4 still missing");
        assert!(shares.list_dir(&loc(""), "", "", 10).unwrap().entries.is_empty());
        shares.put_range::<&[u8]>(&f, 3, 4, None).unwrap();
        let (path, props) = shares.file(&f).unwrap();
        assert_eq!(props.len, 10);
        assert_eq!(fs::read(path).unwrap(), [&b"012"[..], &[0, 0], &b"56789"[..]].concat());
        assert_eq!(fs::read_dir(dir.path().join(STAGING_DIR)).unwrap().count(), 0, "nothing left staged");
        // An update of a published file writes in place; past its end is refused.
        shares.put_range(&f, 0, 0, Some(&[b"X"])).unwrap();
        assert_eq!(shares.put_range(&f, 9, 10, Some(&[b"ab"])).unwrap_err().code, "InvalidRange");
    }

    #[test]
    fn a_new_version_replaces_the_old_only_when_complete_and_survives_a_restart() {
        let (dir, shares) = open();
        let f = loc("v.txt");
        shares.create_file(&f, 3).unwrap();
        shares.put_range(&f, 0, 2, Some(&[b"old"])).unwrap();
        shares.create_file(&f, 3).unwrap();
        shares.put_range(&f, 0, 0, Some(&[b"n"])).unwrap();
        drop(shares);
        let shares = Shares::open(dir.path()).unwrap();
        assert_eq!(fs::read(shares.file(&f).unwrap().0).unwrap(), b"old");
        shares.put_range(&f, 1, 2, Some(&[b"ew"])).unwrap();
        assert_eq!(fs::read(shares.file(&f).unwrap().0).unwrap(), b"new");
    }

    #[test]
    fn paths_stay_inside_the_share() {
        let (dir, shares) = open();
        fs::write(dir.path().join("secret.txt"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("acct/share/up")).unwrap();
        assert_eq!(shares.file(&loc("up/secret.txt")).unwrap_err().code, "ResourceNotFound");
        assert_eq!(shares.create_file(&loc("up/new.txt"), 1).unwrap_err().code, "ParentNotFound");
        let names: Vec<String> =
            shares.list_dir(&loc(""), "", "", 10).unwrap().entries.into_iter().map(|e| e.name).collect();
        assert!(names.is_empty(), "the escaping symlink is not listed: {names:?}");
    }

    #[test]
    fn directories_and_listing_pages() {
        let (_dir, shares) = open();
        assert_eq!(shares.create_dir(&loc("a/b")).unwrap_err().code, "ParentNotFound");
        shares.create_dir(&loc("a")).unwrap();
        assert_eq!(shares.create_dir(&loc("a")).unwrap_err().code, "ResourceAlreadyExists");
        for name in ["a/x", "a/y", "a/z"] {
            shares.create_file(&loc(name), 0).unwrap();
        }
        let first = shares.list_dir(&loc("a"), "", "", 2).unwrap();
        assert_eq!(first.entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["x", "y"]);
        let next = first.next_marker.unwrap();
        let second = shares.list_dir(&loc("a"), "", &next, 2).unwrap();
        assert_eq!(second.entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["z"]);
        assert!(second.next_marker.is_none());
        assert_eq!(shares.delete_dir(&loc("a")).unwrap_err().code, "DirectoryNotEmpty");
        assert_eq!(shares.create_file(&loc("a"), 1).unwrap_err().code, "ResourceTypeMismatch");
    }

    #[test]
    fn deleting_a_share_hides_it_at_once() {
        let (_dir, shares) = open();
        shares.create_file(&loc("f"), 0).unwrap();
        shares.delete_share(&loc("")).unwrap();
        assert_eq!(shares.share_props(&loc("")).unwrap_err().code, "ShareNotFound");
        shares.create_share(&loc("")).unwrap();
        assert!(shares.list_dir(&loc(""), "", "", 10).unwrap().entries.is_empty());
    }
}
