//! What idle nodes cost the server: `--nodes` simulated nodes in one cluster, each long-polling
//! with the agent's default wait and nothing to run, measured over `--seconds` from the server
//! process's CPU time (`/proc/<pid>/stat` utime + stime, all threads). An idle server without
//! nodes is measured first, for its fixed cost (the scheduler's and watchers' polling).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{core_pct, server_env, work_dir};
use crate::Args;
use crate::api::{self, Api};
use crate::nodes::{Fleet, NodeOptions};
use crate::server::{ServerProc, batchai_bin};
use crate::stats::{CpuWindow, cpu_secs, machine_note, status_mib};

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let nodes = args.nodes;
    let window = Duration::from_secs(args.seconds);
    let bin = batchai_bin(args.batchai_bin.as_deref())?;
    let (work, _tmp) = work_dir(args.work_dir.as_deref())?;
    let machine = machine_note();
    let server = ServerProc::start(&bin, &work, args.pg_admin()?, &server_env(args)).await?;
    eprintln!("server pid {} at {}, log {}", server.pid, server.http, server.log.display());
    let api = Api::for_database(&server.http, &server.database_url, 4).await?;
    api::scaffold(&api, nodes).await?;
    let token = server.join_token().await?;
    let me = std::process::id();

    // Without nodes: the server's fixed cost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_window = window.min(Duration::from_secs(20));
    let (s0, p0) = server.cpu();
    tokio::time::sleep(idle_window).await;
    let (s1, p1) = server.cpu();
    let idle_server = core_pct(s1 - s0, idle_window);
    let idle_pg = core_pct(p1 - p0, idle_window);
    eprintln!("no nodes: server {idle_server:.2} %, Postgres {idle_pg:.2} % of one core");

    let opts = NodeOptions { wait: Duration::from_millis(args.node_wait_ms), preparing: true };
    let fleet = Fleet::start(&server.http, &token, nodes, opts).await?;
    api::wait_idle(&api, nodes, Duration::from_secs(600)).await?;
    // Let the joining burst pass: every node is then in its long-poll cycle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_before = status_mib(server.pid, "VmRSS").unwrap_or(0.0);
    let syncs0 = fleet.stats.syncs.load(Ordering::Relaxed);
    let errors0 = fleet.stats.errors.load(Ordering::Relaxed);
    let (s0, p0) = server.cpu();
    let b0 = cpu_secs(me).unwrap_or(0.0);
    let busy = CpuWindow::start(s0 + p0 + b0);
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let took = t.elapsed();
    let (s1, p1) = server.cpu();
    let b1 = cpu_secs(me).unwrap_or(0.0);
    let busy = busy.note(s1 + p1 + b1);
    let syncs = fleet.stats.syncs.load(Ordering::Relaxed) - syncs0;
    let errors = fleet.stats.errors.load(Ordering::Relaxed) - errors0;
    let rss = status_mib(server.pid, "VmRSS").unwrap_or(0.0);
    fleet.stop().await;

    let server_pct = core_pct(s1 - s0, took);
    println!(
        "heartbeat: backend {}, {nodes} idle simulated nodes in one cluster, long-poll wait {} ms asked (server cap {}); {}",
        args.backend(),
        args.node_wait_ms,
        args.agent_max_wait_ms.map(|m| format!("{m} ms")).unwrap_or_else(|| "default".into()),
        super::code_note()
    );
    println!("| metric | value |");
    println!("|---|---|");
    println!(
        "| server CPU, no nodes ({:.0} s) | {idle_server:.2} % of one core (Postgres {idle_pg:.2} %) |",
        idle_window.as_secs_f64()
    );
    println!(
        "| **server CPU, {nodes} idle nodes** ({:.0} s) | **{server_pct:.2} % of one core** |",
        took.as_secs_f64()
    );
    println!("| Postgres backends of its database, same window | {:.2} % of one core |", core_pct(p1 - p0, took));
    println!("| bench (simulated nodes), same window | {:.2} % of one core |", core_pct(b1 - b0, took));
    println!(
        "| syncs answered | {syncs} ({:.1}/s; {:.0} µs of server CPU each) |",
        syncs as f64 / took.as_secs_f64(),
        if syncs > 0 { 1e6 * (s1 - s0) / syncs as f64 } else { 0.0 }
    );
    println!("| sync errors | {errors} |");
    println!("| server RSS after the joins / at the end | {rss_before:.1} / {rss:.1} MiB |");
    println!();
    println!("{machine}; {busy}");
    Ok(())
}
