//! Keeping connections sound: resets and health checks coming back, discarding dead ones,
//! invalidating a generation, and the maintenance tick (idle trim, lifetimes, keepalive, leaks).

use std::time::Instant;

use ractor::ActorRef;

use super::*;
use crate::connect::discard;
use crate::supervisor::PoolMsg;

impl PoolState {
    pub(crate) fn reset_done(&mut self, myself: &ActorRef<PoolMsg>, serial: u64, ok: bool) {
        let Some(i) = self.by_serial(serial) else {
            return;
        };
        if ok {
            tracing::debug!(serial, "reset: connection clean again");
            self.slots[i].state = SlotState::Idle;
            self.slots[i].last_checked = Instant::now();
        } else {
            self.counters.reset_failures += 1;
            self.metrics.reset_failures.increment(1);
            tracing::warn!(
                serial,
                "reset failed or timed out: discarding the connection"
            );
            self.close_slot(i);
        }
        self.after_close(myself);
        self.dispatch(myself);
    }

    pub(crate) fn start_check(&mut self, myself: &ActorRef<PoolMsg>, i: usize) {
        self.counters.checks += 1;
        let slot = &mut self.slots[i];
        slot.state = SlotState::Checking;
        let serial = slot.serial;
        let conn = slot.conn.clone();
        let timeout = self.config.health_check_timeout;
        let me = myself.clone();
        tokio::spawn(async move {
            let ok = matches!(
                tokio::time::timeout(timeout, conn.batch("SELECT 1")).await,
                Ok(Ok(()))
            ) && conn.is_idle();
            let _ = me.send_message(PoolMsg::CheckDone { serial, ok });
        });
    }

    pub(crate) fn check_done(&mut self, myself: &ActorRef<PoolMsg>, serial: u64, ok: bool) {
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
    pub(crate) fn discard_dead(&mut self, myself: &ActorRef<PoolMsg>, i: usize, why: &str) {
        self.close_slot(i);
        self.invalidate(myself, why);
        self.after_close(myself);
        self.dispatch(myself);
    }

    /// A connection-class error: every connection opened before now is suspect and is checked
    /// (or replaced) before it is handed out again.
    pub(crate) fn invalidate(&mut self, myself: &ActorRef<PoolMsg>, why: &str) {
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

    pub(crate) fn close_slot(&mut self, i: usize) {
        let slot = self.slots.swap_remove(i);
        self.counters.closed += 1;
        tracing::debug!(serial = slot.serial, "close: connection closed");
        discard(slot.conn);
    }

    /// After a connection went away: refill to `min_idle` and serve waiters.
    pub(crate) fn after_close(&mut self, myself: &ActorRef<PoolMsg>) {
        self.replenish(myself);
        self.finish_close_if_done(myself);
    }

    pub(crate) fn close_free_retired(&mut self) {
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

    pub(crate) fn tick(&mut self, myself: &ActorRef<PoolMsg>) {
        self.publish_gauges();
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
}
