//! Streaming reads: a query's rows one batch at a time, with bounded memory.
//!
//! # Design
//!
//! A session runs one operation at a time and answers each with one reply; a stream is an
//! operation that answers many times. So a stream is one long operation of the session: while
//! it is open, the session's other operations wait behind it (they queue in its mailbox, as
//! behind any slow statement), and it uses the session's one connection, never a second.
//!
//! The query runs as one statement (`query_raw`, values bound as parameters) whose rows are
//! read as they arrive:
//! - **Handing over.** Once the statement has begun answering, the session hands its answer —
//!   tokio-postgres's row stream — to the consumer, which reads and decodes each row itself
//!   ([`QueryStream`]), and waits, holding the connection, until the consumer lets go of it and
//!   says how (read to the end, failed, or dropped part-way). No row is copied or batched on the
//!   way. (Models to be remembered are instead decoded by the session and sent in batches of up
//!   to 256 through a bounded channel of two.)
//! - **Back-pressure.** tokio-postgres reads the socket only as fast as the consumer takes rows,
//!   and the server blocks on its full socket buffer: memory stays bounded whatever the size of
//!   the result.
//! - **Dropping part-way.** When the consumer drops the stream (or a row does not decode), it
//!   first reads what has already arrived: a statement whose whole answer is in needs nothing
//!   more. Otherwise the session sends a cancel request for the statement (over a connection of
//!   its own, and waits until the server has acted on it); the rows still on their way are
//!   discarded as they arrive, behind the scenes. The session's next statement goes out at
//!   once and is answered as soon as the server has stopped. A stream inside the session's
//!   transaction runs behind a savepoint, rolled back to when the stream is stopped, so the
//!   cancel does not abort the transaction.
//! - **Transactions.** Inside the session's transaction (or with changes pending, which are
//!   flushed first, or for a query that locks rows) the stream runs in the transaction and sees
//!   its writes. With no transaction open, a plain read runs on its own, as any read does.
//! - **Errors.** A database error part-way (a division by zero in row 500,000) ends the stream
//!   with that error after the rows before it, and, as any failed statement, aborts a
//!   transaction the stream ran in. A value that does not decode ends the stream with a typed
//!   error naming its column (the statement is then stopped as for a dropped stream); the
//!   transaction is unharmed.
//!
//! A server-side cursor (`DECLARE` and `FETCH`) was measured first: PostgreSQL materialises
//! each `FETCH`'s rows before sending them, which made a 1,000,000-row stream ~1.4× slower
//! than one statement. tokio-postgres offers protocol-level portals (`Execute` with a row
//! limit) only through its `Transaction`, which borrows the client and cannot live in a session.
//!
//! Streamed models do not enter the identity map unless [`StreamOptions::remember`] asks for it:
//! the point of a stream is not to keep what it read.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use sea_query::Values;
use tokio::sync::mpsc;
use tokio_postgres::{Row, RowStream};

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::query::{Project, Select, SelectPair, Selection};
use crate::session::{SessionState, TxState};

/// A query that can be streamed: [`Select`] (models), [`SelectPair`] (a join) and [`Project`]
/// (columns and aggregates).
pub trait Streamable: Send + Sync + 'static {
    /// What one row decodes to.
    type Item: Send + 'static;
    /// The SQL and its bound values.
    fn statement(&self) -> (String, Values);
    /// Whether running it cannot change anything (see [`Select::reads_only`]).
    fn is_read_only(&self) -> bool;
    /// What decodes one row (run by the consumer, as it takes each row).
    fn decoder(&self) -> impl Fn(&Row) -> Result<Self::Item> + Send + Sync + 'static;
    /// Records a decoded item in the session's identity map (models only; others ignore it).
    fn remember(&self, _state: &mut SessionState, _item: &Self::Item) -> Result<()> {
        Ok(())
    }
}

impl<M: Model> Streamable for Select<M> {
    type Item = M;
    fn statement(&self) -> (String, Values) {
        self.build()
    }
    fn is_read_only(&self) -> bool {
        self.reads_only()
    }
    fn decoder(&self) -> impl Fn(&Row) -> Result<M> + Send + Sync + 'static {
        let positions = crate::model::in_order(M::meta().columns.len());
        move |row| M::from_row(row, &positions)
    }
    fn remember(&self, state: &mut SessionState, item: &M) -> Result<()> {
        state.identity_mut().insert(item.key()?, item.clone());
        Ok(())
    }
}

