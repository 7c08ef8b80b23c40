//! The node-agent protocol (`batchai_core::protocol`): `/agent/v1/join` and `/agent/v1/sync`.
//!
//! Separate from the ARM API: a join token admits a machine once, and from then on the node
//! authenticates with its own credential and can read and report only its own assignments.
//! A sync is the node's heartbeat and a long poll: the server applies the node's reports,
//! works out what the node must run, and answers at once when that differs from what the node
//! last acted on — otherwise it holds the request until the node's desired state changes (this
//! server's scheduler notifies directly; other servers' changes are seen by polling
//! `nodes.changed_at`) or the wait runs out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::routing::post;
use batchai_core::ApiError;
use batchai_core::contract::toolkit;
use batchai_core::contract::volumes;
use batchai_core::ids::Kind;
use batchai_core::models::{ClusterSpec, FileServerSpec, JobSpec, MountVolumes};
use batchai_core::protocol::*;
use batchai_core::state::{ExecutionState, ProvisioningState};
use batchai_core::time::{Millis, now_millis};
use batchai_core::vm_sizes;
use batchai_scheduler::outcome::ending;
use batchai_store::{JobOutcome, NewNode, NodeFactsRow, NodeRow, Store, StoreError};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::auth::{hash_secret, new_secret};
use crate::{AppState, Error};

/// Prefix of node credentials (tells them apart from API tokens in logs and leaks).
const NODE_CREDENTIAL_PREFIX: &str = "bai_node_";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/agent/v1/join", post(join))
        .route("/agent/v1/sync", post(sync))
        .route("/agent/v1/leave", post(leave))
}

/// What the agent protocol keeps in memory per node: its long polls, woken when its desired
/// state changes, and what it reads on every sync but rarely changes.
#[derive(Default)]
pub struct Waiters {
    by_node: Mutex<HashMap<String, Arc<Notify>>>,
    /// The last `changed_at` seen per node, so a node is woken once per change.
    seen: Mutex<HashMap<String, Millis>>,
    /// Node ids by credential hash, learnt on a node's first sync: a sync must subscribe to
    /// its node's changes before the heartbeat reads the node (see [`sync`]), and a credential
    /// never changes node. Only a hint: the heartbeat still checks the credential.
    ids: Mutex<HashMap<String, String>>,
    /// The cluster each node is allocated to, read once per allocation (see [`desired`]).
    clusters: Mutex<HashMap<String, AllocatedCluster>>,
    /// The task each node was last given, read once per placement (see [`desired`]).
    tasks: Mutex<HashMap<String, TaskAssignment>>,
}

/// A node's cluster as its allocation began. After creation only a cluster's `scaleSettings`
/// can change, which agents do not use; a cluster deleted and created again is another
/// allocation (a new `alloc_epoch`), so an entry is only used for the allocation it was read in.
#[derive(Clone)]
struct AllocatedCluster {
    key: String,
    alloc_epoch: i64,
    id: String,
    spec: ClusterSpec,
}

impl Waiters {
    fn notify_for(&self, node: &str) -> Arc<Notify> {
        let mut map = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(node.to_owned()).or_default().clone()
    }

    fn wake(&self, node: &str) {
        let map = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get(node) {
            n.notify_waiters();
        }
    }
}

impl batchai_scheduler::runner::NodeWaker for Waiters {
    fn wake(&self, nodes: &[String]) {
        for n in nodes {
            Waiters::wake(self, n);
        }
    }
}

