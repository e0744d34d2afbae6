//! The pool handle and its builder.

use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use actor_orm_core::{Connector, Error, Result, StatementMode};
use tokio::sync::oneshot;

use crate::config::{IntoConfig, PoolConfig, ResetPolicy};
use crate::link::PoolLink;
use crate::session::Session;
use crate::session_actor;
use crate::stats::PoolStats;
use crate::supervisor::PoolMsg;
use crate::tls::{RootCerts, SslMode, TlsSettings};

/// A pool of PostgreSQL connections, run by a supervisor actor. Cheap to clone; every clone is
/// the same pool. Sessions come from [`Pool::session`].
///
/// When the last clone (and the last session) is dropped, the pool closes itself.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    link: PoolLink,
    config: Arc<PoolConfig>,
    pid: u32,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        let (tx, _rx) = oneshot::channel();
        let _ = self
            .link
            .actor
            .send_message(PoolMsg::Close(self.config.close_timeout, tx));
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Starts configuring a pool for `target`: a `postgres://` URL, a key=value string or a
    /// [`tokio_postgres::Config`]. A malformed string is reported by [`PoolBuilder::build`].
    pub fn builder(target: impl IntoConfig) -> PoolBuilder {
        let prefer_standby = target.prefers_standby();
        let parts = target.into_parts();
        let tls = parts
            .as_ref()
            .map(|(_, mode, root)| TlsSettings::from_parts(*mode, root.clone()))
            .unwrap_or_default();
        PoolBuilder {
            config: parts.map(|(pg, _, _)| {
                let mut config = PoolConfig::new(pg);
                config.prefer_standby = prefer_standby;
                config
            }),
            application_name: Some("actor-orm".into()),
            tls,
            connector: None,
        }
    }

    /// A new session: a session actor linked to this pool's supervisor. It checks a connection
    /// out on its first statement and holds it until it ends. Where this is called is recorded
    /// for leak reports.
    #[track_caller]
    pub fn session(&self) -> impl Future<Output = Result<Session>> + Send + 'static {
        self.spawn_session(None, Location::caller())
    }

    /// [`Pool::session`] with a name for logs, leak reports and timeout errors.
    #[track_caller]
    pub fn named_session(
        &self,
        name: impl Into<String>,
    ) -> impl Future<Output = Result<Session>> + Send + 'static {
        self.spawn_session(Some(name.into()), Location::caller())
    }

    pub(crate) fn spawn_session(
        &self,
        name: Option<String>,
        site: &'static Location<'static>,
    ) -> impl Future<Output = Result<Session>> + Send + 'static {
        let pool = self.clone();
        async move {
            pool.check_process()?;
            session_actor::spawn(pool, name, site).await
        }
    }

    /// A connection inherited across `fork()` shares its socket with the parent: never use one.
    /// Every call of a pool or session in a forked child answers this at once (the supervisor
    /// and the session actors did not come along: their tasks live in the parent). Costs an
    /// atomic load until the process has forked.
    pub(crate) fn check_process(&self) -> Result<()> {
        if !crate::fork::has_forked() {
            return Ok(());
        }
        let now = std::process::id();
        if now != self.inner.pid {
            return Err(Error::PoolClosed {
                reason: format!(
                    "this pool was created in process {} and cannot be used after fork() (this is process {now}); create a new pool in the child",
                    self.inner.pid
                ),
            });
        }
        Ok(())
    }

    /// The supervisor and the shared books, for a new session.
    pub(crate) fn link(&self) -> &PoolLink {
        &self.inner.link
    }

    /// Every session holding a connection now, longest first: its name and where it was
    /// created, how long it has held the connection, and — asked of `pg_stat_activity` over a
    /// connection of its own — the backend's pid and state, the statement it runs (or last ran)
    /// and how long its transaction has been open. Behind a pooler (no `direct_at`) the
    /// server's side is left empty. For an operator's endpoint; the pool-timeout error lists the
    /// same holders (without asking the server).
    ///
    /// ```no_run
    /// # async fn demo(pool: actor_orm_actors::Pool) -> actor_orm_core::Result<()> {
    /// for h in pool.holders().await? {
    ///     println!("{} for {:?}: {:?}", h.session, h.held, h.statement);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn holders(&self) -> Result<Vec<actor_orm_core::Holder>> {
        let link = &self.inner.link;
        let mut holders = link.holders();
        if let Some(set) = &link.replicas {
            for r in &set.replicas {
                holders.extend(r.link.holders());
            }
        }
        holders.sort_by_key(|h| std::cmp::Reverse(h.held));
        let pids: Vec<i32> = holders.iter().filter_map(|h| h.backend_pid).collect();
        if pids.is_empty() {
            return Ok(holders);
        }
        // Replicas' backends are on other servers: the primary's view covers its own.
        let needs = "the holders' backends are asked of pg_stat_activity by pid";
        let Ok(client) = crate::connect::server_client(self.config(), needs).await else {
            return Ok(holders);
        };
        let rows = client
            .query_typed(
                "SELECT pid, state, query, \
                        extract(epoch FROM clock_timestamp() - xact_start)::float8 \
                 FROM pg_stat_activity WHERE pid = ANY($1)",
                &[(&pids, tokio_postgres::types::Type::INT4_ARRAY)],
            )
            .await?;
        for row in rows {
            let pid: i32 = row.get(0);
            if let Some(h) = holders.iter_mut().find(|h| h.backend_pid == Some(pid)) {
                h.state = row.get(1);
                h.statement = row.get(2);
                h.transaction = row
                    .get::<_, Option<f64>>(3)
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64);
            }
        }
        Ok(holders)
    }

    /// Each read replica's state: in the rotation or not, how far behind, how many reads it
    /// served; empty without replicas. With [`Pool::primary_reads`], where reads went.
    pub fn replica_stats(&self) -> Vec<crate::ReplicaStats> {
        self.inner
            .link
            .replicas
            .as_ref()
            .map(|r| r.stats())
            .unwrap_or_default()
    }

    /// Reads that could have gone to a replica but went to the primary (no replica in the
    /// rotation had replayed the session's causal token).
    pub fn primary_reads(&self) -> u64 {
        self.inner.link.replicas.as_ref().map_or(0, |r| {
            r.primary_reads.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// The pool's settings.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Subscribes to LISTEN `channels` on a connection of the listener's own, outside the
    /// pool's leases: notifications arrive as [`Event`](crate::Event)s, with
    /// [`Event::Reconnected`](crate::Event::Reconnected) after a lost connection comes back
    /// (LISTENs issued again) and [`Event::Lagged`](crate::Event::Lagged) when the subscriber
    /// fell behind its buffer (4,096 events). Returns once the LISTENs are in place; the
    /// subscription ends when dropped or when the pool closes. Send with
    /// [`Session::notify`](crate::Session::notify).
    pub async fn listen<S: Into<String>>(
        &self,
        channels: impl IntoIterator<Item = S>,
    ) -> Result<crate::listener::Subscription> {
        self.listen_with_capacity(channels, crate::listener::CAPACITY)
            .await
    }

    /// [`listen`](Self::listen) with a buffer of `capacity` events.
    pub async fn listen_with_capacity<S: Into<String>>(
        &self,
        channels: impl IntoIterator<Item = S>,
        capacity: usize,
    ) -> Result<crate::listener::Subscription> {
        if !self.is_running() {
            return Err(closed());
        }
        let channels: Vec<String> = channels.into_iter().map(Into::into).collect();
        let (subscription, spec, first) =
            crate::listener::open_subscription(self.inner.config.clone(), channels, capacity)
                .await?;
        let supervisor = self.link().actor.get_cell();
        let actor = crate::listener::spawn(spec.clone(), Some(first), supervisor).await?;
        self.link().keep_listener(actor.get_cell(), spec);
        Ok(subscription)
    }

    /// Kills every listener actor of the pool, as a crash would: the pool starts others. For
    /// fault tests.
    #[doc(hidden)]
    pub fn kill_listeners(&self) {
        for (listener, _) in &self.link().listeners() {
            listener.kill();
        }
    }

    /// A snapshot of the pool's numbers.
    pub async fn stats(&self) -> Result<PoolStats> {
        self.ask(PoolMsg::Stats).await
    }

    /// Retires every connection open now: idle ones are closed at once, leased ones when they
    /// come back. Connections opened afterwards are fresh.
    pub async fn drain(&self) -> Result<()> {
        self.ask(PoolMsg::Drain).await
    }

    /// Closes the pool: no new checkouts; sessions holding connections get `timeout` to finish,
    /// then they are stopped; every connection is closed. Returns when the pool has stopped.
    pub async fn close(&self, timeout: Duration) -> Result<()> {
        self.check_process()?;
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .link
            .actor
            .send_message(PoolMsg::Close(timeout, tx))
            .is_err()
        {
            return Ok(());
        }
        let _ = rx.await;
        Ok(())
    }

    /// Whether the pool's supervisor is still running.
    pub fn is_running(&self) -> bool {
        self.inner.link.actor.get_status() < ractor::ActorStatus::Stopping
    }

    /// Stops the supervisor at once, as a crash would (for fault tests): every session is
    /// stopped and every connection closed.
    #[doc(hidden)]
    pub fn kill_supervisor(&self) {
        self.inner.link.actor.kill();
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> PoolMsg) -> Result<T> {
        self.check_process()?;
        let (tx, rx) = oneshot::channel();
        self.inner
            .link
            .actor
            .send_message(make(tx))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())
    }
}

pub(crate) fn closed() -> Error {
    Error::PoolClosed {
        reason: "the pool's supervisor has stopped".into(),
    }
}

/// Configures and starts a [`Pool`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder {
    config: Result<PoolConfig>,
    application_name: Option<String>,
    tls: TlsSettings,
    connector: Option<Arc<dyn Connector>>,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            if let Ok(c) = &mut self.config {
                c.$name = value;
            }
            self
        }
    };
}

