//! Which processes each toolkit starts on which node (`batchai-api.md` §6); `docs/toolkits.md`
//! describes the result and why each inferred choice was made.
//!
//! Command lines are shell text for `bash -c`. Fields that name files (script, config file,
//! interpreter) are expanded with the job's variables and quoted, so a path with spaces stays one
//! word; `commandLine` and `*CommandLineArgs` are the user's shell text and go in verbatim, so
//! their `$VAR`s, quotes and pipes mean what they meant on Batch AI.

use std::collections::BTreeMap;

use crate::contract::env::{JobContext, JobPaths, expansion_vars, job_env};
use crate::contract::paths::expand;
use crate::models::{CaffeSettings, CntkSettings, JobSpec, PyTorchSettings, PythonScriptSettings, TensorFlowSettings};

/// One process of a job on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// For logs and diagnostics: `main`, `job_prep`, `wk-0`, `ps-0`, `rank-3`.
    pub name: String,
    /// Run as `bash -c <command>` with [`job_env`] and then `env`, in the job's temp directory.
    pub command: String,
    /// Per-process variables (`AZ_BATCHAI_TASK_INDEX`, `TF_CONFIG`, ...), applied after the job's.
    pub env: Vec<(String, String)>,
    /// File names inside the stdouterr directory.
    pub stdout: String,
    pub stderr: String,
}

impl Process {
    /// `tag` names the log pair: none → `stdout.txt`, `wk-0` → `stdout-wk-0.txt`.
    fn new(name: &str, command: String, env: Vec<(String, String)>, tag: Option<&str>) -> Self {
        let log = |stream: &str| match tag {
            Some(t) => format!("{stream}-{t}.txt"),
            None => format!("{stream}.txt"),
        };
        Process { name: name.to_string(), command, env, stdout: log("stdout"), stderr: log("stderr") }
    }
}

/// The first port of TensorFlow tasks on each node (the port TF examples use).
const FIRST_TF_PORT: u32 = 2222;
/// File in the shared job temp that PyTorch's `file://` rendezvous creates.
const PYTORCH_INIT_FILE: &str = "pytorch_init";
/// Backend when `communicationBackend` is absent: gloo works on CPU and GPU nodes alike.
const DEFAULT_PYTORCH_BACKEND: &str = "gloo";

/// `s` as one shell word: unchanged when it has nothing the shell would interpret, else in
/// single quotes (`'` written as `'\''`).
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:=,+@%".contains(c));
    if plain { s.to_string() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

/// `command` followed by the user's arguments, verbatim.
fn with_args(command: String, args: Option<&str>) -> String {
    match args.filter(|a| !a.trim().is_empty()) {
        Some(a) => format!("{command} {a}"),
        None => command,
    }
}

/// A count from the settings, or its default; validation keeps counts positive, anything
/// unusable falls back to the default.
fn count(value: Option<i32>, default: usize) -> usize {
    value.and_then(|v| usize::try_from(v).ok()).unwrap_or(default)
}

/// What every toolkit needs to build its command lines.
struct Launch<'a> {
    ctx: &'a JobContext<'a>,
    paths: &'a JobPaths,
    env: Vec<(String, String)>,
    vars: BTreeMap<String, String>,
}

impl<'a> Launch<'a> {
    fn new(ctx: &'a JobContext<'a>, paths: &'a JobPaths) -> Self {
        Launch { ctx, paths, env: job_env(ctx, paths), vars: expansion_vars(ctx, paths) }
    }

    /// The job's nodes, at least one, so that placement never divides by zero.
    fn node_count(&self) -> usize {
        self.ctx.nodes.len().max(1)
    }

    fn address(&self, node: usize) -> &str {
        self.ctx.nodes.get(node).map_or("localhost", |p| p.address.as_str())
    }

    fn is_master(&self) -> bool {
        self.ctx.rank == 0
    }

    /// A file-naming field, expanded and quoted.
    fn path(&self, field: &str) -> String {
        shell_quote(&expand(field, &self.vars))
    }

    /// `<python> <script> <args>`; `python` from PATH unless an interpreter is given.
    fn python(&self, interpreter: Option<&str>, script: &str, args: Option<&str>) -> String {
        let python = self.path(interpreter.unwrap_or("python"));
        with_args(format!("{python} {}", self.path(script)), args)
    }

