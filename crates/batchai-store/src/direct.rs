//! A few connections kept out of sqlx's pool for the hottest one-statement reads.
//!
//! sqlx 0.9 pings every connection it takes back into its pool (`Floating::return_to_pool`,
//! unconditionally), so each statement run through the pool costs its database a second round
//! trip and wake-up: for a GET, half of what Postgres does. These connections skip that. A slot
//! in use is never waited for (the read goes through the pool instead). A connection idle a
//! while is pinged first, as the pool's own are; when one turns out dead (the database
//! restarted, its backend was terminated) the read runs again on a newly opened connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use sqlx::{Connection, Database, Executor, IntoArguments, Pool};
use tokio::sync::Mutex;

use crate::sql::CHECK_IDLE_AFTER;

/// A held connection and when it was last used.
type Held<DB> = Option<(<DB as Database>::Connection, Instant)>;

pub(crate) struct Direct<DB: Database> {
    pool: Pool<DB>,
    slots: Vec<Mutex<Held<DB>>>,
    next: AtomicUsize,
}

impl<DB: Database> Direct<DB> {
    /// `slots` connections at most, opened on first use.
    pub(crate) fn new(pool: Pool<DB>, slots: usize) -> Self {
        Self { pool, slots: (0..slots).map(|_| Mutex::new(None)).collect(), next: AtomicUsize::new(0) }
    }

    /// Runs a read (made by `query`, so that it can be sent again) on a free direct connection,
    /// or through the pool when none is free.
    pub(crate) async fn read<'q, A>(
        &self,
        query: impl Fn() -> sqlx::query::Query<'q, DB, A>,
    ) -> sqlx::Result<Vec<DB::Row>>
    where
        A: IntoArguments<DB> + 'q,
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
        for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let free = (0..self.slots.len()).find_map(|i| self.slots[(start + i) % self.slots.len()].try_lock().ok());
        let Some(mut slot) = free else {
            return match query().fetch_all(&self.pool).await {
                Err(e) if dead(&e) => query().fetch_all(&mut self.fresh().await?).await,
                done => done,
            };
        };
        let reusable = match slot.take() {
            Some((mut conn, last_used)) => {
                (last_used.elapsed() < CHECK_IDLE_AFTER || conn.ping().await.is_ok()).then_some(conn)
            }
            None => None,
        };
        let mut conn = match reusable {
            Some(mut conn) => match query().fetch_all(&mut conn).await {
                Err(e) if dead(&e) => self.fresh().await?,
                done => {
                    *slot = Some((conn, Instant::now()));
                    return done;
                }
            },
            None => self.fresh().await?,
        };
        let rows = query().fetch_all(&mut conn).await?;
        *slot = Some((conn, Instant::now()));
        Ok(rows)
    }

    /// A new connection with the pool's settings: after one connection died, the pool's idle
    /// ones may be dead too.
    async fn fresh(&self) -> sqlx::Result<DB::Connection> {
        DB::Connection::connect_with(&self.pool.connect_options()).await
    }
}

/// Whether an error says the connection is gone rather than the statement wrong: I/O and
/// protocol failures, and Postgres' "operator intervention" (57…, e.g. the backend was
/// terminated or the server shut down) and "connection exception" (08…) classes.
fn dead(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("57") || c.starts_with("08")),
        _ => false,
    }
}
