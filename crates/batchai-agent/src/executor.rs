//! One node's part of a job, from assignment to exit: directories and mounts, job preparation,
//! the toolkit's processes, the wall-clock limit and stop requests.
//!
//! What to create and run comes from the pure functions of [`batchai_core::contract`]; this
//! module only carries it out and reports phases ([`TaskPhase`]) on a channel as it goes. The
//! last report is always `Exited`, sent once nothing the task started still runs.
//!
//! Secrets are in the processes' environment and nowhere else: neither the agent's log nor the
//! job's `execution.log` shows an environment or a command line, only process names.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use batchai_core::contract::env::{self, JobContext};
use batchai_core::contract::toolkit::{self, Process};
use batchai_core::models::JobSpec;
use batchai_core::protocol::{Gpu, TaskAssignment, TaskError, TaskPhase, TaskReport};
use batchai_core::time::{now_millis, to_rfc3339};
use tokio::sync::{mpsc, watch};

use crate::gpus::cuda_env;
use crate::images::ImageMap;
use crate::runtime::{ContainerSpec, Exit, ProcessSpec, RegistryAuth, Running, Runtime, RuntimeError, TaskOwner};
use crate::setup::{blocking, job_mounts, job_volumes, mount_volumes, stopped};
use crate::staging::{PUSH_EVERY, Share, Stager, linked_shares};

pub const JOB_PREPARATION_FAILED: &str = "JobPreparationFailed";
pub const IMAGE_PULL_FAILED: &str = "ContainerImagePullFailed";
pub const RESTARTED: &str = "the node agent restarted while the job was running";
pub const JOB_PREPARATION_MESSAGE: &str = "Job preparation task failed with non-zero exit code";
pub const JOB_FAILED: &str = "JobFailed";
pub const WALL_CLOCK_EXCEEDED: &str = "JobMaxWallClockTimeExceeded";

/// What the executor needs to know about the node it runs on.
#[derive(Debug, Clone)]
pub struct NodeContext {
    pub node_id: String,
    /// The agent's data directory: cluster mounts live in `mounts/`, job temp dirs in `jobs/`.
    pub data_dir: PathBuf,
    /// Where shares and containers live; jobs' shared temp dirs are under `.batchai/shared/`.
    pub storage_root: PathBuf,
    pub gpus: Vec<Gpu>,
    /// SIGTERM→SIGKILL grace when processes must be stopped.
    pub stop_grace: Duration,
    /// The operator's image map, applied to every job's `containerSettings` image.
    pub image_map: ImageMap,
    /// Set when the node does not see the shared storage root: `storage_root` is the node's
    /// own copy, synchronised through the server ([`crate::staging`]).
    pub staging: Option<Arc<Stager>>,
    /// What `/metrics` reports (start times here; running jobs and GPUs in the agent's state).
    pub metrics: Arc<crate::metrics::AgentMetrics>,
}

impl NodeContext {
    /// `AZ_BATCHAI_MOUNT_ROOT`.
    pub fn mount_root(&self) -> PathBuf {
        self.data_dir.join("mounts")
    }

    /// `AZ_BATCHAI_JOB_TEMP_DIR`.
    pub fn job_temp_root(&self) -> PathBuf {
        self.data_dir.join("jobs")
    }

    /// The image `job`'s processes run in on this node, after the image map; `None` when they
    /// run on the host: the job has no `containerSettings`, or the map sends its image to
    /// [`crate::images::HOST`].
    pub fn container_image(&self, job: &JobSpec) -> Option<String> {
        let settings = job.container_settings.as_ref()?;
        self.image_map.container_image(&settings.image_source_registry.image)
    }
}

/// How this node runs its part of a task, beside the assignment itself.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// The GPUs given to the task (see [`crate::gpus`]).
    pub gpus: Vec<Gpu>,
    /// An earlier run of the agent started the task: pick up what it left instead of
    /// starting it over, or fail it when its processes cannot be found again.
    pub resume: bool,
}

