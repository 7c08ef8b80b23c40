//! Inserting resources, the hot path of job submission, with group commit.
//!
//! Every insert goes through a [`Batcher`]: requests that arrive while a batch is being written
//! wait and go into the next one, so under load many jobs share one statement (Postgres) or one
//! transaction (SQLite) and one commit, while a lone request is written at once. Each request
//! still gets its own outcome. A batch never holds one key twice: a duplicate goes into the
//! batch written right after and meets the first as a conflict, as it would have alone. When a
//! batch fails in the database, its requests are written again one by one, so only the bad one
//! fails.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use batchai_core::ids::Kind;
use sqlx::Row;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::sql::SqliteStore;
use crate::types::{Inserted, NewResource, Operation};
use crate::{Result, StoreError};

/// Most requests one batch takes.
const MAX_BATCH: usize = 256;

pub(crate) struct Pending {
    r: NewResource,
    op: Option<Operation>,
    done: oneshot::Sender<Result<Inserted>>,
}

/// Collects inserts and hands them to `workers` tasks in batches (more workers overlap more
/// statements; fewer make bigger batches: two measured best on Postgres, see docs/benchmarks.md).
#[derive(Clone)]
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Batcher {
    pub(crate) fn spawn<F, Fut>(workers: usize, write: F) -> Self
    where
        F: Fn(Vec<Pending>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel::<Pending>();
        let rx = Arc::new(Mutex::new(rx));
        let write = Arc::new(write);
        for _ in 0..workers {
            let (rx, write) = (rx.clone(), write.clone());
            tokio::spawn(async move {
                loop {
                    let mut drained = Vec::new();
                    {
                        let mut rx = rx.lock().await;
                        match rx.recv().await {
                            Some(p) => drained.push(p),
                            None => return,
                        }
                        while drained.len() < MAX_BATCH {
                            let Ok(p) = rx.try_recv() else { break };
                            drained.push(p);
                        }
                    }
                    for round in rounds(drained) {
                        write(round).await;
                    }
                }
            });
        }
        Self { tx }
    }

    pub(crate) async fn submit(&self, r: NewResource, op: Option<Operation>) -> Result<Inserted> {
        let (done, wait) = oneshot::channel();
        self.tx.send(Pending { r, op, done }).map_err(|_| StoreError::Corrupt("insert batcher stopped".into()))?;
        wait.await.map_err(|_| StoreError::Corrupt("insert batcher dropped a request".into()))?
    }
}

/// Splits requests into batches without a repeated key, in arrival order: the second request
/// for a key goes into the batch after the first's.
fn rounds(drained: Vec<Pending>) -> Vec<Vec<Pending>> {
    let mut rounds: Vec<(HashSet<String>, Vec<Pending>)> = Vec::new();
    for p in drained {
        let free = rounds.iter().rposition(|(keys, _)| keys.contains(&p.r.key)).map_or(0, |i| i + 1);
        if free == rounds.len() {
            rounds.push((HashSet::new(), Vec::new()));
        }
        rounds[free].0.insert(p.r.key.clone());
        rounds[free].1.push(p);
    }
    rounds.into_iter().map(|(_, batch)| batch).collect()
}

/// Why an insert wrote nothing, from the checks made with it.
fn refusal(r: &NewResource, parent_ok: bool, required_ok: bool) -> StoreError {
    if r.kind != Kind::ResourceGroup && !parent_ok {
        StoreError::ParentGone
    } else if r.requires.is_some() && !required_ok {
        StoreError::RequiredGone
    } else {
        StoreError::Conflict
    }
}

/// Sends every request of a failed batch the error (an unreachable database stays
/// recognisable as such, so clients get 503 rather than 500).
fn fail_all(batch: Vec<Pending>, e: &StoreError) {
    let msg = e.to_string();
    for p in batch {
        let err = if e.is_unavailable() {
            StoreError::Database(sqlx::Error::PoolTimedOut)
        } else {
            StoreError::Corrupt(format!("batch insert failed: {msg}"))
        };
        let _ = p.done.send(Err(err));
    }
}

