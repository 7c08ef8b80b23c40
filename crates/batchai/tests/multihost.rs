//! Several hosts: a server on Postgres and three agents, each agent in a container of its own
//! on a private Docker network (its own address), running job containers on the machine's
//! engine in its network namespace (`docker_network = container:<agent>`), so each node's jobs
//! have that node's address, as on separate machines.
//!
//! - A 2-node job whose ranks talk over TCP at the addresses of the host file.
//! - `docker network disconnect` of a node running a job (a partition): the node is given up,
//!   the job requeued and completed on the others; reconnected, the node stops and removes the
//!   stale attempt's container and serves again. The job completes once.
//! - `docker kill` of a node's agent mid-job: the node becomes unusable, the job is requeued and
//!   completes on the other nodes.
//!
//! Each agent container is `batchai/busybox:latest` with the test's `batchai` binary and the
//! host's C library bind-mounted, the Docker socket, and the agent's and the storage's
//! directories at the same paths as on the host (job containers are created by the host's
//! engine, which resolves bind mounts on the host). Agents reach the server's HTTPS listener
//! by the machine's hostname (in the server's generated certificate), mapped to the Docker
//! host with `--add-host <hostname>:host-gateway`.
//!
//! Needs Docker, `batchai/busybox:latest` (`scripts/build-images.sh`) and Postgres
//! (`BATCHAI_TEST_PG_URL`); without them the test says so and passes, except under `CI`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::farm::{eventually, farm, finished, job_body, submit, wait_for};
use common::{Server, ServerOptions};
use serde_json::json;

const IMAGE: &str = "batchai/busybox:latest";

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker").args(args).output().map_err(|e| format!("docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ready() -> bool {
    let missing = if docker(&["image", "inspect", IMAGE]).is_err() {
        Some(format!("Docker with {IMAGE} (scripts/build-images.sh)"))
    } else if std::env::var_os("BATCHAI_TEST_PG_URL").is_none() {
        Some("Postgres (BATCHAI_TEST_PG_URL)".to_owned())
    } else {
        None
    };
    match missing {
        None => true,
        Some(what) => {
            assert!(std::env::var_os("CI").is_none(), "CI needs {what}");
            eprintln!("skipped: needs {what}");
            false
        }
    }
}

/// A private bridge network with a /24 of its own; removed when dropped.
struct Network {
    name: String,
    /// The first three octets, e.g. `10.213.7`.
    prefix: String,
}

