//! The Docker runtime against the machine's real engine, through the executor as the agent
//! drives it: env, mounts, exit codes, stop and kill, logs while running, a missing image, the
//! image map (to another image or to the host), labels, and finding containers again after the
//! agent is gone.
//!
//! Needs a Docker engine and `batchai/busybox:latest` (`scripts/build-images.sh`). Without an
//! engine the tests say so and pass, except under `CI`, where they fail.

use std::path::{Path, PathBuf};
use std::time::Duration;

use batchai_agent::executor::{IMAGE_PULL_FAILED, Launch, NodeContext, execute};
use batchai_agent::images::{HOST, ImageMap};
use batchai_agent::runtime::{DockerConfig, DockerRuntime, Exit, ProcessSpec, Runtime, TaskOwner};
use batchai_core::models::JobSpec;
use batchai_core::protocol::{Gpu, Peer, TaskAssignment, TaskPhase, TaskReport};
use batchai_core::time::now_millis;
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptionsBuilder};
use serde_json::json;
use tokio::sync::{mpsc, watch};

/// Only a guard against hangs.
const GUARD: Duration = Duration::from_secs(120);
const IMAGE: &str = "batchai/busybox:latest";
const SEGMENT: &str = "sub/rg/workspaces/w/experiments/e/jobs/job1/uid1";