macro_rules! optional {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub fn $name(mut self, value: impl Into<Option<Duration>>) -> Self {
            if let Ok(c) = &mut self.config {
                c.$name = value.into();
            }
            self
        }
    };
}

impl PoolBuilder {
    setter!(
        /// The most connections open at once. Default 10.
        max_size: usize
    );
    setter!(
        /// Connections kept ready besides those in use (within `max_size`). Default 0.
        min_idle: usize
    );
    setter!(
        /// How long a session waits for a connection before [`Error::PoolTimeout`]. Default 30 s.
        acquire_timeout: Duration
    );
    setter!(
        /// How long opening one connection may take. Default 10 s.
        connect_timeout: Duration
    );
    optional!(
        /// Idle connections unused this long are closed, down to `min_idle`. Default 10 min;
        /// `None` keeps them.
        idle_timeout
    );
    optional!(
        /// Connections are retired (when free) after this long. Default 30 min; `None` never.
        max_lifetime
    );
    optional!(
        /// Up to this much is taken off each connection's `max_lifetime` at random, so that
        /// connections opened together do not retire together. Default a tenth of `max_lifetime`.
        max_lifetime_jitter
    );
    optional!(
        /// An idle connection not used or checked for this long is sent `SELECT 1`. Default 2 min.
        keepalive_interval
    );
    setter!(
        /// A connection idle longer than this is checked with `SELECT 1` before it is handed out.
        /// Default 5 s.
        health_check_after: Duration
    );
    setter!(
        /// How long a health check (`SELECT 1` on an idle connection) may take before the
        /// connection is discarded and, if a session waits, replaced. A connection under a check
        /// still counts towards `max_size` (the server never sees more), so this bounds how long
        /// a frozen server's idle connections can keep new sessions waiting. Default 1 s.
        health_check_timeout: Duration
    );
    setter!(
        /// What returning a connection runs. Default [`ResetPolicy::Rollback`].
        reset: ResetPolicy
    );
    setter!(
        /// How long a returned connection may take to be known idle again (the answers to its
        /// last statements, its cancel, its ROLLBACK and the reset policy) before it is
        /// discarded instead. Default 5 s.
        reset_timeout: Duration
    );
    optional!(
        /// A lease held longer than this logs one warning naming the session and where it was
        /// created. Default 60 s; `None` turns it off.
        leak_threshold
    );
    optional!(
        /// A session holding a connection longer than this is stopped and its connection
        /// reclaimed. Default `None`.
        max_session_lifetime
    );
    /// Prepared statements cached per connection ([`StatementMode::Prepared`]) or unnamed
    /// statements ([`StatementMode::Unnamed`]). By default each connection chooses: unnamed when
    /// it finds a connection pooler between it and the server (the server's port, from
    /// `inet_server_port()`, is not the one dialled), since behind PgBouncer's transaction
    /// pooling a prepared statement lives on one server connection and the next transaction
    /// may run on another — where a statement of the same name may be another process's.
    /// Setting `Prepared` explicitly is for a pooler that tracks prepared statements itself
    /// (PgBouncer 1.21 and later with `max_prepared_statements`).
    pub fn statement_mode(mut self, mode: StatementMode) -> Self {
        if let Ok(c) = &mut self.config {
            c.statement_mode = Some(mode);
        }
        self
    }
    setter!(
        /// Whether a session's reads run without BEGIN until it first writes. Default `true`.
        ///
        /// A session opens its transaction at the first write, raw statement, locking or
        /// hand-written expression, or [`Session::begin`](crate::Session::begin). Reads before
        /// that (`get`, `all`, `count`, … built from typed columns) run on their own: at READ
        /// COMMITTED every statement of a transaction takes a fresh snapshot anyway, so they see
        /// what they would see inside it, and a read-only request costs one statement instead of
        /// three (BEGIN, SELECT, COMMIT). This holds only where the server's
        /// `default_transaction_isolation` is READ COMMITTED (each connection asks once) and no
        /// raw SQL on the connection has mentioned isolation since. `false` makes every read open
        /// the transaction, as SQLAlchemy's autobegin does.
        autocommit_reads: bool
    );
    setter!(
        /// Whether `save` checks that the columns it changes still hold the values this session
        /// loaded (for models without a version column), failing with
        /// [`Error::Stale`](actor_orm_core::Error::Stale) instead of overwriting a concurrent
        /// change. Default `true`. A model can turn it off for itself with
        /// `#[orm(dirty_check = false)]`; see [`SessionState::save`](actor_orm_core::SessionState::save).
        dirty_check: bool
    );
    setter!(
        /// What a session does when it runs the same single-key read (a `get` that reaches the
        /// server) more than a threshold of times — the shape of an N+1 query that
        /// [`Session::load`](crate::Session::load) replaces with one statement per relation.
        /// Default [`NPlusOne::Warn(20)`](actor_orm_core::NPlusOne): one `tracing` warning per
        /// statement and session, naming the session, where it was created, the statement and
        /// the count. `NPlusOne::Error(n)` makes it a typed error (for tests); `Off` turns it off.
        n_plus_one: actor_orm_core::NPlusOne
    );
    setter!(
        /// Whether the statement log shows the values bound to each statement. Default `false`:
        /// values are data, and may be secret. The log itself is a `tracing` event per statement
        /// at DEBUG on target `actor_orm::sql` (SQL text, microseconds, rows, inside the
        /// session's span): `RUST_LOG=actor_orm::sql=debug` shows every statement.
        log_values: bool
    );
    setter!(
        /// How long a pool closed by dropping its last handle waits for sessions. Default 5 s.
        close_timeout: Duration
    );
    setter!(
        /// How many ended session actors the pool keeps for later sessions. Default 256; `0`
        /// starts and stops an actor for every session.
        ///
        /// Starting an actor (a task, its mailboxes, its link to the supervisor) costs more than
        /// a short request's own work in the pool. A session actor is kept only when its session
        /// ended with its last handle (dropped, or the only one [`Session::close`]d), so no handle
        /// on the old session is left to reach the new one; everything the old session held
        /// (identity map, pending changes, transaction state, its connection) is gone before the
        /// actor is kept. Actors left unused longer than `idle_timeout` are stopped.
        ///
        /// [`Session::close`]: crate::Session::close
        spare_sessions: usize
    );

