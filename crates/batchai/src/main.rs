//! `batchai`: the server and its administration commands. Thin: parsing flags, reading
//! config, wiring the library crates together.

mod admin;
mod config;
mod server;
mod tls;

use clap::{Parser, Subcommand};

use config::{Config, Overrides, ServerOverrides};

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
    /// Run the API server (ARM API, token service, long-running operations).
    Server(ServerOverrides),
    /// Manage service principals and API tokens.
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
    /// Apply database migrations and exit (the server also applies them on start).
    Migrate,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Server(flags) => {
            let cfg = Config::load(&cli.global, Some(&flags))?;
            init_logging(&cfg.log_format);
            runtime.block_on(server::run(cfg))
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
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
