//! Every toolkit end to end: one job of each on a 2-node cluster of real `batchai agent`
//! processes, on SQLite and on Postgres, checking that the command lines batchai builds
//! (`docs/toolkits.md`) run and see the Batch AI contract. PyTorch is in `jobs.rs`.
//!
//! The test machine has no OpenMPI, Caffe or CNTK, so the agents get a `bin/` directory of
//! shims first on their `PATH`:
//! - `mpirun` (bash) accepts exactly the flags batchai passes — `-np N`, `--hostfile F`,
//!   `-x NAME`, `--allow-run-as-root`, `--oversubscribe`, `--map-by X`, `--bind-to X` — and fails
//!   on any other; checks that the host file is readable and that every `-x` variable is set;
//!   writes `mpirun: np=N hosts=<host file lines> x=<names>` to stderr; then runs the program
//!   N times on this machine with `OMPI_COMM_WORLD_RANK`/`OMPI_COMM_WORLD_SIZE` set, waits for
//!   all, and fails with the last failing rank's code. All ranks share the launcher's
//!   `stdout.txt`, so rank output is compared sorted.
//! - `caffe` and `cntk` echo their arguments and the MPI rank (`none` outside `mpirun`).
//!
//! The Python scripts print what they were given (`show.py`: MPI rank, task index, arguments,
//! a few `AZ_BATCHAI_*` variables; `tf.py`: its `TF_CONFIG` and role; a parameter server
//! then marks itself up in the job's shared directory and sleeps forever, as real ones do,
//! and is stopped once the workers, which wait for every server to be up, have ended).

mod common;

use std::path::Path;

use common::farm::{env, farm, finished, output, output_names, start, submit, succeeded, write_executable};
use common::{Agent, backends};
use serde_json::{Value, json};

const MPIRUN: &str = r#"#!/usr/bin/env bash
np=1 hostfile= exports=
while [ $# -gt 0 ]; do
  case "$1" in
    -np) np=$2; shift 2 ;;
    --hostfile) hostfile=$2; shift 2 ;;
    -x) exports+="${exports:+,}$2"; shift 2 ;;
    --map-by|--bind-to) shift 2 ;;
    --allow-run-as-root|--oversubscribe) shift ;;
    -*) echo "mpirun shim: unexpected flag $1" >&2; exit 90 ;;
    *) break ;;
  esac
done
[ -r "$hostfile" ] || { echo "mpirun shim: cannot read host file '$hostfile'" >&2; exit 91; }
[ $# -gt 0 ] || { echo "mpirun shim: no program" >&2; exit 92; }
for name in ${exports//,/ }; do
  [ -n "${!name+set}" ] || { echo "mpirun shim: -x $name is not set" >&2; exit 93; }
done
echo "mpirun: np=$np hosts=$(wc -l < "$hostfile") x=$exports" >&2
pids=()
for ((rank = 0; rank < np; rank++)); do
  OMPI_COMM_WORLD_RANK=$rank OMPI_COMM_WORLD_SIZE=$np "$@" &
  pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit $rc
"#;

const SHOW_PY: &str = r#"import os, sys
e = os.environ.get
line = (f"rank={e('OMPI_COMM_WORLD_RANK', '-')}/{e('OMPI_COMM_WORLD_SIZE', '-')} task={e('AZ_BATCHAI_TASK_INDEX', '-')} "
        f"args={' '.join(sys.argv[1:])} plain={e('PLAIN')} hosts={e('AZ_BATCH_HOST_LIST')} "
        f"master={e('AZ_BATCHAI_MPI_MASTER_NODE')}\n")
# One write per line: the ranks of an mpirun share stdout.txt, and print() may write the text
# and its newline separately, interleaving two ranks' lines.
os.write(1, line.encode())
"#;

const TF_PY: &str = r#"import json, os, sys, time
config = os.environ.get('TF_CONFIG')
task = json.loads(config)['task'] if config else {'type': 'single', 'index': 0}
print(config or 'no TF_CONFIG')
print(f"{task['type']} {task['index']} task={os.environ['AZ_BATCHAI_TASK_INDEX']} "
      f"ps={os.environ.get('AZ_BATCHAI_PS_HOSTS', '-')} workers={os.environ.get('AZ_BATCHAI_WORKER_HOSTS', '-')} "
      f"args={' '.join(sys.argv[1:])}", flush=True)
shared = os.environ['AZ_BATCHAI_SHARED_JOB_TEMP']
if task['type'] == 'ps':
    open(os.path.join(shared, f"ps-{task['index']}-up"), 'w').close()
    while True:
        time.sleep(60)
# A worker ends once every parameter server is up, as a real one would (so the servers have
# written their logs before they are stopped).
ps = json.loads(config)['cluster']['ps'] if config else []
while not all(os.path.exists(os.path.join(shared, f"ps-{i}-up")) for i in range(len(ps))):
    time.sleep(0.05)
"#;

/// Both agents run on 127.0.0.1; what `show.py` prints after the rank and arguments.
const CONTRACT: &str = "plain=plain-value hosts=127.0.0.1,127.0.0.1 master=127.0.0.1";

/// The shims and scripts in `dir`; returns the agents' environment.
fn tools(dir: &Path) -> Vec<(String, String)> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    write_executable(&bin.join("mpirun"), MPIRUN);
    for tool in ["caffe", "cntk"] {
        write_executable(
            &bin.join(tool),
            &format!("#!/bin/sh\necho \"{tool} $* (rank ${{OMPI_COMM_WORLD_RANK:-none}})\"\n"),
        );
    }
    std::fs::write(dir.join("show.py"), SHOW_PY).expect("show.py");
    std::fs::write(dir.join("tf.py"), TF_PY).expect("tf.py");
    let mut env = env();
    env.push(("PATH".into(), format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())));
    env
}

