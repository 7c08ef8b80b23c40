//! Microsoft.BatchAI 2018-05-01: workspaces, experiments, clusters, jobs, usages, operations.
//! Handlers parse into core types, validate, call the store, render.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use batchai_core::contract::paths::parse_file_url;
use batchai_core::contract::volumes::Export;
use batchai_core::ids::{Kind, ResourceRef};
use batchai_core::models::{
    ClusterSpec, ClusterUpdate, DeclaredExport, FileServerSpec, JobSpec, MountVolumes, scale_defaults,
};
use batchai_core::names::{NameKind, ResourceName};
use batchai_core::state::{AllocationState, ProvisioningState};
use batchai_core::{ApiError, ErrorCode, validate};
use batchai_store::{
    ListQuery, NewCluster, NewJob, NewResource, Operation, OperationKind, ResourceRow, Scope, StoreError,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::resources::{LocatedBody, being_deleted, list_page, load_group, new_resource, patch_tags};
use super::route::{JobAction, Route};
use super::{Ctx, method_not_allowed, ok, paging, render};
use crate::{Error, files, lro};

pub(super) async fn dispatch(ctx: &Ctx, route: Route) -> Result<Response, Error> {
    use Method as M;
    use Route as R;
    let m = ctx.method.clone();
    match (m, route) {
        (M::GET, R::ProviderOperations) => Ok(ok(json!({ "value": operations() }))),
        (M::GET, R::Usages { sub, location }) => usages(ctx, &sub, &location).await,
        (M::GET, route @ R::BatchOperation { .. }) => lro::poll(ctx, &route).await,
        (M::GET, R::WorkspacesBySubscription { sub }) => {
            list_page(ctx, Kind::Workspace, Scope::Subscription(sub.to_lowercase()), paging::page(ctx)?).await
        }
        (M::GET, R::Workspaces { sub, rg }) => {
            let rg = group(&sub, &rg)?;
            let scope = Scope::ResourceGroup { subscription: sub.to_lowercase(), rg_key: rg.resource_group.key() };
            list_page(ctx, Kind::Workspace, scope, paging::page(ctx)?).await
        }
        (m, R::Workspace { sub, rg, ws }) => {
            let r = group(&sub, &rg)?.child(Kind::Workspace, name(&ws, Kind::Workspace)?);
            match m {
                M::PUT => put_workspace(ctx, &r).await,
                M::PATCH => patch_workspace(ctx, &r).await,
                M::GET => get(ctx, &r).await,
                M::DELETE => delete(ctx, &r).await,
                _ => Err(method_not_allowed(ctx)),
            }
        }
        (M::GET, R::Experiments { sub, rg, ws }) => children(ctx, &workspace(&sub, &rg, &ws)?, Kind::Experiment).await,
        (m, R::Experiment { sub, rg, ws, exp }) => {
            let r = workspace(&sub, &rg, &ws)?.child(Kind::Experiment, name(&exp, Kind::Experiment)?);
            match m {
                M::PUT => put_experiment(ctx, &r).await,
                M::GET => get(ctx, &r).await,
                M::DELETE => delete(ctx, &r).await,
                _ => Err(method_not_allowed(ctx)),
            }
        }
        (M::GET, R::Jobs { sub, rg, ws, exp }) => {
            let e = workspace(&sub, &rg, &ws)?.child(Kind::Experiment, name(&exp, Kind::Experiment)?);
            children(ctx, &e, Kind::Job).await
        }
        (m, R::Job { sub, rg, ws, exp, job }) => {
            let r = job_ref(&sub, &rg, &ws, &exp, &job)?;
            match m {
                M::PUT => put_job(ctx, &r).await,
                M::GET => get(ctx, &r).await,
                M::DELETE => delete(ctx, &r).await,
                _ => Err(method_not_allowed(ctx)),
            }
        }
        (M::POST, R::JobAction { sub, rg, ws, exp, job, action }) => {
            let r = job_ref(&sub, &rg, &ws, &exp, &job)?;
            match action {
                JobAction::Terminate => terminate(ctx, &r).await,
                JobAction::ListOutputFiles => list_output_files(ctx, &r).await,
                JobAction::ListRemoteLoginInformation => {
                    let row = load(ctx, &r).await?;
                    let Some(job) = row.job else { return Err(ApiError::internal().into()) };
                    let nodes = ctx.state.store.list_nodes(Some(&job.cluster_key)).await?;
                    remote_logins(ctx, nodes.into_iter().filter(|n| n.job_key.as_deref() == Some(row.key.as_str())))
                }
            }
        }
        (M::GET, R::Clusters { sub, rg, ws }) => children(ctx, &workspace(&sub, &rg, &ws)?, Kind::Cluster).await,
        (m, R::Cluster { sub, rg, ws, cluster }) => {
            let r = workspace(&sub, &rg, &ws)?.child(Kind::Cluster, name(&cluster, Kind::Cluster)?);
            match m {
                M::PUT => put_cluster(ctx, &r).await,
                M::PATCH => patch_cluster(ctx, &r).await,
                M::GET => get(ctx, &r).await,
                M::DELETE => delete(ctx, &r).await,
                _ => Err(method_not_allowed(ctx)),
            }
        }
        (M::POST, R::ClusterRemoteLogin { sub, rg, ws, cluster }) => {
            let r = workspace(&sub, &rg, &ws)?.child(Kind::Cluster, name(&cluster, Kind::Cluster)?);
            let row = load(ctx, &r).await?;
            remote_logins(ctx, ctx.state.store.list_nodes(Some(&row.key)).await?.into_iter())
        }
        (M::GET, R::FileServers { sub, rg, ws }) => children(ctx, &workspace(&sub, &rg, &ws)?, Kind::FileServer).await,
        (m, R::FileServer { sub, rg, ws, fs }) => {
            let r = workspace(&sub, &rg, &ws)?.child(Kind::FileServer, name(&fs, Kind::FileServer)?);
            match m {
                M::PUT => put_file_server(ctx, &r).await,
                M::GET => get(ctx, &r).await,
                M::DELETE => delete(ctx, &r).await,
                _ => Err(method_not_allowed(ctx)),
            }
        }
        _ => Err(method_not_allowed(ctx)),
    }
}

fn name(raw: &str, kind: Kind) -> Result<ResourceName, ApiError> {
    ResourceName::parse(raw, kind.name_kind())
}

fn group(sub: &str, rg: &str) -> Result<ResourceRef, ApiError> {
    Ok(ResourceRef::resource_group(sub, name(rg, Kind::ResourceGroup)?))
}

fn workspace(sub: &str, rg: &str, ws: &str) -> Result<ResourceRef, ApiError> {
    Ok(group(sub, rg)?.child(Kind::Workspace, name(ws, Kind::Workspace)?))
}

fn job_ref(sub: &str, rg: &str, ws: &str, exp: &str, job: &str) -> Result<ResourceRef, ApiError> {
    Ok(workspace(sub, rg, ws)?
        .child(Kind::Experiment, name(exp, Kind::Experiment)?)
        .child(Kind::Job, name(job, Kind::Job)?))
}

/// The 404 for `r`: `ResourceGroupNotFound` when the group itself is missing, as ARM's front
/// door answers, else `<Kind>NotFound`.
async fn not_found(ctx: &Ctx, r: &ResourceRef) -> Error {
    if let Err(e) = load_group(ctx, &r.resource_group_ref()).await {
        return e;
    }
    ApiError::new(r.kind.not_found_code(), format!("The specified {} {} is not found", r.kind.noun(), r.name)).into()
}

async fn load(ctx: &Ctx, r: &ResourceRef) -> Result<ResourceRow, Error> {
    match ctx.state.store.get_resource(&r.key()).await? {
        Some(row) => Ok(row),
        None => Err(not_found(ctx, r).await),
    }
}

/// The parent of a resource about to be created; it must exist and not be being deleted.
async fn require_parent(ctx: &Ctx, r: &ResourceRef) -> Result<ResourceRow, Error> {
    let parent = r.parent().ok_or_else(ApiError::internal)?;
    let row = load(ctx, &parent).await?;
    if row.provisioning_state == ProvisioningState::Deleting {
        return Err(being_deleted(&row).into());
    }
    Ok(row)
}

async fn get(ctx: &Ctx, r: &ResourceRef) -> Result<Response, Error> {
    Ok(ok(render::resource(&load(ctx, r).await?)))
}

async fn children(ctx: &Ctx, parent: &ResourceRef, kind: Kind) -> Result<Response, Error> {
    let page = paging::page(ctx)?;
    load(ctx, parent).await?;
    list_page(ctx, kind, Scope::Parent(parent.key()), page).await
}

/// Why the store refused to insert `r`, as the client should hear it.
/// Inserts a created resource with the operation that finishes its creation (its location
/// becomes the parent's), and starts that operation when it still has work to do.
async fn insert_created(ctx: &Ctx, r: &ResourceRef, new: &NewResource, mut op: Operation) -> Result<Operation, Error> {
    let inserted = match ctx.state.store.insert_resource(new, Some(&op)).await {
        Ok(i) => i,
        Err(e) => return Err(insert_failed(ctx, r, e).await),
    };
    op.location = inserted.parent_location.unwrap_or(op.location);
    lro::wake_if_pending(ctx, &op);
    Ok(op)
}

async fn insert_failed(ctx: &Ctx, r: &ResourceRef, e: StoreError) -> Error {
    match e {
        StoreError::Conflict => ApiError::new(
            ErrorCode::Conflict,
            format!(
                "The {} '{}' already exists; delete it first{}.",
                r.kind.noun(),
                r.name,
                if r.kind == Kind::Cluster { " or resize it with PATCH" } else { "" }
            ),
        )
        .into(),
        // Found out after the fact, to keep the hot path at one statement.
        StoreError::ParentGone => match require_parent(ctx, r).await {
            Err(e) => e,
            Ok(_) => ApiError::new(ErrorCode::ResourceBeingDeleted, "The parent resource was being deleted.").into(),
        },
        other => other.into(),
    }
}

async fn put_workspace(ctx: &Ctx, r: &ResourceRef) -> Result<Response, Error> {
    let LocatedBody { location, tags } = LocatedBody::parse(ctx)?;
    let group = load_group(ctx, &r.resource_group_ref()).await?;
    if group.provisioning_state == ProvisioningState::Deleting {
        return Err(being_deleted(&group).into());
    }
    if let Some(existing) = ctx.state.store.get_resource(&r.key()).await? {
        if existing.provisioning_state == ProvisioningState::Deleting {
            return Err(being_deleted(&existing).into());
        }
        if !existing.location.as_deref().unwrap_or_default().eq_ignore_ascii_case(&location) {
            return Err(ApiError::invalid(
                "location",
                format!("The workspace exists in location '{}'.", existing.location.unwrap_or_default()),
            )
            .into());
        }
        ctx.state.store.update_tags(&existing.key, &tags.unwrap_or_else(|| json!({}))).await?;
        return get(ctx, r).await;
    }
    let new = new_resource(r, Some(location), tags, None, ProvisioningState::Succeeded);
    if let Err(e) = ctx.state.store.insert_resource(&new, None).await {
        return Err(insert_failed(ctx, r, e).await);
    }
    get(ctx, r).await
}

async fn patch_workspace(ctx: &Ctx, r: &ResourceRef) -> Result<Response, Error> {
    patch_tags(ctx, &load(ctx, r).await?).await?;
    get(ctx, r).await
}

async fn put_experiment(ctx: &Ctx, r: &ResourceRef) -> Result<Response, Error> {
    // The spec has no body; the SDK sends none and the spec example sends `{"properties":{}}`.
    ctx.json_body()?;
    let ws = require_parent(ctx, r).await?;
    if let Some(existing) = ctx.state.store.get_resource(&r.key()).await? {
        if existing.provisioning_state == ProvisioningState::Deleting {
            return Err(being_deleted(&existing).into());
        }
        return Ok(ok(render::resource(&existing)));
    }
    let new = new_resource(r, ws.location, None, None, ProvisioningState::Succeeded);
    match ctx.state.store.insert_resource(&new, None).await {
        Ok(_) | Err(StoreError::Conflict) => get(ctx, r).await,
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize, Serialize)]
struct Create<T> {
    properties: T,
}

/// A cluster's target size at creation: manual target, or autoScale's initial count.
fn initial_target(spec: &ClusterSpec) -> i32 {
    let s = spec.scale_settings.as_ref();
    s.and_then(|s| s.manual.as_ref().map(|m| m.target_node_count))
        .or_else(|| s.and_then(|s| s.auto_scale.as_ref().and_then(|a| a.initial_node_count)))
        .unwrap_or(0)
}

async fn put_cluster(ctx: &Ctx, r: &ResourceRef) -> Result<Response, Error> {
    let body: Create<ClusterSpec> = validate::parse_json(&ctx.body, "")?;
    let mut spec = body.properties;
    validate::cluster(&spec)?;
    let mounts = spec.node_setup.as_ref().and_then(|s| s.mount_volumes.as_ref());
    check_file_servers(ctx, validate::file_server_refs(mounts, "properties.nodeSetup.mountVolumes.")).await?;
    check_share_keys(ctx, mounts, "properties.nodeSetup.mountVolumes.").await?;
    let (op, state) = lro::create_operation(ctx, r, "local");
    let mut new = new_resource(r, None, None, None, state);
    spec.apply_defaults(&format!(
        "{}/{}/workspaces/{}/clusters/{}/{}",
        r.subscription,
        r.resource_group,
        r.workspace.as_ref().map(ToString::to_string).unwrap_or_default(),
        r.name,
        new.uid
    ));
    let allocation = if initial_target(&spec) > 0 { AllocationState::Resizing } else { AllocationState::Steady };
    new.cluster = Some(NewCluster { vm_size: spec.vm_size.clone(), allocation_state: allocation });
    new.spec = Some(serde_json::to_value(&spec).map_err(|_| ApiError::internal())?);
    let op = insert_created(ctx, r, &new, op).await?;
    tracing::info!(cluster.id = %r.id(), vm_size = %spec.vm_size, "cluster created");
    ctx.state.scheduler.wake.notify_one();
    Ok(lro::accepted(ctx, &op))
}

async fn patch_cluster(ctx: &Ctx, r: &ResourceRef) -> Result<Response, Error> {
    let body: Create<ClusterUpdate> = validate::parse_json(&ctx.body, "")?;
    let row = load(ctx, r).await?;
    let Some(mut scale) = body.properties.scale_settings else { return get(ctx, r).await };
    validate::scale_settings(&scale, "properties.")?;
    scale_defaults(&mut scale);
    let mut spec: ClusterSpec =
        row.spec.clone().and_then(|s| serde_json::from_value(s).ok()).ok_or_else(ApiError::internal)?;
    spec.scale_settings = Some(scale);
    let current = row.cluster.as_ref().map(|c| c.current_node_count).unwrap_or(0);
    let target = match spec.scale_settings.as_ref().and_then(|s| s.manual.as_ref()) {
        Some(m) => m.target_node_count,
        // Autoscale sizes itself to the queue; until the scheduler acts it is resizing only
        // when the current size is outside the bounds.
        None => {
            let a = spec.scale_settings.as_ref().and_then(|s| s.auto_scale.as_ref()).ok_or_else(ApiError::internal)?;
            current.clamp(a.minimum_node_count, a.maximum_node_count)
        }
    };
    let allocation = if target == current { AllocationState::Steady } else { AllocationState::Resizing };
    let spec_json = serde_json::to_value(&spec).map_err(|_| ApiError::internal())?;
    if !ctx.state.store.update_cluster_spec(&row.key, &spec_json, allocation, batchai_core::time::now_millis()).await? {
        return Err(being_deleted(&row).into());
    }
    ctx.state.scheduler.wake.notify_one();
    get(ctx, r).await
}

async fn put_job(ctx: &Ctx, r: &ResourceRef) -> Result<Response, Error> {
    let body: Create<JobSpec> = validate::parse_json(&ctx.body, "")?;
    let mut spec = body.properties;
    let (tool, cluster, priority, wall_secs) = validate::job(&spec)?;
    check_file_servers(ctx, validate::file_server_refs(spec.mount_volumes.as_ref(), "properties.mountVolumes."))
        .await?;
    check_share_keys(ctx, spec.mount_volumes.as_ref(), "properties.mountVolumes.").await?;
    spec.apply_defaults();
    let (mut op, state) = lro::create_operation(ctx, r, "local");
    let mut new = new_resource(r, None, None, None, state);
    new.job = Some(NewJob {
        cluster_key: cluster.key(),
        priority: priority.rank(),
        node_count: spec.node_count,
        tool_type: tool.as_str().into(),
        max_wall_clock_secs: wall_secs as i64,
    });
    // Checked in the insert's own transaction, so a cluster deleted meanwhile is noticed.
    new.requires = Some(cluster.key());
    new.spec = Some(serde_json::to_value(&spec).map_err(|_| ApiError::internal())?);
    let inserted = match ctx.state.store.insert_resource(&new, Some(&op)).await {
        Ok(i) => i,
        Err(StoreError::RequiredGone) => {
            return Err(ApiError::invalid(
                "properties.cluster.id",
                format!("The cluster '{}' does not exist or is being deleted.", spec.cluster.id),
            )
            .into());
        }
        Err(e) => return Err(insert_failed(ctx, r, e).await),
    };
    op.location = inserted.parent_location.unwrap_or(op.location);
    lro::wake_if_pending(ctx, &op);
    tracing::info!(job.id = %r.id(), tool_type = tool.as_str(), node_count = spec.node_count, "job submitted");
    ctx.state.scheduler.wake.notify_one();
    Ok(lro::accepted(ctx, &op))
}

/// The code and message of a file server create that fails because nobody declared its name.
pub(crate) const NOT_DECLARED: &str = "FileServerNotDeclared";

pub(crate) fn not_declared_message(name: &str) -> String {
    format!(
        "The file server '{name}' is not declared on this service. On-premises a file server is an NFS export (or \
         a directory every node has) that an operator declares: `batchai admin file-server declare {name} \
         --export HOST:/PATH`. Declare it, delete this file server and create it again."
    )
}

/// File server PUT: succeeds when an operator declared the name (`batchai admin file-server
/// declare`), whose export is stored with it and shown as `mountSettings`; otherwise the resource
/// is recorded `creating` and its operation fails (`lro::run`), leaving it `failed`.
async fn put_file_server(ctx: &Ctx, r: &ResourceRef) -> Result<Response, Error> {
    let body: Create<FileServerSpec> = validate::parse_json(&ctx.body, "")?;
    let mut spec = body.properties;
    validate::file_server(&spec)?;
    spec.apply_defaults();
    // Read-only fields are the service's to fill in.
    spec.mount_settings = None;
    spec.declared = None;
    let declared = ctx.state.store.get_file_server(r.name.as_str()).await?;
    let export = declared.as_ref().and_then(|d| match Export::parse(&d.export) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(file_server.name = %d.name, error = %e, "declared file server export does not parse");
            None
        }
    });
    let (op, state) = match (declared, export) {
        (Some(d), Some(export)) => {
            spec.mount_settings = Some(export.mount_settings());
            spec.declared = Some(DeclaredExport { export: d.export, mount_options: d.mount_options });
            lro::create_operation(ctx, r, "local")
        }
        // The runner fails it, as a provisioning failure would have ended.
        _ => (lro::new_operation(ctx, OperationKind::Create, r, "local"), ProvisioningState::Creating),
    };
    let mut new = new_resource(r, None, None, None, state);
    new.spec = Some(serde_json::to_value(&spec).map_err(|_| ApiError::internal())?);
    let op = insert_created(ctx, r, &new, op).await?;
    if spec.declared.is_some() {
        tracing::info!(file_server.id = %r.id(), "file server created");
    } else {
        tracing::info!(file_server.id = %r.id(), "file server not declared; its creation fails");
    }
    Ok(lro::accepted(ctx, &op))
}

