//! The store conformance suite: every test runs against SQLite and, when
//! `BATCHAI_TEST_PG_URL` is set (always in CI), against a fresh Postgres database.

use batchai_core::ids::{Kind, ResourceRef};
use batchai_core::state::{ExecutionState, OperationStatus, ProvisioningState};
use batchai_store::*;

#[macro_use]
mod common;

use common::{Db, SUB, name, new, rg, tree};

mod both {
    suite!(
        meta_first_writer_wins,
        pool_use_counts_connections,
        principals_and_tokens,
        insert_conflicts_and_parent_checks,
        lists_page_in_key_order_per_scope,
        guarded_transitions_have_one_winner,
        delete_cascades_to_the_subtree,
        operations_are_claimed_once_across_servers,
        expired_leases_are_reclaimed,
        concurrent_inserts_each_get_their_own_outcome,
        a_failing_insert_does_not_fail_its_batch_mates,
        a_filling_database_is_analyzed,
        batched_inserts_read_back_as_written,
        reads_survive_their_connections_being_cut,
    );
}

/// Postgres: once a few hundred rows went in, the store refreshes the planner's statistics
/// itself (counted apart from autovacuum's analyses).
async fn a_filling_database_is_analyzed(db: &Db) {
    use sqlx::Connection;
    if !db.url.starts_with("postgres") {
        return;
    }
    let s = db.open().await;
    for i in 0..300 {
        s.insert_resource(&new(&rg(&format!("g{i}")), ProvisioningState::Succeeded), None).await.expect("insert");
    }
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        tick.tick().await;
        let n: i64 = sqlx::query_scalar("SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'resources'")
            .fetch_one(&mut conn)
            .await
            .expect("stats");
        if n > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "resources never analyzed after 300 inserts");
    }
}

fn op(id: &str, r: &ResourceRef, kind: OperationKind, run_after: i64) -> Operation {
    Operation {
        id: id.into(),
        subscription_id: SUB.into(),
        location: "eastus".into(),
        kind,
        resource_kind: r.kind,
        resource_key: r.key(),
        resource_id: r.id(),
        dollar_id: r.dollar_id(),
        status: OperationStatus::InProgress,
        error_code: None,
        error_message: None,
        started_at: 1_000,
        ended_at: None,
        run_after,
        attempts: 0,
    }
}

async fn meta_first_writer_wins(db: &Db) {
    let s = db.open().await;
    assert_eq!(s.meta_get_or_insert("k", "first").await.unwrap(), "first");
    assert_eq!(s.meta_get_or_insert("k", "second").await.unwrap(), "first");
    let other = db.open().await;
    assert_eq!(other.meta_get_or_insert("k", "third").await.unwrap(), "first");
}

async fn pool_use_counts_connections(db: &Db) {
    let s = db.open().await;
    s.ping().await.unwrap();
    let used = s.pool_use();
    assert!(used.max >= 1 && used.open >= 1 && used.open <= used.max, "{used:?}");
    assert!(used.idle <= used.open, "{used:?}");
}

async fn principals_and_tokens(db: &Db) {
    let s = db.open().await;
    s.ensure_subscription(SUB, 1).await.unwrap();
    s.ensure_subscription(SUB, 2).await.unwrap();
    assert_eq!(s.get_subscription(SUB).await.unwrap().unwrap().created_at, 1);
    let p = Principal {
        client_id: "c1".into(),
        name: "n".into(),
        secret_hash: "h".into(),
        subscriptions: vec![SUB.into()],
        created_at: 5,
    };
    s.create_principal(&p).await.unwrap();
    assert!(matches!(s.create_principal(&p).await, Err(StoreError::Conflict)));
    assert_eq!(s.get_principal("c1").await.unwrap(), Some(p.clone()));
    assert_eq!(s.list_principals().await.unwrap(), vec![p]);
    assert!(s.delete_principal("c1").await.unwrap());
    assert!(!s.delete_principal("c1").await.unwrap());
    let t = ApiToken {
        id: "t1".into(),
        name: "n".into(),
        token_hash: "th".into(),
        subscriptions: vec![SUB.into()],
        created_at: 1,
        expires_at: Some(99),
        revoked_at: None,
    };
    s.create_token(&t).await.unwrap();
    assert_eq!(s.find_token("th").await.unwrap(), Some(t));
    assert!(s.revoke_token("t1", 7).await.unwrap());
    assert!(!s.revoke_token("t1", 8).await.unwrap(), "revoking twice is refused");
    assert_eq!(s.find_token("th").await.unwrap().unwrap().revoked_at, Some(7));
    s.set_provider_state(SUB, "microsoft.batchai", "Registered").await.unwrap();
    assert_eq!(s.provider_state(SUB, "microsoft.batchai").await.unwrap().as_deref(), Some("Registered"));
}

