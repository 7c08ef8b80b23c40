//! Preparing the node for its cluster: the cluster's mount volumes and its setup task.
//!
//! Shares and containers are not network mounts: each is a directory under the storage root
//! ([`paths::mount_sources`]) and "mounting" it is a symlink `mount_root/<relativeMountPath>` →
//! that directory; so is a file server whose export is a local path. File servers exported over
//! NFS and unmanaged file systems are real mounts ([`crate::mounts`]). The same code serves
//! job-level mounts under a job's mount root.
//!
//! The setup task runs once per allocation (`alloc_epoch`), as a process of the runtime, and
//! logs to `P(stdOutErrPathPrefix)/<stdOutErrPathSuffix>/stdout-<nodeId>.txt` and
//! `stderr-<nodeId>.txt`, the files the CLI lists for a cluster's nodes.

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use batchai_core::contract::paths::{self, Mount};
use batchai_core::contract::volumes::{self, Volume};
use batchai_core::models::{MountVolumes, SetupTask};
use batchai_core::protocol::FileServerExport;
use batchai_core::protocol::{ClusterAssignment, SetupReport};
use tokio::sync::watch;

use crate::runtime::{Exit, ProcessSpec, Runtime};

/// What setting up a node needs to know about it.
#[derive(Debug, Clone)]
pub struct SetupContext {
    pub node_id: String,
    /// `AZ_BATCHAI_MOUNT_ROOT`: where the cluster's mounts appear.
    pub mount_root: PathBuf,
    pub storage_root: PathBuf,
    /// Working directory of the setup task.
    pub work_dir: PathBuf,
    /// SIGTERM→SIGKILL grace when the setup task must be stopped.
    pub stop_grace: Duration,
}

/// Mounts the cluster's volumes and runs its setup task; the report says whether the node is
/// usable. Stops the setup task and reports an error when `stop` turns true.
pub async fn prepare(
    ctx: &SetupContext,
    runtime: &dyn Runtime,
    cluster: &ClusterAssignment,
    mut stop: watch::Receiver<bool>,
) -> SetupReport {
    let node_setup = cluster.spec.node_setup.clone().unwrap_or_default();
    let error = async {
        let volumes = node_setup.mount_volumes.unwrap_or_default();
        let volumes = volumes::volumes(&volumes, &ctx.storage_root, &cluster.file_servers)
            .map_err(|e| format!("cannot mount the cluster's volumes: {e}"))?;
        tokio::select! {
            mounted = mount_volumes(&ctx.mount_root, volumes) => {
                mounted.map_err(|e| format!("cannot mount the cluster's volumes: {e}"))?;
            }
            () = stopped(&mut stop) => return Err("mounting the cluster's volumes was stopped".to_owned()),
        }
        match &node_setup.setup_task {
            Some(task) => run_setup_task(ctx, runtime, task, &mut stop).await,
            None => Ok(()),
        }
    }
    .await
    .err();
    match &error {
        Some(e) => {
            tracing::warn!(cluster.id = %cluster.id, alloc_epoch = cluster.alloc_epoch, error = %e, "node setup failed")
        }
        None => tracing::info!(cluster.id = %cluster.id, alloc_epoch = cluster.alloc_epoch, "node setup done"),
    }
    SetupReport { alloc_epoch: cluster.alloc_epoch, error }
}