impl Network {
    fn create() -> Self {
        let name = format!("batchai-mh-{}", std::process::id());
        let start = std::process::id() % 200;
        for i in 0..50 {
            let prefix = format!("10.213.{}", (start + i) % 250 + 1);
            match docker(&["network", "create", "--subnet", &format!("{prefix}.0/24"), &name]) {
                Ok(_) => return Self { name, prefix },
                // Another network holds that range: try the next.
                Err(e) if e.contains("overlap") => {}
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no free 10.213.x.0/24 for a test network")
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// A node: `batchai agent` in a container on the network; its containers go when dropped.
struct Node {
    container: String,
    ip: String,
    data_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Node {
    fn start(server: &Server, url: &str, net: &Network, ip: &str, storage: &Path) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().to_owned();
        let container = format!("{}-{}", net.name, ip.rsplit('.').next().unwrap());
        let token = server.admin_json(&["join-token", "create"])["join_token"].as_str().unwrap().to_owned();
        let host = hostname();
        let bin = common::binary();
        let same = |p: &Path| format!("{0}:{0}", p.display());
        let run = [
            "run",
            "-d",
            "--name",
            &container,
            "--network",
            &net.name,
            "--ip",
            ip,
            "--add-host",
            &format!("{host}:host-gateway"),
            "-v",
            &format!("{}:/usr/local/bin/batchai:ro", bin.display()),
            "-v",
            "/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:ro",
            "-v",
            "/lib64:/lib64:ro",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            &same(&data_dir),
            "-v",
            &same(storage),
            "-v",
            &format!("{0}:{0}:ro", server.ca_cert.display()),
            "-e",
            "RUST_LOG=warn",
            "-e",
            "BATCHAI_AGENT_MAX_WAIT_MS=1000",
            "-e",
            "BATCHAI_STOP_GRACE_SECS=2",
            "-e",
            &format!("BATCHAI_DOCKER_NETWORK=container:{container}"),
            IMAGE,
            "/usr/local/bin/batchai",
            "agent",
            "--runtime",
            "docker",
            "--server",
            url,
            "--ca-cert",
            &server.ca_cert.display().to_string(),
            "--join-token",
            &token,
            "--data-dir",
            &data_dir.display().to_string(),
            "--address",
            ip,
            "--vm-size",
            "STANDARD_NC6",
        ];
        docker(&run).unwrap();
        Self { container, ip: ip.to_owned(), data_dir, _tmp: tmp }
    }

    fn node_id(&self) -> Option<String> {
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.data_dir.join("node.json")).ok()?).ok()?;
        saved["node_id"].as_str().map(str::to_owned)
    }

    /// Its running job containers.
    fn running_jobs(&self) -> usize {
        let Some(node) = self.node_id() else { return 0 };
        let label = format!("label=io.batchai.node={node}");
        docker(&["ps", "-q", "--filter", &label]).unwrap().split_whitespace().count()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.container]);
        if let Some(node) = self.node_id() {
            let label = format!("label=io.batchai.node={node}");
            let ids = docker(&["ps", "-aq", "--filter", &label]).unwrap_or_default();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = docker(&[&["rm", "-f"], ids.as_slice()].concat());
            }
        }
    }
}

/// The name the server's generated certificate is valid for besides loopback.
fn hostname() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_owned();
    assert!(!host.is_empty(), "the test needs /etc/hostname (the server certificate's name)");
    host
}

/// A 2-node job of `script` (a shell script on the share), one rank per node.
fn two_ranks(script: &str) -> serde_json::Value {
    job_body(
        "mh",
        2,
        json!({"pyTorchSettings": {"pythonScriptFilePath": format!("$AZ_BATCHAI_MOUNT_ROOT/afs/{script}"),
                                   "pythonInterpreterPath": "/bin/sh", "processCount": 2},
               "containerSettings": {"imageSourceRegistry": {"image": IMAGE}}}),
    )
}

