//! Through a real PgBouncer in transaction mode (started by the testing module): the default
//! settings work, no statement is ever bound to another, a reset that cannot work behind a
//! pooler is refused with a typed error naming the setting, and the server never sees more
//! connections than PgBouncer's pool.

use std::time::Duration;

use actor_orm::testing::{PgBouncer, PgBouncerOptions};
use actor_orm::{Error, Pool, ResetPolicy, StatementMode};

use crate::models::{Everything, User, create_schema};

/// A database with the core schema, a PgBouncer in front of its server, and a plain client on
/// the server itself to watch it.
async fn behind_pgbouncer(
    hint: &str,
    options: PgBouncerOptions,
) -> Option<(
    actor_orm::testing::TestDatabase,
    PgBouncer,
    tokio_postgres::Client,
)> {
    let (db, conn) = crate::connect(hint).await;
    create_schema(&conn).await;
    let server = db.direct_config().clone();
    let bouncer = match tokio::task::spawn_blocking(move || PgBouncer::start(&server, options))
        .await
        .expect("join")
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!("skipped: this test needs PgBouncer: {e}");
            return None;
        }
    };
    let monitor = db.connect().await.expect("monitor");
    Some((db, bouncer, monitor))
}

/// Waits for every task; fails listing the first failures.
async fn all_succeed<T>(
    what: &str,
    tasks: Vec<tokio::task::JoinHandle<actor_orm::Result<T>>>,
) -> Vec<T> {
    let mut failures = Vec::new();
    let mut done = Vec::new();
    for t in tasks {
        match t.await.expect("join") {
            Ok(v) => done.push(v),
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert!(
        failures.is_empty(),
        "{what}: {} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    done
}

fn user(i: i64) -> User {
    User::new(&format!("user {i}"), (i % 90) as i32)
}

/// Default settings, 200 concurrent sessions through PgBouncer's 4 server connections: each
/// inserts, reads back, updates and commits. With prepared statements (the former default)
/// 193 of 200 failed with `prepared statement "s23" does not exist`; each connection now finds
/// the pooler and sends unnamed statements.
#[tokio::test]
async fn the_default_settings_work_behind_pgbouncer() {
    let Some((db, bouncer, monitor)) =
        behind_pgbouncer("pgb_default", PgBouncerOptions::new().default_pool_size(4)).await
    else {
        return;
    };
    let pool = Pool::builder(bouncer.config_for(db.name()))
        .max_size(16)
        .build()
        .await
        .expect("pool");
    let mut tasks: Vec<tokio::task::JoinHandle<actor_orm::Result<i64>>> = Vec::new();
    for i in 0..200 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let s = pool.session().await?;
            let mut u = s.insert(user(i)).await?;
            let again = s.get::<User>(u.id).await?.expect("read back");
            assert_eq!(again, u);
            u.age += 1;
            s.save(u.clone()).await?;
            s.commit().await?;
            let n = s.count(User::query().filter(User::ID.eq(u.id))).await?;
            s.close().await?;
            Ok(n)
        }));
    }
    let counts = all_succeed("sessions", tasks).await;
    assert!(counts.iter().all(|&n| n == 1));
    let n: i64 = monitor
        .query_one("SELECT count(*) FROM users WHERE age > 0 OR age = 0", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 200);
    pool.close(Duration::from_secs(5)).await.expect("close");
}

/// `DiscardAll` (or a custom reset) behind a pooler would run after COMMIT on another client's
/// server connection: refused at the first use, with a typed error naming the setting and what
/// to do instead.
#[tokio::test]
async fn a_reset_that_cannot_work_behind_a_pooler_is_refused() {
    let Some((db, bouncer, _monitor)) =
        behind_pgbouncer("pgb_discard", PgBouncerOptions::new()).await
    else {
        return;
    };
    for reset in [
        ResetPolicy::DiscardAll,
        ResetPolicy::Custom("RESET ALL".into()),
    ] {
        let pool = Pool::builder(bouncer.config_for(db.name()))
            .reset(reset)
            .acquire_timeout(Duration::from_secs(10))
            .build()
            .await
            .expect("pool");
        let s = pool.session().await.expect("session");
        let err = s.count(User::query()).await.expect_err("refused");
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("server_reset_query"), "{text}");
        assert!(text.contains("ResetPolicy::Rollback"), "{text}");
        drop(s);
        pool.close(Duration::from_secs(1)).await.expect("close");
    }
    // Straight to the server, the same setting works.
    let pool = crate::pool_on(&db, |b| b.reset(ResetPolicy::DiscardAll)).await;
    assert_eq!(crate::count_users(&pool).await.expect("count"), 0);
}