/// The job's name: the last segment of its ARM id.
pub fn job_name(id: &str) -> &str {
    id.rsplit('/').find(|s| !s.is_empty()).unwrap_or(id)
}

/// Runs `task` to its end. Sends a report on `reports` at each phase change, the last one
/// `Exited` (also returned). Turning `stop` true stops everything and reports `Exited`
/// without an exit code or error.
pub async fn execute(
    node: &NodeContext,
    runtime: &dyn Runtime,
    task: &TaskAssignment,
    launch: Launch,
    mut stop: watch::Receiver<bool>,
    reports: mpsc::UnboundedSender<TaskReport>,
) -> TaskReport {
    let mut run = Execution { node, runtime, task, launch, reports, log: None, procs: Vec::new() };
    run.report(TaskPhase::Preparing, None, None);
    let deadline = (task.max_wall_clock_secs > 0)
        .then(|| task.started_at.saturating_add(task.max_wall_clock_secs.saturating_mul(1000)));
    let wall_clock = async {
        match deadline {
            Some(at) => {
                let left = u64::try_from(at.saturating_sub(now_millis())).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(left)).await;
            }
            None => std::future::pending().await,
        }
    };
    let staged = match &node.staging {
        Some(stager) => match stage_in(node, stager, task).await {
            Ok(shares) => Some((stager.clone(), shares)),
            Err(message) => {
                tracing::warn!(job.id = %task.id, error = %message, "staging the job's inputs failed");
                let error = TaskError { code: JOB_PREPARATION_FAILED.to_owned(), message };
                return run.report(TaskPhase::Exited, None, Some(error));
            }
        },
        None => None,
    };
    let pushing = async {
        match &staged {
            Some((stager, shares)) => loop {
                tokio::time::sleep(PUSH_EVERY).await;
                if let Err(e) = push_all(stager, shares).await {
                    tracing::warn!(job.id = %task.id, error = %e, "pushing the job's files to the server failed; retrying");
                }
            },
            None => std::future::pending().await,
        }
    };
    let mut end = if deadline.is_some_and(|at| at <= now_millis()) {
        run.wall_clock_exceeded()
    } else {
        // `steps` leaves what it started in `run.procs`, so dropping it midway loses nothing.
        let interrupted = tokio::select! {
            biased;
            end = run.steps() => Ok(end),
            () = stopped(&mut stop) => Err(Interrupt::Stop),
            () = wall_clock => Err(Interrupt::WallClock),
            () = pushing => unreachable!("pushing never ends"),
        };
        match interrupted {
            Ok(end) => end,
            Err(Interrupt::Stop) => {
                run.log("stop requested").await;
                End { exit_code: None, error: None }
            }
            Err(Interrupt::WallClock) => {
                run.log("wall-clock limit reached").await;
                run.wall_clock_exceeded()
            }
        }
    };
    run.stop_all().await;
    let line = match (&end.exit_code, &end.error) {
        (_, Some(e)) => format!("finished: {}: {}", e.code, e.message),
        (Some(code), None) => format!("finished with exit code {code}"),
        (None, None) => "stopped".to_owned(),
    };
    run.log(&line).await;
    if let Some((stager, shares)) = &staged
        && let Err(e) = push_final(stager, shares).await
    {
        // The outputs did not reach the server: as lost as a failed write to a shared disk.
        end = End::failed(JOB_FAILED, format!("the job's outputs could not be uploaded to the server: {e}"));
    }
    // The job's own mounts end with it (a job without volumes has none: no need to read the
    // node's mount table).
    let job_mount_root = node.job_temp_root().join(job_name(&task.id)).join("mounts");
    if task.spec.mount_volumes.is_some()
        && let Err(e) = blocking(move || crate::setup::unmount_all(&job_mount_root)).await
    {
        tracing::warn!(job.id = %task.id, error = %e, "cannot take down the job's mounts");
    }
    tracing::info!(job.id = %task.id, epoch = task.epoch, exit_code = ?end.exit_code, error = ?end.error, "task exited");
    run.report(TaskPhase::Exited, end.exit_code, end.error)
}