async fn run_setup_task(
    ctx: &SetupContext,
    runtime: &dyn Runtime,
    task: &SetupTask,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let mount_root = ctx.mount_root.to_string_lossy().into_owned();
    let mut vars = BTreeMap::from([("AZ_BATCHAI_MOUNT_ROOT".to_owned(), mount_root.clone())]);
    let mut env = vec![("AZ_BATCHAI_MOUNT_ROOT".to_owned(), mount_root)];
    // Each value sees the ones before it, as consecutive `export`s would; secrets are exported
    // as written.
    for v in task.environment_variables.iter().flatten() {
        let value = paths::expand(&v.value, &vars);
        vars.insert(v.name.clone(), value.clone());
        env.push((v.name.clone(), value));
    }
    for s in task.secrets.iter().flatten() {
        if let Some(value) = &s.value {
            env.push((s.name.clone(), value.clone()));
        }
    }
    let mut log_dir = ctx.work_dir.join(paths::expand(&task.std_out_err_path_prefix, &vars));
    if let Some(suffix) = task.std_out_err_path_suffix.as_deref().map(|s| s.trim_matches('/')).filter(|s| !s.is_empty())
    {
        log_dir.push(suffix);
    }
    let (dir, work_dir) = (log_dir.clone(), ctx.work_dir.clone());
    blocking(move || {
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(&work_dir)
    })
    .await
    .map_err(|e| format!("cannot create the setup task's directories under {}: {e}", log_dir.display()))?;
    let stderr = log_dir.join(format!("stderr-{}.txt", ctx.node_id));
    let spec = ProcessSpec {
        name: "setup".to_owned(),
        command: task.command_line.clone(),
        env,
        cwd: ctx.work_dir.clone(),
        stdout: log_dir.join(format!("stdout-{}.txt", ctx.node_id)),
        stderr: stderr.clone(),
        container: None,
    };
    let mut running = runtime.start(spec).await.map_err(|e| format!("cannot start the setup task: {e}"))?;
    tracing::info!(process.name = "setup", "setup task started");
    let exit = tokio::select! {
        exit = running.wait() => exit.map_err(|e| format!("lost the setup task: {e}"))?,
        () = stopped(stop) => {
            let _ = running.stop(ctx.stop_grace).await;
            return Err("the setup task was stopped".to_owned());
        }
    };
    // Sweeps up whatever it left running in the background.
    if let Err(e) = running.stop(ctx.stop_grace).await {
        tracing::warn!(error = %e, "cannot clean up after the setup task");
    }
    match exit {
        Exit::Code(0) => Ok(()),
        Exit::Code(code) => Err(format!("setup task exited with code {code} (see {})", stderr.display())),
        Exit::Signal(signal) => Err(format!("setup task was killed by signal {signal} (see {})", stderr.display())),
    }
}

/// Resolves once `stop` is true (or its sender is gone, which also means stop).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs blocking file-system work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

/// The shares and containers of `mounts` (none when absent) as directories under the storage
/// root.
pub fn job_mounts(volumes: Option<&MountVolumes>, storage_root: &Path) -> Result<Vec<Mount>, paths::MountError> {
    match volumes {
        Some(v) => paths::mount_sources(v, storage_root),
        None => Ok(Vec::new()),
    }
}

/// Every volume of a job's `mounts` (none when absent), its file servers resolved by `servers`.
pub fn job_volumes(
    volumes: Option<&MountVolumes>,
    storage_root: &Path,
    servers: &[FileServerExport],
) -> Result<Vec<Volume>, paths::MountError> {
    match volumes {
        Some(v) => volumes::volumes(v, storage_root, servers),
        None => Ok(Vec::new()),
    }
}

/// Makes `volumes` appear under `root`, after taking down whatever was there: links first (a
/// file server's local export must exist), then NFS mounts and mount commands in order.
pub async fn mount_volumes(root: &Path, volumes: Vec<Volume>) -> Result<(), String> {
    let mut links = Vec::new();
    for v in &volumes {
        if let Volume::Link { mount, create } = v {
            links.push((mount.clone(), *create));
        }
    }
    let dir = root.to_owned();
    blocking(move || {
        unmount_all(&dir)?;
        for (m, create) in &links {
            if !create && !m.source.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the file server export {} is not a directory on this node", m.source.display()),
                ));
            }
        }
        let mounts: Vec<Mount> = links.into_iter().map(|(m, _)| m).collect();
        link_mounts(&dir, &mounts)
    })
    .await
    .map_err(|e| e.to_string())?;
    crate::mounts::mount(root, &volumes).await
}

/// Makes each mount appear under `root`: creates its source directory and a symlink
/// `root/<relativeMountPath>` → source, replacing an older link there.
pub fn link_mounts(root: &Path, mounts: &[Mount]) -> io::Result<()> {
    std::fs::create_dir_all(root)?;
    for m in mounts {
        let rel = Path::new(m.relative_mount_path.trim_matches('/'));
        if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("relativeMountPath '{}' must be a relative path inside the mount root", m.relative_mount_path),
            ));
        }
        let link = root.join(rel);
        std::fs::create_dir_all(&m.source)?;
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::symlink_metadata(&link) {
            Ok(meta) if meta.file_type().is_symlink() => std::fs::remove_file(&link)?,
            // An empty directory (left by hand or by an older layout) is replaced; anything
            // else is someone's data.
            Ok(meta) if meta.is_dir() => std::fs::remove_dir(&link).map_err(|e| {
                io::Error::new(e.kind(), format!("{} exists and is not an empty directory: {e}", link.display()))
            })?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a mount", link.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::os::unix::fs::symlink(&m.source, &link)?;
    }
    Ok(())
}

