//! The pool's books ([`PoolState`]): slots, leases, waiters, spare session actors, counters.
//!
//! They sit behind one lock shared by the supervisor and its sessions. A session checks out and
//! checks in by taking the lock for a few instructions in its own task — no message to the
//! supervisor and no wait for it to be scheduled — and a connection coming back goes straight
//! to the oldest waiter. Everything else (connects, resets, checks, maintenance, and the reclaim
//! of a dead session's lease) is the supervisor's, by message, and the lock is never held across
//! an `.await`. Nothing here waits on the network: connects, resets and health checks run in
//! spawned tasks that report back by message.
//!
//! A connection is handed out only when it is known idle on the server: every statement sent on
//! it has been answered (see `actor_orm_core::Connection::is_idle`). A check-in that cannot say
//! so — a COMMIT or ROLLBACK sent without waiting, a statement abandoned mid-flight and its
//! cancel — goes through a reset that waits for the answers within `reset_timeout`, and a
//! connection that does not get them is discarded: its socket closed and its driver task ended
//! at once, so a frozen server never holds more than `max_size` of the pool's backends. A
//! cancel request counts as sent only once the server has closed its connection (it has then
//! signalled the backend), and an abandoned statement stays owed until a later one is answered.
//!
//! The books also keep spare session actors: the actor of a session that ended with its last
//! handle, wiped clean, waiting for the next session (see `PoolBuilder::spare_sessions`).
//!
//! One file per part of a connection's life: [`checkout`] (leases and waiters), [`connects`]
//! (opening), [`upkeep`] (resets, checks, retirement, the maintenance tick), [`closing`].

mod checkout;
mod closing;
mod connects;
mod metrics;
mod upkeep;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actor_orm_core::{Connection, Result};
use ractor::{ActorCell, ActorId, ActorRef, ActorStatus};
use tokio::sync::oneshot;

use crate::config::PoolConfig;
use crate::label::NextLabel;
use crate::session_actor::SessionMsg;
use crate::stats::PoolStats;
use crate::supervisor::PoolMsg;

/// A connection leased to one session.
pub(crate) struct Lease {
    pub(crate) id: u64,
    pub(crate) conn: Arc<Connection>,
}

/// Who a checkout is for.
pub(crate) struct Requester {
    pub(crate) cell: ActorCell,
    pub(crate) label: crate::label::Label,
}

pub(crate) enum SlotState {
    Idle,
    Leased(LeaseInfo),
    /// A reset (after a return) is running.
    Resetting,
    /// A health check is running.
    Checking,
}

pub(crate) struct LeaseInfo {
    pub(crate) lease: u64,
    pub(crate) actor: ActorId,
    pub(crate) cell: ActorCell,
    pub(crate) label: crate::label::Label,
    pub(crate) since: Instant,
    pub(crate) warned: bool,
    pub(crate) stopped: bool,
}

pub(crate) struct Slot {
    pub(crate) serial: u64,
    pub(crate) conn: Arc<Connection>,
    pub(crate) expires: Option<Instant>,
    pub(crate) last_used: Instant,
    pub(crate) last_checked: Instant,
    pub(crate) generation: u64,
    pub(crate) state: SlotState,
}

pub(crate) struct Waiter {
    pub(crate) id: u64,
    pub(crate) requester: Requester,
    pub(crate) enqueued: Instant,
    pub(crate) reply: oneshot::Sender<Result<Lease>>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) opened: u64,
    pub(crate) closed: u64,
    pub(crate) connect_failures: u64,
    pub(crate) checkouts: u64,
    pub(crate) checkins: u64,
    pub(crate) reclaims: u64,
    pub(crate) discards: u64,
    pub(crate) reset_failures: u64,
    pub(crate) timeouts: u64,
    pub(crate) leak_warnings: u64,
    pub(crate) sessions_stopped: u64,
    pub(crate) checks: u64,
}

