//! Pool settings and their defaults.

use std::fmt;
use std::time::Duration;

use std::path::PathBuf;
use std::sync::Arc;

use crate::tls::{RootCerts, SslMode, TlsSettings};
use actor_orm_core::{Connector, Error, PlainConnector, Result, StatementMode};
use tokio_postgres::Config;

/// What the pool does to a connection before another session may use it.
///
/// `ROLLBACK` is sent first whenever a transaction may be open (a session that died, or one that
/// ran raw SQL), whatever the policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ResetPolicy {
    /// Only end any open transaction. Session-level state (`SET`, temporary tables, `LISTEN`,
    /// session advisory locks, prepared statements) survives: the cheapest choice, right when
    /// sessions only use the ORM.
    #[default]
    Rollback,
    /// `DISCARD ALL` after the rollback: every piece of session state is dropped, including the
    /// prepared-statement cache, which is then rebuilt.
    DiscardAll,
    /// Run this SQL (one or more statements) after the rollback.
    Custom(String),
}

/// Every setting of a pool. Build one with [`crate::Pool::builder`]; the defaults are listed on
/// each builder method.
#[derive(Clone)]
pub struct PoolConfig {
    pub(crate) pg: Config,
    pub(crate) max_size: usize,
    pub(crate) min_idle: usize,
    pub(crate) acquire_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) max_lifetime_jitter: Option<Duration>,
    pub(crate) keepalive_interval: Option<Duration>,
    pub(crate) health_check_after: Duration,
    pub(crate) health_check_timeout: Duration,
    pub(crate) reset: ResetPolicy,
    pub(crate) reset_timeout: Duration,
    pub(crate) leak_threshold: Option<Duration>,
    pub(crate) max_session_lifetime: Option<Duration>,
    /// `None`: chosen per connection — unnamed behind a connection pooler, prepared otherwise.
    pub(crate) statement_mode: Option<StatementMode>,
    /// Where listeners connect, when not where sessions do (see `PoolBuilder::direct_at`).
    pub(crate) direct_pg: Option<Config>,
    /// `target_session_attrs=prefer-standby`: `pg` asks for a read-only host; fall back to any.
    pub(crate) prefer_standby: bool,
    /// How long one statement of a session may run before it is cancelled.
    pub(crate) statement_timeout: Option<Duration>,
    /// After a failed connect: the first wait before the next try, and the longest (doubling).
    pub(crate) connect_backoff: (Duration, Duration),
    /// The `pool` label of its metrics, when not its `application_name` (a replica's pool).
    pub(crate) metrics_name: Option<String>,
    /// Read replicas (see `PoolBuilder::replica`).
    pub(crate) replicas: Vec<Config>,
    pub(crate) replica_lag_limit: Duration,
    pub(crate) replica_check_interval: Duration,
    pub(crate) autocommit_reads: bool,
    /// The test sandbox (see `PoolBuilder::sandbox`).
    pub(crate) sandbox: bool,
    pub(crate) dirty_check: bool,
    pub(crate) log_values: bool,
    pub(crate) n_plus_one: actor_orm_core::NPlusOne,
    pub(crate) close_timeout: Duration,
    pub(crate) spare_sessions: usize,
    /// How connections reach the server (and cancel requests with them), from the `sslmode`.
    pub(crate) connector: Arc<dyn Connector>,
}

impl fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio_postgres::Config's Debug already redacts the password.
        f.debug_struct("PoolConfig")
            .field("pg", &self.pg)
            .field("max_size", &self.max_size)
            .field("min_idle", &self.min_idle)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("health_check_after", &self.health_check_after)
            .field("health_check_timeout", &self.health_check_timeout)
            .field("reset", &self.reset)
            .field("reset_timeout", &self.reset_timeout)
            .field("leak_threshold", &self.leak_threshold)
            .field("max_session_lifetime", &self.max_session_lifetime)
            .field("statement_mode", &self.statement_mode)
            .field("autocommit_reads", &self.autocommit_reads)
            .field("sandbox", &self.sandbox)
            .field("dirty_check", &self.dirty_check)
            .field("log_values", &self.log_values)
            .field("n_plus_one", &self.n_plus_one)
            .field("spare_sessions", &self.spare_sessions)
            .field("connector", &self.connector.describe())
            .finish_non_exhaustive()
    }
}

/// TCP keepalive for pooled connections, where the connection settings leave tokio-postgres's
/// defaults (probes after two hours idle): a black-holed socket (a VM paused, a network gone) is
/// noticed within about 90 s even while the connection sits idle in the pool.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// Sets the pool's TCP keepalive on `pg` where it has tokio-postgres's defaults.
pub(crate) fn with_keepalive(mut pg: Config) -> Config {
    if pg.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        pg.keepalives_idle(KEEPALIVE_IDLE);
    }
    if pg.get_keepalives_interval().is_none() {
        pg.keepalives_interval(KEEPALIVE_INTERVAL);
    }
    if pg.get_keepalives_retries().is_none() {
        pg.keepalives_retries(KEEPALIVE_RETRIES);
    }
    pg
}

