//! The executor against [`FakeRuntime`]: each test awaits reports and starts, never sleeps.

use std::sync::Arc;

use batchai_core::models::JobSpec;
use batchai_core::protocol::Peer;
use serde_json::json;
use tokio::task::JoinHandle;

use super::*;
use crate::runtime::{FakeRuntime, Script, StartedProcess};

pub(crate) const GRACE: Duration = Duration::from_millis(1500);

pub(crate) fn node(dir: &Path) -> NodeContext {
    NodeContext {
        node_id: "node-1".into(),
        data_dir: dir.join("data"),
        storage_root: dir.join("storage"),
        gpus: Vec::new(),
        stop_grace: GRACE,
        image_map: ImageMap::default(),
        staging: None,
        metrics: Default::default(),
    }
}

pub(crate) fn task(extra: serde_json::Value) -> TaskAssignment {
    let mut spec = json!({"cluster": {"id": "c"}, "nodeCount": 1, "stdOutErrPathPrefix": "$AZ_BATCHAI_JOB_TEMP"});
    if let (Some(base), Some(more)) = (spec.as_object_mut(), extra.as_object()) {
        base.extend(more.clone());
    }
    let spec: JobSpec = serde_json::from_value(spec).unwrap();
    TaskAssignment {
        job: "/subscriptions/s/resourcegroups/rg/jobs/job1".into(),
        epoch: 1,
        rank: 0,
        id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.BatchAI/workspaces/w/experiments/e/jobs/job1"
            .into(),
        uid: "uid1".into(),
        output_segment: "s/rg/workspaces/w/experiments/e/jobs/job1/uid1".into(),
        nodes: (0..spec.node_count)
            .map(|i| Peer { id: format!("n{i}"), address: format!("10.0.0.{}", 4 + i), gpus: 0 })
            .collect(),
        spec,
        max_wall_clock_secs: 3600,
        started_at: now_millis(),
        stop: false,
        file_servers: Vec::new(),
    }
}

struct Run {
    reports: mpsc::UnboundedReceiver<TaskReport>,
    stop: watch::Sender<bool>,
    done: JoinHandle<TaskReport>,
}

impl Run {
    fn spawn(fake: &FakeRuntime, node: &NodeContext, task: TaskAssignment) -> Self {
        let (tx, reports) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let (node, runtime): (NodeContext, Arc<dyn Runtime>) = (node.clone(), Arc::new(fake.clone()));
        let done =
            tokio::spawn(async move { execute(&node, runtime.as_ref(), &task, Launch::default(), stop_rx, tx).await });
        Run { reports, stop, done }
    }

    /// Every report up to and including `Exited`; also checks it matches the returned one.
    async fn finish(mut self) -> Vec<TaskReport> {
        let mut all = Vec::new();
        while let Some(r) = self.reports.recv().await {
            let exited = r.phase == TaskPhase::Exited;
            all.push(r);
            if exited {
                break;
            }
        }
        assert_eq!(Some(&self.done.await.unwrap()), all.last());
        all
    }
}

fn phases(reports: &[TaskReport]) -> Vec<TaskPhase> {
    reports.iter().map(|r| r.phase).collect()
}

fn last(reports: &[TaskReport]) -> (Option<i32>, Option<TaskError>) {
    let r = reports.last().unwrap();
    (r.exit_code, r.error.clone())
}

fn named<'a>(started: &'a [StartedProcess], name: &str) -> &'a StartedProcess {
    started.iter().find(|p| p.spec.name.ends_with(&format!("/{name}"))).unwrap_or_else(|| panic!("{name} not started"))
}

fn error(code: &str, message: &str) -> Option<TaskError> {
    Some(TaskError { code: code.into(), message: message.into() })
}

#[tokio::test]
async fn parameter_server_is_stopped_once_the_worker_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    std::fs::create_dir_all(node.job_temp_root().join("old-job")).unwrap();
    let fake = FakeRuntime::new();
    fake.script("wk-0", Script::Exit(Exit::Code(0)));
    let t = task(
        json!({"tensorFlowSettings": {"pythonScriptFilePath": "m.py", "workerCount": 1, "parameterServerCount": 1}}),
    );
    let reports = Run::spawn(&fake, &node, t).finish().await;
    assert_eq!(phases(&reports), [TaskPhase::Preparing, TaskPhase::Running, TaskPhase::Exited]);
    assert_eq!(last(&reports), (Some(0), None));

    let started = fake.started();
    let (ps, wk) = (named(&started, "ps-0"), named(&started, "wk-0"));
    assert_eq!(ps.stops.first(), Some(&GRACE));
    assert_eq!(ps.exit, Some(Exit::Signal(15)));
    assert_eq!(wk.exit, Some(Exit::Code(0)));
    let job_temp = node.job_temp_root().join("job1");
    assert_eq!(wk.spec.cwd, job_temp);
    assert_eq!(
        wk.spec.stdout,
        job_temp.join("s/rg/workspaces/w/experiments/e/jobs/job1/uid1/stdouterr/stdout-wk-0.txt")
    );
    assert!(wk.spec.env.iter().any(|(k, v)| k == "AZ_BATCHAI_NUM_GPUS" && v == "0"));
    assert!(wk.spec.env.iter().any(|(k, _)| k == "TF_CONFIG"));
    assert!(!node.job_temp_root().join("old-job").exists(), "other jobs' temp dirs are wiped");
    assert_eq!(std::fs::read_to_string(job_temp.join("hostfile")).unwrap(), "10.0.0.4 slots=1\n");
    let log = std::fs::read_to_string(wk.spec.stdout.with_file_name("execution.log")).unwrap();
    assert!(log.contains("starting process wk-0") && log.contains("finished with exit code 0"), "{log}");
}

