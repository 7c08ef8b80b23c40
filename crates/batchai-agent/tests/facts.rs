//! Host discovery with stand-in `nvidia-smi` scripts.
//!
//! One test on purpose: it writes scripts and runs them at once, and a concurrent fork in
//! another test thread could inherit a script's write descriptor and make exec fail with
//! ETXTBSY.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use batchai_agent::facts::{FactsConfig, NVIDIA_SMI_ARGS, discover};

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn discover_reads_the_host_and_the_gpus() {
    let dir = tempfile::tempdir().unwrap();

    // No nvidia-smi: a machine without GPUs.
    let cfg = FactsConfig {
        address: None,
        ssh_port: 2222,
        vm_sizes: vec!["STANDARD_NC6".to_owned()],
        nvidia_smi: dir.path().join("absent"),
        ..FactsConfig::default()
    };
    let facts = discover(&cfg);
    assert!(!facts.hostname.is_empty());
    assert_eq!(facts.address, "127.0.0.1");
    assert_eq!(facts.ssh_port, 2222);
    assert!(facts.cores >= 1);
    assert!(facts.memory_mb > 0);
    assert!(facts.gpus.is_empty());
    assert_eq!(facts.vm_sizes, vec!["STANDARD_NC6".to_owned()]);
    assert_eq!(facts.agent_version, env!("CARGO_PKG_VERSION"));

    // A working one, which must be asked the documented query.
    let expected_args = NVIDIA_SMI_ARGS.join(" ");
    let working = script(
        dir.path(),
        "nvidia-smi",
        &format!(
            r#"[ "$*" = "{expected_args}" ] || {{ echo "unexpected arguments: $*"; exit 2; }}
echo "0, GPU-5a2f1d0c-3b7e-8e44-9c41-0d7b2a6f4e13, NVIDIA H100 80GB HBM3, 81559"
echo "1, GPU-c1e0b7aa-62f4-4f1f-a5d9-3e8b1c7d9a20, NVIDIA H100 80GB HBM3, 81559""#
        ),
    );
    let cfg = FactsConfig { address: Some("10.1.2.3".to_owned()), nvidia_smi: working, ..FactsConfig::default() };
    let facts = discover(&cfg);
    assert_eq!(facts.address, "10.1.2.3");
    let gpus: Vec<(u32, &str, &str, u64)> =
        facts.gpus.iter().map(|g| (g.index, g.uuid.as_str(), g.model.as_str(), g.memory_mb)).collect();
    assert_eq!(
        gpus,
        vec![
            (0, "GPU-5a2f1d0c-3b7e-8e44-9c41-0d7b2a6f4e13", "NVIDIA H100 80GB HBM3", 81559),
            (1, "GPU-c1e0b7aa-62f4-4f1f-a5d9-3e8b1c7d9a20", "NVIDIA H100 80GB HBM3", 81559),
        ]
    );

    // A failing one (no driver loaded): its output is not taken for GPUs.
    let failing = script(
        dir.path(),
        "nvidia-smi-failing",
        "echo '0, GPU-aaaa, Tesla K80, 11441'; echo 'NVIDIA-SMI has failed' >&2; exit 9",
    );
    let cfg = FactsConfig { nvidia_smi: failing, ..FactsConfig::default() };
    assert!(discover(&cfg).gpus.is_empty());

    // A hanging one (a GPU fell off the bus): given up on after the timeout.
    let hanging = script(dir.path(), "nvidia-smi-hanging", "exec sleep 1000");
    let cfg =
        FactsConfig { nvidia_smi: hanging, nvidia_smi_timeout: Duration::from_millis(100), ..FactsConfig::default() };
    assert!(discover(&cfg).gpus.is_empty());
}
