//! Placement decisions, as pure functions over a snapshot of one cluster, and the loop that
//! applies them ([`runner`]); how a job ends from its nodes' reports ([`outcome`]).
//!
//! The rules:
//! - **Order**: `schedulingPriority` high > normal > low, then submission time, then key.
//! - **Gangs**: a job takes all `nodeCount` nodes at once or none; only idle nodes are used and
//!   none twice.
//! - **EASY backfill**: the first job that does not fit (the head) gets a reservation: the
//!   earliest time enough nodes are idle, judging running jobs by their `maxWallClockTime`
//!   (the *shadow time*), and the nodes beyond its need at that time (the *extra* nodes). A
//!   later job may start now only if it fits in the idle nodes and either ends (by its own
//!   wall-clock limit) before the shadow time or uses only extra nodes — so it never delays the
//!   head. Jobs after the head get no reservation of their own.
//! - Every job left queued gets a reason a person can read.

pub mod outcome;
pub mod runner;

use std::cmp::Reverse;

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub state: NodeState,
    /// For a running node: when its job's wall-clock limit runs out (epoch ms).
    pub busy_until: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Idle,
    Running,
    Preparing,
    Leaving,
    Unusable,
}

/// A queued job of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub key: String,
    /// Higher runs first (low 0, normal 1, high 2).
    pub priority: i32,
    pub submitted_at: i64,
    pub node_count: usize,
    pub max_wall_clock_ms: i64,
}

/// One cluster's state at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub cluster: String,
    pub vm_size: String,
    pub now: i64,
    pub nodes: Vec<Node>,
    pub queue: Vec<Job>,
}

/// What to do: start these jobs on these nodes; leave the rest queued, for these reasons.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub placements: Vec<Placement>,
    pub pending: Vec<Pending>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub job: String,
    pub nodes: Vec<String>,
    /// Started ahead of an earlier job by backfill.
    pub backfilled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub job: String,
    pub reason: String,
    pub class: WaitClass,
}

/// Why a job waits, as one of a few classes (`batchai_pending_jobs{reason}`); the reason text
/// says more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitClass {
    /// It needs more nodes than the cluster has usable.
    ClusterTooSmall,
    /// Not enough of the cluster's nodes are idle.
    NoIdleNodes,
    /// Nodes are idle, but starting it would delay the head of the queue's reserved start.
    Reservation,
}

impl WaitClass {
    pub const ALL: &[WaitClass] = &[WaitClass::ClusterTooSmall, WaitClass::NoIdleNodes, WaitClass::Reservation];

    pub fn as_str(self) -> &'static str {
        match self {
            WaitClass::ClusterTooSmall => "cluster_too_small",
            WaitClass::NoIdleNodes => "no_idle_nodes",
            WaitClass::Reservation => "reservation",
        }
    }
}

/// Queue order: priority, then submission, then key (stable and total).
pub fn queue_order(queue: &mut [Job]) {
    queue.sort_by_key(|j| (Reverse(j.priority), j.submitted_at, j.key.clone()));
}

/// The head's reservation: when enough nodes will be idle, and how many beyond its need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub shadow_time: i64,
    pub extra_nodes: usize,
}

/// Earliest time `need` nodes are idle, counting `idle` now and running nodes as they free up.
/// `None` when the cluster can never hold the job (too few usable nodes).
pub fn reserve(need: usize, idle: usize, running_until: &[i64], now: i64) -> Option<Reservation> {
    if idle >= need {
        return Some(Reservation { shadow_time: now, extra_nodes: idle - need });
    }
    let mut ends = running_until.to_vec();
    ends.sort_unstable();
    let mut free = idle;
    for (i, end) in ends.iter().enumerate() {
        free += 1;
        if free >= need {
            // Nodes that are free by then, beyond the head's need (ties count as free).
            let also = ends[i + 1..].iter().take_while(|e| *e <= end).count();
            return Some(Reservation { shadow_time: (*end).max(now), extra_nodes: free + also - need });
        }
    }
    None
}

/// Decides what to start now.
pub fn plan(snapshot: &Snapshot) -> Plan {
    let mut queue = snapshot.queue.clone();
    queue_order(&mut queue);
    let mut idle: Vec<&str> =
        snapshot.nodes.iter().filter(|n| n.state == NodeState::Idle).map(|n| n.id.as_str()).collect();
    idle.sort_unstable();
    let usable = snapshot.nodes.iter().filter(|n| matches!(n.state, NodeState::Idle | NodeState::Running)).count();
    let mut running_until: Vec<i64> = snapshot
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Running)
        .map(|n| n.busy_until.unwrap_or(i64::MAX))
        .collect();
    let mut out = Plan::default();
    let mut head: Option<(String, Reservation)> = None;
    for job in queue {
        if job.node_count > usable {
            out.pending.push(Pending {
                job: job.key.clone(),
                reason: format!(
                    "needs {} {} nodes in cluster {}; the cluster has {} usable",
                    job.node_count, snapshot.vm_size, snapshot.cluster, usable
                ),
                class: WaitClass::ClusterTooSmall,
            });
            continue;
        }
        let fits = job.node_count <= idle.len();
        match &mut head {
            None if fits => {
                let nodes: Vec<String> = idle.drain(..job.node_count).map(str::to_owned).collect();
                running_until
                    .extend(std::iter::repeat_n(snapshot.now.saturating_add(job.max_wall_clock_ms), nodes.len()));
                out.placements.push(Placement { job: job.key, nodes, backfilled: false });
            }
            None => {
                let r = reserve(job.node_count, idle.len(), &running_until, snapshot.now)
                    .unwrap_or(Reservation { shadow_time: i64::MAX, extra_nodes: 0 });
                out.pending.push(Pending {
                    job: job.key.clone(),
                    reason: format!(
                        "needs {} idle {} nodes in cluster {}; {} idle",
                        job.node_count,
                        snapshot.vm_size,
                        snapshot.cluster,
                        idle.len()
                    ),
                    class: WaitClass::NoIdleNodes,
                });
                head = Some((job.key, r));
            }
            Some((head_key, r)) => {
                let ends_in_time = snapshot.now.saturating_add(job.max_wall_clock_ms) <= r.shadow_time;
                let on_extra = job.node_count <= r.extra_nodes;
                if fits && (ends_in_time || on_extra) {
                    if !ends_in_time {
                        r.extra_nodes -= job.node_count;
                    }
                    let nodes: Vec<String> = idle.drain(..job.node_count).map(str::to_owned).collect();
                    out.placements.push(Placement { job: job.key, nodes, backfilled: true });
                } else {
                    let (class, reason) = if fits {
                        (
                            WaitClass::Reservation,
                            format!("waits behind {head_key}: starting it now would delay that job's reserved start"),
                        )
                    } else {
                        let reason = format!(
                            "needs {} idle {} nodes in cluster {}; {} idle (queued behind {head_key})",
                            job.node_count,
                            snapshot.vm_size,
                            snapshot.cluster,
                            idle.len()
                        );
                        (WaitClass::NoIdleNodes, reason)
                    };
                    out.pending.push(Pending { job: job.key, reason, class });
                }
            }
        }
    }
    out
}
