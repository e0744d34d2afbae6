//! LISTEN/NOTIFY: a [`Subscription`] served by a listener actor on a connection of its own,
//! outside the pool's leases (a pooled connection goes back to the pool and its notifications
//! with it). The listener is spawned linked to the pool's supervisor: if it dies (a panic, a
//! kill) while its subscriber is still there, the pool starts another, which listens again and
//! says [`Event::Reconnected`]; it stops when the subscription is dropped and when the pool
//! closes.
//!
//! The listener keeps its connection open and, when it is lost (a terminated backend, a server
//! restart), opens another with the pool's back-off, issues its LISTENs again and tells the
//! subscriber [`Event::Reconnected`] before any later notification: notifications sent while it
//! was away are lost, as PostgreSQL does not keep them, and the subscriber knows to catch up.
//! The buffer is bounded: a subscriber that falls behind by more than its capacity misses
//! notifications and is told how many with [`Event::Lagged`] before the next one. The
//! subscription ends when it is dropped, and when the pool closes.

use std::sync::Arc;
use std::time::Duration;

use actor_orm_core::{Error, Result};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

use crate::config::PoolConfig;

/// What a subscription receives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A notification.
    Notification {
        /// Its channel.
        channel: String,
        /// Its payload.
        payload: String,
        /// The backend that sent it.
        process_id: i32,
    },
    /// The connection was lost and is back, with its LISTENs: notifications sent meanwhile
    /// were missed.
    Reconnected,
    /// The subscriber fell behind: this many notifications were dropped.
    Lagged(u64),
}

/// A subscription to LISTEN channels (see the module docs).
///
/// ```no_run
/// # async fn demo(pool: actor_orm_actors::Pool) -> actor_orm_core::Result<()> {
/// use actor_orm_actors::Event;
/// let mut jobs = pool.listen(["jobs"]).await?;
/// while let Some(event) = jobs.recv().await {
///     match event {
///         Event::Notification { payload, .. } => println!("job {payload}"),
///         Event::Reconnected | Event::Lagged(_) => { /* re-read what may have been missed */ }
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Subscription {
    events: mpsc::Receiver<Event>,
}

impl Subscription {
    /// The next event; `None` once the pool has closed.
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

/// How many events a subscription holds by default before the subscriber is said to lag.
pub(crate) const CAPACITY: usize = 4096;

/// What the pool keeps of a listener, to stop it when the pool closes and to start another if
/// it dies while its subscriber is still there.
#[derive(Clone)]
pub(crate) struct ListenerSpec {
    pub(crate) config: Arc<PoolConfig>,
    pub(crate) listen: String,
    pub(crate) events: mpsc::Sender<Event>,
}

impl ListenerSpec {
    /// Whether the subscriber is still there.
    pub(crate) fn wanted(&self) -> bool {
        !self.events.is_closed()
    }
}

/// Opens a subscription on `channels`: returns once the first LISTEN is in place (so that a
/// wrong setting is an error to the caller), with what the pool must keep and the
/// subscription's first connection.
pub(crate) async fn open_subscription(
    config: Arc<PoolConfig>,
    channels: Vec<String>,
    capacity: usize,
) -> Result<(Subscription, ListenerSpec, Listening)> {
    if channels.is_empty() {
        return Err(Error::InvalidInput(
            "listen needs at least one channel".into(),
        ));
    }
    let listen = channels
        .iter()
        .map(|c| format!("LISTEN {}", actor_orm_core::quote_ident(c)))
        .collect::<Vec<_>>()
        .join("; ");
    let (events, rx) = mpsc::channel(capacity.max(1));
    let first = open(&config, &listen).await?;
    let spec = ListenerSpec {
        config,
        listen,
        events,
    };
    Ok((Subscription { events: rx }, spec, first))
}

/// Starts a listener actor linked to the pool's supervisor, on `first` (or, when it replaces
/// one that died, on a new connection, announced as [`Event::Reconnected`]).
pub(crate) async fn spawn(
    spec: ListenerSpec,
    first: Option<Listening>,
    supervisor: ActorCell,
) -> Result<ActorRef<ListenerMsg>> {
    let (actor, _) = Actor::spawn_linked(None, ListenerActor, (spec, first), supervisor)
        .await
        .map_err(|e| Error::PoolClosed {
            reason: format!("could not start a listener: {e}"),
        })?;
    Ok(actor)
}

/// A listening connection: its client (kept so the connection stays open), its driver's task,
/// its notifications, and the task that hands them to the listener actor.
pub(crate) struct Listening {
    _client: tokio_postgres::Client,
    driver: tokio::task::JoinHandle<()>,
    notices: Option<mpsc::UnboundedReceiver<tokio_postgres::Notification>>,
    pump: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.driver.abort();
        if let Some(pump) = &self.pump {
            pump.abort();
        }
    }
}