async fn docker(cfg: DockerConfig) -> Option<DockerRuntime> {
    match DockerRuntime::connect(cfg).await {
        Ok(runtime) => {
            let image = runtime.client().inspect_image(IMAGE).await;
            assert!(image.is_ok(), "{IMAGE} is missing: run scripts/build-images.sh");
            Some(runtime)
        }
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: no Docker engine ({e})");
            None
        }
        Err(e) => panic!("CI needs a Docker engine: {e}"),
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn node(dir: &Path, id: &str) -> NodeContext {
    NodeContext {
        node_id: id.into(),
        data_dir: dir.join("data"),
        storage_root: dir.join("storage"),
        gpus: Vec::new(),
        stop_grace: Duration::from_secs(1),
        image_map: ImageMap::default(),
        staging: None,
        metrics: Default::default(),
    }
}

fn task(extra: serde_json::Value) -> TaskAssignment {
    let mut spec = json!({
        "cluster": {"id": "c"},
        "nodeCount": 1,
        "stdOutErrPathPrefix": "$AZ_BATCHAI_JOB_TEMP",
        "containerSettings": {"imageSourceRegistry": {"image": IMAGE}},
    });
    if let (Some(base), Some(more)) = (spec.as_object_mut(), extra.as_object()) {
        base.extend(more.clone());
    }
    let spec: JobSpec = serde_json::from_value(spec).unwrap();
    TaskAssignment {
        job: format!("/subscriptions/sub/resourcegroups/rg/jobs/job-{}", now_millis()),
        epoch: 1,
        rank: 0,
        id: "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.BatchAI/workspaces/w/experiments/e/jobs/job1"
            .into(),
        uid: "uid1".into(),
        output_segment: SEGMENT.into(),
        spec,
        nodes: vec![Peer { id: "node-1".into(), address: "127.0.0.1".into(), gpus: 0 }],
        max_wall_clock_secs: 3600,
        started_at: now_millis(),
        stop: false,
        file_servers: Vec::new(),
    }
}

/// A task's run: its stop switch and its end.
struct Run {
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<TaskReport>,
    reports: mpsc::UnboundedReceiver<TaskReport>,
}

fn spawn(runtime: &DockerRuntime, node: &NodeContext, task: &TaskAssignment, launch: Launch) -> Run {
    let (tx, reports) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let (runtime, node, task) = (runtime.clone(), node.clone(), task.clone());
    let done = tokio::spawn(async move { execute(&node, &runtime, &task, launch, stop_rx, tx).await });
    Run { stop, done, reports }
}

impl Run {
    async fn end(self) -> TaskReport {
        tokio::time::timeout(GUARD, self.done).await.expect("the task hangs").unwrap()
    }

    async fn running(&mut self) {
        while let Some(r) = self.reports.recv().await {
            if r.phase == TaskPhase::Running {
                return;
            }
        }
        panic!("the task never ran");
    }
}

/// [`spawn`], then waits until the task runs and its `stdout.txt` holds `text`.
async fn spawn_until(runtime: &DockerRuntime, node: &NodeContext, task: &TaskAssignment, text: &str) -> Run {
    let mut run = spawn(runtime, node, task, Launch::default());
    run.running().await;
    file_holds(&stdouterr(node, task).join("stdout.txt"), text).await;
    run
}

fn stdouterr(node: &NodeContext, task: &TaskAssignment) -> PathBuf {
    let name = task.id.rsplit('/').next().unwrap();
    node.job_temp_root().join(name).join(SEGMENT).join("stdouterr")
}

/// Polls `path` until it holds `text`: a file written by another process gives no event to
/// await. Bounded by [`GUARD`].
async fn file_holds(path: &Path, text: &str) {
    let check = async {
        while !std::fs::read_to_string(path).is_ok_and(|s| s.contains(text)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(GUARD, check).await.unwrap_or_else(|_| panic!("{} never held {text:?}", path.display()));
}

fn owner(node: &NodeContext, task: &TaskAssignment) -> TaskOwner {
    TaskOwner { node: node.node_id.clone(), job: task.job.clone(), epoch: task.epoch }
}

/// The ids of `node`'s containers of `task` (every state).
async fn containers(runtime: &DockerRuntime, owner: &TaskOwner) -> Vec<String> {
    let filters = std::collections::HashMap::from([(
        "label".to_owned(),
        vec![format!("io.batchai.node={}", owner.node), format!("io.batchai.job={}", owner.job)],
    )]);
    let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    let found = runtime.client().list_containers(Some(options)).await.unwrap();
    found.into_iter().filter_map(|c| c.id).collect()
}

#[tokio::test]
async fn a_container_job_sees_its_env_and_mounts_and_reports_its_exit_code() {
    let Some(runtime) = docker(DockerConfig::default()).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), "node-env");
    let t = task(json!({
        "outputDirectories": [{"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_JOB_TEMP"}],
        "environmentVariables": [{"name": "GREETING", "value": "hello"}],
        "secrets": [{"name": "SECRET", "value": "hunter2"}],
        "jobPreparation": {"commandLine":
            "[ \"$(readlink /bin/ls)\" = /bin/busybox ] && echo prepared in a container > $AZ_BATCHAI_OUTPUT_MODEL/prep"},
        "customToolkitSettings": {"commandLine":
            "echo $GREETING $SECRET $AZ_BATCHAI_NUM_GPUS; pwd; echo to-stderr >&2; echo model > $AZ_BATCHAI_OUTPUT_MODEL/m; exit 3"},
    }));
    let end = spawn(&runtime, &node, &t, Launch::default()).end().await;
    assert_eq!((end.exit_code, end.error), (Some(3), None));

    let out = stdouterr(&node, &t);
    let job_temp = node.job_temp_root().join("job1");
    assert_eq!(read(&out.join("stdout.txt")), format!("hello hunter2 0\n{}\n", job_temp.display()));
    assert_eq!(read(&out.join("stderr.txt")), "to-stderr\n");
    let outputs = node.job_temp_root().join("job1").join(SEGMENT).join("outputs");
    assert_eq!(read(&outputs.join("prep")), "prepared in a container\n", "job preparation runs in the container");
    assert_eq!(read(&outputs.join("m")), "model\n", "outputs land on the node's disk");
    let log = read(&out.join("execution.log"));
    assert!(log.contains(&format!("using image {IMAGE}, present on the node")), "{log}");
    assert!(log.contains("finished with exit code 3") && !log.contains("hunter2"), "{log}");

    // Labelled with their owner, kept until the agent forgets the task, then removed.
    let owner = owner(&node, &t);
    let ids = containers(&runtime, &owner).await;
    assert_eq!(ids.len(), 2, "job preparation and the command line");
    let inspected = runtime.client().inspect_container(&ids[0], None::<InspectContainerOptions>).await.unwrap();
    let labels = inspected.config.unwrap().labels.unwrap();
    assert_eq!(labels["io.batchai.node"], "node-env");
    assert_eq!(labels["io.batchai.job"], t.job);
    assert_eq!(labels["io.batchai.epoch"], "1");
    runtime.forget(&owner).await.unwrap();
    assert!(containers(&runtime, &owner).await.is_empty());
}

#[tokio::test]
async fn logs_are_written_while_the_job_runs_and_a_stop_ends_it_gracefully() {
    let Some(runtime) = docker(DockerConfig::default()).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut node = node(dir.path(), "node-stop");
    // The trap runs within a tenth of a second; a grace the job could overrun on a loaded
    // machine would end it with SIGKILL before it wrote its last line.
    node.stop_grace = Duration::from_secs(60);
    let t = task(json!({"customToolkitSettings": {"commandLine":
        "trap 'echo got TERM; exit 0' TERM; echo started; while true; do sleep 0.1; done"}}));
    let run = spawn_until(&runtime, &node, &t, "started\n").await;
    run.stop.send(true).unwrap();
    let end = run.end().await;
    assert_eq!((end.exit_code, end.error), (None, None), "a stopped task reports neither");
    assert_eq!(read(&stdouterr(&node, &t).join("stdout.txt")), "started\ngot TERM\n");
    runtime.forget(&owner(&node, &t)).await.unwrap();
}

#[tokio::test]
async fn a_job_that_ignores_the_stop_signal_is_killed_after_the_grace() {
    let Some(runtime) = docker(DockerConfig::default()).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), "node-kill");
    let mut t = task(json!({"customToolkitSettings": {"commandLine": "trap '' TERM; echo started; sleep 600"}}));
    t.max_wall_clock_secs = 600;
    let run = spawn_until(&runtime, &node, &t, "started\n").await;
    // Started by hand to see the exit of the kill.
    let owner = owner(&node, &t);
    let mut adopted = runtime.adopt(&owner).await.unwrap();
    assert_eq!(adopted.len(), 1);
    let exit = tokio::time::timeout(GUARD, adopted[0].1.stop(Duration::from_secs(1))).await.unwrap().unwrap();
    assert_eq!(exit, Exit::Code(137), "SIGKILLed after the grace");
    let end = run.end().await;
    assert_eq!(end.exit_code, Some(137));
    runtime.forget(&owner).await.unwrap();
}

