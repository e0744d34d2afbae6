//! The flush: updates of many loaded rows go as one `UPDATE … FROM unnest(…)` with the
//! lost-update check per row, every statement of a flush goes out back to back behind its BEGIN,
//! and a failure anywhere — a stale row the server did not even call an error — commits nothing.

use actor_orm::{DeleteWhere, Error, SessionState, TxState, UpdateWhere};

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

/// Deferred statements (`defer_update_where`) travel with the unit of work: at commit, with
/// only inserts and deferred statements pending in an open transaction, all of them and the
/// COMMIT are sent without waiting for any answer. Shown with the deferred UPDATE stuck behind
/// another transaction's row lock: the COMMIT has already been sent while it waits.
#[tokio::test]
async fn deferred_updates_go_out_with_the_commit_without_waiting() {
    let (db, conn) = crate::connect("flush_deferred").await;
    create_schema(&conn).await;
    conn.batch("INSERT INTO accounts (id, balance, version) VALUES (1, 100, 1), (2, 100, 1)")
        .await
        .expect("rows");
    let conn = std::sync::Arc::new(conn);
    let locker = crate::connect_again(&db).await;
    locker
        .batch("BEGIN; SELECT * FROM accounts WHERE id = 1 FOR UPDATE")
        .await
        .expect("lock");
    let mut s = SessionState::new();
    open_with_a_write(&mut s, &conn).await;
    s.defer_update_where(deposit(1, 5)).expect("defer");
    s.add_without_returning(vec![User::new("history", 1)])
        .expect("add");
    assert_eq!(s.pending(), 2, "nothing sent yet");
    conn.record_statements(true);
    let committing = tokio::spawn({
        let conn = conn.clone();
        async move { s.commit(&conn).await }
    });
    // Wait until the deferred UPDATE is waiting for the lock (behind a pooler, an unnamed
    // statement's row count comes from a `WITH … SELECT count(*)` around it).
    let watcher = crate::connect_again(&db).await;
    let mut waiting = false;
    for _ in 0..500 {
        let rows = watcher
            .query(
                "SELECT count(*)::int8 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%UPDATE \"accounts\"%'",
                &actor_orm::sea_query::Values(vec![]),
                None,
            )
            .await
            .expect("activity");
        if rows[0].get::<_, i64>(0) == 1 {
            waiting = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    if !waiting {
        let rows = watcher
            .query(
                "SELECT coalesce(wait_event_type, '-') || ' ' || state || ' ' || query FROM pg_stat_activity WHERE backend_type = 'client backend'",
                &actor_orm::sea_query::Values(vec![]),
                None,
            )
            .await
            .expect("activity");
        let all: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        panic!(
            "the deferred UPDATE never waited for the lock: {all:#?} {:?}",
            conn.take_statements()
        );
    }
    let sent = conn.take_statements();
    assert!(
        sent.iter().any(|q| q == "COMMIT"),
        "COMMIT waits for the UPDATE's answer: {sent:?}"
    );
    assert!(!committing.is_finished());
    locker.batch("COMMIT").await.expect("release");
    committing.await.expect("task").expect("commit");
    assert_eq!(
        balances_and_users(&watcher).await,
        ("105,101".to_owned(), 1)
    );
}

/// A deferred statement that fails fails the commit, and nothing of the transaction is
/// committed: not the inserts sent with it, not what ran before.
#[tokio::test]
async fn a_failing_deferred_statement_commits_nothing() {
    let (_db, conn) = crate::connect("flush_deferred_fails").await;
    create_schema(&conn).await;
    conn.batch(
        "ALTER TABLE accounts ADD CHECK (balance >= 0);
         INSERT INTO accounts (id, balance, version) VALUES (1, 100, 1), (2, 100, 1)",
    )
    .await
    .expect("rows");
    let mut s = SessionState::new();
    open_with_a_write(&mut s, &conn).await;
    s.add(User::new("before", 1)).expect("add");
    s.defer_update_where(deposit(1, -500)).expect("defer");
    s.add(User::new("after", 1)).expect("add");
    let err = s.commit(&conn).await.expect_err("the check constraint");
    assert_eq!(err.code(), Some("23514"), "{err:?}");
    assert_eq!(s.tx_state(), TxState::Idle, "the transaction is over");
    assert_eq!(balances_and_users(&conn).await, ("100,100".to_owned(), 0));
}

/// A deferred statement runs where it was queued: after the changes made before it and before
/// those made after it; a read flushes it first; and a save of a row it changed is checked
/// against what was loaded, as against any other writer.
#[tokio::test]
async fn a_deferred_statement_runs_where_it_was_queued() {
    let (_db, conn) = crate::connect("flush_deferred_order").await;
    create_schema(&conn).await;
    conn.batch("INSERT INTO accounts (id, balance, version) VALUES (1, 100, 1)")
        .await
        .expect("rows");
    let mut s = SessionState::new();
    s.add(User::new("ann", 30)).expect("add");
    s.defer_update_where(UpdateWhere::<User>::new().set(User::AGE, User::AGE.add(1_i32)))
        .expect("defer");
    s.add(User::new("bob", 30)).expect("add");
    s.commit(&conn)
        .await
        .expect("commit (two round trips: no transaction was open)");
    let ages: Vec<(String, i32)> = s
        .all(&conn, User::query().order_by(User::NAME.asc()))
        .await
        .expect("read")
        .into_iter()
        .map(|u| (u.name, u.age))
        .collect();
    assert_eq!(ages, [("ann".to_owned(), 31), ("bob".to_owned(), 30)]);

    // A read after it sees its effect: the read flushes it first.
    s.defer_delete_where(DeleteWhere::<User>::new(User::NAME.eq("bob")));
    let names: Vec<String> = s
        .all(&conn, User::query())
        .await
        .expect("read")
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["ann"]);
    s.commit(&conn).await.expect("commit");

    // A loaded row changed by a deferred statement, then saved: the save's check sees the
    // deferred change and the row is stale; nothing commits.
    let mut account = s
        .get::<Account>(&conn, 1_i64)
        .await
        .expect("get")
        .expect("row");
    s.defer_update_where(deposit(1, 5)).expect("defer");
    account.balance = 50;
    s.save(account).expect("save");
    match s.commit(&conn).await.expect_err("stale") {
        Error::Stale { .. } => {}
        other => panic!("expected Stale, got {other:?}"),
    }
    s.rollback(&conn).await.expect("rollback");
    let balance: i64 = conn
        .query(
            "SELECT balance FROM accounts WHERE id = 1",
            &actor_orm::sea_query::Values(vec![]),
            None,
        )
        .await
        .expect("balance")[0]
        .get(0);
    assert_eq!(balance, 100);
}

/// The accounts' balances in key order, and how many users there are.
async fn balances_and_users(conn: &actor_orm::Connection) -> (String, i64) {
    let row = &conn
        .query(
            "SELECT (SELECT string_agg(balance::text, ',' ORDER BY id) FROM accounts), (SELECT count(*)::int8 FROM users)",
            &actor_orm::sea_query::Values(vec![]),
            None,
        )
        .await
        .expect("state")[0];
    (row.get(0), row.get(1))
}

/// `balance = balance + amount` for account `id`.
fn deposit(id: i64, amount: i64) -> UpdateWhere<Account> {
    UpdateWhere::<Account>::key(id).set(Account::BALANCE, Account::BALANCE.add(amount))
}

/// Opens the session's transaction the way a request's first write does (account 2 + 1).
async fn open_with_a_write(s: &mut SessionState, conn: &actor_orm::Connection) {
    s.update_where(conn, deposit(2, 1)).await.expect("open");
}