/// Submits 2-node job `name` whose first attempt blocks (both ranks) and whose next attempt
/// completes, and waits until both ranks of the first attempt run. Returns the job's path and
/// the file on the share each rank of each attempt appends a line to.
async fn blocking_job(c: &common::Client, exp: &str, share: &Path, name: &str) -> (String, PathBuf) {
    let script = format!(
        "log=$AZ_BATCHAI_MOUNT_ROOT/afs/{name}.log\necho \"$AZ_BATCHAI_TASK_INDEX\" >> $log\n\
         if [ $(grep -c . $log) -le 2 ]; then sleep 600; fi\necho done\n"
    );
    std::fs::write(share.join(format!("{name}.sh")), script).unwrap();
    let job = submit(c, exp, name, &two_ranks(&format!("{name}.sh"))).await;
    let log = share.join(format!("{name}.log"));
    eventually("both ranks of the first attempt", || {
        std::fs::read_to_string(&log).ok().filter(|t| t.lines().count() == 2)
    })
    .await;
    (job, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_span_hosts_and_survive_a_partition_and_a_killed_agent() {
    if !ready() {
        return;
    }
    let mut env = common::farm::env();
    env.push(("BATCHAI_LISTEN".into(), "0.0.0.0:0".into()));
    let server = Server::start_with(ServerOptions { backend: common::Backend::Postgres, env });
    let port = server.https.rsplit(':').next().unwrap().to_owned();
    let url = format!("https://{}:{port}", hostname());
    let storage = server.data_dir.join("storage");
    let share = storage.join("acct/share");
    std::fs::create_dir_all(&share).unwrap();
    let net = Network::create();
    let nodes: Vec<Node> =
        (0..3).map(|i| Node::start(&server, &url, &net, &format!("{}.{}", net.prefix, 10 + i), &storage)).collect();
    let c = server.client();
    let exp = farm(&c, "mh", 3).await;

    // Ranks on two hosts talk over TCP at the master's address.
    std::fs::write(
        share.join("talk.sh"),
        r#"afs=$AZ_BATCHAI_MOUNT_ROOT/afs
cat $AZ_BATCHAI_MPI_HOST_FILE
if [ "$AZ_BATCHAI_TASK_INDEX" = 0 ]; then nc -l -p 29500 > $afs/heard
else until echo "hello from rank 1" | nc $AZ_BATCHAI_JOB_MASTER_NODE_IP 29500; do sleep 0.2; done; fi
"#,
    )
    .unwrap();
    let job = submit(&c, &exp, "talk", &two_ranks("talk.sh")).await;
    let done = finished(&c, &job).await;
    assert_eq!(done["properties"]["executionState"], "succeeded", "{done}");
    assert_eq!(std::fs::read_to_string(share.join("heard")).unwrap(), "hello from rank 1\n");
    let hostfile = std::fs::read_to_string(job_file(&share, "talk", "stdout-0.txt").expect("rank 0's stdout")).unwrap();
    let listed = nodes.iter().filter(|n| hostfile.contains(&format!("{} slots=", n.ip))).count();
    assert_eq!(listed, 2, "the host file lists the two nodes' own addresses: {hostfile}");

    // A partition: the node is given up, the job completes elsewhere, and once reconnected
    // the node drops the stale attempt.
    let (job, log) = blocking_job(&c, &exp, &share, "partitioned").await;
    let victim = nodes.iter().find(|n| n.running_jobs() == 1).expect("a node runs rank 0 or 1");
    docker(&["network", "disconnect", &net.name, &victim.container]).unwrap();
    let done = finished(&c, &job).await;
    assert_eq!(done["properties"]["executionState"], "succeeded", "requeued and completed: {done}");
    assert_eq!(victim.running_jobs(), 1, "the partitioned node does not know yet");
    docker(&["network", "connect", "--ip", &victim.ip, &net.name, &victim.container]).unwrap();
    eventually("the stale attempt stopped and removed", || (victim.running_jobs() == 0).then_some(())).await;
    let cluster = common::farm::cluster_path("mh", "c1");
    wait_for(&c, &cluster, "the node back in service", |b| b["properties"]["nodeStateCounts"]["idleNodeCount"] == 3)
        .await;
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 4, "two attempts of two ranks");
    let stdout0 = std::fs::read_to_string(job_file(&share, "partitioned", "stdout-0.txt").unwrap()).unwrap();
    assert_eq!(stdout0.matches("done").count(), 1, "the job completed once: {stdout0}");

    // A killed agent: its node becomes unusable, the job completes on the other two.
    let (job, _) = blocking_job(&c, &exp, &share, "killed").await;
    let victim = nodes.iter().find(|n| n.running_jobs() == 1).expect("a node runs a rank");
    docker(&["kill", &victim.container]).unwrap();
    let done = finished(&c, &job).await;
    assert_eq!(done["properties"]["executionState"], "succeeded", "requeued and completed: {done}");
    wait_for(&c, &cluster, "the killed node counted unusable", |b| {
        b["properties"]["nodeStateCounts"]["unusableNodeCount"] == 1
    })
    .await;
}

/// The file `name` of job `job` (a path with `/jobs/<job>/`) under `root`; `None` until it exists.
fn job_file(root: &Path, job: &str, name: &str) -> Option<PathBuf> {
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if entry.file_name() == name && path.to_string_lossy().contains(&format!("/jobs/{job}/")) {
                return Some(path);
            }
        }
    }
    None
}