async fn insert_conflicts_and_parent_checks(db: &Db) {
    let s = db.open().await;
    let (g, ws, ..) = tree(s.as_ref(), "rg").await;
    let again = new(&ws, ProvisioningState::Succeeded);
    assert!(matches!(s.insert_resource(&again, None).await, Err(StoreError::Conflict)));
    let orphan = rg("missing").child(Kind::Workspace, name("w2", Kind::Workspace));
    assert!(matches!(
        s.insert_resource(&new(&orphan, ProvisioningState::Succeeded), None).await,
        Err(StoreError::ParentGone)
    ));
    // A parent being deleted takes no children, and the failed insert leaves no operation.
    let del = op("del-rg", &g, OperationKind::Delete, 0);
    assert!(s.begin_delete(&g.key(), &del).await.unwrap());
    let late = g.child(Kind::Workspace, name("late", Kind::Workspace));
    let create = op("create-late", &late, OperationKind::Create, 0);
    assert!(matches!(
        s.insert_resource(&new(&late, ProvisioningState::Creating), Some(&create)).await,
        Err(StoreError::ParentGone)
    ));
    assert!(s.get_operation("create-late").await.unwrap().is_none());
    let row = s.get_resource(&ws.key()).await.unwrap().unwrap();
    assert_eq!(row.arm_id, ws.id());
    // A job whose cluster is missing, or being deleted, is refused with its operation.
    let (_, ws2, exp2, _, cl2) = tree(s.as_ref(), "rg-req").await;
    let j = exp2.child(Kind::Job, name("needs-cluster", Kind::Job));
    let mut job = new(&j, ProvisioningState::Succeeded);
    job.requires = Some(ws2.child(Kind::Cluster, name("absent", Kind::Cluster)).key());
    let job_op = op("create-j", &j, OperationKind::Create, 0);
    assert!(matches!(s.insert_resource(&job, Some(&job_op)).await, Err(StoreError::RequiredGone)));
    assert!(s.begin_delete(&cl2.key(), &op("del-cl", &cl2, OperationKind::Delete, 0)).await.unwrap());
    job.requires = Some(cl2.key());
    assert!(matches!(s.insert_resource(&job, Some(&job_op)).await, Err(StoreError::RequiredGone)));
    assert!(s.get_operation("create-j").await.unwrap().is_none());
    assert!(s.get_resource(&j.key()).await.unwrap().is_none());
    let cl3 = ws2.child(Kind::Cluster, name("live", Kind::Cluster));
    s.insert_resource(&new(&cl3, ProvisioningState::Succeeded), None).await.unwrap();
    job.requires = Some(cl3.key());
    s.insert_resource(&job, Some(&job_op)).await.unwrap();
    let stored = s.get_resource(&j.key()).await.unwrap().unwrap();
    assert_eq!(stored.job.unwrap().execution_state, ExecutionState::Queued);
    assert_eq!(s.get_operation("create-j").await.unwrap().unwrap().resource_key, j.key());
    assert_eq!(row.spec, Some(serde_json::json!({"k": "v"})));
}

async fn lists_page_in_key_order_per_scope(db: &Db) {
    let s = db.open().await;
    let (g, ws, exp, ..) = tree(s.as_ref(), "rg").await;
    for i in 0..25 {
        let j = exp.child(Kind::Job, name(&format!("j{i:02}"), Kind::Job));
        s.insert_resource(&new(&j, ProvisioningState::Succeeded), None).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let q = ListQuery { kind: Kind::Job, scope: Scope::Parent(exp.key()), after: after.clone(), limit: 10 };
        let page = s.list_resources(&q).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|r| r.key.clone());
        seen.extend(page.into_iter().map(|r| r.name));
    }
    assert_eq!(seen.len(), 26, "25 jobs + the tree's one");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    let by_group = ListQuery {
        kind: Kind::Workspace,
        scope: Scope::ResourceGroup { subscription: SUB.into(), rg_key: g.resource_group.key() },
        after: None,
        limit: 100,
    };
    assert_eq!(s.list_resources(&by_group).await.unwrap().len(), 1);
    let by_sub = ListQuery { kind: Kind::Workspace, scope: Scope::Subscription(SUB.into()), after: None, limit: 100 };
    assert_eq!(s.list_resources(&by_sub).await.unwrap()[0].key, ws.key());
}