enum Interrupt {
    Stop,
    WallClock,
}

/// How this node's part ended.
struct End {
    exit_code: Option<i32>,
    error: Option<TaskError>,
}

impl End {
    fn failed(code: &str, message: impl Into<String>) -> Self {
        End { exit_code: None, error: Some(TaskError { code: code.to_owned(), message: message.into() }) }
    }
}

/// A started process.
struct Proc {
    name: String,
    /// TensorFlow parameter servers (`ps-*`) serve until the workers are done.
    daemon: bool,
    handle: Box<dyn Running>,
    exit: Option<Exit>,
}

/// What preparation computed: everything to run, all owned.
struct Prepared {
    env: Vec<(String, String)>,
    job_temp: PathBuf,
    stdouterr: PathBuf,
    job_prep: Option<Process>,
    processes: Vec<Process>,
}

struct Execution<'a> {
    node: &'a NodeContext,
    runtime: &'a dyn Runtime,
    task: &'a TaskAssignment,
    launch: Launch,
    reports: mpsc::UnboundedSender<TaskReport>,
    /// `execution.log` (rank 0) or `execution-<rank>.log`, once its directory exists.
    log: Option<PathBuf>,
    procs: Vec<Proc>,
}

impl Execution<'_> {
    fn report(&self, phase: TaskPhase, exit_code: Option<i32>, error: Option<TaskError>) -> TaskReport {
        let report = TaskReport { job: self.task.job.clone(), epoch: self.task.epoch, phase, exit_code, error };
        // The receiver is gone only when the agent is shutting down; nobody is left to tell.
        let _ = self.reports.send(report.clone());
        report
    }

    /// Appends a timestamped line to the job's execution log. Never given secrets.
    async fn log(&self, line: &str) {
        let Some(path) = self.log.clone() else { return };
        let text = format!("{} {line}\n", to_rfc3339(now_millis()));
        let written = blocking(move || {
            use std::io::Write;
            std::fs::OpenOptions::new().create(true).append(true).open(&path)?.write_all(text.as_bytes())
        })
        .await;
        if let Err(e) = written {
            tracing::debug!(job.id = %self.task.id, error = %e, "cannot write the execution log");
        }
    }

    fn wall_clock_exceeded(&self) -> End {
        let secs = self.task.max_wall_clock_secs;
        End::failed(WALL_CLOCK_EXCEEDED, format!("The job exceeded its maxWallClockTime ({secs} s) and was stopped"))
    }

    /// Everything up to this node's end, leaving started processes in `self.procs`.
    async fn steps(&mut self) -> End {
        let prepared = match self.prepare().await {
            Ok(p) => p,
            Err(message) => {
                self.log(&format!("preparation failed: {message}")).await;
                return End::failed(JOB_PREPARATION_FAILED, message);
            }
        };
        let mut adopted = match self.adopt().await {
            Ok(adopted) => adopted,
            Err(end) => return end,
        };
        let prep_adopted =
            adopted.iter().position(|(name, _)| Some(name) == prepared.job_prep.as_ref().map(|p| &p.name));
        let prep_adopted = prep_adopted.map(|i| adopted.swap_remove(i).1);
        // Processes past preparation were found: preparation is over.
        let prepared_before = !adopted.is_empty();
        if !prepared_before
            && prep_adopted.is_none()
            && let Err(end) = self.ensure_image().await
        {
            return end;
        }
        if let Some(prep) = prepared.job_prep.as_ref().filter(|_| !prepared_before) {
            let started = match prep_adopted {
                Some(handle) => Ok(self.adopted(&prep.name, handle, false)),
                None => {
                    self.log("running job preparation").await;
                    self.start(&prepared, prep, false).await
                }
            };
            let exit = match started {
                Ok(i) => self.wait_one(i).await,
                Err(e) => Err(e),
            };
            match exit {
                Ok(exit @ Exit::Code(0)) => self.log(&format!("job preparation {}", describe(exit))).await,
                Ok(exit) => {
                    self.log(&format!("job preparation {}", describe(exit))).await;
                    let error = TaskError {
                        code: JOB_PREPARATION_FAILED.to_owned(),
                        message: JOB_PREPARATION_MESSAGE.to_owned(),
                    };
                    return End { exit_code: exit.code(), error: Some(error) };
                }
                Err(e) => return End::failed(JOB_PREPARATION_FAILED, format!("job preparation: {e}")),
            }
        }
        if prepared.processes.is_empty() {
            self.log("no processes run on this node").await;
            return End { exit_code: Some(0), error: None };
        }
        self.report(TaskPhase::Running, None, None);
        for process in &prepared.processes {
            let daemon = process.name.starts_with("ps-");
            if let Some(i) = adopted.iter().position(|(name, _)| *name == process.name) {
                let (name, handle) = adopted.swap_remove(i);
                self.adopted(&name, handle, daemon);
                continue;
            }
            self.log(&format!("starting process {}", process.name)).await;
            if let Err(e) = self.start(&prepared, process, daemon).await {
                return End::failed(JOB_FAILED, e.to_string());
            }
        }
        self.wait_all().await
    }

    /// When resuming: what the earlier agent started, by process name (empty when it started
    /// nothing yet). Host processes cannot be found again, so a job without a container fails.
    async fn adopt(&mut self) -> Result<Vec<(String, Box<dyn Running>)>, End> {
        if !self.launch.resume {
            return Ok(Vec::new());
        }
        let lost = |reason: String| End::failed(JOB_FAILED, format!("{RESTARTED}: {reason}"));
        if self.node.container_image(&self.task.spec).is_none() {
            self.log("the node agent restarted; the job's host processes cannot be reattached").await;
            return Err(lost("its processes ran on the host and cannot be reattached".to_owned()));
        }
        match self.runtime.adopt(&self.owner()).await {
            Ok(found) => {
                let names: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
                self.log(&format!("the node agent restarted; reattached to [{}]", names.join(", "))).await;
                Ok(found)
            }
            Err(e) => {
                self.log(&format!("the node agent restarted and cannot reattach: {e}")).await;
                Err(lost(e.to_string()))
            }
        }
    }

    /// Makes the job's image available when it has one, the progress going to the execution log.
    /// An image the node's map sends to the host needs nothing.
    async fn ensure_image(&self) -> Result<(), End> {
        let Some(settings) = self.task.spec.container_settings.as_ref() else { return Ok(()) };
        let original = &settings.image_source_registry.image;
        let Some(container) = self.container("pull") else {
            self.log(&format!("image {original} runs on the host on this node (image map)")).await;
            return Ok(());
        };
        if container.image != *original {
            self.log(&format!("image {original} is mapped to {} on this node", container.image)).await;
        }
        if settings.image_source_registry.credentials.as_ref().is_some_and(|c| c.password.is_none()) {
            let message = format!(
                "cannot pull image {}: its registry password is a Key Vault reference, which this service cannot \
                 resolve; give the password itself",
                container.image
            );
            self.log(&message).await;
            return Err(End::failed(IMAGE_PULL_FAILED, message));
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let pull = async {
            let result = self.runtime.pull(&container, &tx).await;
            drop(tx);
            result
        };
        let write = async {
            while let Some(line) = rx.recv().await {
                self.log(&line).await;
            }
        };
        let (result, ()) = tokio::join!(pull, write);
        result.map_err(|e| {
            let code = if matches!(e, RuntimeError::Image { .. }) { IMAGE_PULL_FAILED } else { JOB_PREPARATION_FAILED };
            End::failed(code, e.to_string())
        })
    }

    fn owner(&self) -> TaskOwner {
        TaskOwner { node: self.node.node_id.clone(), job: self.task.job.clone(), epoch: self.task.epoch }
    }

    /// Takes over a process an earlier agent started; returns its index in `self.procs`.
    fn adopted(&mut self, name: &str, handle: Box<dyn Running>, daemon: bool) -> usize {
        tracing::info!(job.id = %self.task.id, process.name = %name, process.id = %handle.id(), "process reattached");
        self.procs.push(Proc { name: name.to_owned(), daemon, handle, exit: None });
        self.procs.len() - 1
    }

    async fn prepare(&mut self) -> Result<Prepared, String> {
        let (node, task) = (self.node, self.task);
        let (mount_root, job_temp_root) = (node.mount_root(), node.job_temp_root());
        let shared_job_temp = node.storage_root.join(".batchai").join("shared").join(&task.uid);
        let name = job_name(&task.id);
        let ctx = JobContext {
            spec: &task.spec,
            job_name: name,
            output_segment: &task.output_segment,
            rank: task.rank,
            nodes: &task.nodes,
            gpus: u32::try_from(self.launch.gpus.len()).unwrap_or(u32::MAX),
            mount_root: &mount_root,
            job_temp_root: &job_temp_root,
            shared_job_temp: &shared_job_temp,
        };
        let paths = env::job_paths(&ctx);
        let volumes = job_volumes(task.spec.mount_volumes.as_ref(), &node.storage_root, &task.file_servers)
            .map_err(|e| format!("cannot mount the job's volumes: {e}"))?;
        let hostfile = env::hostfile(&task.nodes, None);
        let mut dirs = vec![paths.job_temp.clone(), paths.shared_job_temp.clone(), paths.stdouterr.clone()];
        dirs.extend(paths.outputs.iter().map(|(_, p)| p.clone()));
        let (keep, root, hostfile_path) = (name.to_owned(), job_temp_root.clone(), paths.hostfile.clone());
        // AZ_BATCHAI_JOB_TEMP_DIR is wiped when a node starts a new job. Links are removed, never
        // followed, so shares mounted in an old job are untouched.
        blocking(move || wipe_except(&root, &keep))
            .await
            .map_err(|e| format!("cannot prepare the job's directories: {e}"))?;
        // Mounted before the directories are made: they may lie on a mount.
        mount_volumes(&paths.job_mount_root, volumes)
            .await
            .map_err(|e| format!("cannot mount the job's volumes: {e}"))?;
        blocking(move || {
            for dir in &dirs {
                std::fs::create_dir_all(dir)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display())))?;
            }
            std::fs::write(&hostfile_path, hostfile)
        })
        .await
        .map_err(|e| format!("cannot prepare the job's directories: {e}"))?;
        let log_name = if task.rank == 0 { "execution.log".to_owned() } else { format!("execution-{}.log", task.rank) };
        self.log = Some(paths.stdouterr.join(log_name));
        self.log(&format!(
            "preparing job {} (epoch {}) on node {} as rank {} of {}",
            task.id,
            task.epoch,
            node.node_id,
            task.rank,
            task.nodes.len()
        ))
        .await;
        self.log("directories, mounts and host file ready").await;
        let mut job_prep = toolkit::job_preparation(&ctx);
        if let Some(prep) = job_prep.as_mut().filter(|_| task.rank > 0) {
            // Every node runs it: each keeps its own log files.
            for file in [&mut prep.stdout, &mut prep.stderr] {
                if let Some(stem) = file.strip_suffix(".txt") {
                    *file = format!("{stem}-{}.txt", task.rank);
                }
            }
        }
        let mut env = env::job_env(&ctx, &paths);
        if node.container_image(&task.spec).is_none() {
            // Containers get theirs as devices; host processes must be told which to use.
            env.extend(cuda_env(!node.gpus.is_empty(), &self.launch.gpus));
        }
        Ok(Prepared {
            env,
            processes: toolkit::processes(&ctx, &paths),
            job_prep,
            job_temp: paths.job_temp,
            stdouterr: paths.stdouterr,
        })
    }

    /// The container the job's processes run in, when the job asks for one and the node's image
    /// map does not send it to the host. The image is the mapped one. Paths are mounted at the
    /// same place inside, so the job's variables hold there too.
    fn container(&self, process: &str) -> Option<ContainerSpec> {
        let settings = self.task.spec.container_settings.as_ref()?;
        let image = self.node.container_image(&self.task.spec)?;
        let registry = &settings.image_source_registry;
        let same = |p: PathBuf| (p.clone(), p);
        Some(ContainerSpec {
            image,
            registry: Some(RegistryAuth {
                server: registry.server_url.clone(),
                username: registry.credentials.as_ref().map(|c| c.username.clone()),
                password: registry.credentials.as_ref().and_then(|c| c.password.clone()),
            }),
            gpus: self.launch.gpus.iter().map(|g| g.uuid.clone()).collect(),
            mounts: vec![
                same(self.node.storage_root.clone()),
                same(self.node.mount_root()),
                same(self.node.job_temp_root()),
            ],
            shm_size: settings.shm_size.clone(),
            owner: self.owner(),
            process: process.to_owned(),
        })
    }

    /// Starts `process`; returns its index in `self.procs`.
    async fn start(&mut self, prepared: &Prepared, process: &Process, daemon: bool) -> Result<usize, RuntimeError> {
        let mut env = prepared.env.clone();
        env.extend(process.env.iter().cloned());
        let spec = ProcessSpec {
            name: format!("{}/{}", job_name(&self.task.id), process.name),
            command: process.command.clone(),
            env,
            cwd: prepared.job_temp.clone(),
            stdout: prepared.stdouterr.join(&process.stdout),
            stderr: prepared.stdouterr.join(&process.stderr),
            container: self.container(&process.name),
        };
        let kind = if spec.container.is_some() { "container" } else { "process" };
        let started = std::time::Instant::now();
        let handle = self.runtime.start(spec).await.inspect_err(|e| {
            tracing::warn!(job.id = %self.task.id, process.name = %process.name, error = %e, "cannot start process");
        })?;
        self.node.metrics.starts.with_label_values(&[kind]).observe(started.elapsed().as_secs_f64());
        tracing::info!(job.id = %self.task.id, process.name = %process.name, process.id = %handle.id(), "process started");
        self.procs.push(Proc { name: process.name.clone(), daemon, handle, exit: None });
        Ok(self.procs.len() - 1)
    }

    async fn wait_one(&mut self, i: usize) -> Result<Exit, RuntimeError> {
        let exit = self.procs[i].handle.wait().await?;
        self.procs[i].exit = Some(exit);
        Ok(exit)
    }

    /// Waits until every non-daemon process has exited 0, or the first failure. A node that
    /// runs only daemons waits for them instead (they are then its whole part).
    async fn wait_all(&mut self) -> End {
        let only_daemons = self.procs.iter().all(|p| p.daemon);
        loop {
            let done = self.procs.iter().all(|p| p.exit.is_some() || (p.daemon && !only_daemons));
            if done {
                return End { exit_code: Some(0), error: None };
            }
            let Some((i, exit)) = first_exit(&mut self.procs).await else {
                return End { exit_code: Some(0), error: None };
            };
            let name = self.procs[i].name.clone();
            let exit = match exit {
                Ok(exit) => exit,
                Err(e) => return End::failed(JOB_FAILED, format!("lost process {name}: {e}")),
            };
            self.procs[i].exit = Some(exit);
            self.log(&format!("process {name} {}", describe(exit))).await;
            match exit {
                Exit::Code(0) => {}
                Exit::Code(code) => return End { exit_code: Some(code), error: None },
                Exit::Signal(_) => return End::failed(JOB_FAILED, format!("process {name} {}", describe(exit))),
            }
        }
    }

    /// Stops every process started (those that exited too, so what they left behind goes),
    /// all at once, each with the grace.
    async fn stop_all(&mut self) {
        if self.procs.is_empty() {
            return;
        }
        let running: Vec<String> = self.procs.iter().filter(|p| p.exit.is_none()).map(|p| p.name.clone()).collect();
        if !running.is_empty() {
            self.log(&format!("stopping {}", running.join(", "))).await;
        }
        let grace = self.node.stop_grace;
        let results = join_all(self.procs.iter_mut().map(|p| p.handle.stop(grace)).collect()).await;
        for (p, result) in self.procs.iter_mut().zip(results) {
            match result {
                Ok(exit) => {
                    p.exit.get_or_insert(exit);
                }
                Err(e) => {
                    tracing::warn!(job.id = %self.task.id, process.name = %p.name, error = %e, "cannot stop process")
                }
            }
        }
    }
}

