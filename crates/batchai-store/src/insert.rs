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

use batchai_core::ids::Kind;
use sqlx::Row;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use crate::types::{Inserted, NewResource, Operation};
use crate::{Result, StoreError};

/// Most requests one batch takes.
const MAX_BATCH: usize = 256;

pub(crate) struct Pending {
    r: NewResource,
    op: Option<Operation>,
    done: oneshot::Sender<Result<Inserted>>,
}

/// Collects inserts and hands them to one writer task in batches: whatever queued while the
/// previous batch was written.
#[derive(Clone)]
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Batcher {
    pub(crate) fn spawn<F, Fut>(write: F) -> Self
    where
        F: Fn(Vec<Pending>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut drained = vec![first];
                while drained.len() < MAX_BATCH {
                    let Ok(p) = rx.try_recv() else { break };
                    drained.push(p);
                }
                for round in rounds(drained) {
                    write(round).await;
                }
            }
        });
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

/// One write transaction for the whole batch (SQLite serialises writers anyway), written by a
/// fixed number of set-based statements over the batch as a JSON array (`json_each`): every
/// statement is a trip to the connection's thread and back, which cost more than the SQL when
/// each job took four. As on Postgres, every request is checked against the database as it was
/// before the batch.
pub(crate) async fn sqlite_insert_batch(writer: SqlitePool, batch: Vec<Pending>) {
    let written = async {
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        let outcomes = sqlite_write(&mut tx, &batch).await?;
        tx.commit().await?;
        Ok::<_, StoreError>(outcomes)
    }
    .await;
    match written {
        Ok(outcomes) => {
            for (p, outcome) in batch.into_iter().zip(outcomes) {
                let _ = p.done.send(outcome);
            }
        }
        Err(e) if batch.len() == 1 => fail_all(batch, &e),
        // One bad request must not fail its batch-mates: write each on its own.
        Err(_) => {
            for p in batch {
                Box::pin(sqlite_insert_batch(writer.clone(), vec![p])).await;
            }
        }
    }
}

