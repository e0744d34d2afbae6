//! The session actor and the [`Session`] handle that talks to it.
//!
//! The actor owns a [`SessionState`] (identity map, unit of work, transaction) and, from its
//! first statement until it ends, one leased connection. It runs one message at a time, so
//! nothing inside needs a lock. Every operation is a message: once sent, it runs to completion
//! inside the actor even if the caller stops waiting for the reply.

use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use actor_orm_core::sea_query::Value;
use actor_orm_core::tokio_postgres::Row;
use actor_orm_core::{
    Connection, DeleteWhere, Error, IntoKey, Isolation, KeyValues, Lock, Model, OnConflict,
    Project, Result, Savepoint, Select, SelectPair, Selection, SessionState, TxState, UpdateWhere,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::pool::{Pool, closed};
use crate::supervisor::{Lease, PoolLink, Requester};

/// Runs a one-shot closure as a job (which the session never runs twice).
fn once<T, F>(
    f: F,
) -> impl for<'a> FnMut(&'a mut SessionState, &'a Connection) -> BoxFuture<'a, Result<T>> + Send + 'static
where
    T: Send + 'static,
    F: for<'a> FnOnce(&'a mut SessionState, &'a Connection) -> BoxFuture<'a, Result<T>>
        + Send
        + 'static,
{
    let mut f = Some(f);
    move |state, conn| match f.take() {
        Some(f) => f(state, conn),
        None => Box::pin(async { Err(Error::SessionClosed) }),
    }
}

/// Whether `result` (or the state of `conn` after it) says the connection is gone.
fn lost<T>(conn: &Connection, result: &Result<T>) -> bool {
    conn.is_closed() || matches!(result, Err(e) if e.is_connection_lost())
}

/// A boxed future borrowing the session for `'a`, as [`Session::run`] closures return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Work that needs the connection. Runs inside the actor, then sends its own reply.
pub(crate) trait Job: Send {
    /// Whether the work may leave the connection in a state the ORM did not track (raw SQL).
    fn untracked(&self) -> bool;
    /// Whether the work only reads (apart from the pending changes it flushes first).
    fn reads_only(&self) -> bool;
    /// Whether the caller has stopped waiting for the reply.
    fn abandoned(&self) -> bool;
    /// Whether a caller that stops waiting cancels the work.
    fn cancellable(&self) -> bool;
    /// Runs to the end, or — when `cancellable` and the caller stops waiting — until the statement
    /// is cancelled on the server. With `may_retry`, a lost connection hands the job back
    /// unanswered, to run again on another connection.
    fn run<'a>(
        self: Box<Self>,
        state: &'a mut SessionState,
        conn: &'a Connection,
        may_retry: bool,
    ) -> BoxFuture<'a, Outcome>;
    /// Replies with an error without running (no connection could be had).
    fn fail(self: Box<Self>, error: Error);
}

/// How a job ended, as far as the session's bookkeeping cares.
pub(crate) enum Outcome {
    Done,
    ConnectionLost,
    /// The caller went away mid-statement and the statement was cancelled (or abandoned).
    Cancelled,
    /// The connection was found dead before the job could have had any effect; run it again.
    Retry(Box<dyn Job>),
}

/// Whether a caller that stops waiting cancels the statement on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A read (which autoflushes pending changes first): cancelled when nobody waits for it.
    Read,
    /// Runs to completion whatever the caller does: transaction control, flushes, inserts.
    Complete,
    /// A write whose effect stays inside the transaction (`update_where`, `delete_where`, a
    /// locking read): cancelled when nobody waits for it, and the transaction marked failed.
    Cancellable,
    /// User code or raw SQL: runs to completion, and the ORM cannot vouch for the session state.
    Untracked,
    /// Raw SQL that may be cancelled like a read, and leaves state the ORM cannot vouch for.
    UntrackedCancellable,
    /// Raw SQL that cannot change the transaction state (it starts with SELECT, WITH, …), run
    /// outside the transaction when none is open: cancelled like a read.
    Autocommit,
}

impl Mode {
    fn cancellable(self) -> bool {
        matches!(
            self,
            Mode::Read | Mode::Cancellable | Mode::UntrackedCancellable | Mode::Autocommit
        )
    }

    fn untracked(self) -> bool {
        matches!(self, Mode::Untracked | Mode::UntrackedCancellable)
    }
}

/// How a query runs: as a read, or — when it locks rows or calls what the ORM cannot see
/// through — as a write inside the transaction (whose COMMIT then must be waited for: it
/// releases the locks).
fn read_mode(reads_only: bool) -> Mode {
    if reads_only {
        Mode::Read
    } else {
        Mode::Cancellable
    }
}

