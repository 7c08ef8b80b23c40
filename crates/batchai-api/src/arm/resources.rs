//! Microsoft.Resources: subscriptions, resource groups and provider registration — the subset
//! azure-mgmt-resource 13.0.0 uses.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use batchai_core::ids::{Kind, ResourceRef};
use batchai_core::names::ResourceName;
use batchai_core::state::{OperationStatus, ProvisioningState};
use batchai_core::time::now_millis;
use batchai_core::{ApiError, ErrorCode};
use batchai_store::{ListQuery, NewResource, OperationKind, ResourceRow, Scope};
use serde_json::{Value, json};

use super::route::Route;
use super::{Ctx, json, method_not_allowed, ok, paging, render};
use crate::{Error, lro};

pub(super) async fn dispatch(ctx: &Ctx, route: Route) -> Result<Response, Error> {
    match (ctx.method.clone(), route) {
        (Method::GET, Route::Subscriptions) => list_subscriptions(ctx).await,
        (Method::GET, Route::Subscription { sub }) => get_subscription(ctx, &sub).await,
        (Method::GET, Route::ResourceGroups { sub }) => list_groups(ctx, &sub).await,
        (Method::PUT, Route::ResourceGroup { sub, rg }) => put_group(ctx, &group_ref(&sub, &rg)?).await,
        (Method::GET, Route::ResourceGroup { sub, rg }) => {
            Ok(ok(render::resource_group(&load_group(ctx, &group_ref(&sub, &rg)?).await?)))
        }
        (Method::HEAD, Route::ResourceGroup { sub, rg }) => {
            let exists = ctx.state.store.get_resource(&group_ref(&sub, &rg)?.key()).await?.is_some();
            Ok(if exists { StatusCode::NO_CONTENT } else { StatusCode::NOT_FOUND }.into_response())
        }
        (Method::PATCH, Route::ResourceGroup { sub, rg }) => patch_group(ctx, &group_ref(&sub, &rg)?).await,
        (Method::DELETE, Route::ResourceGroup { sub, rg }) => delete_group(ctx, &group_ref(&sub, &rg)?).await,
        (Method::GET, Route::GroupOperation { sub, op }) => group_operation(ctx, &sub, &op).await,
        (Method::GET, Route::Providers { sub }) => {
            let p = provider(ctx, &sub, "Microsoft.BatchAI").await?;
            Ok(ok(json!({ "value": [p] })))
        }
        (Method::GET, Route::Provider { sub, ns }) => Ok(ok(provider(ctx, &sub, &ns).await?)),
        (Method::POST, Route::ProviderRegister { sub, ns }) => {
            known_namespace(&ns)?;
            ctx.state.store.set_provider_state(&sub.to_lowercase(), &ns.to_lowercase(), "Registered").await?;
            Ok(ok(provider(ctx, &sub, &ns).await?))
        }
        _ => Err(method_not_allowed(ctx)),
    }
}

fn group_ref(sub: &str, rg: &str) -> Result<ResourceRef, ApiError> {
    Ok(ResourceRef::resource_group(sub, ResourceName::parse(rg, Kind::ResourceGroup.name_kind())?))
}

/// Builds the row of a new resource at `r`.
pub(super) fn new_resource(
    r: &ResourceRef,
    location: Option<String>,
    tags: Option<Value>,
    spec: Option<Value>,
    state: ProvisioningState,
) -> NewResource {
    let parent_key = match r.parent() {
        Some(p) => p.key(),
        None => format!("/subscriptions/{}", r.subscription.to_lowercase()),
    };
    NewResource {
        key: r.key(),
        kind: r.kind,
        subscription_id: r.subscription.to_lowercase(),
        rg_key: r.resource_group.key(),
        ws_key: match r.kind {
            Kind::Workspace => r.name.key(),
            _ => r.workspace.as_ref().map(ResourceName::key).unwrap_or_default(),
        },
        exp_key: match r.kind {
            Kind::Experiment => r.name.key(),
            _ => r.experiment.as_ref().map(ResourceName::key).unwrap_or_default(),
        },
        parent_key,
        arm_id: r.id(),
        name: r.name.to_string(),
        uid: uuid::Uuid::new_v4().to_string(),
        location,
        tags,
        spec,
        provisioning_state: state,
        now: now_millis(),
        job: None,
        cluster: None,
        requires: None,
    }
}

