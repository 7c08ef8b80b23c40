//! Paths of the job contract: the output segment, variable expansion and mount resolution.
//!
//! Azure file shares and blob containers are not mounted over the network here: a share
//! `https://{account}.file.core.windows.net/{share}` is the directory
//! `{storage_root}/{account}/{share}` and a container `{account}/{container}` the same, so a
//! share two clusters mount is one directory, and the server can read what jobs wrote there.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::models::MountVolumes;

/// `{sub}/{rg}/workspaces/{ws}/experiments/{exp}/jobs/{job}/{uid}` (§5.1). Names keep the
/// client's spelling.
pub fn job_output_segment(sub: &str, rg: &str, ws: &str, exp: &str, job: &str, uid: &str) -> String {
    format!("{sub}/{rg}/workspaces/{ws}/experiments/{exp}/jobs/{job}/{uid}")
}

/// Expands `$NAME` and `${NAME}` from `vars`; unknown names are left as written (the shell a
/// command runs in may still know them).
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&after[..end], end)
        };
        match vars.get(name).filter(|_| !name.is_empty()) {
            Some(v) => out.push_str(v),
            None => {
                out.push('$');
                out.push_str(&after[..consumed]);
            }
        }
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

/// One mounted volume: `relative_mount_path` under the mount root shows `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub relative_mount_path: String,
    pub source: PathBuf,
}

/// Why a mount volume cannot be provided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    #[error("azureFileUrl '{0}' is not of the form https://<account>.file.<suffix>/<share>")]
    BadFileUrl(String),
    #[error("'{0}' is not a valid storage account, share or container name")]
    BadName(String),
    #[error(
        "the file server {0} is not available to this node: it does not exist or was not created (is it \
         declared with `batchai admin file-server declare`?)"
    )]
    FileServerUnresolved(String),
    #[error("{0}")]
    BadExport(String),
    #[error("{0}")]
    BadSourceDirectory(String),
}

fn safe_name(s: &str) -> Result<&str, MountError> {
    let ok = !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok { Ok(s) } else { Err(MountError::BadName(s.to_string())) }
}

/// The share a file URL names: `(account, share)`, lower-cased as Azure treats them. Two
/// forms: Azure's host style `https://{account}.file.{suffix}/{share}`, and the path style of
/// a local Files endpoint, `http(s)://{host}:{port}/{account}/{share}` (what the quickstart
/// builds from `FileService.primary_endpoint`).
pub fn parse_file_url(url: &str) -> Result<(String, String), MountError> {
    let bad = || MountError::BadFileUrl(url.to_string());
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).ok_or_else(bad)?;
    let (host, path) = rest.split_once('/').ok_or_else(bad)?;
    let mut segments = path.trim_end_matches('/').split('/').filter(|s| !s.is_empty());
    let (account, share) = match host.split_once('.') {
        Some((account, domain)) if domain.starts_with("file.") => (account, segments.next()),
        _ => (segments.next().ok_or_else(bad)?, segments.next()),
    };
    let share = share.ok_or_else(bad)?;
    if account.is_empty() {
        return Err(bad());
    }
    Ok((safe_name(account)?.to_lowercase(), safe_name(share)?.to_lowercase()))
}

/// The shares and blob containers of `mounts` as directories under `storage_root` (file servers
/// and unmanaged file systems are elsewhere: [`crate::contract::volumes`]).
pub fn mount_sources(mounts: &MountVolumes, storage_root: &Path) -> Result<Vec<Mount>, MountError> {
    let mut out = Vec::new();
    for share in mounts.azure_file_shares.iter().flatten() {
        let (account, name) = parse_file_url(&share.azure_file_url)?;
        out.push(Mount {
            relative_mount_path: share.relative_mount_path.clone(),
            source: storage_root.join(account).join(name),
        });
    }
    for blob in mounts.azure_blob_file_systems.iter().flatten() {
        let account = safe_name(&blob.account_name)?.to_lowercase();
        let container = safe_name(&blob.container_name)?.to_lowercase();
        out.push(Mount {
            relative_mount_path: blob.relative_mount_path.clone(),
            source: storage_root.join(account).join(container),
        });
    }
    Ok(out)
}

/// Where `path` (already expanded, absolute on the node) lives under the storage root, if it
/// is inside one of `mounts` mounted at `mount_root`. Paths with `..` are refused.
pub fn on_mounts(path: &str, mount_root: &Path, mounts: &[Mount]) -> Option<PathBuf> {
    let path = Path::new(path);
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return None;
    }
    let rel = path.strip_prefix(mount_root).ok()?;
    mounts.iter().find_map(|m| {
        let inner = rel.strip_prefix(m.relative_mount_path.trim_matches('/')).ok()?;
        Some(m.source.join(inner))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{AzureBlobFileSystemReference, AzureFileShareReference};

    fn vars() -> BTreeMap<String, String> {
        [("AZ_BATCHAI_MOUNT_ROOT".to_string(), "/m".to_string()), ("X".into(), "x".into())].into_iter().collect()
    }

    #[test]
    fn expands_plain_and_braced_names_and_keeps_unknown_ones() {
        assert_eq!(expand("$AZ_BATCHAI_MOUNT_ROOT/afs", &vars()), "/m/afs");
        assert_eq!(expand("${X}y $X-z", &vars()), "xy x-z");
        assert_eq!(expand("$HOME/$ {X", &vars()), "$HOME/$ {X");
        assert_eq!(expand("cost $5 $", &vars()), "cost $5 $");
    }

    #[test]
    fn shares_and_containers_map_to_storage_directories() {
        let mounts = MountVolumes {
            azure_file_shares: Some(vec![AzureFileShareReference {
                account_name: "Acct".into(),
                azure_file_url: "https://Acct.file.core.windows.net/Share/".into(),
                relative_mount_path: "afs".into(),
                ..Default::default()
            }]),
            azure_blob_file_systems: Some(vec![AzureBlobFileSystemReference {
                account_name: "acct".into(),
                container_name: "data".into(),
                relative_mount_path: "bfs".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let m = mount_sources(&mounts, Path::new("/s")).unwrap();
        assert_eq!(m[0].source, Path::new("/s/acct/share"));
        assert_eq!(m[1].source, Path::new("/s/acct/data"));
        assert_eq!(on_mounts("/m/afs/a/b", Path::new("/m"), &m), Some(PathBuf::from("/s/acct/share/a/b")));
        assert_eq!(on_mounts("/m/bfs", Path::new("/m"), &m), Some(PathBuf::from("/s/acct/data")));
        assert_eq!(on_mounts("/m/afs/../x", Path::new("/m"), &m), None);
        assert_eq!(on_mounts("/tmp/afs", Path::new("/m"), &m), None);
        assert_eq!(on_mounts("/m/other", Path::new("/m"), &m), None);
    }

    #[test]
    fn file_urls_in_host_and_path_style() {
        let p = |u: &str| parse_file_url(u).unwrap();
        assert_eq!(p("https://acct.file.core.windows.net/share"), ("acct".into(), "share".into()));
        assert_eq!(p("https://127.0.0.1:10004/batchaidev/Share/"), ("batchaidev".into(), "share".into()));
        assert_eq!(p("http://files.example:10004/acct/share/dir"), ("acct".into(), "share".into()));
    }

    #[test]
    fn hostile_urls_are_refused() {
        for url in [
            "ftp://a/b",
            "https://a.file.core.windows.net/",
            "https://../x",
            "https://a.b/../c",
            "https://h:1/acct",
            "https://h/../x",
        ] {
            assert!(parse_file_url(url).is_err(), "{url}");
        }
    }
}
