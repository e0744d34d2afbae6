//! The pool supervisor actor: owns every connection, leases them to session actors, and takes
//! them back — reset — whichever way a session ends.
//!
//! Nothing here waits on the network: connects, resets and health checks run in spawned tasks
//! that report back by message, so the mailbox always moves.
//!
//! The pool's books ([`PoolState`]: slots, leases, waiters) sit behind one lock shared by the
//! supervisor and its sessions. A session checks out and checks in by taking the lock for a few
//! instructions in its own task — no message to the supervisor and no wait for it to be
//! scheduled — and a connection coming back goes straight to the oldest waiter. Everything else
//! (connects, resets, checks, maintenance, and the reclaim of a dead session's lease) is the
//! supervisor's, by message, and the lock is never held across an `.await`.
//!
//! The books also keep spare session actors: the actor of a session that ended with its last
//! handle, wiped clean, waiting for the next session (see `PoolBuilder::spare_sessions`).

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actor_orm_core::{Connection, Error, Holder, PoolTimeout, Result};
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus, SupervisionEvent,
};
use tokio::sync::oneshot;

use crate::config::{PoolConfig, ResetPolicy};
use crate::session::{NextLabel, SessionMsg};
use crate::stats::PoolStats;

/// A connection leased to one session.
pub(crate) struct Lease {
    pub(crate) id: u64,
    pub(crate) conn: Arc<Connection>,
}

/// Who a checkout is for.
pub(crate) struct Requester {
    pub(crate) cell: ActorCell,
    pub(crate) label: crate::session::Label,
}

pub(crate) enum PoolMsg {
    Connected(u64, Result<Box<Connection>>),
    /// A connection's socket closed (its driver task ended).
    Died {
        serial: u64,
        reason: String,
    },
    ResetDone {
        serial: u64,
        ok: bool,
    },
    CheckDone {
        serial: u64,
        ok: bool,
    },
    /// The oldest waiter's acquire_timeout may have passed.
    WaitersDue,
    RetryConnect,
    Tick,
    Stats(oneshot::Sender<PoolStats>),
    Drain(oneshot::Sender<()>),
    Close(Duration, oneshot::Sender<()>),
    CloseDeadline,
}

enum SlotState {
    Idle,
    Leased(LeaseInfo),
    /// A reset (after a return) is running.
    Resetting,
    /// A health check is running.
    Checking,
}

struct LeaseInfo {
    lease: u64,
    actor: ActorId,
    cell: ActorCell,
    label: crate::session::Label,
    since: Instant,
    warned: bool,
    stopped: bool,
}

struct Slot {
    serial: u64,
    conn: Arc<Connection>,
    expires: Option<Instant>,
    last_used: Instant,
    last_checked: Instant,
    generation: u64,
    state: SlotState,
}

struct Waiter {
    id: u64,
    requester: Requester,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Lease>>,
}

#[derive(Default)]
struct Counters {
    opened: u64,
    closed: u64,
    connect_failures: u64,
    checkouts: u64,
    checkins: u64,
    reclaims: u64,
    discards: u64,
    reset_failures: u64,
    timeouts: u64,
    leak_warnings: u64,
    sessions_stopped: u64,
    checks: u64,
}

pub(crate) struct PoolState {
    config: Arc<PoolConfig>,
    slots: Vec<Slot>,
    waiters: VecDeque<Waiter>,
    /// When the one pending expiry timer fires. Waiters queue in order and share one
    /// acquire_timeout, so only the oldest one's deadline needs a timer.
    expiry_timer: Option<Instant>,
    connecting: usize,
    next_serial: u64,
    next_lease: u64,
    next_waiter: u64,
    /// Connections stamped with an older generation must pass a check before reuse.
    generation: u64,
    /// Connections with a serial below this were drained: closed as soon as they are free.
    retire_below: u64,
    failures_in_row: u32,
    retry_scheduled: bool,
    last_connect_error: Option<String>,
    closing: Option<Vec<oneshot::Sender<()>>>,
    /// The supervisor has stopped: nothing is handed out any more.
    stopped: bool,
    /// Session actors whose sessions ended, kept for the next sessions (most recent last).
    spares: Vec<Spare>,
    counters: Counters,
}