impl<M: Model, N: Model> Streamable for SelectPair<M, N> {
    type Item = (M, Option<N>);
    fn statement(&self) -> (String, Values) {
        self.build()
    }
    fn is_read_only(&self) -> bool {
        self.reads_only()
    }
    fn decoder(&self) -> impl Fn(&Row) -> Result<(M, Option<N>)> + Send + Sync + 'static {
        SelectPair::<M, N>::decode
    }
}

impl<S: Selection + Clone + Sync> Streamable for Project<S> {
    type Item = S::Output;
    fn statement(&self) -> (String, Values) {
        self.build()
    }
    fn is_read_only(&self) -> bool {
        // A projection's expressions may call functions the ORM cannot see through.
        false
    }
    fn decoder(&self) -> impl Fn(&Row) -> Result<S::Output> + Send + Sync + 'static {
        let selection = self.selection.clone();
        move |row| selection.decode(row, 0)
    }
}

/// How a stream reads: whether streamed models enter the identity map.
///
/// ```
/// use actor_orm_core::StreamOptions;
///
/// let options = StreamOptions::new().remember(true);
/// assert!(options.remembers());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamOptions {
    remember: bool,
}

impl StreamOptions {
    /// Streamed models are not remembered.
    pub const fn new() -> Self {
        StreamOptions { remember: false }
    }

    /// Whether streamed models enter the session's identity map (as a read's do), so that a
    /// later `get` or `save` of one of them knows it. Off by default; only models are
    /// remembered.
    pub const fn remember(mut self, on: bool) -> Self {
        self.remember = on;
        self
    }

    /// Whether streamed models enter the identity map.
    pub const fn remembers(&self) -> bool {
        self.remember
    }
}

/// What travels from the session to the consumer.
#[derive(Debug)]
pub enum StreamMessage<T> {
    /// Items the session made (models it decoded to remember them, COPY data), in order.
    Items(Vec<T>),
    /// The statement's answer itself, for the consumer to read (and nothing else follows).
    Handover(HandedOver<T>),
    /// The stream failed; nothing follows.
    Failed(Error),
    /// Every row has been delivered.
    End,
}

/// A statement's answer handed to the consumer of a stream (see [`StreamMessage::Handover`]).
pub struct HandedOver<T> {
    pub(crate) direct: crate::handover::Direct<T>,
}

impl<T> std::fmt::Debug for HandedOver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandedOver")
    }
}

/// The session's end of a stream: where decoded rows go.
pub type StreamSender<T> = mpsc::Sender<StreamMessage<T>>;

/// Rows sent to the consumer at a time.
pub(crate) const CHUNK: usize = 256;

/// Batches of rows in flight between the session and the consumer.
const CHANNEL_BATCHES: usize = 2;

/// A channel for a stream: the session's end and the consumer's.
pub fn stream_channel<T>() -> (StreamSender<T>, QueryStream<T>) {
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    (
        tx,
        QueryStream {
            rx,
            items: Vec::new().into_iter(),
            direct: None,
            done: false,
        },
    )
}

/// How a stream ended, as the session sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Every row was delivered.
    Finished,
    /// The consumer dropped the stream part-way; the statement was cancelled.
    Dropped,
}

/// The consumer's end of a stream: decoded rows in order, then `None`. An error ends it.
///
/// Usually the session hands the statement's answer over and rows are decoded here, as they
/// are taken; models to be remembered arrive decoded, in batches.
pub struct QueryStream<T> {
    rx: mpsc::Receiver<StreamMessage<T>>,
    items: std::vec::IntoIter<T>,
    /// The statement's answer, when the session handed it over.
    direct: Option<crate::handover::Direct<T>>,
    done: bool,
}

