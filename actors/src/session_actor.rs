//! The session actor: owns a [`SessionState`] (identity map, unit of work, transaction) and,
//! from its first statement until it ends, one leased connection. It runs one message at a
//! time, so nothing inside needs a lock. Every operation is a message: once sent, it runs to
//! completion inside the actor even if the caller stops waiting for the reply.

use std::panic::Location;
use std::sync::Arc;

use actor_orm_core::{Connection, Error, Result, SessionState, TxState};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::books::{Lease, Requester};
use crate::job::{Job, Outcome, lost};
use crate::label::{Label, NextLabel, span_for};
use crate::link::PoolLink;
use crate::pool::Pool;
use crate::session::Session;

pub(crate) type Local = Box<dyn FnOnce(&mut SessionState) + Send>;

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

pub(crate) struct SessionActor;

pub(crate) struct SessionArgs {
    pool: PoolLink,
    label: Label,
    dirty_check: bool,
    n_plus_one: actor_orm_core::NPlusOne,
    reset_timeout: std::time::Duration,
    statement_timeout: Option<std::time::Duration>,
    sandbox: bool,
}

pub(crate) struct SessionCtx {
    core: SessionState,
    lease: Option<Lease>,
    /// Which read replica the lease is from (`None`: the primary).
    from_replica: Option<usize>,
    pool: PoolLink,
    label: Label,
    span: tracing::Span,
    /// The pool has ordered this actor stopped (`max_session_lifetime`): it must not be kept
    /// as a spare.
    condemned: bool,
    /// The label of the next session, once this actor is a spare and has been taken.
    next: Arc<NextLabel>,
    /// The pool's `dirty_check` setting, for every session this actor serves.
    dirty_check: bool,
    /// The pool's `n_plus_one` setting, likewise.
    n_plus_one: actor_orm_core::NPlusOne,
    /// The pool's `reset_timeout`: how long a cancel request may take.
    reset_timeout: std::time::Duration,
    /// The pool's `statement_timeout`: how long one statement may run.
    statement_timeout: Option<std::time::Duration>,
    /// The test sandbox: the connection is held one transaction (or one statement outside a
    /// transaction) at a time, so that concurrent sessions take turns on it.
    sandbox: bool,
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
        core.set_n_plus_one(args.n_plus_one);
        Ok(SessionCtx {
            core,
            lease: None,
            pool: args.pool,
            from_replica: None,
            span: span_for(&args.label),
            label: args.label,
            condemned: false,
            next: Arc::default(),
            dirty_check: args.dirty_check,
            n_plus_one: args.n_plus_one,
            reset_timeout: args.reset_timeout,
            statement_timeout: args.statement_timeout,
            sandbox: args.sandbox,
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
            SessionMsg::Db(job) => {
                ctx.run(myself.get_cell(), job).instrument(span).await;
                ctx.end_sandbox_turn();
            }
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
                ctx.end_sandbox_turn();
                let _ = reply.send(r);
            }
            SessionMsg::Acquire(reply) => {
                let r = ctx.acquire(myself.get_cell()).instrument(span).await;
                let _ = reply.send(r);
            }
            SessionMsg::Rollback(reply) => {
                // Boxed: a rollback's state (a statement's) would sit in every idle session.
                let r = Box::pin(ctx.rollback()).instrument(span).await;
                ctx.end_sandbox_turn();
                let _ = reply.send(r);
            }
        }
        Ok(())
    }
}

impl SessionCtx {
    async fn connection(&mut self, me: ractor::ActorCell) -> Result<Arc<Connection>> {
        self.connection_for(me, false).await
    }

    /// The session's connection; for a read before the session's first write
    /// (`route_read`), a replica's that has replayed the session's causal token when the pool
    /// has one. A write after such reads hands the replica's connection back and takes the
    /// primary's.
    async fn connection_for(
        &mut self,
        me: ractor::ActorCell,
        route_read: bool,
    ) -> Result<Arc<Connection>> {
        if self.from_replica.is_some() && !route_read && !self.core.may_be_open() {
            self.hand_back_replica();
        }
        if let Some(lease) = &self.lease {
            if !lease.conn.is_closed() || self.core.may_be_open() {
                return Ok(lease.conn.clone());
            }
            // The socket closed while the session held it with no transaction open (a server
            // restart, a terminated backend): nothing of the session's is lost and nothing will
            // be sent on it, so it is reported and another taken, unseen by the caller.
            tracing::info!("the session's idle connection closed; taking another");
            self.lose_connection();
        }
        // Boxed: a replica's check is a query, whose state would otherwise sit in every idle
        // session's task (3 KiB of its 10), replicas or not.
        if route_read
            && let Some(set) = self.pool.replicas.clone()
            && let Some(conn) = Box::pin(self.replica_connection(&me, &set)).await
        {
            return Ok(conn);
        }
        let requester = Requester {
            cell: me,
            label: self.label.clone(),
        };
        let checkout = self.pool.checkout(requester)?;
        let lease = match self.core.deadline() {
            // Dropping the checkout at the deadline takes the request out of the queue.
            // Boxed: a timer's state would sit in every idle session, deadline or not.
            Some(d) => Box::pin(tokio::time::timeout_at(
                tokio::time::Instant::from_std(d),
                checkout,
            ))
            .await
            .map_err(|_| Error::DeadlineExceeded {
                what: "no connection became free before the deadline".into(),
            })??,
            None => checkout.await?,
        };
        let conn = lease.conn.clone();
        self.lease = Some(lease);
        self.core.note_new_connection();
        Ok(conn)
    }

