//! Rows and parameters of the store.

use batchai_core::ids::Kind;
use batchai_core::state::{AllocationState, ExecutionState, OperationStatus, ProvisioningState};
use batchai_core::time::Millis;

#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub id: String,
    pub display_name: String,
    pub created_at: Millis,
}

/// A service principal: a client id and a hashed secret, scoped to subscriptions.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub client_id: String,
    pub name: String,
    pub secret_hash: String,
    pub subscriptions: Vec<String>,
    pub created_at: Millis,
}

/// A long-lived API token for scripts; only its hash is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub token_hash: String,
    pub subscriptions: Vec<String>,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

/// Runtime columns of a new job.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub cluster_key: String,
    pub priority: i32,
    pub node_count: i32,
    pub tool_type: String,
    pub max_wall_clock_secs: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewCluster {
    pub vm_size: String,
    pub allocation_state: AllocationState,
}

/// A resource to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewResource {
    pub key: String,
    pub kind: Kind,
    pub subscription_id: String,
    pub rg_key: String,
    pub ws_key: String,
    pub exp_key: String,
    /// The parent's key; for a resource group `/subscriptions/{sub}`.
    pub parent_key: String,
    pub arm_id: String,
    pub name: String,
    pub uid: String,
    pub location: Option<String>,
    pub tags: Option<serde_json::Value>,
    pub spec: Option<serde_json::Value>,
    pub provisioning_state: ProvisioningState,
    pub now: Millis,
    pub job: Option<NewJob>,
    pub cluster: Option<NewCluster>,
    /// Key of another resource that must exist and not be being deleted (a job's cluster).
    pub requires: Option<String>,
}

/// What an insert reports back.
#[derive(Debug, Clone, PartialEq)]
pub struct Inserted {
    /// The parent's location, when it has one.
    pub parent_location: Option<String>,
}

/// A job error as `executionInfo.errors` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobRuntime {
    pub cluster_key: String,
    pub priority: i32,
    pub node_count: i32,
    pub tool_type: String,
    pub max_wall_clock_secs: i64,
    pub execution_state: ExecutionState,
    pub execution_changed_at: Millis,
    pub start_time: Option<Millis>,
    pub end_time: Option<Millis>,
    pub exit_code: Option<i32>,
    pub errors: Vec<JobError>,
}

/// What a job transition sets besides the state. `None` leaves a column as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobOutcome {
    pub start_time: Option<Millis>,
    pub end_time: Option<Millis>,
    pub exit_code: Option<i32>,
    pub errors: Option<Vec<JobError>>,
    pub now: Millis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterRuntime {
    pub vm_size: String,
    pub allocation_state: AllocationState,
    pub allocation_changed_at: Millis,
    pub current_node_count: i32,
    pub idle_node_count: i32,
    pub running_node_count: i32,
    pub preparing_node_count: i32,
    pub unusable_node_count: i32,
    pub leaving_node_count: i32,
    pub errors: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRow {
    pub key: String,
    pub kind: Kind,
    pub subscription_id: String,
    pub parent_key: String,
    pub arm_id: String,
    pub name: String,
    pub uid: String,
    pub location: Option<String>,
    pub tags: Option<serde_json::Value>,
    pub spec: Option<serde_json::Value>,
    pub provisioning_state: ProvisioningState,
    pub provisioning_changed_at: Millis,
    pub created_at: Millis,
    pub job: Option<JobRuntime>,
    pub cluster: Option<ClusterRuntime>,
}

/// Which resources a list covers.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    Subscription(String),
    ResourceGroup { subscription: String, rg_key: String },
    Parent(String),
}

/// A page of resources of one kind, in key order, after `after`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub kind: Kind,
    pub scope: Scope,
    pub after: Option<String>,
    pub limit: i64,
}

/// What an operation does when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationKind {
    /// Finish a resource's creation (`creating → succeeded`).
    Create,
    /// Delete a resource and everything under it.
    Delete,
    /// Terminate a job.
    Terminate,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Create => "create",
            OperationKind::Delete => "delete",
            OperationKind::Terminate => "terminate",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [OperationKind::Create, OperationKind::Delete, OperationKind::Terminate].into_iter().find(|k| k.as_str() == s)
    }
}

/// A long-running operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub id: String,
    pub subscription_id: String,
    pub location: String,
    pub kind: OperationKind,
    pub resource_kind: Kind,
    pub resource_key: String,
    pub resource_id: String,
    pub dollar_id: String,
    pub status: OperationStatus,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub started_at: Millis,
    pub ended_at: Option<Millis>,
    pub run_after: Millis,
    pub attempts: i32,
}