    /// How connections are secured: libpq's `sslmode` (see [`SslMode`]). Default: what the
    /// connection string says, else `prefer`.
    pub fn ssl_mode(mut self, mode: SslMode) -> Self {
        self.tls.mode = mode;
        self
    }

    /// A PEM file of the CA certificates trusted for `verify-ca` and `verify-full` (libpq's
    /// `sslrootcert`). Default: what the connection string says, else the system's store.
    pub fn ssl_root_cert(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls.roots = RootCerts::File(path.into());
        self
    }

    /// Opens connections (and sends cancel requests) with this connector instead of the one the
    /// `sslmode` settings make: for a transport of your own, or a fake one in tests.
    pub fn connector(mut self, connector: Arc<dyn Connector>) -> Self {
        self.connector = Some(connector);
        self
    }

    /// The `application_name` every connection reports (seen in `pg_stat_activity`):
    /// `.application_name("billing")`. Default `actor-orm`.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// The server's own address, for what needs a server connection of its own when sessions go
    /// through a transaction pooler: [`Pool::listen`] (`LISTEN` lasts as long as it listens) and
    /// [`Pool::migrate`] (it holds a session-level advisory lock). PgBouncer's transaction
    /// pooling hands the server connection to other clients between transactions, with their
    /// notifications and locks. Point it at the server itself, or at a session-pooling
    /// PgBouncer. Without it, a listener or the migrator that finds a pooler in front of the
    /// server (as sessions do, see [`statement_mode`](Self::statement_mode)) refuses with
    /// [`Error::Config`](actor_orm_core::Error::Config). The pool's TLS settings apply.
    ///
    /// ```no_run
    /// # async fn demo() -> actor_orm_core::Result<()> {
    /// let pool = actor_orm_actors::Pool::builder("postgres://app@pgbouncer:6432/shop")
    ///     .direct_at("postgres://app@db-primary:5432/shop")
    ///     .build()
    ///     .await?;
    /// let _jobs = pool.listen(["jobs"]).await?;
    /// # Ok(()) }
    /// ```
    pub fn direct_at(mut self, target: impl IntoConfig) -> Self {
        match (&mut self.config, target.into_config()) {
            (Ok(c), Ok(pg)) => c.direct_pg = Some(crate::config::with_keepalive(pg)),
            (Ok(_), Err(e)) => self.config = Err(e),
            (Err(_), _) => {}
        }
        self
    }

