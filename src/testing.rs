//! A PostgreSQL for tests and examples: the server named by `DATABASE_URL`, or a throwaway
//! cluster started from the machine's PostgreSQL binaries.
//!
//! Without `DATABASE_URL`, [`Cluster::from_env`] finds `initdb` and `postgres` (on `PATH`, in
//! `pg_config --bindir`, or under `/usr/lib/postgresql/*/bin`), creates a cluster in a temporary
//! directory, starts it on a free `127.0.0.1` port with its socket in that directory, and removes
//! it when it is no longer used:
//!
//! - dropping a [`Cluster`] stops the server and removes its directory;
//! - a watchdog process started beside the server does the same when the owning process dies in
//!   any way (a panic, `exit`, `SIGINT`, `SIGKILL`), since statics are never dropped;
//! - every new cluster first removes the clusters of owners that are gone, in case both the owner
//!   and its watchdog were killed.
//!
//! As root, `initdb` refuses to run, so the cluster is created and served by the `postgres` OS
//! user (created when missing).
//!
//! Tests in one process share one cluster ([`shared_cluster`]) and each takes a database of its
//! own ([`test_database`]), so they are isolated and can run in parallel.
//!
//! ```no_run
//! # async fn demo() -> Result<(), actor_orm::testing::TestingError> {
//! let db = actor_orm::testing::test_database("my_test").await?;
//! let client = db.connect().await?;
//! client.batch_execute("CREATE TABLE t (id int)").await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::fs;
use std::io::{self, BufRead as _};
use std::net::TcpListener;
use std::os::unix::fs::{PermissionsExt as _, chown};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::{Config, NoTls};

mod metrics_text;
mod pgbouncer;
mod sandbox;
mod standby;
mod via;
pub use metrics_text::MetricsRecorder;
pub use pgbouncer::{PgBouncer, PgBouncerOptions};
pub use sandbox::{Isolation, Sandbox, SandboxPool};
pub use via::{TEST_VIA, through_pgbouncer};

/// The server certificate's file in a TLS cluster's data directory.
const TLS_CERT: &str = "server.crt";
/// The server key's file in a TLS cluster's data directory.
const TLS_KEY: &str = "server.key";

/// A server certificate (with its chain) and its private key, in PEM, for
/// [`Cluster::start_with_tls`].
#[derive(Clone)]
pub struct ServerTls {
    /// The certificate chain, leaf first.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerTls { .. }")
    }
}

