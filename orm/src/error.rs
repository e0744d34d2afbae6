//! The one error type, with kinds a caller can match on.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The result of every fallible operation in actor-orm.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong. Match on the variant; the database's own details are in [`DbError`].
#[derive(Debug, derive_more::Display)]
#[non_exhaustive]
pub enum Error {
    /// The server rejected a statement: SQLSTATE, message, constraint.
    #[display("{_0}")]
    Database(Box<DbError>),
    /// The connection to the server is gone (closed socket, terminated backend, class 08).
    #[display("connection to the database lost: {reason}")]
    ConnectionLost {
        /// What the client or server said.
        reason: String,
        /// The client library's own error, for `source()`.
        cause: Option<Cause>,
    },
    /// The connection was lost after COMMIT was sent and before its answer came: the server may
    /// have committed the transaction or not, and no one on this side can tell. Never reported
    /// as a plain failure, since running the work again may do it twice: check whether it took
    /// effect first (by a key it wrote, an idempotency key, or the LSN it would have written).
    #[display(
        "commit outcome unknown: the connection was lost after COMMIT was sent ({reason}); the transaction may or may not have been committed, check before running it again"
    )]
    CommitOutcomeUnknown {
        /// What the client or server said.
        reason: String,
        /// The client library's own error, for `source()`.
        cause: Option<Cause>,
    },
    /// A new connection could not be opened: the server is unreachable or refused it, or its
    /// TLS handshake failed (a certificate not trusted or not for this host, TLS required and
    /// not offered). The reason says which.
    #[display("could not connect: {reason}")]
    Connect {
        /// What the client or server said, with the cause (an untrusted certificate, …).
        reason: String,
        /// The client library's own error, for `source()`.
        cause: Option<Cause>,
    },
    /// A row that had to exist does not.
    #[display("no {table} row with key {key}")]
    NotFound {
        /// The table.
        table: String,
        /// The key looked for, as text.
        key: String,
    },
    /// An optimistic-lock check failed: the row changed (or vanished) since it was loaded. Its
    /// version was not the one loaded, or (for a model without a version column) a column the
    /// save changes no longer held the value it was loaded with. Nothing was written; roll back
    /// and run the unit of work again (`Pool::transaction` does this).
    #[display(
        "stale {table} row with key {key}: it was changed or deleted by someone else since it was loaded ({})",
        stale_detail(*expected_version, columns)
    )]
    Stale {
        /// The table.
        table: String,
        /// The key of the row.
        key: String,
        /// The version this session had loaded, for a model with a version column.
        expected_version: Option<i64>,
        /// The columns whose loaded values were checked, for a model without one.
        columns: Vec<String>,
    },
    /// The session ran the same single-key read more times than the pool's N+1 threshold, with
    /// `NPlusOne::Error` (for tests): load the relation eagerly instead.
    #[display(
        "N+1: this session ran the same single-key read {count} times ({statement}); load the relation eagerly with Session::load"
    )]
    NPlusOne {
        /// The statement.
        statement: String,
        /// How many times it ran.
        count: u32,
    },
    /// A value or a column does not have the type the other side needs.
    #[display("type mismatch for {column}: expected {expected}, found {found}")]
    TypeMismatch {
        /// The column (or `$n` for a bound parameter).
        column: String,
        /// What was needed.
        expected: String,
        /// What was there.
        found: String,
    },
    /// A value that can never be stored: the input is at fault, nothing was sent.
    #[display("invalid input: {_0}")]
    InvalidInput(String),
    /// A statement failed earlier in this transaction; PostgreSQL ignores everything until it is
    /// rolled back (or rolled back to a savepoint).
    #[display(
        "the current transaction is aborted after an earlier error: roll it back (or roll back to a savepoint) first"
    )]
    TransactionAborted,
    /// The session has ended and takes no more work.
    #[display("the session is closed")]
    SessionClosed,
    /// No connection became free before the pool's `acquire_timeout`. Carries the pool's numbers
    /// and the sessions that held connections longest.
    #[display("{_0}")]
    PoolTimeout(Box<PoolTimeout>),
    /// The pool is closing or gone, or cannot be used from this process.
    #[display("the connection pool is closed: {reason}")]
    PoolClosed {
        /// Why.
        reason: String,
    },
    /// A versioned migration could not be applied or reverted (it failed, and was rolled back
    /// whole), or the history does not match the files: a migration edited after it was
    /// applied, or one applied that no file has any more.
    #[display("migration {version} ({name}): {reason}")]
    Migration {
        /// Its version.
        version: i64,
        /// Its name.
        name: String,
        /// What went wrong, with the server's SQLSTATE and message when it refused the SQL.
        reason: String,
    },
    /// The session's deadline (or the pool's `statement_timeout`) passed: waiting for a
    /// connection, during a statement (cancelled on the server; a transaction it ran in must be
    /// rolled back), or before a COMMIT, which is then not sent at all.
    #[display("deadline exceeded: {what}")]
    DeadlineExceeded {
        /// Where the time ran out.
        what: String,
    },
    /// A configuration that cannot work (a malformed connection string, a bad setting). The
    /// message never contains a password.
    #[display("invalid configuration: {_0}")]
    Config(String),
}