/// An ended session's actor, wiped clean and waiting for a new session.
struct Spare {
    actor: ActorRef<SessionMsg>,
    next: Arc<NextLabel>,
    since: Instant,
}

/// The pool's books, shared by the supervisor and its sessions (see the module docs).
pub(crate) type Shared = Arc<Mutex<PoolState>>;

fn lock(shared: &Mutex<PoolState>) -> MutexGuard<'_, PoolState> {
    // Nothing under the lock awaits or is expected to panic; if something did, the books are
    // still the best account of the connections there is.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a session holds of its pool: the supervisor (for everything it owns) and the shared
/// books (to check out and in without a message).
#[derive(Clone)]
pub(crate) struct PoolLink {
    pub(crate) actor: ActorRef<PoolMsg>,
    shared: Shared,
}

impl PoolLink {
    /// Starts the supervisor of a new pool.
    pub(crate) async fn start(config: Arc<PoolConfig>) -> Result<PoolLink> {
        let shared = Arc::new(Mutex::new(PoolState::new(config)));
        let (actor, _) = Actor::spawn(None, Supervisor, shared.clone())
            .await
            .map_err(|e| Error::PoolClosed {
                reason: format!("could not start the pool supervisor: {e}"),
            })?;
        Ok(PoolLink { actor, shared })
    }

    /// Queues `requester` for a connection, first come first served; the answer comes on the
    /// returned channel (at once when a connection is free), or an error when the pool has stopped
    /// or is closing.
    pub(crate) fn checkout(
        &self,
        requester: Requester,
    ) -> Result<oneshot::Receiver<Result<Lease>>> {
        let (reply, rx) = oneshot::channel();
        let mut state = lock(&self.shared);
        if state.stopped || self.actor.get_status() >= ActorStatus::Stopping {
            return Err(crate::pool::closed());
        }
        state.checkout(&self.actor, requester, reply);
        Ok(rx)
    }

    /// A session gives lease `lease` back, clean (no transaction can be open) or to be reset.
    /// The pool has it when this returns; the next waiter, if any, has been handed it. Returns
    /// `false` when the pool has ordered the session stopped (`max_session_lifetime`).
    pub(crate) fn checkin(&self, lease: u64, clean: bool) -> bool {
        lock(&self.shared).checkin(&self.actor, lease, clean)
    }

    /// A session saw the connection of lease `lease` die. Returns `false` when the pool has
    /// ordered the session stopped.
    pub(crate) fn broken(&self, lease: u64) -> bool {
        let mut state = lock(&self.shared);
        let Some(i) = state.leased_by_lease(lease) else {
            return true;
        };
        let spared = !state.condemned(i);
        state.counters.discards += 1;
        state.discard_dead(&self.actor, i, "a session's connection was lost");
        spared
    }

    /// Keeps the actor of a session that ended with its last handle for a later session.
    /// Returns `false` (the actor should stop) when the pool has stopped or is closing, or has
    /// `spare_sessions` spares already.
    pub(crate) fn keep_spare(&self, actor: &ActorRef<SessionMsg>, next: &Arc<NextLabel>) -> bool {
        let mut state = lock(&self.shared);
        if state.winding_down() || state.spares.len() >= state.config.spare_sessions {
            return false;
        }
        state.spares.push(Spare {
            actor: actor.clone(),
            next: next.clone(),
            since: Instant::now(),
        });
        true
    }

    /// A spare session actor (and where to put its next session's label), the most recently
    /// used first, unless the pool has stopped or is closing.
    pub(crate) fn take_spare(&self) -> Option<(ActorRef<SessionMsg>, Arc<NextLabel>)> {
        let mut state = lock(&self.shared);
        if state.winding_down() {
            return None;
        }
        while let Some(spare) = state.spares.pop() {
            if alive(&spare.actor) {
                return Some((spare.actor, spare.next));
            }
        }
        None
    }
}

