//! Nodes, join tokens and job placements: the part of the store the scheduler and the agent
//! protocol move. Written once for both databases, like [`crate::sql`].
//!
//! Locking order, so two servers on one Postgres never deadlock: a job row first, then its
//! nodes in id order, then cluster rows in key order.

use async_trait::async_trait;
use batchai_core::state::{AllocationState, ExecutionState, NodeState};
use batchai_core::time::Millis;
use sqlx::Row;

use crate::sql::{is_unique_violation, json_col, parse_enum};
use crate::types::JobOutcome;
use crate::{PgStore, Result, SqliteStore, StoreError};

/// A token that lets a machine join as a node; only its hash is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinToken {
    pub id: String,
    pub name: String,
    pub token_hash: String,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

/// What a node reports about itself, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFactsRow {
    pub hostname: String,
    pub address: String,
    pub ssh_port: i32,
    pub gpus: i32,
    /// The full facts as JSON (`batchai_core::protocol::NodeFacts`).
    pub facts: serde_json::Value,
    /// Lower-cased VM sizes it serves; `*` for all.
    pub vm_sizes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewNode {
    pub id: String,
    pub credential_hash: String,
    pub facts: NodeFactsRow,
    pub now: Millis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub id: String,
    pub hostname: String,
    pub address: String,
    pub ssh_port: i32,
    pub gpus: i32,
    pub facts: serde_json::Value,
    pub state: NodeState,
    pub cluster_key: Option<String>,
    pub alloc_epoch: i64,
    pub job_key: Option<String>,
    pub job_epoch: Option<i64>,
    pub error: Option<String>,
    pub lost_at: Option<Millis>,
    pub last_seen: Millis,
    pub joined_at: Millis,
    pub changed_at: Millis,
}

/// One node of a job's placement and what it reported.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedNode {
    pub rank: i32,
    pub node_id: String,
    pub address: String,
    pub gpus: i32,
    pub phase: String,
    pub exit_code: Option<i32>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

/// A cluster as the scheduler needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedCluster {
    pub key: String,
    pub arm_id: String,
    pub vm_size: String,
    pub spec: Option<serde_json::Value>,
    pub deleting: bool,
    pub allocation_state: AllocationState,
    pub errors: Option<serde_json::Value>,
}

/// A queued, running or terminating job of a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedJob {
    pub key: String,
    pub epoch: i64,
    pub execution_state: ExecutionState,
    pub priority: i32,
    pub created_at: Millis,
    pub node_count: i32,
    pub max_wall_clock_secs: i64,
    pub start_time: Option<Millis>,
    pub requeues: i32,
}

/// A node given up for lost, and the placement it held.
#[derive(Debug, Clone, PartialEq)]
pub struct LostNode {
    pub id: String,
    pub cluster_key: Option<String>,
    pub job: Option<(String, i64)>,
    /// It said it was shutting down ([`Fleet::node_left`]) rather than falling silent.
    pub left: bool,
}

/// Node and placement persistence (a supertrait of [`crate::Store`]).
#[async_trait]
pub trait Fleet: Send + Sync {
    async fn create_join_token(&self, t: &JoinToken) -> Result<()>;
    async fn find_join_token(&self, token_hash: &str) -> Result<Option<JoinToken>>;
    async fn list_join_tokens(&self) -> Result<Vec<JoinToken>>;
    async fn revoke_join_token(&self, id: &str, now: Millis) -> Result<bool>;

    async fn register_node(&self, n: &NewNode) -> Result<()>;
    async fn node_by_credential(&self, credential_hash: &str) -> Result<Option<NodeRow>>;
    async fn get_node(&self, id: &str) -> Result<Option<NodeRow>>;
    /// All nodes, or those of one cluster, by id.
    async fn list_nodes(&self, cluster_key: Option<&str>) -> Result<Vec<NodeRow>>;
    /// A cluster's nodes by id, without their facts (`facts` is null): what every scheduling
    /// pass reads, and the facts are most of a node's row.
    async fn cluster_nodes(&self, cluster_key: &str) -> Result<Vec<NodeRow>>;
    async fn update_node_facts(&self, id: &str, facts: &NodeFactsRow, now: Millis) -> Result<()>;
    /// Records that the node holding this credential is alive, and returns its row after (one
    /// statement when it was not lost). A node given up for lost comes back: prepared anew for
    /// its cluster (a new allocation epoch) or returned to the pool. `None`: no such node.
    async fn heartbeat(&self, credential_hash: &str, now: Millis) -> Result<Option<NodeRow>>;
    /// Ends a node's preparation for allocation `alloc_epoch`: idle, or unusable with `error`.
    async fn report_setup(&self, id: &str, alloc_epoch: i64, error: Option<&str>, now: Millis) -> Result<bool>;
    /// Records a node's report about its part of a job; false (and nothing changes) when the
    /// node no longer holds that placement.
    async fn report_task(
        &self,
        node_id: &str,
        job_key: &str,
        epoch: i64,
        phase: &str,
        exit_code: Option<i32>,
        error: Option<(&str, &str)>,
    ) -> Result<bool>;
    /// The nodes of a placement in rank order.
    async fn job_placement(&self, job_key: &str, epoch: i64) -> Result<Vec<PlacedNode>>;
    /// A job's execution state, if its current placement is `epoch`.
    async fn job_state(&self, job_key: &str, epoch: i64) -> Result<Option<ExecutionState>>;
    /// Nodes whose desired state changed after `since`.
    async fn nodes_changed_since(&self, since: Millis) -> Result<Vec<(String, Millis)>>;
    /// Marks every node of a job's current placement as changed (wakes their long polls).
    async fn touch_job_nodes(&self, job_key: &str, now: Millis) -> Result<()>;

