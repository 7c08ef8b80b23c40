//! Simulated nodes: each joins through the real agent protocol with a join token
//! (`POST /agent/v1/join`) and then syncs in a loop (`POST /agent/v1/sync`, long poll) as
//! `batchai agent` does, but runs nothing: a cluster assignment is reported set up at once, and
//! a task is reported `Preparing` and then `Exited(0)` on the next sync. One tokio task per node
//! and one shared HTTP client, so a thousand of them cost the load generator little.
//!
//! The time a job's rank-0 assignment reaches its node is when the job is "running" as far as
//! the benchmarks are concerned.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use batchai_core::protocol::{
    Gpu, JoinRequest, JoinResponse, NodeFacts, SetupReport, SyncRequest, SyncResponse, TaskPhase, TaskReport,
};
use tokio::sync::watch;

/// What the simulated nodes saw, shared by all of them.
#[derive(Default)]
pub struct FleetStats {
    pub syncs: AtomicU64,
    pub errors: AtomicU64,
    pub assignments: AtomicU64,
    /// Job name → when its rank-0 assignment first arrived.
    pub started: Mutex<HashMap<String, Instant>>,
    /// The last sync error, for the report.
    pub last_error: Mutex<Option<String>>,
}

impl FleetStats {
    pub fn started_at(&self, job: &str) -> Option<Instant> {
        self.started.lock().unwrap_or_else(|e| e.into_inner()).get(job).copied()
    }