impl Error {
    /// The SQLSTATE of a database error, e.g. `"23505"` for a unique violation.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Database(db) => Some(&db.code),
            _ => None,
        }
    }

    /// The database error's details, if this is one.
    pub fn as_db_error(&self) -> Option<&DbError> {
        match self {
            Error::Database(db) => Some(db),
            _ => None,
        }
    }

    /// Whether this is [`Error::Stale`]: the row changed since this session loaded it.
    pub fn is_stale(&self) -> bool {
        matches!(self, Error::Stale { .. })
    }

    /// SQLSTATE 40001: a REPEATABLE READ or SERIALIZABLE transaction could not be serialized.
    pub fn is_serialization_failure(&self) -> bool {
        self.code() == Some("40001")
    }

    /// SQLSTATE 40P01: the transaction was chosen to break a deadlock.
    pub fn is_deadlock(&self) -> bool {
        self.code() == Some("40P01")
    }

    /// SQLSTATE 55P03: a `NOWAIT` lock (or `lock_timeout`) found the row or table held.
    pub fn is_lock_not_available(&self) -> bool {
        self.code() == Some("55P03")
    }

    /// Whether running the whole unit of work again, from the start, may succeed: a stale row,
    /// a serialization failure or a deadlock. What `Pool::transaction` retries.
    pub fn is_retryable(&self) -> bool {
        self.is_stale() || self.is_serialization_failure() || self.is_deadlock()
    }

    /// Whether the connection this error came from can no longer be used.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            Error::ConnectionLost { .. } | Error::CommitOutcomeUnknown { .. }
        )
    }

    /// Whether this is [`Error::DeadlineExceeded`].
    pub fn is_deadline_exceeded(&self) -> bool {
        matches!(self, Error::DeadlineExceeded { .. })
    }

    /// Whether this is [`Error::CommitOutcomeUnknown`]: COMMIT was sent and its answer lost.
    pub fn is_commit_outcome_unknown(&self) -> bool {
        matches!(self, Error::CommitOutcomeUnknown { .. })
    }

    /// A COMMIT's result: a lost connection becomes [`Error::CommitOutcomeUnknown`].
    pub(crate) fn at_commit(result: Result<()>) -> Result<()> {
        result.map_err(|e| match e {
            Error::ConnectionLost { reason, cause } => {
                Error::CommitOutcomeUnknown { reason, cause }
            }
            other => other,
        })
    }

    pub(crate) fn mismatch(
        column: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Error {
        Error::TypeMismatch {
            column: column.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }
}

fn stale_detail(expected_version: Option<i64>, columns: &[String]) -> String {
    match expected_version {
        Some(v) => format!("expected version {v}"),
        None if columns.is_empty() => "the row is gone".to_owned(),
        None => format!("checked: {}", columns.join(", ")),
    }
}

/// What a pool looked like when a checkout timed out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolTimeout {
    /// How long the caller waited.
    pub waited: Duration,
    /// The pool's `max_size`.
    pub max_size: usize,
    /// Connections open or being opened.
    pub total: usize,
    /// Connections leased to sessions.
    pub in_use: usize,
    /// Connections ready to hand out.
    pub idle: usize,
    /// Checkouts waiting, this one included.
    pub waiting: usize,
    /// The sessions holding connections longest, longest first (at most five).
    pub holders: Vec<Holder>,
    /// The last error from opening a connection, when the most recent attempt failed.
    pub last_connect_error: Option<String>,
}

/// A session holding a pooled connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The session's name (or `session-<id>`) and where it was created.
    pub session: String,
    /// How long it has held its connection.
    pub held: Duration,
    /// The server process serving it (`None` behind a pooler).
    pub backend_pid: Option<i32>,
    /// What the server says the backend is doing (`active`, `idle in transaction`, …), from
    /// `pg_stat_activity` (`Pool::holders` asks; a timeout report does not).
    pub state: Option<String>,
    /// The statement running, or the last one run.
    pub statement: Option<String>,
    /// How long its transaction has been open.
    pub transaction: Option<Duration>,
}