#[tokio::test]
async fn a_failing_process_stops_the_others_and_reports_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    fake.script("wk-1", Script::Exit(Exit::Code(3)));
    let t = task(json!({"tensorFlowSettings": {"pythonScriptFilePath": "m.py", "workerCount": 2}}));
    let reports = Run::spawn(&fake, &node(dir.path()), t).finish().await;
    assert_eq!(last(&reports), (Some(3), None));
    let started = fake.started();
    for name in ["ps-0", "wk-0"] {
        let p = named(&started, name);
        assert_eq!((p.exit, p.stops.len()), (Some(Exit::Signal(15)), 1), "{name}");
    }
}

#[tokio::test]
async fn a_process_killed_by_a_signal_fails_the_task_without_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    fake.script("main", Script::Exit(Exit::Signal(9)));
    let t = task(json!({"customToolkitSettings": {"commandLine": "train"}}));
    let reports = Run::spawn(&fake, &node(dir.path()), t).finish().await;
    assert_eq!(last(&reports), (None, error(JOB_FAILED, "process main was killed by signal 9")));
}

#[tokio::test]
async fn job_preparation_failure_ends_the_task_before_the_toolkit_runs() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    fake.script("job_prep", Script::Exit(Exit::Code(2)));
    let t = task(json!({"customToolkitSettings": {"commandLine": "train"}, "jobPreparation": {"commandLine": "prep"}}));
    let reports = Run::spawn(&fake, &node(dir.path()), t).finish().await;
    assert_eq!(phases(&reports), [TaskPhase::Preparing, TaskPhase::Exited]);
    assert_eq!(last(&reports), (Some(2), error(JOB_PREPARATION_FAILED, JOB_PREPARATION_MESSAGE)));
    let started = fake.started();
    assert_eq!(started.len(), 1);
    assert!(started[0].spec.stdout.ends_with("stdout-job_prep.txt"));
}

#[tokio::test]
async fn other_ranks_run_job_preparation_with_their_own_logs_and_may_host_only() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let fake = FakeRuntime::new();
    fake.script("job_prep", Script::Exit(Exit::Code(0)));
    let mut t = task(json!({"nodeCount": 2, "customToolkitSettings": {"commandLine": "train"},
        "jobPreparation": {"commandLine": "prep"}}));
    t.rank = 1;
    let reports = Run::spawn(&fake, &node, t).finish().await;
    assert_eq!(phases(&reports), [TaskPhase::Preparing, TaskPhase::Exited]);
    assert_eq!(last(&reports), (Some(0), None));
    let started = fake.started();
    assert_eq!(started.len(), 1, "the custom command runs on the master only");
    assert!(started[0].spec.stdout.ends_with("stdout-job_prep-1.txt"));
    assert!(started[0].spec.stderr.ends_with("stderr-job_prep-1.txt"));
    assert!(started[0].spec.stdout.with_file_name("execution-1.log").exists());
}

#[tokio::test]
async fn a_preparation_error_is_reported_as_job_preparation_failed() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "a file, not a directory").unwrap();
    let fake = FakeRuntime::new();
    let t = task(json!({"customToolkitSettings": {"commandLine": "train"}, "stdOutErrPathPrefix": blocker}));
    let reports = Run::spawn(&fake, &node(dir.path()), t).finish().await;
    let (code, err) = last(&reports);
    assert_eq!((code, err.as_ref().map(|e| e.code.as_str())), (None, Some(JOB_PREPARATION_FAILED)));
    assert!(fake.started().is_empty());
}

#[tokio::test]
async fn a_stop_request_stops_the_processes_and_reports_exited() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let t = task(json!({"customToolkitSettings": {"commandLine": "train forever"}}));
    let run = Run::spawn(&fake, &node(dir.path()), t);
    fake.wait_started("main").await;
    run.stop.send(true).unwrap();
    let reports = run.finish().await;
    assert_eq!(phases(&reports), [TaskPhase::Preparing, TaskPhase::Running, TaskPhase::Exited]);
    assert_eq!(last(&reports), (None, None));
    let main = &fake.started()[0];
    assert_eq!((main.exit, main.stops.clone()), (Some(Exit::Signal(15)), vec![GRACE]));
}

