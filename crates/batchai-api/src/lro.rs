//! Long-running operations.
//!
//! A create, delete or terminate is recorded as an [`Operation`] in the same transaction as the
//! state change that starts it; [`run`] then finishes it. The record is durable and leased, so
//! whichever server process is alive finishes it — after a crash too — and pollers keep getting
//! answers. Work done by an operation is idempotent, so a second run after a lost lease is
//! harmless. Deletes finish whether anybody polls or not.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use batchai_core::ids::{Kind, ResourceRef};
use batchai_core::state::{ExecutionState, OperationStatus, ProvisioningState};
use batchai_core::time::{now_millis, to_rfc3339};
use batchai_core::{ApiError, ErrorCode};
use batchai_store::{JobError, JobOutcome, Operation, OperationKind, StoreError};
use serde_json::{Value, json};

use crate::AppState;
use crate::arm::route::Route;

/// How long a server holds an operation before another may take it over.
const LEASE: Duration = Duration::from_secs(10);
/// How often the runner looks for due work it was not woken for (other servers' operations,
/// delayed ones, leases that ran out).
const POLL: Duration = Duration::from_millis(500);
/// `Retry-After` sent to pollers, in seconds (an integer: msrest rejects fractions).
const RETRY_AFTER: &str = "1";

pub(crate) fn new_operation(ctx: &crate::arm::Ctx, kind: OperationKind, r: &ResourceRef, location: &str) -> Operation {
    let now = now_millis();
    Operation {
        id: uuid::Uuid::new_v4().to_string(),
        subscription_id: r.subscription.to_lowercase(),
        location: location.to_owned(),
        kind,
        resource_kind: r.kind,
        resource_key: r.key(),
        resource_id: r.id(),
        dollar_id: r.dollar_id(),
        status: OperationStatus::InProgress,
        error_code: None,
        error_message: None,
        started_at: now,
        ended_at: None,
        run_after: now + ctx.state.settings.lro_delay.as_millis() as i64,
        attempts: 0,
    }
}

/// The operation of a create and the state the resource starts in. A create has no work left
/// once its row is written, so without a configured delay the operation is recorded already
/// finished, in the same transaction (fewer writes per PUT; pollers see `Succeeded` at once).
/// With a delay it stays `InProgress` until the runner finishes it, as demos and restart
/// tests need.
pub(crate) fn create_operation(
    ctx: &crate::arm::Ctx,
    r: &ResourceRef,
    location: &str,
) -> (Operation, ProvisioningState) {
    let mut op = new_operation(ctx, OperationKind::Create, r, location);
    if ctx.state.settings.lro_delay.is_zero() {
        op.status = OperationStatus::Succeeded;
        op.ended_at = Some(op.started_at);
        (op, ProvisioningState::Succeeded)
    } else {
        (op, ProvisioningState::Creating)
    }
}

/// Starts the runner on an operation that still has work to do.
pub(crate) fn wake_if_pending(ctx: &crate::arm::Ctx, op: &Operation) {
    if !op.status.is_terminal() {
        ctx.state.ops_wake.notify_one();
    }
}

fn batchai_operation_url(ctx: &crate::arm::Ctx, op: &Operation, leaf: &str) -> String {
    format!(
        "{}/subscriptions/{}/providers/Microsoft.BatchAI/locations/{}/{leaf}/{}?api-version={}",
        ctx.base, op.subscription_id, op.location, op.id, ctx.api_version
    )
}

/// 202 with the three headers Batch AI clients poll by.
pub(crate) fn accepted(ctx: &crate::arm::Ctx, op: &Operation) -> Response {
    if op.status != OperationStatus::InProgress {
        // Finished as it was recorded (a create with nothing left to do): counted here, since
        // the runner never sees it.
        count(&ctx.state, op, op.status);
    }
    let mut res = StatusCode::ACCEPTED.into_response();
    let h = res.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, name: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(name, v);
        }
    };
    set(h, "azure-asyncoperation", batchai_operation_url(ctx, op, "operationresults"));
    set(h, "location", batchai_operation_url(ctx, op, "operationstatuses"));
    h.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    res
}

/// 202 with `Location` only: resource-group deletes (`final-state-via: location`).
pub(crate) fn group_accepted(ctx: &crate::arm::Ctx, op: &Operation) -> Response {
    let url = format!(
        "{}/subscriptions/{}/operationresults/{}?api-version={}",
        ctx.base, op.subscription_id, op.id, ctx.api_version
    );
    let mut res = StatusCode::ACCEPTED.into_response();
    if let Ok(v) = HeaderValue::from_str(&url) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
    res
}

