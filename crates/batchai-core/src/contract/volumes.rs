//! Every mount volume of a cluster or job as a node makes it appear at
//! `<mount root>/<relativeMountPath>`, including the ones that are not directories of the storage
//! root: file servers (NFS exports an operator declared, or directories every node already has)
//! and unmanaged file systems.
//!
//! - a share, a blob container, or a file server whose export is a local path: a symlink;
//! - a file server exported over NFS: `mount -t nfs [-o <options>] <host>:<path>[/<sourceDirectory>] <dir>`,
//!   the reference's `mountOptions` replacing the declared ones;
//! - an unmanaged file system: `bash -c "<mountCommand> '<dir>'"` — Batch AI appended the mount
//!   path to the command, so `mount -t glusterfs 10.0.0.4:/gv0` mounts there.
//!
//! The server resolves each `fileServer.id` to its declared export when it hands a cluster or
//! job to a node ([`FileServerExport`]); a reference it could not resolve fails the mount here.

use std::path::{Component, Path, PathBuf};

use crate::contract::paths::{Mount, MountError, mount_sources};
use crate::ids::{Kind, ResourceRef};
use crate::models::{MountSettings, MountVolumes};
use crate::protocol::FileServerExport;

/// The address `mountSettings` shows for a file server whose export is a local path: the node's
/// own file system.
pub const LOCAL_ADDRESS: &str = "127.0.0.1";

/// What a file server's declaration names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// A directory already there, at this path, on every node (autofs, a cluster file system,
    /// or a single machine): linked like a share.
    Local(PathBuf),
    /// `host:/path`, mounted over NFS.
    Nfs { host: String, path: String },
}

fn no_control(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

fn clean_absolute(p: &str) -> bool {
    p.starts_with('/') && no_control(p) && !Path::new(p).components().any(|c| matches!(c, Component::ParentDir))
}

impl Export {
    /// `host:/path` (NFS; an IPv6 host in brackets, `[fd00::4]:/data`) or `/path` (local).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "'{raw}' is not a file server export: {why} (give host:/path for an NFS export, or an absolute \
                 path every node has)"
            )
        };
        if raw.starts_with('/') {
            return if clean_absolute(raw) { Ok(Export::Local(PathBuf::from(raw))) } else { Err(bad("a bad path")) };
        }
        let (host, path) = match raw.strip_prefix('[') {
            Some(rest) => {
                let (host, path) = rest.split_once("]:").ok_or_else(|| bad("an unclosed '['"))?;
                let ok = !host.is_empty() && host.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
                if !ok {
                    return Err(bad("a bad IPv6 address"));
                }
                (host, path)
            }
            None => {
                let (host, path) = raw.split_once(':').ok_or_else(|| bad("no ':' between host and path"))?;
                let ok = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c));
                if !ok {
                    return Err(bad("a bad host name"));
                }
                (host, path)
            }
        };
        if !clean_absolute(path) {
            return Err(bad("the path after ':' must be absolute, without '..'"));
        }
        Ok(Export::Nfs { host: host.to_owned(), path: path.to_owned() })
    }

    /// The read-only `mountSettings` of a file server with this export: the exported path as
    /// `mountPoint` and the NFS host as both addresses (there is no separate public address
    /// on-prem); a local path shows [`LOCAL_ADDRESS`].
    pub fn mount_settings(&self) -> MountSettings {
        let (point, host) = match self {
            Export::Local(p) => (p.to_string_lossy().into_owned(), LOCAL_ADDRESS.to_owned()),
            Export::Nfs { host, path } => (path.clone(), host.clone()),
        };
        MountSettings {
            mount_point: Some(point),
            file_server_public_ip: Some(host.clone()),
            file_server_internal_ip: Some(host),
        }
    }
}

/// Mount options as one `mount -o` argument: comma-separated, no spaces.
pub fn check_mount_options(options: &str) -> Result<(), String> {
    if options.trim().is_empty() || options.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("'{options}' is not a list of mount options (comma-separated, without spaces)"));
    }
    Ok(())
}

/// `sourceDirectory` as a relative path inside the export ('/'s at either end ignored);
/// `None` for the whole export.
pub fn source_directory(raw: &str) -> Result<Option<String>, String> {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(None);
    }
    let ok = no_control(trimmed) && trimmed.split('/').all(|s| !s.is_empty() && s != "." && s != "..");
    if !ok {
        return Err(format!("sourceDirectory '{raw}' must be a directory inside the export, without '..'"));
    }
    Ok(Some(trimmed.to_owned()))
}

/// How one volume appears under a mount root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Volume {
    /// A directory of this machine, linked: shares and containers under the storage root
    /// (created when missing), and file servers with a local export (which must exist).
    Link { mount: Mount, create: bool },
    /// `mount -t nfs [-o options] remote <dir>`.
    Nfs { relative_mount_path: String, remote: String, options: Option<String> },
    /// An unmanaged file system: `bash -c "<command> '<dir>'"`.
    Command { relative_mount_path: String, command: String },
}

