//! Everything a session does over one connection: the identity map, the unit of work and the
//! transaction, with no actors. The session actor owns one [`SessionState`] and drives it.

use std::collections::HashMap;

use crate::relation::NPlusOne;
use std::future::Future;
use std::task::Poll;

use sea_query::{PostgresQueryBuilder, Value, Values};
use tokio_postgres::Row;

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::identity::IdentityMap;
use crate::lock::Lock;
use crate::model::{IntoKey, Key, Model, coerce_key_values, key_in};
use crate::query::{
    DeleteWhere, Filter, OnConflict, Project, Select, SelectPair, Selection, UpdateWhere,
};
use crate::unit_of_work::{self, Op, Pending, UnitOfWork};

mod flush;

/// Polls both futures, `a` first on every turn (so a request `a` sends goes out before `b`'s),
/// until both are done.
pub(crate) async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none()
            && let Poll::Ready(v) = a.as_mut().poll(cx)
        {
            ra = Some(v);
        }
        if rb.is_none()
            && let Poll::Ready(v) = b.as_mut().poll(cx)
        {
            rb = Some(v);
        }
        match (ra.take(), rb.take()) {
            (Some(x), Some(y)) => Poll::Ready((x, y)),
            (x, y) => {
                ra = x;
                rb = y;
                Poll::Pending
            }
        }
    })
    .await
}

/// Polls every future in the order given, each on every turn (so the requests they send go out
/// in that order), until all are done.
async fn in_order<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (f, out) in futures.iter_mut().zip(done.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(done.drain(..).flatten().collect())
        }
    })
    .await
}

/// Where the session's transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TxState {
    /// No transaction open; the next statement begins one.
    #[default]
    Idle,
    /// A transaction is open.
    Active,
    /// A statement failed: PostgreSQL ignores everything until ROLLBACK (or ROLLBACK TO).
    Failed,
}

/// A savepoint inside the session's transaction, from [`SessionState::savepoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Savepoint {
    id: u32,
    pending_len: usize,
}

/// How a transaction isolates itself from others (`BEGIN ISOLATION LEVEL …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Isolation {
    /// Each statement sees what was committed before it began (PostgreSQL's default).
    #[default]
    ReadCommitted,
    /// Every statement sees one snapshot, taken at the transaction's first statement; writing
    /// a row another transaction changed since fails with SQLSTATE 40001.
    RepeatableRead,
    /// As if transactions ran one at a time; any anomaly fails with SQLSTATE 40001.
    Serializable,
}

impl Isolation {
    fn begin_sql(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "BEGIN ISOLATION LEVEL READ COMMITTED",
            Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
        }
    }
}

/// The state of one session: identity map, unit of work and transaction.
#[derive(Debug, Default)]
pub struct SessionState {
    identity: IdentityMap,
    /// The causal token: the WAL position (as a number) reads must see, from the session's last
    /// commit or given by the caller; 0 for none.
    causal: u64,
    /// When the session's work must be done by (see [`set_deadline`](Self::set_deadline)).
    deadline: Option<std::time::Instant>,
    /// Single-key reads sent to the server, by statement (the N+1 detector). Keyed by the
    /// address of the statement's text, which is built once per model and kept: hashing a
    /// pointer costs a few instructions where hashing the text cost hundreds on every read.
    key_reads: HashMap<usize, u32, rustc_hash::FxBuildHasher>,
    n_plus_one: NPlusOne,
    /// Rows loaded before a REPEATABLE READ or SERIALIZABLE transaction began: never served to
    /// reads in it (they would escape its snapshot), only compared with by the dirty-column
    /// check of a later save.
    loaded_before: IdentityMap,
    work: UnitOfWork,
    tx: TxState,
    savepoints: Vec<Savepoint>,
    next_savepoint: u32,
    /// The dirty-column check is off for every model of this session.
    unchecked: bool,
    /// Raw SQL or user code ran since the last COMMIT or ROLLBACK: the server's transaction
    /// state is not known for sure (it may have begun or ended one).
    untracked: bool,
    /// Something other than reads ran since the transaction began: its COMMIT has something to
    /// report.
    wrote: bool,
}

impl SessionState {
    /// A fresh session: nothing loaded, nothing pending, no transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// The session's deadline: statements still running then are cancelled, a connection not had
    /// by then is not waited for, and a COMMIT is not sent after it. `None` for none.
    pub fn set_deadline(&mut self, deadline: Option<std::time::Instant>) {
        self.deadline = deadline;
    }

