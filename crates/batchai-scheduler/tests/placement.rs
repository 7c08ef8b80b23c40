//! Placement properties over random clusters and queues, plus worked examples.

use std::collections::{HashMap, HashSet};

use batchai_scheduler::*;
use proptest::prelude::*;

const NOW: i64 = 1_000;

fn node_strategy() -> impl Strategy<Value = (u8, i64)> {
    (0u8..5, 1i64..200)
}

fn job_strategy() -> impl Strategy<Value = (i32, i64, usize, i64)> {
    (0i32..3, 0i64..50, 1usize..5, 1i64..200)
}

prop_compose! {
    fn snapshot()(nodes in prop::collection::vec(node_strategy(), 0..12),
                  jobs in prop::collection::vec(job_strategy(), 0..10)) -> Snapshot {
        let nodes = nodes.into_iter().enumerate().map(|(i, (s, until))| {
            let state = [NodeState::Idle, NodeState::Running, NodeState::Preparing, NodeState::Leaving,
                NodeState::Unusable][s as usize];
            Node { id: format!("n{i:02}"), state, busy_until: (state == NodeState::Running).then_some(NOW + until) }
        }).collect();
        let queue = jobs.into_iter().enumerate().map(|(i, (priority, submitted_at, node_count, wall))| Job {
            key: format!("j{i:02}"), priority, submitted_at, node_count, max_wall_clock_ms: wall,
        }).collect();
        Snapshot { cluster: "c1".into(), vm_size: "STANDARD_NC6".into(), now: NOW, nodes, queue }
    }
}

/// When each node is next free, after the plan: idle ones now, placed ones at their job's end.
fn free_times(s: &Snapshot, placements: &[Placement]) -> (usize, Vec<i64>) {
    let walls: HashMap<&str, i64> = s.queue.iter().map(|j| (j.key.as_str(), j.max_wall_clock_ms)).collect();
    let placed: HashMap<&str, i64> =
        placements.iter().flat_map(|p| p.nodes.iter().map(|n| (n.as_str(), NOW + walls[p.job.as_str()]))).collect();
    let mut idle = 0;
    let mut running = Vec::new();
    for n in &s.nodes {
        match (n.state, placed.get(n.id.as_str())) {
            (NodeState::Idle, None) => idle += 1,
            (NodeState::Idle, Some(end)) => running.push(*end),
            (NodeState::Running, _) => running.push(n.busy_until.unwrap_or(i64::MAX)),
            _ => {}
        }
    }
    (idle, running)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn nodes_are_never_double_booked_and_gangs_are_whole(s in snapshot()) {
        let plan = plan(&s);
        let idle: HashSet<&str> = s.nodes.iter().filter(|n| n.state == NodeState::Idle).map(|n| n.id.as_str()).collect();
        let mut used = HashSet::new();
        for p in &plan.placements {
            let job = s.queue.iter().find(|j| j.key == p.job).expect("placed job is queued");
            prop_assert_eq!(p.nodes.len(), job.node_count, "all-or-nothing");
            for n in &p.nodes {
                prop_assert!(idle.contains(n.as_str()), "only idle nodes: {}", n);
                prop_assert!(used.insert(n.clone()), "node {} booked twice", n);
            }
        }
        let mut seen: Vec<&str> = plan.placements.iter().map(|p| p.job.as_str())
            .chain(plan.pending.iter().map(|p| p.job.as_str())).collect();
        seen.sort_unstable();
        let mut all: Vec<&str> = s.queue.iter().map(|j| j.key.as_str()).collect();
        all.sort_unstable();
        prop_assert_eq!(seen, all, "every job is placed or has a reason");
    }

    #[test]
    fn priority_order_holds_until_the_head(s in snapshot()) {
        let plan = plan(&s);
        let mut order = s.queue.clone();
        queue_order(&mut order);
        let placed: HashMap<&str, bool> = plan.placements.iter().map(|p| (p.job.as_str(), p.backfilled)).collect();
        let usable = s.nodes.iter().filter(|n| matches!(n.state, NodeState::Idle | NodeState::Running)).count();
        let mut head_seen = false;
        for j in order.iter().filter(|j| j.node_count <= usable) {
            match placed.get(j.key.as_str()) {
                Some(false) => prop_assert!(!head_seen, "{} jumped the head without backfill", j.key),
                Some(true) => prop_assert!(head_seen, "{} marked backfilled with no head", j.key),
                None => head_seen = true,
            }
        }
    }

    #[test]
    fn backfill_never_delays_the_head(s in snapshot()) {
        let plan = plan(&s);
        let mut order = s.queue.clone();
        queue_order(&mut order);
        let usable = s.nodes.iter().filter(|n| matches!(n.state, NodeState::Idle | NodeState::Running)).count();
        let placed: HashSet<&str> = plan.placements.iter().map(|p| p.job.as_str()).collect();
        let Some(head) = order.iter().find(|j| j.node_count <= usable && !placed.contains(j.key.as_str())) else {
            return Ok(());
        };
        let in_order: Vec<Placement> = plan.placements.iter().filter(|p| !p.backfilled).cloned().collect();
        let (idle0, run0) = free_times(&s, &in_order);
        let (idle1, run1) = free_times(&s, &plan.placements);
        let without = reserve(head.node_count, idle0, &run0, NOW).map(|r| r.shadow_time);
        let with = reserve(head.node_count, idle1, &run1, NOW).map(|r| r.shadow_time);
        prop_assert_eq!(with, without, "backfill moved {}'s earliest start", head.key);
    }
}

