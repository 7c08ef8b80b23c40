//! Trivial jobs end to end: a real `batchai server` and `--agents` real `batchai agent`
//! processes (process runtime) on this machine, one cluster of that many STANDARD_NC6 nodes,
//! and jobs running `true`.
//!
//! - Lone-job latency: `--lone` jobs one after another on an idle cluster; submit→succeeded
//!   from the server's own timestamps (`executionInfo.endTime − creationTime`), so the
//!   client's polling interval does not count, and as the client saw it (PUT sent → the job
//!   GET says succeeded, polled every 2 ms).
//! - Batch: `--jobs` jobs submitted by `--clients` clients; time from the first submission
//!   until the database says every one ended.
//!
//! `agent-rss` starts one agent and reads its resident memory while it idles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{core_pct, server_env, wait_count, work_dir};
use crate::Args;
use crate::api::{self, Api, job_path};
use crate::db::{Db, Timeline};
use crate::server::{AgentProc, ServerProc, batchai_bin};
use crate::stats::{CpuWindow, cpu_secs, machine_note, ms, pct, run_clients, status_mib};

/// A server with `agents` agents joined and idle in cluster `c`.
pub(super) struct Setup {
    pub(super) server: ServerProc,
    pub(super) api: Api,
    pub(super) agents: Vec<AgentProc>,
    _tmp: Option<tempfile::TempDir>,
}

pub(super) async fn setup(args: &Args, agents: usize, clients: usize) -> anyhow::Result<Setup> {
    let bin = batchai_bin(args.batchai_bin.as_deref())?;
    let (work, tmp) = work_dir(args.work_dir.as_deref())?;
    let server = ServerProc::start(&bin, &work, args.pg_admin()?, &server_env(args)).await?;
    eprintln!("server pid {} at {}, log {}", server.pid, server.http, server.log.display());
    let api = Api::for_database(&server.http, &server.database_url, clients).await?;
    api::scaffold(&api, agents).await?;
    let token = server.join_token().await?;
    let log = work.join("agents.log");
    let agents = (0..agents)
        .map(|i| AgentProc::start(&bin, &server.http, &token, &work.join(format!("agent-{i:03}")), &log))
        .collect::<anyhow::Result<Vec<_>>>()?;
    api::wait_idle(&api, agents.len(), Duration::from_secs(300)).await?;
    Ok(Setup { server, api, agents, _tmp: tmp })
}

