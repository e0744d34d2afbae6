//! Cancel requests known to have been acted on.
//!
//! PostgreSQL takes a cancel request on a connection of its own: the client writes sixteen bytes
//! and the server, having signalled the backend, closes that connection. tokio-postgres returns
//! as soon as the bytes are written, before the server has done anything; with a slow or frozen
//! postmaster the signal can then reach the backend much later, after the pool has handed the
//! connection to another session, and cancel that session's statement. So the ORM opens the
//! cancel connection itself ([`CancelTarget`]) and a [`CancelStream`] waits, on shutdown, for the
//! server to close it: when the request returns, the backend has been signalled.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio_postgres::Config;
use tokio_postgres::config::Host;

/// Where a connection's cancel requests go: the one server its settings name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelTarget {
    /// A TCP host (name or address) and port.
    Tcp {
        /// The host, as the settings give it (also the TLS server name).
        host: String,
        /// The port.
        port: u16,
    },
    /// A Unix-domain socket file.
    Unix(PathBuf),
}

impl CancelTarget {
    /// The target of connections made with `config`, when it names exactly one server. With
    /// several hosts the server a connection reached is not known, and cancel requests go
    /// through tokio-postgres, without waiting for the server to act.
    ///
    /// ```
    /// use actor_orm_core::CancelTarget;
    ///
    /// let config = "host=db.internal port=6432 user=app".parse().unwrap();
    /// assert_eq!(
    ///     CancelTarget::from_config(&config),
    ///     Some(CancelTarget::Tcp { host: "db.internal".into(), port: 6432 })
    /// );
    /// let two = "host=a,b user=app".parse().unwrap();
    /// assert_eq!(CancelTarget::from_config(&two), None);
    /// ```
    pub fn from_config(config: &Config) -> Option<CancelTarget> {
        let [host] = config.get_hosts() else {
            return None;
        };
        let port = match config.get_ports() {
            [] => 5432,
            [port] => *port,
            _ => return None,
        };
        if let [addr] = config.get_hostaddrs() {
            return Some(CancelTarget::Tcp {
                host: addr.to_string(),
                port,
            });
        }
        match host {
            Host::Tcp(name) => Some(CancelTarget::Tcp {
                host: name.clone(),
                port,
            }),
            #[cfg(unix)]
            Host::Unix(dir) => Some(CancelTarget::Unix(dir.join(format!(".s.PGSQL.{port}")))),
            #[cfg(not(unix))]
            _ => None,
        }
    }

    /// The host name to check a TLS certificate against (empty for a Unix socket).
    pub fn host(&self) -> &str {
        match self {
            CancelTarget::Tcp { host, .. } => host,
            CancelTarget::Unix(_) => "",
        }
    }

    /// Opens a connection to the server for one cancel request.
    pub async fn open(&self) -> io::Result<CancelStream> {
        let inner = match self {
            CancelTarget::Tcp { host, port } => {
                Inner::Tcp(TcpStream::connect((host.as_str(), *port)).await?)
            }
            #[cfg(unix)]
            CancelTarget::Unix(path) => Inner::Unix(UnixStream::connect(path).await?),
            #[cfg(not(unix))]
            CancelTarget::Unix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "Unix-domain sockets",
                ));
            }
        };
        Ok(CancelStream { inner, shut: false })
    }
}

/// A cancel request's connection: its shutdown completes only when the server has closed it
/// (see the module docs).
#[derive(Debug)]
pub struct CancelStream {
    inner: Inner,
    shut: bool,
}

#[derive(Debug)]
enum Inner {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Inner {
    fn pin(&mut self) -> Pin<&mut (dyn Stream + '_)> {
        match self {
            Inner::Tcp(s) => Pin::new(s as &mut dyn Stream),
            #[cfg(unix)]
            Inner::Unix(s) => Pin::new(s as &mut dyn Stream),
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin {}
impl<S: AsyncRead + AsyncWrite + Unpin> Stream for S {}

impl AsyncRead for CancelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.inner.pin().poll_read(cx, buf)
    }
}

impl AsyncWrite for CancelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.pin().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.pin().poll_flush(cx)
    }

    /// Waits for the server to close the connection (it does once it has signalled the
    /// backend), then closes this side. The request is not ended with a half-close first: a
    /// pooler that sees the client leave while it is still forwarding the request can fail
    /// (PgBouncer 1.18 exits: pgbouncer#801), and the server needs nothing more than the request.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut scratch = [0u8; 64];
        while !self.shut {
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(self.inner.pin().poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => self.shut = true,
                Ok(()) => {}
                // A reset is the server closing too.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => self.shut = true,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        match ready!(self.inner.pin().poll_shutdown(cx)) {
            // The server closed first: nothing is left to end.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}
