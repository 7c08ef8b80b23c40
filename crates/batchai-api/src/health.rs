//! Health for load balancers and orchestrators, unauthenticated, on every listener:
//! `/healthz` says the process serves; `/readyz` says it can do its work — the database answers
//! and holds every migration this build has — and answers 503 with the reason otherwise, so a
//! balancer stops sending requests to a server whose database is down and sends them again once
//! it is back.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::AppState;

/// A database that has not answered by then counts as down (the pool would wait longer).
const DATABASE_WAIT: Duration = Duration::from_secs(2);

pub fn routes() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.clone();
    let check = async move {
        // The details (addresses, driver messages) go to the log, not to anonymous callers.
        let unreachable = |e: batchai_store::StoreError| {
            tracing::debug!(error = %e, "database check failed");
            "unreachable".to_owned()
        };
        store.ping().await.map_err(unreachable)?;
        match store.schema_current().await {
            Ok(true) => Ok(()),
            Ok(false) => Err("its schema lacks migrations of this build".to_owned()),
            Err(e) => Err(unreachable(e)),
        }
    };
    let database = match tokio::time::timeout(DATABASE_WAIT, check).await {
        Ok(Ok(())) => return Json(json!({"status": "ready", "database": "ok"})).into_response(),
        Ok(Err(why)) => why,
        Err(_) => format!("no answer within {} s", DATABASE_WAIT.as_secs()),
    };
    tracing::info!(database = %database, "not ready");
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unready", "database": database}))).into_response()
}