fn body(nodes: i32, settings: Value) -> Value {
    common::farm::job_body("tk", nodes, settings)
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// The shim's line in a launcher's `stderr.txt`: asserts the rank count, the host file and
/// that the job's variables (secrets by name only) were passed with `-x`.
async fn assert_launched(c: &common::Client, job: &str, np: usize) {
    let stderr = output(c, job, "stdouterr", "stderr.txt").await;
    let line = stderr.lines().find(|l| l.starts_with("mpirun: ")).unwrap_or_else(|| panic!("{job}: {stderr}"));
    assert!(line.starts_with(&format!("mpirun: np={np} hosts=2 x=")), "{job}: {line}");
    assert!(!line.contains("s3cr3t"), "{job}: a secret's value on the command line: {line}");
    let names: Vec<&str> = line.rsplit_once(" x=").expect("x=").1.split(',').collect();
    for name in ["AZ_BATCHAI_MPI_HOST_FILE", "AZ_BATCHAI_STDOUTERR_DIR", "AZ_BATCH_HOST_LIST", "PLAIN", "SECRET"] {
        assert!(names.contains(&name), "{job}: -x {name} missing in {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_toolkit_runs_its_command_line_on_the_nodes() {
    let scripts = tempfile::tempdir().expect("tempdir");
    let dir = scripts.path();
    let agent_env = tools(dir);
    let (show, tf) = (dir.join("show.py"), dir.join("tf.py"));
    for backend in backends() {
        let server = start(backend, env());
        let agents = [Agent::start(&server, &agent_env), Agent::start(&server, &agent_env)];
        let c = server.client();
        let exp = farm(&c, "tk", 2).await;

        // Everything is queued at once; the jobs run as the two nodes allow.
        let python = |settings: &str, args: &str, extra: Value| {
            let mut s =
                json!({"pythonScriptFilePath": show, "pythonInterpreterPath": "python3", "commandLineArgs": args});
            for (k, v) in extra.as_object().expect("object") {
                s[k] = v.clone();
            }
            json!({ settings: s })
        };
        let jobs = [
            ("cntkpy", body(2, python("cntkSettings", "--epochs 1", json!({"languageType": "python"})))),
            (
                "cntkbs",
                body(
                    1,
                    json!({"cntkSettings": {"languageType": "BrainScript", "configFilePath": "$AZ_BATCHAI_MOUNT_ROOT/afs/cfg.cntk",
                        "commandLineArgs": "rootDir=. x=$PLAIN", "processCount": 1}}),
                ),
            ),
            (
                "tfdist",
                body(
                    2,
                    json!({"tensorFlowSettings": {"pythonScriptFilePath": tf, "pythonInterpreterPath": "python3",
                        "workerCount": 2, "parameterServerCount": 1, "masterCommandLineArgs": "--role chief",
                        "workerCommandLineArgs": "--role worker", "parameterServerCommandLineArgs": "--role ps"}}),
                ),
            ),
            (
                "tfpsonly",
                body(
                    2,
                    json!({"tensorFlowSettings": {"pythonScriptFilePath": tf, "pythonInterpreterPath": "python3",
                        "workerCount": 1, "parameterServerCount": 2}}),
                ),
            ),
            (
                "tfsingle",
                body(
                    1,
                    json!({"tensorFlowSettings": {"pythonScriptFilePath": tf, "pythonInterpreterPath": "python3",
                        "masterCommandLineArgs": "--single", "workerCommandLineArgs": "--never"}}),
                ),
            ),
            ("caffe2", body(2, python("caffe2Settings", "--shard $AZ_BATCHAI_TASK_INDEX", json!({})))),
            (
                "caffe",
                body(
                    2,
                    json!({"caffeSettings": {"configFilePath": dir.join("solver.prototxt"), "commandLineArgs": "-gpu all"}}),
                ),
            ),
            ("chainer", body(2, python("chainerSettings", "chainer", json!({})))),
            ("horovod", body(2, python("horovodSettings", "horovod", json!({"processCount": 4})))),
            (
                "custommpi",
                body(
                    2,
                    json!({"customMpiSettings": {"processCount": 3,
                        "commandLine": "cd $AZ_BATCHAI_JOB_TEMP && echo rank $OMPI_COMM_WORLD_RANK/$OMPI_COMM_WORLD_SIZE in $(basename $PWD) $PLAIN"}}),
                ),
            ),
            ("mpifails", body(2, json!({"customMpiSettings": {"commandLine": "exit $((OMPI_COMM_WORLD_RANK * 5))"}}))),
            (
                "custom",
                body(
                    2,
                    json!({"customToolkitSettings": {"commandLine":
                        "echo $AZ_BATCH_HOST_LIST $AZ_BATCHAI_JOB_MASTER_NODE_IP $AZ_BATCH_MASTER_NODE; cat $AZ_BATCHAI_MPI_HOST_FILE"}}),
                ),
            ),
        ];
        let mut paths = std::collections::HashMap::new();
        for (name, body) in &jobs {
            paths.insert(*name, submit(&c, &exp, name, body).await);
        }
        let job = |name: &str| paths[name].clone();

        // CNTK, Python: under mpirun, one rank per node by default.
        let j = job("cntkpy");
        succeeded(&c, &j).await;
        assert_launched(&c, &j, 2).await;
        let expected: Vec<String> = (0..2).map(|r| format!("rank={r}/2 task=- args=--epochs 1 {CONTRACT}")).collect();
        assert_eq!(sorted_lines(&output(&c, &j, "stdouterr", "stdout.txt").await), expected);

        // CNTK, BrainScript, one process: `cntk configFile=<expanded path> <args>`, no mpirun.
        let j = job("cntkbs");
        succeeded(&c, &j).await;
        let line = output(&c, &j, "stdouterr", "stdout.txt").await;
        let candidates: Vec<String> = agents
            .iter()
            .map(|a| {
                let cfg = a.data_dir.join("mounts/afs/cfg.cntk");
                format!("cntk configFile={} rootDir=. x=plain-value (rank none)\n", cfg.display())
            })
            .collect();
        assert!(candidates.contains(&line), "{line:?} not one of {candidates:?}");

        // Distributed TensorFlow: PS 0 and worker 0 on node 0, worker 1 on node 1; the job
        // succeeds although the PS never exits.
        let j = job("tfdist");
        succeeded(&c, &j).await;
        let (ps, workers) = ("127.0.0.1:2222", "127.0.0.1:2223,127.0.0.1:2222");
        for (file, kind, index, args) in [
            ("stdout-wk-0.txt", "worker", 0, "--role chief"),
            ("stdout-wk-1.txt", "worker", 1, "--role worker"),
            ("stdout-ps-0.txt", "ps", 0, "--role ps"),
        ] {
            let text = output(&c, &j, "stdouterr", file).await;
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "{file}: {text}");
            let config: Value = serde_json::from_str(lines[0]).expect("TF_CONFIG is JSON");
            assert_eq!(
                config,
                json!({"cluster": {"ps": ["127.0.0.1:2222"], "worker": ["127.0.0.1:2223", "127.0.0.1:2222"]},
                       "task": {"type": kind, "index": index}, "environment": "cloud"}),
                "{file}"
            );
            assert_eq!(
                lines[1],
                format!("{kind} {index} task={index} ps={ps} workers={workers} args={args}"),
                "{file}"
            );
        }
        let names = output_names(&c, &j, "stdouterr").await;
        assert!(!names.iter().any(|n| n == "stdout.txt"), "no launcher: {names:?}");

        // Node 1 hosts only parameter server 1: it is stopped once the only worker ends too.
        let j = job("tfpsonly");
        succeeded(&c, &j).await;
        assert_eq!(
            output(&c, &j, "stdouterr", "stdout-ps-1.txt").await.lines().nth(1),
            Some("ps 1 task=1 ps=127.0.0.1:2222,127.0.0.1:2222 workers=127.0.0.1:2223 args=")
        );

        // TensorFlow on one node without counts: a single worker, no TF_CONFIG.
        let j = job("tfsingle");
        succeeded(&c, &j).await;
        assert_eq!(
            output(&c, &j, "stdouterr", "stdout-wk-0.txt").await,
            "no TF_CONFIG\nsingle 0 task=0 ps=- workers=- args=--single\n"
        );

        // Caffe2: one process per node, the node's rank as task index, a log per rank.
        let j = job("caffe2");
        succeeded(&c, &j).await;
        for rank in 0..2 {
            assert_eq!(
                output(&c, &j, "stdouterr", &format!("stdout-{rank}.txt")).await,
                format!("rank=-/- task={rank} args=--shard {rank} {CONTRACT}\n")
            );
        }

        // Caffe with a solver: `caffe train --solver=<file> <args>` under mpirun (2 nodes).
        let j = job("caffe");
        succeeded(&c, &j).await;
        assert_launched(&c, &j, 2).await;
        let solver = dir.join("solver.prototxt");
        let expected: Vec<String> =
            (0..2).map(|r| format!("caffe train --solver={} -gpu all (rank {r})", solver.display())).collect();
        assert_eq!(sorted_lines(&output(&c, &j, "stdouterr", "stdout.txt").await), expected);

        // Chainer and Horovod: mpirun with processCount ranks (default: one per node).
        for (name, np) in [("chainer", 2), ("horovod", 4)] {
            let j = job(name);
            succeeded(&c, &j).await;
            assert_launched(&c, &j, np).await;
            let expected: Vec<String> =
                (0..np).map(|r| format!("rank={r}/{np} task=- args={name} {CONTRACT}")).collect();
            assert_eq!(sorted_lines(&output(&c, &j, "stdouterr", "stdout.txt").await), expected, "{name}");
        }

        // Custom MPI: each of processCount ranks runs the whole command line in its shell.
        let j = job("custommpi");
        succeeded(&c, &j).await;
        assert_launched(&c, &j, 3).await;
        let expected: Vec<String> = (0..3).map(|r| format!("rank {r}/3 in custommpi plain-value")).collect();
        assert_eq!(sorted_lines(&output(&c, &j, "stdouterr", "stdout.txt").await), expected);

        // A failing rank fails the job with its exit code.
        let done = finished(&c, &job("mpifails")).await;
        assert_eq!(done["properties"]["executionState"], "failed", "{done}");
        assert_eq!(done["properties"]["executionInfo"]["exitCode"], 5, "{done}");
        assert_eq!(done["properties"]["executionInfo"]["errors"][0]["code"], "JobFailed", "{done}");

        // Custom: the command line on the master only, with the nodes' variables.
        let j = job("custom");
        succeeded(&c, &j).await;
        assert_eq!(
            output(&c, &j, "stdouterr", "stdout.txt").await,
            "127.0.0.1,127.0.0.1 127.0.0.1 127.0.0.1:6000\n127.0.0.1 slots=1\n127.0.0.1 slots=1\n"
        );
    }
}