/// The supervisor's hold on the books. However the supervisor ends — closed, failed or killed
/// (when `post_stop` does not run) — dropping this closes every connection and answers every
/// waiter, so that a dead supervisor leaves nothing open behind it.
pub(crate) struct Owner(Shared);

impl Owner {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        lock(&self.0)
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.lock().shut_down();
    }
}

pub(crate) struct Supervisor;

impl Actor for Supervisor {
    type Msg = PoolMsg;
    type State = Owner;
    type Arguments = Shared;

    async fn pre_start(
        &self,
        _myself: ActorRef<PoolMsg>,
        shared: Shared,
    ) -> Result<Owner, ActorProcessingErr> {
        Ok(Owner(shared))
    }

    async fn post_start(
        &self,
        myself: ActorRef<PoolMsg>,
        owner: &mut Owner,
    ) -> Result<(), ActorProcessingErr> {
        let mut state = owner.lock();
        myself.send_interval(state.config.tick(), || PoolMsg::Tick);
        state.replenish(&myself);
        Ok(())
    }

    // No post_stop: dropping the Owner shuts the pool down, which also covers a kill (when
    // post_stop does not run).

    async fn handle(
        &self,
        myself: ActorRef<PoolMsg>,
        msg: PoolMsg,
        owner: &mut Owner,
    ) -> Result<(), ActorProcessingErr> {
        owner.lock().handle(&myself, msg);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<PoolMsg>,
        event: SupervisionEvent,
        owner: &mut Owner,
    ) -> Result<(), ActorProcessingErr> {
        // Never stop the pool because a session ended: that is what sessions do.
        let (cell, reason) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason),
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(format!("failed: {err}"))),
            _ => return Ok(()),
        };
        // A session that ended on its own checked its lease in on the way out; one that was
        // stopped, killed or panicked still holds it.
        let mut state = owner.lock();
        let id = cell.get_id();
        while let Some(i) = state.leased_by_actor(id) {
            state.counters.reclaims += 1;
            if let SlotState::Leased(info) = &state.slots[i].state {
                let how = reason.as_deref().unwrap_or("stopped");
                tracing::info!(session = %info.label, how = %how, "reclaim: the session ended holding a connection; resetting it");
            }
            state.end_lease(&myself, i, true);
        }
        Ok(())
    }
}

fn alive(cell: &ActorCell) -> bool {
    cell.get_status() < ActorStatus::Stopping
}

fn random_below(limit: Duration, seed: u64) -> Duration {
    let nanos = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    let r = std::collections::hash_map::RandomState::new().hash_one(seed);
    Duration::from_nanos(r % nanos)
}

impl PoolState {
    fn new(config: Arc<PoolConfig>) -> PoolState {
        PoolState {
            config,
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
        }
    }

    /// The pool is closing or has stopped: it takes no new session actors and hands none out.
    fn winding_down(&self) -> bool {
        self.stopped || self.closing.is_some()
    }

    /// Stops the `n` oldest spare session actors.
    fn stop_spares(&mut self, n: usize) {
        for spare in self.spares.drain(..n) {
            spare.actor.stop(None);
        }
    }

