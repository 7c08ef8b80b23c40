//! The SQL behind [`Store`], written once and instantiated for Postgres and SQLite.
//!
//! Both dialects accept the same `$N` placeholders, `ON CONFLICT`, `RETURNING` and
//! `COALESCE`; what differs is passed into [`sql_store!`] as literals: how a write transaction
//! begins (SQLite must take the write lock up front, or a read-then-write transaction fails
//! with `SQLITE_BUSY` under concurrency) and `FOR UPDATE SKIP LOCKED` for claiming operations.
//! Inserting a resource, the hot path of job submission, is written per dialect and batched:
//! see [`crate::insert`].

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use batchai_core::ids::Kind;
use batchai_core::state::{AllocationState, ExecutionState, OperationStatus, ProvisioningState};
use batchai_core::time::Millis;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Postgres, Row, Sqlite};

use crate::analyze::Analyzer;
use crate::direct::Direct;
use crate::insert::{Batcher, pg_insert_batch, sqlite_insert_batch};
use crate::types::*;
use crate::{Result, Store, StoreError};

/// Postgres-backed store; safe for several servers on one database.
#[derive(Clone)]
pub struct PgStore {
    pub(crate) pool: PgPool,
    direct: Arc<Direct<Postgres>>,
    inserts: Batcher,
}

/// SQLite-backed store in one file. SQLite admits one writer at a time; writes go through a
/// one-connection pool so they queue in order here instead of spinning in SQLite's busy
/// handler, while reads use their own connections (WAL lets them run beside the writer).
#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    direct: Arc<Direct<Sqlite>>,
    writer: SqlitePool,
    inserts: Batcher,
}

/// Connections kept apart for one-statement reads on hot paths (see [`crate::direct`]).
const DIRECT_SLOTS: usize = 4;

/// A pooled Postgres connection idle this long is pinged before it is used again.
pub(crate) const CHECK_IDLE_AFTER: Duration = Duration::from_millis(500);

impl PgStore {
    pub async fn connect(url: &str) -> Result<Self> {
        // Statements are prepared once per connection; a generic plan spares Postgres from
        // re-planning them on every execution (their shape never depends on the values).
        let opts = PgConnectOptions::from_str(url)?.options([("plan_cache_mode", "force_generic_plan")]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // sqlx pings a connection before every use by default: a second round trip for
            // every one-statement request. Only a connection idle for a while is checked now,
            // as HikariCP does (its 500 ms bypass window): one in steady use has just proved
            // itself, and one broken meanwhile fails its statement and is not reused.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= CHECK_IDLE_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        PG_MIGRATOR.run(&pool).await?;
        let (batch_pool, analyzer) = (pool.clone(), Arc::new(Analyzer::default()));
        // One writer: batches are then as large as the queue allows, and a statement's fixed
        // cost (planning the executor for the UNNEST and its CTEs) is shared by more jobs. Two
        // overlapping writers were faster while the statement walked bad plans; since the plans
        // hold, one measured 9 % faster (docs/benchmarks.md).
        let inserts = Batcher::spawn(move |batch| {
            let (pool, analyzer, rows) = (batch_pool.clone(), analyzer.clone(), batch.len() as u64);
            async move {
                pg_insert_batch(pool.clone(), batch).await;
                analyzer.inserted(rows, &pool);
            }
        });
        Ok(Self { direct: Arc::new(Direct::new(pool.clone(), DIRECT_SLOTS)), pool, inserts })
    }

    /// Postgres takes concurrent writers; reads and writes share the pool.
    pub(crate) fn writer(&self) -> &PgPool {
        &self.pool
    }
}

impl SqliteStore {
    pub async fn connect(path: &str) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        // A SQLite connection is a file handle that cannot go stale: the ping sqlx would send
        // before every use (a hop to the connection's thread and back) buys nothing.
        let writer =
            SqlitePoolOptions::new().max_connections(1).test_before_acquire(false).connect_with(opts.clone()).await?;
        SQLITE_MIGRATOR.run(&writer).await?;
        let pool = SqlitePoolOptions::new().max_connections(8).test_before_acquire(false).connect_with(opts).await?;
        let batch_writer = writer.clone();
        let inserts = Batcher::spawn(move |batch| sqlite_insert_batch(batch_writer.clone(), batch));
        Ok(Self { direct: Arc::new(Direct::new(pool.clone(), DIRECT_SLOTS)), pool, writer, inserts })
    }

    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

pub(crate) fn json_col(raw: Option<String>, what: &str) -> Result<Option<serde_json::Value>> {
    raw.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))).transpose()
}