/// Refuses references to file servers that cannot be mounted: missing (or in a subscription the
/// caller cannot use), being deleted, or failed because nobody declared them.
/// A share or container of a registered storage account is mounted only with the account's
/// key, as Azure mounts it. Accounts the server does not know are plain directories of the
/// storage root and stay open to every cluster, as before storage accounts existed.
async fn check_share_keys(ctx: &Ctx, mounts: Option<&MountVolumes>, base: &str) -> Result<(), Error> {
    let (Some(keys), Some(m)) = (&ctx.state.share_keys, mounts) else { return Ok(()) };
    let shares = m.azure_file_shares.iter().flatten().enumerate().map(|(i, s)| {
        let account =
            parse_file_url(&s.azure_file_url).map(|(a, _)| a).unwrap_or_else(|_| s.account_name.to_lowercase());
        (account, &s.credentials, format!("{base}azureFileShares[{i}].credentials.accountKey"))
    });
    let blobs = m.azure_blob_file_systems.iter().flatten().enumerate().map(|(i, b)| {
        (
            b.account_name.to_lowercase(),
            &b.credentials,
            format!("{base}azureBlobFileSystems[{i}].credentials.accountKey"),
        )
    });
    for (account, credentials, target) in shares.chain(blobs) {
        let real = keys.key(&account).await.map_err(|e| {
            tracing::error!(error = %e, "reading a storage account key");
            Error::from(ApiError::internal())
        })?;
        let Some(real) = real else { continue };
        let given = credentials
            .account_key
            .as_deref()
            .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k.trim()).ok());
        // Digests compared, so the comparison's time tells nothing about the key.
        let matches = given.is_some_and(|g| Sha256::digest(&g) == Sha256::digest(&real));
        if !matches {
            return Err(ApiError::invalid(
                target,
                format!(
                    "This is not the key of storage account '{account}' (a Key Vault reference cannot be checked \
                     here: give the key itself)."
                ),
            )
            .into());
        }
    }
    Ok(())
}