pub(crate) async fn load_operation(ctx: &crate::arm::Ctx, sub: &str, id: &str) -> Result<Operation, crate::Error> {
    let not_found = || ApiError::new(ErrorCode::OperationNotFound, format!("The operation '{id}' could not be found."));
    let op = ctx.state.store.get_operation(id).await?.ok_or_else(not_found)?;
    if !op.subscription_id.eq_ignore_ascii_case(sub) {
        return Err(not_found().into());
    }
    Ok(op)
}

/// The body pollers read: `{id, name, status, startTime[, endTime][, properties][, error]}`.
pub(crate) fn status_body(ctx: &crate::arm::Ctx, op: &Operation) -> Value {
    let url = batchai_operation_url(ctx, op, "operationresults");
    let mut v = json!({
        "id": url.split('?').next().unwrap_or_default(),
        "name": op.id,
        "status": op.status.as_str(),
        "startTime": to_rfc3339(op.started_at),
    });
    if let Some(end) = op.ended_at {
        v["endTime"] = to_rfc3339(end).into();
    }
    match op.status {
        OperationStatus::Succeeded => v["properties"] = json!({ "resourceId": op.dollar_id }),
        OperationStatus::Failed | OperationStatus::Canceled => {
            v["error"] = json!({
                "code": op.error_code.clone().unwrap_or_else(|| "OperationFailed".into()),
                "message": op.error_message.clone().unwrap_or_else(|| "The operation failed.".into()),
            })
        }
        OperationStatus::InProgress => {}
    }
    v
}

pub(crate) async fn poll(ctx: &crate::arm::Ctx, route: &Route) -> Result<Response, crate::Error> {
    let Route::BatchOperation { sub, op, .. } = route else { return Err(ApiError::internal().into()) };
    let op = load_operation(ctx, sub, op).await?;
    let mut res = crate::arm::ok(status_body(ctx, &op));
    if op.status == OperationStatus::InProgress {
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
    }
    Ok(res)
}

