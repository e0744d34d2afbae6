//! The test sandbox (`#[actor_orm::test]`): every session of a test's pool inside one outer
//! transaction on one connection, rolled back at the end however the test ends; concurrent
//! sessions take turns and see each other's commits; a database of the test's own on request.

use std::time::{Duration, Instant};

use actor_orm::testing::{Isolation, Sandbox, SandboxPool};
use actor_orm::{Error, Pool, SchemaModels};

use crate::models::{Mood, Post, User};

/// A user whose unique key is `name`.
fn user(name: &str) -> User {
    User::new(name, 30)
}

const KEYS: [&str; 5] = ["a@x", "b@x", "c@x", "d@x", "e@x"];

/// What each of the 32 tests does: starts from nothing (no earlier test's writes persist),
/// writes the same unique keys as every other, commits, and sees exactly its own rows.
async fn write_the_same_keys(pool: Pool) {
    let s = pool.session().await.expect("session");
    assert_eq!(
        s.count(User::query()).await.expect("count"),
        0,
        "nothing persists"
    );
    for email in KEYS {
        s.insert(user(email)).await.expect("insert");
    }
    s.commit().await.expect("commit");
    assert_eq!(s.count(User::query()).await.expect("count"), 5);
    s.close().await.expect("close");
}

macro_rules! thirty_two {
    ($($name:ident)*) => {$(
        #[actor_orm::test(models(User, Post), enums(Mood))]
        async fn $name(pool: Pool) {
            write_the_same_keys(pool).await;
        }
    )*};
}

thirty_two! {
    same_keys_01 same_keys_02 same_keys_03 same_keys_04 same_keys_05 same_keys_06 same_keys_07
    same_keys_08 same_keys_09 same_keys_10 same_keys_11 same_keys_12 same_keys_13 same_keys_14
    same_keys_15 same_keys_16 same_keys_17 same_keys_18 same_keys_19 same_keys_20 same_keys_21
    same_keys_22 same_keys_23 same_keys_24 same_keys_25 same_keys_26 same_keys_27 same_keys_28
    same_keys_29 same_keys_30 same_keys_31 same_keys_32
}

fn sandbox() -> Sandbox {
    Sandbox::new().models(
        SchemaModels::new()
            .model::<User>()
            .model::<Post>()
            .db_enum::<Mood>(),
    )
}

/// The test harness runs as many tests at once as it has threads: here 32 sandboxes are open
/// at the same moment, each writing the same keys; then 32 more find nothing of theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_sandboxes_open_at_once_never_conflict_and_keep_nothing() {
    let opened: Vec<SandboxPool> =
        crate::join_all((0..32).map(|_| async { sandbox().open().await.expect("sandbox") })).await;
    crate::join_all(opened.iter().map(|s| write_the_same_keys(s.pool().clone()))).await;
    // Watched from outside the sandbox: nothing was committed.
    let outside = watch(&opened[0]).await;
    let seen: i64 = outside
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        seen, 0,
        "a sandbox's commit is a savepoint's release, never a commit"
    );
    drop(outside);
    crate::join_all(opened.into_iter().map(SandboxPool::finish)).await;
    let again: Vec<SandboxPool> =
        crate::join_all((0..32).map(|_| async { sandbox().open().await.expect("sandbox") })).await;
    let reused = again.iter().filter(|s| s.reused()).count();
    crate::join_all(again.iter().map(|s| write_the_same_keys(s.pool().clone()))).await;
    crate::join_all(again.into_iter().map(SandboxPool::finish)).await;
    assert!(
        reused >= 16,
        "the databases are reused, not cloned again: {reused} of 32"
    );
}

async fn watch(sandbox: &SandboxPool) -> tokio_postgres::Client {
    let (client, conn) = sandbox
        .config()
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

#[actor_orm::test(models(User, Post), enums(Mood))]
async fn two_concurrent_sessions_each_commit_and_the_test_sees_both(pool: Pool) {
    let writers = ["one@x", "two@x"].map(|email| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let s = pool.session().await?;
            s.insert(user(email)).await?;
            // The other session waits for its turn meanwhile, and goes on after this commit.
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.commit().await?;
            s.close().await?;
            Ok::<_, Error>(())
        })
    });
    for w in writers {
        w.await.expect("join").expect("each session commits");
    }
    let s = pool.session().await.expect("session");
    assert_eq!(crate::user_names(&s).await, ["one@x", "two@x"]);
}

#[actor_orm::test(models(User, Post), enums(Mood))]
async fn a_rollback_and_a_dropped_session_undo_only_their_own_work(pool: Pool) {
    let kept = pool.session().await.expect("session");
    kept.insert(user("kept@x")).await.expect("insert");
    kept.commit().await.expect("commit");
    let undone = pool.session().await.expect("session");
    undone.insert(user("undone@x")).await.expect("insert");
    undone.flush().await.expect("flush");
    undone.rollback().await.expect("rollback");
    let dropped = pool.session().await.expect("session");
    dropped.insert(user("dropped@x")).await.expect("insert");
    dropped.flush().await.expect("flush");
    drop(dropped);
    let s = pool.session().await.expect("session");
    assert_eq!(crate::user_names(&s).await, ["kept@x"]);
}

