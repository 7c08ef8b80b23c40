//! Planner statistics kept current while a database fills up (Postgres).
//!
//! Statements are planned once per connection with generic plans, from the statistics of that
//! moment, and re-planned only when a table is analyzed again. Autovacuum analyzes at most once
//! a minute, after a table has grown by a tenth; on a fresh installation taking a burst of
//! jobs, a table analyzed at fifty rows is planned as tiny (sequential scans, even for lookups
//! by key) while it grows by tens of thousands: measured, 48 million rows read by sequential
//! scans of `resources` while 100,000 jobs were submitted. So the store analyzes the tables
//! that grow with jobs itself, each time the rows it inserted doubled.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::postgres::PgPool;

/// Rows inserted before the first analysis; it doubles after each.
const FIRST: u64 = 256;

pub(crate) struct Analyzer {
    inserted: AtomicU64,
    next: AtomicU64,
}

impl Default for Analyzer {
    fn default() -> Self {
        Self { inserted: AtomicU64::new(0), next: AtomicU64::new(FIRST) }
    }
}

impl Analyzer {
    /// Counts `rows` inserted; past the next mark, analyzes the tables in the background.
    pub(crate) fn inserted(&self, rows: u64, pool: &PgPool) {
        let total = self.inserted.fetch_add(rows, Ordering::Relaxed) + rows;
        let next = self.next.load(Ordering::Relaxed);
        if total < next
            || self.next.compare_exchange(next, next.saturating_mul(2), Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            // A role that does not own a table gets a warning from Postgres, not an error.
            if let Err(e) = sqlx::query("ANALYZE resources, jobs, operations, job_nodes, nodes").execute(&pool).await {
                tracing::warn!(error = %e, "could not refresh planner statistics");
            }
        });
    }
}