/// VmRSS of each agent, sorted (MiB).
fn agents_rss(agents: &[AgentProc]) -> Vec<f64> {
    let mut v: Vec<f64> = agents.iter().filter_map(|a| status_mib(a.pid, "VmRSS").ok()).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn rss_summary(v: &[f64]) -> String {
    format!("median {:.1} MiB, max {:.1} MiB", pct(v, 50.0), v.last().copied().unwrap_or(0.0))
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let jobs = args.jobs.unwrap_or(1000);
    let clients = args.clients.unwrap_or(16);
    let machine = machine_note();
    let s = setup(args, args.agents, clients).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = agents_rss(&s.agents);
    let db = Db::connect(&s.server.database_url).await?;

    // Lone jobs, one at a time, at irregular gaps (not in step with any of the server's ticks).
    let mut server_ms = Vec::new();
    let mut place_ms = Vec::new();
    let mut client_lat = Vec::new();
    for i in 0..args.lone {
        tokio::time::sleep(Duration::from_millis(150 + (i as u64 * 7919) % 450)).await;
        let (took, job) = api::run_lone(&s.api, &job_path(&format!("lone-{i:03}")), &api::job_body("true")).await?;
        client_lat.push(took);
        let p = &job["properties"];
        server_ms.push(api::millis_between(&p["creationTime"], &p["executionInfo"]["endTime"])?);
        place_ms.push(api::millis_between(&p["creationTime"], &p["executionInfo"]["startTime"])?);
    }
    server_ms.sort();
    place_ms.sort();
    client_lat.sort();

    // The batch.
    let me = std::process::id();
    let ours = |s: &Setup| {
        let (srv, pg) = s.server.cpu();
        let agents: f64 = s.agents.iter().filter_map(|a| cpu_secs(a.pid).ok()).sum();
        (srv, pg, agents, cpu_secs(me).unwrap_or(0.0))
    };
    let c0 = ours(&s);
    let window = CpuWindow::start(c0.0 + c0.1 + c0.2 + c0.3);
    let body = Arc::new(api::job_body("true"));
    let t0 = Instant::now();
    let api2 = s.api.clone();
    let submit = tokio::spawn(run_clients(clients, jobs, move |i| {
        let (api, body) = (api2.clone(), body.clone());
        async move { api.put(&job_path(&format!("batch-{i:05}")), &body).await.map(|_| ()) }
    }));
    wait_count("ended batch jobs", jobs, Duration::from_millis(10), Duration::from_secs(120), || async {
        Ok(db.finished("batch-").await? as usize)
    })
    .await?;
    let e2e = t0.elapsed();
    let put_lat = submit.await??;
    let c1 = ours(&s);
    let busy = window.note(c1.0 + c1.1 + c1.2 + c1.3);
    // Children of the agents (the jobs' shells) are not in the agents' own CPU time.
    let tl = Timeline::of(&db.times("batch-").await?);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = agents_rss(&s.agents);
    let server_rss = status_mib(s.server.pid, "VmRSS").unwrap_or(0.0);

    println!(
        "trivial: backend {}, {} agents (process runtime), `true` jobs; {}",
        args.backend(),
        s.agents.len(),
        super::code_note()
    );
    println!("| metric | value |");
    println!("|---|---|");
    println!(
        "| **lone job submit→succeeded, server clock** (endTime − creationTime, {} jobs) p50 / p99 / max | **{} / {} / {} ms** |",
        server_ms.len(),
        pct(&server_ms, 50.0),
        pct(&server_ms, 99.0),
        server_ms.last().copied().unwrap_or(0)
    );
    println!(
        "| lone job creation→start (placement), server clock, p50 / p99 | {} / {} ms |",
        pct(&place_ms, 50.0),
        pct(&place_ms, 99.0)
    );
    println!(
        "| lone job PUT sent → GET says succeeded (client, 2 ms polling) p50 / p99 | {} / {} ms |",
        ms(pct(&client_lat, 50.0)),
        ms(pct(&client_lat, 99.0))
    );
    println!(
        "| **batch of {jobs}: first PUT → all ended** (client clock) | **{:.2} s = {:.0} jobs/s** |",
        e2e.as_secs_f64(),
        jobs as f64 / e2e.as_secs_f64()
    );
    println!(
        "| batch, server clock: first creation → last end | {:.2} s = {:.0} jobs/s ({} of {} succeeded) |",
        tl.span_end_ms as f64 / 1000.0,
        jobs as f64 / (tl.span_end_ms as f64 / 1000.0).max(1e-9),
        tl.succeeded,
        tl.jobs
    );
    println!(
        "| batch submission: PUT p50 / p99; creation→end p50 / p99 | {} / {} ms; {} / {} ms |",
        ms(pct(&put_lat, 50.0)),
        ms(pct(&put_lat, 99.0)),
        pct(&tl.total_ms, 50.0),
        pct(&tl.total_ms, 99.0)
    );
    println!(
        "| CPU during the batch: server / Postgres / agents (all) / bench, % of one core | {:.0} / {:.0} / {:.0} / {:.0} |",
        core_pct(c1.0 - c0.0, e2e),
        core_pct(c1.1 - c0.1, e2e),
        core_pct(c1.2 - c0.2, e2e),
        core_pct(c1.3 - c0.3, e2e)
    );
    println!("| agent RSS idle before / after the jobs | {} / {} |", rss_summary(&rss_idle), rss_summary(&rss_after));
    println!("| server RSS at the end | {server_rss:.1} MiB |");
    println!();
    println!("{machine}; during the batch: {busy}");
    Ok(())
}

/// One agent's resident memory: joined and idle, then again after running a few jobs.
pub async fn agent_rss(args: &Args) -> anyhow::Result<()> {
    let s = setup(args, 1, 1).await?;
    let pid = s.agents[0].pid;
    let idle = Duration::from_secs(args.seconds.min(30));
    tokio::time::sleep(idle).await;
    let (rss0, hwm0) = (status_mib(pid, "VmRSS")?, status_mib(pid, "VmHWM")?);
    let db = Db::connect(&s.server.database_url).await?;
    for i in 0..10 {
        s.api.put(&job_path(&format!("rss-{i:02}")), &api::job_body("true")).await?;
    }
    wait_count("ended jobs", 10, Duration::from_millis(50), Duration::from_secs(60), || async {
        Ok(db.finished("rss-").await? as usize)
    })
    .await?;
    tokio::time::sleep(idle).await;
    let (rss1, hwm1) = (status_mib(pid, "VmRSS")?, status_mib(pid, "VmHWM")?);
    println!("agent-rss: one `batchai agent` (process runtime), backend {}; {}", args.backend(), super::code_note());
    println!("| metric | value |");
    println!("|---|---|");
    println!(
        "| **agent VmRSS, joined and idle {:.0} s** | **{rss0:.1} MiB** (peak so far {hwm0:.1} MiB) |",
        idle.as_secs_f64()
    );
    println!("| agent VmRSS, idle again after 10 jobs | {rss1:.1} MiB (peak {hwm1:.1} MiB) |");
    Ok(())
}
