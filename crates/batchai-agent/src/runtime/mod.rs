//! The runtime abstraction: start a job's process, wait for it, stop it.
//!
//! A [`Runtime`] turns a [`ProcessSpec`] into a [`Running`] handle. The executor only talks to
//! these traits, so the same job logic drives plain host processes ([`ProcessRuntime`]),
//! containers ([`DockerRuntime`], which runs container-less specs as host processes) and the
//! scripted [`FakeRuntime`] of its tests.
//!
//! Output goes to files, never to pipes held by the agent: the job's stdout/stderr are visible
//! in the output share while it runs, and a process outlives an agent restart without blocking
//! on a pipe nobody reads. That is also what makes reattaching cheap: a restarted agent has no
//! log stream to resume, only exits to wait for.

mod docker;
mod fake;
mod process;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use docker::{DockerConfig, DockerRunning, DockerRuntime};
pub use fake::{FakeRuntime, Script, StartedProcess};
pub use process::{ProcessRunning, ProcessRuntime};

/// What to run for one part of a job (its command line, the setup task, a preparation step).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// A short label for logs, e.g. `job/<name>/rank-0`; not interpreted.
    pub name: String,
    /// Run with `bash -c`, as Batch AI runs `commandLine`.
    pub command: String,
    /// Added to the agent's own environment (not replacing it); later entries win.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Appended to, created if missing; written as the process writes.
    pub stdout: PathBuf,
    /// Appended to, created if missing; may be the same path as `stdout`.
    pub stderr: PathBuf,
    /// `None` runs on the host; runtimes that cannot honour a container refuse it with
    /// [`RuntimeError::Unsupported`] rather than silently running outside it.
    pub container: Option<ContainerSpec>,
}

/// The container a process runs in, for runtimes that have containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The image to run, as given: the executor has already applied the node's image map
    /// ([`crate::images`]).
    pub image: String,
    pub registry: Option<RegistryAuth>,
    /// UUIDs of the GPUs the container may see (as [`batchai_core::protocol::Gpu::uuid`]).
    pub gpus: Vec<String>,
    /// `(host path, container path)` bind mounts.
    pub mounts: Vec<(PathBuf, PathBuf)>,
    /// Docker's `--shm-size` syntax, e.g. `8g`; `None` keeps the runtime's default.
    pub shm_size: Option<String>,
    /// Whose process it is, so a restarted agent can find it again.
    pub owner: TaskOwner,
    /// The process's name within its task, e.g. `rank-0` or `job_prep`.
    pub process: String,
}

/// Where and with which credentials to pull an image. No `Debug`: it holds the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// e.g. `myregistry.azurecr.io`; `None` for Docker Hub.
    pub server: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One node's part of one attempt of a job: what runtimes label their containers with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskOwner {
    pub node: String,
    pub job: String,
    pub epoch: i64,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exit {
    /// It exited by itself with this status.
    Code(i32),
    /// It was killed by this signal number (15 for SIGTERM, 9 for SIGKILL).
    Signal(i32),
}

impl Exit {
    /// The exit code, as [`batchai_core::protocol::TaskReport::exit_code`] wants it: absent when
    /// the process was killed.
    pub fn code(self) -> Option<i32> {
        match self {
            Exit::Code(code) => Some(code),
            Exit::Signal(_) => None,
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

/// Starts processes. One instance serves the whole agent, so it is shared across tasks.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// A short name for logs and node facts, e.g. `process` or `docker`.
    fn name(&self) -> &'static str;

    /// Starts the process and returns as soon as it runs; does not wait for it to end.
    async fn start(&self, spec: ProcessSpec) -> Result<Box<dyn Running>, RuntimeError>;

    /// Makes the container's image available on the node, pulling it when missing; says what it
    /// does, in lines fit for the job's `execution.log`, on `progress`.
    async fn pull(
        &self,
        container: &ContainerSpec,
        progress: &mpsc::UnboundedSender<String>,
    ) -> Result<(), RuntimeError> {
        let _ = progress;
        Err(RuntimeError::Unsupported(format!(
            "image {}: the {} runtime cannot run containers (is Docker installed and running on this node?)",
            container.image,
            self.name()
        )))
    }

    /// What an earlier run of the agent started for `task` and this runtime can still wait
    /// for and stop, by process name. Processes already ended are included (their exit is
    /// kept until [`Runtime::forget`]). `Unsupported` when this runtime keeps nothing across
    /// agent restarts.
    async fn adopt(&self, task: &TaskOwner) -> Result<Vec<(String, Box<dyn Running>)>, RuntimeError> {
        Err(RuntimeError::Unsupported(format!("the {} runtime cannot reattach to {}", self.name(), task.job)))
    }

    /// Drops what the runtime kept of `task` once its outcome is safe with the server.
    async fn forget(&self, task: &TaskOwner) -> Result<(), RuntimeError> {
        let _ = task;
        Ok(())
    }

    /// Stops (with `grace`) and removes everything of `node` that belongs to none of `keep`:
    /// what an earlier agent left of jobs deleted or moved elsewhere meanwhile.
    async fn sweep(&self, node: &str, keep: &[(String, i64)], grace: Duration) -> Result<(), RuntimeError> {
        let _ = (node, keep, grace);
        Ok(())
    }
}

/// A started process. Dropping the handle leaves the process running: only [`Running::stop`]
/// ends it, so an agent that restarts does not take its jobs down with it.
#[async_trait]
pub trait Running: Send + Sync {
    /// The runtime's id for it: the pid for host processes, the container id for containers.
    fn id(&self) -> String;

    /// Waits until the process ends. Cancel-safe, so it can sit in a `tokio::select!` next to a
    /// stop signal; once it has returned, later calls return the same [`Exit`] at once.
    async fn wait(&mut self) -> Result<Exit, RuntimeError>;

    /// Asks the process and everything it started to end (SIGTERM to the whole process group),
    /// kills what is left after `grace` (SIGKILL) and returns, with how the process ended, once
    /// neither it nor anything it started still runs. Calling it after the process ended
    /// returns that end and still cleans up what it left behind, so an executor can call it
    /// after [`Running::wait`] to make sure a finished job holds no GPU. If the future is
    /// dropped midway, the signals already sent stay sent; calling `stop` again starts over.
    async fn stop(&mut self, grace: Duration) -> Result<Exit, RuntimeError>;
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The spec asks for something this runtime cannot do, e.g. a container on the process
    /// runtime.
    #[error("unsupported by this runtime: {0}")]
    Unsupported(String),
    /// The process could not be started (missing `bash`, bad working directory, ...).
    #[error("cannot start {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// Anything else the runtime failed to do: open output files, wait, signal.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The image is neither on the node nor could be pulled.
    #[error("cannot pull image {image}: {message}")]
    Image { image: String, message: String },
    /// The container engine refused or failed a request.
    #[error("{context}: {message}")]
    Engine { context: String, message: String },
}