impl PoolTimeout {
    /// A timeout report; `holders` longest first.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        waited: Duration,
        max_size: usize,
        total: usize,
        in_use: usize,
        idle: usize,
        waiting: usize,
        holders: Vec<Holder>,
        last_connect_error: Option<String>,
    ) -> Self {
        PoolTimeout {
            waited,
            max_size,
            total,
            in_use,
            idle,
            waiting,
            holders,
            last_connect_error,
        }
    }
}

impl Holder {
    /// A holder entry.
    pub fn new(session: impl Into<String>, held: Duration) -> Self {
        Holder {
            session: session.into(),
            held,
            backend_pid: None,
            state: None,
            statement: None,
            transaction: None,
        }
    }
}

impl fmt::Display for PoolTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for a connection: pool of max {} has {} open, {} in use, {} idle, {} waiting",
            self.waited, self.max_size, self.total, self.in_use, self.idle, self.waiting
        )?;
        if !self.holders.is_empty() {
            f.write_str("; held longest by ")?;
            for (i, h) in self.holders.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{} ({:.1?})", h.session, h.held)?;
            }
        }
        if let Some(e) = &self.last_connect_error {
            write!(f, "; last connect error: {e}")?;
        }
        Ok(())
    }
}

/// An error reported by the PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DbError {
    /// SQLSTATE, five characters.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// The detail line, when the server gave one.
    pub detail: Option<String>,
    /// The constraint violated, if any.
    pub constraint: Option<String>,
    /// The table concerned, if any.
    pub table: Option<String>,
    /// The column concerned, if any.
    pub column: Option<String>,
    /// The client library's own error, for `source()`.
    pub(crate) cause: Option<Cause>,
}

impl DbError {
    /// A server error with only a code and a message (for errors made outside a statement).
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> DbError {
        DbError {
            code: code.into(),
            message: message.into(),
            detail: None,
            constraint: None,
            table: None,
            column: None,
            cause: None,
        }
    }
}

/// The error underneath one of ours — tokio-postgres's, with its own chain down to the I/O or
/// TLS error — as [`Error`]'s `source()`. It takes no part in comparisons.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    /// Wraps an error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Cause {
        Cause(Arc::new(e))
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl PartialEq for Cause {
    fn eq(&self, _: &Cause) -> bool {
        true
    }
}

impl Eq for Cause {}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let cause = match self {
            Error::Database(db) => db.cause.as_ref(),
            Error::ConnectionLost { cause, .. }
            | Error::CommitOutcomeUnknown { cause, .. }
            | Error::Connect { cause, .. } => cause.as_ref(),
            _ => None,
        };
        cause.map(|c| &*c.0 as &(dyn std::error::Error + 'static))
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "database error {}: {}", self.code, self.message)?;
        if let Some(c) = &self.constraint {
            write!(f, " (constraint {c})")?;
        }
        if let Some(d) = &self.detail {
            write!(f, "; {d}")?;
        }
        Ok(())
    }
}

/// SQLSTATE class 08 and the admin-shutdown codes mean the connection is unusable.
fn is_connection_class(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Error {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code().to_owned();
            if is_connection_class(&code) {
                return Error::ConnectionLost {
                    reason: format!("{}: {}", code, db.message()),
                    cause: Some(Cause::new(e)),
                };
            }
            let fields = DbError {
                code,
                message: db.message().to_owned(),
                detail: db.detail().map(str::to_owned),
                constraint: db.constraint().map(str::to_owned),
                table: db.table().map(str::to_owned),
                column: db.column().map(str::to_owned),
                cause: None,
            };
            return Error::Database(Box::new(DbError {
                cause: Some(Cause::new(e)),
                ..fields
            }));
        }
        // A value we refused to encode: the source is our own typed error.
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            if let Some(bind) = s.downcast_ref::<crate::bind::BindError>() {
                return bind.clone().into_error();
            }
            source = s.source();
        }
        if e.is_closed() || source_is_io(&e) {
            return Error::ConnectionLost {
                reason: e.to_string(),
                cause: Some(Cause::new(e)),
            };
        }
        let text = e.to_string();
        if text.contains("error deserializing") || text.contains("cannot convert") {
            return Error::mismatch("a column", "a decodable value", text);
        }
        Error::ConnectionLost {
            reason: text,
            cause: Some(Cause::new(e)),
        }
    }
}

fn source_is_io(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}