#[tokio::test]
async fn a_job_past_its_wall_clock_is_stopped_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let mut t = task(json!({"customToolkitSettings": {"commandLine": "train"}}));
    t.started_at = now_millis() - 2 * 3_600_000;
    let reports = Run::spawn(&fake, &node(dir.path()), t).finish().await;
    let message = "The job exceeded its maxWallClockTime (3600 s) and was stopped";
    assert_eq!(last(&reports), (None, error(WALL_CLOCK_EXCEEDED, message)));
    assert!(fake.started().is_empty());
}

#[tokio::test]
async fn reaching_the_wall_clock_while_running_stops_everything() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let mut t = task(json!({"customToolkitSettings": {"commandLine": "train forever"}}));
    t.max_wall_clock_secs = 2;
    let reports = Run::spawn(&fake, &node(dir.path()), t).finish().await;
    let (code, err) = last(&reports);
    assert_eq!((code, err.map(|e| e.code)), (None, Some(WALL_CLOCK_EXCEEDED.to_owned())));
    // Whatever had started by then was stopped.
    assert!(fake.started().iter().all(|p| p.exit.is_some() && !p.stops.is_empty()));
}

#[tokio::test]
async fn a_container_job_asks_the_runtime_for_its_container() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let fake = FakeRuntime::new();
    fake.script("main", Script::Exit(Exit::Code(0)));
    let t = task(json!({"customToolkitSettings": {"commandLine": "train"},
        "containerSettings": {"imageSourceRegistry": {"image": "tensorflow/tensorflow:1.8.0-gpu"}, "shmSize": "8g"}}));
    let reports = Run::spawn(&fake, &node, t).finish().await;
    assert_eq!(last(&reports), (Some(0), None));
    let container = fake.started()[0].spec.container.clone().unwrap();
    assert_eq!(container.image, "tensorflow/tensorflow:1.8.0-gpu");
    assert_eq!(container.shm_size.as_deref(), Some("8g"));
    assert!(container.mounts.contains(&(node.storage_root.clone(), node.storage_root.clone())));
}

#[tokio::test]
async fn the_image_map_redirects_the_container_or_sends_the_whole_job_to_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let gpu = Gpu { index: 0, uuid: "GPU-a".into(), model: "m".into(), memory_mb: 0 };
    let map = ImageMap(vec![
        ("microsoft/cntk:*".into(), crate::images::HOST.into()),
        ("tensorflow/*".into(), "mirror.local/tensorflow/*".into()),
    ]);
    let node = NodeContext { gpus: vec![gpu], image_map: map, ..node(dir.path()) };
    let job = |image: &str| {
        task(json!({"customToolkitSettings": {"commandLine": "train"}, "jobPreparation": {"commandLine": "prep"},
            "containerSettings": {"imageSourceRegistry": {"image": image}}}))
    };

    let finishing = || {
        let fake = FakeRuntime::new();
        fake.script("prep", Script::Exit(Exit::Code(0))).script("train", Script::Exit(Exit::Code(0)));
        fake
    };
    let fake = finishing();
    let reports = Run::spawn(&fake, &node, job("tensorflow/tensorflow:1.8.0-gpu")).finish().await;
    assert_eq!(last(&reports), (Some(0), None));
    let images: Vec<_> = fake.started().iter().map(|p| p.spec.container.clone().map(|c| c.image)).collect();
    assert_eq!(images, vec![Some("mirror.local/tensorflow/tensorflow:1.8.0-gpu".to_owned()); 2], "prep and main");
    assert!(fake.started().iter().all(|p| p.spec.env.iter().all(|(k, _)| k != "CUDA_VISIBLE_DEVICES")));

    let fake = finishing();
    let reports = Run::spawn(&fake, &node, job("microsoft/cntk:2.0-cpu-python3.5")).finish().await;
    assert_eq!(last(&reports), (Some(0), None));
    let started = fake.started();
    assert_eq!(started.len(), 2);
    for p in &started {
        assert_eq!(p.spec.container, None, "{} runs on the host", p.spec.name);
        assert!(p.spec.env.iter().any(|(k, _)| k == "CUDA_VISIBLE_DEVICES"), "host processes are told their GPUs");
    }
    // After an agent restart it is lost like any host job: nothing to reattach to.
    let (tx, _reports) = mpsc::unbounded_channel();
    let (_stop, stop_rx) = watch::channel(false);
    let launch = Launch { gpus: Vec::new(), resume: true };
    let end = execute(&node, &fake, &job("microsoft/cntk:2.0-cpu-python3.5"), launch, stop_rx, tx).await;
    assert_eq!(end.error.map(|e| e.code), Some(JOB_FAILED.to_owned()));
    assert_eq!(fake.started().len(), 2, "nothing started again");
}

#[test]
fn job_name_is_the_last_id_segment() {
    assert_eq!(job_name("/a/jobs/job1"), "job1");
    assert_eq!(job_name("/a/jobs/job1/"), "job1");
    assert_eq!(job_name("job1"), "job1");
}
