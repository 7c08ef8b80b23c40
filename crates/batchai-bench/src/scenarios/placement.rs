//! Placement rate and submit→running latency: a real `batchai server` process, `--nodes`
//! simulated nodes serving STANDARD_NC6 in one cluster, and `--jobs` single-node jobs submitted
//! over HTTP by `--clients` concurrent clients as fast as the server takes them. A job is
//! "running" when its rank-0 assignment reaches its node; the nodes report it finished at
//! once, so a node takes the next job as soon as the scheduler gives it one.
//!
//! Then, with the queue empty (free capacity), `--latency-jobs` more jobs at a steady
//! `--latency-rate` give the latency a lone submission sees.
//!
//! With `--drain` every job is queued first on a cluster of zero nodes, which is then resized:
//! the placement rate without submissions competing for the CPUs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{core_pct, server_env, wait_count, work_dir};
use crate::Args;
use crate::api::{self, Api, job_path};
use crate::db::{Db, Timeline};
use crate::nodes::{Fleet, FleetStats, NodeOptions};
use crate::server::{ServerProc, batchai_bin};
use crate::stats::{CpuWindow, cpu_secs, machine_note, ms, run_clients, summary};

const STALL: Duration = Duration::from_secs(120);

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let jobs = args.jobs.unwrap_or(10_000);
    let clients = args.clients.unwrap_or(32);
    let nodes = args.nodes;
    let bin = batchai_bin(args.batchai_bin.as_deref())?;
    let (work, _tmp) = work_dir(args.work_dir.as_deref())?;
    let machine = machine_note();
    let server = ServerProc::start(&bin, &work, args.pg_admin()?, &server_env(args)).await?;
    eprintln!("server pid {} at {}, log {}", server.pid, server.http, server.log.display());
    let api = Api::for_database(&server.http, &server.database_url, clients).await?;
    api::scaffold(&api, if args.drain { 0 } else { nodes }).await?;
    let token = server.join_token().await?;
    let t = Instant::now();
    let opts = NodeOptions { wait: Duration::from_millis(args.node_wait_ms), preparing: !args.exit_only };
    let fleet = Fleet::start(&server.http, &token, nodes, opts).await?;
    let joined = t.elapsed();
    if !args.drain {
        api::wait_idle(&api, nodes, Duration::from_secs(600)).await?;
    }
    let ready = t.elapsed();
    eprintln!("{nodes} nodes joined in {joined:.1?}, cluster ready after {ready:.1?}");

    let me = std::process::id();
    let ours = || {
        let (s, pg) = server.cpu();
        (s, pg, cpu_secs(me).unwrap_or(0.0))
    };
    let cpu0 = ours();
    let window = CpuWindow::start(cpu0.0 + cpu0.1 + cpu0.2);

    // Submission, with the nodes taking jobs as they come (unless draining).
    let t0 = Instant::now();
    let submitted: Arc<Vec<AtomicU64>> = Arc::new((0..jobs).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicUsize::new(0));
    let progress = tokio::spawn(progress(t0, done.clone(), fleet.stats.clone()));
    let body = Arc::new(api::job_body("true"));
    let (api2, sub2, done2) = (api.clone(), submitted.clone(), done.clone());
    let put_lat = run_clients(clients, jobs, move |i| {
        let (api, body, sub, done) = (api2.clone(), body.clone(), sub2.clone(), done2.clone());
        async move {
            sub[i].store(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
            api.put(&job_path(&format!("job-{i:07}")), &body).await?;
            done.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    })
    .await?;
    let submit_time = t0.elapsed();
    let release = if args.drain {
        api::resize(&api, nodes).await?;
        t0.elapsed()
    } else {
        Duration::ZERO
    };
    let stats = fleet.stats.clone();
    wait_count("placements", jobs, Duration::from_millis(100), STALL, || {
        let n = stats.started_count();
        async move { Ok(n) }
    })
    .await?;
    let all_started = t0.elapsed();
    let db = Db::connect(&server.database_url).await?;
    wait_count("succeeded jobs", jobs, Duration::from_millis(250), STALL, || async {
        Ok(db.finished("job-").await? as usize)
    })
    .await?;
    let all_done = t0.elapsed();
    let cpu1 = ours();
    let busy = window.note(cpu1.0 + cpu1.1 + cpu1.2);
    progress.abort();

    // The nodes' view: when each job's assignment arrived.
    let mut arrivals = Vec::with_capacity(jobs);
    let mut waits = Vec::with_capacity(jobs);
    for (i, sub) in submitted.iter().enumerate() {
        let Some(at) = fleet.stats.started_at(&format!("job-{i:07}")) else { continue };
        let at = at.duration_since(t0);
        arrivals.push(at);
        waits.push(at.saturating_sub(Duration::from_nanos(sub.load(Ordering::Relaxed))));
    }
    arrivals.sort();
    waits.sort();
    let whole = jobs as f64 / (all_started - release).as_secs_f64();
    let (a, b) = (jobs / 10, jobs * 9 / 10);
    let steady = (b - a) as f64 / (arrivals[b.min(jobs - 1)] - arrivals[a]).as_secs_f64().max(1e-9);
    let server_view = Timeline::of(&db.times("job-").await?);
    let tables = db.table_stats().await?;

    // Free capacity: a steady trickle of jobs onto idle nodes.
    let free =
        if args.latency_jobs > 0 { Some(latency_phase(args, &api, &fleet.stats, jobs, &db).await?) } else { None };
    let errors = fleet.stats.errors.load(Ordering::Relaxed);
    let last_error = fleet.stats.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
    fleet.stop().await;

    let run = all_done;
    println!(
        "placement: backend {}, {nodes} simulated nodes ({}), {jobs} jobs from {clients} clients{}; {}",
        args.backend(),
        if args.exit_only { "Exited at once" } else { "Preparing then Exited(0)" },
        if args.drain { ", queued before the nodes were given to the cluster" } else { "" },
        super::code_note()
    );
    println!("| metric | value |");
    println!("|---|---|");
    println!(
        "| nodes joined / cluster of {nodes} idle after | {:.1} s / {:.1} s |",
        joined.as_secs_f64(),
        ready.as_secs_f64()
    );
    println!(
        "| submission | {:.0} jobs/s; PUT p50 / p99 / max {} |",
        jobs as f64 / submit_time.as_secs_f64(),
        summary(&put_lat)
    );
    println!(
        "| **placements/s** (nodes' view: rank-0 assignments received), whole run / steady 10–90 % | **{whole:.0}** / {steady:.0} |"
    );
    println!(
        "| placements/s (server's view: `start_time`), whole run / steady 10–90 % | {:.0} / {:.0} |",
        server_view.jobs as f64 / (server_view.span_start_ms as f64 / 1000.0).max(1e-9),
        server_view.steady_starts_per_s
    );
    println!("| submit→running p50 / p99 / max (nodes' view, queueing included) | {} |", summary(&waits));
    println!(
        "| creation→start p50 / p99 (server's clock, queueing included) | {} / {} ms |",
        crate::stats::pct(&server_view.wait_ms, 50.0),
        crate::stats::pct(&server_view.wait_ms, 99.0)
    );
    println!(
        "| first submission → last job placed / all {} succeeded | {:.1} s / {:.1} s |",
        server_view.succeeded,
        all_started.as_secs_f64(),
        all_done.as_secs_f64()
    );
    if let Some((n, rate, lat, server_lat)) = free {
        println!(
            "| **free capacity: submit→running p50 / p99 / max** ({n} jobs at {rate:.0}/s) | **{}** |",
            summary(&lat)
        );
        println!(
            "| free capacity: creation→start p50 / p99 (server's clock) | {} / {} ms |",
            crate::stats::pct(&server_lat, 50.0),
            crate::stats::pct(&server_lat, 99.0)
        );
    }
    println!(
        "| CPU during the run ({:.1} s): server / Postgres backends / bench (nodes + clients) | {:.0} % / {:.0} % / {:.0} % of one core |",
        run.as_secs_f64(),
        core_pct(cpu1.0 - cpu0.0, run),
        core_pct(cpu1.1 - cpu0.1, run),
        core_pct(cpu1.2 - cpu0.2, run)
    );
    println!("| sync errors | {errors}{} |", last_error.map(|e| format!(" (last: {e})")).unwrap_or_default());
    println!();
    println!("{machine}; {busy}");
    if !tables.is_empty() {
        println!();
        println!("Postgres table counters for the main run (pg_stat_user_tables):");
        println!();
        for line in tables {
            println!("{line}");
        }
    }
    Ok(())
}

/// Submits `args.latency_jobs` jobs at `args.latency_rate` per second onto idle nodes; returns
/// the count, rate, submit→running latencies (nodes' view) and creation→start (server's view).
async fn latency_phase(
    args: &Args,
    api: &Api,
    stats: &Arc<FleetStats>,
    before: usize,
    db: &Db,
) -> anyhow::Result<(usize, f64, Vec<Duration>, Vec<i64>)> {
    let n = args.latency_jobs;
    let gap = Duration::from_secs_f64(1.0 / args.latency_rate.max(0.001));
    let body = Arc::new(api::job_body("true"));
    let start = tokio::time::Instant::now();
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until(start + gap * i as u32).await;
        let (api, body) = (api.clone(), body.clone());
        puts.spawn(async move {
            let at = Instant::now();
            api.put(&job_path(&format!("lat-{i:05}")), &body).await.map(|_| (i, at))
        });
    }
    let mut sent = vec![None; n];
    while let Some(r) = puts.join_next().await {
        let (i, at) = r??;
        sent[i] = Some(at);
    }
    let stats2 = stats.clone();
    wait_count("latency-phase placements", before + n, Duration::from_millis(50), STALL, || {
        let n = stats2.started_count();
        async move { Ok(n) }
    })
    .await?;
    let mut lat: Vec<Duration> = (0..n)
        .filter_map(|i| Some(stats.started_at(&format!("lat-{i:05}"))?.saturating_duration_since(sent[i]?)))
        .collect();
    lat.sort();
    let server = Timeline::of(&db.times("lat-").await?);
    eprintln!("latency phase: {} jobs, p50 {} ms", lat.len(), ms(crate::stats::pct(&lat, 50.0)));
    Ok((n, args.latency_rate, lat, server.wait_ms))
}

/// Prints how far the run is every 5 s (stderr).
async fn progress(t0: Instant, submitted: Arc<AtomicUsize>, stats: Arc<FleetStats>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        eprintln!(
            "[{:>5.0} s] submitted {}, placed {}, syncs {}, sync errors {}",
            t0.elapsed().as_secs_f64(),
            submitted.load(Ordering::Relaxed),
            stats.started_count(),
            stats.syncs.load(Ordering::Relaxed),
            stats.errors.load(Ordering::Relaxed)
        );
    }
}
