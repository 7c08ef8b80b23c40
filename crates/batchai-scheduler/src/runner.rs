//! The loop that applies placement to the store: sizes clusters from the node pool, places
//! queued jobs, gives up on silent nodes and requeues or fails their jobs.
//!
//! Every decision is applied as a guarded transaction, so any number of servers may run this
//! loop on one Postgres: a node is never placed twice, and a lost race only wastes a tick.

use std::sync::Arc;
use std::time::Duration;

use batchai_core::models::ClusterSpec;
use batchai_core::state::{AllocationState, ExecutionState, NodeState as StoreNodeState};
use batchai_core::time::{Millis, now_millis};
use batchai_store::{JobError, JobOutcome, NodeRow, SchedCluster, SchedJob, Store, StoreError};
use serde_json::json;
use tokio::sync::Notify;

use crate::{Job, Node, NodeState, Snapshot, WaitClass, plan};

#[derive(Debug, Clone)]
pub struct Settings {
    /// How often the loop runs when nothing wakes it.
    pub tick: Duration,
    /// A node silent this long is unusable and its job requeued or failed.
    pub node_timeout: Duration,
    /// How many times a job is requeued after losing a node before it fails.
    pub max_requeues: i32,
    /// Idle time before autoscale gives a node back.
    pub autoscale_grace: Duration,
    /// Queued jobs considered per cluster and tick.
    pub queue_window: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(500),
            node_timeout: Duration::from_secs(60),
            max_requeues: 2,
            autoscale_grace: Duration::from_secs(60),
            queue_window: 1000,
        }
    }
}

/// Wakes the long polls of nodes whose assignments this server just changed (the agent
/// protocol implements it); other servers see the change through `nodes.changed_at`.
pub trait NodeWaker: Send + Sync {
    fn wake(&self, nodes: &[String]);
}

struct NoWaker;

impl NodeWaker for NoWaker {
    fn wake(&self, _: &[String]) {}
}

/// What the loop reports for `/metrics` (the API's metrics implement it).
pub trait Observer: Send + Sync {
    /// A scheduling pass took `secs`.
    fn pass(&self, secs: f64);
    /// A job was placed `queued_secs` after it was submitted.
    fn placed(&self, queued_secs: f64, backfilled: bool);
    /// A job that lost its nodes went back to the queue.
    fn requeued(&self);
    /// After a pass: the queued jobs of every cluster the pass looked at, by why they wait.
    fn pending(&self, counts: &[(WaitClass, usize)]);
}

struct NoObserver;

impl Observer for NoObserver {
    fn pass(&self, _: f64) {}
    fn placed(&self, _: f64, _: bool) {}
    fn requeued(&self) {}
    fn pending(&self, _: &[(WaitClass, usize)]) {}
}

/// Handles to wake the loop and to tell the agent protocol that desired states changed.
#[derive(Clone)]
pub struct Signals {
    /// Notified by whoever queues work or frees nodes.
    pub wake: Arc<Notify>,
    /// Notified after the loop changed what some node must run.
    pub changed: Arc<Notify>,
    /// Told at once which nodes were given jobs.
    pub nodes: Arc<dyn NodeWaker>,
    /// Told what the loop did, for `/metrics`.
    pub observer: Arc<dyn Observer>,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            wake: Default::default(),
            changed: Default::default(),
            nodes: Arc::new(NoWaker),
            observer: Arc::new(NoObserver),
        }
    }
}

