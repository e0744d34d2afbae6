//! What the pool does to a connection through its connector: open it (with its driver task),
//! reset it for the next session, let it go.

use std::sync::Arc;
use std::time::Duration;

use actor_orm_core::{CancelTarget, Cause, Connection, Error, Result, StatementMode};
use ractor::ActorRef;

use crate::config::PoolConfig;
use crate::config::ResetPolicy;
use crate::supervisor::PoolMsg;

/// Opens one connection within `connect_timeout`, its I/O driven by a task of its own.
pub(crate) async fn connect(
    config: &PoolConfig,
    serial: u64,
    pool: &ActorRef<PoolMsg>,
) -> Result<Connection> {
    let attempt = open(config);
    let (client, connection) = match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(r) => r.map_err(connect_error)?,
        Err(_) => {
            return Err(Error::Connect {
                reason: format!(
                    "no answer within connect_timeout ({:?})",
                    config.connect_timeout
                ),
                cause: None,
            });
        }
    };
    let pool = pool.clone();
    let driver = tokio::spawn(async move {
        // Ends when the client is dropped or the server goes away; the pool hears of it (and
        // ignores it when it closed the connection itself).
        let reason = match connection.await {
            Ok(()) => "closed".to_owned(),
            Err(e) => e.to_string(),
        };
        let _ = pool.send_message(PoolMsg::Died { serial, reason });
    });
    // Whether a pooler is in between, and the backend's pid for `Pool::holders` (meaningless
    // behind a pooler): one simple query. With the statement mode set and the plain ROLLBACK
    // reset, a pooler changes nothing the pool does.
    let (found_pooler, pid) = pg_probe(&client, &config.pg, config.connect_timeout).await?;
    let pooled = match config.statement_mode {
        Some(_) if config.reset == ResetPolicy::Rollback => false,
        _ => found_pooler,
    };
    if pooled {
        refuse_reset_behind_pooler(&config.reset)?;
    }
    let mode = config.statement_mode.unwrap_or(if pooled {
        StatementMode::Unnamed
    } else {
        StatementMode::Prepared
    });
    let mut conn = Connection::with_connector(client, mode, config.connector.clone());
    conn.set_backend_pid(pid);
    conn.set_cancel_target(CancelTarget::from_config(&config.pg));
    conn.log_values(config.log_values);
    // Closing the connection (a discard, the pool's close) ends the driver and its socket at
    // once, even when the server has stopped answering.
    conn.attach_driver(driver.abort_handle());
    if config.sandbox {
        // The test sandbox: one outer transaction, never committed (see `PoolBuilder::sandbox`).
        let start = conn.batch(actor_orm_core::SANDBOX_START);
        match tokio::time::timeout(config.connect_timeout, start).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::ConnectionLost {
                    reason: "the new connection did not answer within connect_timeout".into(),
                    cause: None,
                });
            }
        }
        conn.set_sandbox();
    }
    if config.autocommit_reads {
        // One question (the server's default isolation), within the same time limit.
        match tokio::time::timeout(config.connect_timeout, conn.enable_autocommit_reads()).await {
            Ok(r) => r.map(drop)?,
            Err(_) => {
                return Err(Error::ConnectionLost {
                    reason: "the new connection did not answer within connect_timeout".into(),
                    cause: None,
                });
            }
        }
    }
    Ok(conn)
}

/// The connector's connection to the first host that has the attributes asked for; with
/// `prefer-standby`, a standby's if any answers, else any host's (libpq's meaning).
async fn open(
    config: &PoolConfig,
) -> std::result::Result<(tokio_postgres::Client, actor_orm_core::Driver), tokio_postgres::Error> {
    let first = config.connector.connect(&config.pg).await;
    if first.is_ok() || !config.prefer_standby {
        return first;
    }
    let mut any = config.pg.clone();
    any.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::Any);
    config.connector.connect(&any).await
}

