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
    /// Where Azure file shares and blob containers live, `{storage_root}/{account}/{share}`
    /// (unset: `{data_dir}/storage`). Shared storage: the server lists and serves job output
    /// from it, so every machine running jobs must see the same directory (an NFS mount).
    pub storage_root: Option<PathBuf>,
    /// The Azure Files endpoint (path style, `{url}/{account}/{share}/…`): plain HTTP on a
    /// loopback address, HTTPS with the server's certificate on any other. Unset: not served
    /// (`batchai dev` serves it on a free loopback port).
    pub files_listen: Option<SocketAddr>,
    /// The key that seals storage account keys at rest (unset: `{data_dir}/storage-master.key`,
    /// created on first use). Every server on one database needs the same file.
    pub storage_master_key: Option<PathBuf>,
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
    /// A node silent this long is unusable and its job requeued or failed.
    pub node_timeout_secs: u64,
    /// Times a job is requeued after losing a node before it fails.
    pub max_requeues: i32,
    /// Idle time before autoscale gives a node back.
    pub autoscale_grace_secs: u64,
    /// The longest the server holds an agent's sync when nothing changes.
    pub agent_max_wait_ms: u64,
    /// `batchai agent`: the server to join, e.g. `https://batchai.example:8443`.
    pub server_url: Option<String>,
    /// `batchai agent`: CA certificate (PEM) to trust for the server.
    pub ca_cert: Option<PathBuf>,
    /// `batchai agent`: join token, needed on the first start only. `batchai server`: a join
    /// token accepted beside those `batchai admin join-token create` makes (one secret for the
    /// server and its agents, as in docker-compose.yml); revoking it lasts.
    pub join_token: Option<String>,
    /// `batchai agent`: address other nodes and clients reach this node at.
    pub node_address: Option<String>,
    pub ssh_port: u16,
    /// `batchai agent`: VM sizes this node serves (`*` for all).
    pub vm_sizes: Vec<String>,
    /// `batchai agent`: SIGTERM-to-SIGKILL grace when stopping a job.
    pub stop_grace_secs: u64,
    /// `batchai agent`: how jobs run. `auto` (default) uses Docker when an engine answers
    /// (`DOCKER_HOST` or the local socket), else host processes only; `docker` requires it;
    /// `process` never uses it (jobs with `containerSettings` then fail on this node, unless
    /// `image_map` sends their image to `host`).
    pub runtime: String,
    /// `batchai agent`: serve `/healthz` here (unset: not served).
    pub health_listen: Option<SocketAddr>,
    /// `batchai agent`: `shared` (default: the storage root is mounted here at the server's
    /// path, or at `storage_root`) or `staged` (it is not: the agent keeps its own copy in
    /// `storage_root`, default `{data_dir}/storage`, fetching a job's shares before it runs and
    /// pushing what it writes through the server).
    pub storage_mode: String,
    /// `batchai agent`: Docker network mode of job containers: `host` (default: jobs get the
    /// node's address) or `container:<name>` when the agent itself runs in a container.
    pub docker_network: String,
    /// `batchai agent`: image redirections (TOML `[[image_map]]` tables: `pattern`, `image`),
    /// first match wins; a trailing `*` in both carries the rest of the name over. The image
    /// `host` runs the job's processes on the host, without a container, as for a job without
    /// `containerSettings` (e.g. a node without Docker that has the job's tools installed).
    pub image_map: Vec<ImageMapping>,
    /// VM sizes of the operator's own machines, beside Azure's catalogue (TOML
    /// `[[custom_vm_sizes]]` tables: name, family, cores, memory_mib, gpus).
    pub custom_vm_sizes: Vec<batchai_core::vm_sizes::CustomSize>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("batchai-data"),
            database_url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            http_listen: None,
            storage_root: None,
            files_listen: None,
            storage_master_key: None,
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
            node_timeout_secs: 60,
            max_requeues: 2,
            autoscale_grace_secs: 60,
            agent_max_wait_ms: 20_000,
            server_url: None,
            ca_cert: None,
            join_token: None,
            node_address: None,
            ssh_port: 22,
            vm_sizes: Vec::new(),
            stop_grace_secs: 10,
            runtime: "auto".into(),
            storage_mode: "shared".into(),
            health_listen: None,
            docker_network: "host".into(),
            image_map: Vec::new(),
            custom_vm_sizes: Vec::new(),
        }
    }
}

