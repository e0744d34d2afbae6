//! The pool supervisor: the typed timeout, FIFO checkout, leak detection, a background loop
//! that never releases, drain, close and fork.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actor_orm::{Error, Pool, Session};

use crate::models::*;

/// Makes the session check out its connection (sessions are lazy) and keep it.
async fn hold(s: &Session) {
    s.count(User::query()).await.expect("first statement");
}

#[tokio::test]
async fn an_exhausted_pool_times_out_with_its_numbers() {
    let timeout = Duration::from_millis(500);
    let (_db, pool) =
        crate::pool_with_schema("pool_timeout", |b| b.max_size(2).acquire_timeout(timeout)).await;
    let a = pool.named_session("report-job").await.expect("session");
    hold(&a).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = pool.named_session("request 41").await.expect("session");
    hold(&b).await;

    let waiter = pool.named_session("unlucky").await.expect("session");
    let started = Instant::now();
    let err = waiter
        .get::<User>(1)
        .await
        .expect_err("no connection is free");
    let waited = started.elapsed();
    let Error::PoolTimeout(report) = &err else {
        panic!("expected a pool timeout, got {err:?}");
    };
    // Within ±20% of acquire_timeout.
    assert!(
        waited >= timeout.mul_f64(0.8) && waited <= timeout.mul_f64(1.2),
        "waited {waited:?}"
    );
    assert!(report.waited >= timeout.mul_f64(0.8) && report.waited <= waited);
    assert_eq!(report.max_size, 2);
    assert_eq!(report.total, 2);
    assert_eq!(report.in_use, 2);
    assert_eq!(report.idle, 0);
    assert_eq!(report.waiting, 1);
    assert_eq!(report.holders.len(), 2);
    assert!(
        report.holders[0]
            .session
            .starts_with("report-job (created at tests/")
    );
    assert!(report.holders[1].session.starts_with("request 41"));
    assert!(report.holders[0].held > report.holders[1].held);
    let line = err.to_string();
    assert!(
        line.starts_with("timed out after ")
            && line.contains("pool of max 2 has 2 open, 2 in use, 0 idle, 1 waiting")
            && line.contains("held longest by report-job (created at "),
        "{line}"
    );

    // The session that timed out is still usable once a connection frees up.
    a.close().await.expect("close");
    assert_eq!(waiter.count(User::query()).await.expect("count"), 0);
    let stats = pool.stats().await.expect("stats");
    assert_eq!(stats.timeouts, 1);
    assert_eq!(stats.waiting, 0);
}