struct Call<T, F> {
    f: F,
    mode: Mode,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for Call<T, F>
where
    T: Send + 'static,
    F: for<'a> FnMut(&'a mut SessionState, &'a Connection) -> BoxFuture<'a, Result<T>>
        + Send
        + 'static,
{
    fn untracked(&self) -> bool {
        self.mode.untracked()
    }

    fn reads_only(&self) -> bool {
        self.mode == Mode::Read
    }

    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    fn cancellable(&self) -> bool {
        self.mode.cancellable()
    }

    fn run<'a>(
        mut self: Box<Self>,
        state: &'a mut SessionState,
        conn: &'a Connection,
        may_retry: bool,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let work = (self.f)(state, conn);
            let result = if self.mode.cancellable() {
                tokio::pin!(work);
                tokio::select! {
                    biased;
                    r = &mut work => Some(r),
                    () = self.reply.closed() => None,
                }
            } else {
                Some(work.await)
            };
            let Some(result) = result else {
                // Nobody waits for the answer: stop the statement instead of letting it hold the
                // connection. If the cancel cannot be sent, the connection stays flagged as
                // interrupted and the pool cancels or discards it on return.
                // Boxed: the cancel request's state is large and rarely needed.
                let _ = Box::pin(conn.cancel_running()).await;
                return Outcome::Cancelled;
            };
            let lost = matches!(&result, Err(e) if e.is_connection_lost());
            if lost && may_retry {
                return Outcome::Retry(self);
            }
            // The caller may have stopped waiting: then only the reply is lost.
            let _ = self.reply.send(result);
            if lost {
                Outcome::ConnectionLost
            } else {
                Outcome::Done
            }
        })
    }

    fn fail(self: Box<Self>, error: Error) {
        let _ = self.reply.send(Err(error));
    }
}

type Local = Box<dyn FnOnce(&mut SessionState) + Send>;

pub(crate) enum SessionMsg {
    Db(Box<dyn Job>),
    Local(Local),
    Commit(oneshot::Sender<Result<()>>),
    Rollback(oneshot::Sender<Result<()>>),
    /// Ends the session. `last`: no handle on it is left, so the actor may serve another
    /// session.
    Close {
        reply: Option<oneshot::Sender<()>>,
        last: bool,
    },
    Acquire(oneshot::Sender<Result<()>>),
}

/// Where a spare session actor finds the label of the session it serves next: set by
/// [`spawn`] before the new handle exists, taken by the actor with the first message that
/// handle sends (so a reused actor costs no message of its own).
#[derive(Default)]
pub(crate) struct NextLabel {
    ready: AtomicBool,
    label: Mutex<Option<Label>>,
}

impl NextLabel {
    fn put(&self, label: Label) {
        *self.label.lock().unwrap_or_else(PoisonError::into_inner) = Some(label);
        self.ready.store(true, Ordering::Release);
    }

    /// The new label, if one was put since the last call: one atomic load otherwise. Only the
    /// actor takes, and only `put` on a spare (which runs no message meanwhile) sets `ready`.
    fn take(&self) -> Option<Label> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        self.ready.store(false, Ordering::Relaxed);
        self.label
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

pub(crate) struct SessionActor;

/// The session's name (or `session-<id>`) and where it was created, for logs, leak reports and
/// timeout errors. Shared by the handle, the actor and the pool's lease record; the text is
/// written only when something asks for it, so a session nobody reports on never formats it.
#[derive(Clone)]
pub(crate) struct Label(Arc<LabelInner>);

struct LabelInner {
    name: Option<String>,
    site: &'static Location<'static>,
    /// Set by the actor as it starts (ractor assigns the id at spawn).
    id: std::sync::OnceLock<ractor::ActorId>,
    text: std::sync::OnceLock<String>,
}

impl Label {
    fn new(name: Option<String>, site: &'static Location<'static>) -> Label {
        Label(Arc::new(LabelInner {
            name,
            site,
            id: std::sync::OnceLock::new(),
            text: std::sync::OnceLock::new(),
        }))
    }

