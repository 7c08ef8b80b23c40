//! One module per measurement; each prints its results as a markdown table.

pub mod container;
pub mod control_plane;
pub mod files;
pub mod heartbeat;
pub mod placement;
pub mod trivial;

use std::path::PathBuf;

/// Where a scenario keeps server and agent data and logs: `--work-dir` (kept), or a
/// temporary directory removed when the returned guard drops.
pub fn work_dir(flag: Option<&std::path::Path>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match flag {
        Some(p) => {
            std::fs::create_dir_all(p)?;
            Ok((std::fs::canonicalize(p)?, None))
        }
        None => {
            let tmp = tempfile::Builder::new().prefix("batchai-bench-").tempdir_in("/var/tmp")?;
            Ok((tmp.path().to_owned(), Some(tmp)))
        }
    }
}

/// The `BATCHAI_*` settings every benchmark server gets.
pub fn server_env(args: &crate::Args) -> Vec<(&'static str, String)> {
    let mut env = vec![("BATCHAI_QUOTA_VCPUS", "100000000".to_owned())];
    if let Some(ms) = args.agent_max_wait_ms {
        env.push(("BATCHAI_AGENT_MAX_WAIT_MS", ms.to_string()));
    }
    env
}

/// The commit and whether code outside the benchmark differed from it, for the record.
pub fn code_note() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = git(&["status", "--porcelain", "--", "crates", ":!crates/batchai-bench", "migrations"]);
    let dirty = dirty.lines().count();
    if dirty == 0 {
        format!("commit {head}")
    } else {
        format!("commit {head} + {dirty} uncommitted files outside the bench")
    }
}

/// Waits until `count()` reaches `target`, polling every `poll`; fails when the count has not
/// moved for `stall` (a hang, reported with `what`).
pub async fn wait_count<F, Fut>(
    what: &str,
    target: usize,
    poll: std::time::Duration,
    stall: std::time::Duration,
    mut count: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    let (mut last, mut moved) = (usize::MAX, std::time::Instant::now());
    loop {
        let n = count().await?;
        if n >= target {
            return Ok(());
        }
        if n != last {
            (last, moved) = (n, std::time::Instant::now());
        } else if moved.elapsed() > stall {
            anyhow::bail!("{what}: stuck at {n} of {target} for {stall:?}");
        }
        tokio::time::sleep(poll).await;
    }
}

/// Percent of one core: CPU seconds over wall seconds.
pub fn core_pct(cpu_secs: f64, wall: std::time::Duration) -> f64 {
    100.0 * cpu_secs / wall.as_secs_f64().max(1e-9)
}
