//! One PostgreSQL connection as the ORM uses it: statements with bound values, a statement cache,
//! and a count of round trips.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sea_query::{Value, Values};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};
use tracing::Instrument as _;

use crate::bind::Bind;
use crate::cancel::CancelTarget;
use crate::connector::{Connector, PlainConnector};
use crate::error::{Error, Result};
use crate::flight::Flight;
use crate::sandbox::{Sandbox, tx_control};
use crate::stream::RowsInFlight;

/// How statements are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StatementMode {
    /// Prepare each distinct SQL text once per connection and reuse it (the fastest).
    #[default]
    Prepared,
    /// Parse every statement anew, as an unnamed statement: for PgBouncer in transaction mode,
    /// where a prepared statement may not exist on the next server connection.
    Unnamed,
}

/// A client with the ORM's statement handling. Shared (`Arc`) between the pool that owns it and
/// the session using it.
#[derive(Debug)]
pub struct Connection {
    client: Client,
    mode: StatementMode,
    /// The server process serving it (`pg_backend_pid()`), when known and meaningful (not
    /// behind a pooler).
    backend_pid: Option<i32>,
    /// Keyed by SQL text, which the program writes (values are bound): a fast hasher serves.
    cache: Mutex<HashMap<String, Statement, rustc_hash::FxBuildHasher>>,
    /// In [`StatementMode::Unnamed`]: the parameter types of statements asked about (see
    /// [`param_types`](Self::param_types)), whose statements were closed.
    param_cache:
        Mutex<HashMap<String, Vec<tokio_postgres::types::Type>, rustc_hash::FxBuildHasher>>,
    round_trips: AtomicU64,
    log: Mutex<Option<Vec<String>>>,
    /// Whether `log` records (checked before taking its lock).
    recording: AtomicBool,
    /// What the connection owes: statements sent and not yet answered.
    flight: Flight,
    autocommit_reads: AtomicBool,
    /// How this connection reached the server: cancel requests go the same way.
    connector: Arc<dyn Connector>,
    /// The task driving the socket, ended by [`close`](Self::close) or when this is dropped.
    driver: OnceLock<tokio::task::AbortHandle>,
    /// Where cancel requests go, when the settings name one server.
    cancel_target: Option<CancelTarget>,
    /// Whether the statement log shows bound values.
    log_values: AtomicBool,
    /// Array types over mapped types, by element name (unnamed statements only).
    types: Mutex<HashMap<String, tokio_postgres::types::Type>>,
    /// In the test sandbox: its transaction control (see the `sandbox` module).
    sandbox: Option<Sandbox>,
}

/// The statement log's target: `RUST_LOG=actor_orm::sql=debug` shows every statement.
pub const SQL_LOG: &str = "actor_orm::sql";