/// Fetches the shares the job can see (its cluster's mounts and its own) before it starts.
async fn stage_in(node: &NodeContext, stager: &Stager, task: &TaskAssignment) -> Result<Vec<Share>, String> {
    let root = node.storage_root.clone();
    let mount_root = node.mount_root();
    let mut shares = blocking(move || Ok(linked_shares(&[mount_root], &root))).await.map_err(|e| e.to_string())?;
    for m in job_mounts(task.spec.mount_volumes.as_ref(), &node.storage_root).map_err(|e| e.to_string())? {
        if let Ok(rel) = m.source.strip_prefix(&node.storage_root) {
            let mut parts = rel.iter().filter_map(|p| p.to_str());
            if let (Some(account), Some(share)) = (parts.next(), parts.next()) {
                shares.push(Share { account: account.to_owned(), share: share.to_owned() });
            }
        }
    }
    shares.sort();
    shares.dedup();
    for share in &shares {
        let fetched =
            stager.pull(share).await.map_err(|e| format!("fetching {}/{}: {e}", share.account, share.share))?;
        tracing::info!(job.id = %task.id, account = %share.account, share = %share.share, fetched, "share staged in");
    }
    Ok(shares)
}

async fn push_all(stager: &Stager, shares: &[Share]) -> Result<usize, crate::staging::StagingError> {
    let mut pushed = 0;
    for share in shares {
        pushed += stager.push(share).await?;
    }
    Ok(pushed)
}