async fn guarded_transitions_have_one_winner(db: &Db) {
    let s = db.open().await;
    let other = db.open().await;
    let (_, _, exp, ..) = tree(s.as_ref(), "rg").await;
    let j = exp.child(Kind::Job, name("contended", Kind::Job));
    s.insert_resource(&new(&j, ProvisioningState::Creating), None).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = if i % 2 == 0 { s.clone() } else { other.clone() };
        let key = j.key();
        tasks.push(tokio::spawn(async move {
            let created = store
                .transition_provisioning(&key, ProvisioningState::Creating, ProvisioningState::Succeeded, 2)
                .await
                .unwrap();
            let outcome = JobOutcome { start_time: Some(3), now: 3, ..Default::default() };
            let started =
                store.transition_job(&key, ExecutionState::Queued, ExecutionState::Running, &outcome).await.unwrap();
            (created, started)
        }));
    }
    let mut created = 0;
    let mut started = 0;
    for t in tasks {
        let (c, st) = t.await.unwrap();
        created += c as i32;
        started += st as i32;
    }
    assert_eq!((created, started), (1, 1), "exactly one writer wins each transition");
    let row = s.get_resource(&j.key()).await.unwrap().unwrap();
    let job = row.job.unwrap();
    assert_eq!(job.execution_state, ExecutionState::Running);
    assert_eq!(job.start_time, Some(3));
    let fail = JobOutcome {
        end_time: Some(4),
        exit_code: Some(1),
        errors: Some(vec![JobError { code: "JobFailed".into(), message: "m".into() }]),
        now: 4,
        ..Default::default()
    };
    assert!(s.transition_job(&j.key(), ExecutionState::Running, ExecutionState::Failed, &fail).await.unwrap());
    let job = s.get_resource(&j.key()).await.unwrap().unwrap().job.unwrap();
    assert_eq!((job.start_time, job.end_time, job.exit_code), (Some(3), Some(4), Some(1)), "earlier fields kept");
    assert_eq!(job.errors[0].code, "JobFailed");
}

async fn delete_cascades_to_the_subtree(db: &Db) {
    let s = db.open().await;
    let (g, ws, exp, job, cl) = tree(s.as_ref(), "rg").await;
    let (g2, ws2, ..) = tree(s.as_ref(), "rg2").await;
    let d = op("d1", &ws, OperationKind::Delete, 0);
    assert!(s.begin_delete(&ws.key(), &d).await.unwrap());
    assert!(!s.begin_delete(&ws.key(), &op("d2", &ws, OperationKind::Delete, 0)).await.unwrap(), "already deleting");
    assert_eq!(s.get_resource(&ws.key()).await.unwrap().unwrap().provisioning_state, ProvisioningState::Deleting);
    assert!(!s.update_tags(&ws.key(), &serde_json::json!({"a": "b"})).await.unwrap(), "no updates while deleting");
    s.delete_subtree(&ws.key(), Kind::Workspace).await.unwrap();
    for r in [&ws, &exp, &job, &cl] {
        assert!(s.get_resource(&r.key()).await.unwrap().is_none(), "{} gone", r.id());
    }
    assert!(s.get_resource(&g.key()).await.unwrap().is_some());
    assert!(s.get_resource(&ws2.key()).await.unwrap().is_some(), "another group's workspace of the same name stays");
    s.delete_subtree(&g2.key(), Kind::ResourceGroup).await.unwrap();
    assert!(s.get_resource(&ws2.key()).await.unwrap().is_none());
    s.delete_subtree(&g2.key(), Kind::ResourceGroup).await.unwrap();
}

async fn operations_are_claimed_once_across_servers(db: &Db) {
    let a = db.open().await;
    let b = db.open().await;
    let g = rg("rg");
    for i in 0..40 {
        a.insert_operation(&op(&format!("op{i:02}"), &g, OperationKind::Delete, 0)).await.unwrap();
    }
    a.insert_operation(&op("later", &g, OperationKind::Delete, 10_000)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { s.claim_operations(5_000, 6_000, 7).await.unwrap() }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap().into_iter().map(|o| o.id));
    }
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "no operation claimed twice");
    assert_eq!(total, 40, "every due operation claimed, the later one not");
    assert!(a.finish_operation("op00", OperationStatus::Succeeded, None, 5_500).await.unwrap());
    assert!(!b.finish_operation("op00", OperationStatus::Failed, Some(("X", "y")), 5_600).await.unwrap());
    assert_eq!(a.get_operation("op00").await.unwrap().unwrap().status, OperationStatus::Succeeded);
}