/// Runs operations until `shutdown` resolves.
pub async fn run(state: AppState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let now = now_millis();
        let lease_until = now + LEASE.as_millis() as i64;
        let batch = match state.store.claim_operations(now, lease_until, 32).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "could not claim operations; retrying");
                Vec::new()
            }
        };
        let full = batch.len() == 32;
        for op in batch {
            if let Err(e) = execute(&state, &op).await {
                // The lease runs out and the operation is retried.
                tracing::warn!(operation.id = %op.id, error = %e, "operation step failed; will retry");
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            _ = state.ops_wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Counts a finished operation for `/metrics`.
fn count(state: &AppState, op: &Operation, status: OperationStatus) {
    state.metrics.operations.with_label_values(&[op.kind.as_str(), status.as_str()]).inc();
}

/// One run of an operation. Returns without finishing it when it must wait (a running job
/// being terminated), so the next lease retries it.
async fn execute(state: &AppState, op: &Operation) -> Result<(), StoreError> {
    let store = &state.store;
    let now = now_millis();
    let finish = |status, err: Option<(&'static str, String)>| async move {
        let err_ref = err.as_ref().map(|(c, m)| (*c, m.as_str()));
        let finished = store.finish_operation(&op.id, status, err_ref, now_millis()).await?;
        if finished {
            count(state, op, status);
        }
        Ok::<bool, StoreError>(finished)
    };
    match op.kind {
        OperationKind::Create if op.resource_kind == Kind::FileServer && !file_server_declared(state, op).await? => {
            store
                .transition_provisioning(&op.resource_key, ProvisioningState::Creating, ProvisioningState::Failed, now)
                .await?;
            let name = op.resource_id.rsplit('/').next().unwrap_or_default();
            let message = crate::arm::not_declared_message(name);
            finish(OperationStatus::Failed, Some((crate::arm::NOT_DECLARED, message))).await?;
            tracing::info!(resource.id = %op.resource_id, "file server not declared; its creation failed");
        }
        OperationKind::Create => {
            store
                .transition_provisioning(
                    &op.resource_key,
                    ProvisioningState::Creating,
                    ProvisioningState::Succeeded,
                    now,
                )
                .await?;
            let row = store.get_resource(&op.resource_key).await?;
            match row.map(|r| r.provisioning_state) {
                Some(ProvisioningState::Succeeded) => finish(OperationStatus::Succeeded, None).await?,
                Some(ProvisioningState::Deleting) | None => {
                    finish(
                        OperationStatus::Canceled,
                        Some((
                            "ResourceDeleted",
                            format!("{} was deleted while it was being created.", op.resource_id),
                        )),
                    )
                    .await?
                }
                Some(other) => {
                    finish(
                        OperationStatus::Failed,
                        Some(("ProvisioningFailed", format!("{} ended {}.", op.resource_id, other.as_str()))),
                    )
                    .await?
                }
            };
        }
        OperationKind::Delete => {
            if op.resource_kind == Kind::Cluster {
                fail_cluster_jobs(store.as_ref(), &op.resource_key).await?;
            }
            store.delete_subtree(&op.resource_key, op.resource_kind).await?;
            // Frees the nodes of what was deleted and tells their agents.
            state.scheduler.wake.notify_one();
            finish(OperationStatus::Succeeded, None).await?;
            tracing::info!(resource.id = %op.resource_id, "deleted");
        }
        OperationKind::Terminate => {
            if terminate(state, op).await? {
                finish(OperationStatus::Succeeded, None).await?;
            }
        }
    }
    Ok(())
}

/// Whether the file server an operation creates was declared when it was put (a missing one, or
/// one being deleted, counts as declared: the ordinary path then cancels the operation).
async fn file_server_declared(state: &AppState, op: &Operation) -> Result<bool, StoreError> {
    let Some(row) = state.store.get_resource(&op.resource_key).await? else { return Ok(true) };
    if row.provisioning_state == ProvisioningState::Deleting {
        return Ok(true);
    }
    let spec = row.spec.and_then(|s| serde_json::from_value::<batchai_core::models::FileServerSpec>(s).ok());
    Ok(spec.is_some_and(|s| s.declared.is_some()))
}

/// Moves a job towards `failed` with `JobTerminated`; true once it is terminal (or gone).
async fn terminate(state: &AppState, op: &Operation) -> Result<bool, StoreError> {
    let store = &state.store;
    let Some(job) = store.get_resource(&op.resource_key).await?.and_then(|r| r.job) else { return Ok(true) };
    let now = now_millis();
    let errors = vec![JobError {
        code: "JobTerminated".into(),
        message: "The specified job has been terminated by the user".into(),
    }];
    match job.execution_state {
        ExecutionState::Succeeded | ExecutionState::Failed => Ok(true),
        ExecutionState::Queued => {
            let outcome = JobOutcome {
                start_time: Some(now),
                end_time: Some(now),
                errors: Some(errors),
                now,
                ..Default::default()
            };
            store.transition_job(&op.resource_key, ExecutionState::Queued, ExecutionState::Failed, &outcome).await?;
            Ok(store
                .get_resource(&op.resource_key)
                .await?
                .and_then(|r| r.job)
                .is_none_or(|j| j.execution_state.is_terminal()))
        }
        ExecutionState::Running => {
            let outcome = JobOutcome { errors: Some(errors), now, ..Default::default() };
            if store
                .transition_job(&op.resource_key, ExecutionState::Running, ExecutionState::Terminating, &outcome)
                .await?
            {
                store.touch_job_nodes(&op.resource_key, now).await?;
                state.scheduler.changed.notify_one();
            }
            Ok(false)
        }
        // The agents running it report the end; until then the operation waits.
        ExecutionState::Terminating => Ok(false),
    }
}

/// Ends the jobs of a cluster being deleted: they can no longer run.
async fn fail_cluster_jobs(store: &dyn batchai_store::Store, cluster_key: &str) -> Result<(), StoreError> {
    let now = now_millis();
    let errors = vec![JobError {
        code: "ClusterDeleted".into(),
        message: "The job's cluster was deleted before the job completed".into(),
    }];
    for j in store.cluster_jobs(cluster_key, i64::MAX).await? {
        let o = JobOutcome {
            start_time: j.start_time.is_none().then_some(now),
            end_time: Some(now),
            errors: Some(errors.clone()),
            now,
            ..Default::default()
        };
        if j.execution_state == ExecutionState::Queued {
            store.transition_job(&j.key, ExecutionState::Queued, ExecutionState::Failed, &o).await?;
        } else {
            store.finish_job(&j.key, j.epoch, j.execution_state, ExecutionState::Failed, &o).await?;
        }
    }
    Ok(())
}
