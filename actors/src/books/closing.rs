//! Closing the pool: refusing new checkouts, waiting for sessions, stopping what is left.

use std::time::Duration;

use actor_orm_core::Error;
use ractor::ActorRef;
use tokio::sync::oneshot;

use super::*;
use crate::supervisor::PoolMsg;

impl PoolState {
    pub(crate) fn close(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        grace: Duration,
        reply: oneshot::Sender<()>,
    ) {
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
        let timer = myself.send_after(grace, || PoolMsg::CloseDeadline);
        self.keep_timer(timer);
        self.finish_close_if_done(myself);
    }

    pub(crate) fn finish_close_if_done(&mut self, myself: &ActorRef<PoolMsg>) {
        if self.closing.is_some() {
            self.close_free_retired();
            if self.slots.is_empty() {
                self.finish_close(myself);
            }
        }
    }

    pub(crate) fn finish_close(&mut self, myself: &ActorRef<PoolMsg>) {
        self.shut_down();
        for reply in self.closing.take().unwrap_or_default() {
            let _ = reply.send(());
        }
        tracing::info!("close: pool closed");
        myself.stop(Some("closed".into()));
    }

    /// Stops every session still holding a connection, every spare session actor and every
    /// timer, and closes every connection.
    pub(crate) fn shut_down(&mut self) {
        self.stopped = true;
        for timer in self.timers.drain(..) {
            timer.abort();
        }
        for (listener, _) in self.listeners.drain(..) {
            listener.stop(Some("the pool has stopped".into()));
        }
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