/// One statement for the whole batch: the rows arrive as arrays, parents (and required
/// resources) are locked `FOR SHARE` and checked per row, and each row's resource, runtime row
/// and operation are written only if its checks pass.
pub(crate) async fn pg_insert_batch(pool: PgPool, batch: Vec<Pending>) {
    macro_rules! col {
        ($f:expr) => {
            batch.iter().map($f).collect::<Vec<_>>()
        };
    }
    let result = sqlx::query(
        "WITH input AS ( \
           SELECT * FROM UNNEST($1::int4[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], \
             $16::int8[], $17::text[], $18::text[], $19::int4[], $20::int4[], $21::text[], $22::int8[], $23::text[], \
             $24::text[], $25::text[], $26::text[], $27::text[], $28::text[], $29::text[], $30::text[], $31::text[], \
             $32::text[], $33::text[], $34::int8[], $35::int8[], $36::int8[]) \
           AS t(ord, key, kind, subscription_id, rg_key, ws_key, exp_key, parent_key, arm_id, name, uid, location, \
             tags, spec, provisioning_state, now, requires, j_cluster, j_priority, j_nodes, j_tool, j_wall, \
             c_vm_size, c_alloc, o_id, o_sub, o_loc, o_kind, o_rkind, o_rkey, o_rid, o_dollar, o_status, \
             o_started, o_ended, o_run_after)), \
         parents AS (SELECT key, provisioning_state, location FROM resources WHERE key = ANY($8::text[]) FOR SHARE), \
         required AS (SELECT key, provisioning_state FROM resources WHERE key = ANY($17::text[]) FOR SHARE), \
         checked AS (SELECT i.*, \
           (i.kind = 'resourceGroup' OR EXISTS (SELECT 1 FROM parents p \
              WHERE p.key = i.parent_key AND p.provisioning_state <> 'deleting')) AS parent_ok, \
           (i.requires IS NULL OR EXISTS (SELECT 1 FROM required q \
              WHERE q.key = i.requires AND q.provisioning_state <> 'deleting')) AS required_ok, \
           (SELECT p.location FROM parents p WHERE p.key = i.parent_key) AS parent_location \
           FROM input i), \
         ins AS (INSERT INTO resources (key, kind, subscription_id, rg_key, ws_key, exp_key, parent_key, arm_id, \
             name, uid, location, tags, spec, provisioning_state, provisioning_changed_at, created_at) \
           SELECT key, kind, subscription_id, rg_key, ws_key, exp_key, parent_key, arm_id, name, uid, location, \
             tags, spec, provisioning_state, now, now FROM checked WHERE parent_ok AND required_ok \
           ON CONFLICT (key) DO NOTHING RETURNING key), \
         job AS (INSERT INTO jobs (key, cluster_key, priority, node_count, tool_type, max_wall_clock_secs, \
             execution_state, execution_changed_at, created_at) \
           SELECT c.key, c.j_cluster, c.j_priority, c.j_nodes, c.j_tool, c.j_wall, 'queued', c.now, c.now \
           FROM checked c JOIN ins ON ins.key = c.key WHERE c.j_cluster IS NOT NULL), \
         cl AS (INSERT INTO clusters (key, vm_size, allocation_state, allocation_changed_at) \
           SELECT c.key, c.c_vm_size, c.c_alloc, c.now FROM checked c JOIN ins ON ins.key = c.key \
           WHERE c.c_vm_size IS NOT NULL), \
         op AS (INSERT INTO operations (id, subscription_id, location, kind, resource_kind, resource_key, \
             resource_id, dollar_id, status, started_at, ended_at, run_after, attempts) \
           SELECT c.o_id, c.o_sub, COALESCE(c.parent_location, c.o_loc), c.o_kind, c.o_rkind, c.o_rkey, c.o_rid, \
             c.o_dollar, c.o_status, c.o_started, c.o_ended, c.o_run_after, 0 \
           FROM checked c JOIN ins ON ins.key = c.key WHERE c.o_id IS NOT NULL) \
         SELECT c.ord, c.parent_ok, c.required_ok, c.parent_location, \
           EXISTS (SELECT 1 FROM ins WHERE ins.key = c.key) AS inserted \
         FROM checked c",
    )
    .bind((0..batch.len() as i32).collect::<Vec<i32>>())
    .bind(col!(|p| p.r.key.clone()))
    .bind(col!(|p| p.r.kind.as_str().to_owned()))
    .bind(col!(|p| p.r.subscription_id.clone()))
    .bind(col!(|p| p.r.rg_key.clone()))
    .bind(col!(|p| p.r.ws_key.clone()))
    .bind(col!(|p| p.r.exp_key.clone()))
    .bind(col!(|p| p.r.parent_key.clone()))
    .bind(col!(|p| p.r.arm_id.clone()))
    .bind(col!(|p| p.r.name.clone()))
    .bind(col!(|p| p.r.uid.clone()))
    .bind(col!(|p| p.r.location.clone()))
    .bind(col!(|p| p.r.tags.as_ref().map(|v| v.to_string())))
    .bind(col!(|p| p.r.spec.as_ref().map(|v| v.to_string())))
    .bind(col!(|p| p.r.provisioning_state.as_str().to_owned()))
    .bind(col!(|p| p.r.now))
    .bind(col!(|p| p.r.requires.clone()))
    .bind(col!(|p| p.r.job.as_ref().map(|j| j.cluster_key.clone())))
    .bind(col!(|p| p.r.job.as_ref().map(|j| j.priority)))
    .bind(col!(|p| p.r.job.as_ref().map(|j| j.node_count)))
    .bind(col!(|p| p.r.job.as_ref().map(|j| j.tool_type.clone())))
    .bind(col!(|p| p.r.job.as_ref().map(|j| j.max_wall_clock_secs)))
    .bind(col!(|p| p.r.cluster.as_ref().map(|c| c.vm_size.clone())))
    .bind(col!(|p| p.r.cluster.as_ref().map(|c| c.allocation_state.as_str().to_owned())))
    .bind(col!(|p| p.op.as_ref().map(|o| o.id.clone())))
    .bind(col!(|p| p.op.as_ref().map(|o| o.subscription_id.clone())))
    .bind(col!(|p| p.op.as_ref().map(|o| o.location.clone())))
    .bind(col!(|p| p.op.as_ref().map(|o| o.kind.as_str().to_owned())))
    .bind(col!(|p| p.op.as_ref().map(|o| o.resource_kind.as_str().to_owned())))
    .bind(col!(|p| p.op.as_ref().map(|o| o.resource_key.clone())))
    .bind(col!(|p| p.op.as_ref().map(|o| o.resource_id.clone())))
    .bind(col!(|p| p.op.as_ref().map(|o| o.dollar_id.clone())))
    .bind(col!(|p| p.op.as_ref().map(|o| o.status.as_str().to_owned())))
    .bind(col!(|p| p.op.as_ref().map(|o| o.started_at)))
    .bind(col!(|p| p.op.as_ref().and_then(|o| o.ended_at)))
    .bind(col!(|p| p.op.as_ref().map(|o| o.run_after)))
    .fetch_all(&pool)
    .await;
    let rows = match result {
        Ok(rows) => rows,
        Err(e) if batch.len() == 1 => return fail_all(batch, &StoreError::Database(e)),
        // One bad request must not fail its batch-mates: write each on its own.
        Err(_) => {
            for p in batch {
                Box::pin(pg_insert_batch(pool.clone(), vec![p])).await;
            }
            return;
        }
    };
    let mut outcomes: Vec<Option<Result<Inserted>>> = (0..batch.len()).map(|_| None).collect();
    for row in &rows {
        let decoded = (|| -> std::result::Result<_, sqlx::Error> {
            Ok((
                row.try_get::<i32, _>("ord")? as usize,
                row.try_get::<bool, _>("parent_ok")?,
                row.try_get::<bool, _>("required_ok")?,
                row.try_get::<Option<String>, _>("parent_location")?,
                row.try_get::<bool, _>("inserted")?,
            ))
        })();
        let Ok((ord, parent_ok, required_ok, parent_location, inserted)) = decoded else { continue };
        if let Some(p) = batch.get(ord) {
            outcomes[ord] = Some(if inserted {
                Ok(Inserted { parent_location })
            } else {
                Err(refusal(&p.r, parent_ok, required_ok))
            });
        }
    }
    for (p, outcome) in batch.into_iter().zip(outcomes) {
        let _ = p.done.send(outcome.unwrap_or_else(|| Err(StoreError::Corrupt("batch row missing".into()))));
    }
}

