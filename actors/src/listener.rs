//! LISTEN/NOTIFY: a [`Subscription`] served on a connection of its own, outside the pool's
//! leases (a pooled connection goes back to the pool and its notifications with it).
//!
//! The listener keeps its connection open and, when it is lost (a terminated backend, a server
//! restart), opens another with the pool's back-off, issues its LISTENs again and tells the
//! subscriber [`Event::Reconnected`] before any later notification: notifications sent while it
//! was away are lost, as PostgreSQL does not keep them, and the subscriber knows to catch up.
//! The buffer is bounded: a subscriber that falls behind by more than its capacity misses
//! notifications and is told how many with [`Event::Lagged`] before the next one. The
//! subscription ends when it is dropped, and when the pool closes.

use std::time::Duration;

use actor_orm_core::{Error, Result};
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
    task: tokio::task::AbortHandle,
}

impl Subscription {
    /// The next event; `None` once the pool has closed.
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How many events a subscription holds by default before the subscriber is said to lag.
pub(crate) const CAPACITY: usize = 4096;

/// Starts a listener on `channels`, returning once its first LISTEN is in place.
pub(crate) async fn start(
    config: std::sync::Arc<PoolConfig>,
    channels: Vec<String>,
    capacity: usize,
) -> Result<(Subscription, tokio::task::AbortHandle)> {
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
    // The first connection is made here, so that a wrong setting is an error to the caller.
    let first = open(&config, &listen).await?;
    let task = tokio::spawn(serve(config, listen, events, first)).abort_handle();
    Ok((
        Subscription {
            events: rx,
            task: task.clone(),
        },
        task,
    ))
}

/// A listening connection: its client (kept so the connection stays open), its driver's task,
/// and its notifications.
struct Listening {
    _client: tokio_postgres::Client,
    driver: tokio::task::JoinHandle<()>,
    notices: mpsc::UnboundedReceiver<tokio_postgres::Notification>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn open(config: &PoolConfig, listen: &str) -> Result<Listening> {
    let (tx, notices) = mpsc::unbounded_channel();
    let attempt = config.connector.connect_listening(&config.pg, tx);
    let (client, driver) = tokio::time::timeout(config.connect_timeout, attempt)
        .await
        .map_err(|_| Error::Connect {
            reason: "the listener's connection did not open within connect_timeout".into(),
            cause: None,
        })??;
    let driver = tokio::spawn(async move {
        let _ = driver.await;
    });
    let listening = Listening {
        _client: client,
        driver,
        notices,
    };
    listening._client.batch_execute(listen).await?;
    Ok(listening)
}

async fn serve(
    config: std::sync::Arc<PoolConfig>,
    listen: String,
    events: mpsc::Sender<Event>,
    first: Listening,
) {
    let mut current = Some(first);
    let mut missed: u64 = 0;
    let mut failures: u32 = 0;
    loop {
        let Some(mut listening) = current.take() else {
            // Reconnect with the pool's back-off (25 ms doubling, at most 1 s).
            let wait = Duration::from_millis(25)
                .saturating_mul(1 << failures.min(6))
                .min(Duration::from_secs(1));
            tokio::time::sleep(wait).await;
            if events.is_closed() {
                return;
            }
            match open(&config, &listen).await {
                Ok(l) => {
                    failures = 0;
                    tracing::info!("listener: reconnected and listening again");
                    if events.send(Event::Reconnected).await.is_err() {
                        return;
                    }
                    current = Some(l);
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "listener: reconnect failed");
                }
            }
            continue;
        };
        // Until the connection is lost: its notices (the driver ends with the connection, and
        // with it the notices' sender).
        while let Some(n) = listening.notices.recv().await {
            let event = Event::Notification {
                channel: n.channel().to_owned(),
                payload: n.payload().to_owned(),
                process_id: n.process_id(),
            };
            if missed > 0 && events.try_send(Event::Lagged(missed)).is_ok() {
                missed = 0;
            }
            match events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => missed += 1,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        tracing::warn!("listener: connection lost; reconnecting");
    }
}