/// Prepared statements stay the default straight to the server, and an explicit choice is kept
/// behind a pooler (for one that tracks prepared statements itself).
#[tokio::test]
async fn the_statement_mode_follows_the_pooler_unless_set() {
    let Some((db, bouncer, _monitor)) = behind_pgbouncer("pgb_mode", PgBouncerOptions::new()).await
    else {
        return;
    };
    let mode = |pool: Pool| async move {
        let s = pool.session().await.expect("session");
        let mode = s
            .run(|_, c| Box::pin(async move { Ok(c.mode()) }))
            .await
            .expect("mode");
        s.close().await.expect("close");
        mode
    };
    let direct = crate::pool_on(&db, |b| b).await;
    assert_eq!(mode(direct).await, StatementMode::Prepared);
    let through = Pool::builder(bouncer.config_for(db.name()))
        .build()
        .await
        .expect("pool");
    assert_eq!(mode(through).await, StatementMode::Unnamed);
    let explicit = Pool::builder(bouncer.config_for(db.name()))
        .statement_mode(StatementMode::Prepared)
        .build()
        .await
        .expect("pool");
    assert_eq!(mode(explicit).await, StatementMode::Prepared);
}

/// The environment variable that makes [`pgbouncer_worker`] a worker, and names its server.
const WORKER_URL: &str = "ACTOR_ORM_PGBOUNCER_WORKER_URL";
/// Which worker it is (its rows' names start with it).
const WORKER_ID: &str = "ACTOR_ORM_PGBOUNCER_WORKER_ID";

/// One of the processes [`four_processes_through_one_pgbouncer`] starts: 1,000 sessions with the
/// default settings, each using statements that tokio-postgres names (`s0`, `s1`, … in every
/// process alike): inserts, reads, a COPY in and a COPY out with a value. Does nothing when run
/// on its own.
#[tokio::test]
#[ignore = "a worker process of four_processes_through_one_pgbouncer, which runs it"]
async fn pgbouncer_worker() {
    let Ok(url) = std::env::var(WORKER_URL) else {
        return;
    };
    let id = std::env::var(WORKER_ID).unwrap_or_default();
    let pool = Pool::builder(url.as_str())
        .max_size(8)
        .acquire_timeout(Duration::from_secs(30))
        .build()
        .await
        .expect("pool");
    let mut tasks: Vec<tokio::task::JoinHandle<actor_orm::Result<()>>> = Vec::new();
    for i in 0..1_000 {
        let pool = pool.clone();
        let name = format!("w{id}-{i}");
        tasks.push(tokio::spawn(async move {
            let s = pool.session().await?;
            if i % 50 == 0 {
                s.copy_in([User::new(&format!("{name}-copied"), 1)]).await?;
                let mut data = s
                    .copy_out(
                        User::query().filter(User::NAME.eq(format!("{name}-copied"))),
                        actor_orm::CopyFormat::csv(),
                    )
                    .await?;
                // Read to the end (see copy_through_pgbouncer_leaves_no_statement_behind).
                while let Some(chunk) = data.next().await {
                    chunk?;
                }
            }
            if i % 200 == 0 {
                // A COPY out without values, outside any transaction: tokio-postgres prepares
                // it as a named statement, so behind a pooler it runs in a transaction.
                let mut data = s
                    .copy_out(User::query(), actor_orm::CopyFormat::Text)
                    .await?;
                while let Some(chunk) = data.next().await {
                    chunk?;
                }
                s.commit().await?;
            }
            let u = s.insert(User::new(&name, i % 90)).await?;
            s.commit().await?;
            let again = s.get::<User>(u.id).await?;
            assert_eq!(again.as_ref(), Some(&u));
            s.close().await
        }));
    }
    all_succeed(&format!("worker {id}"), tasks).await;
}

