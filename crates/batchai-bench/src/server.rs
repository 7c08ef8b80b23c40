//! Real `batchai` processes for the benchmarks: a server on loopback (SQLite in its data dir
//! or a fresh Postgres database), `batchai admin` against its database, and node agents.
//! Everything started here is killed when its handle drops.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Where the `batchai` binary is: `--batchai-bin`, else next to this benchmark's binary (both
/// are built into the same target directory).
pub fn batchai_bin(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let bin = match flag {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()?.parent().context("exe has a directory")?.join("batchai"),
    };
    if !bin.exists() {
        bail!(
            "{} does not exist: build it first (cargo build --release -p batchai) or pass --batchai-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// A fresh, empty database next to the superuser URL `admin`; returns its URL and name.
pub async fn fresh_pg(admin: &str) -> anyhow::Result<(String, String)> {
    use sqlx::Connection;
    let name = format!("batchai_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
    // Diagnostics: Postgres logs every statement on this database with its duration.
    if std::env::var_os("BENCH_PG_LOG_STATEMENTS").is_some() {
        let sql = format!("ALTER DATABASE {name} SET log_min_duration_statement = 0");
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
        eprintln!("Postgres logs every statement on {name}");
    }
    let (base, _) = admin.rsplit_once('/').context("database URL has no database part")?;
    Ok((format!("{base}/{name}"), name))
}

/// A running `batchai server`.
pub struct ServerProc {
    /// Killed on drop.
    _child: Child,
    pub pid: u32,
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    /// The database it uses (for `admin` and for reading job times afterwards).
    pub database_url: String,
    /// Postgres database name, to find its backends' CPU time; `None` on SQLite.
    pub pg_name: Option<String>,
    /// Plain-HTTP base URL on loopback.
    pub http: String,
    /// The Azure Files endpoint's base URL (loopback, plain HTTP).
    pub files: Option<String>,
    pub log: PathBuf,
}

impl ServerProc {
    /// Starts a server in `work/server` on a random loopback port. `pg_admin`: a superuser URL
    /// to create a fresh Postgres database beside; `None` for SQLite. `env` adds `BATCHAI_*`
    /// settings. Its log (RUST_LOG=warn) goes to `work/server.log`.
    pub async fn start(
        bin: &Path,
        work: &Path,
        pg_admin: Option<&str>,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let data_dir = work.join("server");
        std::fs::create_dir_all(&data_dir)?;
        let (database_url, pg_name) = match pg_admin {
            Some(admin) => {
                let (url, name) = fresh_pg(admin).await?;
                (url, Some(name))
            }
            None => (format!("sqlite://{}", data_dir.join("batchai.sqlite").display()), None),
        };
        let log = work.join("server.log");
        let mut cmd = Command::new(bin);
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--files-listen", "127.0.0.1:0"])
            .env_remove("BATCHAI_DATABASE_URL")
            .env("RUST_LOG", std::env::var("BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true);
        if pg_admin.is_some() {
            cmd.arg("--database-url").arg(&database_url);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("server has a pid")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout piped")?).lines();
        let ready: Value = loop {
            let Some(line) = lines.next_line().await? else {
                bail!("the server exited before BATCHAI_READY; see {}", log.display());
            };
            if let Some(json) = line.strip_prefix("BATCHAI_READY ") {
                break serde_json::from_str(json)?;
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let http = ready["http_url"].as_str().context("ready line has http_url")?.to_owned();
        let files = ready["files_url"].as_str().map(str::to_owned);
        Ok(Self { _child: child, pid, bin: bin.to_owned(), data_dir, database_url, pg_name, http, files, log })
    }

    /// Runs `batchai admin …` against this server's database; returns its JSON output.
    pub async fn admin(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("admin").arg("--data-dir").arg(&self.data_dir).args(args).env("RUST_LOG", "warn");
        if self.pg_name.is_some() {
            cmd.arg("--database-url").arg(&self.database_url);
        }
        let out = cmd.output().await?;
        if !out.status.success() {
            bail!("admin {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// A fresh join token from `batchai admin join-token create`.
    pub async fn join_token(&self) -> anyhow::Result<String> {
        let v = self.admin(&["join-token", "create", "--name", "bench"]).await?;
        Ok(v["join_token"].as_str().context("join_token in admin output")?.to_owned())
    }

    /// CPU seconds of the server and, on Postgres, of its database's backends.
    pub fn cpu(&self) -> (f64, f64) {
        let server = crate::stats::cpu_secs(self.pid).unwrap_or(0.0);
        let pg = self.pg_name.as_deref().map(crate::stats::postgres_cpu_secs).unwrap_or(0.0);
        (server, pg)
    }
}

/// A running `batchai agent` (process runtime) with its own data dir.
pub struct AgentProc {
    _child: Child,
    pub pid: u32,
}

impl AgentProc {
    pub fn start(bin: &Path, server: &str, token: &str, data_dir: &Path, log: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let child = Command::new(bin)
            .arg("agent")
            .arg("--server")
            .arg(server)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--address", "127.0.0.1", "--vm-size", "STANDARD_NC6", "--join-token", token])
            .env_remove("BATCHAI_DATABASE_URL")
            .env("RUST_LOG", std::env::var("BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log)?)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("agent has a pid")?;
        Ok(Self { _child: child, pid })
    }
}
