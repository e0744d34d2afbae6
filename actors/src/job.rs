//! The session's jobs: work sent to the actor with its reply channel, how each kind of work
//! behaves when its caller stops waiting ([`Mode`]), and how it ended ([`Outcome`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actor_orm_core::{Connection, Error, Result, SessionState};
use tokio::sync::oneshot;

/// Runs a one-shot closure as a job (which the session never runs twice).
pub(crate) fn once<T, F>(
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
pub(crate) fn lost<T>(conn: &Connection, result: &Result<T>) -> bool {
    conn.is_closed() || matches!(result, Err(e) if e.is_connection_lost())
}

/// A boxed future borrowing the session for `'a`, as [`Session::run`](crate::Session::run) closures return.
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
    /// Resolves when the caller stops waiting for the reply.
    fn gone(&mut self) -> BoxFuture<'_, ()>;
    /// Runs to the end, or — when `cancellable` and the caller stops waiting, or `deadline`
    /// passes — until the statement is cancelled on the server. With `may_retry`, a lost
    /// connection hands the job back unanswered, to run again on another connection.
    fn run<'a>(
        self: Box<Self>,
        state: &'a mut SessionState,
        conn: &'a Connection,
        may_retry: bool,
        cancel_limit: Duration,
        deadline: Option<tokio::time::Instant>,
    ) -> BoxFuture<'a, Outcome>;
    /// Replies with an error without running (no connection could be had).
    fn fail(self: Box<Self>, error: Error);
}

/// SQLSTATE `read_only_sql_transaction`: a write on a server that takes none (a standby, or a
/// primary demoted or fenced read-only).
pub(crate) const READ_ONLY: &str = "25006";

/// How a job ended, as far as the session's bookkeeping cares.
pub(crate) enum Outcome {
    Done,
    ConnectionLost,
    /// The caller went away mid-statement and the statement was cancelled (or abandoned).
    Cancelled,
    /// The server refused a write because it is read-only now (`25006`): a demoted primary.
    ServerReadOnly,
    /// The connection was found dead before the job could have had any effect; run it again.
    Retry(Box<dyn Job>),
}

/// Whether a caller that stops waiting cancels the statement on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
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
pub(crate) fn read_mode(reads_only: bool) -> Mode {
    if reads_only {
        Mode::Read
    } else {
        Mode::Cancellable
    }
}

pub(crate) struct Call<T, F> {
    pub(crate) f: F,
    pub(crate) mode: Mode,
    pub(crate) reply: oneshot::Sender<Result<T>>,
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

    fn gone(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.reply.closed())
    }

    fn run<'a>(
        mut self: Box<Self>,
        state: &'a mut SessionState,
        conn: &'a Connection,
        may_retry: bool,
        cancel_limit: Duration,
        deadline: Option<tokio::time::Instant>,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let work = (self.f)(state, conn);
            let mut late = false;
            let result = if self.mode.cancellable() {
                tokio::pin!(work);
                let limit = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    r = &mut work => Some(r),
                    () = self.reply.closed() => None,
                    () = limit => {
                        late = true;
                        None
                    }
                }
            } else {
                Some(work.await)
            };
            let Some(result) = result else {
                if late {
                    // Boxed: the cancel request's state is large and rarely needed.
                    let _ = Box::pin(conn.cancel_running(cancel_limit)).await;
                    let _ = self.reply.send(Err(Error::DeadlineExceeded {
                        what: "the statement ran past the deadline and was cancelled".into(),
                    }));
                    return Outcome::Cancelled;
                }
                // Nobody waits for the answer: stop the statement instead of letting it hold the
                // connection. The connection stays flagged as interrupted until a later statement
                // is answered (the cancel is only a request); the pool cancels again if this one
                // could not be sent, and discards the connection if no answer comes.
                // Boxed: the cancel request's state is large and rarely needed.
                let _ = Box::pin(conn.cancel_running(cancel_limit)).await;
                return Outcome::Cancelled;
            };
            let lost = matches!(&result, Err(e) if e.is_connection_lost());
            if lost && may_retry {
                return Outcome::Retry(self);
            }
            let read_only = matches!(&result, Err(e) if e.code() == Some(READ_ONLY));
            // The caller may have stopped waiting: then only the reply is lost.
            let _ = self.reply.send(result);
            if lost {
                Outcome::ConnectionLost
            } else if read_only {
                Outcome::ServerReadOnly
            } else {
                Outcome::Done
            }
        })
    }

    fn fail(self: Box<Self>, error: Error) {
        let _ = self.reply.send(Err(error));
    }
}
