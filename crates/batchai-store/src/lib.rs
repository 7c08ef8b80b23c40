//! Persistence for the control plane.
//!
//! One [`Store`] interface, implemented for Postgres (production: several servers may share one
//! database) and for an embedded SQLite file (the default). Both implementations are generated
//! from the same statements by [`sql`]; they differ only in locking clauses. Every state change
//! is a guarded `UPDATE … WHERE state = $expected` whose affected-row count says who won.
//! Migrations for both live in `migrations/` at the workspace root and run on connect.

mod analyze;
mod at_once;
mod direct;
mod fleet;
mod insert;
mod sql;
mod storage;
mod types;

use std::sync::Arc;

use async_trait::async_trait;
use batchai_core::state::{AllocationState, ExecutionState, OperationStatus, ProvisioningState};
use batchai_core::time::Millis;

pub use fleet::*;
pub use sql::{PgStore, SqliteStore};
pub use storage::*;
pub use types::*;

/// Errors of the persistence layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A row with this key exists already.
    #[error("already exists")]
    Conflict,
    /// The parent to insert under is missing or being deleted.
    #[error("parent missing or being deleted")]
    ParentGone,
    /// The resource named by [`NewResource::requires`] is missing or being deleted.
    #[error("required resource missing or being deleted")]
    RequiredGone,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported database url '{0}': use postgres://… or sqlite://…")]
    BadUrl(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// True when the database could not be reached; the request may succeed later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Connections of a store's pool: open ones, the idle among them, and the most it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUse {
    pub open: u32,
    pub idle: u32,
    pub max: u32,
}

/// The persistence interface. Implementations must be safe to share between tasks and, for
/// Postgres, between processes.
#[async_trait]
pub trait Store: Fleet + Storage + Send + Sync + 'static {
    /// `"postgres"` or `"sqlite"`.
    fn backend(&self) -> &'static str;
    /// The connection pool's use now (SQLite: its reader pool).
    fn pool_use(&self) -> PoolUse;
    async fn ping(&self) -> Result<()>;
    /// Whether every migration this build has is applied to the database (a server started
    /// against a database another, newer or older, build migrated answers false).
    async fn schema_current(&self) -> Result<bool>;
    /// Jobs per (execution state, priority rank): what the metrics report.
    async fn job_counts(&self) -> Result<Vec<(String, i32, i64)>>;

    /// Returns the stored value of `key`, storing `value` first when there is none.
    async fn meta_get_or_insert(&self, key: &str, value: &str) -> Result<String>;

    async fn ensure_subscription(&self, id: &str, now: Millis) -> Result<()>;
    async fn get_subscription(&self, id: &str) -> Result<Option<Subscription>>;
    async fn set_provider_state(&self, subscription: &str, namespace_key: &str, state: &str) -> Result<()>;
    async fn provider_state(&self, subscription: &str, namespace_key: &str) -> Result<Option<String>>;

    async fn create_principal(&self, p: &Principal) -> Result<()>;
    async fn get_principal(&self, client_id: &str) -> Result<Option<Principal>>;
    async fn list_principals(&self) -> Result<Vec<Principal>>;
    async fn delete_principal(&self, client_id: &str) -> Result<bool>;
    async fn create_token(&self, t: &ApiToken) -> Result<()>;
    async fn find_token(&self, token_hash: &str) -> Result<Option<ApiToken>>;
    async fn revoke_token(&self, id: &str, now: Millis) -> Result<bool>;

    /// Inserts a resource (with its runtime row and, when given, the operation that finishes
    /// its creation) in one transaction. Fails with [`StoreError::Conflict`] if the key exists
    /// and [`StoreError::ParentGone`] if the parent (unless it is a subscription) is missing
    /// or being deleted, [`StoreError::RequiredGone`] likewise for `requires`.
    ///
    /// The operation's location becomes the parent's when the parent has one (children live in
    /// their workspace's region); the location used is returned.
    async fn insert_resource(&self, r: &NewResource, op: Option<&Operation>) -> Result<Inserted>;
    async fn get_resource(&self, key: &str) -> Result<Option<ResourceRow>>;
    async fn list_resources(&self, q: &ListQuery) -> Result<Vec<ResourceRow>>;
    async fn update_tags(&self, key: &str, tags: &serde_json::Value) -> Result<bool>;
    /// Replaces a cluster's definition (PATCH of scale settings) unless it is being deleted,
    /// moving its allocation state to `allocation`.
    async fn update_cluster_spec(
        &self,
        key: &str,
        spec: &serde_json::Value,
        allocation: AllocationState,
        now: Millis,
    ) -> Result<bool>;
    /// `from → to` on `provisioning_state`; false when the row was not in `from`.
    async fn transition_provisioning(
        &self,
        key: &str,
        from: ProvisioningState,
        to: ProvisioningState,
        now: Millis,
    ) -> Result<bool>;
    /// Marks a resource `deleting` and records the operation that deletes it, in one
    /// transaction. False when it is missing or already being deleted.
    async fn begin_delete(&self, key: &str, op: &Operation) -> Result<bool>;
    /// Removes a resource and everything under it.
    async fn delete_subtree(&self, key: &str, kind: batchai_core::ids::Kind) -> Result<()>;
    /// `from → to` on a job's execution state, applying `outcome`'s fields.
    async fn transition_job(
        &self,
        key: &str,
        from: ExecutionState,
        to: ExecutionState,
        outcome: &JobOutcome,
    ) -> Result<bool>;

    /// Records an operation that needs no resource change of its own (terminate, group delete).
    async fn insert_operation(&self, op: &Operation) -> Result<()>;
    async fn get_operation(&self, id: &str) -> Result<Option<Operation>>;
    /// Leases up to `limit` due, unfinished operations until `lease_until`. An operation whose
    /// lease ran out (its server died) is claimable again.
    async fn claim_operations(&self, now: Millis, lease_until: Millis, limit: i64) -> Result<Vec<Operation>>;
    /// Ends an operation; false when it had ended already.
    async fn finish_operation(
        &self,
        id: &str,
        status: OperationStatus,
        error: Option<(&str, &str)>,
        now: Millis,
    ) -> Result<bool>;
}

/// Connects to `url` (`postgres://…`, `postgresql://…` or `sqlite://path`), runs the
/// migrations and returns the store.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        Ok(Arc::new(SqliteStore::connect(path).await?))
    } else {
        Err(StoreError::BadUrl(url.to_owned()))
    }
}
