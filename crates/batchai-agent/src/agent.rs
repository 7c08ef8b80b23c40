//! The node agent: joins the server once, then syncs in a loop (`batchai_core::protocol`).
//!
//! Each sync reports what the node observes (facts, setup outcome, a report per task) and
//! answers what the node must run; the agent acts on the answer and syncs again at once. The
//! server holds a sync up to `wait_ms` while nothing changes (a long poll), so the agent asks
//! for no wait whenever it has news to report, and a local change (a task's phase, a finished
//! setup) cuts a waiting sync short: the request races the executors' report channels and a
//! long poll is dropped for a fresh sync when a report changes something (one that does not
//! wait is let finish; the news follows at once). Repeating a sync is harmless.
//!
//! State on disk, under `data_dir`: `node.json` (the node's id and credential, 0600),
//! `setup.json` (the last setup outcome, so a restart does not re-run the setup task),
//! `tasks/<hash>.json` (one marker per task this node started, holding its last report, until
//! the server stops listing the task), `mounts/` and `jobs/`.
//!
//! A task the server still lists whose marker shows it started is resumed, never started twice:
//! containers are found again by their labels and waited for (an agent killed with -9 leaves
//! them running); host processes cannot be found again (the process runtime keeps no handle
//! across a restart), so such a task is reported failed. On a clean shutdown (SIGTERM) the
//! agent stops its tasks' processes, containers included, and tells the server it leaves
//! (`/agent/v1/leave`): the server requeues the jobs at once, as for a lost node.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use batchai_core::protocol::{JoinRequest, JoinResponse, NodeFacts, SyncResponse};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::executor::NodeContext;
use crate::facts::{self, FactsConfig};
use crate::health::Health;
use crate::images::ImageMap;
use crate::runtime::Runtime;
use crate::setup::stopped;
use crate::staging::Stager;

mod state;

use state::State;

/// Long-poll wait asked of the server when the agent has nothing new to report.
pub const DEFAULT_SYNC_WAIT: Duration = Duration::from_secs(20);
/// SIGTERM→SIGKILL grace for a job's processes.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Retry delays after a failed call: doubling from the first to the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// How much longer than the asked wait a sync may take before it counts as lost.
const SYNC_SLACK: Duration = Duration::from_secs(30);
/// How long a shutting-down agent waits for the server to hear that it leaves.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// No `Debug`: it holds the join token.
#[derive(Clone)]
pub struct AgentConfig {
    /// e.g. `https://127.0.0.1:8443` or `http://127.0.0.1:8080`.
    pub server_url: String,
    /// PEM certificate(s) to trust for https instead of the system roots.
    pub ca_cert: Option<PathBuf>,
    /// Needed only until the node has joined (`data_dir/node.json` exists).
    pub join_token: Option<String>,
    pub data_dir: PathBuf,
    pub facts: FactsConfig,
    /// Overrides the storage root the server announces.
    pub storage_root: Option<PathBuf>,
    pub sync_wait: Duration,
    pub stop_grace: Duration,
    /// The operator's image map ([`crate::images`]).
    pub image_map: ImageMap,
    /// The node does not see the shared storage root: it keeps its own copy (`storage_root`,
    /// else `data_dir/storage`) and stages shares through the server ([`crate::staging`]).
    pub staged: bool,
    /// Where to serve `/healthz` ([`crate::health`]); not served when unset.
    pub health_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the server refused to let this node join: {0}")]
    JoinRefused(String),
    #[error("the server no longer accepts this node's credential (was the node removed?): {0}")]
    Removed(String),
    #[error("bad agent configuration: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let context = context.into();
    move |source| AgentError::Io { context, source }
}

/// Runs the agent until `shutdown` turns true (or its sender is dropped), then stops the
/// node's tasks and returns. Fails when the node cannot join or was removed from the server.
pub async fn run(
    cfg: AgentConfig,
    runtime: Arc<dyn Runtime>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let listener = match cfg.health_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(io_error(format!("binding {addr}")))?),
        None => None,
    };
    run_with_health(cfg, runtime, shutdown, listener).await
}