    /// When the next statement must end: the session's deadline, or sooner the pool's
    /// `statement_timeout` from now.
    fn statement_deadline(&self) -> Option<tokio::time::Instant> {
        let session = self.core.deadline().map(tokio::time::Instant::from_std);
        let statement = self
            .statement_timeout
            .map(|t| tokio::time::Instant::now() + t);
        match (session, statement) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A replica's connection that has replayed the session's causal token, if one in the
    /// rotation has (asked on the spot when not known); else `None`, counted as a primary read.
    async fn replica_connection(
        &mut self,
        me: &ractor::ActorCell,
        set: &crate::replica::ReplicaSet,
    ) -> Option<Arc<Connection>> {
        let token = crate::replica::Lsn(self.core.causal_lsn());
        for (i, replica) in set.candidates() {
            let requester = Requester {
                cell: me.clone(),
                label: self.label.clone(),
            };
            let Ok(checkout) = replica.link.checkout(requester) else {
                continue;
            };
            // Not for long: the primary can serve the read.
            let Ok(Ok(lease)) = tokio::time::timeout(set.wait, checkout).await else {
                continue;
            };
            if !replica.has_replayed(token) && !replica.check(&lease.conn, token).await {
                let clean = !lease.conn.was_interrupted() && !lease.conn.is_closed();
                replica.link.checkin(lease.id, clean);
                continue;
            }
            replica.served();
            let conn = lease.conn.clone();
            self.lease = Some(lease);
            self.from_replica = Some(i);
            self.core.note_new_connection();
            return Some(conn);
        }
        set.primary_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        None
    }

    /// The link the session's lease came from: a replica's or the primary's.
    fn lease_link(&self) -> &PoolLink {
        match (self.from_replica, &self.pool.replicas) {
            (Some(i), Some(set)) => &set.replicas[i].link,
            _ => &self.pool,
        }
    }

    /// Gives a replica's connection back, keeping everything of the session's (no transaction
    /// is open on it: reads there run outside one).
    fn hand_back_replica(&mut self) {
        self.return_lease(false);
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
            // A read before the session's first write may go to a read replica.
            let route_read = job.reads_only()
                && !job.untracked()
                && self.core.tx_state() == TxState::Idle
                && self.core.pending() == 0;
            // The first statement of a transaction carries its BEGIN in the same round trip. A
            // read may be run again if the connection turns out dead.
            let conn = if job.untracked() && !job.cancellable() {
                // User code in `run` may use the connection directly: open the transaction
                // first.
                // Boxed: rare, and its BEGIN's state would otherwise sit in every job's.
                Box::pin(self.connection_in_transaction(&me)).await
            } else if self.lease.is_none() && job.cancellable() {
                // Waiting for a connection: a caller who gives up takes the request out of the
                // pool's queue at once (dropping the checkout withdraws it).
                tokio::select! {
                    biased;
                    c = self.connection_for(me.clone(), route_read) => c,
                    () = job.gone() => return,
                }
            } else {
                self.connection_for(me.clone(), route_read).await
            };
            let conn = match conn {
                Ok(c) => c,
                Err(e) => return job.fail(e),
            };
            if job.abandoned() && job.cancellable() {
                // The caller gave up while this waited for a connection: nothing to run.
                return;
            }
            let deadline = self.statement_deadline();
            if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
                return job.fail(Error::DeadlineExceeded {
                    what: "the deadline passed before the statement was sent".into(),
                });
            }
            // A read with nothing to flush first sends nothing but reads.
            let pure_read = self.core.note_work(job.reads_only(), job.untracked());
            let may_retry = self.core.may_run_again(pure_read) && attempts < 3;
            match job
                .run(
                    &mut self.core,
                    &conn,
                    may_retry,
                    self.reset_timeout,
                    deadline,
                )
                .await
            {
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
                Outcome::ServerReadOnly => self.server_read_only(),
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
            self.condemned |= !self.lease_link().broken(lease.id);
            self.from_replica = None;
        }
        self.core.mark_failed();
    }

    /// A write was refused because the server takes none now. In a pool that asked for a
    /// writable server (`target_session_attrs=read-write`) this one was the primary and is not
    /// any more: its connection is discarded and every other open now retired (the pool's
    /// drain), so the next connections find the new primary.
    fn server_read_only(&mut self) {
        if self.from_replica.is_some() || !self.pool.wants_writes() {
            return;
        }
        tracing::warn!(
            "the server refused a write as read-only (25006): it is no longer the primary; \
             retiring every connection to it so that new ones find the primary"
        );
        self.lose_connection();
        let (reply, _) = tokio::sync::oneshot::channel();
        let _ = self
            .pool
            .actor
            .send_message(crate::supervisor::PoolMsg::Drain(reply));
    }

