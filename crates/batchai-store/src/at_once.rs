//! The hot paths of [`crate::Fleet`] as single set-based statements on Postgres, where every
//! statement is a round trip (and a wake-up on both sides): a scheduling pass's placements in
//! one, a job's end in one. SQLite runs statements in process and keeps the per-statement
//! versions in `fleet.rs`; its methods here only say so.

use batchai_core::state::ExecutionState;
use batchai_core::time::Millis;
use sqlx::Row;

use crate::fleet::{bind_end_job, end_job};
use crate::types::JobOutcome;
use crate::{PgStore, Result, SqliteStore};

impl PgStore {
    /// [`crate::Fleet::place_jobs`] in one statement, when every placement succeeds (the usual case:
    /// the scheduler planned from what it just read). `None` when any job or node was taken
    /// meanwhile, or the statement failed (say, a deadlock with another server placing in
    /// another order): nothing is kept, and the caller places job by job.
    pub(crate) async fn place_at_once(
        &self,
        cluster_key: &str,
        placements: &[(String, Vec<String>)],
        now: Millis,
    ) -> Result<Option<Vec<Option<i64>>>> {
        let jobs: Vec<String> = placements.iter().map(|(j, _)| j.clone()).collect();
        let (mut job_col, mut node_col, mut rank_col) = (Vec::new(), Vec::new(), Vec::new());
        for (job, nodes) in placements {
            for (rank, node) in nodes.iter().enumerate() {
                job_col.push(job.clone());
                node_col.push(node.clone());
                rank_col.push(rank as i32);
            }
        }
        let mut tx = self.writer().begin().await?;
        // Jobs by key (`= ANY`), their cluster compared after: see the per-job statement.
        let rows = sqlx::query(
            "WITH want AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::int4[]) AS w(job_key, node_id, rank)), \
             j AS (UPDATE jobs SET execution_state = 'running', execution_changed_at = $5, start_time = $5, \
               end_time = NULL, exit_code = NULL, errors = NULL, epoch = epoch + 1 \
               WHERE key = ANY($6::text[]) AND execution_state = 'queued' RETURNING key, epoch, cluster_key), \
             n AS (UPDATE nodes SET state = 'running', job_key = w.job_key, job_epoch = j.epoch, changed_at = $5 \
               FROM want w JOIN j ON j.key = w.job_key \
               WHERE nodes.id = w.node_id AND nodes.cluster_key = $4 AND nodes.state = 'idle' RETURNING nodes.id), \
             p AS (INSERT INTO job_nodes (job_key, epoch, rank, node_id, phase) \
               SELECT w.job_key, j.epoch, w.rank, w.node_id, 'assigned' FROM want w JOIN j ON j.key = w.job_key \
               RETURNING 1) \
             SELECT j.key, j.epoch, j.cluster_key, (SELECT count(*) FROM n) AS nodes, (SELECT count(*) FROM p) AS rows \
             FROM j",
        )
        .bind(&job_col)
        .bind(&node_col)
        .bind(&rank_col)
        .bind(cluster_key)
        .bind(now)
        .bind(&jobs)
        .fetch_all(&mut *tx)
        .await;
        let Ok(rows) = rows else { return Ok(None) };
        let mut epochs = std::collections::HashMap::new();
        for r in &rows {
            let (key, epoch, cluster): (String, i64, String) =
                (r.try_get("key")?, r.try_get("epoch")?, r.try_get("cluster_key")?);
            let (nodes, inserted): (i64, i64) = (r.try_get("nodes")?, r.try_get("rows")?);
            if cluster != cluster_key || nodes != node_col.len() as i64 || inserted != node_col.len() as i64 {
                return Ok(None);
            }
            epochs.insert(key, epoch);
        }
        if epochs.len() != jobs.len() {
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(jobs.iter().map(|j| epochs.get(j).copied()).collect()))
    }

    /// [`crate::Fleet::finish_job`] as one statement (one round trip instead of four): the job row is
    /// locked first, then its nodes (the locking order), as the per-statement version does.
    pub(crate) async fn finish_at_once(
        &self,
        job_key: &str,
        epoch: i64,
        from: ExecutionState,
        to: ExecutionState,
        o: &JobOutcome,
        errors: Option<&str>,
    ) -> Result<Option<bool>> {
        let query = sqlx::query(concat!(
            "WITH j AS (",
            end_job!(),
            " RETURNING key), \
             n AS (UPDATE nodes SET state = CASE WHEN state = 'leaving' THEN 'free' ELSE 'idle' END, \
               cluster_key = CASE WHEN state = 'leaving' THEN NULL ELSE cluster_key END, \
               job_key = NULL, job_epoch = NULL, changed_at = $5 \
               WHERE job_key = $1 AND job_epoch = $2 AND state IN ('running', 'leaving') AND EXISTS (SELECT 1 FROM j) \
               RETURNING 1) \
             SELECT (SELECT count(*) FROM j) AS jobs"
        ));
        let row = bind_end_job!(query, job_key, epoch, from, to, o, errors).fetch_one(self.writer()).await?;
        Ok(Some(row.try_get::<i64, _>("jobs")? == 1))
    }
}

impl SqliteStore {
    /// Postgres only: SQLite finishes in a transaction of two statements.
    pub(crate) async fn finish_at_once(
        &self,
        _job_key: &str,
        _epoch: i64,
        _from: ExecutionState,
        _to: ExecutionState,
        _o: &JobOutcome,
        _errors: Option<&str>,
    ) -> Result<Option<bool>> {
        Ok(None)
    }

    /// Postgres only: on SQLite a statement costs no round trip, and the per-job path is as fast.
    pub(crate) async fn place_at_once(
        &self,
        _cluster_key: &str,
        _placements: &[(String, Vec<String>)],
        _now: Millis,
    ) -> Result<Option<Vec<Option<i64>>>> {
        Ok(None)
    }
}
