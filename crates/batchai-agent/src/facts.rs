//! What this machine is and has, as reported to the server in [`NodeFacts`] on join and
//! whenever it changes.
//!
//! Discovery never fails: a fact that cannot be read is reported as empty or zero (and logged
//! at debug), because the server compares the facts with the VM sizes the node claims and
//! answers with warnings, which tell the operator more than an agent that refuses to start.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use batchai_core::protocol::{Gpu, NodeFacts};

/// The `nvidia-smi` query whose output [`parse_nvidia_smi`] reads.
pub const NVIDIA_SMI_ARGS: [&str; 2] = ["--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"];
/// The `nvidia-smi` query whose output [`parse_gpu_usage`] reads.
pub const NVIDIA_SMI_USAGE_ARGS: [&str; 2] =
    ["--query-gpu=uuid,utilization.gpu,memory.used,memory.total", "--format=csv,noheader,nounits"];

/// One GPU's use now, as `nvidia-smi` reports it (`None`: not supported by the GPU).
#[derive(Debug, Clone, PartialEq)]
pub struct GpuUsage {
    pub uuid: String,
    /// Busy fraction of the last sample period, 0 to 1.
    pub utilization: Option<f64>,
    pub memory_used_bytes: Option<f64>,
    pub memory_total_bytes: Option<f64>,
}

/// What discovery cannot find out by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactsConfig {
    /// The address others reach this node at; `None` reports `127.0.0.1`, right for a
    /// single-machine setup only.
    pub address: Option<String>,
    pub ssh_port: u16,
    /// VM sizes this node serves; `*` serves every size.
    pub vm_sizes: Vec<String>,
    /// Path or name (looked up in `PATH`) of `nvidia-smi`.
    pub nvidia_smi: PathBuf,
    /// How long `nvidia-smi` may take: it can hang on a GPU that has fallen off the bus, and
    /// that must not keep the agent from starting.
    pub nvidia_smi_timeout: Duration,
}

impl Default for FactsConfig {
    fn default() -> Self {
        Self {
            address: None,
            ssh_port: 22,
            vm_sizes: Vec::new(),
            nvidia_smi: PathBuf::from("nvidia-smi"),
            nvidia_smi_timeout: Duration::from_secs(30),
        }
    }
}

/// Reads the facts of this machine. Blocking (it reads `/proc` and runs `nvidia-smi`): call it
/// from `tokio::task::spawn_blocking` in async code.
pub fn discover(cfg: &FactsConfig) -> NodeFacts {
    NodeFacts {
        hostname: hostname(),
        address: cfg.address.clone().unwrap_or_else(|| "127.0.0.1".to_owned()),
        ssh_port: cfg.ssh_port,
        cores: cores(),
        memory_mb: memory_mb(),
        gpus: gpus(cfg),
        vm_sizes: cfg.vm_sizes.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        // Filled in by the agent, which knows its runtime.
        runtime: String::new(),
    }
}

/// Parses the output of `nvidia-smi` run with [`NVIDIA_SMI_ARGS`]: one
/// `index, uuid, name, memory MiB` line per GPU. Blank and malformed lines are skipped; a
/// memory size the driver does not report (`[N/A]`) reads as 0.
pub fn parse_nvidia_smi(output: &str) -> Vec<Gpu> {
    output.lines().filter(|line| !line.trim().is_empty()).filter_map(parse_gpu_line).collect()
}

fn parse_gpu_line(line: &str) -> Option<Gpu> {
    let mut fields = line.splitn(3, ',');
    let index = fields.next()?.trim().parse().ok()?;
    let uuid = fields.next()?.trim();
    // The name sits between the uuid and the memory; splitting the memory off from the right
    // keeps a name with a comma in it whole.
    let (name, memory) = fields.next()?.rsplit_once(',')?;
    let (name, memory) = (name.trim(), memory.trim());
    if uuid.is_empty() || name.is_empty() {
        return None;
    }
    let memory_mb = if memory.starts_with('[') { 0 } else { memory.parse().ok()? };
    Some(Gpu { index, uuid: uuid.to_owned(), model: name.to_owned(), memory_mb })
}

