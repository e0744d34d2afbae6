//! Leases and waiters: checkout first come first served, expiry of waiters, checkin, and the end
//! of a lease (clean, or with a reset).

use std::time::{Duration, Instant};

use actor_orm_core::{Error, PoolTimeout, Result};
use ractor::ActorRef;
use tokio::sync::oneshot;

use super::*;
use crate::config::ResetPolicy;
use crate::connect::reset;
use crate::supervisor::PoolMsg;

impl PoolState {
    pub(crate) fn checkout(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        requester: Requester,
        reply: oneshot::Sender<Result<Lease>>,
    ) -> u64 {
        if self.closing.is_some() {
            let _ = reply.send(Err(Error::PoolClosed {
                reason: "the pool is closing".into(),
            }));
            return 0;
        }
        let id = self.next_waiter;
        self.next_waiter += 1;
        self.waiters.push_back(Waiter {
            id,
            requester,
            enqueued: Instant::now(),
            reply,
        });
        self.dispatch(myself);
        // Still queued (dispatch only takes from the front): make sure a timer is pending.
        if self.waiters.back().is_some_and(|w| w.id == id) {
            self.arm_expiry(myself);
        }
        id
    }

    /// Takes waiter `id` out of the queue: its caller gave up (a waiter whose caller has gone is
    /// never served).
    pub(crate) fn withdraw(&mut self, id: u64) {
        if let Some(at) = self.waiters.iter().position(|w| w.id == id) {
            self.waiters.remove(at);
        }
    }

    /// Starts the expiry timer for the oldest waiter, unless one is pending (it fires no later
    /// than the oldest waiter's deadline, since waiters only leave the queue).
    pub(crate) fn arm_expiry(&mut self, myself: &ActorRef<PoolMsg>) {
        if self.expiry_timer.is_some() {
            return;
        }
        let Some(head) = self.waiters.front() else {
            return;
        };
        let deadline = head.enqueued + self.config.acquire_timeout;
        self.expiry_timer = Some(deadline);
        let timer = myself.send_after(deadline.saturating_duration_since(Instant::now()), || {
            PoolMsg::WaitersDue
        });
        self.keep_timer(timer);
    }

    /// Times out every waiter whose acquire_timeout has passed (they are at the front), then
    /// arms the timer for the next.
    pub(crate) fn waiters_due(&mut self, myself: &ActorRef<PoolMsg>) {
        self.expiry_timer = None;
        let now = Instant::now() + Duration::from_millis(1);
        let timeout = self.config.acquire_timeout;
        while self
            .waiters
            .front()
            .is_some_and(|w| w.enqueued + timeout <= now)
        {
            let waiting = self.waiters.len();
            if let Some(w) = self.waiters.pop_front() {
                self.time_out(w, waiting);
            }
        }
        self.arm_expiry(myself);
    }

    /// Hands free connections to waiters, first come first served, and opens connections when
    /// waiters outnumber what may soon be free.
    pub(crate) fn dispatch(&mut self, myself: &ActorRef<PoolMsg>) {
        loop {
            // A waiter whose session has gone (or stopped listening) is skipped.
            while let Some(w) = self.waiters.front() {
                if w.reply.is_closed() || !alive(&w.requester.cell) {
                    self.waiters.pop_front();
                } else {
                    break;
                }
            }
            if self.waiters.is_empty() {
                return;
            }
            let Some(i) = self.ready_idle(myself) else {
                self.grow(myself);
                return;
            };
            let Some(w) = self.waiters.pop_front() else {
                return;
            };
            self.next_lease += 1;
            let lease = self.next_lease;
            let slot = &mut self.slots[i];
            let handed = w.reply.send(Ok(Lease {
                id: lease,
                conn: slot.conn.clone(),
            }));
            if handed.is_err() {
                continue;
            }
            slot.state = SlotState::Leased(LeaseInfo {
                lease,
                actor: w.requester.cell.get_id(),
                cell: w.requester.cell,
                label: w.requester.label,
                since: Instant::now(),
                warned: false,
                stopped: false,
            });
            self.counters.checkouts += 1;
            self.metrics.acquired(w.enqueued.elapsed());
            tracing::trace!(lease, waited = ?w.enqueued.elapsed(), "checkout");
        }
    }

