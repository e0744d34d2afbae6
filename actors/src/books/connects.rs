//! Opening connections: growing towards demand and `min_idle`, and what a new connection (or a
//! failed connect) changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actor_orm_core::{Connection, Error, Result};
use ractor::ActorRef;

use super::*;
use crate::connect::{connect, copy_error, is_fatal_connect_error, is_server_absent};
use crate::supervisor::PoolMsg;

impl PoolState {
    pub(crate) fn must_retire(&self, i: usize, now: Instant) -> bool {
        let s = &self.slots[i];
        s.serial < self.retire_below
            || s.expires.is_some_and(|e| e <= now)
            || s.conn.is_closed()
            || self.closing.is_some()
    }

    /// Opens connections while waiters outnumber those being opened, up to `max_size`.
    pub(crate) fn grow(&mut self, myself: &ActorRef<PoolMsg>) {
        if self.retry_scheduled {
            return;
        }
        while self.connecting < self.waiters.len()
            && self.slots.len() + self.connecting < self.config.max_size
        {
            self.open(myself);
        }
    }

    /// Keeps at least `min_idle` connections not in use (within `max_size`; not while connects
    /// are failing).
    pub(crate) fn replenish(&mut self, myself: &ActorRef<PoolMsg>) {
        if self.retry_scheduled || self.closing.is_some() {
            return;
        }
        while self.slots.len() - self.in_use() + self.connecting < self.config.min_idle
            && self.slots.len() + self.connecting < self.config.max_size
        {
            self.open(myself);
        }
        self.grow(myself);
    }

    pub(crate) fn open(&mut self, myself: &ActorRef<PoolMsg>) {
        self.connecting += 1;
        let serial = self.next_serial;
        self.next_serial += 1;
        if self.config.sandbox && self.counters.opened > 0 {
            // The sandbox's one connection held everything the test wrote: a new one would
            // silently start from nothing.
            let lost = Error::Config(
                "the test sandbox's connection was lost, and with it everything the test \
                 wrote: the sandbox does not open another"
                    .into(),
            );
            let _ = myself.send_message(PoolMsg::Connected(serial, Err(lost)));
            return;
        }
        let config = self.config.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let result = connect(&config, serial, &me).await.map(Box::new);
            // The pool may be gone; then the connection is simply dropped.
            let _ = me.send_message(PoolMsg::Connected(serial, result));
        });
    }

    pub(crate) fn connected(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        serial: u64,
        result: Result<Box<Connection>>,
    ) {
        self.connecting = self.connecting.saturating_sub(1);
        match result {
            Ok(conn) => {
                self.failures_in_row = 0;
                self.last_connect_error = None;
                self.counters.opened += 1;
                if self.closing.is_some() {
                    return;
                }
                // Connects succeed again: open what is needed now, not at the next back-off step.
                self.retry_scheduled = false;
                let now = Instant::now();
                let expires = self.config.max_lifetime.map(|l| {
                    let jitter = random_below(self.config.jitter().min(l), serial);
                    now + l - jitter
                });
                tracing::debug!(serial, "connect: opened a connection");
                self.slots.push(Slot {
                    serial,
                    conn: Arc::from(conn),
                    expires,
                    last_used: now,
                    last_checked: now,
                    generation: self.generation,
                    state: SlotState::Idle,
                });
                self.dispatch(myself);
            }
            Err(e) => {
                self.counters.connect_failures += 1;
                self.failures_in_row += 1;
                let text = e.to_string();
                tracing::warn!(error = %text, attempt = self.failures_in_row, "connect failed");
                self.last_connect_error = Some(text);
                if is_fatal_connect_error(&e) {
                    // Wrong password, missing database: waiting will not help.
                    for w in self.waiters.drain(..) {
                        let _ = w.reply.send(Err(copy_error(&e)));
                    }
                }
                if !self.retry_scheduled && self.closing.is_none() {
                    self.retry_scheduled = true;
                    let backoff = retry_after(
                        self.config.connect_backoff,
                        self.failures_in_row,
                        is_server_absent(&e),
                    );
                    let timer = myself.send_after(backoff, || PoolMsg::RetryConnect);
                    self.keep_timer(timer);
                }
            }
        }
    }
}

/// Time before the next connect attempt after `failures` failures in a row: `first` doubling up to
/// `most`; while the server is absent (refused, starting up) at most [`ABSENT_PROBE`], since such
/// an attempt costs the server nothing.
pub(crate) fn retry_after(
    (first, most): (Duration, Duration),
    failures: u32,
    absent: bool,
) -> Duration {
    let backoff = first.saturating_mul(1 << failures.min(16)).min(most);
    if absent {
        backoff.min(ABSENT_PROBE.max(first))
    } else {
        backoff
    }
}

/// The longest wait between connect attempts while nothing listens at the address.
pub(crate) const ABSENT_PROBE: Duration = Duration::from_millis(100);