/// Reads `nvidia-smi`'s [`NVIDIA_SMI_USAGE_ARGS`] output; unreadable lines are left out.
pub fn parse_gpu_usage(output: &str) -> Vec<GpuUsage> {
    let number = |field: &str| field.trim().parse::<f64>().ok();
    output
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let [uuid, util, used, total] = fields.as_slice() else { return None };
            let uuid = uuid.trim();
            (!uuid.is_empty()).then(|| GpuUsage {
                uuid: uuid.to_owned(),
                utilization: number(util).map(|p| p / 100.0),
                memory_used_bytes: number(used).map(|mib| mib * 1024.0 * 1024.0),
                memory_total_bytes: number(total).map(|mib| mib * 1024.0 * 1024.0),
            })
        })
        .collect()
}

/// Each GPU's use now; empty when `nvidia-smi` is missing or fails. Blocking, like
/// [`discover`].
pub fn gpu_usage(cfg: &FactsConfig) -> Vec<GpuUsage> {
    match run_nvidia_smi(cfg, &NVIDIA_SMI_USAGE_ARGS) {
        Ok(output) => parse_gpu_usage(&output),
        Err(err) => {
            tracing::debug!(nvidia_smi = %cfg.nvidia_smi.display(), error = %err, "no GPU usage");
            Vec::new()
        }
    }
}

/// `MemTotal` of `/proc/meminfo` (in kB) as MiB.
pub fn parse_meminfo_total_mb(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|line| line.strip_prefix("MemTotal:"))?;
    let kb: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb / 1024)
}

