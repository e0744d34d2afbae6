//! The pool supervisor actor: owns every connection, leases them to session actors through the
//! books ([`PoolState`](crate::books::PoolState)), and takes them back — reset — whichever way a
//! session ends. It never stops because a session did.

use std::sync::MutexGuard;
use std::time::Duration;

use actor_orm_core::{Connection, Result};
use ractor::ActorRef;
use tokio::sync::oneshot;

use crate::stats::PoolStats;
use ractor::{Actor, ActorProcessingErr, SupervisionEvent};

use crate::books::{PoolState, Shared, lock};

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
    /// A session died (told by the primary's supervisor to a replica's): reclaim its leases.
    Reclaim(ractor::ActorId, Option<String>),
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
        let tick = myself.send_interval(state.config.tick(), || PoolMsg::Tick);
        state.keep_timer(tick);
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
        let id = cell.get_id();
        // A listener that died while its subscriber is still there is replaced.
        let replace = {
            let mut state = owner.lock();
            let found = state.listeners.iter().position(|(l, _)| l.get_id() == id);
            let spec = found.map(|i| state.listeners.swap_remove(i).1);
            spec.filter(|spec| spec.wanted() && !state.winding_down())
        };
        if let Some(spec) = replace {
            let how = reason.as_deref().unwrap_or("stopped");
            tracing::warn!(how = %how, "listener: the listener actor ended; starting another");
            if let Ok(actor) = crate::listener::spawn(spec.clone(), None, myself.get_cell()).await {
                let mut state = owner.lock();
                if state.stopped {
                    actor.stop(Some("the pool has stopped".into()));
                } else {
                    state.listeners.push((actor.get_cell(), spec));
                }
            }
            return Ok(());
        }
        // A session that ended on its own checked its lease in on the way out; one that was
        // stopped, killed or panicked still holds it.
        let mut state = owner.lock();
        state.reclaim_for(&myself, id, reason.as_deref());
        for replica in &state.replica_supervisors {
            let _ = replica.send_message(PoolMsg::Reclaim(id, reason.clone()));
        }
        Ok(())
    }
}
