//! Applying and reverting [`Migrations`] on a pool's database, once however many instances do it
//! at the same time.
//!
//! The history lives in `actor_orm_migrations` (version, name, SHA-256 of the up SQL, when,
//! how long). A run holds a session-level advisory lock from before it reads the history to its
//! end, so that of several instances starting together one applies each migration and the others
//! then find it done. The lock is asked for with `pg_try_advisory_lock` every 50 ms rather than
//! waited for on the server: a `CREATE INDEX CONCURRENTLY` waits for every older transaction to
//! end, and one blocked waiting for the lock would never end (a deadlock). Each migration runs in
//! a transaction of its own with its history row, so a failing one rolls back whole; a
//! `no-transaction` one runs alone. The lock needs a server connection of its own: behind a
//! transaction pooler the migrator uses the pool's `direct_at` address, and refuses without one.

use std::time::Instant;

use actor_orm_core::{Error, Result};
use tokio_postgres::Client;
use tokio_postgres::types::{ToSql, Type};

use crate::migrations::{Migration, Migrations};
use crate::pool::Pool;

/// Why the migrator needs the server itself.
pub(crate) const NEEDS: &str = "migrations hold a session-level advisory lock";

/// The advisory lock key that serializes migrations (`actororm` in ASCII).
const LOCK: i64 = 0x6163_746f_726f_726d;

const HISTORY: &str = "CREATE TABLE IF NOT EXISTS actor_orm_migrations (
    version bigint PRIMARY KEY,
    name text NOT NULL,
    checksum bytea NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    duration_ms bigint NOT NULL
)";

/// Where one migration stands, as [`Pool::migration_status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationStatus {
    /// Its version.
    pub version: i64,
    /// Its name.
    pub name: String,
    /// Whether the history says it was applied.
    pub applied: bool,
    /// Applied, but its up SQL is no longer what was applied.
    pub edited: bool,
}

fn failed(m: &Migration, what: &str, e: &tokio_postgres::Error) -> Error {
    let reason = match e.as_db_error() {
        Some(db) => format!("{what}: {}: {}", db.code().code(), db.message()),
        None => format!("{what}: {e}"),
    };
    Error::Migration {
        version: m.version,
        name: m.name.clone(),
        reason,
    }
}

impl Pool {
    /// Applies every migration not applied yet, in version order; returns the versions it
    /// applied (none when another instance got there first). Checks the history first: a
    /// migration edited since it was applied, or applied but gone from `migrations`, is an
    /// [`Error::Migration`] and nothing is applied.
    ///
    /// ```no_run
    /// # async fn demo(pool: actor_orm_actors::Pool) -> actor_orm_core::Result<()> {
    /// let migrations = actor_orm_actors::Migrations::from_dir("migrations")?;
    /// let applied = pool.migrate(&migrations).await?;
    /// println!("applied {applied:?}");
    /// # Ok(()) }
    /// ```
    pub async fn migrate(&self, migrations: &Migrations) -> Result<Vec<i64>> {
        let client = crate::connect::server_client(self.config(), NEEDS).await?;
        locked(&client, async {
            let applied = history(&client).await?;
            verify(migrations, &applied)?;
            let mut done = Vec::new();
            for m in migrations.list() {
                if !applied.iter().any(|(v, _, _)| *v == m.version) {
                    apply(&client, m).await?;
                    done.push(m.version);
                }
            }
            Ok(done)
        })
        .await
    }

    /// Reverts the last `steps` applied migrations, newest first, with their down SQL; returns
    /// their versions. One without a down file is an [`Error::Migration`].
    pub async fn migrate_down(&self, migrations: &Migrations, steps: usize) -> Result<Vec<i64>> {
        let client = crate::connect::server_client(self.config(), NEEDS).await?;
        locked(&client, async {
            let applied = history(&client).await?;
            verify(migrations, &applied)?;
            let mut done = Vec::new();
            for (version, _, _) in applied.iter().rev().take(steps) {
                let Some(m) = migrations.get(*version) else {
                    continue;
                };
                revert(&client, m).await?;
                done.push(m.version);
            }
            Ok(done)
        })
        .await
    }

    /// Every migration of `migrations`, applied or pending, and whether an applied one was
    /// edited since.
    pub async fn migration_status(&self, migrations: &Migrations) -> Result<Vec<MigrationStatus>> {
        let client = crate::connect::server_client(self.config(), NEEDS).await?;
        let applied = locked(&client, history(&client)).await?;
        Ok(migrations
            .list()
            .iter()
            .map(|m| {
                let row = applied.iter().find(|(v, _, _)| *v == m.version);
                MigrationStatus {
                    version: m.version,
                    name: m.name.clone(),
                    applied: row.is_some(),
                    edited: row.is_some_and(|(_, _, sum)| *sum != m.checksum()),
                }
            })
            .collect())
    }
}

