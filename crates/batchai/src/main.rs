//! `batchai`: the server and its administration commands. Thin: parsing flags, reading
//! config, wiring the library crates together.

/// mimalloc instead of glibc's malloc: the API's request path allocates and frees many small
/// buffers across threads, where glibc's arenas spent about a tenth of the server's CPU
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod config;
mod node_runtime;
mod server;
mod tls;

use clap::{Parser, Subcommand};

use config::{AgentOverrides, Config, Overrides, ServerOverrides};

/// A self-hosted, wire-compatible Azure Batch AI.
#[derive(Parser)]
#[command(name = "batchai", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: Overrides,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (ARM API, token service, long-running operations, scheduler).
    Server(ServerOverrides),
    /// Run a node agent: join the server, report this machine, run the jobs placed on it.
    Agent(AgentOverrides),
    /// Server, scheduler and one local agent serving every VM size, on SQLite: a farm on one
    /// machine. Writes DATA_DIR/dev.env for clients.
    Dev(ServerOverrides),
    /// Inspect jobs.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Manage service principals and API tokens.
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
    /// Apply database migrations and exit (the server also applies them on start).
    Migrate,
}

#[derive(Subcommand)]
enum JobCommand {
    /// Why a queued job waits (reads the database the server uses).
    Why {
        /// The job's ARM id.
        id: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Server(flags) => {
            let cfg = Config::load(&cli.global, Some(&flags))?;
            init_logging(&cfg.log_format);
            runtime.block_on(server::run(cfg, false))
        }
        Command::Dev(flags) => {
            let cfg = Config::load(&cli.global, Some(&flags))?;
            init_logging(&cfg.log_format);
            runtime.block_on(server::run(cfg, true))
        }
        Command::Agent(flags) => {
            let cfg = Config::load_with(&cli.global, None, Some(&flags))?;
            init_logging(&cfg.log_format);
            let agent_cfg = cfg.agent_config(cfg.data_dir.clone())?;
            runtime.block_on(async move {
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                let runtime = node_runtime::pick(&cfg).await?;
                let mut agent = tokio::spawn(batchai_agent::agent::run(agent_cfg, runtime, stop_rx));
                tokio::select! {
                    res = &mut agent => res?.map_err(anyhow::Error::from),
                    _ = server::shutdown_signal() => {
                        let _ = stop_tx.send(true);
                        // The agent stops its jobs' processes on its way out. Returning at once
                        // dropped the runtime, which cancelled that, and the processes (in
                        // process groups of their own) kept running without an agent.
                        agent.await?.map_err(anyhow::Error::from)
                    }
                }
            })
        }
        Command::Job { command: JobCommand::Why { id } } => {
            let cfg = Config::load(&cli.global, None)?;
            init_logging("text");
            runtime.block_on(admin::why(&cfg, &id))
        }
        Command::Admin { command } => {
            let cfg = Config::load(&cli.global, None)?;
            init_logging("text");
            runtime.block_on(admin::run(&cfg, command))
        }
        Command::Migrate => {
            let cfg = Config::load(&cli.global, None)?;
            init_logging("text");
            runtime.block_on(async {
                std::fs::create_dir_all(&cfg.data_dir)?;
                let store = batchai_store::connect(&cfg.database_url()).await?;
                println!("migrations applied ({})", store.backend());
                Ok(())
            })
        }
    }
}

fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    use std::io::IsTerminal;
    // Colours only on a terminal: journald, `docker logs` and files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