/// Whether a connection pooler stands between this connection and the server — the server's
/// port (`inet_server_port()`) is none of the ports dialled, or the server has one while a Unix
/// socket was dialled — and the backend's pid when there is none. One simple query (no named
/// statement, so a pooler takes it as it is).
async fn probe(
    client: &tokio_postgres::Client,
    pg: &tokio_postgres::Config,
) -> Result<(bool, Option<i32>)> {
    use tokio_postgres::config::Host;
    let rows = client
        .simple_query("SELECT inet_server_port(), pg_backend_pid()")
        .await?;
    let row = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some((
            r.get(0).and_then(|p| p.parse::<u16>().ok()),
            r.get(1).and_then(|p| p.parse::<i32>().ok()),
        )),
        _ => None,
    });
    let (server_port, pid) = row.unwrap_or((None, None));
    let Some(server_port) = server_port else {
        // A Unix-socket connection straight to the server.
        return Ok((false, pid));
    };
    let dialled_tcp =
        pg.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_))) || !pg.get_hostaddrs().is_empty();
    if !dialled_tcp {
        // A Unix socket was dialled, yet the server sees a TCP connection: a pooler's.
        return Ok((true, None));
    }
    let ports = pg.get_ports();
    let dialled = if ports.is_empty() { &[5432][..] } else { ports };
    let pooled = !dialled.contains(&server_port);
    if pooled {
        tracing::info!(
            server_port,
            dialled = ?dialled,
            "connect: a connection pooler stands in front of the server (its port is not the one dialled)"
        );
    }
    Ok((pooled, if pooled { None } else { pid }))
}

/// Refuses a connection that reaches the server through a transaction pooler, for work that
/// needs a server connection of its own (`needs` says why), unless the pool was given the
/// server's own address (`direct_at`), which the caller then dialled.
pub(crate) async fn require_server(
    config: &PoolConfig,
    client: &tokio_postgres::Client,
    pg: &tokio_postgres::Config,
    needs: &str,
) -> Result<()> {
    if config.direct_pg.is_some() {
        return Ok(());
    }
    if pg_probe(client, pg, config.connect_timeout).await?.0 {
        return Err(Error::Config(format!(
            "{needs}, which a connection pooler in transaction mode (such as PgBouncer's) does \
             not keep: between transactions it hands the server connection to other clients. \
             Give the pool the server's own address with PoolBuilder::direct_at (or a \
             session-mode pooler's)"
        )));
    }
    Ok(())
}

/// A connection of its own to the server itself (`direct_at`, else the pool's address), outside
/// the pool's leases, for work that needs one (`needs` says why; see [`require_server`]).
pub(crate) async fn server_client(
    config: &PoolConfig,
    needs: &str,
) -> Result<tokio_postgres::Client> {
    let pg = config.direct_pg.as_ref().unwrap_or(&config.pg);
    let open = config.connector.connect(pg);
    let (client, driver) = tokio::time::timeout(config.connect_timeout, open)
        .await
        .map_err(|_| Error::Connect {
            reason: format!(
                "no answer within connect_timeout ({:?})",
                config.connect_timeout
            ),
            cause: None,
        })?
        .map_err(connect_error)?;
    tokio::spawn(driver);
    require_server(config, &client, pg, needs).await?;
    Ok(client)
}

/// [`probe`] within `limit`.
async fn pg_probe(
    client: &tokio_postgres::Client,
    pg: &tokio_postgres::Config,
    limit: Duration,
) -> Result<(bool, Option<i32>)> {
    match tokio::time::timeout(limit, probe(client, pg)).await {
        Ok(r) => r,
        Err(_) => Err(Error::ConnectionLost {
            reason: "the new connection did not answer within connect_timeout".into(),
            cause: None,
        }),
    }
}