#[tokio::test]
async fn a_missing_image_fails_the_job_naming_the_image() {
    let Some(runtime) = docker(DockerConfig::default()).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), "node-pull");
    // A registry on a port nothing listens on: the pull fails at once, without the internet.
    let t = task(json!({
        "containerSettings": {"imageSourceRegistry": {"image": "127.0.0.1:9/team/absent:1", "serverUrl": "127.0.0.1:9",
            "credentials": {"username": "u", "password": "registry-password"}}},
        "customToolkitSettings": {"commandLine": "true"}}));
    let end = spawn(&runtime, &node, &t, Launch::default()).end().await;
    let error = end.error.expect("the job fails");
    assert_eq!(error.code, IMAGE_PULL_FAILED);
    assert!(error.message.contains("127.0.0.1:9/team/absent:1"), "{}", error.message);
    let log = read(&stdouterr(&node, &t).join("execution.log"));
    assert!(log.contains("pulling image 127.0.0.1:9/team/absent:1 from 127.0.0.1:9"), "{log}");
    assert!(!log.contains("registry-password"), "{log}");
    assert!(containers(&runtime, &owner(&node, &t)).await.is_empty(), "nothing started");
}

#[tokio::test]
async fn the_image_map_redirects_an_old_public_image_to_a_local_one() {
    let cntk = "microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0";
    let Some(runtime) = docker(DockerConfig::default()).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let node =
        NodeContext { image_map: ImageMap(vec![(cntk.to_owned(), IMAGE.to_owned())]), ..node(dir.path(), "node-map") };
    let t = task(json!({
        "containerSettings": {"imageSourceRegistry": {"image": cntk}, "shmSize": "64m"},
        "customToolkitSettings": {"commandLine": "df -k /dev/shm | tail -1"}}));
    let end = spawn(&runtime, &node, &t, Launch::default()).end().await;
    assert_eq!((end.exit_code, end.error), (Some(0), None));
    let log = read(&stdouterr(&node, &t).join("execution.log"));
    assert!(log.contains(&format!("image {cntk} is mapped to {IMAGE} on this node")), "{log}");
    let df = read(&stdouterr(&node, &t).join("stdout.txt"));
    assert!(df.split_whitespace().nth(1) == Some("65536"), "shmSize sets /dev/shm: {df}");
    runtime.forget(&owner(&node, &t)).await.unwrap();
}