impl Listening {
    /// Hands the connection's notifications to `actor`, and tells it when the connection is
    /// lost or the subscriber has gone.
    fn attach(&mut self, actor: ActorRef<ListenerMsg>, events: mpsc::Sender<Event>) {
        let Some(mut notices) = self.notices.take() else {
            return;
        };
        self.pump = Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    n = notices.recv() => {
                        let msg = match n {
                            Some(n) => ListenerMsg::Notified(n),
                            // The driver ended with the connection, and with it the sender.
                            None => ListenerMsg::Lost,
                        };
                        let lost = matches!(msg, ListenerMsg::Lost);
                        if actor.send_message(msg).is_err() || lost {
                            return;
                        }
                    }
                    () = events.closed() => {
                        actor.stop(Some("the subscription was dropped".into()));
                        return;
                    }
                }
            }
        }));
    }
}

async fn open(config: &PoolConfig, listen: &str) -> Result<Listening> {
    let (tx, notices) = mpsc::unbounded_channel();
    let pg = config.direct_pg.as_ref().unwrap_or(&config.pg);
    let attempt = config.connector.connect_listening(pg, tx);
    let (client, driver) = tokio::time::timeout(config.connect_timeout, attempt)
        .await
        .map_err(|_| Error::Connect {
            reason: "the listener's connection did not open within connect_timeout".into(),
            cause: None,
        })??;
    let driver = tokio::spawn(async move {
        let _ = driver.await;
    });
    let needs = "LISTEN keeps its server connection for as long as it listens";
    if let Err(e) = crate::connect::require_server(config, &client, pg, needs).await {
        driver.abort();
        return Err(e);
    }
    let listening = Listening {
        _client: client,
        driver,
        notices: Some(notices),
        pump: None,
    };
    listening._client.batch_execute(listen).await?;
    Ok(listening)
}

pub(crate) enum ListenerMsg {
    /// A notification arrived.
    Notified(tokio_postgres::Notification),
    /// The connection was lost.
    Lost,
    /// Time to open the connection again.
    Reconnect,
}

pub(crate) struct ListenerActor;

pub(crate) struct ListenerState {
    spec: ListenerSpec,
    current: Option<Listening>,
    /// Notifications dropped since the subscriber last had room.
    missed: u64,
    /// `Reconnected` is owed to the subscriber (its buffer was full when it was due).
    reconnected: bool,
    failures: u32,
}

impl ListenerState {
    /// Hands `event` over, after what is owed (`Reconnected`, then `Lagged`): with no room, a
    /// notification is counted as missed. `false` when the subscriber has gone.
    fn deliver(&mut self, event: Option<Event>) -> bool {
        let events = &self.spec.events;
        if self.reconnected {
            match events.try_send(Event::Reconnected) {
                Ok(()) => self.reconnected = false,
                Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        if !self.reconnected
            && self.missed > 0
            && events.try_send(Event::Lagged(self.missed)).is_ok()
        {
            self.missed = 0;
        }
        let Some(event) = event else {
            return !events.is_closed();
        };
        if self.reconnected {
            self.missed += 1;
            return true;
        }
        match events.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.missed += 1;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Waits before the next connection attempt: the pool's back-off (25 ms doubling, at most
    /// 1 s).
    fn retry_later(&self, myself: &ActorRef<ListenerMsg>) {
        let wait = Duration::from_millis(25)
            .saturating_mul(1 << self.failures.min(6))
            .min(Duration::from_secs(1));
        myself.send_after(wait, || ListenerMsg::Reconnect);
    }
}

impl Actor for ListenerActor {
    type Msg = ListenerMsg;
    type State = ListenerState;
    type Arguments = (ListenerSpec, Option<Listening>);

    async fn pre_start(
        &self,
        myself: ActorRef<ListenerMsg>,
        (spec, first): (ListenerSpec, Option<Listening>),
    ) -> Result<ListenerState, ActorProcessingErr> {
        let mut state = ListenerState {
            spec,
            current: first,
            missed: 0,
            reconnected: false,
            failures: 0,
        };
        match &mut state.current {
            Some(listening) => listening.attach(myself, state.spec.events.clone()),
            // A listener that replaces one that died: whatever it had is gone.
            None => {
                let _ = myself.send_message(ListenerMsg::Reconnect);
            }
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<ListenerMsg>,
        msg: ListenerMsg,
        state: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ListenerMsg::Notified(n) => {
                let event = Event::Notification {
                    channel: n.channel().to_owned(),
                    payload: n.payload().to_owned(),
                    process_id: n.process_id(),
                };
                if !state.deliver(Some(event)) {
                    myself.stop(Some("the subscription was dropped".into()));
                }
            }
            ListenerMsg::Lost => {
                tracing::warn!("listener: connection lost; reconnecting");
                state.current = None;
                state.retry_later(&myself);
            }
            ListenerMsg::Reconnect => {
                if !state.spec.wanted() {
                    myself.stop(Some("the subscription was dropped".into()));
                    return Ok(());
                }
                match open(&state.spec.config, &state.spec.listen).await {
                    Ok(mut listening) => {
                        state.failures = 0;
                        tracing::info!("listener: reconnected and listening again");
                        listening.attach(myself.clone(), state.spec.events.clone());
                        state.current = Some(listening);
                        state.reconnected = true;
                        if !state.deliver(None) {
                            myself.stop(Some("the subscription was dropped".into()));
                        }
                    }
                    Err(e) => {
                        state.failures += 1;
                        tracing::warn!(error = %e, "listener: reconnect failed");
                        state.retry_later(&myself);
                    }
                }
            }
        }
        Ok(())
    }
}
