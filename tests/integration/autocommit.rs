//! Reads before the first write run without a transaction — only where that cannot change what
//! they see (READ COMMITTED, typed statements) — and the transaction opens at the first write.
//! Observed from the server's side: `pg_stat_activity` tells whether the session's backend is in
//! a transaction.

use actor_orm::sea_query::{Expr, ExprTrait as _};
use actor_orm::{Filter, Pool, PoolBuilder, Session, TxState};

use crate::models::*;

/// The session's backend pid, asked without opening a transaction.
async fn pid_of(s: &Session) -> i32 {
    let rows = s
        .raw_rows_autocommit("SELECT pg_backend_pid()", vec![])
        .await
        .expect("pid");
    rows[0].get(0)
}

/// `state` of that backend: `idle` or `idle in transaction`.
async fn state_of(monitor: &tokio_postgres::Client, pid: i32) -> String {
    monitor
        .query_one(
            "SELECT coalesce(state, '') FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

async fn setup(
    hint: &str,
    configure: impl FnOnce(PoolBuilder) -> PoolBuilder,
) -> (
    actor_orm::testing::TestDatabase,
    Pool,
    tokio_postgres::Client,
) {
    let (db, pool, monitor) = crate::pool_with_monitor(hint, configure).await;
    monitor
        .batch_execute("INSERT INTO users (name, age) VALUES ('ann', 30), ('bob', 40), ('cy', 50)")
        .await
        .expect("rows");
    (db, pool, monitor)
}

#[tokio::test]
async fn reads_open_no_transaction_and_the_first_write_does() {
    let (_db, pool, monitor) = setup("autocommit_reads", |b| b.max_size(1)).await;
    let s = pool.session().await.expect("session");
    let pid = pid_of(&s).await;

    let ann = s.get::<User>(1).await.expect("get").expect("ann");
    let all = s.all(User::query().order_by(User::ID.asc())).await;
    assert_eq!(all.expect("all").len(), 3);
    assert_eq!(s.count(User::query()).await.expect("count"), 3);
    assert!(
        s.exists(User::query().filter(User::AGE.gt(45)))
            .await
            .expect("exists")
    );
    assert_eq!(
        s.get_many::<User, i64>([2, 3]).await.expect("many").len(),
        2
    );
    assert_eq!(state_of(&monitor, pid).await, "idle");
    assert_eq!(s.tx_state().await.expect("state"), TxState::Idle);

    // The first write opens the transaction; what was read before takes part in it as usual.
    let mut ann = ann;
    ann.age += 1;
    s.save(ann.clone()).await.expect("save");
    s.flush().await.expect("flush");
    assert_eq!(state_of(&monitor, pid).await, "idle in transaction");
    assert_eq!(s.tx_state().await.expect("state"), TxState::Active);
    // A read now runs inside it and sees the session's own write.
    assert_eq!(s.get::<User>(1).await.expect("get"), Some(ann.clone()));
    s.rollback().await.expect("rollback");
    assert_eq!(state_of(&monitor, pid).await, "idle");
    let age: i32 = monitor
        .query_one("SELECT age FROM users WHERE id = 1", &[])
        .await
        .expect("age")
        .get(0);
    assert_eq!(age, 30, "the rolled-back write is gone");

    // A read-only session's commit sends nothing and ends nothing, and clears what it loaded.
    s.get::<User>(2).await.expect("get");
    s.commit().await.expect("commit of reads");
    assert_eq!(state_of(&monitor, pid).await, "idle");
    s.close().await.expect("close");
}

#[tokio::test]
async fn a_read_committed_read_sees_what_it_would_see_inside_the_transaction() {
    // Each statement of a READ COMMITTED transaction takes a new snapshot: a read before the
    // BEGIN and a read after it both see the latest commits, as two reads inside would.
    let (_db, pool, monitor) = setup("autocommit_same_view", |b| b.max_size(1)).await;
    let s = pool.session().await.expect("session");
    let first = s.get::<User>(2).await.expect("get").expect("bob");
    assert_eq!(first.age, 40);
    monitor
        .batch_execute("UPDATE users SET age = 41 WHERE id = 2")
        .await
        .expect("concurrent update");
    // Outside a transaction the identity map still answers with what this session loaded...
    assert_eq!(s.get::<User>(2).await.expect("get").expect("bob").age, 40);
    // ...and a query reads the committed row, exactly as inside a READ COMMITTED transaction.
    let again = s
        .all(User::query().filter(User::ID.eq(2)))
        .await
        .expect("all");
    assert_eq!(again[0].age, 41);
    s.close().await.expect("close");
}

#[tokio::test]
async fn repeatable_read_by_default_keeps_every_read_inside_the_transaction() {
    let (db, pool, monitor) = setup("autocommit_rr", |b| b.max_size(1)).await;
    if crate::direct_only(
        &db,
        "watches its backend's transaction state by pid; behind a pooler a session has no backend of its own between transactions",
    ) {
        return;
    }
    drop(pool);
    monitor
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET default_transaction_isolation = 'repeatable read'",
            db.name()
        ))
        .await
        .expect("alter database");
    let pool = crate::pool_on(&db, |b| b.max_size(1)).await;
    let s = pool.session().await.expect("session");
    let pid = pid_of(&s).await;
    let first = s.count(User::query().filter(User::AGE.gt(45))).await;
    assert_eq!(first.expect("count"), 1);
    assert_eq!(state_of(&monitor, pid).await, "idle in transaction");
    monitor
        .batch_execute("INSERT INTO users (name, age) VALUES ('dee', 60)")
        .await
        .expect("concurrent insert");
    // One snapshot for the whole transaction, as REPEATABLE READ promises.
    let again = s.count(User::query().filter(User::AGE.gt(45))).await;
    assert_eq!(again.expect("count"), 1);
    s.commit().await.expect("commit");
    assert_eq!(
        s.count(User::query().filter(User::AGE.gt(45)))
            .await
            .expect("count"),
        2
    );
    s.close().await.expect("close");
}

