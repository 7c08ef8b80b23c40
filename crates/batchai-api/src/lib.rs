//! The HTTP surface of the server.
//!
//! - [`arm`]: the Azure Resource Manager API clients speak: Microsoft.BatchAI 2018-05-01 and the
//!   Microsoft.Resources subset (subscriptions, resource groups, provider registration).
//! - [`token_service`]: an AAD-compatible token service (v1, ADFS and v2 endpoints) so that
//!   msrestazure's `ServicePrincipalCredentials` and azure-identity work unmodified.
//! - [`auth`]: bearer-token checking (signed JWTs and long-lived API tokens) and the
//!   credential helpers `batchai admin` uses.
//! - [`lro`]: the long-running-operation engine that finishes creates, deletes and terminates,
//!   durably, whichever server process picks them up.
//! - [`health`]: `/healthz` and `/readyz` for load balancers and orchestrators.
//! - [`metrics`]: `/metrics` for Prometheus.
//! - [`files`]: job output files under the storage root: the listings of `listOutputFiles` and
//!   the signed download links they carry.

pub mod agent;
pub mod agent_storage;
pub mod arm;
pub mod auth;
mod error;
pub mod files;
pub mod health;
pub mod lro;
pub mod metrics;
pub mod token_service;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use batchai_store::Store;
use tokio::sync::Notify;

pub use error::Error;

/// Settings of the API layer (the binary's config module fills them).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Hold every long-running operation this long before running it (demos and restart tests).
    pub lro_delay: Duration,
    /// Lifetime of access tokens from the token service.
    pub token_lifetime: Duration,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Base URL for absolute links when set; otherwise taken from the request's Host header.
    pub public_url: Option<String>,
    /// Limits reported by usages (informational: on-prem capacity is the node pool).
    pub quota_clusters: i64,
    pub quota_vcpus: i64,
    /// Where Azure file shares and blob containers live (`{storage_root}/{account}/{share}`):
    /// listOutputFiles lists, and download links serve, files under it only.
    pub storage_root: PathBuf,
    /// The longest an agent's sync is held when nothing changes.
    pub agent_max_wait: Duration,
    /// Azure's VM sizes and the operator's own.
    pub vm_sizes: batchai_core::vm_sizes::Catalogue,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            lro_delay: Duration::ZERO,
            token_lifetime: Duration::from_secs(3600),
            max_body_bytes: 4 * 1024 * 1024,
            public_url: None,
            quota_clusters: 100,
            quota_vcpus: 10_000,
            storage_root: PathBuf::from("batchai-data/storage"),
            agent_max_wait: Duration::from_secs(20),
            vm_sizes: Default::default(),
        }
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub settings: Arc<ApiSettings>,
    pub keys: Arc<auth::Keys>,
    /// Woken whenever an operation is recorded, so the runner starts it at once.
    pub ops_wake: Arc<Notify>,
    /// Wakes the scheduler (work queued, nodes freed) and hears when it changed assignments.
    pub scheduler: batchai_scheduler::runner::Signals,
    /// Agents' long polls waiting for their node's assignments to change.
    pub waiters: Arc<agent::Waiters>,
    /// The storage accounts' keys, when the server has them: mounts of a registered account's
    /// shares must give its key.
    pub share_keys: Option<Arc<dyn ShareKeys>>,
    /// What `/metrics` reports.
    pub metrics: Arc<metrics::Metrics>,
}

/// Storage accounts' keys (the binary plugs in the Files endpoint's accounts).
pub trait ShareKeys: Send + Sync {
    /// The key of `account` (raw bytes); `None` for an account this server does not know.
    fn key<'a>(&'a self, account: &'a str) -> futures_util::future::BoxFuture<'a, Result<Option<Vec<u8>>, String>>;
}

impl AppState {
    /// Loads (or creates, once) the signing key and tenant id from the store.
    pub async fn new(store: Arc<dyn Store>, settings: ApiSettings) -> Result<Self, batchai_store::StoreError> {
        let keys = auth::Keys::load(store.as_ref()).await?;
        let waiters: Arc<agent::Waiters> = Default::default();
        let metrics: Arc<metrics::Metrics> = Default::default();
        Ok(Self {
            store,
            settings: Arc::new(settings),
            keys: Arc::new(keys),
            ops_wake: Arc::new(Notify::new()),
            scheduler: batchai_scheduler::runner::Signals {
                nodes: waiters.clone(),
                observer: metrics.clone(),
                ..Default::default()
            },
            waiters,
            share_keys: None,
            metrics,
        })
    }

    /// Checks mounts' `accountKey` against these keys from now on.
    pub fn with_share_keys(mut self, keys: Arc<dyn ShareKeys>) -> Self {
        self.share_keys = Some(keys);
        self
    }
}

/// Which listener a request came in on; absolute links use its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The whole HTTP application for a listener of `scheme`.
pub fn router(state: AppState, scheme: Scheme) -> Router {
    token_service::routes()
        .merge(files::routes())
        .merge(agent::routes())
        .merge(agent_storage::routes())
        .merge(health::routes())
        .merge(metrics::routes())
        .fallback(arm::handle)
        .with_state(state.clone())
        .layer(middleware::from_fn_with_state(state, metrics::track))
        .layer(middleware::from_fn(request_ids))
        .layer(axum::Extension(scheme))
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");
static CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");
static CORRELATION_ID: HeaderName = HeaderName::from_static("x-ms-correlation-request-id");

/// Every response carries `x-ms-request-id` and echoes `x-ms-client-request-id` exactly.
/// HTTP/2 requests carry their host in the URI instead of a `Host` header; it is copied into
/// one so absolute links are built the same way for both protocols.
async fn request_ids(mut req: Request, next: Next) -> Response {
    if !req.headers().contains_key(axum::http::header::HOST)
        && let Some(v) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(axum::http::header::HOST, v);
    }
    let client_id = req.headers().get(&CLIENT_REQUEST_ID).cloned();
    let request_id = uuid::Uuid::new_v4().to_string();
    let span =
        tracing::info_span!("request", request.id = %request_id, method = %req.method(), path = %req.uri().path());
    let started = std::time::Instant::now();
    let mut res = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(status = res.status().as_u16(), duration_ms = started.elapsed().as_millis() as u64, "served")
    });
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert(REQUEST_ID.clone(), v.clone());
        h.insert(CORRELATION_ID.clone(), v);
    }
    if let Some(v) = client_id {
        h.insert(CLIENT_REQUEST_ID.clone(), v);
    }
    res
}
