//! Real mounts: the NFS exports of file servers and the mount commands of unmanaged file systems
//! (`batchai_core::contract::volumes`), and taking them down again.
//!
//! Mounting needs root or `CAP_SYS_ADMIN` (docs/storage.md); without it the mount command fails
//! and its message says so in the node's setup error or the job's preparation error. Commands
//! run on the agent's host, in the agent's mount namespace, before any process that uses the
//! mount starts: job containers see them through the recursive bind of the mount roots.
//!
//! Unmounting is best effort (logged): `umount`, then `umount -l` when that fails or hangs (a
//! dead NFS server), so a lost server never wedges the agent.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use batchai_core::contract::volumes::{self, Volume};

/// The longest a mount command may run.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest `umount` may take before the mount is detached lazily instead.
const UMOUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// How much of a failed command's output its error quotes.
const TAIL_LINES: usize = 5;
const TAIL_CHARS: usize = 600;

/// Mounts the NFS and command volumes of `volumes` under `root`, in order (links are made
/// elsewhere). Each gets its directory created first. Cancelling the future kills a command
/// still running.
pub async fn mount(root: &Path, volumes: &[Volume]) -> Result<(), String> {
    for v in volumes {
        let (program, args, what) = match v {
            Volume::Link { .. } => continue,
            Volume::Nfs { remote, options, .. } => {
                let dir = root.join(v.relative_mount_path());
                let args = volumes::nfs_mount_args(remote, options.as_deref(), &dir);
                ("mount", args, format!("mounting file server export {remote} at {}", dir.display()))
            }
            Volume::Command { command, .. } => {
                let dir = root.join(v.relative_mount_path());
                let script = volumes::unmanaged_script(command, &dir);
                ("bash", vec!["-c".to_owned(), script], format!("unmanaged file system mount command '{command}'"))
            }
        };
        let dir = root.join(v.relative_mount_path());
        tokio::fs::create_dir_all(&dir).await.map_err(|e| format!("{what}: cannot create {}: {e}", dir.display()))?;
        tracing::info!(mount.path = %dir.display(), program, "mounting");
        run(program, &args, &what).await?;
    }
    Ok(())
}

/// Kills a command's process group unless disarmed: a mount cancelled midway leaves nothing.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

async fn run(program: &str, args: &[String], what: &str) -> Result<(), String> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // The agent's own settings (a join token among them) are none of the command's business.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BATCHAI_") {
            command.env_remove(key);
        }
    }
    let child = command.spawn().map_err(|e| format!("{what}: cannot start {program}: {e}"))?;
    let mut guard = GroupGuard(child.id().and_then(|id| i32::try_from(id).ok()));
    let output = match tokio::time::timeout(MOUNT_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.map_err(|e| format!("{what}: {e}"))?,
        Err(_) => return Err(format!("{what} did not finish within {} s", MOUNT_TIMEOUT.as_secs())),
    };
    // The command is done; what it left running in its group (a FUSE daemon) stays.
    guard.0 = None;
    if output.status.success() {
        return Ok(());
    }
    let how = match output.status.code() {
        Some(code) => format!("exited with code {code}"),
        None => "was killed by a signal".to_owned(),
    };
    let tail = tail(&output.stderr).or_else(|| tail(&output.stdout));
    Err(match tail {
        Some(t) => format!("{what} {how}: {t}"),
        None => format!("{what} {how}"),
    })
}

/// The last lines of a command's output, on one line; `None` when it printed nothing.
pub fn tail(output: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let joined = lines[lines.len().saturating_sub(TAIL_LINES)..].join(" | ");
    if joined.is_empty() {
        return None;
    }
    let skip = joined.chars().count().saturating_sub(TAIL_CHARS);
    Some(if skip > 0 { format!("…{}", joined.chars().skip(skip).collect::<String>()) } else { joined })
}