    pub(crate) fn as_str(&self) -> &str {
        let l = &self.0;
        l.text.get_or_init(|| match (&l.name, l.id.get()) {
            (Some(n), _) => format!("{n} (created at {})", l.site),
            (None, Some(id)) => format!("session-{id} (created at {})", l.site),
            (None, None) => format!("session (created at {})", l.site),
        })
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

pub(crate) struct SessionArgs {
    pool: PoolLink,
    label: Label,
    dirty_check: bool,
}

pub(crate) struct SessionCtx {
    core: SessionState,
    lease: Option<Lease>,
    pool: PoolLink,
    label: Label,
    span: tracing::Span,
    /// Raw SQL or user code ran since the last COMMIT/ROLLBACK: the server's transaction state
    /// is not known for sure.
    untracked: bool,
    /// Nothing but reads since the transaction began: its COMMIT has nothing to report.
    read_only: bool,
    /// The pool has ordered this actor stopped (`max_session_lifetime`): it must not be kept
    /// as a spare.
    condemned: bool,
    /// The label of the next session, once this actor is a spare and has been taken.
    next: Arc<NextLabel>,
    /// The pool's `dirty_check` setting, for every session this actor serves.
    dirty_check: bool,
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionCtx;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionCtx, ActorProcessingErr> {
        let _ = args.label.0.id.set(myself.get_id());
        let mut core = SessionState::new();
        core.set_dirty_check(args.dirty_check);
        Ok(SessionCtx {
            core,
            lease: None,
            pool: args.pool,
            span: span_for(&args.label),
            label: args.label,
            untracked: false,
            read_only: true,
            condemned: false,
            next: Arc::default(),
            dirty_check: args.dirty_check,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        ctx: &mut SessionCtx,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(label) = ctx.next.take() {
            // The first message of a new session on this (reused) actor.
            ctx.span = span_for(&label);
            ctx.label = label;
        }
        let span = ctx.span.clone();
        match msg {
            SessionMsg::Local(f) => {
                let _entered = span.enter();
                f(&mut ctx.core);
            }
            // Not boxed: the common message's state is small (its job's own future is boxed, and
            // so are the large, rare steps on the way), so an idle session's task stays small
            // without an allocation per message.
            SessionMsg::Db(job) => ctx.run(myself.get_cell(), job).instrument(span).await,
            SessionMsg::Close { reply, last } => {
                let _entered = span.enter();
                // The connection is back in the pool (and handed to the next waiter) before
                // anyone hears that the session closed.
                ctx.release();
                tracing::debug!("session closed");
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
                // With no handle left, nothing can reach this actor on the old session's
                // behalf: it may serve a new one, once wiped.
                if last && !ctx.condemned && ctx.pool.keep_spare(&myself, &ctx.next) {
                    ctx.wipe();
                } else {
                    myself.stop(None);
                }
            }
            SessionMsg::Commit(reply) => {
                // Boxed: a commit's state is the largest, and would sit in every idle session.
                let r = Box::pin(ctx.commit(myself.get_cell()))
                    .instrument(span)
                    .await;
                let _ = reply.send(r);
            }
            SessionMsg::Acquire(reply) => {
                let r = ctx.acquire(myself.get_cell()).instrument(span).await;
                let _ = reply.send(r);
            }
            SessionMsg::Rollback(reply) => {
                let r = ctx.rollback().instrument(span).await;
                let _ = reply.send(r);
            }
        }
        Ok(())
    }
}

impl SessionCtx {
    async fn connection(&mut self, me: ractor::ActorCell) -> Result<Arc<Connection>> {
        if let Some(lease) = &self.lease {
            return Ok(lease.conn.clone());
        }
        let requester = Requester {
            cell: me,
            label: self.label.clone(),
        };
        let lease = self
            .pool
            .checkout(requester)?
            .await
            .map_err(|_| closed())??;
        let conn = lease.conn.clone();
        self.lease = Some(lease);
        self.untracked = false;
        Ok(conn)
    }

    /// A connection with the transaction open. A fresh lease whose BEGIN finds the connection
    /// dead (a server restart, a terminated backend) is reported and replaced: nothing had been
    /// sent on it, so trying again is safe and the caller never sees the dead socket.
    async fn connection_in_transaction(
        &mut self,
        me: &ractor::ActorCell,
    ) -> Result<Arc<Connection>> {
        let mut attempts = 0;
        loop {
            let conn = self.connection(me.clone()).await?;
            if self.core.tx_state() != TxState::Idle {
                return Ok(conn);
            }
            match self.core.begin(&conn).await {
                Ok(()) => return Ok(conn),
                Err(e) if e.is_connection_lost() && attempts < 3 => {
                    attempts += 1;
                    tracing::info!(error = %e, "BEGIN found the connection dead; taking another");
                    self.lose_connection();
                }
                Err(e) => {
                    if e.is_connection_lost() {
                        self.lose_connection();
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn run(&mut self, me: ractor::ActorCell, mut job: Box<dyn Job>) {
        let mut attempts = 0;
        loop {
            // The first statement of a transaction carries its BEGIN in the same round trip. A
            // read may be run again if the connection turns out dead.
            let conn = if job.untracked() && !job.cancellable() {
                // User code in `run` may use the connection directly: open the transaction
                // first.
                // Boxed: rare, and its BEGIN's state would otherwise sit in every job's.
                Box::pin(self.connection_in_transaction(&me)).await
            } else {
                self.connection(me.clone()).await
            };
            let conn = match conn {
                Ok(c) => c,
                Err(e) => return job.fail(e),
            };
            if job.abandoned() && job.cancellable() {
                // The caller gave up while this waited for a connection: nothing to run.
                return;
            }
            if job.untracked() {
                self.untracked = true;
            }
            // A read with nothing to flush first sends nothing but reads.
            let pure_read = job.reads_only() && self.core.pending() == 0;
            if !pure_read {
                self.read_only = false;
            }
            // Safe to run again only when this job also opens the transaction: then a dead
            // connection took nothing with it.
            let may_retry = pure_read && self.core.tx_state() == TxState::Idle && attempts < 3;
            match job.run(&mut self.core, &conn, may_retry).await {
                Outcome::Retry(again) => {
                    attempts += 1;
                    tracing::info!(
                        "the connection was dead before the first statement; retrying on another"
                    );
                    self.lose_connection();
                    self.core.abandon();
                    job = again;
                    continue;
                }
                _ if conn.is_closed() => self.lose_connection(),
                Outcome::ConnectionLost => self.lose_connection(),
                Outcome::Cancelled => {
                    tracing::debug!("a caller stopped waiting: its statement was cancelled");
                    // The cancelled statement aborted the transaction on the server: roll back
                    // before going on (release does so on return).
                    self.core.mark_failed();
                }
                Outcome::Done => {}
            }
            return;
        }
    }

    /// The connection died: tell the pool, and make the transaction (if any) one that must be
    /// rolled back before the session goes on, on a new connection.
    fn lose_connection(&mut self) {
        if let Some(lease) = self.lease.take() {
            tracing::warn!("connection lost");
            self.condemned |= !self.pool.broken(lease.id);
        }
        self.core.mark_failed();
    }

    /// Forgets everything of the session that ended (which has given its connection back), so
    /// that the actor can serve another.
    fn wipe(&mut self) {
        debug_assert!(self.lease.is_none());
        self.core = SessionState::new();
        self.core.set_dirty_check(self.dirty_check);
        self.untracked = false;
        self.read_only = true;
    }

    async fn commit(&mut self, me: ractor::ActorCell) -> Result<()> {
        if self.core.tx_state() == TxState::Idle && self.core.pending() == 0 {
            // No transaction open and nothing waits: nothing to commit. What reads loaded is
            // forgotten, as after any commit.
            self.core.abandon();
            self.read_only = true;
            return Ok(());
        }
        if self.lease.is_none() && self.core.tx_state() != TxState::Idle {
            // The connection went away mid-transaction: the server rolled it back.
            self.core.abandon();
            return Err(Error::TransactionAborted);
        }
        if self.read_only
            && !self.untracked
            && self.core.pending() == 0
            && self.core.tx_state() == TxState::Active
            && let Some(lease) = &self.lease
            && lease.conn.send_and_forget("COMMIT")
        {
            // A transaction that only read has nothing to report at COMMIT: send it and move on.
            // Whatever this session (or the next user of the connection) sends next queues
            // behind it on the same connection.
            self.core.abandon();
            return Ok(());
        }
        let conn = self.connection_in_transaction(&me).await?;
        // Boxed: a flush's state is large, and would otherwise be room every message's future
        // carries.
        let r = Box::pin(self.core.commit(&conn)).await;
        if lost(&conn, &r) {
            self.lose_connection();
            self.core.abandon();
        }
        if r.is_ok() {
            // COMMIT leaves the server outside any transaction, whatever raw SQL did before.
            self.untracked = false;
        }
        self.read_only = true;
        r
    }

    async fn rollback(&mut self) -> Result<()> {
        self.read_only = true;
        let Some(lease) = &self.lease else {
            self.core.abandon();
            return Ok(());
        };
        let conn = lease.conn.clone();
        let r = self.core.rollback(&conn).await;
        if lost(&conn, &r) {
            // No connection, no transaction: the rollback happened on the server's side.
            self.lose_connection();
            self.core.abandon();
            return Ok(());
        }
        if r.is_ok() {
            self.untracked = false;
        }
        r
    }

    /// Gives the connection back: the lease ends as a checkin, not a reclaim. Uncommitted work
    /// is dropped and a ROLLBACK sent ahead of whatever comes next on the connection (or, after
    /// an interrupted statement, left to the pool's full reset). A dead connection is reported
    /// as broken instead.
    fn release(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if lease.conn.is_closed() {
            self.condemned |= !self.pool.broken(lease.id);
            return;
        }
        let may_be_open = self.core.tx_state() != TxState::Idle || self.untracked;
        self.core.abandon();
        // A statement abandoned mid-flight needs the pool's full reset (cancel, then ROLLBACK
        // with a timeout). Otherwise a ROLLBACK sent ahead of whatever comes next on the
        // connection ends any transaction, and the lease returns clean at once.
        let clean = !lease.conn.was_interrupted()
            && (!may_be_open || lease.conn.send_and_forget("ROLLBACK"));
        self.condemned |= !self.pool.checkin(lease.id, clean);
    }

    /// Checks a connection out now, if the session has none.
    async fn acquire(&mut self, me: ractor::ActorCell) -> Result<()> {
        self.connection(me).await.map(drop)
    }
}

/// The tracing span of a session's work.
fn span_for(label: &Label) -> tracing::Span {
    tracing::info_span!("session", session = %label)
}

/// A new session: on a spare actor if the pool has one, else on a new actor.
pub(crate) async fn spawn(
    pool: Pool,
    name: Option<String>,
    site: &'static Location<'static>,
) -> Result<Session> {
    let label = Label::new(name, site);
    if let Some((actor, next)) = pool.link().take_spare() {
        let _ = label.0.id.set(actor.get_id());
        next.put(label.clone());
        return Ok(Session::new(actor, label, pool));
    }
    let link = pool.link().clone();
    let supervisor = link.actor.get_cell();
    let args = SessionArgs {
        pool: link,
        label: label.clone(),
        dirty_check: pool.config().dirty_check,
    };
    let (actor, _) = Actor::spawn_linked(None, SessionActor, args, supervisor)
        .await
        .map_err(|e| Error::PoolClosed {
            reason: format!("could not start a session: {e}"),
        })?;
    Ok(Session::new(actor, label, pool))
}

/// A handle on one session actor. Clones are cheap and all talk to the same session: they
/// share one transaction, one unit of work and one identity map, so one clone's `commit` also
/// writes what another clone queued. Give each job, request or loop iteration a session of its
/// own (`pool.session()`), and clone a handle only to hand the *same* unit of work to another
/// task. When the last clone is dropped the session ends: uncommitted work is rolled back and
/// the connection goes back to the pool.
///
/// ```no_run
/// # async fn demo(pool: actor_orm_actors::Pool) -> actor_orm_core::Result<()> {
/// let s = pool.session().await?;
/// let one = s.raw_rows("SELECT 1", vec![]).await?;
/// s.commit().await?;
/// # let _ = one; Ok(()) }
/// ```
///
/// Models cross into the session by value; the session keeps its own snapshot of what it loaded,
/// so [`Session::save`] writes only the columns that changed.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Handle>,
}

struct Handle {
    actor: ActorRef<SessionMsg>,
    label: Label,
    // Keeps the pool open while any session is alive; says whether this process may use it.
    pool: Pool,
    /// `close` has already ended the session.
    closed: bool,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        // Through the mailbox, behind any operation already sent: those still run to the end.
        // This is the last handle: the actor may serve another session afterwards.
        let _ = self.actor.send_message(SessionMsg::Close {
            reply: None,
            last: true,
        });
    }
}

impl Session {
    fn new(actor: ActorRef<SessionMsg>, label: Label, pool: Pool) -> Session {
        Session {
            inner: Arc::new(Handle {
                actor,
                label,
                pool,
                closed: false,
            }),
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("label", &self.inner.label)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The session's name (or `session-<id>`) and where it was created.
    pub fn label(&self) -> &str {
        self.inner.label.as_str()
    }

    /// Whether the session actor is still running.
    pub fn is_running(&self) -> bool {
        self.inner.actor.get_status() < ractor::ActorStatus::Stopping
    }

    async fn call<T, F>(&self, mode: Mode, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut SessionState, &'a Connection) -> BoxFuture<'a, Result<T>>
            + Send
            + 'static,
    {
        self.send_job(mode, once(f)).await
    }

    /// A read: may be sent again on another connection when the first turns out dead, so `f`
    /// may run more than once.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnMut(&'a mut SessionState, &'a Connection) -> BoxFuture<'a, Result<T>>
            + Send
            + 'static,
    {
        self.send_job(Mode::Read, f).await
    }

    async fn send_job<T, F>(&self, mode: Mode, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnMut(&'a mut SessionState, &'a Connection) -> BoxFuture<'a, Result<T>>
            + Send
            + 'static,
    {
        self.inner.pool.check_process()?;
        let (reply, rx) = oneshot::channel();
        let job = Box::new(Call { f, mode, reply });
        self.inner
            .actor
            .send_message(SessionMsg::Db(job))
            .map_err(|_| Error::SessionClosed)?;
        rx.await.map_err(|_| Error::SessionClosed)?
    }

    async fn local<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut SessionState) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.inner.pool.check_process()?;
        let (reply, rx) = oneshot::channel();
        let job: Local = Box::new(move |state| {
            let _ = reply.send(f(state));
        });
        self.inner
            .actor
            .send_message(SessionMsg::Local(job))
            .map_err(|_| Error::SessionClosed)?;
        rx.await.map_err(|_| Error::SessionClosed)?
    }

    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<()>>) -> SessionMsg,
    ) -> Result<()> {
        self.inner.pool.check_process()?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .actor
            .send_message(make(reply))
            .map_err(|_| Error::SessionClosed)?;
        rx.await.map_err(|_| Error::SessionClosed)?
    }

    /// Checks a connection out now instead of at the first statement: to fail fast with
    /// [`Error::PoolTimeout`] before doing any work, or to hold a connection ready.
    pub async fn acquire(&self) -> Result<()> {
        self.ask(SessionMsg::Acquire).await
    }

    // ----- reads -----

    /// The row of `M` with this key: from the session's identity map when already loaded,
    /// else one SELECT.
    pub async fn get<M: Model>(&self, key: impl IntoKey<M>) -> Result<Option<M>> {
        let key = KeyValues(key.into_key_values());
        self.read(move |s, c| Box::pin(s.get::<M>(c, key.clone())))
            .await
    }

    /// The row of `M` with this key, locked `FOR UPDATE` until the transaction ends: other
    /// sessions that lock or write it wait for this one's COMMIT or ROLLBACK. Opens the
    /// transaction, always asks the server, and refreshes the session's copy of the row (so a
    /// `save` of it checks against what was locked).
    pub async fn get_for_update<M: Model>(&self, key: impl IntoKey<M>) -> Result<Option<M>> {
        self.get_locked(key, Lock::update()).await
    }

    /// [`get_for_update`](Self::get_for_update) with any [`Lock`]: `Lock::share()`,
    /// `Lock::update().nowait()` (a held row fails at once with SQLSTATE 55P03), ….
    pub async fn get_locked<M: Model>(
        &self,
        key: impl IntoKey<M>,
        lock: Lock,
    ) -> Result<Option<M>> {
        let key = KeyValues(key.into_key_values());
        self.call(Mode::Cancellable, move |s, c| {
            Box::pin(s.get_locked::<M>(c, key, lock))
        })
        .await
    }

    /// The rows of `M` with these keys, in one statement for those not loaded yet.
    pub async fn get_many<M: Model, K: IntoKey<M>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<M>> {
        let keys: Vec<KeyValues> = keys
            .into_iter()
            .map(|k| KeyValues(k.into_key_values()))
            .collect();
        self.read(move |s, c| Box::pin(s.get_many::<M, _>(c, keys.clone())))
            .await
    }

    /// Every row the query selects.
    pub async fn all<M: Model>(&self, select: Select<M>) -> Result<Vec<M>> {
        let mode = read_mode(select.reads_only());
        self.send_job(mode, move |s, c| Box::pin(s.all(c, select.clone())))
            .await
    }

    /// The first row the query selects.
    pub async fn first<M: Model>(&self, select: Select<M>) -> Result<Option<M>> {
        let mode = read_mode(select.reads_only());
        self.send_job(mode, move |s, c| Box::pin(s.first(c, select.clone())))
            .await
    }

    /// How many rows the query selects.
    pub async fn count<M: Model>(&self, select: Select<M>) -> Result<i64> {
        let mode = read_mode(select.reads_only());
        self.send_job(mode, move |s, c| {
            let select = select.clone();
            Box::pin(async move { s.count(c, &select).await })
        })
        .await
    }

    /// Whether the query selects any row.
    pub async fn exists<M: Model>(&self, select: Select<M>) -> Result<bool> {
        let mode = read_mode(select.reads_only());
        self.send_job(mode, move |s, c| {
            let select = select.clone();
            Box::pin(async move { s.exists(c, &select).await })
        })
        .await
    }

    /// Rows of a join: each `M` with its `N`, if any.
    pub async fn all_pairs<M: Model, N: Model>(
        &self,
        select: SelectPair<M, N>,
    ) -> Result<Vec<(M, Option<N>)>> {
        let mode = read_mode(select.reads_only());
        self.send_job(mode, move |s, c| Box::pin(s.all_pairs(c, select.clone())))
            .await
    }

    /// Rows of a projection (selected columns and aggregates).
    pub async fn project<S: Selection + Clone>(
        &self,
        project: Project<S>,
    ) -> Result<Vec<S::Output>> {
        self.read(move |s, c| Box::pin(s.project(c, project.clone())))
            .await
    }

    // ----- writes -----

    /// Queues `model` for INSERT at the next flush. Bad values are refused now.
    pub async fn add<M: Model>(&self, model: M) -> Result<()> {
        self.local(move |s| s.add(model)).await
    }

    /// Queues many models for INSERT at the next flush, in one message. All are checked first;
    /// if one is refused, none is queued.
    pub async fn add_all<M: Model>(&self, models: impl IntoIterator<Item = M>) -> Result<()> {
        let models: Vec<M> = models.into_iter().collect();
        self.local(move |s| s.add_all(models)).await
    }

    /// Queues models for INSERT at the next flush with nothing read back (no `RETURNING`): for
    /// rows this session will not use again, such as log or history rows. They do not enter the
    /// identity map. All are checked first; if one is refused, none is queued.
    pub async fn add_without_returning<M: Model>(
        &self,
        models: impl IntoIterator<Item = M>,
    ) -> Result<()> {
        let models: Vec<M> = models.into_iter().collect();
        self.local(move |s| s.add_without_returning(models)).await
    }

    /// Inserts `model` now and returns it as stored (generated key and defaults filled in).
    pub async fn insert<M: Model>(&self, model: M) -> Result<M> {
        self.call(Mode::Complete, move |s, c| Box::pin(s.insert(c, model)))
            .await
    }

    /// INSERT … ON CONFLICT: the stored row, or `None` when the conflict did nothing.
    pub async fn upsert<M: Model>(&self, model: M, on_conflict: OnConflict) -> Result<Option<M>> {
        self.call(Mode::Complete, move |s, c| {
            Box::pin(s.upsert(c, model, on_conflict))
        })
        .await
    }

    /// Queues the changes in `model` (compared with what this session loaded) for the next flush.
    ///
    /// The UPDATE is written only if the row still holds what this session loaded: its version
    /// (for a model with a version column), or else the loaded value of every column it changes.
    /// A row changed by someone else in between fails the flush with [`Error::Stale`] instead of
    /// being overwritten (see [`SessionState::save`] for the cost and how to turn it off);
    /// [`Pool::transaction`](crate::Pool::transaction) runs the work again on it.
    pub async fn save<M: Model>(&self, model: M) -> Result<()> {
        self.local(move |s| s.save(model)).await
    }

    /// Queues `model`'s row for DELETE at the next flush.
    pub async fn delete<M: Model>(&self, model: M) -> Result<()> {
        self.local(move |s| s.delete(&model)).await
    }

    /// Sends every queued change now, parents before children.
    pub async fn flush(&self) -> Result<()> {
        self.call(Mode::Complete, |s, c| Box::pin(s.flush(c))).await
    }

    /// UPDATE … WHERE for many rows at once, with no `RETURNING`; returns how many changed.
    /// New values may be expressions over the row (`Account::BALANCE.add(delta)`), computed by
    /// the server from the row as it is when the UPDATE runs, so no concurrent change is lost.
    pub async fn update_where<M: Model>(&self, update: UpdateWhere<M>) -> Result<u64> {
        self.call(Mode::Cancellable, move |s, c| {
            Box::pin(s.update_where(c, update))
        })
        .await
    }

    /// [`update_where`](Self::update_where) that reads the updated rows back (`RETURNING`),
    /// e.g. one row by key: `UpdateWhere::<Account>::key(7).set(..)`.
    pub async fn update_returning<M: Model>(&self, update: UpdateWhere<M>) -> Result<Vec<M>> {
        self.call(Mode::Cancellable, move |s, c| {
            Box::pin(s.update_returning(c, update))
        })
        .await
    }

    /// DELETE … WHERE for many rows at once; returns how many went.
    pub async fn delete_where<M: Model>(&self, delete: DeleteWhere<M>) -> Result<u64> {
        self.call(Mode::Cancellable, move |s, c| {
            Box::pin(s.delete_where(c, delete))
        })
        .await
    }

    // ----- transactions -----

    /// Flushes and commits. After a failed statement the transaction is rolled back instead and
    /// [`Error::TransactionAborted`] returned, as PostgreSQL does.
    pub async fn commit(&self) -> Result<()> {
        self.ask(SessionMsg::Commit).await
    }

    /// Rolls back the transaction and drops every queued change.
    pub async fn rollback(&self) -> Result<()> {
        self.ask(SessionMsg::Rollback).await
    }

    /// Flushes, then sets a savepoint.
    pub async fn savepoint(&self) -> Result<Savepoint> {
        self.call(Mode::Complete, |s, c| Box::pin(s.savepoint(c)))
            .await
    }

    /// Undoes everything since `sp`; clears a failed statement's error.
    pub async fn rollback_to(&self, sp: Savepoint) -> Result<()> {
        self.call(Mode::Complete, move |s, c| Box::pin(s.rollback_to(c, sp)))
            .await
    }

    /// Keeps everything since `sp` and forgets the savepoint.
    pub async fn release(&self, sp: Savepoint) -> Result<()> {
        self.call(Mode::Complete, move |s, c| Box::pin(s.release(c, sp)))
            .await
    }

    /// Opens the transaction now. Without this a session opens it at its first write (see
    /// [`PoolBuilder::autocommit_reads`](crate::PoolBuilder::autocommit_reads)); call it first
    /// when reads must be part of the transaction too (so that `now()` or a raw
    /// `SET TRANSACTION ISOLATION LEVEL …` applies to them).
    pub async fn begin(&self) -> Result<()> {
        self.call(Mode::Complete, |s, c| Box::pin(s.begin(c))).await
    }

    /// Opens the transaction now with this isolation level (`BEGIN ISOLATION LEVEL …`). Must
    /// come before the transaction's first statement: with a transaction open, or changes
    /// pending, it is an [`Error::InvalidInput`]. Under REPEATABLE READ and SERIALIZABLE, rows
    /// loaded before are read again from the server rather than served from the identity map.
    pub async fn begin_with(&self, isolation: Isolation) -> Result<()> {
        self.call(Mode::Complete, move |s, c| {
            Box::pin(s.begin_with(c, isolation))
        })
        .await
    }

    /// Where the session's transaction stands.
    pub async fn tx_state(&self) -> Result<TxState> {
        self.local(|s| Ok(s.tx_state())).await
    }

    // ----- raw SQL -----

    /// Raw SQL whose rows decode to `M`; values are bound as `$1, $2, …`.
    pub async fn raw<M: Model>(
        &self,
        sql: impl Into<String>,
        params: Vec<Value>,
    ) -> Result<Vec<M>> {
        let sql = sql.into();
        self.call(Mode::UntrackedCancellable, move |s, c| {
            Box::pin(async move { s.raw::<M>(c, &sql, params).await })
        })
        .await
    }

    /// Raw SQL returning its rows as they are.
    pub async fn raw_rows(&self, sql: impl Into<String>, params: Vec<Value>) -> Result<Vec<Row>> {
        let sql = sql.into();
        self.call(Mode::UntrackedCancellable, move |s, c| {
            Box::pin(async move { s.raw_rows(c, &sql, params).await })
        })
        .await
    }

    /// Raw SQL returning its rows, run on its own when the session has no transaction open
    /// (autocommit, as on a plain connection): no BEGIN, and no ROLLBACK when the session ends.
    /// Whatever it changes is committed at once, beyond the reach of a later rollback; inside an
    /// open transaction (or with changes pending, flushed first) it joins the transaction. For
    /// statements that only read: health checks, reports. SQL that does not start with
    /// `SELECT`, `WITH`, `VALUES`, `TABLE` or `SHOW` is treated as [`raw_rows`](Self::raw_rows)
    /// treats it for the session's bookkeeping.
    pub async fn raw_rows_autocommit(
        &self,
        sql: impl Into<String>,
        params: Vec<Value>,
    ) -> Result<Vec<Row>> {
        let sql = sql.into();
        let mode = if actor_orm_core::leaves_transaction_alone(&sql) {
            Mode::Autocommit
        } else {
            Mode::UntrackedCancellable
        };
        self.call(mode, move |s, c| {
            Box::pin(async move { s.raw_rows_autocommit(c, &sql, params).await })
        })
        .await
    }

    /// Raw SQL returning how many rows it affected.
    pub async fn raw_execute(&self, sql: impl Into<String>, params: Vec<Value>) -> Result<u64> {
        let sql = sql.into();
        self.call(Mode::UntrackedCancellable, move |s, c| {
            Box::pin(async move { s.raw_execute(c, &sql, params).await })
        })
        .await
    }

    /// Runs `f` inside the session actor with its state and connection: several operations with
    /// no message hop between them. A panic in `f` ends the session (its connection is
    /// reclaimed and reset by the pool).
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut SessionState, &'a Connection) -> BoxFuture<'a, Result<T>>
            + Send
            + 'static,
    {
        self.call(Mode::Untracked, f).await
    }

    // ----- ending -----

    /// Ends the session now: uncommitted work is rolled back and the connection returned.
    /// Returns once the pool has it back. Other clones of this handle then get
    /// [`Error::SessionClosed`].
    pub async fn close(mut self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        // Only the last handle may let the actor serve another session (with clones left, it
        // stops, and they get `SessionClosed`); its own drop then sends nothing more.
        let last = match Arc::get_mut(&mut self.inner) {
            Some(handle) => {
                handle.closed = true;
                true
            }
            None => false,
        };
        let close = SessionMsg::Close {
            reply: Some(reply),
            last,
        };
        if self.inner.actor.send_message(close).is_ok() {
            let _ = rx.await;
        }
        Ok(())
    }

    /// Stops the actor the way ractor stops one (after the message it is running, without the
    /// session's own close): the pool then reclaims the connection from the death notice. For
    /// fault tests.
    #[doc(hidden)]
    pub fn stop_actor(&self) {
        self.inner.actor.stop(Some("stopped by request".into()));
    }

    /// Aborts the session at once, as a crash would, even mid-statement. The pool reclaims its
    /// connection and resets it; nothing uncommitted is kept.
    pub fn kill(&self) {
        self.inner.actor.kill();
    }
}