    /// The session's deadline, if it has one.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        self.deadline
    }

    /// The WAL position (an LSN, as a number) this session's reads must see: that of its last
    /// commit, or a later one given to [`read_after`](Self::read_after); 0 for none.
    pub fn causal_lsn(&self) -> u64 {
        self.causal
    }

    /// Makes this session's reads see at least the WAL position `lsn` (a replica that has not
    /// replayed it is not read from). Positions only move forward.
    pub fn read_after(&mut self, lsn: u64) {
        self.causal = self.causal.max(lsn);
    }

    /// Turns the dirty-column check of [`save`](Self::save) on (the default) or off for this
    /// session; a model can also turn it off for itself (`#[orm(dirty_check = false)]`).
    pub fn set_dirty_check(&mut self, on: bool) {
        self.unchecked = !on;
    }

    /// Whether [`save`](Self::save) checks the columns it changes (see there).
    pub fn dirty_check(&self) -> bool {
        !self.unchecked
    }

    // ----- what the session knows about its transaction, beyond its state -----

    /// Notes a piece of work about to run: whether it only reads, and whether it is untracked
    /// (raw SQL or user code, which may begin or end a transaction behind the session's back).
    /// Returns whether it is a pure read: it only reads and has nothing to flush first.
    pub fn note_work(&mut self, reads_only: bool, untracked: bool) -> bool {
        self.untracked |= untracked;
        let pure_read = reads_only && self.work.is_empty();
        self.wrote |= !pure_read;
        pure_read
    }

    /// Notes a fresh connection: whatever untracked work did on the old one is gone with it.
    pub fn note_new_connection(&mut self) {
        self.untracked = false;
    }

    /// Whether a transaction may be open on the server: one the session opened, or one raw SQL
    /// may have opened. A connection given back in this state needs a ROLLBACK.
    pub fn may_be_open(&self) -> bool {
        self.tx != TxState::Idle || self.untracked
    }

    /// Whether the open transaction did nothing but read, so its COMMIT has nothing to report
    /// and may be sent without waiting for the answer.
    pub fn only_read(&self) -> bool {
        self.tx == TxState::Active && !self.wrote && !self.untracked && self.work.is_empty()
    }

    /// Whether a pure read may run again on another connection when its connection turns out
    /// dead: only when it also opens the transaction, so that a dead connection took nothing
    /// with it.
    pub fn may_run_again(&self, pure_read: bool) -> bool {
        pure_read && self.tx == TxState::Idle
    }

    /// Where the transaction stands.
    pub fn tx_state(&self) -> TxState {
        self.tx
    }

    /// The identity map.
    pub fn identity_map(&self) -> &IdentityMap {
        &self.identity
    }

    /// How many changes wait for the next flush.
    pub fn pending(&self) -> usize {
        self.work.len()
    }

    // ----- transactions -----

    /// Opens the transaction now if none is open (every statement does this on its own). A
    /// failed BEGIN changes nothing: the session is still idle and may try again, on another
    /// connection if this one is gone.
    pub async fn begin(&mut self, conn: &Connection) -> Result<()> {
        self.begin_if_needed(conn).await
    }

    /// Opens the transaction now with this isolation level. A transaction already open (or
    /// changes pending, which would open one at READ COMMITTED) is an [`Error::InvalidInput`]:
    /// the level must be set before the transaction's first statement.
    ///
    /// Under REPEATABLE READ and SERIALIZABLE, rows this session loaded before are no longer
    /// served from its identity map: reads in the transaction go to the server and see its
    /// snapshot. They still serve as what a later [`save`](Self::save) checks against.
    pub async fn begin_with(&mut self, conn: &Connection, isolation: Isolation) -> Result<()> {
        if self.tx != TxState::Idle || !self.work.is_empty() {
            return Err(Error::InvalidInput(
                "the isolation level must be set before the transaction's first statement; this session's transaction is already open (or has changes pending)".into(),
            ));
        }
        self.tx = TxState::Active;
        let begun = conn.batch_known(isolation.begin_sql()).await;
        if begun.is_err() {
            self.tx = TxState::Idle;
            return begun;
        }
        if isolation != Isolation::ReadCommitted {
            self.loaded_before = std::mem::take(&mut self.identity);
        }
        Ok(())
    }

    async fn begin_if_needed(&mut self, conn: &Connection) -> Result<()> {
        match self.tx {
            TxState::Active => Ok(()),
            TxState::Failed => Err(Error::TransactionAborted),
            TxState::Idle => {
                // Active from the moment BEGIN is sent (in this same poll): a caller that drops
                // this future mid-way leaves a session that knows a transaction may be open.
                self.tx = TxState::Active;
                let begun = conn.batch("BEGIN").await;
                if begun.is_err() {
                    // BEGIN fails only with its connection: no transaction exists.
                    self.tx = TxState::Idle;
                }
                begun
            }
        }
    }

    /// Notes a failed statement (see [`note`](Self::note)) and hands its error back.
    pub(crate) fn note_failure(&mut self, e: Error) -> Error {
        match self.note::<()>(Err(e)) {
            Err(e) => e,
            Ok(()) => Error::TransactionAborted,
        }
    }

    /// Notes a failed statement: the server has aborted the transaction unless nothing was sent.
    fn note<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result
            && matches!(e, Error::Database(_) | Error::ConnectionLost { .. })
            && self.tx == TxState::Active
        {
            self.tx = TxState::Failed;
        }
        result
    }

    /// Runs `work` inside the transaction. When none is open, BEGIN is sent in the same round
    /// trip, ahead of the statement: the server runs them in order.
    pub(crate) async fn in_transaction<T>(
        &mut self,
        conn: &Connection,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match self.tx {
            TxState::Active => self.note(work.await),
            TxState::Failed => Err(Error::TransactionAborted),
            TxState::Idle => {
                // As in `begin_if_needed`: Active from the poll that sends BEGIN.
                self.tx = TxState::Active;
                let (begun, result) = join(conn.batch("BEGIN"), work).await;
                if let Err(e) = begun {
                    // BEGIN fails only with its connection, and then so did the statement
                    // behind it: no transaction exists.
                    self.tx = TxState::Idle;
                    return Err(e);
                }
                self.note(result)
            }
        }
    }

    async fn run_query(
        &mut self,
        conn: &Connection,
        sql: &str,
        values: &Values,
        columns: Option<&[&str]>,
    ) -> Result<Vec<Row>> {
        self.in_transaction(conn, conn.query(sql, values, columns))
            .await
    }

    /// Runs a read. While no transaction is open, a statement the ORM built from typed columns
    /// and bound values (`reads_only`) runs on its own, without BEGIN, where the connection
    /// allows it ([`Connection::autocommit_reads`]); anything else opens the transaction.
    async fn run_read(
        &mut self,
        conn: &Connection,
        sql: &str,
        values: &Values,
        reads_only: bool,
    ) -> Result<Vec<Row>> {
        if reads_only && self.tx == TxState::Idle && conn.autocommit_reads() {
            return conn.query(sql, values, None).await;
        }
        self.run_query(conn, sql, values, None).await
    }

    pub(crate) async fn run_execute(
        &mut self,
        conn: &Connection,
        sql: &str,
        values: &Values,
    ) -> Result<u64> {
        self.in_transaction(conn, conn.execute(sql, values, None))
            .await
    }

    /// Flushes, then commits. A transaction that had failed is rolled back and reported.
    ///
    /// When everything pending is an INSERT or a deferred statement
    /// ([`defer_update_where`](Self::defer_update_where)) and the transaction is open, they and
    /// the COMMIT go out together, in one round trip: none has an outcome the client must check
    /// before committing (a failing one aborts the transaction, and the server answers the
    /// COMMIT behind it with a ROLLBACK), and a commit forgets what was loaded, so they read
    /// nothing back.
    pub async fn commit(&mut self, conn: &Connection) -> Result<()> {
        let r = self.commit_inner(conn).await;
        self.wrote = false;
        if r.is_ok() {
            // COMMIT leaves the server outside any transaction, whatever raw SQL did before.
            self.untracked = false;
        }
        r
    }

    async fn commit_inner(&mut self, conn: &Connection) -> Result<()> {
        if self.tx == TxState::Active && !self.work.is_empty() && self.work.only_unchecked() {
            return self.commit_unchecked(conn).await;
        }
        if self.tx != TxState::Failed {
            self.flush(conn).await?;
        }
        match self.tx {
            TxState::Idle => {
                // Nothing was ever sent: nothing to commit.
                self.reset_after_transaction();
                Ok(())
            }
            TxState::Active => {
                // A connection already closed never sent it: the server rolled back.
                let r = if conn.is_closed() {
                    conn.batch("COMMIT").await
                } else {
                    Error::at_commit(conn.batch("COMMIT").await)
                };
                // Whether COMMIT succeeded or failed, the transaction is over.
                self.reset_after_transaction();
                r
            }
            TxState::Failed => {
                let r = conn.batch("ROLLBACK").await;
                self.reset_after_transaction();
                r.and(Err(Error::TransactionAborted))
            }
        }
    }

    async fn commit_unchecked(&mut self, conn: &Connection) -> Result<()> {
        let ops = self.work.take_ordered();
        // Every statement is built, prepared and its values encoded before any is sent: each
        // then goes out on its first poll, in order, with COMMIT right behind them, and none can
        // be refused on the client after the COMMIT has gone (which would commit the rest).
        let mut statements = Vec::new();
        let mut i = 0;
        while i < ops.len() {
            let start = i;
            while i < ops.len() && matches!(ops[i], Op::Insert { .. }) {
                i += 1;
            }
            for batch in batches(&inserted_models(&ops[start..i])) {
                match batch_insert(conn, &batch, false).await {
                    Ok(built) => statements.push(built),
                    Err(e) => return self.note(Err(e)),
                }
            }
            if let Some(Op::Statement { sql, values, .. }) = ops.get(i) {
                statements.push(flush::deferred(sql, values));
                i += 1;
            }
        }
        for built in &statements {
            let checked = conn
                .prepare_checked(&built.sql, &built.values, Some(&built.columns))
                .await;
            if let Err(e) = checked {
                return self.note(Err(e));
            }
        }
        let inserts = in_order(
            statements
                .iter()
                .map(|b| conn.execute(&b.sql, &b.values, Some(&b.columns))),
        );
        let (inserted, committed) = join(inserts, conn.batch("COMMIT")).await;
        // Committed, or rolled back by the server: the transaction is over either way.
        self.reset_after_transaction();
        let committed = Error::at_commit(committed);
        if committed
            .as_ref()
            .is_err_and(Error::is_commit_outcome_unknown)
        {
            // The inserts' own errors are the lost connection's too.
            return committed;
        }
        for r in inserted {
            r?;
        }
        committed
    }

    /// Rolls back the transaction and drops every pending change.
    pub async fn rollback(&mut self, conn: &Connection) -> Result<()> {
        self.wrote = false;
        // Raw SQL may have opened a transaction the session does not know of.
        let r = if self.may_be_open() {
            conn.batch("ROLLBACK").await
        } else {
            Ok(())
        };
        if r.is_ok() {
            self.untracked = false;
        }
        self.reset_after_transaction();
        r
    }

    fn reset_after_transaction(&mut self) {
        self.tx = TxState::Idle;
        self.work.clear();
        // Rows may change once the transaction is over: load them again.
        self.identity.clear();
        self.loaded_before.clear();
        self.savepoints.clear();
    }

    /// Notes that the transaction can no longer be trusted (the connection went away, or a
    /// statement was cancelled): an open transaction is now failed and must be rolled back before
    /// the session does anything else.
    pub fn mark_failed(&mut self) {
        if self.tx == TxState::Active {
            self.tx = TxState::Failed;
        }
    }

    /// Forgets the transaction without talking to the server (the connection is gone or will be
    /// reset by its owner, or a COMMIT was sent without waiting for its answer).
    pub fn abandon(&mut self) {
        self.wrote = false;
        self.reset_after_transaction();
    }

    /// Flushes pending changes, then sets a savepoint.
    pub async fn savepoint(&mut self, conn: &Connection) -> Result<Savepoint> {
        self.flush(conn).await?;
        self.begin_if_needed(conn).await?;
        self.next_savepoint += 1;
        let sp = Savepoint {
            id: self.next_savepoint,
            pending_len: self.work.len(),
        };
        let r = conn
            .batch(&format!("SAVEPOINT actor_orm_sp_{}", sp.id))
            .await;
        self.note(r)?;
        self.savepoints.push(sp);
        Ok(sp)
    }

    /// Undoes everything since `sp` (which stays usable); clears a failed transaction's error.
    pub async fn rollback_to(&mut self, conn: &Connection, sp: Savepoint) -> Result<()> {
        let Some(pos) = self.savepoints.iter().position(|s| *s == sp) else {
            return Err(Error::InvalidInput(format!(
                "savepoint {} is not active in this transaction",
                sp.id
            )));
        };
        conn.batch(&format!("ROLLBACK TO SAVEPOINT actor_orm_sp_{}", sp.id))
            .await?;
        self.savepoints.truncate(pos + 1);
        self.work.truncate(sp.pending_len);
        self.identity.clear();
        self.tx = TxState::Active;
        Ok(())
    }

    /// Keeps everything since `sp` and forgets the savepoint.
    pub async fn release(&mut self, conn: &Connection, sp: Savepoint) -> Result<()> {
        let Some(pos) = self.savepoints.iter().position(|s| *s == sp) else {
            return Err(Error::InvalidInput(format!(
                "savepoint {} is not active in this transaction",
                sp.id
            )));
        };
        let r = conn
            .batch(&format!("RELEASE SAVEPOINT actor_orm_sp_{}", sp.id))
            .await;
        self.note(r)?;
        self.savepoints.truncate(pos);
        Ok(())
    }

    // ----- reads -----

    /// The row of `M` with this key: from the identity map when loaded, else one SELECT.
    pub async fn get<M: Model + crate::Keyed>(
        &mut self,
        conn: &Connection,
        key: impl IntoKey<M>,
    ) -> Result<Option<M>> {
        let key_values = key.into_key_values();
        let key = Key::of(&key_values);
        self.flush(conn).await?;
        if let Some(hit) = self.identity.get::<M>(&key) {
            return Ok(Some(hit));
        }
        // The statement's text is the same for every key of `M`: built once, then reused.
        let values = coerce_key_values::<M>(key_values)?;
        let sql = match M::meta().sql.get.get() {
            Some(sql) => sql,
            None => {
                let select = Select::<M>::new().filter(Filter::typed(key_in::<M>(&[&values])?));
                let (sql, _) = select.build();
                M::meta().sql.get.get_or_init(|| sql)
            }
        };
        self.note_key_read(sql)?;
        let rows = self.run_read(conn, sql, &Values(values), true).await?;
        match rows.first() {
            Some(row) => Ok(Some(self.remember::<M>(row)?)),
            None => Ok(None),
        }
    }

    /// The rows of `M` with these keys, in the keys' order, skipping missing ones: identity-map
    /// hits cost nothing, the rest come in one SELECT … IN.
    pub async fn get_many<M: Model + crate::Keyed, K: IntoKey<M>>(
        &mut self,
        conn: &Connection,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<M>> {
        self.flush(conn).await?;
        let keys: Vec<Vec<Value>> = keys.into_iter().map(IntoKey::into_key_values).collect();
        let missing: Vec<&Vec<Value>> = keys
            .iter()
            .filter(|k| !self.identity.contains::<M>(&Key::of(k)))
            .collect();
        if !missing.is_empty() {
            let select = Select::<M>::new().filter(Filter::typed(key_in::<M>(&missing)?));
            self.all(conn, select).await?;
        }
        Ok(keys
            .into_iter()
            .filter_map(|k| self.identity.get::<M>(&Key::new(k)))
            .collect())
    }

    /// The row of `M` with this key, read with a row lock ([`Lock`]) that holds until the
    /// transaction ends. Always asks the server (the identity map cannot know about locks),
    /// opens the transaction, and refreshes the session's copy of the row.
    pub async fn get_locked<M: Model + crate::Keyed>(
        &mut self,
        conn: &Connection,
        key: impl IntoKey<M>,
        lock: Lock,
    ) -> Result<Option<M>> {
        let values = coerce_key_values::<M>(key.into_key_values())?;
        let select = Select::<M>::new()
            .filter(Filter::typed(key_in::<M>(&[&values])?))
            .lock(lock);
        self.first(conn, select).await
    }

    fn remember<M: Model>(&mut self, row: &Row) -> Result<M> {
        let positions = crate::model::in_order(M::meta().columns.len());
        let model = M::from_row(row, &positions)?;
        self.identity.insert(model.key()?, model.clone());
        Ok(model)
    }

    /// What the session does when it sees the same single-key read run over and over.
    pub fn set_n_plus_one(&mut self, policy: NPlusOne) {
        self.n_plus_one = policy;
    }

    /// Counts a single-key read that went to the server; past the threshold, warns once per
    /// statement (or fails, with [`NPlusOne::Error`]).
    fn note_key_read(&mut self, sql: &'static str) -> Result<()> {
        let (threshold, fail) = match self.n_plus_one {
            NPlusOne::Off => return Ok(()),
            NPlusOne::Warn(n) => (n, false),
            NPlusOne::Error(n) => (n, true),
        };
        let count = self.key_reads.entry(sql.as_ptr() as usize).or_insert(0);
        *count += 1;
        let count = *count;
        if count <= threshold {
            return Ok(());
        }
        if fail {
            return Err(Error::NPlusOne {
                statement: sql.to_owned(),
                count,
            });
        }
        if count == threshold + 1 {
            tracing::warn!(
                statement = sql,
                count,
                "N+1: this session ran the same single-key read more than {threshold} times; load the relation eagerly with Session::load (one statement per relation)"
            );
        }
        Ok(())
    }

    /// The identity map, to look rows up and record them (relations).
    pub(crate) fn identity_mut(&mut self) -> &mut IdentityMap {
        &mut self.identity
    }

    /// Runs a read built by the ORM (pending changes flushed first) and returns its rows.
    pub(crate) async fn rows(
        &mut self,
        conn: &Connection,
        sql: &str,
        values: Values,
    ) -> Result<Vec<Row>> {
        self.flush(conn).await?;
        self.run_read(conn, sql, &values, true).await
    }

    /// `NOTIFY channel, payload` inside the session's transaction (opened if needed), as
    /// `pg_notify($1, $2)` with both bound: PostgreSQL delivers it to listeners when the
    /// transaction commits, and not at all if it rolls back.
    pub async fn notify(&mut self, conn: &Connection, channel: &str, payload: &str) -> Result<()> {
        self.flush(conn).await?;
        self.begin(conn).await?;
        let values = Values(vec![Value::from(channel), Value::from(payload)]);
        self.run_query(conn, "SELECT pg_notify($1, $2)", &values, None)
            .await
            .map(drop)
    }

    /// Runs a write built by the ORM inside the transaction (pending changes flushed first);
    /// returns how many rows it affected.
    pub(crate) async fn execute_built(
        &mut self,
        conn: &Connection,
        sql: &str,
        values: Values,
    ) -> Result<u64> {
        self.flush(conn).await?;
        self.run_execute(conn, sql, &values).await
    }

    /// Runs a read of whole models of `M` and records them in the identity map.
    pub(crate) async fn load_rows<M: Model>(
        &mut self,
        conn: &Connection,
        sql: &str,
        values: Values,
    ) -> Result<Vec<M>> {
        let rows = self.rows(conn, sql, values).await?;
        self.remember_all(rows)
    }

    /// Decodes one row of `M` (its columns at `positions`) and records it.
    pub(crate) fn remember_row<M: Model>(&mut self, row: &Row, positions: &[usize]) -> Result<M> {
        let model = M::from_row(row, positions)?;
        self.identity.insert(model.key()?, model.clone());
        Ok(model)
    }

    /// Decodes rows into models and records each in the identity map. A large result is kept as
    /// its rows (no copy of each model, indexed on the next lookup); a small one as copies, so
    /// that a few rows do not hold on to a whole read buffer.
    pub(crate) fn remember_all<M: Model>(&mut self, rows: Vec<Row>) -> Result<Vec<M>> {
        const KEEP_ROWS_FROM: usize = 64;
        let positions = crate::model::in_order(M::meta().columns.len());
        let mut models = Vec::with_capacity(rows.len());
        if rows.len() < KEEP_ROWS_FROM {
            for row in &rows {
                let model = M::from_row(row, &positions)?;
                self.identity.insert(model.key()?, model.clone());
                models.push(model);
            }
            return Ok(models);
        }
        // Keys of integer, text or uuid columns are read from the rows when the table is next
        // looked up (a key built per row while loading cost a copy of every value of the row,
        // and 32 bytes a row held); other keys are built now.
        let key_columns: Vec<usize> = M::meta().key_columns().map(|(i, _)| i).collect();
        let readable = rows.first().is_some_and(|first| {
            key_columns.iter().all(|&i| {
                first
                    .columns()
                    .get(i)
                    .is_some_and(|c| crate::types::is_key_part_type(c.type_()))
            })
        });
        if readable {
            for row in &rows {
                models.push(M::from_row(row, &positions)?);
            }
            self.identity.insert_rows_keyed_by::<M>(key_columns, rows);
            return Ok(models);
        }
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            let model = M::from_row(row, &positions)?;
            keys.push(model.key()?);
            models.push(model);
        }
        self.identity.insert_rows::<M>(keys, rows);
        Ok(models)
    }

    /// Every model the query returns (pending changes are flushed first).
    pub async fn all<M: Model>(&mut self, conn: &Connection, select: Select<M>) -> Result<Vec<M>> {
        self.flush(conn).await?;
        let (sql, values) = select.build();
        let rows = self
            .run_read(conn, &sql, &values, select.reads_only())
            .await?;
        self.remember_all::<M>(rows)
    }

    /// The first model the query returns, if any.
    pub async fn first<M: Model>(
        &mut self,
        conn: &Connection,
        select: Select<M>,
    ) -> Result<Option<M>> {
        Ok(self.all(conn, select.limit(1)).await?.into_iter().next())
    }

    /// Pairs from a join: `(M, Option<N>)`.
    pub async fn all_pairs<M: Model, N: Model>(
        &mut self,
        conn: &Connection,
        select: SelectPair<M, N>,
    ) -> Result<Vec<(M, Option<N>)>> {
        self.flush(conn).await?;
        let (sql, values) = select.build();
        let rows = self
            .run_read(conn, &sql, &values, select.reads_only())
            .await?;
        rows.iter().map(SelectPair::<M, N>::decode).collect()
    }

    /// Rows of a projection: columns, aggregates or tuples of them.
    pub async fn project<S: Selection>(
        &mut self,
        conn: &Connection,
        project: Project<S>,
    ) -> Result<Vec<S::Output>> {
        self.flush(conn).await?;
        let (sql, values) = project.build();
        let rows = self.run_query(conn, &sql, &values, None).await?;
        rows.iter()
            .map(|r| project.selection.decode(r, 0))
            .collect()
    }

    /// How many rows the query matches.
    pub async fn count<M: Model>(&mut self, conn: &Connection, select: &Select<M>) -> Result<i64> {
        let stmt = select.count_statement();
        self.read_scalar(conn, &stmt, select.reads_only(), "count", 0)
            .await
    }

    /// Whether the query matches any row.
    pub async fn exists<M: Model>(
        &mut self,
        conn: &Connection,
        select: &Select<M>,
    ) -> Result<bool> {
        let stmt = select.exists_statement();
        self.read_scalar(conn, &stmt, select.reads_only(), "exists", false)
            .await
    }

    /// The first column of the first row of a one-value statement, `empty` when no row.
    async fn read_scalar<T: for<'a> tokio_postgres::types::FromSql<'a>>(
        &mut self,
        conn: &Connection,
        stmt: &sea_query::SelectStatement,
        reads_only: bool,
        label: &str,
        empty: T,
    ) -> Result<T> {
        self.flush(conn).await?;
        let (sql, values) = stmt.build(PostgresQueryBuilder);
        let rows = self.run_read(conn, &sql, &values, reads_only).await?;
        rows.first()
            .map(|r| crate::types::decode_required::<T>(r, 0, label))
            .unwrap_or(Ok(empty))
    }

    // ----- writes -----

    /// Queues an INSERT, sent at the next flush (or query, or commit).
    pub fn add<M: Model + crate::Writable>(&mut self, model: M) -> Result<()> {
        // Refuse bad values now, while the caller can still fix them, not at flush time.
        let values = model.values()?;
        for (col, v) in M::meta().columns.iter().zip(values) {
            col.sql_type.coerce(v, col.name)?;
        }
        self.work.ops.push(Op::Insert {
            model: Box::new(model),
            returning: true,
        });
        Ok(())
    }

    /// [`SessionState::add`] for many models: all are checked first; if one is refused, none is
    /// queued.
    pub fn add_all<M: Model + crate::Writable>(&mut self, models: Vec<M>) -> Result<()> {
        self.queue_inserts(models, true)
    }

    /// Queues INSERTs that read nothing back (no `RETURNING`): for rows the session will not
    /// use again, such as log or history rows. They do not enter the identity map. All are
    /// checked first; if one is refused, none is queued.
    pub fn add_without_returning<M: Model + crate::Writable>(
        &mut self,
        models: Vec<M>,
    ) -> Result<()> {
        self.queue_inserts(models, false)
    }

    fn queue_inserts<M: Model>(&mut self, models: Vec<M>, returning: bool) -> Result<()> {
        let columns = &M::meta().columns;
        for model in &models {
            for (col, v) in columns.iter().zip(model.values()?) {
                col.sql_type.coerce(v, col.name)?;
            }
        }
        self.work.ops.extend(models.into_iter().map(|m| Op::Insert {
            model: Box::new(m),
            returning,
        }));
        Ok(())
    }

    /// Inserts every model now, one statement per batch, and returns the stored rows in the
    /// order given, with generated keys, defaults and generated columns filled in. Returned rows
    /// are matched to their inputs by key, or — when the database generates the key — by an
    /// ordinal sent with the batch (`unnest … WITH ORDINALITY`): PostgreSQL does not promise the
    /// order of `RETURNING` rows. Rows that cannot be matched either way — a key from another
    /// kind of default (`gen_random_uuid()`), a composite key with a generated part, a table
    /// without a key — are inserted one statement each.
    pub async fn insert_all<M: Model + crate::Writable>(
        &mut self,
        conn: &Connection,
        models: Vec<M>,
    ) -> Result<Vec<M>> {
        self.flush(conn).await?;
        let pending: Vec<&dyn Pending> = models.iter().map(|m| m as &dyn Pending).collect();
        self.insert_pending::<M>(conn, &pending).await
    }

    /// [`insert_all`](Self::insert_all) of rows of `M` given as their values (a model whose
    /// foreign key was filled in from its parent's generated key, say).
    pub(crate) async fn insert_pending<M: Model>(
        &mut self,
        conn: &Connection,
        pending: &[&dyn Pending],
    ) -> Result<Vec<M>> {
        let meta = M::meta();
        let key_of = |p: &dyn Pending| -> Result<Key> {
            let values = p.values()?;
            Ok(Key::new(
                meta.key_columns().map(|(i, _)| values[i].clone()).collect(),
            ))
        };
        let mut stored: Vec<Option<M>> = (0..pending.len()).map(|_| None).collect();
        let mut start = 0;
        for batch in batches(pending) {
            let range = start..start + batch.len();
            start = range.end;
            let included = unit_of_work::included_columns(meta, batch[0]);
            let keys_given =
                meta.has_key() && meta.key_columns().all(|(i, _)| included.contains(&i));
            let numbered = !keys_given
                && batch.len() > 1
                && conn.mode() == crate::StatementMode::Prepared
                && unit_of_work::generated_key(meta).is_some();
            // Numbering needs one array per column: a column that is an array itself cannot.
            let types = if numbered {
                conn.param_types(&unit_of_work::insert_probe(meta, &included))
                    .await?
            } else {
                Vec::new()
            };
            let numbered = numbered
                && types
                    .iter()
                    .all(|t| !matches!(t.kind(), tokio_postgres::types::Kind::Array(_)));
            if batch.len() == 1 || (!keys_given && !numbered) {
                for (at, p) in range.clone().zip(batch.iter()) {
                    let built = unit_of_work::build_insert(meta, &[*p], None, true)?;
                    let rows = self
                        .run_query(conn, &built.sql, &built.values, Some(&built.columns))
                        .await?;
                    stored[at] = rows
                        .first()
                        .map(|row| self.remember::<M>(row))
                        .transpose()?;
                }
                continue;
            }
            if numbered {
                let built = unit_of_work::build_insert_numbered(meta, &batch, &included, &types)?;
                let rows = self
                    .run_query(conn, &built.sql, &built.values, Some(&built.columns))
                    .await?;
                let positions: Vec<usize> = (1..=meta.columns.len()).collect();
                for row in &rows {
                    let n: i64 = row.try_get(0).map_err(Error::from)?;
                    let at = usize::try_from(n - 1)
                        .ok()
                        .filter(|i| *i < batch.len())
                        .ok_or_else(|| Error::InvalidInput(format!("ordinal {n} out of range")))?;
                    let model = M::from_row(row, &positions)?;
                    self.identity.insert(model.key()?, model.clone());
                    stored[range.start + at] = Some(model);
                }
                continue;
            }
            // Keys given: each returned row is matched to its input by key.
            let built = batch_insert(conn, &batch, true).await?;
            let rows = self
                .run_query(conn, &built.sql, &built.values, Some(&built.columns))
                .await?;
            let mut by_key: HashMap<Key, usize> = HashMap::with_capacity(batch.len());
            for (at, p) in range.clone().zip(batch.iter()) {
                by_key.insert(key_of(*p)?, at);
            }
            for row in &rows {
                let model = self.remember::<M>(row)?;
                if let Some(at) = by_key.get(&model.key()?) {
                    stored[*at] = Some(model);
                }
            }
        }
        stored
            .into_iter()
            .map(|m| {
                m.ok_or_else(|| Error::NotFound {
                    table: meta.table.into(),
                    key: "(an inserted row: no row came back for it)".into(),
                })
            })
            .collect()
    }

    /// Inserts now and returns the stored row, with generated keys and defaults filled in.
    pub async fn insert<M: Model + crate::Writable>(
        &mut self,
        conn: &Connection,
        model: M,
    ) -> Result<M> {
        self.flush(conn).await?;
        let table = M::meta().table;
        self.write_one(conn, model, None)
            .await?
            .ok_or_else(|| Error::NotFound {
                table: table.into(),
                key: "(the inserted row)".into(),
            })
    }

    /// INSERT … ON CONFLICT (key) DO UPDATE / DO NOTHING; returns the stored row (`None` when
    /// DO NOTHING kept an existing row).
    pub async fn upsert<M: Model + crate::Keyed + crate::Writable>(
        &mut self,
        conn: &Connection,
        model: M,
        on_conflict: OnConflict,
    ) -> Result<Option<M>> {
        self.flush(conn).await?;
        self.write_one(conn, model, Some(on_conflict)).await
    }

    async fn write_one<M: Model>(
        &mut self,
        conn: &Connection,
        model: M,
        on_conflict: Option<OnConflict>,
    ) -> Result<Option<M>> {
        let built =
            unit_of_work::build_insert(M::meta(), &[&model as &dyn Pending], on_conflict, true)?;
        let rows = self
            .run_query(conn, &built.sql, &built.values, Some(&built.columns))
            .await?;
        // No row back only when ON CONFLICT DO NOTHING kept the existing one.
        rows.first().map(|row| self.remember::<M>(row)).transpose()
    }

    /// Queues an UPDATE of the columns that differ from the row as loaded; nothing when nothing
    /// changed. A model not loaded in this session has every non-key column written.
    ///
    /// **Lost updates are reported, not made.** A model with a version column is written only if
    /// the version is still the one loaded. A model without one is written only if every column
    /// the save changes still holds the value it was loaded with
    /// (`… WHERE key = $k AND col IS NOT DISTINCT FROM $loaded`, NULL-safe); otherwise the flush
    /// fails with [`Error::Stale`] and writes nothing. The check costs one comparison per changed
    /// column, on a row the UPDATE reads anyway. Columns whose type has no equality operator
    /// (`json`, `xml`, `point`) are not compared. It can be turned off per model
    /// (`#[orm(dirty_check = false)]`), per session ([`set_dirty_check`](Self::set_dirty_check))
    /// or per pool; a model not loaded in this session has nothing to compare with.
    pub fn save<M: Model + crate::Keyed + crate::Writable>(&mut self, model: M) -> Result<()> {
        let meta = M::meta();
        let key = model.key()?;
        let values = model.values()?;
        let writable = |i: &usize| !meta.columns[*i].primary_key && !meta.columns[*i].version;
        let snapshot = match self.identity.get::<M>(&key) {
            Some(s) => Some(s),
            None => self.loaded_before.get::<M>(&key),
        };
        let (columns, expected_version, checked) = match snapshot {
            Some(snapshot) => {
                let before = snapshot.values()?;
                let changed: Vec<usize> = (0..meta.columns.len())
                    .filter(writable)
                    .filter(|i| values[*i] != before[*i])
                    .collect();
                let version = meta
                    .version_column()
                    .and_then(|(i, _)| unit_of_work::version_of(&before[i]));
                let checked =
                    if meta.version_column().is_none() && meta.dirty_check && !self.unchecked {
                        changed
                            .iter()
                            .filter(|i| meta.columns[**i].comparable())
                            .map(|&i| (i, before[i].clone()))
                            .collect()
                    } else {
                        Vec::new()
                    };
                (changed, version, checked)
            }
            None => {
                let all: Vec<usize> = (0..meta.columns.len()).filter(writable).collect();
                let version = meta
                    .version_column()
                    .and_then(|(i, _)| unit_of_work::version_of(&values[i]));
                (all, version, Vec::new())
            }
        };
        if columns.is_empty() {
            return Ok(());
        }
        for &i in &columns {
            meta.columns[i]
                .sql_type
                .coerce(values[i].clone(), meta.columns[i].name)?;
        }
        self.work.push_update(Op::Update {
            model: Box::new(model),
            key,
            columns,
            expected_version,
            checked,
        });
        Ok(())
    }

    /// [`save`](Self::save) for many models. All are checked first; if one is refused (a bad
    /// value, no key), none is queued. Changed rows of one table that change the same columns
    /// go out as one statement at the flush.
    pub fn save_all<M: Model + crate::Keyed + crate::Writable>(
        &mut self,
        models: impl IntoIterator<Item = M>,
    ) -> Result<()> {
        let models: Vec<M> = models.into_iter().collect();
        let meta = M::meta();
        for model in &models {
            model.key()?;
            let values = model.values()?;
            for (col, v) in meta.columns.iter().zip(values) {
                if !col.primary_key && !col.version {
                    col.sql_type.coerce(v, col.name)?;
                }
            }
        }
        for model in models {
            self.save(model)?;
        }
        Ok(())
    }

    /// Queues a DELETE of this row (checking its version, if the model has one).
    pub fn delete<M: Model + crate::Keyed + crate::Writable>(&mut self, model: &M) -> Result<()> {
        let meta = M::meta();
        let values = model.values()?;
        let key_values: Vec<Value> = meta.key_columns().map(|(i, _)| values[i].clone()).collect();
        let key = Key::of(&key_values);
        let loaded = self
            .identity
            .get::<M>(&key)
            .map(|m| m.values())
            .transpose()?;
        let expected_version = meta
            .version_column()
            .and_then(|(i, _)| unit_of_work::version_of(&loaded.as_ref().unwrap_or(&values)[i]));
        self.work.ops.push(Op::Delete {
            meta,
            key,
            key_values,
            expected_version,
        });
        Ok(())
    }

    /// Sends every pending change, parents before children, in as few statements as it can.
    pub async fn flush(&mut self, conn: &Connection) -> Result<()> {
        if self.work.is_empty() {
            return Ok(());
        }
        // Boxed: every read awaits a flush first, and would otherwise carry room for the largest
        // one in its own state (and allocate and copy that room) even with nothing to flush.
        Box::pin(self.flush_pending(conn)).await
    }

    /// UPDATE every row matching a filter; returns how many. `M`'s rows are forgotten by the
    /// identity map.
    pub async fn update_where<M: Model + crate::Writable>(
        &mut self,
        conn: &Connection,
        update: UpdateWhere<M>,
    ) -> Result<u64> {
        self.flush(conn).await?;
        let (sql, values) = update.build()?;
        self.identity.forget_table(M::meta());
        self.run_execute(conn, &sql, &values).await
    }

    /// Queues an UPDATE of every row matching a filter for the next flush, where it runs in the
    /// order it was queued among the session's other changes (after those made before it,
    /// before those made after it); its row count is not read. For writes the caller does not
    /// need an answer from — counters, balances moved by an expression — so that they travel
    /// with the rest of the unit of work: at [`commit`](Self::commit), with only inserts and
    /// deferred statements pending in an open transaction, all of them and the COMMIT go out in
    /// one round trip. A failing one fails the flush (or the commit) like any statement: nothing
    /// of the transaction is committed. `M`'s rows are forgotten by the identity map now, so a
    /// read of them goes to the server — after the flush that runs this.
    pub fn defer_update_where<M: Model + crate::Writable>(
        &mut self,
        update: UpdateWhere<M>,
    ) -> Result<()> {
        let (sql, values) = update.build()?;
        self.defer(M::meta(), sql, values);
        Ok(())
    }

    /// [`defer_update_where`](Self::defer_update_where) for a DELETE of every row matching a
    /// filter.
    pub fn defer_delete_where<M: Model + crate::Writable>(&mut self, delete: DeleteWhere<M>) {
        let (sql, values) = delete.build();
        self.defer(M::meta(), sql, values);
    }

    fn defer(&mut self, meta: &'static crate::model::ModelMeta, sql: String, values: Values) {
        self.identity.forget_table(meta);
        self.work.ops.push(Op::Statement { meta, sql, values });
    }

    /// UPDATE every row matching a filter and read the updated rows back (`RETURNING`): the
    /// session's copies of them are refreshed, and the rest of `M`'s rows forgotten.
    pub async fn update_returning<M: Model + crate::Writable>(
        &mut self,
        conn: &Connection,
        update: UpdateWhere<M>,
    ) -> Result<Vec<M>> {
        self.flush(conn).await?;
        let (sql, values) = update.build_returning()?;
        self.identity.forget_table(M::meta());
        let rows = self.run_query(conn, &sql, &values, None).await?;
        self.remember_all(rows)
    }

    /// DELETE every row matching a filter; returns how many.
    pub async fn delete_where<M: Model + crate::Writable>(
        &mut self,
        conn: &Connection,
        delete: DeleteWhere<M>,
    ) -> Result<u64> {
        self.flush(conn).await?;
        let (sql, values) = delete.build();
        self.identity.forget_table(M::meta());
        self.run_execute(conn, &sql, &values).await
    }

    // ----- raw SQL -----

    /// Raw SQL with `$1…` parameters, each row mapped into `M` by column name.
    pub async fn raw<M: Model>(
        &mut self,
        conn: &Connection,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Vec<M>> {
        let rows = self.raw_rows(conn, sql, params).await?;
        let meta = M::meta();
        rows.iter()
            .map(|row| {
                let positions = meta
                    .columns
                    .iter()
                    .map(|c| {
                        row.columns()
                            .iter()
                            .position(|rc| rc.name() == c.name)
                            .ok_or_else(|| {
                                Error::mismatch(
                                    c.name,
                                    "a column of that name in the result",
                                    "no such column",
                                )
                            })
                    })
                    .collect::<Result<Vec<usize>>>()?;
                M::from_row(row, &positions)
            })
            .collect()
    }

    /// Raw SQL with `$1…` parameters, returning the rows as they are.
    pub async fn raw_rows(
        &mut self,
        conn: &Connection,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Vec<Row>> {
        refuse_listen(sql)?;
        self.flush(conn).await?;
        self.run_query(conn, sql, &Values(params), None).await
    }

    /// Raw SQL run on its own when no transaction is open (autocommit, as on a plain
    /// connection): it costs no BEGIN, and whatever it changes is committed at once, beyond the
    /// reach of a later rollback. Inside an open transaction (or with changes pending, which are
    /// flushed first and so open one) it is part of that transaction like [`raw_rows`]. Meant
    /// for statements that only read: health checks, reports.
    ///
    /// [`raw_rows`]: Self::raw_rows
    pub async fn raw_rows_autocommit(
        &mut self,
        conn: &Connection,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Vec<Row>> {
        self.flush(conn).await?;
        if self.tx == TxState::Idle {
            return conn.query(sql, &Values(params), None).await;
        }
        self.run_query(conn, sql, &Values(params), None).await
    }

    /// Raw SQL with `$1…` parameters, returning the affected row count. The identity map is
    /// cleared, since the statement may change any row.
    pub async fn raw_execute(
        &mut self,
        conn: &Connection,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<u64> {
        refuse_listen(sql)?;
        self.flush(conn).await?;
        self.identity.clear();
        self.run_execute(conn, sql, &Values(params)).await
    }
}

/// The statement for a batch of inserts: `INSERT … SELECT * FROM unnest(…)` with one array per
/// column when statements are prepared and no column is an array itself, else a multi-row
/// `INSERT … VALUES`.
async fn batch_insert(
    conn: &Connection,
    batch: &[&dyn Pending],
    returning: bool,
) -> Result<unit_of_work::Built> {
    let meta = batch[0].meta();
    if batch.len() > 1 && conn.mode() == crate::StatementMode::Prepared {
        let included = unit_of_work::included_columns(meta, batch[0]);
        let types = conn
            .param_types(&unit_of_work::insert_probe(meta, &included))
            .await?;
        let scalar = |t: &tokio_postgres::types::Type| {
            !matches!(t.kind(), tokio_postgres::types::Kind::Array(_))
        };
        if !included.is_empty() && types.len() == included.len() && types.iter().all(scalar) {
            return unit_of_work::build_insert_unnest(meta, batch, &included, &types, returning);
        }
    }
    unit_of_work::build_insert(meta, batch, None, returning)
}

/// The models of the INSERTs among `ops`, in order.
fn inserted_models(ops: &[Op]) -> Vec<&dyn Pending> {
    ops.iter()
        .filter_map(|o| match o {
            Op::Insert { model, .. } => Some(model.as_ref()),
            _ => None,
        })
        .collect()
}

fn batches<'a>(run: &[&'a dyn Pending]) -> Vec<Vec<&'a dyn Pending>> {
    let mut out: Vec<Vec<&'a dyn Pending>> = Vec::new();
    for &p in run {
        let same = out.last().is_some_and(|b| unit_of_work::same_batch(b, p));
        match out.last_mut() {
            Some(b) if same => b.push(p),
            _ => out.push(vec![p]),
        }
    }
    out
}

