//! The books driven through a real pool and real session actors, on fake connections: checkout
//! order, timeouts, reclaim exactly once, spare hand-out, idle trim. No PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actor_orm_core::Error;

use super::fake::FakeConnector;
use crate::{Pool, PoolBuilder, PoolStats};

async fn fake_pool(
    configure: impl FnOnce(PoolBuilder) -> PoolBuilder,
) -> (Pool, Arc<FakeConnector>) {
    let fake = FakeConnector::new();
    let builder = Pool::builder("host=fake user=test sslmode=disable").connector(fake.clone());
    (configure(builder).build().await.expect("pool"), fake)
}

/// Polls the pool's numbers until `done` holds (or 3 s pass); the last numbers.
async fn until(pool: &Pool, done: impl Fn(&PoolStats) -> bool) -> PoolStats {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let stats = pool.stats().await.expect("stats");
        if done(&stats) || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every lease ends one way.
fn balanced(s: &PoolStats) -> bool {
    s.checkouts == s.checkins + s.reclaims + s.discards + s.in_use as u64
}

#[tokio::test]
async fn waiters_are_served_first_come_first_served() {
    let (pool, fake) = fake_pool(|b| b.max_size(1)).await;
    let holder = pool.named_session("holder").await.expect("session");
    holder.acquire().await.expect("acquire");
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..3 {
        let (queued, order) = (pool.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let s = queued.session().await.expect("session");
            s.acquire().await.expect("acquire");
            order.lock().expect("order").push(i);
            s.close().await.expect("close");
        }));
        // Each is queued before the next arrives.
        until(&pool, |s| s.waiting == i + 1).await;
    }
    holder.close().await.expect("close");
    for w in waiters {
        w.await.expect("waiter");
    }
    assert_eq!(*order.lock().expect("order"), [0, 1, 2]);
    assert_eq!(
        fake.opened.load(Ordering::SeqCst),
        1,
        "one connection served all"
    );
    let stats = until(&pool, |s| s.in_use == 0).await;
    assert!(balanced(&stats), "{stats:?}");
}

#[tokio::test]
async fn a_checkout_times_out_with_the_pools_numbers() {
    let (pool, _fake) =
        fake_pool(|b| b.max_size(1).acquire_timeout(Duration::from_millis(50))).await;
    let holder = pool.named_session("report-job").await.expect("session");
    holder.acquire().await.expect("acquire");
    let late = pool.session().await.expect("session");
    let started = Instant::now();
    let Err(Error::PoolTimeout(report)) = late.acquire().await else {
        panic!("expected a pool timeout");
    };
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(
        (report.max_size, report.in_use, report.idle, report.waiting),
        (1, 1, 0, 1)
    );
    assert!(
        report.holders[0].session.contains("report-job"),
        "{report:?}"
    );
    assert_eq!(pool.stats().await.expect("stats").timeouts, 1);
}