/// The last push, after the job's processes ended: retried, since what it misses is lost.
async fn push_final(stager: &Arc<Stager>, shares: &[Share]) -> Result<usize, crate::staging::StagingError> {
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match push_all(stager, shares).await {
            Ok(n) => return Ok(n),
            Err(e) if attempt >= 5 => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, attempt, "pushing the job's outputs failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
        }
    }
}

fn describe(exit: Exit) -> String {
    match exit {
        Exit::Code(code) => format!("exited with code {code}"),
        Exit::Signal(signal) => format!("was killed by signal {signal}"),
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The first of the still-running processes to end, with its index; `None` when none runs.
/// Cancel-safe, as [`Running::wait`] is.
async fn first_exit(procs: &mut [Proc]) -> Option<(usize, Result<Exit, RuntimeError>)> {
    let mut waits: Vec<(usize, BoxFuture<'_, Result<Exit, RuntimeError>>)> =
        procs.iter_mut().enumerate().filter(|(_, p)| p.exit.is_none()).map(|(i, p)| (i, p.handle.wait())).collect();
    if waits.is_empty() {
        return None;
    }
    std::future::poll_fn(|cx| {
        for (i, wait) in &mut waits {
            if let Poll::Ready(exit) = wait.as_mut().poll(cx) {
                return Poll::Ready(Some((*i, exit)));
            }
        }
        Poll::Pending
    })
    .await
}

/// Runs the futures concurrently; their results in order.
async fn join_all<T>(futures: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    let mut slots: Vec<(BoxFuture<'_, T>, Option<T>)> = futures.into_iter().map(|f| (f, None)).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, result) in &mut slots {
            if result.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *result = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    slots.into_iter().filter_map(|(_, result)| result).collect()
}

/// Removes everything in `root` but `keep`, without following links.
fn wipe_except(root: &Path, keep: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(root)?;
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_name() == keep {
            continue;
        }
        if entry.file_type()?.is_dir() {
            // An old job's mounts go first: removing files through one would delete what it serves.
            if let Some(busy) = crate::mounts::unmount_under(&entry.path()).first() {
                return Err(std::io::Error::other(format!("{} is still mounted", busy.display())));
            }
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "executor_tests.rs"]
pub(crate) mod tests;
