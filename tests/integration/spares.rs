//! Spare session actors: the actor of a session that ended with its last handle serves a later
//! session, and nothing of the old session reaches the new one.

use std::time::Duration;

use actor_orm::{Error, Session, TxState};

use crate::models::*;

/// The `session-<id>` part of an unnamed session's label: which actor serves it.
fn actor_of(s: &Session) -> String {
    s.label()
        .split_whitespace()
        .next()
        .expect("a label")
        .to_owned()
}

#[tokio::test]
async fn a_reused_actor_starts_its_new_session_with_nothing_of_the_old_one() {
    let (_db, pool, monitor) = crate::pool_with_monitor("spare_clean", |b| b.max_size(2)).await;
    let setup = pool.session().await.expect("session");
    let ann = setup.insert(User::new("ann", 30)).await.expect("insert");
    setup.commit().await.expect("commit");
    setup.close().await.expect("close");

    let first = pool.session().await.expect("session");
    let actor = actor_of(&first);
    let old_label = first.label().to_owned();
    // Loaded (identity map), changed in the open transaction, and pending (unit of work).
    assert_eq!(
        first
            .get::<User>(ann.id)
            .await
            .expect("get")
            .expect("ann")
            .age,
        30
    );
    first
        .insert(User::new("uncommitted", 1))
        .await
        .expect("insert");
    first.add(User::new("pending", 2)).await.expect("add");
    drop(first);
    let stats = crate::settled(&pool).await;
    assert_eq!(stats.spare_sessions, 1, "{stats:?}");
    assert_eq!(stats.checkins, 2, "{stats:?}");

    // Changed behind the pool's back: a stale snapshot would still say 30.
    monitor
        .execute("UPDATE users SET age = 31 WHERE id = $1", &[&ann.id])
        .await
        .expect("update");

    let second = pool.session().await.expect("session");
    assert_eq!(
        actor_of(&second),
        actor,
        "the spare actor serves the new session"
    );
    assert_ne!(
        second.label(),
        old_label,
        "the label names the new call site"
    );
    assert_eq!(pool.stats().await.expect("stats").spare_sessions, 0);
    assert_eq!(second.tx_state().await.expect("state"), TxState::Idle);
    // A count flushes pending changes first: the old session's pending row is not among them,
    // and its uncommitted insert was rolled back.
    assert_eq!(second.count(User::query()).await.expect("count"), 1);
    let seen = second.get::<User>(ann.id).await.expect("get").expect("ann");
    assert_eq!(
        seen.age, 31,
        "read from the database, not the old identity map"
    );
    second.close().await.expect("close");
    assert_eq!(crate::count_users(&pool).await.expect("count"), 1);
}

#[tokio::test]
async fn an_actor_whose_session_is_closed_with_clones_left_is_not_reused() {
    let (_db, pool) = crate::pool_with_schema("spare_clones", |b| b.max_size(2)).await;
    let s = pool.session().await.expect("session");
    let clone = s.clone();
    let actor = actor_of(&s);
    s.count(User::query()).await.expect("count");
    s.close().await.expect("close");
    // The clone still names the old session: it must never reach another.
    assert!(matches!(
        clone.count(User::query()).await,
        Err(Error::SessionClosed)
    ));
    assert_eq!(crate::settled(&pool).await.spare_sessions, 0);
    let next = pool.session().await.expect("session");
    assert_ne!(actor_of(&next), actor);
    next.count(User::query()).await.expect("count");
    drop(clone);
    next.close().await.expect("close");
}

#[tokio::test]
async fn with_no_spares_every_session_gets_a_new_actor() {
    let (_db, pool) =
        crate::pool_with_schema("spare_none", |b| b.max_size(2).spare_sessions(0)).await;
    let a = pool.session().await.expect("session");
    let first = actor_of(&a);
    a.count(User::query()).await.expect("count");
    a.close().await.expect("close");
    let b = pool.session().await.expect("session");
    assert_ne!(actor_of(&b), first);
    b.close().await.expect("close");
    assert_eq!(crate::settled(&pool).await.spare_sessions, 0);
}

#[tokio::test]
async fn spare_actors_unused_past_idle_timeout_are_stopped() {
    let (_db, pool) = crate::pool_with_schema("spare_idle", |b| {
        b.max_size(2).idle_timeout(Duration::from_millis(200))
    })
    .await;
    let sessions: Vec<Session> = vec![
        pool.session().await.expect("session"),
        pool.session().await.expect("session"),
    ];
    drop(sessions);
    assert!(
        crate::eventually(Duration::from_secs(2), || async {
            pool.stats().await.expect("stats").spare_sessions == 2
        })
        .await
    );
    assert!(
        crate::eventually(Duration::from_secs(3), || async {
            pool.stats().await.expect("stats").spare_sessions == 0
        })
        .await,
        "spares outlived idle_timeout"
    );
}

#[tokio::test]
async fn closing_the_pool_stops_its_spare_actors() {
    let (db, conn) = crate::connect("spare_close").await;
    create_schema(&conn).await;
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    let pool = crate::pool_on(&db, |b| b.max_size(3)).await;
    // Sessions that never check a connection out: what is left after the close is theirs.
    let sessions: Vec<Session> = vec![
        pool.session().await.expect("session"),
        pool.session().await.expect("session"),
        pool.session().await.expect("session"),
    ];
    drop(sessions);
    assert!(
        crate::eventually(Duration::from_secs(2), || async {
            pool.stats().await.expect("stats").spare_sessions == 3
        })
        .await
    );
    pool.close(Duration::from_secs(1)).await.expect("close");
    // The supervisor, its timer and the three spare actors are all gone.
    assert!(
        crate::eventually(Duration::from_secs(3), || async { tasks() == before }).await,
        "{} tasks left, {before} before the pool",
        tasks()
    );
}