/// One `[[image_map]]` entry: jobs asking for `pattern` run `image` instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMapping {
    pub pattern: String,
    pub image: String,
}

/// `batchai dev`'s image map when none is configured, so Batch AI's CNTK quickstart runs
/// (`examples/cntk-mnist` stands in for CNTK and needs only Python): with Docker its CNTK images
/// run in the local Python image (`scripts/build-images.sh`); without Docker they map to `host`
/// and the job runs with the machine's own Python, where it would otherwise fail for want of
/// containers.
pub fn dev_image_map(docker: bool) -> Vec<ImageMapping> {
    let image = if docker { "batchai/python:latest" } else { batchai_agent::images::HOST };
    vec![ImageMapping { pattern: "microsoft/cntk:*".into(), image: image.into() }]
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
    /// Serve the Azure Files endpoint on this address (port 0 picks a free port).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_listen: Option<SocketAddr>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
}

/// Agent-only flags.
#[derive(Debug, Default, Clone, Serialize, clap::Args)]
pub struct AgentOverrides {
    /// Server URL (https://host:port); also BATCHAI_SERVER_URL.
    #[arg(long = "server")]
    #[serde(rename = "server_url", skip_serializing_if = "Option::is_none")]
    pub server_url: Option<String>,
    /// CA certificate (PEM) to trust for the server.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    /// Join token (first start only); also BATCHAI_JOIN_TOKEN.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
    /// Address other nodes reach this one at [default: 127.0.0.1].
    #[arg(long = "address")]
    #[serde(rename = "node_address", skip_serializing_if = "Option::is_none")]
    pub node_address: Option<String>,
    /// VM size this node serves (repeat; `*` for all).
    #[arg(long = "vm-size")]
    #[serde(rename = "vm_sizes", skip_serializing_if = "Vec::is_empty")]
    pub vm_sizes: Vec<String>,
    /// Shared storage root, when mounted elsewhere than on the server.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_root: Option<PathBuf>,
    /// How jobs run: auto (Docker when available), docker or process.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// shared (the storage root is mounted here) or staged (shares go through the server).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_mode: Option<String>,
    /// Serve /healthz on this address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_listen: Option<SocketAddr>,
}

impl Config {
    pub fn load(flags: &Overrides, server: Option<&ServerOverrides>) -> anyhow::Result<Self> {
        Self::load_with(flags, server, None)
    }