/// Mount points listed in `/proc/self/mountinfo` text (the fifth field, with the kernel's
/// octal escapes undone).
pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines().filter_map(|line| line.split(' ').nth(4)).map(|p| PathBuf::from(unescape(p))).collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points below `root` (not `root` itself, which the agent never mounts on), deepest
/// first, spelled under `root` as given.
pub fn mounted_under(root: &Path) -> Vec<PathBuf> {
    let Ok(real) = std::fs::canonicalize(root) else { return Vec::new() };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    let mut found: Vec<PathBuf> = parse_mountinfo(&info)
        .into_iter()
        .filter_map(|p| p.strip_prefix(&real).ok().filter(|rel| !rel.as_os_str().is_empty()).map(|rel| root.join(rel)))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Unmounts everything mounted below `root`, deepest first; returns what is still mounted
/// afterwards (logged).
pub fn unmount_under(root: &Path) -> Vec<PathBuf> {
    let mounted = mounted_under(root);
    for point in &mounted {
        if let Err(e) = umount(point) {
            tracing::warn!(mount.path = %point.display(), error = %e, "cannot unmount");
        } else {
            tracing::info!(mount.path = %point.display(), "unmounted");
        }
    }
    if mounted.is_empty() { mounted } else { mounted_under(root) }
}

/// `umount <point>`, then `umount -l <point>` when that fails or hangs.
fn umount(point: &Path) -> Result<(), String> {
    let first = run_bounded(std::process::Command::new("umount").arg(point));
    match first {
        Ok(()) => Ok(()),
        Err(e) => run_bounded(std::process::Command::new("umount").arg("-l").arg(point))
            .map_err(|lazy| format!("{e}; umount -l: {lazy}")),
    }
}

fn run_bounded(command: &mut std::process::Command) -> Result<(), String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start umount: {e}"))?;
    let deadline = std::time::Instant::now() + UMOUNT_TIMEOUT;
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => {
                let mut stderr = Vec::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = std::io::Read::read_to_end(&mut s, &mut stderr);
                }
                return Err(format!("umount {status}: {}", tail(&stderr).unwrap_or_default()));
            }
            None if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("umount did not finish within {} s", UMOUNT_TIMEOUT.as_secs()));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_points_are_unescaped() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:40 / /srv/nfs rw - nfs4 h:/e rw\n";
        assert_eq!(parse_mountinfo(text), [PathBuf::from("/mnt/with space"), PathBuf::from("/srv/nfs")]);
        assert_eq!(unescape(r"a\134b\0"), r"a\b\0");
    }

    #[test]
    fn tails_quote_the_last_lines() {
        assert_eq!(tail(b""), None);
        assert_eq!(tail(b"\n  \n"), None);
        let many: String = (1..=8).map(|i| format!("line {i}\n")).collect();
        assert_eq!(tail(many.as_bytes()).unwrap(), "line 4 | line 5 | line 6 | line 7 | line 8");
        let long = "x".repeat(2000);
        assert_eq!(tail(long.as_bytes()).unwrap().chars().count(), TAIL_CHARS + 1);
    }

    /// A real mount (tmpfs), where the test may mount: skipped without the privilege.
    #[test]
    fn real_mounts_below_a_root_are_found_and_unmounted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("mounts");
        let point = root.join("deep/fs");
        std::fs::create_dir_all(&point).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "batchai-test"])
            .arg(&point)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)");
            return;
        }
        std::fs::write(point.join("on-the-mount"), "x").unwrap();
        assert_eq!(mounted_under(&root), std::slice::from_ref(&point));
        assert!(mounted_under(&point).is_empty(), "the root itself does not count");
        assert!(unmount_under(&root).is_empty(), "nothing is left mounted");
        assert!(mounted_under(&root).is_empty());
        assert!(point.is_dir() && !point.join("on-the-mount").exists(), "the directory is the node's again");
    }

    #[tokio::test]
    async fn commands_get_their_path_and_failures_their_output() {
        let dir = tempfile::tempdir().unwrap();
        let ok = Volume::Command {
            relative_mount_path: "a b/um".into(),
            command: r#"sh -c 'echo mounted > "$0/marker"'"#.into(),
        };
        mount(dir.path(), &[ok]).await.unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("a b/um/marker")).unwrap(), "mounted\n");
        let bad = Volume::Command {
            relative_mount_path: "bad".into(),
            command: "echo about to fail; echo no such export >&2; exit 32; true".into(),
        };
        let e = mount(dir.path(), &[bad]).await.unwrap_err();
        assert!(e.contains("exit 32") && e.contains("exited with code 32: no such export"), "{e}");
        assert!(dir.path().join("bad").is_dir(), "its directory is made first");
        // Nothing is mounted there, so there is nothing to unmount.
        assert!(unmount_under(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_command_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let slow = Volume::Command {
            relative_mount_path: "slow".into(),
            command: format!("(sleep 1; touch {}) & sleep 30; true", marker.display()),
        };
        let cancelled = tokio::time::timeout(Duration::from_millis(200), mount(dir.path(), &[slow])).await;
        assert!(cancelled.is_err());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "the command's group was killed");
    }
}