async fn expired_leases_are_reclaimed(db: &Db) {
    let s = db.open().await;
    let g = rg("rg");
    s.insert_operation(&op("o", &g, OperationKind::Delete, 0)).await.unwrap();
    assert_eq!(s.claim_operations(100, 200, 10).await.unwrap().len(), 1);
    assert!(s.claim_operations(150, 250, 10).await.unwrap().is_empty(), "leased");
    let again = s.claim_operations(200, 300, 10).await.unwrap();
    assert_eq!(again.len(), 1, "lease ran out: a server that died loses it");
    assert_eq!(again[0].attempts, 2);
    s.finish_operation("o", OperationStatus::Succeeded, None, 210).await.unwrap();
    assert!(s.claim_operations(1_000, 2_000, 10).await.unwrap().is_empty(), "finished operations are not claimed");
}

/// Inserts share batches under load; each request still gets its own outcome.
async fn concurrent_inserts_each_get_their_own_outcome(db: &Db) {
    let s = db.open().await;
    let (_, ws, exp, _, cl) = tree(s.as_ref(), "rg").await;
    let mut tasks = Vec::new();
    for i in 0..120 {
        let s = s.clone();
        // 100 distinct jobs, 10 racing copies of one job, 10 jobs of a missing cluster.
        let (job_name, requires) = match i {
            0..100 => (format!("j{i}"), cl.key()),
            100..110 => ("same".to_owned(), cl.key()),
            _ => (format!("orphan{i}"), ws.child(Kind::Cluster, name("none", Kind::Cluster)).key()),
        };
        let j = exp.child(Kind::Job, name(&job_name, Kind::Job));
        let mut r = new(&j, ProvisioningState::Succeeded);
        r.requires = Some(requires);
        let o = op(&format!("op{i}"), &j, OperationKind::Create, 0);
        tasks.push(tokio::spawn(async move { (i, s.insert_resource(&r, Some(&o)).await) }));
    }
    let (mut ok, mut conflict, mut required) = (0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (_, Ok(inserted)) => {
                assert_eq!(inserted.parent_location.as_deref(), Some("eastus"));
                ok += 1
            }
            (100..110, Err(StoreError::Conflict)) => conflict += 1,
            (110.., Err(StoreError::RequiredGone)) => required += 1,
            (i, Err(e)) => panic!("request {i}: {e}"),
        }
    }
    assert_eq!((ok, conflict, required), (101, 9, 10));
    let q = ListQuery { kind: Kind::Job, scope: Scope::Parent(exp.key()), after: None, limit: 1000 };
    assert_eq!(s.list_resources(&q).await.unwrap().len(), 102, "101 new jobs and the tree's one");
}

/// A request the database rejects (here: an operation id used twice, a primary-key violation)
/// fails alone, even when it shared a batch with others.
async fn a_failing_insert_does_not_fail_its_batch_mates(db: &Db) {
    let s = db.open().await;
    let (_, _, exp, _, cl) = tree(s.as_ref(), "rg").await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = s.clone();
        let j = exp.child(Kind::Job, name(&format!("b{i}"), Kind::Job));
        let mut r = new(&j, ProvisioningState::Succeeded);
        r.requires = Some(cl.key());
        let op_id = if i % 10 == 0 { "shared-op".to_owned() } else { format!("op{i}") };
        let o = op(&op_id, &j, OperationKind::Create, 0);
        tasks.push(tokio::spawn(async move { (i, s.insert_resource(&r, Some(&o)).await.is_ok()) }));
    }
    let mut failed = Vec::new();
    for t in tasks {
        let (i, ok) = t.await.unwrap();
        if !ok {
            failed.push(i);
        }
    }
    // Of the four requests sharing an operation id, exactly one wins; the other 36 all succeed.
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(failed.iter().all(|i| i % 10 == 0), "{failed:?}");
    let q = ListQuery { kind: Kind::Job, scope: Scope::Parent(exp.key()), after: None, limit: 1000 };
    assert_eq!(s.list_resources(&q).await.unwrap().len(), 38, "37 new jobs and the tree's one");
}