    /// Forgets everything of the session that ended (which has given its connection back), so
    /// that the actor can serve another.
    fn wipe(&mut self) {
        debug_assert!(self.lease.is_none());
        self.core = SessionState::new();
        self.core.set_dirty_check(self.dirty_check);
        self.core.set_n_plus_one(self.n_plus_one);
    }

    async fn commit(&mut self, me: ractor::ActorCell) -> Result<()> {
        if self.core.tx_state() == TxState::Idle && self.core.pending() == 0 {
            // No transaction open and nothing waits: nothing to commit. What reads loaded is
            // forgotten, as after any commit.
            self.core.abandon();
            return Ok(());
        }
        if self.lease.is_none() && self.core.tx_state() != TxState::Idle {
            // The connection went away mid-transaction: the server rolled it back.
            self.core.abandon();
            return Err(Error::TransactionAborted);
        }
        if self
            .core
            .deadline()
            .is_some_and(|d| d <= std::time::Instant::now())
            && !self.core.only_read()
        {
            // Never cut half-way: a COMMIT with no time left is not sent at all.
            return Err(Error::DeadlineExceeded {
                what: "the deadline passed before COMMIT: it was not sent, and the transaction \
                       is still open (roll it back, or clear the deadline and commit)"
                    .into(),
            });
        }
        if self.core.only_read()
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
        if matches!(&r, Err(e) if e.code() == Some(crate::job::READ_ONLY)) {
            self.server_read_only();
        }
        if r.is_ok() && self.pool.replicas.is_some() {
            // The causal token: where the primary's WAL stands now, past this commit. Unknown,
            // the session reads from the primary alone.
            // The insert position is past this session's commit record even when
            // `synchronous_commit` is off (the write position, `pg_current_wal_lsn()`, may not be).
            let lsn = crate::replica::lsn(&conn, "SELECT pg_current_wal_insert_lsn()::text").await;
            self.core.read_after(lsn.map_or(u64::MAX, |l| l.0));
        }
        r
    }

    async fn rollback(&mut self) -> Result<()> {
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
        r
    }

    /// Gives the connection back: the lease ends as a checkin, not a reclaim. Uncommitted work
    /// is dropped and a ROLLBACK sent ahead of whatever comes next on the connection (or, after
    /// an interrupted statement, left to the pool's full reset). A dead connection is reported
    /// as broken instead.
    fn release(&mut self) {
        if self.lease.is_none() {
            return;
        }
        let may_be_open = self.core.may_be_open();
        self.core.abandon();
        self.return_lease(may_be_open);
    }

    /// Ends the lease (to the pool it came from): a dead connection reported as broken, a live
    /// one checked in — a ROLLBACK sent ahead of whatever comes next when a transaction
    /// `may_be_open`, and after an interrupted statement the pool's full reset instead.
    fn return_lease(&mut self, may_be_open: bool) {
        let Some(lease) = self.lease.take() else {
            self.from_replica = None;
            return;
        };
        let link = self.lease_link().clone();
        self.from_replica = None;
        if lease.conn.is_closed() {
            self.condemned |= !link.broken(lease.id);
            return;
        }
        // A statement abandoned mid-flight needs the pool's full reset (cancel, then ROLLBACK
        // answered within reset_timeout). Otherwise a ROLLBACK is sent without waiting here; the
        // pool hands the connection out again only once its answer is in (see `end_lease`).
        let clean = !lease.conn.was_interrupted()
            && (!may_be_open || lease.conn.send_and_forget("ROLLBACK"));
        self.condemned |= !link.checkin(lease.id, clean);
    }

    /// In the test sandbox, a session holds the connection one transaction (or one statement
    /// outside a transaction) at a time: with none open on the server, the lease goes back
    /// and the next session takes its turn. What the session keeps (identity map, pending
    /// changes) stays.
    fn end_sandbox_turn(&mut self) {
        if self.sandbox && self.lease.is_some() && !self.core.may_be_open() {
            self.return_lease(false);
        }
    }

    /// Checks a connection out now, if the session has none.
    async fn acquire(&mut self, me: ractor::ActorCell) -> Result<()> {
        self.connection(me).await.map(drop)
    }
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
        n_plus_one: pool.config().n_plus_one,
        reset_timeout: pool.config().reset_timeout,
        statement_timeout: pool.config().statement_timeout,
        sandbox: pool.config().sandbox,
    };
    let (actor, _) = Actor::spawn_linked(None, SessionActor, args, supervisor)
        .await
        .map_err(|e| Error::PoolClosed {
            reason: format!("could not start a session: {e}"),
        })?;
    Ok(Session::new(actor, label, pool))
}