impl Volume {
    pub fn relative_mount_path(&self) -> &str {
        match self {
            Volume::Link { mount, .. } => &mount.relative_mount_path,
            Volume::Nfs { relative_mount_path, .. } | Volume::Command { relative_mount_path, .. } => {
                relative_mount_path
            }
        }
    }
}

/// The case-folded key of a `fileServer.id`, as [`FileServerExport::key`] holds it.
pub fn file_server_key(id: &str) -> Option<String> {
    ResourceRef::parse_id(id, Kind::FileServer).ok().map(|r| r.key())
}

/// Every volume of `mounts`, in the order a node mounts them: shares, blob containers, file
/// servers (resolved through `servers`), unmanaged file systems.
pub fn volumes(
    mounts: &MountVolumes,
    storage_root: &Path,
    servers: &[FileServerExport],
) -> Result<Vec<Volume>, MountError> {
    let mut out: Vec<Volume> =
        mount_sources(mounts, storage_root)?.into_iter().map(|mount| Volume::Link { mount, create: true }).collect();
    for f in mounts.file_servers.iter().flatten() {
        let id = &f.file_server.id;
        let resolved = file_server_key(id).and_then(|key| servers.iter().find(|s| s.key == key));
        let server = resolved.ok_or_else(|| MountError::FileServerUnresolved(id.clone()))?;
        let export = Export::parse(&server.export).map_err(MountError::BadExport)?;
        let source = match &f.source_directory {
            Some(s) => source_directory(s).map_err(MountError::BadSourceDirectory)?,
            None => None,
        };
        let rel = f.relative_mount_path.clone();
        out.push(match export {
            Export::Local(path) => {
                let source = source.map_or_else(|| path.clone(), |s| path.join(s));
                Volume::Link { mount: Mount { relative_mount_path: rel, source }, create: false }
            }
            Export::Nfs { host, path } => {
                let host = if host.contains(':') { format!("[{host}]") } else { host };
                let path = match source {
                    Some(s) => format!("{}/{s}", path.trim_end_matches('/')),
                    None => path,
                };
                let options = f
                    .mount_options
                    .clone()
                    .filter(|o| !o.trim().is_empty())
                    .or_else(|| Some(server.mount_options.clone()).filter(|o| !o.trim().is_empty()));
                Volume::Nfs { relative_mount_path: rel, remote: format!("{host}:{path}"), options }
            }
        });
    }
    for u in mounts.unmanaged_file_systems.iter().flatten() {
        out.push(Volume::Command {
            relative_mount_path: u.relative_mount_path.clone(),
            command: u.mount_command.clone(),
        });
    }
    Ok(out)
}

/// The arguments of `mount` for an NFS volume mounted at `dir`.
pub fn nfs_mount_args(remote: &str, options: Option<&str>, dir: &Path) -> Vec<String> {
    let mut args = vec!["-t".to_owned(), "nfs".to_owned()];
    if let Some(o) = options {
        args.push("-o".to_owned());
        args.push(o.to_owned());
    }
    args.push(remote.to_owned());
    args.push(dir.to_string_lossy().into_owned());
    args
}

