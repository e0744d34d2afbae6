//! Integration tests against a real PostgreSQL: the server named by `DATABASE_URL`, or a
//! throwaway cluster shared by this test binary, with one database per test.
//!
//! All integration tests live in this one binary so that they share one cluster and one link.

mod autocommit;
mod bad_input;
mod capture;
mod cluster;
mod concurrency;
mod copy;
mod core_queries;
mod core_types;
mod core_work;
mod deadlines;
mod failover;
mod faults;
mod flush;
mod generated;
mod hangs;
mod listen;
mod migrations;
mod models;
mod observability;
mod pgbouncer;
mod pool;
mod reclaim;
mod relations;
mod replicas;
mod sandbox;
mod schemas;
mod sessions;
mod soak;
mod spares;
mod streaming;
mod tls;

use std::future::Future;
use std::time::{Duration, Instant};

use actor_orm::{Connection, Pool, PoolBuilder, PoolStats, StatementMode, testing};

/// A database of its own for one test, and an ORM connection to it (through PgBouncer, in
/// unnamed-statement mode, when the suite runs through one: see [`testing::TEST_VIA`]).
pub async fn connect(hint: &str) -> (testing::TestDatabase, Connection) {
    let db = testing::test_database(hint).await.expect("test database");
    let conn = connect_again(&db).await;
    (db, conn)
}

/// A second ORM connection to the same database, as [`connect`] makes them.
pub async fn connect_again(db: &testing::TestDatabase) -> Connection {
    let (client, driver) = db
        .config()
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(driver);
    let mode = if db.through_pooler() {
        StatementMode::Unnamed
    } else {
        StatementMode::Prepared
    };
    Connection::new(client, mode)
}

/// Whether this run goes through a transaction pooler; a test that cannot work behind one says
/// why (in the output) and returns early.
pub fn direct_only(db: &testing::TestDatabase, why: &str) -> bool {
    if db.through_pooler() {
        eprintln!("skipped behind PgBouncer: {why}");
    }
    db.through_pooler()
}

/// A pool on `db` whose connections report the database's name as their application_name, so
/// `pg_stat_activity` can be filtered to this pool alone.
pub async fn pool_on(
    db: &testing::TestDatabase,
    configure: impl FnOnce(PoolBuilder) -> PoolBuilder,
) -> Pool {
    let mut builder = Pool::builder(db.config()).application_name(db.name().to_owned());
    if db.through_pooler() {
        // LISTEN needs the server itself (pgbouncer::a_listener_behind_a_pooler_needs_the_server).
        builder = builder.direct_at(db.direct_config());
    }
    configure(builder).build().await.expect("pool")
}

/// Backends of this test's pool as the server sees them: (pid, state).
pub async fn backends(monitor: &tokio_postgres::Client, app: &str) -> Vec<(i32, String)> {
    monitor
        .query(
            "SELECT pid, coalesce(state, '') FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Held while a test starts a cluster of its own, or watches an orphaned one: every cluster
/// start first sweeps dead owners' clusters, and must not sweep the orphan a test is looking at.
pub fn cluster_starts() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A throwaway cluster of its own, for tests that stop, restart or freeze the server (started
/// holding [`cluster_starts`]). `None` (and the test says it skipped) only when no server binaries
/// exist, i.e. with `DATABASE_URL` on a machine without them; CI always has them.
pub async fn own_cluster() -> Option<testing::Cluster> {
    let started = tokio::task::spawn_blocking(|| {
        let _no_sweep_under_a_watching_test = cluster_starts();
        testing::Cluster::start()
    })
    .await
    .expect("join");
    match started {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("skipped: this test needs PostgreSQL server binaries of its own: {e}");
            None
        }
    }
}

/// A `key=value` connection string for a TCP `config` (for a process of its own); `None` for a
/// Unix socket.
pub fn url_of(config: &tokio_postgres::Config) -> Option<String> {
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => Some(format!(
            "host={h} port={} user={} dbname={}",
            config.get_ports().first().copied().unwrap_or(5432),
            config.get_user().unwrap_or("postgres"),
            config.get_dbname().unwrap_or("postgres")
        )),
        _ => None,
    }
}

/// Runs `n` copies of the ignored test `test` (its full path) of this binary, each a process of
/// its own started at the same time with the environment `env(i)`; their outputs, in order.
pub async fn run_workers(
    test: &'static str,
    n: usize,
    env: impl Fn(usize) -> Vec<(&'static str, String)> + Send + 'static,
) -> Vec<std::process::Output> {
    let exe = std::env::current_exe().expect("the test binary");
    tokio::task::spawn_blocking(move || {
        let children: Vec<_> = (0..n)
            .map(|i| {
                std::process::Command::new(&exe)
                    .args([
                        test,
                        "--exact",
                        "--ignored",
                        "--test-threads=1",
                        "--nocapture",
                    ])
                    .envs(env(i))
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("start a worker")
            })
            .collect();
        children
            .into_iter()
            .map(|c| c.wait_with_output().expect("worker"))
            .collect()
    })
    .await
    .expect("join")
}

/// Marks a deliberate panic; the hook below keeps such panics out of the test output.
pub const EXPECTED_PANIC: &str = "[expected panic]";

/// Installs (once) a panic hook that stays quiet for panics carrying [`EXPECTED_PANIC`] and
/// reports every other panic as the default hook does.
pub fn quiet_expected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !text.contains(EXPECTED_PANIC) {
                default(info);
            }
        }));
    });
}

/// A database of its own with the core tests' schema, and a pool on it (see [`pool_on`]).
pub async fn pool_with_schema(
    hint: &str,
    configure: impl FnOnce(PoolBuilder) -> PoolBuilder,
) -> (testing::TestDatabase, Pool) {
    let (db, conn) = connect(hint).await;
    models::create_schema(&conn).await;
    let pool = pool_on(&db, configure).await;
    (db, pool)
}

/// [`pool_with_schema`], and a plain client on the same database to watch the server with.
pub async fn pool_with_monitor(
    hint: &str,
    configure: impl FnOnce(PoolBuilder) -> PoolBuilder,
) -> (testing::TestDatabase, Pool, tokio_postgres::Client) {
    let (db, pool) = pool_with_schema(hint, configure).await;
    let monitor = db.connect().await.expect("monitor");
    (db, pool, monitor)
}

/// The names of every user the session sees, sorted.
pub async fn user_names(s: &actor_orm::Session) -> Vec<String> {
    let mut names: Vec<String> = s
        .all(models::User::query())
        .await
        .expect("all")
        .into_iter()
        .map(|u| u.name)
        .collect();
    names.sort();
    names
}

/// `SELECT count(*) FROM users` in a session of its own, closed afterwards.
pub async fn count_users(pool: &Pool) -> actor_orm::Result<i64> {
    let s = pool.session().await?;
    let n = s.count(models::User::query()).await?;
    s.close().await?;
    Ok(n)
}

/// The pool's stats once nothing is in use, being reset or being opened (background reclaims
/// and resets finish shortly after the sessions end), or after 3 s.
pub async fn settled(pool: &Pool) -> PoolStats {
    let mut stats = pool.stats().await.expect("stats");
    for _ in 0..300 {
        if stats.in_use == 0 && stats.resetting == 0 && stats.connecting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        stats = pool.stats().await.expect("stats");
    }
    stats
}

/// Polls `check` every 10 ms until it holds or `limit` passes; whether it held.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs futures concurrently and collects their results in order.
pub async fn join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("join"));
    }
    out
}
