//! Node setup and the executor with real `bash` processes, a temp dir standing in for the
//! agent's data directory and for the storage root.

use std::path::Path;
use std::time::Duration;

use batchai_agent::executor::{JOB_PREPARATION_FAILED, Launch, NodeContext, execute};
use batchai_agent::images::{HOST, ImageMap};
use batchai_agent::runtime::ProcessRuntime;
use batchai_agent::setup::{SetupContext, prepare};
use batchai_core::models::{ClusterSpec, JobSpec};
use batchai_core::protocol::{ClusterAssignment, Peer, TaskAssignment, TaskPhase};
use batchai_core::time::now_millis;
use serde_json::json;
use tokio::sync::{mpsc, watch};

/// Only a guard against hangs.
const GUARD: Duration = Duration::from_secs(60);
const SEGMENT: &str = "sub/rg/workspaces/w/experiments/e/jobs/job1/uid1";

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A single-node assignment of `spec` on node `node`.
fn task(spec: JobSpec, job: &str, epoch: i64, uid: &str, segment: &str, id: &str, node: &str) -> TaskAssignment {
    TaskAssignment {
        job: job.into(),
        epoch,
        rank: 0,
        id: id.into(),
        uid: uid.into(),
        output_segment: segment.into(),
        spec,
        nodes: vec![Peer { id: node.into(), address: "127.0.0.1".into(), gpus: 0 }],
        max_wall_clock_secs: 3600,
        started_at: now_millis(),
        stop: false,
        file_servers: Vec::new(),
    }
}

fn node(id: &str, data_dir: std::path::PathBuf, storage_root: std::path::PathBuf, image_map: ImageMap) -> NodeContext {
    NodeContext {
        node_id: id.into(),
        data_dir,
        storage_root,
        gpus: Vec::new(),
        stop_grace: Duration::from_secs(5),
        image_map,
        staging: None,
        metrics: Default::default(),
    }
}

fn share() -> serde_json::Value {
    json!({"azureFileShares": [{"accountName": "acct", "credentials": {},
        "azureFileUrl": "https://acct.file.core.windows.net/share", "relativeMountPath": "afs"}]})
}

#[tokio::test]
async fn a_custom_job_writes_its_output_onto_the_mounted_share() {
    let dir = tempfile::tempdir().unwrap();
    let (data, storage) = (dir.path().join("data"), dir.path().join("storage"));
    let runtime = ProcessRuntime::new();

    let cluster: ClusterSpec = serde_json::from_value(json!({
        "vmSize": "STANDARD_NC6",
        "userAccountSettings": {"adminUserName": "u"},
        "nodeSetup": {"mountVolumes": share(), "setupTask": {
            "commandLine": "echo set up in $AZ_BATCHAI_MOUNT_ROOT with $GREETING",
            "environmentVariables": [{"name": "GREETING", "value": "hi"}],
            "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
            "stdOutErrPathSuffix": "sub/rg/workspaces/w/clusters/c/cuid"}}
    }))
    .unwrap();
    let assignment =
        ClusterAssignment { key: "c".into(), id: "c".into(), alloc_epoch: 1, spec: cluster, file_servers: Vec::new() };
    let setup = SetupContext {
        node_id: "node-1".into(),
        mount_root: data.join("mounts"),
        storage_root: storage.clone(),
        work_dir: data.join("setup"),
        stop_grace: Duration::from_secs(5),
    };
    let (_keep, stop) = watch::channel(false);
    let report = tokio::time::timeout(GUARD, prepare(&setup, &runtime, &assignment, stop)).await.unwrap();
    assert_eq!((report.alloc_epoch, report.error), (1, None));
    let setup_log = storage.join("acct/share/sub/rg/workspaces/w/clusters/c/cuid/stdout-node-1.txt");
    assert_eq!(read(&setup_log), format!("set up in {} with hi\n", data.join("mounts").display()));

    let spec: JobSpec = serde_json::from_value(json!({
        "cluster": {"id": "c"},
        "nodeCount": 1,
        "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
        "outputDirectories": [{"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs"}],
        "jobPreparation": {"commandLine": "echo prepared > $AZ_BATCHAI_OUTPUT_MODEL/x"},
        "customToolkitSettings": {"commandLine": "echo hello $AZ_BATCHAI_NUM_GPUS; echo oops >&2; exit 0"},
        "secrets": [{"name": "SECRET", "value": "hunter2"}]
    }))
    .unwrap();
    let task = task(
        spec,
        "job1",
        1,
        "uid1",
        SEGMENT,
        "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.BatchAI/workspaces/w/experiments/e/jobs/job1",
        "node-1",
    );
    let node = node("node-1", data.clone(), storage.clone(), ImageMap::default());
    let (tx, mut reports) = mpsc::unbounded_channel();
    let (_keep, stop) = watch::channel(false);
    let end = tokio::time::timeout(GUARD, execute(&node, &runtime, &task, Launch::default(), stop, tx)).await.unwrap();
    assert_eq!((end.phase, end.exit_code, end.error), (TaskPhase::Exited, Some(0), None));
    let mut phases = Vec::new();
    while let Ok(r) = reports.try_recv() {
        phases.push(r.phase);
    }
    assert_eq!(phases, [TaskPhase::Preparing, TaskPhase::Running, TaskPhase::Exited]);

    let job_dir = storage.join("acct/share").join(SEGMENT);
    let stdouterr = job_dir.join("stdouterr");
    assert_eq!(read(&stdouterr.join("stdout.txt")), "hello 0\n");
    assert_eq!(read(&stdouterr.join("stderr.txt")), "oops\n");
    assert_eq!(read(&job_dir.join("outputs/x")), "prepared\n", "outputs exist before job preparation");
    let log = read(&stdouterr.join("execution.log"));
    assert!(log.contains("running job preparation") && log.contains("finished with exit code 0"), "{log}");
    assert!(!log.contains("hunter2"), "secrets never reach the execution log");
    assert!(storage.join(".batchai/shared/uid1").is_dir());
    assert!(data.join("jobs/job1/hostfile").is_file());
}