/// 4 processes × 1,000 sessions through one PgBouncer with `default_pool_size` 8: no error (a
/// statement left on a server connection by one process would collide with another's of the
/// same name, or be run in its place), and the server never sees more than 8 backends of this
/// database (sampled every 10 ms).
#[tokio::test]
async fn four_processes_through_one_pgbouncer() {
    let Some((db, bouncer, monitor)) = behind_pgbouncer(
        "pgb_processes",
        PgBouncerOptions::new().default_pool_size(8),
    )
    .await
    else {
        return;
    };
    let url = format!(
        "host=127.0.0.1 port={} user=postgres dbname={}",
        bouncer.port(),
        db.name()
    );
    let name = db.name().to_owned();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let seen = peak.clone();
    let sampler = tokio::spawn(async move {
        loop {
            let n: i64 = monitor
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                     AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                    &[&name],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or(0);
            seen.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let workers = crate::run_workers("pgbouncer::pgbouncer_worker", 4, move |id| {
        vec![(WORKER_URL, url.clone()), (WORKER_ID, id.to_string())]
    })
    .await;
    sampler.abort();
    for out in &workers {
        assert!(
            out.status.success(),
            "a worker failed: {}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&out.stderr).lines())
                .filter(|l| l.contains("failed") || l.contains("panicked"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the worker ran"
        );
    }
    let most = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!((1..=8).contains(&most), "server backends at most {most}");
    let pool = Pool::builder(bouncer.config_for(db.name()))
        .build()
        .await
        .expect("pool");
    let s = pool.session().await.expect("session");
    assert_eq!(
        s.count(User::query()).await.expect("count"),
        4 * (1_000 + 20)
    );
}

/// Two pools (as two processes would) COPY through the same PgBouncer: the statement a COPY
/// prepares to learn its columns' types is closed inside the transaction, never left on a
/// server connection where another client's statement of the same name would collide
/// (`42P05: prepared statement "s0" already exists`).
#[tokio::test]
async fn copy_through_pgbouncer_leaves_no_statement_behind() {
    let Some((db, bouncer, monitor)) =
        behind_pgbouncer("pgb_copy", PgBouncerOptions::new().default_pool_size(2)).await
    else {
        return;
    };
    let pools = [
        Pool::builder(bouncer.config_for(db.name()))
            .max_size(4)
            .build()
            .await
            .expect("pool"),
        Pool::builder(bouncer.config_for(db.name()))
            .max_size(4)
            .build()
            .await
            .expect("pool"),
    ];
    let mut tasks = Vec::new();
    for round in 0..40i64 {
        for (p, pool) in pools.iter().enumerate() {
            let pool = pool.clone();
            let first = (round * 2 + p as i64) * 100;
            tasks.push(tokio::spawn(async move {
                let s = pool.session().await?;
                s.copy_in((0..10).map(|i| user(first + i))).await?;
                s.commit().await?;
                let mut n = s
                    .copy_out(
                        User::query().filter(User::AGE.ge(0)),
                        actor_orm::CopyFormat::Text,
                    )
                    .await?;
                // Read to the end: a stream dropped part-way sends a cancel request, on which
                // Debian 12's PgBouncer 1.18 can crash (pgbouncer#801, fixed in later releases).
                while let Some(chunk) = n.next().await {
                    chunk?;
                }
                s.close().await
            }));
        }
    }
    all_succeed("sessions", tasks).await;
    let left: i64 = monitor
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .expect("count")
        .get(0);
    assert!(left > 0);
}

/// Columns of every supported type, PostgreSQL enums and arrays among them, written and read on
/// fresh connections through PgBouncer: 20 pools of one connection each. An enum read as itself
/// makes tokio-postgres look its type up with a named statement of its own, gone by the next
/// transaction behind a transaction pooler (`26000`); the ORM reads enums as text.
#[tokio::test]
async fn enums_and_every_type_through_pgbouncer_on_fresh_connections() {
    let Some((db, bouncer, _monitor)) =
        behind_pgbouncer("pgb_types", PgBouncerOptions::new().default_pool_size(2)).await
    else {
        return;
    };
    // Rows written straight to the server; through PgBouncer a fresh connection's first
    // statement reads them (outside a transaction, as a read runs).
    let direct = crate::pool_on(&db, |b| b).await;
    let s = direct.session().await.expect("session");
    let mut rows = Vec::new();
    for n in 0..20u128 {
        let mut row = crate::core_types::sample();
        row.id = uuid::Uuid::from_u128(n + 1);
        rows.push(s.insert(row).await.expect("insert"));
    }
    s.commit().await.expect("commit");
    s.close().await.expect("close");
    let mut tasks: Vec<tokio::task::JoinHandle<actor_orm::Result<()>>> = Vec::new();
    for row in rows {
        let config = bouncer.config_for(db.name());
        tasks.push(tokio::spawn(async move {
            let pool = Pool::builder(config).max_size(1).build().await?;
            let s = pool.session().await?;
            let read = s
                .all(Everything::query().filter(Everything::ID.eq(row.id)))
                .await?;
            assert_eq!(read, vec![row.clone()]);
            let moods = s
                .project(Everything::query().select(Everything::MOOD))
                .await?;
            assert!(moods.len() >= 20);
            let mut again = row.clone();
            again.id = uuid::Uuid::from_u128(row.id.as_u128() + 1_000);
            assert_eq!(s.insert(again.clone()).await?, again);
            s.commit().await?;
            s.close().await?;
            pool.close(Duration::from_secs(1)).await
        }));
    }
    all_succeed("sessions", tasks).await;
}

/// `LISTEN` through a transaction pooler would listen on a server connection that goes to other
/// clients after the statement: refused with a typed error naming `direct_at`; with the server's
/// own address for listeners, notifications sent by sessions through PgBouncer arrive.
#[tokio::test]
async fn a_listener_behind_a_pooler_needs_the_server() {
    let Some((db, bouncer, _monitor)) =
        behind_pgbouncer("pgb_listen", PgBouncerOptions::new()).await
    else {
        return;
    };
    let through = Pool::builder(bouncer.config_for(db.name()))
        .build()
        .await
        .expect("pool");
    let err = through.listen(["jobs"]).await.expect_err("refused");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("direct_at"), "{err}");

    let pool = Pool::builder(bouncer.config_for(db.name()))
        .direct_at(db.direct_config())
        .build()
        .await
        .expect("pool");
    let mut jobs = pool.listen(["jobs"]).await.expect("listen");
    let s = pool.session().await.expect("session");
    s.raw_execute("SELECT pg_notify('jobs', 'through pgbouncer')", vec![])
        .await
        .expect("notify");
    s.commit().await.expect("commit");
    let event = tokio::time::timeout(Duration::from_secs(10), jobs.recv())
        .await
        .expect("in time")
        .expect("open");
    assert!(
        matches!(&event, actor_orm::Event::Notification { payload, .. } if payload == "through pgbouncer"),
        "{event:?}"
    );
}

/// The server behind PgBouncer stops for a second and starts again: sessions fail with typed
/// errors while it is down, and with `server_login_retry = 1` (the README's setting; with
/// PgBouncer's default of 15 s this test fails: ~15 s of failures) the pool serves again within
/// seconds, with no connection of its own replaced
/// by hand: PgBouncer's client connections outlive the server's.
#[tokio::test]
async fn a_server_restart_behind_pgbouncer_is_over_in_seconds() {
    let Some(mut cluster) = crate::own_cluster().await else {
        return;
    };
    let server = cluster.config().clone();
    let bouncer = match tokio::task::spawn_blocking(move || {
        PgBouncer::start(&server, PgBouncerOptions::new().server_login_retry(1))
    })
    .await
    .expect("join")
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!("skipped: this test needs PgBouncer: {e}");
            return;
        }
    };
    let pool = Pool::builder(bouncer.config_for("postgres"))
        .max_size(4)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("pool");
    let one = |pool: Pool| async move {
        let s = pool.session().await?;
        let rows = s.raw_rows("SELECT 1", vec![]).await?;
        s.close().await?;
        Ok::<usize, Error>(rows.len())
    };
    for _ in 0..8 {
        assert_eq!(one(pool.clone()).await.expect("before"), 1);
    }
    let typed = |e: &Error| {
        // Lost connections and the pooler's or the server's own errors.
        matches!(
            e,
            Error::ConnectionLost { .. }
                | Error::Database(_)
                | Error::Connect { .. }
                | Error::PoolTimeout(_)
        )
    };
    let mut cluster = tokio::task::spawn_blocking(move || {
        cluster.stop_server().expect("stop");
        cluster
    })
    .await
    .expect("join");
    // Sessions while it is down: PgBouncer's logins to the server fail meanwhile.
    let down = std::time::Instant::now();
    while down.elapsed() < Duration::from_secs(1) {
        // PgBouncer holds a query while it cannot log in (up to its query_wait_timeout).
        if let Ok(Err(e)) =
            tokio::time::timeout(Duration::from_millis(200), one(pool.clone())).await
        {
            assert!(typed(&e), "{e:?}");
        }
    }
    // Kept until the end: dropping the cluster stops it.
    let _cluster = tokio::task::spawn_blocking(move || {
        cluster.start_server().expect("start");
        cluster
    })
    .await
    .expect("join");
    let mut failures = Vec::new();
    let back = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match one(pool.clone()).await {
                Ok(_) => return,
                Err(e) => {
                    assert!(typed(&e), "{e:?}");
                    failures.push(e.to_string());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        back.is_ok(),
        "not serving 10 s after the server came back: {failures:?}"
    );
    // Every connection of the pool works again.
    let tasks: Vec<_> = (0..16).map(|_| tokio::spawn(one(pool.clone()))).collect();
    all_succeed("after the restart", tasks).await;
}

/// The environment variable under which the whole integration suite runs through PgBouncer
/// ([`the_whole_suite_runs_through_pgbouncer`] sets it for a child run of this binary).
const SUITE_CHILD: &str = "ACTOR_ORM_SUITE_THROUGH_PGBOUNCER";

/// Modules whose tests run on servers of their own, never through the shared PgBouncer.
const OWN_SERVERS: [&str; 6] = [
    "pgbouncer::",
    "cluster::",
    "hangs::",
    "failover::",
    "replicas::",
    "tls::",
];

/// The integration suite a second time, every test database reached through one PgBouncer in
/// transaction mode ([`actor_orm::testing::TEST_VIA`]): this binary run again as a child with
/// the switch set, skipping the modules whose tests run on servers of their own. Tests that
/// cannot work behind a transaction pooler say so (`skipped behind PgBouncer: …`) and return.
#[tokio::test]
async fn the_whole_suite_runs_through_pgbouncer() {
    if std::env::var_os(SUITE_CHILD).is_some() {
        return;
    }
    if let Err(e) = PgBouncer::binary() {
        eprintln!("skipped: this test needs PgBouncer: {e}");
        return;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args(["--test-threads=2", "--nocapture"])
            // This module's tests start PgBouncers of their own; these start servers of their
            // own (a frozen, restarted, promoted or TLS server), which no PgBouncer stands
            // before: run once, in the direct run.
            .args(OWN_SERVERS.iter().flat_map(|m| ["--skip", *m]))
            .env(actor_orm::testing::TEST_VIA, "pgbouncer")
            .env(SUITE_CHILD, "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run the suite")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout
        .lines()
        .filter(|l| l.starts_with("test result") || l.ends_with("FAILED"))
        .collect::<Vec<_>>()
        .join("\n");
    let skipped = stderr
        .lines()
        .filter(|l| l.starts_with("skipped behind PgBouncer"))
        .count();
    eprintln!(
        "through PgBouncer: {summary}\n{skipped} tests skipped behind PgBouncer (they say why)"
    );
    assert!(
        out.status.success(),
        "the suite failed through PgBouncer:\n{summary}\n{}",
        stderr
            .lines()
            .filter(|l| l.contains("panicked") || l.contains("assertion"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(stdout.contains("test result: ok"), "{summary}");
}