    /// Adds a read replica (a streaming standby of the primary): a session's reads before its
    /// first write go to a replica that has replayed the session's causal token (the WAL
    /// position of its last commit, or one given to
    /// [`Session::read_after`](crate::Session::read_after)), else to the primary; writes and
    /// transactions go to the primary. Each replica has a pool of its own with this pool's
    /// settings. Reads outside a transaction only (`autocommit_reads`, the default).
    ///
    /// ```no_run
    /// # async fn demo() -> actor_orm_core::Result<()> {
    /// let pool = actor_orm_actors::Pool::builder("postgres://app@db-primary/shop")
    ///     .replica("postgres://app@db-replica-1/shop")
    ///     .replica("postgres://app@db-replica-2/shop")
    ///     .build()
    ///     .await?;
    /// # let _ = pool; Ok(()) }
    /// ```
    pub fn replica(mut self, target: impl IntoConfig) -> Self {
        match (&mut self.config, target.into_config()) {
            (Ok(c), Ok(pg)) => c.replicas.push(crate::config::with_keepalive(pg)),
            (Ok(_), Err(e)) => self.config = Err(e),
            (Err(_), _) => {}
        }
        self
    }
    optional!(
        /// How long one statement of a session may run: past it the statement is cancelled on
        /// the server and the caller gets [`Error::DeadlineExceeded`](actor_orm_core::Error::DeadlineExceeded)
        /// (a transaction it ran in must then be rolled back). Default none. A session's own
        /// deadline ([`Session::set_deadline`](crate::Session::set_deadline)) bounds it too.
        statement_timeout
    );
    /// How long the pool waits before trying again after a connection attempt fails: `first`,
    /// doubling after each failure in a row up to `most`. Default 25 ms up to 1 s. While the
    /// server is absent — the connection is refused, or the server answers that it is starting
    /// up or shutting down — attempts cost it nothing, and the pool tries every 100 ms at most
    /// (or every `first`, if longer): after a restart the first session is served within about
    /// 100 ms of the server accepting connections. Once a connect succeeds, the pool opens what
    /// sessions need at once. Sessions waiting meanwhile wait up to `acquire_timeout`.
    pub fn connect_backoff(mut self, first: Duration, most: Duration) -> Self {
        if let Ok(c) = &mut self.config {
            c.connect_backoff = (first.max(Duration::from_millis(1)), most.max(first));
        }
        self
    }
    setter!(
        /// How far behind the primary a replica may fall and stay in the rotation. Default 5 s.
        replica_lag_limit: Duration
    );
    setter!(
        /// How often each replica's replay position (and the primary's WAL position) is asked.
        /// Default 250 ms.
        replica_check_interval: Duration
    );

