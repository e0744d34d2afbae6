//! Reclaim, the central invariant: however a session ends while holding a connection inside a
//! transaction with a row lock, the pool takes the connection back, resets it, and hands the same
//! backend to the next session with nothing of the dead session left on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actor_orm::{Session, ddl};

use crate::models::*;

#[derive(Debug, Clone, Copy)]
enum Ending {
    Panic,
    Kill,
    Stop,
    Close,
    DropHandle,
}

/// The session takes a row lock and writes inside a transaction; returns its backend pid.
async fn lock_a_row(s: &Session) -> i32 {
    s.run(|state, conn| {
        Box::pin(async move {
            let rows = state
                .raw_rows(conn, "SELECT pg_backend_pid()", vec![])
                .await?;
            let pid: i32 = rows[0].get(0);
            state
                .raw_rows(
                    conn,
                    "SELECT * FROM accounts WHERE id = 1 FOR UPDATE",
                    vec![],
                )
                .await?;
            state
                .insert(
                    conn,
                    Account {
                        id: 99,
                        balance: 1,
                        version: 0,
                    },
                )
                .await?;
            Ok(pid)
        })
    })
    .await
    .expect("lock")
}

async fn end(s: Session, how: Ending) {
    match how {
        Ending::Panic => {
            let r = s
                .run(|_, _| -> actor_orm::BoxFuture<'_, actor_orm::Result<()>> {
                    Box::pin(async {
                        panic!("{} a bug in the request handler", crate::EXPECTED_PANIC)
                    })
                })
                .await;
            assert!(matches!(r, Err(actor_orm::Error::SessionClosed)), "{r:?}");
        }
        Ending::Kill => s.kill(),
        Ending::Stop => s.stop_actor(),
        Ending::Close => s.close().await.expect("close"),
        Ending::DropHandle => drop(s),
    }
}

