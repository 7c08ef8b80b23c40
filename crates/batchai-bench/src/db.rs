//! Reads job times straight from the server's database (its own clock, epoch milliseconds),
//! so the figures do not depend on how often the benchmark polls.

use anyhow::Context;
use sqlx::Row;

/// One job's times as the server recorded them.
#[derive(Debug, Clone)]
pub struct JobTimes {
    pub created: i64,
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub state: String,
}

pub enum Db {
    Pg(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

const TIMES: &str = "SELECT created_at, start_time, end_time, execution_state FROM jobs WHERE key LIKE $1";
const FINISHED: &str =
    "SELECT count(*) AS n FROM jobs WHERE key LIKE $1 AND execution_state IN ('succeeded', 'failed')";

impl Db {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("postgres") {
            let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(url).await?;
            Ok(Self::Pg(pool))
        } else {
            use std::str::FromStr;
            let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)?.read_only(true);
            let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(opts).await?;
            Ok(Self::Sqlite(pool))
        }
    }

    /// `LIKE` pattern of the jobs named `prefix…` (job keys are case-folded ARM ids).
    fn pattern(prefix: &str) -> String {
        format!("%/jobs/{}%", prefix.to_lowercase())
    }

    /// Jobs named `prefix…` that have ended.
    pub async fn finished(&self, prefix: &str) -> anyhow::Result<i64> {
        let p = Self::pattern(prefix);
        let n = match self {
            Self::Pg(pool) => sqlx::query(FINISHED).bind(p).fetch_one(pool).await?.try_get("n")?,
            Self::Sqlite(pool) => sqlx::query(FINISHED).bind(p).fetch_one(pool).await?.try_get("n")?,
        };
        Ok(n)
    }

    /// The times of every job named `prefix…`.
    pub async fn times(&self, prefix: &str) -> anyhow::Result<Vec<JobTimes>> {
        let p = Self::pattern(prefix);
        macro_rules! collect {
            ($rows:expr) => {
                $rows
                    .iter()
                    .map(|r| {
                        Ok(JobTimes {
                            created: r.try_get("created_at")?,
                            start: r.try_get("start_time")?,
                            end: r.try_get("end_time")?,
                            state: r.try_get("execution_state")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .context("reading job times")
            };
        }
        match self {
            Self::Pg(pool) => collect!(sqlx::query(TIMES).bind(p).fetch_all(pool).await?),
            Self::Sqlite(pool) => collect!(sqlx::query(TIMES).bind(p).fetch_all(pool).await?),
        }
    }
}

/// What the server's clock says about a set of jobs.
pub struct Timeline {
    pub jobs: usize,
    pub succeeded: usize,
    /// First creation to last start, and to last end (ms).
    pub span_start_ms: i64,
    pub span_end_ms: i64,
    /// Start − creation per started job (ms), sorted.
    pub wait_ms: Vec<i64>,
    /// End − creation per ended job (ms), sorted.
    pub total_ms: Vec<i64>,
    /// Starts per second between 10 % and 90 % of all starts (steady state, no ramp or tail).
    pub steady_starts_per_s: f64,
}

impl Timeline {
    pub fn of(jobs: &[JobTimes]) -> Self {
        let first = jobs.iter().map(|j| j.created).min().unwrap_or(0);
        let mut starts: Vec<i64> = jobs.iter().filter_map(|j| j.start).collect();
        starts.sort();
        let mut wait_ms: Vec<i64> = jobs.iter().filter_map(|j| Some(j.start? - j.created)).collect();
        wait_ms.sort();
        let mut total_ms: Vec<i64> = jobs.iter().filter_map(|j| Some(j.end? - j.created)).collect();
        total_ms.sort();
        let steady = if starts.len() >= 10 {
            let (a, b) = (starts.len() / 10, starts.len() * 9 / 10);
            (b - a) as f64 / ((starts[b] - starts[a]).max(1) as f64 / 1000.0)
        } else {
            0.0
        };
        Self {
            jobs: jobs.len(),
            succeeded: jobs.iter().filter(|j| j.state == "succeeded").count(),
            span_start_ms: starts.last().map(|s| s - first).unwrap_or(0),
            span_end_ms: jobs.iter().filter_map(|j| j.end).max().map(|e| e - first).unwrap_or(0),
            wait_ms,
            total_ms,
            steady_starts_per_s: steady,
        }
    }
}

impl Db {
    /// Postgres' per-table counters for this database (scans, rows read, updates), as
    /// markdown rows: where the database work of a run went. Empty on SQLite.
    pub async fn table_stats(&self) -> anyhow::Result<Vec<String>> {
        let Self::Pg(pool) = self else { return Ok(Vec::new()) };
        let rows = sqlx::query(
            "SELECT relname::text AS t, seq_scan, seq_tup_read, COALESCE(idx_scan, 0) AS idx_scan, \
             COALESCE(idx_tup_fetch, 0) AS idx_tup_fetch, n_tup_ins, n_tup_upd, n_tup_hot_upd \
             FROM pg_stat_user_tables ORDER BY seq_tup_read + COALESCE(idx_tup_fetch, 0) DESC",
        )
        .fetch_all(pool)
        .await?;
        let mut out = vec![
            "| table | seq scans | rows read by seq scans | index scans | rows fetched by index | inserted | updated (HOT) |"
                .to_owned(),
            "|---|---|---|---|---|---|---|".to_owned(),
        ];
        for r in rows {
            let n = |c: &str| r.try_get::<i64, _>(c).unwrap_or(0);
            out.push(format!(
                "| {} | {} | {} | {} | {} | {} | {} ({}) |",
                r.try_get::<String, _>("t")?,
                n("seq_scan"),
                n("seq_tup_read"),
                n("idx_scan"),
                n("idx_tup_fetch"),
                n("n_tup_ins"),
                n("n_tup_upd"),
                n("n_tup_hot_upd")
            ));
        }
        Ok(out)
    }
}
