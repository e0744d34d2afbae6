//! Handing a statement's answer to the consumer of a stream: the consumer reads tokio-postgres's
//! row stream itself (no copy of a row, no hop between tasks per batch), and tells the session
//! how it let go of it ([`Verdict`]); the session waits meanwhile, holding the connection, and
//! then ends the statement (a cancel when it was dropped while running).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// How the consumer let go of a handed-over answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// `Some` when the answer had ended (read to the end, or it had all arrived); `None` when
    /// the statement may still be running.
    pub(crate) ended: Option<Ending>,
    /// Whether the consumer took every row (rather than dropping the stream part-way).
    pub(crate) complete: bool,
    /// Rows read.
    pub(crate) count: u64,
}

/// How a statement's answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Every row, then the end.
    Ok,
    /// A database error (which aborts a transaction it ran in).
    Failed,
    /// The connection was lost.
    Lost,
}

/// One pull from a handed-over answer.
pub(crate) enum Pulled<T> {
    Item(T),
    /// A row that did not decode: the consumer stops there.
    Bad(Error),
    /// The statement failed, or the connection went; the answer is over.
    Failed(Error),
}

/// A handed-over answer, its type erased: the statement's own stream and what turns each of
/// its items into the consumer's.
pub(crate) trait Pull<T>: Send {
    fn pull(&mut self, cx: &mut Context<'_>) -> Poll<Option<Pulled<T>>>;
    /// Reads, without waiting, what has already arrived: `Some` when the answer has ended.
    fn ended_already(&mut self) -> Option<Ending>;
}

/// A statement's stream `S` of raw items, each mapped to the consumer's by `F`.
pub(crate) struct Handed<S, F> {
    pub(crate) raw: Pin<Box<S>>,
    pub(crate) map: F,
}

impl<S, X, T, F> Pull<T> for Handed<S, F>
where
    S: Stream<Item = std::result::Result<X, tokio_postgres::Error>> + Send,
    F: Fn(X) -> Result<T> + Send,
{
    #[inline]
    fn pull(&mut self, cx: &mut Context<'_>) -> Poll<Option<Pulled<T>>> {
        Poll::Ready(match std::task::ready!(self.raw.as_mut().poll_next(cx)) {
            None => None,
            Some(Ok(x)) => Some(match (self.map)(x) {
                Ok(t) => Pulled::Item(t),
                Err(e) => Pulled::Bad(e),
            }),
            Some(Err(e)) => Some(Pulled::Failed(Error::from(e))),
        })
    }

    fn ended_already(&mut self) -> Option<Ending> {
        ended_already(self.raw.as_mut())
    }
}

/// Reads, without waiting, what of a statement's answer has already arrived (discarding it):
/// `Some` when the answer has ended, `None` while the statement may still be running. Bounded:
/// a fast server keeps sending while this reads.
pub(crate) fn ended_already<S, X>(mut raw: Pin<&mut S>) -> Option<Ending>
where
    S: Stream<Item = std::result::Result<X, tokio_postgres::Error>>,
{
    let mut cx = Context::from_waker(std::task::Waker::noop());
    for _ in 0..4096 {
        match raw.as_mut().poll_next(&mut cx) {
            Poll::Ready(Some(Ok(_))) => {}
            Poll::Ready(Some(Err(e))) => return Some(ending_of(&Error::from(e))),
            Poll::Ready(None) => return Some(Ending::Ok),
            Poll::Pending => return None,
        }
    }
    None
}

fn ending_of(e: &Error) -> Ending {
    if e.as_db_error().is_some() {
        Ending::Failed
    } else {
        Ending::Lost
    }
}

/// The consumer's hold on a handed-over answer.
pub(crate) struct Direct<T> {
    /// `None` once let go of.
    source: Option<Box<dyn Pull<T>>>,
    verdict: Option<oneshot::Sender<Verdict>>,
    count: u64,
}

impl<T> Direct<T> {
    pub(crate) fn new(source: Box<dyn Pull<T>>, verdict: oneshot::Sender<Verdict>) -> Self {
        Direct {
            source: Some(source),
            verdict: Some(verdict),
            count: 0,
        }
    }

    /// Lets go of the answer part-way: reads what has already arrived (whether it ended), drops
    /// the statement's stream (so that the connection goes on without it), then tells the
    /// session.
    fn let_go(&mut self) {
        let ended = self.source.take().and_then(|mut s| s.ended_already());
        self.tell(ended, false);
    }

    fn tell(&mut self, ended: Option<Ending>, complete: bool) {
        self.source = None;
        if let Some(verdict) = self.verdict.take() {
            let _ = verdict.send(Verdict {
                ended,
                complete,
                count: self.count,
            });
        }
    }

    /// The next item; `None` at the end. After an error or the end, the session has been told.
    #[inline(always)]
    pub(crate) fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        let Some(source) = self.source.as_mut() else {
            return Poll::Ready(None);
        };
        match std::task::ready!(source.pull(cx)) {
            Some(Pulled::Item(t)) => {
                self.count += 1;
                Poll::Ready(Some(Ok(t)))
            }
            Some(Pulled::Bad(e)) => {
                // The consumer stops at a row that does not decode: as if it dropped the stream.
                self.let_go();
                Poll::Ready(Some(Err(e)))
            }
            Some(Pulled::Failed(e)) => {
                self.tell(Some(ending_of(&e)), true);
                Poll::Ready(Some(Err(e)))
            }
            None => {
                self.tell(Some(Ending::Ok), true);
                Poll::Ready(None)
            }
        }
    }
}

impl<T> Drop for Direct<T> {
    fn drop(&mut self) {
        if self.verdict.is_some() {
            self.let_go();
        }
    }
}