pub(super) async fn load_group(ctx: &Ctx, r: &ResourceRef) -> Result<ResourceRow, Error> {
    ctx.state.store.get_resource(&r.key()).await?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::ResourceGroupNotFound,
            format!("Resource group '{}' could not be found.", r.resource_group),
        )
        .into()
    })
}

fn subscription_body(ctx: &Ctx, id: &str, display_name: &str) -> Value {
    json!({
        "id": format!("/subscriptions/{id}"),
        "authorizationSource": "RoleBased",
        "subscriptionId": id,
        "tenantId": ctx.state.keys.tenant,
        "displayName": display_name,
        "state": "Enabled",
        "subscriptionPolicies": {
            "locationPlacementId": "Public_2014-09-01",
            "quotaId": "PayAsYouGo_2014-09-01",
            "spendingLimit": "Off"
        }
    })
}

async fn list_subscriptions(ctx: &Ctx) -> Result<Response, Error> {
    let mut value = Vec::new();
    for id in &ctx.caller.subscriptions {
        if let Some(s) = ctx.state.store.get_subscription(&id.to_lowercase()).await? {
            value.push(subscription_body(ctx, id, &s.display_name));
        }
    }
    Ok(ok(json!({ "value": value })))
}

async fn get_subscription(ctx: &Ctx, sub: &str) -> Result<Response, Error> {
    let s = ctx.state.store.get_subscription(&sub.to_lowercase()).await?.ok_or_else(|| {
        ApiError::new(ErrorCode::SubscriptionNotFound, format!("The subscription '{sub}' could not be found."))
    })?;
    Ok(ok(subscription_body(ctx, sub, &s.display_name)))
}

async fn list_groups(ctx: &Ctx, sub: &str) -> Result<Response, Error> {
    let page = paging::page(ctx)?;
    let scope = Scope::Parent(format!("/subscriptions/{}", sub.to_lowercase()));
    list_page(ctx, Kind::ResourceGroup, scope, page).await
}

/// One page of resources of `kind` in `scope`, rendered.
pub(super) async fn list_page(ctx: &Ctx, kind: Kind, scope: Scope, page: paging::Page) -> Result<Response, Error> {
    let q = ListQuery { kind, scope, after: page.after, limit: page.size + 1 };
    let mut rows = ctx.state.store.list_resources(&q).await?;
    let more = rows.len() as i64 > page.size;
    rows.truncate(page.size as usize);
    let last = if more { rows.last().map(|r| r.key.clone()) } else { None };
    let items = rows.iter().map(render::resource).collect();
    Ok(ok(paging::list_body(ctx, items, page.size, last.as_deref())))
}

/// The body of a resource group or workspace PUT: a location and optional tags.
#[derive(serde::Deserialize, serde::Serialize)]
pub(super) struct LocatedBody {
    pub location: String,
    #[serde(default)]
    pub tags: Option<Value>,
}

impl LocatedBody {
    /// Parses and checks the body; `tags` comes back `None` when absent or null.
    pub(super) fn parse(ctx: &Ctx) -> Result<Self, ApiError> {
        let body: Self = batchai_core::validate::parse_json(&ctx.body, "")?;
        ResourceName::parse(&body.location, batchai_core::names::NameKind::Location)
            .map_err(|e| ApiError::invalid("location", e.message))?;
        check_tags(&body.tags, "tags")?;
        Ok(Self { location: body.location, tags: body.tags.filter(|t| !t.is_null()) })
    }
}

pub(super) fn check_tags(tags: &Option<Value>, target: &str) -> Result<(), ApiError> {
    match tags {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(m)) if m.len() <= 50 && m.iter().all(|(k, v)| v.is_string() && k.len() <= 512) => Ok(()),
        Some(_) => Err(ApiError::invalid(target, "tags must be an object of at most 50 string values")),
    }
}