fn hostname() -> String {
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname")
        && !name.trim().is_empty()
    {
        return name.trim().to_owned();
    }
    match Command::new("hostname").stdin(Stdio::null()).stderr(Stdio::null()).output() {
        Ok(out) if out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty() => {
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
        other => {
            tracing::debug!(result = ?other.map(|out| out.status), "cannot read the hostname");
            "localhost".to_owned()
        }
    }
}

fn cores() -> u32 {
    // Honours CPU affinity and cgroup quotas, so a node limited to part of a machine
    // reports what it may use.
    match std::thread::available_parallelism() {
        Ok(n) => u32::try_from(n.get()).unwrap_or(u32::MAX),
        Err(err) => {
            tracing::debug!(error = %err, "cannot read the number of cores");
            1
        }
    }
}

fn memory_mb() -> u64 {
    match std::fs::read_to_string("/proc/meminfo") {
        Ok(meminfo) => parse_meminfo_total_mb(&meminfo).unwrap_or_else(|| {
            tracing::debug!("no MemTotal in /proc/meminfo");
            0
        }),
        Err(err) => {
            tracing::debug!(error = %err, "cannot read /proc/meminfo");
            0
        }
    }
}

fn gpus(cfg: &FactsConfig) -> Vec<Gpu> {
    match run_nvidia_smi(cfg, &NVIDIA_SMI_ARGS) {
        Ok(output) => {
            let gpus = parse_nvidia_smi(&output);
            if gpus.is_empty() && !output.trim().is_empty() {
                tracing::debug!(output = %output.trim(), "nvidia-smi listed no GPU that could be read");
            }
            gpus
        }
        Err(err) => {
            // The normal case on a machine without NVIDIA GPUs.
            tracing::debug!(nvidia_smi = %cfg.nvidia_smi.display(), error = %err, "no GPUs found");
            Vec::new()
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SmiError {
    #[error("cannot run it: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("cannot read its output: {0}")]
    Read(#[source] std::io::Error),
    #[error("it did not answer within {0:?}")]
    Timeout(Duration),
    #[error("it failed ({status}): {output}")]
    Failed { status: std::process::ExitStatus, output: String },
}

fn run_nvidia_smi(cfg: &FactsConfig, args: &[&str]) -> Result<String, SmiError> {
    let mut child = Command::new(&cfg.nvidia_smi)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(SmiError::Spawn)?;
    let mut stdout =
        child.stdout.take().ok_or_else(|| SmiError::Read(std::io::Error::other("stdout was not captured")))?;
    // Read on a thread so this one can give up after the timeout; std has no timed read.
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::Builder::new().name("nvidia-smi".to_owned()).spawn(move || {
        let mut output = String::new();
        let read = stdout.read_to_string(&mut output).map(|_| output);
        // The receiver is gone only if discovery already gave up; nothing left to tell.
        let _ = tx.send(read);
    });
    let read = match reader {
        Ok(_) => rx.recv_timeout(cfg.nvidia_smi_timeout).ok(),
        Err(err) => Some(Err(err)),
    };
    let Some(read) = read else {
        // Not reaped yet, so the pid is still this child's: killing it cannot hit another.
        if let Err(err) = child.kill() {
            tracing::debug!(error = %err, "cannot kill nvidia-smi");
        }
        let _status = child.wait();
        return Err(SmiError::Timeout(cfg.nvidia_smi_timeout));
    };
    let status = child.wait().map_err(SmiError::Read)?;
    let output = read.map_err(SmiError::Read)?;
    if status.success() { Ok(output) } else { Err(SmiError::Failed { status, output: output.trim().to_owned() }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_gpu_usage_lines_and_skips_what_is_not_supported() {
        let output = "\
GPU-5a2f1d0c-3b7e-8e44-9c41-0d7b2a6f4e13, 37, 1024, 81559
GPU-c1e0b7aa-62f4-4f1f-a5d9-3e8b1c7d9a20, [Not Supported], [N/A], 81559
not a usage line
";
        let usage = parse_gpu_usage(output);
        assert_eq!(usage.len(), 2, "{usage:?}");
        assert_eq!(usage[0].uuid, "GPU-5a2f1d0c-3b7e-8e44-9c41-0d7b2a6f4e13");
        assert_eq!(usage[0].utilization, Some(0.37));
        assert_eq!(usage[0].memory_used_bytes, Some(1024.0 * 1024.0 * 1024.0));
        assert_eq!((usage[1].utilization, usage[1].memory_used_bytes), (None, None));
        assert_eq!(usage[1].memory_total_bytes, Some(81559.0 * 1024.0 * 1024.0));
    }

    #[test]
    fn parses_h100_and_k80_lines() {
        let output = "\
0, GPU-5a2f1d0c-3b7e-8e44-9c41-0d7b2a6f4e13, NVIDIA H100 80GB HBM3, 81559
1, GPU-c1e0b7aa-62f4-4f1f-a5d9-3e8b1c7d9a20, NVIDIA H100 80GB HBM3, 81559
";
        let gpus = parse_nvidia_smi(output);
        assert_eq!(
            gpus,
            vec![
                Gpu {
                    index: 0,
                    uuid: "GPU-5a2f1d0c-3b7e-8e44-9c41-0d7b2a6f4e13".to_owned(),
                    model: "NVIDIA H100 80GB HBM3".to_owned(),
                    memory_mb: 81559,
                },
                Gpu {
                    index: 1,
                    uuid: "GPU-c1e0b7aa-62f4-4f1f-a5d9-3e8b1c7d9a20".to_owned(),
                    model: "NVIDIA H100 80GB HBM3".to_owned(),
                    memory_mb: 81559,
                },
            ]
        );

        let k80 = parse_nvidia_smi("0, GPU-8a3c1e52-7f0b-2d6e-1b9a-55c2e0f4d7a1, Tesla K80, 11441\r\n");
        assert_eq!(
            k80,
            vec![Gpu {
                index: 0,
                uuid: "GPU-8a3c1e52-7f0b-2d6e-1b9a-55c2e0f4d7a1".to_owned(),
                model: "Tesla K80".to_owned(),
                memory_mb: 11441,
            }]
        );
    }

    #[test]
    fn skips_blank_and_malformed_lines() {
        let output = "
\t
2, GPU-aaaa, Tesla K80, 11441
NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.
x, GPU-bbbb, Tesla K80, 11441
3, GPU-cccc, Tesla K80
4, , Tesla K80, 11441
5, GPU-dddd, , 11441
6, GPU-eeee, Tesla K80, lots
-1, GPU-ffff, Tesla K80, 11441

7, GPU-gggg, Tesla K80, 11441
";
        let gpus = parse_nvidia_smi(output);
        let indexes: Vec<u32> = gpus.iter().map(|gpu| gpu.index).collect();
        assert_eq!(indexes, vec![2, 7]);
        assert!(parse_nvidia_smi("").is_empty());
    }

    #[test]
    fn unreported_memory_reads_as_zero_and_commas_stay_in_names() {
        let gpus = parse_nvidia_smi("0, GPU-1234, Odd, Name, [N/A]\n");
        assert_eq!(
            gpus,
            vec![Gpu { index: 0, uuid: "GPU-1234".to_owned(), model: "Odd, Name".to_owned(), memory_mb: 0 }]
        );
    }

    #[test]
    fn meminfo_total() {
        let meminfo = "MemTotal:       24684096 kB\nMemFree:        22434168 kB\n";
        assert_eq!(parse_meminfo_total_mb(meminfo), Some(24105));
        assert_eq!(parse_meminfo_total_mb("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo_total_mb("MemTotal: many kB\n"), None);
    }
}