#[tokio::test]
async fn a_killed_session_is_reclaimed_exactly_once() {
    let (pool, fake) = fake_pool(|b| b.max_size(1)).await;
    let s = pool.session().await.expect("session");
    s.begin().await.expect("begin");
    s.kill();
    let stats = until(&pool, |s| s.reclaims == 1 && s.idle == 1).await;
    assert_eq!(
        (stats.reclaims, stats.checkins, stats.idle),
        (1, 0, 1),
        "{stats:?}"
    );
    // The dead session's last handle goes too: nothing is returned a second time.
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stats = pool.stats().await.expect("stats");
    assert_eq!(
        (stats.reclaims, stats.checkins, stats.discards),
        (1, 0, 0),
        "{stats:?}"
    );
    assert!(balanced(&stats), "{stats:?}");
    // The reset connection serves the next session.
    let next = pool.session().await.expect("session");
    next.acquire().await.expect("acquire");
    assert_eq!(fake.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_ended_session_leaves_its_actor_for_the_next() {
    let (pool, _fake) = fake_pool(|b| b.max_size(2)).await;
    let s = pool.session().await.expect("session");
    s.acquire().await.expect("acquire");
    drop(s);
    let stats = until(&pool, |s| s.spare_sessions == 1).await;
    assert_eq!((stats.spare_sessions, stats.idle), (1, 1), "{stats:?}");
    let next = pool.session().await.expect("session");
    assert_eq!(pool.stats().await.expect("stats").spare_sessions, 0);
    next.acquire().await.expect("acquire");
    // With clones left, close() stops the actor instead of keeping it.
    let shared = next.clone();
    next.close().await.expect("close");
    assert!(shared.acquire().await.is_err());
    let stats = until(&pool, |s| s.in_use == 0).await;
    assert_eq!(stats.spare_sessions, 0, "{stats:?}");

    let (pool, _fake) = fake_pool(|b| b.spare_sessions(0)).await;
    drop(pool.session().await.expect("session"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(pool.stats().await.expect("stats").spare_sessions, 0);
}

#[tokio::test]
async fn idle_connections_are_trimmed_down_to_min_idle() {
    for min_idle in [0, 1] {
        let (pool, fake) = fake_pool(|b| {
            b.max_size(3)
                .min_idle(min_idle)
                .idle_timeout(Duration::from_millis(60))
        })
        .await;
        let sessions: Vec<_> = holding(&pool, 3).await;
        for s in sessions {
            s.close().await.expect("close");
        }
        let stats = until(&pool, |s| s.total == min_idle).await;
        assert_eq!(stats.total, min_idle, "{stats:?}");
        assert_eq!(fake.opened.load(Ordering::SeqCst), 3);
        assert_eq!(stats.closed, 3 - min_idle as u64, "{stats:?}");
    }
}

/// `n` sessions holding a connection each at once.
async fn holding(pool: &Pool, n: usize) -> Vec<crate::Session> {
    let mut sessions = Vec::new();
    for _ in 0..n {
        let s = pool.session().await.expect("session");
        s.acquire().await.expect("acquire");
        sessions.push(s);
    }
    sessions
}

#[tokio::test]
async fn lifetimes_are_jittered_and_retired_connections_refilled_without_demand() {
    // Eight connections opened together, retired after 400 ms less up to 400 ms of jitter. The
    // maintenance tick runs every 100 ms, so without jitter all eight would go in one tick.
    let (pool, fake) = fake_pool(|b| {
        b.max_size(8)
            .min_idle(8)
            .max_lifetime(Duration::from_millis(400))
            .max_lifetime_jitter(Duration::from_millis(400))
    })
    .await;
    until(&pool, |s| s.idle == 8).await;
    let started = Instant::now();
    let mut retired = Vec::new();
    let mut closed = 0;
    while closed < 8 && started.elapsed() < Duration::from_secs(3) {
        let now = pool.stats().await.expect("stats").closed;
        for _ in closed..now {
            retired.push(started.elapsed());
        }
        closed = now;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(retired.len() >= 8, "{retired:?}");
    let spread = retired[7] - retired[0];
    assert!(
        spread >= Duration::from_millis(90),
        "all retired together: {retired:?}"
    );
    // No session ever asked: the pool itself opened the replacements, back to min_idle.
    let stats = until(&pool, |s| s.idle == 8 && s.connecting == 0).await;
    assert_eq!((stats.idle, stats.checkouts), (8, 0), "{stats:?}");
    assert!(fake.opened.load(Ordering::SeqCst) >= 16);
}

#[test]
fn connect_retries_back_off_but_probe_promptly_while_the_server_is_absent() {
    use super::connects::{ABSENT_PROBE, retry_after};
    let steps = (Duration::from_millis(25), Duration::from_secs(1));
    let backed: Vec<u128> = (1..=7)
        .map(|n| retry_after(steps, n, false).as_millis())
        .collect();
    assert_eq!(backed, [50, 100, 200, 400, 800, 1000, 1000]);
    // Refused or starting up: never longer than the probe interval.
    for n in 1..40 {
        assert!(retry_after(steps, n, true) <= ABSENT_PROBE);
    }
    // A first step longer than the probe interval is kept (the user asked for it).
    let slow = (Duration::from_millis(500), Duration::from_secs(5));
    assert_eq!(retry_after(slow, 3, true), Duration::from_millis(500));
}