async fn put_group(ctx: &Ctx, r: &ResourceRef) -> Result<Response, Error> {
    let LocatedBody { location, tags } = LocatedBody::parse(ctx)?;
    let store = &ctx.state.store;
    if let Some(existing) = store.get_resource(&r.key()).await? {
        return update_existing_group(ctx, existing, &location, tags).await;
    }
    let new = new_resource(r, Some(location.clone()), tags.clone(), None, ProvisioningState::Succeeded);
    match store.insert_resource(&new, None).await {
        Ok(_) => {}
        Err(batchai_store::StoreError::Conflict) => {
            let existing = load_group(ctx, r).await?;
            return update_existing_group(ctx, existing, &location, tags).await;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(json(StatusCode::CREATED, render::resource_group(&load_group(ctx, r).await?)))
}

async fn update_existing_group(
    ctx: &Ctx,
    existing: ResourceRow,
    location: &str,
    tags: Option<Value>,
) -> Result<Response, Error> {
    if existing.provisioning_state == ProvisioningState::Deleting {
        return Err(being_deleted(&existing).into());
    }
    if !existing.location.as_deref().unwrap_or_default().eq_ignore_ascii_case(location) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "Invalid resource group location '{location}'. The Resource group already exists in location '{}'.",
                existing.location.unwrap_or_default()
            ),
        )
        .into());
    }
    ctx.state.store.update_tags(&existing.key, &tags.unwrap_or_else(|| json!({}))).await?;
    let row = ctx.state.store.get_resource(&existing.key).await?.ok_or_else(ApiError::internal)?;
    Ok(ok(render::resource_group(&row)))
}

pub(super) fn being_deleted(row: &ResourceRow) -> ApiError {
    ApiError::new(ErrorCode::ResourceBeingDeleted, format!("The {} '{}' is being deleted.", row.kind.noun(), row.name))
}

async fn patch_group(ctx: &Ctx, r: &ResourceRef) -> Result<Response, Error> {
    let row = load_group(ctx, r).await?;
    patch_tags(ctx, &row).await?;
    Ok(ok(render::resource_group(&load_group(ctx, r).await?)))
}

/// Applies a PATCH body's `tags` (the only thing a resource group or workspace PATCH changes).
pub(super) async fn patch_tags(ctx: &Ctx, row: &ResourceRow) -> Result<(), Error> {
    let body = ctx.json_body()?.unwrap_or_else(|| json!({}));
    let tags = body.get("tags").cloned();
    check_tags(&tags, "tags")?;
    if let Some(tags) = tags.filter(|t| !t.is_null())
        && !ctx.state.store.update_tags(&row.key, &tags).await?
    {
        return Err(being_deleted(row).into());
    }
    Ok(())
}

async fn delete_group(ctx: &Ctx, r: &ResourceRef) -> Result<Response, Error> {
    let row = load_group(ctx, r).await?;
    let op = lro::new_operation(ctx, OperationKind::Delete, r, row.location.as_deref().unwrap_or("local"));
    if !ctx.state.store.begin_delete(&row.key, &op).await? {
        ctx.state.store.insert_operation(&op).await?;
    }
    ctx.state.ops_wake.notify_one();
    Ok(lro::group_accepted(ctx, &op))
}

async fn group_operation(ctx: &Ctx, sub: &str, id: &str) -> Result<Response, Error> {
    let op = lro::load_operation(ctx, sub, id).await?;
    match op.status {
        OperationStatus::InProgress => Ok(lro::group_accepted(ctx, &op)),
        OperationStatus::Succeeded => Ok(StatusCode::OK.into_response()),
        _ => Err(ApiError::new(
            ErrorCode::Conflict,
            op.error_message.unwrap_or_else(|| "The operation did not succeed.".into()),
        )
        .into()),
    }
}

fn known_namespace(ns: &str) -> Result<(), ApiError> {
    if ns.eq_ignore_ascii_case("Microsoft.BatchAI") {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::ProviderNotFound,
            format!("The resource namespace '{ns}' is invalid; this server provides Microsoft.BatchAI."),
        ))
    }
}

async fn provider(ctx: &Ctx, sub: &str, ns: &str) -> Result<Value, Error> {
    known_namespace(ns)?;
    let state = ctx.state.store.provider_state(&sub.to_lowercase(), &ns.to_lowercase()).await?;
    let types = [
        "workspaces",
        "workspaces/clusters",
        "workspaces/experiments",
        "workspaces/experiments/jobs",
        "workspaces/fileservers",
        "locations",
        "locations/usages",
        "locations/operationresults",
        "locations/operationstatuses",
        "operations",
    ];
    Ok(json!({
        "id": format!("/subscriptions/{sub}/providers/Microsoft.BatchAI"),
        "namespace": "Microsoft.BatchAI",
        "registrationState": state.unwrap_or_else(|| "NotRegistered".into()),
        "registrationPolicy": "RegistrationRequired",
        "resourceTypes": types.iter().map(|t| json!({
            "resourceType": t,
            "locations": [],
            "apiVersions": super::BATCHAI_API_VERSIONS,
        })).collect::<Vec<_>>(),
    }))
}