    /// The supervisor's messages.
    fn handle(&mut self, myself: &ActorRef<PoolMsg>, msg: PoolMsg) {
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

    fn in_use(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Leased(_)))
            .count()
    }

    fn idle(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Idle))
            .count()
    }

    fn leased_by_lease(&self, lease: u64) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| matches!(&s.state, SlotState::Leased(l) if l.lease == lease))
    }

    fn leased_by_actor(&self, actor: ActorId) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| matches!(&s.state, SlotState::Leased(l) if l.actor == actor))
    }

    fn by_serial(&self, serial: u64) -> Option<usize> {
        self.slots.iter().position(|s| s.serial == serial)
    }

    pub(crate) fn stats(&self) -> PoolStats {
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

    fn checkout(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        requester: Requester,
        reply: oneshot::Sender<Result<Lease>>,
    ) {
        if self.closing.is_some() {
            let _ = reply.send(Err(Error::PoolClosed {
                reason: "the pool is closing".into(),
            }));
            return;
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
    }

    /// Starts the expiry timer for the oldest waiter, unless one is pending (it fires no later
    /// than the oldest waiter's deadline, since waiters only leave the queue).
    fn arm_expiry(&mut self, myself: &ActorRef<PoolMsg>) {
        if self.expiry_timer.is_some() {
            return;
        }
        let Some(head) = self.waiters.front() else {
            return;
        };
        let deadline = head.enqueued + self.config.acquire_timeout;
        self.expiry_timer = Some(deadline);
        myself.send_after(deadline.saturating_duration_since(Instant::now()), || {
            PoolMsg::WaitersDue
        });
    }

    /// Times out every waiter whose acquire_timeout has passed (they are at the front), then
    /// arms the timer for the next.
    fn waiters_due(&mut self, myself: &ActorRef<PoolMsg>) {
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
    fn dispatch(&mut self, myself: &ActorRef<PoolMsg>) {
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
            tracing::trace!(lease, waited = ?w.enqueued.elapsed(), "checkout");
        }
    }

    /// An idle connection ready for use, most recently used first. Retired or expired ones are
    /// closed on the way; suspect ones are sent for a health check.
    fn ready_idle(&mut self, myself: &ActorRef<PoolMsg>) -> Option<usize> {
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

    fn must_retire(&self, i: usize, now: Instant) -> bool {
        let s = &self.slots[i];
        s.serial < self.retire_below
            || s.expires.is_some_and(|e| e <= now)
            || s.conn.is_closed()
            || self.closing.is_some()
    }

    /// Opens connections while waiters outnumber those being opened, up to `max_size`.
    fn grow(&mut self, myself: &ActorRef<PoolMsg>) {
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
    fn replenish(&mut self, myself: &ActorRef<PoolMsg>) {
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

    fn open(&mut self, myself: &ActorRef<PoolMsg>) {
        self.connecting += 1;
        let serial = self.next_serial;
        self.next_serial += 1;
        let config = self.config.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let result = connect(&config, serial, &me).await.map(Box::new);
            // The pool may be gone; then the connection is simply dropped.
            let _ = me.send_message(PoolMsg::Connected(serial, result));
        });
    }

    fn connected(
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
                    let backoff = Duration::from_millis(25)
                        .saturating_mul(1 << self.failures_in_row.min(6))
                        .min(Duration::from_secs(1));
                    myself.send_after(backoff, || PoolMsg::RetryConnect);
                }
            }
        }
    }

    /// Answers a waiter whose time ran out with a report of the pool; `waiting` counts it too.
    fn time_out(&mut self, w: Waiter, waiting: usize) {
        if w.reply.is_closed() {
            // Its session stopped waiting already: nobody to tell.
            return;
        }
        self.counters.timeouts += 1;
        let now = Instant::now();
        let mut holders: Vec<Holder> = self
            .slots
            .iter()
            .filter_map(|s| match &s.state {
                SlotState::Leased(l) => Some(Holder::new(l.label.as_str(), now - l.since)),
                _ => None,
            })
            .collect();
        holders.sort_by_key(|h| std::cmp::Reverse(h.held));
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
    fn checkin(&mut self, myself: &ActorRef<PoolMsg>, lease: u64, clean: bool) -> bool {
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
    fn condemned(&self, i: usize) -> bool {
        matches!(&self.slots[i].state, SlotState::Leased(info) if info.stopped)
    }

    /// Ends the lease on slot `i`: the connection is reset if it may carry a transaction or
    /// needs the reset policy, then offered again (or closed).
    fn end_lease(&mut self, myself: &ActorRef<PoolMsg>, i: usize, may_be_in_transaction: bool) {
        let now = Instant::now();
        let slot = &mut self.slots[i];
        slot.last_used = now;
        if self.must_retire(i, now) {
            self.close_slot(i);
            self.after_close(myself);
            return;
        }
        let slot = &mut self.slots[i];
        let interrupted = slot.conn.was_interrupted();
        if !may_be_in_transaction && !interrupted && self.config.reset == ResetPolicy::Rollback {
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
        let rollback = may_be_in_transaction || interrupted;
        let me = myself.clone();
        tokio::spawn(async move {
            let ok = reset(&conn, rollback, &policy, timeout).await;
            let _ = me.send_message(PoolMsg::ResetDone { serial, ok });
        });
    }

    fn reset_done(&mut self, myself: &ActorRef<PoolMsg>, serial: u64, ok: bool) {
        let Some(i) = self.by_serial(serial) else {
            return;
        };
        if ok {
            tracing::debug!(serial, "reset: connection clean again");
            self.slots[i].state = SlotState::Idle;
            self.slots[i].last_checked = Instant::now();
        } else {
            self.counters.reset_failures += 1;
            tracing::warn!(
                serial,
                "reset failed or timed out: discarding the connection"
            );
            self.close_slot(i);
        }
        self.after_close(myself);
        self.dispatch(myself);
    }

    fn start_check(&mut self, myself: &ActorRef<PoolMsg>, i: usize) {
        self.counters.checks += 1;
        let slot = &mut self.slots[i];
        slot.state = SlotState::Checking;
        let serial = slot.serial;
        let conn = slot.conn.clone();
        let timeout = self.config.reset_timeout.min(self.config.connect_timeout);
        let me = myself.clone();
        tokio::spawn(async move {
            let ok = matches!(
                tokio::time::timeout(timeout, conn.batch("SELECT 1")).await,
                Ok(Ok(()))
            );
            let _ = me.send_message(PoolMsg::CheckDone { serial, ok });
        });
    }

    fn check_done(&mut self, myself: &ActorRef<PoolMsg>, serial: u64, ok: bool) {
        let Some(i) = self.by_serial(serial) else {
            return;
        };
        if !ok {
            tracing::info!(serial, "health check failed: discarding the connection");
            return self.discard_dead(myself, i, "a health check failed");
        }
        let now = Instant::now();
        let generation = self.generation;
        let slot = &mut self.slots[i];
        slot.state = SlotState::Idle;
        slot.generation = generation;
        slot.last_checked = now;
        slot.last_used = now;
        // While closing, a connection back from its check is closed here.
        self.after_close(myself);
        self.dispatch(myself);
    }

    /// Slot `i`'s connection is dead: close it, treat every older connection as suspect, refill
    /// and serve waiters.
    fn discard_dead(&mut self, myself: &ActorRef<PoolMsg>, i: usize, why: &str) {
        self.close_slot(i);
        self.invalidate(myself, why);
        self.after_close(myself);
        self.dispatch(myself);
    }

    /// A connection-class error: every connection opened before now is suspect and is checked
    /// (or replaced) before it is handed out again.
    fn invalidate(&mut self, myself: &ActorRef<PoolMsg>, why: &str) {
        self.generation += 1;
        tracing::warn!(
            generation = self.generation,
            why,
            "invalidate: connections opened before now will be checked before reuse"
        );
        for i in 0..self.slots.len() {
            if matches!(self.slots[i].state, SlotState::Idle) {
                self.start_check(myself, i);
            }
        }
    }

    fn close_slot(&mut self, i: usize) {
        let slot = self.slots.swap_remove(i);
        self.counters.closed += 1;
        tracing::debug!(serial = slot.serial, "close: connection closed");
        discard(slot.conn);
    }

    /// After a connection went away: refill to `min_idle` and serve waiters.
    fn after_close(&mut self, myself: &ActorRef<PoolMsg>) {
        self.replenish(myself);
        self.finish_close_if_done(myself);
    }

    fn close_free_retired(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.slots.len() {
            if matches!(self.slots[i].state, SlotState::Idle) && self.must_retire(i, now) {
                self.close_slot(i);
            } else {
                i += 1;
            }
        }
    }

    // ----- maintenance -----

    fn tick(&mut self, myself: &ActorRef<PoolMsg>) {
        let now = Instant::now();
        let config = self.config.clone();
        for slot in &mut self.slots {
            let SlotState::Leased(info) = &mut slot.state else {
                continue;
            };
            let held = now.duration_since(info.since);
            if let Some(limit) = config.leak_threshold
                && held > limit
                && !info.warned
            {
                info.warned = true;
                self.counters.leak_warnings += 1;
                tracing::warn!(
                    session = %info.label,
                    held = ?held,
                    "leak: a session has held its connection longer than leak_threshold ({limit:?})"
                );
            }
            if let Some(limit) = config.max_session_lifetime
                && held > limit
                && !info.stopped
            {
                info.stopped = true;
                self.counters.sessions_stopped += 1;
                tracing::warn!(session = %info.label, held = ?held, "stopping a session past max_session_lifetime; its connection will be reclaimed");
                info.cell.kill();
            }
        }
        self.close_free_retired();
        // Spare session actors unused for idle_timeout are stopped (the oldest are first).
        if let Some(limit) = config.idle_timeout {
            let stale = self
                .spares
                .iter()
                .take_while(|s| now.duration_since(s.since) > limit)
                .count();
            self.stop_spares(stale);
        }
        // Idle connections past idle_timeout, oldest first, down to min_idle.
        if let Some(limit) = config.idle_timeout {
            loop {
                if self.slots.len() - self.in_use() <= config.min_idle {
                    break;
                }
                let stale = self
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| {
                        matches!(s.state, SlotState::Idle)
                            && now.duration_since(s.last_used) > limit
                    })
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(i, _)| i);
                match stale {
                    Some(i) => {
                        tracing::debug!("idle_timeout: closing an idle connection");
                        self.close_slot(i);
                    }
                    None => break,
                }
            }
        }
        if let Some(every) = config.keepalive_interval {
            for i in 0..self.slots.len() {
                let s = &self.slots[i];
                if matches!(s.state, SlotState::Idle)
                    && now.duration_since(s.last_checked.max(s.last_used)) > every
                {
                    self.start_check(myself, i);
                }
            }
        }
        self.replenish(myself);
        self.dispatch(myself);
    }

    // ----- close -----

    fn close(&mut self, myself: &ActorRef<PoolMsg>, grace: Duration, reply: oneshot::Sender<()>) {
        if let Some(replies) = &mut self.closing {
            replies.push(reply);
            return;
        }
        tracing::info!(
            in_use = self.in_use(),
            "close: no new checkouts; waiting for sessions to return their connections"
        );
        self.closing = Some(vec![reply]);
        self.stop_spares(self.spares.len());
        for w in self.waiters.drain(..) {
            let _ = w.reply.send(Err(Error::PoolClosed {
                reason: "the pool is closing".into(),
            }));
        }
        self.close_free_retired();
        myself.send_after(grace, || PoolMsg::CloseDeadline);
        self.finish_close_if_done(myself);
    }

    fn finish_close_if_done(&mut self, myself: &ActorRef<PoolMsg>) {
        if self.closing.is_some() {
            self.close_free_retired();
            if self.slots.is_empty() {
                self.finish_close(myself);
            }
        }
    }

    fn finish_close(&mut self, myself: &ActorRef<PoolMsg>) {
        self.shut_down();
        for reply in self.closing.take().unwrap_or_default() {
            let _ = reply.send(());
        }
        tracing::info!("close: pool closed");
        myself.stop(Some("closed".into()));
    }

    /// Stops every session still holding a connection and every spare session actor, and
    /// closes every connection.
    fn shut_down(&mut self) {
        self.stopped = true;
        self.stop_spares(self.spares.len());
        for slot in &self.slots {
            if let SlotState::Leased(info) = &slot.state {
                info.cell.kill();
            }
        }
        while !self.slots.is_empty() {
            self.close_slot(self.slots.len() - 1);
        }
        for w in self.waiters.drain(..) {
            let _ = w.reply.send(Err(Error::PoolClosed {
                reason: "the pool has stopped".into(),
            }));
        }
    }
}

