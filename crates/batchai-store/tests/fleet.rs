//! Conformance of the node and placement half of the store, on SQLite and Postgres.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::sync::Arc;

use batchai_core::state::{ExecutionState, NodeState, ProvisioningState};
use batchai_store::*;
use common::{Db, new, tree};

mod both {
    suite!(
        join_tokens_are_found_by_hash_and_revoked,
        nodes_join_a_cluster_and_are_counted,
        racing_placements_never_share_a_node,
        a_batch_of_placements_undoes_only_the_job_that_lost,
        a_batch_is_placed_whole_and_only_in_the_jobs_cluster,
        reports_from_an_old_placement_are_ignored,
        lost_nodes_come_back_through_preparation,
        nodes_of_deleted_clusters_and_jobs_are_freed,
    );
}

fn facts(sizes: &[&str]) -> NodeFactsRow {
    NodeFactsRow {
        hostname: "h".into(),
        address: "10.0.0.4".into(),
        ssh_port: 22,
        gpus: 1,
        facts: serde_json::json!({"hostname": "h"}),
        vm_sizes: sizes.iter().map(|s| s.to_string()).collect(),
    }
}

async fn join(s: &dyn Store, id: &str, sizes: &[&str]) {
    let n = NewNode { id: id.into(), credential_hash: format!("hash-{id}"), facts: facts(sizes), now: 1_000 };
    s.register_node(&n).await.expect("register");
}

/// A cluster `cl` of STANDARD_NC6 and `jobs` queued jobs on it, each needing `need` nodes.
async fn cluster_with_jobs(s: &dyn Store, rg: &str, jobs: usize, need: i32) -> (String, Vec<String>) {
    let (_, _, exp, _, cl) = tree(s, rg).await;
    let mut keys = Vec::new();
    for i in 0..jobs {
        let j = exp.child(batchai_core::ids::Kind::Job, common::name(&format!("j{i}"), batchai_core::ids::Kind::Job));
        let mut r = new(&j, ProvisioningState::Succeeded);
        r.now = 2_000 + i as i64;
        if let Some(job) = r.job.as_mut() {
            job.cluster_key = cl.key();
            job.node_count = need;
        }
        s.insert_resource(&r, None).await.expect("job");
        keys.push(j.key());
    }
    (cl.key(), keys)
}

async fn ready_nodes(s: &dyn Store, cluster: &str, ids: &[&str]) {
    for id in ids {
        join(s, id, &["standard_nc6"]).await;
    }
    assert_eq!(s.allocate_nodes(cluster, "STANDARD_NC6", ids.len() as i64, 1_100).await.unwrap(), ids.len() as u64);
    for id in ids {
        let n = s.get_node(id).await.unwrap().unwrap();
        assert!(s.report_setup(id, n.alloc_epoch, None, 1_200).await.unwrap());
    }
}

/// The counts as the scheduler's recount on each pass leaves them.
async fn counts(s: &dyn Store, cluster: &str) -> ClusterRuntime {
    s.refresh_cluster(cluster, None, None, 9_999).await.unwrap();
    s.get_resource(cluster).await.unwrap().unwrap().cluster.unwrap()
}

async fn join_tokens_are_found_by_hash_and_revoked(db: &Db) {
    let s = db.open().await;
    let t = JoinToken {
        id: "jt1".into(),
        name: "rack 1".into(),
        token_hash: "h1".into(),
        created_at: 1,
        expires_at: None,
        revoked_at: None,
    };
    s.create_join_token(&t).await.unwrap();
    assert!(matches!(s.create_join_token(&t).await, Err(StoreError::Conflict)));
    assert_eq!(s.find_join_token("h1").await.unwrap(), Some(t.clone()));
    assert!(s.revoke_join_token("jt1", 5).await.unwrap());
    assert!(!s.revoke_join_token("jt1", 6).await.unwrap(), "revoked once");
    assert_eq!(s.find_join_token("h1").await.unwrap().unwrap().revoked_at, Some(5));
    assert_eq!(s.list_join_tokens().await.unwrap().len(), 1);
}

