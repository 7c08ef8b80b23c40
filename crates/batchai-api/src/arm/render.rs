//! Stored rows → wire JSON. Secrets never get here: definitions are redacted on the way out,
//! and the read-only fields the service filled in are added.

use batchai_core::ids::Kind;
use batchai_core::models::{ClusterSpec, FileServerSpec, JobSpec};
use batchai_core::state::ExecutionState;
use batchai_core::time::to_rfc3339;
use batchai_store::ResourceRow;
use serde_json::{Map, Value, json};

fn envelope(row: &ResourceRow, properties: Value) -> Value {
    let mut v = json!({"id": row.arm_id, "name": row.name, "type": row.kind.arm_type()});
    if row.kind == Kind::Workspace {
        v["location"] = row.location.clone().into();
        if let Some(tags) = &row.tags {
            v["tags"] = tags.clone();
        }
    }
    v["properties"] = properties;
    v
}

fn provisioning(row: &ResourceRow, props: &mut Map<String, Value>) {
    props.insert("creationTime".into(), to_rfc3339(row.created_at).into());
    props.insert("provisioningState".into(), row.provisioning_state.as_str().into());
    props.insert("provisioningStateTransitionTime".into(), to_rfc3339(row.provisioning_changed_at).into());
}

fn spec_object<T: serde::de::DeserializeOwned + serde::Serialize>(
    row: &ResourceRow,
    redact: impl Fn(&T) -> T,
) -> Map<String, Value> {
    let parsed: Option<T> = row.spec.clone().and_then(|s| serde_json::from_value(s).ok());
    match parsed.map(|s| serde_json::to_value(redact(&s))) {
        Some(Ok(Value::Object(m))) => m,
        _ => {
            tracing::error!(resource.id = %row.arm_id, "stored definition does not parse");
            Map::new()
        }
    }
}

pub fn resource(row: &ResourceRow) -> Value {
    match row.kind {
        Kind::ResourceGroup => resource_group(row),
        Kind::Workspace | Kind::Experiment => {
            let mut props = Map::new();
            provisioning(row, &mut props);
            envelope(row, Value::Object(props))
        }
        Kind::Cluster => cluster(row),
        Kind::Job => job(row),
        Kind::FileServer => {
            let mut props = spec_object::<FileServerSpec>(row, FileServerSpec::redacted);
            provisioning(row, &mut props);
            envelope(row, Value::Object(props))
        }
    }
}

pub fn resource_group(row: &ResourceRow) -> Value {
    let state = match row.provisioning_state {
        batchai_core::state::ProvisioningState::Deleting => "Deleting",
        _ => "Succeeded",
    };
    let mut v = json!({
        "id": row.arm_id,
        "name": row.name,
        "type": Kind::ResourceGroup.arm_type(),
        "location": row.location,
        "properties": {"provisioningState": state},
    });
    if let Some(tags) = &row.tags {
        v["tags"] = tags.clone();
    }
    v
}

fn cluster(row: &ResourceRow) -> Value {
    let mut props = spec_object::<ClusterSpec>(row, ClusterSpec::redacted);
    provisioning(row, &mut props);
    if let Some(c) = &row.cluster {
        props.insert("allocationState".into(), c.allocation_state.as_str().into());
        props.insert("allocationStateTransitionTime".into(), to_rfc3339(c.allocation_changed_at).into());
        props.insert("currentNodeCount".into(), c.current_node_count.into());
        props.insert(
            "nodeStateCounts".into(),
            json!({
                "idleNodeCount": c.idle_node_count,
                "runningNodeCount": c.running_node_count,
                "preparingNodeCount": c.preparing_node_count,
                "unusableNodeCount": c.unusable_node_count,
                "leavingNodeCount": c.leaving_node_count,
            }),
        );
        if let Some(errors) = c.errors.as_ref().filter(|e| e.as_array().is_some_and(|a| !a.is_empty())) {
            props.insert("errors".into(), errors.clone());
        }
    }
    envelope(row, Value::Object(props))
}

/// Names along a job id: `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.BatchAI/
/// workspaces/{ws}/experiments/{exp}/jobs/{job}`.
fn job_path_names(arm_id: &str) -> Option<[&str; 5]> {
    let s: Vec<&str> = arm_id.split('/').collect();
    Some([s.get(2)?, s.get(4)?, s.get(8)?, s.get(10)?, s.get(12)?].map(|x| *x))
}

/// `{sub}/{rg}/workspaces/{ws}/experiments/{exp}/jobs/{job}/{uuid}`.
pub fn job_output_segment(row: &ResourceRow) -> String {
    match job_path_names(&row.arm_id) {
        Some([sub, rg, ws, exp, job]) => {
            format!("{sub}/{rg}/workspaces/{ws}/experiments/{exp}/jobs/{job}/{}", row.uid)
        }
        None => row.uid.clone(),
    }
}

fn job(row: &ResourceRow) -> Value {
    let mut props = spec_object::<JobSpec>(row, JobSpec::redacted);
    provisioning(row, &mut props);
    props.insert("jobOutputDirectoryPathSegment".into(), job_output_segment(row).into());
    if let Some([.., exp, _]) = job_path_names(&row.arm_id) {
        props.insert("experimentName".into(), exp.into());
    }
    if let Some(j) = &row.job {
        props.insert("toolType".into(), j.tool_type.clone().into());
        props.insert("executionState".into(), j.execution_state.as_str().into());
        props.insert("executionStateTransitionTime".into(), to_rfc3339(j.execution_changed_at).into());
        let started = j.start_time.is_some() || j.execution_state != ExecutionState::Queued;
        if started {
            let mut info = Map::new();
            if let Some(t) = j.start_time {
                info.insert("startTime".into(), to_rfc3339(t).into());
            }
            if let Some(t) = j.end_time {
                info.insert("endTime".into(), to_rfc3339(t).into());
            }
            if let Some(code) = j.exit_code {
                info.insert("exitCode".into(), code.into());
            }
            if !j.errors.is_empty() {
                info.insert("errors".into(), serde_json::to_value(&j.errors).unwrap_or_default());
            }
            props.insert("executionInfo".into(), Value::Object(info));
        }
    }
    envelope(row, Value::Object(props))
}
