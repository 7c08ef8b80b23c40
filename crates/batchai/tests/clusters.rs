//! Clusters on the node pool end to end, with real `batchai agent` processes, on SQLite and on
//! Postgres: setup tasks, resizing with each `nodeDeallocationOption`, autoscale, deleting a
//! cluster under a running job, and two servers scheduling one Postgres.
//!
//! Waits poll the API (or `batchai admin node list`, or a file on the share) like a client
//! would; the overall limit only turns a hang into a failure. Jobs that must still be running
//! when the test acts wait for a file the test creates on the share, never for a time.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::farm::{
    cluster_id, cluster_path, cluster_props, create_cluster, env, eventually, experiment, farm, finished, job_body,
    nodes, resize, start, state_is, submit, succeeded, wait_for, wait_idle,
};
use common::{Agent, BAI, Backend, Client, Server, backends};
use serde_json::{Value, json};

/// The share every cluster here mounts at `afs`, as the server sees it.
fn share(storage_root: &Path) -> PathBuf {
    storage_root.join("acct/share")
}

/// A custom job's settings: run `command` on the master.
fn custom(command: &str) -> Value {
    json!({"customToolkitSettings": {"commandLine": command}})
}

/// A command line that waits until the test creates `name` on the share.
fn until(name: &str) -> String {
    format!("while [ ! -e $AZ_BATCHAI_MOUNT_ROOT/afs/{name} ]; do sleep 0.1; done; echo released")
}

/// Deletes a resource and waits for its operation to succeed.
async fn delete(c: &Client, path: &str) {
    let r = c.delete(&format!("{path}?{BAI}")).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let op = r.headers.get("azure-asyncoperation").expect("operation header").to_str().expect("ascii").to_owned();
    let done = c.wait_operation(&op).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
}