/// [`run`], serving `/healthz` and `/metrics` on `health` (already bound, so that the caller
/// knows its address) instead of `cfg.health_listen`.
pub async fn run_with_health(
    cfg: AgentConfig,
    runtime: Arc<dyn Runtime>,
    mut shutdown: watch::Receiver<bool>,
    health_listener: Option<tokio::net::TcpListener>,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(io_error(format!("creating {}", cfg.data_dir.display())))?;
    let server = Server::new(&cfg)?;
    let health = Arc::new(Health::default());
    if let Some(listener) = health_listener {
        tracing::info!(address = %listener.local_addr().map_err(io_error(String::from("the health listener")))?, "serving /healthz");
        tokio::spawn(crate::health::serve(listener, health.clone(), shutdown.clone()));
    }
    let facts_cfg = cfg.facts.clone();
    let mut facts = tokio::task::spawn_blocking(move || facts::discover(&facts_cfg))
        .await
        .map_err(|e| AgentError::Config(format!("discovering the node's facts: {e}")))?;
    runtime.name().clone_into(&mut facts.runtime);
    let Some(identity) = identity(&cfg, &server, &facts, &mut shutdown).await? else { return Ok(()) };
    health.joined(&identity.node_id);
    let (storage_root, staging) = if cfg.staged {
        let local = cfg.storage_root.clone().unwrap_or_else(|| cfg.data_dir.join("storage"));
        let stager = Stager::new(server.http.clone(), &server.base, &identity.credential, local.clone());
        (local, Some(Arc::new(stager)))
    } else {
        (cfg.storage_root.clone().unwrap_or_else(|| PathBuf::from(&identity.storage_root)), None)
    };
    let node = NodeContext {
        node_id: identity.node_id.clone(),
        data_dir: cfg.data_dir.clone(),
        storage_root,
        gpus: facts.gpus.clone(),
        stop_grace: cfg.stop_grace,
        image_map: cfg.image_map.clone(),
        staging,
        metrics: health.metrics.clone(),
    };
    health.metrics.gpus.set(facts.gpus.len() as i64);
    if !facts.gpus.is_empty() {
        health.probe_gpus(cfg.facts.clone());
    }
    tracing::info!(node.id = %node.node_id, runtime = runtime.name(), storage_root = %node.storage_root.display(), staged = cfg.staged, "agent started");
    let (mut state, mut events) = State::new(node, runtime, facts);
    let mut backoff = BACKOFF_FIRST;
    let result = loop {
        events.drain(&mut state);
        if let Some(until) = state.settle_until {
            loop {
                tokio::select! {
                    biased;
                    () = stopped(&mut shutdown) => break,
                    Some(r) = events.tasks.recv() => {
                        state.on_task_report(r);
                        if state.settle_until.is_none() {
                            break;
                        }
                    }
                    () = tokio::time::sleep_until(until) => break,
                }
            }
            state.settle_until = None;
        }
        let was_urgent = std::mem::take(&mut state.urgent);
        let wait = if was_urgent { Duration::ZERO } else { cfg.sync_wait };
        let request = state.request(wait);
        let step = {
            let call =
                server.post::<_, SyncResponse>("/agent/v1/sync", &identity.credential, &request, wait + SYNC_SLACK);
            tokio::pin!(call);
            loop {
                tokio::select! {
                    biased;
                    () = stopped(&mut shutdown) => break None,
                    // A long poll is cut short to report at once; a sync that does not wait
                    // is let finish (dropping it would cost its connection and the server
                    // its work), and the news goes in the next one, sent straight after.
                    Some(r) = events.tasks.recv() => if state.on_task_report(r) && !wait.is_zero() { break Some(None) },
                    Some(r) = events.setup.recv() => if state.on_setup_report(r) && !wait.is_zero() { break Some(None) },
                    response = &mut call => break Some(Some(response)),
                }
            }
        };
        match step {
            None => break Ok(()),
            // Something changed locally: drop the sync and report at once.
            Some(None) => state.urgent = true,
            Some(Some(Ok(response))) => {
                backoff = BACKOFF_FIRST;
                health.synced();
                if request.facts.is_some() {
                    state.facts_pending = false;
                }
                if state.first_answer() {
                    state.sweep(&response).await;
                }
                state.act(response);
            }
            Some(Some(Err(CallError::Status { status: 401, message }))) => {
                tracing::error!(node.id = %state.node.node_id, error = %message, "the server refused this node's credential; stopping");
                break Err(AgentError::Removed(message));
            }
            Some(Some(Err(e))) => {
                state.urgent |= was_urgent;
                health.metrics.sync_failures.inc();
                tracing::warn!(error = %e, retry_ms = backoff.as_millis(), "sync failed");
                tokio::select! {
                    () = stopped(&mut shutdown) => break Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_CAP);
            }
        }
    };
    state.shutdown().await;
    if result.is_ok() {
        leave(&server, &identity.credential, &identity.node_id).await;
    }
    tracing::info!("agent stopped");
    result
}

/// Tells the server this node is going away (its jobs were just stopped), so that it requeues
/// them now rather than after its node timeout. Best effort: without it the timeout does it.
async fn leave(server: &Server, credential: &str, node_id: &str) {
    match server
        .post::<_, serde_json::Value>("/agent/v1/leave", credential, &serde_json::json!({}), LEAVE_TIMEOUT)
        .await
    {
        Ok(_) => tracing::info!(node.id = %node_id, "told the server this node is shutting down"),
        Err(e) => {
            tracing::warn!(node.id = %node_id, error = %e, "could not tell the server this node is shutting down")
        }
    }
}