    pub fn load_with(
        flags: &Overrides,
        server: Option<&ServerOverrides>,
        agent: Option<&AgentOverrides>,
    ) -> anyhow::Result<Self> {
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
        if let Some(a) = agent {
            fig = fig.merge(Serialized::globals(a));
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
        if !matches!(self.runtime.as_str(), "auto" | "docker" | "process") {
            bail!("runtime must be 'auto', 'docker' or 'process', not '{}'", self.runtime);
        }
        if !matches!(self.storage_mode.as_str(), "shared" | "staged") {
            bail!("storage_mode must be 'shared' or 'staged', not '{}'", self.storage_mode);
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

    /// The storage root: the configured one, or `storage` in the data dir.
    pub fn storage_root(&self) -> PathBuf {
        self.storage_root.clone().unwrap_or_else(|| self.data_dir.join("storage"))
    }

    pub fn storage_master_key(&self) -> PathBuf {
        self.storage_master_key.clone().unwrap_or_else(|| self.data_dir.join("storage-master.key"))
    }

    pub fn api_settings(&self) -> batchai_api::ApiSettings {
        batchai_api::ApiSettings {
            lro_delay: Duration::from_millis(self.lro_delay_ms),
            token_lifetime: Duration::from_secs(self.token_lifetime_secs),
            max_body_bytes: self.max_body_bytes,
            public_url: self.public_url.clone(),
            quota_clusters: self.quota_clusters,
            quota_vcpus: self.quota_vcpus,
            storage_root: self.storage_root(),
            agent_max_wait: Duration::from_millis(self.agent_max_wait_ms),
            vm_sizes: batchai_core::vm_sizes::Catalogue { custom: self.custom_vm_sizes.clone() },
        }
    }

    pub fn scheduler_settings(&self) -> batchai_scheduler::runner::Settings {
        batchai_scheduler::runner::Settings {
            node_timeout: Duration::from_secs(self.node_timeout_secs),
            max_requeues: self.max_requeues,
            autoscale_grace: Duration::from_secs(self.autoscale_grace_secs),
            ..Default::default()
        }
    }

    /// The agent's settings; `data_dir` is the agent's own directory.
    pub fn agent_config(&self, data_dir: PathBuf) -> anyhow::Result<batchai_agent::agent::AgentConfig> {
        let server_url = self.server_url.clone().context("the agent needs --server (or BATCHAI_SERVER_URL)")?;
        Ok(batchai_agent::agent::AgentConfig {
            server_url,
            ca_cert: self.ca_cert.clone(),
            join_token: self.join_token.clone(),
            data_dir,
            facts: batchai_agent::facts::FactsConfig {
                address: self.node_address.clone(),
                ssh_port: self.ssh_port,
                vm_sizes: if self.vm_sizes.is_empty() { vec!["*".into()] } else { self.vm_sizes.clone() },
                ..Default::default()
            },
            storage_root: self.storage_root.clone(),
            sync_wait: Duration::from_millis(self.agent_max_wait_ms),
            stop_grace: Duration::from_secs(self.stop_grace_secs),
            image_map: batchai_agent::images::ImageMap(
                self.image_map.iter().map(|m| (m.pattern.clone(), m.image.clone())).collect(),
            ),
            staged: self.storage_mode == "staged",
            health_listen: self.health_listen,
        })
    }

    /// How the agent's job containers run.
    pub fn docker_config(&self) -> batchai_agent::runtime::DockerConfig {
        batchai_agent::runtime::DockerConfig { network: self.docker_network.clone() }
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
    fn storage_root_defaults_into_the_data_dir_and_can_be_moved() {
        figment::Jail::expect_with(|jail| {
            let cfg = Config::load(&flags(None, Some("data")), None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.storage_root(), PathBuf::from("data/storage"));
            assert_eq!(cfg.api_settings().storage_root, PathBuf::from("data/storage"));
            assert_eq!(cfg.storage_master_key(), PathBuf::from("data/storage-master.key"));
            assert_eq!(cfg.files_listen, None, "the Files endpoint is opt-in for `server`");
            jail.create_file("batchai.toml", "storage_root = \"/mnt/from-file\"\n")?;
            let cfg = Config::load(&flags(Some("batchai.toml"), None), None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.storage_root(), PathBuf::from("/mnt/from-file"));
            jail.set_env("BATCHAI_STORAGE_ROOT", "/mnt/shared");
            let cfg = Config::load(&flags(Some("batchai.toml"), None), None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.api_settings().storage_root, PathBuf::from("/mnt/shared"), "env beats file");
            jail.set_env("BATCHAI_FILES_LISTEN", "0.0.0.0:10004");
            let cfg = Config::load(&flags(None, None), None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.files_listen, Some(SocketAddr::from(([0, 0, 0, 0], 10004))));
            Ok(())
        });
    }

    #[test]
    fn agent_settings_layer_and_custom_sizes_come_from_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "agent.toml",
                "server_url = \"https://file:8443\"\nvm_sizes = [\"STANDARD_NC6\"]\nstop_grace_secs = 3\n\
                 [[custom_vm_sizes]]\nname = \"ONPREM_8A100\"\nfamily = \"A100\"\ncores = 128\n\
                 memory_mib = 1048576\ngpus = 8\n",
            )?;
            jail.set_env("BATCHAI_JOIN_TOKEN", "bai_join_env");
            let agent = AgentOverrides { server_url: Some("https://flag:8443".into()), ..Default::default() };
            let cfg =
                Config::load_with(&flags(Some("agent.toml"), None), None, Some(&agent)).map_err(|e| e.to_string())?;
            let a = cfg.agent_config(PathBuf::from("node")).map_err(|e| e.to_string())?;
            assert_eq!(a.server_url, "https://flag:8443", "flags beat the file");
            assert_eq!(a.join_token.as_deref(), Some("bai_join_env"));
            assert_eq!(a.facts.vm_sizes, vec!["STANDARD_NC6".to_string()]);
            assert_eq!(a.stop_grace, Duration::from_secs(3));
            let sizes = cfg.api_settings().vm_sizes;
            assert_eq!(sizes.find("onprem_8a100").map(|s| s.gpus), Some(8));
            let bare = Config::load(&flags(None, None), None).map_err(|e| e.to_string())?;
            assert_eq!(
                bare.agent_config(PathBuf::from("n")).map(|_| ()).map_err(|e| e.to_string()),
                Err("the agent needs --server (or BATCHAI_SERVER_URL)".to_string())
            );
            Ok(())
        });
    }

