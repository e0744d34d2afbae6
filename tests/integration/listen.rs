//! LISTEN/NOTIFY: a subscription on a connection of its own, that says when it may have missed
//! notifications (a lost connection, a subscriber that fell behind).

use std::time::Duration;

use actor_orm::{Event, Pool, Subscription};

async fn next(sub: &mut Subscription) -> Event {
    tokio::time::timeout(Duration::from_secs(15), sub.recv())
        .await
        .expect("an event in time")
        .expect("the subscription is open")
}

async fn notify(pool: &Pool, payloads: std::ops::RangeInclusive<i32>) {
    let s = pool.session().await.expect("session");
    s.raw_rows(
        format!(
            "SELECT pg_notify('jobs', g::text) FROM generate_series({}, {}) g",
            payloads.start(),
            payloads.end()
        ),
        vec![],
    )
    .await
    .expect("notify");
    s.commit().await.expect("commit");
    s.close().await.expect("close");
}

fn payload(e: &Event) -> i32 {
    match e {
        Event::Notification {
            payload, channel, ..
        } => {
            assert_eq!(channel, "jobs");
            payload.parse().expect("number")
        }
        other => panic!("expected a notification, got {other:?}"),
    }
}

#[tokio::test]
async fn ten_thousand_notifications_arrive_in_order_none_lost() {
    let (_db, pool) = crate::pool_with_schema("listen_many", |b| b).await;
    let mut sub = pool
        .listen_with_capacity(["jobs"], 20_000)
        .await
        .expect("listen");
    notify(&pool, 1..=10_000).await;
    for i in 1..=10_000 {
        assert_eq!(payload(&next(&mut sub).await), i);
    }
    // The subscription does not hold a lease, and ends with the pool.
    assert_eq!(pool.stats().await.expect("stats").in_use, 0);
    pool.close(Duration::from_secs(1)).await.expect("close");
    let end = tokio::time::timeout(Duration::from_secs(5), sub.recv()).await;
    assert_eq!(end, Ok(None), "the subscription ended with the pool");
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_told_how_many_it_missed() {
    let (_db, pool) = crate::pool_with_schema("listen_lag", |b| b).await;
    let mut sub = pool
        .listen_with_capacity(["jobs"], 10)
        .await
        .expect("listen");
    notify(&pool, 1..=100).await;
    // Every notification reaches the listener before any is read: ten fit, ninety do not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 1..=10 {
        assert_eq!(payload(&next(&mut sub).await), i);
    }
    // The next notification comes after the count of what was dropped.
    notify(&pool, 101..=101).await;
    assert_eq!(next(&mut sub).await, Event::Lagged(90));
    assert_eq!(payload(&next(&mut sub).await), 101);
}

#[tokio::test]
async fn a_terminated_listener_reconnects_and_says_so() {
    let (db, pool, monitor) = crate::pool_with_monitor("listen_terminate", |b| b).await;
    let mut sub = pool.listen(["jobs"]).await.expect("listen");
    notify(&pool, 1..=1).await;
    assert_eq!(payload(&next(&mut sub).await), 1);
    let killed: i64 = monitor
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1 AND query LIKE 'LISTEN%'",
            &[&db.name()],
        )
        .await
        .expect("terminate")
        .get(0);
    assert_eq!(killed, 1);
    assert_eq!(next(&mut sub).await, Event::Reconnected);
    notify(&pool, 2..=2).await;
    assert_eq!(payload(&next(&mut sub).await), 2);
}

#[tokio::test]
async fn a_server_restart_is_survived_and_announced() {
    let Some(cluster) = crate::own_cluster().await else {
        return;
    };
    let pool = Pool::builder(cluster.config())
        .max_size(2)
        .build()
        .await
        .expect("pool");
    let mut sub = pool.listen(["jobs"]).await.expect("listen");
    let cluster = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        cluster.restart().expect("restart");
        cluster
    })
    .await
    .expect("join");
    assert_eq!(next(&mut sub).await, Event::Reconnected);
    notify(&pool, 7..=7).await;
    assert_eq!(payload(&next(&mut sub).await), 7);
    drop(sub);
    pool.close(Duration::from_secs(1)).await.expect("close");
    cluster.stop();
}

/// The listener is an actor the pool supervises: killed (as a crash would), it is replaced by
/// one that listens again and says so; dropping the subscription stops it and closes its
/// connection.
#[tokio::test]
async fn a_listener_that_dies_is_replaced_and_a_dropped_one_stops() {
    let (db, pool, monitor) = crate::pool_with_monitor("listen_supervised", |b| b).await;
    let listening = || async {
        monitor
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'",
                &[&db.name()],
            )
            .await
            .expect("activity")
            .get::<_, i64>(0)
    };
    let mut sub = pool.listen(["jobs"]).await.expect("listen");
    assert_eq!(listening().await, 1);
    pool.kill_listeners();
    assert_eq!(next(&mut sub).await, Event::Reconnected);
    notify(&pool, 1..=3).await;
    for expected in 1..=3 {
        assert_eq!(payload(&next(&mut sub).await), expected);
    }
    assert!(
        crate::eventually(Duration::from_secs(5), || async { listening().await == 1 }).await,
        "the dead listener's connection closed, the new one's is open"
    );
    drop(sub);
    assert!(
        crate::eventually(Duration::from_secs(5), || async { listening().await == 0 }).await,
        "a dropped subscription's listener stops and closes its connection"
    );
}