fn node(id: &str, state: NodeState, until: Option<i64>) -> Node {
    Node { id: id.into(), state, busy_until: until }
}

fn job(key: &str, priority: i32, submitted_at: i64, node_count: usize, wall: i64) -> Job {
    Job { key: key.into(), priority, submitted_at, node_count, max_wall_clock_ms: wall }
}

#[test]
fn high_priority_goes_first_and_short_jobs_backfill() {
    let s = Snapshot {
        cluster: "c1".into(),
        vm_size: "STANDARD_NC6".into(),
        now: NOW,
        nodes: vec![
            node("a", NodeState::Idle, None),
            node("b", NodeState::Running, Some(NOW + 100)),
            node("c", NodeState::Running, Some(NOW + 500)),
        ],
        queue: vec![
            job("old-normal", 1, 1, 1, 1_000),
            job("new-high", 2, 5, 2, 1_000),
            job("short", 0, 9, 1, 50),
            job("long", 0, 10, 1, 5_000),
        ],
    };
    let p = plan(&s);
    // new-high (priority) needs 2 nodes, 1 is idle: it becomes the head, reserved at NOW+100.
    // old-normal would hold node a past NOW+100: it waits. short ends by NOW+50: backfilled.
    assert_eq!(p.placements, vec![Placement { job: "short".into(), nodes: vec!["a".into()], backfilled: true }]);
    let reasons: HashMap<_, _> = p.pending.iter().map(|p| (p.job.as_str(), p.reason.as_str())).collect();
    assert_eq!(reasons["new-high"], "needs 2 idle STANDARD_NC6 nodes in cluster c1; 1 idle");
    assert!(reasons["old-normal"].contains("would delay"), "{}", reasons["old-normal"]);
    assert!(reasons["long"].contains("queued behind new-high"), "{}", reasons["long"]);
    let classes: HashMap<_, _> = p.pending.iter().map(|p| (p.job.as_str(), p.class)).collect();
    assert_eq!(classes["new-high"], WaitClass::NoIdleNodes);
    assert_eq!(classes["old-normal"], WaitClass::Reservation);
    assert_eq!(classes["long"], WaitClass::NoIdleNodes);
}

#[test]
fn jobs_larger_than_the_cluster_say_so() {
    let s = Snapshot {
        cluster: "c1".into(),
        vm_size: "STANDARD_NC6".into(),
        now: NOW,
        nodes: vec![node("a", NodeState::Idle, None), node("u", NodeState::Unusable, None)],
        queue: vec![job("big", 1, 0, 2, 10), job("small", 1, 1, 1, 10)],
    };
    let p = plan(&s);
    assert_eq!(p.placements.len(), 1, "a job that can never fit does not block the queue");
    assert_eq!(p.pending[0].reason, "needs 2 STANDARD_NC6 nodes in cluster c1; the cluster has 1 usable");
    assert_eq!(p.pending[0].class, WaitClass::ClusterTooSmall);
}

#[test]
fn reservation_counts_ties_as_extra() {
    assert_eq!(reserve(1, 0, &[5, 5, 9], 0), Some(Reservation { shadow_time: 5, extra_nodes: 1 }));
    assert_eq!(reserve(2, 1, &[], 0), None);
    assert_eq!(reserve(1, 3, &[], 7), Some(Reservation { shadow_time: 7, extra_nodes: 2 }));
}