#[tokio::test]
async fn a_failing_command_reports_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let spec: JobSpec = serde_json::from_value(json!({
        "cluster": {"id": "c"},
        "nodeCount": 1,
        "stdOutErrPathPrefix": "$AZ_BATCHAI_JOB_TEMP",
        "customToolkitSettings": {"commandLine": "false"}
    }))
    .unwrap();
    let task = task(spec, "job2", 3, "uid2", "seg", "/x/jobs/job2", "n");
    let node = node("n", dir.path().join("data"), dir.path().join("storage"), ImageMap::default());
    let (tx, _reports) = mpsc::unbounded_channel();
    let (_keep, stop) = watch::channel(false);
    let end = tokio::time::timeout(GUARD, execute(&node, &ProcessRuntime::new(), &task, Launch::default(), stop, tx))
        .await
        .unwrap();
    assert_eq!((end.exit_code, end.error), (Some(1), None));
}

const CNTK: &str = "microsoft/cntk:2.0-cpu-python3.5";

/// A CNTK-quickstart-like job with `containerSettings` (its registry password a Key Vault
/// reference), and a node with `image_map`, in `dir`.
fn container_job(dir: &Path, image_map: ImageMap) -> (NodeContext, TaskAssignment) {
    let spec: JobSpec = serde_json::from_value(json!({
        "cluster": {"id": "c"},
        "nodeCount": 1,
        "stdOutErrPathPrefix": "$AZ_BATCHAI_JOB_TEMP",
        "containerSettings": {"imageSourceRegistry": {"image": CNTK, "credentials": {"username": "u",
            "passwordSecretReference": {"sourceVault": {"id": "/vaults/v"}, "secretUrl": "https://v/secrets/s"}}}},
        "jobPreparation": {"commandLine": "echo prepared > $AZ_BATCHAI_JOB_TEMP/prep"},
        "customToolkitSettings": {"commandLine": "cat $AZ_BATCHAI_JOB_TEMP/prep; echo on the host"}
    }))
    .unwrap();
    (
        node("n", dir.join("data"), dir.join("storage"), image_map),
        task(spec, "job3", 1, "uid3", "seg", "/x/jobs/job3", "n"),
    )
}

#[tokio::test]
async fn a_container_job_whose_image_maps_to_host_runs_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let map = ImageMap(vec![("microsoft/cntk:*".into(), HOST.into())]);
    let (node, task) = container_job(dir.path(), map);
    let (tx, _reports) = mpsc::unbounded_channel();
    let (_keep, stop) = watch::channel(false);
    let end = tokio::time::timeout(GUARD, execute(&node, &ProcessRuntime::new(), &task, Launch::default(), stop, tx))
        .await
        .unwrap();
    assert_eq!((end.exit_code, end.error), (Some(0), None), "no container, no pull, no Key Vault lookup");
    let stdouterr = node.job_temp_root().join("job3/seg/stdouterr");
    assert_eq!(read(&stdouterr.join("stdout.txt")), "prepared\non the host\n", "job preparation ran too");
    let log = read(&stdouterr.join("execution.log"));
    assert!(log.contains(&format!("image {CNTK} runs on the host on this node (image map)")), "{log}");
    assert!(!log.contains("mapped to"), "{log}");
}

#[tokio::test]
async fn an_unmapped_container_job_fails_on_the_process_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let map = ImageMap(vec![("tensorflow/*".into(), HOST.into())]);
    let (node, mut task) = container_job(dir.path(), map);
    if let Some(registry) = task.spec.container_settings.as_mut().map(|c| &mut c.image_source_registry) {
        registry.credentials = None;
    }
    let (tx, _reports) = mpsc::unbounded_channel();
    let (_keep, stop) = watch::channel(false);
    let end = tokio::time::timeout(GUARD, execute(&node, &ProcessRuntime::new(), &task, Launch::default(), stop, tx))
        .await
        .unwrap();
    assert_eq!(end.exit_code, None);
    let error = end.error.expect("the job fails");
    assert_eq!(error.code, JOB_PREPARATION_FAILED);
    assert!(error.message.contains(&format!("image {CNTK}: the process runtime cannot run containers")), "{error:?}");
    assert!(!node.job_temp_root().join("job3/prep").exists(), "nothing ran on the host");
}
