//! A real PgBouncer in front of a server, for tests of what a connection pooler changes.
//!
//! [`PgBouncer::start`] writes a configuration into a directory of its own (beside the
//! throwaway clusters), starts Debian's `pgbouncer` on a free `127.0.0.1` port in front of the
//! given server (transaction pooling by default), and removes it as a cluster is removed: on
//! drop, by a watchdog process when the owning process dies in any way, and by the sweep of dead
//! owners' directories at the next cluster start.
//!
//! ```no_run
//! # async fn demo() -> Result<(), actor_orm::testing::TestingError> {
//! use actor_orm::testing::{PgBouncer, PgBouncerOptions, test_database};
//! let db = test_database("behind_pgbouncer").await?;
//! let bouncer = PgBouncer::start(db.config(), PgBouncerOptions::new().default_pool_size(8))?;
//! let through = bouncer.config_for(db.name()); // connect here to go through PgBouncer
//! # let _ = through; Ok(()) }
//! ```

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::Config;
use tokio_postgres::config::Host;

use super::{ServerUser, TestingError, cluster_error, free_port, signal, spawn_watchdog};

/// How the PgBouncer of a test is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBouncerOptions {
    pool_mode: &'static str,
    default_pool_size: u32,
    server_login_retry: u32,
    server_reset_query: Option<String>,
}

impl Default for PgBouncerOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl PgBouncerOptions {
    /// Transaction pooling, 8 server connections per database and user, `server_login_retry =
    /// 1`, no reset query (PgBouncer's default in transaction mode).
    pub fn new() -> Self {
        PgBouncerOptions {
            pool_mode: "transaction",
            default_pool_size: 8,
            server_login_retry: 1,
            server_reset_query: None,
        }
    }

    /// Session pooling instead (a server connection per client connection).
    pub fn session_pooling(mut self) -> Self {
        self.pool_mode = "session";
        self
    }

    /// Server connections per database and user.
    pub fn default_pool_size(mut self, n: u32) -> Self {
        self.default_pool_size = n.max(1);
        self
    }

    /// Seconds PgBouncer waits before trying a server login again after one failed.
    pub fn server_login_retry(mut self, seconds: u32) -> Self {
        self.server_login_retry = seconds;
        self
    }

    /// A `server_reset_query`, run on every server connection a client leaves
    /// (`server_reset_query_always`, so also in transaction mode).
    pub fn server_reset_query(mut self, sql: impl Into<String>) -> Self {
        self.server_reset_query = Some(sql.into());
        self
    }
}

/// A running PgBouncer (see the module docs); stopped and removed on drop.
#[derive(Debug)]
pub struct PgBouncer {
    config: Config,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    watchdog: Option<Child>,
}

/// Where `pgbouncer` is: on `PATH`, or where Debian puts it.
fn find_pgbouncer() -> Result<PathBuf, TestingError> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("pgbouncer"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            cluster_error(
                "find pgbouncer",
                "not on PATH nor in /usr/sbin; install it (Debian/Ubuntu: `apt-get install pgbouncer`)",
            )
        })
}

impl PgBouncer {
    /// Where the `pgbouncer` binary is (on `PATH`, or where Debian puts it), or why it cannot be
    /// found.
    pub fn binary() -> Result<PathBuf, TestingError> {
        find_pgbouncer()
    }

    /// Starts PgBouncer in front of the server `server` points at (its host, port and user),
    /// serving every database there.
    pub fn start(server: &Config, options: PgBouncerOptions) -> Result<PgBouncer, TestingError> {
        let binary = find_pgbouncer()?;
        let runner = ServerUser::for_current_process()?;
        let dir = super::claim_dir("b")?;
        let started = Self::start_in(&dir, &binary, &runner, server, &options);
        if started.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        started
    }

    fn start_in(
        dir: &Path,
        binary: &Path,
        runner: &ServerUser,
        server: &Config,
        options: &PgBouncerOptions,
    ) -> Result<PgBouncer, TestingError> {
        runner.give(dir)?;
        let host = match server.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(d)) => d.display().to_string(),
            None => "127.0.0.1".to_owned(),
        };
        let server_port = server.get_ports().first().copied().unwrap_or(5432);
        let user = server.get_user().unwrap_or("postgres").to_owned();
        let users = dir.join("users.txt");
        fs::write(&users, format!("\"{user}\" \"\"\n"))
            .map_err(|e| cluster_error("write PgBouncer's auth file", e))?;
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port().map_err(|e| cluster_error("find a free port", e))?;
            let mut ini = String::new();
            let _ = writeln!(ini, "[databases]\n* = host={host} port={server_port}\n");
            let _ = writeln!(ini, "[pgbouncer]");
            let _ = writeln!(ini, "listen_addr = 127.0.0.1\nlisten_port = {port}");
            let _ = writeln!(ini, "unix_socket_dir =");
            let _ = writeln!(ini, "auth_type = trust\nauth_file = {}", users.display());
            let _ = writeln!(ini, "pool_mode = {}", options.pool_mode);
            let _ = writeln!(ini, "default_pool_size = {}", options.default_pool_size);
            let _ = writeln!(ini, "max_client_conn = 5000");
            let _ = writeln!(ini, "server_login_retry = {}", options.server_login_retry);
            match &options.server_reset_query {
                Some(sql) => {
                    let _ = writeln!(
                        ini,
                        "server_reset_query = {sql}\nserver_reset_query_always = 1"
                    );
                }
                None => {
                    let _ = writeln!(ini, "server_reset_query =");
                }
            }
            // tokio-postgres sends no parameters PgBouncer does not know, but other clients of
            // a test may (JDBC's extra_float_digits).
            let _ = writeln!(ini, "ignore_startup_parameters = extra_float_digits");
            let _ = writeln!(ini, "logfile = {}", dir.join("pgbouncer.log").display());
            let _ = writeln!(ini, "pidfile = {}", dir.join("pgbouncer.pid").display());
            let ini_path = dir.join("pgbouncer.ini");
            fs::write(&ini_path, ini).map_err(|e| cluster_error("write pgbouncer.ini", e))?;
            let child = runner
                .command(binary, dir)
                .arg(&ini_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| cluster_error(format!("run {}", binary.display()), e))?;
            let watchdog = spawn_watchdog(std::process::id(), child.id(), dir).ok();
            let mut bouncer = PgBouncer {
                config: Config::new()
                    .host("127.0.0.1")
                    .port(port)
                    .user(&user)
                    .dbname("postgres")
                    .connect_timeout(Duration::from_secs(10))
                    .to_owned(),
                port,
                dir: dir.to_path_buf(),
                child: Some(child),
                watchdog,
            };
            match bouncer.wait_listening() {
                Ok(()) => return Ok(bouncer),
                Err(e) => {
                    // Dropping it stops the process; the directory is kept for the next try.
                    bouncer.stop_process();
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| cluster_error("start pgbouncer", "no attempt was made")))
    }

    /// Waits until PgBouncer accepts connections, or reports why it stopped.
    fn wait_listening(&mut self) -> Result<(), TestingError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(cluster_error(
                    "start pgbouncer",
                    format!("it did not accept connections: {}", tail.join(" | ")),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Settings to reach PgBouncer's `postgres` database, as the server's user.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Settings to reach database `dbname` through PgBouncer.
    pub fn config_for(&self, dbname: &str) -> Config {
        let mut config = self.config.clone();
        config.dbname(dbname);
        config
    }

    /// The port PgBouncer listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn stop_process(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: PgBouncer shuts down at once.
            signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.stop_process();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