    #[test]
    fn the_runtime_and_image_map_come_from_the_file_env_and_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "agent.toml",
                "runtime = \"docker\"\ndocker_network = \"container:agent-1\"\n\
                 [[image_map]]\npattern = \"microsoft/cntk:*\"\nimage = \"batchai/busybox:latest\"\n\
                 [[image_map]]\npattern = \"*\"\nimage = \"mirror.local/*\"\n",
            )?;
            let cfg = Config::load(&flags(Some("agent.toml"), None), None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.runtime, "docker");
            assert_eq!(cfg.docker_config().network, "container:agent-1");
            let agent = Config { server_url: Some("http://s".into()), ..cfg.clone() };
            let map = agent.agent_config(PathBuf::from("n")).map_err(|e| e.to_string())?.image_map;
            assert_eq!(map.resolve("microsoft/cntk:2.1"), "batchai/busybox:latest");
            assert_eq!(map.resolve("ubuntu:18.04"), "mirror.local/ubuntu:18.04");
            let bare = Config::load(&flags(None, None), None).map_err(|e| e.to_string())?;
            assert_eq!((bare.runtime.as_str(), bare.docker_network.as_str()), ("auto", "host"));
            jail.set_env("BATCHAI_RUNTIME", "process");
            let agent = AgentOverrides { runtime: Some("auto".into()), ..Default::default() };
            let cfg =
                Config::load_with(&flags(Some("agent.toml"), None), None, Some(&agent)).map_err(|e| e.to_string())?;
            assert_eq!(cfg.runtime, "auto", "the flag beats env and file");
            jail.set_env("BATCHAI_RUNTIME", "podman");
            let err = Config::load(&flags(None, None), None).unwrap_err().to_string();
            assert!(err.contains("'auto', 'docker' or 'process'"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_dev_image_map_runs_the_cntk_quickstart_with_or_without_docker() {
        let resolve = |docker: bool| {
            let cfg =
                Config { server_url: Some("http://s".into()), image_map: dev_image_map(docker), ..Config::default() };
            let map = cfg.agent_config(PathBuf::from("n")).unwrap().image_map;
            (map.resolve("microsoft/cntk:2.0-cpu-python3.5"), map.container_image("ubuntu"))
        };
        assert_eq!(resolve(true), ("batchai/python:latest".to_owned(), Some("ubuntu".to_owned())));
        assert_eq!(resolve(false), (batchai_agent::images::HOST.to_owned(), Some("ubuntu".to_owned())));
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
            jail.clear_env();
            jail.set_env("BATCHAI_STORAGE_MODE", "nfs");
            let err = Config::load(&flags(None, None), None).unwrap_err().to_string();
            assert!(err.contains("storage_mode"), "{err}");
            Ok(())
        });
    }
}