/// Wakes the long polls of nodes whose desired state changed, on this server or another one.
/// Polls `nodes.changed_at` on every `changed` notification and every `interval`.
pub async fn watch_changes(
    state: AppState,
    interval: Duration,
    changed: Arc<Notify>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    // Rows are re-read from a little before the newest change seen: a transaction that
    // committed late with an earlier timestamp is still noticed.
    const OVERLAP_MS: i64 = 5_000;
    let mut since = now_millis() - OVERLAP_MS;
    loop {
        match state.store.nodes_changed_since(since - OVERLAP_MS).await {
            Ok(rows) => {
                let mut seen = state.waiters.seen.lock().unwrap_or_else(|e| e.into_inner());
                for (node, at) in rows {
                    since = since.max(at);
                    // Any different stamp is a change: a pass that began before a node's
                    // previous change may commit after it with an older stamp.
                    if seen.get(&node) != Some(&at) {
                        seen.insert(node.clone(), at);
                        state.waiters.wake(&node);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read node changes; retrying"),
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

fn unauthorized(msg: &str) -> Error {
    ApiError::new(batchai_core::ErrorCode::AuthenticationFailed, msg).into()
}

fn unknown_credential() -> Error {
    unauthorized("The node credential is unknown (was the node removed?).")
}

/// The facts as stored, with warnings where the node is smaller than a size it claims.
fn facts_row(sizes: &vm_sizes::Catalogue, f: &NodeFacts) -> (NodeFactsRow, Vec<String>) {
    let mut warnings = Vec::new();
    for size in f.vm_sizes.iter().filter(|s| s.as_str() != "*") {
        let Some(v) = sizes.find(size) else { continue };
        let gpus = f.gpus.len() as u32;
        if f.cores < v.cores || f.memory_mb < v.memory_mib * 9 / 10 || gpus < v.gpus {
            warnings.push(format!(
                "{size} has {} cores, {} MiB and {} GPUs; this node has {} cores, {} MiB and {gpus} GPUs",
                v.cores, v.memory_mib, v.gpus, f.cores, f.memory_mb
            ));
        }
    }
    let row = NodeFactsRow {
        hostname: f.hostname.clone(),
        address: f.address.clone(),
        ssh_port: i32::from(f.ssh_port),
        gpus: f.gpus.len() as i32,
        facts: serde_json::to_value(f).unwrap_or_default(),
        vm_sizes: f.vm_sizes.clone(),
    };
    (row, warnings)
}

async fn join(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Json<JoinResponse>, Error> {
    let token = bearer(&headers).ok_or_else(|| unauthorized("A join token is required (Authorization: Bearer …)."))?;
    let now = now_millis();
    let valid = state
        .store
        .find_join_token(&hash_secret(token))
        .await?
        .filter(|t| t.revoked_at.is_none() && t.expires_at.is_none_or(|e| e > now));
    let Some(jt) = valid else { return Err(unauthorized("The join token is unknown, revoked or expired.")) };
    let body = crate::arm::read_body(&state, &Method::POST, &headers, body).await?;
    let req: JoinRequest = batchai_core::validate::parse_json(&body, "")?;
    let (facts, warnings) = facts_row(&state.settings.vm_sizes, &req.facts);
    let credential = format!("{NODE_CREDENTIAL_PREFIX}{}", new_secret());
    let id = format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let node = NewNode { id: id.clone(), credential_hash: hash_secret(&credential), facts, now };
    state.store.register_node(&node).await?;
    for w in &warnings {
        tracing::warn!(node.id = %id, warning = %w, "node smaller than a VM size it serves");
    }
    tracing::info!(node.id = %id, join_token = %jt.name, hostname = %req.facts.hostname, address = %req.facts.address, gpus = req.facts.gpus.len(), "node joined");
    state.scheduler.wake.notify_one();
    Ok(Json(JoinResponse {
        node_id: id,
        credential,
        storage_root: state.settings.storage_root.display().to_string(),
        warnings,
    }))
}

async fn sync(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Json<SyncResponse>, Error> {
    let credential = bearer(&headers).ok_or_else(|| unauthorized("A node credential is required."))?;
    let credential = hash_secret(credential);
    let known = state.waiters.ids.lock().unwrap_or_else(|e| e.into_inner()).get(&credential).cloned();
    let node_id = match known {
        Some(id) => id,
        None => {
            let Some(node) = state.store.node_by_credential(&credential).await? else {
                return Err(unknown_credential());
            };
            state.waiters.ids.lock().unwrap_or_else(|e| e.into_inner()).insert(credential.clone(), node.id.clone());
            node.id
        }
    };
    let body = crate::arm::read_body(&state, &Method::POST, &headers, body).await?;
    let req: SyncRequest = batchai_core::validate::parse_json(&body, "")?;
    // Subscribed before the heartbeat reads the node, so a change committed after that read
    // wakes the wait below instead of being missed.
    let notify = state.waiters.notify_for(&node_id);
    let woken = notify.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    // Reports are applied to completion even if the agent drops the request (it does, to
    // report something new at once): a write cancelled inside a transaction could hand its
    // connection back mid-transaction. Only the wait below is cancellable.
    let (mut node, req) = tokio::spawn(apply_sync(state.clone(), credential, req))
        .await
        .map_err(|_| Error::from(ApiError::internal()))??;
    let wait = Duration::from_millis(req.wait_ms).min(state.settings.agent_max_wait);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let res = desired(state.store.as_ref(), &state.waiters, &node).await?;
        if req.known.as_deref() != Some(res.version.as_str()) || tokio::time::Instant::now() >= deadline {
            return Ok(Json(res));
        }
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(Json(res)),
        }
        // Re-armed before the node is read again, for the same reason as above.
        woken.set(notify.notified());
        woken.as_mut().enable();
        node = state.store.get_node(&node.id).await?.unwrap_or(node);
    }
}

/// The node's agent is shutting down (SIGTERM) and has stopped its job: the scheduler's next
/// pass, woken now, marks the node unusable and requeues the job (within its requeue budget)
/// instead of waiting for `node_timeout_secs`. The node is prepared anew when it syncs again.
async fn leave(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<serde_json::Value>, Error> {
    let credential = bearer(&headers).ok_or_else(|| unauthorized("A node credential is required."))?;
    let Some(node) = state.store.node_by_credential(&hash_secret(credential)).await? else {
        return Err(unknown_credential());
    };
    let left = state.store.node_left(&node.id, now_millis()).await?;
    tracing::info!(node.id = %node.id, job.id = ?node.job_key, left, "node shutting down");
    state.scheduler.wake.notify_one();
    Ok(Json(serde_json::json!({"left": left})))
}

/// The writing half of a sync: heartbeat, facts, setup and task reports. Returns the node as
/// it is afterwards.
async fn apply_sync(state: AppState, credential: String, req: SyncRequest) -> Result<(NodeRow, SyncRequest), Error> {
    let now = now_millis();
    let Some(mut node) = state.store.heartbeat(&credential, now).await? else {
        return Err(unknown_credential());
    };
    if let Some(f) = &req.facts {
        let (row, _) = facts_row(&state.settings.vm_sizes, f);
        state.store.update_node_facts(&node.id, &row, now).await?;
    }
    let mut woke_scheduler = false;
    // Agents resend their last setup report on every sync; only one for the allocation being
    // prepared can change anything.
    if let Some(setup) = &req.setup
        && node.state == batchai_core::state::NodeState::Preparing
        && setup.alloc_epoch == node.alloc_epoch
        && state.store.report_setup(&node.id, setup.alloc_epoch, setup.error.as_deref(), now).await?
    {
        if let Some(e) = &setup.error {
            tracing::warn!(node.id = %node.id, error = %e, "node setup failed; node unusable");
        }
        woke_scheduler = true;
    }
    for t in &req.tasks {
        woke_scheduler |= apply_report(&state, &node, t).await?;
    }
    if woke_scheduler {
        state.scheduler.wake.notify_one();
        node = state.store.get_node(&node.id).await?.unwrap_or(node);
    }
    Ok((node, req))
}

/// Records one task report and ends the job when the reports say so. True when nodes may have
/// been freed.
async fn apply_report(state: &AppState, node: &NodeRow, t: &TaskReport) -> Result<bool, StoreError> {
    let phase = match t.phase {
        TaskPhase::Preparing => "preparing",
        TaskPhase::Running => "running",
        TaskPhase::Exited => "exited",
    };
    let error = t.error.as_ref().map(|e| (e.code.as_str(), e.message.as_str()));
    if !state.store.report_task(&node.id, &t.job, t.epoch, phase, t.exit_code, error).await? || phase != "exited" {
        return Ok(false);
    }
    let Some(row) = state.store.get_resource(&t.job).await? else { return Ok(false) };
    let Some(job) = row.job else { return Ok(false) };
    let placement = state.store.job_placement(&t.job, t.epoch).await?;
    // Nodes hosting only TensorFlow parameter servers never end by themselves.
    let serving_only = row
        .spec
        .and_then(|s| serde_json::from_value::<JobSpec>(s).ok())
        .map_or(0..0, |spec| toolkit::serving_only_ranks(&spec, placement.len()));
    let Some(end) = ending(job.execution_state, &placement, &serving_only) else { return Ok(false) };
    let now = now_millis();
    let o = JobOutcome { end_time: Some(now), exit_code: end.exit_code, errors: end.errors, now, ..Default::default() };
    if state.store.finish_job(&t.job, t.epoch, job.execution_state, end.state, &o).await? {
        tracing::info!(job.id = %t.job, state = end.state.as_str(), exit_code = ?end.exit_code, "job ended");
        if let Some(start) = job.start_time {
            let gpus = placement.iter().map(|p| i64::from(p.gpus.max(0))).sum();
            state.metrics.job_ended(&row.arm_id, end.state.as_str(), (now - start).max(0) as f64 / 1000.0, gpus);
        }
        // Its other nodes must stop now: stamped for other servers, woken here at once. (The
        // reporting node learns it from the answer to this sync.)
        if placement.iter().any(|p| p.node_id != node.id) {
            state.store.touch_job_nodes(&t.job, now).await?;
            for p in &placement {
                state.waiters.wake(&p.node_id);
            }
        }
        return Ok(true);
    }
    Ok(false)
}

/// What the file servers of `mounts` export, as recorded when each was created. One that is
/// gone, being deleted or was never declared is left out: the node then fails the mount and
/// says which.
async fn file_server_exports(
    store: &dyn Store,
    mounts: Option<&MountVolumes>,
) -> Result<Vec<FileServerExport>, StoreError> {
    let mut out: Vec<FileServerExport> = Vec::new();
    for f in mounts.and_then(|m| m.file_servers.as_ref()).into_iter().flatten() {
        let Some(key) = volumes::file_server_key(&f.file_server.id) else { continue };
        if out.iter().any(|e| e.key == key) {
            continue;
        }
        let Some(row) = store.get_resource(&key).await? else { continue };
        if row.kind != Kind::FileServer || row.provisioning_state == ProvisioningState::Deleting {
            continue;
        }
        let spec = row.spec.and_then(|s| serde_json::from_value::<FileServerSpec>(s).ok());
        if let Some(d) = spec.and_then(|s| s.declared) {
            out.push(FileServerExport { key, export: d.export, mount_options: d.mount_options });
        }
    }
    Ok(out)
}

/// The cluster `node` is allocated to, from memory after the first read of the allocation.
async fn allocated_cluster(
    store: &dyn Store,
    waiters: &Waiters,
    node: &NodeRow,
) -> Result<Option<AllocatedCluster>, StoreError> {
    let Some(key) = &node.cluster_key else { return Ok(None) };
    let known = waiters.clusters.lock().unwrap_or_else(|e| e.into_inner()).get(&node.id).cloned();
    if let Some(c) = known.filter(|c| &c.key == key && c.alloc_epoch == node.alloc_epoch) {
        return Ok(Some(c));
    }
    let Some(row) = store.get_resource(key).await? else { return Ok(None) };
    let Some(spec) = row.spec.and_then(|s| serde_json::from_value::<ClusterSpec>(s).ok()) else { return Ok(None) };
    let c = AllocatedCluster { key: key.clone(), alloc_epoch: node.alloc_epoch, id: row.arm_id, spec };
    waiters.clusters.lock().unwrap_or_else(|e| e.into_inner()).insert(node.id.clone(), c.clone());
    Ok(Some(c))
}

/// The job `node` holds in placement `epoch`, with its execution state. Everything of the
/// assignment but the state (and the file servers) is fixed for a placement, so it is read
/// once per placement and only the state on later syncs.
async fn placed_task(
    store: &dyn Store,
    waiters: &Waiters,
    node: &NodeRow,
    key: &str,
    epoch: i64,
) -> Result<Option<(ExecutionState, TaskAssignment)>, StoreError> {
    let known = waiters.tasks.lock().unwrap_or_else(|e| e.into_inner()).get(&node.id).cloned();
    if let Some(task) = known.filter(|t| t.job == key && t.epoch == epoch) {
        return Ok(store.job_state(key, epoch).await?.map(|state| (state, task)));
    }
    let Some(row) = store.get_resource(key).await? else { return Ok(None) };
    let Some(job) = &row.job else { return Ok(None) };
    let Some(spec) = row.spec.clone().and_then(|s| serde_json::from_value::<JobSpec>(s).ok()) else {
        return Ok(None);
    };
    let placement = store.job_placement(key, epoch).await?;
    let task = TaskAssignment {
        job: key.to_owned(),
        epoch,
        rank: placement.iter().position(|p| p.node_id == node.id).unwrap_or(0),
        output_segment: crate::arm::render::job_output_segment(&row),
        id: row.arm_id.clone(),
        uid: row.uid.clone(),
        spec,
        nodes: placement
            .iter()
            .map(|p| Peer { id: p.node_id.clone(), address: p.address.clone(), gpus: p.gpus.max(0) as u32 })
            .collect(),
        max_wall_clock_secs: job.max_wall_clock_secs,
        started_at: job.start_time.unwrap_or(node.changed_at),
        stop: false,
        file_servers: Vec::new(),
    };
    waiters.tasks.lock().unwrap_or_else(|e| e.into_inner()).insert(node.id.clone(), task.clone());
    Ok(Some((job.execution_state, task)))
}

/// What the node must be running now.
async fn desired(store: &dyn Store, waiters: &Waiters, node: &NodeRow) -> Result<SyncResponse, StoreError> {
    let mut cluster = None;
    if let Some(c) = allocated_cluster(store, waiters, node).await? {
        let file_servers =
            file_server_exports(store, c.spec.node_setup.as_ref().and_then(|s| s.mount_volumes.as_ref())).await?;
        cluster =
            Some(ClusterAssignment { key: c.key, id: c.id, alloc_epoch: c.alloc_epoch, spec: c.spec, file_servers });
    }
    let mut tasks = Vec::new();
    if let (Some(key), Some(epoch)) = (&node.job_key, node.job_epoch)
        && let Some((state, mut task)) = placed_task(store, waiters, node, key, epoch).await?
        && matches!(state, ExecutionState::Running | ExecutionState::Terminating)
    {
        task.stop = state == ExecutionState::Terminating;
        task.file_servers = file_server_exports(store, task.spec.mount_volumes.as_ref()).await?;
        tasks.push(task);
    }
    let mut res = SyncResponse { version: String::new(), state: node.state.as_str().into(), cluster, tasks };
    let digest = Sha256::digest(serde_json::to_vec(&res).unwrap_or_default());
    res.version = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    Ok(res)
}
