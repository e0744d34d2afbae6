//! A stream as a session job: it holds the session (and its connection) until the consumer has
//! every row or drops the stream (see `actor_orm_core::stream` for the design).

use std::time::Duration;

use actor_orm_core::{
    Connection, Error, Result, SessionState, StreamMessage, StreamOptions, StreamSender, Streamable,
};
use tokio::sync::oneshot;

use crate::job::{BoxFuture, Job, Outcome};

pub(crate) struct StreamJob<Q: Streamable> {
    pub(crate) query: Q,
    pub(crate) options: StreamOptions,
    pub(crate) out: StreamSender<Q::Item>,
    /// Told once the cursor is open (or why it could not be).
    pub(crate) opened: Option<oneshot::Sender<Result<()>>>,
}

impl<Q: Streamable> Job for StreamJob<Q> {
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
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let this = &mut *self;
            let opened = &mut this.opened;
            let result = state
                .stream(
                    conn,
                    &this.query,
                    this.options,
                    &this.out,
                    cancel_limit,
                    || {
                        if let Some(opened) = opened.take() {
                            let _ = opened.send(Ok(()));
                        }
                    },
                )
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