#[actor_orm::test(models(User, Post), enums(Mood))]
async fn a_failed_statement_fails_alone_as_in_autocommit(pool: Pool) {
    let s = pool.session().await.expect("session");
    s.insert(user("before@x")).await.expect("insert");
    s.commit().await.expect("commit");
    // Outside a transaction: fails alone, and the outer transaction goes on.
    let err = s
        .raw_rows_autocommit("SELECT 1 / 0", vec![])
        .await
        .expect_err("division by zero");
    assert_eq!(err.code(), Some("22012"), "{err:?}");
    // Inside one: the transaction fails, as it would on a server of its own.
    let err = s.insert(user("before@x")).await.expect_err("duplicate key");
    assert_eq!(err.code(), Some("23505"), "{err:?}");
    let err = s
        .commit()
        .await
        .expect_err("the failed transaction rolls back");
    assert!(matches!(err, Error::TransactionAborted), "{err:?}");
    s.insert(user("after@x")).await.expect("insert");
    s.commit().await.expect("the sandbox goes on");
    assert_eq!(crate::user_names(&s).await, ["after@x", "before@x"]);
}

#[actor_orm::test(models(User, Post), enums(Mood))]
async fn savepoints_nest_inside_the_sandbox(pool: Pool) {
    let s = pool.session().await.expect("session");
    s.insert(user("outer@x")).await.expect("insert");
    s.flush().await.expect("flush");
    let sp = s.savepoint().await.expect("savepoint");
    s.insert(user("inner@x")).await.expect("insert");
    s.flush().await.expect("flush");
    s.rollback_to(sp).await.expect("rollback to");
    s.commit().await.expect("commit");
    assert_eq!(s.count(User::query()).await.expect("count"), 1);
}

#[actor_orm::test(models(User, Post), enums(Mood))]
async fn raw_transaction_control_is_refused_with_the_reason(pool: Pool) {
    let s = pool.session().await.expect("session");
    for sql in ["BEGIN", "COMMIT", "rollback"] {
        let err = s
            .raw_execute(sql, vec![])
            .await
            .expect_err("refused in the sandbox");
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("sandbox")),
            "{err:?}"
        );
        s.rollback().await.expect("rollback");
    }
}

#[test]
fn a_panicking_sandboxed_test_leaves_nothing_behind() {
    let panicked = std::panic::catch_unwind(|| {
        sandbox().run(|pool| async move {
            let s = pool.session().await.expect("session");
            for email in KEYS {
                s.insert(user(email)).await.expect("insert");
            }
            s.commit().await.expect("commit");
            panic!("the test fails after committing");
        })
    });
    assert!(panicked.is_err());
    // Whichever database the next tests get, it holds nothing of the panicked test's.
    for _ in 0..3 {
        sandbox().run(|pool| async move {
            let s = pool.session().await.expect("session");
            assert_eq!(s.count(User::query()).await.expect("count"), 0);
        });
    }
}

#[actor_orm::test(models(User, Post), enums(Mood), isolation = "database")]
async fn a_database_of_its_own_has_real_commits(pool: Pool) {
    let s = pool.session().await.expect("session");
    s.insert(user("real@x")).await.expect("insert");
    s.commit().await.expect("commit");
    s.close().await.expect("close");
    // Another connection of the pool sees it: a real commit.
    let a = pool.session().await.expect("session");
    let b = pool.session().await.expect("session");
    a.acquire().await.expect("a's connection");
    b.acquire().await.expect("b's connection, a second one");
    assert_eq!(b.count(User::query()).await.expect("count"), 1);
    assert_eq!(pool.stats().await.expect("stats").in_use, 2);
}

#[actor_orm::test(migrations = "tests/migrations")]
async fn the_schema_can_come_from_a_migrations_folder(pool: Pool) {
    let s = pool.session().await.expect("session");
    let applied = s
        .raw_rows("SELECT count(*) FROM actor_orm_migrations", vec![])
        .await
        .expect("the history table is there");
    let n: i64 = applied[0].get(0);
    assert!(n >= 1, "{n} migrations applied");
}

/// The per-test cost of each mode (figures for the README): a sandbox opened, one statement,
/// the sandbox ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_of_a_sandboxed_test_in_each_mode() {
    // The template is built once per binary: not part of a test's cost.
    sandbox().open().await.expect("sandbox").finish().await;
    for isolation in [Isolation::Transaction, Isolation::Database] {
        let runs = 10;
        let started = Instant::now();
        for _ in 0..runs {
            let sb = sandbox()
                .isolation(isolation)
                .open()
                .await
                .expect("sandbox");
            let s = sb.pool().session().await.expect("session");
            assert_eq!(s.count(User::query()).await.expect("count"), 0);
            s.close().await.expect("close");
            sb.finish().await;
        }
        eprintln!(
            "sandbox cost, {isolation:?}: {:?} per test (mean of {runs})",
            started.elapsed() / runs
        );
    }
}
