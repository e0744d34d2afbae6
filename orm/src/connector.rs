//! The connector: the one place that knows how a connection reaches the server (plain TCP or
//! TLS), used to open connections and to send cancel requests over the same transport.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use tokio_postgres::{CancelToken, Client, Config, NoTls};

use crate::cancel::CancelStream;

/// A boxed future, as the connector's methods return.
pub type ConnectFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, tokio_postgres::Error>> + Send + 'a>>;

/// What drives one connection's I/O until it closes: spawn it on the runtime.
pub type Driver = ConnectFuture<'static, ()>;

/// Opens connections and cancels statements on them, with whatever transport security it was
/// built with. The pool's supervisor and every session reach the server only through one
/// (deadpool's `Manager` and tokio-postgres's `MakeTlsConnect` are the models).
///
/// ```
/// use std::sync::Arc;
/// use actor_orm_core::{Connector, PlainConnector};
///
/// let plain: Arc<dyn Connector> = Arc::new(PlainConnector);
/// assert_eq!(plain.describe(), "plaintext");
/// ```
pub trait Connector: Send + Sync + fmt::Debug + 'static {
    /// Opens a connection with `config`. The client is returned with the future that drives its
    /// socket, which the caller spawns.
    fn connect<'a>(&'a self, config: &'a Config) -> ConnectFuture<'a, (Client, Driver)>;

    /// Asks the server to cancel whatever the connection of `token` is running, over a new
    /// connection with the same transport security.
    fn cancel(&self, token: CancelToken) -> ConnectFuture<'static, ()>;

    /// Sends the cancel request of `token` over `stream`, a connection the ORM opened to the
    /// server named `host`, with the same transport security as [`cancel`](Self::cancel). The
    /// future ends once the server has closed the connection, i.e. has acted on the request (see
    /// [`CancelTarget`](crate::CancelTarget)). The default opens a connection of its own with
    /// [`cancel`](Self::cancel) instead, which does not wait for the server.
    fn cancel_over(
        &self,
        token: CancelToken,
        stream: CancelStream,
        host: &str,
    ) -> ConnectFuture<'static, ()> {
        let _ = (stream, host);
        self.cancel(token)
    }

    /// Opens a connection whose notifications (`LISTEN`/`NOTIFY`) are handed to `notices` as
    /// its driver reads them: for a listener on a connection of its own. The default refuses:
    /// a connector that cannot deliver them must not pretend to.
    fn connect_listening<'a>(&'a self, config: &'a Config, notices: Notices) -> ListenFuture<'a> {
        let _ = (config, notices);
        let what = self.describe();
        Box::pin(async move {
            Err(crate::Error::Config(format!(
                "the connector ({what}) cannot deliver notifications"
            )))
        })
    }

    /// A few words for logs and errors: `plaintext`, `TLS (verify-full)`, ….
    fn describe(&self) -> String;
}

/// Where a listening connection's driver hands its notifications.
pub type Notices = tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>;

/// What [`Connector::connect_listening`] returns.
pub type ListenFuture<'a> =
    Pin<Box<dyn Future<Output = crate::Result<(Client, Driver)>> + Send + 'a>>;

/// A driver for `connection` that hands every notification to `notices` (tokio-postgres's own
/// driver drops them).
pub fn forwarding<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    notices: Notices,
) -> Driver
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    let _ = notices.send(n);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    })
}

/// Plain TCP or Unix sockets, no TLS (`sslmode=disable`).
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainConnector;

impl Connector for PlainConnector {
    fn connect<'a>(&'a self, config: &'a Config) -> ConnectFuture<'a, (Client, Driver)> {
        Box::pin(async move {
            let (client, connection) = config.connect(NoTls).await?;
            let driver: Driver = Box::pin(connection);
            Ok((client, driver))
        })
    }

    fn cancel(&self, token: CancelToken) -> ConnectFuture<'static, ()> {
        Box::pin(async move { token.cancel_query(NoTls).await })
    }

    fn connect_listening<'a>(&'a self, config: &'a Config, notices: Notices) -> ListenFuture<'a> {
        Box::pin(async move {
            let (client, connection) = config.connect(NoTls).await?;
            Ok((client, forwarding(connection, notices)))
        })
    }

    fn cancel_over(
        &self,
        token: CancelToken,
        stream: CancelStream,
        _host: &str,
    ) -> ConnectFuture<'static, ()> {
        Box::pin(async move { token.cancel_query_raw(stream, NoTls).await })
    }

    fn describe(&self) -> String {
        "plaintext".into()
    }
}
