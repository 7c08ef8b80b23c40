//! One node's view of a job: where its directories are (`batchai-api.md` §5.2) and the
//! environment its processes see (§4).
//!
//! Path fields (`stdOutErrPathPrefix`, `outputDirectories[].pathPrefix`/`pathSuffix`,
//! `inputDirectories[].path`) are expanded here rather than by a shell, because the agent
//! creates those directories and the server lists them without ever starting a shell. They may
//! use the location variables (`AZ_BATCHAI_MOUNT_ROOT`, `_JOB_MOUNT_ROOT`, `_JOB_TEMP`,
//! `_JOB_TEMP_DIR`, `_SHARED_JOB_TEMP`); anything else is kept as written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::contract::paths::expand;
use crate::models::JobSpec;
use crate::protocol::Peer;

/// Port in `AZ_BATCH_MASTER_NODE`: Azure Batch multi-instance tasks, which Batch AI ran on,
/// publish the primary node as `ip:6000`.
const BATCH_MASTER_PORT: u16 = 6000;

/// Everything needed to compute one node's view of a job.
#[derive(Debug, Clone, Copy)]
pub struct JobContext<'a> {
    /// The full definition, secrets included.
    pub spec: &'a JobSpec,
    /// The job's name (last ARM id segment).
    pub job_name: &'a str,
    /// `jobOutputDirectoryPathSegment`.
    pub output_segment: &'a str,
    /// This node's index in `nodes`; 0 is the master.
    pub rank: usize,
    /// All nodes of the job in rank order.
    pub nodes: &'a [Peer],
    /// GPUs on this node.
    pub gpus: u32,
    /// `AZ_BATCHAI_MOUNT_ROOT`: cluster mounts live under it.
    pub mount_root: &'a Path,
    /// `AZ_BATCHAI_JOB_TEMP_DIR`: node-local root of all per-job temp directories.
    pub job_temp_root: &'a Path,
    /// `AZ_BATCHAI_SHARED_JOB_TEMP`: this job's directory on shared storage, the same on all nodes.
    pub shared_job_temp: &'a Path,
}

/// The directories of a job on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPaths {
    /// `job_temp_root/<job_name>` = `AZ_BATCHAI_JOB_TEMP`; the working directory of every process.
    pub job_temp: PathBuf,
    /// `job_temp/mounts` = `AZ_BATCHAI_JOB_MOUNT_ROOT`.
    pub job_mount_root: PathBuf,
    /// `job_temp/hostfile` = `AZ_BATCHAI_MPI_HOST_FILE`.
    pub hostfile: PathBuf,
    /// `P(stdOutErrPathPrefix)/<segment>/stdouterr` = `AZ_BATCHAI_STDOUTERR_DIR`.
    pub stdouterr: PathBuf,
    /// `(id, P(pathPrefix)/<segment>/outputs[/pathSuffix])` in spec order; ids may share a path.
    pub outputs: Vec<(String, PathBuf)>,
    pub shared_job_temp: PathBuf,
}