pub(crate) struct PoolState {
    pub(crate) config: Arc<PoolConfig>,
    /// The supervisors of this pool's read replicas: told when a session dies, since sessions
    /// are linked to this supervisor alone.
    pub(crate) replica_supervisors: Vec<ActorRef<PoolMsg>>,
    pub(crate) slots: Vec<Slot>,
    pub(crate) waiters: VecDeque<Waiter>,
    /// When the one pending expiry timer fires. Waiters queue in order and share one
    /// acquire_timeout, so only the oldest one's deadline needs a timer.
    pub(crate) expiry_timer: Option<Instant>,
    pub(crate) connecting: usize,
    pub(crate) next_serial: u64,
    pub(crate) next_lease: u64,
    pub(crate) next_waiter: u64,
    /// Connections stamped with an older generation must pass a check before reuse.
    pub(crate) generation: u64,
    /// Connections with a serial below this were drained: closed as soon as they are free.
    pub(crate) retire_below: u64,
    pub(crate) failures_in_row: u32,
    pub(crate) retry_scheduled: bool,
    pub(crate) last_connect_error: Option<String>,
    pub(crate) closing: Option<Vec<oneshot::Sender<()>>>,
    /// The supervisor has stopped: nothing is handed out any more.
    pub(crate) stopped: bool,
    /// Session actors whose sessions ended, kept for the next sessions (most recent last).
    pub(crate) spares: Vec<Spare>,
    pub(crate) counters: Counters,
    /// The same events for the application's metrics recorder.
    pub(crate) metrics: metrics::PoolMetrics,
    /// The supervisor's pending timers (tick, waiter expiry, connect retry, close deadline):
    /// stopped when the pool shuts down, so that no task of the pool outlives it.
    pub(crate) timers: Vec<tokio::task::AbortHandle>,
    /// The pool's listener actors and what it takes to replace one (see `listener`).
    pub(crate) listeners: Vec<(ActorCell, crate::listener::ListenerSpec)>,
}

/// An ended session's actor, wiped clean and waiting for a new session.
pub(crate) struct Spare {
    pub(crate) actor: ActorRef<SessionMsg>,
    pub(crate) next: Arc<NextLabel>,
    pub(crate) since: Instant,
}

/// The pool's books, shared by the supervisor and its sessions (see the module docs).
pub(crate) type Shared = Arc<Mutex<PoolState>>;

pub(crate) fn lock(shared: &Mutex<PoolState>) -> MutexGuard<'_, PoolState> {
    // Nothing under the lock awaits or is expected to panic; if something did, the books are
    // still the best account of the connections there is.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn alive(cell: &ActorCell) -> bool {
    cell.get_status() < ActorStatus::Stopping
}

/// A random duration below `limit` (zero for a zero limit), from a randomly seeded hash of
/// `seed`: enough to spread lifetimes and retries apart, without a crate for it.
pub(crate) fn random_below(limit: Duration, seed: u64) -> Duration {
    let nanos = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    let r = std::collections::hash_map::RandomState::new().hash_one(seed);
    Duration::from_nanos(r % nanos)
}

impl PoolState {
    pub(crate) fn new(config: Arc<PoolConfig>) -> PoolState {
        let metrics = metrics::PoolMetrics::new(
            config
                .metrics_name
                .as_deref()
                .or(config.pg.get_application_name())
                .unwrap_or("actor-orm"),
        );
        PoolState {
            config,
            replica_supervisors: Vec::new(),
            slots: Vec::new(),
            waiters: VecDeque::new(),
            expiry_timer: None,
            connecting: 0,
            next_serial: 1,
            next_lease: 1,
            next_waiter: 1,
            generation: 0,
            retire_below: 0,
            failures_in_row: 0,
            retry_scheduled: false,
            last_connect_error: None,
            closing: None,
            stopped: false,
            spares: Vec::new(),
            counters: Counters::default(),
            metrics,
            timers: Vec::new(),
            listeners: Vec::new(),
        }
    }

    /// Keeps a timer's task, to stop it when the pool shuts down (finished ones are dropped).
    pub(crate) fn keep_timer<T>(&mut self, timer: tokio::task::JoinHandle<T>) {
        self.timers.retain(|t| !t.is_finished());
        self.timers.push(timer.abort_handle());
    }

    /// The pool is closing or has stopped: it takes no new session actors and hands none out.
    pub(crate) fn winding_down(&self) -> bool {
        self.stopped || self.closing.is_some()
    }

    /// Stops the `n` oldest spare session actors.
    pub(crate) fn stop_spares(&mut self, n: usize) {
        for spare in self.spares.drain(..n) {
            spare.actor.stop(None);
        }
    }

