//! The session handle: the core's operations through a session actor, errors as replies,
//! cancelled callers, and one session per unit of work.

use std::time::Duration;

use actor_orm::{Error, Session, TxState};

use crate::models::*;

async fn setup(hint: &str) -> (actor_orm::testing::TestDatabase, actor_orm::Pool) {
    crate::pool_with_schema(hint, |b| b.max_size(4)).await
}

async fn count_users(pool: &actor_orm::Pool) -> i64 {
    crate::count_users(pool).await.expect("count")
}

#[actor_orm::test(models(User, Post), enums(Mood))]
async fn a_session_reads_writes_and_commits_through_its_actor(pool: actor_orm::Pool) {
    let s = pool.named_session("crud").await.expect("session");
    assert!(s.label().starts_with("crud (created at "), "{}", s.label());

    let ann = s.insert(User::new("ann", 30)).await.expect("insert");
    s.add(User::new("bob", 20)).await.expect("add");
    let bobs = s
        .all(User::query().filter(User::NAME.eq("bob")))
        .await
        .expect("autoflushed query");
    assert_eq!(bobs.len(), 1);
    let mut bob = bobs[0].clone();
    bob.email = Some("bob@example.com".into());
    s.save(bob.clone()).await.expect("save");
    s.commit().await.expect("commit");

    // Another session sees the committed rows.
    let other = pool.session().await.expect("session");
    let seen = other
        .get::<User>(bob.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(seen.email.as_deref(), Some("bob@example.com"));
    assert_eq!(
        other
            .get_many::<User, _>([ann.id, bob.id])
            .await
            .expect("get_many")
            .len(),
        2
    );
    assert_eq!(other.count(User::query()).await.expect("count"), 2);
    assert!(
        other
            .exists(User::query().filter(User::AGE.gt(25)))
            .await
            .expect("exists")
    );
    other.delete(seen).await.expect("delete");
    let sp = other.savepoint().await.expect("savepoint");
    other
        .raw_execute("DELETE FROM users", vec![])
        .await
        .expect("raw");
    other.rollback_to(sp).await.expect("rollback_to");
    other.commit().await.expect("commit");
    other.close().await.expect("close");
    s.close().await.expect("close");

    assert_eq!(
        count_users(&pool).await,
        1,
        "bob deleted, the raw DELETE undone"
    );
    let stats = pool.stats().await.expect("stats");
    assert_eq!(stats.in_use, 0);
    assert_eq!(
        stats.checkouts,
        stats.checkins + stats.reclaims + stats.discards
    );
}

#[actor_orm::test(models(User, Post), enums(Mood))]
async fn a_database_error_is_a_reply_and_the_session_goes_on(pool: actor_orm::Pool) {
    let s = pool.session().await.expect("session");
    s.insert(User::new("ann", 30)).await.expect("insert");
    s.commit().await.expect("commit");

    // A unique violation inside a transaction: a typed reply, the actor lives on.
    let dup = s.insert(User::new("ann", 31)).await.expect_err("duplicate");
    assert_eq!(dup.code(), Some("23505"));
    // The client library's error is still there underneath, for error reporters.
    let source = std::error::Error::source(&dup).expect("a source");
    let pg = source
        .downcast_ref::<tokio_postgres::Error>()
        .expect("tokio-postgres's error");
    assert_eq!(
        pg.as_db_error().map(|d| d.constraint()),
        Some(Some("users_name_key"))
    );
    assert_eq!(s.tx_state().await.expect("state"), TxState::Failed);
    // PostgreSQL ignores everything until the rollback; so does the session.
    assert!(matches!(
        s.get::<User>(1).await,
        Err(Error::TransactionAborted)
    ));
    assert!(matches!(s.commit().await, Err(Error::TransactionAborted)));
    assert_eq!(s.tx_state().await.expect("state"), TxState::Idle);
    assert_eq!(s.all(User::query()).await.expect("usable again").len(), 1);
    // Reads alone open no transaction; the first write does.
    assert_eq!(s.tx_state().await.expect("state"), TxState::Idle);
    s.insert(User::new("bob", 40)).await.expect("insert");
    // Bad input is refused before anything is sent, and the transaction stays usable.
    let bad = s.add(User::new("nul\0byte", 1)).await;
    assert!(matches!(bad, Err(Error::InvalidInput(_))), "{bad:?}");
    assert_eq!(s.tx_state().await.expect("state"), TxState::Active);
    s.rollback().await.expect("rollback");
    assert!(s.is_running());
}

#[actor_orm::test(models(User, Post), enums(Mood))]
async fn every_clone_is_the_same_session_and_the_last_drop_ends_it(pool: actor_orm::Pool) {
    let s = pool.session().await.expect("session");
    let s2 = s.clone();
    s.add(User::new("ann", 30)).await.expect("add");
    s2.flush().await.expect("flush through the clone");
    drop(s);
    // Still alive through s2: the pending insert is in its transaction.
    assert_eq!(s2.count(User::query()).await.expect("count"), 1);
    drop(s2);
    // The last drop rolled the uncommitted insert back and returned the connection.
    assert_eq!(count_users(&pool).await, 0);
    let stats = pool.stats().await.expect("stats");
    assert_eq!(stats.in_use, 0);
}

#[actor_orm::test(models(User, Post), enums(Mood))]
async fn a_closed_session_answers_session_closed(pool: actor_orm::Pool) {
    let s = pool.session().await.expect("session");
    let clone = s.clone();
    s.close().await.expect("close");
    assert!(matches!(
        clone.get::<User>(1).await,
        Err(Error::SessionClosed)
    ));
    assert!(matches!(clone.commit().await, Err(Error::SessionClosed)));
}

#[actor_orm::test(models(User, Post), enums(Mood))]
async fn run_executes_many_operations_inside_the_actor(pool: actor_orm::Pool) {
    let s = pool.session().await.expect("session");
    let n = s
        .run(|state, conn| {
            Box::pin(async move {
                state.insert(conn, User::new("ann", 30)).await?;
                state.insert(conn, User::new("bob", 20)).await?;
                state.commit(conn).await?;
                state.count(conn, &User::query()).await
            })
        })
        .await
        .expect("run");
    assert_eq!(n, 2);
}

/// The failure of the async hub that shared one session: request B's commit also commits
/// request A's half-built objects. With a session per request it cannot happen; the same steps
/// on one shared session show what the test would catch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_commit_exactly_their_own_objects() {
    let (_db, pool) = setup("session_mixup").await;

    async fn request_a(
        s: Session,
        added: tokio::sync::oneshot::Sender<()>,
        gate: tokio::sync::oneshot::Receiver<()>,
    ) -> Vec<String> {
        s.add(User::new("a1", 1)).await.expect("add");
        let _ = added.send(());
        // A is slow: B runs and commits while A's objects are pending.
        let _ = gate.await;
        s.add(User::new("a2", 2)).await.expect("add");
        s.commit().await.expect("commit a");
        vec!["a1".into(), "a2".into()]
    }

    async fn request_b(s: Session) {
        s.add(User::new("b1", 3)).await.expect("add");
        s.commit().await.expect("commit b");
    }

    async fn names(pool: &actor_orm::Pool) -> Vec<String> {
        let s = pool.session().await.expect("session");
        crate::user_names(&s).await
    }

    // One session per request.
    let (open_gate, gate) = tokio::sync::oneshot::channel();
    let (added, a_added) = tokio::sync::oneshot::channel();
    let a = tokio::spawn(request_a(
        pool.session().await.expect("session"),
        added,
        gate,
    ));
    a_added.await.expect("A has added a1");
    request_b(pool.session().await.expect("session")).await;
    assert_eq!(
        names(&pool).await,
        ["b1"],
        "B committed only its own object"
    );
    open_gate.send(()).expect("gate");
    a.await.expect("request a");
    assert_eq!(names(&pool).await, ["a1", "a2", "b1"]);

    // The anti-pattern, for contrast: one shared session lets B commit A's pending a1.
    let shared = pool.session().await.expect("session");
    shared
        .raw_execute("DELETE FROM users", vec![])
        .await
        .expect("clear");
    shared.commit().await.expect("commit");
    let (open_gate, gate) = tokio::sync::oneshot::channel();
    let (added, a_added) = tokio::sync::oneshot::channel();
    let a = tokio::spawn(request_a(shared.clone(), added, gate));
    a_added.await.expect("A has added a1");
    request_b(shared.clone()).await;
    assert_eq!(
        names(&pool).await,
        ["a1", "b1"],
        "a shared session mixes requests up: this is what per-request sessions prevent"
    );
    open_gate.send(()).expect("gate");
    a.await.expect("request a");
}

