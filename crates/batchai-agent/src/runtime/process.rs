//! Host processes: `bash -c <command>` in a process group of its own.
//!
//! The group is what makes stopping reliable: a job's command line is usually a shell that
//! starts `python`, `mpirun` or background helpers, and signalling only the shell would leave
//! them holding GPUs. The process group id is the shell's pid (`process_group(0)`), so the
//! group can be signalled without tracking its members.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::{Exit, ProcessSpec, Running, Runtime, RuntimeError};

/// How often `stop` looks whether the children a process left behind have gone. Only used
/// after the process itself has exited, to sweep up stragglers within the grace period.
const GROUP_POLL: Duration = Duration::from_millis(50);

/// How long `stop` waits for SIGKILLed processes to die. Bounded because one in uninterruptible
/// sleep (a hung NFS mount or GPU driver) dies only when it leaves it, and `stop` must return.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Runs processes directly on the host. Refuses specs with a container.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessRuntime;

impl ProcessRuntime {
    pub fn new() -> Self {
        Self
    }

    /// [`Runtime::start`] with the concrete handle, for callers that want the pid as a number.
    pub async fn spawn(&self, spec: ProcessSpec) -> Result<ProcessRunning, RuntimeError> {
        if spec.container.is_some() {
            return Err(RuntimeError::Unsupported(format!(
                "{} asks for a container, which the process runtime cannot provide",
                spec.name
            )));
        }
        // Checked here because a missing working directory makes spawn fail with a bare
        // ENOENT that reads as if `bash` itself were missing.
        tokio::fs::metadata(&spec.cwd).await.map_err(|source| RuntimeError::Io {
            context: format!("working directory {} of {}", spec.cwd.display(), spec.name),
            source,
        })?;
        let stdout = open_append(&spec.stdout).await?;
        let stderr = open_append(&spec.stderr).await?;

        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(&spec.command)
            .envs(spec.env.iter().map(|(key, value)| (key, value)))
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            // The process must survive the handle (and the agent): only `stop` ends it.
            .kill_on_drop(false);
        let child = command.spawn().map_err(|source| RuntimeError::Spawn { name: spec.name.clone(), source })?;
        // `id()` is only `None` once the child has been reaped, which nothing has done yet.
        let pid = child.id().ok_or_else(|| RuntimeError::Io {
            context: format!("reading the pid of {}", spec.name),
            source: std::io::Error::other("the process was reaped before its pid was read"),
        })?;
        let pgid = i32::try_from(pid).map(Pid::from_raw).map_err(|_| RuntimeError::Io {
            context: format!("reading the pid of {}", spec.name),
            source: std::io::Error::other(format!("pid {pid} does not fit a pid_t")),
        })?;
        tracing::debug!(process.name = %spec.name, process.pid = pid, "process started");
        Ok(ProcessRunning { name: spec.name, pid, pgid, child, exit: None, group_gone: false })
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn start(&self, spec: ProcessSpec) -> Result<Box<dyn Running>, RuntimeError> {
        Ok(Box::new(self.spawn(spec).await?))
    }
}

/// A `bash -c` process started by [`ProcessRuntime`], leader of its own process group.
#[derive(Debug)]
pub struct ProcessRunning {
    name: String,
    pid: u32,
    pgid: Pid,
    child: Child,
    /// Set once the leader has been reaped, so `wait` can be called again.
    exit: Option<Exit>,
    /// Set once the group was seen empty after the leader was reaped. From then on the group
    /// id is free for the kernel to hand out again, so it must never be signalled.
    group_gone: bool,
}

impl ProcessRunning {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` to the whole group (`None` only checks that it has members). Returns
    /// whether the group still had members.
    fn signal_group(&mut self, signal: Option<Signal>) -> Result<bool, RuntimeError> {
        if self.group_gone {
            return Ok(false);
        }
        match killpg(self.pgid, signal) {
            Ok(()) => Ok(true),
            Err(Errno::ESRCH) => {
                // While the leader is unreaped it is still a member, so an empty group means
                // it was reaped and every process it started has gone too.
                self.group_gone = self.exit.is_some();
                Ok(false)
            }
            Err(errno) => Err(RuntimeError::Io {
                context: format!(
                    "sending {} to process group {} of {}",
                    signal.map_or("signal 0", Signal::as_str),
                    self.pgid,
                    self.name
                ),
                source: errno.into(),
            }),
        }
    }

    /// Kills the leader even if it left the group (`setsid`), so `wait` is sure to return.
    fn kill_leader(&mut self) {
        if self.exit.is_none()
            && let Err(err) = self.child.start_kill()
        {
            // It exited between the timeout and here; `wait` picks up the status.
            tracing::debug!(process.name = %self.name, process.pid = self.pid, error = %err, "kill of the leader failed");
        }
    }

    /// After the leader has exited, gives what it left in the group until `deadline` to end,
    /// then kills it, and returns once none of it runs any more: nothing of the job outlives
    /// `stop` (and holds on to GPUs the next job is given).
    async fn sweep_group(&mut self, deadline: Instant) -> Result<(), RuntimeError> {
        if self.wait_group_ended(deadline).await? {
            return Ok(());
        }
        if self.signal_group(Some(Signal::SIGKILL))? {
            tracing::info!(process.name = %self.name, process.pid = self.pid, "killed what the process left behind after the grace period");
        }
        if !self.wait_group_ended(Instant::now() + KILL_WAIT).await? {
            tracing::warn!(process.name = %self.name, process.pid = self.pid, "processes of the group outlive SIGKILL (uninterruptible sleep?)");
        }
        Ok(())
    }

    /// Waits until the group has no running member or `deadline` passes; returns which.
    async fn wait_group_ended(&mut self, deadline: Instant) -> Result<bool, RuntimeError> {
        loop {
            if !self.signal_group(None)? {
                return Ok(true);
            }
            // The group is not empty, but its members may all be zombies that their new
            // parent (init) has not reaped yet; those are done, and must not cost the grace.
            let pgid = self.pgid.as_raw();
            let running = tokio::task::spawn_blocking(move || group_has_running_member(pgid)).await.map_err(|err| {
                RuntimeError::Io {
                    context: format!("looking for members of process group {pgid}"),
                    source: std::io::Error::other(err),
                }
            })?;
            if !running {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            // Polled because the members are not our children: there is nothing to wait on.
            tokio::time::sleep(GROUP_POLL.min(deadline - now)).await;
        }
    }
}

/// Whether a process of group `pgid` is still running (not a zombie), from `/proc`. Says yes
/// when `/proc` cannot be read, so callers fall back to waiting for the group to be empty.
fn group_has_running_member(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.filter_map(Result::ok).filter(|entry| entry.file_name().to_str().is_some_and(is_pid)).any(|entry| {
        // A process that ended since the listing has no stat any more: not running.
        std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| parse_stat(&stat))
            .is_some_and(|(state, group)| group == pgid && !matches!(state, 'Z' | 'X' | 'x'))
    })
}

fn is_pid(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
}

/// `(state, process group)` from a `/proc/<pid>/stat` line: `pid (comm) state ppid pgrp ...`.
/// The command name may hold spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let group = fields.next()?.parse().ok()?;
    Some((state, group))
}

#[async_trait]
impl Running for ProcessRunning {
    fn id(&self) -> String {
        self.pid.to_string()
    }

    async fn wait(&mut self) -> Result<Exit, RuntimeError> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        // `Child::wait` is cancel-safe, which makes this method cancel-safe.
        let status = self
            .child
            .wait()
            .await
            .map_err(|source| RuntimeError::Io { context: format!("waiting for {}", self.name), source })?;
        let exit = exit_of(status);
        self.exit = Some(exit);
        tracing::debug!(process.name = %self.name, process.pid = self.pid, ?exit, "process exited");
        Ok(exit)
    }

    async fn stop(&mut self, grace: Duration) -> Result<Exit, RuntimeError> {
        let deadline = Instant::now() + grace;
        self.signal_group(Some(Signal::SIGTERM))?;
        let exit = match tokio::time::timeout_at(deadline, self.wait()).await {
            Ok(exit) => exit?,
            Err(_elapsed) => {
                tracing::info!(process.name = %self.name, process.pid = self.pid, grace_ms = grace.as_millis(), "process outlived SIGTERM, sending SIGKILL");
                self.kill_leader();
                self.signal_group(Some(Signal::SIGKILL))?;
                self.wait().await?
            }
        };
        self.sweep_group(deadline).await?;
        Ok(exit)
    }
}

async fn open_append(path: &Path) -> Result<Stdio, RuntimeError> {
    // Append, not truncate: what an earlier attempt wrote to the same file stays readable.
    let file = tokio::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .await
        .map_err(|source| RuntimeError::Io { context: format!("opening {}", path.display()), source })?;
    Ok(Stdio::from(file.into_std().await))
}

fn exit_of(status: ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(signal)) => Exit::Signal(signal),
        // `wait` only reports processes that have terminated, which have one or the other.
        (None, None) => Exit::Code(-1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = "4242 (my (odd) prog) S 1 4240 4240 0 -1 4194560 90 0 0 0 0 0 0 0 20 0 1 0 1";
        assert_eq!(parse_stat(stat), Some(('S', 4240)));
        assert_eq!(parse_stat("17 (sleep) Z 1 12 12 0"), Some(('Z', 12)));
        assert_eq!(parse_stat("17 (sleep)"), None);
        assert!(is_pid("123") && !is_pid("self") && !is_pid(""));
    }
}