fn list_col(raw: String) -> Result<Vec<String>> {
    serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt(format!("subscriptions list: {e}")))
}

pub(crate) fn parse_enum<T>(raw: &str, parse: impl Fn(&str) -> Option<T>, what: &str) -> Result<T> {
    parse(raw).ok_or_else(|| StoreError::Corrupt(format!("{what} '{raw}'")))
}

fn principal_from<R: Row>(row: &R) -> Result<Principal>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Principal {
        client_id: row.try_get("client_id")?,
        name: row.try_get("name")?,
        secret_hash: row.try_get("secret_hash")?,
        subscriptions: list_col(row.try_get("subscriptions")?)?,
        created_at: row.try_get("created_at")?,
    })
}

fn token_from<R: Row>(row: &R) -> Result<ApiToken>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ApiToken {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        token_hash: row.try_get("token_hash")?,
        subscriptions: list_col(row.try_get("subscriptions")?)?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn operation_from<R: Row>(row: &R) -> Result<Operation>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i32: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let kind: String = row.try_get("kind")?;
    let resource_kind: String = row.try_get("resource_kind")?;
    let status: String = row.try_get("status")?;
    Ok(Operation {
        id: row.try_get("id")?,
        subscription_id: row.try_get("subscription_id")?,
        location: row.try_get("location")?,
        kind: parse_enum(&kind, OperationKind::parse, "operation kind")?,
        resource_kind: parse_enum(&resource_kind, Kind::parse, "resource kind")?,
        resource_key: row.try_get("resource_key")?,
        resource_id: row.try_get("resource_id")?,
        dollar_id: row.try_get("dollar_id")?,
        status: parse_enum(&status, OperationStatus::parse, "operation status")?,
        error_code: row.try_get("error_code")?,
        error_message: row.try_get("error_message")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        run_after: row.try_get("run_after")?,
        attempts: row.try_get("attempts")?,
    })
}

fn resource_from<R: Row>(row: &R) -> Result<ResourceRow>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i32>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let kind_raw: String = row.try_get("kind")?;
    let kind = parse_enum(&kind_raw, Kind::parse, "resource kind")?;
    let ps: String = row.try_get("provisioning_state")?;
    let job = match row.try_get::<Option<String>, _>("execution_state")? {
        None => None,
        Some(es) => Some(JobRuntime {
            cluster_key: row.try_get::<Option<String>, _>("cluster_key")?.unwrap_or_default(),
            priority: row.try_get::<Option<i32>, _>("priority")?.unwrap_or_default(),
            node_count: row.try_get::<Option<i32>, _>("node_count")?.unwrap_or_default(),
            tool_type: row.try_get::<Option<String>, _>("tool_type")?.unwrap_or_default(),
            max_wall_clock_secs: row.try_get::<Option<i64>, _>("max_wall_clock_secs")?.unwrap_or_default(),
            execution_state: parse_enum(&es, ExecutionState::parse, "execution state")?,
            execution_changed_at: row.try_get::<Option<i64>, _>("execution_changed_at")?.unwrap_or_default(),
            start_time: row.try_get("start_time")?,
            end_time: row.try_get("end_time")?,
            exit_code: row.try_get("exit_code")?,
            errors: match json_col(row.try_get("job_errors")?, "job errors")? {
                None => Vec::new(),
                Some(v) => serde_json::from_value(v).map_err(|e| StoreError::Corrupt(format!("job errors: {e}")))?,
            },
        }),
    };
    let cluster = match row.try_get::<Option<String>, _>("allocation_state")? {
        None => None,
        Some(a) => {
            let count = |c: &str| -> Result<i32> { Ok(row.try_get::<Option<i32>, _>(c)?.unwrap_or_default()) };
            Some(ClusterRuntime {
                vm_size: row.try_get::<Option<String>, _>("vm_size")?.unwrap_or_default(),
                allocation_state: parse_enum(&a, AllocationState::parse, "allocation state")?,
                allocation_changed_at: row.try_get::<Option<i64>, _>("allocation_changed_at")?.unwrap_or_default(),
                current_node_count: count("current_node_count")?,
                idle_node_count: count("idle_node_count")?,
                running_node_count: count("running_node_count")?,
                preparing_node_count: count("preparing_node_count")?,
                unusable_node_count: count("unusable_node_count")?,
                leaving_node_count: count("leaving_node_count")?,
                errors: json_col(row.try_get("cluster_errors")?, "cluster errors")?,
            })
        }
    };
    Ok(ResourceRow {
        key: row.try_get("key")?,
        kind,
        subscription_id: row.try_get("subscription_id")?,
        parent_key: row.try_get("parent_key")?,
        arm_id: row.try_get("arm_id")?,
        name: row.try_get("name")?,
        uid: row.try_get("uid")?,
        location: row.try_get("location")?,
        tags: json_col(row.try_get("tags")?, "tags")?,
        spec: json_col(row.try_get("spec")?, "spec")?,
        provisioning_state: parse_enum(&ps, ProvisioningState::parse, "provisioning state")?,
        provisioning_changed_at: row.try_get("provisioning_changed_at")?,
        created_at: row.try_get("created_at")?,
        job,
        cluster,
    })
}

