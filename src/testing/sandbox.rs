//! The test sandbox behind `#[actor_orm::test]`, after Ecto's SQL Sandbox: a test gets a
//! [`Pool`] whose sessions all run inside one outer transaction on one connection (see
//! [`PoolBuilder::sandbox`](crate::PoolBuilder::sandbox)), rolled back when the test ends
//! however it ends.
//!
//! The schema (from models, from a migrations folder, or both) is built once per test binary
//! in a template database. Tests running at the same time each get a clone of it, so they never
//! wait on each other's rows or keys; since a sandboxed test commits nothing, its clone goes
//! back to a free list and the next test reuses it: a test costs one connection and its
//! transaction, not a database. With [`Isolation::Database`] a test gets a fresh clone of its
//! own with real commits (for `LISTEN`/`NOTIFY`, several connections, reclaim), dropped at its
//! end.
//!
//! Databases are named `sbx_<pid>_…`. On a throwaway cluster they go with it; on a server
//! named by `DATABASE_URL`, a test's clone is dropped when it ends (or panics), and the
//! template and the free list of a process that has ended are dropped by the next process
//! that builds a sandbox there.
//!
//! ```no_run
//! use actor_orm::testing::{Isolation, Sandbox};
//! # #[derive(actor_orm::Model, Clone)] struct User { #[orm(primary_key)] id: i64 }
//! // What #[actor_orm::test(models(User))] does:
//! Sandbox::new()
//!     .models(actor_orm::SchemaModels::new().model::<User>())
//!     .isolation(Isolation::Transaction)
//!     .run(|pool| async move {
//!         let s = pool.session().await.expect("session");
//!         s.insert(User { id: 1 }).await.expect("insert");
//!         s.commit().await.expect("commit"); // a savepoint released: gone after the test
//!     });
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash as _, Hasher as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio_postgres::Config;

use super::{TestingError, cluster_error, connect, process_alive, shared_cluster};
use crate::{Migrations, Pool, PoolBuilder, SchemaModels};

/// How a sandboxed test is kept apart from the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// One outer transaction, rolled back at the end; concurrent sessions take turns on its
    /// connection. The default, and the cheapest.
    #[default]
    Transaction,
    /// A database of the test's own, cloned from the template, with real commits and as many
    /// connections as the pool opens; dropped at the end.
    Database,
}

/// A sandboxed test's set-up: its schema and isolation. See the [module](self).
#[derive(Default)]
pub struct Sandbox {
    models: SchemaModels,
    migrations: Option<PathBuf>,
    isolation: Isolation,
    configure: Option<Box<dyn FnOnce(PoolBuilder) -> PoolBuilder + Send>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("models", &self.models)
            .field("migrations", &self.migrations)
            .field("isolation", &self.isolation)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// An empty schema, isolated by a transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// The models whose tables (and enum types) the template database is created with.
    pub fn models(mut self, models: SchemaModels) -> Self {
        self.models = models;
        self
    }

    /// A migrations folder applied to the template database (after the models' schema).
    pub fn migrations_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.migrations = Some(dir.into());
        self
    }

    /// How the test is kept apart from the others.
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Changes the pool's settings (the sandbox's own — one connection, no lifetime — stay).
    pub fn configure(
        mut self,
        configure: impl FnOnce(PoolBuilder) -> PoolBuilder + Send + 'static,
    ) -> Self {
        self.configure = Some(Box::new(configure));
        self
    }

    /// Runs `test` with the sandbox's pool on a runtime of its own (as `#[tokio::test]` does),
    /// then ends the sandbox. A panic in `test` is the test's; the sandbox's database is dropped
    /// on the way out.
    ///
    /// # Panics
    /// When the sandbox cannot start (no server, a schema that does not apply): the test fails
    /// with the reason.
    pub fn run<F, Fut, T>(self, test: F) -> T
    where
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = T>,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("the test sandbox could not start a runtime: {e}"));
        let sandbox = runtime
            .block_on(self.open())
            .unwrap_or_else(|e| panic!("the test sandbox could not start: {e}"));
        let out = runtime.block_on(test(sandbox.pool().clone()));
        runtime.block_on(sandbox.finish());
        out
    }

    /// Opens the sandbox: the template built (once per binary and schema), a database taken,
    /// the pool started. End it with [`SandboxPool::finish`].
    pub async fn open(self) -> Result<SandboxPool, TestingError> {
        let template = template_for(&self.models, self.migrations.as_ref()).await?;
        let (database, reused) = match self.isolation {
            Isolation::Transaction => match template.take_free() {
                Some(name) => (name, true),
                None => (template.clone_database().await?, false),
            },
            Isolation::Database => (template.clone_database().await?, false),
        };
        let mut config = template.admin.clone();
        config.dbname(&database);
        let mut builder = Pool::builder(config.clone())
            .application_name(database.clone())
            .acquire_timeout(Duration::from_secs(10));
        if let Some(configure) = self.configure {
            builder = configure(builder);
        }
        if self.isolation == Isolation::Transaction {
            builder = builder.sandbox();
        }
        let pool = match builder.build().await {
            Ok(pool) => pool,
            Err(e) => {
                // Not handed out: the database goes as a panicked test's does.
                template.drop_database(database).await;
                return Err(cluster_error("start the sandbox's pool", e));
            }
        };
        Ok(SandboxPool {
            pool,
            database: Some(database),
            config,
            template,
            isolation: self.isolation,
            reused,
        })
    }
}

