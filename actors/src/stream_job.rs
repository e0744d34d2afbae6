//! A stream as a session job: it holds the session (and its connection) until the consumer has
//! every row or drops the stream (see `actor_orm_core::stream` for the design).

use std::time::Duration;

use actor_orm_core::{
    Connection, CopyFormat, Error, Result, SessionState, StreamEnd, StreamMessage, StreamOptions,
    StreamSender, Streamable,
};
use tokio::sync::oneshot;

use crate::job::{BoxFuture, Job, Outcome};

/// What a stream sends: the query's rows, or its result as COPY data.
pub(crate) trait StreamKind<Q: Streamable>: Copy + Send + Sync + 'static {
    /// What the consumer receives.
    type Item: Send + 'static;
    /// Runs the stream (see `SessionState::stream` and `SessionState::copy_out`).
    fn run<'a>(
        self,
        state: &'a mut SessionState,
        conn: &'a Connection,
        query: &'a Q,
        out: &'a StreamSender<Self::Item>,
        cancel_limit: Duration,
        opened: Box<dyn FnOnce() + Send + 'a>,
    ) -> BoxFuture<'a, Result<StreamEnd>>;
}

impl<Q: Streamable> StreamKind<Q> for StreamOptions {
    type Item = Q::Item;
    fn run<'a>(
        self,
        state: &'a mut SessionState,
        conn: &'a Connection,
        query: &'a Q,
        out: &'a StreamSender<Q::Item>,
        cancel_limit: Duration,
        opened: Box<dyn FnOnce() + Send + 'a>,
    ) -> BoxFuture<'a, Result<StreamEnd>> {
        Box::pin(state.stream(conn, query, self, out, cancel_limit, opened))
    }
}

impl<Q: Streamable> StreamKind<Q> for CopyFormat {
    type Item = bytes::Bytes;
    fn run<'a>(
        self,
        state: &'a mut SessionState,
        conn: &'a Connection,
        query: &'a Q,
        out: &'a StreamSender<bytes::Bytes>,
        cancel_limit: Duration,
        opened: Box<dyn FnOnce() + Send + 'a>,
    ) -> BoxFuture<'a, Result<StreamEnd>> {
        Box::pin(state.copy_out(conn, query, self, out, cancel_limit, opened))
    }
}

pub(crate) struct StreamJob<Q: Streamable, K: StreamKind<Q>> {
    pub(crate) query: Q,
    pub(crate) kind: K,
    pub(crate) out: StreamSender<K::Item>,
    /// Told once the statement has begun answering (or why it could not).
    pub(crate) opened: Option<oneshot::Sender<Result<()>>>,
}

impl<Q: Streamable, K: StreamKind<Q>> Job for StreamJob<Q, K> {
    fn untracked(&self) -> bool {
        false
    }

    fn reads_only(&self) -> bool {
        self.query.is_read_only()
    }

    fn abandoned(&self) -> bool {
        self.out.is_closed()
    }

    fn cancellable(&self) -> bool {
        true
    }

    fn gone(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.out.closed())
    }

    fn run<'a>(
        mut self: Box<Self>,
        state: &'a mut SessionState,
        conn: &'a Connection,
        may_retry: bool,
        cancel_limit: Duration,
        // A stream is bounded by the deadline only before it starts (see the session's `run`):
        // once its rows flow, the consumer decides how long it reads.
        _deadline: Option<tokio::time::Instant>,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let this = &mut *self;
            let opened = &mut this.opened;
            let on_open = Box::new(move || {
                if let Some(opened) = opened.take() {
                    let _ = opened.send(Ok(()));
                }
            });
            let result = this
                .kind
                .run(state, conn, &this.query, &this.out, cancel_limit, on_open)
                .await;
            let Err(e) = result else {
                return Outcome::Done;
            };
            let lost = e.is_connection_lost();
            if lost && may_retry && self.opened.is_some() {
                // Nothing was read: the stream starts again on another connection.
                return Outcome::Retry(self);
            }
            match self.opened.take() {
                Some(opened) => {
                    let _ = opened.send(Err(e));
                }
                None => {
                    let _ = self.out.send(StreamMessage::Failed(e)).await;
                }
            }
            if lost {
                Outcome::ConnectionLost
            } else {
                Outcome::Done
            }
        })
    }

    fn fail(mut self: Box<Self>, error: Error) {
        match self.opened.take() {
            Some(opened) => {
                let _ = opened.send(Err(error));
            }
            None => {
                let _ = self.out.try_send(StreamMessage::Failed(error));
            }
        }
    }
}