/// Opens one connection within `connect_timeout`, its I/O driven by a task of its own.
async fn connect(config: &PoolConfig, serial: u64, pool: &ActorRef<PoolMsg>) -> Result<Connection> {
    let attempt = config.connector.connect(&config.pg);
    let (client, connection) = match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(r) => r.map_err(connect_error)?,
        Err(_) => {
            return Err(Error::Connect {
                reason: format!(
                    "no answer within connect_timeout ({:?})",
                    config.connect_timeout
                ),
            });
        }
    };
    let pool = pool.clone();
    tokio::spawn(async move {
        // Ends when the client is dropped or the server goes away; the pool hears of it (and
        // ignores it when it closed the connection itself).
        let reason = match connection.await {
            Ok(()) => "closed".to_owned(),
            Err(e) => e.to_string(),
        };
        let _ = pool.send_message(PoolMsg::Died { serial, reason });
    });
    let conn = Connection::with_connector(client, config.statement_mode, config.connector.clone());
    if config.autocommit_reads {
        // One question (the server's default isolation), within the same time limit.
        match tokio::time::timeout(config.connect_timeout, conn.enable_autocommit_reads()).await {
            Ok(r) => r.map(drop)?,
            Err(_) => {
                return Err(Error::ConnectionLost {
                    reason: "the new connection did not answer within connect_timeout".into(),
                });
            }
        }
    }
    Ok(conn)
}