/// One write transaction for the whole batch (SQLite serialises writers anyway); each
/// request's checks and inserts run inside it.
pub(crate) async fn sqlite_insert_batch(writer: SqlitePool, batch: Vec<Pending>) {
    let mut tx = match writer.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(e) => return fail_all(batch, &StoreError::Database(e)),
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for p in &batch {
        match sqlite_insert_one(&mut tx, &p.r, p.op.as_ref()).await {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) if batch.len() == 1 => {
                drop(tx);
                return fail_all(batch, &e);
            }
            // One bad request must not fail its batch-mates: roll back, write each on its own.
            Err(_) => {
                drop(tx);
                for p in batch {
                    Box::pin(sqlite_insert_batch(writer.clone(), vec![p])).await;
                }
                return;
            }
        }
    }
    if let Err(e) = tx.commit().await {
        return fail_all(batch, &StoreError::Database(e));
    }
    for (p, outcome) in batch.into_iter().zip(outcomes) {
        let _ = p.done.send(outcome);
    }
}

/// Checks and writes one resource; the outer `Result` is a database failure (the batch is
/// rolled back), the inner one this request's outcome.
async fn sqlite_insert_one(
    tx: &mut sqlx::SqliteConnection,
    r: &NewResource,
    op: Option<&Operation>,
) -> Result<Result<Inserted>> {
    let checks = sqlx::query(
        "SELECT (SELECT count(*) FROM resources WHERE key = $1 AND provisioning_state <> 'deleting') AS parent_ok, \
         (SELECT count(*) FROM resources WHERE key = $2 AND provisioning_state <> 'deleting') AS required_ok, \
         (SELECT location FROM resources WHERE key = $1) AS parent_location",
    )
    .bind(&r.parent_key)
    .bind(&r.requires)
    .fetch_one(&mut *tx)
    .await?;
    let parent_ok = checks.try_get::<i64, _>("parent_ok")? > 0;
    let required_ok = checks.try_get::<i64, _>("required_ok")? > 0;
    let parent_location: Option<String> = checks.try_get("parent_location")?;
    if (r.kind != Kind::ResourceGroup && !parent_ok) || (r.requires.is_some() && !required_ok) {
        return Ok(Err(refusal(r, parent_ok, required_ok)));
    }
    let inserted = sqlx::query(
        "INSERT INTO resources (key, kind, subscription_id, rg_key, ws_key, exp_key, parent_key, arm_id, \
         name, uid, location, tags, spec, provisioning_state, provisioning_changed_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15) \
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(&r.key)
    .bind(r.kind.as_str())
    .bind(&r.subscription_id)
    .bind(&r.rg_key)
    .bind(&r.ws_key)
    .bind(&r.exp_key)
    .bind(&r.parent_key)
    .bind(&r.arm_id)
    .bind(&r.name)
    .bind(&r.uid)
    .bind(&r.location)
    .bind(r.tags.as_ref().map(|v| v.to_string()))
    .bind(r.spec.as_ref().map(|v| v.to_string()))
    .bind(r.provisioning_state.as_str())
    .bind(r.now)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(Err(StoreError::Conflict));
    }
    if let Some(j) = &r.job {
        sqlx::query(
            "INSERT INTO jobs (key, cluster_key, priority, node_count, tool_type, max_wall_clock_secs, \
             execution_state, execution_changed_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $7)",
        )
        .bind(&r.key)
        .bind(&j.cluster_key)
        .bind(j.priority)
        .bind(j.node_count)
        .bind(&j.tool_type)
        .bind(j.max_wall_clock_secs)
        .bind(r.now)
        .execute(&mut *tx)
        .await?;
    }
    if let Some(c) = &r.cluster {
        sqlx::query(
            "INSERT INTO clusters (key, vm_size, allocation_state, allocation_changed_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&r.key)
        .bind(&c.vm_size)
        .bind(c.allocation_state.as_str())
        .bind(r.now)
        .execute(&mut *tx)
        .await?;
    }
    if let Some(op) = op {
        let mut op = op.clone();
        if let Some(l) = &parent_location {
            op.location.clone_from(l);
        }
        SqliteStore::insert_operation_in(tx, &op).await?;
    }
    Ok(Ok(Inserted { parent_location }))
}
