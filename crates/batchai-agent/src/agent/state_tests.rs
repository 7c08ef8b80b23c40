//! The agent's state machine without a server: answers are fed to [`State::act`] and the
//! background work's reports are awaited on its channels, as the sync loop does.

use batchai_core::models::ClusterSpec;
use serde_json::json;

use super::*;
use crate::agent::DEFAULT_SYNC_WAIT;
use crate::executor::RESTARTED;
use crate::executor::tests::{GRACE, node, task};
use crate::runtime::{ContainerSpec, Exit, FakeRuntime, Script};

fn state(dir: &Path, fake: &FakeRuntime) -> (State, Events) {
    State::new(node(dir), Arc::new(fake.clone()), NodeFacts { hostname: "h".into(), ..NodeFacts::default() })
}

fn answer(version: &str, cluster: Option<ClusterAssignment>, tasks: Vec<TaskAssignment>) -> SyncResponse {
    SyncResponse { version: version.into(), state: "idle".into(), cluster, tasks }
}

fn custom(command: &str) -> TaskAssignment {
    task(json!({"customToolkitSettings": {"commandLine": command}}))
}

fn key(t: &TaskAssignment) -> TaskKey {
    (t.job.clone(), t.epoch)
}

/// Feeds task reports to the state until `done` holds.
async fn until(state: &mut State, events: &mut Events, mut done: impl FnMut(&State) -> bool) {
    while !done(state) {
        let report = events.tasks.recv().await.unwrap();
        state.on_task_report(report);
    }
}

fn phase_of(state: &State, t: &TaskAssignment) -> Option<TaskPhase> {
    state.tasks.get(&key(t)).map(|e| e.report.phase)
}

#[tokio::test]
async fn a_task_runs_to_its_end_and_is_forgotten_once_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    fake.script("main", Script::Exit(Exit::Code(0)));
    let (mut state, mut events) = state(dir.path(), &fake);
    let first = state.request(Duration::ZERO);
    assert!(first.facts.is_some() && first.known.is_none() && first.tasks.is_empty() && state.urgent);

    let t = custom("train");
    state.urgent = false;
    state.act(answer("v1", None, vec![t.clone()]));
    assert!(state.urgent, "a new task is news");
    assert!(state.settle_until.is_some(), "held back a moment in case the task moves on");
    let r = state.request(DEFAULT_SYNC_WAIT);
    assert_eq!((r.known.as_deref(), r.wait_ms, r.tasks[0].phase), (Some("v1"), 20_000, TaskPhase::Preparing));
    let marker = state.marker(&key(&t));
    assert!(marker.exists());

    until(&mut state, &mut events, |s| phase_of(s, &t) == Some(TaskPhase::Exited)).await;
    assert!(state.settle_until.is_none(), "an exit is reported at once");
    let reported = state.request(Duration::ZERO).tasks;
    assert_eq!((reported[0].exit_code, reported[0].error.clone()), (Some(0), None));
    let saved: TaskReport = serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    assert_eq!(saved, reported[0]);

    // Still listed: kept and reported, never started again.
    state.act(answer("v2", None, vec![t.clone()]));
    assert_eq!(fake.started().len(), 1);
    assert_eq!(state.request(Duration::ZERO).tasks.len(), 1);
    state.act(answer("v3", None, vec![]));
    assert!(state.tasks.is_empty() && !marker.exists());
}

#[tokio::test]
async fn a_task_no_longer_listed_is_stopped_before_the_next_one_starts() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let (mut state, mut events) = state(dir.path(), &fake);
    let old = custom("train forever");
    state.act(answer("v1", None, vec![old.clone()]));
    fake.wait_started("train forever").await;

    let mut new = custom("next job");
    new.job = "/subscriptions/s/resourcegroups/rg/jobs/job2".into();
    new.id = new.id.replace("job1", "job2");
    state.act(answer("v2", None, vec![new.clone()]));
    assert!(phase_of(&state, &new).is_none(), "waits for the old task to stop");
    until(&mut state, &mut events, |s| phase_of(s, &old).is_none()).await;
    let stopped = &fake.started()[0];
    assert_eq!((stopped.exit, stopped.stops.clone()), (Some(Exit::Signal(15)), vec![GRACE]));
    assert!(!state.marker(&key(&old)).exists());

    state.act(answer("v2", None, vec![new.clone()]));
    assert_eq!(phase_of(&state, &new), Some(TaskPhase::Preparing));
    fake.wait_started("next job").await;
    state.shutdown().await;
    assert_eq!(fake.started()[1].stops, vec![GRACE], "shutting down stops the tasks");
}

