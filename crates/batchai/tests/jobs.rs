//! Jobs run end to end: a real server and real `batchai agent` processes (each with its own
//! data dir) on SQLite and on Postgres, driven over HTTP like a client would.
//!
//! Waiting is done the way a client waits: polling the job or cluster until it reaches a
//! state, with an overall limit only to turn a hang into a failure.

mod common;

use common::farm::{cluster_path, env, eventually, farm, finished, job_body, output, start, submit, wait_for};
use common::{Agent, BAI, Server, backends};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_run_on_agents_with_the_batch_ai_contract() {
    for backend in backends() {
        let server = start(backend, env());
        let _agents = [Agent::start(&server, &env()), Agent::start(&server, &env())];
        let c = server.client();
        let exp = farm(&c, "run", 2).await;
        let logins = remote_logins(&c, &cluster_path("run", "c1")).await;
        assert_eq!(logins.len(), 2, "one entry per node: {logins:?}");
        assert!(logins.iter().all(|l| l["ipAddress"] == "127.0.0.1" && l["port"] == 22 && l["nodeId"].is_string()));

        // A custom job: env, secrets and the contract's variables; stdout and stderr come back.
        let cmd = "echo hello $PLAIN $SECRET; echo gpus=$AZ_BATCHAI_NUM_GPUS; echo oops >&2; \
                   test -d $AZ_BATCHAI_OUTPUT_MODEL && echo model > $AZ_BATCHAI_OUTPUT_MODEL/m.txt";
        let body = job_body(
            "run",
            1,
            json!({"customToolkitSettings": {"commandLine": cmd},
                   "outputDirectories": [{"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs"}]}),
        );
        let job = submit(&c, &exp, "ok", &body).await;
        let done = finished(&c, &job).await;
        assert_eq!(done["properties"]["executionState"], "succeeded", "{done}");
        assert_eq!(done["properties"]["executionInfo"]["exitCode"], 0);
        assert!(done["properties"]["executionInfo"]["startTime"].is_string());
        assert!(done["properties"]["executionInfo"]["endTime"].is_string());
        assert_eq!(output(&c, &job, "stdouterr", "stdout.txt").await, "hello plain-value s3cr3t\ngpus=0\n");
        assert_eq!(output(&c, &job, "stdouterr", "stderr.txt").await, "oops\n");
        assert_eq!(output(&c, &job, "MODEL", "m.txt").await, "model\n");
        assert!(!done.to_string().contains("s3cr3t"), "secrets are write-only");

        // Non-zero exit.
        let job =
            submit(&c, &exp, "bad", &job_body("run", 1, json!({"customToolkitSettings": {"commandLine": "exit 3"}})))
                .await;
        let done = finished(&c, &job).await;
        assert_eq!(done["properties"]["executionState"], "failed");
        assert_eq!(done["properties"]["executionInfo"]["exitCode"], 3);
        assert_eq!(done["properties"]["executionInfo"]["errors"][0]["code"], "JobFailed");

        // Job preparation failing.
        let body = job_body(
            "run",
            1,
            json!({"customToolkitSettings": {"commandLine": "true"}, "jobPreparation": {"commandLine": "exit 7"}}),
        );
        let done = finished(&c, &submit(&c, &exp, "prep", &body).await).await;
        assert_eq!(done["properties"]["executionInfo"]["errors"][0]["code"], "JobPreparationFailed", "{done}");
        assert_eq!(done["properties"]["executionInfo"]["exitCode"], 7);

        // Two nodes: both in the MPI host file; PyTorch ranks on both nodes with their logs.
        let body =
            job_body("run", 2, json!({"customToolkitSettings": {"commandLine": "cat $AZ_BATCHAI_MPI_HOST_FILE"}}));
        let job = submit(&c, &exp, "multi", &body).await;
        assert_eq!(finished(&c, &job).await["properties"]["executionState"], "succeeded");
        assert_eq!(output(&c, &job, "stdouterr", "stdout.txt").await.lines().count(), 2);
        let script = server.data_dir.join("rank.py");
        std::fs::write(&script, "import os\nprint('rank', os.environ['AZ_BATCHAI_TASK_INDEX'])\n").expect("script");
        let body = job_body(
            "run",
            2,
            json!({"pyTorchSettings": {"pythonScriptFilePath": script, "pythonInterpreterPath": "python3", "processCount": 2}}),
        );
        let job = submit(&c, &exp, "torch", &body).await;
        let done = finished(&c, &job).await;
        assert_eq!(done["properties"]["executionState"], "succeeded", "{done}");
        assert_eq!(output(&c, &job, "stdouterr", "stdout-0.txt").await, "rank 0\n");
        assert_eq!(output(&c, &job, "stdouterr", "stdout-1.txt").await, "rank 1\n");

        // Terminate a running job; a wall-clock limit stops another.
        let job = submit(
            &c,
            &exp,
            "long",
            &job_body("run", 1, json!({"customToolkitSettings": {"commandLine": "sleep 600"}})),
        )
        .await;
        wait_for(&c, &job, "running", |b| b["properties"]["executionState"] == "running").await;
        let logins = remote_logins(&c, &job).await;
        assert_eq!(logins.len(), 1, "the job's one node: {logins:?}");
        let r = c.send(reqwest::Method::POST, &format!("{job}/terminate?{BAI}"), None).await;
        assert_eq!(r.status, 202);
        let done = finished(&c, &job).await;
        assert_eq!(done["properties"]["executionInfo"]["errors"][0]["code"], "JobTerminated", "{done}");
        assert!(done["properties"]["executionInfo"].get("exitCode").is_none_or(Value::is_null));
        let mut body = job_body("run", 1, json!({"customToolkitSettings": {"commandLine": "sleep 600"}}));
        body["properties"]["constraints"] = json!({"maxWallClockTime": "PT2S"});
        let done = finished(&c, &submit(&c, &exp, "slow", &body).await).await;
        assert_eq!(done["properties"]["executionInfo"]["errors"][0]["code"], "JobMaxWallClockTimeExceeded", "{done}");

        // Deleting a running job stops it and frees its node.
        let job = submit(
            &c,
            &exp,
            "doomed",
            &job_body("run", 2, json!({"customToolkitSettings": {"commandLine": "sleep 600"}})),
        )
        .await;
        wait_for(&c, &job, "running", |b| b["properties"]["executionState"] == "running").await;
        assert_eq!(c.send(reqwest::Method::DELETE, &format!("{job}?{BAI}"), None).await.status, 202);
        let ws = Server::bai("run", "workspaces/ws");
        wait_for(&c, &format!("{ws}/clusters/c1"), "nodes freed", |b| {
            b["properties"]["nodeStateCounts"]["idleNodeCount"] == 2
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_agent_requeues_its_job_and_a_server_restart_loses_nothing() {
    for backend in backends() {
        let port = common::free_port();
        let mut env = env();
        env.push(("BATCHAI_HTTP_LISTEN".into(), format!("127.0.0.1:{port}")));
        let mut server = start(backend, env.clone());
        let mut agents = [Agent::start(&server, &env), Agent::start(&server, &env)];
        let c = server.client();
        let exp = farm(&c, "loss", 2).await;

        // The job records which node ran it; kill -9 that node's agent while it runs.
        let cmd = "echo $AZ_BATCHAI_JOB_TEMP >> $AZ_BATCHAI_MOUNT_ROOT/afs/attempts; \
                   n=$(wc -l < $AZ_BATCHAI_MOUNT_ROOT/afs/attempts); if [ $n -eq 1 ]; then sleep 30; fi; echo done";
        let job =
            submit(&c, &exp, "survivor", &job_body("loss", 1, json!({"customToolkitSettings": {"commandLine": cmd}})))
                .await;
        let share = server.data_dir.join("storage/acct/share/attempts");
        let first =
            eventually("the job to start", || std::fs::read_to_string(&share).ok().filter(|t| !t.is_empty())).await;
        let victim =
            agents.iter().position(|a| first.starts_with(a.data_dir.to_str().expect("utf8"))).expect("ran on an agent");
        agents[victim].kill();
        let done = finished(&c, &job).await;
        assert_eq!(done["properties"]["executionState"], "succeeded", "requeued and completed elsewhere: {done}");
        let attempts = std::fs::read_to_string(&share).expect("attempts");
        assert_eq!(attempts.lines().count(), 2, "{attempts}");
        let ws = Server::bai("loss", "workspaces/ws");
        // Counts converge on the scheduler's next pass.
        wait_for(&c, &format!("{ws}/clusters/c1"), "the lost node counted, the other idle again", |b| {
            let counts = &b["properties"]["nodeStateCounts"];
            counts["unusableNodeCount"] == 1 && counts["idleNodeCount"] == 1
        })
        .await;

        // kill -9 the server while a job runs; it comes back on the same address and the job
        // completes.
        let job = submit(
            &c,
            &exp,
            "across-restart",
            &job_body("loss", 1, json!({"customToolkitSettings": {"commandLine": "sleep 3; echo after"}})),
        )
        .await;
        wait_for(&c, &job, "running", |b| b["properties"]["executionState"] == "running").await;
        let (data_dir, db) = (server.data_dir.clone(), server.database_url.clone());
        server.kill();
        let server2 = Server::spawn(&data_dir, db, &env);
        let c2 = server2.client();
        let done = finished(&c2, &job).await;
        assert_eq!(done["properties"]["executionState"], "succeeded", "{done}");
        assert_eq!(output(&c2, &job, "stdouterr", "stdout.txt").await, "after\n");
        drop(server);
    }
}

/// `listRemoteLoginInformation` of a cluster or job.
async fn remote_logins(c: &common::Client, path: &str) -> Vec<Value> {
    let r = c.send(reqwest::Method::POST, &format!("{path}/listRemoteLoginInformation?{BAI}"), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["value"].as_array().expect("value").clone()
}

/// SIGTERM to an agent (an upgrade, a drained machine): it stops its job and says it leaves, so
/// the job is requeued at once (the node timeout here is an hour), and runs again when the
/// node is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_terminated_agent_hands_its_job_back() {
    for backend in backends() {
        let mut env = env();
        env.retain(|(k, _)| k != "BATCHAI_NODE_TIMEOUT_SECS");
        env.push(("BATCHAI_NODE_TIMEOUT_SECS".into(), "3600".into()));
        let server = start(backend, env.clone());
        let mut agent = Agent::start(&server, &env);
        let c = server.client();
        let exp = farm(&c, "leave", 1).await;
        let cmd = "echo run >> $AZ_BATCHAI_MOUNT_ROOT/afs/attempts; \
                   n=$(wc -l < $AZ_BATCHAI_MOUNT_ROOT/afs/attempts); if [ $n -eq 1 ]; then sleep 600; fi; echo done";
        let job = submit(
            &c,
            &exp,
            "handed-back",
            &job_body("leave", 1, json!({"customToolkitSettings": {"commandLine": cmd}})),
        )
        .await;
        let share = server.data_dir.join("storage/acct/share/attempts");
        eventually("the job to start", || std::fs::read_to_string(&share).ok().filter(|t| !t.is_empty())).await;

        assert!(agent.terminate().success(), "a clean shutdown exits 0");
        let queued = wait_for(&c, &job, "requeued", |b| b["properties"]["executionState"] == "queued").await;
        assert!(queued["properties"]["executionInfo"]["errors"].is_null(), "{queued}");
        let ws = Server::bai("leave", "workspaces/ws");
        wait_for(&c, &format!("{ws}/clusters/c1"), "the node counted unusable", |b| {
            b["properties"]["nodeStateCounts"]["unusableNodeCount"] == 1
        })
        .await;

        agent.restart(&server, &env);
        let done = finished(&c, &job).await;
        assert_eq!(done["properties"]["executionState"], "succeeded", "{done}");
        assert_eq!(std::fs::read_to_string(&share).expect("attempts"), "run\nrun\n");
        assert_eq!(output(&c, &job, "stdouterr", "stdout.txt").await, "done\n");
    }
}
