//! The flush: updates of many loaded rows go as one `UPDATE … FROM unnest(…)` with the
//! lost-update check per row, every statement of a flush goes out back to back behind its BEGIN,
//! and a failure anywhere — a stale row the server did not even call an error — commits nothing.

use actor_orm::{Error, SessionState, TxState};

use crate::models::*;

async fn loaded_users(n: i64) -> (actor_orm::testing::TestDatabase, actor_orm::Connection) {
    let (db, conn) = crate::connect("flush").await;
    create_schema(&conn).await;
    conn.batch(&format!(
        "INSERT INTO users (name, email, age) SELECT 'u' || i, NULL, 20 FROM generate_series(1, {n}) i"
    ))
    .await
    .expect("rows");
    (db, conn)
}

#[tokio::test]
async fn a_thousand_loaded_rows_changed_are_one_update_statement() {
    let (db, conn) = loaded_users(1_000).await;
    let mut s = SessionState::new();
    let users = s.all(&conn, User::query()).await.expect("load");
    for mut u in users {
        u.age += 1;
        s.save(u).expect("save");
    }
    conn.record_statements(true);
    s.commit(&conn).await.expect("commit");
    let sent = conn.take_statements();
    let updates = sent.iter().filter(|q| q.starts_with("UPDATE")).count();
    if db.through_pooler() {
        // Unnamed statements (behind a pooler) cannot declare the arrays' types: row by row,
        // still sent back to back.
        assert_eq!(updates, 1_000);
    } else {
        assert_eq!(updates, 1, "{sent:?}");
        assert!(sent.iter().any(|q| q.contains("unnest(")), "{sent:?}");
    }
    // A second shape (email, every tenth row) is a second batch: one statement per run of
    // updates writing the same columns.
    for mut u in s.all(&conn, User::query()).await.expect("load") {
        if u.id % 10 == 0 {
            u.email = Some(format!("{}@x", u.name));
            s.save(u).expect("save");
        }
    }
    s.commit(&conn).await.expect("commit");
    let row = &s
        .raw_rows(
            &conn,
            "SELECT sum(age)::int8, count(email)::int8 FROM users",
            vec![],
        )
        .await
        .expect("sums")[0];
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (21_000, 100));
    // The session's copies were refreshed from what came back.
    let one = s
        .get::<User>(&conn, 10_i64)
        .await
        .expect("get")
        .expect("row 10");
    assert_eq!((one.age, one.email.as_deref()), (21, Some("u10@x")));
}

#[tokio::test]
async fn the_statement_of_a_batched_update_is_pinned() {
    let (db, conn) = loaded_users(3).await;
    if crate::direct_only(&db, "batched updates need prepared statements") {
        return;
    }
    let mut s = SessionState::new();
    for mut u in s.all(&conn, User::query()).await.expect("load") {
        u.age += 1;
        s.save(u).expect("save");
    }
    conn.record_statements(true);
    s.flush(&conn).await.expect("flush");
    let sent = conn.take_statements();
    insta::assert_snapshot!("batched_update", sent.join("\n"));
}

/// Another transaction changes one row in the middle of the batch after the session loaded it:
/// the one statement updates the other 99 rows and not that one, PostgreSQL reports no error,
/// and the flush still fails for that row, with nothing committed.
#[tokio::test]
async fn a_stale_row_in_the_middle_of_a_batched_flush_commits_nothing() {
    let (db, conn) = loaded_users(100).await;
    let other = crate::connect_again(&db).await;
    let mut s = SessionState::new();
    let users = s.all(&conn, User::query()).await.expect("load");
    other
        .batch("UPDATE users SET age = 99 WHERE id = 50")
        .await
        .expect("concurrent change");
    for mut u in users {
        u.age += 1;
        s.save(u).expect("save");
    }
    let err = s.commit(&conn).await.expect_err("row 50 changed");
    match &err {
        Error::Stale {
            table,
            key,
            columns,
            ..
        } => {
            assert_eq!(table, "users");
            assert!(key.contains("50"), "{key}");
            assert_eq!(columns, &["age"]);
        }
        e => panic!("not Stale: {e:?}"),
    }
    // The transaction is failed: its COMMIT would roll it back.
    assert_eq!(s.tx_state(), TxState::Failed);
    s.rollback(&conn).await.expect("rollback");
    let ages: Vec<i32> = other
        .query(
            "SELECT age FROM users ORDER BY id",
            &actor_orm::sea_query::Values(vec![]),
            None,
        )
        .await
        .expect("ages")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ages.len(), 100);
    assert!(
        ages.iter()
            .enumerate()
            .all(|(i, a)| *a == if i == 49 { 99 } else { 20 }),
        "none of the other 99 updates was committed: {ages:?}"
    );
}