#[tokio::test]
async fn raw_sql_naming_an_isolation_level_turns_autocommit_reads_off_for_its_connection() {
    let (_db, pool, monitor) = setup("autocommit_set_isolation", |b| b.max_size(1)).await;
    let s = pool.session().await.expect("session");
    s.raw_execute(
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        vec![],
    )
    .await
    .expect("set");
    s.commit().await.expect("commit");
    s.close().await.expect("close");

    // The same connection (pool of one), in a new session: reads open the transaction now.
    let s = pool.session().await.expect("session");
    let pid = pid_of(&s).await;
    s.get::<User>(1).await.expect("get");
    assert_eq!(state_of(&monitor, pid).await, "idle in transaction");
    let level = s
        .raw_rows("SHOW transaction_isolation", vec![])
        .await
        .expect("show");
    assert_eq!(level[0].get::<_, String>(0), "serializable");
    s.close().await.expect("close");
}

#[tokio::test]
async fn begin_an_expression_filter_or_the_setting_keep_reads_inside() {
    let (db, pool, monitor) = setup("autocommit_inside", |b| b.max_size(1)).await;

    // An explicit begin.
    // Each pid is asked inside the open transaction: behind a transaction pooler that is when
    // the session's server connection is its own.
    let s = pool.session().await.expect("session");
    s.begin().await.expect("begin");
    s.get::<User>(1).await.expect("get");
    let pid = pid_of(&s).await;
    assert_eq!(state_of(&monitor, pid).await, "idle in transaction");
    s.close().await.expect("close");

    // A filter from a hand-written expression may call anything: it runs inside.
    let s = pool.session().await.expect("session");
    let by_expr = Filter::from_expr(Expr::col("age").gt(35));
    assert_eq!(
        s.all(User::query().filter(by_expr))
            .await
            .expect("all")
            .len(),
        2
    );
    let pid = pid_of(&s).await;
    assert_eq!(state_of(&monitor, pid).await, "idle in transaction");
    s.close().await.expect("close");
    drop(pool);

    // `autocommit_reads(false)`: every read opens the transaction.
    let pool = crate::pool_on(&db, |b| b.max_size(1).autocommit_reads(false)).await;
    let s = pool.session().await.expect("session");
    s.get::<User>(1).await.expect("get");
    let pid = pid_of(&s).await;
    assert_eq!(state_of(&monitor, pid).await, "idle in transaction");
    s.close().await.expect("close");
}

#[tokio::test]
async fn raw_autocommit_reads_stay_outside_and_other_raw_sql_stays_inside() {
    let (_db, pool, monitor) = setup("autocommit_raw", |b| b.max_size(1)).await;
    let s = pool.session().await.expect("session");
    let pid = pid_of(&s).await;
    let n = s
        .raw_rows_autocommit(
            "SELECT count(*) FROM users WHERE age > $1",
            vec![35i32.into()],
        )
        .await
        .expect("raw read");
    assert_eq!(n[0].get::<_, i64>(0), 2);
    assert_eq!(state_of(&monitor, pid).await, "idle");

    // Plain raw SQL opens the transaction, and a rollback undoes it.
    s.raw_execute("DELETE FROM users WHERE id = 3", vec![])
        .await
        .expect("raw delete");
    assert_eq!(state_of(&monitor, pid).await, "idle in transaction");
    s.rollback().await.expect("rollback");
    s.close().await.expect("close");
    assert_eq!(crate::count_users(&pool).await.expect("count"), 3);
}
