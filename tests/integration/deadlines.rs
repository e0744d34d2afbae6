//! Deadlines: a session's (or the pool's `statement_timeout`) bounds the wait for a connection
//! and each statement (cancelled on the server), and a COMMIT with no time left is not sent.

use std::time::{Duration, Instant};

use actor_orm::Error;

use crate::models::User;

fn soon(ms: u64) -> Option<Instant> {
    Some(Instant::now() + Duration::from_millis(ms))
}

#[tokio::test]
async fn a_statement_past_the_deadline_is_cancelled_and_the_session_goes_on() {
    let (db, pool, monitor) = crate::pool_with_monitor("deadline_statement", |b| b).await;
    let s = pool.session().await.expect("session");
    let pid_of = |rows: Vec<tokio_postgres::Row>| rows.first().map(|r| r.get::<_, i32>(0));
    let before = pid_of(
        s.raw_rows_autocommit("SELECT pg_backend_pid()", vec![])
            .await
            .expect("pid"),
    );
    let started = Instant::now();
    s.set_deadline(soon(200)).await.expect("deadline");
    let err = s
        .raw_rows("SELECT pg_sleep(5)", vec![])
        .await
        .expect_err("past the deadline");
    let took = started.elapsed();
    assert!(err.is_deadline_exceeded(), "{err:?}");
    eprintln!(
        "deadline 200 ms, pg_sleep(5): DeadlineExceeded after {took:?} ({:+.0}%)",
        (took.as_secs_f64() / 0.2 - 1.0) * 100.0
    );
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_secs(5),
        "at the deadline, not before it and not at the statement's end: {took:?}"
    );
    // Cancelled on the server, not left running.
    if !db.through_pooler() {
        let app = db.name().to_owned();
        let idle = Instant::now();
        assert!(
            crate::eventually(Duration::from_secs(5), || async {
                crate::backends(&monitor, &app)
                    .await
                    .iter()
                    .all(|(_, state)| state != "active")
            })
            .await,
            "the statement was cancelled"
        );
        eprintln!("the backend was idle {:?} after the error", idle.elapsed());
    }
    s.rollback().await.expect("rollback");
    s.set_deadline(None).await.expect("no deadline");
    assert_eq!(s.count(User::query()).await.expect("count"), 0);
    // The same connection goes on serving the session: nothing was discarded.
    if !db.through_pooler() {
        let after = pid_of(
            s.raw_rows_autocommit("SELECT pg_backend_pid()", vec![])
                .await
                .expect("pid"),
        );
        assert_eq!(after, before, "the connection was reused");
    }
    assert_eq!(pool.stats().await.expect("stats").discards, 0);
}

#[tokio::test]
async fn the_pools_statement_timeout_bounds_every_statement() {
    let (_db, pool) = crate::pool_with_schema("deadline_pool", |b| {
        b.statement_timeout(Duration::from_millis(300))
    })
    .await;
    let s = pool.session().await.expect("session");
    let err = s
        .raw_rows("SELECT pg_sleep(30)", vec![])
        .await
        .expect_err("past the timeout");
    assert!(err.is_deadline_exceeded(), "{err:?}");
    s.rollback().await.expect("rollback");
    // A quick statement is not touched.
    assert_eq!(s.count(User::query()).await.expect("count"), 0);
}

#[tokio::test]
async fn waiting_for_a_connection_ends_at_the_deadline() {
    let (_db, pool) = crate::pool_with_schema("deadline_checkout", |b| {
        b.max_size(1).acquire_timeout(Duration::from_secs(30))
    })
    .await;
    let holder = pool.session().await.expect("session");
    holder.acquire().await.expect("hold the only connection");
    let late = pool.session().await.expect("session");
    late.set_deadline(soon(200)).await.expect("deadline");
    let err = late
        .count(User::query())
        .await
        .expect_err("no connection in time");
    assert!(err.is_deadline_exceeded(), "{err:?}");
    // The request left the queue.
    assert!(
        crate::eventually(Duration::from_secs(2), || async {
            pool.stats().await.is_ok_and(|s| s.waiting == 0)
        })
        .await
    );
    holder.close().await.expect("close");
    late.set_deadline(None).await.expect("no deadline");
    assert_eq!(late.count(User::query()).await.expect("count"), 0);
}

#[tokio::test]
async fn a_commit_with_no_time_left_is_not_sent() {
    let (_db, pool, _monitor) = crate::pool_with_monitor("deadline_commit", |b| b).await;
    let s = pool.session().await.expect("session");
    s.insert(User::new("ann", 30)).await.expect("insert");
    s.set_deadline(Some(Instant::now()))
        .await
        .expect("deadline");
    let err = s.commit().await.expect_err("no time left");
    assert!(
        matches!(&err, Error::DeadlineExceeded { what } if what.contains("not sent")),
        "{err:?}"
    );
    assert_eq!(
        crate::count_users(&pool).await.expect("count"),
        0,
        "nothing committed"
    );
    // The transaction is still open: with time again, it commits.
    s.set_deadline(None).await.expect("no deadline");
    s.commit().await.expect("commit");
    assert_eq!(crate::count_users(&pool).await.expect("count"), 1);
}
