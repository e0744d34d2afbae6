//! [`PoolLink`]: what a session holds of its pool — the supervisor, for everything it owns, and
//! the shared books, to check out and in without a message.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use actor_orm_core::{Error, Result};
use ractor::{ActorRef, ActorStatus};
use tokio::sync::oneshot;

use crate::books::{Lease, PoolState, Requester, Shared, Spare, alive, lock};
use crate::config::PoolConfig;
use crate::label::NextLabel;
use crate::listener::ListenerSpec;
use crate::session_actor::SessionMsg;
use crate::supervisor::PoolMsg;
use ractor::Actor;

use crate::supervisor::Supervisor;

/// What a session holds of its pool: the supervisor (for everything it owns) and the shared
/// books (to check out and in without a message).
#[derive(Clone)]
pub(crate) struct PoolLink {
    pub(crate) actor: ActorRef<PoolMsg>,
    shared: Shared,
    /// The pool's read replicas, if it has any.
    pub(crate) replicas: Option<Arc<crate::replica::ReplicaSet>>,
}

impl PoolLink {
    /// Starts the supervisor of a new pool.
    pub(crate) async fn start(
        config: Arc<PoolConfig>,
        replicas: Option<Arc<crate::replica::ReplicaSet>>,
    ) -> Result<PoolLink> {
        let shared = Arc::new(Mutex::new(PoolState::new(config)));
        let (actor, _) = Actor::spawn(None, Supervisor, shared.clone())
            .await
            .map_err(|e| Error::PoolClosed {
                reason: format!("could not start the pool supervisor: {e}"),
            })?;
        if let Some(set) = &replicas {
            // A session that dies holding a replica's connection is the primary's supervisor's
            // to hear of: it passes the word on.
            lock(&shared).replica_supervisors =
                set.replicas.iter().map(|r| r.link.actor.clone()).collect();
        }
        Ok(PoolLink {
            actor,
            shared,
            replicas,
        })
    }

    /// Every lease now, longest held first (see `PoolState::holders`).
    pub(crate) fn holders(&self) -> Vec<actor_orm_core::Holder> {
        lock(&self.shared).holders()
    }

    /// Whether the pool asked for a writable server (`target_session_attrs=read-write`).
    pub(crate) fn wants_writes(&self) -> bool {
        lock(&self.shared).config.pg.get_target_session_attrs()
            == tokio_postgres::config::TargetSessionAttrs::ReadWrite
    }

    /// Queues `requester` for a connection, first come first served; the returned future
    /// answers (at once when a connection is free), or fails when the pool has stopped or is
    /// closing. Dropping it takes the request out of the queue at once.
    pub(crate) fn checkout(&self, requester: Requester) -> Result<Checkout> {
        let (reply, rx) = oneshot::channel();
        let mut state = lock(&self.shared);
        if state.stopped || self.actor.get_status() >= ActorStatus::Stopping {
            return Err(crate::pool::closed());
        }
        let id = state.checkout(&self.actor, requester, reply);
        Ok(Checkout {
            rx,
            id,
            link: self.clone(),
            finished: false,
        })
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
        state.metrics.discards.increment(1);
        state.discard_dead(&self.actor, i, "a session's connection was lost");
        spared
    }

    /// A checkout given up before it was answered: the waiter leaves the queue, and a lease
    /// handed to it in the meantime comes straight back.
    fn withdraw(&self, id: u64, rx: &mut oneshot::Receiver<Result<Lease>>) {
        rx.close();
        if let Ok(Ok(lease)) = rx.try_recv() {
            self.checkin(lease.id, true);
        } else {
            lock(&self.shared).withdraw(id);
        }
    }

    /// The pool's listener actors now.
    pub(crate) fn listeners(&self) -> Vec<(ractor::ActorCell, ListenerSpec)> {
        lock(&self.shared).listeners.clone()
    }

    /// Keeps a listener actor of the pool's, to stop it when the pool shuts down and to start
    /// another if it dies while its subscriber is still there.
    pub(crate) fn keep_listener(&self, actor: ractor::ActorCell, spec: ListenerSpec) {
        let mut state = lock(&self.shared);
        if state.stopped {
            actor.stop(Some("the pool has stopped".into()));
            return;
        }
        state.listeners.push((actor, spec));
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

/// A pending checkout (see [`PoolLink::checkout`]).
pub(crate) struct Checkout {
    rx: oneshot::Receiver<Result<Lease>>,
    id: u64,
    link: PoolLink,
    finished: bool,
}

impl Future for Checkout {
    type Output = Result<Lease>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Lease>> {
        let answer = std::task::ready!(Pin::new(&mut self.rx).poll(cx));
        self.finished = true;
        Poll::Ready(answer.map_err(|_| crate::pool::closed())?)
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if !self.finished {
            self.link.withdraw(self.id, &mut self.rx);
        }
    }
}