/// Why a test database could not be had.
#[derive(Debug, derive_more::Display, derive_more::Error)]
#[non_exhaustive]
pub enum TestingError {
    /// No PostgreSQL server binaries were found on this machine.
    #[display(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH, in `pg_config --bindir` \
         or under /usr/lib/postgresql/*/bin. Install them (Debian/Ubuntu: `apt-get install postgresql`; \
         Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql`) or set DATABASE_URL \
         to a server you want the tests to use"
    )]
    BinariesNotFound,
    /// `DATABASE_URL` is set but is not a connection string.
    #[display("DATABASE_URL is not a valid connection string: {reason}")]
    BadDatabaseUrl {
        /// What the parser said.
        #[error(not(source))]
        reason: String,
    },
    /// A step of creating or starting the cluster failed.
    #[display("could not {step}: {detail}")]
    Cluster {
        /// What was being done.
        #[error(not(source))]
        step: String,
        /// What went wrong, with the tail of the server log where there is one.
        detail: String,
    },
    /// The server refused or lost a connection or a statement.
    #[display("{_0}")]
    Postgres(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for TestingError {
    fn from(e: tokio_postgres::Error) -> Self {
        TestingError::Postgres(e)
    }
}

fn cluster_error(step: impl Into<String>, detail: impl fmt::Display) -> TestingError {
    TestingError::Cluster {
        step: step.into(),
        detail: detail.to_string(),
    }
}

/// The environment variable naming an existing server to use instead of a throwaway cluster.
pub const DATABASE_URL: &str = "DATABASE_URL";

/// A PostgreSQL server for tests: either an external one (`DATABASE_URL`) or a throwaway cluster
/// this process started and owns.
pub struct Cluster {
    config: Config,
    owned: Option<OwnedCluster>,
}

struct OwnedCluster {
    dir: PathBuf,
    port: u16,
    /// Started with `ssl=on` (its certificate and key are in the data directory).
    tls: bool,
    postmaster: Child,
    watchdog: Option<Child>,
    bin: ServerBinaries,
    runner: ServerUser,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Cluster");
        match &self.owned {
            Some(o) => d
                .field("dir", &o.dir)
                .field("port", &o.port)
                .field("postmaster_pid", &o.postmaster.id()),
            // The config's Debug redacts the password.
            None => d.field("external", &self.config),
        }
        .finish()
    }
}

impl Cluster {
    /// The server named by `DATABASE_URL`, or else a new throwaway cluster.
    pub fn from_env() -> Result<Cluster, TestingError> {
        match std::env::var(DATABASE_URL) {
            Ok(url) if !url.trim().is_empty() => Cluster::external(&url),
            _ => Cluster::start(),
        }
    }

    /// An existing server, given by a connection string (URL or key=value form).
    pub fn external(url: &str) -> Result<Cluster, TestingError> {
        let config = Config::from_str(url).map_err(|e| TestingError::BadDatabaseUrl {
            reason: e.to_string(),
        })?;
        Ok(Cluster {
            config,
            owned: None,
        })
    }

    /// Starts a new throwaway cluster, after removing the clusters of dead owners.
    pub fn start() -> Result<Cluster, TestingError> {
        Cluster::start_inner(None)
    }

    /// Starts a new throwaway cluster that also offers TLS (`ssl=on`) with this certificate and
    /// key: for tests of encrypted connections, with certificates they make at run time.
    pub fn start_with_tls(tls: &ServerTls) -> Result<Cluster, TestingError> {
        Cluster::start_inner(Some(tls))
    }

    fn start_inner(tls: Option<&ServerTls>) -> Result<Cluster, TestingError> {
        sweep_stale_clusters();
        let bin = find_server_binaries(&SearchPaths::from_machine())?;
        let runner = ServerUser::for_current_process()?;
        let dir = claim_dir("c")?;
        let result = Cluster::start_in(&dir, &bin, &runner, tls);
        if result.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        result
    }

    fn start_in(
        dir: &Path,
        bin: &ServerBinaries,
        runner: &ServerUser,
        tls: Option<&ServerTls>,
    ) -> Result<Cluster, TestingError> {
        runner.give(dir)?;
        let data = dir.join("data");
        let initdb = runner
            .command(&bin.initdb, dir)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| cluster_error(format!("run {}", bin.initdb.display()), e))?;
        if !initdb.status.success() {
            return Err(cluster_error(
                "initialise a cluster with initdb",
                String::from_utf8_lossy(&initdb.stderr).trim(),
            ));
        }
        if let Some(tls) = tls {
            // The server refuses a key that others can read; it runs as `runner`.
            for (name, pem) in [(TLS_CERT, &tls.cert_pem), (TLS_KEY, &tls.key_pem)] {
                let path = data.join(name);
                fs::write(&path, pem).map_err(|e| cluster_error(format!("write {name}"), e))?;
                if let Some((uid, gid)) = runner.ids {
                    chown(&path, Some(uid), Some(gid))
                        .map_err(|e| cluster_error(format!("chown {name}"), e))?;
                }
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                    .map_err(|e| cluster_error(format!("chmod {name}"), e))?;
            }
        }

        serve(dir, bin, runner, tls.is_some())
    }

    /// The connection settings of the server's `postgres` database (or of `DATABASE_URL`).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A `postgres://` URL for a database of a throwaway cluster; `None` for an external server,
    /// whose URL the caller already has.
    pub fn url_for(&self, dbname: &str) -> Option<String> {
        self.owned
            .as_ref()
            .map(|o| format!("postgres://postgres@127.0.0.1:{}/{dbname}", o.port))
    }

    /// The cluster's directory, when this process owns the cluster.
    pub fn dir(&self) -> Option<&Path> {
        self.owned.as_ref().map(|o| o.dir.as_path())
    }

    /// The server's process id, when this process owns the cluster.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.owned.as_ref().map(|o| o.postmaster.id())
    }

    /// The watchdog's process id, when this process owns the cluster.
    pub fn watchdog_pid(&self) -> Option<u32> {
        self.owned
            .as_ref()
            .and_then(|o| o.watchdog.as_ref())
            .map(Child::id)
    }

    /// Whether this is a throwaway cluster owned by this process.
    pub fn is_throwaway(&self) -> bool {
        self.owned.is_some()
    }

    /// Opens a connection to `dbname` on this server, driving it on a spawned task.
    pub async fn connect_to(
        &self,
        dbname: Option<&str>,
    ) -> Result<tokio_postgres::Client, TestingError> {
        let mut config = self.config.clone();
        if let Some(name) = dbname {
            config.dbname(name);
        }
        connect(&config).await
    }

    /// Creates a database of its own for one test; its name starts with `hint` (sanitised).
    pub async fn create_database(&self, hint: &str) -> Result<TestDatabase, TestingError> {
        let name = database_name(hint);
        let admin = self.connect_to(None).await?;
        // Identifiers cannot be bound; `name` holds only [a-z0-9_], and is quoted anyway.
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        let mut config = self.config.clone();
        config.dbname(&name);
        Ok(TestDatabase {
            name,
            direct: config.clone(),
            config,
            admin_config: self.config.clone(),
            drop_on_exit: !self.is_throwaway(),
            pooled: false,
        })
    }

    /// Stops a throwaway cluster and removes its directory (also done on drop).
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Stops the server of a throwaway cluster with a fast shutdown (`pg_ctl stop -m fast`:
    /// transactions aborted, connections closed), keeping its data for [`Cluster::start_server`].
    /// For fault tests; an error on an external server.
    pub fn stop_server(&mut self) -> Result<(), TestingError> {
        let owned = self.owned_mut("stop the server")?;
        if let Some(mut watchdog) = owned.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        fast_shutdown(&mut owned.postmaster);
        Ok(())
    }

    /// Starts the server of a throwaway cluster again, on the same port and data, after
    /// [`Cluster::stop_server`].
    pub fn start_server(&mut self) -> Result<(), TestingError> {
        let owned = self.owned_mut("start the server")?;
        if let Ok(None) = owned.postmaster.try_wait() {
            return Ok(());
        }
        let data = owned.dir.join("data");
        owned.postmaster = start_postmaster(
            &owned.dir,
            &data,
            owned.port,
            &owned.bin,
            &owned.runner,
            owned.tls,
        )?;
        owned.watchdog = spawn_watchdog(std::process::id(), owned.postmaster.id(), &owned.dir).ok();
        Ok(())
    }

    /// `pg_ctl restart -m fast`: [`Cluster::stop_server`] then [`Cluster::start_server`].
    pub fn restart(&mut self) -> Result<(), TestingError> {
        self.stop_server()?;
        self.start_server()
    }

    fn owned_mut(&mut self, what: &str) -> Result<&mut OwnedCluster, TestingError> {
        self.owned.as_mut().ok_or_else(|| {
            cluster_error(what, "only a throwaway cluster can be stopped or started")
        })
    }

    fn shutdown(&mut self) {
        if let Some(mut owned) = self.owned.take() {
            if let Some(mut watchdog) = owned.watchdog.take() {
                let _ = watchdog.kill();
                let _ = watchdog.wait();
            }
            fast_shutdown(&mut owned.postmaster);
            let _ = fs::remove_dir_all(&owned.dir);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One database of its own, for one test. On an external server it is dropped when this value is
/// dropped; on a throwaway cluster it goes with the cluster.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    /// Where the ORM under test connects: the server, or PgBouncer in front of it.
    config: Config,
    /// The server itself.
    direct: Config,
    admin_config: Config,
    drop_on_exit: bool,
    pooled: bool,
}

impl TestDatabase {
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connection settings for the code under test: the server's, or with [`TEST_VIA`] set to
    /// `pgbouncer`, those of a PgBouncer (transaction pooling) in front of it.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Connection settings of the server itself, never through a pooler: for set-up and for
    /// watching the server (`pg_stat_activity`, locks).
    pub fn direct_config(&self) -> &Config {
        &self.direct
    }

    /// Whether [`config`](Self::config) goes through a transaction pooler.
    pub fn through_pooler(&self) -> bool {
        self.pooled
    }

    /// Opens a connection straight to this database on the server (never through a pooler),
    /// driving it on a spawned task.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, TestingError> {
        connect(&self.direct).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if !self.drop_on_exit {
            return;
        }
        let admin = self.admin_config.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime (or during a panic in one): use a thread of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                if let Ok(client) = connect(&admin).await {
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
            Ok::<(), io::Error>(())
        })
        .join();
    }
}

async fn connect(config: &Config) -> Result<tokio_postgres::Client, TestingError> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The cluster shared by everything in this process: started on first use, removed by its
/// watchdog when the process ends.
pub fn shared_cluster() -> Result<&'static Cluster, TestingError> {
    SHARED
        .get_or_init(|| Cluster::from_env().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| cluster_error("start the shared test cluster", e))
}

/// A database of its own on the shared cluster, named after `hint`; reached through the shared
/// PgBouncer when [`TEST_VIA`] is `pgbouncer` (see [`TestDatabase::config`]).
pub async fn test_database(hint: &str) -> Result<TestDatabase, TestingError> {
    // Starting a cluster blocks for a second or two: keep it off the async worker.
    let cluster = tokio::task::spawn_blocking(shared_cluster)
        .await
        .map_err(|e| cluster_error("start the shared test cluster", e))??;
    let mut db = cluster.create_database(hint).await?;
    if through_pgbouncer() {
        let bouncer = tokio::task::spawn_blocking(via::shared_pgbouncer)
            .await
            .map_err(|e| cluster_error("start the shared PgBouncer", e))??;
        db.config = bouncer.config_for(&db.name);
        db.pooled = true;
    }
    Ok(db)
}

fn database_name(hint: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let clean: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    format!(
        "t_{clean}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

// ----- finding the server binaries -----

/// Where to look for PostgreSQL server binaries.
#[derive(Debug, Clone, Default)]
pub struct SearchPaths {
    /// Directories from `PATH`, in order.
    pub path: Vec<PathBuf>,
    /// The directory `pg_config --bindir` printed, if any.
    pub pg_config_bindir: Option<PathBuf>,
    /// Version directories such as `/usr/lib/postgresql/16` (the newest is tried first).
    pub versioned_roots: Vec<PathBuf>,
}

impl SearchPaths {
    /// This machine's `PATH`, `pg_config --bindir` and `/usr/lib/postgresql/*`.
    pub fn from_machine() -> SearchPaths {
        let path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        let pg_config_bindir = Command::new("pg_config")
            .arg("--bindir")
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        let versioned_roots = fs::read_dir("/usr/lib/postgresql")
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        SearchPaths {
            path,
            pg_config_bindir,
            versioned_roots,
        }
    }
}

/// The server binaries a throwaway cluster needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBinaries {
    /// `initdb`.
    pub initdb: PathBuf,
    /// `postgres`.
    pub postgres: PathBuf,
}

/// Finds `initdb` and `postgres` side by side in one of `paths`.
pub fn find_server_binaries(paths: &SearchPaths) -> Result<ServerBinaries, TestingError> {
    let mut versioned: Vec<&PathBuf> = paths.versioned_roots.iter().collect();
    // Newest major version first: "16" sorts after "9.6" numerically, not textually.
    versioned.sort_by_key(|p| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let major: u32 = name
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        std::cmp::Reverse(major)
    });
    let candidates = paths
        .path
        .iter()
        .cloned()
        .chain(paths.pg_config_bindir.clone())
        .chain(versioned.into_iter().map(|root| root.join("bin")));
    for dir in candidates {
        let initdb = dir.join("initdb");
        let postgres = dir.join("postgres");
        if is_executable(&initdb) && is_executable(&postgres) {
            // Resolve links such as /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb,
            // so that initdb finds the postgres binary and share files of its own version.
            let initdb = fs::canonicalize(&initdb).unwrap_or(initdb);
            let postgres = fs::canonicalize(&postgres).unwrap_or(postgres);
            return Ok(ServerBinaries { initdb, postgres });
        }
    }
    Err(TestingError::BinariesNotFound)
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

// ----- the OS user that runs the server -----

/// Who runs initdb and the server: this process's user, or `postgres` when we are root.
#[derive(Debug, Clone)]
struct ServerUser {
    ids: Option<(u32, u32)>,
}

impl ServerUser {
    fn for_current_process() -> Result<ServerUser, TestingError> {
        // SAFETY: getuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(ServerUser { ids: None });
        }
        if lookup_ids("postgres").is_none() {
            let out = Command::new("useradd")
                .args([
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--shell",
                    "/bin/sh",
                    "postgres",
                ])
                .output()
                .map_err(|e| cluster_error("create the postgres OS user with useradd", e))?;
            if !out.status.success() && lookup_ids("postgres").is_none() {
                return Err(cluster_error(
                    "create the postgres OS user (initdb will not run as root)",
                    String::from_utf8_lossy(&out.stderr).trim(),
                ));
            }
        }
        let ids = lookup_ids("postgres")
            .ok_or_else(|| cluster_error("look up the postgres OS user", "it does not exist"))?;
        Ok(ServerUser { ids: Some(ids) })
    }

    fn give(&self, dir: &Path) -> Result<(), TestingError> {
        if let Some((uid, gid)) = self.ids {
            chown(dir, Some(uid), Some(gid))
                .map_err(|e| cluster_error(format!("chown {}", dir.display()), e))?;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| cluster_error(format!("chmod {}", dir.display()), e))
    }

    fn command(&self, program: &Path, cwd: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(cwd);
        if let Some((uid, gid)) = self.ids {
            cmd.uid(uid)
                .gid(gid)
                .env("HOME", cwd)
                .env("USER", "postgres")
                .env("LOGNAME", "postgres");
        }
        cmd
    }
}

fn lookup_ids(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id")
            .arg(flag)
            .arg(user)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

// ----- starting and watching the server -----

fn start_postmaster(
    dir: &Path,
    data: &Path,
    port: u16,
    bin: &ServerBinaries,
    runner: &ServerUser,
    tls: bool,
) -> Result<Child, TestingError> {
    let log_path = dir.join("server.log");
    let log = fs::File::create(&log_path).map_err(|e| cluster_error("create the server log", e))?;
    if let Some((uid, gid)) = runner.ids {
        let _ = chown(&log_path, Some(uid), Some(gid));
    }
    let log_err = log
        .try_clone()
        .map_err(|e| cluster_error("open the server log", e))?;
    let mut child = runner
        .command(&bin.postgres, dir)
        .arg("-D")
        .arg(data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1"])
        // A throwaway cluster needs no durability; these make it several times faster.
        .args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ])
        .args(["-c", "max_connections=400", "-c", "shared_buffers=128MB"])
        .args(if tls {
            vec![
                "-c".to_owned(),
                "ssl=on".to_owned(),
                "-c".to_owned(),
                format!("ssl_cert_file={TLS_CERT}"),
                "-c".to_owned(),
                format!("ssl_key_file={TLS_KEY}"),
            ]
        } else {
            Vec::new()
        })
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own process group: a Ctrl-C in the terminal is for the tests; the watchdog stops it.
        .process_group(0)
        .spawn()
        .map_err(|e| cluster_error(format!("run {}", bin.postgres.display()), e))?;

    let pid_file = data.join("postmaster.pid");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(cluster_error(
                format!("start postgres on port {port} (it exited with {status})"),
                log_tail(&log_path),
            ));
        }
        // Line 8 of postmaster.pid is the server's status; "ready" once it accepts connections.
        // ("standby" for a hot standby that accepts read-only connections.)
        if fs::read_to_string(&pid_file).is_ok_and(|text| {
            matches!(
                text.lines().nth(7).map(str::trim),
                Some("ready" | "standby")
            )
        }) {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(cluster_error(
                format!("start postgres on port {port} within 60 s"),
                log_tail(&log_path),
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A new directory of this process's under the clusters' root, `<prefix>-<pid>-<unique>`, with
/// its owner file written first, so that a sweep can always tell whose it is.
fn claim_dir(prefix: &str) -> Result<PathBuf, TestingError> {
    let root = clusters_root();
    fs::create_dir_all(&root)
        .map_err(|e| cluster_error(format!("create {}", root.display()), e))?;
    // The postgres user must be able to reach its directory below ours.
    let _ = fs::set_permissions(&root, fs::Permissions::from_mode(0o755));
    let dir = root.join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        unique_suffix()
    ));
    fs::create_dir(&dir).map_err(|e| cluster_error(format!("create {}", dir.display()), e))?;
    fs::write(
        dir.join(OWNER_FILE),
        owner_record(std::process::id()).unwrap_or_default(),
    )
    .map_err(|e| cluster_error("write the owner file", e))?;
    Ok(dir)
}

/// Starts the server of the data directory in `dir` on a free `127.0.0.1` port, with its
/// watchdog. A free port can be taken by someone else between the probe and the server's bind:
/// three tries.
fn serve(
    dir: &Path,
    bin: &ServerBinaries,
    runner: &ServerUser,
    tls: bool,
) -> Result<Cluster, TestingError> {
    let data = dir.join("data");
    let mut last_error = None;
    for _ in 0..3 {
        let port = free_port().map_err(|e| cluster_error("find a free port", e))?;
        match start_postmaster(dir, &data, port, bin, runner, tls) {
            Ok(postmaster) => {
                let watchdog = spawn_watchdog(std::process::id(), postmaster.id(), dir).ok();
                let config = Config::new()
                    .host("127.0.0.1")
                    .port(port)
                    .user("postgres")
                    .dbname("postgres")
                    .connect_timeout(Duration::from_secs(10))
                    .to_owned();
                return Ok(Cluster {
                    config,
                    owned: Some(OwnedCluster {
                        dir: dir.to_path_buf(),
                        port,
                        tls,
                        postmaster,
                        watchdog,
                        bin: bin.clone(),
                        runner: runner.clone(),
                    }),
                });
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error
        .unwrap_or_else(|| cluster_error("start postgres", log_tail(&dir.join("server.log")))))
}

/// SIGINT is PostgreSQL's fast shutdown: abort transactions, close connections, exit. Waits up
/// to 10 s, then kills.
fn fast_shutdown(postmaster: &mut Child) {
    if let Ok(Some(_)) = postmaster.try_wait() {
        return;
    }
    signal(postmaster.id(), libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = postmaster.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = postmaster.kill();
    let _ = postmaster.wait();
}

fn log_tail(path: &Path) -> String {
    let lines: Vec<String> = fs::File::open(path)
        .map(|f| {
            io::BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .collect()
        })
        .unwrap_or_default();
    let start = lines.len().saturating_sub(15);
    lines[start..].join("\n")
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The watchdog waits for the owner to die, then stops the server and removes the directory.
/// It is a shell loop in a process group of its own, so it outlives a SIGKILL of the owner.
fn spawn_watchdog(owner: u32, postmaster: u32, dir: &Path) -> io::Result<Child> {
    const SCRIPT: &str = r#"
while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
kill -INT "$2" 2>/dev/null
i=0
while kill -0 "$2" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i+1)); done
kill -KILL "$2" 2>/dev/null
rm -rf "$3"
"#;
    Command::new("/bin/sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("actor-orm-watchdog")
        .arg(owner.to_string())
        .arg(postmaster.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
}

// ----- sweeping clusters of dead owners -----

const OWNER_FILE: &str = "owner";

fn clusters_root() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    std::env::temp_dir().join(format!("actor-orm-pg-{uid}"))
}

fn unique_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// `pid starttime`: the start time (in clock ticks since boot) tells a live owner from a new
/// process that reused its pid.
fn owner_record(pid: u32) -> Option<String> {
    Some(format!("{pid} {}", process_start_time(pid)?))
}

fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')': state is field 3, so starttime (field 22) is the 20th here.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is a live (not zombie) process.
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn owner_alive(record: &str) -> bool {
    let mut parts = record.split_whitespace();
    let (Some(pid), start) = (
        parts.next().and_then(|p| p.parse::<u32>().ok()),
        parts.next(),
    ) else {
        return false;
    };
    process_alive(pid) && start.and_then(|s| s.parse::<u64>().ok()) == process_start_time(pid)
}

/// Stops and removes every throwaway cluster of this OS user whose owning process is gone. Called
/// by [`Cluster::start`]; returns the directories removed.
pub fn sweep_stale_clusters() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(clusters_root()) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(record) = fs::read_to_string(dir.join(OWNER_FILE)) else {
            // Between create_dir and the owner file a cluster is being born: leave it alone,
            // unless it is old enough to be debris.
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60));
            if old && fs::remove_dir_all(&dir).is_ok() {
                removed.push(dir);
            }
            continue;
        };
        if owner_alive(&record) {
            continue;
        }
        // A cluster's postmaster, or a PgBouncer's process.
        for pid in [
            dir.join("data").join("postmaster.pid"),
            dir.join("pgbouncer.pid"),
        ]
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .filter_map(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        {
            // Only signal it if it is really this cluster's postmaster (pids are reused).
            let ours = fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.contains(&*dir.to_string_lossy()));
            if ours && process_alive(pid) {
                signal(pid, libc::SIGQUIT);
                let deadline = Instant::now() + Duration::from_secs(5);
                while process_alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if process_alive(pid) {
                    signal(pid, libc::SIGKILL);
                }
            }
        }
        if fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory-safety preconditions; a stale pid at worst fails with ESRCH.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

#[cfg(test)]
mod tests;