impl PoolConfig {
    /// These settings for another server (a replica's pool): the same sizes, timeouts and
    /// connector, no replicas or listeners of its own.
    pub(crate) fn clone_for(base: &PoolConfig, mut pg: Config) -> PoolConfig {
        if let Some(name) = base.pg.get_application_name() {
            pg.application_name(name);
        }
        pg.connect_timeout(base.connect_timeout);
        let mut own = base.clone();
        own.pg = pg;
        own.replicas = Vec::new();
        own.direct_pg = None;
        own.prefer_standby = false;
        own
    }

    pub(crate) fn new(pg: Config) -> Self {
        let pg = with_keepalive(pg);
        PoolConfig {
            pg,
            max_size: 10,
            min_idle: 0,
            acquire_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            max_lifetime_jitter: None,
            keepalive_interval: Some(Duration::from_secs(120)),
            health_check_after: Duration::from_secs(5),
            health_check_timeout: Duration::from_secs(1),
            reset: ResetPolicy::Rollback,
            reset_timeout: Duration::from_secs(5),
            leak_threshold: Some(Duration::from_secs(60)),
            max_session_lifetime: None,
            statement_mode: None,
            direct_pg: None,
            prefer_standby: false,
            statement_timeout: None,
            connect_backoff: (Duration::from_millis(25), Duration::from_secs(1)),
            metrics_name: None,
            replicas: Vec::new(),
            replica_lag_limit: Duration::from_secs(5),
            replica_check_interval: Duration::from_millis(250),
            autocommit_reads: true,
            sandbox: false,
            dirty_check: true,
            log_values: false,
            n_plus_one: actor_orm_core::NPlusOne::default(),
            close_timeout: Duration::from_secs(5),
            spare_sessions: 256,
            connector: Arc::new(PlainConnector),
        }
    }

    /// The largest number of connections the pool opens.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// How long a checkout waits before giving up.
    pub fn acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }

    /// The reset policy.
    pub fn reset(&self) -> &ResetPolicy {
        &self.reset
    }

    /// The statement mode set for the pool's connections; `None` (the default) chooses per
    /// connection: [`StatementMode::Unnamed`] behind a connection pooler such as PgBouncer,
    /// [`StatementMode::Prepared`] otherwise.
    pub fn statement_mode(&self) -> Option<StatementMode> {
        self.statement_mode
    }

    /// The `application_name` the pool's connections report, if set.
    pub fn application_name(&self) -> Option<&str> {
        self.pg.get_application_name()
    }

    /// How much of `max_lifetime` each connection may lose at random, so that connections opened
    /// together do not all retire together: the set jitter, else a tenth of `max_lifetime`.
    pub(crate) fn jitter(&self) -> Duration {
        self.max_lifetime_jitter
            .or(self.max_lifetime.map(|l| l / 10))
            .unwrap_or_default()
    }

    /// How often the maintenance tick runs: often enough for the shortest time-based setting.
    pub(crate) fn tick(&self) -> Duration {
        let mut tick = Duration::from_secs(1);
        for d in [
            self.idle_timeout,
            self.keepalive_interval,
            self.leak_threshold,
            self.max_session_lifetime,
            self.max_lifetime,
        ]
        .into_iter()
        .flatten()
        {
            tick = tick.min(d / 4);
        }
        tick.max(Duration::from_millis(10))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_size == 0 {
            return Err(Error::Config("max_size must be at least 1".into()));
        }
        if self.min_idle > self.max_size {
            return Err(Error::Config(format!(
                "min_idle ({}) is larger than max_size ({})",
                self.min_idle, self.max_size
            )));
        }
        if self.pg.get_hosts().is_empty() {
            return Err(Error::Config(
                "the connection settings name no host to connect to".into(),
            ));
        }
        if let ResetPolicy::Custom(sql) = &self.reset
            && sql.trim().is_empty()
        {
            return Err(Error::Config("a custom reset needs SQL to run".into()));
        }
        Ok(())
    }
}

/// Where a pool's connections go: a `postgres://` URL or key=value string, or a
/// [`tokio_postgres::Config`]. In a string, `sslmode` takes libpq's five values (tokio-postgres
/// alone knows three) and `sslrootcert` names a PEM file of trusted CAs (`system`: the operating
/// system's store, the default).
pub trait IntoConfig: Sized {
    /// Whether the settings ask for `target_session_attrs=prefer-standby` (libpq's: a standby
    /// if any host is one, else any host), which tokio-postgres does not know.
    fn prefers_standby(&self) -> bool {
        false
    }

    /// The parsed settings, or a [`Error::Config`] that never repeats the password.
    fn into_config(self) -> Result<Config>;