#[tokio::test]
async fn a_listed_task_with_stop_is_stopped_and_reported_exited() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let (mut state, mut events) = state(dir.path(), &fake);
    let mut t = custom("train forever");
    state.act(answer("v1", None, vec![t.clone()]));
    fake.wait_started("train forever").await;
    t.stop = true;
    state.act(answer("v2", None, vec![t.clone()]));
    until(&mut state, &mut events, |s| phase_of(s, &t) == Some(TaskPhase::Exited)).await;
    let r = &state.request(Duration::ZERO).tasks[0];
    assert_eq!((r.exit_code, r.error.clone()), (None, None));

    // One the agent never ran is reported exited without running it.
    let mut other = custom("never");
    other.epoch = 2;
    other.stop = true;
    state.act(answer("v3", None, vec![other.clone()]));
    assert_eq!(phase_of(&state, &other), Some(TaskPhase::Exited));
    assert_eq!(fake.started().len(), 1);
}

#[tokio::test]
async fn after_a_restart_a_started_host_task_is_reported_failed_and_an_exited_one_resent() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let (running, mut exited, mut gone) = (custom("a"), custom("b"), custom("c"));
    exited.epoch = 2;
    gone.epoch = 3;
    {
        let (before, _events) = state(dir.path(), &fake);
        before.save_marker(&report(&running, TaskPhase::Running, None));
        before.save_marker(&report(&exited, TaskPhase::Exited, Some(7)));
        before.save_marker(&report(&gone, TaskPhase::Running, None));
    }
    let (mut state, mut events) = state(dir.path(), &fake);
    state.act(answer("v1", None, vec![running.clone(), exited.clone()]));
    until(&mut state, &mut events, |s| phase_of(s, &running) == Some(TaskPhase::Exited)).await;
    assert!(fake.started().is_empty(), "nothing is started twice");
    let reports = state.request(Duration::ZERO).tasks;
    let find = |t: &TaskAssignment| reports.iter().find(|r| r.epoch == t.epoch).unwrap().clone();
    let failed = find(&running);
    assert_eq!((failed.phase, failed.exit_code), (TaskPhase::Exited, None));
    let error = failed.error.unwrap();
    assert_eq!(error.code, JOB_FAILED);
    assert!(error.message.starts_with(RESTARTED), "{}", error.message);
    assert_eq!((find(&exited).exit_code, find(&exited).error), (Some(7), None));
    assert!(!state.marker(&key(&gone)).exists(), "a marker the server no longer lists is dropped");
}

fn report(t: &TaskAssignment, phase: TaskPhase, exit_code: Option<i32>) -> TaskReport {
    TaskReport { job: t.job.clone(), epoch: t.epoch, phase, exit_code, error: None }
}

#[tokio::test]
async fn after_a_restart_a_container_task_is_reattached_and_reports_its_exit() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let t = task(json!({"customToolkitSettings": {"commandLine": "train"},
        "containerSettings": {"imageSourceRegistry": {"image": "busybox"}}}));
    // What the killed agent left: its marker and the container it had started.
    {
        let (before, _events) = state(dir.path(), &fake);
        before.save_marker(&report(&t, TaskPhase::Running, None));
    }
    let owner = TaskOwner { node: "node-1".into(), job: t.job.clone(), epoch: t.epoch };
    let container = ContainerSpec {
        image: "busybox".into(),
        registry: None,
        gpus: Vec::new(),
        mounts: Vec::new(),
        shm_size: None,
        owner,
        process: "main".into(),
    };
    let spec = crate::runtime::ProcessSpec {
        name: "job1/main".into(),
        command: "train".into(),
        env: Vec::new(),
        cwd: dir.path().to_owned(),
        stdout: dir.path().join("stdout.txt"),
        stderr: dir.path().join("stderr.txt"),
        container: Some(container),
    };
    let _left = fake.start(spec).await.unwrap();

    let (mut state, mut events) = state(dir.path(), &fake);
    state.act(answer("v1", None, vec![t.clone()]));
    until(&mut state, &mut events, |s| phase_of(s, &t) == Some(TaskPhase::Running)).await;
    assert_eq!(fake.finish("train", Exit::Code(3)), 1);
    until(&mut state, &mut events, |s| phase_of(s, &t) == Some(TaskPhase::Exited)).await;
    assert!(state.settle_until.is_none(), "an exit is reported at once");
    let reported = state.request(Duration::ZERO).tasks;
    assert_eq!((reported[0].exit_code, reported[0].error.clone()), (Some(3), None));
    assert_eq!(fake.started().len(), 1, "nothing is started twice");
}