/// Checks and writes a batch; the outer `Result` is a database failure (the transaction is
/// rolled back), the inner ones each request's outcome, in order.
async fn sqlite_write(tx: &mut sqlx::SqliteConnection, batch: &[Pending]) -> Result<Vec<Result<Inserted>>> {
    let checks = serde_json::Value::from_iter(
        batch.iter().map(|p| serde_json::json!({ "parent": p.r.parent_key, "requires": p.r.requires })),
    );
    let rows = sqlx::query(
        "SELECT (SELECT count(*) FROM resources WHERE key = json_extract(j.value, '$.parent') \
           AND provisioning_state <> 'deleting') AS parent_ok, \
         (SELECT count(*) FROM resources WHERE key = json_extract(j.value, '$.requires') \
           AND provisioning_state <> 'deleting') AS required_ok, \
         (SELECT location FROM resources WHERE key = json_extract(j.value, '$.parent')) AS parent_location \
         FROM json_each($1) j ORDER BY j.key",
    )
    .bind(checks.to_string())
    .fetch_all(&mut *tx)
    .await?;
    if rows.len() != batch.len() {
        return Err(StoreError::Corrupt("batch checks missing".into()));
    }
    // Per request: refused, or the parent's location to take.
    let mut checked = Vec::with_capacity(batch.len());
    for (p, row) in batch.iter().zip(&rows) {
        let parent_ok = row.try_get::<i64, _>("parent_ok")? > 0;
        let required_ok = row.try_get::<i64, _>("required_ok")? > 0;
        let parent_location: Option<String> = row.try_get("parent_location")?;
        let r = &p.r;
        checked.push(if (r.kind != Kind::ResourceGroup && !parent_ok) || (r.requires.is_some() && !required_ok) {
            Err(refusal(r, parent_ok, required_ok))
        } else {
            Ok(parent_location)
        });
    }

    let resources =
        serde_json::Value::from_iter(batch.iter().zip(&checked).filter(|(_, c)| c.is_ok()).map(|(p, _)| {
            let r = &p.r;
            serde_json::json!([
                r.key,
                r.kind.as_str(),
                r.subscription_id,
                r.rg_key,
                r.ws_key,
                r.exp_key,
                r.parent_key,
                r.arm_id,
                r.name,
                r.uid,
                r.location,
                r.tags.as_ref().map(|v| v.to_string()),
                r.spec.as_ref().map(|v| v.to_string()),
                r.provisioning_state.as_str(),
                r.now,
            ])
        }));
    let inserted: HashSet<String> = sqlx::query_scalar(
        "INSERT INTO resources (key, kind, subscription_id, rg_key, ws_key, exp_key, parent_key, arm_id, \
           name, uid, location, tags, spec, provisioning_state, provisioning_changed_at, created_at) \
         SELECT v->>0, v->>1, v->>2, v->>3, v->>4, v->>5, v->>6, v->>7, v->>8, v->>9, v->>10, v->>11, v->>12, \
           v->>13, v->>14, v->>14 \
         FROM (SELECT value AS v FROM json_each($1)) WHERE true \
         ON CONFLICT (key) DO NOTHING RETURNING key",
    )
    .bind(resources.to_string())
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();

    let mut outcomes = Vec::with_capacity(batch.len());
    let (mut jobs, mut clusters, mut ops) = (Vec::new(), Vec::new(), Vec::new());
    for (p, check) in batch.iter().zip(checked) {
        let r = &p.r;
        let parent_location = match check {
            Err(e) => {
                outcomes.push(Err(e));
                continue;
            }
            Ok(_) if !inserted.contains(&r.key) => {
                outcomes.push(Err(StoreError::Conflict));
                continue;
            }
            Ok(l) => l,
        };
        if let Some(j) = &r.job {
            jobs.push(serde_json::json!([
                r.key,
                j.cluster_key,
                j.priority,
                j.node_count,
                j.tool_type,
                j.max_wall_clock_secs,
                r.now,
            ]));
        }
        if let Some(c) = &r.cluster {
            clusters.push(serde_json::json!([r.key, c.vm_size, c.allocation_state.as_str(), r.now]));
        }
        if let Some(o) = &p.op {
            ops.push(serde_json::json!([
                o.id,
                o.subscription_id,
                parent_location.as_ref().unwrap_or(&o.location),
                o.kind.as_str(),
                o.resource_kind.as_str(),
                o.resource_key,
                o.resource_id,
                o.dollar_id,
                o.status.as_str(),
                o.error_code,
                o.error_message,
                o.started_at,
                o.ended_at,
                o.run_after,
                o.attempts,
            ]));
        }
        outcomes.push(Ok(Inserted { parent_location }));
    }
    let sets = [
        (
            jobs,
            "INSERT INTO jobs (key, cluster_key, priority, node_count, tool_type, max_wall_clock_secs, \
               execution_state, execution_changed_at, created_at) \
             SELECT v->>0, v->>1, v->>2, v->>3, v->>4, v->>5, 'queued', v->>6, v->>6 \
             FROM (SELECT value AS v FROM json_each($1))",
        ),
        (
            clusters,
            "INSERT INTO clusters (key, vm_size, allocation_state, allocation_changed_at) \
             SELECT v->>0, v->>1, v->>2, v->>3 FROM (SELECT value AS v FROM json_each($1))",
        ),
        (
            ops,
            "INSERT INTO operations (id, subscription_id, location, kind, resource_kind, resource_key, \
               resource_id, dollar_id, status, error_code, error_message, started_at, ended_at, run_after, attempts) \
             SELECT v->>0, v->>1, v->>2, v->>3, v->>4, v->>5, v->>6, v->>7, v->>8, v->>9, v->>10, v->>11, \
               v->>12, v->>13, v->>14 FROM (SELECT value AS v FROM json_each($1))",
        ),
    ];
    for (rows, sql) in sets {
        if !rows.is_empty() {
            sqlx::query(sql).bind(serde_json::Value::Array(rows).to_string()).execute(&mut *tx).await?;
        }
    }
    Ok(outcomes)
}