#[tokio::test]
async fn an_image_mapped_to_host_runs_without_a_container() {
    let Some(runtime) = docker(DockerConfig::default()).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let cntk = "microsoft/cntk:2.0-cpu-python3.5";
    let node = NodeContext {
        image_map: ImageMap(vec![("microsoft/cntk:*".into(), HOST.into())]),
        staging: None,
        metrics: Default::default(),
        ..node(dir.path(), "node-host")
    };
    let t = task(json!({
        "containerSettings": {"imageSourceRegistry": {"image": cntk}},
        "customToolkitSettings": {"commandLine": "echo pid $$"}}));
    let end = spawn(&runtime, &node, &t, Launch::default()).end().await;
    assert_eq!((end.exit_code, end.error), (Some(0), None));
    let log = read(&stdouterr(&node, &t).join("execution.log"));
    assert!(log.contains(&format!("image {cntk} runs on the host on this node (image map)")), "{log}");
    assert!(!log.contains("pulling"), "{log}");
    assert!(containers(&runtime, &owner(&node, &t)).await.is_empty(), "no container");
}

#[tokio::test]
async fn a_new_runtime_finds_containers_by_label_and_sweeps_those_of_other_tasks() {
    let Some(runtime) = docker(DockerConfig::default()).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), "node-adopt");
    let t = task(
        json!({"customToolkitSettings": {"commandLine": "mkfifo $AZ_BATCHAI_JOB_TEMP/go; echo one; read line < $AZ_BATCHAI_JOB_TEMP/go; exit 5"}}),
    );
    // The first "agent" starts the task and is then gone: its executor is aborted, as a kill -9
    // would leave it, with the container running.
    let fifo = node.job_temp_root().join("job1").join("go");
    let first = spawn_until(&runtime, &node, &t, "one\n").await;
    first.done.abort();

    let again = docker(DockerConfig::default()).await.unwrap();
    let resumed = spawn(&again, &node, &t, Launch { gpus: Vec::<Gpu>::new(), resume: true });
    let log = stdouterr(&node, &t).join("execution.log");
    file_holds(&log, "reattached to [main]").await;
    // Opening the FIFO waits for the job's reader; the job then exits by itself.
    tokio::task::spawn_blocking(move || std::fs::write(&fifo, "go\n")).await.unwrap().unwrap();
    let end = resumed.end().await;
    assert_eq!((end.exit_code, end.error), (Some(5), None));
    assert_eq!(read(&stdouterr(&node, &t).join("stdout.txt")), "one\n", "nothing ran twice");

    // Another task's leftover is swept; the kept task's containers stay.
    let other = task(json!({"customToolkitSettings": {"commandLine": "sleep 600"}}));
    let mut run = spawn(&again, &node, &other, Launch::default());
    run.running().await;
    run.done.abort();
    again.sweep(&node.node_id, &[(t.job.clone(), t.epoch)], Duration::from_secs(1)).await.unwrap();
    assert!(containers(&again, &owner(&node, &other)).await.is_empty());
    assert_eq!(containers(&again, &owner(&node, &t)).await.len(), 1);
    again.forget(&owner(&node, &t)).await.unwrap();
}

#[tokio::test]
async fn host_processes_still_run_on_the_host() {
    let Some(runtime) = docker(DockerConfig::default()).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = ProcessSpec {
        name: "setup".into(),
        command: "echo on the host".into(),
        env: Vec::new(),
        cwd: dir.path().to_owned(),
        stdout: dir.path().join("out.txt"),
        stderr: dir.path().join("err.txt"),
        container: None,
    };
    let mut running = runtime.start(spec).await.unwrap();
    assert!(running.id().parse::<u32>().is_ok(), "a pid, not a container id: {}", running.id());
    assert_eq!(tokio::time::timeout(GUARD, running.wait()).await.unwrap().unwrap(), Exit::Code(0));
    assert_eq!(read(&dir.path().join("out.txt")), "on the host\n");
}