fn text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The location variables, in the order [`job_env`] exports them; also the only names path
/// fields can use, since they are all known before any path field is read.
fn location_env(ctx: &JobContext, job_temp: &Path, job_mount_root: &Path) -> Vec<(String, String)> {
    [
        ("AZ_BATCHAI_MOUNT_ROOT", text(ctx.mount_root)),
        ("AZ_BATCHAI_JOB_MOUNT_ROOT", text(job_mount_root)),
        ("AZ_BATCHAI_JOB_TEMP", text(job_temp)),
        ("AZ_BATCHAI_JOB_TEMP_DIR", text(ctx.job_temp_root)),
        ("AZ_BATCHAI_SHARED_JOB_TEMP", text(ctx.shared_job_temp)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A directory prefix without its trailing `/`s, so `prefix/` and `prefix` name the same tree
/// (the env value shows no `//`); `/` stays the root.
fn dir(prefix: &str) -> &str {
    match prefix.trim_end_matches('/') {
        "" if prefix.starts_with('/') => "/",
        trimmed => trimmed,
    }
}

pub fn job_paths(ctx: &JobContext) -> JobPaths {
    let job_temp = ctx.job_temp_root.join(ctx.job_name);
    let job_mount_root = job_temp.join("mounts");
    let vars: BTreeMap<_, _> = location_env(ctx, &job_temp, &job_mount_root).into_iter().collect();
    // A prefix that is still relative after expansion is taken from the processes' working
    // directory, as a shell would, so every path here is absolute and independent of the
    // agent's own working directory.
    let root = |prefix: &str| job_temp.join(dir(&expand(prefix, &vars))).join(ctx.output_segment);
    let outputs = ctx
        .spec
        .output_directories
        .iter()
        .flatten()
        .map(|o| {
            let mut path = root(&o.path_prefix).join("outputs");
            // Slashes trimmed: a leading one would make `push` replace the whole path.
            let suffix = o.path_suffix.as_deref().map(|s| expand(s, &vars)).unwrap_or_default();
            let suffix = suffix.trim_matches('/');
            if !suffix.is_empty() {
                path.push(suffix);
            }
            (o.id.clone(), path)
        })
        .collect();
    JobPaths {
        stdouterr: root(&ctx.spec.std_out_err_path_prefix).join("stdouterr"),
        hostfile: job_temp.join("hostfile"),
        outputs,
        shared_job_temp: ctx.shared_job_temp.to_path_buf(),
        job_mount_root,
        job_temp,
    }
}

/// The service's variables and the user's `environmentVariables`: everything but secrets.
fn visible_env(ctx: &JobContext, paths: &JobPaths) -> Vec<(String, String)> {
    let mut env = location_env(ctx, &paths.job_temp, &paths.job_mount_root);
    let locations: BTreeMap<_, _> = env.iter().cloned().collect();
    env.push(("AZ_BATCHAI_STDOUTERR_DIR".into(), text(&paths.stdouterr)));
    env.push(("AZ_BATCHAI_MPI_HOST_FILE".into(), text(&paths.hostfile)));
    env.push(("AZ_BATCHAI_NUM_GPUS".into(), ctx.gpus.to_string()));
    for input in ctx.spec.input_directories.iter().flatten() {
        env.push((format!("AZ_BATCHAI_INPUT_{}", input.id), expand(&input.path, &locations)));
    }
    for (id, path) in &paths.outputs {
        env.push((format!("AZ_BATCHAI_OUTPUT_{id}"), text(path)));
    }
    if let Some(master) = ctx.nodes.first() {
        let hosts: Vec<&str> = ctx.nodes.iter().map(|p| p.address.as_str()).collect();
        env.push(("AZ_BATCH_HOST_LIST".into(), hosts.join(",")));
        env.push(("AZ_BATCHAI_JOB_MASTER_NODE_IP".into(), master.address.clone()));
        env.push(("AZ_BATCHAI_MPI_MASTER_NODE".into(), master.address.clone()));
        env.push(("AZ_BATCH_MASTER_NODE".into(), format!("{}:{BATCH_MASTER_PORT}", master.address)));
    }
    // Each value sees the service's variables and the user variables before it, as a
    // sequence of `export`s in a shell would.
    let mut vars: BTreeMap<_, _> = env.iter().cloned().collect();
    for v in ctx.spec.environment_variables.iter().flatten() {
        let value = expand(&v.value, &vars);
        vars.insert(v.name.clone(), value.clone());
        env.push((v.name.clone(), value));
    }
    env
}

/// The environment of the job's processes on this node (also of job preparation), in a
/// stable order; a later entry with the same name overrides an earlier one. Per-process
/// variables (`AZ_BATCHAI_TASK_INDEX`, `TF_CONFIG`, ...) come with each
/// [`Process`](crate::contract::toolkit::Process).
///
/// Secret values are exported as written, never expanded: a `$` in a password is not a
/// variable. A secret given only as a Key Vault reference cannot be resolved here; it is
/// skipped (validation refuses such jobs before they reach a node).
pub fn job_env(ctx: &JobContext, paths: &JobPaths) -> Vec<(String, String)> {
    let mut env = visible_env(ctx, paths);
    for s in ctx.spec.secrets.iter().flatten() {
        if let Some(value) = &s.value {
            env.push((s.name.clone(), value.clone()));
        }
    }
    env
}

/// The variables the fields of a toolkit's settings (script and config paths, interpreter) are
/// expanded with. Secrets are left out so they never appear on a command line, where `ps` and
/// the diagnostics would show them.
pub(crate) fn expansion_vars(ctx: &JobContext, paths: &JobPaths) -> BTreeMap<String, String> {
    visible_env(ctx, paths).into_iter().collect()
}

/// OpenMPI host file: one line per node, `<address> slots=<n>`, where `n` is `slots` or else the
/// peer's GPU count (at least 1, so CPU nodes still take a rank).
pub fn hostfile(nodes: &[Peer], slots: Option<u32>) -> String {
    nodes.iter().map(|p| format!("{} slots={}\n", p.address, slots.unwrap_or(p.gpus.max(1)))).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn peers(n: usize, gpus: u32) -> Vec<Peer> {
        (0..n).map(|i| Peer { id: format!("n{i}"), address: format!("10.0.0.{}", 4 + i), gpus }).collect()
    }

    pub(crate) fn spec(extra: serde_json::Value) -> JobSpec {
        let mut v =
            json!({"cluster": {"id": "c"}, "nodeCount": 1, "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs"});
        if let (Some(base), Some(more)) = (v.as_object_mut(), extra.as_object()) {
            base.extend(more.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    pub(crate) fn ctx<'a>(spec: &'a JobSpec, nodes: &'a [Peer], rank: usize) -> JobContext<'a> {
        JobContext {
            spec,
            job_name: "job1",
            output_segment: "sub/rg/workspaces/w/experiments/e/jobs/job1/uid",
            rank,
            nodes,
            gpus: nodes.get(rank).map_or(0, |p| p.gpus),
            mount_root: Path::new("/m"),
            job_temp_root: Path::new("/t/jobs"),
            shared_job_temp: Path::new("/s/job1"),
        }
    }

    const SEG: &str = "sub/rg/workspaces/w/experiments/e/jobs/job1/uid";

    #[test]
    fn directories_follow_the_documented_layout() {
        let spec = spec(json!({
            "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs/",
            "outputDirectories": [
                {"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs", "pathSuffix": "files"},
                {"id": "A", "pathPrefix": "${AZ_BATCHAI_MOUNT_ROOT}/afs/"},
                {"id": "B", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs", "pathSuffix": "/"},
                {"id": "LOCAL", "pathPrefix": "$AZ_BATCHAI_JOB_TEMP", "pathSuffix": "/deep/er/"},
                {"id": "REL", "pathPrefix": "rel"},
                {"id": "ROOT", "pathPrefix": "/"}
            ]
        }));
        let nodes = peers(1, 0);
        let p = job_paths(&ctx(&spec, &nodes, 0));
        assert_eq!(p.job_temp, Path::new("/t/jobs/job1"));
        assert_eq!(p.job_mount_root, Path::new("/t/jobs/job1/mounts"));
        assert_eq!(p.hostfile, Path::new("/t/jobs/job1/hostfile"));
        assert_eq!(p.shared_job_temp, Path::new("/s/job1"));
        assert_eq!(text(&p.stdouterr), format!("/m/afs/{SEG}/stdouterr"));
        let outputs: Vec<(&str, String)> = p.outputs.iter().map(|(id, p)| (id.as_str(), text(p))).collect();
        assert_eq!(
            outputs,
            [
                ("MODEL", format!("/m/afs/{SEG}/outputs/files")),
                ("A", format!("/m/afs/{SEG}/outputs")),
                ("B", format!("/m/afs/{SEG}/outputs")),
                ("LOCAL", format!("/t/jobs/job1/{SEG}/outputs/deep/er")),
                ("REL", format!("/t/jobs/job1/rel/{SEG}/outputs")),
                ("ROOT", format!("/{SEG}/outputs")),
            ]
        );
    }

    #[test]
    fn stdouterr_prefix_with_and_without_trailing_slash_is_one_directory() {
        let nodes = peers(1, 0);
        let with = spec(json!({"stdOutErrPathPrefix": "/data//"}));
        let without = spec(json!({"stdOutErrPathPrefix": "/data"}));
        let a = job_paths(&ctx(&with, &nodes, 0)).stdouterr;
        assert_eq!(text(&a), format!("/data/{SEG}/stdouterr"));
        assert_eq!(a, job_paths(&ctx(&without, &nodes, 0)).stdouterr);
    }

    #[test]
    fn environment_lists_service_variables_then_user_variables_then_secrets() {
        let spec = spec(json!({
            "nodeCount": 2,
            "inputDirectories": [
                {"id": "DATASET", "path": "$AZ_BATCHAI_MOUNT_ROOT/afs/data"},
                {"id": "SCRIPT", "path": "${AZ_BATCHAI_JOB_MOUNT_ROOT}/bfs/$HOME"}
            ],
            "outputDirectories": [{"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_JOB_TEMP"}],
            "environmentVariables": [
                {"name": "DATA", "value": "$AZ_BATCHAI_INPUT_DATASET/train"},
                {"name": "MORE", "value": "${DATA}:$AZ_BATCHAI_NUM_GPUS:$PATH"}
            ],
            "secrets": [
                {"name": "TOKEN", "value": "p$AZ_BATCHAI_JOB_TEMP"},
                {"name": "VAULT", "valueSecretReference": {"sourceVault": {"id": "v"}, "secretUrl": "u"}}
            ]
        }));
        let nodes = peers(2, 2);
        let ctx = ctx(&spec, &nodes, 1);
        let env = job_env(&ctx, &job_paths(&ctx));
        let expected = [
            ("AZ_BATCHAI_MOUNT_ROOT", "/m".to_string()),
            ("AZ_BATCHAI_JOB_MOUNT_ROOT", "/t/jobs/job1/mounts".into()),
            ("AZ_BATCHAI_JOB_TEMP", "/t/jobs/job1".into()),
            ("AZ_BATCHAI_JOB_TEMP_DIR", "/t/jobs".into()),
            ("AZ_BATCHAI_SHARED_JOB_TEMP", "/s/job1".into()),
            ("AZ_BATCHAI_STDOUTERR_DIR", format!("/m/afs/{SEG}/stdouterr")),
            ("AZ_BATCHAI_MPI_HOST_FILE", "/t/jobs/job1/hostfile".into()),
            ("AZ_BATCHAI_NUM_GPUS", "2".into()),
            ("AZ_BATCHAI_INPUT_DATASET", "/m/afs/data".into()),
            ("AZ_BATCHAI_INPUT_SCRIPT", "/t/jobs/job1/mounts/bfs/$HOME".into()),
            ("AZ_BATCHAI_OUTPUT_MODEL", format!("/t/jobs/job1/{SEG}/outputs")),
            ("AZ_BATCH_HOST_LIST", "10.0.0.4,10.0.0.5".into()),
            ("AZ_BATCHAI_JOB_MASTER_NODE_IP", "10.0.0.4".into()),
            ("AZ_BATCHAI_MPI_MASTER_NODE", "10.0.0.4".into()),
            ("AZ_BATCH_MASTER_NODE", "10.0.0.4:6000".into()),
            ("DATA", "/m/afs/data/train".into()),
            ("MORE", "/m/afs/data/train:2:$PATH".into()),
            ("TOKEN", "p$AZ_BATCHAI_JOB_TEMP".into()),
        ];
        let expected: Vec<(String, String)> = expected.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(env, expected);
        let vars = expansion_vars(&ctx, &job_paths(&ctx));
        assert_eq!(vars.get("DATA").map(String::as_str), Some("/m/afs/data/train"));
        assert!(!vars.contains_key("TOKEN"), "secrets must not reach command lines");
    }

    #[test]
    fn a_job_without_nodes_has_no_master_variables() {
        let spec = spec(json!({}));
        let env = job_env(&ctx(&spec, &[], 0), &job_paths(&ctx(&spec, &[], 0)));
        assert!(env.iter().all(|(k, _)| !k.contains("MASTER") && k != "AZ_BATCH_HOST_LIST"));
        assert!(env.iter().any(|(k, v)| k == "AZ_BATCHAI_NUM_GPUS" && v == "0"));
    }

    #[test]
    fn hostfile_gives_each_node_its_gpus_as_slots() {
        let mut nodes = peers(2, 4);
        nodes[1].gpus = 0;
        assert_eq!(hostfile(&nodes, None), "10.0.0.4 slots=4\n10.0.0.5 slots=1\n");
        assert_eq!(hostfile(&nodes, Some(8)), "10.0.0.4 slots=8\n10.0.0.5 slots=8\n");
        assert_eq!(hostfile(&[], None), "");
    }
}
