//! A trivial container job against `docker run` of the same image on the same engine, in one
//! run: a real `batchai server`, one real `batchai agent` (Docker runtime), and `--lone` rounds
//! that each submit a job running `true` in `batchai/busybox:latest` and time
//! `docker run --rm batchai/busybox:latest true`, alternating so both see the same machine.
//!
//! The job is timed as its client sees it: PUT sent → the job GET says succeeded (polled every
//! 2 ms), which includes the control plane, the scheduler, the agent's sync and the container's
//! create, start, wait. `docker run` is timed from spawn to exit of the CLI.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use super::trivial::setup;
use crate::Args;
use crate::api::{self, job_path};
use crate::stats::{machine_note, ms, pct};

const IMAGE: &str = "batchai/busybox:latest";

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let machine = machine_note();
    let s = setup(args, 1, 1).await?;
    let mut body = api::job_body("true");
    body["properties"]["containerSettings"] = json!({"imageSourceRegistry": {"image": IMAGE}});
    let (mut job, mut server, mut docker) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.lone {
        // Irregular gaps, out of step with the server's ticks.
        tokio::time::sleep(Duration::from_millis(150 + (i as u64 * 7919) % 450)).await;
        let (took, done) = api::run_lone(&s.api, &job_path(&format!("container-{i:03}")), &body).await?;
        job.push(took);
        let p = &done["properties"];
        server.push(api::millis_between(&p["creationTime"], &p["executionInfo"]["endTime"])?);

        let t = Instant::now();
        let status = tokio::process::Command::new("docker")
            .args(["run", "--rm", IMAGE, "true"])
            .status()
            .await
            .context("running docker")?;
        if !status.success() {
            bail!("docker run {IMAGE} true failed: {status} (scripts/build-images.sh builds the image)");
        }
        docker.push(t.elapsed());
    }
    job.sort();
    server.sort();
    docker.sort();
    let ratio = |q: f64| pct(&job, q).as_secs_f64() / pct(&docker, q).as_secs_f64().max(1e-9);
    println!(
        "container: backend {}, one agent (Docker runtime), `true` in {IMAGE}; {}",
        args.backend(),
        super::code_note()
    );
    println!("| metric ({} rounds) | p50 | p90 | max |", job.len());
    println!("|---|---|---|---|");
    println!(
        "| job PUT sent → GET says succeeded (client, 2 ms polling) | {} | {} | {} |",
        ms(pct(&job, 50.0)),
        ms(pct(&job, 90.0)),
        ms(job.last().copied().unwrap_or_default())
    );
    println!(
        "| job endTime − creationTime (server clock), ms | {} | {} | {} |",
        pct(&server, 50.0),
        pct(&server, 90.0),
        server.last().copied().unwrap_or(0)
    );
    println!(
        "| `docker run --rm {IMAGE} true` | {} | {} | {} |",
        ms(pct(&docker, 50.0)),
        ms(pct(&docker, 90.0)),
        ms(docker.last().copied().unwrap_or_default())
    );
    println!("| **ratio job / docker run** | **{:.2}** | {:.2} | |", ratio(50.0), ratio(90.0));
    println!();
    println!("{machine}");
    Ok(())
}
