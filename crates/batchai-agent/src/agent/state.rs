//! What the agent knows and does between syncs: its tasks and their markers, the node's setup,
//! and the request it sends next. Changed only by the sync loop, and free of HTTP, so it is
//! tested by feeding it answers and awaiting its background work's reports.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use batchai_core::protocol::{
    ClusterAssignment, NodeFacts, SetupReport, SyncRequest, SyncResponse, TaskAssignment, TaskError, TaskPhase,
    TaskReport,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::executor::{self, JOB_FAILED, Launch, NodeContext};
use crate::gpus::{GpuPool, TaskKey, Want};
use crate::runtime::{Runtime, TaskOwner};
use crate::setup::{self, SetupContext};

/// How long a task's Preparing or Running phase is held back before it is reported, in case
/// the task moves on meanwhile: a job that ends at once (`true`) is then reported exited in
/// one sync instead of one sync per phase, and an Exited report is never held back.
pub(super) const SETTLE: Duration = Duration::from_millis(10);

/// Writes `path` atomically.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The receiving ends of what runs in the background, kept apart from [`State`] so the sync
/// loop can wait on them while it borrows the state.
pub(super) struct Events {
    pub(super) tasks: mpsc::UnboundedReceiver<TaskReport>,
    pub(super) setup: mpsc::UnboundedReceiver<SetupReport>,
}

impl Events {
    pub(super) fn drain(&mut self, state: &mut State) {
        while let Ok(r) = self.tasks.try_recv() {
            state.on_task_report(r);
        }
        while let Ok(r) = self.setup.try_recv() {
            state.on_setup_report(r);
        }
    }
}

struct TaskEntry {
    report: TaskReport,
    /// Set while the executor runs.
    stop: Option<watch::Sender<bool>>,
    handle: Option<JoinHandle<()>>,
    /// False once the server stopped listing it: dropped as soon as it has stopped.
    listed: bool,
    /// It may have left containers for the runtime to remove once the server has its outcome.
    containers: bool,
}

impl TaskEntry {
    fn finished(report: TaskReport, containers: bool) -> Self {
        Self { report, stop: None, handle: None, listed: true, containers }
    }

    fn running(&self) -> bool {
        self.report.phase != TaskPhase::Exited
    }

    fn stop(&self) {
        if let Some(stop) = &self.stop {
            let _ = stop.send(true);
        }
    }
}

#[derive(Default)]
struct SetupState {
    /// The allocation the server last named; `None` when the node has no cluster.
    wanted: Option<i64>,
    /// The last finished setup.
    done: Option<SetupReport>,
    running: Option<RunningSetup>,
    /// A newer allocation to set up once the running (stopped) setup has ended.
    pending: Option<ClusterAssignment>,
    /// Whether `mounts/` is known to hold no links.
    mounts_clean: bool,
}