/// A sandbox's pool and database, from [`Sandbox::open`]. Dropped without
/// [`finish`](Self::finish) (a panic), its database is dropped with it.
pub struct SandboxPool {
    pool: Pool,
    database: Option<String>,
    config: Config,
    template: Arc<Template>,
    isolation: Isolation,
    reused: bool,
}

impl std::fmt::Debug for SandboxPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxPool")
            .field("database", &self.database)
            .field("isolation", &self.isolation)
            .field("reused", &self.reused)
            .finish_non_exhaustive()
    }
}

impl SandboxPool {
    /// The pool every session of the test comes from.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The database's connection settings, for watching it from outside the sandbox (rows a
    /// sandboxed test wrote are never visible there).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the database came from the free list (an earlier test's, rolled back).
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Ends the sandbox: the pool closed (its transaction rolled back with its connection),
    /// the database back on the free list — or, isolated by database, dropped.
    pub async fn finish(mut self) {
        let _ = self.pool.close(Duration::from_secs(5)).await;
        if let Some(name) = self.database.take() {
            match self.isolation {
                Isolation::Transaction => self.template.give_back(name),
                Isolation::Database => self.template.drop_database(name).await,
            }
        }
    }
}

impl Drop for SandboxPool {
    fn drop(&mut self) {
        // Not finished: the test panicked. Nothing it did was committed, but its connection may
        // still be ending: the database is dropped (its connections terminated) rather than
        // reused.
        if let Some(name) = self.database.take() {
            let template = self.template.clone();
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(template.drop_database(name));
                }
            })
            .join();
        }
    }
}

/// One schema's template database and its free clones.
struct Template {
    name: String,
    /// The server's settings, for the admin connection.
    admin: Config,
    free: Mutex<Vec<String>>,
}

impl Template {
    fn take_free(&self) -> Option<String> {
        self.free.lock().ok()?.pop()
    }

    fn give_back(&self, name: String) {
        if let Ok(mut free) = self.free.lock() {
            free.push(name);
        }
    }

    async fn clone_database(&self) -> Result<String, TestingError> {
        let name = sandbox_name("c");
        let admin = connect(&self.admin).await?;
        // Identifiers cannot be bound; both names hold only [a-z0-9_], and are quoted anyway.
        admin
            .batch_execute(&format!(
                "CREATE DATABASE \"{name}\" TEMPLATE \"{}\"",
                self.name
            ))
            .await?;
        Ok(name)
    }

    async fn drop_database(&self, name: String) {
        if let Ok(admin) = connect(&self.admin).await {
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        }
    }
}

type Templates = HashMap<u64, Arc<tokio::sync::OnceCell<Arc<Template>>>>;

static TEMPLATES: LazyLock<Mutex<Templates>> = LazyLock::new(Mutex::default);

/// The template for this schema, built on first use in this process.
async fn template_for(
    models: &SchemaModels,
    migrations: Option<&PathBuf>,
) -> Result<Arc<Template>, TestingError> {
    let create = models.create_sql();
    let migrations = migrations
        .map(Migrations::from_dir)
        .transpose()
        .map_err(|e| cluster_error("read the sandbox's migrations", e))?;
    let mut key = std::hash::DefaultHasher::new();
    create.hash(&mut key);
    for m in migrations.iter().flat_map(Migrations::list) {
        m.checksum().hash(&mut key);
    }
    let cell = {
        let mut templates = TEMPLATES
            .lock()
            .map_err(|_| cluster_error("build the sandbox's template", "a test panicked"))?;
        templates.entry(key.finish()).or_default().clone()
    };
    cell.get_or_try_init(|| build_template(create, migrations))
        .await
        .cloned()
}

async fn build_template(
    create: String,
    migrations: Option<Migrations>,
) -> Result<Arc<Template>, TestingError> {
    // Starting a cluster blocks for a second or two: keep it off the async worker.
    let cluster = tokio::task::spawn_blocking(shared_cluster)
        .await
        .map_err(|e| cluster_error("start the shared test cluster", e))??;
    let admin = cluster.config().clone();
    let client = connect(&admin).await?;
    if !cluster.is_throwaway() {
        sweep_ended(&client).await;
    }
    let name = sandbox_name("t");
    client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await?;
    let mut config = admin.clone();
    config.dbname(&name);
    let schema = connect(&config).await?;
    schema.batch_execute(&create).await?;
    drop(schema);
    if let Some(migrations) = migrations {
        let pool = Pool::builder(config)
            .max_size(1)
            .build()
            .await
            .map_err(|e| cluster_error("apply the sandbox's migrations", e))?;
        let applied = pool.migrate(&migrations).await;
        let _ = pool.close(Duration::from_secs(5)).await;
        applied.map_err(|e| cluster_error("apply the sandbox's migrations", e))?;
    }
    Ok(Arc::new(Template {
        name,
        admin,
        free: Mutex::new(Vec::new()),
    }))
}

/// `sbx_<pid>_<kind><n>`.
fn sandbox_name(kind: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "sbx_{}_{kind}{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Drops the sandbox databases of processes that have ended (a server that outlives them).
async fn sweep_ended(client: &tokio_postgres::Client) {
    let Ok(rows) = client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'sbx\\_%'",
            &[],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let owner = name
            .split('_')
            .nth(1)
            .and_then(|pid| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| !process_alive(pid)) {
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        }
    }
}