/// Behind a transaction pooler, a reset after COMMIT runs on whatever server connection the
/// pooler picks, not the one the session used: only `Rollback` (harmless anywhere) is allowed.
fn refuse_reset_behind_pooler(reset: &ResetPolicy) -> Result<()> {
    let what = match reset {
        ResetPolicy::Rollback => return Ok(()),
        ResetPolicy::DiscardAll => "ResetPolicy::DiscardAll",
        _ => "a ResetPolicy::Custom reset",
    };
    Err(Error::Config(format!(
        "{what} cannot work behind a connection pooler such as PgBouncer: it would run after \
         COMMIT, on whichever server connection the pooler picks (another client's), and leave \
         the session's own server connection as it was. Reset server connections in the pooler \
         (PgBouncer: server_reset_query = DISCARD ALL with server_reset_query_always = 1), keep \
         session state out of sessions (SET LOCAL, not SET), and use ResetPolicy::Rollback"
    )))
}

pub(crate) fn connect_error(e: tokio_postgres::Error) -> Error {
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
    Error::Connect {
        reason,
        cause: Some(Cause::new(e)),
    }
}

/// Authentication failures, missing databases and failed TLS handshakes (an untrusted
/// certificate, TLS required but not offered) do not go away by waiting.
pub(crate) fn is_fatal_connect_error(e: &Error) -> bool {
    match e {
        Error::Connect { reason, .. } => reason.starts_with("error performing TLS handshake"),
        // A setting that cannot work with this server (a reset behind a pooler).
        Error::Config(_) => true,
        _ => e
            .code()
            .is_some_and(|c| c.starts_with("28") || c == "3D000"),
    }
}

/// Nothing listens at the address (connection refused) or the server is starting up or shutting
/// down (57P03): an attempt costs the server nothing, so the pool tries again promptly instead of
/// backing off — the first session after a restart is served soon after the server accepts.
pub(crate) fn is_server_absent(e: &Error) -> bool {
    if e.code() == Some("57P03") {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            )
        {
            return true;
        }
        source = cause.source();
    }
    false
}

pub(crate) fn copy_error(e: &Error) -> Error {
    match (e, e.as_db_error()) {
        (_, Some(db)) => Error::Database(Box::new(db.clone())),
        (Error::Config(text), None) => Error::Config(text.clone()),
        (Error::Connect { reason, cause }, None) => Error::Connect {
            reason: reason.clone(),
            cause: cause.clone(),
        },
        (_, None) => Error::ConnectionLost {
            reason: e.to_string(),
            cause: None,
        },
    }
}

/// Makes a returned connection safe for the next session, and known idle: cancel what an
/// interrupted session left running, take in the answers nobody waited for, end any transaction,
/// apply the policy. The connection passes only if every statement sent on it has been answered
/// within `timeout`; otherwise it is discarded (a frozen server answers nothing, and a cancel
/// still queued for its backend must not land on the next session's statement).
pub(crate) async fn reset(
    conn: &Connection,
    rollback: bool,
    policy: &ResetPolicy,
    timeout: Duration,
) -> bool {
    let work = async {
        if conn.needs_cancel() {
            conn.cancel_running(timeout).await?;
        }
        conn.forgotten_answered().await;
        // Answers come in order: the ROLLBACK's answer is also the abandoned statement's.
        if rollback || conn.was_interrupted() {
            conn.batch("ROLLBACK").await?;
        }
        // In the test sandbox: the lease's savepoint released (or rolled back to), the next
        // one taken.
        conn.sandbox_next_lease().await?;
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
    matches!(tokio::time::timeout(timeout, work).await, Ok(Ok(()))) && conn.is_idle()
}

/// Lets a connection go: its socket is closed and its driver task ended at once. One that may
/// still be running an abandoned statement is sent a cancel first, so its backend does not run
/// on past the socket.
pub(crate) fn discard(conn: Arc<Connection>) {
    if conn.needs_cancel() && !conn.is_closed() {
        let cancel = conn.cancel_request();
        tokio::spawn(async move {
            // Bounded: a frozen server does not answer it.
            let _ = tokio::time::timeout(Duration::from_secs(5), cancel).await;
        });
    }
    conn.close();
}
