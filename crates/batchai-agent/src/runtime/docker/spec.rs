//! Pure translations from a job's process to what the Docker API wants: the reference to pull,
//! the container's name and labels, and its create body.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig};

use crate::runtime::{ContainerSpec, ProcessSpec, TaskOwner};

pub(super) const LABEL_NODE: &str = "io.batchai.node";
pub(super) const LABEL_JOB: &str = "io.batchai.job";
pub(super) const LABEL_EPOCH: &str = "io.batchai.epoch";
pub(super) const LABEL_PROCESS: &str = "io.batchai.process";

/// The container's entry point: appends its output to the job's files (bind-mounted at the same
/// paths) and runs the command line with `bash -c` as Batch AI did, or `sh -c` in images
/// without bash. Output written by the process itself, not relayed by the agent, is complete
/// whatever happens to the agent. `$0` names the script, then stdout, stderr, command.
const ENTRYPOINT: &str = r#"exec >>"$1" 2>>"$2"; shift 2; if command -v bash >/dev/null 2>&1; then exec bash -c "$1"; else exec /bin/sh -c "$1"; fi"#;

/// The reference to pull: Docker pulls every tag of a repository named without one.
pub(super) fn with_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || image.contains('@') { image.to_owned() } else { format!("{image}:latest") }
}

/// A name an operator can read in `docker ps`, unique per node, task and process.
pub(super) fn container_name(owner: &TaskOwner, process: &str) -> String {
    use sha2::{Digest, Sha256};
    let job = owner.job.rsplit('/').find(|s| !s.is_empty()).unwrap_or("job");
    let clean = |s: &str, max: usize| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).take(max).collect()
    };
    let digest = Sha256::digest(format!("{}\n{}\n{}\n{process}", owner.node, owner.job, owner.epoch).as_bytes());
    let hash: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    format!("batchai-{}-{}-{}-{hash}", clean(job, 40), owner.epoch, clean(process, 20))
}

pub(super) fn labels(owner: &TaskOwner, process: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_NODE.to_owned(), owner.node.clone()),
        (LABEL_JOB.to_owned(), owner.job.clone()),
        (LABEL_EPOCH.to_owned(), owner.epoch.to_string()),
        (LABEL_PROCESS.to_owned(), process.to_owned()),
    ])
}

/// `label=key=value` filters selecting `owner`'s containers (or the whole node's without a job).
pub(super) fn filters(node: &str, task: Option<&TaskOwner>) -> HashMap<String, Vec<String>> {
    let mut labels = vec![format!("{LABEL_NODE}={node}")];
    if let Some(task) = task {
        labels.push(format!("{LABEL_JOB}={}", task.job));
        labels.push(format!("{LABEL_EPOCH}={}", task.epoch));
    }
    HashMap::from([("label".to_owned(), labels)])
}

/// Docker's `--shm-size` syntax (`RAMInBytes`): a number and an optional unit b, k, m, g (with
/// or without a trailing `b`, any case), binary multiples.
pub(super) fn parse_size(text: &str) -> Result<i64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let multiple: i64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("shmSize {text:?} has an unknown unit (use b, k, m, g or t)")),
    };
    let value: f64 = number.parse().map_err(|_| format!("shmSize {text:?} is not a size such as 8g"))?;
    let bytes = value * multiple as f64;
    if !(1.0..9.0e18).contains(&bytes) {
        return Err(format!("shmSize {text:?} is out of range"));
    }
    // In range by the check above; sizes are whole bytes.
    Ok(bytes as i64)
}

/// The GPUs as a Docker device request, by UUID; none when the container gets no GPU.
pub(super) fn device_requests(gpus: &[String]) -> Option<Vec<DeviceRequest>> {
    (!gpus.is_empty()).then(|| {
        vec![DeviceRequest {
            driver: Some("nvidia".to_owned()),
            device_ids: Some(gpus.to_vec()),
            capabilities: Some(vec![vec!["gpu".to_owned()]]),
            ..DeviceRequest::default()
        }]
    })
}