async fn check_file_servers(ctx: &Ctx, refs: Vec<(&str, String)>) -> Result<(), Error> {
    for (id, target) in refs {
        let r = ResourceRef::parse_id(id, Kind::FileServer).map_err(|e| ApiError::invalid(&target, e))?;
        let row = match ctx.caller.authorize(&r.subscription, "Microsoft.BatchAI/workspaces/fileservers/read") {
            Ok(()) => ctx.state.store.get_resource(&r.key()).await?,
            Err(_) => None,
        };
        let usable = row.is_some_and(|row| {
            row.kind == Kind::FileServer
                && matches!(row.provisioning_state, ProvisioningState::Creating | ProvisioningState::Succeeded)
                && row
                    .spec
                    .and_then(|s| serde_json::from_value::<FileServerSpec>(s).ok())
                    .is_some_and(|s| s.declared.is_some())
        });
        if !usable {
            return Err(ApiError::invalid(
                target,
                format!(
                    "The file server '{id}' does not exist, is being deleted or failed to be created (a file server \
                     must be declared with `batchai admin file-server declare` before it is created)."
                ),
            )
            .into());
        }
    }
    Ok(())
}

async fn delete(ctx: &Ctx, r: &ResourceRef) -> Result<Response, Error> {
    let Some(row) = ctx.state.store.get_resource(&r.key()).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let location = location_of(ctx, &row).await?;
    let op = lro::new_operation(ctx, OperationKind::Delete, r, &location);
    if !ctx.state.store.begin_delete(&row.key, &op).await? {
        // Already being deleted: a second operation finishes the same (idempotent) work.
        ctx.state.store.insert_operation(&op).await?;
    }
    ctx.state.ops_wake.notify_one();
    Ok(lro::accepted(ctx, &op))
}