fn missing_row(
    meta: &crate::ModelMeta,
    key: &Key,
    expected_version: Option<i64>,
    checked: &[(usize, Value)],
) -> Error {
    if expected_version.is_none() && checked.is_empty() {
        return Error::NotFound {
            table: meta.table.into(),
            key: key.to_string(),
        };
    }
    Error::Stale {
        table: meta.table.into(),
        key: key.to_string(),
        expected_version,
        columns: checked
            .iter()
            .map(|(i, _)| meta.columns[*i].name.to_owned())
            .collect(),
    }
}

/// A `LISTEN` on a pooled session would be accepted and then receive nothing (the pool's
/// connections drop notifications, and the connection goes back to the pool): refused with the
/// way to listen instead.
fn refuse_listen(sql: &str) -> Result<()> {
    let head = sql.trim_start();
    let is_listen = head
        .get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case("listen"))
        && head[6..].starts_with(|c: char| c.is_whitespace());
    if is_listen {
        return Err(Error::InvalidInput(
            "LISTEN on a pooled session would receive nothing (notifications are not delivered to pooled connections); send with Session::notify, and listen on a connection of its own".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transaction_bookkeeping_follows_the_work() {
        let mut s = SessionState::new();
        assert!(!s.may_be_open());
        // A read with nothing pending is a pure read, and may run again while no transaction
        // is open.
        assert!(s.note_work(true, false));
        assert!(s.may_run_again(true));
        assert!(!s.may_run_again(false));
        // Raw SQL: the server's transaction state is no longer known.
        assert!(!s.note_work(false, true));
        assert!(s.may_be_open());
        s.note_new_connection();
        assert!(!s.may_be_open());
        // A read that must flush first is not a pure read.
        s.add(Probe).expect("queued");
        assert!(!s.note_work(true, false));
        assert!(!s.may_run_again(false));
    }

    #[derive(Clone)]
    struct Probe;

    impl crate::Writable for Probe {}

    impl Model for Probe {
        fn meta() -> &'static crate::ModelMeta {
            static META: crate::ModelMeta = crate::ModelMeta::new("probe", None, &[]);
            &META
        }
        fn values(&self) -> Result<Vec<Value>> {
            Ok(Vec::new())
        }
        fn is_unset(&self, _: usize) -> bool {
            false
        }
        fn from_row(_: &Row, _: &[usize]) -> Result<Self> {
            Ok(Probe)
        }
    }
}