/// Requests sent together (so written as one batch) read back field for field as they were
/// sent: resources, their job or cluster rows and their operations.
async fn batched_inserts_read_back_as_written(db: &Db) {
    let s = db.open().await;
    let (_, ws, exp, ..) = tree(s.as_ref(), "rg").await;
    let mut sent = Vec::new();
    for i in 0..30i32 {
        let r = if i % 3 == 0 {
            ws.child(Kind::Cluster, name(&format!("c{i}"), Kind::Cluster))
        } else {
            exp.child(Kind::Job, name(&format!("j{i}"), Kind::Job))
        };
        let mut n = new(&r, if i % 2 == 0 { ProvisioningState::Creating } else { ProvisioningState::Succeeded });
        n.tags = Some(serde_json::json!({ "i": i, "quote": "it's \"x\"" }));
        n.spec = Some(serde_json::json!({ "n": i, "nested": [1, { "a": null }] }));
        n.location = None;
        n.now = 1_000 + i64::from(i);
        if let Some(j) = n.job.as_mut() {
            (j.priority, j.node_count, j.max_wall_clock_secs) = (i % 3, i, 60 + i64::from(i));
            j.tool_type = format!("tool{i}");
        }
        if r.kind == Kind::Cluster {
            n.cluster = Some(NewCluster {
                vm_size: format!("STANDARD_NC{i}"),
                allocation_state: batchai_core::state::AllocationState::Resizing,
            });
        }
        let mut o = op(&format!("op{i}"), &r, OperationKind::Create, 5_000 + i64::from(i));
        o.location = "from-request".into();
        sent.push((n, o));
    }
    let tasks: Vec<_> = sent
        .iter()
        .cloned()
        .map(|(n, o)| {
            let s = s.clone();
            tokio::spawn(async move { s.insert_resource(&n, Some(&o)).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().parent_location.as_deref(), Some("eastus"));
    }
    for (n, o) in &sent {
        let row = s.get_resource(&n.key).await.unwrap().unwrap();
        assert_eq!(
            (&row.kind, &row.parent_key, &row.arm_id, &row.name, &row.uid),
            (&n.kind, &n.parent_key, &n.arm_id, &n.name, &n.uid)
        );
        assert_eq!((&row.location, &row.tags, &row.spec), (&n.location, &n.tags, &n.spec));
        assert_eq!(
            (row.provisioning_state, row.created_at, row.provisioning_changed_at),
            (n.provisioning_state, n.now, n.now)
        );
        match (&row.job, &n.job) {
            (Some(j), Some(want)) => {
                assert_eq!(
                    (&j.cluster_key, j.priority, j.node_count),
                    (&want.cluster_key, want.priority, want.node_count)
                );
                assert_eq!((&j.tool_type, j.max_wall_clock_secs), (&want.tool_type, want.max_wall_clock_secs));
                assert_eq!((j.execution_state, j.execution_changed_at), (ExecutionState::Queued, n.now));
            }
            (None, None) => {}
            other => panic!("job rows differ: {other:?}"),
        }
        match (&row.cluster, &n.cluster) {
            (Some(c), Some(want)) => {
                assert_eq!((&c.vm_size, c.allocation_state), (&want.vm_size, want.allocation_state));
                assert_eq!((c.allocation_changed_at, c.current_node_count), (n.now, 0));
            }
            (None, None) => {}
            other => panic!("cluster rows differ: {other:?}"),
        }
        let stored = s.get_operation(&o.id).await.unwrap().unwrap();
        // The operation takes the parent's location, as the resource's own would be.
        assert_eq!(stored, Operation { location: "eastus".into(), ..o.clone() });
    }
}

/// Postgres: every connection the store holds is terminated (as a database restart does);
/// reads go on without an error, the dead connections replaced.
async fn reads_survive_their_connections_being_cut(db: &Db) {
    use sqlx::Connection;
    if !db.url.starts_with("postgres") {
        return;
    }
    let s = db.open().await;
    let (_, ws, ..) = tree(s.as_ref(), "rg").await;
    // Several reads at once, so that more than one held connection is in use.
    let read_all = || {
        let (s, key) = (s.clone(), ws.key());
        async move {
            let reads: Vec<_> = (0..8)
                .map(|_| {
                    let (s, key) = (s.clone(), key.clone());
                    tokio::spawn(async move { s.get_resource(&key).await })
                })
                .collect();
            for r in reads {
                assert!(r.await.unwrap().expect("read after the cut").is_some());
            }
        }
    };
    read_all().await;
    let mut admin = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend') t",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(cut > 0, "the store held connections");
    read_all().await;
    read_all().await;
}