    /// Leaves `application_name` to what the connection settings say (instead of `actor-orm`).
    pub fn keep_application_name(mut self) -> Self {
        self.application_name = None;
        self
    }

    /// The test sandbox, as `#[actor_orm::test]` builds it: every session of the pool runs
    /// inside one outer transaction on one connection, which is never committed — everything
    /// is rolled back when the connection closes (the pool's close, the test's end, a panic,
    /// the process killed). A session's BEGIN, COMMIT and ROLLBACK become a savepoint, its
    /// release and a rollback to it; a statement outside a transaction is a savepoint of its
    /// own, so a failed one fails alone, as in autocommit.
    ///
    /// Sessions take turns on the connection, one transaction (or one statement outside a
    /// transaction) at a time: concurrent sessions are serialized and see each other's
    /// commits. A session that keeps a transaction open makes the others wait (up to
    /// `acquire_timeout`) until it commits or rolls back. Not for what needs real commits or
    /// other connections: `LISTEN`/`NOTIFY`, locks seen from another connection, raw
    /// `BEGIN`/`COMMIT` (refused) — give such tests a database of their own. A lost
    /// connection is not replaced (what the test wrote went with it): sessions then get
    /// [`Error::Config`](actor_orm_core::Error::Config).
    ///
    /// Sets `max_size` 1 and drops `max_lifetime` and `idle_timeout`; refuses read replicas.
    ///
    /// ```no_run
    /// # async fn demo() -> actor_orm_core::Result<()> {
    /// let pool = actor_orm_actors::Pool::builder("postgres://postgres@localhost/app_test")
    ///     .sandbox()
    ///     .build()
    ///     .await?;
    /// let s = pool.session().await?;
    /// s.raw_execute("DELETE FROM users", vec![]).await?;
    /// s.commit().await?; // a savepoint released: the other sessions of the pool see it
    /// pool.close(std::time::Duration::from_secs(5)).await?; // and now it is all rolled back
    /// # Ok(()) }
    /// ```
    pub fn sandbox(mut self) -> Self {
        if let Ok(c) = &mut self.config {
            c.sandbox = true;
        }
        self
    }

