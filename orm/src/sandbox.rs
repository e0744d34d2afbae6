//! A connection in the test sandbox: one outer transaction that is never committed, inside
//! which each lease of the connection is a savepoint (`actor_orm_lease`) and a session's own
//! transaction another (`actor_orm_tx`). The ORM's transaction control is translated:
//!
//! | the session sends | the sandbox sends |
//! |---|---|
//! | `BEGIN …` | `SAVEPOINT actor_orm_tx` (the isolation level is the outer transaction's) |
//! | `COMMIT` | `RELEASE SAVEPOINT actor_orm_tx`; when the transaction had failed, a rollback to it, which is what PostgreSQL's COMMIT does then |
//! | `ROLLBACK` | `ROLLBACK TO SAVEPOINT actor_orm_tx; RELEASE SAVEPOINT actor_orm_tx` |
//!
//! When a lease ends, the lease's savepoint is released and a new one taken; if a statement
//! outside a transaction failed in it, it is rolled back to instead, so a failed statement
//! never aborts the outer transaction (as in autocommit, where it only fails itself). Raw
//! transaction control would end the outer transaction, and is refused.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::connection::Connection;
use crate::error::{Error, Result};

/// Transaction control, as the first words of a statement say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxControl {
    Begin,
    Commit,
    Rollback,
}

/// What `sql` does to the transaction, if it is transaction control (a savepoint's own
/// statements are not: the sandbox runs them as they are).
pub(crate) fn tx_control(sql: &str) -> Option<TxControl> {
    let mut words = sql
        .split(|c: char| c.is_ascii_whitespace() || c == ';')
        .filter(|w| !w.is_empty());
    let first = words.next()?;
    let second = words.next();
    let is = |w: &str, k: &str| w.eq_ignore_ascii_case(k);
    let savepoint_or_prepared =
        second.is_some_and(|w| is(w, "to") || is(w, "prepared") || is(w, "savepoint"));
    if is(first, "begin") || (is(first, "start") && second.is_some_and(|w| is(w, "transaction"))) {
        Some(TxControl::Begin)
    } else if (is(first, "commit") || is(first, "end")) && !savepoint_or_prepared {
        Some(TxControl::Commit)
    } else if (is(first, "rollback") || is(first, "abort")) && !savepoint_or_prepared {
        Some(TxControl::Rollback)
    } else {
        None
    }
}

/// A sandboxed connection's state: whether the session's transaction (its savepoint) is open.
#[derive(Debug, Default)]
pub(crate) struct Sandbox {
    tx_open: AtomicBool,
}

const TX: &str = "actor_orm_tx";
const LEASE: &str = "actor_orm_lease";
const IN_FAILED_TRANSACTION: &str = "25P02";

/// What the sandbox's connection runs first: the outer transaction, and the first lease's
/// savepoint.
pub const SANDBOX_START: &str = "BEGIN; SAVEPOINT actor_orm_lease";

impl Connection {
    /// Runs transaction control the sandbox way (see the module); `None` for any other
    /// statement, which runs as it is.
    pub(crate) async fn sandbox_batch(&self, sql: &str) -> Option<Result<()>> {
        let sandbox = self.sandbox()?;
        let open = &sandbox.tx_open;
        Some(match tx_control(sql)? {
            TxControl::Begin => {
                open.store(true, Ordering::Relaxed);
                let r = self.batch_sent(&format!("SAVEPOINT {TX}")).await;
                if r.is_err() {
                    open.store(false, Ordering::Relaxed);
                }
                r
            }
            // No transaction open: PostgreSQL only warns.
            TxControl::Commit | TxControl::Rollback if !open.load(Ordering::Relaxed) => Ok(()),
            TxControl::Commit => {
                match self.batch_sent(&format!("RELEASE SAVEPOINT {TX}")).await {
                    Err(e) if e.code() == Some(IN_FAILED_TRANSACTION) => {
                        // COMMIT of a failed transaction rolls it back, and says nothing.
                        self.sandbox_rollback_tx().await
                    }
                    r => {
                        open.store(false, Ordering::Relaxed);
                        r
                    }
                }
            }
            TxControl::Rollback => self.sandbox_rollback_tx().await,
        })
    }

    async fn sandbox_rollback_tx(&self) -> Result<()> {
        let r = self
            .batch_sent(&format!(
                "ROLLBACK TO SAVEPOINT {TX}; RELEASE SAVEPOINT {TX}"
            ))
            .await;
        if let Some(s) = self.sandbox() {
            s.tx_open.store(false, Ordering::Relaxed);
        }
        r
    }

    /// Ends a lease of the sandbox's connection and begins the next: a session's transaction
    /// left open is rolled back, and the lease's savepoint released (or, when a statement
    /// failed in it, rolled back to) and taken again. Nothing on a connection outside the
    /// sandbox.
    pub async fn sandbox_next_lease(&self) -> Result<()> {
        let Some(sandbox) = self.sandbox() else {
            return Ok(());
        };
        if sandbox.tx_open.load(Ordering::Relaxed) {
            self.sandbox_rollback_tx().await?;
        }
        match self
            .batch_sent(&format!("RELEASE SAVEPOINT {LEASE}; SAVEPOINT {LEASE}"))
            .await
        {
            Err(e) if e.code() == Some(IN_FAILED_TRANSACTION) => {
                // The savepoint stays, empty, for the next lease.
                self.batch_sent(&format!("ROLLBACK TO SAVEPOINT {LEASE}"))
                    .await
            }
            r => r,
        }
    }

    /// Refuses raw transaction control inside the sandbox: it would end the outer transaction.
    pub(crate) fn sandbox_allows(&self, sql: &str) -> Result<()> {
        if self.sandbox().is_some() && tx_control(sql).is_some() {
            return Err(Error::InvalidInput(format!(
                "`{sql}` inside the test sandbox would end the transaction every session of the \
                 test runs in: use the session's commit() and rollback() (or give the test a \
                 database of its own with #[actor_orm::test(isolation = \"database\")])"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{TxControl, tx_control};

    #[test]
    fn transaction_control_is_told_from_savepoints_and_everything_else() {
        for (sql, want) in [
            ("BEGIN", Some(TxControl::Begin)),
            ("begin isolation level serializable", Some(TxControl::Begin)),
            ("START TRANSACTION READ ONLY", Some(TxControl::Begin)),
            ("COMMIT", Some(TxControl::Commit)),
            ("end;", Some(TxControl::Commit)),
            ("  Rollback", Some(TxControl::Rollback)),
            ("ABORT", Some(TxControl::Rollback)),
            ("ROLLBACK TO SAVEPOINT actor_orm_sp_1", None),
            ("ROLLBACK PREPARED 'x'", None),
            ("COMMIT PREPARED 'x'", None),
            ("RELEASE SAVEPOINT a", None),
            ("SAVEPOINT a", None),
            ("SELECT 1", None),
            ("START", None),
            ("", None),
            ("committed_at", None),
        ] {
            assert_eq!(tx_control(sql), want, "{sql}");
        }
    }
}