/// The location of a resource's workspace (operation URLs are per location).
async fn location_of(ctx: &Ctx, row: &ResourceRow) -> Result<String, Error> {
    if let Some(l) = &row.location {
        return Ok(l.clone());
    }
    let mut key = row.parent_key.clone();
    loop {
        let Some(parent) = ctx.state.store.get_resource(&key).await? else { return Ok("local".into()) };
        if let Some(l) = parent.location {
            return Ok(l);
        }
        key = parent.parent_key;
    }
}

async fn terminate(ctx: &Ctx, r: &ResourceRef) -> Result<Response, Error> {
    let row = load(ctx, r).await?;
    let location = location_of(ctx, &row).await?;
    let op = lro::new_operation(ctx, OperationKind::Terminate, r, &location);
    ctx.state.store.insert_operation(&op).await?;
    ctx.state.ops_wake.notify_one();
    Ok(lro::accepted(ctx, &op))
}

async fn list_output_files(ctx: &Ctx, r: &ResourceRef) -> Result<Response, Error> {
    let row = load(ctx, r).await?;
    let dir_id = ctx
        .param("outputdirectoryid")
        .ok_or_else(|| ApiError::invalid("outputdirectoryid", "The outputdirectoryid query parameter is required."))?;
    let spec: JobSpec = row.spec.clone().and_then(|s| serde_json::from_value(s).ok()).ok_or_else(ApiError::internal)?;
    let declared = dir_id.eq_ignore_ascii_case(files::STDOUTERR)
        || spec.output_directories.iter().flatten().any(|d| d.id.eq_ignore_ascii_case(dir_id));
    if !declared {
        return Err(ApiError::invalid(
            "outputdirectoryid",
            format!("The job has no output directory '{dir_id}'; use 'stdouterr' or an id from outputDirectories."),
        )
        .into());
    }
    let expiry_minutes = match ctx.param("linkexpiryinminutes") {
        None => 60,
        Some(raw) => raw.parse::<i64>().ok().filter(|m| (5..=600).contains(m)).ok_or_else(|| {
            ApiError::invalid("linkexpiryinminutes", format!("linkexpiryinminutes must be 5 to 600, got '{raw}'"))
        })?,
    };
    let directory = ctx.param("directory").unwrap_or(".").to_owned();
    if directory.starts_with('/') || directory.split(['/', '\\']).any(|s| s == "..") {
        return Err(ApiError::invalid("directory", "directory must be a path inside the output directory").into());
    }
    let page = paging::page(ctx)?;
    // The cluster may have been deleted since: then only the job's own mounts are known.
    let cluster = match row.job.as_ref() {
        Some(j) => ctx.state.store.get_resource(&j.cluster_key).await?,
        None => None,
    };
    let cluster_spec: Option<ClusterSpec> = cluster.and_then(|c| serde_json::from_value(c.spec?).ok());
    let root = ctx.state.settings.storage_root.clone();
    let segment = render::job_output_segment(&row);
    let Some(dir) = files::output_location(&spec, cluster_spec.as_ref(), &segment, dir_id, &root) else {
        return Ok(ok(paging::list_body(ctx, Vec::new(), page.size, None)));
    };
    let entries = tokio::task::spawn_blocking(move || files::list_dir(&root, &dir, &directory))
        .await
        .map_err(|_| ApiError::internal())??;
    let mut rest = entries.into_iter().filter(|e| page.after.as_deref().is_none_or(|after| e.name.as_str() > after));
    let size = usize::try_from(page.size).unwrap_or(1000);
    let chosen: Vec<files::FileEntry> = rest.by_ref().take(size).collect();
    let more = rest.next().is_some();
    let signer = files::LinkSigner::new(ctx.state.keys.download_key());
    let expires_at = batchai_core::time::now_millis() / 1000 + expiry_minutes * 60;
    let items = chosen.iter().map(|e| files::render_entry(e, &signer, &ctx.base, expires_at)).collect();
    let last = if more { chosen.last().map(|e| e.name.as_str()) } else { None };
    Ok(ok(paging::list_body(ctx, items, page.size, last)))
}