    /// Checks the settings and starts the supervisor. Connections are opened as sessions need
    /// them (and `min_idle` of them at once, in the background).
    pub async fn build(self) -> Result<Pool> {
        let mut config = self.config?;
        if config.sandbox && !config.replicas.is_empty() {
            return Err(Error::Config(
                "the test sandbox runs every session on one connection: it has no read replicas"
                    .into(),
            ));
        }
        if config.sandbox {
            (config.max_size, config.min_idle) = (1, 1);
            (config.max_lifetime, config.idle_timeout) = (None, None);
            config.reset = ResetPolicy::Rollback;
        }
        if let Some(name) = self.application_name {
            config.pg.application_name(&name);
            if let Some(listen) = &mut config.direct_pg {
                listen.application_name(&name);
            }
        }
        config.pg.connect_timeout(config.connect_timeout);
        config.connector = match self.connector {
            Some(c) => c,
            None => self.tls.connector()?,
        };
        config.validate()?;
        let config = Arc::new(config);
        crate::fork::watch();
        let replicas = crate::replica::ReplicaSet::start(&config).await?;
        let link = PoolLink::start(config.clone(), replicas).await?;
        Ok(Pool {
            inner: Arc::new(PoolInner {
                link,
                config,
                pid: std::process::id(),
            }),
        })
    }
}