async fn nodes_join_a_cluster_and_are_counted(db: &Db) {
    let s = db.open().await;
    let (cl, _) = cluster_with_jobs(s.as_ref(), "g", 0, 1).await;
    join(s.as_ref(), "n-other", &["standard_d1"]).await;
    join(s.as_ref(), "n-any", &["*"]).await;
    join(s.as_ref(), "n-nc6", &["STANDARD_NC6"]).await;
    assert!(matches!(
        s.register_node(&NewNode { id: "n-nc6".into(), credential_hash: "x".into(), facts: facts(&[]), now: 1 }).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(s.node_by_credential("hash-n-any").await.unwrap().unwrap().id, "n-any");

    // Only nodes serving the size (or every size) are taken, and only as many as asked.
    assert_eq!(s.allocate_nodes(&cl, "STANDARD_NC6", 5, 1_100).await.unwrap(), 2);
    let c = counts(s.as_ref(), &cl).await;
    assert_eq!((c.current_node_count, c.preparing_node_count), (2, 2));
    assert_eq!(s.get_node("n-other").await.unwrap().unwrap().state, NodeState::Free);

    let any = s.get_node("n-any").await.unwrap().unwrap();
    assert!(!s.report_setup("n-any", any.alloc_epoch - 1, None, 1_200).await.unwrap(), "old allocation");
    assert!(s.report_setup("n-any", any.alloc_epoch, None, 1_200).await.unwrap());
    let nc6 = s.get_node("n-nc6").await.unwrap().unwrap();
    assert!(s.report_setup("n-nc6", nc6.alloc_epoch, Some("setup task exited 1"), 1_200).await.unwrap());
    let c = counts(s.as_ref(), &cl).await;
    assert_eq!((c.idle_node_count, c.unusable_node_count, c.preparing_node_count), (1, 1, 0));
    assert_eq!(s.get_node("n-nc6").await.unwrap().unwrap().error.as_deref(), Some("setup task exited 1"));

    // Scale-down returns idle and unusable nodes to the pool.
    assert_eq!(s.release_nodes(&cl, &["n-any".into(), "n-nc6".into()], 1_300).await.unwrap(), 2);
    assert_eq!(counts(s.as_ref(), &cl).await.current_node_count, 0);
    let n = s.get_node("n-nc6").await.unwrap().unwrap();
    assert_eq!((n.state, n.cluster_key, n.error), (NodeState::Free, None, None));
}

async fn racing_placements_never_share_a_node(db: &Db) {
    let a = db.open().await;
    let b = db.open().await;
    let (cl, jobs) = cluster_with_jobs(a.as_ref(), "g", 12, 2).await;
    ready_nodes(a.as_ref(), &cl, &["n1", "n2", "n3", "n4", "n5"]).await;
    // Every job tries overlapping pairs through one of two handles at once.
    let mut tasks = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let s: Arc<dyn Store> = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (job, cl) = (job.clone(), cl.clone());
        let pair = vec![format!("n{}", i % 5 + 1), format!("n{}", (i + 1) % 5 + 1)];
        tasks
            .push(tokio::spawn(async move { (job.clone(), pair.clone(), s.place_job(&job, &cl, &pair, 3_000).await) }));
    }
    let mut used = HashSet::new();
    let mut placed = 0;
    for t in tasks {
        let (job, pair, res) = t.await.unwrap();
        if let Some(epoch) = res.expect("placement runs") {
            placed += 1;
            for n in &pair {
                assert!(used.insert(n.clone()), "{n} placed twice");
                let node = a.get_node(n).await.unwrap().unwrap();
                assert_eq!((node.job_key.as_deref(), node.job_epoch), (Some(job.as_str()), Some(epoch)));
            }
            let ranks: Vec<String> =
                a.job_placement(&job, epoch).await.unwrap().into_iter().map(|p| p.node_id).collect();
            assert_eq!(ranks, pair, "ranks follow the order asked for");
        } else {
            let row = a.get_resource(&job).await.unwrap().unwrap().job.unwrap();
            assert_eq!(row.execution_state, ExecutionState::Queued, "a refused gang holds nothing");
        }
    }
    assert!((1..=2).contains(&placed), "5 nodes fit at most 2 pairs, got {placed}");
    let c = counts(a.as_ref(), &cl).await;
    assert_eq!((c.running_node_count, c.idle_node_count), (placed * 2, 5 - placed * 2));
}

async fn a_batch_of_placements_undoes_only_the_job_that_lost(db: &Db) {
    let s = db.open().await;
    let (cl, jobs) = cluster_with_jobs(s.as_ref(), "g", 3, 2).await;
    ready_nodes(s.as_ref(), &cl, &["n1", "n2", "n3", "n4"]).await;
    let batch = vec![
        (jobs[0].clone(), vec!["n1".to_string(), "n2".to_string()]),
        // Wants n2, taken just above: undone alone, n3 is not left held.
        (jobs[1].clone(), vec!["n3".to_string(), "n2".to_string()]),
        (jobs[2].clone(), vec!["n4".to_string(), "n3".to_string()]),
    ];
    let placed = s.place_jobs(&cl, &batch, 3_000).await.unwrap();
    assert!(placed[0].is_some() && placed[1].is_none() && placed[2].is_some(), "{placed:?}");
    let j1 = s.get_resource(&jobs[1]).await.unwrap().unwrap().job.unwrap();
    assert_eq!(j1.execution_state, ExecutionState::Queued);
    assert!(s.job_placement(&jobs[1], 1).await.unwrap().is_empty(), "no placement rows left behind");
    assert_eq!(s.get_node("n3").await.unwrap().unwrap().job_key.as_deref(), Some(jobs[2].as_str()));
    assert_eq!(counts(s.as_ref(), &cl).await.running_node_count, 4);
}

async fn a_batch_is_placed_whole_and_only_in_the_jobs_cluster(db: &Db) {
    let s = db.open().await;
    let (cl, jobs) = cluster_with_jobs(s.as_ref(), "g", 3, 1).await;
    let (_, other) = cluster_with_jobs(s.as_ref(), "h", 1, 1).await;
    ready_nodes(s.as_ref(), &cl, &["n1", "n2", "n3"]).await;
    // A job of another cluster is never started on this one's nodes.
    let placed = s.place_jobs(&cl, &[(other[0].clone(), vec!["n1".into()])], 3_000).await.unwrap();
    assert_eq!(placed, vec![None]);
    assert_eq!(s.get_resource(&other[0]).await.unwrap().unwrap().job.unwrap().execution_state, ExecutionState::Queued);
    assert_eq!(s.get_node("n1").await.unwrap().unwrap().state, NodeState::Idle);

    let batch: Vec<(String, Vec<String>)> =
        jobs.iter().zip(["n3", "n1", "n2"]).map(|(j, n)| (j.clone(), vec![n.to_string()])).collect();
    assert_eq!(s.place_jobs(&cl, &batch, 3_100).await.unwrap(), vec![Some(1), Some(1), Some(1)]);
    for (job, node) in &batch {
        assert_eq!(s.job_state(job, 1).await.unwrap(), Some(ExecutionState::Running));
        assert_eq!(s.job_state(job, 2).await.unwrap(), None, "not that placement");
        let p = s.job_placement(job, 1).await.unwrap();
        assert_eq!((p.len(), p[0].rank, &p[0].node_id, p[0].phase.as_str()), (1, 0, &node[0], "assigned"));
    }
    let nodes = s.cluster_nodes(&cl).await.unwrap();
    assert_eq!(nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["n1", "n2", "n3"]);
    assert!(nodes.iter().all(|n| n.state == NodeState::Running && n.facts.is_null()), "{nodes:?}");
    assert_eq!(nodes[0].job_key.as_deref(), Some(jobs[1].as_str()));
}

async fn reports_from_an_old_placement_are_ignored(db: &Db) {
    let s = db.open().await;
    let (cl, jobs) = cluster_with_jobs(s.as_ref(), "g", 1, 1).await;
    ready_nodes(s.as_ref(), &cl, &["n1", "n2"]).await;
    let job = &jobs[0];
    let e1 = s.place_job(job, &cl, &["n1".into()], 3_000).await.unwrap().unwrap();
    assert!(s.report_task("n1", job, e1, "running", None, None).await.unwrap());
    assert!(!s.report_task("n2", job, e1, "running", None, None).await.unwrap(), "n2 holds no part of it");
    assert!(s.requeue_job(job, e1, 3_100).await.unwrap());
    assert_eq!(s.get_node("n1").await.unwrap().unwrap().state, NodeState::Idle);
    let e2 = s.place_job(job, &cl, &["n2".into()], 3_200).await.unwrap().unwrap();
    assert!(e2 > e1);
    assert!(!s.report_task("n1", job, e1, "exited", Some(0), None).await.unwrap(), "fenced");
    assert!(s.report_task("n2", job, e2, "exited", Some(3), Some(("JobFailed", "m"))).await.unwrap());
    assert!(!s.report_task("n2", job, e2, "running", None, None).await.unwrap(), "an exit is final");
    let p = s.job_placement(job, e2).await.unwrap();
    assert_eq!((p[0].phase.as_str(), p[0].exit_code), ("exited", Some(3)));
    let outcome = JobOutcome { end_time: Some(4_000), exit_code: Some(3), now: 4_000, ..Default::default() };
    assert!(!s.finish_job(job, e1, ExecutionState::Running, ExecutionState::Failed, &outcome).await.unwrap());
    assert!(s.finish_job(job, e2, ExecutionState::Running, ExecutionState::Failed, &outcome).await.unwrap());
    let n2 = s.get_node("n2").await.unwrap().unwrap();
    assert_eq!((n2.state, n2.job_key), (NodeState::Idle, None));
    assert_eq!(counts(s.as_ref(), &cl).await.idle_node_count, 2);
}

async fn lost_nodes_come_back_through_preparation(db: &Db) {
    let s = db.open().await;
    let (cl, jobs) = cluster_with_jobs(s.as_ref(), "g", 1, 1).await;
    ready_nodes(s.as_ref(), &cl, &["n1"]).await;
    let epoch = s.place_job(&jobs[0], &cl, &["n1".into()], 3_000).await.unwrap().unwrap();
    let before = s.get_node("n1").await.unwrap().unwrap();
    assert!(s.heartbeat("hash-n1", 5_000).await.unwrap().is_some());
    assert!(s.mark_lost(5_000, 9_000).await.unwrap().is_empty(), "seen at the deadline");
    let lost = s.mark_lost(6_000, 9_000).await.unwrap();
    assert_eq!(
        lost,
        vec![LostNode {
            id: "n1".into(),
            cluster_key: Some(cl.clone()),
            job: Some((jobs[0].clone(), epoch)),
            left: false
        }]
    );
    assert!(s.mark_lost(6_000, 9_001).await.unwrap().is_empty(), "lost once");
    assert!(!s.node_left("n1", 9_100).await.unwrap(), "a lost node cannot leave");
    assert_eq!(counts(s.as_ref(), &cl).await.unusable_node_count, 1);
    let back = s.heartbeat("hash-n1", 9_500).await.unwrap().unwrap();
    assert_eq!((back.state, back.lost_at, back.job_key), (NodeState::Preparing, None, None));
    assert!(back.alloc_epoch > before.alloc_epoch, "prepared anew");

    // A node that says it leaves is lost at once, however recent its heartbeat, and once.
    assert!(s.node_left("n1", 9_600).await.unwrap());
    let left = s.mark_lost(0, 9_700).await.unwrap();
    assert_eq!(left, vec![LostNode { id: "n1".into(), cluster_key: Some(cl.clone()), job: None, left: true }]);
    assert!(s.mark_lost(0, 9_800).await.unwrap().is_empty(), "left once");
    assert!(!s.node_left("unknown", 9_900).await.unwrap());
}

async fn nodes_of_deleted_clusters_and_jobs_are_freed(db: &Db) {
    let s = db.open().await;
    let (cl, jobs) = cluster_with_jobs(s.as_ref(), "g", 1, 1).await;
    ready_nodes(s.as_ref(), &cl, &["n1", "n2"]).await;
    s.place_job(&jobs[0], &cl, &["n1".into()], 3_000).await.unwrap().unwrap();
    s.delete_subtree(&jobs[0], batchai_core::ids::Kind::Job).await.unwrap();
    assert_eq!(s.release_orphans(4_000).await.unwrap(), 1);
    assert_eq!(s.get_node("n1").await.unwrap().unwrap().state, NodeState::Idle);
    s.delete_subtree(&cl, batchai_core::ids::Kind::Cluster).await.unwrap();
    assert_eq!(s.release_orphans(5_000).await.unwrap(), 2);
    for n in ["n1", "n2"] {
        let n = s.get_node(n).await.unwrap().unwrap();
        assert_eq!((n.state, n.cluster_key), (NodeState::Free, None));
    }
    assert_eq!(s.release_orphans(6_000).await.unwrap(), 0);
}