#[tokio::test]
async fn a_stale_version_in_a_batch_is_the_rows_stale_error() {
    let (db, conn) = crate::connect("flush_versions").await;
    create_schema(&conn).await;
    conn.batch("INSERT INTO accounts (id, balance, version) SELECT i, 100, 1 FROM generate_series(1, 10) i")
        .await
        .expect("rows");
    let mut s = SessionState::new();
    let accounts = s.all(&conn, Account::query()).await.expect("load");
    let other = crate::connect_again(&db).await;
    other
        .batch("UPDATE accounts SET version = version + 1 WHERE id = 7")
        .await
        .expect("concurrent write");
    for mut a in accounts {
        a.balance -= 10;
        s.save(a).expect("save");
    }
    let err = s.commit(&conn).await.expect_err("account 7 moved on");
    assert!(
        matches!(&err, Error::Stale { key, expected_version: Some(1), .. } if key.contains('7')),
        "{err:?}"
    );
    s.rollback(&conn).await.expect("rollback");
    let total: i64 = other
        .query(
            "SELECT sum(balance)::int8 FROM accounts",
            &actor_orm::sea_query::Values(vec![]),
            None,
        )
        .await
        .expect("sum")[0]
        .get(0);
    assert_eq!(total, 1_000, "nothing committed");
    // Loaded afresh, the same batch goes through, and every version moved by one.
    let mut s = SessionState::new();
    for mut a in s.all(&conn, Account::query()).await.expect("load") {
        a.balance -= 10;
        s.save(a).expect("save");
    }
    s.commit(&conn).await.expect("commit");
    let row = &other
        .query(
            "SELECT sum(balance)::int8, sum(version)::int8 FROM accounts",
            &actor_orm::sea_query::Values(vec![]),
            None,
        )
        .await
        .expect("sums")[0];
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (900, 21));
}

/// Inserts, updates and deletes of one flush go out together; the first failure is the one
/// reported (not the "transaction is aborted" of the statements behind it), and nothing commits.
#[tokio::test]
async fn the_first_error_of_a_pipelined_flush_is_the_callers_and_nothing_commits() {
    let (_db, conn) = loaded_users(5).await;
    let mut s = SessionState::new();
    let users = s.all(&conn, User::query()).await.expect("load");
    for mut u in users.iter().take(3).cloned() {
        u.age = 40;
        s.save(u).expect("save");
    }
    s.add(User::new("u1", 1)).expect("a duplicate name");
    s.delete(&users[4]).expect("delete");
    conn.record_statements(true);
    let err = s.commit(&conn).await.expect_err("duplicate");
    assert_eq!(err.code(), Some("23505"), "{err:?}");
    s.rollback(&conn).await.expect("rollback");
    let sent = conn.take_statements();
    assert!(sent.iter().any(|q| q.contains("DELETE FROM")), "{sent:?}");
    let row = &conn
        .query(
            "SELECT count(*)::int8, sum(age)::int8 FROM users",
            &actor_orm::sea_query::Values(vec![]),
            None,
        )
        .await
        .expect("count")[0];
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (5, 100));
}