    pub fn started_count(&self) -> usize {
        self.started.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[derive(Clone, Copy)]
pub struct NodeOptions {
    /// Long-poll wait asked of the server when there is nothing to report (the agent's
    /// default is 20 s).
    pub wait: Duration,
    /// Report `Preparing` before `Exited` (two report syncs per task, as a real agent's
    /// Preparing/Running/Exited are at least two); false reports `Exited` at once.
    pub preparing: bool,
}

/// The running nodes; stopped when dropped.
pub struct Fleet {
    pub stats: Arc<FleetStats>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// Joins `count` nodes with `join_token` (a few at a time) and starts their sync loops.
    pub async fn start(base: &str, join_token: &str, count: usize, opts: NodeOptions) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().pool_max_idle_per_host(count + 16).build()?;
        let base: Arc<str> = Arc::from(base.trim_end_matches('/'));
        let mut joins = tokio::task::JoinSet::new();
        let gate = Arc::new(tokio::sync::Semaphore::new(16));
        for i in 0..count {
            let (http, base, token, gate) = (http.clone(), base.clone(), join_token.to_owned(), gate.clone());
            joins.spawn(async move {
                let _permit = gate.acquire().await?;
                join(&http, &base, &token, i).await
            });
        }
        let mut credentials = Vec::with_capacity(count);
        while let Some(r) = joins.join_next().await {
            credentials.push(r??.credential);
        }
        let stats = Arc::new(FleetStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let tasks = credentials
            .into_iter()
            .map(|credential| {
                let node = Node { http: http.clone(), base: base.clone(), credential, opts, stats: stats.clone() };
                tokio::spawn(node.run(stop_rx.clone()))
            })
            .collect();
        Ok(Self { stats, stop, tasks })
    }

    /// Stops every node and waits for them.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The facts of a STANDARD_NC6 machine (6 cores, 56 GiB, one K80).
fn facts(i: usize) -> NodeFacts {
    NodeFacts {
        hostname: format!("sim-{i:05}"),
        address: "127.0.0.1".into(),
        ssh_port: 22,
        cores: 6,
        memory_mb: 56 * 1024,
        gpus: vec![Gpu { index: 0, uuid: format!("GPU-sim-{i:05}"), model: "Tesla K80".into(), memory_mb: 11441 }],
        vm_sizes: vec!["STANDARD_NC6".into()],
        agent_version: "bench-sim".into(),
        runtime: "simulated".into(),
    }
}

async fn join(http: &reqwest::Client, base: &str, token: &str, i: usize) -> anyhow::Result<JoinResponse> {
    let res = http
        .post(format!("{base}/agent/v1/join"))
        .bearer_auth(token)
        .json(&JoinRequest { facts: facts(i) })
        .send()
        .await?;
    let status = res.status();
    let bytes = res.bytes().await?;
    if !status.is_success() {
        bail!("join: {status} {}", String::from_utf8_lossy(&bytes));
    }
    serde_json::from_slice(&bytes).context("join answer")
}

struct Node {
    http: reqwest::Client,
    base: Arc<str>,
    credential: String,
    opts: NodeOptions,
    stats: Arc<FleetStats>,
}

impl Node {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut known: Option<String> = None;
        let mut urgent = true;
        // The allocation the server names, and the one reported set up.
        let mut wanted: Option<i64> = None;
        let mut set_up: Option<i64> = None;
        let mut tasks: Vec<TaskReport> = Vec::new();
        let mut backoff = Duration::from_millis(250);
        loop {
            let wait = if urgent { Duration::ZERO } else { self.opts.wait };
            let request = SyncRequest {
                facts: None,
                setup: set_up
                    .filter(|e| Some(*e) == wanted)
                    .map(|alloc_epoch| SetupReport { alloc_epoch, error: None }),
                tasks: tasks.clone(),
                wait_ms: wait.as_millis() as u64,
                known: known.clone(),
            };
            let call = self.sync(&request, wait + Duration::from_secs(30));
            let response = tokio::select! {
                _ = stop.changed() => return,
                r = call => r,
            };
            let response = match response {
                Ok(r) => r,
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    *self.stats.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                    tokio::select! {
                        _ = stop.changed() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(250);
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            urgent = false;
            wanted = response.cluster.as_ref().map(|c| c.alloc_epoch);
            if wanted.is_some() && set_up != wanted {
                set_up = wanted;
                urgent = true;
            }
            // A task the server no longer lists is acknowledged (or to be stopped: it is gone).
            tasks.retain(|t| response.tasks.iter().any(|a| a.job == t.job && a.epoch == t.epoch));
            for a in &response.tasks {
                let exited = TaskReport {
                    job: a.job.clone(),
                    epoch: a.epoch,
                    phase: TaskPhase::Exited,
                    exit_code: (!a.stop).then_some(0),
                    error: None,
                };
                match tasks.iter_mut().find(|t| t.job == a.job && t.epoch == a.epoch) {
                    None => {
                        let now = Instant::now();
                        if a.rank == 0 {
                            let name = a.id.rsplit('/').next().unwrap_or_default().to_owned();
                            self.stats.started.lock().unwrap_or_else(|e| e.into_inner()).entry(name).or_insert(now);
                        }
                        self.stats.assignments.fetch_add(1, Ordering::Relaxed);
                        let first = if self.opts.preparing && !a.stop {
                            TaskReport { phase: TaskPhase::Preparing, exit_code: None, ..exited }
                        } else {
                            exited
                        };
                        tasks.push(first);
                        urgent = true;
                    }
                    Some(t) if t.phase != TaskPhase::Exited => {
                        *t = exited;
                        urgent = true;
                    }
                    Some(_) => {}
                }
            }
            known = Some(response.version);
        }
    }

    async fn sync(&self, request: &SyncRequest, timeout: Duration) -> anyhow::Result<SyncResponse> {
        let res = self
            .http
            .post(format!("{}/agent/v1/sync", self.base))
            .bearer_auth(&self.credential)
            .json(request)
            .timeout(timeout)
            .send()
            .await?;
        let status = res.status();
        let bytes = res.bytes().await?;
        if !status.is_success() {
            bail!("sync: {status} {}", String::from_utf8_lossy(&bytes));
        }
        Ok(serde_json::from_slice(&bytes)?)
    }
}