#[tokio::test]
async fn waiters_are_served_first_come_first_served() {
    let (_db, pool) = crate::pool_with_schema("pool_fifo", |b| b.max_size(1)).await;
    let holder = pool.session().await.expect("session");
    hold(&holder).await;

    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let s = pool.session().await.expect("session");
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            hold(&s).await;
            order.lock().expect("lock").push(i);
            s.close().await.expect("close");
        }));
        // Make the arrival order unambiguous.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder.close().await.expect("close");
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(*order.lock().expect("lock"), [0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn a_waiter_whose_session_is_gone_is_skipped() {
    let (_db, pool) = crate::pool_with_schema("pool_skip", |b| b.max_size(1)).await;
    let holder = pool.session().await.expect("session");
    hold(&holder).await;
    let gone = pool.session().await.expect("session");
    let g = gone.clone();
    let waiting = tokio::spawn(async move { g.count(User::query()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(pool.stats().await.expect("stats").waiting, 1);
    gone.kill();
    assert!(matches!(
        waiting.await.expect("task"),
        Err(Error::SessionClosed)
    ));
    let next = pool.session().await.expect("session");
    let n = next.clone();
    let next_task = tokio::spawn(async move { n.count(User::query()).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    holder.close().await.expect("close");
    next_task.await.expect("task").expect("served next");
    let stats = pool.stats().await.expect("stats");
    assert_eq!(stats.in_use, 1, "the killed waiter got nothing: {stats:?}");
    assert_eq!(stats.checkouts, 2);
}

/// A caller who gives up on its first statement while it waits for a connection takes its
/// request out of the queue at once: the connection, once free, goes to nobody on its behalf.
#[tokio::test]
async fn a_caller_who_gives_up_waiting_leaves_the_queue_at_once() {
    let (_db, pool) = crate::pool_with_schema("pool_withdraw", |b| b.max_size(1)).await;
    let holder = pool.session().await.expect("session");
    hold(&holder).await;
    let impatient = pool.session().await.expect("session");
    let gave_up = tokio::time::timeout(Duration::from_millis(50), impatient.count(User::query()));
    assert!(gave_up.await.is_err());
    assert!(
        crate::eventually(Duration::from_secs(1), || async {
            pool.stats().await.expect("stats").waiting == 0
        })
        .await,
        "the waiter left the queue when its caller gave up"
    );
    holder.close().await.expect("close");
    let stats = crate::settled(&pool).await;
    assert_eq!(
        (stats.in_use, stats.idle, stats.checkouts),
        (0, 1, 1),
        "the freed connection went to nobody: {stats:?}"
    );
    // The session whose caller gave up still works.
    assert_eq!(impatient.count(User::query()).await.expect("count"), 0);
}

/// The background loop that forgot to release: each iteration takes a session and never closes
/// it. Dropping the handle is enough — the pool never runs dry.
#[tokio::test]
async fn a_loop_that_never_releases_never_exhausts_the_pool() {
    let (_db, pool) = crate::pool_with_schema("pool_loop", |b| {
        b.max_size(2).acquire_timeout(Duration::from_secs(5))
    })
    .await;
    for i in 0..50 {
        let s = pool.session().await.expect("session");
        s.add(User::new(&format!("job{i}"), i)).await.expect("add");
        s.flush().await.expect("flush");
        if i % 2 == 0 {
            s.commit().await.expect("commit");
        }
        // No close, no commit on odd iterations: the handle just goes out of scope.
    }
    let s = pool.session().await.expect("session");
    assert_eq!(s.count(User::query()).await.expect("count"), 25);
    drop(s);
    let stats = pool.stats().await.expect("stats");
    assert!(stats.total <= 2, "{stats:?}");
    assert_eq!(stats.timeouts, 0);
}

#[tokio::test]
async fn a_long_lease_warns_once_and_max_session_lifetime_stops_it() {
    const LIFETIME: Duration = Duration::from_millis(1500);
    let (_db, pool) = crate::pool_with_schema("pool_leak", |b| {
        b.max_size(2)
            .leak_threshold(Duration::from_millis(100))
            .max_session_lifetime(LIFETIME)
    })
    .await;
    // A short session never warns.
    let quick = pool.session().await.expect("session");
    hold(&quick).await;
    quick.close().await.expect("close");

    let forgetful = pool.named_session("forgetful-job").await.expect("session");
    let held = Instant::now();
    hold(&forgetful).await;
    // The warning comes after leak_threshold, long before max_session_lifetime.
    let warned = crate::eventually(Duration::from_secs(1), || async {
        pool.stats().await.expect("stats").leak_warnings >= 1
    })
    .await;
    assert!(warned, "no leak warning");
    let stats = pool.stats().await.expect("stats");
    assert_eq!(stats.leak_warnings, 1, "one warning per lease: {stats:?}");
    if held.elapsed() < LIFETIME {
        // (Unless this test was stalled past the lifetime: then the stop below has happened.)
        assert_eq!(stats.sessions_stopped, 0);
    }

    let started = Instant::now();
    while forgetful.is_running() {
        assert!(started.elapsed() < Duration::from_secs(5), "never stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        held.elapsed() >= LIFETIME,
        "stopped before max_session_lifetime"
    );
    assert!(matches!(
        forgetful.count(User::query()).await,
        Err(Error::SessionClosed)
    ));
    let stats = crate::settled(&pool).await;
    assert_eq!(stats.leak_warnings, 1);
    assert_eq!(stats.sessions_stopped, 1);
    assert_eq!(stats.reclaims, 1);
}

#[tokio::test]
async fn drain_retires_every_connection_open_now() {
    let (db, pool) = crate::pool_with_schema("pool_drain", |b| b.max_size(3).min_idle(2)).await;
    if crate::direct_only(
        &db,
        "watches the pool's server backends by pid; behind a transaction pooler they belong to PgBouncer",
    ) {
        return;
    }
    let monitor = db.connect().await.expect("monitor");
    let app = db.name().to_owned();
    let mut before = Vec::new();
    for _ in 0..100 {
        before = crate::backends(&monitor, &app).await;
        if before.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(before.len(), 2, "min_idle connections opened");
    let holder = pool.session().await.expect("session");
    hold(&holder).await;

    pool.drain().await.expect("drain");
    holder.close().await.expect("close");
    let mut after = Vec::new();
    for _ in 0..200 {
        after = crate::backends(&monitor, &app).await;
        if after.len() == 2 && after.iter().all(|a| !before.contains(a)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        after
            .iter()
            .all(|(pid, _)| before.iter().all(|(old, _)| old != pid)),
        "before {before:?}, after {after:?}"
    );
    assert_eq!(
        after.len(),
        2,
        "refilled to min_idle with fresh connections"
    );
}

#[tokio::test]
async fn close_waits_for_sessions_then_stops_them() {
    let (db, pool) = crate::pool_with_schema("pool_close", |b| b.max_size(2)).await;
    if crate::direct_only(
        &db,
        "watches the pool's server backends by pid; behind a transaction pooler they belong to PgBouncer",
    ) {
        return;
    }
    let monitor = db.connect().await.expect("monitor");
    let app = db.name().to_owned();
    let stubborn = pool.session().await.expect("session");
    hold(&stubborn).await;
    let started = Instant::now();
    pool.close(Duration::from_millis(200)).await.expect("close");
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(!pool.is_running());
    // The stubborn session was stopped; new sessions are refused with a typed error.
    assert!(matches!(
        stubborn.count(User::query()).await,
        Err(Error::SessionClosed)
    ));
    assert!(matches!(
        pool.session().await,
        Err(Error::PoolClosed { .. })
    ));
    let mut left = crate::backends(&monitor, &app).await;
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        left = crate::backends(&monitor, &app).await;
    }
    assert!(left.is_empty(), "{left:?}");
}

/// `close()` leaves nothing running: every task the pool started (supervisor, sessions, spare
/// actors, connection drivers, timers, answers nobody waits for) has ended, and the server has no
/// backend of the pool. Each test has a runtime of its own, so its task count is the pool's.
#[tokio::test]
async fn close_leaves_no_task_and_no_backend_behind() {
    let (db, pool) =
        crate::pool_with_schema("pool_close_tasks", |b| b.max_size(3).min_idle(2)).await;
    if crate::direct_only(
        &db,
        "watches the pool's server backends by pid; behind a transaction pooler they belong to PgBouncer",
    ) {
        return;
    }
    let monitor = db.connect().await.expect("monitor");
    let app = db.name().to_owned();
    for _ in 0..5 {
        let s = pool.session().await.expect("session");
        // A read-only transaction: its COMMIT's answer is taken in by a task of its own.
        s.begin().await.expect("begin");
        s.count(User::query()).await.expect("count");
        s.commit().await.expect("commit");
        // A statement whose caller gives up.
        let slow = s.raw_rows_autocommit("SELECT pg_sleep(1)", vec![]);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), slow)
                .await
                .is_err()
        );
    }
    let held = pool.session().await.expect("session");
    hold(&held).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    assert!(metrics.num_alive_tasks() > 0);
    pool.close(Duration::from_millis(100)).await.expect("close");
    drop(held);
    assert!(
        crate::eventually(Duration::from_secs(5), || async {
            crate::backends(&monitor, &app).await.is_empty()
        })
        .await,
        "no backend of the pool remains"
    );
    // The monitor's own connection task is the last one.
    drop(monitor);
    assert!(
        crate::eventually(Duration::from_secs(5), || async {
            metrics.num_alive_tasks() == 0
        })
        .await,
        "{} tasks outlived the pool",
        metrics.num_alive_tasks()
    );
}

#[tokio::test]
async fn a_bad_connection_string_is_a_typed_error_without_the_password() {
    let err = Pool::builder("postgres://ann:s3cret@127.0.0.1:5432/db?sslmode=bogus")
        .build()
        .await
        .expect_err("malformed");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    let err = Pool::builder("host=127.0.0.1")
        .max_size(2)
        .min_idle(3)
        .build()
        .await
        .expect_err("min_idle > max_size");
    assert!(err.to_string().contains("min_idle"), "{err}");
}

/// A connection inherited across fork() shares its socket with the parent: the child may not use
/// the parent's pool.
#[tokio::test]
async fn a_forked_child_cannot_use_the_parents_pool() {
    let (_db, pool) = crate::pool_with_schema("pool_fork", |b| b.max_size(1)).await;
    let s = pool.session().await.expect("session");
    hold(&s).await;
    // SAFETY: the child polls one future without a runtime and exits.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork failed");
    if child == 0 {
        // Only async-signal-safe work is sound in the child of a threaded process: no runtime,
        // just one poll of the session future, which must refuse before touching the pool.
        let mut fut = std::pin::pin!(pool.session());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let code = match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Err(Error::PoolClosed { reason }))
                if reason.contains("fork") =>
            {
                0
            }
            std::task::Poll::Ready(_) => 1,
            std::task::Poll::Pending => 2,
        };
        // Every other call answers at once too: the pool's numbers, the inherited session.
        let refused = |r: std::task::Poll<actor_orm::Result<()>>| {
            matches!(r, std::task::Poll::Ready(Err(Error::PoolClosed { .. })))
        };
        let mut stats = std::pin::pin!(async { pool.stats().await.map(drop) });
        let mut count = std::pin::pin!(async { s.count(User::query()).await.map(drop) });
        let mut commit = std::pin::pin!(s.commit());
        let code = if code != 0 {
            code
        } else if !refused(stats.as_mut().poll(&mut cx)) {
            3
        } else if !refused(count.as_mut().poll(&mut cx)) {
            4
        } else if !refused(commit.as_mut().poll(&mut cx)) {
            5
        } else {
            0
        };
        // SAFETY: leave without running the parent's destructors or atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let waited = unsafe { libc::waitpid(child, &mut status, 0) };
    assert_eq!(waited, child);
    assert!(libc::WIFEXITED(status));
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the child was refused the pool"
    );
    // The parent's session is untouched.
    assert_eq!(s.count(User::query()).await.expect("count"), 0);
}