fn cluster(epoch: i64, setup: serde_json::Value) -> ClusterAssignment {
    let spec: ClusterSpec = serde_json::from_value(json!({
        "vmSize": "STANDARD_NC6",
        "userAccountSettings": {"adminUserName": "u"},
        "nodeSetup": {
            "mountVolumes": {"azureFileShares": [{"accountName": "acct", "credentials": {},
                "azureFileUrl": "https://acct.file.core.windows.net/share", "relativeMountPath": "afs"}]},
            "setupTask": setup,
        }
    }))
    .unwrap();
    ClusterAssignment {
        key: "c".into(),
        id: "/subscriptions/s/clusters/c".into(),
        alloc_epoch: epoch,
        spec,
        file_servers: Vec::new(),
    }
}

#[tokio::test]
async fn setup_mounts_runs_the_setup_task_once_per_allocation_and_unmounts_without_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    fake.script("setup", Script::Exit(Exit::Code(0)));
    let (mut state, mut events) = state(dir.path(), &fake);
    let setup = json!({"commandLine": "install things", "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
        "stdOutErrPathSuffix": "s/rg/workspaces/w/clusters/c/uuid",
        "environmentVariables": [{"name": "A", "value": "$AZ_BATCHAI_MOUNT_ROOT/x"}],
        "secrets": [{"name": "S", "value": "hush"}]});
    state.act(answer("v1", Some(cluster(4, setup.clone())), vec![]));
    assert_eq!(state.request(Duration::ZERO).setup, None, "no report while preparing");
    let report = events.setup.recv().await.unwrap();
    assert!(state.on_setup_report(report));
    assert_eq!(state.request(Duration::ZERO).setup, Some(SetupReport { alloc_epoch: 4, error: None }));

    let mount_root = state.node.mount_root();
    let share = state.node.storage_root.join("acct/share");
    assert_eq!(std::fs::read_link(mount_root.join("afs")).unwrap(), share);
    let started = fake.started();
    assert_eq!(started[0].spec.stdout, mount_root.join("afs/s/rg/workspaces/w/clusters/c/uuid/stdout-node-1.txt"));
    let env = &started[0].spec.env;
    assert!(env.contains(&("A".into(), format!("{}/x", mount_root.display()))));
    assert!(env.contains(&("S".into(), "hush".into())));
    assert!(share.join("s/rg/workspaces/w/clusters/c/uuid").is_dir());

    // The same allocation again, even after a restart: nothing re-runs.
    state.act(answer("v2", Some(cluster(4, setup.clone())), vec![]));
    let (mut restarted, _events) = self::state(dir.path(), &fake);
    restarted.act(answer("v2", Some(cluster(4, setup.clone())), vec![]));
    assert_eq!(fake.started().len(), 1);
    assert!(restarted.request(Duration::ZERO).setup.is_some());

    state.act(answer("v3", None, vec![]));
    assert!(!mount_root.join("afs").exists() && state.request(Duration::ZERO).setup.is_none());
    assert!(share.is_dir(), "the share's data stays");
}

#[tokio::test]
async fn a_failing_setup_task_makes_the_node_report_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    fake.script("setup", Script::Exit(Exit::Code(4)));
    let (mut state, mut events) = state(dir.path(), &fake);
    let setup = json!({"commandLine": "false", "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs"});
    state.act(answer("v1", Some(cluster(1, setup)), vec![]));
    let report = events.setup.recv().await.unwrap();
    state.on_setup_report(report);
    let error = state.request(Duration::ZERO).setup.unwrap().error.unwrap();
    assert!(
        error.starts_with("setup task exited with code 4 (see ") && error.ends_with("stderr-node-1.txt)"),
        "{error}"
    );
}

#[tokio::test]
async fn a_new_allocation_during_setup_sets_up_again_after_stopping_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let (mut state, mut events) = state(dir.path(), &fake);
    let setup = json!({"commandLine": "slow", "stdOutErrPathPrefix": dir.path().join("logs")});
    state.act(answer("v1", Some(cluster(1, setup.clone())), vec![]));
    fake.wait_started("slow").await;
    state.act(answer("v2", Some(cluster(2, setup)), vec![]));
    let stale = events.setup.recv().await.unwrap();
    assert_eq!(stale.alloc_epoch, 1);
    assert!(!state.on_setup_report(stale), "a stopped setup's outcome is not reported");
    fake.wait_until(|started| started.len() == 2).await;
    fake.finish("slow", Exit::Code(0));
    let fresh = events.setup.recv().await.unwrap();
    assert!(state.on_setup_report(fresh));
    assert_eq!(state.request(Duration::ZERO).setup, Some(SetupReport { alloc_epoch: 2, error: None }));
}