/// The create body for `spec` in `container`, from `image`, on `network`.
pub(super) fn create_body(
    spec: &ProcessSpec,
    container: &ContainerSpec,
    image: &str,
    network: &str,
) -> Result<ContainerCreateBody, String> {
    let shm_size = container.shm_size.as_deref().map(parse_size).transpose()?;
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let binds = container.mounts.iter().map(|(host, inside)| format!("{}:{}", path(host), path(inside))).collect();
    Ok(ContainerCreateBody {
        image: Some(image.to_owned()),
        entrypoint: Some(vec!["/bin/sh".to_owned(), "-c".to_owned(), ENTRYPOINT.to_owned(), "batchai-job".to_owned()]),
        cmd: Some(vec![path(&spec.stdout), path(&spec.stderr), spec.command.clone()]),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: Some(path(&spec.cwd)),
        labels: Some(labels(&container.owner, &container.process)),
        // Jobs run as root in their containers, as on Batch AI (recipes pass
        // `--allow-run-as-root` to mpirun).
        user: Some("0:0".to_owned()),
        host_config: Some(HostConfig {
            binds: Some(binds),
            network_mode: Some(network.to_owned()),
            shm_size,
            // An init as PID 1 passes the stop signal on (a shell as PID 1 ignores SIGTERM)
            // and reaps what the job orphans.
            init: Some(true),
            device_requests: device_requests(&container.gpus),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn owner() -> TaskOwner {
        TaskOwner {
            node: "node-1".into(),
            job: "/subscriptions/s/resourceGroups/g/providers/Microsoft.BatchAI/workspaces/w/experiments/e/jobs/My.Job"
                .into(),
            epoch: 3,
        }
    }

    #[test]
    fn pulls_name_a_tag() {
        assert_eq!(with_tag("ubuntu"), "ubuntu:latest");
        assert_eq!(with_tag("localhost:5000/team/app"), "localhost:5000/team/app:latest");
        assert_eq!(with_tag("localhost:5000/team/app:1.2"), "localhost:5000/team/app:1.2");
        assert_eq!(with_tag("app@sha256:abcd"), "app@sha256:abcd");
    }

    #[test]
    fn container_names_are_readable_and_distinct_per_node_task_and_process() {
        let name = container_name(&owner(), "rank-0");
        assert!(name.starts_with("batchai-My-Job-3-rank-0-"), "{name}");
        assert_ne!(name, container_name(&owner(), "jobprep"));
        assert_ne!(name, container_name(&TaskOwner { node: "node-2".into(), ..owner() }, "rank-0"));
        assert_ne!(name, container_name(&TaskOwner { epoch: 4, ..owner() }, "rank-0"));
    }

    #[test]
    fn shm_sizes_read_as_docker_reads_them() {
        assert_eq!(parse_size("16gb"), Ok(16 << 30));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("8q").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn gpus_are_requested_from_the_nvidia_driver_by_uuid() {
        assert_eq!(device_requests(&[]), None);
        let requests = device_requests(&["GPU-a".into(), "GPU-b".into()]).unwrap();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].driver.as_deref(), Some("nvidia"));
        assert_eq!(requests[0].device_ids, Some(vec!["GPU-a".to_owned(), "GPU-b".to_owned()]));
        assert_eq!(requests[0].capabilities, Some(vec![vec!["gpu".to_owned()]]));
        assert_eq!(requests[0].count, None, "by id, not a count");
    }

    #[test]
    fn the_body_mounts_paths_alike_labels_the_owner_and_wraps_the_command() {
        let spec = ProcessSpec {
            name: "My.Job/rank-0".into(),
            command: "echo $A".into(),
            env: vec![("A".into(), "1".into())],
            cwd: PathBuf::from("/data/jobs/My.Job/wd"),
            stdout: PathBuf::from("/out/stdout.txt"),
            stderr: PathBuf::from("/out/stderr.txt"),
            container: None,
        };
        let container = ContainerSpec {
            image: "ubuntu".into(),
            registry: None,
            gpus: vec!["GPU-a".into()],
            mounts: vec![(PathBuf::from("/data"), PathBuf::from("/data"))],
            shm_size: Some("1g".into()),
            owner: owner(),
            process: "rank-0".into(),
        };
        let body = create_body(&spec, &container, "batchai/busybox:test", "host").unwrap();
        assert_eq!(body.image.as_deref(), Some("batchai/busybox:test"));
        assert_eq!(body.cmd, Some(vec!["/out/stdout.txt".into(), "/out/stderr.txt".into(), "echo $A".into()]));
        assert_eq!(body.env, Some(vec!["A=1".to_owned()]));
        assert_eq!(body.working_dir.as_deref(), Some("/data/jobs/My.Job/wd"));
        let labels = body.labels.unwrap();
        assert_eq!(labels[LABEL_EPOCH], "3");
        assert_eq!(labels[LABEL_PROCESS], "rank-0");
        let host = body.host_config.unwrap();
        assert_eq!(host.binds, Some(vec!["/data:/data".to_owned()]));
        assert_eq!((host.shm_size, host.init, host.network_mode.as_deref()), (Some(1 << 30), Some(true), Some("host")));
        assert!(host.device_requests.is_some());
        let bad = ContainerSpec { shm_size: Some("huge".into()), ..container };
        assert!(create_body(&spec, &bad, "i", "host").unwrap_err().contains("huge"));
    }
}