    async fn scheduling_clusters(&self) -> Result<Vec<SchedCluster>>;
    /// Queued jobs of a cluster in queue order, then its running and terminating ones.
    async fn cluster_jobs(&self, cluster_key: &str, queued_limit: i64) -> Result<Vec<SchedJob>>;
    /// Gives up to `count` free nodes serving `vm_size` to the cluster; returns how many.
    async fn allocate_nodes(&self, cluster_key: &str, vm_size: &str, count: i64, now: Millis) -> Result<u64>;
    /// Returns idle, preparing or unusable nodes of the cluster to the pool.
    async fn release_nodes(&self, cluster_key: &str, ids: &[String], now: Millis) -> Result<u64>;
    /// Running nodes that leave once their job ends (`waitforjobcompletion`).
    async fn mark_leaving(&self, cluster_key: &str, ids: &[String], now: Millis) -> Result<u64>;
    /// Starts queued jobs of a cluster on its idle nodes, each job on all its nodes or none, in
    /// one transaction (one commit for a whole scheduling pass). Returns each placement's
    /// epoch, or `None` for a job whose row or a node was taken meanwhile.
    async fn place_jobs(
        &self,
        cluster_key: &str,
        placements: &[(String, Vec<String>)],
        now: Millis,
    ) -> Result<Vec<Option<i64>>>;

    /// [`Fleet::place_jobs`] for one job.
    async fn place_job(&self, job_key: &str, cluster_key: &str, nodes: &[String], now: Millis) -> Result<Option<i64>> {
        let placed = self.place_jobs(cluster_key, &[(job_key.to_owned(), nodes.to_vec())], now).await?;
        Ok(placed.into_iter().next().flatten())
    }
    /// Ends placement `epoch` of a job (`from` → `to`) and frees its nodes.
    async fn finish_job(
        &self,
        job_key: &str,
        epoch: i64,
        from: ExecutionState,
        to: ExecutionState,
        o: &JobOutcome,
    ) -> Result<bool>;
    /// Puts a running job back in the queue (its nodes were lost or taken) and frees its nodes.
    async fn requeue_job(&self, job_key: &str, epoch: i64, now: Millis) -> Result<bool>;
    /// Nodes silent since before `deadline` become unusable; returns them with what they held.
    async fn mark_lost(&self, deadline: Millis, now: Millis) -> Result<Vec<LostNode>>;
    /// The node's agent is shutting down: [`Fleet::mark_lost`] takes it at once, whatever its
    /// last heartbeat. False for an unknown or already lost node.
    async fn node_left(&self, id: &str, now: Millis) -> Result<bool>;
    /// Frees nodes whose cluster is gone and nodes holding a job that is gone or over.
    async fn release_orphans(&self, now: Millis) -> Result<u64>;
    /// Recounts a cluster's nodes; sets its allocation state and errors when given.
    async fn refresh_cluster(
        &self,
        cluster_key: &str,
        allocation: Option<AllocationState>,
        errors: Option<&serde_json::Value>,
        now: Millis,
    ) -> Result<()>;
}

fn node_from<R: Row>(row: &R) -> Result<NodeRow>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i32: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let state: String = row.try_get("state")?;
    Ok(NodeRow {
        id: row.try_get("id")?,
        hostname: row.try_get("hostname")?,
        address: row.try_get("address")?,
        ssh_port: row.try_get("ssh_port")?,
        gpus: row.try_get("gpus")?,
        facts: json_col(Some(row.try_get("facts")?), "node facts")?.unwrap_or_default(),
        state: parse_enum(&state, NodeState::parse, "node state")?,
        cluster_key: row.try_get("cluster_key")?,
        alloc_epoch: row.try_get("alloc_epoch")?,
        job_key: row.try_get("job_key")?,
        job_epoch: row.try_get("job_epoch")?,
        error: row.try_get("error")?,
        lost_at: row.try_get("lost_at")?,
        last_seen: row.try_get("last_seen")?,
        joined_at: row.try_get("joined_at")?,
        changed_at: row.try_get("changed_at")?,
    })
}

