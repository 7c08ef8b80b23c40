//! Small measuring helpers: percentiles, concurrent request loops, and what `/proc` says about
//! a process (CPU time, resident memory).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// The `p`th percentile of sorted values (nearest rank); zero when empty.
pub fn pct<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let i = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `p50 / p99 / max` of sorted durations, in ms.
pub fn summary(sorted: &[Duration]) -> String {
    format!(
        "{} / {} / {} ms",
        ms(pct(sorted, 50.0)),
        ms(pct(sorted, 99.0)),
        ms(sorted.last().copied().unwrap_or_default())
    )
}

/// Runs `total` calls of `f` over `clients` concurrent workers; returns sorted latencies.
pub async fn run_clients<F, Fut>(clients: usize, total: usize, f: F) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let t = Instant::now();
                f(i).await?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort();
    Ok(all)
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU time of a process (all its threads), in seconds.
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / clock_ticks())
}

/// CPU seconds of the Postgres backends serving database `db` (their process title is
/// `postgres: user db host(port) state`). Backends that ended are missed, so take both readings
/// while the same connections stay open.
pub fn postgres_cpu_secs(db: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    let needle = format!(" {db} ");
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.starts_with("postgres: ") && c.contains(&needle)
            })
        })
        .filter_map(|pid| cpu_secs(pid).ok())
        .sum()
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in MiB.
pub fn status_mib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).with_context(|| format!("no {field}"))?;
    let kb: f64 = line.split_whitespace().nth(1).context("no value")?.parse()?;
    Ok(kb / 1024.0)
}

/// CPU seconds the whole machine spent busy since boot (all CPUs; `/proc/stat`).
pub fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else { return 0.0 };
    let v: Vec<f64> = cpu.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal …
    let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum::<f64>();
    busy / clock_ticks()
}

/// Machine-wide CPU use over a window, next to what our own processes used in it: the rest is
/// other work on the machine (builds, tests) that competed with the benchmark.
pub struct CpuWindow {
    started: Instant,
    machine: f64,
    ours: f64,
}

impl CpuWindow {
    /// `ours` is the CPU seconds of the benchmark's own processes so far.
    pub fn start(ours: f64) -> Self {
        Self { started: Instant::now(), machine: machine_busy_secs(), ours }
    }

    /// "machine busy X % of 2 CPUs, Y % of it not ours".
    pub fn note(&self, ours_now: f64) -> String {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let machine = machine_busy_secs() - self.machine;
        let others = (machine - (ours_now - self.ours)).max(0.0);
        format!(
            "machine busy {:.0} % of {cpus} CPUs over {wall:.1} s; other processes (not this benchmark, its server, agents or Postgres) used {:.2} CPU-s ({:.0} % of one CPU)",
            100.0 * machine / (wall * cpus),
            others,
            100.0 * others / wall
        )
    }
}

/// The machine and its load when a run starts, for the record next to each result.
pub fn machine_note() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cpus} CPUs, load average {load} at start")
}
