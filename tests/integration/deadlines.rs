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
    s.set_deadline(soon(300)).await.expect("deadline");
    let err = s
        .raw_rows("SELECT pg_sleep(30)", vec![])
        .await
        .expect_err("past the deadline");
    assert!(err.is_deadline_exceeded(), "{err:?}");
    // Cancelled on the server, not left running.
    if !db.through_pooler() {
        let app = db.name().to_owned();
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
    }
    s.rollback().await.expect("rollback");
    s.set_deadline(None).await.expect("no deadline");
    assert_eq!(s.count(User::query()).await.expect("count"), 0);
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