/// Runs until `shutdown` flips.
pub async fn run(
    store: Arc<dyn Store>,
    settings: Settings,
    signals: Signals,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_sweep: Option<std::time::Instant> = None;
    loop {
        // Passes come as fast as jobs end under load; the sweep for orphans reads every node
        // and job, so it runs at most once per tick.
        let sweep = last_sweep.is_none_or(|t| t.elapsed() >= settings.tick);
        if sweep {
            last_sweep = Some(std::time::Instant::now());
        }
        match tick(store.as_ref(), &settings, &signals, sweep).await {
            Ok(true) => signals.changed.notify_one(),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "scheduling pass failed; retrying"),
        }
        tokio::select! {
            _ = signals.wake.notified() => {}
            _ = tokio::time::sleep(settings.tick) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One pass over every cluster, with the sweep for orphaned nodes when `sweep`. True when
/// some node's desired state changed.
pub async fn tick(store: &dyn Store, settings: &Settings, signals: &Signals, sweep: bool) -> Result<bool, StoreError> {
    let started = std::time::Instant::now();
    let changed = pass(store, settings, signals, sweep).await;
    signals.observer.pass(started.elapsed().as_secs_f64());
    changed
}

async fn pass(store: &dyn Store, settings: &Settings, signals: &Signals, sweep: bool) -> Result<bool, StoreError> {
    let now = now_millis();
    let mut changed = false;
    let lost = store.mark_lost(now - settings.node_timeout.as_millis() as i64, now).await?;
    for node in &lost {
        let what = if node.left { "was shut down" } else { "stopped responding" };
        if node.left {
            tracing::info!(node.id = %node.id, "node {what}; marked unusable until it syncs again");
        } else {
            tracing::warn!(node.id = %node.id, "node {what}; marked unusable until it syncs again");
        }
        if let (Some((job, epoch)), Some(cluster)) = (&node.job, &node.cluster_key) {
            let jobs = store.cluster_jobs(cluster, 0).await?;
            if let Some(j) = jobs.iter().find(|j| &j.key == job && j.epoch == *epoch) {
                let why = format!("node {} {what} while running the job", node.id);
                requeue_or_fail(store, signals, j, settings.max_requeues, &why, now).await?;
            }
        }
    }
    changed |= !lost.is_empty();
    if sweep {
        changed |= store.release_orphans(now).await? > 0;
    }
    let mut waiting: Vec<(WaitClass, usize)> = WaitClass::ALL.iter().map(|&c| (c, 0)).collect();
    for cluster in store.scheduling_clusters().await? {
        if cluster.deleting {
            continue;
        }
        changed |= schedule_cluster(store, settings, signals, &cluster, now, &mut waiting).await?;
    }
    signals.observer.pending(&waiting);
    Ok(changed)
}

/// Requeues a job that lost its nodes, within its budget; fails it beyond.
async fn requeue_or_fail(
    store: &dyn Store,
    signals: &Signals,
    j: &SchedJob,
    budget: i32,
    why: &str,
    now: Millis,
) -> Result<(), StoreError> {
    if j.execution_state == ExecutionState::Running && j.requeues < budget {
        if store.requeue_job(&j.key, j.epoch, now).await? {
            signals.observer.requeued();
            tracing::info!(job.id = %j.key, reason = why, "job requeued");
        }
        return Ok(());
    }
    let errors = vec![JobError { code: "NodeLost".into(), message: format!("{why}; not requeued again") }];
    let o = JobOutcome { end_time: Some(now), errors: Some(errors), now, ..Default::default() };
    store.finish_job(&j.key, j.epoch, j.execution_state, ExecutionState::Failed, &o).await?;
    Ok(())
}

/// The node count a cluster should have now.
fn target(spec: &ClusterSpec, jobs: &[SchedJob]) -> i32 {
    let scale = spec.scale_settings.as_ref();
    if let Some(m) = scale.and_then(|s| s.manual.as_ref()) {
        return m.target_node_count;
    }
    match scale.and_then(|s| s.auto_scale.as_ref()) {
        Some(a) => {
            let demand: i32 = jobs.iter().map(|j| j.node_count).sum();
            demand.clamp(a.minimum_node_count, a.maximum_node_count.max(a.minimum_node_count))
        }
        None => 0,
    }
}

async fn schedule_cluster(
    store: &dyn Store,
    settings: &Settings,
    signals: &Signals,
    cluster: &SchedCluster,
    now: Millis,
    waiting: &mut [(WaitClass, usize)],
) -> Result<bool, StoreError> {
    let Some(spec) = cluster.spec.clone().and_then(|s| serde_json::from_value::<ClusterSpec>(s).ok()) else {
        return Ok(false);
    };
    let jobs = store.cluster_jobs(&cluster.key, settings.queue_window).await?;
    let mut nodes = store.cluster_nodes(&cluster.key).await?;
    let want = target(&spec, &jobs).max(0) as usize;
    let mut changed = enforce_wall_clock(store, &jobs, now).await?;

    let active = |nodes: &[NodeRow]| {
        nodes.iter().filter(|n| !matches!(n.state, StoreNodeState::Unusable | StoreNodeState::Leaving)).count()
    };
    let have = active(&nodes);
    if have < want {
        if store.allocate_nodes(&cluster.key, &cluster.vm_size, (want - have) as i64, now).await? > 0 {
            changed = true;
            nodes = store.cluster_nodes(&cluster.key).await?;
        }
    } else {
        if have > want {
            changed |= shrink(store, settings, signals, &spec, cluster, &nodes, &jobs, have - want, now).await?;
            nodes = store.cluster_nodes(&cluster.key).await?;
        }
        // Unusable nodes (setup failed, or lost) do not count as allocated, so nothing above
        // ever gave them back: a cluster resized below them kept them, and its node count,
        // forever. Once the cluster is not short, those beyond the target go back to the
        // pool (a lost one stays unusable there until it reports again). Not while it is
        // short, or a node whose setup fails would be released and taken again each pass.
        let unusable: Vec<String> =
            nodes.iter().filter(|n| n.state == StoreNodeState::Unusable).map(|n| n.id.clone()).collect();
        let over = (active(&nodes) + unusable.len()).saturating_sub(want).min(unusable.len());
        if over > 0 && store.release_nodes(&cluster.key, &unusable[..over], now).await? > 0 {
            changed = true;
            nodes = store.cluster_nodes(&cluster.key).await?;
        }
    }

    // Allocation state and errors, written only when they change.
    let have = active(&nodes);
    let allocation = if have == want { AllocationState::Steady } else { AllocationState::Resizing };
    // A node whose setup failed is unusable and no longer counts as allocated, so the cluster
    // is then also short; its error must still be reported, or the cluster would only say
    // that nodes are missing and never which ones failed and why.
    let mut errors: Vec<serde_json::Value> = nodes
        .iter()
        .filter_map(|n| {
            n.error.as_ref().map(|e| json!({"code": "NodeSetupFailed", "message": format!("node {}: {e}", n.id)}))
        })
        .collect();
    if have < want {
        errors.push(json!({
            "code": "InsufficientNodes",
            "message": format!(
                "The cluster needs {want} nodes serving {}; {have} are allocated and usable, and no free node serves that size. \
                 Join more nodes (batchai agent) or lower the target.",
                cluster.vm_size
            ),
        }));
    }
    let errors = if errors.is_empty() { serde_json::Value::Null } else { json!(errors) };
    let old_errors = cluster.errors.clone().unwrap_or(serde_json::Value::Null);
    if allocation != cluster.allocation_state || errors != old_errors {
        store.refresh_cluster(&cluster.key, Some(allocation), Some(&errors), now).await?;
    }

    // Placement.
    changed |= place(store, signals, cluster, &nodes, &jobs, now, waiting).await?;
    // The store leaves node counts to this pass (see its REFRESH_COUNTS); after placing, so
    // they include this pass's placements.
    store.refresh_cluster(&cluster.key, None, None, now).await?;
    Ok(changed)
}

/// Places what fits now; true when something was placed.
async fn place(
    store: &dyn Store,
    signals: &Signals,
    cluster: &SchedCluster,
    nodes: &[NodeRow],
    jobs: &[SchedJob],
    now: Millis,
    waiting: &mut [(WaitClass, usize)],
) -> Result<bool, StoreError> {
    let mut changed = false;
    let snapshot = snapshot(cluster, nodes, jobs, now);
    if snapshot.queue.is_empty() {
        return Ok(changed);
    }
    let plan = plan(&snapshot);
    for p in &plan.pending {
        if let Some(w) = waiting.iter_mut().find(|(c, _)| *c == p.class) {
            w.1 += 1;
        }
    }
    let plan = plan.placements;
    if plan.is_empty() {
        return Ok(changed);
    }
    let batch: Vec<(String, Vec<String>)> = plan.iter().map(|p| (p.job.clone(), p.nodes.clone())).collect();
    // Stamped when written, not when the pass began: other servers find changes by time.
    let placed = store.place_jobs(&cluster.key, &batch, now_millis()).await?;
    let woken: Vec<String> =
        plan.iter().zip(&placed).filter(|(_, e)| e.is_some()).flat_map(|(p, _)| p.nodes.iter().cloned()).collect();
    signals.nodes.wake(&woken);
    for (p, epoch) in plan.iter().zip(placed) {
        if let Some(epoch) = epoch {
            changed = true;
            if let Some(j) = jobs.iter().find(|j| j.key == p.job) {
                signals.observer.placed((now - j.created_at).max(0) as f64 / 1000.0, p.backfilled);
            }
            tracing::info!(job.id = %p.job, cluster.id = %cluster.arm_id, epoch, nodes = ?p.nodes, backfilled = p.backfilled, "job placed");
        }
    }
    Ok(changed)
}

/// Fails jobs whose node agents did not end them in time (an agent enforces the limit itself;
/// this catches an agent that cannot).
async fn enforce_wall_clock(store: &dyn Store, jobs: &[SchedJob], now: Millis) -> Result<bool, StoreError> {
    const SLACK_MS: i64 = 60_000;
    let mut changed = false;
    for j in jobs.iter().filter(|j| j.execution_state == ExecutionState::Running) {
        let Some(start) = j.start_time else { continue };
        if now > start.saturating_add(j.max_wall_clock_secs.saturating_mul(1000)).saturating_add(SLACK_MS) {
            let errors = vec![JobError {
                code: "JobMaxWallClockTimeExceeded".into(),
                message: "The job ran longer than its maxWallClockTime and was stopped".into(),
            }];
            let o = JobOutcome { end_time: Some(now), errors: Some(errors), now, ..Default::default() };
            changed |= store.finish_job(&j.key, j.epoch, ExecutionState::Running, ExecutionState::Failed, &o).await?;
        }
    }
    Ok(changed)
}

/// Gives back `excess` nodes: idle or preparing ones first, then running ones as the
/// cluster's `nodeDeallocationOption` says.
#[allow(clippy::too_many_arguments)]
async fn shrink(
    store: &dyn Store,
    settings: &Settings,
    signals: &Signals,
    spec: &ClusterSpec,
    cluster: &SchedCluster,
    nodes: &[NodeRow],
    jobs: &[SchedJob],
    excess: usize,
    now: Millis,
) -> Result<bool, StoreError> {
    let manual = spec.scale_settings.as_ref().and_then(|s| s.manual.as_ref());
    let grace = settings.autoscale_grace.as_millis() as i64;
    // Autoscale returns only nodes idle for the grace period; a manual resize acts at once.
    let free_now = |n: &&NodeRow| match n.state {
        StoreNodeState::Idle => manual.is_some() || now - n.changed_at >= grace,
        StoreNodeState::Preparing => true,
        _ => false,
    };
    let mut release: Vec<String> = nodes.iter().filter(free_now).take(excess).map(|n| n.id.clone()).collect();
    let mut changed = false;
    let still = excess - release.len();
    if still > 0 && manual.is_some() {
        let option = manual.and_then(|m| m.node_deallocation_option.as_deref()).unwrap_or("requeue").to_lowercase();
        let running: Vec<&NodeRow> = nodes.iter().filter(|n| n.state == StoreNodeState::Running).take(still).collect();
        if option == "waitforjobcompletion" {
            let ids: Vec<String> = running.iter().map(|n| n.id.clone()).collect();
            changed |= store.mark_leaving(&cluster.key, &ids, now).await? > 0;
        } else {
            for n in running {
                let Some(j) = jobs.iter().find(|j| Some(&j.key) == n.job_key.as_ref()) else { continue };
                if option == "terminate" {
                    let errors = vec![JobError {
                        code: "NodeDeallocated".into(),
                        message: format!("The cluster was resized and node {} was removed (terminate)", n.id),
                    }];
                    let o = JobOutcome { end_time: Some(now), errors: Some(errors), now, ..Default::default() };
                    store.finish_job(&j.key, j.epoch, j.execution_state, ExecutionState::Failed, &o).await?;
                } else {
                    let why = format!("the cluster was resized and node {} was removed", n.id);
                    requeue_or_fail(store, signals, j, i32::MAX, &why, now).await?;
                }
                release.push(n.id.clone());
                changed = true;
            }
        }
    }
    if !release.is_empty() {
        changed |= store.release_nodes(&cluster.key, &release, now).await? > 0;
    }
    Ok(changed)
}

/// The scheduler's view of one cluster.
pub fn snapshot(cluster: &SchedCluster, nodes: &[NodeRow], jobs: &[SchedJob], now: Millis) -> Snapshot {
    let busy_until = |job: &Option<String>| {
        let j = jobs.iter().find(|j| Some(&j.key) == job.as_ref())?;
        Some(j.start_time.unwrap_or(now).saturating_add(j.max_wall_clock_secs.saturating_mul(1000)))
    };
    Snapshot {
        cluster: cluster.arm_id.rsplit('/').next().unwrap_or_default().to_string(),
        vm_size: cluster.vm_size.clone(),
        now,
        nodes: nodes
            .iter()
            .map(|n| Node {
                id: n.id.clone(),
                state: match n.state {
                    StoreNodeState::Idle => NodeState::Idle,
                    StoreNodeState::Running => NodeState::Running,
                    StoreNodeState::Preparing | StoreNodeState::Free => NodeState::Preparing,
                    StoreNodeState::Leaving => NodeState::Leaving,
                    StoreNodeState::Unusable => NodeState::Unusable,
                },
                busy_until: busy_until(&n.job_key),
            })
            .collect(),
        queue: jobs
            .iter()
            .filter(|j| j.execution_state == ExecutionState::Queued)
            .map(|j| Job {
                key: j.key.clone(),
                priority: j.priority,
                submitted_at: j.created_at,
                node_count: j.node_count.max(1) as usize,
                max_wall_clock_ms: j.max_wall_clock_secs.saturating_mul(1000),
            })
            .collect(),
    }
}

/// Why a queued job waits, in words; `None` when it is not queued.
pub async fn why(store: &dyn Store, job_key: &str) -> Result<Option<String>, StoreError> {
    let Some(job) = store.get_resource(job_key).await?.and_then(|r| r.job) else { return Ok(None) };
    if job.execution_state != ExecutionState::Queued {
        return Ok(None);
    }
    let clusters = store.scheduling_clusters().await?;
    let Some(cluster) = clusters.iter().find(|c| c.key == job.cluster_key) else {
        return Ok(Some("its cluster no longer exists".into()));
    };
    let jobs = store.cluster_jobs(&cluster.key, i64::MAX).await?;
    let nodes = store.cluster_nodes(&cluster.key).await?;
    let plan = plan(&snapshot(cluster, &nodes, &jobs, now_millis()));
    if plan.placements.iter().any(|p| p.job == job_key) {
        return Ok(Some("it fits now and starts on the next scheduling pass".into()));
    }
    Ok(Some(
        plan.pending
            .into_iter()
            .find(|p| p.job == job_key)
            .map(|p| p.reason)
            .unwrap_or_else(|| "beyond the scheduling window; it waits for the jobs ahead of it".into()),
    ))
}