/// When a statement started, if the statement log is on.
/// The span of one statement, after OpenTelemetry's database conventions: `db.system`,
/// `db.operation`, `db.statement` (the text, never the values), `db.rows`, `error`; at DEBUG on
/// target `actor_orm::sql`, inside the session's span. Disabled, it costs one check.
fn statement_span(sql: &str) -> tracing::Span {
    let span = tracing::debug_span!(
        target: "actor_orm::sql",
        "db.statement",
        otel.name = tracing::field::Empty,
        otel.kind = "client",
        db.system = "postgresql",
        db.operation = tracing::field::Empty,
        db.statement = sql,
        db.rows = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    if !span.is_disabled() {
        let operation = operation(sql);
        span.record("otel.name", operation.as_str());
        span.record("db.operation", operation.as_str());
    }
    span
}

/// The statement's first word, upper-cased (`SELECT`, `INSERT`, `WITH`, `BEGIN`, …).
fn operation(sql: &str) -> String {
    sql.split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .find(|w| !w.is_empty())
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// Records a statement's outcome on its span.
fn record_outcome<T>(span: &tracing::Span, result: &Result<T>, rows: impl FnOnce(&T) -> u64) {
    if span.is_disabled() {
        return;
    }
    match result {
        Ok(r) => span.record("db.rows", rows(r)),
        Err(e) => span.record("error", tracing::field::display(e)),
    };
}

fn log_start() -> Option<std::time::Instant> {
    tracing::enabled!(target: "actor_orm::sql", tracing::Level::DEBUG).then(std::time::Instant::now)
}

/// Whether a statement's result came from the server (rows, a count, or a database error):
/// then every statement sent before it has been answered too.
fn answered<T>(result: &Result<T>) -> bool {
    match result {
        Ok(_) => true,
        Err(e) => e.as_db_error().is_some(),
    }
}

/// Prepared statements kept per connection before the cache is cleared.
const CACHE_LIMIT: usize = 512;

impl Connection {
    /// Wraps a client connected without TLS.
    pub fn new(client: Client, mode: StatementMode) -> Self {
        Connection::with_connector(client, mode, Arc::new(PlainConnector))
    }

    /// Wraps a client that `connector` opened; cancel requests go through it too.
    pub fn with_connector(
        client: Client,
        mode: StatementMode,
        connector: Arc<dyn Connector>,
    ) -> Self {
        Connection {
            connector,
            client,
            mode,
            backend_pid: None,
            cache: Mutex::new(HashMap::default()),
            param_cache: Mutex::new(HashMap::default()),
            round_trips: AtomicU64::new(0),
            log: Mutex::new(None),
            recording: AtomicBool::new(false),
            flight: Flight::default(),
            autocommit_reads: AtomicBool::new(false),
            driver: OnceLock::new(),
            cancel_target: None,
            log_values: AtomicBool::new(false),
            types: Mutex::default(),
            sandbox: None,
        }
    }

    /// Makes this the test sandbox's connection, on which [`SANDBOX_START`](crate::SANDBOX_START)
    /// has run: the ORM's BEGIN, COMMIT and ROLLBACK become savepoints of the outer
    /// transaction (see [`sandbox_next_lease`](Self::sandbox_next_lease)).
    pub fn set_sandbox(&mut self) {
        self.sandbox = Some(Sandbox::default());
    }

    /// Whether this is the test sandbox's connection.
    pub fn is_sandboxed(&self) -> bool {
        self.sandbox.is_some()
    }

    pub(crate) fn sandbox(&self) -> Option<&Sandbox> {
        self.sandbox.as_ref()
    }

    /// Records the server process serving this connection (see [`backend_pid`](Self::backend_pid)).
    pub fn set_backend_pid(&mut self, pid: Option<i32>) {
        self.backend_pid = pid;
    }

    /// The server process serving this connection (`pg_backend_pid()`), when the pool learnt
    /// it; `None` behind a pooler, where it changes from one transaction to the next.
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// Makes the statement log (target [`SQL_LOG`], level DEBUG) show the values bound to each
    /// statement. Off by default: values are data, and may be secret.
    pub fn log_values(&self, on: bool) {
        self.log_values.store(on, Ordering::Relaxed);
    }

    /// One statement log event: its SQL text (values are parameters, never part of it), how long
    /// it took, how many rows it returned or affected, and the values only when asked for.
    fn log<T>(
        &self,
        started: Option<std::time::Instant>,
        sql: &str,
        values: Option<&Values>,
        result: &Result<T>,
        rows: impl FnOnce(&T) -> u64,
    ) {
        let Some(started) = started else {
            return;
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let shown = values.filter(|_| self.log_values.load(Ordering::Relaxed));
        match (result, shown) {
            (Ok(r), None) => {
                tracing::debug!(target: "actor_orm::sql", sql, rows = rows(r), micros, "statement")
            }
            (Ok(r), Some(v)) => {
                tracing::debug!(target: "actor_orm::sql", sql, rows = rows(r), micros, values = ?v.0, "statement")
            }
            (Err(e), None) => {
                tracing::debug!(target: "actor_orm::sql", sql, micros, error = %e, "statement failed")
            }
            (Err(e), Some(v)) => {
                tracing::debug!(target: "actor_orm::sql", sql, micros, values = ?v.0, error = %e, "statement failed")
            }
        }
    }
    /// Sends cancel requests to `target` over connections the ORM opens itself, and waits for
    /// the server to act on each (see [`CancelTarget`]). Without it they go through
    /// tokio-postgres, which does not wait.
    pub fn set_cancel_target(&mut self, target: Option<CancelTarget>) {
        self.cancel_target = target;
    }

    /// Hands this connection the task that drives its socket, so that [`close`](Self::close)
    /// (or dropping the connection) ends it. Only the first call counts.
    pub fn attach_driver(&self, driver: tokio::task::AbortHandle) {
        let _ = self.driver.set(driver);
    }

    /// Closes the socket now: the driver task ends, and every statement still waiting on this
    /// connection fails with a lost connection. For a connection the pool gives up on (a hung
    /// server keeps no socket of ours open).
    pub fn close(&self) {
        if let Some(driver) = self.driver.get() {
            driver.abort();
        }
    }

    /// Lets reads built by the ORM run outside a transaction on this connection, when the
    /// session has none open, if the server's `default_transaction_isolation` is READ COMMITTED
    /// (PostgreSQL's default). At that level every statement of a transaction takes a fresh
    /// snapshot, so such a read sees exactly what it would see as the first statement of one;
    /// at REPEATABLE READ or SERIALIZABLE it would not, and reads keep opening the transaction.
    /// One round trip; returns whether reads may now skip BEGIN.
    pub async fn enable_autocommit_reads(&self) -> Result<bool> {
        self.count();
        let rows = self
            .client
            .simple_query("SHOW default_transaction_isolation")
            .await?;
        let level = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        let ok = matches!(
            level.as_deref(),
            Some("read committed" | "read uncommitted")
        );
        self.autocommit_reads.store(ok, Ordering::Relaxed);
        Ok(ok)
    }

    /// Whether reads built by the ORM may run outside a transaction on this connection (see
    /// [`enable_autocommit_reads`](Self::enable_autocommit_reads)).
    pub fn autocommit_reads(&self) -> bool {
        self.autocommit_reads.load(Ordering::Relaxed)
    }

    /// Makes every read on this connection open the transaction again, for the rest of its life:
    /// called when something the ORM cannot see through (raw SQL naming an isolation level, user
    /// code given the connection) may have changed the session's default isolation.
    pub fn disable_autocommit_reads(&self) {
        self.autocommit_reads.store(false, Ordering::Relaxed);
    }

    /// Notes SQL about to run (prepared statements once, when first prepared): SQL that mentions
    /// isolation (`SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL …`,
    /// `SET default_transaction_isolation …`) may change what a read outside a transaction would
    /// see, so reads go back inside one. A false alarm only costs the BEGIN saved.
    fn note_sql(&self, sql: &str) {
        if self.autocommit_reads()
            && sql
                .as_bytes()
                .windows(b"isolation".len())
                .any(|w| w.eq_ignore_ascii_case(b"isolation"))
        {
            self.disable_autocommit_reads();
        }
    }

    /// The tokio-postgres client, for what the ORM does not cover. What is done with it is out
    /// of the ORM's sight, so from then on reads on this connection open the transaction (see
    /// [`disable_autocommit_reads`](Self::disable_autocommit_reads)).
    pub fn client(&self) -> &Client {
        self.disable_autocommit_reads();
        &self.client
    }

    /// The client, for what the ORM itself does with it (COPY): unlike
    /// [`client`](Self::client), this keeps autocommit reads on.
    pub(crate) fn raw_client(&self) -> &Client {
        &self.client
    }

    /// A token to cancel whatever this connection is running, from anywhere.
    pub fn cancel_token(&self) -> tokio_postgres::CancelToken {
        self.client.cancel_token()
    }

    /// The statement mode.
    pub fn mode(&self) -> StatementMode {
        self.mode
    }

    /// Round trips to the server so far (each prepare, query or batch counts one).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Whether the client's connection has closed.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Whether a statement was abandoned mid-flight (its future dropped before the server
    /// answered) and nothing sent after it has been answered since: the server may still be
    /// running it, so the connection needs a cancel and an answer, or a discard, before reuse.
    pub fn was_interrupted(&self) -> bool {
        self.flight.interrupted()
    }

    /// Whether the connection is known idle on the server: every statement sent on it has been
    /// answered (also those sent without waiting, and any abandoned one) and none is running.
    /// Only such a connection may be handed to another session.
    pub fn is_idle(&self) -> bool {
        self.flight.idle()
    }

    /// Whether an abandoned statement still unanswered has had no cancel request yet.
    pub fn needs_cancel(&self) -> bool {
        self.flight.needs_cancel()
    }

    /// Waits until every statement sent by [`send_and_forget`](Self::send_and_forget) has been
    /// answered (or has failed with the connection). Bound it with a timeout: a frozen server
    /// never answers.
    pub async fn forgotten_answered(&self) {
        self.flight.forgotten_answered().await;
    }

    /// Asks the server to cancel whatever this connection is running (over a separate socket, as
    /// PostgreSQL's protocol has it). A cancel request is only a request: the abandoned
    /// statement still counts as running (and the connection as not idle) until a statement sent
    /// after it has been answered. Gives up after `limit`: a frozen server does not even
    /// answer a cancel request's TLS negotiation.
    pub async fn cancel_running(&self, limit: std::time::Duration) -> Result<()> {
        let upto = self.flight.abandoned();
        match tokio::time::timeout(limit, self.cancel_request()).await {
            Ok(sent) => sent?,
            Err(_) => {
                return Err(Error::ConnectionLost {
                    reason: format!("the server did not take the cancel request within {limit:?}"),
                    cause: None,
                });
            }
        }
        self.flight.cancelled(upto);
        Ok(())
    }

    /// A cancel request for whatever this connection runs, sent over the connection's own
    /// transport (TLS when it has it) when awaited. With a [`CancelTarget`] it ends once the
    /// server has signalled the backend. It owns what it needs, so it may outlive the connection
    /// (a discard sends one on its way out).
    pub fn cancel_request(&self) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>> {
        let token = self.cancel_token();
        let connector = self.connector.clone();
        let target = self.cancel_target.clone();
        Box::pin(async move {
            match target {
                Some(target) => {
                    let stream = target.open().await.map_err(|e| Error::ConnectionLost {
                        reason: format!("could not reach the server for a cancel request: {e}"),
                        cause: Some(crate::error::Cause::new(e)),
                    })?;
                    connector
                        .cancel_over(token, stream, target.host())
                        .await
                        .map_err(Error::from)
                }
                None => connector.cancel(token).await.map_err(Error::from),
            }
        })
    }

    /// The array type over the type named `name` (for arrays of a [`PgType`](crate::PgType) in
    /// unnamed statements, whose encoding carries the element's OID), asked once per connection
    /// with a simple query (no named statement, so PgBouncer's transaction mode is fine).
    async fn array_of(&self, name: &str) -> Result<tokio_postgres::types::Type> {
        use tokio_postgres::types::{Kind, Type};
        if let Some(t) = self.types.lock().ok().and_then(|m| m.get(name).cloned()) {
            return Ok(t);
        }
        self.count();
        // The name is bound into a literal by quoting: a type name written in the program, not
        // data, and quoted as SQL quotes a literal.
        let literal = name.replace('\'', "''");
        let rows = self
            .client
            .simple_query(&format!(
                "SELECT oid::text, typarray::text FROM pg_type WHERE oid = '{literal}'::regtype"
            ))
            .await?;
        let found = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                r.get(0).and_then(|v| v.parse::<u32>().ok())?,
                r.get(1).and_then(|v| v.parse::<u32>().ok())?,
            )),
            _ => None,
        });
        let Some((oid, array)) = found else {
            return Err(Error::InvalidInput(format!("no type named {name}")));
        };
        let element = Type::new(name.to_owned(), oid, Kind::Simple, String::new());
        let t = Type::new(
            format!("_{name}"),
            array,
            Kind::Array(element),
            String::new(),
        );
        if let Ok(mut m) = self.types.lock() {
            m.insert(name.to_owned(), t.clone());
        }
        Ok(t)
    }

    /// Forgets cached statements (after `DISCARD ALL`, which deallocates them on the server).
    pub fn clear_statement_cache(&self) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
    }

    /// Starts a `COPY … TO STDOUT` whose data is read as the caller takes it (prepared, as
    /// tokio-postgres runs COPY); returns once the server has begun answering.
    pub(crate) async fn start_copy_out(
        &self,
        sql: &str,
    ) -> Result<RowsInFlight<'_, tokio_postgres::CopyOutStream>> {
        let started = log_start();
        let mark = self.flight.start();
        self.record(sql);
        self.count();
        let result = self.client.copy_out(sql).await.map_err(Error::from);
        self.in_flight(started, mark, sql, None, result)
    }

    /// A statement whose answer has begun ([`RowsInFlight`]), or its failure logged and noted.
    fn in_flight<'c, S>(
        &'c self,
        started: Option<std::time::Instant>,
        mark: crate::flight::InFlight<'c>,
        sql: &str,
        values: Option<&Values>,
        result: Result<S>,
    ) -> Result<RowsInFlight<'c, S>> {
        match result {
            Ok(rows) => Ok(RowsInFlight {
                rows: Box::pin(rows),
                mark,
                started,
                count: 0,
                lost: false,
            }),
            Err(e) => {
                let failed: Result<RowsInFlight<'c, S>> = Err(e);
                self.log(started, sql, values, &failed, |_| 0);
                mark.done(answered(&failed), failed)
            }
        }
    }

    /// Logs a statement started by [`start_rows`](Self::start_rows) that returned `rows` rows.
    pub(crate) fn log_rows(&self, started: Option<std::time::Instant>, sql: &str, rows: u64) {
        self.log(started, sql, None, &Ok::<u64, Error>(rows), |n| *n);
    }

    fn count(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts (or stops) recording the SQL text of every statement sent, for tests and debugging.
    /// Values are never part of the text: they are bound parameters.
    pub fn record_statements(&self, on: bool) {
        if let Ok(mut log) = self.log.lock() {
            *log = on.then(Vec::new);
            self.recording.store(on, Ordering::Relaxed);
        }
    }

    /// The statements recorded since the last call (empty when not recording).
    pub fn take_statements(&self) -> Vec<String> {
        self.log
            .lock()
            .ok()
            .and_then(|mut l| l.as_mut().map(std::mem::take))
            .unwrap_or_default()
    }

    fn record(&self, sql: &str) {
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut log) = self.log.lock()
            && let Some(log) = log.as_mut()
        {
            log.push(sql.to_owned());
        }
    }

    pub(crate) async fn statement(&self, sql: &str) -> Result<Statement> {
        if let Some(stmt) = self.cache.lock().ok().and_then(|c| c.get(sql).cloned()) {
            return Ok(stmt);
        }
        self.note_sql(sql);
        self.count();
        let stmt = self.client.prepare(sql).await?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(sql.to_owned(), stmt.clone());
        }
        Ok(stmt)
    }

    /// Makes a statement ready to run so that running it cannot fail before it reaches the
    /// server: prepared and cached in [`StatementMode::Prepared`] (a round trip the first time
    /// only), and every value encoded once, as it will be, against the parameter's type. Running
    /// it afterwards sends it on its first poll. For statements pipelined ahead of a COMMIT, which
    /// must not go out alone because one of them was refused on the client.
    pub(crate) async fn prepare_checked(
        &self,
        sql: &str,
        values: &Values,
        columns: Option<&[&str]>,
    ) -> Result<()> {
        let binds = binds(&values.0, columns);
        let types: Vec<tokio_postgres::types::Type> = match self.mode {
            StatementMode::Prepared => self.statement(sql).await?.params().to_vec(),
            StatementMode::Unnamed => binds
                .iter()
                .map(|b| crate::bind::param_type(b.value()))
                .collect(),
        };
        let mut scratch = bytes::BytesMut::new();
        for (bind, ty) in binds.iter().zip(&types) {
            scratch.clear();
            if let Err(e) = bind.to_sql_checked(ty, &mut scratch) {
                return Err(match e.downcast::<crate::bind::BindError>() {
                    Ok(bind) => bind.into_error(),
                    Err(other) => Error::InvalidInput(other.to_string()),
                });
            }
        }
        Ok(())
    }

    /// The parameter types the server infers for a statement (prepared, not run). In
    /// [`StatementMode::Prepared`] the statement is cached; in [`StatementMode::Unnamed`] only
    /// its types are, and the statement is closed at once: behind a transaction pooler a named
    /// statement left on a server connection would collide with another client's of the same
    /// name (tokio-postgres names them `s0`, `s1`, … in every process). Call it inside a
    /// transaction, so that the prepare and the close reach the same server connection.
    pub(crate) async fn param_types(&self, sql: &str) -> Result<Vec<tokio_postgres::types::Type>> {
        if self.mode == StatementMode::Prepared {
            return Ok(self.statement(sql).await?.params().to_vec());
        }
        if let Some(types) = self
            .param_cache
            .lock()
            .ok()
            .and_then(|c| c.get(sql).cloned())
        {
            return Ok(types);
        }
        self.count();
        let stmt = self.client.prepare(sql).await?;
        let types = stmt.params().to_vec();
        // Dropping it sends the close now, ahead of anything sent after.
        drop(stmt);
        if let Ok(mut cache) = self.param_cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(sql.to_owned(), types.clone());
        }
        Ok(types)
    }

    /// Runs a statement and returns its rows. `columns[i]`, when given, names the column
    /// parameter `i` is written to, for error messages.
    pub async fn query(
        &self,
        sql: &str,
        values: &Values,
        columns: Option<&[&str]>,
    ) -> Result<Vec<Row>> {
        let started = log_start();
        let mark = self.flight.start();
        let span = statement_span(sql);
        let result = self
            .query_inner(sql, values, columns)
            .instrument(span.clone())
            .await;
        record_outcome(&span, &result, |rows| rows.len() as u64);
        self.log(started, sql, Some(values), &result, |rows| {
            rows.len() as u64
        });
        mark.done(answered(&result), result)
    }

    async fn query_inner(
        &self,
        sql: &str,
        values: &Values,
        columns: Option<&[&str]>,
    ) -> Result<Vec<Row>> {
        self.sandbox_allows(sql)?;
        self.record(sql);
        let binds = binds(&values.0, columns);
        match self.mode {
            StatementMode::Prepared => {
                let stmt = self.statement(sql).await?;
                let params = params(&binds);
                self.count();
                Ok(self.client.query(&stmt, &params).await?)
            }
            StatementMode::Unnamed => {
                let typed = self.typed(&binds).await?;
                self.note_sql(sql);
                self.count();
                Ok(self.client.query_typed(sql, &typed).await?)
            }
        }
    }

    /// The values with the types an unnamed statement sends them as.
    async fn typed<'b>(
        &self,
        binds: &'b [Bind<'b>],
    ) -> Result<Vec<(&'b (dyn ToSql + Sync), tokio_postgres::types::Type)>> {
        let mut typed = Vec::with_capacity(binds.len());
        for b in binds {
            let mut ty = crate::bind::param_type(b.value());
            if let (0, tokio_postgres::types::Kind::Array(element)) = (ty.oid(), ty.kind()) {
                // An array's encoding names its element type's OID: ask the server.
                ty = self.array_of(element.name()).await?;
            }
            typed.push((b as &(dyn ToSql + Sync), ty));
        }
        Ok(typed)
    }

    /// Starts a statement whose rows are read one at a time, as the caller takes them (see
    /// [`RowsInFlight`]); returns once the server has begun answering.
    pub(crate) async fn start_rows(&self, sql: &str, values: &Values) -> Result<RowsInFlight<'_>> {
        let started = log_start();
        self.sandbox_allows(sql)?;
        let mark = self.flight.start();
        self.record(sql);
        let binds = binds(&values.0, None);
        let result = async {
            match self.mode {
                StatementMode::Prepared => {
                    let stmt = self.statement(sql).await?;
                    self.count();
                    Ok(self.client.query_raw(&stmt, params(&binds)).await?)
                }
                StatementMode::Unnamed => {
                    let typed = self.typed(&binds).await?;
                    self.note_sql(sql);
                    self.count();
                    Ok(self.client.query_typed_raw(sql, typed).await?)
                }
            }
        }
        // The span covers the statement until its answer begins; the rows are the consumer's.
        .instrument(statement_span(sql))
        .await;
        self.in_flight(started, mark, sql, Some(values), result)
    }

    /// Runs a statement and returns how many rows it affected.
    pub async fn execute(
        &self,
        sql: &str,
        values: &Values,
        columns: Option<&[&str]>,
    ) -> Result<u64> {
        let started = log_start();
        let mark = self.flight.start();
        let span = statement_span(sql);
        let result = self
            .execute_inner(sql, values, columns)
            .instrument(span.clone())
            .await;
        record_outcome(&span, &result, |n| *n);
        self.log(started, sql, Some(values), &result, |n| *n);
        mark.done(answered(&result), result)
    }

    async fn execute_inner(
        &self,
        sql: &str,
        values: &Values,
        columns: Option<&[&str]>,
    ) -> Result<u64> {
        self.sandbox_allows(sql)?;
        match self.mode {
            StatementMode::Prepared => {
                self.record(sql);
                let binds = binds(&values.0, columns);
                let stmt = self.statement(sql).await?;
                let params = params(&binds);
                self.count();
                Ok(self.client.execute(&stmt, &params).await?)
            }
            // query_typed returns rows, not the affected count: a DML statement without
            // RETURNING is counted through a wrapping CTE.
            StatementMode::Unnamed => {
                let head = sql.trim_start().get(..6).unwrap_or("").to_ascii_uppercase();
                let dml = matches!(head.as_str(), "INSERT" | "UPDATE" | "DELETE");
                if dml && !sql.to_ascii_uppercase().contains(" RETURNING ") {
                    let counted = format!(
                        "WITH affected AS ({sql} RETURNING 1) SELECT count(*) FROM affected"
                    );
                    let rows = self.query_inner(&counted, values, columns).await?;
                    let n: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
                    return Ok(u64::try_from(n).unwrap_or(0));
                }
                Ok(self.query_inner(sql, values, columns).await?.len() as u64)
            }
        }
    }

    /// Sends SQL text without parameters and does not make the caller wait for the answer
    /// (which a task of its own takes in). Statements sent afterwards on this connection run
    /// after it. For statements whose outcome does not matter (COMMIT of a transaction that only
    /// read, ROLLBACK on return). Until the answer arrives the connection is not
    /// [idle](Self::is_idle). `false` when the connection is closed and nothing was sent.
    pub fn send_and_forget(self: &Arc<Self>, sql: &'static str) -> bool {
        if self.sandbox.is_some() && tx_control(sql).is_some() {
            // The sandbox translates it, and must know how it went: the caller waits instead.
            return false;
        }
        self.record(sql);
        self.count();
        if log_start().is_some() {
            tracing::debug!(target: "actor_orm::sql", sql, "statement sent without waiting for its answer");
        }
        let epoch = self.flight.forget();
        let conn = Arc::clone(self);
        let mut request = Box::pin(async move {
            let result: Result<()> = conn.client.batch_execute(sql).await.map_err(Into::into);
            conn.flight.forgotten_done(epoch, answered(&result));
            result.is_ok()
        });
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // The first poll hands the request to the connection task, in order with whatever is
        // sent next; a task of its own then waits for the answer.
        match request.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(sent) => sent,
            std::task::Poll::Pending => {
                drop(tokio::spawn(request));
                !self.is_closed()
            }
        }
    }

    /// Runs SQL text without parameters (BEGIN, COMMIT, SAVEPOINT, DDL) in one round trip.
    pub async fn batch(&self, sql: &str) -> Result<()> {
        self.note_sql(sql);
        self.batch_known(sql).await
    }

    /// [`batch`](Self::batch) for statements the ORM writes itself, whose effect it tracks
    /// (`BEGIN ISOLATION LEVEL …` names an isolation level for one transaction only, and must
    /// not turn autocommit reads off for the connection's life).
    pub(crate) async fn batch_known(&self, sql: &str) -> Result<()> {
        if self.sandbox.is_some()
            && let Some(r) = self.sandbox_batch(sql).await
        {
            return r;
        }
        self.batch_sent(sql).await
    }

    /// Sends SQL text as it is, in one round trip.
    pub(crate) async fn batch_sent(&self, sql: &str) -> Result<()> {
        self.record(sql);
        self.count();
        let started = log_start();
        let mark = self.flight.start();
        let span = statement_span(sql);
        let result = self
            .client
            .batch_execute(sql)
            .instrument(span.clone())
            .await
            .map_err(Into::into);
        record_outcome(&span, &result, |()| 0);
        self.log(started, sql, None, &result, |()| 0);
        mark.done(answered(&result), result)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

fn binds<'a>(values: &'a [Value], columns: Option<&'a [&'a str]>) -> Vec<Bind<'a>> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| Bind::new(v, i + 1, columns.and_then(|c| c.get(i).copied())))
        .collect()
}

fn params<'a>(binds: &'a [Bind<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    binds.iter().map(|b| b as &(dyn ToSql + Sync)).collect()
}
