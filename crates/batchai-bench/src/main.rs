//! `batchai-bench`: measurements of the control plane and of jobs running, each printed as a
//! markdown table for `docs/benchmarks.md`.
//!
//! - `control-plane` (default): job PUT throughput and GET latency through the real HTTP API
//!   (server in this process), beside a raw sqlx insert loop on the same kind of database.
//! - `placement`: a real `batchai server` process, `--nodes` simulated nodes (`nodes.rs`) and
//!   `--jobs` single-node jobs: placements per second and submit→running latency.
//! - `heartbeat`: idle simulated nodes long-polling; the server's CPU time per core.
//! - `trivial`: a real server and `--agents` real `batchai agent` processes running `true`:
//!   lone-job latency and batch throughput.
//! - `agent-rss`: one real agent's resident memory while idle.
//! - `container`: a trivial job in a Docker container against `docker run` of the same image
//!   (needs Docker and `scripts/build-images.sh`).
//! - `files`: upload and download of a `--file-mib` file through the Azure Files endpoint
//!   against a plain copy on the same disk.
//!
//! ```sh
//! cargo build --release -p batchai
//! cargo run --release -p batchai-bench -- --backend postgres --pg-url postgres://…/postgres
//! cargo run --release -p batchai-bench -- --scenario placement --nodes 1000 --jobs 100000
//! cargo run --release -p batchai-bench -- --scenario trivial --agents 16 --jobs 1000
//! ```
//!
//! Scenarios that start processes need `cargo build --release -p batchai` first (or
//! `--batchai-bin`). `--work-dir` keeps the server's data and logs; `BENCH_SERVER_LOG` sets the
//! server's `RUST_LOG` (default `warn`); `BENCH_PG_LOG_STATEMENTS=1` has Postgres log every
//! statement of the run's database with its duration (diagnostics; it slows the run).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// mimalloc instead of glibc's malloc: the API's request path allocates and frees many small
/// buffers across threads, where glibc's arenas spent about a tenth of the server's CPU
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod api;
mod db;
mod nodes;
mod scenarios;
mod server;
mod stats;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    ControlPlane,
    Placement,
    Heartbeat,
    Trivial,
    AgentRss,
    Container,
    Files,
}

#[derive(Parser)]
pub struct Args {
    #[arg(long, value_enum, default_value = "control-plane")]
    scenario: Scenario,
    /// sqlite or postgres [default: postgres for placement and heartbeat, else sqlite].
    #[arg(long)]
    backend: Option<String>,
    /// A superuser URL; each run creates fresh databases next to it.
    #[arg(long, env = "BATCHAI_TEST_PG_URL")]
    pg_url: Option<String>,
    /// Concurrent HTTP clients submitting [default: 16; placement 32; files 2, the SDK's].
    #[arg(long)]
    clients: Option<usize>,
    /// Jobs [default: control-plane 4000, placement 10000, trivial 1000].
    #[arg(long)]
    jobs: Option<usize>,
    /// control-plane: GETs in the latency phase.
    #[arg(long, default_value_t = 8000)]
    gets: usize,
    /// control-plane: `jwt` (a service principal's access token, checked without a database
    /// read) or `token` (an API token: one indexed read per request).
    #[arg(long, default_value = "jwt")]
    auth: String,
    /// placement, heartbeat: simulated nodes.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// heartbeat: the measured window.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// trivial: real agent processes.
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// trivial, container: sequential lone jobs for the latency figure.
    #[arg(long, default_value_t = 20)]
    lone: usize,
    /// placement: queue every job while the cluster has no nodes, then resize it, so the
    /// placement rate is measured without submissions competing for the CPUs.
    #[arg(long)]
    drain: bool,
    /// placement: jobs of the latency phase (free capacity), submitted at `--latency-rate`.
    #[arg(long, default_value_t = 1000)]
    latency_jobs: usize,
    /// placement: submissions per second in the latency phase.
    #[arg(long, default_value_t = 100.0)]
    latency_rate: f64,
    /// Simulated nodes report `Exited` at once instead of `Preparing` first.
    #[arg(long)]
    exit_only: bool,
    /// Long-poll wait the simulated nodes ask for, ms (the agent's default is 20000).
    #[arg(long, default_value_t = 20_000)]
    node_wait_ms: u64,
    /// Server setting `agent_max_wait_ms` (BATCHAI_AGENT_MAX_WAIT_MS); the server's default
    /// when unset.
    #[arg(long)]
    agent_max_wait_ms: Option<u64>,
    /// The `batchai` binary [default: next to this one].
    #[arg(long)]
    batchai_bin: Option<PathBuf>,
    /// files: size of the file moved.
    #[arg(long, default_value_t = 100)]
    file_mib: u64,
    /// files: rounds of copy, upload and download.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Keep server and agent data and logs here instead of a temporary directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

impl Args {
    fn backend(&self) -> &str {
        self.backend.as_deref().unwrap_or(match self.scenario {
            Scenario::Placement | Scenario::Heartbeat => "postgres",
            _ => "sqlite",
        })
    }

    /// The Postgres superuser URL when the backend is Postgres; `None` for SQLite.
    fn pg_admin(&self) -> anyhow::Result<Option<&str>> {
        match self.backend() {
            "sqlite" => Ok(None),
            "postgres" => Ok(Some(
                self.pg_url.as_deref().ok_or_else(|| anyhow::anyhow!("--pg-url (or BATCHAI_TEST_PG_URL) is needed"))?,
            )),
            other => anyhow::bail!("unknown backend {other}"),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.scenario {
        Scenario::ControlPlane => scenarios::control_plane::run(&args).await,
        Scenario::Placement => scenarios::placement::run(&args).await,
        Scenario::Heartbeat => scenarios::heartbeat::run(&args).await,
        Scenario::Trivial => scenarios::trivial::run(&args).await,
        Scenario::AgentRss => scenarios::trivial::agent_rss(&args).await,
        Scenario::Container => scenarios::container::run(&args).await,
        Scenario::Files => scenarios::files::run(&args).await,
    }
}