macro_rules! select_resources {
    () => {
        "SELECT r.key, r.kind, r.subscription_id, r.parent_key, r.arm_id, r.name, r.uid, r.location, r.tags, \
         r.spec, r.provisioning_state, r.provisioning_changed_at, r.created_at, \
         j.cluster_key, j.priority, j.node_count, j.tool_type, j.max_wall_clock_secs, j.execution_state, \
         j.execution_changed_at, j.start_time, j.end_time, j.exit_code, j.errors AS job_errors, \
         c.vm_size, c.allocation_state, c.allocation_changed_at, c.current_node_count, c.idle_node_count, \
         c.running_node_count, c.preparing_node_count, c.unusable_node_count, c.leaving_node_count, \
         c.errors AS cluster_errors \
         FROM resources r LEFT JOIN jobs j ON j.key = r.key LEFT JOIN clusters c ON c.key = r.key "
    };
}

macro_rules! operation_columns {
    () => {
        "id, subscription_id, location, kind, resource_kind, resource_key, resource_id, dollar_id, status, \
         error_code, error_message, started_at, ended_at, run_after, attempts"
    };
}

/// The migrations each backend is built with; readiness compares the database against them.
static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

macro_rules! sql_store {
    ($store:ident, backend = $backend:literal, migrator = $migrator:ident, begin_write = $begin:literal, skip_locked = $skip_locked:literal) => {
        impl $store {
            pub(crate) async fn insert_operation_in(
                conn: &mut <<Self as StoreDb>::Db as sqlx::Database>::Connection,
                op: &Operation,
            ) -> Result<()> {
                sqlx::query(concat!(
                    "INSERT INTO operations (",
                    operation_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
                ))
                .bind(&op.id)
                .bind(&op.subscription_id)
                .bind(&op.location)
                .bind(op.kind.as_str())
                .bind(op.resource_kind.as_str())
                .bind(&op.resource_key)
                .bind(&op.resource_id)
                .bind(&op.dollar_id)
                .bind(op.status.as_str())
                .bind(&op.error_code)
                .bind(&op.error_message)
                .bind(op.started_at)
                .bind(op.ended_at)
                .bind(op.run_after)
                .bind(op.attempts)
                .execute(&mut *conn)
                .await?;
                Ok(())
            }
        }

        #[async_trait]
        impl Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            fn pool_use(&self) -> crate::PoolUse {
                crate::PoolUse {
                    open: self.pool.size(),
                    idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
                    max: self.pool.options().get_max_connections(),
                }
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(self.writer()).await?;
                Ok(())
            }

            async fn job_counts(&self) -> Result<Vec<(String, i32, i64)>> {
                let rows = sqlx::query(
                    "SELECT execution_state, priority, COUNT(*) AS n FROM jobs GROUP BY execution_state, priority",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("execution_state")?, r.try_get("priority")?, r.try_get("n")?)))
                    .collect()
            }

            async fn schema_current(&self) -> Result<bool> {
                let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(&self.pool)
                    .await?;
                Ok($migrator.iter().all(|m| applied.contains(&m.version)))
            }

            async fn meta_get_or_insert(&self, key: &str, value: &str) -> Result<String> {
                sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                    .bind(key)
                    .bind(value)
                    .execute(self.writer())
                    .await?;
                let row = sqlx::query("SELECT value FROM meta WHERE key = $1").bind(key).fetch_one(&self.pool).await?;
                Ok(row.try_get("value")?)
            }

            async fn ensure_subscription(&self, id: &str, now: Millis) -> Result<()> {
                sqlx::query(
                    "INSERT INTO subscriptions (id, display_name, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(format!("batchai subscription {id}"))
                .bind(now)
                .execute(self.writer())
                .await?;
                Ok(())
            }

            async fn get_subscription(&self, id: &str) -> Result<Option<Subscription>> {
                let row = sqlx::query("SELECT id, display_name, created_at FROM subscriptions WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| {
                    Ok(Subscription {
                        id: r.try_get("id")?,
                        display_name: r.try_get("display_name")?,
                        created_at: r.try_get("created_at")?,
                    })
                })
                .transpose()
            }

            async fn set_provider_state(&self, subscription: &str, namespace_key: &str, state: &str) -> Result<()> {
                sqlx::query(
                    "INSERT INTO provider_registrations (subscription_id, namespace_key, state) VALUES ($1, $2, $3) \
                     ON CONFLICT (subscription_id, namespace_key) DO UPDATE SET state = excluded.state",
                )
                .bind(subscription)
                .bind(namespace_key)
                .bind(state)
                .execute(self.writer())
                .await?;
                Ok(())
            }

            async fn provider_state(&self, subscription: &str, namespace_key: &str) -> Result<Option<String>> {
                let row = sqlx::query(
                    "SELECT state FROM provider_registrations WHERE subscription_id = $1 AND namespace_key = $2",
                )
                .bind(subscription)
                .bind(namespace_key)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|r| r.try_get("state")).transpose()?)
            }

            async fn create_principal(&self, p: &Principal) -> Result<()> {
                sqlx::query(
                    "INSERT INTO principals (client_id, name, secret_hash, subscriptions, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&p.client_id)
                .bind(&p.name)
                .bind(&p.secret_hash)
                .bind(serde_json::to_string(&p.subscriptions).unwrap_or_default())
                .bind(p.created_at)
                .execute(self.writer())
                .await
                .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict } else { e.into() })?;
                Ok(())
            }

            async fn get_principal(&self, client_id: &str) -> Result<Option<Principal>> {
                let row = sqlx::query("SELECT * FROM principals WHERE client_id = $1")
                    .bind(client_id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(principal_from).transpose()
            }

            async fn list_principals(&self) -> Result<Vec<Principal>> {
                let rows = sqlx::query("SELECT * FROM principals ORDER BY created_at, client_id")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(principal_from).collect()
            }

            async fn delete_principal(&self, client_id: &str) -> Result<bool> {
                let done = sqlx::query("DELETE FROM principals WHERE client_id = $1")
                    .bind(client_id)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn create_token(&self, t: &ApiToken) -> Result<()> {
                sqlx::query(
                    "INSERT INTO api_tokens (id, name, token_hash, subscriptions, created_at, expires_at, revoked_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&t.id)
                .bind(&t.name)
                .bind(&t.token_hash)
                .bind(serde_json::to_string(&t.subscriptions).unwrap_or_default())
                .bind(t.created_at)
                .bind(t.expires_at)
                .bind(t.revoked_at)
                .execute(self.writer())
                .await
                .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict } else { e.into() })?;
                Ok(())
            }

            async fn find_token(&self, token_hash: &str) -> Result<Option<ApiToken>> {
                let row = sqlx::query("SELECT * FROM api_tokens WHERE token_hash = $1")
                    .bind(token_hash)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(token_from).transpose()
            }

            async fn revoke_token(&self, id: &str, now: Millis) -> Result<bool> {
                let done = sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                    .bind(id)
                    .bind(now)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn insert_resource(&self, r: &NewResource, op: Option<&Operation>) -> Result<Inserted> {
                self.inserts.submit(r.clone(), op.cloned()).await
            }

            async fn get_resource(&self, key: &str) -> Result<Option<ResourceRow>> {
                let query = || sqlx::query(concat!(select_resources!(), "WHERE r.key = $1")).bind(key);
                self.direct.read(query).await?.first().map(resource_from).transpose()
            }

            async fn list_resources(&self, q: &ListQuery) -> Result<Vec<ResourceRow>> {
                let after = q.after.clone().unwrap_or_default();
                let rows = match &q.scope {
                    Scope::Subscription(sub) => {
                        sqlx::query(concat!(
                            select_resources!(),
                            "WHERE r.subscription_id = $1 AND r.kind = $2 AND r.key > $3 ORDER BY r.key LIMIT $4"
                        ))
                        .bind(sub)
                        .bind(q.kind.as_str())
                        .bind(after)
                        .bind(q.limit)
                        .fetch_all(&self.pool)
                        .await?
                    }
                    Scope::ResourceGroup { subscription, rg_key } => {
                        sqlx::query(concat!(
                            select_resources!(),
                            "WHERE r.subscription_id = $1 AND r.rg_key = $2 AND r.kind = $3 AND r.key > $4 \
                             ORDER BY r.key LIMIT $5"
                        ))
                        .bind(subscription)
                        .bind(rg_key)
                        .bind(q.kind.as_str())
                        .bind(after)
                        .bind(q.limit)
                        .fetch_all(&self.pool)
                        .await?
                    }
                    Scope::Parent(parent) => {
                        sqlx::query(concat!(
                            select_resources!(),
                            "WHERE r.parent_key = $1 AND r.kind = $2 AND r.key > $3 ORDER BY r.key LIMIT $4"
                        ))
                        .bind(parent)
                        .bind(q.kind.as_str())
                        .bind(after)
                        .bind(q.limit)
                        .fetch_all(&self.pool)
                        .await?
                    }
                };
                rows.iter().map(resource_from).collect()
            }

            async fn update_tags(&self, key: &str, tags: &serde_json::Value) -> Result<bool> {
                let done =
                    sqlx::query("UPDATE resources SET tags = $2 WHERE key = $1 AND provisioning_state <> 'deleting'")
                        .bind(key)
                        .bind(tags.to_string())
                        .execute(self.writer())
                        .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn update_cluster_spec(
                &self,
                key: &str,
                spec: &serde_json::Value,
                allocation: AllocationState,
                now: Millis,
            ) -> Result<bool> {
                let mut tx = self.writer().begin_with($begin).await?;
                let done =
                    sqlx::query("UPDATE resources SET spec = $2 WHERE key = $1 AND provisioning_state <> 'deleting'")
                        .bind(key)
                        .bind(spec.to_string())
                        .execute(&mut *tx)
                        .await?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                sqlx::query(
                    "UPDATE clusters SET allocation_state = $2, allocation_changed_at = $3 \
                     WHERE key = $1 AND allocation_state <> $2",
                )
                .bind(key)
                .bind(allocation.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn transition_provisioning(
                &self,
                key: &str,
                from: ProvisioningState,
                to: ProvisioningState,
                now: Millis,
            ) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE resources SET provisioning_state = $3, provisioning_changed_at = $4 \
                     WHERE key = $1 AND provisioning_state = $2",
                )
                .bind(key)
                .bind(from.as_str())
                .bind(to.as_str())
                .bind(now)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn begin_delete(&self, key: &str, op: &Operation) -> Result<bool> {
                let mut tx = self.writer().begin_with($begin).await?;
                let done = sqlx::query(
                    "UPDATE resources SET provisioning_state = 'deleting', provisioning_changed_at = $2 \
                     WHERE key = $1 AND provisioning_state <> 'deleting'",
                )
                .bind(key)
                .bind(op.started_at)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                Self::insert_operation_in(&mut tx, op).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn delete_subtree(&self, key: &str, kind: Kind) -> Result<()> {
                let mut tx = self.writer().begin_with($begin).await?;
                let row = sqlx::query("SELECT subscription_id, rg_key, ws_key, exp_key FROM resources WHERE key = $1")
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else { return Ok(()) };
                let sub: String = row.try_get("subscription_id")?;
                let rg: String = row.try_get("rg_key")?;
                let ws: String = row.try_get("ws_key")?;
                let exp: String = row.try_get("exp_key")?;
                match kind {
                    Kind::ResourceGroup => {
                        sqlx::query("DELETE FROM resources WHERE subscription_id = $1 AND rg_key = $2")
                            .bind(sub)
                            .bind(rg)
                            .execute(&mut *tx)
                            .await?
                    }
                    Kind::Workspace => {
                        sqlx::query("DELETE FROM resources WHERE subscription_id = $1 AND rg_key = $2 AND ws_key = $3")
                            .bind(sub)
                            .bind(rg)
                            .bind(ws)
                            .execute(&mut *tx)
                            .await?
                    }
                    Kind::Experiment => {
                        sqlx::query(
                            "DELETE FROM resources WHERE subscription_id = $1 AND rg_key = $2 AND ws_key = $3 \
                             AND exp_key = $4",
                        )
                        .bind(sub)
                        .bind(rg)
                        .bind(ws)
                        .bind(exp)
                        .execute(&mut *tx)
                        .await?
                    }
                    Kind::Cluster | Kind::FileServer | Kind::Job => {
                        sqlx::query("DELETE FROM resources WHERE key = $1").bind(key).execute(&mut *tx).await?
                    }
                };
                tx.commit().await?;
                Ok(())
            }

            async fn transition_job(
                &self,
                key: &str,
                from: ExecutionState,
                to: ExecutionState,
                o: &JobOutcome,
            ) -> Result<bool> {
                let errors = o.errors.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default());
                let done = sqlx::query(
                    "UPDATE jobs SET execution_state = $3, execution_changed_at = $4, \
                     start_time = COALESCE($5, start_time), end_time = COALESCE($6, end_time), \
                     exit_code = COALESCE($7, exit_code), errors = COALESCE($8, errors) \
                     WHERE key = $1 AND execution_state = $2",
                )
                .bind(key)
                .bind(from.as_str())
                .bind(to.as_str())
                .bind(o.now)
                .bind(o.start_time)
                .bind(o.end_time)
                .bind(o.exit_code)
                .bind(errors)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn insert_operation(&self, op: &Operation) -> Result<()> {
                let mut conn = self.writer().acquire().await?;
                Self::insert_operation_in(&mut conn, op).await
            }

            async fn get_operation(&self, id: &str) -> Result<Option<Operation>> {
                let row = sqlx::query(concat!("SELECT ", operation_columns!(), " FROM operations WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(operation_from).transpose()
            }

            async fn claim_operations(&self, now: Millis, lease_until: Millis, limit: i64) -> Result<Vec<Operation>> {
                let rows = sqlx::query(concat!(
                    "UPDATE operations SET lease_until = $2, attempts = attempts + 1 WHERE id IN (",
                    "SELECT id FROM operations WHERE status = 'InProgress' AND run_after <= $1 AND lease_until <= $1 ",
                    "ORDER BY run_after LIMIT $3",
                    $skip_locked,
                    ") RETURNING ",
                    operation_columns!()
                ))
                .bind(now)
                .bind(lease_until)
                .bind(limit)
                .fetch_all(self.writer())
                .await?;
                rows.iter().map(operation_from).collect()
            }

            async fn finish_operation(
                &self,
                id: &str,
                status: OperationStatus,
                error: Option<(&str, &str)>,
                now: Millis,
            ) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE operations SET status = $2, error_code = $3, error_message = $4, ended_at = $5 \
                     WHERE id = $1 AND status = 'InProgress'",
                )
                .bind(id)
                .bind(status.as_str())
                .bind(error.map(|e| e.0))
                .bind(error.map(|e| e.1))
                .bind(now)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() == 1)
            }
        }
    };
}

/// Names the database type of each store, for the shared helper's signature.
pub(crate) trait StoreDb {
    type Db: sqlx::Database;
}

impl StoreDb for PgStore {
    type Db = sqlx::Postgres;
}

impl StoreDb for SqliteStore {
    type Db = sqlx::Sqlite;
}

sql_store!(
    PgStore,
    backend = "postgres",
    migrator = PG_MIGRATOR,
    begin_write = "BEGIN",
    skip_locked = " FOR UPDATE SKIP LOCKED"
);
sql_store!(
    SqliteStore,
    backend = "sqlite",
    migrator = SQLITE_MIGRATOR,
    begin_write = "BEGIN IMMEDIATE",
    skip_locked = ""
);
