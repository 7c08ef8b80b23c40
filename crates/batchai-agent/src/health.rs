//! The agent's `/healthz` and `/metrics` (when `health_listen` is set). `/healthz`: 200 while the agent's loop runs, with
//! what an operator checks first — which node it is and when it last heard from its server. A
//! partition from the server is reported, not failed: restarting the agent would not mend it,
//! and would lose the host processes of a running job.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use batchai_core::time::{now_millis, to_rfc3339};
use serde_json::json;
use tokio::sync::watch;

use crate::facts::FactsConfig;
use crate::metrics::AgentMetrics;

/// What the loop tells the health endpoint.
#[derive(Default)]
pub struct Health {
    node: OnceLock<String>,
    /// Epoch ms of the last successful sync; 0 before the first.
    last_sync: AtomicI64,
    pub metrics: Arc<AgentMetrics>,
    /// How to run nvidia-smi for the per-GPU series; unset (or no GPUs): none.
    gpu_probe: OnceLock<FactsConfig>,
}

impl Health {
    pub fn joined(&self, node: &str) {
        let _ = self.node.set(node.to_owned());
    }

    /// The node has GPUs: `/metrics` asks `nvidia-smi` (as `cfg` says) for their use.
    pub fn probe_gpus(&self, cfg: FactsConfig) {
        let _ = self.gpu_probe.set(cfg);
    }

    pub fn synced(&self) {
        self.last_sync.store(now_millis(), Ordering::Relaxed);
    }
}

async fn healthz(State(health): State<Arc<Health>>) -> Json<serde_json::Value> {
    let last = health.last_sync.load(Ordering::Relaxed);
    Json(json!({
        "status": "ok",
        "node": health.node.get(),
        "last_sync": (last > 0).then(|| to_rfc3339(last)),
        "since_last_sync_ms": (last > 0).then(|| now_millis() - last),
    }))
}

/// A scrape must not wait long on an nvidia-smi that hangs (a GPU fallen off the bus).
const GPU_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if let Some(cfg) = health.gpu_probe.get() {
        let cfg = FactsConfig { nvidia_smi_timeout: cfg.nvidia_smi_timeout.min(GPU_PROBE_TIMEOUT), ..cfg.clone() };
        match tokio::task::spawn_blocking(move || crate::facts::gpu_usage(&cfg)).await {
            Ok(usage) => health.metrics.set_gpu_usage(&usage),
            Err(e) => tracing::warn!(error = %e, "reading GPU usage"),
        }
    }
    let content_type = prometheus::TEXT_FORMAT;
    ([(axum::http::header::CONTENT_TYPE, content_type)], health.metrics.encode())
}

/// Serves `/healthz` and `/metrics` on `listener` until `stop` turns true.
pub async fn serve(listener: tokio::net::TcpListener, health: Arc<Health>, mut stop: watch::Receiver<bool>) {
    let app = Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics)).with_state(health);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "the health endpoint stopped");
    }
}