async fn reclaim_after(how: Ending) {
    crate::quiet_expected_panics();
    let (db, conn) = crate::connect(&format!("reclaim_{how:?}")).await;
    conn.batch(&ddl::create_table::<Account>())
        .await
        .expect("schema");
    conn.batch("INSERT INTO accounts VALUES (1, 100, 0)")
        .await
        .expect("row");
    let monitor = db.connect().await.expect("monitor");
    let app = db.name().to_owned();
    let pool = crate::pool_on(&db, |b| b.max_size(1)).await;

    let s = pool.session().await.expect("session");
    let pid = lock_a_row(&s).await;
    // While the session lives, the lock is held.
    let blocked = monitor
        .batch_execute("BEGIN; SELECT * FROM accounts WHERE id = 1 FOR UPDATE NOWAIT; ROLLBACK")
        .await;
    assert!(blocked.is_err(), "the session holds the row lock");
    monitor.batch_execute("ROLLBACK").await.expect("rollback");

    let ended = Instant::now();
    end(s, how).await;

    // Within 1 s: the lock is free and no backend of the pool is idle in transaction.
    let deadline = ended + Duration::from_secs(1);
    loop {
        let free = monitor
            .batch_execute("BEGIN; SELECT * FROM accounts WHERE id = 1 FOR UPDATE NOWAIT; ROLLBACK")
            .await
            .is_ok();
        if !free {
            monitor.batch_execute("ROLLBACK").await.expect("rollback");
        }
        let states = crate::backends(&monitor, &app).await;
        let in_tx = states
            .iter()
            .any(|(_, s)| s.starts_with("idle in transaction"));
        if free && !in_tx {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{how:?}: after 1 s the lock is still held or a backend is idle in transaction: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The next session gets the same backend, with nothing of the dead session on it.
    let next = pool.session().await.expect("next session");
    let (next_pid, xact, has_99) = next
        .run(|state, conn| {
            Box::pin(async move {
                let rows = state
                    .raw_rows(
                        conn,
                        "SELECT pg_backend_pid(), pg_current_xact_id_if_assigned()::text, \
                         EXISTS (SELECT 1 FROM accounts WHERE id = 99)",
                        vec![],
                    )
                    .await?;
                Ok((
                    rows[0].get::<_, i32>(0),
                    rows[0].get::<_, Option<String>>(1),
                    rows[0].get::<_, bool>(2),
                ))
            })
        })
        .await
        .expect("next session works");
    assert_eq!(
        next_pid, pid,
        "{how:?}: the connection was reused, not replaced"
    );
    assert_eq!(
        xact, None,
        "{how:?}: a fresh transaction, not the dead one's"
    );
    assert!(
        !has_99,
        "{how:?}: the dead session's insert was rolled back"
    );
    next.close().await.expect("close");

    let stats = pool.stats().await.expect("stats");
    assert_eq!(stats.in_use, 0);
    assert_eq!(stats.opened, 1, "{how:?}: {stats:?}");
    assert_eq!(stats.checkouts, 2);
    assert_eq!(
        stats.checkouts,
        stats.checkins + stats.reclaims + stats.discards,
        "{stats:?}"
    );
    match how {
        Ending::Panic | Ending::Kill | Ending::Stop => assert_eq!(stats.reclaims, 1, "{stats:?}"),
        Ending::Close | Ending::DropHandle => assert_eq!(stats.checkins, 2, "{stats:?}"),
    }
    pool.close(Duration::from_secs(1)).await.expect("close");
}

#[tokio::test]
async fn a_panicking_session_gives_its_connection_back_reset() {
    reclaim_after(Ending::Panic).await;
}

#[tokio::test]
async fn a_killed_session_gives_its_connection_back_reset() {
    reclaim_after(Ending::Kill).await;
}

#[tokio::test]
async fn a_stopped_session_gives_its_connection_back_reset() {
    reclaim_after(Ending::Stop).await;
}

#[tokio::test]
async fn a_closed_session_gives_its_connection_back_reset() {
    reclaim_after(Ending::Close).await;
}

#[tokio::test]
async fn a_dropped_session_gives_its_connection_back_reset() {
    reclaim_after(Ending::DropHandle).await;
}

/// 1,000 concurrent sessions on a pool of 10, a tenth of them panicking mid-transaction: every
/// other one commits, the server never sees more than 10 backends for the pool, and afterwards
/// nothing is in use and every lease is accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_with_panics_on_a_pool_of_ten() {
    crate::quiet_expected_panics();
    let (db, conn) = crate::connect("thousand").await;
    create_schema(&conn).await;
    let monitor = db.connect().await.expect("monitor");
    let app = db.name().to_owned();
    let pool = crate::pool_on(&db, |b| b.max_size(10)).await;

    let done = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let (mut max, mut samples) = (0usize, 0usize);
            while done.load(Ordering::Relaxed) == 0 {
                max = max.max(crate::backends(&monitor, &app).await.len());
                samples += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (max, samples, monitor)
        })
    };

    let mut tasks = Vec::new();
    for i in 0..1000i32 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let s = pool.session().await.expect("session");
            s.add(User::new(&format!("u{i}"), i)).await.expect("add");
            s.flush().await.expect("flush");
            if i % 10 == 0 {
                let r = s
                    .run(|_, _| -> actor_orm::BoxFuture<'_, actor_orm::Result<()>> {
                        Box::pin(async { panic!("{} a session panics", crate::EXPECTED_PANIC) })
                    })
                    .await;
                assert!(r.is_err());
                false
            } else {
                s.commit().await.expect("commit");
                true
            }
        }));
    }
    let mut committed = 0;
    for t in tasks {
        if t.await.expect("task") {
            committed += 1;
        }
    }
    done.store(1, Ordering::Relaxed);
    let (max_backends, samples, monitor) = sampler.await.expect("sampler");
    assert_eq!(committed, 900);
    assert!(samples > 0);
    assert!(max_backends <= 10, "saw {max_backends} backends");

    let rows = monitor
        .query("SELECT name FROM users", &[])
        .await
        .expect("rows");
    assert_eq!(rows.len(), 900, "every committed row, no panicked one");
    assert!(rows.iter().all(|r| {
        let n: String = r.get(0);
        n[1..].parse::<i32>().expect("number") % 10 != 0
    }));

    // Reclaims run in the background; wait for the last ones.
    let stats = crate::settled(&pool).await;
    assert_eq!(stats.in_use, 0, "{stats:?}");
    assert!(stats.total <= 10);
    assert_eq!(stats.reclaims, 100, "{stats:?}");
    assert_eq!(stats.discards, 0, "{stats:?}");
    assert_eq!(stats.checkouts, 1000);
    assert_eq!(
        stats.checkouts,
        stats.checkins + stats.reclaims + stats.discards
    );
}