/// `RemoteLoginInformation` of nodes (in id order), a page at a time.
fn remote_logins(ctx: &Ctx, nodes: impl Iterator<Item = batchai_store::NodeRow>) -> Result<Response, Error> {
    let page = paging::page(ctx)?;
    let mut rest: Vec<_> = nodes.filter(|n| page.after.as_ref().is_none_or(|a| &n.id > a)).collect();
    let more = rest.len() as i64 > page.size;
    rest.truncate(page.size as usize);
    let last = more.then(|| rest.last().map(|n| n.id.clone())).flatten();
    let items = rest.iter().map(|n| json!({"nodeId": n.id, "ipAddress": n.address, "port": n.ssh_port})).collect();
    Ok(ok(paging::list_body(ctx, items, page.size, last.as_deref())))
}

fn operations() -> Value {
    serde_json::from_str(include_str!("operations.json")).unwrap_or_else(|_| json!([]))
}

/// Quota usage of the subscription: clusters and vCPUs of their target sizes, per family.
async fn usages(ctx: &Ctx, sub: &str, location: &str) -> Result<Response, Error> {
    ResourceName::parse(location, NameKind::Location)?;
    let mut after = None;
    let mut clusters = 0i64;
    let mut dedicated: std::collections::HashMap<&str, i64> = Default::default();
    let mut low: std::collections::HashMap<&str, i64> = Default::default();
    loop {
        let q = ListQuery { kind: Kind::Cluster, scope: Scope::Subscription(sub.to_lowercase()), after, limit: 500 };
        let rows = ctx.state.store.list_resources(&q).await?;
        for row in &rows {
            clusters += 1;
            let Some(spec) = row.spec.clone().and_then(|s| serde_json::from_value::<ClusterSpec>(s).ok()) else {
                continue;
            };
            let Some(size) = ctx.state.settings.vm_sizes.find(&spec.vm_size) else { continue };
            let nodes = i64::from(initial_target(&spec).max(row.cluster.as_ref().map_or(0, |c| c.current_node_count)));
            let bucket = if spec.vm_priority.as_deref() == Some("lowpriority") { &mut low } else { &mut dedicated };
            *bucket.entry(size.family).or_default() += nodes * i64::from(size.cores);
        }
        if rows.len() < 500 {
            break;
        }
        after = rows.last().map(|r| r.key.clone());
    }
    let limits = &ctx.state.settings;
    let usage = |name: String, current: i64, limit: i64| json!({"unit": "Count", "currentValue": current, "limit": limit, "name": {"value": name, "localizedValue": name}});
    let mut value = vec![usage("Clusters".into(), clusters, limits.quota_clusters)];
    for (kind, bucket) in [("Dedicated", &dedicated), ("LowPriority", &low)] {
        value.push(usage(format!("Total Cluster {kind} Regional vCPUs"), bucket.values().sum(), limits.quota_vcpus));
        for family in ctx.state.settings.vm_sizes.families() {
            let current = bucket.get(family).copied().unwrap_or(0);
            value.push(usage(format!("Standard {family} Family Cluster {kind} vCPUs"), current, limits.quota_vcpus));
        }
    }
    Ok(ok(json!({ "value": value })))
}