impl<T> std::fmt::Debug for QueryStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryStream")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T> QueryStream<T> {
    /// The next row, `None` at the end. After an error, `None`.
    pub async fn next(&mut self) -> Option<Result<T>> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        loop {
            if let Some(direct) = self.direct.as_mut() {
                let item = std::task::ready!(direct.poll_item(cx));
                if !matches!(item, Some(Ok(_))) {
                    self.direct = None;
                    self.done = true;
                }
                return Poll::Ready(item);
            }
            if let Some(item) = self.items.next() {
                return Poll::Ready(Some(Ok(item)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match std::task::ready!(self.rx.poll_recv(cx)) {
                Some(StreamMessage::Items(items)) => self.items = items.into_iter(),
                Some(StreamMessage::Handover(handed)) => self.direct = Some(handed.direct),
                Some(StreamMessage::Failed(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Some(StreamMessage::End) => self.done = true,
                // The session went away without finishing (killed, or its actor failed).
                None => {
                    self.done = true;
                    return Poll::Ready(Some(Err(Error::SessionClosed)));
                }
            }
        }
    }
}

// No field is pinned: items are only moved out of their batch.
impl<T> Unpin for QueryStream<T> {}

impl<T> Stream for QueryStream<T> {
    type Item = Result<T>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        self.get_mut().poll_item(cx)
    }
}

/// A statement whose rows are read one at a time: its rows, and the connection's note that it
/// is owed an answer (dropped before the end, the statement counts as abandoned, and the
/// connection as interrupted until a later statement is answered).
pub(crate) struct RowsInFlight<'c, S = RowStream> {
    pub(crate) rows: Pin<Box<S>>,
    pub(crate) mark: crate::flight::InFlight<'c>,
    pub(crate) started: Option<std::time::Instant>,
    pub(crate) count: u64,
    /// The rows ended with a lost connection, not an answer.
    pub(crate) lost: bool,
}

impl<S> RowsInFlight<'_, S> {
    /// The statement has been read to its end.
    pub(crate) fn finish(self, conn: &Connection, sql: &str) {
        conn.log_rows(self.started, sql, self.count);
        self.mark.done(!self.lost, ());
    }
}

