//! The server's configuration, read in one place: defaults, then a TOML file (`--config` or
//! `BATCHAI_CONFIG`), then `BATCHAI_*` environment variables, then command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything `batchai server` and `batchai admin` read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where the SQLite database, TLS material and bootstrap credentials live.
    pub data_dir: PathBuf,
    /// `postgres://…` for production; unset means SQLite in the data dir.
    pub database_url: Option<String>,
    /// HTTPS listener (ARM API and token service).
    pub listen: SocketAddr,
    /// Optional plain-HTTP listener; only loopback addresses are accepted.
    pub http_listen: Option<SocketAddr>,
    /// PEM certificate chain and key; generated into the data dir when unset.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Base URL put in absolute links (nextLink, operation URLs) instead of the Host header.
    pub public_url: Option<String>,
    /// Hold long-running operations this long before running them (demos, restart tests).
    pub lro_delay_ms: u64,
    pub token_lifetime_secs: u64,
    pub max_body_bytes: usize,
    /// `text` (default) or `json`.
    pub log_format: String,
    /// The subscription the first start's bootstrap credentials are scoped to.
    pub bootstrap_subscription: String,
    pub quota_clusters: i64,
    pub quota_vcpus: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("batchai-data"),
            database_url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            http_listen: None,
            tls_cert: None,
            tls_key: None,
            public_url: None,
            lro_delay_ms: 0,
            token_lifetime_secs: 3600,
            max_body_bytes: 4 * 1024 * 1024,
            log_format: "text".into(),
            bootstrap_subscription: "00000000-0000-0000-0000-000000000000".into(),
            quota_clusters: 100,
            quota_vcpus: 10_000,
        }
    }
}

/// Flags that override the other layers; unset flags leave them alone.
#[derive(Debug, Default, Clone, Serialize, clap::Args)]
pub struct Overrides {
    /// Config file (TOML); also BATCHAI_CONFIG.
    #[arg(long, global = true)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./batchai-data].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// postgres://user:pass@host/db; default: SQLite file in the data dir.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
}

/// Server-only flags.
#[derive(Debug, Default, Clone, Serialize, clap::Args)]
pub struct ServerOverrides {
    /// HTTPS listen address [default: 127.0.0.1:8443]; port 0 picks a free port.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Also serve plain HTTP on this loopback address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<SocketAddr>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
}

impl Config {
    pub fn load(flags: &Overrides, server: Option<&ServerOverrides>) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        let file = flags.config.clone().or_else(|| std::env::var_os("BATCHAI_CONFIG").map(PathBuf::from));
        if let Some(file) = &file {
            if !file.exists() {
                bail!("config file {} does not exist", file.display());
            }
            fig = fig.merge(Toml::file(file));
        }
        fig = fig.merge(Env::prefixed("BATCHAI_").ignore(&["config"]));
        fig = fig.merge(Serialized::globals(flags));
        if let Some(s) = server {
            fig = fig.merge(Serialized::globals(s));
        }
        let cfg: Config = fig.extract().context("reading configuration")?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> anyhow::Result<()> {
        if let Some(addr) = self.http_listen
            && !addr.ip().is_loopback()
        {
            bail!("http_listen {addr} is not a loopback address; plain HTTP is only served on loopback");
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!("log_format must be 'text' or 'json', not '{}'", self.log_format);
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("tls_cert and tls_key must be given together");
        }
        Ok(())
    }

    /// The database URL: the configured one, or the SQLite file in the data dir.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("batchai.sqlite").display()),
        }
    }

    pub fn api_settings(&self) -> batchai_api::ApiSettings {
        batchai_api::ApiSettings {
            lro_delay: Duration::from_millis(self.lro_delay_ms),
            token_lifetime: Duration::from_secs(self.token_lifetime_secs),
            max_body_bytes: self.max_body_bytes,
            public_url: self.public_url.clone(),
            quota_clusters: self.quota_clusters,
            quota_vcpus: self.quota_vcpus,
        }
    }
}

#[cfg(test)]
// figment's `Jail` closures must return its (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    fn flags(config: Option<&str>, data_dir: Option<&str>) -> Overrides {
        Overrides { config: config.map(PathBuf::from), data_dir: data_dir.map(PathBuf::from), database_url: None }
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "batchai.toml",
                "data_dir = \"from-file\"\nlro_delay_ms = 5\nlog_format = \"json\"\nlisten = \"127.0.0.1:9000\"\n",
            )?;
            jail.set_env("BATCHAI_LRO_DELAY_MS", "7");
            jail.set_env("BATCHAI_DATA_DIR", "from-env");
            let cfg = Config::load(&flags(Some("batchai.toml"), Some("from-flag")), None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.data_dir, PathBuf::from("from-flag"), "flags beat env and file");
            assert_eq!(cfg.lro_delay_ms, 7, "env beats file");
            assert_eq!(cfg.log_format, "json", "file beats defaults");
            assert_eq!(cfg.listen, SocketAddr::from(([127, 0, 0, 1], 9000)));
            assert_eq!(cfg.token_lifetime_secs, 3600, "defaults fill the rest");
            let server = ServerOverrides { listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))), ..Default::default() };
            let cfg = Config::load(&flags(Some("batchai.toml"), None), Some(&server)).map_err(|e| e.to_string())?;
            assert_eq!(cfg.listen.port(), 0);
            assert_eq!(cfg.data_dir, PathBuf::from("from-env"));
            assert_eq!(cfg.database_url(), "sqlite://from-env/batchai.sqlite");
            Ok(())
        });
    }

    #[test]
    fn rejects_unsafe_or_inconsistent_settings() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("BATCHAI_HTTP_LISTEN", "0.0.0.0:8080");
            let err = Config::load(&flags(None, None), None).unwrap_err().to_string();
            assert!(err.contains("loopback"), "{err}");
            jail.set_env("BATCHAI_HTTP_LISTEN", "127.0.0.1:8080");
            jail.set_env("BATCHAI_TLS_CERT", "/etc/cert.pem");
            let err = Config::load(&flags(None, None), None).unwrap_err().to_string();
            assert!(err.contains("together"), "{err}");
            let err = Config::load(&flags(Some("missing.toml"), None), None).unwrap_err().to_string();
            assert!(err.contains("does not exist"), "{err}");
            Ok(())
        });
    }
}
