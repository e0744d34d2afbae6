//! [`Flight`]: what a connection owes — statements sent whose answers have not arrived — so
//! that a pool hands a connection out only when it is known to be idle.
//!
//! PostgreSQL answers a connection's statements in the order they were sent. So when a
//! statement is answered, every statement sent before it has been answered too, including one
//! whose caller stopped waiting (its future dropped). That is the whole mechanism: a statement
//! abandoned mid-flight stays owed until a statement *started after it was abandoned* is
//! answered; a cancel request alone proves nothing (it is only a request, and a frozen backend
//! takes it when it wakes).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// A connection's outstanding statements (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Flight {
    /// Statements whose callers await them now.
    running: AtomicUsize,
    /// Statements abandoned mid-flight, counted from the connection's start.
    abandoned: AtomicU64,
    /// How many of the abandoned statements are known answered: a statement started after the
    /// n-th abandonment and answered proves the first n were.
    settled: AtomicU64,
    /// Abandoned statements a cancel request has been sent for.
    cancelled: AtomicU64,
    /// Statements sent without waiting for their answers (`send_and_forget`) not yet answered.
    forgotten: AtomicUsize,
    /// Woken when `forgotten` drops to zero.
    answered: Notify,
}

/// One statement in flight: [`done`](Self::done) when it ends; dropped before that, it counts
/// as abandoned.
pub(crate) struct InFlight<'a> {
    flight: &'a Flight,
    /// Abandonments before this statement started: its answer settles them.
    epoch: u64,
    finished: bool,
}

impl Flight {
    /// A statement starts.
    pub(crate) fn start(&self) -> InFlight<'_> {
        self.running.fetch_add(1, Ordering::AcqRel);
        InFlight {
            flight: self,
            epoch: self.abandoned.load(Ordering::Acquire),
            finished: false,
        }
    }

    /// A statement sent and not waited for starts; returns what to give
    /// [`forgotten_done`](Self::forgotten_done) when its answer arrives.
    pub(crate) fn forget(&self) -> u64 {
        self.forgotten.fetch_add(1, Ordering::AcqRel);
        self.abandoned.load(Ordering::Acquire)
    }

    /// A statement sent by [`forget`](Self::forget) has ended: `answered` when the server
    /// answered it (with a result or an error).
    pub(crate) fn forgotten_done(&self, epoch: u64, answered: bool) {
        if answered {
            self.settled.fetch_max(epoch, Ordering::AcqRel);
        }
        if self.forgotten.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.answered.notify_waiters();
        }
    }

    /// Whether a statement was abandoned mid-flight and has not been answered since: the server
    /// may still be running it.
    pub(crate) fn interrupted(&self) -> bool {
        self.abandoned.load(Ordering::Acquire) > self.settled.load(Ordering::Acquire)
    }

    /// Whether an abandoned, unanswered statement has had no cancel request yet.
    pub(crate) fn needs_cancel(&self) -> bool {
        self.interrupted()
            && self.cancelled.load(Ordering::Acquire) < self.abandoned.load(Ordering::Acquire)
    }

    /// The abandonments so far, to pass to [`cancelled`](Self::cancelled) once a cancel request
    /// for them has gone out.
    pub(crate) fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::Acquire)
    }

    /// A cancel request went out covering the first `upto` abandonments.
    pub(crate) fn cancelled(&self, upto: u64) {
        self.cancelled.fetch_max(upto, Ordering::AcqRel);
    }

    /// Whether every statement sent has been answered and none is running: the connection is
    /// idle on the server.
    pub(crate) fn idle(&self) -> bool {
        self.running.load(Ordering::Acquire) == 0
            && self.forgotten.load(Ordering::Acquire) == 0
            && !self.interrupted()
    }

    /// Waits until every statement sent without waiting has been answered (or has failed).
    pub(crate) async fn forgotten_answered(&self) {
        loop {
            let woken = self.answered.notified();
            if self.forgotten.load(Ordering::Acquire) == 0 {
                return;
            }
            woken.await;
        }
    }
}

impl InFlight<'_> {
    /// The statement ended with `result`; `answered` when the server answered it (a result or a
    /// database error, not a lost connection or a value refused before sending).
    pub(crate) fn done<T>(mut self, answered: bool, result: T) -> T {
        self.finished = true;
        if answered {
            self.flight.settled.fetch_max(self.epoch, Ordering::AcqRel);
        }
        result
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.flight.running.fetch_sub(1, Ordering::AcqRel);
        if !self.finished {
            self.flight.abandoned.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_settles_only_what_was_abandoned_before_it_started() {
        let f = Flight::default();
        assert!(f.idle());
        drop(f.start()); // abandoned
        assert!(f.interrupted());
        assert!(!f.idle());
        // Started before the next abandonment, answered after it: settles the first only.
        let early = f.start();
        drop(f.start());
        assert_eq!(f.abandoned(), 2);
        early.done(true, ());
        assert!(f.interrupted());
        // A statement that failed before reaching the server proves nothing.
        f.start().done(false, ());
        assert!(f.interrupted());
        f.start().done(true, ());
        assert!(f.idle());
    }

    #[test]
    fn a_cancel_request_is_not_an_answer() {
        let f = Flight::default();
        drop(f.start());
        assert!(f.needs_cancel());
        f.cancelled(f.abandoned());
        assert!(!f.needs_cancel());
        assert!(
            f.interrupted(),
            "only an answer settles an abandoned statement"
        );
        f.start().done(true, ());
        assert!(!f.interrupted());
    }

    #[test]
    fn forgotten_statements_are_owed_until_answered() {
        let f = Flight::default();
        drop(f.start());
        let epoch = f.forget();
        assert!(!f.idle());
        f.forgotten_done(epoch, true);
        assert!(
            f.idle(),
            "the forgotten statement's answer settles what came before it"
        );
        let running = f.start();
        assert!(!f.idle());
        running.done(true, ());
        assert!(f.idle());
    }
}