/// Runs `work` holding the migrations' session-level advisory lock (see the module docs).
async fn locked<T>(client: &Client, work: impl Future<Output = Result<T>>) -> Result<T> {
    let mut waited = Instant::now();
    loop {
        let rows = client
            .query_typed(
                "SELECT pg_try_advisory_lock($1)",
                &[(&LOCK as &(dyn ToSql + Sync), Type::INT8)],
            )
            .await?;
        if rows.first().is_some_and(|r| r.get::<_, bool>(0)) {
            break;
        }
        if waited.elapsed() > std::time::Duration::from_secs(10) {
            tracing::info!("migrate: another instance is migrating; waiting for it");
            waited = Instant::now();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let result = work.await;
    let _ = client
        .query_typed(
            "SELECT pg_advisory_unlock($1)",
            &[(&LOCK as &(dyn ToSql + Sync), Type::INT8)],
        )
        .await;
    result
}

/// The history, created when missing (under the lock: two instances may both find it missing),
/// in version order: (version, name, checksum).
async fn history(client: &Client) -> Result<Vec<(i64, String, Vec<u8>)>> {
    client.batch_execute(HISTORY).await?;
    let rows = client
        .query_typed(
            "SELECT version, name, checksum FROM actor_orm_migrations ORDER BY version",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// The history against the files: every applied migration still there, unedited.
fn verify(migrations: &Migrations, applied: &[(i64, String, Vec<u8>)]) -> Result<()> {
    for (version, name, sum) in applied {
        match migrations.get(*version) {
            None => {
                return Err(Error::Migration {
                    version: *version,
                    name: name.clone(),
                    reason: "applied to this database, but no migration file has this version \
                             any more"
                        .into(),
                });
            }
            Some(m) if m.checksum() != *sum => {
                return Err(Error::Migration {
                    version: *version,
                    name: m.name.clone(),
                    reason: "edited after it was applied (its checksum differs from the \
                             history's): write a new migration instead"
                        .into(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

async fn record(
    client: &Client,
    m: &Migration,
    started: Instant,
) -> std::result::Result<(), tokio_postgres::Error> {
    let ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let sum = m.checksum();
    client
        .query_typed(
            "INSERT INTO actor_orm_migrations (version, name, checksum, duration_ms) \
             VALUES ($1, $2, $3, $4)",
            &[
                (&m.version as &(dyn ToSql + Sync), Type::INT8),
                (&m.name, Type::TEXT),
                (&sum, Type::BYTEA),
                (&ms, Type::INT8),
            ],
        )
        .await
        .map(drop)
}

/// Applies `m`: in a transaction with its history row, or alone for a `no-transaction` one.
async fn apply(client: &Client, m: &Migration) -> Result<()> {
    let started = Instant::now();
    tracing::info!(version = m.version, name = %m.name, "migrate: applying");
    if m.no_transaction {
        let result = async {
            client.batch_execute(&m.up).await?;
            record(client, m, started).await
        }
        .await;
        return result.map_err(|e| failed(m, "not applied", &e));
    }
    let result = async {
        client.batch_execute("BEGIN").await?;
        client.batch_execute(&m.up).await?;
        record(client, m, started).await?;
        client.batch_execute("COMMIT").await
    }
    .await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result.map_err(|e| failed(m, "rolled back, nothing of it applied", &e))
}

/// Reverts `m` with its down SQL, in a transaction with its history row.
async fn revert(client: &Client, m: &Migration) -> Result<()> {
    let Some(down) = &m.down else {
        return Err(Error::Migration {
            version: m.version,
            name: m.name.clone(),
            reason: format!("has no down migration ({}_{}.down.sql)", m.version, m.name),
        });
    };
    tracing::info!(version = m.version, name = %m.name, "migrate: reverting");
    let result = async {
        client.batch_execute("BEGIN").await?;
        client.batch_execute(down).await?;
        client
            .query_typed(
                "DELETE FROM actor_orm_migrations WHERE version = $1",
                &[(&m.version as &(dyn ToSql + Sync), Type::INT8)],
            )
            .await?;
        client.batch_execute("COMMIT").await
    }
    .await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result.map_err(|e| failed(m, "not reverted, rolled back", &e))
}