    /// `program` under OpenMPI's `mpirun` across the host file. Remote ranks are started by
    /// `orted` over SSH and inherit none of this shell's environment, hence a `-x` per variable
    /// (names only: secret values stay off the command line). `--map-by node` spreads ranks
    /// round-robin like the other toolkits (the default `processCount` = `nodeCount` is one rank
    /// per node, not all on the master); `--oversubscribe` lets a CPU node (1 slot) take more
    /// than one rank; `--bind-to none` because OpenMPI would otherwise pin each rank of a small
    /// job to one core, starving the data-loading threads of Python trainers.
    fn mpirun(&self, processes: usize, extra_env: &[(String, String)], program: &str) -> String {
        let mut names: Vec<&str> = Vec::new();
        for (name, _) in self.env.iter().chain(extra_env) {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        let exports: String = names.iter().map(|n| format!(" -x {}", shell_quote(n))).collect();
        format!(
            "mpirun -np {processes} --hostfile \"$AZ_BATCHAI_MPI_HOST_FILE\" --allow-run-as-root --oversubscribe \
             --map-by node --bind-to none{exports} {program}"
        )
    }

    /// The single launcher on the master, logging to `stdout.txt`; nothing on other nodes.
    fn master(&self, command: String) -> Vec<Process> {
        if self.is_master() { vec![Process::new("main", command, Vec::new(), None)] } else { Vec::new() }
    }

    /// `command` alone when one process is asked for, else under `mpirun`.
    fn maybe_mpi(&self, process_count: Option<i32>, command: String) -> Vec<Process> {
        match count(process_count, self.node_count()) {
            0 | 1 => self.master(command),
            n => self.master(self.mpirun(n, &[], &command)),
        }
    }
}

/// The processes this node (`ctx.rank`) runs for the job's toolkit, in start order. Empty for
/// nodes that only host (every node but the master for custom and MPI-launched toolkits).
pub fn processes(ctx: &JobContext, paths: &JobPaths) -> Vec<Process> {
    let l = Launch::new(ctx, paths);
    let spec = ctx.spec;
    if let Some(s) = &spec.cntk_settings {
        return cntk(&l, s);
    }
    if let Some(s) = &spec.py_torch_settings {
        return pytorch(&l, s);
    }
    if let Some(s) = &spec.tensor_flow_settings {
        return tensorflow(&l, s);
    }
    if let Some(s) = &spec.caffe_settings {
        return caffe(&l, s);
    }
    if let Some(s) = &spec.caffe2_settings {
        return caffe2(&l, s);
    }
    if let Some(s) = spec.chainer_settings.as_ref().or(spec.horovod_settings.as_ref()) {
        let program =
            l.python(s.python_interpreter_path.as_deref(), &s.python_script_file_path, s.command_line_args.as_deref());
        return l.master(l.mpirun(count(s.process_count, l.node_count()), &[], &program));
    }
    if let Some(s) = &spec.custom_mpi_settings {
        // Each rank runs the command line in its own shell, so compound commands (`cd x && ...`)
        // run on every rank rather than splitting around `mpirun`, and `$VAR`s resolve per rank.
        let program = format!("bash -c {}", shell_quote(&s.command_line));
        return l.master(l.mpirun(count(s.process_count, l.node_count()), &[], &program));
    }
    if let Some(s) = &spec.custom_toolkit_settings {
        return match s.command_line.as_deref().filter(|c| !c.trim().is_empty()) {
            Some(c) => l.master(c.to_string()),
            None => Vec::new(),
        };
    }
    Vec::new()
}

fn cntk(l: &Launch, s: &CntkSettings) -> Vec<Process> {
    let python = match s.language_type.as_deref() {
        Some(lang) => lang.eq_ignore_ascii_case("python"),
        None => s.python_script_file_path.is_some(),
    };
    let command = match (&s.python_script_file_path, &s.config_file_path) {
        (Some(script), _) if python => l.python(s.python_interpreter_path.as_deref(), script, None),
        (_, Some(config)) => format!("cntk configFile={}", l.path(config)),
        // Validation refuses a CNTK job naming neither file.
        _ => return Vec::new(),
    };
    l.maybe_mpi(s.process_count, with_args(command, s.command_line_args.as_deref()))
}

fn caffe(l: &Launch, s: &CaffeSettings) -> Vec<Process> {
    let command = match (&s.config_file_path, &s.python_script_file_path) {
        (Some(config), _) => format!("caffe train --solver={}", l.path(config)),
        (None, Some(script)) => l.python(s.python_interpreter_path.as_deref(), script, None),
        (None, None) => return Vec::new(),
    };
    l.maybe_mpi(s.process_count, with_args(command, s.command_line_args.as_deref()))
}

/// One process per node; the node's rank is the shard index.
fn caffe2(l: &Launch, s: &PythonScriptSettings) -> Vec<Process> {
    let rank = l.ctx.rank;
    let command =
        l.python(s.python_interpreter_path.as_deref(), &s.python_script_file_path, s.command_line_args.as_deref());
    let env = vec![("AZ_BATCHAI_TASK_INDEX".to_string(), rank.to_string())];
    vec![Process::new(&format!("rank-{rank}"), command, env, Some(&rank.to_string()))]
}

/// `processCount` ranks, rank `r` on node `r % nodes`. With the MPI backend the ranks must be
/// started by `mpirun` (torch takes rank and world size from MPI), so the master launches them
/// all and each rank still writes its own `stdout-<rank>.txt`.
fn pytorch(l: &Launch, s: &PyTorchSettings) -> Vec<Process> {
    let total = count(s.process_count, l.node_count());
    let backend = s.communication_backend.as_deref().unwrap_or(DEFAULT_PYTORCH_BACKEND).to_lowercase();
    let init = format!("file://{}/{PYTORCH_INIT_FILE}", l.paths.shared_job_temp.to_string_lossy());
    let shared = vec![
        ("AZ_BATCHAI_PYTORCH_INIT_METHOD".to_string(), init),
        ("AZ_BATCHAI_PYTORCH_BACKEND".to_string(), backend.clone()),
    ];
    let command =
        l.python(s.python_interpreter_path.as_deref(), &s.python_script_file_path, s.command_line_args.as_deref());
    if backend == "mpi" {
        // Braces and a newline so the redirection covers compound user arguments, and a
        // trailing `#` comment in them cannot swallow the `}`.
        let rank_script = format!(
            "export AZ_BATCHAI_TASK_INDEX=$OMPI_COMM_WORLD_RANK; {{ {command}\n}} \
             >\"$AZ_BATCHAI_STDOUTERR_DIR/stdout-$AZ_BATCHAI_TASK_INDEX.txt\" \
             2>\"$AZ_BATCHAI_STDOUTERR_DIR/stderr-$AZ_BATCHAI_TASK_INDEX.txt\""
        );
        let launcher = l.mpirun(total, &shared, &format!("bash -c {}", shell_quote(&rank_script)));
        return if l.is_master() { vec![Process::new("main", launcher, shared, None)] } else { Vec::new() };
    }
    (l.ctx.rank..total)
        .step_by(l.node_count())
        .map(|rank| {
            let mut env = vec![("AZ_BATCHAI_TASK_INDEX".to_string(), rank.to_string())];
            env.extend(shared.iter().cloned());
            Process::new(&format!("rank-{rank}"), command.clone(), env, Some(&rank.to_string()))
        })
        .collect()
}

/// The JSON of `TF_CONFIG`, keys in the order TensorFlow's docs show them.
fn tf_config(ps: &[String], workers: &[String], role: &str, index: usize) -> String {
    let list = |hosts: &[String]| serde_json::Value::from(hosts.to_vec()).to_string();
    format!(
        r#"{{"cluster":{{"ps":{},"worker":{}}},"task":{{"type":"{role}","index":{index}}},"environment":"cloud"}}"#,
        list(ps),
        list(workers)
    )
}

/// Without counts on one node: a single process with the master arguments. Otherwise
/// `parameterServerCount` PS (default 1) and `workerCount` workers (default one per node), each
/// role placed round-robin from node 0, PS first; a node's ports count up from 2222 in
/// placement order, so every task has its own port.
fn tensorflow(l: &Launch, s: &TensorFlowSettings) -> Vec<Process> {
    let run = |args: Option<&str>| l.python(s.python_interpreter_path.as_deref(), &s.python_script_file_path, args);
    let distributed = s.worker_count.is_some() || s.parameter_server_count.is_some() || l.ctx.nodes.len() > 1;
    if !distributed {
        if !l.is_master() {
            return Vec::new();
        }
        let env = vec![("AZ_BATCHAI_TASK_INDEX".to_string(), "0".to_string())];
        return vec![Process::new("wk-0", run(s.master_command_line_args.as_deref()), env, Some("wk-0"))];
    }
    let nodes = l.node_count();
    let mut next_port = vec![FIRST_TF_PORT; nodes];
    let mut place = |task: usize| {
        let node = task % nodes;
        let port = next_port[node];
        next_port[node] += 1;
        (node, format!("{}:{port}", l.address(node)))
    };
    let ps: Vec<(usize, String)> = (0..count(s.parameter_server_count, 1)).map(&mut place).collect();
    let workers: Vec<(usize, String)> = (0..count(s.worker_count, nodes)).map(&mut place).collect();
    let ps_hosts: Vec<String> = ps.iter().map(|(_, h)| h.clone()).collect();
    let worker_hosts: Vec<String> = workers.iter().map(|(_, h)| h.clone()).collect();
    let process = |role: &str, short: &str, index: usize, args: Option<&str>| {
        let env = vec![
            ("AZ_BATCHAI_PS_HOSTS".to_string(), ps_hosts.join(",")),
            ("AZ_BATCHAI_WORKER_HOSTS".to_string(), worker_hosts.join(",")),
            ("AZ_BATCHAI_TASK_INDEX".to_string(), index.to_string()),
            ("TF_CONFIG".to_string(), tf_config(&ps_hosts, &worker_hosts, role, index)),
        ];
        let tag = format!("{short}-{index}");
        Process::new(&tag, run(args), env, Some(&tag))
    };
    let here = |tasks: &[(usize, String)]| -> Vec<usize> {
        tasks.iter().enumerate().filter(|(_, (node, _))| *node == l.ctx.rank).map(|(i, _)| i).collect()
    };
    let mut out: Vec<Process> = here(&ps)
        .into_iter()
        .map(|i| process("ps", "ps", i, s.parameter_server_command_line_args.as_deref()))
        .collect();
    for i in here(&workers) {
        // Worker 0 is the chief: it takes the master arguments when there are any.
        let args = if i == 0 { s.master_command_line_args.as_deref() } else { None };
        out.push(process("worker", "wk", i, args.or(s.worker_command_line_args.as_deref())));
    }
    out
}

/// The ranks, of a job placed on `node_count` nodes, that host only TensorFlow parameter
/// servers. Those serve until stopped, so such a node's part never ends by itself: the job
/// ends without it once the other nodes have, and it is then told to stop. The placement
/// arithmetic is [`tensorflow`]'s: task `i` of a role on node `i % node_count`, so node `r`
/// hosts a task of a role with `n` tasks when `r < n`.
pub fn serving_only_ranks(spec: &JobSpec, node_count: usize) -> std::ops::Range<usize> {
    let Some(s) = &spec.tensor_flow_settings else { return 0..0 };
    let nodes = node_count.max(1);
    if s.worker_count.is_none() && s.parameter_server_count.is_none() && nodes == 1 {
        return 0..0;
    }
    let ps = count(s.parameter_server_count, 1).min(nodes);
    let workers = count(s.worker_count, nodes).min(nodes);
    workers..ps.max(workers)
}

/// `jobPreparation.commandLine`, run on every node before the toolkit starts.
pub fn job_preparation(ctx: &JobContext) -> Option<Process> {
    let prep = ctx.spec.job_preparation.as_ref()?;
    Some(Process::new("job_prep", prep.command_line.clone(), Vec::new(), Some("job_prep")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::env::job_paths;
    use crate::contract::env::tests::{ctx, peers, spec};
    use crate::models::JobSpec;
    use crate::protocol::Peer;
    use serde_json::json;

    /// The `-x` list of a job without inputs, outputs or user variables.
    const EXPORTS: &str = "-x AZ_BATCHAI_MOUNT_ROOT -x AZ_BATCHAI_JOB_MOUNT_ROOT -x AZ_BATCHAI_JOB_TEMP \
        -x AZ_BATCHAI_JOB_TEMP_DIR -x AZ_BATCHAI_SHARED_JOB_TEMP -x AZ_BATCHAI_STDOUTERR_DIR \
        -x AZ_BATCHAI_MPI_HOST_FILE -x AZ_BATCHAI_NUM_GPUS -x AZ_BATCH_HOST_LIST -x AZ_BATCHAI_JOB_MASTER_NODE_IP \
        -x AZ_BATCHAI_MPI_MASTER_NODE -x AZ_BATCH_MASTER_NODE";

    fn mpi(np: usize, program: &str) -> String {
        format!(
            "mpirun -np {np} --hostfile \"$AZ_BATCHAI_MPI_HOST_FILE\" --allow-run-as-root --oversubscribe \
             --map-by node --bind-to none {EXPORTS} {program}"
        )
    }

    fn run(spec: &JobSpec, nodes: &[Peer], rank: usize) -> Vec<Process> {
        let ctx = ctx(spec, nodes, rank);
        processes(&ctx, &job_paths(&ctx))
    }

    fn main(command: &str) -> Vec<Process> {
        vec![Process::new("main", command.to_string(), Vec::new(), None)]
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn quoting_leaves_plain_words_alone() {
        assert_eq!(shell_quote("/m/a-b_c.py"), "/m/a-b_c.py");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$X"), "'$X'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn custom_runs_the_command_line_on_the_master_only() {
        let s = spec(json!({"nodeCount": 2, "customToolkitSettings": {"commandLine": "echo $A | tee x"}}));
        let nodes = peers(2, 2);
        let p = run(&s, &nodes, 0);
        assert_eq!(p, main("echo $A | tee x"));
        assert_eq!((p[0].stdout.as_str(), p[0].stderr.as_str()), ("stdout.txt", "stderr.txt"));
        assert!(run(&s, &nodes, 1).is_empty());
        let empty = spec(json!({"customToolkitSettings": {}}));
        assert!(run(&empty, &peers(1, 0), 0).is_empty());
    }

    #[test]
    fn job_preparation_logs_to_its_own_files() {
        let s = spec(json!({"customToolkitSettings": {}, "jobPreparation": {"commandLine": "pip install x"}}));
        let nodes = peers(1, 0);
        let p = job_preparation(&ctx(&s, &nodes, 0)).unwrap();
        assert_eq!((p.name.as_str(), p.command.as_str()), ("job_prep", "pip install x"));
        assert_eq!((p.stdout.as_str(), p.stderr.as_str()), ("stdout-job_prep.txt", "stderr-job_prep.txt"));
        assert!(job_preparation(&ctx(&spec(json!({})), &nodes, 0)).is_none());
    }

    #[test]
    fn custom_mpi_runs_each_rank_in_a_shell() {
        let s = spec(json!({"nodeCount": 2, "customMpiSettings": {"commandLine": "cd $X && python 'my job.py'"}}));
        let nodes = peers(2, 2);
        let expected = "mpirun -np 2 --hostfile \"$AZ_BATCHAI_MPI_HOST_FILE\" --allow-run-as-root --oversubscribe \
            --map-by node --bind-to none -x AZ_BATCHAI_MOUNT_ROOT -x AZ_BATCHAI_JOB_MOUNT_ROOT -x AZ_BATCHAI_JOB_TEMP \
            -x AZ_BATCHAI_JOB_TEMP_DIR -x AZ_BATCHAI_SHARED_JOB_TEMP -x AZ_BATCHAI_STDOUTERR_DIR \
            -x AZ_BATCHAI_MPI_HOST_FILE -x AZ_BATCHAI_NUM_GPUS -x AZ_BATCH_HOST_LIST \
            -x AZ_BATCHAI_JOB_MASTER_NODE_IP -x AZ_BATCHAI_MPI_MASTER_NODE -x AZ_BATCH_MASTER_NODE \
            bash -c 'cd $X && python '\\''my job.py'\\'''";
        assert_eq!(run(&s, &nodes, 0), main(expected));
        assert!(run(&s, &nodes, 1).is_empty());
    }

    #[test]
    fn mpi_exports_user_variables_and_secrets_by_name_once() {
        let s = spec(json!({
            "horovodSettings": {"pythonScriptFilePath": "t.py", "processCount": 1},
            "environmentVariables": [{"name": "AZ_BATCHAI_NUM_GPUS", "value": "1"}, {"name": "A", "value": "b"}],
            "secrets": [{"name": "S", "value": "hush"}]
        }));
        let p = run(&s, &peers(1, 0), 0);
        assert_eq!(p, main(&mpi(1, "-x A -x S python t.py")));
        assert!(!p[0].command.contains("hush"));
    }

    #[test]
    fn horovod_and_chainer_launch_process_count_ranks_from_the_master() {
        let nodes = peers(2, 2);
        let h = spec(json!({"nodeCount": 2, "horovodSettings": {
            "pythonScriptFilePath": "$AZ_BATCHAI_MOUNT_ROOT/my scripts/train.py",
            "pythonInterpreterPath": "/opt/conda/bin/python3",
            "commandLineArgs": "--epochs 2 --out $AZ_BATCHAI_JOB_TEMP", "processCount": 4}}));
        let program = "/opt/conda/bin/python3 '/m/my scripts/train.py' --epochs 2 --out $AZ_BATCHAI_JOB_TEMP";
        assert_eq!(run(&h, &nodes, 0), main(&mpi(4, program)));
        assert!(run(&h, &nodes, 1).is_empty());
        let c = spec(json!({"nodeCount": 2, "chainerSettings": {"pythonScriptFilePath": "t.py"}}));
        assert_eq!(run(&c, &nodes, 0), main(&mpi(2, "python t.py")));
        assert!(run(&c, &nodes, 1).is_empty());
    }

    #[test]
    fn cntk_runs_python_or_brainscript_under_mpi_only_for_several_processes() {
        let one = peers(1, 1);
        let py = spec(json!({"cntkSettings": {"pythonScriptFilePath": "$AZ_BATCHAI_INPUT_S/cnn.py",
            "commandLineArgs": "--datadir $AZ_BATCHAI_INPUT_D"}, "inputDirectories": [{"id": "S", "path": "/in"}]}));
        assert_eq!(run(&py, &one, 0), main("python /in/cnn.py --datadir $AZ_BATCHAI_INPUT_D"));
        let bs = spec(json!({"cntkSettings": {"languageType": "BrainScript", "configFilePath": "/c/a b.cntk",
            "commandLineArgs": "rootDir=. parallelTrain=true"}}));
        assert_eq!(run(&bs, &one, 0), main("cntk configFile='/c/a b.cntk' rootDir=. parallelTrain=true"));
        let two = peers(2, 2);
        let multi = spec(json!({"nodeCount": 2, "cntkSettings": {"languageType": "python",
            "pythonScriptFilePath": "cnn.py", "pythonInterpreterPath": "python3"}}));
        assert_eq!(run(&multi, &two, 0), main(&mpi(2, "python3 cnn.py")));
        assert!(run(&multi, &two, 1).is_empty());
        let bs4 = spec(json!({"nodeCount": 2, "cntkSettings": {"configFilePath": "c.cntk", "processCount": 4}}));
        assert_eq!(run(&bs4, &two, 0), main(&mpi(4, "cntk configFile=c.cntk")));
    }

    #[test]
    fn caffe_trains_a_solver_or_runs_a_script() {
        let one = peers(1, 1);
        let solver = spec(json!({"caffeSettings": {"configFilePath": "$AZ_BATCHAI_MOUNT_ROOT/lenet_solver.prototxt"}}));
        assert_eq!(run(&solver, &one, 0), main("caffe train --solver=/m/lenet_solver.prototxt"));
        let script = spec(json!({"caffeSettings": {"pythonScriptFilePath": "s.py", "commandLineArgs": "-v"}}));
        assert_eq!(run(&script, &one, 0), main("python s.py -v"));
        let two = peers(2, 2);
        let multi = spec(json!({"nodeCount": 2, "caffeSettings": {"configFilePath": "s.prototxt"}}));
        assert_eq!(run(&multi, &two, 0), main(&mpi(2, "caffe train --solver=s.prototxt")));
        assert!(run(&multi, &two, 1).is_empty());
    }

    #[test]
    fn caffe2_runs_one_shard_per_node() {
        let s = spec(json!({"nodeCount": 2, "caffe2Settings": {"pythonScriptFilePath": "resnet.py",
            "commandLineArgs": "--file_store_path $AZ_BATCHAI_SHARED_JOB_TEMP"}}));
        let nodes = peers(2, 2);
        for rank in 0..2 {
            let r = rank.to_string();
            let expected = Process {
                name: format!("rank-{rank}"),
                command: "python resnet.py --file_store_path $AZ_BATCHAI_SHARED_JOB_TEMP".into(),
                env: env(&[("AZ_BATCHAI_TASK_INDEX", &r)]),
                stdout: format!("stdout-{rank}.txt"),
                stderr: format!("stderr-{rank}.txt"),
            };
            assert_eq!(run(&s, &nodes, rank), vec![expected]);
        }
    }

    #[test]
    fn pytorch_spreads_ranks_round_robin() {
        let s = spec(json!({"nodeCount": 2, "pyTorchSettings": {"pythonScriptFilePath": "mnist.py",
            "commandLineArgs": "--rank $AZ_BATCHAI_TASK_INDEX", "processCount": 5, "communicationBackend": "Gloo"}}));
        let nodes = peers(2, 2);
        let expected = |rank: &str| {
            let env = env(&[
                ("AZ_BATCHAI_TASK_INDEX", rank),
                ("AZ_BATCHAI_PYTORCH_INIT_METHOD", "file:///s/job1/pytorch_init"),
                ("AZ_BATCHAI_PYTORCH_BACKEND", "gloo"),
            ]);
            let command = "python mnist.py --rank $AZ_BATCHAI_TASK_INDEX".to_string();
            Process::new(&format!("rank-{rank}"), command, env, Some(rank))
        };
        assert_eq!(run(&s, &nodes, 0), vec![expected("0"), expected("2"), expected("4")]);
        assert_eq!(run(&s, &nodes, 1), vec![expected("1"), expected("3")]);
    }

    #[test]
    fn pytorch_defaults_to_one_gloo_rank_per_node() {
        let s = spec(json!({"nodeCount": 2, "pyTorchSettings": {"pythonScriptFilePath": "m.py"}}));
        let nodes = peers(2, 0);
        let p = run(&s, &nodes, 1);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].name.as_str(), p[0].stderr.as_str()), ("rank-1", "stderr-1.txt"));
        assert_eq!(p[0].env[2], ("AZ_BATCHAI_PYTORCH_BACKEND".to_string(), "gloo".to_string()));
    }

    #[test]
    fn pytorch_with_mpi_is_launched_by_mpirun_and_logs_per_rank() {
        let s = spec(json!({"nodeCount": 2, "pyTorchSettings": {"pythonScriptFilePath": "m.py",
            "commandLineArgs": "--x 1", "communicationBackend": "MPI", "processCount": 4}}));
        let nodes = peers(2, 2);
        let shared = env(&[
            ("AZ_BATCHAI_PYTORCH_INIT_METHOD", "file:///s/job1/pytorch_init"),
            ("AZ_BATCHAI_PYTORCH_BACKEND", "mpi"),
        ]);
        let program = "bash -c 'export AZ_BATCHAI_TASK_INDEX=$OMPI_COMM_WORLD_RANK; { python m.py --x 1\n} \
            >\"$AZ_BATCHAI_STDOUTERR_DIR/stdout-$AZ_BATCHAI_TASK_INDEX.txt\" \
            2>\"$AZ_BATCHAI_STDOUTERR_DIR/stderr-$AZ_BATCHAI_TASK_INDEX.txt\"'";
        let command = mpi(4, program).replace(
            "-x AZ_BATCH_MASTER_NODE",
            "-x AZ_BATCH_MASTER_NODE -x AZ_BATCHAI_PYTORCH_INIT_METHOD -x AZ_BATCHAI_PYTORCH_BACKEND",
        );
        assert_eq!(run(&s, &nodes, 0), vec![Process::new("main", command, shared, None)]);
        assert!(run(&s, &nodes, 1).is_empty());
    }

    #[test]
    fn tensorflow_on_one_node_without_counts_is_one_worker() {
        let s = spec(json!({"tensorFlowSettings": {"pythonScriptFilePath": "convnet.py",
            "masterCommandLineArgs": "--data $AZ_BATCHAI_INPUT_D", "workerCommandLineArgs": "--never"}}));
        let expected = Process {
            name: "wk-0".into(),
            command: "python convnet.py --data $AZ_BATCHAI_INPUT_D".into(),
            env: env(&[("AZ_BATCHAI_TASK_INDEX", "0")]),
            stdout: "stdout-wk-0.txt".into(),
            stderr: "stderr-wk-0.txt".into(),
        };
        assert_eq!(run(&s, &peers(1, 1), 0), vec![expected]);
    }

    fn tf_env(index: &str, config: &str, ps: &str, workers: &str) -> Vec<(String, String)> {
        env(&[
            ("AZ_BATCHAI_PS_HOSTS", ps),
            ("AZ_BATCHAI_WORKER_HOSTS", workers),
            ("AZ_BATCHAI_TASK_INDEX", index),
            ("TF_CONFIG", config),
        ])
    }

    #[test]
    fn distributed_tensorflow_places_tasks_round_robin_with_ports_per_node() {
        let s = spec(json!({"nodeCount": 2, "tensorFlowSettings": {"pythonScriptFilePath": "mnist.py",
            "masterCommandLineArgs": "--job_name=worker --chief", "workerCommandLineArgs": "--job_name=worker",
            "parameterServerCommandLineArgs": "--job_name=ps", "workerCount": 2, "parameterServerCount": 1}}));
        let nodes = peers(2, 2);
        let (ps, wk) = ("10.0.0.4:2222", "10.0.0.4:2223,10.0.0.5:2222");
        let cluster = r#"{"cluster":{"ps":["10.0.0.4:2222"],"worker":["10.0.0.4:2223","10.0.0.5:2222"]},"#;
        let config = |role: &str, i: usize| {
            format!(r#"{cluster}"task":{{"type":"{role}","index":{i}}},"environment":"cloud"}}"#)
        };
        let master = vec![
            Process::new(
                "ps-0",
                "python mnist.py --job_name=ps".into(),
                tf_env("0", &config("ps", 0), ps, wk),
                Some("ps-0"),
            ),
            Process::new(
                "wk-0",
                "python mnist.py --job_name=worker --chief".into(),
                tf_env("0", &config("worker", 0), ps, wk),
                Some("wk-0"),
            ),
        ];
        assert_eq!(run(&s, &nodes, 0), master);
        let other = vec![Process::new(
            "wk-1",
            "python mnist.py --job_name=worker".into(),
            tf_env("1", &config("worker", 1), ps, wk),
            Some("wk-1"),
        )];
        assert_eq!(run(&s, &nodes, 1), other);
    }

    #[test]
    fn serving_only_ranks_are_the_nodes_with_nothing_but_parameter_servers() {
        for (nodes, workers, ps) in [
            (1, None, None),
            (2, None, None),
            (2, Some(1), Some(2)),
            (3, Some(1), Some(3)),
            (3, Some(2), Some(1)),
            (4, Some(5), Some(4)),
            (3, None, Some(3)),
            (1, Some(1), Some(1)),
        ] {
            let s = spec(json!({"nodeCount": nodes, "tensorFlowSettings": {"pythonScriptFilePath": "m.py",
                "workerCount": workers, "parameterServerCount": ps}}));
            let peers = peers(nodes, 0);
            let only: Vec<usize> = (0..nodes)
                .filter(|&r| {
                    let p = run(&s, &peers, r);
                    !p.is_empty() && p.iter().all(|p| p.name.starts_with("ps-"))
                })
                .collect();
            let got: Vec<usize> = serving_only_ranks(&s, nodes).collect();
            assert_eq!(got, only, "{nodes} nodes, {workers:?} workers, {ps:?} PS");
        }
        assert_eq!(serving_only_ranks(&spec(json!({"nodeCount": 2, "customToolkitSettings": {}})), 2), 0..0);
    }

    #[test]
    fn distributed_tensorflow_defaults() {
        // Two nodes and no counts: one PS and a worker per node; worker 0 falls back to the
        // worker arguments when no master arguments are given.
        let s = spec(json!({"nodeCount": 2, "tensorFlowSettings": {"pythonScriptFilePath": "m.py",
            "workerCommandLineArgs": "--w"}}));
        let nodes = peers(2, 2);
        let p = run(&s, &nodes, 0);
        let names: Vec<(&str, &str)> = p.iter().map(|p| (p.name.as_str(), p.command.as_str())).collect();
        assert_eq!(names, [("ps-0", "python m.py"), ("wk-0", "python m.py --w")]);
        // Four workers over two nodes, PS given: ports keep counting per node.
        let s = spec(json!({"nodeCount": 2, "tensorFlowSettings": {"pythonScriptFilePath": "m.py", "workerCount": 4}}));
        let p = run(&s, &nodes, 1);
        let tags: Vec<&str> = p.iter().map(|p| p.stdout.as_str()).collect();
        assert_eq!(tags, ["stdout-wk-1.txt", "stdout-wk-3.txt"]);
        assert_eq!(p[0].env[0].1, "10.0.0.4:2222");
        assert_eq!(p[0].env[1].1, "10.0.0.4:2223,10.0.0.5:2222,10.0.0.4:2224,10.0.0.5:2223");
        assert_eq!(p[1].env[2].1, "3");
    }
}