struct RunningSetup {
    epoch: i64,
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl RunningSetup {
    /// Whether it still works towards its allocation (it was not asked to stop).
    fn serves(&self, epoch: i64) -> bool {
        self.epoch == epoch && !*self.stop.borrow()
    }
}

/// Everything the agent knows; changed only by the sync loop.
pub(super) struct State {
    pub(super) node: Arc<NodeContext>,
    runtime: Arc<dyn Runtime>,
    facts: NodeFacts,
    pub(super) facts_pending: bool,
    known: Option<String>,
    /// Something new to report: sync without waiting.
    pub(super) urgent: bool,
    /// Set when a task starts or begins running: the sync loop waits until then (or until a
    /// task exits) before reporting, so a short task's phases reach the server in one sync
    /// ([`SETTLE`]).
    pub(super) settle_until: Option<tokio::time::Instant>,
    tasks: BTreeMap<TaskKey, TaskEntry>,
    gpus: GpuPool,
    /// Markers left by a previous run, settled by the first answer.
    previous: Option<HashMap<TaskKey, TaskReport>>,
    setup: SetupState,
    task_reports: mpsc::UnboundedSender<TaskReport>,
    setup_reports: mpsc::UnboundedSender<SetupReport>,
}

impl State {
    pub(super) fn new(node: NodeContext, runtime: Arc<dyn Runtime>, facts: NodeFacts) -> (Self, Events) {
        let (task_reports, tasks) = mpsc::unbounded_channel();
        let (setup_reports, setup) = mpsc::unbounded_channel();
        let done = std::fs::read(node.data_dir.join("setup.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let state = Self {
            previous: Some(load_markers(&node.data_dir.join("tasks"))),
            setup: SetupState { done, ..SetupState::default() },
            gpus: GpuPool::new(node.gpus.clone()),
            node: Arc::new(node),
            runtime,
            facts,
            facts_pending: true,
            known: None,
            urgent: true,
            settle_until: None,
            tasks: BTreeMap::new(),
            task_reports,
            setup_reports,
        };
        (state, Events { tasks, setup })
    }

    pub(super) fn request(&self, wait: Duration) -> SyncRequest {
        SyncRequest {
            facts: self.facts_pending.then(|| self.facts.clone()),
            setup: self.setup.done.clone().filter(|d| Some(d.alloc_epoch) == self.setup.wanted),
            tasks: self.tasks.values().map(|t| t.report.clone()).collect(),
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            known: self.known.clone(),
        }
    }

    fn marker(&self, key: &TaskKey) -> PathBuf {
        let digest = Sha256::digest(format!("{}\n{}", key.0, key.1).as_bytes());
        let name: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        self.node.data_dir.join("tasks").join(format!("{name}.json"))
    }

    fn save_marker(&self, report: &TaskReport) {
        let path = self.marker(&(report.job.clone(), report.epoch));
        let saved = std::fs::create_dir_all(self.node.data_dir.join("tasks"))
            .and_then(|()| write_atomic(&path, &serde_json::to_vec(report).unwrap_or_default()));
        if let Err(e) = saved {
            tracing::warn!(job.id = %report.job, error = %e, "cannot save the task marker");
        }
    }

    fn remove_marker(&self, key: &TaskKey) {
        match std::fs::remove_file(self.marker(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(job.id = %key.0, error = %e, "cannot remove the task marker");
            }
            _ => {}
        }
    }

    /// Records an executor's report; true when it changes what the agent reports.
    /// `/metrics`: jobs running here, and which job each GPU in use serves.
    fn count_running(&self) {
        let m = &self.node.metrics;
        m.running_jobs.set(self.tasks.values().filter(|e| e.running()).count() as i64);
        m.gpu_job.reset();
        for (job, gpus) in self.gpus.in_use() {
            for g in gpus {
                m.gpu_job.with_label_values(&[g.uuid.as_str(), job.as_str()]).set(1);
            }
        }
    }

    pub(super) fn on_task_report(&mut self, report: TaskReport) -> bool {
        let key = (report.job.clone(), report.epoch);
        let Some(entry) = self.tasks.get_mut(&key) else { return false };
        if entry.report == report || !entry.running() {
            return false;
        }
        entry.report = report;
        if entry.running() {
            self.urgent = true;
            self.settle();
            return true;
        }
        self.settle_until = None;
        entry.stop = None;
        entry.handle = None;
        self.gpus.release(&key);
        if entry.listed {
            let report = entry.report.clone();
            self.save_marker(&report);
        } else {
            let containers = entry.containers;
            self.tasks.remove(&key);
            self.remove_marker(&key);
            if containers {
                self.forget(key);
            }
        }
        self.count_running();
        self.urgent = true;
        true
    }

    /// Records the outcome of a setup; true when it changes what the agent reports.
    pub(super) fn on_setup_report(&mut self, report: SetupReport) -> bool {
        self.setup.running = None;
        let mut changed = false;
        if self.setup.wanted == Some(report.alloc_epoch) && self.setup.pending.is_none() {
            let path = self.node.data_dir.join("setup.json");
            if let Err(e) = write_atomic(&path, &serde_json::to_vec(&report).unwrap_or_default()) {
                tracing::warn!(error = %e, "cannot save the setup outcome");
            }
            self.setup.done = Some(report);
            self.urgent = true;
            changed = true;
        }
        if let Some(cluster) = self.setup.pending.take() {
            self.start_setup(cluster);
        } else if self.setup.wanted.is_none() {
            self.unmount();
        }
        changed
    }

    /// Whether the next answer is the first since the agent started.
    pub(super) fn first_answer(&self) -> bool {
        self.previous.is_some()
    }

    /// Before acting on the first answer: stops and removes what an earlier run of the agent
    /// left running for tasks the server no longer lists (deleted, terminated or moved to
    /// other nodes while the agent was down), so it holds no GPU the new tasks get.
    pub(super) async fn sweep(&self, response: &SyncResponse) {
        let keep: Vec<TaskKey> = response.tasks.iter().map(|t| (t.job.clone(), t.epoch)).collect();
        if let Err(e) = self.runtime.sweep(&self.node.node_id, &keep, self.node.stop_grace).await {
            tracing::warn!(error = %e, "cannot clean up what an earlier run of the agent left");
        }
    }

    fn owner(&self, key: &TaskKey) -> TaskOwner {
        TaskOwner { node: self.node.node_id.clone(), job: key.0.clone(), epoch: key.1 }
    }

    /// Drops what the runtime kept of a task whose outcome the server has.
    fn forget(&self, key: TaskKey) {
        let (runtime, owner) = (self.runtime.clone(), self.owner(&key));
        tokio::spawn(async move {
            if let Err(e) = runtime.forget(&owner).await {
                tracing::warn!(job.id = %owner.job, epoch = owner.epoch, error = %e, "cannot clean up after a task");
            }
        });
    }

    /// Carries out an answer of the server.
    pub(super) fn act(&mut self, response: SyncResponse) {
        self.set_cluster(response.cluster);
        let listed: BTreeMap<TaskKey, TaskAssignment> =
            response.tasks.into_iter().map(|t| ((t.job.clone(), t.epoch), t)).collect();
        for (key, report) in self.previous.take().unwrap_or_default() {
            let Some(assignment) = listed.get(&key) else {
                self.remove_marker(&key);
                self.forget(key);
                continue;
            };
            if report.phase == TaskPhase::Exited {
                self.tasks.insert(key, TaskEntry::finished(report, true));
            } else {
                tracing::info!(job.id = %key.0, epoch = key.1, "task was running when the agent stopped; resuming it");
                let assignment = assignment.clone();
                self.start_task(key, assignment, true);
            }
            self.urgent = true;
        }
        let mut acknowledged = Vec::new();
        for (key, entry) in &mut self.tasks {
            match listed.get(key) {
                Some(assignment) => {
                    entry.listed = true;
                    if assignment.stop {
                        entry.stop();
                    }
                }
                None if entry.running() => {
                    entry.listed = false;
                    entry.stop();
                }
                None => acknowledged.push((key.clone(), entry.containers)),
            }
        }
        for (key, containers) in acknowledged {
            self.tasks.remove(&key);
            self.remove_marker(&key);
            if containers {
                self.forget(key);
            }
        }
        // A task stopped because it is no longer listed may still hold the GPUs.
        let busy = self.tasks.values().any(|t| !t.listed);
        for (key, assignment) in listed {
            if self.tasks.contains_key(&key) {
                continue;
            }
            if assignment.stop {
                let report = TaskReport {
                    job: key.0.clone(),
                    epoch: key.1,
                    phase: TaskPhase::Exited,
                    exit_code: None,
                    error: None,
                };
                self.save_marker(&report);
                self.tasks.insert(key, TaskEntry::finished(report, false));
                self.urgent = true;
            } else if !busy {
                self.start_task(key, assignment, false);
            }
        }
        self.known = Some(response.version);
    }

    /// Starts (or, with `resume`, picks up) a task; leaves it for a later answer while another
    /// task still holds the node's GPUs.
    fn start_task(&mut self, key: TaskKey, assignment: TaskAssignment, resume: bool) {
        let gpus = match self.gpus.allocate(&key, Want::Whole) {
            Ok(gpus) => gpus,
            Err(e) => {
                tracing::info!(job.id = %assignment.id, error = %e, "task waits for GPUs");
                return;
            }
        };
        tracing::info!(job.id = %assignment.id, epoch = assignment.epoch, rank = assignment.rank, gpus = gpus.len(), resume, "starting task");
        let report =
            TaskReport { job: key.0.clone(), epoch: key.1, phase: TaskPhase::Preparing, exit_code: None, error: None };
        self.save_marker(&report);
        let containers = resume || self.node.container_image(&assignment.spec).is_some();
        let launch = Launch { gpus, resume };
        let (stop, stop_rx) = watch::channel(false);
        let (node, runtime, reports) = (self.node.clone(), self.runtime.clone(), self.task_reports.clone());
        let handle = tokio::spawn(async move {
            let (job, epoch) = (assignment.job.clone(), assignment.epoch);
            let tx = reports.clone();
            // Every line the task logs (the runtime's, the mounts', staging's) names the job.
            let span = tracing::info_span!("task", job.id = %assignment.id, epoch = assignment.epoch);
            let run = tokio::spawn(tracing::Instrument::instrument(
                async move { executor::execute(&node, runtime.as_ref(), &assignment, launch, stop_rx, tx).await },
                span,
            ));
            if let Err(e) = run.await {
                tracing::error!(job.id = %job, error = %e, "task executor failed");
                let error = TaskError { code: JOB_FAILED.to_owned(), message: format!("the node agent failed: {e}") };
                let _ = reports.send(TaskReport {
                    job,
                    epoch,
                    phase: TaskPhase::Exited,
                    exit_code: None,
                    error: Some(error),
                });
            }
        });
        let entry = TaskEntry { report, stop: Some(stop), handle: Some(handle), listed: true, containers };
        self.tasks.insert(key, entry);
        self.count_running();
        self.urgent = true;
        self.settle();
    }

    fn settle(&mut self) {
        self.settle_until.get_or_insert_with(|| tokio::time::Instant::now() + SETTLE);
    }

    fn set_cluster(&mut self, cluster: Option<ClusterAssignment>) {
        let setup = &mut self.setup;
        let Some(cluster) = cluster else {
            setup.wanted = None;
            setup.pending = None;
            if let Some(running) = &setup.running {
                // Unmounted once it has stopped.
                let _ = running.stop.send(true);
                return;
            }
            if setup.done.take().is_some() {
                let _ = std::fs::remove_file(self.node.data_dir.join("setup.json"));
            }
            self.unmount();
            return;
        };
        setup.wanted = Some(cluster.alloc_epoch);
        setup.mounts_clean = false;
        if let Some(running) = &setup.running {
            if running.serves(cluster.alloc_epoch) {
                setup.pending = None;
            } else {
                // Set up again once the stopped one has ended.
                let _ = running.stop.send(true);
                setup.pending = Some(cluster);
            }
            return;
        }
        if setup.done.as_ref().is_none_or(|d| d.alloc_epoch != cluster.alloc_epoch) {
            self.start_setup(cluster);
        }
    }

    fn start_setup(&mut self, cluster: ClusterAssignment) {
        tracing::info!(cluster.id = %cluster.id, alloc_epoch = cluster.alloc_epoch, "setting up the node");
        let ctx = SetupContext {
            node_id: self.node.node_id.clone(),
            mount_root: self.node.mount_root(),
            storage_root: self.node.storage_root.clone(),
            work_dir: self.node.data_dir.join("setup"),
            stop_grace: self.node.stop_grace,
        };
        let (stop, stop_rx) = watch::channel(false);
        let (runtime, reports, epoch) = (self.runtime.clone(), self.setup_reports.clone(), cluster.alloc_epoch);
        let handle = tokio::spawn(async move {
            let span = tracing::info_span!("setup", cluster.id = %cluster.id, alloc_epoch = cluster.alloc_epoch);
            let run = tokio::spawn(tracing::Instrument::instrument(
                async move { setup::prepare(&ctx, runtime.as_ref(), &cluster, stop_rx).await },
                span,
            ));
            let report = run.await.unwrap_or_else(|e| SetupReport {
                alloc_epoch: epoch,
                error: Some(format!("the node agent failed while setting up the node: {e}")),
            });
            let _ = reports.send(report);
        });
        self.setup.running = Some(RunningSetup { epoch, stop, handle });
    }

    /// Removes the cluster's mounts (once per loss of the cluster).
    fn unmount(&mut self) {
        if self.setup.mounts_clean {
            return;
        }
        match setup::unmount_all(&self.node.mount_root()) {
            Ok(()) => self.setup.mounts_clean = true,
            Err(e) => tracing::warn!(error = %e, "cannot remove the cluster's mounts"),
        }
    }

    /// Stops everything running and waits until it has stopped.
    pub(super) async fn shutdown(mut self) {
        let mut handles = Vec::new();
        for entry in self.tasks.values_mut() {
            entry.stop();
            handles.extend(entry.handle.take());
        }
        if let Some(running) = self.setup.running.take() {
            let _ = running.stop.send(true);
            handles.push(running.handle);
        }
        for handle in handles {
            let _ = handle.await;
        }
    }
}

/// The markers of a previous run, by task.
fn load_markers(dir: &Path) -> HashMap<TaskKey, TaskReport> {
    let Ok(entries) = std::fs::read_dir(dir) else { return HashMap::new() };
    let mut out = HashMap::new();
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        match std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<TaskReport>(&b).ok()) {
            Some(report) => {
                out.insert((report.job.clone(), report.epoch), report);
            }
            None => {
                tracing::warn!(path = %path.display(), "removing an unreadable task marker");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