/// Waits until `batchai admin node list` shows every node in `state`.
async fn all_nodes(server: &Server, state: &str) -> Vec<(String, String, Option<String>)> {
    eventually(&format!("every node {state}"), || {
        let n = nodes(server);
        n.iter().all(|(_, s, _)| s == state).then_some(n)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn setup_tasks_log_per_node_and_a_failing_one_leaves_the_nodes_unusable() {
    for backend in backends() {
        let server = start(backend, env());
        let _agents = [Agent::start(&server, &env()), Agent::start(&server, &env())];
        let c = server.client();
        let exp = experiment(&c, "setup").await;

        let mut props = cluster_props(json!({"manual": {"targetNodeCount": 2}}));
        props["nodeSetup"]["setupTask"] = json!({"commandLine": "echo setup $MYV",
            "environmentVariables": [{"name": "MYV", "value": "my-value"}],
            "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs"});
        let good = create_cluster(&c, "setup", "good", props.clone()).await;
        let cl = wait_idle(&c, &good, 2).await;
        let suffix = cl["properties"]["nodeSetup"]["setupTask"]["stdOutErrPathSuffix"].as_str().expect("suffix");
        let logs = share(&server.data_dir.join("storage")).join(suffix.trim_matches('/'));
        let ids: Vec<String> = nodes(&server).into_iter().map(|(id, _, _)| id).collect();
        assert_eq!(ids.len(), 2);
        for id in &ids {
            let log = std::fs::read_to_string(logs.join(format!("stdout-{id}.txt"))).expect("setup log per node");
            assert_eq!(log, "setup my-value\n");
        }
        delete(&c, &good).await;
        all_nodes(&server, "free").await;

        // A failing setup task: both nodes unusable, the cluster says which and why, and a job
        // there waits.
        props["nodeSetup"]["setupTask"]["commandLine"] = json!("echo failing; exit 4");
        let bad = create_cluster(&c, "setup", "bad", props).await;
        // The counts and the errors are written by different passes: wait for both.
        let failed_setup = |e: &Value, id: &str| {
            e["code"] == "NodeSetupFailed"
                && e["message"].as_str().is_some_and(|m| m.contains(id) && m.contains("exited with code 4"))
        };
        wait_for(&c, &bad, "unusable nodes named in the errors", |b| {
            let errors = b["properties"]["errors"].as_array().cloned().unwrap_or_default();
            b["properties"]["nodeStateCounts"]["unusableNodeCount"] == 2
                && ids.iter().all(|id| errors.iter().any(|e| failed_setup(e, id)))
        })
        .await;
        let body = job_body(
            "setup",
            1,
            json!({"cluster": {"id": cluster_id("setup", "bad")}, "customToolkitSettings": {"commandLine": "true"}}),
        );
        let job = submit(&c, &exp, "waits", &body).await;
        let queued = state_is(&c, &job, "queued").await;
        let why = job_why(&server, queued["id"].as_str().expect("id"));
        assert_eq!(why["state"], "queued", "{why}");
        assert!(why["why"].as_str().is_some_and(|w| w.contains("node")), "{why}");
        assert_eq!(state_is(&c, &job, "queued").await["properties"]["executionState"], "queued");

        // Resizing it to nothing gives the unusable nodes back to the pool.
        resize(&c, &bad, json!({"targetNodeCount": 0})).await;
        wait_for(&c, &bad, "no nodes and no errors", |b| {
            b["properties"]["currentNodeCount"] == 0
                && b["properties"]["allocationState"] == "steady"
                && b["properties"].get("errors").is_none()
        })
        .await;
        all_nodes(&server, "free").await;
    }
}

/// `batchai job why <id>` against the server's database.
fn job_why(server: &Server, job_id: &str) -> Value {
    let mut cmd = Command::new(common::binary());
    cmd.args(["job", "why", job_id, "--data-dir"]).arg(&server.data_dir).env("RUST_LOG", "warn");
    if let Some(url) = &server.database_url {
        cmd.arg("--database-url").arg(url);
    }
    let out = cmd.output().expect("job why runs");
    assert!(out.status.success(), "job why failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("job why prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resizing_returns_idle_nodes_to_the_pool_and_takes_them_back() {
    for backend in backends() {
        let server = start(backend, env());
        let _agents = [Agent::start(&server, &env()), Agent::start(&server, &env())];
        let c = server.client();
        farm(&c, "resize", 2).await;
        let cluster = cluster_path("resize", "c1");

        resize(&c, &cluster, json!({"targetNodeCount": 1})).await;
        wait_idle(&c, &cluster, 1).await;
        let n = nodes(&server);
        let free: Vec<_> = n.iter().filter(|(_, s, cl)| s == "free" && cl.is_none()).collect();
        assert_eq!(free.len(), 1, "{n:?}");
        assert!(n.iter().any(|(_, s, cl)| s == "idle" && cl.is_some()), "{n:?}");

        resize(&c, &cluster, json!({"targetNodeCount": 2})).await;
        wait_idle(&c, &cluster, 2).await;
        assert!(nodes(&server).iter().all(|(_, s, _)| s == "idle"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resizing_down_under_a_running_job_follows_the_deallocation_option() {
    for backend in backends() {
        let server = start(backend, env());
        let _agent = Agent::start(&server, &env());
        let c = server.client();
        let exp = farm(&c, "dealloc", 1).await;
        let cluster = cluster_path("dealloc", "c1");
        let share = share(&server.data_dir.join("storage"));

        // requeue: the job goes back to the queue and runs again once there is a node.
        let cmd = "echo run >> $AZ_BATCHAI_MOUNT_ROOT/afs/attempts; \
                   if [ $(wc -l < $AZ_BATCHAI_MOUNT_ROOT/afs/attempts) -eq 1 ]; then sleep 600; fi";
        let job = submit(&c, &exp, "requeued", &job_body("dealloc", 1, custom(cmd))).await;
        eventually("the first attempt to start", || std::fs::read_to_string(share.join("attempts")).ok()).await;
        resize(&c, &cluster, json!({"targetNodeCount": 0, "nodeDeallocationOption": "requeue"})).await;
        state_is(&c, &job, "queued").await;
        wait_idle(&c, &cluster, 0).await;
        all_nodes(&server, "free").await;
        resize(&c, &cluster, json!({"targetNodeCount": 1})).await;
        succeeded(&c, &job).await;
        assert_eq!(std::fs::read_to_string(share.join("attempts")).expect("attempts"), "run\nrun\n");

        // terminate: the job fails.
        wait_idle(&c, &cluster, 1).await;
        let job = submit(&c, &exp, "terminated", &job_body("dealloc", 1, custom(&until("never")))).await;
        state_is(&c, &job, "running").await;
        resize(&c, &cluster, json!({"targetNodeCount": 0, "nodeDeallocationOption": "terminate"})).await;
        let done = finished(&c, &job).await;
        assert_eq!(done["properties"]["executionState"], "failed", "{done}");
        assert_eq!(done["properties"]["executionInfo"]["errors"][0]["code"], "NodeDeallocated", "{done}");
        wait_idle(&c, &cluster, 0).await;
        all_nodes(&server, "free").await;

        // waitforjobcompletion: the node leaves once the job has ended.
        resize(&c, &cluster, json!({"targetNodeCount": 1})).await;
        wait_idle(&c, &cluster, 1).await;
        let job = submit(&c, &exp, "waited", &job_body("dealloc", 1, custom(&until("go")))).await;
        state_is(&c, &job, "running").await;
        resize(&c, &cluster, json!({"targetNodeCount": 0, "nodeDeallocationOption": "waitforjobcompletion"})).await;
        wait_for(&c, &cluster, "a leaving node", |b| b["properties"]["nodeStateCounts"]["leavingNodeCount"] == 1).await;
        assert!(nodes(&server).iter().all(|(_, s, _)| s == "leaving"));
        state_is(&c, &job, "running").await;
        std::fs::write(share.join("go"), "").expect("release the job");
        succeeded(&c, &job).await;
        wait_idle(&c, &cluster, 0).await;
        all_nodes(&server, "free").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn autoscale_grows_for_the_queue_and_shrinks_after_the_grace() {
    for backend in backends() {
        let mut server_env = env();
        server_env.push(("BATCHAI_AUTOSCALE_GRACE_SECS".into(), "1".into()));
        let server = start(backend, server_env);
        let _agents = [Agent::start(&server, &env()), Agent::start(&server, &env())];
        let c = server.client();
        let exp = experiment(&c, "auto").await;
        let scale = json!({"autoScale": {"minimumNodeCount": 0, "maximumNodeCount": 2, "initialNodeCount": 0}});
        let cluster = create_cluster(&c, "auto", "c1", cluster_props(scale)).await;
        wait_idle(&c, &cluster, 0).await;

        let job = submit(&c, &exp, "wide", &job_body("auto", 2, custom(&until("go")))).await;
        wait_for(&c, &cluster, "two running nodes", |b| b["properties"]["nodeStateCounts"]["runningNodeCount"] == 2)
            .await;
        state_is(&c, &job, "running").await;
        std::fs::write(share(&server.data_dir.join("storage")).join("go"), "").expect("release the job");
        succeeded(&c, &job).await;
        wait_idle(&c, &cluster, 0).await;
        all_nodes(&server, "free").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_cluster_fails_its_running_job_and_frees_the_nodes() {
    for backend in backends() {
        let server = start(backend, env());
        let _agents = [Agent::start(&server, &env()), Agent::start(&server, &env())];
        let c = server.client();
        let exp = farm(&c, "del", 2).await;
        let job = submit(&c, &exp, "orphan", &job_body("del", 2, custom(&until("never")))).await;
        state_is(&c, &job, "running").await;
        delete(&c, &cluster_path("del", "c1")).await;
        let done = finished(&c, &job).await;
        assert_eq!(done["properties"]["executionState"], "failed", "{done}");
        assert_eq!(done["properties"]["executionInfo"]["errors"][0]["code"], "ClusterDeleted", "{done}");
        all_nodes(&server, "free").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_postgres_never_run_two_jobs_on_a_node() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let storage = tempfile::tempdir().expect("tempdir");
    let mut server_env = env();
    server_env.push(("BATCHAI_STORAGE_ROOT".into(), storage.path().display().to_string()));
    let one = start(Backend::Postgres, server_env.clone());
    let two_dir = tempfile::tempdir().expect("tempdir");
    let two = Server::spawn(two_dir.path(), one.database_url.clone(), &server_env);
    let _agents = [Agent::start(&one, &env()), Agent::start(&two, &env())];
    let clients = [one.client(), two.client()];
    let exp = farm(&clients[0], "pair", 2).await;

    // Each job writes `start <node>` and `end <node>` under a lock, with a moment between.
    let cmd = "f=$AZ_BATCHAI_MOUNT_ROOT/afs/log; n=$(dirname $AZ_BATCHAI_MOUNT_ROOT); \
               flock $f.lock -c \"echo start $n >> $f\"; sleep 0.3; flock $f.lock -c \"echo end $n >> $f\"";
    let mut jobs = Vec::new();
    for i in 0..6 {
        jobs.push(submit(&clients[i % 2], &exp, &format!("j{i}"), &job_body("pair", 1, custom(cmd))).await);
    }
    for (i, job) in jobs.iter().enumerate() {
        succeeded(&clients[(i + 1) % 2], job).await;
    }
    let log = std::fs::read_to_string(share(storage.path()).join("log")).expect("log");
    let mut busy: HashMap<&str, bool> = HashMap::new();
    for line in log.lines() {
        let (what, node) = line.split_once(' ').expect("<what> <node>");
        let running = busy.entry(node).or_default();
        match what {
            "start" => assert!(!*running, "two jobs at once on {node}:\n{log}"),
            "end" => assert!(*running, "end without start on {node}:\n{log}"),
            other => panic!("unexpected line {other}"),
        }
        *running = what == "start";
    }
    assert_eq!(log.lines().count(), 12, "{log}");
    assert!(busy.values().all(|b| !b), "{log}");
}