    /// The settings with their TLS part: the `sslmode` and the `sslrootcert` file (`None`: the
    /// system's store).
    fn into_parts(self) -> Result<(Config, SslMode, Option<PathBuf>)> {
        let pg = self.into_config()?;
        let tls = TlsSettings::of_config(&pg);
        Ok((pg, tls.mode, None))
    }
}

impl IntoConfig for Config {
    fn into_config(self) -> Result<Config> {
        Ok(self)
    }
}

impl IntoConfig for &Config {
    fn into_config(self) -> Result<Config> {
        Ok(self.clone())
    }
}

impl IntoConfig for &str {
    fn prefers_standby(&self) -> bool {
        session_attrs(self).1
    }

    fn into_config(self) -> Result<Config> {
        self.into_parts().map(|(pg, _, _)| pg)
    }

    fn into_parts(self) -> Result<(Config, SslMode, Option<PathBuf>)> {
        let (libpq, _) = session_attrs(self);
        let (rest, tls) = TlsSettings::split(&libpq)?;
        let pg = rest.parse::<Config>().map_err(|e| {
            // tokio-postgres names the offending key, never its value; say so in our words.
            Error::Config(format!("cannot parse the connection string: {e}"))
        })?;
        let root = match tls.roots {
            RootCerts::File(path) => Some(path),
            RootCerts::System => None,
        };
        Ok((pg, tls.mode, root))
    }
}

impl IntoConfig for String {
    fn prefers_standby(&self) -> bool {
        session_attrs(self).1
    }

    fn into_config(self) -> Result<Config> {
        self.as_str().into_config()
    }

    fn into_parts(self) -> Result<(Config, SslMode, Option<PathBuf>)> {
        self.as_str().into_parts()
    }
}

impl IntoConfig for &String {
    fn prefers_standby(&self) -> bool {
        session_attrs(self).1
    }

    fn into_config(self) -> Result<Config> {
        self.as_str().into_config()
    }

    fn into_parts(self) -> Result<(Config, SslMode, Option<PathBuf>)> {
        self.as_str().into_parts()
    }
}

/// libpq's `target_session_attrs` values in tokio-postgres's terms: `primary` is `read-write`
/// and `standby` is `read-only` (a standby is always read-only); `prefer-standby` becomes
/// `read-only`, with `true` returned so that the pool falls back to any host when no standby
/// answers.
pub(crate) fn session_attrs(target: &str) -> (String, bool) {
    const KEY: &str = "target_session_attrs=";
    let Some(at) = target.find(KEY) else {
        return (target.to_owned(), false);
    };
    let start = at + KEY.len();
    let end = target[start..]
        .find(|c: char| c == '&' || c.is_whitespace())
        .map_or(target.len(), |i| start + i);
    let (value, prefer) = match &target[start..end] {
        "primary" => ("read-write", false),
        "standby" => ("read-only", false),
        "prefer-standby" => ("read-only", true),
        other => (other, false),
    };
    (
        format!("{}{value}{}", &target[..start], &target[end..]),
        prefer,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_session_attrs_become_tokio_postgres_ones() {
        let url = "postgres://u@a:1,b:2/db?target_session_attrs=prefer-standby&sslmode=disable";
        let (rest, prefer) = session_attrs(url);
        assert!(prefer);
        assert_eq!(
            rest,
            "postgres://u@a:1,b:2/db?target_session_attrs=read-only&sslmode=disable"
        );
        assert_eq!(
            session_attrs("host=a,b target_session_attrs=primary dbname=x"),
            (
                "host=a,b target_session_attrs=read-write dbname=x".into(),
                false
            )
        );
        assert_eq!(
            session_attrs("host=a target_session_attrs=standby"),
            ("host=a target_session_attrs=read-only".into(), false)
        );
        assert!("host=a,b target_session_attrs=prefer-standby".prefers_standby());
        assert!(!"host=a,b target_session_attrs=read-write".prefers_standby());
        let pg = "postgres://u@a:1,b:2/db?target_session_attrs=standby"
            .into_config()
            .expect("parsed");
        assert_eq!(
            pg.get_target_session_attrs(),
            tokio_postgres::config::TargetSessionAttrs::ReadOnly
        );
    }

    #[test]
    fn pooled_connections_probe_idle_sockets_unless_told_otherwise() {
        let c = PoolConfig::new(Config::new());
        assert_eq!(c.pg.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(
            c.pg.get_keepalives_interval(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(c.pg.get_keepalives_retries(), Some(3));
        assert!(c.pg.get_keepalives());

        let mut own = Config::new();
        own.keepalives_idle(Duration::from_secs(5))
            .keepalives_retries(9);
        let c = PoolConfig::new(own);
        assert_eq!(c.pg.get_keepalives_idle(), Duration::from_secs(5));
        assert_eq!(c.pg.get_keepalives_retries(), Some(9));
        assert_eq!(
            c.pg.get_keepalives_interval(),
            Some(Duration::from_secs(10))
        );
    }
}