impl<S, X> RowsInFlight<'_, S>
where
    S: Stream<Item = std::result::Result<X, tokio_postgres::Error>>,
{
    /// Reads, without waiting, what has already arrived: `None` while the statement runs, else
    /// whether it failed (see [`crate::handover::ended_already`]).
    pub(crate) fn ended_already(&mut self) -> Option<bool> {
        let ended = crate::handover::ended_already(self.rows.as_mut());
        self.lost |= ended == Some(crate::handover::Ending::Lost);
        ended.map(|e| e != crate::handover::Ending::Ok)
    }

    pub(crate) fn poll_row(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<X>>> {
        let row = std::task::ready!(self.rows.as_mut().poll_next(cx)).map(|r| {
            r.map_err(|e| {
                let e = Error::from(e);
                self.lost |= e.as_db_error().is_none();
                e
            })
        });
        Poll::Ready(row)
    }
}

/// The savepoint a stream inside a transaction runs behind.
pub(crate) const SAVEPOINT: &str = "actor_orm_stream";

/// What one turn of reading rows came to.
pub(crate) enum Fill {
    /// Rows to send (a full chunk, or what was there).
    Chunk,
    /// The statement ended: send what there is, and end.
    End,
    /// The statement failed: send what there is, then the error.
    Failed(Error),
    /// The consumer went away.
    Gone,
}

/// Reads every row already here into `chunk`, up to [`CHUNK`]; when none is ready, what there
/// is goes to the consumer (a slow query's rows are not held back), and with nothing to send,
/// waits for rows or for the consumer to go away (`gone`).
pub(crate) async fn next_chunk<S, X>(
    rows: &mut RowsInFlight<'_, S>,
    mut gone: Pin<&mut impl std::future::Future<Output = ()>>,
    chunk: &mut Vec<X>,
) -> Fill
where
    S: Stream<Item = std::result::Result<X, tokio_postgres::Error>>,
{
    std::future::poll_fn(|cx| {
        loop {
            match rows.poll_row(cx) {
                Poll::Ready(Some(Ok(row))) => {
                    chunk.push(row);
                    if chunk.len() == CHUNK {
                        return Poll::Ready(Fill::Chunk);
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Fill::Failed(e)),
                Poll::Ready(None) => return Poll::Ready(Fill::End),
                Poll::Pending if !chunk.is_empty() => return Poll::Ready(Fill::Chunk),
                Poll::Pending => {
                    return std::future::Future::poll(gone.as_mut(), cx).map(|()| Fill::Gone);
                }
            }
        }
    })
    .await
}

/// Why the session stopped reading before the end.
pub(crate) enum Stop {
    /// The consumer dropped the stream.
    Dropped,
    /// A row did not decode.
    Bad(Error),
}

impl SessionState {
    /// Streams the rows of `query` to `out` (see the module docs): pending changes are flushed
    /// first; `opened` is called once the server has begun answering, before any row is sent.
    /// `cancel_limit` bounds the cancel request of a stream stopped part-way. Returns how the
    /// stream ended; an error is returned, not sent (the caller decides where it goes).
    pub async fn stream<Q: Streamable>(
        &mut self,
        conn: &Connection,
        query: &Q,
        options: StreamOptions,
        out: &StreamSender<Q::Item>,
        cancel_limit: std::time::Duration,
        opened: impl FnOnce(),
    ) -> Result<StreamEnd> {
        self.flush(conn).await?;
        let (sql, values) = query.statement();
        let in_transaction = self.tx_state() != TxState::Idle || !query.is_read_only();
        let mut rows = if in_transaction {
            self.in_transaction(conn, async {
                let savepoint = format!("SAVEPOINT {SAVEPOINT}");
                let (saved, rows) = crate::session::join(
                    conn.batch_known(&savepoint),
                    conn.start_rows(&sql, &values),
                )
                .await;
                saved?;
                rows
            })
            .await?
        } else {
            conn.start_rows(&sql, &values).await?
        };
        opened();
        if !options.remember {
            // The consumer reads the statement's answer itself; the session waits for its
            // verdict, holding the connection.
            let RowsInFlight {
                rows: raw,
                mark,
                started,
                ..
            } = rows;
            let decoder = query.decoder();
            let (tell, verdict) = tokio::sync::oneshot::channel();
            let source = crate::handover::Handed {
                raw,
                map: move |row: Row| decoder(&row),
            };
            let handed = HandedOver {
                direct: crate::handover::Direct::new(Box::new(source), tell),
            };
            // A consumer already gone drops the message, and with it tells the verdict.
            drop(out.send(StreamMessage::Handover(handed)).await);
            let verdict = verdict.await.ok();
            return self
                .end_handed(
                    conn,
                    verdict,
                    mark,
                    started,
                    &sql,
                    in_transaction,
                    cancel_limit,
                )
                .await;
        }
        let read = self.read_rows(query, &mut rows, out).await;
        self.end_streaming(conn, rows, &sql, read, in_transaction, cancel_limit, out)
            .await
    }

    /// Ends a statement whose answer the consumer read, by the consumer's verdict: nothing more
    /// when the answer had ended (the savepoint released; a failure the consumer saw aborts the
    /// transaction, as any failed statement does), a cancel when it may still be running (and
    /// the savepoint rolled back to).
    #[allow(clippy::too_many_arguments)]
    async fn end_handed(
        &mut self,
        conn: &Connection,
        verdict: Option<crate::handover::Verdict>,
        mark: crate::flight::InFlight<'_>,
        started: Option<std::time::Instant>,
        sql: &str,
        in_transaction: bool,
        cancel_limit: std::time::Duration,
    ) -> Result<StreamEnd> {
        use crate::handover::Ending;
        let (ended, complete, count) =
            verdict.map_or((None, false, 0), |v| (v.ended, v.complete, v.count));
        let end = if complete {
            StreamEnd::Finished
        } else {
            StreamEnd::Dropped
        };
        let undo = match ended {
            Some(Ending::Ok) => {
                conn.log_rows(started, sql, count);
                mark.done(true, ());
                false
            }
            Some(Ending::Failed) => {
                mark.done(true, ());
                if complete {
                    // The consumer saw the error: the transaction is aborted, as by any failed
                    // statement.
                    self.mark_failed();
                    return Ok(end);
                }
                true
            }
            Some(Ending::Lost) => {
                mark.done(false, ());
                return Err(Error::ConnectionLost {
                    reason: "the connection was lost while a stream was read".into(),
                    cause: None,
                });
            }
            None => {
                // Still running: abandoned (tokio-postgres discards the rest of its answer as it
                // arrives) and cancelled on the server.
                drop(mark);
                conn.cancel_running(cancel_limit).await?;
                true
            }
        };
        self.end_savepoint(conn, in_transaction, undo).await?;
        Ok(end)
    }

    /// Ends the savepoint a stream inside a transaction ran behind: released, or first rolled
    /// back to (`undo`: the statement was cancelled, or failed unseen). Nothing outside one.
    async fn end_savepoint(
        &mut self,
        conn: &Connection,
        in_transaction: bool,
        undo: bool,
    ) -> Result<()> {
        if !in_transaction {
            return Ok(());
        }
        let sql = if undo {
            format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}")
        } else {
            format!("RELEASE SAVEPOINT {SAVEPOINT}")
        };
        let ended = conn.batch_known(&sql).await;
        ended.map_err(|e| self.note_failure(e))
    }

    /// Ends a stream's statement however its reading ended: read to the end (the savepoint
    /// released and `End` sent), stopped part-way (cancelled, and the savepoint rolled back to),
    /// or failed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn end_streaming<S, X, T>(
        &mut self,
        conn: &Connection,
        rows: RowsInFlight<'_, S>,
        sql: &str,
        read: Result<Option<Stop>>,
        in_transaction: bool,
        cancel_limit: std::time::Duration,
        out: &StreamSender<T>,
    ) -> Result<StreamEnd>
    where
        S: Stream<Item = std::result::Result<X, tokio_postgres::Error>>,
    {
        let stop = match read {
            Ok(None) => {
                rows.finish(conn, sql);
                self.end_savepoint(conn, in_transaction, false).await?;
                return Ok(if out.send(StreamMessage::End).await.is_ok() {
                    StreamEnd::Finished
                } else {
                    StreamEnd::Dropped
                });
            }
            Ok(Some(stop)) => stop,
            Err(e) => {
                // The server failed the statement (or the connection went): it is over.
                rows.finish(conn, sql);
                return Err(self.note_failure(e));
            }
        };
        // Stopped part-way. A statement whose whole answer has arrived needs nothing more (and no
        // cancel request, which a pooler would have no server connection for: PgBouncer 1.18
        // can crash on such a one, pgbouncer#801).
        let mut rows = rows;
        let failed = match rows.ended_already() {
            Some(failed) => {
                rows.finish(conn, sql);
                failed
            }
            None => {
                // Still running: the statement is abandoned (tokio-postgres discards what is
                // left of its answer as it arrives) and cancelled on the server.
                drop(rows);
                conn.cancel_running(cancel_limit).await?;
                true
            }
        };
        // A cancel (if it came in time) failed the statement: back to before it.
        self.end_savepoint(conn, in_transaction, failed).await?;
        match stop {
            Stop::Dropped => Ok(StreamEnd::Dropped),
            Stop::Bad(e) => Err(e),
        }
    }

    /// Reads rows until the end (`None`), a reason to stop, or a database error, decoding and
    /// remembering each and sending them to the consumer in batches.
    async fn read_rows<Q: Streamable>(
        &mut self,
        query: &Q,
        rows: &mut RowsInFlight<'_>,
        out: &StreamSender<Q::Item>,
    ) -> Result<Option<Stop>> {
        let decode = query.decoder();
        let mut gone = std::pin::pin!(out.closed());
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            let fill = next_chunk(rows, gone.as_mut(), &mut chunk).await;
            rows.count += chunk.len() as u64;
            let delivered = self.deliver(query, &decode, chunk, out).await;
            match (fill, delivered) {
                // The rows before a failure still reach the consumer.
                (Fill::Failed(e), _) => return Err(e),
                (Fill::Gone, _) | (_, Ok(false)) => return Ok(Some(Stop::Dropped)),
                (_, Err(e)) => return Ok(Some(Stop::Bad(e))),
                (Fill::End, Ok(true)) => return Ok(None),
                (Fill::Chunk, Ok(true)) => {}
            }
        }
    }

    /// Decodes and remembers rows and sends them to the consumer. Whether the consumer is still
    /// there; a row that does not decode is an error, after the rows before it.
    async fn deliver<Q: Streamable>(
        &mut self,
        query: &Q,
        decode: &impl Fn(&Row) -> Result<Q::Item>,
        chunk: Vec<Row>,
        out: &StreamSender<Q::Item>,
    ) -> Result<bool> {
        if chunk.is_empty() {
            return Ok(!out.is_closed());
        }
        let mut items = Vec::with_capacity(chunk.len());
        let mut failure = None;
        for row in &chunk {
            match decode(row).and_then(|item| {
                query.remember(self, &item)?;
                Ok(item)
            }) {
                Ok(item) => items.push(item),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let sent = items.is_empty() || out.send(StreamMessage::Items(items)).await.is_ok();
        match failure {
            Some(e) => Err(e),
            None => Ok(sent),
        }
    }
}