/// A caller that stops waiting for `commit()` loses only the reply: the commit, once sent, runs
/// whole inside the actor, and the session and pool stay consistent.
#[tokio::test]
async fn a_dropped_commit_is_all_or_nothing() {
    let (_db, pool) = setup("session_dropped_commit").await;
    for (round, wait_us) in [0u64, 50, 200, 1_000, 5_000].into_iter().enumerate() {
        let s = pool.session().await.expect("session");
        for i in 0..100 {
            s.add(User::new(&format!("r{round}-{i}"), i))
                .await
                .expect("add");
        }
        let commit = s.commit();
        // Drop the commit future after `wait_us`, wherever it is.
        let _ = tokio::time::timeout(Duration::from_micros(wait_us), commit).await;
        // The next message queues behind the commit, so it sees the commit's outcome.
        assert_eq!(s.tx_state().await.expect("session usable"), TxState::Idle);
        // Counted on another connection, before this session sends anything else: what the
        // dropped commit committed, not what a later flush would.
        let other = pool.session().await.expect("session");
        let mine = other
            .count(User::query().filter(User::NAME.like(&format!("r{round}-%"))))
            .await
            .expect("count");
        other.close().await.expect("close");
        assert_eq!(mine, 100, "round {round}: the commit ran whole");
        drop(s);
    }
    let stats = pool.stats().await.expect("stats");
    assert_eq!(
        stats.checkouts,
        stats.checkins + stats.reclaims + stats.discards + stats.in_use as u64
    );
}

#[tokio::test]
async fn dropping_a_session_right_after_a_commit_still_commits() {
    let (_db, pool) = setup("session_drop_after_commit").await;
    let s = pool.session().await.expect("session");
    for i in 0..50 {
        s.add(User::new(&format!("u{i}"), i)).await.expect("add");
    }
    let commit = s.commit();
    let _ = tokio::time::timeout(Duration::from_micros(10), commit).await;
    drop(s);
    // The close queued behind the commit; wait until the pool has the connection back.
    let mut n = 0;
    for _ in 0..100 {
        n = count_users(&pool).await;
        if n == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(n, 50);
}