/// `s` as one word of a POSIX shell command line.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script `bash -c` runs for an unmanaged file system mounted at `dir`: the command with
/// the path appended as one more (quoted) word.
pub fn unmanaged_script(command: &str, dir: &Path) -> String {
    format!("{} {}", command.trim_end(), shell_quote(&dir.to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{FileServerReference, ResourceIdRef, UnmanagedFileSystemReference};

    const FS: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.BatchAI/workspaces/w/fileServers/NFS";

    fn server(export: &str, options: &str) -> FileServerExport {
        FileServerExport { key: file_server_key(FS).unwrap(), export: export.into(), mount_options: options.into() }
    }

    fn reference(rel: &str, source: Option<&str>, options: Option<&str>) -> MountVolumes {
        MountVolumes {
            file_servers: Some(vec![FileServerReference {
                file_server: ResourceIdRef { id: FS.to_lowercase().replace("fileservers", "FILESERVERS") },
                source_directory: source.map(Into::into),
                relative_mount_path: rel.into(),
                mount_options: options.map(Into::into),
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn exports_parse_as_nfs_or_local() {
        assert_eq!(
            Export::parse("nfs-1.lan:/export/data").unwrap(),
            Export::Nfs { host: "nfs-1.lan".into(), path: "/export/data".into() }
        );
        assert_eq!(Export::parse("[fd00::4]:/d").unwrap(), Export::Nfs { host: "fd00::4".into(), path: "/d".into() });
        assert_eq!(Export::parse("/mnt/shared").unwrap(), Export::Local("/mnt/shared".into()));
        for bad in ["", "data", "host:", "host:data", ":/x", "h st:/x", "/a/../b", "h:/a/../b", "[fd00::4/x", "a\n:/b"]
        {
            let e = Export::parse(bad).unwrap_err();
            assert!(e.contains("host:/path"), "{bad}: {e}");
        }
    }

    #[test]
    fn mount_settings_show_the_export() {
        let nfs = Export::parse("10.0.0.4:/mnt/data").unwrap().mount_settings();
        assert_eq!(nfs.mount_point.as_deref(), Some("/mnt/data"));
        assert_eq!(nfs.file_server_internal_ip.as_deref(), Some("10.0.0.4"));
        assert_eq!(nfs.file_server_public_ip.as_deref(), Some("10.0.0.4"));
        let local = Export::parse("/srv/data").unwrap().mount_settings();
        assert_eq!(local.mount_point.as_deref(), Some("/srv/data"));
        assert_eq!(local.file_server_internal_ip.as_deref(), Some(LOCAL_ADDRESS));
    }

    #[test]
    fn nfs_references_resolve_to_a_mount_command() {
        let v = volumes(&reference("nfs", Some("/sub/dir/"), None), Path::new("/s"), &[server("h:/export/", "vers=4")])
            .unwrap();
        assert_eq!(
            v,
            vec![Volume::Nfs {
                relative_mount_path: "nfs".into(),
                remote: "h:/export/sub/dir".into(),
                options: Some("vers=4".into())
            }]
        );
        // The reference's options replace the declared ones; none at all gives no -o.
        let v = volumes(&reference("nfs", None, Some("ro,hard")), Path::new("/s"), &[server("[fd00::4]:/", "vers=4")])
            .unwrap();
        let Volume::Nfs { remote, options, .. } = &v[0] else { panic!("{v:?}") };
        assert_eq!((remote.as_str(), options.as_deref()), ("[fd00::4]:/", Some("ro,hard")));
        assert_eq!(
            nfs_mount_args(remote, options.as_deref(), Path::new("/m/nfs")),
            ["-t", "nfs", "-o", "ro,hard", "[fd00::4]:/", "/m/nfs"]
        );
        let v = volumes(&reference("nfs", None, None), Path::new("/s"), &[server("h:/e", "")]).unwrap();
        let Volume::Nfs { remote, options, .. } = &v[0] else { panic!("{v:?}") };
        assert_eq!(nfs_mount_args(remote, options.as_deref(), Path::new("/m/nfs")), ["-t", "nfs", "h:/e", "/m/nfs"]);
    }

    #[test]
    fn local_exports_are_links_that_must_exist() {
        let v = volumes(&reference("data", Some("sub"), None), Path::new("/s"), &[server("/srv/data", "")]).unwrap();
        assert_eq!(
            v,
            vec![Volume::Link {
                mount: Mount { relative_mount_path: "data".into(), source: "/srv/data/sub".into() },
                create: false
            }]
        );
    }

    #[test]
    fn unresolved_or_hostile_references_fail() {
        let e = volumes(&reference("nfs", None, None), Path::new("/s"), &[]).unwrap_err();
        assert!(matches!(e, MountError::FileServerUnresolved(_)), "{e}");
        let e = volumes(&reference("nfs", Some("../etc"), None), Path::new("/s"), &[server("h:/e", "")]).unwrap_err();
        assert!(matches!(e, MountError::BadSourceDirectory(_)), "{e}");
        let e = volumes(&reference("nfs", None, None), Path::new("/s"), &[server("nonsense", "")]).unwrap_err();
        assert!(matches!(e, MountError::BadExport(_)), "{e}");
    }

    #[test]
    fn unmanaged_commands_get_the_path_appended_quoted() {
        let m = MountVolumes {
            unmanaged_file_systems: Some(vec![UnmanagedFileSystemReference {
                mount_command: "mount -t glusterfs 10.0.0.4:/gv0 ".into(),
                relative_mount_path: "gfs".into(),
            }]),
            ..Default::default()
        };
        let v = volumes(&m, Path::new("/s"), &[]).unwrap();
        let Volume::Command { command, relative_mount_path } = &v[0] else { panic!("{v:?}") };
        assert_eq!(relative_mount_path, "gfs");
        assert_eq!(
            unmanaged_script(command, Path::new("/m/it's here")),
            r"mount -t glusterfs 10.0.0.4:/gv0 '/m/it'\''s here'"
        );
    }

    #[test]
    fn options_and_source_directories() {
        assert!(check_mount_options("vers=4.1,hard").is_ok());
        for bad in ["", " ", "a b", "a\tb"] {
            assert!(check_mount_options(bad).is_err(), "{bad:?}");
        }
        assert_eq!(source_directory("/").unwrap(), None);
        assert_eq!(source_directory("a/b/").unwrap().as_deref(), Some("a/b"));
        for bad in ["a/../b", "..", "a//b", "./a"] {
            assert!(source_directory(bad).is_err(), "{bad}");
        }
    }
}