    /// The supervisor's messages.
    pub(crate) fn handle(&mut self, myself: &ActorRef<PoolMsg>, msg: PoolMsg) {
        match msg {
            PoolMsg::Died { serial, reason } => {
                // The socket closed under an idle connection: the server went away or the
                // backend was terminated. Leased ones are reported by their session.
                if let Some(i) = self.by_serial(serial)
                    && matches!(self.slots[i].state, SlotState::Idle | SlotState::Checking)
                {
                    tracing::info!(serial, reason = %reason, "an idle connection closed");
                    self.discard_dead(myself, i, "an idle connection closed");
                }
            }
            PoolMsg::Connected(serial, result) => self.connected(myself, serial, result),
            PoolMsg::Reclaim(actor, reason) => self.reclaim_for(myself, actor, reason.as_deref()),
            PoolMsg::ResetDone { serial, ok } => self.reset_done(myself, serial, ok),
            PoolMsg::CheckDone { serial, ok } => self.check_done(myself, serial, ok),
            PoolMsg::WaitersDue => self.waiters_due(myself),
            PoolMsg::RetryConnect => {
                self.retry_scheduled = false;
                self.replenish(myself);
                self.dispatch(myself);
            }
            PoolMsg::Tick => self.tick(myself),
            PoolMsg::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            PoolMsg::Drain(reply) => {
                self.retire_below = self.next_serial;
                tracing::info!("drain: every connection now open retires when it is free");
                self.close_free_retired();
                self.replenish(myself);
                let _ = reply.send(());
            }
            PoolMsg::Close(grace, reply) => self.close(myself, grace, reply),
            PoolMsg::CloseDeadline => {
                if self.closing.is_some() {
                    tracing::warn!(
                        sessions = self.in_use(),
                        "close: grace period over, stopping the sessions still holding connections"
                    );
                    self.finish_close(myself);
                }
            }
        }
    }

    pub(crate) fn in_use(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Leased(_)))
            .count()
    }

    pub(crate) fn idle(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Idle))
            .count()
    }

    pub(crate) fn leased_by_lease(&self, lease: u64) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| matches!(&s.state, SlotState::Leased(l) if l.lease == lease))
    }

    /// Every lease now, longest held first: the session, how long, the backend's pid.
    pub(crate) fn holders(&self) -> Vec<actor_orm_core::Holder> {
        let now = Instant::now();
        let mut holders: Vec<actor_orm_core::Holder> = self
            .slots
            .iter()
            .filter_map(|s| match &s.state {
                SlotState::Leased(l) => {
                    let mut h = actor_orm_core::Holder::new(l.label.as_str(), now - l.since);
                    h.backend_pid = s.conn.backend_pid();
                    Some(h)
                }
                _ => None,
            })
            .collect();
        holders.sort_by_key(|h| std::cmp::Reverse(h.held));
        holders
    }

    /// Takes back (and resets) every connection the ended session `actor` still holds.
    pub(crate) fn reclaim_for(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        actor: ActorId,
        reason: Option<&str>,
    ) {
        while let Some(i) = self.leased_by_actor(actor) {
            self.counters.reclaims += 1;
            self.metrics.reclaims.increment(1);
            if let SlotState::Leased(info) = &self.slots[i].state {
                let how = reason.unwrap_or("stopped");
                tracing::info!(session = %info.label, how = %how, "reclaim: the session ended holding a connection; resetting it");
            }
            self.end_lease(myself, i, true);
        }
    }

    pub(crate) fn leased_by_actor(&self, actor: ActorId) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| matches!(&s.state, SlotState::Leased(l) if l.actor == actor))
    }

    pub(crate) fn by_serial(&self, serial: u64) -> Option<usize> {
        self.slots.iter().position(|s| s.serial == serial)
    }

    /// Sets the metrics' gauges from the books.
    pub(crate) fn publish_gauges(&self) {
        self.metrics.gauges(
            self.slots.len(),
            self.idle(),
            self.in_use(),
            self.waiters.len(),
        );
    }

    pub(crate) fn stats(&self) -> PoolStats {
        self.publish_gauges();
        let c = &self.counters;
        PoolStats {
            max_size: self.config.max_size,
            total: self.slots.len(),
            idle: self.idle(),
            in_use: self.in_use(),
            resetting: self
                .slots
                .iter()
                .filter(|s| matches!(s.state, SlotState::Resetting | SlotState::Checking))
                .count(),
            connecting: self.connecting,
            waiting: self.waiters.len(),
            generation: self.generation,
            opened: c.opened,
            closed: c.closed,
            connect_failures: c.connect_failures,
            checkouts: c.checkouts,
            checkins: c.checkins,
            reclaims: c.reclaims,
            discards: c.discards,
            reset_failures: c.reset_failures,
            timeouts: c.timeouts,
            leak_warnings: c.leak_warnings,
            sessions_stopped: c.sessions_stopped,
            checks: c.checks,
            spare_sessions: self.spares.len(),
        }
    }

    // ----- checkout -----
}