    /// An idle connection ready for use, most recently used first. Retired or expired ones are
    /// closed on the way; suspect ones are sent for a health check.
    pub(crate) fn ready_idle(&mut self, myself: &ActorRef<PoolMsg>) -> Option<usize> {
        self.close_free_retired();
        let now = Instant::now();
        let mut best: Option<usize> = None;
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if !matches!(s.state, SlotState::Idle) {
                continue;
            }
            let suspect = s.generation < self.generation
                || now.duration_since(s.last_used) > self.config.health_check_after;
            if suspect {
                self.start_check(myself, i);
            } else if best.is_none_or(|b| self.slots[b].last_used < s.last_used) {
                best = Some(i);
            }
        }
        best
    }

    /// Answers a waiter whose time ran out with a report of the pool; `waiting` counts it too.
    pub(crate) fn time_out(&mut self, w: Waiter, waiting: usize) {
        if w.reply.is_closed() {
            // Its session stopped waiting already: nobody to tell.
            return;
        }
        self.counters.timeouts += 1;
        self.metrics.timeouts.increment(1);
        let mut holders = self.holders();
        holders.truncate(5);
        let report = PoolTimeout::new(
            w.enqueued.elapsed(),
            self.config.max_size,
            self.slots.len() + self.connecting,
            self.in_use(),
            self.idle(),
            waiting,
            holders,
            self.last_connect_error.clone(),
        );
        tracing::warn!(session = %w.requester.label, "timeout: {report}");
        let _ = w.reply.send(Err(Error::PoolTimeout(Box::new(report))));
    }

    // ----- return -----

    /// A session gives lease `lease` back, clean or to be reset (a lease already ended is
    /// ignored: a checkin and a death notice never return a connection twice).
    pub(crate) fn checkin(&mut self, myself: &ActorRef<PoolMsg>, lease: u64, clean: bool) -> bool {
        let Some(i) = self.leased_by_lease(lease) else {
            return true;
        };
        let spared = !self.condemned(i);
        self.counters.checkins += 1;
        tracing::debug!(lease, clean, "checkin");
        self.end_lease(myself, i, !clean);
        spared
    }

    /// Whether the session holding slot `i` has been ordered stopped: its actor is about to die
    /// and must not serve another session.
    pub(crate) fn condemned(&self, i: usize) -> bool {
        matches!(&self.slots[i].state, SlotState::Leased(info) if info.stopped)
    }

    /// Ends the lease on slot `i`: the connection is reset if it may carry a transaction or
    /// needs the reset policy, then offered again (or closed).
    pub(crate) fn end_lease(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        i: usize,
        may_be_in_transaction: bool,
    ) {
        let now = Instant::now();
        if let SlotState::Leased(l) = &self.slots[i].state {
            self.metrics.released(now.duration_since(l.since));
        }
        let slot = &mut self.slots[i];
        slot.last_used = now;
        if self.must_retire(i, now) {
            self.close_slot(i);
            self.after_close(myself);
            return;
        }
        let slot = &mut self.slots[i];
        // Handed out again only when known idle on the server: every statement answered
        // (a COMMIT or ROLLBACK sent without waiting, an abandoned read and its cancel).
        let idle = slot.conn.is_idle();
        if !may_be_in_transaction
            && idle
            && self.config.reset == ResetPolicy::Rollback
            && !self.config.sandbox
        {
            slot.state = SlotState::Idle;
            self.dispatch(myself);
            self.finish_close_if_done(myself);
            return;
        }
        slot.state = SlotState::Resetting;
        let serial = slot.serial;
        let conn = slot.conn.clone();
        let policy = self.config.reset.clone();
        let timeout = self.config.reset_timeout;
        let me = myself.clone();
        tokio::spawn(async move {
            let ok = reset(&conn, may_be_in_transaction, &policy, timeout).await;
            let _ = me.send_message(PoolMsg::ResetDone { serial, ok });
        });
    }
}