fn connect_error(e: tokio_postgres::Error) -> Error {
    if e.as_db_error().is_some() {
        return Error::from(e);
    }
    // tokio-postgres's own text names the step ("error performing TLS handshake"); the cause
    // (an untrusted certificate, no TLS on the server) is in its source chain.
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !reason.contains(&text) {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        source = cause.source();
    }
    Error::Connect { reason }
}

/// Authentication failures, missing databases and failed TLS handshakes (an untrusted
/// certificate, TLS required but not offered) do not go away by waiting.
fn is_fatal_connect_error(e: &Error) -> bool {
    match e {
        Error::Connect { reason } => reason.starts_with("error performing TLS handshake"),
        _ => e
            .code()
            .is_some_and(|c| c.starts_with("28") || c == "3D000"),
    }
}

fn copy_error(e: &Error) -> Error {
    match (e, e.as_db_error()) {
        (_, Some(db)) => Error::Database(Box::new(db.clone())),
        (Error::Connect { reason }, None) => Error::Connect {
            reason: reason.clone(),
        },
        (_, None) => Error::ConnectionLost {
            reason: e.to_string(),
        },
    }
}

/// Makes a returned connection safe for the next session: cancel what an interrupted session
/// left running, end any transaction, apply the policy. Anything that fails or overruns
/// `timeout` means the connection is discarded.
async fn reset(conn: &Connection, rollback: bool, policy: &ResetPolicy, timeout: Duration) -> bool {
    let work = async {
        if conn.was_interrupted() {
            conn.cancel_running().await?;
        }
        if rollback {
            conn.batch("ROLLBACK").await?;
        }
        match policy {
            ResetPolicy::Rollback => {}
            ResetPolicy::DiscardAll => {
                conn.batch("DISCARD ALL").await?;
                conn.clear_statement_cache();
            }
            ResetPolicy::Custom(sql) => {
                conn.batch(sql).await?;
                conn.clear_statement_cache();
            }
        }
        Ok::<(), Error>(())
    };
    matches!(tokio::time::timeout(timeout, work).await, Ok(Ok(())))
}

/// Lets a connection go. One that may still be running an abandoned statement is sent a cancel
/// first, so its backend does not linger past the socket.
fn discard(conn: Arc<Connection>) {
    if conn.was_interrupted() && !conn.is_closed() {
        let cancel = conn.cancel_request();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), cancel).await;
        });
    }
    drop(conn);
}