/// The saved identity, or a fresh one from joining. `None` when shut down while joining.
async fn identity(
    cfg: &AgentConfig,
    server: &Server,
    facts: &NodeFacts,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<JoinResponse>, AgentError> {
    let path = cfg.data_dir.join("node.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let saved: JoinResponse = serde_json::from_slice(&bytes)
                .map_err(|e| AgentError::Config(format!("{} is not a node identity: {e}", path.display())))?;
            return Ok(Some(saved));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(format!("reading {}", path.display()))(e)),
    }
    let Some(token) = cfg.join_token.as_deref() else {
        return Err(AgentError::Config(format!("no {} and no join token to join with", path.display())));
    };
    let request = JoinRequest { facts: facts.clone() };
    let mut backoff = BACKOFF_FIRST;
    let joined: JoinResponse = loop {
        match server.post("/agent/v1/join", token, &request, SYNC_SLACK).await {
            Ok(joined) => break joined,
            Err(CallError::Status { status, message }) if (400..500).contains(&status) => {
                return Err(AgentError::JoinRefused(message));
            }
            Err(e) => tracing::warn!(error = %e, retry_ms = backoff.as_millis(), "join failed"),
        }
        tokio::select! {
            () = stopped(shutdown) => return Ok(None),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_CAP);
    };
    // Saved before anything else: a node that joined and forgot it would join again as another.
    let json = serde_json::to_vec_pretty(&joined).map_err(|e| AgentError::Config(e.to_string()))?;
    write_private(&path, &json).map_err(io_error(format!("saving {}", path.display())))?;
    for warning in &joined.warnings {
        tracing::warn!(node.id = %joined.node_id, warning = %warning, "server warning about this node");
    }
    tracing::info!(node.id = %joined.node_id, "node joined");
    Ok(Some(joined))
}

/// Writes `path` atomically, readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    // `mode` only applies when the file is created.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("{0}")]
    Network(String),
}

struct Server {
    http: reqwest::Client,
    base: String,
}

impl Server {
    fn new(cfg: &AgentConfig) -> Result<Self, AgentError> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        if let Some(ca) = &cfg.ca_cert {
            let pem = std::fs::read(ca).map_err(io_error(format!("reading {}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|certs| !certs.is_empty())
                .ok_or_else(|| AgentError::Config(format!("{} holds no PEM certificate", ca.display())))?;
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().map_err(|e| AgentError::Config(format!("building the HTTP client: {e}")))?;
        Ok(Self { http, base: cfg.server_url.trim_end_matches('/').to_owned() })
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        bearer: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let network = |e: reqwest::Error| CallError::Network(e.to_string());
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(bearer)
            .json(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(network)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(network)?;
        if !status.is_success() {
            return Err(CallError::Status { status: status.as_u16(), message: error_message(&bytes) });
        }
        serde_json::from_slice(&bytes).map_err(|e| CallError::Network(format!("unreadable answer: {e}")))
    }
}

/// The message of an ARM error envelope `{"error":{"code","message"}}`, else the body.
fn error_message(body: &[u8]) -> String {
    let envelope: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error = envelope.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| error.and_then(|e| e.get(name)).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    match (field("code"), field("message")) {
        (code, message) if !code.is_empty() => format!("{code}: {message}"),
        _ => String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cfg = AgentConfig {
            server_url: "https://127.0.0.1:8443/".into(),
            ca_cert: Some(ca.clone()),
            join_token: None,
            data_dir: dir.path().to_owned(),
            facts: FactsConfig::default(),
            storage_root: None,
            sync_wait: DEFAULT_SYNC_WAIT,
            stop_grace: DEFAULT_STOP_GRACE,
            image_map: ImageMap::default(),
            staged: false,
            health_listen: None,
        };
        assert!(matches!(Server::new(&cfg), Err(AgentError::Io { .. })), "a missing file");
        std::fs::write(&ca, "not a certificate").unwrap();
        assert!(matches!(Server::new(&cfg), Err(AgentError::Config(_))));
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        assert_eq!(Server::new(&cfg).unwrap().base, "https://127.0.0.1:8443");
    }

    #[test]
    fn error_messages_come_from_the_arm_envelope() {
        let body = br#"{"error":{"code":"AuthenticationFailed","message":"The node was removed."}}"#;
        assert_eq!(error_message(body), "AuthenticationFailed: The node was removed.");
        assert_eq!(error_message(b"bad gateway"), "bad gateway");
    }
}