/// Unmounts what is mounted under `root` (best effort, [`crate::mounts::unmount_under`]), then
/// removes every symlink under it (never following one) and the directories that held only
/// links. Never descends into a file system still mounted there. A missing root is already
/// unmounted.
pub fn unmount_all(root: &Path) -> io::Result<()> {
    let still_mounted = crate::mounts::unmount_under(root);
    remove_links(root, &still_mounted)
}

fn remove_links(root: &Path, still_mounted: &[PathBuf]) -> io::Result<()> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::fs::remove_file(entry.path())?;
        } else if kind.is_dir() {
            let path = entry.path();
            if still_mounted.iter().any(|m| m.starts_with(&path)) {
                continue;
            }
            remove_links(&path, still_mounted)?;
            // Only succeeds when nothing but links was there.
            let _ = std::fs::remove_dir(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(rel: &str, source: &Path) -> Mount {
        Mount { relative_mount_path: rel.to_owned(), source: source.to_owned() }
    }

    #[tokio::test]
    async fn file_servers_and_unmanaged_file_systems_are_mounted_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let (root, export) = (dir.path().join("mounts"), dir.path().join("export"));
        std::fs::create_dir_all(export.join("sub")).unwrap();
        let local = |source: PathBuf| Volume::Link { mount: mount("fs", &source), create: false };
        let command = Volume::Command {
            relative_mount_path: "um".into(),
            command: r#"sh -c 'echo mounted > "$0/marker"'"#.into(),
        };
        mount_volumes(&root, vec![local(export.join("sub")), command.clone()]).await.unwrap();
        assert_eq!(std::fs::read_link(root.join("fs")).unwrap(), export.join("sub"));
        assert_eq!(std::fs::read_to_string(root.join("um/marker")).unwrap(), "mounted\n");
        // An export the node lacks is an error, never created.
        let e = mount_volumes(&root, vec![local(export.join("missing"))]).await.unwrap_err();
        assert!(e.contains("is not a directory on this node"), "{e}");
        assert!(!export.join("missing").exists());
        unmount_all(&root).unwrap();
        assert!(!root.join("fs").exists(), "the link is gone");
        assert_eq!(std::fs::read_to_string(root.join("um/marker")).unwrap(), "mounted\n", "data stays");
    }

    #[test]
    fn removing_links_never_descends_into_a_mounted_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("mounts");
        std::fs::create_dir_all(root.join("nfs/sub")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("nfs/sub/theirs")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("ours")).unwrap();
        remove_links(&root, &[root.join("nfs")]).unwrap();
        assert!(root.join("nfs/sub/theirs").is_symlink(), "a link on a still-mounted file system stays");
        assert!(!root.join("ours").exists());
    }

    #[test]
    fn links_are_created_replaced_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (root, storage) = (dir.path().join("mounts"), dir.path().join("storage"));
        link_mounts(&root, &[mount("afs", &storage.join("a/s")), mount("deep/bfs", &storage.join("a/c"))]).unwrap();
        assert_eq!(std::fs::read_link(root.join("afs")).unwrap(), storage.join("a/s"));
        assert!(storage.join("a/c").is_dir());
        std::fs::write(root.join("afs/file"), "x").unwrap();
        // Relinking points the old name elsewhere and leaves the data alone.
        link_mounts(&root, &[mount("afs", &storage.join("b/s"))]).unwrap();
        assert_eq!(std::fs::read_link(root.join("afs")).unwrap(), storage.join("b/s"));
        unmount_all(&root).unwrap();
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
        assert_eq!(std::fs::read_to_string(storage.join("a/s/file")).unwrap(), "x");
        for bad in ["../x", "", "/", "a/../../b"] {
            assert!(link_mounts(&root, &[mount(bad, &storage.join("z"))]).is_err(), "{bad}");
        }
        std::fs::create_dir_all(root.join("busy")).unwrap();
        std::fs::write(root.join("busy/data"), "keep").unwrap();
        assert!(link_mounts(&root, &[mount("busy", &storage.join("z"))]).is_err());
    }
}
