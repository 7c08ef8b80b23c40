//! Jobs with `containerSettings` on real `batchai agent` processes and the machine's Docker
//! engine, on SQLite and Postgres: a container survives a kill -9 of its agent and the
//! restarted agent reports its exit with complete logs; what a killed agent left of a job
//! deleted or moved to another node meanwhile is stopped and removed when it comes back.
//!
//! Needs Docker and `batchai/busybox:latest` (`scripts/build-images.sh`); without them the
//! tests say so and pass, except under `CI`, where they fail.

mod common;

use common::farm::{env, farm, finished, job_body, start, state_is, submit, wait_for};
use common::{Agent, BAI, Client, backends};
use serde_json::{Value, json};

const IMAGE: &str = "batchai/busybox:latest";

fn docker_ready() -> bool {
    let ready = std::process::Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .is_ok_and(|out| out.status.success());
    if !ready {
        assert!(std::env::var_os("CI").is_none(), "CI needs Docker with {IMAGE} (scripts/build-images.sh)");
        eprintln!("skipped: needs Docker with {IMAGE} (scripts/build-images.sh)");
    }
    ready
}

fn in_container(rg: &str, command: &str) -> Value {
    job_body(
        rg,
        1,
        json!({"customToolkitSettings": {"commandLine": command},
               "containerSettings": {"imageSourceRegistry": {"image": IMAGE}}}),
    )
}

/// The job's `stdouterr/<file>` through listOutputFiles and its download link, once listed.
async fn output_file(c: &Client, job: &str, file: &str) -> Option<String> {
    let r = c.post(&format!("{job}/listOutputFiles?{BAI}&outputdirectoryid=stdouterr")).await;
    let entries = r.body["value"].as_array()?.clone();
    let entry = entries.iter().find(|f| f["name"].as_str().is_some_and(|n| n.ends_with(file)))?;
    let res = reqwest::get(entry["downloadUrl"].as_str()?).await.ok()?;
    res.text().await.ok()
}

/// Polls the job's `file` until it holds `text`, as a client following a log does.
async fn output_holds(c: &Client, job: &str, file: &str, text: &str) {
    let deadline = tokio::time::Instant::now() + common::farm::LIMIT;
    while !output_file(c, job, file).await.is_some_and(|t| t.contains(text)) {
        assert!(tokio::time::Instant::now() < deadline, "{file} of {job} never held {text:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Polls `docker ps` until the agent's node has `n` containers.
async fn containers_become(agent: &Agent, n: usize, what: &str) {
    common::farm::eventually(what, || (agent.containers().len() == n).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_container_job_survives_a_kill_9_of_its_agent() {
    if !docker_ready() {
        return;
    }
    for backend in backends() {
        let mut env = env();
        // The agent is down for a moment only; a long node timeout keeps the scheduler from
        // calling the node lost meanwhile (that case is the next test's).
        env.retain(|(k, _)| k != "BATCHAI_NODE_TIMEOUT_SECS");
        env.push(("BATCHAI_NODE_TIMEOUT_SECS".into(), "120".into()));
        let server = start(backend, env.clone());
        let mut agent = Agent::start(&server, &env);
        let c = server.client();
        let exp = farm(&c, "reattach", 1).await;

        // The job waits on a FIFO in its temp dir, so the test decides when it ends.
        let cmd = "mkfifo $AZ_BATCHAI_JOB_TEMP/go; echo started; read word < $AZ_BATCHAI_JOB_TEMP/go; \
                   echo finished $word; echo to-stderr >&2; exit 4";
        let job = submit(&c, &exp, "survivor", &in_container("reattach", cmd)).await;
        output_holds(&c, &job, "stdout.txt", "started\n").await;
        agent.kill();
        assert_eq!(agent.containers().len(), 1, "the container outlives its agent");

        agent.restart(&server, &env);
        output_holds(&c, &job, "execution.log", "reattached to [main]").await;
        let fifo = agent.data_dir.join("jobs/survivor/go");
        tokio::task::spawn_blocking(move || std::fs::write(fifo, "go\n")).await.unwrap().unwrap();
        let done = finished(&c, &job).await;
        assert_eq!(done["properties"]["executionState"], "failed", "{done}");
        assert_eq!(done["properties"]["executionInfo"]["exitCode"], 4, "{done}");
        let stdout = output_file(&c, &job, "stdout.txt").await.unwrap();
        assert_eq!(stdout, "started\nfinished go\n", "complete, nothing twice");
        assert_eq!(output_file(&c, &job, "stderr.txt").await.unwrap(), "to-stderr\n");
        containers_become(&agent, 0, "the container removed once the server has the outcome").await;

        // A job deleted while its agent is down: the container goes when the agent is back.
        let job = submit(&c, &exp, "orphan", &in_container("reattach", "echo started; sleep 600")).await;
        output_holds(&c, &job, "stdout.txt", "started\n").await;
        agent.kill();
        let r = c.delete(&format!("{job}?{BAI}")).await;
        assert!(matches!(r.status, 200 | 202 | 204), "{}", r.text);
        agent.restart(&server, &env);
        containers_become(&agent, 0, "the deleted job's container stopped and removed").await;
        wait_for(&c, &format!("{exp}/jobs"), "the job gone", |b| b["value"].as_array().is_some_and(|v| v.len() == 1))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_moved_off_a_lost_node_leaves_no_container_behind() {
    if !docker_ready() {
        return;
    }
    for backend in backends() {
        let env = env();
        let server = start(backend, env.clone());
        let mut agents = [Agent::start(&server, &env), Agent::start(&server, &env)];
        let c = server.client();
        let exp = farm(&c, "moved", 2).await;

        // The first attempt blocks; the requeued one finds the marker and ends.
        let cmd = "echo attempt >> $AZ_BATCHAI_MOUNT_ROOT/afs/attempts; \
                   if [ $(wc -l < $AZ_BATCHAI_MOUNT_ROOT/afs/attempts) -eq 1 ]; then sleep 600; fi; echo done";
        let job = submit(&c, &exp, "mover", &in_container("moved", cmd)).await;
        state_is(&c, &job, "running").await;
        let share = server.data_dir.join("storage/acct/share/attempts");
        common::farm::eventually("the first attempt", || {
            std::fs::read_to_string(&share).ok().filter(|t| !t.is_empty())
        })
        .await;
        let victim =
            common::farm::eventually("the node running it", || agents.iter().position(|a| a.containers().len() == 1))
                .await;
        agents[victim].kill();
        let done = finished(&c, &job).await;
        assert_eq!(done["properties"]["executionState"], "succeeded", "requeued and completed elsewhere: {done}");
        assert_eq!(agents[victim].containers().len(), 1, "the lost node's container still runs");

        agents[victim].restart(&server, &env);
        containers_become(&agents[victim], 0, "the old attempt's container stopped and removed").await;
        let attempts = std::fs::read_to_string(&share).unwrap();
        assert_eq!(attempts.lines().count(), 2, "one attempt per node, none repeated: {attempts}");
    }
}