fn join_token_from<R: Row>(row: &R) -> Result<JoinToken>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(JoinToken {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        token_hash: row.try_get("token_hash")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn sched_job_from<R: Row>(row: &R) -> Result<SchedJob>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i32: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let state: String = row.try_get("execution_state")?;
    Ok(SchedJob {
        key: row.try_get("key")?,
        epoch: row.try_get("epoch")?,
        execution_state: parse_enum(&state, ExecutionState::parse, "execution state")?,
        priority: row.try_get("priority")?,
        created_at: row.try_get("created_at")?,
        node_count: row.try_get("node_count")?,
        max_wall_clock_secs: row.try_get("max_wall_clock_secs")?,
        start_time: row.try_get("start_time")?,
        requeues: row.try_get("requeues")?,
    })
}

/// A job's placement `$2` ends (`$3` → `$4` at `$5`, with end time, exit code and errors
/// `$6`–`$8`); its nodes are freed with it (Postgres: in the same statement, `at_once.rs`).
macro_rules! end_job {
    () => {
        "UPDATE jobs SET execution_state = $4, execution_changed_at = $5, end_time = COALESCE($6, end_time), \
         exit_code = COALESCE($7, exit_code), errors = COALESCE($8, errors) \
         WHERE key = $1 AND epoch = $2 AND execution_state = $3"
    };
}
pub(crate) use end_job;

/// Binds [`end_job!`]'s parameters, in its order, to a statement built on it.
macro_rules! bind_end_job {
    ($query:expr, $job_key:expr, $epoch:expr, $from:expr, $to:expr, $o:expr, $errors:expr) => {
        $query
            .bind($job_key)
            .bind($epoch)
            .bind($from.as_str())
            .bind($to.as_str())
            .bind($o.now)
            .bind($o.end_time)
            .bind($o.exit_code)
            .bind($errors)
    };
}
pub(crate) use bind_end_job;

macro_rules! node_columns {
    () => {
        "id, hostname, address, ssh_port, gpus, facts, state, cluster_key, alloc_epoch, job_key, job_epoch, \
         error, lost_at, last_seen, joined_at, changed_at "
    };
}

macro_rules! select_nodes {
    () => {
        concat!("SELECT ", node_columns!(), "FROM nodes ")
    };
}

macro_rules! select_sched_jobs {
    () => {
        "SELECT key, epoch, execution_state, priority, created_at, node_count, max_wall_clock_secs, start_time, \
         requeues FROM jobs WHERE cluster_key = $1 "
    };
}

/// Frees the nodes of a job's placement: back to idle, or to the pool if they were leaving.
const FREE_JOB_NODES: &str = "UPDATE nodes SET \
     state = CASE WHEN state = 'leaving' THEN 'free' ELSE 'idle' END, \
     cluster_key = CASE WHEN state = 'leaving' THEN NULL ELSE cluster_key END, \
     job_key = NULL, job_epoch = NULL, changed_at = $3 \
     WHERE job_key = $1 AND job_epoch = $2 AND state IN ('running', 'leaving')";

/// Recounts a cluster's nodes, writing only when a count changed. The frequent changes (a job
/// placed, ended or requeued, a node's setup reported) do not recount: that would queue every
/// job end on the cluster's one row. The scheduler recounts each cluster on every pass instead
/// (it is woken by those changes), which also converges counts a recount inside a concurrent
/// transaction missed under read committed. Rare changes (allocation, release, lost nodes)
/// still recount at once.
const REFRESH_COUNTS: &str = "UPDATE clusters SET current_node_count = x.total, idle_node_count = x.idle, \
     running_node_count = x.running, preparing_node_count = x.preparing, unusable_node_count = x.unusable, \
     leaving_node_count = x.leaving \
     FROM (SELECT count(*) AS total, \
       COALESCE(SUM(CASE WHEN state = 'idle' THEN 1 ELSE 0 END), 0) AS idle, \
       COALESCE(SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END), 0) AS running, \
       COALESCE(SUM(CASE WHEN state = 'preparing' THEN 1 ELSE 0 END), 0) AS preparing, \
       COALESCE(SUM(CASE WHEN state = 'unusable' THEN 1 ELSE 0 END), 0) AS unusable, \
       COALESCE(SUM(CASE WHEN state = 'leaving' THEN 1 ELSE 0 END), 0) AS leaving \
       FROM nodes WHERE cluster_key = $1) AS x \
     WHERE clusters.key = $1 AND (current_node_count <> x.total OR idle_node_count <> x.idle \
       OR running_node_count <> x.running OR preparing_node_count <> x.preparing \
       OR unusable_node_count <> x.unusable OR leaving_node_count <> x.leaving)";

macro_rules! fleet_store {
    ($store:ident, begin_write = $begin:literal, skip_locked = $skip_locked:literal) => {
        impl $store {
            async fn refresh_counts_in(
                conn: &mut <<Self as crate::sql::StoreDb>::Db as sqlx::Database>::Connection,
                cluster_key: &str,
            ) -> Result<()> {
                sqlx::query(REFRESH_COUNTS).bind(cluster_key).execute(&mut *conn).await?;
                Ok(())
            }

            async fn set_sizes_in(
                conn: &mut <<Self as crate::sql::StoreDb>::Db as sqlx::Database>::Connection,
                id: &str,
                sizes: &[String],
            ) -> Result<()> {
                sqlx::query("DELETE FROM node_sizes WHERE node_id = $1").bind(id).execute(&mut *conn).await?;
                let mut sizes: Vec<String> = sizes.iter().map(|s| s.to_lowercase()).collect();
                sizes.sort();
                sizes.dedup();
                for size in sizes {
                    sqlx::query("INSERT INTO node_sizes (node_id, vm_size) VALUES ($1, $2)")
                        .bind(id)
                        .bind(size)
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            }
        }

        #[async_trait]
        impl Fleet for $store {
            async fn create_join_token(&self, t: &JoinToken) -> Result<()> {
                sqlx::query(
                    "INSERT INTO join_tokens (id, name, token_hash, created_at, expires_at, revoked_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&t.id)
                .bind(&t.name)
                .bind(&t.token_hash)
                .bind(t.created_at)
                .bind(t.expires_at)
                .bind(t.revoked_at)
                .execute(self.writer())
                .await
                .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict } else { e.into() })?;
                Ok(())
            }

            async fn find_join_token(&self, token_hash: &str) -> Result<Option<JoinToken>> {
                let row = sqlx::query("SELECT * FROM join_tokens WHERE token_hash = $1")
                    .bind(token_hash)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(join_token_from).transpose()
            }

            async fn list_join_tokens(&self) -> Result<Vec<JoinToken>> {
                let rows = sqlx::query("SELECT * FROM join_tokens ORDER BY created_at, id").fetch_all(&self.pool).await?;
                rows.iter().map(join_token_from).collect()
            }

            async fn revoke_join_token(&self, id: &str, now: Millis) -> Result<bool> {
                let done = sqlx::query("UPDATE join_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                    .bind(id)
                    .bind(now)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn register_node(&self, n: &NewNode) -> Result<()> {
                let mut tx = self.writer().begin_with($begin).await?;
                sqlx::query(
                    "INSERT INTO nodes (id, credential_hash, hostname, address, ssh_port, gpus, facts, state, \
                     last_seen, joined_at, changed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'free', $8, $8, $8)",
                )
                .bind(&n.id)
                .bind(&n.credential_hash)
                .bind(&n.facts.hostname)
                .bind(&n.facts.address)
                .bind(n.facts.ssh_port)
                .bind(n.facts.gpus)
                .bind(n.facts.facts.to_string())
                .bind(n.now)
                .execute(&mut *tx)
                .await
                .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict } else { StoreError::from(e) })?;
                Self::set_sizes_in(&mut tx, &n.id, &n.facts.vm_sizes).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn node_by_credential(&self, credential_hash: &str) -> Result<Option<NodeRow>> {
                let row = sqlx::query(concat!(select_nodes!(), "WHERE credential_hash = $1"))
                    .bind(credential_hash).fetch_optional(&self.pool).await?;
                row.as_ref().map(node_from).transpose()
            }

            async fn get_node(&self, id: &str) -> Result<Option<NodeRow>> {
                let row = sqlx::query(concat!(select_nodes!(), "WHERE id = $1"))
                    .bind(id).fetch_optional(&self.pool).await?;
                row.as_ref().map(node_from).transpose()
            }

            async fn list_nodes(&self, cluster_key: Option<&str>) -> Result<Vec<NodeRow>> {
                let rows = match cluster_key {
                    Some(c) => {
                        sqlx::query(concat!(select_nodes!(), "WHERE cluster_key = $1 ORDER BY id"))
                            .bind(c)
                            .fetch_all(&self.pool)
                            .await?
                    }
                    None => sqlx::query(concat!(select_nodes!(), "ORDER BY id")).fetch_all(&self.pool).await?,
                };
                rows.iter().map(node_from).collect()
            }

            async fn cluster_nodes(&self, cluster_key: &str) -> Result<Vec<NodeRow>> {
                let rows = sqlx::query(
                    "SELECT id, hostname, address, ssh_port, gpus, 'null' AS facts, state, cluster_key, alloc_epoch, \
                     job_key, job_epoch, error, lost_at, last_seen, joined_at, changed_at FROM nodes \
                     WHERE cluster_key = $1 ORDER BY id",
                )
                .bind(cluster_key)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(node_from).collect()
            }

            async fn update_node_facts(&self, id: &str, f: &NodeFactsRow, now: Millis) -> Result<()> {
                let mut tx = self.writer().begin_with($begin).await?;
                sqlx::query(
                    "UPDATE nodes SET hostname = $2, address = $3, ssh_port = $4, gpus = $5, facts = $6, \
                     changed_at = $7 WHERE id = $1",
                )
                .bind(id)
                .bind(&f.hostname)
                .bind(&f.address)
                .bind(f.ssh_port)
                .bind(f.gpus)
                .bind(f.facts.to_string())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                Self::set_sizes_in(&mut tx, id, &f.vm_sizes).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn heartbeat(&self, credential_hash: &str, now: Millis) -> Result<Option<NodeRow>> {
                let row = sqlx::query(concat!(
                    "UPDATE nodes SET last_seen = $2 WHERE credential_hash = $1 AND lost_at IS NULL RETURNING ",
                    node_columns!()
                ))
                .bind(credential_hash)
                .bind(now)
                .fetch_optional(self.writer())
                .await?;
                if let Some(row) = row {
                    return node_from(&row).map(Some);
                }
                // Lost (or unknown): it comes back through preparation, in one transaction with
                // its cluster's counts.
                let mut tx = self.writer().begin_with($begin).await?;
                let back = sqlx::query(
                    "UPDATE nodes SET last_seen = $2, lost_at = NULL, changed_at = $2, error = NULL, \
                     state = CASE WHEN cluster_key IS NULL THEN 'free' ELSE 'preparing' END, \
                     alloc_epoch = alloc_epoch + 1 \
                     WHERE credential_hash = $1 AND lost_at IS NOT NULL RETURNING cluster_key",
                )
                .bind(credential_hash)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(Some(cluster)) = back.map(|r| r.try_get::<Option<String>, _>("cluster_key")).transpose()? {
                    Self::refresh_counts_in(&mut tx, &cluster).await?;
                }
                tx.commit().await?;
                self.node_by_credential(credential_hash).await
            }

            async fn report_setup(&self, id: &str, alloc_epoch: i64, error: Option<&str>, now: Millis) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE nodes SET state = CASE WHEN $3 IS NULL THEN 'idle' ELSE 'unusable' END, error = $3, \
                     changed_at = $4 WHERE id = $1 AND alloc_epoch = $2 AND state = 'preparing'",
                )
                .bind(id)
                .bind(alloc_epoch)
                .bind(error)
                .bind(now)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn report_task(
                &self,
                node_id: &str,
                job_key: &str,
                epoch: i64,
                phase: &str,
                exit_code: Option<i32>,
                error: Option<(&str, &str)>,
            ) -> Result<bool> {
                // Only the node holding the placement may report on it, and an exit is final.
                let done = sqlx::query(
                    "UPDATE job_nodes SET phase = $4, exit_code = $5, error_code = $6, error_message = $7 \
                     WHERE job_key = $2 AND epoch = $3 AND node_id = $1 AND phase <> 'exited' \
                     AND EXISTS (SELECT 1 FROM nodes n WHERE n.id = $1 AND n.job_key = $2 AND n.job_epoch = $3)",
                )
                .bind(node_id)
                .bind(job_key)
                .bind(epoch)
                .bind(phase)
                .bind(exit_code)
                .bind(error.map(|e| e.0))
                .bind(error.map(|e| e.1))
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn job_placement(&self, job_key: &str, epoch: i64) -> Result<Vec<PlacedNode>> {
                let rows = sqlx::query(
                    "SELECT p.rank, p.node_id, n.address, n.gpus, p.phase, p.exit_code, p.error_code, \
                     p.error_message FROM job_nodes p JOIN nodes n ON n.id = p.node_id \
                     WHERE p.job_key = $1 AND p.epoch = $2 ORDER BY p.rank",
                )
                .bind(job_key)
                .bind(epoch)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(PlacedNode {
                            rank: r.try_get("rank")?,
                            node_id: r.try_get("node_id")?,
                            address: r.try_get("address")?,
                            gpus: r.try_get("gpus")?,
                            phase: r.try_get("phase")?,
                            exit_code: r.try_get("exit_code")?,
                            error_code: r.try_get("error_code")?,
                            error_message: r.try_get("error_message")?,
                        })
                    })
                    .collect()
            }

            async fn job_state(&self, job_key: &str, epoch: i64) -> Result<Option<ExecutionState>> {
                let row = sqlx::query("SELECT execution_state FROM jobs WHERE key = $1 AND epoch = $2")
                    .bind(job_key)
                    .bind(epoch)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| parse_enum(&r.try_get::<String, _>("execution_state")?, ExecutionState::parse, "execution state"))
                    .transpose()
            }

            async fn nodes_changed_since(&self, since: Millis) -> Result<Vec<(String, Millis)>> {
                let rows = sqlx::query("SELECT id, changed_at FROM nodes WHERE changed_at > $1")
                    .bind(since)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("changed_at")?))).collect()
            }

            async fn touch_job_nodes(&self, job_key: &str, now: Millis) -> Result<()> {
                sqlx::query("UPDATE nodes SET changed_at = $2 WHERE job_key = $1")
                    .bind(job_key)
                    .bind(now)
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn scheduling_clusters(&self) -> Result<Vec<SchedCluster>> {
                // Per-cluster lookups rather than a join: every pass runs this, and Postgres
                // plans it once per connection (generic plans), when `resources` may still be
                // small enough that hashing all of it looks cheapest; it then stays so.
                let rows = sqlx::query(
                    "SELECT c.key, c.vm_size, c.allocation_state, c.errors, \
                     (SELECT r.arm_id FROM resources r WHERE r.key = c.key) AS arm_id, \
                     (SELECT r.spec FROM resources r WHERE r.key = c.key) AS spec, \
                     (SELECT r.provisioning_state FROM resources r WHERE r.key = c.key) AS provisioning_state \
                     FROM clusters c ORDER BY c.key",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let alloc: String = r.try_get("allocation_state")?;
                        let ps: String = r.try_get("provisioning_state")?;
                        Ok(SchedCluster {
                            key: r.try_get("key")?,
                            arm_id: r.try_get("arm_id")?,
                            vm_size: r.try_get("vm_size")?,
                            spec: json_col(r.try_get("spec")?, "cluster spec")?,
                            deleting: ps == "deleting",
                            allocation_state: parse_enum(&alloc, AllocationState::parse, "allocation state")?,
                            errors: json_col(r.try_get("errors")?, "cluster errors")?,
                        })
                    })
                    .collect()
            }

            async fn cluster_jobs(&self, cluster_key: &str, queued_limit: i64) -> Result<Vec<SchedJob>> {
                let queued = concat!(
                    select_sched_jobs!(),
                    "AND execution_state = 'queued' ORDER BY priority DESC, created_at, key LIMIT $2"
                );
                let active =
                    concat!(select_sched_jobs!(), "AND execution_state IN ('running', 'terminating') ORDER BY key");
                let mut rows = sqlx::query(queued).bind(cluster_key).bind(queued_limit).fetch_all(&self.pool).await?;
                rows.extend(sqlx::query(active).bind(cluster_key).fetch_all(&self.pool).await?);
                rows.iter().map(sched_job_from).collect()
            }

            async fn allocate_nodes(&self, cluster_key: &str, vm_size: &str, count: i64, now: Millis) -> Result<u64> {
                let mut tx = self.writer().begin_with($begin).await?;
                let ids = sqlx::query(concat!(
                    "SELECT n.id FROM nodes n WHERE n.cluster_key IS NULL AND n.state = 'free' AND n.lost_at IS NULL ",
                    "AND EXISTS (SELECT 1 FROM node_sizes s WHERE s.node_id = n.id AND s.vm_size IN ($1, '*')) ",
                    "ORDER BY n.id LIMIT $2",
                    $skip_locked
                ))
                .bind(vm_size.to_lowercase())
                .bind(count)
                .fetch_all(&mut *tx)
                .await?;
                let mut taken = 0;
                for row in &ids {
                    let id: String = row.try_get("id")?;
                    taken += sqlx::query(
                        "UPDATE nodes SET cluster_key = $2, state = 'preparing', alloc_epoch = alloc_epoch + 1, \
                         error = NULL, changed_at = $3 WHERE id = $1 AND state = 'free' AND cluster_key IS NULL",
                    )
                    .bind(&id)
                    .bind(cluster_key)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                if taken > 0 {
                    Self::refresh_counts_in(&mut tx, cluster_key).await?;
                }
                tx.commit().await?;
                Ok(taken)
            }

            async fn release_nodes(&self, cluster_key: &str, ids: &[String], now: Millis) -> Result<u64> {
                let mut ids = ids.to_vec();
                ids.sort();
                let mut tx = self.writer().begin_with($begin).await?;
                let mut released = 0;
                for id in &ids {
                    released += sqlx::query(
                        "UPDATE nodes SET state = CASE WHEN lost_at IS NULL THEN 'free' ELSE 'unusable' END, \
                         cluster_key = NULL, error = NULL, changed_at = $3 \
                         WHERE id = $1 AND cluster_key = $2 AND state IN ('idle', 'preparing', 'unusable')",
                    )
                    .bind(id)
                    .bind(cluster_key)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                Self::refresh_counts_in(&mut tx, cluster_key).await?;
                tx.commit().await?;
                Ok(released)
            }

            async fn mark_leaving(&self, cluster_key: &str, ids: &[String], now: Millis) -> Result<u64> {
                let mut ids = ids.to_vec();
                ids.sort();
                let mut tx = self.writer().begin_with($begin).await?;
                let mut marked = 0;
                for id in &ids {
                    marked += sqlx::query(
                        "UPDATE nodes SET state = 'leaving', changed_at = $3 \
                         WHERE id = $1 AND cluster_key = $2 AND state = 'running'",
                    )
                    .bind(id)
                    .bind(cluster_key)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                Self::refresh_counts_in(&mut tx, cluster_key).await?;
                tx.commit().await?;
                Ok(marked)
            }

            async fn place_jobs(
                &self,
                cluster_key: &str,
                placements: &[(String, Vec<String>)],
                now: Millis,
            ) -> Result<Vec<Option<i64>>> {
                if let Some(placed) = self.place_at_once(cluster_key, placements, now).await? {
                    return Ok(placed);
                }
                let mut tx = self.writer().begin_with($begin).await?;
                let mut out = Vec::with_capacity(placements.len());
                for (job_key, nodes) in placements {
                    // A savepoint per job: a job that lost a race is undone alone.
                    let mut sp = sqlx::Acquire::begin(&mut *tx).await?;
                    // Found by key alone and its cluster checked after: with the cluster in
                    // the condition, Postgres' generic plan walks the cluster's whole queue in
                    // `jobs_queue` to find the key.
                    let row = sqlx::query(
                        "UPDATE jobs SET execution_state = 'running', execution_changed_at = $2, start_time = $2, \
                         end_time = NULL, exit_code = NULL, errors = NULL, epoch = epoch + 1 \
                         WHERE key = $1 AND execution_state = 'queued' RETURNING epoch, cluster_key",
                    )
                    .bind(job_key)
                    .bind(now)
                    .fetch_optional(&mut *sp)
                    .await?;
                    let row = row.map(|r| Ok::<_, sqlx::Error>((r.try_get("epoch")?, r.try_get::<String, _>("cluster_key")?)));
                    let Some((epoch, cluster)) = row.transpose()? else {
                        out.push(None);
                        continue;
                    };
                    let epoch: i64 = epoch;
                    if cluster != cluster_key {
                        sp.rollback().await?;
                        out.push(None);
                        continue;
                    }
                    // Nodes in id order (the locking order); ranks as the caller gave them.
                    let mut order: Vec<(usize, &String)> = nodes.iter().enumerate().collect();
                    order.sort_by(|a, b| a.1.cmp(b.1));
                    let mut whole = true;
                    for (rank, id) in order {
                        let took = sqlx::query(
                            "UPDATE nodes SET state = 'running', job_key = $3, job_epoch = $4, changed_at = $5 \
                             WHERE id = $1 AND cluster_key = $2 AND state = 'idle'",
                        )
                        .bind(id)
                        .bind(cluster_key)
                        .bind(job_key)
                        .bind(epoch)
                        .bind(now)
                        .execute(&mut *sp)
                        .await?;
                        if took.rows_affected() != 1 {
                            whole = false;
                            break;
                        }
                        sqlx::query(
                            "INSERT INTO job_nodes (job_key, epoch, rank, node_id, phase) \
                             VALUES ($1, $2, $3, $4, 'assigned')",
                        )
                        .bind(job_key)
                        .bind(epoch)
                        .bind(rank as i32)
                        .bind(id)
                        .execute(&mut *sp)
                        .await?;
                    }
                    if whole {
                        sp.commit().await?;
                        out.push(Some(epoch));
                    } else {
                        // Dropping the savepoint rolls it back: no partial holds.
                        sp.rollback().await?;
                        out.push(None);
                    }
                }
                tx.commit().await?;
                Ok(out)
            }

            async fn finish_job(
                &self,
                job_key: &str,
                epoch: i64,
                from: ExecutionState,
                to: ExecutionState,
                o: &JobOutcome,
            ) -> Result<bool> {
                let errors = o.errors.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default());
                if let Some(done) = self.finish_at_once(job_key, epoch, from, to, o, errors.as_deref()).await? {
                    return Ok(done);
                }
                let mut tx = self.writer().begin_with($begin).await?;
                let done = bind_end_job!(sqlx::query(end_job!()), job_key, epoch, from, to, o, errors)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                sqlx::query(FREE_JOB_NODES).bind(job_key).bind(epoch).bind(o.now).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn requeue_job(&self, job_key: &str, epoch: i64, now: Millis) -> Result<bool> {
                let mut tx = self.writer().begin_with($begin).await?;
                let done = sqlx::query(
                    "UPDATE jobs SET execution_state = 'queued', execution_changed_at = $3, start_time = NULL, \
                     requeues = requeues + 1 WHERE key = $1 AND epoch = $2 AND execution_state = 'running'",
                )
                .bind(job_key)
                .bind(epoch)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                sqlx::query(FREE_JOB_NODES).bind(job_key).bind(epoch).bind(now).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn mark_lost(&self, deadline: Millis, now: Millis) -> Result<Vec<LostNode>> {
                // Every scheduling pass asks; almost always there is none, found without a
                // transaction or locks.
                let any = sqlx::query(
                    "SELECT 1 FROM nodes WHERE (last_seen < $1 OR left_at IS NOT NULL) AND lost_at IS NULL LIMIT 1",
                )
                .bind(deadline)
                .fetch_optional(&self.pool)
                .await?;
                if any.is_none() {
                    return Ok(Vec::new());
                }
                let mut tx = self.writer().begin_with($begin).await?;
                let rows = sqlx::query(concat!(
                    "SELECT id, cluster_key, job_key, job_epoch, left_at FROM nodes ",
                    "WHERE (last_seen < $1 OR left_at IS NOT NULL) AND lost_at IS NULL ORDER BY id",
                    $skip_locked
                ))
                .bind(deadline)
                .fetch_all(&mut *tx)
                .await?;
                let mut lost = Vec::new();
                for r in &rows {
                    let id: String = r.try_get("id")?;
                    sqlx::query(
                        "UPDATE nodes SET state = 'unusable', lost_at = $2, left_at = NULL, job_key = NULL, \
                         job_epoch = NULL, changed_at = $2 WHERE id = $1",
                    )
                    .bind(&id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    let job_key: Option<String> = r.try_get("job_key")?;
                    let job_epoch: Option<i64> = r.try_get("job_epoch")?;
                    let left_at: Option<i64> = r.try_get("left_at")?;
                    lost.push(LostNode {
                        id,
                        cluster_key: r.try_get("cluster_key")?,
                        job: job_key.zip(job_epoch),
                        left: left_at.is_some(),
                    });
                }
                let mut clusters: Vec<&String> = lost.iter().filter_map(|l| l.cluster_key.as_ref()).collect();
                clusters.sort();
                clusters.dedup();
                for c in clusters {
                    Self::refresh_counts_in(&mut tx, c).await?;
                }
                tx.commit().await?;
                Ok(lost)
            }

            async fn node_left(&self, id: &str, now: Millis) -> Result<bool> {
                let done = sqlx::query("UPDATE nodes SET left_at = $2 WHERE id = $1 AND lost_at IS NULL")
                    .bind(id)
                    .bind(now)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn release_orphans(&self, now: Millis) -> Result<u64> {
                // The job of each node is looked up by key (a scalar subquery): as an anti-join,
                // Postgres' generic plan, made while few jobs ran, walked every running job for
                // every busy node (100 ms a sweep with 1,000 nodes).
                let mut tx = self.writer().begin_with($begin).await?;
                let gone = sqlx::query(
                    "UPDATE nodes SET state = CASE WHEN lost_at IS NULL THEN 'free' ELSE 'unusable' END, \
                     cluster_key = NULL, job_key = NULL, job_epoch = NULL, error = NULL, changed_at = $1 \
                     WHERE cluster_key IS NOT NULL \
                     AND NOT EXISTS (SELECT 1 FROM clusters c WHERE c.key = nodes.cluster_key)",
                )
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                let ended = sqlx::query(
                    "UPDATE nodes SET state = CASE WHEN state = 'leaving' THEN 'free' ELSE 'idle' END, \
                     cluster_key = CASE WHEN state = 'leaving' THEN NULL ELSE cluster_key END, \
                     job_key = NULL, job_epoch = NULL, changed_at = $1 \
                     WHERE job_key IS NOT NULL AND NOT COALESCE((SELECT j.execution_state IN ('running', 'terminating') \
                       FROM jobs j WHERE j.key = nodes.job_key AND j.epoch = nodes.job_epoch), FALSE) \
                     RETURNING cluster_key",
                )
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                let mut clusters: Vec<String> =
                    ended.iter().filter_map(|r| r.try_get::<Option<String>, _>("cluster_key").ok().flatten()).collect();
                clusters.sort();
                clusters.dedup();
                for c in &clusters {
                    Self::refresh_counts_in(&mut tx, c).await?;
                }
                tx.commit().await?;
                Ok(gone + ended.len() as u64)
            }

            async fn refresh_cluster(
                &self,
                cluster_key: &str,
                allocation: Option<AllocationState>,
                errors: Option<&serde_json::Value>,
                now: Millis,
            ) -> Result<()> {
                if allocation.is_none() && errors.is_none() {
                    sqlx::query(REFRESH_COUNTS).bind(cluster_key).execute(self.writer()).await?;
                    return Ok(());
                }
                let mut tx = self.writer().begin_with($begin).await?;
                Self::refresh_counts_in(&mut tx, cluster_key).await?;
                if let Some(a) = allocation {
                    sqlx::query(
                        "UPDATE clusters SET allocation_state = $2, allocation_changed_at = $3 \
                         WHERE key = $1 AND allocation_state <> $2",
                    )
                    .bind(cluster_key)
                    .bind(a.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some(e) = errors {
                    let raw = if e.is_null() { None } else { Some(e.to_string()) };
                    sqlx::query("UPDATE clusters SET errors = $2 WHERE key = $1")
                        .bind(cluster_key)
                        .bind(raw)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }
    };
}

fleet_store!(PgStore, begin_write = "BEGIN", skip_locked = " FOR UPDATE SKIP LOCKED");
fleet_store!(SqliteStore, begin_write = "BEGIN IMMEDIATE", skip_locked = "");
