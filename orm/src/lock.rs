//! Row-locking clauses for reads: `FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`,
//! `FOR KEY SHARE`, each with `NOWAIT` or `SKIP LOCKED` and optionally limited to some tables.

use sea_query::{LockBehavior, LockType, SelectStatement, TableRef};

use crate::model::Model;

/// How a read locks the rows it returns, until the transaction ends.
///
/// A locking read always runs inside the session's transaction (it opens one), and refreshes the
/// session's copy of every row it returns.
///
/// ```
/// use actor_orm_core::Lock;
/// # use actor_orm_core::Model;
/// # fn demo<Job: Model, Worker: Model>() {
/// let claim = Lock::update().skip_locked();          // FOR UPDATE SKIP LOCKED
/// let fail_fast = Lock::share().nowait();            // FOR SHARE NOWAIT
/// let only_jobs = Lock::update().of::<Job>();        // FOR UPDATE OF "jobs" (in a join)
/// # let _ = (claim, fail_fast, only_jobs); }
/// ```
#[derive(Debug, Clone)]
pub struct Lock {
    strength: LockType,
    tables: Vec<TableRef>,
    wait: Option<LockBehavior>,
}

impl Lock {
    fn new(strength: LockType) -> Lock {
        Lock {
            strength,
            tables: Vec::new(),
            wait: None,
        }
    }
    /// `FOR UPDATE`: the rows may be updated or deleted by this transaction; other locking
    /// reads and writers wait.
    pub fn update() -> Lock {
        Lock::new(LockType::Update)
    }
    /// `FOR NO KEY UPDATE`: as `FOR UPDATE`, but lets others insert rows referencing these
    /// (`FOR KEY SHARE`): the lock an UPDATE that leaves the key alone takes.
    pub fn no_key_update() -> Lock {
        Lock::new(LockType::NoKeyUpdate)
    }
    /// `FOR SHARE`: the rows cannot change until the transaction ends; others may share.
    pub fn share() -> Lock {
        Lock::new(LockType::Share)
    }
    /// `FOR KEY SHARE`: only the rows' keys are protected.
    pub fn key_share() -> Lock {
        Lock::new(LockType::KeyShare)
    }
    /// `SKIP LOCKED`: rows another transaction holds are left out instead of waited for (a
    /// queue's workers each claim different rows).
    pub fn skip_locked(mut self) -> Lock {
        self.wait = Some(LockBehavior::SkipLocked);
        self
    }
    /// `NOWAIT`: a row another transaction holds fails the read at once with SQLSTATE 55P03
    /// ([`Error::is_lock_not_available`](crate::Error::is_lock_not_available)).
    pub fn nowait(mut self) -> Lock {
        self.wait = Some(LockBehavior::Nowait);
        self
    }
    /// Locks only rows of `N`'s table (in a join); may be given for several tables.
    pub fn of<N: Model>(mut self) -> Lock {
        self.tables.push(N::meta().table_ref());
        self
    }

    /// Puts this clause on `stmt`, replacing any it had.
    pub(crate) fn apply(&self, stmt: &mut SelectStatement) {
        let strength = self.strength;
        match (&self.wait, self.tables.is_empty()) {
            (None, true) => stmt.lock(strength),
            (None, false) => stmt.lock_with_tables(strength, self.tables.clone()),
            (Some(w), true) => stmt.lock_with_behavior(strength, *w),
            (Some(w), false) => stmt.lock_with_tables_behavior(strength, self.tables.clone(), *w),
        };
    }
}
